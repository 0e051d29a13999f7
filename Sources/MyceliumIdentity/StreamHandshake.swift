// The stream handshake (docs/HANDSHAKE.md), as pure functions over bytes: how two nodes prove their
// Ed25519 identity keys on a plain TCP stream, where there is no TLS exporter to bind a proof to.
// An ephemeral X25519 exchange and both nonces stand in for it: the binding is a hash of the HELLO
// and the REPLY, so it is fresh on both sides, and each side signs it with the same transcript as
// the TLS channel's proof (`HandshakeTranscript`).
//
// CRhizomorph implements the same messages in C (CSources/CRhizomorph/crypto.c, the reference);
// Endophyte's TCP transport uses this one. Tests/RhizomorphTests/HandshakeInteropTests.swift runs
// each against the other.
//
//   C -> S  HELLO   network, C's identity, C's ephemeral X25519 key, C's nonce, capabilities
//   S -> C  REPLY   network, S's identity, S's ephemeral key, S's nonce, session ID, cipher,
//                   S's proof: sign(transcript(role server, binding, C's nonce))
//   C -> S  PROOF   C's proof: sign(transcript(role client, binding, S's nonce))
//   S -> C  ACCEPT  (empty)
// Either side sends REJECT (reason, text) instead of its next message when it refuses the peer.
//
// No clocks, sockets or global randomness here: the caller passes the ephemeral secret, nonces and
// session ID (Sodium.randomBytes in a shell).

import MyceliumCore

/// What every Mycelium handshake proof signs. One builder, so the channel (TLS) and the stream
/// handshakes cannot drift apart: a label naming the protocol (so a proof made for one can never be
/// used in the other), the signer's role (so a proof cannot be reflected back), the network (so a
/// proof cannot be moved between networks), the connection's binding (fresh on both sides) and the
/// nonce the peer sent (so an old proof is worthless).
public enum HandshakeTranscript {
    /// The label of the membership channel handshake, inside TLS.
    public static let channelLabel: [UInt8] = Array("mycelium/handshake-proof/v1\0".utf8)
    /// The label of the stream handshake (Endophyte, rhizomorph).
    public static let streamLabel: [UInt8] = Array("mycelium/stream-proof/v2\0".utf8)

    public static func signedBytes(label: [UInt8], role: HandshakeRole, network: NetworkID, binding: [UInt8],
                                   peerNonce: [UInt8]) -> [UInt8] {
        label + [role.rawValue] + network.bytes + binding + peerNonce
    }
}

/// Why a peer was refused in the stream handshake. The codes are the ones CRhizomorph reports
/// (the errno in brackets), whether this side found the fault or the peer told us in a REJECT.
public struct StreamHandshakeError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: UInt8, Equatable, Sendable {
        /// The peer belongs to another network [ENONET].
        case wrongNetwork = 1
        /// The peer's identity key is not the one we expect [EACCES].
        case wrongPeerKey = 2
        /// A proof does not verify: forged, tampered with, replayed or relayed [EKEYREJECTED].
        case badSignature = 3
        /// Not a stream handshake message, or one we did not expect now [EPROTO].
        case malformed = 4
        /// The peer speaks another protocol version [EPROTONOSUPPORT].
        case versionMismatch = 5
        /// The peer refused for a reason this version does not know [ECONNREFUSED].
        case refused = 255
    }

    public let code: Code
    /// True when the peer refused us (its REJECT said so); false when we refused the peer.
    public let byPeer: Bool
    public let message: String
    /// The REJECT to send to the peer before closing, when we are the one refusing.
    public let reject: [UInt8]?

    init(_ code: Code, _ message: String, sendReject: Bool = true) {
        self.code = code
        self.byPeer = false
        self.message = message
        self.reject = sendReject ? StreamHandshake.rejectMessage(reason: code.rawValue, text: message) : nil
    }

    init(peerRefused code: Code, text: String) {
        self.code = code
        self.byPeer = true
        self.message = "peer refused: " + text
        self.reject = nil
    }

    public var description: String {
        let hint: String
        switch code {
        case .wrongNetwork: hint = "both nodes must be configured with the same network ID"
        case .wrongPeerKey: hint = "check which node is at that address, or update the expected key after a rotation"
        case .badSignature: hint = "the handshake was tampered with, replayed or relayed; check the path"
        case .malformed, .versionMismatch: hint = "the peer is not a compatible Mycelium stream transport"
        case .refused: hint = "see the peer's log"
        }
        return "stream handshake: \(message) (\(hint))"
    }
}

