// `mycelium-sim vote`: attacks the commit-reveal vote (MyceliumVote) in a seeded simulation.
// Registered as a subcommand of mycelium-sim by the owner of main.swift.

import ArgumentParser
import MyceliumSim
import MyceliumVote

struct VoteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vote",
        abstract: "Attack the Byzantine-tolerant commit-reveal vote and check that it never gives a wrong answer.",
        discussion: """
            How the vote works. Each voter first broadcasts a signed commitment H(round ‖ voter ‖ result ‖ salt), \
            then, once the commit phase closes, reveals (result, salt). A result is accepted when the voters who \
            revealed it hold MORE than 2/3 of the round's trust-weighted voting power; otherwise the round fails \
            explicitly. Misbehaviour that leaves signatures behind becomes evidence, and evidence is slashed from \
            the voter's trust score (equivocation, a reveal that does not open its commitment, a withheld reveal, \
            and in rounds with a verifiable truth, revealing anything but the accepted result).

            What a run does. One seed draws the electorate (4 to 16 voters unless --voters is given), each \
            voter's trust, which voters are Byzantine and how they attack (equivocator, withholder, copier, \
            colluder), which honest voters are slow or partitioned, and every network delay. Honest voters run \
            the real state machine with real Ed25519 keys. After each round the run checks:
              - no two honest voters accept different results;
              - no result is accepted that honest voters did not back;
              - every accepted result carries a certificate that verifies;
              - every Byzantine act that left evidence was slashed;
              - no honest voter was slashed for a lie;
              - with Byzantine weight < 1/3 and a healthy network, honest voters accept.
            With --beyond-bound, colluders hold between 1/3 and 2/3 of the weight: rounds must fail or \
            stall, and a false result must still never be accepted.

            The same seed always replays the same run; a failing run prints the command that replays it.

            Examples:
              mycelium-sim vote --seed 7                       one run, with a summary line
              mycelium-sim vote --seed 7 --trace               ... and its last simulated events
              mycelium-sim vote --seed 1 --count 500           500 runs from seed 1
              mycelium-sim vote --seed 3 --voters 31 --byzantine 10 --profile wan
              mycelium-sim vote --seed 5 --voters 10 --beyond-bound
            """)

    @Option(help: "The seed of the (first) run.")
    var seed: UInt64 = 1

    @Option(help: "Run this many consecutive seeds, starting at --seed.")
    var count: Int = 1

    @Option(help: "Number of voters (4...100 are tested). Drawn from the seed when omitted.")
    var voters: Int?

    @Option(help: "Number of Byzantine voters (keep f < n/3 unless --beyond-bound). Drawn when omitted.")
    var byzantine: Int?

    @Option(help: "Comma-separated Byzantine behaviours to draw from: equivocator, withholder, copier, colluder.")
    var behaviours: String?

    @Option(help: "Number of slow or partitioned honest voters. Drawn when omitted.")
    var slowHonest: Int?

    @Option(help: "Rounds per run (each opens a new round with an electorate recomputed from trust).")
    var rounds: Int = 3

    @Option(help: "Network timing: lan (0.2–1 ms delays, 15 ms phases) or wan (10–150 ms, 400 ms phases).")
    var profile: String = "lan"

    @Flag(help: "Colluders hold between 1/3 and 2/3 of the weight (outside the model): rounds must fail, never lie.")
    var beyondBound = false

    @Flag(help: "Honest voters always observe the same answer (by default a minority may see the other one in rounds without a verifiable truth).")
    var noHonestDisagreement = false

    @Flag(help: "Print the last simulated events of a single or failing run.")
    var trace = false

    @Flag(help: "Print a summary line for every run, not only for failures.")
    var verbose = false

    func validate() throws {
        if count < 1 { throw ValidationError("--count must be at least 1") }
        if let v = voters, v < 1 || v > 1024 { throw ValidationError("--voters must be 1...1024") }
        if let b = byzantine, b < 0 { throw ValidationError("--byzantine must not be negative") }
        if VoteNetworkProfile(rawValue: profile) == nil { throw ValidationError("--profile must be lan or wan") }
        _ = try parsedBehaviours()
    }

    func parsedBehaviours() throws -> [ByzantineBehaviour]? {
        guard let behaviours else { return nil }
        return try behaviours.split(separator: ",").map { name in
            guard let b = ByzantineBehaviour(rawValue: String(name)) else {
                throw ValidationError("unknown behaviour '\(name)'; use \(ByzantineBehaviour.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return b
        }
    }

    func run() throws {
        let kinds = try parsedBehaviours()
        let single = count == 1
        var failed = 0
        for s in seed..<(seed + UInt64(count)) {
            var options = VoteSimOptions(seed: s, voters: voters, byzantine: byzantine, behaviours: kinds, slowHonest: slowHonest,
                                         rounds: rounds, profile: VoteNetworkProfile(rawValue: profile)!,
                                         beyondBound: beyondBound, trace: single && trace)
            options.honestDisagreement = !noHonestDisagreement
            var report = runVoteSimulation(options)
            if !report.passed && trace && !single {
                options.trace = true
                report = runVoteSimulation(options)  // deterministic: the same failure, now traced
            }
            if single || verbose || !report.passed { print(report.summary) }
            if single && verbose {
                for (i, r) in report.rounds.enumerated() {
                    print("  round \(i): \(r.criticality) n=\(r.electorate) byz=\(r.byzantineWeightPermille)‰ accepted/failed/undecided=\(r.honestAccepted)/\(r.honestFailed)/\(r.honestUndecided) latency p50=\(r.medianLatencyTicks.map { "\(Double($0) * Double(VoteNetworkProfile.microsecondsPerTick) / 1000) ms" } ?? "-") messages=\(r.messages)")
                }
            }
            report.trace.forEach { print("  " + $0) }
            if !report.passed {
                failed += 1
                print("  replay: \(report.replayCommand) --trace")
            }
        }
        if !single { print("\(count - failed)/\(count) runs passed") }
        if failed > 0 { throw ExitCode(1) }
    }
}
