import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import NetworkController
import XCTest

/// Each node's published pods in the control state (`ServiceCommand.endpoints`): only a member's own,
/// only inside its own pod CIDR, at most `PodEndpoints.maxPerNode`; one canonical encoding; kept in
/// snapshots and dropped with the member.
final class ControlStatePodEndpointTests: XCTestCase {
    let r = RouteControllerTests(name: "world", testClosure: { _ in })
    var t: ServiceTableTests { r.t }

    func ip(_ s: String) -> UInt32 { parseIPv4(s)! }

    func testEndpointsRoundTripAndSurviveASnapshot() throws {
        var s = try r.world()
        let eps: [UInt32: UInt32] = [ip("10.244.2.9"): 7, ip("10.244.2.10"): 0xBEEF, ip("10.244.2.255"): 0]
        let command = ServiceCommand.endpoints(node: t.id(2), eps)
        XCTAssertEqual(try ServiceCommand(decoding: command.encoded()), command)
        XCTAssertEqual(try ControlEntry.decode(ControlEntry.service(command, millis: 5).encoded()), .service(command, millis: 5))
        let changes = try t.service(&s, command)
        XCTAssertEqual(changes.count, 1)
        guard case .podEndpoints(let n)? = changes.first else { return XCTFail("\(changes)") }
        XCTAssertEqual(n, t.id(2))
        XCTAssertEqual(s.services.podEndpoints[t.id(2)], eps)
        XCTAssertTrue(try t.service(&s, command).isEmpty, "the same set again changes nothing")
        try t.service(&s, .endpoints(node: t.id(3), [ip("10.244.3.4"): 7]))

        let restored = try ControlState.restore(s.snapshot(), network: t.network)
        XCTAssertEqual(restored, s)
        XCTAssertEqual(restored.services.podEndpoints[t.id(2)], eps)
        XCTAssertEqual(restored.snapshot(), s.snapshot(), "one encoding")

        // A node that publishes none is forgotten; a table without any encodes as before the field existed.
        try t.service(&s, .endpoints(node: t.id(2), [:]))
        try t.service(&s, .endpoints(node: t.id(3), [:]))
        XCTAssertTrue(s.services.podEndpoints.isEmpty)
        XCTAssertEqual(try ControlState.restore(s.snapshot(), network: t.network), s)
        XCTAssertEqual(try ServiceTable(decoding: s.services.encoded()), s.services)
    }

    func testDecodingRefusesUnorderedRepeatedAndOversizedSets() throws {
        let node = t.id(2)
        func bytes(_ pairs: [(UInt32, UInt32)], count: UInt32? = nil) -> [UInt8] {
            var w = ByteWriter(capacity: 64)
            w.u8(9); w.raw(node.bytes); w.u32(count ?? UInt32(pairs.count))
            for (a, b) in pairs { w.u32(a); w.u32(b) }
            return w.bytes
        }
        XCTAssertNoThrow(try ServiceCommand(decoding: bytes([(1, 1), (2, 1)])))
        XCTAssertThrowsError(try ServiceCommand(decoding: bytes([(2, 1), (1, 1)])), "out of order")
        XCTAssertThrowsError(try ServiceCommand(decoding: bytes([(1, 1), (1, 2)])), "repeated")
        XCTAssertThrowsError(try ServiceCommand(decoding: bytes([(1, 1)], count: 2)), "truncated")
        XCTAssertThrowsError(try ServiceCommand(decoding: bytes([], count: UInt32(PodEndpoints.maxPerNode + 1))), "over the bound")
        XCTAssertThrowsError(try ServiceCommand(decoding: bytes([], count: UInt32.max)), "a huge count is refused before reading")
        let many = (0..<UInt32(PodEndpoints.maxPerNode)).map { ($0, UInt32(1)) }
        XCTAssertNoThrow(try ServiceCommand(decoding: bytes(many)))
        // A snapshot section listing a node with no endpoints, or twice, is refused.
        var w = ByteWriter(capacity: 64)
        w.u32(0); w.u32(0); w.u32(0)  // no services, nodes, leases
        w.u8(2); w.u32(1); w.raw(node.bytes); w.u32(0)
        XCTAssertThrowsError(try ServiceTable(decoding: w.bytes))
        w = ByteWriter(capacity: 64)
        w.u32(0); w.u32(0); w.u32(0)
        w.u8(2); w.u32(2)
        for _ in 0..<2 { w.raw(node.bytes); w.u32(1); w.u32(5); w.u32(1) }
        XCTAssertThrowsError(try ServiceTable(decoding: w.bytes))
        w = ByteWriter(capacity: 64)
        w.u32(0); w.u32(0); w.u32(0)
        w.u8(3)
        XCTAssertThrowsError(try ServiceTable(decoding: w.bytes), "an unknown section")
    }

