import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import XCTest

/// The VM table's rules (issue 16): ownership moves only by compare-and-swap on the ownership epoch,
/// failover only from a primary recorded failed whose lease lapsed, placement deterministic.
final class VMTableTests: XCTestCase {
    let genesis = SigningKey(seed: Array(repeating: 7, count: 32))
    var network: NetworkIdentity { NetworkIdentity(genesisKey: genesis.publicKey) }
    var index: UInt64 = 0
    /// Control time (Unix ms).
    var time: Int64 = 1_800_000_010_000

    func key(_ i: UInt8) -> SigningKey { SigningKey(seed: Array(repeating: i, count: 32)) }
    func id(_ i: UInt8) -> MyceliumIdentity.NodeID { MyceliumIdentity.NodeID(publicKey: key(i).publicKey) }

    /// Applies a spore entry stamped `advance` ms after the last.
    func spore(_ s: inout ControlState, _ c: SporeCommand, by i: UInt8, advance: Int64 = 1000) throws {
        index += 1; time += advance
        let e = ControlEntry.spore(SignedCommand(c, author: id(i), key: key(i), network: network.id), millis: time)
        _ = try s.apply(Entry(term: 1, index: index, data: e.encoded()))
    }

    @discardableResult
    func vm(_ s: inout ControlState, _ c: VMCommand) throws -> [ControlChange] {
        index += 1
        return try s.apply(Entry(term: 1, index: index, data: ControlEntry.vm(c).encoded()))
    }

    func refusal(_ s: inout ControlState, _ c: VMCommand) -> String {
        do { try vm(&s, c); return "accepted" } catch { return "\(error)" }
    }

    /// Three members (1 the founder with every role), each announcing `memory` MiB.
    func world(memory: UInt32 = 4096) throws -> ControlState {
        var s = ControlState(network: network)
        for i: UInt8 in 1...3 {
            let cert = MembershipCertificate.issue(by: genesis, nodeID: id(i), nodeKey: key(i).publicKey,
                                                   roles: [.member, .sclerotiumEligible, .inviter], serial: UInt64(i),
                                                   issuedAt: 1_800_000_000, validFor: 86_400)
            try spore(&s, .admit(cert), by: i)
            try spore(&s, .refresh(Capabilities(cpus: 2, memoryMiB: memory, features: .libvirt)), by: i)
        }
        return s
    }

    let spec = VMSpec(name: "web-1", memoryMiB: 256, vcpus: 1, kernel: "/boot/vmlinuz", initrd: "/boot/initrd")

    func testOwnershipMovesOnlyByCompareAndSwapOnTheEpoch() throws {
        var s = try world()
        try vm(&s, .create(spec, primary: id(1), replica: id(2)))
        XCTAssertEqual(s.vms.vms["web-1"]?.epoch, 1)
        XCTAssertTrue(refusal(&s, .create(spec, primary: id(2), replica: nil)).contains("exists"))
        // Planned migration to the replica: requested, then switched by the primary; owner and
        // replica swap, the epoch moves on.
        try vm(&s, .requestMigration(name: "web-1", to: id(2), epoch: 1))
        try spore(&s, .vmSwitch(name: "web-1", to: id(2), epoch: 1), by: 1)
        XCTAssertEqual(s.vms.vms["web-1"]?.primary, id(2))
        XCTAssertEqual(s.vms.vms["web-1"]?.replica, id(1))
        XCTAssertEqual(s.vms.vms["web-1"]?.epoch, 2)
        XCTAssertNil(s.vms.vms["web-1"]?.migration)
        XCTAssertTrue(s.vms.vms["web-1"]?.migrationOutcome.hasPrefix("switched to") == true)
        // A command proposed against the old state is refused everywhere.
        XCTAssertTrue(refusal(&s, .requestMigration(name: "web-1", to: id(1), epoch: 1)).contains("epoch 2, not 1"))
        XCTAssertTrue(refusal(&s, .setReplica(name: "web-1", id(3), epoch: 1)).contains("epoch"))
        try vm(&s, .setReplica(name: "web-1", id(3), epoch: 2))
        XCTAssertEqual(s.vms.vms["web-1"]?.epoch, 2, "a new replica does not change the owner")
        XCTAssertTrue(refusal(&s, .setReplica(name: "web-1", id(2), epoch: 2)).contains("another node"))
        let changes = try vm(&s, .delete(name: "web-1"))
        guard case .vm("web-1", nil)? = changes.first else { return XCTFail("\(changes)") }
        XCTAssertTrue(refusal(&s, .delete(name: "web-1")).contains("no VM"))
    }

