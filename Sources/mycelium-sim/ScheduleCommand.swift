// `mycelium-sim schedule`: the service scheduler through a cluster's life (failures, recoveries,
// joins, drains, shrinking nodes, deploys, scaling, removals), checked after every plan.

import ArgumentParser
import Scheduler

struct ScheduleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schedule",
        abstract: "Simulate the service scheduler under node churn and service changes, checking every plan.",
        discussion: """
            Each seed draws a cluster (3 to 16 nodes with regions, zones, racks, capabilities, trust and reserved \
            capacity) and services (constraints, preferences, trust floors, spread levels, maxPerNode, anti-affinity, \
            priorities), then runs --steps random events: nodes go down, come back, turn suspect, drain, leave, join, \
            shrink and change trust; services are deployed, scaled and removed. The last step heals every node. \
            After every step the plan is applied and checked: capacity, constraints, trust, maxPerNode, anti-affinity, \
            new instances only on ready nodes, valid instances never moved, unplaced reports, determinism under \
            shuffled inputs, re-planning changes nothing, and every service is fully placed whenever capacity \
            provably allows it.

            Examples:
              mycelium-sim schedule --seed 7 --trace      replay one run with every event and plan
              mycelium-sim schedule --seed 1 --count 1000 run seeds 1 through 1000
            """)

    @Option(help: "The first (or only) seed.") var seed: UInt64 = 1
    @Option(help: "Run this many seeds, from --seed.") var count: Int = 1
    @Option(help: "Random events per run (a final healing step follows).") var steps: Int = 80
    @Flag(help: "Print every event and plan of a single run, or of each failing run.") var trace = false
    @Flag(help: "Print a summary line for every run, not only failures.") var verbose = false

    func validate() throws {
        if count <= 0 { throw ValidationError("--count must be positive") }
        if steps < 0 { throw ValidationError("--steps must not be negative") }
    }

    func run() throws {
        let single = count == 1
        var failed = 0
        for s in seed..<(seed + UInt64(count)) {
            let r = ScheduleSimulation.run(ScheduleSimulationOptions(seed: s, steps: steps, trace: trace && single))
            if single || verbose || !r.passed { print(r.summary) }
            if !r.passed || (single && trace) { r.trace.suffix(trace ? Int.max : 40).forEach { print("  " + $0) } }
            if !r.passed {
                failed += 1
                print("  replay: \(r.replayCommand)")
            }
        }
        if !single { print("\(count - failed)/\(count) runs passed") }
        if failed > 0 { throw ExitCode(1) }
    }
}
