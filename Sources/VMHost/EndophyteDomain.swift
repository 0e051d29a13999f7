// One endophyte domain on this host: its QEMU process, its guest RAM, and the checkpoint primitives
// the replication engine drives through `SourceHooks` (Remus §3: pause, take the last pages and the
// device state, resume), plus a standby's activation from a committed epoch.
//
// The sequence is the one MACHINE.md proved on QEMU 7.2 under libvirt 9.0 ("VM checkpoint and resume
// from a RAM replica plus device state"): with `x-ignore-shared` QEMU's migration stream leaves out
// the shared guest RAM, so `migrate` to an fd is the device state alone (~280 KB, mostly ROMs), and
// `migrate-incoming` of it into a QEMU whose memfd already holds the RAM image resumes the guest
// at exactly that checkpoint.

import DirtyPages
import Endophyte
import Libvirt
import MyceliumCore

#if canImport(Glibc)
import Glibc
#endif

/// A RAM image of one checkpoint, tagged with its replication epoch.
public struct RAMImage: Sendable {
    public let epoch: UInt64
    public let region: MappedRegion
    public init(epoch: UInt64, region: MappedRegion) {
        self.epoch = epoch
        self.region = region
    }
}

/// QEMU's device state of one checkpoint (its migration stream without guest RAM), tagged with the
/// same replication epoch as the RAM image it belongs to.
public struct DeviceState: Sendable, Equatable {
    public let epoch: UInt64
    public let bytes: [UInt8]
    public init(epoch: UInt64, bytes: [UInt8]) {
        self.epoch = epoch
        self.bytes = bytes
    }
}

/// Where an activation's time went (seconds).
public struct ActivationTimings: Sendable {
    /// Checks, finding the memfd, and writing the RAM image into it.
    public let checkAndCopy: Double
    /// `getfd` + `migrate-incoming` until QEMU reports `completed`.
    public let loadDeviceState: Double
    /// libvirt's resume (QMP `cont`).
    public let resume: Double
    public var total: Double { checkAndCopy + loadDeviceState + resume }
}

/// How a dirty-page tracker for a domain's RAM was obtained.
public struct GuestRAMTracking: Sendable {
    public let tracker: DirtyTracker
    /// Why the hash engine is used, when it is (nil for uffd-remote through the shim).
    public let fallbackReason: String?
}

/// Which monitor the checkpoint's commands (`stop`, `cont`, the device-state save) go through.
public enum ControlChannel: Sendable, Equatable, CustomStringConvertible {
    /// The domain's own second QMP monitor on a Unix socket (~0.3-0.5 ms a command).
    case direct(path: String)
    /// libvirt's monitor passthrough (2-3 ms a command), and why the direct monitor is not used.
    case libvirt(reason: String)

    public var description: String {
        switch self {
        case .direct(let path): return "direct QMP monitor \(path)"
        case .libvirt(let reason): return "libvirt monitor passthrough (\(reason))"
        }
    }
}

public final class EndophyteDomain: @unchecked Sendable {
    // SAFETY (Sendable): libvirt handles may be used from any thread and libvirt serialises monitor
    // commands per domain; this object's own mutable state is guarded by `lock`, the direct
    // monitor and its state by `channelLock`.
    public let domain: LibvirtDomain
    public let name: String
    /// Directory where libvirt's QEMU driver writes `<name>.pid` (`/run/libvirt/qemu` for qemu:///system).
    public let qemuRunDirectory: String
    /// Bound on every wait for QEMU (device state save and load).
    public let timeout: Double
    private let lock = PthreadLock()
    private var ignoreSharedSet = false
    private var fdSerial = 0

    // The direct monitor. `channelLock` serialises its conversation and guards these.
    private let channelLock = PthreadLock()
    /// nil: not known yet (read from the live domain XML on first use); .some(nil): the domain has none.
    private var controlSocket: String??
    private var direct: DirectQMP?
    private var directUnusableReason = "not tried yet"
    private var directRetryAt = 0.0
    /// After the direct monitor failed, how long the libvirt channel is used before trying it again.
    static let directRetryInterval = 10.0

