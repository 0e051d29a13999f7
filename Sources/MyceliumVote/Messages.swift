// The three messages of a round: commit, reveal, and the end-of-round summary. Each is signed by
// its sender over a domain-separated, fixed-layout encoding, so "what was signed" is never ambiguous.

import MyceliumCore
import MyceliumIdentity

/// The commitment hash H(round ‖ voter ‖ result ‖ salt).
///
/// Binding the voter ID in means a copied commitment is useless to the copier: to open it they
/// would have to reveal a (result, salt) that hashes to it under *their own* ID, which needs a
/// BLAKE2b second preimage. The result is length-prefixed, so no two (result, salt) pairs share an encoding.
public enum Commitment {
    public static func compute(round: RoundID, voter: NodeID, result: VoteResult, salt: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: 32 + 16 + 4 + result.bytes.count + salt.count)
        w.raw(round.bytes); w.raw(voter.bytes); w.blob(result.bytes); w.raw(salt)
        return Sodium.hash(w.bytes, domain: VoteDomain.commitment, length: VoteLimits.hashBytes)
    }

    /// True when (result, salt) opens `commitment` for `voter` in `round`. Constant-time on the hash.
    public static func opens(_ commitment: [UInt8], round: RoundID, voter: NodeID, result: VoteResult, salt: [UInt8]) -> Bool {
        Sodium.constantTimeEqual(compute(round: round, voter: voter, result: result, salt: salt), commitment)
    }
}

/// A voter's signed commitment for one round.
public struct SignedCommit: Hashable, Sendable {
    public static let encodedSize = 32 + 16 + 32 + 64
    public let round: RoundID
    public let voter: NodeID
    public let commitment: [UInt8]
    public let signature: [UInt8]

    /// Signs `commitment` as `voter` with `key`.
    public static func sign(round: RoundID, voter: NodeID, commitment: [UInt8], key: SigningKey) -> SignedCommit {
        precondition(commitment.count == VoteLimits.hashBytes)
        let sig = key.sign(signedBytes(round, voter, commitment))
        return SignedCommit(round: round, voter: voter, commitment: commitment, signature: sig)
    }

    /// Assembles a commit from parts (for example from a summary entry); call `verify` before trusting it.
    public init(round: RoundID, voter: NodeID, commitment: [UInt8], signature: [UInt8]) {
        self.round = round; self.voter = voter; self.commitment = commitment; self.signature = signature
    }

    static func signedBytes(_ round: RoundID, _ voter: NodeID, _ commitment: [UInt8]) -> [UInt8] {
        VoteDomain.commitSig + round.bytes + voter.bytes + commitment
    }

    public func verify(key: PublicKey) -> Bool {
        commitment.count == VoteLimits.hashBytes && key.verify(signature, for: Self.signedBytes(round, voter, commitment))
    }

    func write(to w: inout ByteWriter) { w.raw(round.bytes); w.raw(voter.bytes); w.raw(commitment); w.raw(signature) }
    static func read(from r: inout ByteReader) throws -> SignedCommit {
        SignedCommit(round: RoundID(unchecked: try r.raw(32)), voter: try NodeID(bytes: r.raw(16)),
                     commitment: try r.raw(32), signature: try r.raw(64))
    }
}

/// A voter's signed opening of its commitment.
///
/// Reveals are signed (not just checked against the commitment) so that a reveal that does *not*
/// match is attributable: without the signature anyone could forge a bad reveal to frame a voter.
public struct SignedReveal: Hashable, Sendable {
    public let round: RoundID
    public let voter: NodeID
    public let result: VoteResult
    public let salt: [UInt8]
    public let signature: [UInt8]

    public static func sign(round: RoundID, voter: NodeID, result: VoteResult, salt: [UInt8], key: SigningKey) -> SignedReveal {
        precondition(salt.count == VoteLimits.saltBytes)
        return SignedReveal(round: round, voter: voter, result: result, salt: salt,
                            signature: key.sign(signedBytes(round, voter, result, salt)))
    }

    public init(round: RoundID, voter: NodeID, result: VoteResult, salt: [UInt8], signature: [UInt8]) {
        self.round = round; self.voter = voter; self.result = result; self.salt = salt; self.signature = signature
    }

    static func signedBytes(_ round: RoundID, _ voter: NodeID, _ result: VoteResult, _ salt: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: 128)
        w.raw(VoteDomain.revealSig); w.raw(round.bytes); w.raw(voter.bytes); w.blob(result.bytes); w.raw(salt)
        return w.bytes
    }

    public func verify(key: PublicKey) -> Bool {
        salt.count == VoteLimits.saltBytes && key.verify(signature, for: Self.signedBytes(round, voter, result, salt))
    }

    /// True when this reveal opens `commit` (same round, same voter, hash matches).
    public func opens(_ commit: SignedCommit) -> Bool {
        commit.round == round && commit.voter == voter
            && Commitment.opens(commit.commitment, round: round, voter: voter, result: result, salt: salt)
    }

    func write(to w: inout ByteWriter) {
        w.raw(round.bytes); w.raw(voter.bytes); w.u8(UInt8(result.bytes.count)); w.raw(result.bytes); w.raw(salt); w.raw(signature)
    }
    static func read(from r: inout ByteReader) throws -> SignedReveal {
        let round = RoundID(unchecked: try r.raw(32))
        let voter = try NodeID(bytes: r.raw(16))
        let at = r.offset
        let n = Int(try r.u8())
        if n > VoteLimits.maxResultBytes {
            throw DecodeError(.tooLong(field: "result", length: n, limit: VoteLimits.maxResultBytes), at: at)
        }
        let result = VoteResult(unchecked: try r.raw(n))
        return SignedReveal(round: round, voter: voter, result: result, salt: try r.raw(32), signature: try r.raw(64))
    }
}

