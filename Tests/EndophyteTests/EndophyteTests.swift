import DirtyPages
@testable import Endophyte
import Foundation
import MyceliumCore
import MyceliumIdentity
import Rhizomorph
import XCTest

final class ThrottleAndStateMachineTests: XCTestCase {
    func testCurves() {
        let lin = ThrottleCurve.linear(start: 0.5, slope: 0.5, maximum: 0.8)
        XCTAssertEqual(lin.level(forPressure: 0.4), 0)
        XCTAssertEqual(lin.level(forPressure: 1.5), 0.5, accuracy: 1e-9)
        XCTAssertEqual(lin.level(forPressure: 10), 0.8)
        let exp = ThrottleCurve.exponential(start: 1, initial: 0.1, growth: 2, maximum: 0.95)
        XCTAssertEqual(exp.level(forPressure: 1), 0)
        XCTAssertEqual(exp.level(forPressure: 2), 0.2, accuracy: 1e-9)
        XCTAssertEqual(exp.level(forPressure: 3), 0.4, accuracy: 1e-9)
        XCTAssertEqual(exp.level(forPressure: 100), 0.95)
        let step = ThrottleCurve.step([ThrottleStep(pressure: 1, level: 0.3), ThrottleStep(pressure: 2, level: 0.7)])
        XCTAssertEqual(step.level(forPressure: 0.9), 0)
        XCTAssertEqual(step.level(forPressure: 1.5), 0.3)
        XCTAssertEqual(step.level(forPressure: 2), 0.7)
        XCTAssertEqual(ThrottleCurve.off.level(forPressure: 50), 0)
        XCTAssertEqual(lin.level(forPressure: .nan), 0)
    }

    func testControllerComputesPressureFromBacklogAndBandwidth() {
        var c = ThrottleController(curve: .linear(start: 1, slope: 1, maximum: 1))
        // 100 MiB in 0.1 s → 1 GiB/s; epoch 50 ms.
        _ = c.observe(bytes: 100 << 20, sendSeconds: 0.1, interval: 0.05)
        XCTAssertEqual(c.bandwidth!, Double(1000 << 20), accuracy: 1)
        XCTAssertEqual(c.pressure, 2, accuracy: 1e-9)  // 0.1 s of link time per 0.05 s epoch
        XCTAssertEqual(c.level, 1)
        // A small epoch does not update the bandwidth estimate but does lower the pressure.
        _ = c.observe(bytes: 4096, sendSeconds: 0.01, interval: 0.05)
        XCTAssertEqual(c.bandwidth!, Double(1000 << 20), accuracy: 1)
        XCTAssertEqual(c.level, 0)
    }

    func testMigrationStateMachineConvergesThroughTurbo() {
        var sm = MigrationStateMachine(policy: MigrationPolicy(maxConvergeRounds: 3, turboEntryBytes: 1000, blackoutEntryBytes: 100, maxTurboRounds: 2))
        sm.start(at: 0)
        sm.roundCompleted(remainingBytes: 5000, at: 1)
        XCTAssertEqual(sm.phase, .converging)
        sm.roundCompleted(remainingBytes: 900, at: 2)
        XCTAssertEqual(sm.phase, .turbo)
        sm.roundCompleted(remainingBytes: 50, at: 3)
        XCTAssertEqual(sm.phase, .blackout)
        sm.blackoutCommitted(at: 4)
        sm.ownerRecorded(at: 5)
        XCTAssertEqual(sm.phase, .switched)
        XCTAssertEqual(sm.transitions.map(\.to), [.converging, .turbo, .blackout, .switching, .switched])
        // After the switch a failure cannot roll back.
        XCTAssertFalse(sm.failed("late", at: 6))
        XCTAssertEqual(sm.phase, .switched)
    }

    func testMigrationStateMachineBoundsRoundsAndRollsBack() {
        var sm = MigrationStateMachine(policy: MigrationPolicy(maxConvergeRounds: 2, turboEntryBytes: 10, blackoutEntryBytes: 1, maxTurboRounds: 1, rollbackIfNotConverged: true))
        sm.start(at: 0)
        sm.roundCompleted(remainingBytes: 500, at: 1)
        sm.roundCompleted(remainingBytes: 500, at: 2)
        XCTAssertEqual(sm.phase, .turbo, "converge rounds are bounded")
        sm.roundCompleted(remainingBytes: 500, at: 3)
        XCTAssertEqual(sm.phase, .rolledBack)
        var forced = MigrationStateMachine(policy: MigrationPolicy(maxConvergeRounds: 1, turboEntryBytes: 10, blackoutEntryBytes: 1, maxTurboRounds: 1))
        forced.start(at: 0)
        forced.roundCompleted(remainingBytes: 500, at: 1)
        forced.roundCompleted(remainingBytes: 500, at: 2)
        XCTAssertEqual(forced.phase, .blackout, "without rollbackIfNotConverged the blackout is forced")
        var failing = MigrationStateMachine(policy: MigrationPolicy())
        failing.start(at: 0)
        XCTAssertTrue(failing.failed("link lost", at: 1))
        XCTAssertEqual(failing.phase, .rolledBack)
    }
}

