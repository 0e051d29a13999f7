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
    }

    public let code: Code
    public init(_ code: Code) { self.code = code }

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
            return "\(what) expired \(now - at) s ago (at unix time \(at)); ask for a new one"
        case let .notYetValid(what, from, now):
            return "\(what) is not valid for another \(from - now) s; check this machine's clock"
        case let .revoked(node): return "member \(node) has been revoked"
        case let .keyMismatch(node):
            return "the key presented is not the key certified for \(node) (stolen certificate or man in the middle)"
        case .inviteAlreadyUsed: return "this invite has already been used; ask for a new one (invites are one-time)"
        case .inviteUnknown: return "this invite was not issued by this node, or its record was lost"
        case let .staleRotation(node, seq, current):
            return "key rotation #\(seq) for \(node) is not newer than the known rotation #\(current)"
        case let .retiredKey(node): return "this key of \(node) was rotated out and is no longer accepted"
        case let .file(e): return e.description
        }
    }
}
