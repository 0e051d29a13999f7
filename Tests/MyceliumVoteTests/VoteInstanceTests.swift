import MyceliumCore
import MyceliumIdentity
@testable import MyceliumVote
import XCTest

final class VoteInstanceTests: XCTestCase {
    func openAll(_ nodes: inout [VoteInstance], _ spec: RoundSpec, votes: [VoteResult?]) throws -> [(from: Int, effects: [VoteEffect])] {
        var rng = SeededRandom(seed: 9)
        return try nodes.indices.map { i in (i, try nodes[i].open(spec, vote: votes[i], using: &rng)) }
    }

    func testHonestRoundAcceptsOnTheFastPathWithAVerifiableCertificate() throws {
        let e = Electorate(4)
        let spec = try e.spec()
        var nodes = e.instances()
        let all = flood(&nodes, try openAll(&nodes, spec, votes: [.yes, .yes, .yes, .yes]))
        for i in nodes.indices {
            guard case let .accepted(r, cert)? = all[i].outcomes.first else { return XCTFail("node \(i) did not accept: \(all[i].outcomes)") }
            XCTAssertEqual(r, .yes)
            XCTAssertNoThrow(try cert.verify(spec: spec))
            XCTAssertEqual(nodes[i].outcome(of: spec.id)?.acceptedResult, .yes)
            XCTAssertEqual(all[i].evidence, [])
            // With every commitment in hand no tick was needed: the fast path revealed at once.
            XCTAssertEqual(nodes[i].now, 0)
        }
    }

    func testSplitVoteFailsExplicitlyAndNeverAnswers() throws {
        let e = Electorate(4)
        let spec = try e.spec()
        var nodes = e.instances()
        let all = flood(&nodes, try openAll(&nodes, spec, votes: [.yes, .yes, .no, .no]))
        for i in nodes.indices {
            guard case let .failed(f)? = all[i].outcomes.first else { return XCTFail("node \(i): \(all[i].outcomes)") }
            XCTAssertEqual(f.reason, .supermajorityUnreachable)
            XCTAssertEqual(f.totalWeight, 400)
        }
    }

    func testExactlyTwoThirdsIsNotEnough() throws {
        // 3 voters, weights 100/100/100: two "yes" hold exactly 2/3, which must not be accepted.
        let e = Electorate(3)
        let spec = try e.spec(f: 0)
        XCTAssertFalse(spec.isSupermajority(200))
        XCTAssertTrue(spec.isSupermajority(201))
        var nodes = e.instances()
        var all = flood(&nodes, try openAll(&nodes, spec, votes: [.yes, .yes, nil]))
        tickAndFlood(&nodes, 25, into: &all)
        for i in nodes.indices { XCTAssertNil(nodes[i].outcome(of: spec.id)?.acceptedResult, "node \(i)") }
        XCTAssertTrue(all[0].outcomes.allSatisfy { if case .failed = $0 { return true }; return false })
    }

    func testWeightedRoundCountsTrustNotHeads() throws {
        // Weights 300/100/100/100 (f=0 allows the heavy voter): the heavy voter and one other hold 400/600 = 2/3: not enough;
        // with a second light voter 500/600 > 2/3: accepted.
        let e = Electorate(4)
        let spec = try e.spec(weights: [300, 100, 100, 100], f: 0)
        var nodes = e.instances()
        let all = flood(&nodes, try openAll(&nodes, spec, votes: [.yes, .yes, .yes, .no]))
        XCTAssertEqual(all[3].outcomes.first?.acceptedResult, .yes)
        var nodes2 = e.instances()
        let all2 = flood(&nodes2, try openAll(&nodes2, spec, votes: [.yes, .yes, .no, .no]))
        XCTAssertNil(all2[0].outcomes.first?.acceptedResult)
    }

