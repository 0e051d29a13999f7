import MyceliumCore
import MyceliumIdentity
import MyceliumVote
import XCTest
@testable import MyceliumSpores

/// The spore's side of the Byzantine-tolerant vote: rounds opened by committed commands, decided
/// only by a verified certificate, evidence slashing trust, and the rules that make failure records
/// and new sclerotia depend on a vote whenever one can be formed.
final class VoteSporeTests: XCTestCase {
    /// Runs a round among real vote instances (in memory, every message delivered) and returns the
    /// first certificate, or nil when the round fails.
    func runRound(_ spec: RoundSpec, _ w: SporeWorld, answers: [NodeID: VoteResult?]) throws -> DecisionCertificate? {
        var rng = SeededRandom(seed: 7)
        var instances: [NodeID: VoteInstance] = [:]
        var queue: [VoteMessage] = []
        var certificate: DecisionCertificate?
        func take(_ effects: [VoteEffect]) {
            for e in effects {
                switch e {
                case .broadcast(let m), .send(_, let m): queue.append(m)
                case let .decided(_, .accepted(_, c)): certificate = certificate ?? c
                default: break
                }
            }
        }
        for v in spec.voters {
            let i = w.ids.firstIndex(of: v.id)!
            var inst = VoteInstance(key: w.keys[i])
            take(try inst.open(spec, vote: answers[v.id] ?? nil, using: &rng))
            instances[v.id] = inst
        }
        for _ in 0..<200 where certificate == nil {
            while !queue.isEmpty {
                let m = queue.removeFirst()
                for id in instances.keys.sorted() where id != m.sender { take((try? instances[id]!.step(m)) ?? []) }
            }
            for id in instances.keys.sorted() { take(instances[id]!.tick()) }
        }
        return certificate
    }

    func distributed(_ n: Int) throws -> SporeWorld {
        var w = SporeWorld(members: n)
        try w.handOff(to: [0, 1, 2])
        return w
    }

    func testAFailureIsRecordedOnlyWithACertificateDespiteOneLiar() throws {
        var w = try distributed(5)
        let victim = w.ids[4]
        XCTAssertNil(w.spore.voteUnavailable(.failure, node: victim), "5 founders: 4 voters besides the victim")
        XCTAssertThrowsError(try w.apply(.setStatus(node: victim, .failed), by: 0), "no failure on a governor's word") { e in
            guard case .notAuthorized = (e as! SporeError).code else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try w.apply(.openVote(.failure, node: victim, commitTicks: 5, revealTicks: 5), by: 3), "only governors open votes")
        try w.apply(.openVote(.failure, node: victim, commitTicks: 5, revealTicks: 5), by: 0)
        let round = try XCTUnwrap(w.spore.rounds[1])
        XCTAssertEqual(round.spec.voters.count, 4)
        XCTAssertEqual(round.spec.assumedFaults, 1)
        XCTAssertNil(round.spec.index(of: victim), "the subject never votes on itself")
        XCTAssertThrowsError(try w.apply(.openVote(.failure, node: victim, commitTicks: 5, revealTicks: 5), by: 0), "one open round per question")

        // Three honest "yes" and one liar's "no": 3 of 4 equal weights is more than two thirds.
        var answers: [NodeID: VoteResult?] = [:]
        for id in w.ids[0..<3] { answers[id] = .yes }
        answers[w.ids[3]] = .no
        let cert = try XCTUnwrap(try runRound(round.spec, w, answers: answers))
        XCTAssertEqual(cert.result, .yes)
        let before = w.spore.trust.score(of: w.ids[0])

        // A certificate of another round (same voters, other sequence) is refused.
        let other = try w.spore.roundSpec(.failure, node: victim, sequence: 99, commitTicks: 5, revealTicks: 5)
        let foreign = try XCTUnwrap(try runRound(other, w, answers: answers))
        XCTAssertThrowsError(try w.apply(.decideVote(sequence: 1, certificate: foreign.encoded()), by: 2))
        XCTAssertEqual(w.spore.members[victim]?.status, .alive)

        try w.apply(.decideVote(sequence: 1, certificate: cert.encoded()), by: 2)
        XCTAssertEqual(w.spore.members[victim]?.status, .failed)
        XCTAssertEqual(w.spore.rounds[1]?.decision, .yes)
        XCTAssertGreaterThan(w.spore.trust.score(of: w.ids[0]), before, "correct voters earn trust")
        XCTAssertThrowsError(try w.apply(.decideVote(sequence: 1, certificate: cert.encoded()), by: 1), "decided once")

        // The state, rounds and trust included, survives its own encoding (snapshots, seed spores).
        XCTAssertEqual(try PrimarySpore(decoding: w.spore.encoded()), w.spore)
    }

