import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import VMController
import XCTest

/// The VM controller's rules: leases kept, self-fencing before a takeover is possible, failover and
/// replica placement by the leader, stale copies destroyed.
final class VMControllerTests: XCTestCase {
    let genesis = SigningKey(seed: Array(repeating: 7, count: 32))
    var network: NetworkIdentity { NetworkIdentity(genesisKey: genesis.publicKey) }
    var index: UInt64 = 0
    /// Control time (Unix ms) of the last spore entry.
    var time: Int64 = 1_800_000_010_000
    var state = ControlState(network: NetworkIdentity(genesisKey: SigningKey(seed: Array(repeating: 7, count: 32)).publicKey))

    func key(_ i: UInt8) -> SigningKey { SigningKey(seed: Array(repeating: i, count: 32)) }
    func id(_ i: UInt8) -> MyceliumIdentity.NodeID { MyceliumIdentity.NodeID(publicKey: key(i).publicKey) }

    /// Commits a spore entry stamped `advance` ms after the last.
    func spore(_ c: SporeCommand, by i: UInt8, advance: Int64 = 0) throws {
        index += 1; time += advance
        let e = ControlEntry.spore(SignedCommand(c, author: id(i), key: key(i), network: network.id), millis: time)
        _ = try state.apply(Entry(term: 1, index: index, data: e.encoded()))
    }

    func vm(_ c: VMCommand) throws {
        index += 1
        _ = try state.apply(Entry(term: 1, index: index, data: ControlEntry.vm(c).encoded()))
    }

    override func setUp() async throws {
        for i: UInt8 in 1...3 {
            let cert = MembershipCertificate.issue(by: genesis, nodeID: id(i), nodeKey: key(i).publicKey,
                                                   roles: [.member, .sclerotiumEligible, .inviter], serial: UInt64(i),
                                                   issuedAt: 1_800_000_000, validFor: 86_400)
            try spore(.admit(cert), by: i)
            try spore(.refresh(Capabilities(cpus: 2, memoryMiB: 4096, features: .libvirt)), by: i)
        }
    }

    let tps: UInt64 = 10
    func ctx(_ node: UInt8, tick: UInt64, leader: Bool = false) -> ControllerContext {
        ControllerContext(node: id(node), isLeader: leader, state: state, tick: tick, ticksPerSecond: tps)
    }

    /// The driver's actions, without the watchdog's keepAlives (see `keepAlives`).
    func actions(_ e: [ControllerEffect<VMAction>]) -> [VMAction] {
        e.compactMap { if case .act(let a) = $0, !a.isKeepAlive { return a } else { return nil } }
    }
    func keepAlives(_ e: [ControllerEffect<VMAction>]) -> [Double] {
        e.compactMap { if case .act(.keepAlive(_, let s)) = $0 { return s } else { return nil } }
    }
    func submits(_ e: [ControllerEffect<VMAction>]) -> [SporeCommand] { e.compactMap { if case .submit(let c) = $0 { return c } else { return nil } } }
    func proposals(_ e: [ControllerEffect<VMAction>]) -> [VMCommand] {
        e.compactMap { if case .propose(.vm(let c)) = $0 { return c } else { return nil } }
    }

    let spec = VMSpec(name: "web-1", memoryMiB: 256, vcpus: 1)

    /// Commits `cmd` by node `i` and shows it, applied, to `c` at `tick`.
    func land(_ cmd: SporeCommand, _ c: inout VMController, _ i: UInt8, tick: UInt64, advance: Int64 = 0) throws -> [ControllerEffect<VMAction>] {
        try spore(cmd, by: i, advance: advance)
        return c.applied(.spore(SignedCommand(cmd, author: id(i), key: key(i), network: network.id)), context: ctx(i, tick: tick))
    }

    /// Node `i`'s controller sends its renewal of web-1 at `tick` and sees it applied at once.
    func renew(_ c: inout VMController, _ i: UInt8, tick: UInt64, advance: Int64 = 0) throws -> [ControllerEffect<VMAction>] {
        let sent = submits(c.tick(context: ctx(i, tick: tick))).filter { if case .renewLease = $0 { true } else { false } }
        guard sent.count == 1 else { XCTFail("expected one renewal, got \(sent)"); return [] }
        return try land(sent[0], &c, i, tick: tick, advance: advance)
    }

    func isRenewal(_ c: SporeCommand) -> Bool {
        if case .renewLease(name: "vm/web-1@1", ttlSeconds: VMSettings().leaseSeconds, _) = c { return true } else { return false }
    }

