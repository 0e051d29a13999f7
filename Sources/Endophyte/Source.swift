// The primary side: epoch-based checkpoint replication of one memory region.
//
// One epoch (Remus §3, with pre-copy inside the epoch):
//   1. While the source runs, every `streamInterval` collect the dirty set (re-arming it in the same
//      step) and stream those pages. A page written after its collection is dirty again, so nothing
//      streamed early can end up stale in a committed epoch.
//   2. At the boundary: pause the source through the caller's hook, collect the last dirty set,
//      send it with the opaque device-state blob and `commit`.
//   3. Wait for the replica's ack, then resume. The replica applies the epoch atomically, so a crash
//      of this side at any point leaves the replica on the previous committed epoch.
// Unlike Remus we do not resume before the ack (Remus buffers outbound network output instead):
// the caller's workload may have side effects we cannot hold back, so the pause includes one ack RTT.
// For a VM's NIC the output is held as well (output commit: `OutputCommitBuffer`, VMHost's gate);
// its serial port and any other device are not, so the pause still covers the ack.

import DirtyPages
import MyceliumCore

#if canImport(Glibc)
import Glibc
#endif

public struct ReplicationConfig: Sendable, Equatable {
    /// Seconds between checkpoints (Remus ran at 25–40 per second; 0.025–0.1 here).
    public var epochInterval: Double
    /// Longest the replica may lag (seconds since the last committed checkpoint) before the
    /// emergency policy acts.
    public var rpoBound: Double
    public var emergencyPolicy: EmergencyPolicy
    /// How long to wait for an ack (or any reply) before calling the replica unreachable.
    public var ackTimeout: Double
    public var throttle: ThrottleCurve
    /// How often, within an epoch, pages are collected and streamed while the source runs.
    public var streamInterval: Double

    public init(epochInterval: Double = 0.05, rpoBound: Double = 1.0, emergencyPolicy: EmergencyPolicy = .pauseSource,
                ackTimeout: Double = 2.0, throttle: ThrottleCurve = .standard, streamInterval: Double = 0.01) {
        self.epochInterval = epochInterval
        self.rpoBound = rpoBound
        self.emergencyPolicy = emergencyPolicy
        self.ackTimeout = ackTimeout
        self.throttle = throttle
        self.streamInterval = streamInterval
    }
}

/// How the engine acts on the source. For a VM: QMP stop/cont, the device-state blob from
/// QEMU's device-only migration stream, and a CPU throttle. For a process: SIGSTOP/SIGCONT and a
/// cgroup CPU quota or stop/continue duty cycle.
public struct SourceHooks: Sendable {
    public var pause: @Sendable () throws -> Void
    public var resume: @Sendable () throws -> Void
    /// Opaque bytes committed with each epoch (device state). Called while the source is paused.
    public var deviceState: @Sendable () throws -> [UInt8]
    /// 0 = full speed … 1 = stopped. Called when the throttle level changes.
    public var throttle: @Sendable (Double) -> Void

    public init(pause: @escaping @Sendable () throws -> Void, resume: @escaping @Sendable () throws -> Void,
                deviceState: @escaping @Sendable () throws -> [UInt8] = { [] },
                throttle: @escaping @Sendable (Double) -> Void = { _ in }) {
        self.pause = pause
        self.resume = resume
        self.deviceState = deviceState
        self.throttle = throttle
    }
}

public final class ReplicationSource: @unchecked Sendable {
    // SAFETY (Sendable): all replication work runs on the one thread that calls connect/checkpoint/
    // run (documented contract); `status` is read from any thread under `lock`.
    public let region: MappedRegion
    public let tracker: DirtyTracker
    public let config: ReplicationConfig
    let hooks: SourceHooks
    let onEvent: @Sendable (EndophyteEvent) -> Void
    private let lock = Lock()
    private var statusValue: ReplicationStatus
    private(set) var transport: ReplicationTransport?
    var throttleController: ThrottleController
    var bitmap: DirtyBitmap
    var nextEpoch: UInt64 = 1
    var lastCommitAt: Double = .nan
    var paused = false
    private var emergencyActive = false
    private var stopRequested = false

    public init(region: MappedRegion, tracker: DirtyTracker, config: ReplicationConfig, hooks: SourceHooks,
                onEvent: @escaping @Sendable (EndophyteEvent) -> Void = { _ in }) throws(EndophyteError) {
        guard tracker.pageCount == region.pageCount else {
            throw EndophyteError(.regionMismatch(local: region.length, remote: tracker.pageCount * dirtyPageSize))
        }
        self.region = region
        self.tracker = tracker
        self.config = config
        self.hooks = hooks
        self.onEvent = onEvent
        throttleController = ThrottleController(curve: config.throttle)
        bitmap = DirtyBitmap(pageCount: region.pageCount)
        statusValue = ReplicationStatus(policy: config.emergencyPolicy, rpoBound: config.rpoBound)
        statusValue.trackingFootprintBytes = tracker.footprintBytes + bitmap.footprintBytes
    }