    func testALiarsAccusationVotedDownChangesNothing() throws {
        var w = try distributed(5)
        let accused = w.ids[1]
        try w.apply(.openVote(.failure, node: accused, commitTicks: 5, revealTicks: 5), by: 0)
        var answers: [NodeID: VoteResult?] = [:]
        for id in w.ids where id != accused { answers[id] = .no }
        answers[w.ids[4]] = .yes  // the liar
        let cert = try XCTUnwrap(try runRound(w.spore.rounds[1]!.spec, w, answers: answers))
        try w.apply(.decideVote(sequence: 1, certificate: cert.encoded()), by: 4)
        XCTAssertEqual(w.spore.members[accused]?.status, .alive)
        XCTAssertEqual(w.spore.rounds[1]?.decision, .no)
    }

    func testATooSmallNetworkFallsBackToTheGovernorsJudgement() throws {
        var w = try distributed(3)
        XCTAssertNotNil(w.spore.voteUnavailable(.failure, node: w.ids[2]))
        XCTAssertThrowsError(try w.apply(.openVote(.failure, node: w.ids[2], commitTicks: 5, revealTicks: 5), by: 0))
        try w.apply(.setStatus(node: w.ids[2], .failed), by: 0)
        XCTAssertEqual(w.spore.members[w.ids[2]]?.status, .failed)
    }

    func testLateJoinersStartWithLowTrustAndCannotVoteOnFailures() throws {
        var w = try distributed(3)
        for _ in 0..<3 { try w.join() }
        XCTAssertEqual(w.spore.trust.score(of: w.ids[5]), TrustParameters().initial)
        XCTAssertEqual(w.spore.trust.score(of: w.ids[0]), SporeLimits().founderTrust)
        // Three founders (two besides the subject) and three newcomers below the threshold: no vote.
        XCTAssertNotNil(w.spore.voteUnavailable(.failure, node: w.ids[0]))
    }

    func testEquivocationEvidenceSlashesOnceJailsAndRevokes() throws {
        var w = try distributed(5)
        try w.apply(.openVote(.failure, node: w.ids[4], commitTicks: 5, revealTicks: 5), by: 0)
        let spec = w.spore.rounds[1]!.spec
        let liar = w.ids[3], key = w.keys[3]
        let a = SignedCommit.sign(round: spec.id, voter: liar, commitment: Commitment.compute(round: spec.id, voter: liar, result: .yes, salt: [UInt8](repeating: 1, count: 32)), key: key)
        let b = SignedCommit.sign(round: spec.id, voter: liar, commitment: Commitment.compute(round: spec.id, voter: liar, result: .no, salt: [UInt8](repeating: 2, count: 32)), key: key)
        let evidence = Evidence.equivocating(a, b)
        let before = w.spore.trust.score(of: liar)
        try w.apply(.voteEvidence(sequence: 1, evidence: evidence.encoded()), by: 0)
        XCTAssertEqual(w.spore.trust.score(of: liar), before / 4)
        XCTAssertTrue(w.spore.trust.isJailed(liar))
        // Proven equivocation is deliberate: the network revokes the liar as well.
        XCTAssertTrue(w.spore.revokedIDs.contains(liar))
        XCTAssertEqual(w.spore.members[liar]?.status, .failed)
        XCTAssertThrowsError(try w.apply(.voteEvidence(sequence: 1, evidence: evidence.encoded()), by: 1), "slashed once")
        XCTAssertThrowsError(try w.apply(.voteEvidence(sequence: 7, evidence: evidence.encoded()), by: 1), "unknown round")
        var garbage = evidence.encoded(); garbage[garbage.count - 3] ^= 0xff
        XCTAssertThrowsError(try w.apply(.voteEvidence(sequence: 1, evidence: garbage), by: 1), "a forged signature proves nothing")
        XCTAssertEqual(try PrimarySpore(decoding: w.spore.encoded()), w.spore)
    }

    func testANewSclerotiumNeedsAnAdmissionVoteAfterTheHandoff() throws {
        var w = try distributed(6)
        let candidate = w.ids[3]
        XCTAssertThrowsError(try w.apply(.setSclerotia([w.ids[0], w.ids[1], candidate]), by: 0)) { e in
            guard case .notAuthorized = (e as! SporeError).code else { return XCTFail("\(e)") }
        }
        try w.apply(.openVote(.sclerotium, node: candidate, commitTicks: 5, revealTicks: 5), by: 0)
        let spec = w.spore.rounds[1]!.spec
        var answers: [NodeID: VoteResult?] = [:]
        for v in spec.voters { answers[v.id] = .yes }
        answers[w.ids[5]] = .no  // one liar
        let cert = try XCTUnwrap(try runRound(spec, w, answers: answers))
        try w.apply(.decideVote(sequence: 1, certificate: cert.encoded()), by: 1)
        XCTAssertTrue(w.spore.approvedSclerotia.contains(candidate))
        try w.apply(.setSclerotia([w.ids[0], w.ids[1], candidate]), by: 0)
        XCTAssertEqual(Set(w.spore.sclerotia), Set([w.ids[0], w.ids[1], candidate]))
    }

    func testVoteCommandsRefuseGarbage() {
        for bytes: [UInt8] in [[12], [12, 9] + [UInt8](repeating: 0, count: 24), [13, 0, 0], [15]] {
            XCTAssertThrowsError(try SporeCommand(decoding: bytes))
        }
    }
}
