// Evidence: self-authenticating proof that a voter misbehaved, built only from things the accused
// (or a supermajority of attesters) signed. Like CometBFT's DuplicateVoteEvidence it carries no
// signature of the reporter: who reports it does not matter, only that it verifies. It is committed
// through Raft so every node applies the same slashing, in the same order.

import MyceliumCore
import MyceliumIdentity

/// The kinds of misbehaviour the vote can prove.
public enum Offence: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Two different signed commitments for one round.
    case equivocation = 1
    /// A signed reveal that does not open the voter's signed commitment.
    case badReveal = 2
    /// Committed, then did not reveal: voters holding more than two thirds of the weight attest that
    /// they hold no reveal from the accused when the round closed (the last-revealer attack).
    case withheldReveal = 3
    /// In a round with a verifiable truth, revealed something other than the accepted result.
    case wrongResult = 4

    public var description: String {
        switch self {
        case .equivocation: return "equivocation"
        case .badReveal: return "bad-reveal"
        case .withheldReveal: return "withheld-reveal"
        case .wrongResult: return "wrong-result"
        }
    }
}

/// One offence by one voter in one round. The trust ledger slashes each key at most once, however
/// many different proofs of it arrive (different attester subsets give different bytes).
public struct OffenceKey: Hashable, Sendable, Comparable {
    public let accused: NodeID
    public let round: RoundID
    public let offence: Offence
    /// For the simulator's expectations (MyceliumSim.VoteSimulation).
    @_spi(Simulation) public init(accused: NodeID, round: RoundID, offence: Offence) {
        self.accused = accused; self.round = round; self.offence = offence
    }
    public static func < (a: OffenceKey, b: OffenceKey) -> Bool {
        if a.accused != b.accused { return a.accused < b.accused }
        if a.round != b.round { return a.round < b.round }
        return a.offence.rawValue < b.offence.rawValue
    }
}

/// A verifiable proof of one offence.
public enum Evidence: Hashable, Sendable, CustomStringConvertible {
    /// Two signed commits by one voter for one round with different commitments (the smaller commitment first).
    case equivocation(SignedCommit, SignedCommit)
    /// The voter's signed commit and its signed reveal that does not open it.
    case badReveal(SignedCommit, SignedReveal)
    /// The voter's signed commit and attestations (sorted by attester) from more than two thirds of
    /// the weight, none of which holds the voter's reveal.
    case withheldReveal(SignedCommit, [SummaryAttestation])
    /// The voter's signed commit and matching reveal of one result, and a certificate for another.
    case wrongResult(SignedCommit, SignedReveal, DecisionCertificate)

    /// Builds equivocation evidence in its canonical order.
    public static func equivocating(_ a: SignedCommit, _ b: SignedCommit) -> Evidence {
        a.commitment.lexicographicallyPrecedes(b.commitment) ? .equivocation(a, b) : .equivocation(b, a)
    }

    /// Builds withholding evidence in its canonical order.
    public static func withholding(_ commit: SignedCommit, attestations: [SummaryAttestation]) -> Evidence {
        .withheldReveal(commit, attestations.sorted { $0.attester < $1.attester })
    }

    public var offence: Offence {
        switch self {
        case .equivocation: return .equivocation
        case .badReveal: return .badReveal
        case .withheldReveal: return .withheldReveal
        case .wrongResult: return .wrongResult
        }
    }

    /// The first signed commit in the proof always belongs to the accused.
    var accusedCommit: SignedCommit {
        switch self {
        case let .equivocation(a, _), let .badReveal(a, _), let .withheldReveal(a, _), let .wrongResult(a, _, _): return a
        }
    }

    public var accused: NodeID { accusedCommit.voter }
    public var round: RoundID { accusedCommit.round }
    public var key: OffenceKey { OffenceKey(accused: accused, round: round, offence: offence) }
    public var description: String { "\(offence) by \(accused) in \(round)" }

