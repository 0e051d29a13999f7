// Deterministic bytes for a trust ledger, so it can live in the primary spore (and its snapshots and
// seed spores) and every replica holds bit-identical trust.

import MyceliumCore
import MyceliumIdentity

extension TrustLedger {
    /// At most this many members and remembered rounds/offences are decoded.
    public static let maxEncodedRecords = 4096

    /// Records sorted by node, offences and credited rounds sorted: equal ledgers give equal bytes.
    /// The parameters are not encoded; they are the network's constants.
    public func encode(into w: inout ByteWriter) {
        w.u64(epoch)
        w.u16(UInt16(records.count))
        for (id, r) in records.sorted(by: { $0.key < $1.key }) {
            w.raw(id.bytes); w.u64(r.score); w.u64(r.admittedAtEpoch); w.u64(r.jailedUntil); w.u64(r.offences)
        }
        w.u16(UInt16(slashed.count))
        for k in slashed.sorted() { w.raw(k.accused.bytes); w.raw(k.round.bytes); w.u8(k.offence.rawValue) }
        w.u16(UInt16(credited.count))
        for r in credited.sorted() { w.raw(r.bytes) }
    }

    /// Bounds-checked; a score above the maximum or an unknown offence is refused.
    public init(from r: inout ByteReader, parameters: TrustParameters = TrustParameters()) throws {
        self.init(parameters: parameters)
        epoch = try r.u64()
        let n = try r.count("trust records", limit: Self.maxEncodedRecords)
        for _ in 0..<n {
            let id = try NodeID(bytes: r.raw(NodeID.byteCount))
            let at = r.offset
            let score = try r.u64()
            guard score <= parameters.maximum else {
                throw DecodeError(.invalid(field: "trust score", reason: "\(score) above \(parameters.maximum)"), at: at)
            }
            var rec = TrustRecord(score: score, admittedAtEpoch: try r.u64())
            rec.jailedUntil = try r.u64(); rec.offences = try r.u64()
            guard records.updateValue(rec, forKey: id) == nil else {
                throw DecodeError(.invalid(field: "trust records", reason: "\(id) listed twice"), at: at)
            }
        }
        let ns = try r.count("slashed offences", limit: Self.maxEncodedRecords)
        for _ in 0..<ns {
            let accused = try NodeID(bytes: r.raw(NodeID.byteCount))
            let round = try RoundID(bytes: r.raw(VoteLimits.hashBytes))
            let at = r.offset
            guard let o = Offence(rawValue: try r.u8()) else { throw DecodeError(.invalid(field: "offence", reason: "unknown"), at: at) }
            slashed.insert(OffenceKey(accused: accused, round: round, offence: o))
        }
        let nc = try r.count("credited rounds", limit: Self.maxEncodedRecords)
        for _ in 0..<nc { credited.insert(try RoundID(bytes: r.raw(VoteLimits.hashBytes))) }
    }

    /// Forgets credit and slashing marks of rounds no longer held: evidence or a certificate for a
    /// forgotten round can no longer be verified (its specification is gone), so nothing is applied twice.
    public mutating func forgetRounds(except kept: Set<RoundID>) {
        slashed = slashed.filter { kept.contains($0.round) }
        credited = credited.filter { kept.contains($0) }
    }
}

extension OwnVote {
    /// Bytes an agent writes (checksummed, fsync'd) before it sends its commitment, so after a crash
    /// it reveals the same vote instead of committing a second, equivocating one.
    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 256)
        w.raw(round.bytes); w.blob(result.bytes); w.blob(salt); commit.write(to: &w)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(VoteError) {
        do {
            var r = ByteReader(bytes)
            let round = try RoundID(bytes: r.raw(VoteLimits.hashBytes))
            let result = try VoteResult(r.blob("result", limit: VoteLimits.maxResultBytes))
            let salt = try r.blob("salt", limit: VoteLimits.saltBytes)
            let commit = try SignedCommit.read(from: &r)
            try r.finish()
            guard commit.round == round, Commitment.opens(commit.commitment, round: round, voter: commit.voter, result: result, salt: salt) else {
                throw VoteError(.malformed(what: "own vote", DecodeError(.invalid(field: "commitment", reason: "does not open"), at: 0)))
            }
            self.init(round: round, result: result, salt: salt, commit: commit)
        } catch let e as VoteError {
            throw e
        } catch let e as DecodeError {
            throw VoteError(.malformed(what: "own vote", e))
        } catch {
            throw VoteError(.malformed(what: "own vote", DecodeError(.invalid(field: "own vote", reason: "\(error)"), at: 0)))
        }
    }
}
