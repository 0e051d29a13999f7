import MyceliumCore
import MyceliumIdentity

/// Every reason the vote refuses an input or an operation, with the context needed to act on it.
///
/// Refusals are normal under attack: a shell should count them per peer (a peer that keeps sending
/// malformed or unsigned messages is misbehaving) but must never crash or stop on one.
public struct VoteError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: Equatable, Sendable {
        /// The bytes are not a well-formed vote message (bounds, tags, lengths, trailing bytes).
        case malformed(what: String, DecodeError)
        /// The encoded message is larger than `VoteLimits.maxMessageBytes`.
        case oversized(bytes: Int, limit: Int)
        /// A signature does not verify under the key the round lists for that voter.
        case badSignature(what: String, voter: NodeID)
        /// The message names a round this node has not opened (or has already forgotten).
        case unknownRound(RoundID)
        /// The sender is not in the round's electorate.
        case notEligible(voter: NodeID, round: RoundID)
        /// A reveal arrived from a voter whose commitment this node does not hold.
        case revealBeforeCommit(voter: NodeID, round: RoundID)
        /// A commitment arrived after this node closed the commit phase (deadline passed, or every commitment already held).
        case commitPhaseClosed(voter: NodeID, round: RoundID)
        /// A reveal arrived after the round's reveal deadline on this node.
        case revealPhaseClosed(voter: NodeID, round: RoundID)
        /// A round specification that cannot be run safely (too few voters, duplicate voters, bad deadlines...).
        case invalidRound(reason: String)
        /// The round is already open on this node.
        case duplicateRound(RoundID)
        /// The electorate for an operation cannot be formed under its quorum policy.
        case noQuorum(criticality: Criticality, reason: String)
        /// Evidence or a decision certificate failed verification.
        case invalidEvidence(reason: String)
        case invalidCertificate(reason: String)
    }

    public let code: Code
    public init(_ code: Code) { self.code = code }

    public var description: String {
        switch code {
        case let .malformed(what, e): return "malformed \(what): \(e)"
        case let .oversized(bytes, limit): return "vote message of \(bytes) bytes is over the \(limit)-byte limit; refused before decoding"
        case let .badSignature(what, voter): return "\(what) from \(voter) has an invalid signature: forged, altered, or signed with a key the round does not list"
        case let .unknownRound(r): return "round \(r) is not open on this node (not yet applied from the log, or already closed and forgotten)"
        case let .notEligible(voter, r): return "\(voter) is not a voter in round \(r)"
        case let .revealBeforeCommit(voter, r): return "reveal from \(voter) in round \(r) arrived before (or without) its commitment; refused"
        case let .commitPhaseClosed(voter, r): return "commitment from \(voter) in round \(r) arrived after the commit phase closed here; it is not counted"
        case let .revealPhaseClosed(voter, r): return "reveal from \(voter) in round \(r) arrived after the reveal deadline here; it is not counted"
        case let .invalidRound(reason): return "invalid round specification: \(reason)"
        case let .duplicateRound(r): return "round \(r) is already open"
        case let .noQuorum(c, reason): return "no safe electorate for \(c) votes: \(reason)"
        case let .invalidEvidence(reason): return "evidence refused: \(reason)"
        case let .invalidCertificate(reason): return "decision certificate refused: \(reason)"
        }
    }
}