final class TransportTests: XCTestCase {
    func testHandshakeProvesBothIdentities() throws { try handshakeProvesBothIdentities(over: .tcp) }
    func testHandshakeProvesBothIdentitiesOverRhizomorph() throws { try handshakeProvesBothIdentities(over: .rhizomorph) }

    private func handshakeProvesBothIdentities(over link: Link) throws {
        let pair = try Pair(link)
        let (t, bg) = try pair.connect { r in r.peerKey }
        XCTAssertEqual(t.peerKey, pair.replicaKey.publicKey)
        XCTAssertEqual(bg.join(), pair.sourceKey.publicKey)
        // Messages flow, page buffers are gathered without copying.
        t.close()
    }

    func testWrongPeerKeyIsRejectedOnBothSides() throws {
        let listener = try ReplicationListener()
        let replicaKey = SigningKey(), sourceKey = SigningKey(), stranger = SigningKey()
        let network = NetworkID(genesisKey: SigningKey().publicKey)
        let bg = Background<EndophyteError?> {
            do {
                _ = try listener.accept(identity: replicaKey, network: network, authorize: { $0 == stranger.publicKey })
                return nil
            } catch { return error as? EndophyteError }
        }
        XCTAssertThrowsError(try TCPReplicationTransport.connect(host: "127.0.0.1", port: listener.port, identity: sourceKey,
                                                                 network: network, timeout: 2, accept: { $0 == replicaKey.publicKey })) { e in
            XCTAssertNotNil(e as? EndophyteError)
        }
        guard case .authenticationFailed = bg.join()?.code else { return XCTFail("replica accepted an unexpected key") }
        // And the source refuses a replica that is not the node it meant to reach.
        let bg2 = Background<Bool> { (try? listener.accept(identity: replicaKey, network: network, authorize: { _ in true })) != nil }
        XCTAssertThrowsError(try TCPReplicationTransport.connect(host: "127.0.0.1", port: listener.port, identity: sourceKey,
                                                                 network: network, timeout: 2, accept: { $0 == stranger.publicKey })) { e in
            guard case .authenticationFailed = (e as? EndophyteError)?.code else { return XCTFail("\(e)") }
        }
        _ = bg2.join()
    }
}

final class ReplicationTests: XCTestCase {
    let pages = 4096  // 16 MiB

    /// Replicates a running workload for a few epochs with `engine`, stops it, checkpoints once
    /// more and requires the replica image to equal the source byte for byte.
    private func replicate(engine: DirtyPageEngine, over link: Link = .tcp) throws {
        let src = try MappedRegion(memfdNamed: "endo-src", length: pages * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "endo-dst", length: pages * dirtyPageSize)
        let replica = ReplicaReceiver(region: dst)
        let pair = try Pair(link)
        let (t, bg) = try pair.connect { r in replica.serve(r) }
        let tracker: DirtyTracker
        switch engine {
        case .hash: tracker = try DirtyTracker.hash(region: UnsafeRawBufferPointer(src.buffer), threads: 2)
        default: tracker = try DirtyTracker.uffd(region: src.buffer)
        }
        let work = Workload(region: src)
        var hooks = work.hooks
        let epochCounter = Counter()
        hooks.deviceState = { Array("cpu-state-\(epochCounter.next())".utf8) }
        let log = EventLog()
        let source = try ReplicationSource(region: src, tracker: tracker,
                                           config: ReplicationConfig(epochInterval: 0.025, rpoBound: 10), hooks: hooks, onEvent: log.sink)
        work.start(seed: 7)
        try source.connect(t)
        for _ in 0..<8 { try source.checkpoint() }
        work.finish()
        // Pages that become all zeros travel as an index only; the replica must zero them.
        memset(src.page(10), 0, 10 * dirtyPageSize)
        let zerosBefore = source.status.zeroPagesSent
        let last = try source.checkpoint()
        XCTAssertGreaterThanOrEqual(source.status.zeroPagesSent - zerosBefore, 10)
        XCTAssertTrue(replica.waitUntilApplied(last.epoch))
        XCTAssertEqual(replica.committedEpoch, last.epoch)
        XCTAssertEqual(source.status.committedEpoch, last.epoch)
        XCTAssertEqual(source.status.state, .protected)
        XCTAssertTrue(src.contentsEqual(dst), "\(engine): replica image differs from the source")
        XCTAssertEqual(String(decoding: replica.deviceState, as: UTF8.self), "cpu-state-\(epochCounter.value)")
        XCTAssertGreaterThan(work.writes.load(ordering: .relaxed), 0)
        XCTAssertEqual(work.pauses.load(ordering: .relaxed), work.resumes.load(ordering: .relaxed), "every pause was resumed")
        XCTAssertTrue(log.events.contains { if case .epochCommitted = $0 { return true }; return false })
        if let rz = t as? RhizomorphReplicationTransport {
            // Striped: both paths carried the pages, and nothing was lost on the way.
            let st = rz.session.statistics
            XCTAssertGreaterThan(st.bytesPerPath[0], UInt64(256 << 10), "path 1 carried little: \(st.bytesPerPath)")
            XCTAssertGreaterThan(st.bytesPerPath[1], UInt64(256 << 10), "path 2 carried little: \(st.bytesPerPath)")
            XCTAssertEqual(st.connectionsFailed, 0)
        }
        source.detach()
        XCTAssertEqual(bg.join(), .sourceGone(discardedPages: 0))
    }