    func testThePrimaryRunsOnlyWithItsLeaseAndFencesBeforeATakeoverIsPossible() throws {
        try vm(.create(spec, primary: id(2), replica: id(3)))
        var primary = VMController(run: 1000)
        var t: UInt64 = 100
        // No lease yet: it asks for one and does not run the guest.
        var e = primary.tick(context: ctx(2, tick: t))
        XCTAssertEqual(submits(e).count, 1)
        XCTAssertTrue(submits(e).allSatisfy(isRenewal), "\(e)")
        XCTAssertEqual(actions(e), [])
        e = try land(submits(e)[0], &primary, 2, tick: t)
        XCTAssertEqual(actions(e), [.run(state.vms.vms["web-1"]!)])
        // Before the run, what the watchdog may allow if the agent dies: the lease (2 s) minus the
        // fence margin (0.5 s), from when the renewal was sent (this tick).
        XCTAssertEqual(keepAlives(e), [1.5])
        guard case .act(.keepAlive)? = e.first(where: { if case .act = $0 { return true } else { return false } }) else {
            return XCTFail("the keepAlive comes before the run: \(e)")
        }
        let leaseEnd = try XCTUnwrap(state.vms.vms["web-1"]).leaseUntilMillis
        XCTAssertEqual(leaseEnd, time + 2000, "to the millisecond of the renewal's stamp")
        // Cut off: no renewal lands, control time stands still; the node's own clock goes on.
        var fencedAt: UInt64?
        for _ in 0..<100 {
            t += 1
            e = primary.tick(context: ctx(2, tick: t))
            if actions(e).contains(where: { if case .fence = $0 { return true } else { return false } }) { fencedAt = t; break }
        }
        let fenced = try XCTUnwrap(fencedAt, "a primary that cannot renew pauses its guest")
        // Control time at that moment, and the earliest at which the table lets the replica in.
        let atFence = time + Int64(fenced - 100) * 1000 / Int64(tps)
        XCTAssertLessThan(atFence, leaseEnd + VMTable.takeoverSlackMillis, "fenced before a takeover can be accepted")
        XCTAssertLessThanOrEqual(atFence, leaseEnd - VMSettings().fenceMarginMillis, "with the fence margin to spare")
        XCTAssertEqual(fenced, 115, "1.5 s after the renewal was sent, no later")
        // A renewal lands: the guest runs again.
        e = try renew(&primary, 2, tick: t + tps, advance: Int64(t + tps - 100) * 100)
        XCTAssertTrue(actions(e).contains(.run(state.vms.vms["web-1"]!)), "\(e)")
    }

    func testARestartedPrimaryDoesNotTrustRenewalsOfItsEarlierRun() throws {
        try vm(.create(spec, primary: id(2), replica: id(3)))
        var before = VMController(run: 1000)
        let old = submits(before.tick(context: ctx(2, tick: 10)))
        XCTAssertEqual(old.count, 1)
        // The node restarts before its renewal is applied; replaying its log, the new run applies it
        // (with a fresh-looking stamp and at its own current tick): not its renewal, so no run.
        var after = VMController(run: 777_000)
        var e = after.tick(context: ctx(2, tick: 1))
        let mine = submits(e)
        XCTAssertEqual(actions(e), [], "no lease yet in this run")
        e = try land(old[0], &after, 2, tick: 2)
        XCTAssertEqual(actions(e), [], "a renewal from before the restart is not this run's: \(old[0])")
        XCTAssertEqual(state.spore.leases["vm/web-1@1"]?.holder, id(2), "although the spore holds the lease for the node")
        // Its own renewal lands: it runs.
        e = try land(mine[0], &after, 2, tick: 3)
        XCTAssertEqual(actions(e), [.run(state.vms.vms["web-1"]!)])
    }

    func testALateAppliedRenewalCountsFromWhenItWasSent() throws {
        try vm(.create(spec, primary: id(2), replica: id(3)))
        var primary = VMController(run: 1)
        let sent = submits(primary.tick(context: ctx(2, tick: 100)))
        // Applied 1.5 s after it was sent (the node was catching up): of the 2 s lease,
        // 2 − 0.5 (margin) − 1.5 = 0 s remain by the node's own clock, so it must not run.
        var e = try land(sent[0], &primary, 2, tick: 115)
        XCTAssertEqual(actions(e), [], "\(e)")
        // Applied 0.5 s late: it runs, and fences 1.5 s after sending, not after applying.
        var p2 = VMController(run: 2)
        let s2 = submits(p2.tick(context: ctx(2, tick: 200)))
        e = try land(s2[0], &p2, 2, tick: 205)
        XCTAssertTrue(actions(e).contains(.run(state.vms.vms["web-1"]!)))
        var fencedAt: UInt64?
        for t in (200 + tps)...(200 + 10 * tps) {
            // Its own later renewals are lost (cut off).
            if actions(p2.tick(context: ctx(2, tick: t))).contains(where: { if case .fence = $0 { return true } else { return false } }) { fencedAt = t; break }
        }
        XCTAssertEqual(fencedAt, 215)
    }

