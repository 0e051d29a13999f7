import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import NetworkController
import XCTest

/// The route controller (issue 17): each node's datapath table is a function of the control state:
/// routes to present members' pod CIDRs (native on the same subnet, VXLAN beyond), remote identities
/// of instances running in those CIDRs, and nothing for departed members.
final class RouteControllerTests: XCTestCase {
    let t = ServiceTableTests(name: "world", testClosure: { _ in })
    let netID: UInt32 = 0xBEEF

    func world() throws -> ControlState {
        var s = try t.world()
        t.index += 1
        _ = try s.apply(Entry(term: 1, index: t.index, data: ControlEntry.network(.configure(pool: CIDR("10.244.0.0/16")!, nodePrefix: 24)).encoded()))
        for i: UInt8 in 1...3 {
            t.index += 1
            _ = try s.apply(Entry(term: 1, index: t.index, data: ControlEntry.network(.assign(node: t.id(i), CIDR("10.244.\(i).0/24")!)).encoded()))
        }
        // Nodes 1 and 2 share a subnet; node 3 is behind a router.
        try t.service(&s, .nodeInfo(node: t.id(1), ServiceNodeInfo(address: "192.168.1.1")))
        try t.service(&s, .nodeInfo(node: t.id(2), ServiceNodeInfo(address: "192.168.1.2")))
        try t.service(&s, .nodeInfo(node: t.id(3), ServiceNodeInfo(address: "172.16.9.3")))
        return s
    }

    let underlay = UnderlayFacts(address: parseIPv4("192.168.1.1")!, prefix: 24, vxlan: true)

    func testRoutesFollowSubnetsAndMode() throws {
        let s = try world()
        let (auto, problems) = RouteController.desired(state: s, me: t.id(1), underlay: underlay, settings: .init(mode: .auto, networkId: netID))
        XCTAssertEqual(problems, [:])
        XCTAssertEqual(auto.routes.count, 2, "no route to its own block")
        XCTAssertEqual(auto.routes[CIDR("10.244.2.0/24")!], PodRoute(cidr: CIDR("10.244.2.0/24")!, via: parseIPv4("192.168.1.2")!, vxlan: false))
        XCTAssertEqual(auto.routes[CIDR("10.244.3.0/24")!], PodRoute(cidr: CIDR("10.244.3.0/24")!, via: parseIPv4("172.16.9.3")!, vxlan: true))
        let (vx, _) = RouteController.desired(state: s, me: t.id(1), underlay: underlay, settings: .init(mode: .vxlan, networkId: netID))
        XCTAssertTrue(vx.routes.values.allSatisfy(\.vxlan))
        let (native, _) = RouteController.desired(state: s, me: t.id(1), underlay: underlay, settings: .init(mode: .native, networkId: netID))
        XCTAssertTrue(native.routes.values.allSatisfy { !$0.vxlan })
        // Without a VXLAN device, the peer behind a router is unreachable, and the reason says so.
        var noVX = underlay; noVX.vxlan = false
        let (partial, why) = RouteController.desired(state: s, me: t.id(1), underlay: noVX, settings: .init(mode: .auto, networkId: netID))
        XCTAssertEqual(Set(partial.routes.keys), [CIDR("10.244.2.0/24")!])
        XCTAssertTrue(why[t.id(3)]?.contains("no VXLAN device") ?? false, "\(why)")
    }

    func testRemoteIdentitiesAreInstancesInsideTheirNodesBlock() throws {
        var s = try world()
        try t.service(&s, .deploy(ServiceSpec(name: "web", driver: .podman, image: "/srv/rootfs", replicas: 3)))
        let gen = s.services.services["web"]!.generation
        try t.service(&s, .assign(name: "web", generation: gen, [0: t.id(1), 1: t.id(2), 2: t.id(3)], pending: ""))
        try t.service(&s, .report(node: t.id(1), [("web", 0, InstanceReport(node: t.id(1), generation: gen, state: .running, health: .healthy, address: "10.244.1.5"))]))
        try t.service(&s, .report(node: t.id(2), [("web", 1, InstanceReport(node: t.id(2), generation: gen, state: .running, health: .healthy, address: "10.244.2.7"))]))
        // An address outside the reporting node's block (a process instance on the host) is no pod.
        try t.service(&s, .report(node: t.id(3), [("web", 2, InstanceReport(node: t.id(3), generation: gen, state: .running, health: .healthy, address: "172.16.9.3"))]))
        let (table, _) = RouteController.desired(state: s, me: t.id(1), underlay: underlay, settings: .init(mode: .auto, networkId: netID))
        XCTAssertEqual(table.remotes, [parseIPv4("10.244.2.7")!: netID], "own instance and non-pod address left out")

        // Node 2 leaves: its route and its pods' identities go.
        try t.spore(&s, .setStatus(node: t.id(2), .left), by: 2)
        let (after, _) = RouteController.desired(state: s, me: t.id(1), underlay: underlay, settings: .init(mode: .auto, networkId: netID))
        XCTAssertNil(after.routes[CIDR("10.244.2.0/24")!])
        XCTAssertEqual(after.remotes, [:])
        XCTAssertNotNil(after.routes[CIDR("10.244.3.0/24")!])
    }

