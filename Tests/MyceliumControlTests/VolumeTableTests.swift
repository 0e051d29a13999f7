import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import XCTest

/// The volume table's rules (issue 18): every change is a task with one executor, reported only by
/// that executor and only once; a task moves to another node only when its executor is gone; the
/// leader's placement decisions supersede each other and are carried out by their executor.
final class VolumeTableTests: XCTestCase {
    let genesis = SigningKey(seed: Array(repeating: 7, count: 32))
    var network: NetworkIdentity { NetworkIdentity(genesisKey: genesis.publicKey) }
    var index: UInt64 = 0
    var time: Int64 = 1_800_000_010_000

    func key(_ i: UInt8) -> SigningKey { SigningKey(seed: Array(repeating: i, count: 32)) }
    func id(_ i: UInt8) -> MyceliumIdentity.NodeID { MyceliumIdentity.NodeID(publicKey: key(i).publicKey) }

    func spore(_ s: inout ControlState, _ c: SporeCommand, by i: UInt8) throws {
        index += 1; time += 1000
        let e = ControlEntry.spore(SignedCommand(c, author: id(i), key: key(i), network: network.id), millis: time)
        _ = try s.apply(Entry(term: 1, index: index, data: e.encoded()))
    }

    @discardableResult
    func volume(_ s: inout ControlState, _ c: VolumeCommand) throws -> [ControlChange] {
        index += 1; time += 10
        return try s.apply(Entry(term: 1, index: index, data: ControlEntry.volume(c, millis: time).encoded()))
    }

    func refusal(_ s: inout ControlState, _ c: VolumeCommand) -> String {
        do { try volume(&s, c); return "accepted" } catch { return "\(error)" }
    }

    /// Three members; 1 and 2 reach Ceph (CRUSH hosts h1, h2), 3 does not.
    func world() throws -> ControlState {
        var s = ControlState(network: network)
        for i: UInt8 in 1...3 {
            let cert = MembershipCertificate.issue(by: genesis, nodeID: id(i), nodeKey: key(i).publicKey,
                                                   roles: [.member, .sclerotiumEligible, .inviter], serial: UInt64(i),
                                                   issuedAt: 1_800_000_000, validFor: 86_400)
            try spore(&s, .admit(cert), by: i)
        }
        try volume(&s, .storageNode(node: id(1), StorageNodeInfo(ceph: true, cephHost: "h1")))
        try volume(&s, .storageNode(node: id(2), StorageNodeInfo(ceph: true, cephHost: "h2")))
        try volume(&s, .storageNode(node: id(3), StorageNodeInfo(ceph: false, cephHost: "")))
        return s
    }

    let local = VolumeSpec(name: "data", sizeBytes: 64 << 20, dataClass: "local", driver: .local)
    let replicated = VolumeSpec(name: "db", sizeBytes: 1 << 30, dataClass: "sensitive", driver: .ceph)

    func testATaskIsReportedOnlyByItsExecutorAndOnlyOnce() throws {
        var s = try world()
        try volume(&s, .create(replicated, home: id(3), executor: id(1)))
        let task = try XCTUnwrap(s.volumes.volumes["db"]?.task)
        XCTAssertEqual(task.operation, .create)
        XCTAssertFalse(s.volumes.volumes["db"]!.created)
        // Busy until done: no snapshot, no second create.
        XCTAssertTrue(refusal(&s, .snapshot(name: "db", snapshot: "s1", executor: id(1))).contains("busy"))
        XCTAssertTrue(refusal(&s, .create(replicated, home: id(1), executor: id(1))).contains("exists"))
        // Only the executor reports, and only on its task.
        XCTAssertTrue(refusal(&s, .taskDone(name: "db", task: task.id, node: id(2), ok: true, message: "")).contains("is \(id(1))'s"))
        XCTAssertTrue(refusal(&s, .taskDone(name: "db", task: task.id + 1, node: id(1), ok: true, message: "")).contains("no task"))
        try volume(&s, .taskDone(name: "db", task: task.id, node: id(1), ok: true, message: "image created"))
        XCTAssertTrue(s.volumes.volumes["db"]!.created)
        XCTAssertNil(s.volumes.volumes["db"]!.task)
        XCTAssertTrue(refusal(&s, .taskDone(name: "db", task: task.id, node: id(1), ok: true, message: "")).contains("late or repeated"))

        try volume(&s, .snapshot(name: "db", snapshot: "s1", executor: id(2)))
        let snap = s.volumes.volumes["db"]!.task!
        XCTAssertGreaterThan(snap.id, task.id, "task ids are never reused")
        try volume(&s, .taskDone(name: "db", task: snap.id, node: id(2), ok: true, message: ""))
        XCTAssertEqual(s.volumes.volumes["db"]!.snapshots, ["s1"])
        XCTAssertTrue(refusal(&s, .snapshot(name: "db", snapshot: "s1", executor: id(2))).contains("has a snapshot"))

        // A failed delete leaves the volume; a successful one removes it.
        try volume(&s, .delete(name: "db", executor: id(1)))
        try volume(&s, .taskDone(name: "db", task: s.volumes.volumes["db"]!.task!.id, node: id(1), ok: false, message: "in use by 1 watcher"))
        XCTAssertEqual(s.volumes.volumes["db"]?.message, "in use by 1 watcher")
        try volume(&s, .delete(name: "db", executor: id(1)))
        let changes = try volume(&s, .taskDone(name: "db", task: s.volumes.volumes["db"]!.task!.id, node: id(1), ok: true, message: ""))
        guard case .volume("db", nil)? = changes.first else { return XCTFail("\(changes)") }
        XCTAssertNil(s.volumes.volumes["db"])
    }