    /// The switch is the primary's to sign, only for the pending migration; an abort and a switch
    /// exclude each other whatever order Raft gives them.
    func testOnlyThePrimarySwitchesAPendingMigrationAndAnAbortExcludesIt() throws {
        var s = try world()
        try vm(&s, .create(spec, primary: id(1), replica: id(2)))
        func switchRefusal(by i: UInt8, to: UInt8, epoch: UInt64 = 1) -> String {
            do { try spore(&s, .vmSwitch(name: "web-1", to: id(to), epoch: epoch), by: i); return "accepted" } catch { return "\(error)" }
        }
        XCTAssertTrue(switchRefusal(by: 1, to: 2).contains("no planned migration"), "no switch without a request")
        XCTAssertTrue(refusal(&s, .migrate(name: "web-1", to: id(2), epoch: 1)).contains("signed by the VM's primary"),
                      "a leader cannot switch a VM on its own")
        XCTAssertTrue(refusal(&s, .requestMigration(name: "web-1", to: id(1), epoch: 1)).contains("already runs"))
        // To a node that is not the replica: it becomes the replica.
        try vm(&s, .requestMigration(name: "web-1", to: id(3), epoch: 1))
        XCTAssertEqual(s.vms.vms["web-1"]?.replica, id(3))
        XCTAssertEqual(s.vms.vms["web-1"]?.migration?.to, id(3))
        XCTAssertTrue(refusal(&s, .requestMigration(name: "web-1", to: id(2), epoch: 1)).contains("already migrating"))
        XCTAssertTrue(switchRefusal(by: 3, to: 3).contains("only the primary"), "the target cannot take it")
        XCTAssertTrue(switchRefusal(by: 1, to: 2).contains("no planned migration of 'web-1' to"), "only to the requested target")
        let indexBefore = s.appliedIndex
        // The leader's abort lands first: the primary's switch, ordered after it, is refused.
        try vm(&s, .abortMigration(name: "web-1", epoch: 1, reason: "not switched within 60 s"))
        XCTAssertNil(s.vms.vms["web-1"]?.migration)
        XCTAssertEqual(s.vms.vms["web-1"]?.migrationOutcome, "aborted: not switched within 60 s")
        XCTAssertTrue(switchRefusal(by: 1, to: 3).contains("no planned migration"))
        XCTAssertEqual(s.vms.vms["web-1"]?.primary, id(1), "the guest stays where it was")
        XCTAssertGreaterThan(s.appliedIndex, indexBefore)
        // Switch first: the abort, ordered after it, is refused (the epoch moved on).
        try vm(&s, .requestMigration(name: "web-1", to: id(3), epoch: 1))
        try spore(&s, .vmSwitch(name: "web-1", to: id(3), epoch: 1), by: 1)
        XCTAssertTrue(refusal(&s, .abortMigration(name: "web-1", epoch: 1, reason: "late")).contains("epoch 2, not 1"))
        XCTAssertEqual(s.vms.vms["web-1"]?.primary, id(3))
        // The primary gives up its own migration; another node may not.
        try vm(&s, .requestMigration(name: "web-1", to: id(1), epoch: 2))
        XCTAssertThrowsError(try spore(&s, .vmAbortMigration(name: "web-1", epoch: 2, reason: "x"), by: 2))
        try spore(&s, .vmAbortMigration(name: "web-1", epoch: 2, reason: "converge failed"), by: 3)
        XCTAssertEqual(s.vms.vms["web-1"]?.migrationOutcome, "aborted: converge failed")
        // A migration pending when the primary fails ends with the failover.
        try vm(&s, .requestMigration(name: "web-1", to: id(1), epoch: 2))
        try spore(&s, .setStatus(node: id(3), .failed), by: 1)
        try spore(&s, .tick, by: 1, advance: 20_000)
        try vm(&s, .failover(name: "web-1", to: id(1), epoch: 2))
        XCTAssertNil(s.vms.vms["web-1"]?.migration)
        XCTAssertTrue(s.vms.vms["web-1"]?.migrationOutcome.contains("failed over") == true)
    }

