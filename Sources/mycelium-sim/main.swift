// mycelium-sim: runs Mycelium's deterministic simulations. A failing run prints the command that replays it.

import ArgumentParser
@_spi(Testing) import MyceliumSim
@_spi(Testing) import MyceliumRaft

struct MyceliumSimCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mycelium-sim",
        abstract: "Deterministic simulations of Mycelium's distributed cores.",
        discussion: """
            Each run is drawn from one seed: the cluster size, network faults, crashes, disk stalls, clock drift \
            and the client workload. The same seed always replays the same run, bit for bit.
            """,
        subcommands: simulationCommands)
}

let simulationCommands: [ParsableCommand.Type] = [RaftCommand.self, VoteCommand.self, GovernorCommand.self, ScheduleCommand.self]

struct RaftCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "raft",
        abstract: "Simulate a Raft cluster under faults and check safety, liveness and linearizability.",
        discussion: """
            A run has a safety phase (message loss, duplication, delay and reordering; symmetric, asymmetric \
            and flapping partitions; crashes that lose unsynced writes; slow disks; clock drift) followed by a \
            liveness phase (the network heals and crashed nodes restart; a write must commit in bounded time). \
            Election safety, log matching, leader completeness, state-machine safety and durable commit \
            monotonicity are checked after every step; the client history is checked for linearizability at \
            the end.

            Examples:
              mycelium-sim raft --seed 42                 replay one run (add --trace to see its last events)
              mycelium-sim raft --seeds 1..1000           run seeds 1 through 1000
              mycelium-sim raft --count 5000 --nodes 5    5000 runs of 5-node clusters from seed 1
            """)

    @Option(help: "Run exactly this seed.")
    var seed: UInt64?

    @Option(help: "Run an inclusive range of seeds, written A..B.")
    var seeds: String?

    @Option(help: "Run this many seeds, starting at --seed (or 1).")
    var count: Int?

    @Option(help: "Cluster size (3, 5 or 7). By default each seed chooses.")
    var nodes: Int?

    @Option(help: "Length of the faulty safety phase in simulated milliseconds.")
    var safetyMs: Int64 = 3000

    @Option(help: "A write must commit within this many simulated milliseconds after healing.")
    var livenessMs: Int64 = 3000

    @Flag(help: "Print the last simulated events of a failing (or single) run.")
    var trace = false

    @Flag(help: "Print a summary line for every run, not only failures.")
    var verbose = false

    @Option(help: .hidden)
    var mutation: String?

    func validate() throws {
        if let n = nodes, ![3, 5, 7].contains(n) { throw ValidationError("--nodes must be 3, 5 or 7") }
        if seeds != nil && (seed != nil || count != nil) {
            throw ValidationError("use either --seeds A..B or --seed N [--count C]")
        }
        if let c = count, c <= 0 { throw ValidationError("--count must be positive") }
    }

    func run() throws {
        let range: ClosedRange<UInt64>
        if let s = seeds {
            let parts = s.split(separator: ".", omittingEmptySubsequences: true)
            guard parts.count == 2, let a = UInt64(parts[0]), let b = UInt64(parts[1]), a <= b, s.contains("..") else {
                throw ValidationError("--seeds must look like 1..500")
            }
            range = a...b
        } else {
            let start = seed ?? 1
            range = start...(start + UInt64(count ?? 1) - 1)
        }
        let single = range.count == 1
        var failures: [RaftSimulationResult] = []
        for s in range {
            var options = RaftSimulationOptions(seed: s, nodeCount: nodes, safetyDuration: safetyMs,
                                                livenessBound: livenessMs, trace: single && trace)
            switch mutation {
            case "commit-prior-term": options.mutation = .commitPriorTermByCounting
            case "vote-ignoring-log": options.mutation = .voteIgnoringLogRecency
            case nil: break
            case let m?: throw ValidationError("unknown mutation \(m)")
            }
            var result = RaftSimulation.run(options)
            if !result.passed && trace && !single {
                options.trace = true
                result = RaftSimulation.run(options) // deterministic: same failure, now with a trace
            }
            if single || verbose || !result.passed { print(result.summary) }
            if !result.trace.isEmpty { result.trace.forEach { print("  " + $0) } }
            if !result.passed {
                failures.append(result)
                print("  replay: \(result.replayCommand) --safety-ms \(safetyMs) --liveness-ms \(livenessMs) --trace")
            }
        }
        if !single { print("\(range.count - failures.count)/\(range.count) runs passed") }
        if !failures.isEmpty { throw ExitCode(1) }
    }
}

MyceliumSimCommand.main()
