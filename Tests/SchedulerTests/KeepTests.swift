// Which current instances stay and which stop: stability, node conditions, scaling, shrinking nodes.

import MyceliumIdentity
@testable import Scheduler
import XCTest

final class KeepTests: XCTestCase {
    func testSlotsAreZeroToReplicasEachPlacedOnce() {
        let p = Scheduler.plan(nodes: (1...3).map { node($0) }, services: [service("web", 3)], current: [], seed: 1)
        XCTAssertEqual(p.assignments.map(\.slot), [0, 1, 2])
        XCTAssertEqual(p.started, p.assignments)
        XCTAssertTrue(p.stopped.isEmpty && p.unplaced.isEmpty)
    }

    func testValidInstanceStaysAlthoughAnotherNodeWouldNowScoreBetter() {
        // Spread prefers the big empty node 2; a fresh plan puts the instance there...
        let nodes = [node(1, cpu: 1000, mem: 1024), node(2, cpu: 16000, mem: 32768)]
        let svc = [service("web", strategy: .spread)]
        XCTAssertEqual(Scheduler.plan(nodes: nodes, services: svc, current: [], seed: 1).nodes(of: "web"), [2])
        // ...but an instance already on node 1 is valid there and does not move.
        let p = Scheduler.plan(nodes: nodes, services: svc, current: [at("web", 0, 1)], seed: 1)
        XCTAssertEqual(p.nodes(of: "web"), [1])
        XCTAssertTrue(p.started.isEmpty && p.stopped.isEmpty)
    }

    func testSuspectNodeKeepsItsInstancesButGetsNoNewOnes() {
        // Binpack would put web next to other (the fuller node)...
        let svc = [service("other"), service("web")]
        let ready = Scheduler.plan(nodes: [node(1), node(2)], services: svc, current: [at("other", 0, 1)], seed: 1)
        XCTAssertEqual(ready.nodes(of: "web"), [1])
        // ...unless that node is suspect: it keeps other, web goes elsewhere.
        let p = Scheduler.plan(nodes: [node(1, condition: .suspect), node(2)], services: svc, current: [at("other", 0, 1)], seed: 1)
        XCTAssertEqual(p.nodes(of: "other"), [1])
        XCTAssertEqual(p.started, [at("web", 0, 2)])
    }

    func testDrainingNodeLosesItsInstancesToOtherNodes() {
        let current = [at("web", 0, 1), at("web", 1, 2)]
        let p = Scheduler.plan(nodes: [node(1, condition: .draining), node(2), node(3)], services: [service("web", 2, maxPerNode: 1)],
                               current: current, seed: 1)
        XCTAssertEqual(p.nodes(of: "web"), [3, 2])
        XCTAssertEqual(p.stopped.map(\.assignment), [at("web", 0, 1)])
        XCTAssertTrue(p.stopped[0].reason.contains("draining"), p.stopped[0].reason)
        XCTAssertEqual(p.started, [at("web", 0, 3)])
    }

    func testNodeDownMovesItsInstancesAndLeavesTheOthersAlone() {
        let nodes = (1...4).map { node($0, labels: ["zone": $0 <= 2 ? "a" : "b"]) }
        let first = Scheduler.plan(nodes: nodes, services: [service("db", 3, spread: "zone", maxPerNode: 1), service("web", 2)],
                                   current: [], seed: 9)
        XCTAssertTrue(first.unplaced.isEmpty)
        let victim = first.assignments.first { $0.service == "db" }!.node
        var after = nodes
        after[after.firstIndex { $0.id == victim }!].condition = .down
        let p = Scheduler.plan(nodes: after, services: [service("db", 3, spread: "zone", maxPerNode: 1), service("web", 2)],
                               current: first.assignments, seed: 9)
        let moved = first.assignments.filter { $0.node == victim }
        XCTAssertFalse(moved.isEmpty)
        XCTAssertEqual(Set(p.stopped.map(\.assignment)), Set(moved))
        XCTAssertTrue(p.stopped.allSatisfy { $0.reason.contains("down") })
        XCTAssertEqual(Set(p.started.map { "\($0.service)#\($0.slot)" }), Set(moved.map { "\($0.service)#\($0.slot)" }))
        XCTAssertFalse(p.assignments.contains { $0.node == victim })
        // Everything that was not on the failed node is exactly where it was.
        XCTAssertTrue(first.assignments.filter { $0.node != victim }.allSatisfy(p.assignments.contains))
        XCTAssertEqual(p.assignments.count, 5)
    }

    func testScaleDownAndRemovalStopTheRightInstances() {
        let current = [at("web", 0, 1), at("web", 1, 1), at("web", 2, 2), at("old", 0, 2)]
        let p = Scheduler.plan(nodes: [node(1), node(2)], services: [service("web", 2)], current: current, seed: 1)
        XCTAssertEqual(p.assignments, [at("web", 0, 1), at("web", 1, 1)])
        XCTAssertEqual(p.stopped.map(\.assignment), [at("old", 0, 2), at("web", 2, 2)])
        XCTAssertTrue(p.stopped[0].reason.contains("removed"))
        XCTAssertTrue(p.stopped[1].reason.contains("scaled down to 2"))
    }

