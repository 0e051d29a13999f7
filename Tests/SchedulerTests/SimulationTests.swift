// The seeded cluster simulation over many seeds, and proof that its checker catches broken plans.

import MyceliumIdentity
@testable import Scheduler
import XCTest

final class SimulationTests: XCTestCase {
    func testTwoHundredSeeds() {
        var checks = 0, short = 0, moves = 0
        for seed in UInt64(1)...200 {
            let r = ScheduleSimulation.run(ScheduleSimulationOptions(seed: seed))
            XCTAssertTrue(r.passed, "\(r.summary)\n\(r.trace.suffix(30).joined(separator: "\n"))\nreplay: \(r.replayCommand)")
            checks += r.convergenceChecks
            short += r.shortSteps
            moves += r.stopped
        }
        // The runs must exercise what they claim to check.
        XCTAssertGreaterThan(checks, 5000, "convergence was rarely provable")
        XCTAssertGreaterThan(short, 200, "services were rarely short")
        XCTAssertGreaterThan(moves, 2000, "instances were rarely stopped")
    }

    func testSameSeedSameRun() {
        let a = ScheduleSimulation.run(ScheduleSimulationOptions(seed: 42, steps: 30, trace: true))
        let b = ScheduleSimulation.run(ScheduleSimulationOptions(seed: 42, steps: 30, trace: true))
        XCTAssertEqual(a.trace, b.trace)
        XCTAssertNotEqual(a.trace, ScheduleSimulation.run(ScheduleSimulationOptions(seed: 43, steps: 30, trace: true)).trace)
    }
}

final class PlanCheckTests: XCTestCase {
    let nodes = [node(1, cpu: 1000), node(2, cpu: 1000)]
    let services = [service("web", 2, cpu: 600, mem: 1)]

    func check(_ assignments: [Assignment], current: [Assignment] = [], unplaced: [Unplaced] = []) -> [String] {
        let before = Set(current), after = Set(assignments)
        let plan = Plan(assignments: assignments, started: assignments.filter { !before.contains($0) },
                        stopped: current.filter { !after.contains($0) }.sorted().map { Stop(assignment: $0, reason: "test") },
                        unplaced: unplaced)
        return PlanCheck.violations(of: plan, nodes: nodes, services: services, current: current)
    }

    func testSoundPlanPasses() {
        XCTAssertEqual(check([at("web", 0, 1), at("web", 1, 2)]), [])
    }

    func testCatchesBrokenPlans() {
        XCTAssertTrue(check([at("web", 0, 1), at("web", 1, 1)]).contains { $0.contains("over capacity") })
        XCTAssertTrue(check([at("web", 0, 2), at("web", 1, 1)], current: [at("web", 0, 1)]).contains { $0.contains("not kept") })
        XCTAssertTrue(check([at("web", 0, 1)], unplaced: [Unplaced(service: "web", missing: 1, reason: "x")])
            .contains { $0.contains("could take another instance") })
        XCTAssertTrue(check([at("web", 0, 1)]).contains { $0.contains("unplaced reports") })
        XCTAssertTrue(check([at("web", 1, 1), at("web", 0, 2)]).contains { $0.contains("not sorted") })
    }
}
