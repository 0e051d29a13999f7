// The VM controller's driver (issue 16): carries out `VMAction`s on this node's libvirt daemon
// (VMHost) and replicates guest RAM with the Endophyte engine. The decisions (who runs, who holds,
// when to fence) are the pure VMController's; this only makes them so.
//
//  - run: start the guest (cold boot), or take over from the replicated image (the replica became
//    the primary: its standby domain, waiting in `-incoming defer`, gets the last committed RAM and
//    device state and resumes), or resume it after fencing; then replicate to the record's replica,
//    reconnecting until it answers (the guest runs unprotected meanwhile, and `vm show` says so).
//  - hold: keep a replica image (a file under the state directory) and a standby domain; accept
//    the primary's connection (one listener per node; the source names the VM first, `Attach`).
//
// Replication runs over rhizomorph (encrypted and authenticated chunk by chunk, striped over the
// session's connections). One rhizomorph listener serves every VM this node holds a replica of: it
// accepts any of the keys of those VMs' primaries (rz_accept_any), and the key a source proved must
// then be the primary of the VM it attaches to.
//  - fence: stop replicating (its epochs would resume the guest) and pause the guest.
//  - destroy: stop everything, remove the domain and the image.
//
// Blocking work (libvirt, QEMU, the replication loop) runs on its own threads; `perform` returns
// when the action has taken effect locally.

import DirtyPages
import Endophyte
import Foundation
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import Rhizomorph
import VMController
import VMHost

public struct EndophyteDriverSettings: Sendable {
    public var libvirtURI: String
    /// libvirt's QEMU run directory, where it writes `<domain>.pid`.
    public var qemuRunDirectory: String
    /// Replica images and serial logs (one of each per VM).
    public var stateDirectory: String
    /// The dirty-page preload shim for QEMU (nil: the hash engine tracks guest RAM).
    public var shimLibrary: String?
    /// Where this node accepts replication connections.
    public var listenHost: String
    public var listenPort: UInt16
    public var replication: ReplicationConfig
    /// Output commit (Remus network buffering): the guest's network output leaves this host only once the
    /// replica has committed the checkpoint that follows it. Off: packets go out at once, and a
    /// failover may contradict replies clients already saw.
    public var outputCommit: Bool
    public var outputCommitLimits: OutputCommitLimits

    public init(libvirtURI: String, qemuRunDirectory: String = "/run/libvirt/qemu", stateDirectory: String, shimLibrary: String? = nil,
                listenHost: String, listenPort: UInt16,
                replication: ReplicationConfig = ReplicationConfig(epochInterval: 0.1, rpoBound: 2, emergencyPolicy: .continueUnprotected, ackTimeout: 2),
                outputCommit: Bool = true, outputCommitLimits: OutputCommitLimits = OutputCommitLimits()) {
        self.libvirtURI = libvirtURI; self.qemuRunDirectory = qemuRunDirectory; self.stateDirectory = stateDirectory
        self.shimLibrary = shimLibrary; self.listenHost = listenHost; self.listenPort = listenPort; self.replication = replication
        self.outputCommit = outputCommit; self.outputCommitLimits = outputCommitLimits
    }
}

/// Where another node takes replication connections, and its key (the agent answers from its spore).
public struct ReplicationPeer: Sendable, Equatable {
    public var host: String
    public var port: UInt16
    public var key: PublicKey
    public init(host: String, port: UInt16, key: PublicKey) { self.host = host; self.port = port; self.key = key }
}

/// A transition of a VM on this node, for events and metrics (`mycelium_vm_transitions_total{kind}`).
public enum VMTransition: String, Sendable, CaseIterable {
    case started, adopted, resumed, replicating, protected, unprotected, tookOver = "took_over", fenced, holding, destroyed
    /// Not a transition: a line worth an operator's attention (a refused connection, a fallback).
    case notice
}

/// What the driver reports of one VM here (for `vm show`, status and metrics).
public struct LocalVMState: Sendable, Equatable {
    public enum Role: String, Sendable { case primary, fenced, replica }
    public var role: Role
    public var ownershipEpoch: UInt64
    /// Primary: the engine's protection state ("syncing", "protected", "unprotected: …"); replica: "holding".
    public var replication: String
    /// Primary: uffd-remote or hash (and why); replica: nil.
    public var engine: String?
    /// Replica: the last committed engine epoch of the image.
    public var committedEpoch: UInt64
    /// Primary: "on (N packets held, M dropped)", "on, passing through until …" or "off (…)"; replica: nil.
    public var outputCommit: String? = nil
}