    init(domain: LibvirtDomain, qemuRunDirectory: String, timeout: Double, controlSocket: String?? = nil) {
        self.domain = domain
        self.name = domain.name
        self.qemuRunDirectory = qemuRunDirectory
        self.timeout = timeout
        self.controlSocket = controlSocket
    }

    var qmp: QMP { QMP(domain: domain, name: name) }

    func error(_ code: VMHostError.Code) -> VMHostError { VMHostError(code, domain: name) }

    // MARK: state

    /// libvirt's view of the domain's state.
    public func state() throws(VMHostError) -> DomainState {
        do { return try domain.state() } catch { throw self.error(.libvirt(error)) }
    }

    /// The Mycelium metadata on the running domain (nil: not Mycelium's).
    public func metadata() throws(VMHostError) -> EndophyteMetadata? {
        let live: Bool
        do { live = try domain.isActive() } catch { throw self.error(.libvirt(error)) }
        do {
            return try domain.metadata(namespaceURI: EndophyteDomainXML.namespaceURI, live: live).flatMap(EndophyteDomainXML.parseMetadata)
        } catch {
            throw self.error(.libvirt(error))
        }
    }

    /// Records a new role and ownership epoch (after a failover or a planned switch), on the running
    /// domain and its definition.
    public func setOwnership(_ m: EndophyteMetadata) throws(VMHostError) {
        do {
            try domain.setMetadata(EndophyteDomainXML.metadataForSet(m), key: EndophyteDomainXML.namespacePrefix,
                                   namespaceURI: EndophyteDomainXML.namespaceURI)
        } catch {
            throw self.error(.libvirt(error))
        }
    }

    // MARK: the QEMU process and its RAM

    /// The domain's QEMU process: libvirt's pid file, checked against /proc (a stale file from an
    /// earlier run must not name someone else's process).
    public func qemuPID() throws(VMHostError) -> Int32 {
        let path = qemuRunDirectory + "/" + name + ".pid"
        guard let text = readSmallFile(path) else {
            throw error(.noQEMUProcess("cannot read \(path) (\(String(cString: strerror(errno))))"))
        }
        guard let pid = Int32(text.trimmingWhitespace()), pid > 0 else { throw error(.noQEMUProcess("\(path) holds '\(text)'")) }
        guard let cmdline = readSmallFile("/proc/\(pid)/cmdline", limit: 1 << 20) else {
            throw error(.noQEMUProcess("process \(pid) from \(path) does not exist"))
        }
        // libvirt names the guest on QEMU's command line: `-name guest=NAME,debug-threads=on`.
        let args = cmdline.split(separator: "\0", omittingEmptySubsequences: false)
        guard args.contains(where: { $0 == "guest=\(name)" || $0.hasPrefix("guest=\(name),") }) else {
            throw error(.noQEMUProcess("process \(pid) from \(path) is not this domain's QEMU"))
        }
        return pid
    }