    func testTheTableTakesOnlyAMembersOwnPodsInsideItsBlock() throws {
        var s = try r.world()
        func refusal(_ c: ServiceCommand) -> String { t.refusal(&s, c) }
        XCTAssertTrue(refusal(.endpoints(node: t.id(2), [ip("10.244.2.9"): 7, ip("10.244.3.9"): 7])).contains("outside"),
                      "an address in another node's block")
        XCTAssertTrue(refusal(.endpoints(node: t.id(2), [ip("192.168.1.2"): 7])).contains("outside"), "a host address")
        XCTAssertTrue(refusal(.endpoints(node: t.id(9), [:])).contains("not a member"))
        var many: [UInt32: UInt32] = [:]
        for i in 0...UInt32(PodEndpoints.maxPerNode) { many[ip("10.244.0.0") + i] = 1 }
        let over = refusal(.endpoints(node: t.id(2), many))
        XCTAssertTrue(over.contains("pod endpoints") && over.contains("4096"), "over the bound: \(over)")
        XCTAssertTrue(refusal(.endpoints(node: t.id(2), [:])).contains("accepted"), "an empty set from a member is fine")
        XCTAssertTrue(s.services.podEndpoints.isEmpty, "nothing of a refused publication stays")

        // A member without a block has no pods to publish.
        var u = try t.world()
        XCTAssertTrue(t.refusal(&u, .endpoints(node: t.id(1), [ip("10.244.1.2"): 7])).contains("no pod CIDR"))

    }
}

extension RouteControllerTests {
    func testPublishedPodsAreRemotesWithTheIdentityTheirNodePublished() throws {
        var s = try world()
        let other: UInt32 = 0x00C0_FFEE
        func ip(_ s: String) -> UInt32 { parseIPv4(s)! }
        try t.service(&s, .endpoints(node: t.id(1), [ip("10.244.1.3"): netID]))
        try t.service(&s, .endpoints(node: t.id(2), [ip("10.244.2.9"): netID, ip("10.244.2.10"): other]))
        try t.service(&s, .endpoints(node: t.id(3), [ip("10.244.3.4"): netID]))
        // A service instance on node 2 whose pod node 2 also published with another identity: the
        // node's datapath has the last word.
        try t.service(&s, .deploy(ServiceSpec(name: "web", driver: .podman, image: "/srv/rootfs", replicas: 1)))
        let gen = s.services.services["web"]!.generation
        try t.service(&s, .assign(name: "web", generation: gen, [0: t.id(2)], pending: ""))
        try t.service(&s, .report(node: t.id(2), [("web", 0, InstanceReport(node: t.id(2), generation: gen, state: .running, health: .healthy, address: "10.244.2.10"))]))
        let (table, _) = RouteController.desired(state: s, me: t.id(1), underlay: underlay, settings: .init(mode: .auto, networkId: netID))
        XCTAssertEqual(table.remotes, [ip("10.244.2.9"): netID, ip("10.244.2.10"): other, ip("10.244.3.4"): netID],
                       "the other nodes' pods with their own identities; not this node's own")

        // Node 2 gets another block: what it published in the old one is not used.
        t.index += 1
        _ = try s.apply(Entry(term: 1, index: t.index, data: ControlEntry.network(.release(node: t.id(2))).encoded()))
        t.index += 1
        _ = try s.apply(Entry(term: 1, index: t.index, data: ControlEntry.network(.assign(node: t.id(2), CIDR("10.244.7.0/24")!)).encoded()))
        let (moved, _) = RouteController.desired(state: s, me: t.id(1), underlay: underlay, settings: .init(mode: .auto, networkId: netID))
        XCTAssertEqual(moved.remotes, [ip("10.244.3.4"): netID])

        // Node 3 fails: its route and its pods' identities go.
        try t.spore(&s, .setStatus(node: t.id(3), .failed), by: 1)
        let (failed, _) = RouteController.desired(state: s, me: t.id(1), underlay: underlay, settings: .init(mode: .auto, networkId: netID))
        XCTAssertNil(failed.routes[CIDR("10.244.3.0/24")!])
        XCTAssertEqual(failed.remotes, [:])
    }

