import MyceliumCore
import MyceliumIdentity
@testable import MyceliumVote
import XCTest

final class TrustTests: XCTestCase {
    func equivocation(_ e: Electorate, _ spec: RoundSpec, voter: Int) -> Evidence {
        let s = [UInt8](repeating: 1, count: 32)
        func c(_ r: VoteResult) -> SignedCommit {
            SignedCommit.sign(round: spec.id, voter: e.ids[voter], commitment: Commitment.compute(round: spec.id, voter: e.ids[voter], result: r, salt: s), key: e.keys[voter])
        }
        return .equivocating(c(.yes), c(.no))
    }

    func testNewNodesStartLowAndRiseSlowlyWithCorrectVotes() throws {
        let e = Electorate(4)
        var ledger = TrustLedger()
        for id in e.ids { ledger.admit(id) }
        XCTAssertEqual(ledger.score(of: e.ids[0]), 100_000)
        // Reaching the admission threshold (500_000) takes many correct rounds, not a handful.
        var rounds = 0
        while ledger.score(of: e.ids[0]) < 500_000 {
            rounds += 1
            let spec = try e.spec(sequence: UInt64(rounds))
            var nodes = e.instances()
            var rng = SeededRandom(seed: UInt64(rounds))
            var initial: [(from: Int, effects: [VoteEffect])] = []
            for i in 0..<4 { initial.append((i, try nodes[i].open(spec, vote: .yes, using: &rng))) }
            let all = flood(&nodes, initial)
            guard case let .accepted(_, cert)? = all[0].outcomes.first else { return XCTFail() }
            try ledger.creditCorrectVotes(cert, spec: spec)
            try ledger.creditCorrectVotes(cert, spec: spec)  // credited once per round
        }
        XCTAssertGreaterThanOrEqual(rounds, 30)
        XCTAssertLessThanOrEqual(ledger.score(of: e.ids[0]), ledger.parameters.maximum)
    }

    func testSlashingIsSharpOncePerOffenceAndJails() throws {
        let e = Electorate(4)
        let spec = try e.spec()
        var ledger = TrustLedger()
        for id in e.ids { ledger.admit(id, score: 800_000) }
        let ev = equivocation(e, spec, voter: 2)
        let record = try XCTUnwrap(try ledger.slash(ev, spec: spec))
        XCTAssertEqual(record.scoreBefore, 800_000)
        XCTAssertEqual(record.scoreAfter, 200_000)
        XCTAssertTrue(ledger.isJailed(e.ids[2]))
        // The same offence proven again (even with other bytes) changes nothing.
        XCTAssertNil(try ledger.slash(ev, spec: spec))
        XCTAssertEqual(ledger.score(of: e.ids[2]), 200_000)
        // Evidence that does not verify is refused and changes nothing.
        XCTAssertThrowsError(try ledger.slash(equivocation(e, spec, voter: 1), spec: try e.spec(sequence: 9)))
        XCTAssertEqual(ledger.score(of: e.ids[1]), 800_000)
        // A second offence in another round doubles the jail.
        let spec2 = try e.spec(sequence: 2)
        let r2 = try XCTUnwrap(try ledger.slash(equivocation(e, spec2, voter: 2), spec: spec2))
        XCTAssertEqual(r2.jailedUntil, ledger.epoch + 32)
        XCTAssertEqual(r2.scoreAfter, 50_000)
    }

    func testRecoveryPathAfterJail() throws {
        let e = Electorate(5)
        let spec = try e.spec()
        var ledger = TrustLedger()
        for id in e.ids { ledger.admit(id, score: 900_000) }
        try ledger.slash(equivocation(e, spec, voter: 4), spec: spec)
        let policy = QuorumPolicy.standard(.routineHealth)
        let candidates = e.keys.indices.map { VoterCandidate(id: e.ids[$0], key: e.keys[$0].publicKey, isSclerotium: false) }
        // Jailed: not in any electorate, and uptime does not raise the score.
        XCTAssertFalse(try policy.electorate(from: candidates, ledger: ledger).voters.contains { $0.id == e.ids[4] })
        ledger.creditUptime([e.ids[4]])
        XCTAssertEqual(ledger.score(of: e.ids[4]), 225_000)
        for _ in 0..<16 { ledger.advanceEpoch() }
        XCTAssertFalse(ledger.isJailed(e.ids[4]))
        // Out of jail: eligible for routine health (≥ 50_000) but not failure confirmation (≥ 300_000) ...
        XCTAssertTrue(try policy.electorate(from: candidates, ledger: ledger).voters.contains { $0.id == e.ids[4] })
        XCTAssertFalse(try QuorumPolicy.standard(.failureConfirmation).electorate(from: candidates, ledger: ledger).voters.contains { $0.id == e.ids[4] })
        // ... until uptime and correct votes raise it back.
        for _ in 0..<40 { ledger.creditUptime([e.ids[4]]) }
        XCTAssertGreaterThanOrEqual(ledger.score(of: e.ids[4]), 300_000)
        XCTAssertTrue(try QuorumPolicy.standard(.failureConfirmation).electorate(from: candidates, ledger: ledger).voters.contains { $0.id == e.ids[4] })
    }