    func testExecutorsMustBeAbleToDoTheWork() throws {
        var s = try world()
        XCTAssertTrue(refusal(&s, .create(replicated, home: id(3), executor: id(3))).contains("no Ceph"))
        XCTAssertTrue(refusal(&s, .create(local, home: id(3), executor: id(1))).contains("created by its home node"))
        XCTAssertTrue(refusal(&s, .create(VolumeSpec(name: "z", sizeBytes: 0, dataClass: "local", driver: .local), home: id(1), executor: id(1))).contains("at least 1 MiB"))
        XCTAssertTrue(refusal(&s, .create(VolumeSpec(name: "z", sizeBytes: 65 << 40, dataClass: "local", driver: .local), home: id(1), executor: id(1))).contains("at most 64 TiB"))
        XCTAssertTrue(refusal(&s, .create(VolumeSpec(name: "z", sizeBytes: 1 << 20, dataClass: "private", driver: .local), home: id(1), executor: id(1))).contains("class 'local'"))
        XCTAssertTrue(refusal(&s, .create(VolumeSpec(name: "Z", sizeBytes: 1 << 20, dataClass: "local", driver: .local), home: id(1), executor: id(1))).contains("lowercase"))
        XCTAssertTrue(refusal(&s, .storageNode(node: id(3), StorageNodeInfo(ceph: true, cephHost: "h1"))).contains("is \(id(1))'s"))
        XCTAssertTrue(s.volumes.volumes.isEmpty, "refusals record nothing")
        XCTAssertEqual(s.volumes.nextTask, 1)
    }

    func testATaskMovesOnlyWhenItsExecutorIsGone() throws {
        var s = try world()
        try volume(&s, .create(replicated, home: id(1), executor: id(1)))
        let t = s.volumes.volumes["db"]!.task!
        XCTAssertTrue(refusal(&s, .retask(name: "db", task: t.id, executor: id(2))).contains("live member"))
        try spore(&s, .setStatus(node: id(1), .failed), by: 2)
        XCTAssertTrue(refusal(&s, .retask(name: "db", task: t.id, executor: id(3))).contains("no Ceph"))
        try volume(&s, .retask(name: "db", task: t.id, executor: id(2)))
        XCTAssertEqual(s.volumes.volumes["db"]!.task?.executor, id(2))
        XCTAssertTrue(refusal(&s, .taskDone(name: "db", task: t.id, node: id(1), ok: true, message: "")).contains("is \(id(2))'s"),
                      "the old executor's late report is refused")
        try volume(&s, .taskDone(name: "db", task: t.id, node: id(2), ok: true, message: ""))
        XCTAssertTrue(s.volumes.volumes["db"]!.created)
    }