    /// A takeover closes the replica's session, then must wait until it has stopped before reading
    /// the image and its epoch (an apply in progress would otherwise leave them apart):
    /// `waitUntilIdle` is false while a session serves and true once closing its transport ended it.
    func testAReceiverIsIdleOnlyOnceItsClosedSessionHasEnded() throws {
        let src = try MappedRegion(memfdNamed: "endo-idle-src", length: 64 * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "endo-idle-dst", length: 64 * dirtyPageSize)
        let replica = ReplicaReceiver(region: dst)
        XCTAssertTrue(replica.waitUntilIdle(timeout: 0), "no session yet")
        final class Held: @unchecked Sendable { let lock = NSLock(); var t: ReplicationTransport? }
        let held = Held()
        let pair = try Pair(.tcp)
        let (t, bg) = try pair.connect { r in
            held.lock.withLock { held.t = r }
            return replica.serve(r)
        }
        let source = try ReplicationSource(region: src, tracker: try DirtyTracker.hash(region: UnsafeRawBufferPointer(src.buffer), threads: 1),
                                           config: ReplicationConfig(epochInterval: 0.025, rpoBound: 10), hooks: Workload(region: src).hooks)
        try source.connect(t)
        let first = try source.checkpoint()
        XCTAssertTrue(replica.waitUntilApplied(first.epoch))
        XCTAssertFalse(replica.waitUntilIdle(timeout: 0.2), "a connected session serves")
        held.lock.withLock { held.t }?.close()
        XCTAssertTrue(replica.waitUntilIdle(timeout: 10), "closing its transport ends the session")
        XCTAssertEqual(replica.committedEpoch, first.epoch)
        source.detach()
        _ = bg.join()
    }

    func testReplicatesRunningWorkloadExactlyWithUffd() throws { try replicate(engine: .uffdAsync) }
    func testReplicatesRunningWorkloadExactlyWithHash() throws { try replicate(engine: .hash) }
    func testReplicatesRunningWorkloadExactlyOverRhizomorph() throws { try replicate(engine: .uffdAsync, over: .rhizomorph) }