    func testInstanceOnUnknownNodeIsReplaced() {
        let p = Scheduler.plan(nodes: [node(1)], services: [service("web")], current: [at("web", 0, 7)], seed: 1)
        XCTAssertEqual(p.assignments, [at("web", 0, 1)])
        XCTAssertTrue(p.stopped.first?.reason.contains("not in the node list") == true)
    }

    func testShrunkNodeStopsLowestPriorityHighestSlotFirst() {
        // Node 1 held important#0, low#0 and low#1 (1000 millicpu each); it now has 2000 millicpu.
        let services = [service("important", 1, cpu: 1000, mem: 100, priority: 5), service("low", 2, cpu: 1000, mem: 100)]
        let current = [at("important", 0, 1), at("low", 0, 1), at("low", 1, 1)]
        let p = Scheduler.plan(nodes: [node(1, cpu: 2000), node(2, cpu: 1000)], services: services, current: current, seed: 1)
        XCTAssertEqual(p.stopped.map(\.assignment), [at("low", 1, 1)])
        XCTAssertTrue(p.stopped[0].reason.contains("over capacity"))
        XCTAssertEqual(p.started, [at("low", 1, 2)])
        // With the priorities the other way round, important#0 is the one that goes.
        var swapped = services
        swapped[0].priority = 0
        swapped[1].priority = 5
        let q = Scheduler.plan(nodes: [node(1, cpu: 2000), node(2, cpu: 1000)], services: swapped, current: current, seed: 1)
        XCTAssertEqual(q.stopped.map(\.assignment), [at("important", 0, 1)])
    }

    func testShrunkNodeKeepsWhatStillFitsAfterStopping() {
        // tiny#0 is stopped first (least important: placed last), then big#0 must go too, and then
        // tiny#0 fits again, so it stays.
        let services = [service("big", 1, cpu: 1500, mem: 100), service("tiny", 1, cpu: 100, mem: 100)]
        let current = [at("big", 0, 1), at("tiny", 0, 1)]
        let p = Scheduler.plan(nodes: [node(1, cpu: 1000)], services: services, current: current, seed: 1)
        XCTAssertEqual(p.assignments, [at("tiny", 0, 1)])
        XCTAssertEqual(p.stopped.map(\.assignment), [at("big", 0, 1)])
    }

    func testReservedGrowthCountsLikeShrinking() {
        let current = [at("web", 0, 1), at("web", 1, 1)]
        let p = Scheduler.plan(nodes: [node(1, cpu: 1000, reserved: Resources(cpuMillis: 500, memoryMiB: 0))],
                               services: [service("web", 2, cpu: 500, mem: 1)], current: current, seed: 1)
        XCTAssertEqual(p.assignments, [at("web", 0, 1)])
        XCTAssertEqual(p.unplaced.first?.missing, 1)
    }

    func testConstraintOrTrustNoLongerHoldingStopsTheInstance() {
        let svc = [service("web", constraints: [.labelEquals("zone", "a")], minTrust: 0.5)]
        let moved = Scheduler.plan(nodes: [node(1, labels: ["zone": "b"]), node(2, labels: ["zone": "a"])], services: svc,
                                   current: [at("web", 0, 1)], seed: 1)
        XCTAssertEqual(moved.nodes(of: "web"), [2])
        XCTAssertTrue(moved.stopped[0].reason.contains("zone=a"), moved.stopped[0].reason)
        let distrusted = Scheduler.plan(nodes: [node(1, labels: ["zone": "a"], trust: 0.4), node(2, labels: ["zone": "a"])],
                                        services: svc, current: [at("web", 0, 1)], seed: 1)
        XCTAssertEqual(distrusted.nodes(of: "web"), [2])
        XCTAssertTrue(distrusted.stopped[0].reason.contains("trust"))
    }

    func testAntiAffinityAddedLaterSeparatesTheLowerPriorityService() {
        let current = [at("a", 0, 1), at("b", 0, 1)]
        let p = Scheduler.plan(nodes: [node(1), node(2)], services: [service("a", priority: 1), service("b", antiAffinity: ["a"])],
                               current: current, seed: 1)
        XCTAssertEqual(p.stopped.map(\.assignment), [at("b", 0, 1)])
        XCTAssertEqual(p.nodes(of: "b"), [2])
    }

    func testDuplicateCurrentSlotKeepsOne() {
        let p = Scheduler.plan(nodes: [node(1), node(2)], services: [service("web")], current: [at("web", 0, 1), at("web", 0, 2)], seed: 1)
        XCTAssertEqual(p.assignments, [at("web", 0, 1)])
        XCTAssertTrue(p.stopped.first?.reason.contains("duplicate") == true)
    }
}