/// The signed part of a summary: which voters' reveals the attester holds, and a digest of the
/// commitments it holds. Small, so evidence of withholding can carry many of them.
public struct SummaryAttestation: Hashable, Sendable {
    public let round: RoundID
    public let attester: NodeID
    /// Bit i (LSB-first within each byte) is set when the attester holds a valid reveal from voter i.
    public let revealed: [UInt8]
    public let voterCount: UInt16
    public let commitsDigest: [UInt8]
    public let signature: [UInt8]

    public init(round: RoundID, attester: NodeID, revealed: [UInt8], voterCount: UInt16, commitsDigest: [UInt8], signature: [UInt8]) {
        self.round = round; self.attester = attester; self.revealed = revealed; self.voterCount = voterCount
        self.commitsDigest = commitsDigest; self.signature = signature
    }

    public func hasReveal(from index: Int) -> Bool {
        index >= 0 && index < Int(voterCount) && revealed[index >> 3] & (1 << UInt8(index & 7)) != 0
    }

    static func signedBytes(_ round: RoundID, _ attester: NodeID, _ count: UInt16, _ revealed: [UInt8], _ digest: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: 128 + revealed.count)
        w.raw(VoteDomain.summarySig); w.raw(round.bytes); w.raw(attester.bytes); w.u16(count); w.raw(revealed); w.raw(digest)
        return w.bytes
    }

    public func verify(key: PublicKey) -> Bool {
        key.verify(signature, for: Self.signedBytes(round, attester, voterCount, revealed, commitsDigest))
    }

    func write(to w: inout ByteWriter) {
        w.raw(round.bytes); w.raw(attester.bytes); w.u16(voterCount); w.raw(revealed); w.raw(commitsDigest); w.raw(signature)
    }
    static func read(from r: inout ByteReader) throws -> SummaryAttestation {
        let round = RoundID(unchecked: try r.raw(32))
        let attester = try NodeID(bytes: r.raw(16))
        let at = r.offset
        let count = try r.u16()
        if Int(count) > VoteLimits.maxVoters {
            throw DecodeError(.tooLong(field: "summary voters", length: Int(count), limit: VoteLimits.maxVoters), at: at)
        }
        let bitmap = try readBitmap(&r, count: Int(count))
        return SummaryAttestation(round: round, attester: attester, revealed: bitmap, voterCount: count,
                                  commitsDigest: try r.raw(32), signature: try r.raw(64))
    }
}

/// Reads a bitmap of `count` bits and refuses set padding bits, so every bitmap has one spelling.
func readBitmap(_ r: inout ByteReader, count: Int) throws -> [UInt8] {
    let at = r.offset
    let bytes = try r.raw((count + 7) / 8)
    if count % 8 != 0, let last = bytes.last, last >> UInt8(count % 8) != 0 {
        throw DecodeError(.invalid(field: "bitmap", reason: "padding bits set"), at: at)
    }
    return bytes
}

/// What a node saw in a round, sent once it stops accepting reveals: the commitment it holds from
/// each voter (so a receiver holding a different one can hand over its signed copy, turning the
/// difference into equivocation evidence at the attester) and which reveals it holds (so withheld
/// reveals become provable).
///
/// Entries carry only the 32-byte commitment, not the voter's signature: that keeps a summary at
/// ~33 bytes per voter instead of ~97, and the signed copies travel only when they differ.
public struct RoundSummary: Hashable, Sendable {
    public let attestation: SummaryAttestation
    /// One slot per voter of the round, in the round's voter order: the commitment held, if any.
    public let commitments: [[UInt8]?]

    public var round: RoundID { attestation.round }
    public var attester: NodeID { attestation.attester }

    static func digest(_ commitments: [[UInt8]?]) -> [UInt8] {
        var w = ByteWriter(capacity: commitments.count * 33)
        writeEntries(commitments, to: &w)
        return Sodium.hash(w.bytes, domain: VoteDomain.summaryDigest, length: VoteLimits.hashBytes)
    }

    static func writeEntries(_ commitments: [[UInt8]?], to w: inout ByteWriter) {
        for c in commitments {
            if let c { w.u8(1); w.raw(c) } else { w.u8(0) }
        }
    }