    func testDecayPullsIdleTrustTowardTheNewNodeLevelButNotBelow() {
        var ledger = TrustLedger()
        let id = Electorate(1).ids[0]
        ledger.admit(id, score: 900_000)
        for _ in 0..<5000 { ledger.advanceEpoch() }
        XCTAssertLessThan(ledger.score(of: id), 110_000)
        XCTAssertGreaterThanOrEqual(ledger.score(of: id), 100_000)
    }

    func testLedgersApplyingTheSameLogAreIdentical() throws {
        let e = Electorate(7)
        var a = TrustLedger(), b = TrustLedger()
        for id in e.ids { a.admit(id, score: 600_000) }
        for id in e.ids.reversed() { b.admit(id, score: 600_000) }
        let spec = try e.spec()
        for l in [0, 1] {
            var x = l == 0 ? a : b
            try x.slash(equivocation(e, spec, voter: 3), spec: spec)
            x.creditUptime(e.ids)
            x.advanceEpoch()
            if l == 0 { a = x } else { b = x }
        }
        XCTAssertEqual(a, b)
    }
}

final class QuorumTests: XCTestCase {
    func candidates(_ e: Electorate, sclerotia: Set<Int> = []) -> [VoterCandidate] {
        e.keys.indices.map { VoterCandidate(id: e.ids[$0], key: e.keys[$0].publicKey, isSclerotium: sclerotia.contains($0)) }
    }

    func testMinimumsKeepNAtLeast3FPlus1() throws {
        XCTAssertThrowsError(try Electorate(3).spec(f: 1)) { e in
            guard case .invalidRound? = (e as? VoteError)?.code else { return XCTFail("\(e)") }
        }
        XCTAssertNoThrow(try Electorate(4).spec(f: 1))
        XCTAssertThrowsError(try Electorate(6).spec(f: 2))
        XCTAssertNoThrow(try Electorate(7).spec(f: 2))
        // By weight too: one voter holding a third breaks f = 1.
        XCTAssertThrowsError(try Electorate(4).spec(weights: [150, 100, 100, 100], f: 1))
    }

    func testElectorateAdaptsAsNodesJoinAndLeave() throws {
        let e = Electorate(10)
        var ledger = TrustLedger()
        for id in e.ids.prefix(3) { ledger.admit(id, score: 800_000) }
        let policy = QuorumPolicy.standard(.failureConfirmation)
        XCTAssertThrowsError(try policy.electorate(from: candidates(e), ledger: ledger)) { e in
            guard case .noQuorum? = (e as? VoteError)?.code else { return XCTFail("\(e)") }
        }
        ledger.admit(e.ids[3], score: 800_000)
        XCTAssertEqual(try policy.electorate(from: candidates(e), ledger: ledger).faultsTolerated, 1)
        for id in e.ids.dropFirst(4) { ledger.admit(id, score: 800_000) }
        let all = try policy.electorate(from: candidates(e), ledger: ledger)
        XCTAssertEqual(all.voters.count, 10)
        XCTAssertEqual(all.faultsTolerated, 3)
        ledger.remove(e.ids[9])
        XCTAssertEqual(try policy.electorate(from: candidates(e), ledger: ledger).faultsTolerated, 2)
    }