    /// A consistent snapshot of the engine's state, safe to read from any thread.
    public var status: ReplicationStatus {
        lock.withLock {
            var s = statusValue
            if lastCommitAtShadow.isFinite { s.secondsSinceCommit = monotonicSeconds() - lastCommitAtShadow }
            return s
        }
    }
    private var lastCommitAtShadow: Double = .nan

    func updateStatus(_ body: (inout ReplicationStatus) -> Void) {
        lock.withLock { body(&statusValue) }
    }

    /// Asks a running `run` loop to return after the current epoch. Safe from any thread.
    public func requestStop() { lock.withLock { stopRequested = true } }
    private var shouldStop: Bool { lock.withLock { stopRequested } }

    // MARK: connection and full copy

    /// Attaches a replica and brings it up to date as one epoch, committed on return (protected).
    /// A replica that offers its image as a base gets only the pages whose hash differs from the
    /// region's (Resync.swift says why that is exact); one without an image gets the whole region.
    /// Either way the source keeps running while pages stream, except when an emergency already
    /// paused it, and what it writes meanwhile is sent at the boundary.
    @discardableResult
    public func connect(_ t: ReplicationTransport) throws(EndophyteError) -> SyncReport {
        transport = t
        let start = monotonicSeconds(), bytesBefore = t.bytesSent
        // Drawn per connection and never shown to the guest: pages cannot be crafted to collide.
        let seed = UInt64.random(in: 0...UInt64.max)
        try t.send(.setup, ReplicationSetup(regionBytes: UInt64(region.length), pageSize: UInt32(dirtyPageSize),
                                            sourceEpoch: nextEpoch - 1, hashSeed: seed).encoded())
        let offer = try ResyncOffer(decoding: try t.expect(.ready, timeout: config.ackTimeout))
        nextEpoch = offer.committedEpoch + 1
        onEvent(.connected(replicaEpoch: offer.committedEpoch))
        updateStatus { $0.state = .syncing }
        // Arm before reading anything: a write during the copy or the hashing is then caught by a
        // collect of this epoch, so the replica ends up with a complete image.
        do { try tracker.rearm() } catch { throw EndophyteError(.dirtyPages(error)) }
        let epochStart = monotonicSeconds()
        var sendSeconds = 0.0
        let streamed: Int, differing: Int
        var hashBytes = 0
        if offer.offersHashes {
            // The replica hashes its image meanwhile; its chunks wait in the transport.
            let own = region.pageHashes(seed: seed, pages: 0..<region.pageCount)
            // Every hash is read before any page is sent: the replica reads nothing while it sends
            // hashes, so pages sent now could fill both directions' buffers and block both sides.
            var differ: [Int] = []
            var next = 0
            while next < region.pageCount {
                let chunk = try PageHashChunk(decoding: try t.expect(.hashes, timeout: max(config.ackTimeout, 10)))
                guard chunk.firstPage == UInt64(next), chunk.hashes.count <= region.pageCount - next else {
                    throw EndophyteError(.protocolViolation(reason: "hashes for pages \(chunk.firstPage)+\(chunk.hashes.count), expected page \(next) of \(region.pageCount)"))
                }
                for (i, h) in chunk.hashes.enumerated() where own[next + i] != h { differ.append(next + i) }
                next += chunk.hashes.count
                hashBytes += 12 + 8 * chunk.hashes.count
            }
            updateStatus { $0.syncPagesTotal = differ.count; $0.syncPagesDone = 0 }
            try sendPages(differ[...], epoch: nextEpoch, sendSeconds: &sendSeconds, countsForSync: true)
            streamed = differ.count
            differing = differ.count
        } else {
            // Holes of the backing file (never-written guest RAM) are zeros: send them as indexes
            // without reading them, which would fault in (allocate) every page. A hole filled after
            // the lseek was written after arming, so it is dirty and goes out at the boundary.
            let (data, holes) = region.dataAndHolePages()
            updateStatus { $0.syncPagesTotal = data.count + holes.count; $0.syncPagesDone = 0 }
            try sendPages(data[...], epoch: nextEpoch, sendSeconds: &sendSeconds, countsForSync: true)
            try sendPages(holes[...], epoch: nextEpoch, sendSeconds: &sendSeconds, knownZero: true, countsForSync: true)
            streamed = data.count + holes.count
            differing = region.pageCount
        }
        let report = try boundary(epochStart: epochStart, streamed: streamed, streamedSendSeconds: sendSeconds,
                                  resumeAfter: true, fullCopy: true)
        let sync = SyncReport(method: offer.offersHashes ? .hashResync : .fullCopy, epoch: report.epoch, regionPages: region.pageCount,
                              differingPages: differing, pagesSent: report.pagesStreamed + report.pagesAtPause,
                              bytesSent: t.bytesSent - bytesBefore, hashBytesReceived: hashBytes, seconds: monotonicSeconds() - start)
        emergencyActive = false
        updateStatus {
            $0.state = .protected
            $0.lastSync = sync
        }
        onEvent(.synced(sync))
        onEvent(.protectionRestored(epoch: report.epoch))
        return sync
    }

