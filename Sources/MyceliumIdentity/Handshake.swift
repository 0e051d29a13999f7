// The membership handshake that runs inside TLS, as pure functions over bytes.
//
// TLS proves each peer holds the private key of the certificate it presented. This handshake adds
// what TLS cannot: that the key belongs to a member of *this* network, and that the proof was made
// for *this* connection. Each side sends a Hello (network, fresh nonce, membership certificate or
// invite), then a Proof: a signature over (role, network ID, the TLS channel binding, the peer's
// nonce), built by `HandshakeTranscript` like the stream handshake's (docs/HANDSHAKE.md). Binding
// to the exporter value of this TLS session means a proof captured from another
// connection, or relayed by a man in the middle, does not verify here.
//
// Checks run in a fixed order, each with its own error, so a log line says exactly why a peer was
// refused: network → certificate (issuer, signature, validity, revocation) → channel binding and
// nonce (replay) → certificate key equals TLS key (stolen certificate) → signature.

import MyceliumCore

public enum HandshakeRole: UInt8, Sendable {
    case client = 1
    case server = 2
    public var peer: HandshakeRole { self == .client ? .server : .client }
}

/// What a peer presents to be let in.
public enum Credential: Equatable, Sendable {
    /// A member, with its membership certificate.
    case member(MembershipCertificate)
    /// A node joining with an invite; the server issues its certificate if the invite is good.
    case invite(Invite)
}

public struct Hello: Equatable, Sendable {
    static let magic: [UInt8] = Array("MYH1".utf8)
    public static let protocolVersion: UInt16 = 2
    static let maxCredential = 4096
    /// Links sent with a certificate: enough for a peer that missed this many sclerotia changes.
    public static let maxLinks = 32

    public var networkID: NetworkID
    public var nonce: [UInt8]
    /// The sender's clock (unix seconds), to measure and bound clock skew between members.
    public var time: Int64
    public var credential: Credential
    /// The newest links of the sender's sclerotia chain, so a peer a few links behind can verify.
    public var links: [SclerotiaLink]

    public init(networkID: NetworkID, nonce: [UInt8], time: Int64, credential: Credential, links: [SclerotiaLink] = []) {
        self.networkID = networkID; self.nonce = nonce; self.time = time; self.credential = credential; self.links = links
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 256 + links.count * 600)
        w.raw(Self.magic); w.u16(Self.protocolVersion)
        w.raw(networkID.bytes); w.raw(nonce); w.i64(time)
        switch credential {
        case .member(let c): w.u8(1); w.blob(c.encoded())
        case .invite(let i): w.u8(2); w.blob(i.encoded())
        }
        w.u8(UInt8(links.count))
        for l in links { w.blob(l.encoded()) }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(HandshakeError) {
        do {
            var r = ByteReader(bytes)
            guard try r.raw(4) == Self.magic else { throw DecodeError(.badMagic, at: 0) }
            let v = try r.u16()
            if v != Self.protocolVersion {
                throw DecodeError(.unknownVersion(field: "handshake protocol (this node speaks \(Self.protocolVersion); upgrade the older node)", value: UInt64(v)), at: 4)
            }
            networkID = try NetworkID(bytes: r.raw(16))
            nonce = try r.raw(32)
            time = try r.i64()
            let kind = try r.u8()
            let blob = try r.blob("credential", limit: Self.maxCredential)
            switch kind {
            case 1: credential = .member(try MembershipCertificate(decoding: blob))
            case 2: credential = .invite(try Invite(decoding: blob))
            default: throw DecodeError(.invalid(field: "credential kind", reason: "\(kind) is neither 1 (member) nor 2 (invite)"), at: 62)
            }
            let n = Int(try r.u8())
            if n > Self.maxLinks { throw DecodeError(.tooLong(field: "links", length: n, limit: Self.maxLinks), at: r.offset - 1) }
            var ls: [SclerotiaLink] = []
            for _ in 0..<n { ls.append(try SclerotiaLink(decoding: r.blob("link", limit: 4096))) }
            links = ls
            try r.finish()
        } catch let e as DecodeError {
            throw HandshakeError(.malformed("hello: \(e)"))
        } catch let e as IdentityError {
            throw HandshakeError(.notAMember(e))
        } catch let e as HandshakeError {
            throw e
        } catch {
            throw HandshakeError(.malformed("hello: \(error)"))
        }
    }
}

public struct Proof: Equatable, Sendable {
    static let magic: [UInt8] = Array("MYP1".utf8)

    /// The channel binding and peer nonce the signer saw. Sent in the clear (inside TLS) so that a
    /// mismatch can be reported as a replay rather than as a bare bad signature.
    public var binding: [UInt8]
    public var peerNonce: [UInt8]
    public var signature: [UInt8]

    public static func make(role: HandshakeRole, network: NetworkID, binding: [UInt8], peerNonce: [UInt8], key: SigningKey) -> Proof {
        Proof(binding: binding, peerNonce: peerNonce,
              signature: key.sign(signedBytes(role: role, network: network, binding: binding, peerNonce: peerNonce)))
    }