    /// The source "crashes" (its connection is cut) mid-epoch; the replica must hold exactly the
    /// last committed epoch: the image taken at that epoch's pause, and its device state.
    private func crashMidEpoch(beforeCommit: Bool, over link: Link = .tcp) throws {
        let src = try MappedRegion(memfdNamed: "endo-src", length: pages * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "endo-dst", length: pages * dirtyPageSize)
        let replica = ReplicaReceiver(region: dst)
        let pair = try Pair(link)
        let (tcp, bg) = try pair.connect { r in replica.serve(r) }
        let crashEpoch: UInt64 = 5
        let t = CrashingTransport(tcp, crashEpoch: crashEpoch, afterPagesMessages: 1, beforeCommit: beforeCommit)
        let work = Workload(region: src)
        let snapshots = Snapshots()
        var hooks = work.hooks
        // Called at each boundary while the source is paused: the exact image this epoch commits.
        hooks.deviceState = {
            let image = [UInt8](UnsafeRawBufferPointer(src.buffer))
            let n = snapshots.record(image)
            return Array("device-\(n)".utf8)
        }
        let tracker = try DirtyTracker.uffd(region: src.buffer)
        let source = try ReplicationSource(region: src, tracker: tracker,
                                           config: ReplicationConfig(epochInterval: 0.03, rpoBound: 10, emergencyPolicy: .continueUnprotected),
                                           hooks: hooks)
        // Many hot pages so epoch 5 has several page messages to cut between.
        work.start(seed: 9)
        try source.connect(t)
        var failure: EndophyteError?
        for _ in 0..<10 {
            do { try source.checkpoint() } catch { failure = error; break }
        }
        work.finish()
        XCTAssertTrue(failure?.isUnreachable ?? false, "the cut must surface as unreachable, got \(String(describing: failure))")
        let end = bg.join()
        guard case .sourceGone = end else { return XCTFail("replica session ended with \(String(describing: end))") }
        XCTAssertEqual(replica.committedEpoch, crashEpoch - 1)
        let expected = snapshots.image(Int(crashEpoch - 1))
        let equal = expected.withUnsafeBytes { memcmp($0.baseAddress!, dst.base, dst.length) == 0 }
        XCTAssertTrue(equal, "replica image is not exactly epoch \(crashEpoch - 1)")
        XCTAssertEqual(String(decoding: replica.deviceState, as: UTF8.self), "device-\(crashEpoch - 1)")
        if beforeCommit {
            // All of epoch 5's pages were staged, and still none of them reached the image.
            XCTAssertEqual(snapshots.count, Int(crashEpoch))
        }
        // The policy was "continue unprotected": the source runs and says so.
        guard case .unprotected = source.status.state else { return XCTFail("status \(source.status.state)") }
        XCTAssertFalse(work.isPaused)
    }

    func testPrimaryCrashMidEpochLeavesExactlyLastCommittedEpoch() throws { try crashMidEpoch(beforeCommit: false) }
    func testPrimaryCrashBeforeCommitLeavesExactlyLastCommittedEpoch() throws { try crashMidEpoch(beforeCommit: true) }
    func testPrimaryCrashMidEpochOverRhizomorph() throws { try crashMidEpoch(beforeCommit: false, over: .rhizomorph) }
    func testPrimaryCrashBeforeCommitOverRhizomorph() throws { try crashMidEpoch(beforeCommit: true, over: .rhizomorph) }

    func testUnreachableReplicaPausesSourceUnderPausePolicy() throws { try unreachableReplicaPausesSource(over: .tcp) }
    func testUnreachableReplicaPausesSourceUnderPausePolicyOverRhizomorph() throws { try unreachableReplicaPausesSource(over: .rhizomorph) }

    private func unreachableReplicaPausesSource(over link: Link) throws {
        let src = try MappedRegion(memfdNamed: "endo-src", length: 256 * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "endo-dst", length: 256 * dirtyPageSize)
        let replica = ReplicaReceiver(region: dst)
        let pair = try Pair(link)
        // The replica serves, then its host "dies": the connection is closed after epoch 3 commits.
        let (t, bg) = try pair.connect { r in
            let killer = ReplicaKiller(transport: r, afterEpoch: 3, replica: replica)
            return replica.serve(killer)
        }
        let work = Workload(region: src)
        let log = EventLog()
        let source = try ReplicationSource(region: src, tracker: try DirtyTracker.uffd(region: src.buffer),
                                           config: ReplicationConfig(epochInterval: 0.01, rpoBound: 5, emergencyPolicy: .pauseSource, ackTimeout: 1),
                                           hooks: work.hooks, onEvent: log.sink)
        work.start(seed: 3, hotPages: 64)
        try source.connect(t)
        XCTAssertThrowsError(try source.run()) { e in
            guard case .emergencyPaused = (e as? EndophyteError)?.code else { return XCTFail("\(e)") }
        }
        XCTAssertTrue(work.isPaused, "pause-source policy must leave the source paused")
        guard case .emergencyPaused = source.status.state else { return XCTFail("\(source.status.state)") }
        XCTAssertEqual(source.status.policy, .pauseSource)
        XCTAssertGreaterThanOrEqual(source.status.emergencies, 1)
        XCTAssertTrue(log.events.contains { if case .emergency(_, .pauseSource) = $0 { return true }; return false })
        _ = bg.join()
        // An operator may decide to run without protection; the status says so.
        try source.continueUnprotected()
        XCTAssertFalse(work.isPaused)
        guard case .unprotected = source.status.state else { return XCTFail("\(source.status.state)") }
        work.finish()
    }