    func testTheControllerSyncsOnlyWhenTheTableChangesAndResyncsARestartedDatapath() throws {
        var s = try world()
        var c = RouteController(settings: .init(mode: .auto, networkId: netID))
        func ctx(_ tick: UInt64) -> ControllerContext { ControllerContext(node: t.id(1), isLeader: false, state: s, tick: tick, ticksPerSecond: 10) }
        func syncs(_ effects: [ControllerEffect<DatapathAction>]) -> [DatapathTable] {
            effects.compactMap { if case .act(.sync(let table)) = $0 { return table } else { return nil } }
        }
        XCTAssertEqual(syncs(c.tick(context: ctx(1))), [], "nothing before the driver reports the underlay")
        _ = c.reported(.ready(underlay), context: ctx(2))
        let first = syncs(c.tick(context: ctx(3)))
        XCTAssertEqual(first.count, 1)
        XCTAssertEqual(first.first?.routes.count, 2)
        XCTAssertEqual(syncs(c.tick(context: ctx(4))), [], "nothing changed: no sync")
        // A change that does not alter the table (a label) costs a recomputation, not a sync.
        for ch in try t.service(&s, .nodeInfo(node: t.id(2), ServiceNodeInfo(labels: ["zone": "b"], address: "192.168.1.2"))) {
            _ = c.applied(ch, context: ctx(5))
        }
        XCTAssertEqual(syncs(c.tick(context: ctx(6))), [])
        // Node 2 moves to another subnet: its route becomes VXLAN.
        for ch in try t.service(&s, .nodeInfo(node: t.id(2), ServiceNodeInfo(labels: ["zone": "b"], address: "172.16.8.2"))) {
            _ = c.applied(ch, context: ctx(7))
        }
        let moved = syncs(c.tick(context: ctx(8)))
        XCTAssertEqual(moved.first?.routes[CIDR("10.244.2.0/24")!]?.vxlan, true)
        // The driver restarted the datapath: the same table is sent again in full.
        _ = c.reported(.ready(underlay), context: ctx(9))
        XCTAssertEqual(syncs(c.tick(context: ctx(10))).count, 1)
    }

    func testTheDiffRemovesWhatNoLongerBelongsAndReplacesChangedRoutes() {
        let a = CIDR("10.244.2.0/24")!, b = CIDR("10.244.3.0/24")!, c = CIDR("10.244.4.0/24")!
        let old = DatapathTable(routes: [a: PodRoute(cidr: a, via: 1, vxlan: false), b: PodRoute(cidr: b, via: 2, vxlan: false)],
                                remotes: [10: 1, 11: 1])
        let new = DatapathTable(routes: [b: PodRoute(cidr: b, via: 2, vxlan: true), c: PodRoute(cidr: c, via: 3, vxlan: false)],
                                remotes: [11: 1, 12: 1])
        let d = new.changes(from: old)
        XCTAssertEqual(d.removeRoutes, [a])
        XCTAssertEqual(d.addRoutes.map(\.cidr), [b, c])
        XCTAssertEqual(d.removeRemotes, [10])
        XCTAssertEqual(d.addRemotes.map(\.ip), [12])
        XCTAssertTrue(new.changes(from: new).isEmpty)
    }

    func testAddressParsing() {
        XCTAssertEqual(parseIPv4("10.244.1.5"), 0x0AF4_0105)
        for bad in ["", "10.244.1", "10.244.1.256", "a.b.c.d", "1.2.3.4.5", "1..2.3", "0001.2.3.4"] { XCTAssertNil(parseIPv4(bad), bad) }
        XCTAssertEqual(formatIPv4(0x0AF4_0105), "10.244.1.5")
        XCTAssertTrue(UnderlayFacts(address: parseIPv4("10.0.0.1")!, prefix: 24, vxlan: false).sameSubnet(parseIPv4("10.0.0.200")!))
        XCTAssertFalse(UnderlayFacts(address: parseIPv4("10.0.0.1")!, prefix: 24, vxlan: false).sameSubnet(parseIPv4("10.0.1.1")!))
    }
}