    init(binding: [UInt8], peerNonce: [UInt8], signature: [UInt8]) {
        self.binding = binding; self.peerNonce = peerNonce; self.signature = signature
    }

    static func signedBytes(role: HandshakeRole, network: NetworkID, binding: [UInt8], peerNonce: [UInt8]) -> [UInt8] {
        HandshakeTranscript.signedBytes(label: HandshakeTranscript.channelLabel, role: role, network: network,
                                        binding: binding, peerNonce: peerNonce)
    }

    public func encoded() -> [UInt8] { Self.magic + binding + peerNonce + signature }

    public init(decoding bytes: [UInt8]) throws(HandshakeError) {
        do {
            var r = ByteReader(bytes)
            guard try r.raw(4) == Self.magic else { throw DecodeError(.badMagic, at: 0) }
            binding = try r.raw(32); peerNonce = try r.raw(32); signature = try r.raw(64)
            try r.finish()
        } catch {
            throw HandshakeError(.malformed("proof: \(error)"))
        }
    }
}

/// The outcome a side sends after judging its peer: accepted (with a certificate for a joiner), or
/// refused with a reason the peer can show its operator.
public enum Verdict: Equatable, Sendable {
    case accepted(issued: MembershipCertificate?)
    case refused(reason: String)

    static let maxReason = 512