    // MARK: epochs

    /// Runs one epoch: streams dirty pages for `epochInterval`, then checkpoints. Throws when the
    /// replica cannot be reached (after applying the emergency policy).
    @discardableResult
    public func checkpoint() throws(EndophyteError) -> EpochReport {
        guard transport != nil else { throw EndophyteError(.invalidState("checkpoint before connect")) }
        do {
            return try runEpoch()
        } catch let e where e.isUnreachable {
            try replicaUnreachable(e)
            throw e
        }
    }

    /// Checkpoints until `requestStop()` or a failure. With `.pauseSource`, an unreachable replica
    /// leaves the source paused and throws `.emergencyPaused`; with `.continueUnprotected` the source
    /// keeps running and this returns, with the status saying `unprotected`.
    public func run() throws(EndophyteError) {
        while !shouldStop {
            do {
                try checkpoint()
            } catch let e where e.isUnreachable {
                if config.emergencyPolicy == .pauseSource {
                    throw EndophyteError(.emergencyPaused(reason: "replica unreachable: \(e)"))
                }
                return
            }
        }
    }

    func runEpoch() throws(EndophyteError) -> EpochReport {
        let epochStart = monotonicSeconds()
        var streamed = 0
        var sendSeconds = 0.0
        // Stream while the source runs, until the epoch is over (or the RPO bound forces it early).
        while monotonicSeconds() - epochStart < config.epochInterval {
            if rpoExceeded() { break }
            let sliceStart = monotonicSeconds()
            streamed += try streamDirty(sendSeconds: &sendSeconds)
            let left = config.epochInterval - (monotonicSeconds() - epochStart)
            let nap = min(config.streamInterval - (monotonicSeconds() - sliceStart), left)
            if nap > 0 { usleep(UInt32(nap * 1e6)) }
        }
        if streamed > 0 { try drain() }
        return try boundary(epochStart: epochStart, streamed: streamed, streamedSendSeconds: sendSeconds, resumeAfter: true)
    }

    /// Waits, with the source still running, until the replica has staged everything in flight. The
    /// pause then only covers the last dirty set, not a backlog sitting in socket buffers.
    func drain() throws(EndophyteError) {
        guard let t = transport else { throw EndophyteError(.invalidState("no replica connected")) }
        syncToken &+= 1
        try t.send(.sync, Wire.u64Body(syncToken))
        let echo = try Wire.decodeU64(try t.expect(.synced, timeout: config.ackTimeout), field: "sync token")
        guard echo == syncToken else { throw EndophyteError(.protocolViolation(reason: "sync token \(echo), expected \(syncToken)")) }
    }
    private var syncToken: UInt64 = 0

    /// Collects the dirty set (re-arming it) and streams it. Returns the number of pages sent.
    func streamDirty(sendSeconds: inout Double) throws(EndophyteError) -> Int {
        var ignored = 0.0
        return try streamDirty(sendSeconds: &sendSeconds, collectSeconds: &ignored)
    }

    func streamDirty(sendSeconds: inout Double, collectSeconds: inout Double) throws(EndophyteError) -> Int {
        let n: Int
        let c0 = monotonicSeconds()
        do { n = try tracker.collect(into: &bitmap) } catch { throw EndophyteError(.dirtyPages(error)) }
        collectSeconds += monotonicSeconds() - c0
        if n == 0 { return 0 }
        let pages = bitmap.pages
        try sendPages(pages[...], epoch: nextEpoch, sendSeconds: &sendSeconds)
        return pages.count
    }

