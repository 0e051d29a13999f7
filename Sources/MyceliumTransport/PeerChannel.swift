// Authenticated channels between nodes: TLS 1.3 + the membership handshake + frames + heartbeats.
//
// Pipeline (per connection): NIOSSL → IdleStateHandler → FrameChannelHandler.
// The frame handler turns bytes into `Frame`s with a bounded decoder, answers the idle timer with
// pings and turns a silent peer into an error; everything else goes to one async stream, which the
// handshake reads first and the application after.

import Foundation
import Logging
import MyceliumCore
import MyceliumIdentity
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// Frame types below 16 belong to the channel itself.
public enum ChannelFrameType {
    static let hello: UInt8 = 1
    static let proof: UInt8 = 2
    static let verdict: UInt8 = 3
    static let ping: UInt8 = 4
    /// The first type an application may use.
    public static let firstApplicationType: UInt8 = 16
}

/// Timeouts and limits for a channel. Defaults suit a LAN; raise them for WAN links.
public struct ChannelSettings: Sendable {
    /// A ping is sent when nothing else was sent for this long.
    public var heartbeatInterval: TimeAmount = .milliseconds(500)
    /// The peer is declared silent after this long without any byte from it.
    public var peerTimeout: TimeAmount = .seconds(3)
    /// The TCP connect plus TLS plus membership handshake must finish within this.
    public var handshakeTimeout: TimeAmount = .seconds(10)
    public var maxFrameSize: Int = Frame.defaultMaxSize

    public init() {}
}

/// Who this node is on the wire.
public struct NodeCredentials: Sendable {
    public var key: SigningKey
    public var network: NetworkID
    public var credential: Credential
    /// The newest links of this node's sclerotia chain, sent with the certificate.
    public var links: [SclerotiaLink]

    public init(key: SigningKey, network: NetworkID, credential: Credential, links: [SclerotiaLink] = []) {
        self.key = key; self.network = network; self.credential = credential; self.links = links
    }

    public var nodeID: NodeID {
        if case .member(let c) = credential { return c.nodeID }
        return NodeID(publicKey: key.publicKey)
    }
}

/// Admits joiners whose invite passed the handshake's checks: the agent's implementation asks the
/// network (the primary spore marks the invite used and a quorum of sclerotia issues the
/// certificate) and waits for the result, within the handshake's timeout.
public protocol JoinAuthority: Sendable {
    func admit(invite: Invite, nodeKey: PublicKey, now: Int64) async throws(IdentityError) -> MembershipCertificate
}

/// An authenticated connection to one peer.
///
/// `receive()` is single-consumer: call it from one task at a time. `send` may be called from any task.
public final class PeerChannel: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): `iterator` is only touched by the single consumer of
    // `receive()` (documented); everything else is immutable or a NIO Channel (thread-safe).
    public let peer: VerifiedPeer
    /// For a joiner: the certificate the server issued to us.
    public let issuedCertificate: MembershipCertificate?
    public let remoteAddress: String
    /// This TLS session's RFC 9266 channel binding (32 bytes), equal on both ends and unique to the
    /// session. Protocols that derive keys from the authenticated session (rhizomorph) start here.
    public let channelBinding: [UInt8]
    let channel: Channel
    private var iterator: AsyncThrowingStream<Frame, Error>.AsyncIterator

    init(peer: VerifiedPeer, issued: MembershipCertificate?, channel: Channel, binding: [UInt8],
         iterator: AsyncThrowingStream<Frame, Error>.AsyncIterator) {
        self.peer = peer
        self.channelBinding = binding
        self.issuedCertificate = issued
        self.channel = channel
        self.iterator = iterator
        self.remoteAddress = describe(channel.remoteAddress)
    }

    /// Sends an application frame (`type` ≥ 16).
    public func send(type: UInt8, payload: [UInt8]) async throws {
        precondition(type >= ChannelFrameType.firstApplicationType, "frame types below 16 are reserved for the channel")
        try await channel.writeAndFlush(Frame(type: type, payload: payload)).get()
    }

    /// The next application frame; nil when the peer closed cleanly. Throws `HandshakeError`
    /// (`.peerSilent`, `.malformed`, `.tls`) when the channel failed.
    public func receive() async throws -> Frame? {
        try await iterator.next()
    }

    public func close() async {
        try? await channel.close().get()
    }

    public var isActive: Bool { channel.isActive }
}

/// Accepts authenticated connections.
public final class PeerListener: Sendable {
    let serverChannel: Channel
    public var port: Int { serverChannel.localAddress?.port ?? 0 }