    func testDeadlinesAreTicksAndTheRoundFailsWhenTooFewReveal() throws {
        let e = Electorate(4)
        let spec = try e.spec(commitTicks: 5, revealTicks: 7)
        var nodes = e.instances()
        // Voter 3 never votes: the others wait out the commit deadline (5 ticks), then reveal.
        var all = flood(&nodes, try openAll(&nodes, spec, votes: [.yes, .yes, .yes, nil]))
        XCTAssertTrue(all[0].outcomes.isEmpty)
        tickAndFlood(&nodes, 4, into: &all)
        XCTAssertTrue(all[0].outcomes.isEmpty, "decided before the commit deadline")
        tickAndFlood(&nodes, 1, into: &all)
        // 300 of 400 > 2/3: accepted at the deadline.
        XCTAssertEqual(all[0].outcomes.first?.acceptedResult, .yes)
    }

    func testANodeThatFailedLocallyAdoptsTheCommittedCertificate() throws {
        let e = Electorate(4)
        let spec = try e.spec(commitTicks: 3, revealTicks: 3)
        var nodes = e.instances()
        // Node 3 hears nothing at all: it fails at its deadline while the others accept.
        var all = flood(&nodes, try openAll(&nodes, spec, votes: [.yes, .yes, .yes, .yes]), drop: { from, to, _ in from == 3 || to == 3 })
        tickAndFlood(&nodes, 6, into: &all, drop: { from, to, _ in from == 3 || to == 3 })
        guard case let .accepted(_, cert)? = nodes[0].outcome(of: spec.id) else { return XCTFail() }
        guard case .failed? = nodes[3].outcome(of: spec.id) else { return XCTFail("\(String(describing: nodes[3].outcome(of: spec.id)))") }
        XCTAssertEqual(try nodes[3].adopt(cert).outcomes.first?.acceptedResult, .yes)
        XCTAssertEqual(nodes[3].outcome(of: spec.id)?.acceptedResult, .yes)
        XCTAssertEqual(try nodes[0].adopt(cert), [], "adopting what it accepted changes nothing")
        // A certificate that does not verify (signers short of two thirds) is refused.
        let short = DecisionCertificate(round: cert.round, result: cert.result, entries: Array(cert.entries.prefix(2)))
        XCTAssertVoteError(try nodes[3].adopt(short)) { if case .invalidCertificate = $0 { return true }; return false }
    }

    func testBadInputIsRefused() throws {
        let e = Electorate(4)
        let spec = try e.spec()
        var nodes = e.instances()
        var rng = SeededRandom(seed: 1)
        _ = try nodes[0].open(spec, vote: .yes, using: &rng)
        let c = Commitment.compute(round: spec.id, voter: e.ids[1], result: .yes, salt: [UInt8](repeating: 7, count: 32))
        let good = SignedCommit.sign(round: spec.id, voter: e.ids[1], commitment: c, key: e.keys[1])

        // Unknown round.
        let other = try e.spec(sequence: 2)
        let foreign = SignedCommit.sign(round: other.id, voter: e.ids[1], commitment: c, key: e.keys[1])
        XCTAssertVoteError(try nodes[0].step(.commit(foreign))) { if case .unknownRound = $0 { return true }; return false }
        // Unsigned / forged: signed by another voter's key.
        let forged = SignedCommit.sign(round: spec.id, voter: e.ids[1], commitment: c, key: e.keys[2])
        XCTAssertVoteError(try nodes[0].step(.commit(forged))) { if case .badSignature = $0 { return true }; return false }
        let zeroSig = SignedCommit(round: spec.id, voter: e.ids[1], commitment: c, signature: [UInt8](repeating: 0, count: 64))
        XCTAssertVoteError(try nodes[0].step(.commit(zeroSig))) { if case .badSignature = $0 { return true }; return false }
        // Not a voter.
        let outsider = SigningKey(seed: [UInt8](repeating: 99, count: 32))
        let oid = NodeID(publicKey: outsider.publicKey)
        let outside = SignedCommit.sign(round: spec.id, voter: oid, commitment: c, key: outsider)
        XCTAssertVoteError(try nodes[0].step(.commit(outside))) { if case .notEligible = $0 { return true }; return false }
        // Reveal before commit.
        let reveal = SignedReveal.sign(round: spec.id, voter: e.ids[1], result: .yes, salt: [UInt8](repeating: 7, count: 32), key: e.keys[1])
        XCTAssertVoteError(try nodes[0].step(.reveal(reveal))) { if case .revealBeforeCommit = $0 { return true }; return false }
        // Malformed and oversized bytes.
        var bytes = VoteMessage.commit(good).encoded()
        XCTAssertVoteError(try nodes[0].step(bytes: Array(bytes.dropLast()))) { if case .malformed = $0 { return true }; return false }
        XCTAssertVoteError(try nodes[0].step(bytes: bytes + [0])) { if case .malformed = $0 { return true }; return false }
        bytes[3] = 9
        XCTAssertVoteError(try nodes[0].step(bytes: bytes)) { if case .malformed = $0 { return true }; return false }
        XCTAssertVoteError(try nodes[0].step(bytes: [UInt8](repeating: 0, count: VoteLimits.maxMessageBytes + 1))) {
            if case .oversized = $0 { return true }; return false
        }
        // None of that changed anything: the genuine commit is still accepted, then the reveal.
        XCTAssertNoThrow(try nodes[0].step(bytes: VoteMessage.commit(good).encoded()))
        XCTAssertNoThrow(try nodes[0].step(.reveal(reveal)))
        // A second open of the same round is refused.
        XCTAssertVoteError(try nodes[0].open(spec, vote: .yes, using: &rng)) { if case .duplicateRound = $0 { return true }; return false }
    }