    func sendPages(_ pages: ArraySlice<Int>, epoch: UInt64, sendSeconds: inout Double, knownZero: Bool = false,
                   countsForSync: Bool = false) throws(EndophyteError) {
        guard let t = transport else { throw EndophyteError(.invalidState("no replica connected")) }
        var i = pages.startIndex
        let start = monotonicSeconds()
        var buffers: [UnsafeRawBufferPointer] = []
        var dataPages: [Int] = [], zeroPages: [Int] = []
        buffers.reserveCapacity(Wire.pagesPerMessage)
        var zeros = 0
        while i < pages.endIndex {
            let j = min(i + Wire.pagesPerMessage, pages.endIndex)
            buffers.removeAll(keepingCapacity: true)
            dataPages.removeAll(keepingCapacity: true)
            zeroPages.removeAll(keepingCapacity: true)
            for p in pages[i..<j] {
                // SAFETY: p < region.pageCount (a tracker page index), so the page lies inside the mapping.
                let page = UnsafeRawBufferPointer(start: region.page(p), count: dirtyPageSize)
                // A page that changes after this check was collected (re-armed) before it, so it is
                // dirty again and sent again: a stale "zero" can never reach a committed epoch.
                if knownZero || isZeroPage(page.baseAddress!) {
                    zeroPages.append(p)
                } else {
                    dataPages.append(p)
                    buffers.append(page)
                }
            }
            zeros += zeroPages.count
            try t.send(.pages, header: Wire.pagesHeader(epoch: epoch, dataPages: dataPages, zeroPages: zeroPages), pages: buffers)
            if countsForSync { updateStatus { [n = j - i] in $0.syncPagesDone += n } }
            i = j
        }
        sendSeconds += monotonicSeconds() - start
        updateStatus {
            $0.pagesSent += pages.count
            $0.zeroPagesSent += zeros
            $0.bytesSent = t.bytesSent
        }
    }

    /// The epoch boundary: pause, last dirty set, device state, commit, ack, and (unless a planned
    /// migration keeps the source stopped) resume.
    func boundary(epochStart: Double, streamed: Int, streamedSendSeconds: Double, resumeAfter: Bool,
                  fullCopy: Bool = false) throws(EndophyteError) -> EpochReport {
        guard let t = transport else { throw EndophyteError(.invalidState("no replica connected")) }
        let pauseStart = monotonicSeconds()
        try pauseSource()
        let pausedAt = monotonicSeconds()
        var sendSeconds = streamedSendSeconds
        var finalSend = 0.0
        var collectSeconds = 0.0
        let last = try streamDirty(sendSeconds: &finalSend, collectSeconds: &collectSeconds)
        sendSeconds += finalSend
        let state: [UInt8]
        do { state = try hooks.deviceState() } catch { throw EndophyteError(.hookFailed(hook: "device state", reason: "\(error)")) }
        let epoch = nextEpoch
        let commitStart = monotonicSeconds()
        try t.send(.commit, Wire.commitBody(epoch: epoch, pagesInEpoch: UInt64(streamed + last), deviceState: state))
        let ackStart = monotonicSeconds()
        let ack = try t.expect(.ack, timeout: config.ackTimeout)
        let ackEnd = monotonicSeconds()
        sendSeconds += ackEnd - commitStart
        let acked = try Wire.decodeU64(ack, field: "ack epoch")
        guard acked == epoch else { throw EndophyteError(.protocolViolation(reason: "ack for epoch \(acked), expected \(epoch)")) }
        // The checkpoint holds the state at `pauseStart`: that is the instant a crash now falls back to.
        lastCommitAt = pauseStart
        nextEpoch = epoch + 1
        if resumeAfter { try resumeSource() }
        let end = monotonicSeconds()
        let bytes = (streamed + last) * dirtyPageSize
        var report = EpochReport(epoch: epoch, pagesStreamed: streamed, pagesAtPause: last,
                                 pauseSeconds: end - pauseStart,
                                 epochSeconds: end - epochStart, bytesSent: bytes, deviceStateBytes: state.count)
        report.pauseHookSeconds = pausedAt - pauseStart
        report.finalCollectSeconds = collectSeconds
        report.finalSendSeconds = finalSend + (ackStart - commitStart)
        report.ackWaitSeconds = ackEnd - ackStart
        report.resumeHookSeconds = resumeAfter ? end - ackEnd : 0
        let oldLevel = throttleController.level
        // A full copy measures the link but says nothing about the dirty rate: it must not throttle.
        let level: Double
        if fullCopy {
            throttleController.observeBandwidth(bytes: bytes, sendSeconds: sendSeconds)
            level = oldLevel
        } else {
            level = throttleController.observe(bytes: bytes, sendSeconds: sendSeconds, interval: config.epochInterval)
        }
        if abs(level - oldLevel) >= 0.01 {
            hooks.throttle(level)
            onEvent(.throttleChanged(level: level, pressure: throttleController.pressure))
        }
        let footprint = tracker.footprintBytes + bitmap.footprintBytes + bitmap.pageCount * 8 / 64
        let wasEmergency = emergencyActive
        emergencyActive = false
        lock.withLock {
            lastCommitAtShadow = pauseStart
            statusValue.committedEpoch = epoch
            statusValue.epochs += 1
            statusValue.lastPauseSeconds = report.pauseSeconds
            statusValue.throttleLevel = level
            statusValue.pressure = throttleController.pressure
            statusValue.bandwidthBytesPerSecond = throttleController.bandwidth
            statusValue.bytesSent = t.bytesSent
            statusValue.trackingFootprintBytes = footprint
            if case .syncing = statusValue.state {} else { statusValue.state = .protected }
        }
        onEvent(.epochCommitted(report))
        if wasEmergency { onEvent(.protectionRestored(epoch: epoch)) }
        return report
    }

