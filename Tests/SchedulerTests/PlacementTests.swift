// Where new instances go: hard rules, scoring, spread, tie-breaks, the rearranging search.

import MyceliumIdentity
@testable import Scheduler
import XCTest

final class PlacementTests: XCTestCase {
    func testCapacityIncludingReservedIsNeverExceeded() {
        let p = Scheduler.plan(nodes: [node(1, cpu: 2000, reserved: Resources(cpuMillis: 500, memoryMiB: 0))],
                               services: [service("web", 10, cpu: 500, mem: 1)], current: [], seed: 1)
        XCTAssertEqual(p.assignments.count, 3)
        XCTAssertEqual(p.unplaced, [Unplaced(service: "web", missing: 7, reason: p.unplaced.first?.reason ?? "")])
    }

    func testEachConstraintKindSelectsTheMatchingNodeOnly() {
        let cases: [(Constraint, good: SchedulerNode, bad: SchedulerNode)] = [
            (.labelEquals("zone", "a"), node(1, labels: ["zone": "a"]), node(2, labels: ["zone": "b"])),
            (.labelNotEquals("zone", "a"), node(1), node(2, labels: ["zone": "a"])),
            (.labelIn("zone", ["a", "b"]), node(1, labels: ["zone": "b"]), node(2, labels: ["zone": "c"])),
            (.hasLabel("rack"), node(1, labels: ["rack": "r1"]), node(2, labels: ["zone": "a"])),
            (.capability("podman"), node(1, caps: ["podman"]), node(2, caps: ["k3s"])),
        ]
        for (c, good, bad) in cases {
            let p = Scheduler.plan(nodes: [bad, good], services: [service("web", 2, constraints: [c], maxPerNode: 1)], current: [], seed: 3)
            XCTAssertEqual(p.nodes(of: "web"), [1], "\(c)")
            XCTAssertEqual(p.unplaced.first?.missing, 1, "\(c)")
        }
    }

    func testTrustFloor() {
        let nodes = [node(1, trust: 0.5), node(2, trust: 0.9), node(3, trust: 0.8)]
        let p = Scheduler.plan(nodes: nodes, services: [service("web", 3, minTrust: 0.8, maxPerNode: 1)], current: [], seed: 1)
        XCTAssertEqual(Set(p.nodes(of: "web")), [2, 3])
        XCTAssertEqual(p.unplaced.first?.missing, 1)
    }

    func testMaxPerNode() {
        let p = Scheduler.plan(nodes: [node(1)], services: [service("web", 3, maxPerNode: 2)], current: [], seed: 1)
        XCTAssertEqual(p.nodes(of: "web"), [1, 1])
        XCTAssertTrue(p.unplaced.first?.reason.contains("maxPerNode=2") == true)
    }

    func testAntiAffinityHoldsWhicheverSideNamesIt() {
        let nodes = [node(1), node(2)]
        // Binpack alone puts both services on one node.
        let together = Scheduler.plan(nodes: nodes, services: [service("a", cpu: 1000), service("b")], current: [], seed: 1)
        XCTAssertEqual(together.nodes(of: "a"), together.nodes(of: "b"))
        for services in [[service("a", cpu: 1000, antiAffinity: ["b"]), service("b")],
                         [service("a", cpu: 1000), service("b", antiAffinity: ["a"])]] {
            let p = Scheduler.plan(nodes: nodes, services: services, current: [], seed: 1)
            XCTAssertEqual(p.assignments.count, 2)
            XCTAssertNotEqual(p.nodes(of: "a"), p.nodes(of: "b"))
        }
    }

    func testNamingItselfInAntiAffinityMeansOnePerNode() {
        let p = Scheduler.plan(nodes: [node(1), node(2)], services: [service("web", 3, antiAffinity: ["web"])], current: [], seed: 1)
        XCTAssertEqual(Set(p.nodes(of: "web")), [1, 2])
        XCTAssertEqual(p.unplaced.first?.missing, 1)
    }

    func testBinpackFillsTheFullestNodeAndSpreadTheEmptiest() {
        let nodes = [node(1), node(2)]
        let current = [at("other", 0, 1)]
        let binpack = Scheduler.plan(nodes: nodes, services: [service("other"), service("web")], current: current, seed: 1)
        XCTAssertEqual(binpack.nodes(of: "web"), [1])
        let spread = Scheduler.plan(nodes: nodes, services: [service("other"), service("web", strategy: .spread)], current: current, seed: 1)
        XCTAssertEqual(spread.nodes(of: "web"), [2])
    }

