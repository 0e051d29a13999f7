// `mycelium-sim governor`: whole control planes (Raft, control state, governor, vote, network
// controller) under crashes, partitions, loss and lying voters.

import ArgumentParser
import MyceliumSim

struct GovernorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "governor",
        abstract: "Simulate the control plane's governance: formation, failures, votes, handoff and pod CIDRs.",
        discussion: """
            Each seed draws 3 to 7 founding members (sometimes one of them a lying voter), forms the network, then \
            for --fault-seconds of simulated time restarts nodes, cuts minorities off, makes the network lossy, \
            and kills one node for good. Checked at every step: one leader per term, unique pod CIDRs, no live and \
            reachable member recorded failed. Checked after healing: the killed node is recorded failed and leaves \
            the voters within a bound, every vote round is decided at every honest voter within a bound, the \
            sclerotia equal the Raft voters, every live member has a pod CIDR.

            Examples:
              mycelium-sim governor --seed 7 --trace      replay one run with its last events
              mycelium-sim governor --seeds 1..1000       a long run (each failure prints its replay command)
            """)

    @Option(help: "Run exactly this seed.") var seed: UInt64?
    @Option(help: "Run an inclusive range of seeds, written A..B.") var seeds: String?
    @Option(help: "Founding members (3...7). By default each seed chooses.") var nodes: Int?
    @Option(help: "Lying voters (0 or 1; 1 needs at least 6 members). By default each seed chooses.") var liars: Int?
    @Option(help: "Simulated seconds of faults after formation.") var faultSeconds: Int64 = 30
    @Flag(help: "Print the last simulated events of a failing (or single) run.") var trace = false
    @Flag(help: "Print a summary line for every run, not only failures.") var verbose = false

    func validate() throws {
        if let n = nodes, !(3...7).contains(n) { throw ValidationError("--nodes must be 3 to 7") }
        if let l = liars, !(0...1).contains(l) { throw ValidationError("--liars must be 0 or 1") }
        if liars == 1, let n = nodes, n < 6 { throw ValidationError("a liar needs at least 6 members (a vote tolerating one liar needs 4 trusted voters besides its subject)") }
        if seeds != nil && seed != nil { throw ValidationError("use either --seeds A..B or --seed N") }
    }

    func run() throws {
        var range: ClosedRange<UInt64> = (seed ?? 1)...(seed ?? 1)
        if let s = seeds {
            let parts = s.split(separator: ".", omittingEmptySubsequences: true)
            guard parts.count == 2, let a = UInt64(parts[0]), let b = UInt64(parts[1]), a <= b, s.contains("..") else {
                throw ValidationError("--seeds must look like 1..500")
            }
            range = a...b
        }
        let single = range.count == 1
        var failed = 0
        for s in range {
            var o = GovernorSimulationOptions(seed: s, nodeCount: nodes, liars: liars, trace: trace)
            o.faultSeconds = faultSeconds
            let r = GovernorSimulation.run(o)
            if single || verbose || !r.passed { print(r.summary) }
            if !r.passed || (single && trace) { r.trace.forEach { print("  " + $0) } }
            if !r.passed {
                failed += 1
                print("  replay: \(r.replayCommand) --fault-seconds \(faultSeconds) --trace")
            }
        }
        if !single { print("\(range.count - failed)/\(range.count) runs passed") }
        if failed > 0 { throw ExitCode(1) }
    }
}