    // MARK: pause, resume, emergencies

    func pauseSource() throws(EndophyteError) {
        if paused { return }
        do { try hooks.pause() } catch { throw EndophyteError(.hookFailed(hook: "pause", reason: "\(error)")) }
        paused = true
    }

    func resumeSource() throws(EndophyteError) {
        if !paused { return }
        do { try hooks.resume() } catch { throw EndophyteError(.hookFailed(hook: "resume", reason: "\(error)")) }
        paused = false
    }

    /// True when the replica lags more than the RPO bound. Applies the policy: with `.pauseSource`
    /// the epoch ends now (the boundary pauses the source until the replica has caught up); with
    /// `.continueUnprotected` the source keeps running and the status says so.
    func rpoExceeded() -> Bool {
        guard lastCommitAt.isFinite else { return false }
        let lag = monotonicSeconds() - lastCommitAt
        guard lag > config.rpoBound else { return false }
        let reason = "replica is \(fmtSeconds(lag)) behind, over the RPO bound of \(fmtSeconds(config.rpoBound))"
        if !emergencyActive {
            emergencyActive = true
            onEvent(.emergency(reason: reason, policy: config.emergencyPolicy))
            updateStatus {
                $0.emergencies += 1
                $0.state = config.emergencyPolicy == .pauseSource ? .emergencyPaused(reason: reason) : .unprotected(reason: reason)
            }
        }
        return config.emergencyPolicy == .pauseSource
    }

    private func replicaUnreachable(_ e: EndophyteError) throws(EndophyteError) {
        let reason = "replica unreachable: \(e)"
        transport?.close()
        transport = nil
        emergencyActive = true
        updateStatus { $0.emergencies += 1 }
        onEvent(.emergency(reason: reason, policy: config.emergencyPolicy))
        switch config.emergencyPolicy {
        case .pauseSource:
            try pauseSource()
            updateStatus { $0.state = .emergencyPaused(reason: reason) }
        case .continueUnprotected:
            try resumeSource()
            hooks.throttle(0)
            updateStatus {
                $0.state = .unprotected(reason: reason)
                $0.throttleLevel = 0
            }
        }
    }

    /// After an emergency pause, lets the source run without a replica (an operator's decision).
    public func continueUnprotected() throws(EndophyteError) {
        try resumeSource()
        updateStatus { $0.state = .unprotected(reason: "resumed without a replica by the caller") }
    }

    /// Stops replicating; the tracker keeps running until the caller stops it.
    public func detach() {
        transport?.close()
        transport = nil
        updateStatus { $0.state = .stopped }
    }
}

func fmtSeconds(_ s: Double) -> String {
    let ms = (s * 1000).rounded()
    return ms < 10_000 ? "\(Int(ms)) ms" : "\(Int(s.rounded())) s"
}

/// A zeroed page to compare against (memcmp is vectorised in libc).
// SAFETY (concurrency): written once during lazy initialisation, read-only afterwards.
nonisolated(unsafe) let zeroPage: UnsafeMutableRawPointer = {
    // SAFETY: allocated once, zero-filled, never written or freed.
    let p = UnsafeMutableRawPointer.allocate(byteCount: dirtyPageSize, alignment: dirtyPageSize)
    p.initializeMemory(as: UInt8.self, repeating: 0, count: dirtyPageSize)
    return p
}()

@inline(__always) func isZeroPage(_ p: UnsafeRawPointer) -> Bool {
    // Fast reject on the first word: most data pages are not zero at their start.
    if p.load(as: UInt64.self) != 0 { return false }
    return memcmp(p, zeroPage, dirtyPageSize) == 0
}