public final class EndophyteDriver: ControllerDriver, @unchecked Sendable {
    // SAFETY (Sendable): the tables, and each VM's `record`, `fenced`, `source`, `transport` and `stopping` (shared with
    // its replication or serving thread), are guarded by `lock`; the rest of a VM's objects is touched
    // only by the action running on it (actions run one at a time, in order).
    public typealias Action = VMAction

    public let settings: EndophyteDriverSettings
    let host: VMHost
    let identity: SigningKey
    let network: NetworkID
    let peer: @Sendable (MyceliumIdentity.NodeID) -> ReplicationPeer?
    let report: @Sendable (VMTransition, String) -> Void
    let listener: Rhizomorph.Listener
    let lock = PthreadLock()
    var primaries: [String: Primary] = [:]
    var replicas: [String: Replica] = [:]
    var closed = false
    /// Per VM run here as primary: the monotonic ms until which its lease lets it run (the watchdog's).
    var deadlines: [String: UInt64] = [:]

    final class Primary: @unchecked Sendable {
        var record: VMRecord
        let domain: EndophyteDomain
        let region: MappedRegion
        let tracking: GuestRAMTracking
        var source: ReplicationSource?
        var transport: ReplicationTransport?
        var thread: Thread?
        var stopping = false
        var fenced = false
        /// Output commit on the guest's NIC (nil: off, or it could not be attached: `outputCommitOff`).
        var gate: OutputCommitGate?
        var outputCommitOff = "off"
        init(record: VMRecord, domain: EndophyteDomain, region: MappedRegion, tracking: GuestRAMTracking) {
            self.record = record; self.domain = domain; self.region = region; self.tracking = tracking
        }
    }

    final class Replica: @unchecked Sendable {
        var record: VMRecord
        let image: MappedRegion
        let receiver: ReplicaReceiver
        var standby: EndophyteDomain?
        var transport: ReplicationTransport?
        init(record: VMRecord, image: MappedRegion, receiver: ReplicaReceiver) {
            self.record = record; self.image = image; self.receiver = receiver
        }
    }

