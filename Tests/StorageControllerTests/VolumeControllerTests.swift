import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import StorageController
import XCTest

/// The volume controller (issue 18): the leader decides placement from trust and membership, in one
/// batch, and again only when what qualifies changed; the executor carries each decision and each
/// task out once; a task of a failed executor moves to a live one.
final class VolumeControllerTests: XCTestCase {
    let genesis = SigningKey(seed: Array(repeating: 7, count: 32))
    var network: NetworkIdentity { NetworkIdentity(genesisKey: genesis.publicKey) }
    var index: UInt64 = 0
    var time: Int64 = 1_800_000_010_000
    var millis: UInt64 = 0

    func key(_ i: UInt8) -> SigningKey { SigningKey(seed: Array(repeating: i, count: 32)) }
    func id(_ i: UInt8) -> MyceliumIdentity.NodeID { MyceliumIdentity.NodeID(publicKey: key(i).publicKey) }

    @discardableResult
    func apply(_ s: inout ControlState, _ e: ControlEntry) throws -> [ControlChange] {
        index += 1; time += 10
        return try s.apply(Entry(term: 1, index: index, data: e.encoded()))
    }

    func spore(_ s: inout ControlState, _ c: SporeCommand, by i: UInt8) throws -> [ControlChange] {
        time += 1000
        return try apply(&s, .spore(SignedCommand(c, author: id(i), key: key(i), network: network.id), millis: time))
    }

    /// Three founders (trust 0.6), each running an OSD host hI and reaching Ceph.
    func world() throws -> ControlState {
        var s = ControlState(network: network)
        for i: UInt8 in 1...3 {
            let cert = MembershipCertificate.issue(by: genesis, nodeID: id(i), nodeKey: key(i).publicKey,
                                                   roles: [.member, .sclerotiumEligible, .inviter], serial: UInt64(i),
                                                   issuedAt: 1_800_000_000, validFor: 86_400)
            _ = try spore(&s, .admit(cert), by: i)
            try apply(&s, .volume(.storageNode(node: id(i), StorageNodeInfo(ceph: true, cephHost: "h\(i)")), millis: time))
        }
        return s
    }

    func context(_ s: ControlState, node: UInt8, leader: Bool) -> ControllerContext {
        millis += 1000
        return ControllerContext(node: id(node), isLeader: leader, state: s, tick: millis / 100, ticksPerSecond: 10, millis: millis)
    }

    func controller(_ node: UInt8) -> VolumeController {
        VolumeController(settings: VolumeSettings(info: StorageNodeInfo(ceph: true, cephHost: "h\(node)")))
    }

    func proposals(_ effects: [ControllerEffect<VolumeAction>]) -> [VolumeCommand] {
        effects.compactMap { if case .propose(.volume(let c, _)) = $0 { c } else { nil } }
    }

    func actions(_ effects: [ControllerEffect<VolumeAction>]) -> [VolumeAction] {
        effects.compactMap { if case .act(let a) = $0 { a } else { nil } }
    }