    /// Listens on `host:port` (port 0 picks a free one). Each peer that passes the handshake is
    /// handed to `onPeer`; each refusal is logged with the peer's address and the reason.
    public static func start(
        host: String, port: Int, credentials: NodeCredentials, settings: ChannelSettings = ChannelSettings(),
        group: EventLoopGroup, logger: Logger, policy: @escaping @Sendable () -> HandshakePolicy,
        joinAuthority: JoinAuthority? = nil,
        onRefusal: (@Sendable (_ address: String, _ error: Error) -> Void)? = nil,
        onPeer: @escaping @Sendable (PeerChannel) async -> Void
    ) async throws -> PeerListener {
        try await start(host: host, port: port, credentials: { credentials }, settings: settings, group: group, logger: logger,
                        policy: policy, joinAuthority: joinAuthority, onRefusal: onRefusal, onPeer: onPeer)
    }

    /// As above, with credentials read for each connection (a renewed certificate is presented at once;
    /// the node key, and so the TLS certificate, stays the one of the first call).
    public static func start(
        host: String, port: Int, credentials current: @escaping @Sendable () -> NodeCredentials,
        settings: ChannelSettings = ChannelSettings(),
        group: EventLoopGroup, logger: Logger, policy: @escaping @Sendable () -> HandshakePolicy,
        joinAuthority: JoinAuthority? = nil,
        onRefusal: (@Sendable (_ address: String, _ error: Error) -> Void)? = nil,
        onPeer: @escaping @Sendable (PeerChannel) async -> Void
    ) async throws -> PeerListener {
        let first = current()
        let (cert, key) = try NodeTLS.certificate(key: first.key, nodeID: first.nodeID, now: unixNow())
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let secrets = SessionSecrets()
                    let ctx = try NIOSSLContext(configuration: NodeTLS.configuration(server: true, certificate: cert, key: key, secrets: secrets))
                    let ssl = NIOSSLServerHandler(context: ctx, customVerificationCallback: pinningCallback(secrets))
                    let stream = try addChannelHandlers(channel, ssl: ssl, settings: settings)
                    let address = describe(channel.remoteAddress)
                    Task {
                        do {
                            let peer = try await runHandshake(
                                channel: channel, frames: stream, role: .server, credentials: current(), secrets: secrets,
                                settings: settings, policy: policy(), joinAuthority: joinAuthority)
                            logger.debug("peer authenticated", metadata: ["peer": "\(address)", "node": "\(peer.peer.nodeID)"])
                            await onPeer(peer)
                        } catch {
                            logger.warning("refused peer", metadata: ["peer": "\(address)", "reason": "\(error)"])
                            onRefusal?(address, error)
                            try? await channel.close().get()
                        }
                    }
                }
            }
        let ch = try await bootstrap.bind(host: host, port: port).get()
        return PeerListener(serverChannel: ch)
    }

    init(serverChannel: Channel) { self.serverChannel = serverChannel }

    public func close() async { try? await serverChannel.close().get() }
}

extension PeerChannel {
    /// Connects to a peer and runs the handshake. Throws `HandshakeError` naming the cause.
    public static func connect(
        host: String, port: Int, credentials: NodeCredentials, settings: ChannelSettings = ChannelSettings(),
        group: EventLoopGroup, logger: Logger, policy: HandshakePolicy
    ) async throws -> PeerChannel {
        try await connect(host: host, port: port, credentials: credentials, settings: settings, group: group,
                          logger: logger, policy: policy, tamper: nil)
    }

    /// As `connect`, with a hook that lets tests send forged handshake messages (replays, relays).
    static func connect(
        host: String, port: Int, credentials: NodeCredentials, settings: ChannelSettings,
        group: EventLoopGroup, logger: Logger, policy: HandshakePolicy, tamper: HandshakeTamper?
    ) async throws -> PeerChannel {
        let (cert, key) = try NodeTLS.certificate(key: credentials.key, nodeID: credentials.nodeID, now: unixNow())
        let secrets = SessionSecrets()
        let ctx = try NIOSSLContext(configuration: NodeTLS.configuration(server: false, certificate: cert, key: key, secrets: secrets))
        let box = StreamHolder()
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(settings.handshakeTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let ssl = try NIOSSLClientHandler(context: ctx, serverHostname: nil, customVerificationCallback: pinningCallback(secrets))
                    box.set(try addChannelHandlers(channel, ssl: ssl, settings: settings))
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            throw HandshakeError(.tls("cannot connect to \(host):\(port): \(error)"))
        }
        guard let stream = box.get() else { throw HandshakeError(.closed) }
        do {
            return try await runHandshake(channel: channel, frames: stream, role: .client, credentials: credentials, secrets: secrets,
                                          settings: settings, policy: policy, joinAuthority: nil, tamper: tamper)
        } catch {
            logger.warning("handshake with peer failed", metadata: ["peer": "\(host):\(port)", "reason": "\(error)"])
            try? await channel.close().get()
            throw error
        }
    }
}