    func testLateCommitAndLateRevealAreRefused() throws {
        let e = Electorate(4)
        let spec = try e.spec(commitTicks: 3, revealTicks: 3)
        var node = e.instances()[0]
        var rng = SeededRandom(seed: 1)
        _ = try node.open(spec, vote: .yes, using: &rng)
        let salt = [UInt8](repeating: 5, count: 32)
        func commit(_ v: Int) -> SignedCommit {
            SignedCommit.sign(round: spec.id, voter: e.ids[v], commitment: Commitment.compute(round: spec.id, voter: e.ids[v], result: .yes, salt: salt), key: e.keys[v])
        }
        XCTAssertNoThrow(try node.step(.commit(commit(1))))
        _ = node.tick(3)
        XCTAssertVoteError(try node.step(.commit(commit(2)))) { if case .commitPhaseClosed = $0 { return true }; return false }
        _ = node.tick(3)
        let late = SignedReveal.sign(round: spec.id, voter: e.ids[1], result: .yes, salt: salt, key: e.keys[1])
        XCTAssertVoteError(try node.step(.reveal(late))) { if case .revealPhaseClosed = $0 { return true }; return false }
        // After the retention time the round is forgotten.
        _ = node.tick(60)
        XCTAssertVoteError(try node.step(.reveal(late))) { if case .unknownRound = $0 { return true }; return false }
    }

