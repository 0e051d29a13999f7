import MyceliumCore
@testable import MyceliumVote
import MyceliumSim
import XCTest

/// The CI seed set. Each failure prints the command that replays it. Sizes are chosen to keep the
/// whole file near 30 s in a debug build on 2 cores (Ed25519 verification dominates).
final class SimulationTests: XCTestCase {
    func assertPasses(_ report: VoteSimReport, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(report.passed, "\(report.summary)\n  replay: \(report.replayCommand) --trace", file: file, line: line)
    }

    func testFixedSeedsWithinTheModel() {
        var slashed = 0, accepted = 0, refused = 0
        var seen = Set<ByzantineBehaviour>()
        for seed in UInt64(1)...60 {
            let r = runVoteSimulation(VoteSimOptions(seed: seed))
            assertPasses(r)
            slashed += r.slashed.count
            accepted += r.rounds.reduce(0) { $0 + $1.honestAccepted }
            refused += r.junkRefused
            r.byzantine.forEach { seen.insert($0.behaviour) }
        }
        // The seed set really exercises the attacks (a guard against a simulator that tests nothing).
        XCTAssertEqual(seen, Set(ByzantineBehaviour.allCases))
        XCTAssertGreaterThan(slashed, 50)
        XCTAssertGreaterThan(accepted, 300)
        XCTAssertGreaterThan(refused, 20)
    }

    func testEachAttackAloneAtMaximumF() {
        for (k, b) in ByzantineBehaviour.allCases.enumerated() {
            for seed in UInt64(1)...3 {
                let r = runVoteSimulation(VoteSimOptions(seed: seed * 10 + UInt64(k), voters: 10, byzantine: 3, behaviours: [b], slowHonest: 0, rounds: 2))
                assertPasses(r)
                XCTAssertEqual(r.byzantine.count, 3, "\(b)")
                // Every round accepted the truth everywhere despite three attackers.
                XCTAssertEqual(r.rounds.first?.honestAccepted, 7, "\(b): \(r.summary)")
                // Colluding on a false result is only provable where the truth is verifiable.
                if b != .colluder || r.rounds.contains(where: \.verifiableTruth) {
                    XCTAssertFalse(r.slashed.isEmpty, "\(b) left no evidence: \(r.summary)")
                } else {
                    XCTAssertTrue(r.slashed.isEmpty, "disagreeing is not an offence without a verifiable truth: \(r.summary)")
                }
            }
        }
    }

    func testSlowAndPartitionedHonestVotersNeverBreakSafety() {
        for seed in UInt64(100)...115 {
            assertPasses(runVoteSimulation(VoteSimOptions(seed: seed, voters: 7, byzantine: 2, slowHonest: 2)))
        }
    }

    func testWANTiming() {
        for seed in UInt64(200)...205 {
            assertPasses(runVoteSimulation(VoteSimOptions(seed: seed, voters: 10, rounds: 2, profile: .wan)))
        }
    }

    func testBeyondTheBoundRoundsFailButNeverLie() {
        for seed in UInt64(300)...315 {
            let r = runVoteSimulation(VoteSimOptions(seed: seed, voters: [4, 7, 10, 13][Int(seed % 4)], rounds: 2, beyondBound: true))
            assertPasses(r)
            for round in r.rounds {
                XCTAssertGreaterThanOrEqual(round.byzantineWeightPermille, 333, r.summary)
                XCTAssertEqual(round.honestAccepted, 0, "with colluders at ≥ 1/3 nothing can be accepted: \(r.summary)")
            }
        }
    }

    func testLargeElectorates() {
        // n = 31 with f = 10 and n = 100 with f = 33, one round each.
        assertPasses(runVoteSimulation(VoteSimOptions(seed: 400, voters: 31, byzantine: 10, rounds: 1)))
        let big = runVoteSimulation(VoteSimOptions(seed: 401, voters: 100, byzantine: 33, slowHonest: 0, rounds: 1))
        assertPasses(big)
        XCTAssertEqual(big.rounds.first?.electorate, 100)
    }

    func testASeedReplaysExactly() {
        let a = runVoteSimulation(VoteSimOptions(seed: 9, voters: 13, byzantine: 4, trace: true))
        let b = runVoteSimulation(VoteSimOptions(seed: 9, voters: 13, byzantine: 4, trace: true))
        XCTAssertEqual(a.summary, b.summary)
        XCTAssertEqual(a.trace, b.trace)
        XCTAssertEqual(a.slashed, b.slashed)
        XCTAssertTrue(a.replayCommand.hasPrefix("mycelium-sim vote --seed 9 --voters 13 --byzantine 4"))
    }
}