/// Hands the stream made inside the channel initializer to the connecting task.
final class StreamHolder: Sendable {
    private let box = NIOLockedValueBox<AsyncThrowingStream<Frame, Error>?>(nil)
    func set(_ s: AsyncThrowingStream<Frame, Error>) { box.withLockedValue { $0 = s } }
    func get() -> AsyncThrowingStream<Frame, Error>? { box.withLockedValue { $0 } }
}

/// "ip:port" (or "[ip]:port" for IPv6), the way operators write addresses.
func describe(_ a: SocketAddress?) -> String {
    guard let a, let ip = a.ipAddress, let port = a.port else { return a?.description ?? "?" }
    return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
}

func unixNow() -> Int64 { Int64(Date().timeIntervalSince1970) }

/// Accepts any Ed25519 self-signed certificate at the TLS layer and remembers its key; the
/// membership handshake decides whether that key belongs to a member. BoringSSL still checks the
/// CertificateVerify signature, so the peer has proven it holds the key.
func pinningCallback(_ secrets: SessionSecrets) -> NIOSSLCustomVerificationCallback {
    { certs, promise in
        guard let leaf = certs.first, let key = NodeTLS.ed25519Key(of: leaf) else {
            promise.succeed(.failed)
            return
        }
        secrets.setPeerKey(key)
        promise.succeed(.certificateVerified)
    }
}

func addChannelHandlers(_ channel: Channel, ssl: ChannelHandler, settings: ChannelSettings) throws
    -> AsyncThrowingStream<Frame, Error>
{
    let (stream, continuation) = AsyncThrowingStream<Frame, Error>.makeStream()
    let handler = FrameChannelHandler(continuation: continuation, maxFrameSize: settings.maxFrameSize,
                                      peerTimeout: settings.peerTimeout)
    let sync = channel.pipeline.syncOperations
    try sync.addHandler(ssl)
    try sync.addHandler(IdleStateHandler(readTimeout: settings.peerTimeout, writeTimeout: settings.heartbeatInterval))
    try sync.addHandler(handler)
    return stream
}

/// Runs the membership handshake on a connected channel; returns the authenticated channel.
func runHandshake(
    channel: Channel, frames stream: AsyncThrowingStream<Frame, Error>, role: HandshakeRole, credentials: NodeCredentials,
    secrets: SessionSecrets, settings: ChannelSettings, policy: HandshakePolicy, joinAuthority: JoinAuthority?,
    tamper: HandshakeTamper? = nil
) async throws -> PeerChannel {
    let timeout = channel.eventLoop.scheduleTask(in: settings.handshakeTimeout) {
        channel.pipeline.fireErrorCaught(HandshakeError(.timeout("membership handshake did not finish in \(settings.handshakeTimeout)")))
    }
    defer { timeout.cancel() }
    var it = stream.makeAsyncIterator()

    func expect(_ type: UInt8, _ what: String) async throws -> [UInt8] {
        guard let f = try await it.next() else { throw HandshakeError(.closed) }
        if f.type == ChannelFrameType.verdict && type != ChannelFrameType.verdict,
           case .refused(let reason)? = try? Verdict(decoding: f.payload) {
            throw HandshakeError(.refusedByPeer(reason))
        }
        guard f.type == type else { throw HandshakeError(.protocolViolation("expected \(what), got frame type \(f.type)")) }
        return f.payload
    }
    func refuse(_ e: HandshakeError) async -> HandshakeError {
        try? await channel.writeAndFlush(Frame(type: ChannelFrameType.verdict, payload: Verdict.refused(reason: e.description).encoded())).get()
        return e
    }

    let nonce = Sodium.randomBytes(32)
    let hello = tamper?.hello ?? Hello(networkID: credentials.network, nonce: nonce, time: policy.now, credential: credentials.credential,
                                       links: credentials.links)
    try await channel.writeAndFlush(Frame(type: ChannelFrameType.hello, payload: hello.encoded())).get()
    let peerHello: Hello
    do { peerHello = try Hello(decoding: try await expect(ChannelFrameType.hello, "hello")) } catch let e as HandshakeError {
        throw await refuse(e)
    }
    // The TLS handshake has completed on our side by the time the peer's first frame arrives.
    guard let binding = secrets.binding, let tlsKey = secrets.peerKey else {
        throw await refuse(HandshakeError(.tls("no channel binding or peer key after the TLS handshake")))
    }
    let proof = tamper?.proof ?? Proof.make(role: role, network: credentials.network, binding: binding, peerNonce: peerHello.nonce, key: credentials.key)
    tamper?.sent?(hello, proof)
    try await channel.writeAndFlush(Frame(type: ChannelFrameType.proof, payload: proof.encoded())).get()

    var verified: VerifiedPeer
    var issued: MembershipCertificate?
    do {
        let peerProof = try Proof(decoding: try await expect(ChannelFrameType.proof, "proof"))
        verified = try HandshakeVerifier.verify(hello: peerHello, proof: peerProof, tlsKey: tlsKey, binding: binding,
                                                ourNonce: nonce, peerRole: role.peer, policy: policy)
        if let invite = verified.joiningWith {
            guard let joinAuthority else { throw HandshakeError(.inviteRefused(IdentityError(.inviteUnknown))) }
            do {
                issued = try await joinAuthority.admit(invite: invite, nodeKey: tlsKey, now: policy.now)
            } catch {
                throw HandshakeError(.inviteRefused(error))
            }
            verified.certificate = issued
        }
    } catch let e as HandshakeError {
        throw await refuse(e)
    }
    try await channel.writeAndFlush(Frame(type: ChannelFrameType.verdict, payload: Verdict.accepted(issued: issued).encoded())).get()

    // Authenticated only once the peer accepted us too (in TLS 1.3 the client finishes its
    // handshake before the server has judged the client certificate).
    let verdict = try Verdict(decoding: try await expect(ChannelFrameType.verdict, "verdict"))
    var ourCertificate: MembershipCertificate?
    switch verdict {
    case .refused(let reason): throw HandshakeError(.refusedByPeer(reason))
    case .accepted(let cert):
        if let cert {
            guard case .invite = credentials.credential, cert.nodeKey == credentials.key.publicKey else {
                throw await refuse(HandshakeError(.protocolViolation("peer issued a certificate we did not ask for")))
            }
            do {
                var chain = policy.chain
                try chain.absorb(peerHello.links)
                try cert.verify(chain: chain, now: policy.now)
            } catch {
                throw await refuse(HandshakeError(.notAMember(error)))
            }
            ourCertificate = cert
        }
    }
    return PeerChannel(peer: verified, issued: ourCertificate, channel: channel, binding: binding, iterator: it)
}