public enum StreamHandshake {
    public static let protocolVersion: UInt8 = 2
    static let magic: [UInt8] = Array("RHIZ".utf8)
    public static let preambleBytes = 8
    static let helloBody = 116
    static let replyBody = 196
    static let replySigned = 132
    static let proofBody = 64
    static let maxRejectText = 200
    /// Largest handshake message: preamble plus the largest body (a REJECT's). Bounds what a shell
    /// reads from an unauthenticated peer.
    public static let maxMessageBytes = preambleBytes + 2 + maxRejectText
    static let bindingDomain = "mycelium/stream-binding/v2"

    enum MessageType: UInt8 {
        case hello = 1, reply = 2, reject = 3, join = 4, joinOK = 5, proof = 6, accept = 7
    }

    /// Capability bits in HELLO (the cipher rhizomorph may choose); this side of the handshake only carries them.
    public static let capabilityAES: UInt32 = 1
    public static let capabilityForceXChaCha: UInt32 = 2

    /// The body length a preamble announces, for a shell reading a message off a stream; throws
    /// unless the preamble is a stream handshake's with a body no longer than any message's.
    public static func bodyLength(preamble: [UInt8]) throws(StreamHandshakeError) -> Int {
        guard preamble.count == preambleBytes, Array(preamble[0..<4]) == magic else {
            throw StreamHandshakeError(.malformed, "malformed handshake: does not start with RHIZ")
        }
        let n = Int(preamble[6]) | Int(preamble[7]) << 8
        guard n <= maxMessageBytes - preambleBytes else {
            throw StreamHandshakeError(.malformed, "malformed handshake: a \(n)-byte body is longer than any message")
        }
        return n
    }

    static func preamble(_ type: MessageType, _ bodyLength: Int, version: UInt8 = protocolVersion) -> [UInt8] {
        magic + [version, type.rawValue, UInt8(bodyLength & 0xFF), UInt8(bodyLength >> 8)]
    }

    public static func rejectMessage(reason: UInt8, text: String) -> [UInt8] {
        let t = Array(text.utf8.prefix(maxRejectText))
        return preamble(.reject, 2 + t.count) + [reason, UInt8(t.count)] + t
    }

    /// Parses a message of `type`, or explains a REJECT. A REJECT is read from any version so a
    /// version mismatch can still be explained.
    static func body(of message: [UInt8], _ type: MessageType, length: Int, what: String) throws(StreamHandshakeError) -> [UInt8] {
        guard message.count >= preambleBytes, Array(message[0..<4]) == magic else {
            throw StreamHandshakeError(.malformed, "malformed handshake: \(what) does not start with RHIZ")
        }
        let announced = Int(message[6]) | Int(message[7]) << 8
        guard message.count == preambleBytes + announced else {
            throw StreamHandshakeError(.malformed, "malformed handshake: \(what) is \(message.count) bytes but announces \(announced)")
        }
        if message[5] == MessageType.reject.rawValue { throw explainReject(Array(message[preambleBytes...])) }
        guard message[4] == protocolVersion else {
            throw StreamHandshakeError(.versionMismatch, "version mismatch: peer speaks protocol \(message[4]), we speak \(protocolVersion)")
        }
        guard message[5] == type.rawValue, announced == length else {
            throw StreamHandshakeError(.malformed, "malformed handshake: expected \(what), got message type \(message[5]) of \(announced) bytes")
        }
        return Array(message[preambleBytes...])
    }