    public static func sign(round: RoundID, attester: NodeID, revealed: [Bool], commitments: [[UInt8]?], key: SigningKey) -> RoundSummary {
        precondition(revealed.count == commitments.count && commitments.count <= VoteLimits.maxVoters)
        precondition(commitments.allSatisfy { $0 == nil || $0!.count == VoteLimits.hashBytes })
        var bitmap = [UInt8](repeating: 0, count: (revealed.count + 7) / 8)
        for (i, r) in revealed.enumerated() where r { bitmap[i >> 3] |= 1 << UInt8(i & 7) }
        let count = UInt16(commitments.count)
        let digest = digest(commitments)
        let sig = key.sign(SummaryAttestation.signedBytes(round, attester, count, bitmap, digest))
        return RoundSummary(attestation: SummaryAttestation(round: round, attester: attester, revealed: bitmap, voterCount: count,
                                                            commitsDigest: digest, signature: sig), commitments: commitments)
    }

    init(attestation: SummaryAttestation, commitments: [[UInt8]?]) {
        self.attestation = attestation
        self.commitments = commitments
    }

    /// Checks the signature and that the entries hash to the signed digest.
    public func verify(key: PublicKey) -> Bool {
        commitments.count == Int(attestation.voterCount)
            && Sodium.constantTimeEqual(Self.digest(commitments), attestation.commitsDigest)
            && attestation.verify(key: key)
    }

    func write(to w: inout ByteWriter) {
        let a = attestation
        w.raw(a.round.bytes); w.raw(a.attester.bytes); w.u16(a.voterCount); w.raw(a.revealed)
        Self.writeEntries(commitments, to: &w)
        w.raw(a.signature)
    }
    static func read(from r: inout ByteReader) throws -> RoundSummary {
        let round = RoundID(unchecked: try r.raw(32))
        let attester = try NodeID(bytes: r.raw(16))
        let at = r.offset
        let count = Int(try r.u16())
        if count > VoteLimits.maxVoters {
            throw DecodeError(.tooLong(field: "summary voters", length: count, limit: VoteLimits.maxVoters), at: at)
        }
        let bitmap = try readBitmap(&r, count: count)
        var commitments: [[UInt8]?] = []
        commitments.reserveCapacity(count)
        for _ in 0..<count {
            let at = r.offset
            switch try r.u8() {
            case 0: commitments.append(nil)
            case 1: commitments.append(try r.raw(32))
            case let t: throw DecodeError(.invalid(field: "summary entry", reason: "tag \(t)"), at: at)
            }
        }
        let sig = try r.raw(64)
        // The digest is recomputed, never read: the wire carries the entries and the digest is derived.
        return RoundSummary(attestation: SummaryAttestation(round: round, attester: attester, revealed: bitmap,
                                                            voterCount: UInt16(count), commitsDigest: digest(commitments),
                                                            signature: sig), commitments: commitments)
    }
}

/// A vote message on the wire. One byte of kind after a magic and version, then the body.
public enum VoteMessage: Hashable, Sendable {
    case commit(SignedCommit)
    case reveal(SignedReveal)
    case summary(RoundSummary)

    static let magic: [UInt8] = [0x4D, 0x56]  // "MV"
    static let version: UInt8 = 1

    public var round: RoundID {
        switch self {
        case let .commit(c): return c.round
        case let .reveal(r): return r.round
        case let .summary(s): return s.round
        }
    }

    /// The node that signed the message.
    public var sender: NodeID {
        switch self {
        case let .commit(c): return c.voter
        case let .reveal(r): return r.voter
        case let .summary(s): return s.attester
        }
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 256)
        w.raw(Self.magic); w.u8(Self.version)
        switch self {
        case let .commit(c): w.u8(1); c.write(to: &w)
        case let .reveal(r): w.u8(2); r.write(to: &w)
        case let .summary(s): w.u8(3); s.write(to: &w)
        }
        return w.bytes
    }

    /// Decodes one message. Refuses oversized input before reading it, and any input with a bad
    /// magic, version, kind, length or trailing byte. Signatures are *not* checked here: the round
    /// knows the keys, so `VoteInstance.step` checks them.
    public init(decoding bytes: [UInt8]) throws(VoteError) {
        guard bytes.count <= VoteLimits.maxMessageBytes else {
            throw VoteError(.oversized(bytes: bytes.count, limit: VoteLimits.maxMessageBytes))
        }
        do {
            var r = ByteReader(bytes)
            guard try r.raw(2) == Self.magic else { throw DecodeError(.badMagic, at: 0) }
            let v = try r.u8()
            if v != Self.version { throw DecodeError(.unknownVersion(field: "vote message version", value: UInt64(v)), at: 2) }
            let kind = try r.u8()
            switch kind {
            case 1: self = .commit(try SignedCommit.read(from: &r))
            case 2: self = .reveal(try SignedReveal.read(from: &r))
            case 3: self = .summary(try RoundSummary.read(from: &r))
            default: throw DecodeError(.unknownVersion(field: "vote message kind", value: UInt64(kind)), at: 3)
            }
            try r.finish()
        } catch let e as DecodeError {
            throw VoteError(.malformed(what: "vote message", e))
        } catch let e as VoteError {
            throw e
        } catch {
            throw VoteError(.malformed(what: "vote message", DecodeError(.invalid(field: "message", reason: "\(error)"), at: 0)))
        }
    }
}