    func testFailoverNeedsTheFailureRecordedAndTheLeaseLapsed() throws {
        var s = try world()
        try vm(&s, .create(spec, primary: id(2), replica: id(3)))
        // The primary holds its ownership lease for 10 s of spore time.
        try spore(&s, .acquireLease(name: VMTable.lease(for: try XCTUnwrap(s.vms.vms["web-1"])), ttlSeconds: 10), by: 2)
        XCTAssertTrue(refusal(&s, .failover(name: "web-1", to: id(3), epoch: 1)).contains("not recorded failed"),
                      "a live primary keeps its VM, whatever a leader proposes")
        // Recorded failed (a network this small confirms without a vote), lease still running.
        try spore(&s, .setStatus(node: id(2), .failed), by: 1)
        XCTAssertTrue(refusal(&s, .failover(name: "web-1", to: id(3), epoch: 1)).contains("lease"),
                      "the replica may not start while the old primary may still run its copy")
        XCTAssertTrue(refusal(&s, .failover(name: "web-1", to: id(1), epoch: 1)).contains("not the replica"))
        // At the lease's end the replica still waits VMTable.takeoverSlackMillis; then it takes over.
        XCTAssertEqual(s.vms.vms["web-1"]?.leaseUntilMillis, time - 1000 + 10_000, "the lease ends 10 s after the renewal's stamp, to the ms")
        try spore(&s, .tick, by: 1, advance: 9000)
        XCTAssertTrue(refusal(&s, .failover(name: "web-1", to: id(3), epoch: 1)).contains("lease"), "at the lease's end: slack")
        try spore(&s, .tick, by: 1, advance: VMTable.takeoverSlackMillis - 1)
        XCTAssertTrue(refusal(&s, .failover(name: "web-1", to: id(3), epoch: 1)).contains("1 ms"), "a millisecond before the slack ends")
        try spore(&s, .tick, by: 1, advance: 1)
        try vm(&s, .failover(name: "web-1", to: id(3), epoch: 1))
        let r = try XCTUnwrap(s.vms.vms["web-1"])
        XCTAssertEqual(r.primary, id(3))
        XCTAssertNil(r.replica, "a new replica is chosen next")
        XCTAssertEqual(r.epoch, 2, "the fencing token moved: the old copy, if it comes back, is stale")
        XCTAssertTrue(refusal(&s, .failover(name: "web-1", to: id(3), epoch: 1)).contains("epoch"), "applied once")
    }

    func testBadSpecsAndNonMembersAreRefused() throws {
        var s = try world()
        XCTAssertTrue(refusal(&s, .create(VMSpec(name: "Web", memoryMiB: 256, vcpus: 1), primary: id(1), replica: nil)).contains("lowercase"))
        XCTAssertTrue(refusal(&s, .create(VMSpec(name: "a_b", memoryMiB: 256, vcpus: 1), primary: id(1), replica: nil)).contains("'-'"))
        XCTAssertTrue(refusal(&s, .create(VMSpec(name: "tiny", memoryMiB: 8, vcpus: 1), primary: id(1), replica: nil)).contains("memory"))
        XCTAssertTrue(refusal(&s, .create(VMSpec(name: "cpu", memoryMiB: 64, vcpus: 0), primary: id(1), replica: nil)).contains("vcpus"))
        XCTAssertTrue(refusal(&s, .create(spec, primary: id(9), replica: nil)).contains("not a live member"))
        XCTAssertTrue(refusal(&s, .create(spec, primary: id(1), replica: id(1))).contains("another node"))
        XCTAssertTrue(s.vms.vms.isEmpty, "nothing recorded by a refused command")
    }

