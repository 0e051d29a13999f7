import MyceliumCore
import MyceliumIdentity

/// A self-contained proof that a round accepted `result`: for voters holding more than two thirds of
/// the round's weight, the salt that opens their commitment to `result` and their signature on that
/// commitment.
///
/// The commitment is recomputed from (round, voter, result, salt), so a valid entry proves the
/// voter signed a commitment to exactly this result. Any node holding the round's specification can
/// verify a certificate without trusting whoever sent it; this is what the node agent commits
/// through Raft before acting on a confirmed failure or an admission.
public struct DecisionCertificate: Hashable, Sendable {
    public struct Entry: Hashable, Sendable {
        public let voterIndex: UInt16
        public let salt: [UInt8]
        public let commitSignature: [UInt8]
        public init(voterIndex: UInt16, salt: [UInt8], commitSignature: [UInt8]) {
            self.voterIndex = voterIndex; self.salt = salt; self.commitSignature = commitSignature
        }
    }

    public let round: RoundID
    public let result: VoteResult
    /// Strictly increasing voter indices.
    public let entries: [Entry]

    public init(round: RoundID, result: VoteResult, entries: [Entry]) {
        self.round = round
        self.result = result
        self.entries = entries.sorted { $0.voterIndex < $1.voterIndex }
    }

    /// Verifies every entry against `spec` and that the signers hold a supermajority.
    /// Costs one signature verification per entry.
    public func verify(spec: RoundSpec) throws(VoteError) {
        guard round == spec.id else { throw VoteError(.invalidCertificate(reason: "certificate is for \(round), not \(spec.id)")) }
        var power: UInt64 = 0
        var last = -1
        for e in entries {
            let i = Int(e.voterIndex)
            guard i > last, i < spec.voters.count else {
                throw VoteError(.invalidCertificate(reason: "voter index \(i) out of order or out of range"))
            }
            last = i
            let voter = spec.voters[i]
            let c = Commitment.compute(round: round, voter: voter.id, result: result, salt: e.salt)
            guard SignedCommit(round: round, voter: voter.id, commitment: c, signature: e.commitSignature).verify(key: voter.key) else {
                throw VoteError(.invalidCertificate(reason: "entry for \(voter.id) does not carry its signed commitment to \(result)"))
            }
            power += voter.weight
        }
        guard spec.isSupermajority(power) else {
            throw VoteError(.invalidCertificate(reason: "signers hold \(power) of \(spec.totalWeight) weight; need more than two thirds"))
        }
    }

    static let magic: [UInt8] = Array("MYVD".utf8)
    static let version: UInt8 = 1

    func write(to w: inout ByteWriter) {
        w.raw(round.bytes); w.u8(UInt8(result.bytes.count)); w.raw(result.bytes)
        w.u16(UInt16(entries.count))
        for e in entries { w.u16(e.voterIndex); w.raw(e.salt); w.raw(e.commitSignature) }
    }

    static func read(from r: inout ByteReader) throws -> DecisionCertificate {
        let round = RoundID(unchecked: try r.raw(32))
        let at = r.offset
        let n = Int(try r.u8())
        if n > VoteLimits.maxResultBytes { throw DecodeError(.tooLong(field: "result", length: n, limit: VoteLimits.maxResultBytes), at: at) }
        let result = VoteResult(unchecked: try r.raw(n))
        let count = try r.count("certificate entries", limit: VoteLimits.maxVoters)
        var entries: [Entry] = []
        entries.reserveCapacity(count)
        for _ in 0..<count {
            let at = r.offset
            let i = try r.u16()
            // Canonical: strictly increasing, so one certificate has exactly one encoding.
            if let prev = entries.last, prev.voterIndex >= i {
                throw DecodeError(.invalid(field: "certificate entry", reason: "voter indices must strictly increase"), at: at)
            }
            entries.append(Entry(voterIndex: i, salt: try r.raw(32), commitSignature: try r.raw(64)))
        }
        return DecisionCertificate(round: round, result: result, entries: entries)
    }

    /// Deterministic bytes.
    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 48 + entries.count * 98)
        w.raw(Self.magic); w.u8(Self.version)
        write(to: &w)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(VoteError) {
        guard bytes.count <= VoteLimits.maxEvidenceBytes else {
            throw VoteError(.oversized(bytes: bytes.count, limit: VoteLimits.maxEvidenceBytes))
        }
        do {
            var r = ByteReader(bytes)
            guard try r.raw(4) == Self.magic else { throw DecodeError(.badMagic, at: 0) }
            let v = try r.u8()
            if v != Self.version { throw DecodeError(.unknownVersion(field: "certificate version", value: UInt64(v)), at: 4) }
            self = try Self.read(from: &r)
            try r.finish()
        } catch let e as DecodeError {
            throw VoteError(.malformed(what: "decision certificate", e))
        } catch let e as VoteError {
            throw e
        } catch {
            throw VoteError(.malformed(what: "decision certificate", DecodeError(.invalid(field: "certificate", reason: "\(error)"), at: 0)))
        }
    }
}