    func testEquivocationIsCaughtDirectlyAndThroughSummaries() throws {
        let e = Electorate(4)
        let spec = try e.spec()
        var nodes = e.instances()
        var rng = SeededRandom(seed: 3)
        var initial: [(from: Int, effects: [VoteEffect])] = []
        for i in 0..<3 { initial.append((i, try nodes[i].open(spec, vote: .yes, using: &rng))) }
        // Voter 3 (Byzantine) commits "yes" to node 0 and "no" to nodes 1 and 2.
        let s1 = [UInt8](repeating: 1, count: 32), s2 = [UInt8](repeating: 2, count: 32)
        let c1 = SignedCommit.sign(round: spec.id, voter: e.ids[3], commitment: Commitment.compute(round: spec.id, voter: e.ids[3], result: .yes, salt: s1), key: e.keys[3])
        let c2 = SignedCommit.sign(round: spec.id, voter: e.ids[3], commitment: Commitment.compute(round: spec.id, voter: e.ids[3], result: .no, salt: s2), key: e.keys[3])
        var extra: [(from: Int, effects: [VoteEffect])] = []
        extra.append((0, try nodes[0].step(.commit(c1))))
        extra.append((1, try nodes[1].step(.commit(c2))))
        extra.append((2, try nodes[2].step(.commit(c2))))
        var all = flood(&nodes, initial + extra, drop: { _, to, _ in to == 3 })
        // Voter 3 never reveals, so the summaries go out at the reveal deadline.
        tickAndFlood(&nodes, 20, into: &all, only: [0, 1, 2], drop: { _, to, _ in to == 3 })
        // The honest three accept "yes" (300/400) and, through each other's summaries, prove the equivocation.
        for i in 0..<3 {
            XCTAssertEqual(all[i].outcomes.first?.acceptedResult, .yes, "node \(i)")
            let ev = all[i].evidence.filter { $0.offence == .equivocation }
            XCTAssertEqual(ev.count, 1, "node \(i) evidence: \(all[i].evidence)")
            XCTAssertEqual(ev.first?.accused, e.ids[3])
            XCTAssertNoThrow(try ev.first?.verify(spec: spec))
        }
        // Directly: the same node shown both commits.
        var fresh = e.instances()
        _ = try fresh[0].open(spec, vote: .yes, using: &rng)
        _ = try fresh[0].step(.commit(c1))
        let direct = try fresh[0].step(.commit(c2))
        XCTAssertEqual(direct.evidence, [Evidence.equivocating(c1, c2)])
        XCTAssertEqual(try fresh[0].step(.commit(c1)).evidence, [], "reported once")
    }

    func testCopiedCommitmentCannotBeOpenedAndBecomesEvidence() throws {
        let e = Electorate(4)
        let spec = try e.spec()
        var node = e.instances()[0]
        var rng = SeededRandom(seed: 4)
        let effects = try node.open(spec, vote: .yes, using: &rng)
        guard case let .commit(mine)? = effects.broadcasts.first else { return XCTFail() }
        // Voter 3 re-signs node 0's commitment as its own...
        let copy = SignedCommit.sign(round: spec.id, voter: e.ids[3], commitment: mine.commitment, key: e.keys[3])
        _ = try node.step(.commit(copy))
        // ...and after node 0 reveals, "reveals" node 0's result and salt. It cannot open under its own ID.
        guard case let .persist(own)? = effects.first else { return XCTFail() }
        let fake = SignedReveal.sign(round: spec.id, voter: e.ids[3], result: own.result, salt: own.salt, key: e.keys[3])
        let out = try node.step(.reveal(fake))
        XCTAssertEqual(out.evidence, [.badReveal(copy, fake)])
        XCTAssertNoThrow(try Evidence.badReveal(copy, fake).verify(spec: spec))
    }

    func testWithheldRevealIsProvenBySummaries() throws {
        let e = Electorate(4)
        let spec = try e.spec(commitTicks: 2, revealTicks: 2)
        var nodes = e.instances()
        var rng = SeededRandom(seed: 5)
        var initial: [(from: Int, effects: [VoteEffect])] = []
        for i in 0..<4 { initial.append((i, try nodes[i].open(spec, vote: .yes, using: &rng))) }
        // Voter 3 commits (its commit reaches everyone) but nothing it sends afterwards is delivered.
        var all = flood(&nodes, initial, drop: { from, _, m in
            if from == 3, case .commit = m { return false }
            return from == 3
        })
        tickAndFlood(&nodes, 4, into: &all, only: [0, 1, 2], drop: { from, to, _ in from == 3 || to == 3 })
        for i in 0..<3 {
            XCTAssertEqual(all[i].outcomes.first?.acceptedResult, .yes)
            let w = all[i].evidence.filter { $0.offence == .withheldReveal }
            XCTAssertEqual(w.map(\.accused), [e.ids[3]], "node \(i): \(all[i].evidence)")
            XCTAssertNoThrow(try w.first?.verify(spec: spec))
        }
    }