    public init(settings: EndophyteDriverSettings, identity: SigningKey, network: NetworkID,
                peer: @escaping @Sendable (MyceliumIdentity.NodeID) -> ReplicationPeer?,
                report: @escaping @Sendable (VMTransition, String) -> Void) throws {
        self.settings = settings
        self.identity = identity
        self.network = network
        self.peer = peer
        self.report = report
        try FileManager.default.createDirectory(atPath: settings.stateDirectory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        host = try VMHost(uri: settings.libvirtURI, qemuRunDirectory: settings.qemuRunDirectory)
        listener = try Rhizomorph.Listener(addresses: [settings.listenHost], port: settings.listenPort)
        let t = Thread { [weak self] in self?.acceptLoop() }
        t.name = "vm-replica-listener"
        t.start()
    }

    public var port: UInt16 { listener.port }

    /// Stops replication threads and the listener; leaves the guests as they are (an agent restart
    /// must not take VMs down).
    public func close() {
        let (ps, rs) = lock.withLock { () -> ([Primary], [Replica]) in
            closed = true
            return (Array(primaries.values), Array(replicas.values))
        }
        for p in ps {
            stopReplication(p)
            // The guest runs on without this agent, unprotected: its network must not wait for
            // commits that will not come (held packets are sent; the filters go).
            p.gate?.detach(flush: true)
        }
        for t in lock.withLock({ rs.compactMap(\.transport) }) { t.close() }
        // The accept loop leaves within one accept timeout; the listener itself is freed with the
        // last session that holds it (Rhizomorph.Listener's deinit).
    }

    public func states() -> [String: LocalVMState] {
        lock.withLock {
            var out: [String: LocalVMState] = [:]
            for (n, p) in primaries {
                let st = p.source?.status
                out[n] = LocalVMState(role: p.fenced ? .fenced : .primary, ownershipEpoch: p.record.epoch,
                                      replication: p.record.replica == nil ? "unprotected: no replica" : (st.map { "\($0.state)" } ?? "connecting"),
                                      engine: "\(p.tracking.tracker.engine)" + (p.tracking.fallbackReason.map { " (\($0))" } ?? ""),
                                      committedEpoch: 0, outputCommit: p.gate.map(Self.describe) ?? p.outputCommitOff)
            }
            for (n, r) in replicas {
                out[n] = LocalVMState(role: .replica, ownershipEpoch: r.record.epoch, replication: "holding", engine: nil,
                                      committedEpoch: r.receiver.committedEpoch)
            }
            return out
        }
    }

    static func describe(_ g: OutputCommitGate) -> String {
        let s = g.status
        if let why = s.broken { return "on, but broken: \(why); restart the agent to attach it again" }
        switch s.mode {
        case .holding: return "on (\(s.heldPackets) packets held, \(s.dropped) dropped)"
        // Worded without "protected": the replication field says whether the guest is.
        case .passingThrough: return "on, passing through until a replica holds a checkpoint (\(s.dropped) dropped)"
        }
    }

    public func perform(_ action: VMAction) async throws {
        switch action {
        case .run(let r): try run(r)
        case let .keepAlive(name, seconds): try keepAlive(name, seconds: seconds)
        case .hold(let r): try hold(r)
        case let .fence(name, reason): fence(name, reason: reason)
        case let .destroy(name, reason): try destroy(name, reason: reason)
        }
    }

    // MARK: primary

    /// The watchdog's deadline for `name` moves to `seconds` from now.
    func keepAlive(_ name: String, seconds: Double) throws {
        let until = VMWatchdog.monotonicMilliseconds() + UInt64(max(0, seconds) * 1000)
        let all = lock.withLock { () -> [String: UInt64] in
            deadlines[name] = until
            return deadlines
        }
        try VMWatchdog.write(all, to: settings.stateDirectory)
    }

    func forgetDeadline(_ name: String) {
        let all = lock.withLock { () -> [String: UInt64] in
            deadlines[name] = nil
            return deadlines
        }
        try? VMWatchdog.write(all, to: settings.stateDirectory)
    }

    func run(_ r: VMRecord) throws {
        if let p = lock.withLock({ primaries[r.name] }) {
            if p.fenced {
                try p.domain.resume()
                lock.withLock { p.fenced = false }
                report(.resumed, "VM \(r.name): lease renewed, guest resumed (epoch \(r.epoch))")
            }
            let replicaChanged = lock.withLock { () -> Bool in
                defer { p.record = r }
                return p.record.replica != r.replica
            }
            if replicaChanged || p.thread == nil { startReplication(p) }
            return
        }
        let domain: EndophyteDomain
        if let rep = lock.withLock({ replicas.removeValue(forKey: r.name) }) {
            domain = try takeOver(r, from: rep)
        } else {
            domain = try startOrAdopt(r)
        }
        let region = try domain.openGuestRAM()
        let tracking = try domain.openDirtyTracker(region: region, shimReport: shimReport(r.name))
        if let why = tracking.fallbackReason { report(.notice, "VM \(r.name): guest RAM tracked by the hash engine: \(why)") }
        let p = Primary(record: r, domain: domain, region: region, tracking: tracking)
        attachOutputCommit(p)
        lock.withLock { primaries[r.name] = p }
        startReplication(p)
    }

    /// A domain of this VM already here at this epoch (the agent restarted) is adopted; one of an
    /// older epoch is stale and removed; otherwise the guest boots.
    func startOrAdopt(_ r: VMRecord) throws -> EndophyteDomain {
        if let m = try host.managedDomains().first(where: { $0.name == r.name }) {
            let d = try host.domain(named: r.name)
            if m.metadata.role == .primary && m.metadata.ownershipEpoch == r.epoch, try d.state() != .shutOff {
                // Paused by the watchdog while the agent was away, or fenced: the lease is valid again.
                if try d.state() == .paused { try d.resume() }
                report(.adopted, "VM \(r.name): found here at epoch \(r.epoch); adopting it")
                return d
            }
            report(.destroyed, "VM \(r.name): removing a stale copy here (\(m.metadata.role) at epoch \(m.metadata.ownershipEpoch); the VM is at \(r.epoch))")
            try host.remove(r.name)
        }
        let d = try host.start(r.spec, domainConfig(r, role: .primary))
        report(.started, "VM \(r.name): started as its primary (epoch \(r.epoch))")
        return d
    }

    /// Failover: the standby gets the replica's last committed epoch (RAM and device state together)
    /// and resumes.
    func takeOver(_ r: VMRecord, from rep: Replica) throws -> EndophyteDomain {
        lock.withLock { rep.transport }?.close()
        let epoch = rep.receiver.committedEpoch
        guard epoch > 0 else {
            throw VMDriverError("VM \(r.name): this node became its primary but holds no committed image (the first full copy never finished); it cannot continue the guest")
        }
        let standby: EndophyteDomain
        if let s = rep.standby, (try? s.isWaitingForState()) == true {
            standby = s
        } else {
            try? host.remove(r.name)
            standby = try host.start(r.spec, domainConfig(r, role: .standby))
        }
        let t = try standby.activate(image: RAMImage(epoch: epoch, region: rep.image),
                                     deviceState: DeviceState(epoch: epoch, bytes: rep.receiver.deviceState))
        try standby.setOwnership(EndophyteMetadata(role: .primary, ownershipEpoch: r.epoch))
        report(.tookOver, "VM \(r.name): took over at ownership epoch \(r.epoch) from replicated epoch \(epoch) in \(Int(t.total * 1000)) ms "
            + "(copy \(Int(t.checkAndCopy * 1000)) ms, device state \(Int(t.loadDeviceState * 1000)) ms, resume \(Int(t.resume * 1000)) ms)")
        try? FileManager.default.removeItem(atPath: imagePath(r.name))
        return standby
    }

    /// Puts the guest's network output behind an output commit gate (when on). It passes packets
    /// through until a replica is connected. A guest without the NIC (a domain from an older agent)
    /// runs without, and `vm show` says why.
    func attachOutputCommit(_ p: Primary) {
        guard settings.outputCommit else {
            p.outputCommitOff = "off (vm_output_commit = false: replies may leave before the replica has the state they come from)"
            return
        }
        do {
            p.gate = try OutputCommitGate(domain: p.domain, limits: settings.outputCommitLimits, mode: .passingThrough)
        } catch {
            p.outputCommitOff = "off: could not attach it to the guest's NIC: \(error)"
            report(.notice, "VM \(p.record.name): output commit is off: \(error)")
        }
    }

    func startReplication(_ p: Primary) {
        stopReplication(p)
        let name = p.record.name
        guard let replica = p.record.replica else {
            p.gate?.setMode(.passingThrough)
            return
        }
        lock.withLock { p.stopping = false }
        let t = Thread { [weak self] in self?.replicate(p, to: replica) }
        t.name = "vm-\(name)-source"
        p.thread = t
        t.start()
        report(.replicating, "VM \(name): replicating to \(replica)")
    }

    func stopReplication(_ p: Primary) {
        guard let t = p.thread else { return }
        let (source, transport) = lock.withLock { () -> (ReplicationSource?, ReplicationTransport?) in
            p.stopping = true
            return (p.source, p.transport)
        }
        source?.requestStop()
        transport?.close()
        while t.isExecuting { usleep(1000) }  // the loop leaves within one epoch once its transport is closed
        p.thread = nil
    }

    func replicate(_ p: Primary, to replica: MyceliumIdentity.NodeID) {
        let name = p.record.name
        var lastError = ""
        let gate = p.gate
        let policy = settings.replication.emergencyPolicy
        while !lock.withLock({ p.stopping || closed }) {
            // Not connected: unprotected, unless the policy keeps the guest paused until a replica
            // has a checkpoint (its held packets then wait for that commit).
            if policy == .continueUnprotected { gate?.setMode(.passingThrough) }
            do {
                guard let ep = peer(replica) else { throw VMDriverError("no replication address known for \(replica)") }
                let path = Rhizomorph.Path(local: localAddress, remote: ep.host, port: ep.port)
                let t = try RhizomorphReplicationTransport.connect(paths: [path], identity: identity, network: network, peerKey: ep.key)
                try t.sendAttach(Attach(name: name, ownershipEpoch: lock.withLock { p.record.epoch }))
                let source = try ReplicationSource(region: p.region, tracker: p.tracking.tracker, config: settings.replication,
                                                   hooks: p.domain.sourceHooks(afterPause: { gate?.sealAtPause() }),
                                                   onEvent: { Self.steer(gate, by: $0) })
                // Published under the lock, and checked against a stop that came meanwhile (which
                // could not close what it did not see).
                let stop = lock.withLock { () -> Bool in
                    p.transport = t
                    p.source = source
                    return p.stopping
                }
                if stop { t.close(); break }
                try source.connect(t)
                report(.protected, "VM \(name): protected (replica \(replica) holds a full image)")
                lastError = ""
                try source.run()
            } catch {
                let text = "\(error)"
                if text != lastError { report(.unprotected, "VM \(name): not protected: \(text); retrying") }
                lastError = text
            }
            lock.withLock { p.transport }?.close()
            for _ in 0..<10 where !lock.withLock({ p.stopping || closed }) { usleep(100_000) }
        }
    }

    /// Output commit follows the engine: a boundary's commit releases what the guest sent before its
    /// pause; holding starts when a replica connects and stops when the guest runs unprotected.
    static func steer(_ gate: OutputCommitGate?, by event: EndophyteEvent) {
        guard let gate else { return }
        switch event {
        case .connected, .protectionRestored: gate.setMode(.holding)
        case .epochCommitted: gate.releaseCommitted()
        case .emergency(_, .continueUnprotected): gate.setMode(.passingThrough)
        default: break
        }
    }

    func fence(_ name: String, reason: String) {
        guard let p = lock.withLock({ primaries[name] }) else { return }
        stopReplication(p)
        do { try p.domain.pause() } catch { report(.notice, "VM \(name): pausing the guest to fence it failed: \(error)") }
        // What it sent since the last commit must never leave: the replica may take over from there.
        if let n = p.gate?.discardHeld(), n > 0 { report(.notice, "VM \(name): discarded \(n) held packets of the fenced guest") }
        lock.withLock { p.fenced = true }
        report(.fenced, "VM \(name): fenced (guest paused): \(reason)")
    }

    // MARK: replica

    func hold(_ r: VMRecord) throws {
        if let p = lock.withLock({ primaries.removeValue(forKey: r.name) }) {
            // This node ran it and is its replica now: its copy is the old owner's; let the new
            // primary send a full image.
            stopReplication(p)
            p.gate?.detach(flush: false)
            forgetDeadline(r.name)
            try host.remove(r.name)
        }
        let held = lock.withLock { () -> Bool in
            guard let rep = replicas[r.name] else { return false }
            rep.record = r
            return true
        }
        if held { return }
        let bytes = Int(r.spec.memoryMiB) << 20
        let image = try MappedRegion(path: imagePath(r.name), length: bytes)
        let rep = Replica(record: r, image: image, receiver: ReplicaReceiver(region: image, stagingReservePages: 256))
        // A standby waiting in `-incoming defer` turns a failover into one device-state load and a
        // resume (a cold start costs seconds under TCG).
        do {
            if try host.managedDomains().contains(where: { $0.name == r.name }) { try host.remove(r.name) }
            rep.standby = try host.start(r.spec, domainConfig(r, role: .standby))
        } catch {
            report(.notice, "VM \(r.name): no standby domain here (\(error)); a failover will start one then")
        }
        lock.withLock { replicas[r.name] = rep }
        report(.holding, "VM \(r.name): holding its replica (epoch \(r.epoch))")
    }

    /// How long one accept waits before the set of allowed sources is read again (a replica added
    /// meanwhile, a primary replaced).
    static let acceptRecheck = 0.5

    /// The keys that may connect: the primaries of the replicas held here.
    func allowedSources() -> [PublicKey] {
        let primaries = lock.withLock { Set(replicas.values.map(\.record.primary)) }
        return Array(Set(primaries.compactMap { peer($0)?.key }))
    }

    func acceptLoop() {
        var lastError = ""
        while !lock.withLock({ closed }) {
            let allowed = allowedSources()
            guard !allowed.isEmpty else {
                // Nobody may connect: a source that tries waits in the listener's queue until a
                // replica of its VM is held here, or gives up and retries.
                usleep(UInt32(Self.acceptRecheck * 1_000_000))
                continue
            }
            let t: RhizomorphReplicationTransport
            do {
                t = try RhizomorphReplicationTransport.accept(from: listener, identity: identity, network: network,
                                                              allowedPeers: allowed, timeout: Self.acceptRecheck)
                lastError = ""
            } catch {
                if lock.withLock({ closed }) { return }
                if case .timeout = error.code { continue }
                let text = "\(error)"
                if text != lastError { report(.notice, "replication connection refused: \(text)") }
                lastError = text
                continue
            }
            let th = Thread { [weak self] in self?.serve(t) }
            th.name = "vm-replica"
            th.start()
        }
    }

    func serve(_ t: RhizomorphReplicationTransport) {
        do {
            let a = try t.receiveAttach(timeout: 5)
            let rep = try lock.withLock { () throws -> Replica in
                guard let rep = replicas[a.name] else { throw VMDriverError("this node holds no replica of '\(a.name)'") }
                guard a.ownershipEpoch == rep.record.epoch, peer(rep.record.primary)?.key == t.peerKey else {
                    throw VMDriverError("'\(a.name)' at ownership epoch \(a.ownershipEpoch) from a node that is not its primary at epoch \(rep.record.epoch)")
                }
                rep.transport = t
                return rep
            }
            let end = rep.receiver.serve(t)
            report(.notice, "VM \(a.name): replication session ended: \(end) (image at epoch \(rep.receiver.committedEpoch))")
        } catch {
            report(.notice, "replication connection refused: \(error)")
            t.close()
        }
    }

    // MARK: destroy

    func destroy(_ name: String, reason: String) throws {
        let (p, r) = lock.withLock { (primaries.removeValue(forKey: name), replicas.removeValue(forKey: name)) }
        if let p {
            stopReplication(p)
            p.gate?.detach(flush: false)
        }
        lock.withLock { r?.transport }?.close()
        forgetDeadline(name)
        try host.remove(name)
        try? FileManager.default.removeItem(atPath: imagePath(name))
        report(.destroyed, "VM \(name): copy here destroyed: \(reason)")
    }

    // MARK: checks

    /// Checks a spec on this node before the network records it here: the kernel and initrd can be
    /// read, and libvirt accepts the domain's definition (defined under a throwaway name, then
    /// undefined at once). Throws what is wrong, in libvirt's words where it is libvirt's.
    public func validate(_ spec: VMSpec) throws {
        for (what, path) in [("kernel", spec.kernel), ("initrd", spec.initrd)] where !path.isEmpty {
            guard access(path, R_OK) == 0 else {
                throw VMDriverError("the \(what) '\(path)' cannot be read on this node (\(String(cString: strerror(errno)))); every host that may run the VM needs it at that path")
            }
        }
        var probe = spec
        probe.name = "mycelium-check-\(UInt32.random(in: 0...UInt32.max))"
        let xml = try EndophyteDomainXML.make(probe, EndophyteDomainConfig(role: .primary, ownershipEpoch: 0, serialLog: serialLog(probe.name)))
        do {
            let d = try host.connection.define(xml: xml)
            try? d.undefine()
        } catch {
            throw VMDriverError("libvirt refuses this VM: \(error.message)")
        }
    }

    // MARK: paths

    /// The address replication leaves from: the listen host, or any when it is a wildcard (the
    /// kernel then picks by route, in the remote's address family).
    var localAddress: String { ["", "0.0.0.0", "::"].contains(settings.listenHost) ? "" : settings.listenHost }

    func imagePath(_ name: String) -> String { settings.stateDirectory + "/" + name + ".ram" }
    func serialLog(_ name: String) -> String { settings.stateDirectory + "/" + name + ".serial" }
    func shimReport(_ name: String) -> String? { settings.shimLibrary == nil ? nil : settings.stateDirectory + "/" + name + ".shim" }

    func domainConfig(_ r: VMRecord, role: EndophyteRole) -> EndophyteDomainConfig {
        EndophyteDomainConfig(role: role, ownershipEpoch: r.epoch, serialLog: serialLog(r.name),
                              shim: settings.shimLibrary.map { DirtyPageShim(library: $0, report: shimReport(r.name)!) },
                              nic: Self.nic(for: r.name))
    }

    /// Every endophyte gets one virtio NIC on a tap named after the VM (`myc` + 8 hex digits of a
    /// hash of its name, the same on every host); wiring the tap is the host's business.
    static func nic(for name: String) -> GuestNIC {
        var h: UInt32 = 0x811c_9dc5
        for b in name.utf8 { h = (h ^ UInt32(b)) &* 0x0100_0193 }
        let hex = String(h, radix: 16)
        return GuestNIC(mac: GuestNIC.mac(for: name), tap: "myc" + String(repeating: "0", count: 8 - hex.count) + hex)
    }
}

public struct VMDriverError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}