    /// Verifies the proof against the round it names. `spec` must come from this node's own record of
    /// opened rounds (the primary spore), never from the evidence's sender: keys and weights are
    /// trusted only from there. Throws with the reason when the proof does not hold.
    public func verify(spec: RoundSpec) throws(VoteError) {
        func fail(_ reason: String) -> VoteError { VoteError(.invalidEvidence(reason: "\(offence): \(reason)")) }
        let commit = accusedCommit
        guard commit.round == spec.id else { throw fail("names \(commit.round), not \(spec.id)") }
        guard let index = spec.index(of: commit.voter) else { throw fail("\(commit.voter) is not a voter of the round") }
        let voter = spec.voters[index]
        guard commit.verify(key: voter.key) else { throw fail("the accused's commitment signature does not verify") }

        switch self {
        case let .equivocation(a, b):
            guard b.round == a.round, b.voter == a.voter else { throw fail("the two commits are not from one voter in one round") }
            guard a.commitment.lexicographicallyPrecedes(b.commitment) else {
                throw fail("commitments are equal or not in canonical order")
            }
            guard b.verify(key: voter.key) else { throw fail("the second commitment signature does not verify") }

        case let .badReveal(c, r):
            guard r.round == c.round, r.voter == c.voter else { throw fail("reveal and commit are from different voters or rounds") }
            guard r.verify(key: voter.key) else { throw fail("the reveal signature does not verify") }
            guard !r.opens(c) else { throw fail("the reveal does open the commitment") }

        case let .withheldReveal(_, attestations):
            var power: UInt64 = 0
            var previous: NodeID?
            for a in attestations {
                if let p = previous, !(p < a.attester) { throw fail("attestations not sorted by attester or duplicated") }
                previous = a.attester
                guard a.round == spec.id else { throw fail("attestation for another round") }
                guard let ai = spec.index(of: a.attester) else { throw fail("attester \(a.attester) is not a voter") }
                guard Int(a.voterCount) == spec.voters.count, a.revealed.count == (spec.voters.count + 7) / 8 else {
                    throw fail("attestation bitmap has the wrong size")
                }
                guard !a.hasReveal(from: index) else { throw fail("\(a.attester) holds the accused's reveal") }
                guard a.verify(key: spec.voters[ai].key) else { throw fail("attestation by \(a.attester) does not verify") }
                power += spec.voters[ai].weight
            }
            guard spec.isSupermajority(power) else {
                throw fail("attesters hold \(power) of \(spec.totalWeight) weight; need more than two thirds")
            }

        case let .wrongResult(c, r, certificate):
            guard spec.verifiableTruth else { throw fail("the round has no verifiable truth, so disagreeing is not an offence") }
            guard r.round == c.round, r.voter == c.voter, r.opens(c) else { throw fail("the reveal does not open the accused's commitment") }
            guard r.verify(key: voter.key) else { throw fail("the reveal signature does not verify") }
            guard r.result != certificate.result else { throw fail("the accused revealed the accepted result") }
            try certificate.verify(spec: spec)
        }
    }

    static let magic: [UInt8] = Array("MYVE".utf8)
    static let version: UInt8 = 1

    /// Deterministic bytes, for committing through Raft.
    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 512)
        w.raw(Self.magic); w.u8(Self.version); w.u8(offence.rawValue)
        switch self {
        case let .equivocation(a, b): a.write(to: &w); b.write(to: &w)
        case let .badReveal(c, r): c.write(to: &w); r.write(to: &w)
        case let .withheldReveal(c, attestations):
            c.write(to: &w)
            w.u16(UInt16(attestations.count))
            for a in attestations { a.write(to: &w) }
        case let .wrongResult(c, r, certificate): c.write(to: &w); r.write(to: &w); certificate.write(to: &w)
        }
        return w.bytes
    }

    /// Decodes evidence, refusing non-canonical forms so one proof has exactly one encoding.
    /// Signatures are checked by `verify(spec:)`, not here.
    public init(decoding bytes: [UInt8]) throws(VoteError) {
        guard bytes.count <= VoteLimits.maxEvidenceBytes else {
            throw VoteError(.oversized(bytes: bytes.count, limit: VoteLimits.maxEvidenceBytes))
        }
        do {
            var r = ByteReader(bytes)
            guard try r.raw(4) == Self.magic else { throw DecodeError(.badMagic, at: 0) }
            let v = try r.u8()
            if v != Self.version { throw DecodeError(.unknownVersion(field: "evidence version", value: UInt64(v)), at: 4) }
            let tag = try r.u8()
            switch Offence(rawValue: tag) {
            case .equivocation?:
                let a = try SignedCommit.read(from: &r), b = try SignedCommit.read(from: &r)
                guard a.commitment.lexicographicallyPrecedes(b.commitment) else {
                    throw DecodeError(.invalid(field: "equivocation", reason: "commitments equal or out of order"), at: 6)
                }
                self = .equivocation(a, b)
            case .badReveal?:
                self = .badReveal(try SignedCommit.read(from: &r), try SignedReveal.read(from: &r))
            case .withheldReveal?:
                let c = try SignedCommit.read(from: &r)
                let n = try r.count("attestations", limit: VoteLimits.maxVoters)
                var list: [SummaryAttestation] = []
                list.reserveCapacity(n)
                for _ in 0..<n {
                    let at = r.offset
                    let a = try SummaryAttestation.read(from: &r)
                    if let p = list.last, !(p.attester < a.attester) {
                        throw DecodeError(.invalid(field: "attestations", reason: "not sorted by attester"), at: at)
                    }
                    list.append(a)
                }
                self = .withheldReveal(c, list)
            case .wrongResult?:
                self = .wrongResult(try SignedCommit.read(from: &r), try SignedReveal.read(from: &r),
                                    try DecisionCertificate.read(from: &r))
            case nil:
                throw DecodeError(.unknownVersion(field: "offence", value: UInt64(tag)), at: 5)
            }
            try r.finish()
        } catch let e as DecodeError {
            throw VoteError(.malformed(what: "evidence", e))
        } catch let e as VoteError {
            throw e
        } catch {
            throw VoteError(.malformed(what: "evidence", DecodeError(.invalid(field: "evidence", reason: "\(error)"), at: 0)))
        }
    }
}