    func testSubjectNeverVotesAndNewNodesCannotAdmit() throws {
        let e = Electorate(9)
        var ledger = TrustLedger()
        for id in e.ids.prefix(5) { ledger.admit(id, score: 700_000) }
        for id in e.ids.dropFirst(5) { ledger.admit(id) }  // four Sybils at the new-node level
        let round = try QuorumPolicy.failureConfirmationRound(of: e.ids[0], incarnation: 3, network: e.network, sequence: 1,
                                                             candidates: candidates(e), ledger: ledger)
        XCTAssertNil(round.index(of: e.ids[0]), "the node under suspicion does not vote on its own failure")
        XCTAssertEqual(round.voters.count, 4)
        let admission = try QuorumPolicy.admissionRound(of: e.ids[8], key: e.keys[8].publicKey, asSclerotium: false,
                                                        network: e.network, sequence: 2, candidates: candidates(e), ledger: ledger)
        XCTAssertTrue(admission.voters.allSatisfy { ledger.score(of: $0.id) >= 500_000 }, "only trusted nodes admit")
        // Sclerotium admission needs sclerotia, and there are only three.
        XCTAssertThrowsError(try QuorumPolicy.admissionRound(of: e.ids[8], key: e.keys[8].publicKey, asSclerotium: true,
                                                             network: e.network, sequence: 3,
                                                             candidates: candidates(e, sclerotia: [0, 1, 2]), ledger: ledger))
    }

    func testWeightCapKeepsAnyFVotersUnderAThird() throws {
        let e = Electorate(4)
        var ledger = TrustLedger()
        ledger.admit(e.ids[0], score: 1_000_000)
        for id in e.ids.dropFirst() { ledger.admit(id, score: 300_000) }
        let (voters, f) = try QuorumPolicy.standard(.failureConfirmation).electorate(from: candidates(e), ledger: ledger)
        XCTAssertEqual(f, 1)
        let total = voters.reduce(0) { $0 + $1.weight }
        XCTAssertLessThan(voters.map(\.weight).max()! * 3, total)
        // The cap is the largest that works: one more unit would break it.
        let heavy = voters.map(\.weight).max()!
        XCTAssertGreaterThanOrEqual((heavy + 1) * 3, total + 1)
    }

    func testAgentFlowConfirmsAFailureWithOneLiar() throws {
        // The API as the node agent will use it: build the round from Raft state, open it everywhere,
        // commit the certificate, slash the liar from the evidence.
        let e = Electorate(5)
        var ledger = TrustLedger()
        for id in e.ids { ledger.admit(id, score: 700_000) }
        let suspect = e.ids[4]
        let spec = try QuorumPolicy.failureConfirmationRound(of: suspect, incarnation: 1, network: e.network, sequence: 42,
                                                            candidates: candidates(e), ledger: ledger)
        var nodes = e.keys.prefix(4).map { VoteInstance(key: $0) }
        var rng = SeededRandom(seed: 8)
        // Voter 3 lies: it equivocates, committing "alive" to node 0 and "dead" to 1 and 2.
        var initial: [(from: Int, effects: [VoteEffect])] = []
        for i in 0..<3 { initial.append((i, try nodes[i].open(spec, vote: .yes, using: &rng))) }
        let s = [UInt8](repeating: 9, count: 32)
        let liar = e.keys[3], liarID = e.ids[3]
        let cNo = SignedCommit.sign(round: spec.id, voter: liarID, commitment: Commitment.compute(round: spec.id, voter: liarID, result: .no, salt: s), key: liar)
        let cYes = SignedCommit.sign(round: spec.id, voter: liarID, commitment: Commitment.compute(round: spec.id, voter: liarID, result: .yes, salt: s), key: liar)
        initial.append((0, try nodes[0].step(.commit(cNo))))
        initial.append((1, try nodes[1].step(.commit(cYes))))
        initial.append((2, try nodes[2].step(.commit(cYes))))
        var all = flood(&nodes, initial, drop: { _, to, _ in to == 3 })
        tickAndFlood(&nodes, 2 * Int(spec.commitTicks + spec.revealTicks), into: &all, only: [0, 1, 2], drop: { _, to, _ in to == 3 })
        guard case let .accepted(result, cert)? = all[0].outcomes.first else { return XCTFail("\(all[0])") }
        XCTAssertEqual(result, .yes)
        // Any node can check the certificate against the round from its own Raft state before restarting VMs.
        XCTAssertNoThrow(try cert.verify(spec: try RoundSpec(decoding: spec.encoded())))
        try ledger.creditCorrectVotes(cert, spec: spec)
        for ev in all.flatMap(\.evidence) { try ledger.slash(Evidence(decoding: ev.encoded()), spec: spec) }
        XCTAssertEqual(Set(ledger.slashed.map(\.accused)), [liarID])
        XCTAssertTrue(ledger.slashed.contains { $0.offence == .equivocation })
        XCTAssertTrue(ledger.isJailed(liarID))
    }
}