    func testPlacementIsDeterministicAndCountsWhatIsAlreadyPlaced() throws {
        var s = try world(memory: 600)
        let big = VMSpec(name: "big", memoryMiB: 400, vcpus: 1)
        let first = s.vms.candidates(for: big, spore: s.spore, excluding: [id(1)])
        XCTAssertEqual(Set(first), [id(2), id(3)])
        XCTAssertEqual(first, s.vms.candidates(for: big, spore: s.spore, excluding: [id(1)]), "every leader chooses alike")
        try vm(&s, .create(big, primary: id(1), replica: first[0]))
        // The chosen replica now holds 400 of its 600 MiB: a second big VM cannot go there.
        let second = s.vms.candidates(for: VMSpec(name: "big-2", memoryMiB: 400, vcpus: 1), spore: s.spore, excluding: [])
        XCTAssertFalse(second.contains(first[0]))
        XCTAssertFalse(second.contains(id(1)))
        XCTAssertEqual(second, [first[1]])
        try spore(&s, .setStatus(node: first[1], .failed), by: 1)
        XCTAssertEqual(s.vms.candidates(for: VMSpec(name: "big-2", memoryMiB: 400, vcpus: 1), spore: s.spore, excluding: []), [],
                       "a failed member is no candidate")
    }

    func testOnlyNodesWithLibvirtAndRoomHoldACopy() throws {
        var s = try world(memory: 600)
        // Node 3 announces no libvirt (its agent found no daemon): never chosen, and named as the reason.
        try spore(&s, .refresh(Capabilities(cpus: 2, memoryMiB: 600)), by: 3)
        XCTAssertEqual(Set(s.vms.candidates(for: spec, spore: s.spore, excluding: [])), [id(1), id(2)])
        XCTAssertTrue(s.vms.placementProblem(for: spec, on: id(3), spore: s.spore)?.contains("no libvirt") == true)
        XCTAssertNil(s.vms.placementProblem(for: spec, on: id(2), spore: s.spore))
        let big = VMSpec(name: "big", memoryMiB: 700, vcpus: 1)
        XCTAssertTrue(s.vms.placementProblem(for: big, on: id(2), spore: s.spore)?.contains("600 MiB left") == true)
    }

    func testTheTableTravelsInTheSnapshotAndItsCommandsRoundTrip() throws {
        var s = try world()
        try vm(&s, .create(spec, primary: id(1), replica: id(2)))
        try vm(&s, .create(VMSpec(name: "db", memoryMiB: 512, vcpus: 2), primary: id(3), replica: nil))
        try vm(&s, .requestMigration(name: "web-1", to: id(3), epoch: 1))
        let restored = try ControlState.restore(s.snapshot(), network: network)
        XCTAssertEqual(restored.vms, s.vms)
        XCTAssertEqual(restored, s)
        let commands: [VMCommand] = [.create(spec, primary: id(1), replica: nil), .create(spec, primary: id(1), replica: id(2)),
                                     .setReplica(name: "a", nil, epoch: 3), .setReplica(name: "a", id(2), epoch: 3),
                                     .failover(name: "a", to: id(2), epoch: 9), .migrate(name: "a", to: id(3), epoch: 1), .delete(name: "a"),
                                     .requestMigration(name: "a", to: id(2), epoch: 4), .abortMigration(name: "a", epoch: 4, reason: "late ✓")]
        for c in commands {
            let bytes = c.encoded()
            XCTAssertEqual(try VMCommand(decoding: bytes), c)
            for cut in 0..<bytes.count { XCTAssertThrowsError(try VMCommand(decoding: Array(bytes.prefix(cut))), "\(c) cut at \(cut)") }
        }
    }