    /// The guest-RAM memfd of the running QEMU, mapped shared into this process. Both see the same
    /// pages: a write here is a write to guest RAM.
    public func openGuestRAM() throws(VMHostError) -> MappedRegion {
        let pid = try qemuPID()
        let dir = "/proc/\(pid)/fd"
        guard let d = opendir(dir) else { throw error(.guestRAM("cannot list \(dir): \(String(cString: strerror(errno)))")) }
        var found: [String] = []
        while let e = readdir(d) {
            let entry = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard Int(entry) != nil else { continue }
            var buf = [CChar](repeating: 0, count: 256)
            let n = readlink("\(dir)/\(entry)", &buf, buf.count - 1)
            guard n > 0 else { continue }
            let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            // libvirt names the backend pc.ram, QEMU names the memfd after the backend's type.
            if target.hasPrefix("/memfd:memory-backend-memfd") { found.append("\(dir)/\(entry)") }
        }
        closedir(d)
        guard found.count == 1, let path = found.first else {
            throw error(.guestRAM(found.isEmpty ? "QEMU \(pid) holds no memory-backend-memfd"
                                  : "QEMU \(pid) holds \(found.count) memfd backends (\(found.joined(separator: ", "))); one guest-RAM backend is supported"))
        }
        let fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 { throw error(.guestRAM("cannot open \(path): \(String(cString: strerror(errno)))")) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size > 0 else {
            let e = errno
            close(fd)
            throw error(.guestRAM("cannot size \(path): \(String(cString: strerror(e)))"))
        }
        do {
            // The memfd is sealed against growing and shrinking; MappedRegion's ftruncate to the
            // size it already has is allowed.
            return try MappedRegion(fd: fd, length: Int(st.st_size))
        } catch {
            throw self.error(.endophyte(error))
        }
    }

    /// A dirty-page tracker for `region` (this domain's guest RAM): uffd-remote when the preload shim
    /// registered the RAM inside this QEMU (its report names this pid and the RAM's length), else
    /// the hash engine, with the reason.
    public func openDirtyTracker(region: MappedRegion, shimReport: String?) throws(VMHostError) -> GuestRAMTracking {
        var reason = "no dirty-page shim configured"
        if let shimReport {
            let pid = try qemuPID()
            if let text = readSmallFile(shimReport, limit: 1 << 20) {
                // "pid start length fd" per registration, or "pid error errno"; the newest line wins.
                let mine = text.split(separator: "\n").map { $0.split(separator: " ") }.filter { $0.first == "\(pid)" }
                if let last = mine.last, last.count == 4, let start = UInt64(last[1]), let length = Int(last[2]) {
                    if length == region.length {
                        do {
                            return GuestRAMTracking(tracker: try DirtyTracker.uffdRemote(pid: pid, address: start, length: length), fallbackReason: nil)
                        } catch {
                            reason = "uffd-remote on QEMU \(pid): \(error)"
                        }
                    } else {
                        reason = "the shim registered \(length) bytes in QEMU \(pid), the guest RAM has \(region.length)"
                    }
                } else if let last = mine.last, last.count >= 3, last[1] == "error" {
                    reason = "the shim could not register guest RAM in QEMU \(pid) (errno \(last[2]))"
                } else {
                    reason = "the shim report \(shimReport) has no registration by QEMU \(pid)"
                }
            } else {
                reason = "no shim report at \(shimReport)"
            }
        }
        do {
            return GuestRAMTracking(tracker: try DirtyTracker.hash(region: UnsafeRawBufferPointer(region.buffer)), fallbackReason: reason)
        } catch {
            throw self.error(.endophyte(EndophyteError(.dirtyPages(error))))
        }
    }

    // MARK: the direct monitor

    /// The channel the checkpoint's commands use now, connecting the direct monitor if it is due a
    /// try (so a caller can report it before the first checkpoint).
    public func controlChannel() -> ControlChannel {
        channelLock.withLock {
            if let d = connectedDirect() { return .direct(path: d.path) }
            return .libvirt(reason: directUnusableReason)
        }
    }

    /// Drops the direct monitor's connection (QEMU then accepts another client); the next command
    /// connects again.
    public func closeControlChannel() {
        channelLock.withLock {
            direct?.close()
            direct = nil
            directRetryAt = 0
            directUnusableReason = "closed by this host"
        }
    }

    /// The connected direct monitor, connecting it when due; nil (the reason recorded) when it
    /// cannot be had. Called under `channelLock`.
    private func connectedDirect() -> DirectQMP? {
        if let direct { return direct }
        let now = monotonicNow()
        guard now >= directRetryAt else { return nil }
        directRetryAt = now + Self.directRetryInterval
        if controlSocket == nil {
            do {
                controlSocket = .some(EndophyteDomainXML.controlSocket(inDomainXML: try domain.xml()))
            } catch {
                directUnusableReason = "cannot read the domain XML for its direct monitor: \(error)"
                return nil
            }
        }
        guard let path = controlSocket ?? nil else {
            directUnusableReason = "the domain has no direct monitor (EndophyteDomainConfig.controlSocket)"
            directRetryAt = .infinity
            return nil
        }
        do {
            // QEMU greets at once; silence means another client holds the monitor.
            direct = try DirectQMP(path: path, domain: name, greetingTimeout: min(timeout, 0.5), timeout: timeout)
            directUnusableReason = ""
            return direct
        } catch {
            directUnusableReason = "\(error)"
            return nil
        }
    }

    /// Runs `command` on the direct monitor. Returns nil, with the reason recorded, when the
    /// monitor cannot be used or failed as a channel (it is dropped: the caller falls back to
    /// libvirt); QEMU's refusal of the command is thrown as with libvirt.
    fileprivate func runDirect(_ command: String, _ arguments: [String: Any]?, files: [Int32]) throws(VMHostError) -> Any? {
        try channelLock.withLock { () throws(VMHostError) -> Any? in
            guard let d = connectedDirect() else { return nil }
            do throws(VMHostError) {
                return try d.run(command, arguments, files: files, timeout: timeout)
            } catch {
                if case .qmp = error.code { throw error }
                d.close()
                direct = nil
                directUnusableReason = "\(error)"
                directRetryAt = monotonicNow() + Self.directRetryInterval
                return nil
            }
        }
    }

    /// The direct monitor's path and why it is not in use now.
    fileprivate var directProblem: (String, String) {
        channelLock.withLock { ((controlSocket ?? nil) ?? "(none)", directUnusableReason) }
    }

    /// `command` on the direct monitor, or through libvirt when the direct one cannot be used.
    @discardableResult
    private func runControl(_ command: String) throws(VMHostError) -> Any {
        if let r = try runDirect(command, nil, files: []) { return r }
        return try qmp.run(command)
    }

    // MARK: checkpoint primitives (SourceHooks)

    /// Stops the guest's vCPUs (QMP `stop`); its RAM and devices stay as they are. Through the
    /// direct monitor when there is one (libvirt learns of it from QEMU's STOP event).
    public func pause() throws(VMHostError) { try runControl("stop") }

    /// Stops the guest through libvirt only: for a caller that is not this host's checkpointing
    /// object (a watchdog, a fence), which must not wait on a direct monitor another client holds.
    public func pauseThroughLibvirt() throws(VMHostError) { try qmp.run("stop") }

    /// Lets the guest run again (QMP `cont`), also after a device-state save left it `postmigrate`.
    public func resume() throws(VMHostError) { try runControl("cont") }

    /// QEMU's device state now, without guest RAM. Call it while the guest is paused: the RAM copy
    /// and this state then describe the same instant. Saved over the direct monitor when there is
    /// one; when it fails as a channel before the save began, through libvirt.
    public func deviceState(epoch: UInt64) throws(VMHostError) -> DeviceState {
        if channelLock.withLock({ connectedDirect() }) != nil {
            var migrationIssued = false
            do throws(VMHostError) {
                return try deviceState(epoch: epoch, via: DirectChannel(owner: self), migrationIssued: &migrationIssued)
            } catch {
                guard case .monitorChannel = error.code, !migrationIssued else { throw error }
            }
        }
        var migrationIssued = false
        return try deviceState(epoch: epoch, via: qmp, migrationIssued: &migrationIssued)
    }

    private func deviceState(epoch: UInt64, via qmp: some QMPChannel, migrationIssued: inout Bool) throws(VMHostError) -> DeviceState {
        try ensureIgnoreShared(via: qmp)
        let deadline = monotonicNow() + timeout
        let pair = try FDPair.socketPair(domain: name)
        let readEnd = pair.first
        // Read on another thread from before `migrate` on: QEMU's migration thread blocks once the
        // socket buffer is full, and nothing here may wait on it while holding the monitor.
        let reader = IOThread { IOThread.readAll(readEnd, deadline: deadline) }
        try reader.start()
        let fdName = nextFDName("save")
        var migrating = false
        defer {
            pair.closeSecond()
            if !migrating { _ = try? qmp.run("closefd", ["fdname": fdName]) }  // QEMU's copy, so the reader sees EOF
            _ = reader.join()
        }
        try qmp.run("getfd", ["fdname": fdName], files: [pair.second])
        pair.closeSecond()  // QEMU holds the other end now; EOF comes when it closes it
        migrationIssued = true
        try qmp.run("migrate", ["uri": "fd:\(fdName)"])
        migrating = true
        let outcome = reader.join()
        let bytes: [UInt8]
        switch outcome {
        case .done(let b): bytes = b
        case let .failed(op, e): throw error(.system(operation: "\(op) the device state", errno: e))
        case .timedOut(let n): throw error(.timeout(operation: "reading the device state (\(n) bytes so far)", seconds: timeout))
        }
        // QEMU closes the stream after setting `completed` (or `failed`), so one query mostly suffices.
        try qmp.waitForMigration("saving the device state", deadline: deadline, timeout: timeout)
        try Self.checkStream(bytes, domain: name)
        return DeviceState(epoch: epoch, bytes: bytes)
    }

    /// The engine's hooks for this domain. `throttle` receives the engine's level (0…1); QEMU's own
    /// `cpu-throttle-percentage` acts only during its migrations, so the caller supplies one (a
    /// cgroup CPU quota on QEMU, for example).
    /// The engine commits the device-state bytes with its own epoch number, so no tag is needed here.
    /// `afterPause` runs once the guest is stopped, before anything of the checkpoint is taken (output
    /// commit seals its epoch there: `OutputCommitGate.sealAtPause`).
    public func sourceHooks(throttle: @escaping @Sendable (Double) -> Void = { _ in },
                            afterPause: @escaping @Sendable () -> Void = {}) -> SourceHooks {
        SourceHooks(pause: { try self.pause(); afterPause() }, resume: { try self.resume() },
                    deviceState: { try self.deviceState(epoch: 0).bytes }, throttle: throttle)
    }

    // MARK: standby

    /// True for a standby that can still be activated: paused in libvirt's view, and its QEMU
    /// waiting for an incoming stream (`inmigrate`: started with `-incoming defer`, never given one).
    public func isWaitingForState() throws(VMHostError) -> Bool { try whyNotWaiting() == nil }

    private func whyNotWaiting() throws(VMHostError) -> String? {
        let state: DomainState
        do { state = try domain.state() } catch { throw self.error(.libvirt(error)) }
        guard state == .paused else { return "it is \(state), not paused" }
        let status = try qmp.run("query-status")
        let runState = (status as? [String: Any])?["status"] as? String ?? "?"
        guard runState == "inmigrate" else { return "QEMU is '\(runState)', not 'inmigrate' (started without -incoming defer, or already given a state)" }
        return nil
    }

    /// Turns a standby into the running guest of one committed epoch: writes `image` into its RAM,
    /// loads `deviceState` (`migrate-incoming` from an fd) and resumes it. The pair must be of one
    /// epoch and the domain a standby that was never resumed; otherwise nothing is touched.
    @discardableResult
    /// `imageInGuestRAM`: the image already is this standby's guest RAM (the replica wrote its
    /// epochs there, `openGuestRAM`), so nothing is copied: the takeover is a device-state load and
    /// a resume.
    public func activate(image: RAMImage, deviceState: DeviceState, imageInGuestRAM: Bool = false) throws(VMHostError) -> ActivationTimings {
        let t0 = monotonicNow()
        guard image.epoch == deviceState.epoch else {
            throw error(.epochMismatch(ramEpoch: image.epoch, deviceStateEpoch: deviceState.epoch))
        }
        try Self.checkStream(deviceState.bytes, domain: name)
        if let why = try whyNotWaiting() { throw error(.notStandby(why)) }
        let ram = try openGuestRAM()
        guard ram.length == image.region.length else {
            throw error(.sizeMismatch(imageBytes: image.region.length, guestBytes: ram.length))
        }
        // QEMU does not touch guest RAM while it waits for its stream, and x-ignore-shared keeps the
        // stream from overwriting it: the image is the RAM the guest resumes with.
        if !imageInGuestRAM { memcpy(ram.base, image.region.base, ram.length) }
        let copied = monotonicNow()
        try ensureIgnoreShared(via: qmp)

        let deadline = monotonicNow() + timeout
        let pair = try FDPair.socketPair(domain: name)
        let ours = pair.second
        let bytes = deviceState.bytes
        let writer = IOThread {
            let r = IOThread.writeAll(bytes, to: ours, deadline: deadline)
            shutdown(ours, Int32(SHUT_WR))  // end of stream: QEMU finishes loading
            return r
        }
        let fdName = nextFDName("load")
        try qmp.run("getfd", ["fdname": fdName], files: [pair.first])
        pair.closeFirst()
        var loading = false
        defer {
            if !loading { _ = try? qmp.run("closefd", ["fdname": fdName]) }  // QEMU's copy: the writer sees EPIPE
            _ = writer.join()
            pair.closeSecond()
        }
        try writer.start()
        try qmp.run("migrate-incoming", ["uri": "fd:\(fdName)"])
        loading = true
        switch writer.join() {
        case .done: break
        case let .failed(op, e):
            // A QEMU that rejects a stream exits (QEMU 7.2 ends the process on a failed incoming load).
            throw error(.migration(operation: "loading the device state", status: "\(op) failed: \(String(cString: strerror(e)))",
                                   detail: "QEMU stopped reading; it has probably exited"))
        case .timedOut(let n): throw error(.timeout(operation: "writing the device state (\(n) of \(bytes.count) bytes)", seconds: timeout))
        }
        try qmp.waitForMigration("loading the device state", deadline: deadline, timeout: timeout)
        let loaded = monotonicNow()
        // libvirt did not start this migration, so it leaves the domain paused: resume it through
        // libvirt, which then knows the guest runs.
        do { try domain.resume() } catch { throw self.error(.libvirt(error)) }
        let resumed = monotonicNow()
        return ActivationTimings(checkAndCopy: copied - t0, loadDeviceState: loaded - copied, resume: resumed - loaded)
    }

    // MARK: helpers

    /// `x-ignore-shared` leaves shared RAM blocks (the guest-RAM memfd) out of the migration stream.
    /// A capability cannot change during a migration, so it is set once, before the first.
    private func ensureIgnoreShared(via qmp: some QMPChannel) throws(VMHostError) {
        if lock.withLock({ ignoreSharedSet }) { return }
        try qmp.run("migrate-set-capabilities", ["capabilities": [["capability": "x-ignore-shared", "state": true]]])
        lock.withLock { ignoreSharedSet = true }
    }

    private func nextFDName(_ what: String) -> String {
        lock.withLock {
            fdSerial += 1
            return "mycelium-\(what)-\(fdSerial)"
        }
    }

    /// A QEMU migration stream starts with "QEVM" and version 3; anything else would make the
    /// standby's QEMU exit mid-load, so it is refused before QEMU sees it.
    static func checkStream(_ bytes: [UInt8], domain: String) throws(VMHostError) {
        guard bytes.count >= 8 else {
            throw VMHostError(.invalidDeviceState("\(bytes.count) bytes, shorter than a QEMU stream header"), domain: domain)
        }
        guard Array(bytes[0..<4]) == qemuStreamMagic else {
            throw VMHostError(.invalidDeviceState("it does not start with QEMU's magic 'QEVM'"), domain: domain)
        }
        guard Array(bytes[4..<8]) == qemuStreamVersion else {
            throw VMHostError(.invalidDeviceState("stream version \(bytes[4..<8].map { String($0) }.joined(separator: ".")), not 3"), domain: domain)
        }
    }
}

/// The direct monitor as a QMPChannel for the device-state save: a channel failure is thrown (as
/// `.monitorChannel`) so the save can fall back to libvirt while it has not begun.
private struct DirectChannel: QMPChannel {
    let owner: EndophyteDomain
    var name: String { owner.name }
    func run(_ command: String, _ arguments: [String: Any]?, files: [Int32]) throws(VMHostError) -> Any {
        guard let r = try owner.runDirect(command, arguments, files: files) else {
            let (path, why) = owner.directProblem
            throw VMHostError(.monitorChannel(path: path, problem: "'\(command)' could not use it: \(why)"), domain: owner.name)
        }
        return r
    }
}

/// A small text file (pid files, /proc entries, the shim report), or nil.
func readSmallFile(_ path: String, limit: Int = 4096) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while out.count < limit {
        // SAFETY: read writes at most chunk.count bytes into the array's storage.
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        out += chunk[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

extension String {
    func trimmingWhitespace() -> String {
        let ws: Set<Character> = [" ", "\n", "\t", "\r"]
        return String(drop { ws.contains($0) }.reversed().drop { ws.contains($0) }.reversed())
    }
}