    func testTheLeaderFailsOverOnlyAfterTheFailureAndTheLeaseAndThenPlacesAReplica() throws {
        try vm(.create(spec, primary: id(2), replica: id(3)))
        try spore(.renewLease(name: "vm/web-1@1", ttlSeconds: 2, run: 9), by: 2)
        var leader = VMController(run: 1)
        XCTAssertEqual(proposals(leader.tick(context: ctx(1, tick: 10, leader: true))), [], "a live primary keeps its VM")
        try spore(.setStatus(node: id(2), .failed), by: 1)
        XCTAssertEqual(proposals(leader.tick(context: ctx(1, tick: 20, leader: true))), [], "the lease still runs")
        try spore(.tick, by: 1, advance: 2000 + VMTable.takeoverSlackMillis - 1)
        XCTAssertEqual(proposals(leader.tick(context: ctx(1, tick: 21, leader: true))), [], "1 ms of slack left")
        try spore(.tick, by: 1, advance: 1)
        let p = proposals(leader.tick(context: ctx(1, tick: 30, leader: true)))
        XCTAssertEqual(p, [.failover(name: "web-1", to: id(3), epoch: 1)])
        XCTAssertTrue(submits(leader.tick(context: ctx(1, tick: 30, leader: true))).isEmpty, "spore time already past the lease: no tick")
        try vm(p[0])
        // Now unprotected: the leader gives it a replica, never the failed node.
        let r = proposals(leader.tick(context: ctx(1, tick: 40, leader: true)))
        XCTAssertEqual(r, [.setReplica(name: "web-1", id(1), epoch: 2)])
    }

    func testAStaleCopyIsDestroyedAndANewReplicaHolds() throws {
        try vm(.create(spec, primary: id(2), replica: id(3)))
        var old = VMController(run: 1), replica = VMController(run: 2)
        XCTAssertEqual(actions(try renew(&old, 2, tick: 10)), [.run(state.vms.vms["web-1"]!)])
        XCTAssertEqual(actions(replica.tick(context: ctx(3, tick: 10))), [.hold(state.vms.vms["web-1"]!)])
        // The network moved on without node 2 (failed, lease lapsed, failover, node 1 the new replica).
        try spore(.setStatus(node: id(2), .failed), by: 1, advance: 6000)
        try vm(.failover(name: "web-1", to: id(3), epoch: 1))
        try vm(.setReplica(name: "web-1", id(1), epoch: 2))
        // Node 2 comes back: its copy is of epoch 1, the VM is at epoch 2 elsewhere: destroyed, never resumed.
        let back = actions(old.tick(context: ctx(2, tick: 20)))
        XCTAssertEqual(back.count, 1)
        guard case .destroy(name: "web-1", _)? = back.first else { return XCTFail("\(back)") }
        XCTAssertFalse(back.contains { if case .run = $0 { return true } else { return false } })
    }

    /// The view of a committed entry that `c` gets: the spore command and the VM record it changed.
    func landBoth(_ cmd: SporeCommand, _ c: inout VMController, _ i: UInt8, by author: UInt8, tick: UInt64) throws -> [ControllerEffect<VMAction>] {
        try spore(cmd, by: author)
        var e = c.applied(.spore(SignedCommand(cmd, author: id(author), key: key(author), network: network.id)), context: ctx(i, tick: tick))
        e += c.applied(.vm(name: "web-1", state.vms.vms["web-1"]), context: ctx(i, tick: tick))
        return e
    }