    /// A data disk (issue 18) is a trailing field: a spec without one encodes exactly as before, older
    /// bytes (commands and snapshots written before disks existed) decode with disk "", and one with a
    /// disk round-trips through commands and the snapshot.
    func testADiskIsATrailingFieldSoOlderBytesStillDecode() throws {
        var withDisk = spec
        withDisk.disk = "vol-web"
        let old = VMCommand.create(spec, primary: id(1), replica: id(2)).encoded()
        let new = VMCommand.create(withDisk, primary: id(1), replica: id(2)).encoded()
        var tail = ByteWriter(capacity: 16)
        tail.string("vol-web")
        XCTAssertEqual(new, old + tail.bytes, "the disk is appended, nothing else changes")
        XCTAssertEqual(try VMCommand(decoding: old), .create(spec, primary: id(1), replica: id(2)))
        XCTAssertEqual(try VMCommand(decoding: new), .create(withDisk, primary: id(1), replica: id(2)))
        for cut in 0..<new.count where cut != old.count {
            XCTAssertThrowsError(try VMCommand(decoding: Array(new.prefix(cut))), "cut at \(cut)")
        }
        var bad = withDisk
        bad.disk = "pool/image"
        XCTAssertTrue(bad.problem?.contains("not a volume name") == true, bad.problem ?? "accepted")
        bad.disk = String(repeating: "x", count: VMSpec.maxDisk + 1)
        XCTAssertNotNil(bad.problem)

        // The snapshot: a table with no disk is byte-for-byte the old format; one with a disk restores.
        var s = try world()
        try vm(&s, .create(spec, primary: id(1), replica: id(2)))
        let tableWithoutDisks = s.vms.encoded()
        // The disk must be a created volume (every replica checks it).
        let dbVM = VMSpec(name: "db", memoryMiB: 512, vcpus: 2, disk: "vol-db")
        XCTAssertTrue(refusal(&s, .create(dbVM, primary: id(3), replica: nil)).contains("no volume named 'vol-db'"))
        func volume(_ c: VolumeCommand) throws { index += 1; _ = try s.apply(Entry(term: 1, index: index, data: ControlEntry.volume(c).encoded())) }
        try volume(.create(VolumeSpec(name: "vol-db", sizeBytes: 1 << 30, dataClass: "local", driver: .local), home: id(3), executor: id(3)))
        XCTAssertTrue(refusal(&s, .create(dbVM, primary: id(3), replica: nil)).contains("not created"))
        try volume(.taskDone(name: "vol-db", task: s.volumes.volumes["vol-db"]!.task!.id, node: id(3), ok: true, message: ""))
        try vm(&s, .create(dbVM, primary: id(3), replica: nil))
        XCTAssertTrue(refusal(&s, .create(VMSpec(name: "db2", memoryMiB: 512, vcpus: 2, disk: "vol-db"), primary: id(3), replica: nil)).contains("already the disk of VM 'db'"))
        XCTAssertEqual(s.vms.vms["db"]?.spec.disk, "vol-db")
        let restored = try ControlState.restore(s.snapshot(), network: network)
        XCTAssertEqual(restored.vms, s.vms)
        XCTAssertEqual(restored.vms.vms["db"]?.spec.disk, "vol-db")
        XCTAssertEqual(restored.vms.vms["web-1"]?.spec.disk, "")
        // Older table bytes (format 4, and 2 without migrations) decode, every disk "".
        XCTAssertEqual(try VMTable(decoding: tableWithoutDisks, version: 4).vms["web-1"]?.spec, spec)
        let bytes = s.vms.encoded()
        XCTAssertEqual(try VMTable(decoding: bytes), s.vms)
        for cut in [bytes.count - 1, bytes.count - 3] { XCTAssertThrowsError(try VMTable(decoding: Array(bytes.prefix(cut)))) }
    }
}