    func testPublishableKeepsTheBlockAndTheBound() {
        let block = CIDR("10.244.2.0/24")!
        let observed: [UInt32: UInt32] = [parseIPv4("10.244.2.5")!: 1, parseIPv4("10.244.2.6")!: 2, parseIPv4("10.244.9.1")!: 1]
        let (inside, left) = RouteController.publishable(observed, cidr: block)
        XCTAssertEqual(inside, [parseIPv4("10.244.2.5")!: 1, parseIPv4("10.244.2.6")!: 2])
        XCTAssertEqual(left, 1)
        XCTAssertEqual(RouteController.publishable(observed, cidr: nil).0, [:])
        var many: [UInt32: UInt32] = [:]
        let wide = CIDR("10.240.0.0/12")!
        for i in 0..<UInt32(PodEndpoints.maxPerNode + 10) { many[wide.address + i] = 1 }
        let (kept, over) = RouteController.publishable(many, cidr: wide)
        XCTAssertEqual(kept.count, PodEndpoints.maxPerNode)
        XCTAssertEqual(over, 10)
        XCTAssertEqual(kept.keys.max(), wide.address + UInt32(PodEndpoints.maxPerNode) - 1, "the lowest addresses are kept")
    }

    func testTheControllerReadsTheDatapathEverySecondAndPublishesOnlyChanges() throws {
        var s = try world()
        var c = RouteController(settings: .init(mode: .auto, networkId: netID))
        var millis: UInt64 = 0
        func ctx() -> ControllerContext { ControllerContext(node: t.id(1), isLeader: false, state: s, tick: millis / 100, ticksPerSecond: 10, millis: millis) }
        func observes(_ e: [ControllerEffect<DatapathAction>]) -> Int { e.filter { if case .act(.observeEndpoints) = $0 { return true }; return false }.count }
        func published(_ e: [ControllerEffect<DatapathAction>]) -> [[UInt32: UInt32]] {
            e.compactMap { if case .request(.service(.endpoints(let n, let eps), _)) = $0, n == t.id(1) { return eps }; return nil }
        }
        XCTAssertEqual(observes(c.tick(context: ctx())), 0, "nothing to read before the datapath is ready")
        _ = c.reported(.ready(underlay), context: ctx())
        var reads = 0
        for _ in 0..<25 { millis += 100; reads += observes(c.tick(context: ctx())) }
        XCTAssertEqual(reads, 3, "one read a second")

        // The datapath holds two pods of this node (one of another network) and one address outside
        // its block: the two are published, once, until the state records them.
        let mine: [UInt32: UInt32] = [parseIPv4("10.244.1.5")!: netID, parseIPv4("10.244.1.6")!: 77]
        var seen = mine; seen[parseIPv4("10.99.0.1")!] = netID
        let first = c.reported(.endpoints(seen), context: ctx())
        XCTAssertEqual(published(first), [mine])
        XCTAssertTrue(first.contains { if case .note(let n) = $0 { return n.contains("1 of this node's 3 pods") }; return false }, "\(first)")
        millis += 100
        XCTAssertEqual(published(c.tick(context: ctx())), [], "not again while the first may still apply")
        millis += 2000
        XCTAssertEqual(published(c.tick(context: ctx())), [mine], "again once it did not apply in time")
        try t.service(&s, .endpoints(node: t.id(1), mine))
        millis += 5000
        XCTAssertEqual(published(c.tick(context: ctx())), [], "recorded: nothing to publish")
        XCTAssertEqual(published(c.reported(.endpoints(seen), context: ctx())), [], "the same read: nothing")
        // A pod goes: the smaller set is published.
        XCTAssertEqual(published(c.reported(.endpoints([parseIPv4("10.244.1.6")!: 77]), context: ctx())), [[parseIPv4("10.244.1.6")!: 77]])
    }
}