    func testPreferencesDominateTheStrategyAndNegativeWeightsAvoid() {
        let nodes = [node(1, labels: ["zone": "a"]), node(2, labels: ["zone": "b"])]
        let current = [at("other", 0, 1)]
        func place(_ prefs: [Preference]) -> [Int] {
            Scheduler.plan(nodes: nodes, services: [service("other"), service("web", preferences: prefs)], current: current, seed: 1).nodes(of: "web")
        }
        XCTAssertEqual(place([]), [1])
        XCTAssertEqual(place([Preference(.labelEquals("zone", "b"), weight: 1)]), [2])
        XCTAssertEqual(place([Preference(.labelEquals("zone", "a"), weight: -1)]), [2])
        // Weights add up per node: zone b scores 3 + 2, zone a 2 + 2; then 3 against 4.
        XCTAssertEqual(place([Preference(.labelEquals("zone", "b"), weight: 3), Preference(.labelEquals("zone", "a"), weight: 2),
                              Preference(.hasLabel("zone"), weight: 2)]), [2])
        XCTAssertEqual(place([Preference(.labelEquals("zone", "b"), weight: 3), Preference(.labelEquals("zone", "a"), weight: 4)]), [1])
        // An avoided node is still used when nothing else fits.
        let only = Scheduler.plan(nodes: [nodes[0]], services: [service("web", preferences: [Preference(.labelEquals("zone", "a"), weight: -5)])],
                                  current: [], seed: 1)
        XCTAssertEqual(only.nodes(of: "web"), [1])
    }

    func testZoneSpreadBalancesZonesThenRacksThenNodes() {
        let nodes = [node(1, labels: ["zone": "z0", "rack": "r0"]), node(2, labels: ["zone": "z0", "rack": "r0"]),
                     node(3, labels: ["zone": "z0", "rack": "r1"]), node(4, labels: ["zone": "z1", "rack": "r0"])]
        func counts(_ spread: String?) -> [Int: Int] {
            let p = Scheduler.plan(nodes: nodes, services: [service("db", 4, spread: spread)], current: [], seed: 5)
            return p.nodes(of: "db").reduce(into: [:]) { $0[$1, default: 0] += 1 }
        }
        let zone = counts("zone")
        XCTAssertEqual(zone[4], 2, "zone z1 (one node) must hold half: \(zone)")
        XCTAssertEqual(zone[3], 1, "rack r1 of z0 gets one: \(zone)")
        XCTAssertEqual((zone[1] ?? 0) + (zone[2] ?? 0), 1, "rack r0 of z0 gets one: \(zone)")
        XCTAssertEqual(counts(nil), [1: 1, 2: 1, 3: 1, 4: 1])
    }

    func testRegionSpreadCrossesRegionsBeforeZones() {
        let nodes = [node(1, labels: ["region": "eu", "zone": "a"]), node(2, labels: ["region": "eu", "zone": "b"]),
                     node(3, labels: ["region": "eu", "zone": "c"]), node(4, labels: ["region": "us", "zone": "a"])]
        // Binpack is drawn to the eu nodes, which already run something.
        let current = [at("filler", 0, 1), at("filler", 1, 2), at("filler", 2, 3)]
        func place(_ level: String) -> [Int] {
            Scheduler.plan(nodes: nodes, services: [service("filler", 3, cpu: 2000, maxPerNode: 1), service("db", 2, spread: level)],
                           current: current, seed: 1).nodes(of: "db")
        }
        XCTAssertTrue(place("region").contains(4))
        XCTAssertFalse(place("zone").contains(4), "zones a of eu and us are distinct domains; binpack stays in eu")
    }

    func testTiesAreBrokenBySeedNotByInputOrder() {
        let nodes = (1...8).map { node($0) }
        let svc = [service("web", strategy: .spread)]
        var chosen = Set<Int>()
        for seed in UInt64(1)...20 {
            let p = Scheduler.plan(nodes: nodes, services: svc, current: [], seed: seed)
            XCTAssertEqual(p, Scheduler.plan(nodes: nodes.reversed(), services: svc, current: [], seed: seed))
            chosen.formUnion(p.nodes(of: "web"))
        }
        XCTAssertGreaterThan(chosen.count, 3, "ties must not always land on the same node")
    }