    func testRPOBoundBreachFollowsPolicy() throws {
        for policy in [EmergencyPolicy.pauseSource, .continueUnprotected] {
            let src = try MappedRegion(memfdNamed: "endo-src", length: 256 * dirtyPageSize)
            let dst = try MappedRegion(memfdNamed: "endo-dst", length: 256 * dirtyPageSize)
            let replica = ReplicaReceiver(region: dst)
            let pair = try Pair()
            let (t, bg) = try pair.connect { r in replica.serve(r) }
            let work = Workload(region: src)
            let log = EventLog()
            // An RPO bound far below the epoch interval: every epoch breaches it.
            let source = try ReplicationSource(region: src, tracker: try DirtyTracker.uffd(region: src.buffer),
                                               config: ReplicationConfig(epochInterval: 0.05, rpoBound: 0.000_001, emergencyPolicy: policy),
                                               hooks: work.hooks, onEvent: log.sink)
            work.start(seed: 4, hotPages: 32)
            try source.connect(t)
            let r = try source.checkpoint()
            XCTAssertTrue(log.events.contains { if case .emergency(_, policy) = $0 { return true }; return false }, "\(policy)")
            if policy == .pauseSource {
                // The epoch was cut short at the breach instead of running its full interval; the
                // source was paused until the replica caught up, then protection was restored.
                XCTAssertEqual(r.pagesStreamed, 0)
                XCTAssertTrue(log.events.contains { if case .protectionRestored = $0 { return true }; return false })
            } else {
                guard case .protected = source.status.state else { return XCTFail("\(source.status.state)") }
            }
            work.finish()
            source.detach()
            _ = bg.join()
        }
    }

    func testPlannedMigrationSwitchesAtomically() throws { try plannedMigrationSwitchesAtomically(over: .tcp) }
    func testPlannedMigrationSwitchesAtomicallyOverRhizomorph() throws { try plannedMigrationSwitchesAtomically(over: .rhizomorph) }

    private func plannedMigrationSwitchesAtomically(over link: Link) throws {
        let src = try MappedRegion(memfdNamed: "endo-src", length: pages * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "endo-dst", length: pages * dirtyPageSize)
        let replica = ReplicaReceiver(region: dst)
        let owner = OwnerRecord()
        let pair = try Pair(link)
        let (t, bg) = try pair.connect { r in
            replica.serve(r, onActivate: { epoch, state in
                // The destination may only start once it is the recorded owner.
                precondition(owner.current == "destination", "activated before the owner record")
            })
        }
        let work = Workload(region: src)
        var hooks = work.hooks
        hooks.deviceState = { Array("final-device-state".utf8) }
        let log = EventLog()
        let source = try ReplicationSource(region: src, tracker: try DirtyTracker.uffd(region: src.buffer),
                                           config: ReplicationConfig(epochInterval: 0.02), hooks: hooks, onEvent: log.sink)
        work.start(seed: 5, hotPages: 512)
        try source.connect(t)
        let report = try PlannedMigration.run(source: source, policy: MigrationPolicy(maxConvergeRounds: 5, turboEntryBytes: 2 << 20, blackoutEntryBytes: 256 << 10, maxTurboRounds: 3),
                                              hooks: MigrationHooks(recordOwner: { owner.set("destination") }))
        XCTAssertEqual(report.outcome, .switched)
        XCTAssertTrue(report.activationConfirmed)
        XCTAssertEqual(report.transitions.first?.to, .converging)
        XCTAssertEqual(Array(report.transitions.map(\.to).suffix(3)), [.blackout, .switching, .switched])
        XCTAssertEqual(bg.join(), .activated(epoch: replica.committedEpoch))
        // The source stays paused forever after the switch; its memory equals the destination's.
        XCTAssertTrue(work.isPaused)
        XCTAssertTrue(src.contentsEqual(dst))
        XCTAssertEqual(replica.deviceState, Array("final-device-state".utf8))
        let logged = log.events.compactMap { if case let .migration(tr) = $0 { return tr.to }; return nil }
        XCTAssertEqual(logged, report.transitions.map(\.to), "every transition is published as an event")
        work.finish()
    }

    func testMigrationRollsBackWhenOwnerCannotBeRecorded() throws { try migrationRollsBack(over: .tcp) }
    func testMigrationRollsBackWhenOwnerCannotBeRecordedOverRhizomorph() throws { try migrationRollsBack(over: .rhizomorph) }