    func testAPlannedMigrationHandsOverThenSwitchesAndTheTargetTakesItsOwnLease() throws {
        try vm(.create(spec, primary: id(2), replica: id(3)))
        var primary = VMController(run: 1000), target = VMController(run: 2000)
        XCTAssertEqual(actions(try renew(&primary, 2, tick: 10)), [.run(state.vms.vms["web-1"]!)])
        XCTAssertEqual(actions(target.tick(context: ctx(3, tick: 10))), [.hold(state.vms.vms["web-1"]!)])
        try vm(.requestMigration(name: "web-1", to: id(3), epoch: 1))
        let r1 = try XCTUnwrap(state.vms.vms["web-1"])
        var e = primary.applied(.vm(name: "web-1", r1), context: ctx(2, tick: 11))
        XCTAssertEqual(actions(e), [.handOver(r1)], "a valid lease and a synced replica: hand over")
        XCTAssertEqual(actions(primary.tick(context: ctx(2, tick: 12))), [], "once")
        XCTAssertEqual(actions(target.applied(.vm(name: "web-1", r1), context: ctx(3, tick: 11))), [], "the target keeps holding")
        // The driver paused the guest at a state the target committed: the primary signs the switch.
        e = primary.reported(.readyToSwitch(name: "web-1", epoch: 1), context: ctx(2, tick: 13))
        XCTAssertEqual(submits(e), [.vmSwitch(name: "web-1", to: id(3), epoch: 1)])
        // Not applied within 2 s: sent again (the paused primary renews its lease meanwhile).
        _ = try renew(&primary, 2, tick: 20, advance: 1000)
        XCTAssertEqual(submits(primary.tick(context: ctx(2, tick: 13 + 2 * tps))).filter { if case .vmSwitch = $0 { true } else { false } }.count, 1)
        // It applies: the old primary keeps its copy paused and holds the replica; the target has no
        // lease of its own yet and asks for one at once, without running the guest.
        e = try landBoth(.vmSwitch(name: "web-1", to: id(3), epoch: 1), &primary, 2, by: 2, tick: 40)
        let r2 = try XCTUnwrap(state.vms.vms["web-1"])
        XCTAssertEqual(r2.epoch, 2)
        XCTAssertEqual(actions(e), [.handOverDecided(name: "web-1", switched: true, resume: false), .hold(r2)])
        var t = target.applied(.vm(name: "web-1", r2), context: ctx(3, tick: 40))
        XCTAssertEqual(actions(t), [])
        let renewal = submits(t)
        XCTAssertEqual(renewal.count, 1)
        guard case .renewLease(name: "vm/web-1@2", _, _)? = renewal.first else { return XCTFail("\(renewal)") }
        t = try land(renewal[0], &target, 3, tick: 41)
        XCTAssertEqual(actions(t), [.run(state.vms.vms["web-1"]!)], "the target runs it once its own lease lands")
        // The old primary's lease (epoch 1) no longer counts for anything.
        XCTAssertEqual(state.vms.vms["web-1"]?.leaseUntilMillis, time + Int64(VMSettings().leaseSeconds) * 1000)
    }

    func testAnAbortedOrFailedHandOverResumesTheGuestWhereItWas() throws {
        try vm(.create(spec, primary: id(2), replica: id(3)))
        var primary = VMController(run: 1000), leader = VMController(run: 1)
        _ = try renew(&primary, 2, tick: 10)
        try vm(.requestMigration(name: "web-1", to: id(3), epoch: 1))
        _ = primary.applied(.vm(name: "web-1", state.vms.vms["web-1"]), context: ctx(2, tick: 11))
        _ = primary.reported(.readyToSwitch(name: "web-1", epoch: 1), context: ctx(2, tick: 12))
        // Not switched within the migration timeout: the leader aborts it.
        XCTAssertEqual(proposals(leader.tick(context: ctx(1, tick: 20, leader: true))), [])
        // A minute passes; the paused primary keeps renewing its lease every second.
        var t: UInt64 = 10
        for _ in 0..<VMSettings().migrationTimeoutSeconds {
            t += tps
            _ = try renew(&primary, 2, tick: t, advance: 1000)
        }
        let abort = proposals(leader.tick(context: ctx(1, tick: t, leader: true)))
        XCTAssertEqual(abort.count, 1)
        guard case .abortMigration(name: "web-1", epoch: 1, _)? = abort.first else { return XCTFail("\(abort)") }
        // The abort applies: the paused guest resumes here.
        try vm(abort[0])
        let e = primary.applied(.vm(name: "web-1", state.vms.vms["web-1"]), context: ctx(2, tick: t + 1))
        XCTAssertEqual(actions(e), [.handOverDecided(name: "web-1", switched: false, resume: true)])
        XCTAssertTrue(state.vms.vms["web-1"]?.migrationOutcome.contains("not switched within") == true)
        // A switch report arriving after the abort is ignored.
        XCTAssertEqual(submits(primary.reported(.readyToSwitch(name: "web-1", epoch: 1), context: ctx(2, tick: t + 2))), [])
        // A second request; the driver fails before the pause: the primary gives the migration up.
        try vm(.requestMigration(name: "web-1", to: id(3), epoch: 1))
        XCTAssertEqual(actions(primary.applied(.vm(name: "web-1", state.vms.vms["web-1"]), context: ctx(2, tick: t + 3))),
                       [.handOver(state.vms.vms["web-1"]!)])
        let f = primary.reported(.handOverFailed(name: "web-1", epoch: 1, reason: "the replica went away"), context: ctx(2, tick: t + 4))
        XCTAssertEqual(submits(f), [.vmAbortMigration(name: "web-1", epoch: 1, reason: "the replica went away")])
        try spore(.vmAbortMigration(name: "web-1", epoch: 1, reason: "the replica went away"), by: 2)
        XCTAssertEqual(actions(primary.applied(.vm(name: "web-1", state.vms.vms["web-1"]), context: ctx(2, tick: t + 5))), [],
                       "it never stopped running: nothing to resume")
    }