    func testSearchMovesAnEarlierNewInstanceToMakeRoom() {
        // big goes first (priority) and binpack sends it to node 1 (fuller after placement), the only
        // node gpu can use.
        let nodes = [node(1, cpu: 3500, caps: ["gpu"]), node(2, cpu: 4000)]
        let services = [service("big", cpu: 3000, priority: 1), service("gpu", cpu: 1000, constraints: [.capability("gpu")])]
        let p = Scheduler.plan(nodes: nodes, services: services, current: [], seed: 1)
        XCTAssertEqual(p.nodes(of: "big"), [2])
        XCTAssertEqual(p.nodes(of: "gpu"), [1])
        XCTAssertTrue(p.unplaced.isEmpty)
        // Greedy alone leaves gpu short, and the reason says the search gave up.
        var noSearch = PlanOptions()
        noSearch.searchBudget = 0
        let greedy = Scheduler.plan(nodes: nodes, services: services, current: [], seed: 1, options: noSearch)
        XCTAssertEqual(greedy.nodes(of: "big"), [1])
        XCTAssertEqual(greedy.unplaced.first?.service, "gpu")
        XCTAssertTrue(greedy.unplaced.first?.reason.contains("stopped at its budget") == true)
        // A kept instance is never moved for it.
        let kept = Scheduler.plan(nodes: nodes, services: services, current: [at("big", 0, 1)], seed: 1)
        XCTAssertEqual(kept.nodes(of: "big"), [1])
        XCTAssertEqual(kept.unplaced.first?.service, "gpu")
    }

    func testCandidateLimitNeverMissesTheOnlyFeasibleNode() {
        let nodes = (1...50).map { node($0, cpu: $0 == 37 ? 4000 : 100) }
        var options = PlanOptions()
        options.candidateLimit = 2
        let p = Scheduler.plan(nodes: nodes, services: [service("web", cpu: 1000)], current: [], seed: 1, options: options)
        XCTAssertEqual(p.nodes(of: "web"), [37])
    }

    func testPlacementOrderIsPriorityThenScarcityThenSizeThenName() {
        // 4 nodes, 1 with a GPU, 3 with podman: eligible counts 1, 3 and 4 fall in classes 1, 2 and 3.
        let nodes = [node(1, caps: ["gpu", "podman"]), node(2, caps: ["podman"]), node(3, caps: ["podman"]), node(4)]
        let order = Scheduler.placementOrder(nodes: nodes, services: [
            service("small", cpu: 100), service("b-free"), service("a-free"), service("b-gpu", cpu: 1, constraints: [.capability("gpu")]),
            service("large", cpu: 2000), service("vip", cpu: 1, mem: 1, priority: 1), service("podman", cpu: 1, constraints: [.capability("podman")]),
        ])
        XCTAssertEqual(order, ["vip", "b-gpu", "podman", "large", "a-free", "b-free", "small"])
    }

    func testScarceNodesAreLeftForTheServicesThatNeedThem() {
        // big alone would take the small GPU node (binpack: fuller); placing gpu first avoids that
        // without any search.
        let nodes = [node(1, cpu: 3500, caps: ["gpu"]), node(2, cpu: 4000)]
        var noSearch = PlanOptions()
        noSearch.searchBudget = 0
        let p = Scheduler.plan(nodes: nodes, services: [service("big", cpu: 3000), service("gpu", cpu: 1000, constraints: [.capability("gpu")])],
                               current: [], seed: 1, options: noSearch)
        XCTAssertEqual(p.nodes(of: "gpu"), [1])
        XCTAssertEqual(p.nodes(of: "big"), [2])
    }

    func testReplicasAboveTheLimitAreReportedNotAllocated() {
        let p = Scheduler.plan(nodes: [node(1, cpu: .max, mem: .max)], services: [service("web", Int.max, cpu: 0, mem: 0)], current: [], seed: 1)
        XCTAssertEqual(p.assignments.count, Scheduler.maxReplicas)
        XCTAssertEqual(p.unplaced.first?.missing, Int.max - Scheduler.maxReplicas)
        XCTAssertTrue(p.unplaced.first?.reason.contains("exceed the scheduler's limit") == true)
    }

    func testDuplicateServiceNameIsReportedNotScheduled() {
        let p = Scheduler.plan(nodes: [node(1)], services: [service("web", 1), service("web", 3)], current: [], seed: 1)
        XCTAssertEqual(p.assignments.count, 1)
        XCTAssertEqual(p.unplaced.map(\.missing), [3])
        XCTAssertTrue(p.unplaced[0].reason.contains("unique name"))
    }
}