    private func migrationRollsBack(over link: Link) throws {
        let src = try MappedRegion(memfdNamed: "endo-src", length: 1024 * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "endo-dst", length: 1024 * dirtyPageSize)
        let replica = ReplicaReceiver(region: dst)
        let pair = try Pair(link)
        let activated = Counter()
        let (t, bg) = try pair.connect { r in replica.serve(r, onActivate: { _, _ in _ = activated.next() }) }
        let work = Workload(region: src)
        let source = try ReplicationSource(region: src, tracker: try DirtyTracker.uffd(region: src.buffer),
                                           config: ReplicationConfig(epochInterval: 0.02), hooks: work.hooks)
        work.start(seed: 6, hotPages: 128)
        try source.connect(t)
        struct NoQuorum: Error {}
        XCTAssertThrowsError(try PlannedMigration.run(source: source, policy: MigrationPolicy(blackoutEntryBytes: 1 << 20),
                                                      hooks: MigrationHooks(recordOwner: { throw NoQuorum() }))) { e in
            guard case .migrationRolledBack = (e as? EndophyteError)?.code else { return XCTFail("\(e)") }
        }
        XCTAssertFalse(work.isPaused, "rollback resumes the source")
        XCTAssertEqual(activated.value, 0, "the destination never ran")
        // Replication carries on after the rollback.
        try source.checkpoint()
        work.finish()
        XCTAssertTrue(replica.waitUntilApplied(try source.checkpoint().epoch))
        XCTAssertTrue(src.contentsEqual(dst))
        source.detach()
        guard case .sourceGone = bg.join() else { return XCTFail() }
    }

    func testReplicaRejectsRegionOfAnotherSize() throws { try replicaRejectsRegionOfAnotherSize(over: .tcp) }
    func testReplicaRejectsRegionOfAnotherSizeOverRhizomorph() throws { try replicaRejectsRegionOfAnotherSize(over: .rhizomorph) }