    /// Spore time moves only with spore entries; with the primary dead it can lag. A leader whose own
    /// clock says the lease lapsed commits a tick right before the failover, so the table (which
    /// checks spore time) accepts it at once instead of seconds later.
    func testTheLeaderAdvancesStaleSporeTimeBeforeAFailover() throws {
        try vm(.create(spec, primary: id(2), replica: id(3)))
        try spore(.renewLease(name: "vm/web-1@1", ttlSeconds: 2, run: 9), by: 2)
        try spore(.setStatus(node: id(2), .failed), by: 1)
        var leader = VMController(run: 1)
        // No spore entry for 10 s of the leader's clock: control time stands still at the lease's start.
        var e = leader.tick(context: ctx(1, tick: 10, leader: true))
        XCTAssertEqual(proposals(e), [], "the lease still runs by the leader's clock")
        e = leader.tick(context: ctx(1, tick: 10 + 10 * tps, leader: true))
        XCTAssertEqual(submits(e), [.tick], "a tick first")
        XCTAssertEqual(proposals(e), [.failover(name: "web-1", to: id(3), epoch: 1)])
        guard let ti = e.firstIndex(where: { if case .submit(.tick) = $0 { true } else { false } }),
              let fi = e.firstIndex(where: { if case .propose = $0 { true } else { false } }) else { return XCTFail("\(e)") }
        XCTAssertLessThan(ti, fi, "the tick is proposed before the failover")
        // Committed in that order, the failover is accepted.
        try spore(.tick, by: 1, advance: 10_000)
        try vm(.failover(name: "web-1", to: id(3), epoch: 1))
        XCTAssertEqual(state.vms.vms["web-1"]?.primary, id(3))
    }

    /// A run that failed here (libvirt down, a standby that would not start) is asked for again
    /// after a while, not left failed for good.
    func testAFailedRunIsRetried() throws {
        try vm(.create(spec, primary: id(2), replica: id(3)))
        var primary = VMController(run: 1000)
        XCTAssertEqual(actions(try renew(&primary, 2, tick: 10)), [.run(state.vms.vms["web-1"]!)])
        _ = primary.reported(.actionFailed(name: "web-1", epoch: 1, reason: "libvirt: connection refused"), context: ctx(2, tick: 11))
        var again: UInt64?
        for t in UInt64(12)...200 {
            let e = t % tps == 0 ? try renew(&primary, 2, tick: t) : primary.tick(context: ctx(2, tick: t))
            if actions(e).contains(.run(state.vms.vms["web-1"]!)) { again = t; break }
        }
        XCTAssertEqual(again, 11 + VMController.retrySeconds * tps, "asked again after \(VMController.retrySeconds) s")
        // A report about an older epoch changes nothing.
        XCTAssertEqual(primary.reported(.actionFailed(name: "web-1", epoch: 0, reason: "old"), context: ctx(2, tick: 90)).count, 0)
    }

    func testAHandOverWithoutAValidLeaseFencesInsteadOfWaiting() throws {
        try vm(.create(spec, primary: id(2), replica: id(3)))
        var primary = VMController(run: 1000)
        _ = try renew(&primary, 2, tick: 10)
        try vm(.requestMigration(name: "web-1", to: id(3), epoch: 1))
        _ = primary.applied(.vm(name: "web-1", state.vms.vms["web-1"]), context: ctx(2, tick: 11))
        // Cut off mid-hand-over: no renewal lands; the guest must not run past the lease.
        var fenced = false
        for t in UInt64(12)...80 {
            if actions(primary.tick(context: ctx(2, tick: t))).contains(where: { if case .fence = $0 { true } else { false } }) { fenced = true; break }
        }
        XCTAssertTrue(fenced)
    }
}

extension VMAction {
    var isKeepAlive: Bool { if case .keepAlive = self { return true } else { return false } }
}