    func testTheLeaderDecidesPlacementFromTrustOnceAndTheExecutorCarriesItOutOnce() throws {
        var s = try world()
        var leader = controller(1)
        let all = ["private", "public", "sensitive"]
        let decided = proposals(leader.tick(context: context(s, node: 1, leader: true)))
        XCTAssertEqual(decided, [.placement(hosts: ["h1": all, "h2": all, "h3": all], executor: id(1))])
        let changes = try apply(&s, .volume(decided[0], millis: time))
        // The executor (the leader, which reaches Ceph) acts once, with trusts that make the planner
        // reproduce the decision exactly.
        var acts = actions(changes.flatMap { leader.applied($0, context: context(s, node: 1, leader: true)) })
        guard case let .place(pid, hosts)? = acts.first, acts.count == 1 else { return XCTFail("\(acts)") }
        XCTAssertEqual(pid, 1)
        XCTAssertEqual(hosts.map(\.crushName), ["h1", "h2", "h3"])
        XCTAssertTrue(hosts.allSatisfy { $0.trust == DataClass.sensitiveData.minTrust })
        // Neither a later tick nor another change re-decides or re-acts while it is carried out.
        let again = leader.tick(context: context(s, node: 1, leader: true))
        XCTAssertEqual(proposals(again), [])
        XCTAssertEqual(actions(again), [])
        // A follower neither decides nor acts.
        var follower = controller(2)
        let f = follower.tick(context: context(s, node: 2, leader: false))
        XCTAssertEqual(proposals(f), [])
        XCTAssertEqual(actions(f), [])
        // The outcome goes to the leader as a request, and applies.
        let done = leader.reported(.placementDone(id: 1, ok: true, message: "9 changes"), context: context(s, node: 1, leader: true))
        guard case .request(.volume(let report, _))? = done.first else { return XCTFail("\(done)") }
        try apply(&s, .volume(report, millis: time))
        XCTAssertEqual(s.volumes.placement?.doneID, 1)

        // Node 3 fails: its host leaves every class in one new decision.
        _ = try spore(&s, .setStatus(node: id(3), .failed), by: 1)
        let next = proposals(leader.tick(context: context(s, node: 1, leader: true)))
        XCTAssertEqual(next, [.placement(hosts: ["h1": all, "h2": all, "h3": []], executor: id(1))])
        acts = actions(try apply(&s, .volume(next[0], millis: time)).flatMap { leader.applied($0, context: context(s, node: 1, leader: true)) })
        guard case let .place(2, hosts2)? = acts.first else { return XCTFail("\(acts)") }
        XCTAssertEqual(hosts2.first { $0.crushName == "h3" }?.trust, 0, "h3 qualifies for no class")
    }

    func testAFailedPlacementIsRetriedAfterADelay() throws {
        var s = try world()
        var leader = controller(1)
        let d = proposals(leader.tick(context: context(s, node: 1, leader: true)))
        try apply(&s, .volume(d[0], millis: time))
        try apply(&s, .volume(.placementDone(id: 1, node: id(1), ok: false, message: "monitor down"), millis: time))
        XCTAssertEqual(proposals(leader.tick(context: context(s, node: 1, leader: true))), [], "not at once")
        millis += 10_000
        XCTAssertEqual(proposals(leader.tick(context: context(s, node: 1, leader: true))).count, 1, "again after retryPlacementMillis")
    }

    func testATaskIsCarriedOutOnceAndMovesWhenItsExecutorFails() throws {
        var s = try world()
        let spec = VolumeSpec(name: "db", sizeBytes: 1 << 30, dataClass: "private", driver: .ceph)
        var c3 = controller(3)
        let changes = try apply(&s, .volume(.create(spec, home: id(1), executor: id(3)), millis: time))
        let first = actions(changes.flatMap { c3.applied($0, context: context(s, node: 3, leader: false)) })
        XCTAssertEqual(first.count, 1)
        guard case .perform(let r)? = first.first else { return XCTFail("\(first)") }
        XCTAssertEqual(r.task?.operation, .create)
        XCTAssertEqual(actions(c3.tick(context: context(s, node: 3, leader: false))), [], "not twice")
        // The executor fails before it reports: the leader gives the task to a live node.
        _ = try spore(&s, .setStatus(node: id(3), .failed), by: 1)
        var leader = controller(1)
        let moved = proposals(leader.tick(context: context(s, node: 1, leader: true)))
        XCTAssertTrue(moved.contains(.retask(name: "db", task: r.task!.id, executor: id(1))), "\(moved)")
        let after = try apply(&s, .volume(.retask(name: "db", task: r.task!.id, executor: id(1)), millis: time))
        let acts = actions(after.flatMap { leader.applied($0, context: context(s, node: 1, leader: true)) })
        XCTAssertEqual(acts.count, 1, "the new executor carries it out")
    }
}