    private func replicaRejectsRegionOfAnotherSize(over link: Link) throws {
        let src = try MappedRegion(memfdNamed: "endo-src", length: 64 * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "endo-dst", length: 32 * dirtyPageSize)
        let replica = ReplicaReceiver(region: dst)
        let pair = try Pair(link)
        let (t, bg) = try pair.connect { r in replica.serve(r) }
        let source = try ReplicationSource(region: src, tracker: try DirtyTracker.hash(region: UnsafeRawBufferPointer(src.buffer)),
                                           config: ReplicationConfig(), hooks: SourceHooks(pause: {}, resume: {}))
        XCTAssertThrowsError(try source.connect(t))
        XCTAssertEqual(bg.join(), .failed(EndophyteError(.regionMismatch(local: 32 * dirtyPageSize, remote: 64 * dirtyPageSize))))
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func next() -> Int { lock.lock(); defer { lock.unlock() }; n += 1; return n }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}

final class OwnerRecord: @unchecked Sendable {
    private let lock = NSLock()
    private var owner = "source"
    func set(_ o: String) { lock.lock(); owner = o; lock.unlock() }
    var current: String { lock.lock(); defer { lock.unlock() }; return owner }
}

/// Images taken at each boundary, numbered from 1 like epochs.
final class Snapshots: @unchecked Sendable {
    private let lock = NSLock()
    private var images: [[UInt8]] = []
    func record(_ image: [UInt8]) -> Int { lock.lock(); defer { lock.unlock() }; images.append(image); return images.count }
    func image(_ epoch: Int) -> [UInt8] { lock.lock(); defer { lock.unlock() }; return images[epoch - 1] }
    var count: Int { lock.lock(); defer { lock.unlock() }; return images.count }
}

/// Replica-side transport that drops the connection once `afterEpoch` has been acknowledged.
final class ReplicaKiller: ReplicationTransport, @unchecked Sendable {
    let inner: ReplicationTransport
    let afterEpoch: UInt64
    let replica: ReplicaReceiver
    init(transport: ReplicationTransport, afterEpoch: UInt64, replica: ReplicaReceiver) {
        inner = transport
        self.afterEpoch = afterEpoch
        self.replica = replica
    }
    var peerKey: PublicKey { inner.peerKey }
    var bytesSent: UInt64 { inner.bytesSent }
    func setStreamCount(_ count: Int) {}
    func close() { inner.close() }
    func send(_ type: MessageType, header: [UInt8], pages: [UnsafeRawBufferPointer]) throws(EndophyteError) {
        try inner.send(type, header: header, pages: pages)
        if type == .ack && replica.committedEpoch >= afterEpoch { inner.close() }
    }
    func receive<R>(timeout: Double?, _ body: (MessageType, UnsafeRawBufferPointer) throws(EndophyteError) -> R) throws(EndophyteError) -> R {
        try inner.receive(timeout: timeout, body)
    }
}

final class ThrottleHookTests: XCTestCase {
    /// The level computed from the configured curve reaches the caller's hook and the status.
    func testThrottleHookFollowsConfiguredCurve() throws {
        let src = try MappedRegion(memfdNamed: "endo-src", length: 1024 * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "endo-dst", length: 1024 * dirtyPageSize)
        let replica = ReplicaReceiver(region: dst)
        let pair = try Pair()
        let (t, bg) = try pair.connect { r in replica.serve(r) }
        let levels = Levels()
        let log = EventLog()
        // A step curve that throttles by half at any pressure. The full copy (4 MiB) measures the link
        // but must not throttle; the next epoch, with dirty pages, must.
        let hooks = SourceHooks(pause: {}, resume: {}, throttle: { levels.append($0) })
        let source = try ReplicationSource(region: src, tracker: try DirtyTracker.uffd(region: src.buffer),
                                           config: ReplicationConfig(throttle: .step([ThrottleStep(pressure: 0.000_001, level: 0.5)])),
                                           hooks: hooks, onEvent: log.sink)
        try source.connect(t)
        XCTAssertEqual(levels.values, [], "the full copy is not a dirty rate")
        XCTAssertNotNil(source.status.bandwidthBytesPerSecond)
        for p in stride(from: 0, to: 1024, by: 4) { src.page(p).storeBytes(of: 1, as: UInt8.self) }
        try source.checkpoint()
        XCTAssertEqual(levels.values, [0.5])
        XCTAssertEqual(source.status.throttleLevel, 0.5)
        XCTAssertNotNil(source.status.bandwidthBytesPerSecond)
        XCTAssertTrue(log.events.contains { if case .throttleChanged(0.5, _) = $0 { return true }; return false })
        source.detach()
        _ = bg.join()
    }
}

final class Levels: @unchecked Sendable {
    private let lock = NSLock()
    private var v: [Double] = []
    func append(_ x: Double) { lock.lock(); v.append(x); lock.unlock() }
    var values: [Double] { lock.lock(); defer { lock.unlock() }; return v }
}

final class ProcessControlTests: XCTestCase {
    /// Pause/resume and the duty-cycle throttle act on a real process (a forked writer).
    func testPauseResumeAndDutyCycleOnARealProcess() throws {
        let shared = try MappedRegion(memfdNamed: "endo-proc", length: 16 * dirtyPageSize)
        let child = try ForkedWriter(sharedRegion: shared.buffer, register: false)
        defer { child.stop() }
        let control = ProcessControl(pid: child.pid, period: 0.01)
        try control.pause()
        XCTAssertEqual(control.processState(), UInt8(ascii: "T"))
        try control.resume()
        // Running again: it answers a command.
        try child.writePages([3])
        XCTAssertEqual(shared.page(3).load(as: UInt64.self), 1)
        // Throttled: the process is seen stopped at some point, and still makes progress.
        control.setThrottle(0.9)
        var sawStopped = false
        for _ in 0..<2000 where !sawStopped {
            sawStopped = control.processState() == UInt8(ascii: "T")
            usleep(100)  // polls, bounded by the 2000 looks
        }
        XCTAssertTrue(sawStopped)
        try child.writePages([4])
        XCTAssertEqual(shared.page(4).load(as: UInt64.self), 1)
        control.setThrottle(0)
        try waitUntilTrue("the unthrottled process runs again") { control.processState() != UInt8(ascii: "T") }
        // Unthrottled, a checkpoint pause still wins over the (now idle) duty cycle: the process is
        // seen stopped, and stays stopped over many looks (a duty cycle would let it run again).
        try control.pause()
        try waitUntilTrue("the paused process is stopped") { control.processState() == UInt8(ascii: "T") }
        for _ in 0..<50 { XCTAssertEqual(control.processState(), UInt8(ascii: "T")); usleep(1000) }  // repeated looks, not synchronisation
        try control.resume()
    }
}

final class RegionTests: XCTestCase {
    func testHolesOfTheBackingFileAreFoundWithoutReadingThem() throws {
        let r = try MappedRegion(memfdNamed: "endo-holes", length: 256 * dirtyPageSize)
        XCTAssertEqual(r.dataAndHolePages().data, [])
        r.page(3).storeBytes(of: 7, as: UInt8.self)
        r.page(100).storeBytes(of: 7, toByteOffset: 4095, as: UInt8.self)
        let (data, holes) = r.dataAndHolePages()
        XCTAssertEqual(data, [3, 100])
        XCTAssertEqual(holes.count, 254)
        XCTAssertEqual(Set(data).union(holes), Set(0..<256))
    }
}

final class HostileInputTests: XCTestCase {
    /// Before the handshake, a peer announcing a huge frame is refused without allocating it; a peer
    /// speaking garbage gets an authentication error, and the listener keeps working.
    func testUnauthenticatedPeerCannotMakeTheReplicaAllocateOrPass() throws {
        let listener = try ReplicationListener()
        let replicaKey = SigningKey()
        let network = NetworkID(genesisKey: replicaKey.publicKey)
        let results = Background<[String]> {
            var out: [String] = []
            for _ in 0..<2 {
                do { _ = try listener.accept(identity: replicaKey, network: network, timeout: 2, authorize: { _ in true }); out.append("accepted") } catch {
                    out.append("\(error)")
                }
            }
            return out
        }
        for payload in [Array("RHIZ".utf8) + [2, 1, 0xFF, 0xFF], Array("GET / HTTP/1.1\r\n\r\n".utf8)] {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = listener.port.bigEndian
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            XCTAssertEqual(rc, 0)
            _ = payload.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            // Wait until the replica has dealt with this peer and hung up (bounded by a 5 s receive
            // timeout), so the next peer meets the next accept.
            var tv = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var sink = [UInt8](repeating: 0, count: 256)
            while recv(fd, &sink, sink.count, 0) > 0 {}
            close(fd)
        }
        let r = results.join()
        XCTAssertEqual(r.count, 2)
        XCTAssertTrue(r[0].contains("longer than any message"), r[0])
        XCTAssertFalse(r[1] == "accepted", r[1])
    }
}

final class CgroupThrottleTests: XCTestCase {
    func testQuotaFollowsLevel() {
        let c = CgroupCPUThrottle(directory: "/nonexistent", cpus: 2, periodMicroseconds: 100_000)
        XCTAssertNil(c.quota(forLevel: 0))
        XCTAssertEqual(c.quota(forLevel: 0.5), 100_000)
        XCTAssertEqual(c.quota(forLevel: 0.75), 50_000)
        XCTAssertEqual(c.quota(forLevel: 1), 2000)
        XCTAssertThrowsError(try c.apply(level: 0.5))
    }