    func testWrongResultInAVerifiableRound() throws {
        let e = Electorate(4)
        let spec = try e.spec(verifiable: true)
        var nodes = e.instances()
        let truth = try VoteResult([0xAB, 0xCD])
        let all = flood(&nodes, try openAll(&nodes, spec, votes: [truth, truth, truth, .no]))
        let ev = all[0].evidence
        XCTAssertEqual(ev.map(\.offence), [.wrongResult])
        XCTAssertEqual(ev.first?.accused, e.ids[3])
        XCTAssertNoThrow(try ev.first?.verify(spec: spec))
        // The same disagreement in a round without a verifiable truth is not an offence.
        let plain = try e.spec(sequence: 2)
        var nodes2 = e.instances()
        let all2 = flood(&nodes2, try openAll(&nodes2, plain, votes: [truth, truth, truth, .no]))
        XCTAssertEqual(all2[0].evidence, [])
        if case let .wrongResult(c, r, cert)? = ev.first {
            XCTAssertVoteError(try Evidence.wrongResult(c, r, cert).verify(spec: plain)) { if case .invalidEvidence = $0 { return true }; return false }
        }
    }

    func testRestartReusesThePersistedCommitmentInsteadOfEquivocating() throws {
        let e = Electorate(4)
        let spec = try e.spec()
        var a = e.instances()[0]
        var rng = SeededRandom(seed: 6)
        let first = try a.open(spec, vote: .yes, using: &rng)
        guard case let .persist(own)? = first.first, case let .broadcast(.commit(c1))? = first.dropFirst().first else {
            return XCTFail("persist must come before the broadcast: \(first)")
        }
        var restarted = VoteInstance(key: e.keys[0])
        let again = try restarted.open(spec, vote: .no, restoring: own, using: &rng)
        XCTAssertEqual(again.broadcasts.first, .commit(c1))
        XCTAssertFalse(again.contains { if case .persist = $0 { return true }; return false })
    }

    func testForgedEvidenceIsRefused() throws {
        let e = Electorate(4)
        let spec = try e.spec()
        let s = [UInt8](repeating: 1, count: 32)
        func commit(_ v: Int, _ r: VoteResult, key: Int? = nil) -> SignedCommit {
            SignedCommit.sign(round: spec.id, voter: e.ids[v], commitment: Commitment.compute(round: spec.id, voter: e.ids[v], result: r, salt: s), key: e.keys[key ?? v])
        }
        // Two commits of different voters are not equivocation.
        XCTAssertVoteError(try Evidence.equivocating(commit(1, .yes), commit(2, .no)).verify(spec: spec)) { if case .invalidEvidence = $0 { return true }; return false }
        // A commitment the accused did not sign frames nobody.
        XCTAssertVoteError(try Evidence.equivocating(commit(1, .yes), commit(1, .no, key: 2)).verify(spec: spec)) { if case .invalidEvidence = $0 { return true }; return false }
        // A matching reveal is not a bad reveal.
        let good = SignedReveal.sign(round: spec.id, voter: e.ids[1], result: .yes, salt: s, key: e.keys[1])
        XCTAssertVoteError(try Evidence.badReveal(commit(1, .yes), good).verify(spec: spec)) { if case .invalidEvidence = $0 { return true }; return false }
        // Withholding needs attesters holding more than two thirds.
        let summaries = (0..<2).map { i in
            RoundSummary.sign(round: spec.id, attester: e.ids[i], revealed: [true, false, true, true], commitments: [nil, nil, nil, nil], key: e.keys[i]).attestation
        }
        XCTAssertVoteError(try Evidence.withholding(commit(1, .yes), attestations: summaries).verify(spec: spec)) { if case .invalidEvidence = $0 { return true }; return false }
        // Evidence is only checked against the round it names.
        let other = try e.spec(sequence: 7)
        XCTAssertVoteError(try Evidence.equivocating(commit(1, .yes), commit(1, .no)).verify(spec: other)) { if case .invalidEvidence = $0 { return true }; return false }
        XCTAssertNoThrow(try Evidence.equivocating(commit(1, .yes), commit(1, .no)).verify(spec: spec))
    }
}