/// Test hook: replace what the client sends, or record it for a later replay.
struct HandshakeTamper: Sendable {
    var hello: Hello?
    var proof: Proof?
    var sent: (@Sendable (Hello, Proof) -> Void)?
}

/// Bytes ↔ frames, heartbeats and the silent-peer timeout.
final class FrameChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = Frame
    typealias OutboundOut = ByteBuffer

    private var decoder: FrameDecoder
    private let continuation: AsyncThrowingStream<Frame, Error>.Continuation
    private let peerTimeout: TimeAmount
    private var failed = false

    init(continuation: AsyncThrowingStream<Frame, Error>.Continuation, maxFrameSize: Int, peerTimeout: TimeAmount) {
        self.decoder = FrameDecoder(maxFrameSize: maxFrameSize)
        self.continuation = continuation
        self.peerTimeout = peerTimeout
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buf = unwrapInboundIn(data)
        guard !failed, let bytes = buf.readBytes(length: buf.readableBytes) else { return }
        decoder.append(bytes)
        do {
            while let f = try decoder.next() {
                if f.type == ChannelFrameType.ping { continue }  // its arrival already reset the idle timer
                continuation.yield(f)
            }
        } catch {
            fail(context: context, HandshakeError(.malformed("frame: \(error)")))
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = unwrapOutboundIn(data)
        var buf = context.channel.allocator.buffer(capacity: Frame.headerSize + frame.payload.count)
        buf.writeBytes(frame.encoded())
        context.write(wrapOutboundOut(buf), promise: promise)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent {
            switch idle {
            case .write:
                var buf = context.channel.allocator.buffer(capacity: Frame.headerSize)
                buf.writeBytes(Frame(type: ChannelFrameType.ping, payload: []).encoded())
                context.writeAndFlush(wrapOutboundOut(buf), promise: nil)
            case .read:
                fail(context: context, HandshakeError(.peerSilent(seconds: Double(peerTimeout.nanoseconds) / 1e9)))
            case .all:
                break
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        do { try decoder.finish() } catch {
            continuation.finish(throwing: HandshakeError(.malformed("connection closed inside a frame: \(error)")))
        }
        continuation.finish()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let e = error as? HandshakeError {
            fail(context: context, e)
        } else {
            fail(context: context, HandshakeError(.tls("\(error)")))
        }
    }

    private func fail(context: ChannelHandlerContext, _ e: HandshakeError) {
        guard !failed else { return }
        failed = true
        continuation.finish(throwing: e)
        context.close(promise: nil)
    }
}