    public func encoded() -> [UInt8] {
        var w = ByteWriter()
        switch self {
        case .accepted(let c):
            w.u8(1)
            if let c { w.bool(true); w.blob(c.encoded()) } else { w.bool(false) }
        case .refused(let reason):
            w.u8(2)
            w.string(String(reason.utf8.prefix(Self.maxReason)) ?? "refused")
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(HandshakeError) {
        do {
            var r = ByteReader(bytes)
            switch try r.u8() {
            case 1:
                self = .accepted(issued: try r.bool("has certificate")
                    ? MembershipCertificate(decoding: r.blob("certificate", limit: 1024)) : nil)
            case 2:
                self = .refused(reason: try r.string("reason", limit: Self.maxReason))
            case let t:
                throw DecodeError(.invalid(field: "verdict", reason: "tag \(t)"), at: 0)
            }
            try r.finish()
        } catch {
            throw HandshakeError(.malformed("verdict: \(error)"))
        }
    }
}

/// What this side knows when it judges a peer. A value: the shell fills it from its current view.
public struct HandshakePolicy: Sendable {
    /// The sclerotia chain this node trusts (from the genesis key).
    public var chain: SclerotiaChain
    public var now: Int64
    public var revoked: Set<NodeID>
    public var keys: KeyRegistry
    /// Members that may invite now, with their current keys. Nil: this side does not admit joiners.
    public var inviters: [NodeID: PublicKey]?
    /// The network's certificate lifetime, if known: a certificate valid for longer is refused (a
    /// genesis key kept after the handoff cannot mint long-lived certificates).
    public var maxLifetime: Int64?

    public var network: NetworkID { chain.network }

    public init(chain: SclerotiaChain, now: Int64, revoked: Set<NodeID> = [], keys: KeyRegistry = KeyRegistry(),
                inviters: [NodeID: PublicKey]? = nil, maxLifetime: Int64? = nil) {
        self.chain = chain; self.now = now; self.revoked = revoked; self.keys = keys; self.inviters = inviters
        self.maxLifetime = maxLifetime
    }
}

/// A peer that passed the handshake.
public struct VerifiedPeer: Equatable, Sendable {
    public var nodeID: NodeID
    public var key: PublicKey
    /// Nil only for a joiner whose certificate the server is about to issue.
    public var certificate: MembershipCertificate?
    public var joiningWith: Invite?
    /// The peer's clock minus ours when it said hello (seconds).
    public var clockSkew: Int64 = 0
}

public enum HandshakeVerifier {
    /// Judges the peer's Hello and Proof for this connection.
    ///
    /// - Parameters:
    ///   - tlsKey: the Ed25519 key the peer proved in TLS (its certificate's key).
    ///   - binding: this connection's TLS exporter value.
    ///   - ourNonce: the nonce we sent in our Hello.
    ///   - peerRole: the role of the peer (the signer).
    public static func verify(hello: Hello, proof: Proof, tlsKey: PublicKey, binding: [UInt8], ourNonce: [UInt8],
                              peerRole: HandshakeRole, policy: HandshakePolicy) throws(HandshakeError) -> VerifiedPeer {
        if hello.networkID != policy.network {
            throw HandshakeError(.wrongNetwork(expected: policy.network, actual: hello.networkID))
        }
        // The peer's time is any Int64 it likes: subtract without trapping.
        let (skew, overflow) = hello.time.subtractingReportingOverflow(policy.now)
        if overflow || skew < -maxClockSkew || skew > maxClockSkew {
            throw HandshakeError(.clockSkew(IdentityError(.clockSkew(peerTime: hello.time, now: policy.now, allowed: maxClockSkew))))
        }
        let claimedKey: PublicKey
        let nodeID: NodeID
        var cert: MembershipCertificate?
        var invite: Invite?
        switch hello.credential {
        case .member(let c):
            do throws(IdentityError) {
                var chain = policy.chain
                try chain.absorb(hello.links)
                try c.verify(chain: chain, now: policy.now, revoked: policy.revoked)
                if let max = policy.maxLifetime, c.lifetime > max {
                    throw IdentityError(.malformed(what: "membership certificate", reason: "valid for \(c.lifetime) s, longer than the network's \(max) s"))
                }
            } catch {
                switch error.code {
                case .expired, .notYetValid: throw HandshakeError(.expiredMember(error))
                case .revoked: throw HandshakeError(.revokedMember(c.nodeID))
                case .wrongNetwork: throw HandshakeError(.wrongNetwork(expected: policy.network, actual: c.networkID))
                default: throw HandshakeError(.notAMember(error))
                }
            }
            claimedKey = c.nodeKey
            nodeID = c.nodeID
            cert = c
        case .invite(let i):
            guard peerRole == .client else { throw HandshakeError(.protocolViolation("a server cannot present an invite")) }
            do throws(IdentityError) {
                try i.verify(network: policy.network, now: policy.now)
                guard let inviters = policy.inviters else {
                    throw IdentityError(.inviterNotAllowed(inviter: i.inviter, reason: "this node does not admit joiners"))
                }
                guard let key = inviters[i.inviter] else {
                    throw IdentityError(.inviterNotAllowed(inviter: i.inviter, reason: "it is not a present member with the inviter role"))
                }
                if key != i.inviterKey {
                    throw IdentityError(.inviterNotAllowed(inviter: i.inviter, reason: "it was signed with a key the inviter no longer holds"))
                }
            } catch { throw HandshakeError(.inviteRefused(error)) }
            claimedKey = tlsKey
            nodeID = NodeID(publicKey: tlsKey)
            invite = i
        }
        // Replay or relay: the proof was made for another TLS session or another Hello of ours.
        if !Sodium.constantTimeEqual(proof.binding, binding) || !Sodium.constantTimeEqual(proof.peerNonce, ourNonce) {
            throw HandshakeError(.replayedHandshake)
        }
        // A certificate is only good with the key it certifies; the TLS layer proved `tlsKey`.
        if claimedKey != tlsKey { throw HandshakeError(.keyMismatch(nodeID)) }
        do { try policy.keys.check(node: nodeID, key: tlsKey) } catch {
            throw error.code == .retiredKey(node: nodeID) ? HandshakeError(.retiredKey(nodeID)) : HandshakeError(.keyMismatch(nodeID))
        }
        let signed = Proof.signedBytes(role: peerRole, network: policy.network, binding: binding, peerNonce: ourNonce)
        if !tlsKey.verify(proof.signature, for: signed) { throw HandshakeError(.badProof) }
        return VerifiedPeer(nodeID: nodeID, key: tlsKey, certificate: cert, joiningWith: invite, clockSkew: skew)
    }
}

/// Why a channel was refused or closed. Each case names one cause; `description` tells an operator
/// what happened and what to do.
public struct HandshakeError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: Equatable, Sendable {
        case wrongNetwork(expected: NetworkID, actual: NetworkID)
        case notAMember(IdentityError)
        case expiredMember(IdentityError)
        case revokedMember(NodeID)
        case replayedHandshake
        case keyMismatch(NodeID)
        case retiredKey(NodeID)
        case badProof
        case inviteRefused(IdentityError)
        case clockSkew(IdentityError)
        case malformed(String)
        case protocolViolation(String)
        case refusedByPeer(String)
        case tls(String)
        case timeout(String)
        case peerSilent(seconds: Double)
        case closed
    }

    public let code: Code
    public init(_ code: Code) { self.code = code }

    public var description: String {
        switch code {
        case let .wrongNetwork(expected, actual):
            return "peer belongs to network \(actual), not \(expected): networks never talk to each other"
        case let .notAMember(e): return "peer is not a member: \(e)"
        case let .expiredMember(e): return "peer's membership is not valid now: \(e)"
        case let .revokedMember(n): return "peer \(n) has been revoked"
        case .replayedHandshake:
            return "peer's proof was made for a different connection (a replayed or relayed handshake)"
        case let .keyMismatch(n):
            return "peer presented the certificate of \(n) with a different TLS key (stolen certificate or man in the middle)"
        case let .retiredKey(n): return "peer used a key of \(n) that was rotated out"
        case .badProof: return "peer's handshake signature does not verify"
        case let .inviteRefused(e): return "invite refused: \(e)"
        case let .clockSkew(e): return "peer's \(e)"
        case let .malformed(s): return "malformed handshake message: \(s)"
        case let .protocolViolation(s): return "protocol violation: \(s)"
        case let .refusedByPeer(s): return "the peer refused us: \(s)"
        case let .tls(s): return "TLS failed: \(s)"
        case let .timeout(s): return "timed out: \(s)"
        case let .peerSilent(sec): return "peer sent nothing for \(sec) s (heartbeat timeout); it is down or the path is broken"
        case .closed: return "the connection was closed"
        }
    }
}