    /// On a real cgroup (v1 cpu controller or v2) with a real process in it. Needs a cpu controller
    /// this user may write (root on the host; often not inside a container): its skips are listed
    /// in Tests/skips.allow, and scripts/test fails on any other skip.
    func testAppliesToARealCgroup() throws {
        let base = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"].first {
            access($0 + "/cpu.cfs_quota_us", F_OK) == 0 || access($0 + "/cgroup.controllers", F_OK) == 0 && access($0 + "/cpu.max", F_OK) == 0
        }
        guard let base else { throw XCTSkip("no writable cpu cgroup controller here") }
        let dir = base + "/mdp-test-\(getpid())"
        guard mkdir(dir, 0o755) == 0 else { throw XCTSkip("cannot create \(dir): errno \(errno)") }
        let shared = try MappedRegion(memfdNamed: "endo-cg", length: 4 * dirtyPageSize)
        let child = try ForkedWriter(sharedRegion: shared.buffer, register: false)
        defer {
            // Move the child back out, stop it, remove the group.
            if let f = fopen(base + "/cgroup.procs", "w") { fputs("\(child.pid)", f); fclose(f) }
            child.stop()
            rmdir(dir)
        }
        guard let f = fopen(dir + "/cgroup.procs", "w") else { throw XCTSkip("cannot move a process into \(dir)") }
        fputs("\(child.pid)", f)
        fclose(f)
        let c = CgroupCPUThrottle(directory: dir, cpus: 1, periodMicroseconds: 50_000)
        try c.apply(level: 0.6)
        let v2 = access(dir + "/cpu.max", F_OK) == 0
        let read = { (file: String) in (try? String(contentsOfFile: dir + "/" + file, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) }
        if v2 { XCTAssertEqual(read("cpu.max"), "20000 50000") } else { XCTAssertEqual(read("cpu.cfs_quota_us"), "20000") }
        try child.writePages([1])  // still runs, slower
        XCTAssertEqual(shared.page(1).load(as: UInt64.self), 1)
        try c.apply(level: 0)
        if v2 { XCTAssertEqual(read("cpu.max"), "max 50000") } else { XCTAssertEqual(read("cpu.cfs_quota_us"), "-1") }
    }
}

/// Polls `condition` every millisecond until it holds, or fails after `timeout` seconds.
func waitUntilTrue(_ what: String, timeout: Double = 5, file: StaticString = #filePath, line: UInt = #line,
                   _ condition: () -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while !condition() {
        guard Date() < deadline else {
            XCTFail("timed out after \(timeout) s waiting for \(what)", file: file, line: line)
            throw EndophyteTestTimeout()
        }
        usleep(1000)
    }
}

struct EndophyteTestTimeout: Error {}