    static func explainReject(_ body: [UInt8]) -> StreamHandshakeError {
        guard body.count >= 2, Int(body[1]) + 2 == body.count, Int(body[1]) <= maxRejectText else {
            return StreamHandshakeError(.malformed, "malformed handshake: bad REJECT", sendReject: false)
        }
        // Never show peer bytes raw: they end up in logs and terminals.
        let text = String(decoding: body[2...].map { $0 >= 0x20 && $0 < 0x7F ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
        let code: StreamHandshakeError.Code
        switch body[0] {
        case 1: code = .wrongNetwork
        case 2: code = .wrongPeerKey
        case 3, 6: code = .badSignature
        case 4: code = .malformed
        case 5: code = .versionMismatch
        default: code = .refused
        }
        return StreamHandshakeError(peerRefused: code, text: text)
    }

    static func u32le(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func u32le(_ b: ArraySlice<UInt8>) -> UInt32 { b.reversed().reduce(0) { $0 << 8 | UInt32($1) } }

    static func hex8(_ b: ArraySlice<UInt8>) -> String { hexString(Array(b.prefix(8))) }

    /// The checks both sides make on the peer's first message, in this order: network, identity.
    static func checkPeer(network: [UInt8], identity: [UInt8], ourNetwork: NetworkID,
                          accepts: (PublicKey) -> Bool) throws(StreamHandshakeError) -> PublicKey {
        if !Sodium.constantTimeEqual(network, ourNetwork.bytes) {
            throw StreamHandshakeError(.wrongNetwork, "wrong network: peer is in network \(hex8(network[...]))..., we are in \(hex8(ourNetwork.bytes[...]))...")
        }
        guard let key = try? PublicKey(bytes: identity), accepts(key) else {
            throw StreamHandshakeError(.wrongPeerKey, "wrong peer identity: peer presented key \(hex8(identity[...]))..., which we do not expect")
        }
        return key
    }

    static func binding(hello: [UInt8], replySigned: [UInt8]) -> [UInt8] {
        Sodium.hash(hello + replySigned, domain: bindingDomain, length: 32)
    }

    static func x25519(secret: [UInt8], peer: ArraySlice<UInt8>) throws(StreamHandshakeError) -> [UInt8] {
        guard let shared = Sodium.x25519(secret: secret, peer: Array(peer)) else {
            throw StreamHandshakeError(.badSignature, "bad ephemeral key: X25519 gave the all-zero secret")
        }
        return shared
    }
}

/// The connecting side (rhizomorph's client, Endophyte's source).
public struct StreamHandshakeClient: Sendable {
    public let network: NetworkID
    public let identity: SigningKey
    let ephemeralSecret: [UInt8]
    let nonce: [UInt8]
    /// The HELLO to send first.
    public let hello: [UInt8]
    /// After `receiveReply`: the peer's proven key and the session ID it chose.
    public private(set) var peer: PublicKey?
    public private(set) var sessionID: [UInt8] = []
    public private(set) var cipher: UInt32 = 0

    public init(identity: SigningKey, network: NetworkID, ephemeralSecret: [UInt8], nonce: [UInt8], capabilities: UInt32 = 0) {
        precondition(ephemeralSecret.count == 32 && nonce.count == 32, "ephemeral secret and nonce are 32 bytes")
        self.identity = identity; self.network = network
        self.ephemeralSecret = ephemeralSecret; self.nonce = nonce
        hello = StreamHandshake.preamble(.hello, StreamHandshake.helloBody) + network.bytes + identity.publicKey.bytes
            + Sodium.x25519PublicKey(secret: ephemeralSecret) + nonce + StreamHandshake.u32le(capabilities)
    }

    /// Judges the REPLY (network, then identity, then the server's proof) and returns our PROOF.
    /// On a refusal, send the error's `reject` (if any) and close.
    public mutating func receiveReply(_ message: [UInt8], accepts: (PublicKey) -> Bool) throws(StreamHandshakeError) -> [UInt8] {
        let b = try StreamHandshake.body(of: message, .reply, length: StreamHandshake.replyBody, what: "REPLY")
        let key = try StreamHandshake.checkPeer(network: Array(b[0..<16]), identity: Array(b[16..<48]), ourNetwork: network, accepts: accepts)
        let serverNonce = Array(b[80..<112])
        let binding = StreamHandshake.binding(hello: hello, replySigned: Array(message[0..<(StreamHandshake.preambleBytes + StreamHandshake.replySigned)]))
        let signed = HandshakeTranscript.signedBytes(label: HandshakeTranscript.streamLabel, role: .server, network: network,
                                                     binding: binding, peerNonce: nonce)
        guard key.verify(Array(b[132..<196]), for: signed) else {
            throw StreamHandshakeError(.badSignature, "bad signature: the REPLY is not signed by the peer over this handshake")
        }
        _ = try StreamHandshake.x25519(secret: ephemeralSecret, peer: b[48..<80])
        peer = key
        sessionID = Array(b[112..<128])
        cipher = StreamHandshake.u32le(b[128..<132])
        let proof = identity.sign(HandshakeTranscript.signedBytes(label: HandshakeTranscript.streamLabel, role: .client,
                                                                 network: network, binding: binding, peerNonce: serverNonce))
        return StreamHandshake.preamble(.proof, StreamHandshake.proofBody) + proof
    }

    /// The server's last word: ACCEPT returns, REJECT throws its reason.
    public func receiveVerdict(_ message: [UInt8]) throws(StreamHandshakeError) {
        _ = try StreamHandshake.body(of: message, .accept, length: 0, what: "ACCEPT")
    }
}

/// The accepting side (rhizomorph's listener, Endophyte's replica).
public struct StreamHandshakeServer: Sendable {
    public let peer: PublicKey
    public let sessionID: [UInt8]
    /// The REPLY to send.
    public let reply: [UInt8]
    let network: NetworkID
    let binding: [UInt8]
    let clientNonce: [UInt8]
    let ourNonce: [UInt8]

    /// Judges the HELLO (version, network, identity) and builds the REPLY with our proof. On a
    /// refusal, send the error's `reject` (if any) and close.
    public init(hello: [UInt8], identity: SigningKey, network: NetworkID, accepts: (PublicKey) -> Bool,
                ephemeralSecret: [UInt8], nonce: [UInt8], sessionID: [UInt8], cipher: UInt32) throws(StreamHandshakeError) {
        precondition(ephemeralSecret.count == 32 && nonce.count == 32 && sessionID.count == 16)
        let b = try StreamHandshake.body(of: hello, .hello, length: StreamHandshake.helloBody, what: "HELLO")
        peer = try StreamHandshake.checkPeer(network: Array(b[0..<16]), identity: Array(b[16..<48]), ourNetwork: network, accepts: accepts)
        _ = try StreamHandshake.x25519(secret: ephemeralSecret, peer: b[48..<80])
        self.network = network
        self.sessionID = sessionID
        clientNonce = Array(b[80..<112])
        ourNonce = nonce
        let signedPart = StreamHandshake.preamble(.reply, StreamHandshake.replyBody) + network.bytes + identity.publicKey.bytes
            + Sodium.x25519PublicKey(secret: ephemeralSecret) + nonce + sessionID + StreamHandshake.u32le(cipher)
        binding = StreamHandshake.binding(hello: hello, replySigned: signedPart)
        reply = signedPart + identity.sign(HandshakeTranscript.signedBytes(label: HandshakeTranscript.streamLabel, role: .server,
                                                                            network: network, binding: binding, peerNonce: clientNonce))
    }

    /// Judges the client's PROOF; returns the ACCEPT to send.
    public func receiveProof(_ message: [UInt8]) throws(StreamHandshakeError) -> [UInt8] {
        let b = try StreamHandshake.body(of: message, .proof, length: StreamHandshake.proofBody, what: "PROOF")
        let signed = HandshakeTranscript.signedBytes(label: HandshakeTranscript.streamLabel, role: .client, network: network,
                                                     binding: binding, peerNonce: ourNonce)
        guard peer.verify(b, for: signed) else {
            throw StreamHandshakeError(.badSignature, "bad signature: the PROOF is not signed by the peer over this handshake")
        }
        return StreamHandshake.preamble(.accept, 0)
    }
}
