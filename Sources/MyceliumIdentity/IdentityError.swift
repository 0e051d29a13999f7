import MyceliumCore

/// Every identity failure, with what went wrong and, where it helps, what to do.
public struct IdentityError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: Equatable, Sendable {
        case malformed(what: String, reason: String)
        case decode(what: String, DecodeError)
        case badID(text: String, reason: String)
        case badSignature(what: String)
        case wrongNetwork(expected: NetworkID, actual: NetworkID)
        case notIssuedByGenesis(what: String)
        case expired(what: String, expiredAt: Int64, now: Int64)
        case notYetValid(what: String, validFrom: Int64, now: Int64)
        case revoked(node: NodeID)
        case keyMismatch(node: NodeID)
        case inviteAlreadyUsed
        case inviteUnknown
        case staleRotation(node: NodeID, sequence: UInt64, current: UInt64)
        case retiredKey(node: NodeID)
        case file(FileError)
        case unknownGeneration(what: String, generation: UInt64, known: UInt64)
        case tooFewSignatures(what: String, have: Int, need: Int, of: Int, generation: UInt64)
        case notBySclerotium(what: String, index: Int, generation: UInt64, signers: Int)
        case badQuorumSignature(what: String, signer: NodeID, generation: UInt64)
        case supersededIssuer(generation: UInt64, supersededAt: Int64, issuedAt: Int64)
        case forkedChain(generation: UInt64)
        case staleChain(have: UInt64, got: UInt64)
        case inviterNotAllowed(inviter: NodeID, reason: String)
        case clockSkew(peerTime: Int64, now: Int64, allowed: Int64)
    }

    public let code: Code
    public init(_ code: Code) { self.code = code }

    /// Wraps an error thrown by a `ByteReader` while decoding `what`.
    public static func decoding(_ what: String, _ error: any Error) -> IdentityError {
        if let e = error as? DecodeError { return IdentityError(.decode(what: what, e)) }
        if let e = error as? IdentityError { return e }
        return IdentityError(.malformed(what: what, reason: "\(error)"))
    }

    public var description: String {
        switch code {
        case let .malformed(what, reason): return "malformed \(what): \(reason)"
        case let .decode(what, e): return "cannot decode \(what): \(e)"
        case let .badID(text, reason): return "'\(text)' is not a valid ID: \(reason)"
        case let .badSignature(what): return "\(what) has an invalid signature: it was altered or not signed by the key it names"
        case let .wrongNetwork(expected, actual):
            return "belongs to network \(actual), but this node is in network \(expected)"
        case let .notIssuedByGenesis(what):
            return "\(what) was not issued by this network's genesis key"
        case let .expired(what, at, now):
            return "\(what) expired \(seconds(now, minus: at)) s ago (at unix time \(at)); ask for a new one"
        case let .notYetValid(what, from, now):
            return "\(what) is not valid for another \(seconds(from, minus: now)) s; check this machine's clock"
        case let .revoked(node): return "member \(node) has been revoked"
        case let .keyMismatch(node):
            return "the key presented is not the key certified for \(node) (stolen certificate or man in the middle)"
        case .inviteAlreadyUsed: return "this invite has already been used; ask for a new one (invites are one-time)"
        case .inviteUnknown: return "this invite was not issued by this node, or its record was lost"
        case let .staleRotation(node, seq, current):
            return "key rotation #\(seq) for \(node) is not newer than the known rotation #\(current)"
        case let .retiredKey(node): return "this key of \(node) was rotated out and is no longer accepted"
        case let .file(e): return e.description
        case let .unknownGeneration(what, g, known):
            return "\(what) is signed by sclerotia generation \(g), but only generations up to \(known) are known here; "
                + "a node that was away for long learns the newer links from a seed spore ('mycelium spore import')"
        case let .tooFewSignatures(what, have, need, of, g):
            return "\(what) carries \(have) signature(s) of generation \(g)'s \(of) sclerotia; a quorum is \(need)"
        case let .notBySclerotium(what, index, g, n):
            return "\(what) has a signature by signer #\(index), but generation \(g) has only \(n) sclerotia: it was not signed by a sclerotium"
        case let .badQuorumSignature(what, signer, g):
            return "\(what) has a signature in the name of sclerotium \(signer) (generation \(g)) that does not verify: altered, or signed by another key"
        case let .supersededIssuer(g, at, issued):
            return "certificate issued at \(issued) by sclerotia generation \(g), which was replaced at \(at): "
                + "a removed sclerotium (or an old quorum) cannot issue"
        case let .forkedChain(g):
            return "sclerotia link \(g) differs from the one this node knows (a forged or forked chain)"
        case let .staleChain(have, got):
            return "a sclerotia chain up to generation \(got) is older than the known one (generation \(have)): a replayed old chain"
        case let .inviterNotAllowed(inviter, reason):
            return "invite by \(inviter) is not honoured: \(reason)"
        case let .clockSkew(peer, now, allowed):
            return "clock differs by \(seconds(peer, minus: now)) s from this node's (at most ±\(allowed) s is allowed); fix the clock (NTP) on the node that is off"
        }
    }
}

/// `a − b`, clamped to Int64's range: the times in these messages may come from a peer (its clock,
/// the times of an invite it signed itself), and describing a refusal must not trap.
func seconds(_ a: Int64, minus b: Int64) -> Int64 {
    let (d, overflow) = a.subtractingReportingOverflow(b)
    return overflow ? (a > b ? .max : .min) : d
}