    func testPlacementDecisionsSupersedeEachOther() throws {
        var s = try world()
        try volume(&s, .placement(hosts: ["h1": ["private", "public"], "h2": ["public"]], executor: id(1)))
        XCTAssertEqual(s.volumes.placement?.id, 1)
        XCTAssertEqual(s.volumes.placement?.doneID, 0)
        XCTAssertTrue(refusal(&s, .placement(hosts: [:], executor: id(3))).contains("Ceph configured"))
        XCTAssertTrue(refusal(&s, .placementDone(id: 1, node: id(2), ok: true, message: "")).contains("\(id(1))'s to carry out"))
        // A newer decision before the first is done: the old report is late.
        try volume(&s, .placement(hosts: ["h1": ["public"], "h2": ["public"]], executor: id(2)))
        XCTAssertTrue(refusal(&s, .placementDone(id: 1, node: id(1), ok: true, message: "")).contains("not the current decision"))
        try volume(&s, .placementDone(id: 2, node: id(2), ok: false, message: "monitor timed out"))
        XCTAssertEqual(s.volumes.placement?.doneID, 0)
        XCTAssertEqual(s.volumes.placement?.message, "monitor timed out")
        try volume(&s, .placement(hosts: ["h1": ["public"], "h2": ["public"]], executor: id(2)))
        XCTAssertEqual(s.volumes.placement?.message, "", "a new decision starts with no outcome")
        try volume(&s, .placementDone(id: 3, node: id(2), ok: true, message: "2 changes"))
        XCTAssertEqual(s.volumes.placement?.doneID, 3)
        XCTAssertTrue(refusal(&s, .placementDone(id: 3, node: id(2), ok: true, message: "")).contains("already"))
    }

    func testCommandsAndTheTableSurviveEncodingAndASnapshot() throws {
        var s = try world()
        try volume(&s, .create(replicated, home: id(2), executor: id(1)))
        try volume(&s, .create(local, home: id(3), executor: id(3)))
        try volume(&s, .taskDone(name: "data", task: s.volumes.volumes["data"]!.task!.id, node: id(3), ok: true, message: "ok ✓"))
        try volume(&s, .snapshot(name: "data", snapshot: "s1", executor: id(3)))
        try volume(&s, .placement(hosts: ["h1": ["public"], "h2": []], executor: id(1)))
        let commands: [VolumeCommand] = [
            .create(replicated, home: id(1), executor: id(2)), .snapshot(name: "a", snapshot: "b", executor: id(1)), .delete(name: "a", executor: id(3)),
            .taskDone(name: "a", task: 7, node: id(1), ok: false, message: "why"), .retask(name: "a", task: 9, executor: id(2)),
            .storageNode(node: id(1), StorageNodeInfo(ceph: true, cephHost: "h-1.x", problem: "p")),
            .placement(hosts: ["a": ["x", "y"], "b": []], executor: id(1)), .placementDone(id: 4, node: id(2), ok: true, message: ""),
        ]
        for c in commands { XCTAssertEqual(try VolumeCommand(decoding: c.encoded()), c) }
        let restored = try ControlState.restore(s.snapshot(), network: network)
        XCTAssertEqual(restored, s)
        XCTAssertEqual(restored.volumes.volumes["data"]?.task?.operation, .snapshot("s1"))
        // Truncated or extended bytes are errors, never a crash.
        for c in commands {
            let b = c.encoded()
            for n in 0..<b.count { XCTAssertThrowsError(try VolumeCommand(decoding: Array(b[..<n]))) }
            XCTAssertThrowsError(try VolumeCommand(decoding: b + [0]))
        }
        let table = s.volumes.encoded()
        for n in stride(from: 0, to: table.count, by: 3) { XCTAssertThrowsError(try VolumeTable(decoding: Array(table[..<n]))) }
    }

    /// A placement has one encoding: a host's classes sorted and unique. Bytes listing them out of order or
    /// twice would decode to a decision that re-encodes differently (the control fuzzer found this), so
    /// they are refused.
    func testAPlacementsClassesMustBeSortedAndUnique() throws {
        func placement(_ classes: [String]) -> [UInt8] {
            var w = ByteWriter(capacity: 64)
            w.u8(7); w.u32(1); w.string("h1"); w.u8(UInt8(classes.count))
            for c in classes { w.string(c) }
            w.raw(id(1).bytes)
            return w.bytes
        }
        XCTAssertEqual(try VolumeCommand(decoding: placement(["private", "public"])), .placement(hosts: ["h1": ["private", "public"]], executor: id(1)))
        XCTAssertThrowsError(try VolumeCommand(decoding: placement(["public", "private"])))
        XCTAssertThrowsError(try VolumeCommand(decoding: placement(["public", "public"])))
    }
}
