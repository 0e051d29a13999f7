import Foundation
import Logging
import MyceliumCore
import MyceliumIdentity
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import XCTest
@testable import MyceliumTransport

/// A small world: one network (genesis key) and helpers to make members of it.
struct TestNetwork {
    let genesis = SigningKey()
    var id: NetworkID { NetworkID(genesisKey: genesis.publicKey) }
    let now = Int64(Date().timeIntervalSince1970)

    func member(key: SigningKey = SigningKey(), validFor: Int64 = 3600, issuedAt: Int64? = nil) -> NodeCredentials {
        let cert = MembershipCertificate.issue(by: genesis, nodeID: NodeID(publicKey: key.publicKey), nodeKey: key.publicKey,
                                               roles: [.member], serial: 1, issuedAt: issuedAt ?? now - 10, validFor: validFor)
        return NodeCredentials(key: key, network: id, credential: .member(cert))
    }

    /// The chain of a network still in its genesis generation: the genesis key alone signs.
    var chain: SclerotiaChain { SclerotiaChain(genesisKey: genesis.publicKey) }

    func policy(revoked: Set<NodeID> = [], keys: KeyRegistry = KeyRegistry(), inviters: [NodeID: PublicKey]? = nil) -> HandshakePolicy {
        HandshakePolicy(chain: chain, now: Int64(Date().timeIntervalSince1970), revoked: revoked, keys: keys, inviters: inviters)
    }
}

/// Stands in for the network's admission (the primary spore and a quorum of sclerotia in the
/// agent): issues with the genesis key and refuses an invite it has seen, as the spore does.
final class TestJoinAuthority: JoinAuthority {
    let genesis: SigningKey
    private let used = NIOLockedValueBox<Set<[UInt8]>>([])

    init(genesis: SigningKey) { self.genesis = genesis }

    func admit(invite: Invite, nodeKey: PublicKey, now: Int64) async throws(IdentityError) -> MembershipCertificate {
        let fresh = used.withLockedValue { $0.insert(invite.ledgerKey).inserted }
        if !fresh { throw IdentityError(.inviteAlreadyUsed) }
        return MembershipCertificate.issue(by: genesis, nodeID: NodeID(publicKey: nodeKey), nodeKey: nodeKey, roles: invite.roles,
                                           serial: 1, issuedAt: now, validFor: 3600)
    }
}

/// Collects what the listener refused, so tests can assert the server's reason.
final class Refusals: Sendable {
    private let box = NIOLockedValueBox<[HandshakeError]>([])
    func add(_ e: Error) { box.withLockedValue { $0.append((e as? HandshakeError) ?? HandshakeError(.tls("\(e)"))) } }
    var all: [HandshakeError] { box.withLockedValue { $0 } }

    func waitForOne(timeout: Double = 10) async throws -> HandshakeError {
        try await waitFor(count: 1, timeout: timeout)
        return all[0]
    }

    /// Polls (10 ms apart) until `count` refusals are recorded; returns the last.
    @discardableResult
    func waitFor(count: Int, timeout: Double = 10) async throws -> HandshakeError {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let got = all
            if got.count >= count { return got[count - 1] }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        throw HandshakeError(.timeout("\(all.count) refusals recorded, waited for \(count)"))
    }
}

final class ChannelTests: XCTestCase {
    var group: MultiThreadedEventLoopGroup!
    var logger = Logger(label: "test")

    override func setUp() {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        logger.logLevel = .critical
    }

    override func tearDown() async throws {
        try await group.shutdownGracefully()
    }

    /// Starts a listener that echoes application frames back with type+1.
    func echoServer(_ net: TestNetwork, creds: NodeCredentials? = nil, settings: ChannelSettings = ChannelSettings(),
                    revoked: Set<NodeID> = [], authority: JoinAuthority? = nil, inviters: [NodeID: PublicKey]? = nil,
                    serverErrors: Refusals? = nil) async throws -> (PeerListener, Refusals) {
        let refusals = Refusals()
        let listener = try await PeerListener.start(
            host: "127.0.0.1", port: 0, credentials: creds ?? net.member(), settings: settings, group: group, logger: logger,
            policy: { net.policy(revoked: revoked, inviters: inviters) }, joinAuthority: authority,
            onRefusal: { _, e in refusals.add(e) },
            onPeer: { peer in
                do {
                    while let f = try await peer.receive() {
                        try await peer.send(type: f.type + 1, payload: f.payload)
                    }
                } catch {
                    serverErrors?.add(error)
                }
            })
        return (listener, refusals)
    }

    func testTwoMembersExchangeMessages() async throws {
        let net = TestNetwork()
        let serverCreds = net.member()
        let (listener, refusals) = try await echoServer(net, creds: serverCreds)
        let client = try await PeerChannel.connect(host: "127.0.0.1", port: listener.port, credentials: net.member(),
                                                   group: group, logger: logger, policy: net.policy())
        XCTAssertEqual(client.peer.nodeID, serverCreds.nodeID, "the client knows which member it reached")
        XCTAssertEqual(client.channelBinding.count, 32)
        for i in 0..<20 {
            let payload = [UInt8](repeating: UInt8(i), count: i * 1000)
            try await client.send(type: 16, payload: payload)
            let back = try await client.receive()
            XCTAssertEqual(back, Frame(type: 17, payload: payload))
        }
        XCTAssertTrue(refusals.all.isEmpty)
        await client.close()
        await listener.close()
    }

    func testPeerFromAnotherNetworkIsRefused() async throws {
        let net = TestNetwork(), other = TestNetwork()
        let (listener, refusals) = try await echoServer(net)
        do {
            _ = try await PeerChannel.connect(host: "127.0.0.1", port: listener.port, credentials: other.member(),
                                              group: group, logger: logger, policy: other.policy())
            XCTFail("a node of another network was let in")
        } catch let e as HandshakeError {
            // The client judges the server too: it sees either its own check or the server's refusal.
            switch e.code {
            case .wrongNetwork, .refusedByPeer: break
            default: XCTFail("unexpected \(e)")
            }
        }
        let serverSide = try await refusals.waitForOne()
        guard case .wrongNetwork = serverSide.code else { return XCTFail("server said \(serverSide)") }
        await listener.close()
    }

    func testStolenCertificateWithDifferentKeyIsRefused() async throws {
        let net = TestNetwork()
        let (listener, refusals) = try await echoServer(net)
        let victim = net.member()
        // Mallory presents the victim's certificate over TLS with her own key.
        let mallory = NodeCredentials(key: SigningKey(), network: net.id, credential: victim.credential)
        await XCTAssertThrowsAsync(try await PeerChannel.connect(host: "127.0.0.1", port: listener.port, credentials: mallory,
                                                                 group: self.group, logger: self.logger, policy: net.policy()))
        let e = try await refusals.waitForOne()
        XCTAssertEqual(e.code, .keyMismatch(victim.nodeID), "\(e)")
        await listener.close()
    }

    func testReplayedHandshakeIsRefused() async throws {
        let net = TestNetwork()
        let (listener, refusals) = try await echoServer(net)
        let victim = net.member()
        // 1. Record a genuine handshake.
        let captured = NIOLockedValueBox<(Hello, Proof)?>(nil)
        let ok = try await PeerChannel.connect(host: "127.0.0.1", port: listener.port, credentials: victim, settings: ChannelSettings(),
                                               group: group, logger: logger, policy: net.policy(),
                                               tamper: HandshakeTamper(sent: { h, p in captured.withLockedValue { $0 = (h, p) } }))
        await ok.close()
        let (hello, proof) = try XCTUnwrap(captured.withLockedValue { $0 })
        // 2. Replay it on a new connection (the attacker has only its own TLS key).
        let attacker = NodeCredentials(key: SigningKey(), network: net.id, credential: victim.credential)
        await XCTAssertThrowsAsync(try await PeerChannel.connect(
            host: "127.0.0.1", port: listener.port, credentials: attacker, settings: ChannelSettings(), group: self.group,
            logger: self.logger, policy: net.policy(), tamper: HandshakeTamper(hello: hello, proof: proof)))
        let e = try await refusals.waitForOne()
        XCTAssertEqual(e.code, .replayedHandshake, "\(e)")
        await listener.close()
    }

    func testExpiredAndRevokedMembersAreRefused() async throws {
        let net = TestNetwork()
        let revokedMember = net.member()
        let (listener, refusals) = try await echoServer(net, revoked: [revokedMember.nodeID])
        let expired = net.member(validFor: 5, issuedAt: net.now - 100)
        await XCTAssertThrowsAsync(try await PeerChannel.connect(host: "127.0.0.1", port: listener.port, credentials: expired,
                                                                 group: self.group, logger: self.logger, policy: net.policy()))
        var e = try await refusals.waitForOne()
        guard case .expiredMember = e.code else { return XCTFail("\(e)") }
        await XCTAssertThrowsAsync(try await PeerChannel.connect(host: "127.0.0.1", port: listener.port, credentials: revokedMember,
                                                                 group: self.group, logger: self.logger, policy: net.policy()))
        e = try await refusals.waitFor(count: 2)
        XCTAssertEqual(e.code, .revokedMember(revokedMember.nodeID))
        await listener.close()
    }

    func testRotatedOutKeyIsRefusedAndNewKeyAccepted() async throws {
        let net = TestNetwork()
        let oldKey = SigningKey(), newKey = SigningKey()
        let id = NodeID(publicKey: oldKey.publicKey)
        let rotation = KeyRotation.create(node: id, from: oldKey, to: newKey, sequence: 1, issuedAt: net.now)
        var registry = KeyRegistry()
        try registry.apply(rotation)
        let keys = registry
        let refusals = Refusals()
        let listener = try await PeerListener.start(
            host: "127.0.0.1", port: 0, credentials: net.member(), group: group, logger: logger,
            policy: { net.policy(keys: keys) },
            onRefusal: { _, e in refusals.add(e) }, onPeer: { _ in })
        // The old key with its (still unexpired) old certificate.
        let oldCert = MembershipCertificate.issue(by: net.genesis, nodeID: id, nodeKey: oldKey.publicKey, roles: .member,
                                                  serial: 1, issuedAt: net.now - 10, validFor: 3600)
        await XCTAssertThrowsAsync(try await PeerChannel.connect(
            host: "127.0.0.1", port: listener.port, credentials: NodeCredentials(key: oldKey, network: net.id, credential: .member(oldCert)),
            group: self.group, logger: self.logger, policy: net.policy()))
        let e = try await refusals.waitForOne()
        XCTAssertEqual(e.code, .retiredKey(id), "\(e)")
        // The new key, certified under the same node ID.
        let newCert = MembershipCertificate.issue(by: net.genesis, nodeID: id, nodeKey: newKey.publicKey, roles: .member,
                                                  serial: 2, issuedAt: net.now - 10, validFor: 3600)
        let ok = try await PeerChannel.connect(host: "127.0.0.1", port: listener.port,
                                               credentials: NodeCredentials(key: newKey, network: net.id, credential: .member(newCert)),
                                               group: group, logger: logger, policy: net.policy())
        await ok.close()
        await listener.close()
    }

    func testJoinWithInviteOnceOnly() async throws {
        let net = TestNetwork()
        let inviterKey = SigningKey()
        let inviter = NodeID(publicKey: inviterKey.publicKey)
        let authority = TestJoinAuthority(genesis: net.genesis)
        let (listener, refusals) = try await echoServer(net, authority: authority, inviters: [inviter: inviterKey.publicKey])
        let invite = try Invite.create(genesisKey: net.genesis.publicKey, inviter: inviter, key: inviterKey,
                                       addresses: ["127.0.0.1:\(listener.port)"], roles: [.member], issuedAt: net.now, validFor: 600)
        let joinerKey = SigningKey()
        let joiner = NodeCredentials(key: joinerKey, network: invite.networkID, credential: .invite(invite))
        let ch = try await PeerChannel.connect(host: "127.0.0.1", port: listener.port, credentials: joiner,
                                               group: group, logger: logger, policy: net.policy())
        let cert = try XCTUnwrap(ch.issuedCertificate)
        XCTAssertEqual(cert.nodeKey, joinerKey.publicKey)
        XCTAssertNoThrow(try cert.verify(chain: net.chain, now: net.now))
        await ch.close()
        // The same invite a second time: the authority's refusal reaches the server's log as such.
        await XCTAssertThrowsAsync(try await PeerChannel.connect(host: "127.0.0.1", port: listener.port,
                                                                 credentials: NodeCredentials(key: SigningKey(), network: net.id, credential: .invite(invite)),
                                                                 group: self.group, logger: self.logger, policy: net.policy()))
        let e = try await refusals.waitForOne()
        XCTAssertEqual(e.code, .inviteRefused(IdentityError(.inviteAlreadyUsed)), "\(e)")
        // And the certificate it got works as a member credential.
        let member = try await PeerChannel.connect(host: "127.0.0.1", port: listener.port,
                                                   credentials: NodeCredentials(key: joinerKey, network: net.id, credential: .member(cert)),
                                                   group: group, logger: logger, policy: net.policy())
        await member.close()
        await listener.close()
    }

    /// An invite whose inviter the server does not know as an inviter never reaches the authority.
    func testInviteFromAnUnknownInviterIsRefused() async throws {
        let net = TestNetwork()
        let inviterKey = SigningKey(), strangerKey = SigningKey()
        let inviter = NodeID(publicKey: inviterKey.publicKey), stranger = NodeID(publicKey: strangerKey.publicKey)
        let authority = TestJoinAuthority(genesis: net.genesis)
        let (listener, refusals) = try await echoServer(net, authority: authority, inviters: [inviter: inviterKey.publicKey])
        let invite = try Invite.create(genesisKey: net.genesis.publicKey, inviter: stranger, key: strangerKey,
                                       addresses: [], roles: [.member], issuedAt: net.now, validFor: 600)
        do {
            _ = try await PeerChannel.connect(host: "127.0.0.1", port: listener.port,
                                              credentials: NodeCredentials(key: SigningKey(), network: net.id, credential: .invite(invite)),
                                              group: group, logger: logger, policy: net.policy())
            XCTFail("an invite by a non-inviter was honoured")
        } catch let e as HandshakeError {
            guard case .refusedByPeer(let reason) = e.code else { return XCTFail("\(e)") }
            XCTAssertTrue(reason.contains("inviter role"), reason)
        }
        let e = try await refusals.waitForOne()
        guard case .inviteRefused(let ie) = e.code, case .inviterNotAllowed(stranger, _) = ie.code else { return XCTFail("\(e)") }
        // The authority was never asked: the invite is still unused there.
        let later = try Invite.create(genesisKey: net.genesis.publicKey, inviter: inviter, key: inviterKey, addresses: [], roles: [.member],
                                      issuedAt: net.now, validFor: 600, secret: invite.secret)
        let ch = try await PeerChannel.connect(host: "127.0.0.1", port: listener.port,
                                               credentials: NodeCredentials(key: SigningKey(), network: net.id, credential: .invite(later)),
                                               group: group, logger: logger, policy: net.policy())
        XCTAssertNotNil(ch.issuedCertificate)
        await ch.close()
        await listener.close()
    }

    func testSilentPeerIsDetectedByHeartbeatTimeout() async throws {
        let net = TestNetwork()
        var serverSettings = ChannelSettings()
        serverSettings.peerTimeout = .milliseconds(400)
        let serverErrors = Refusals()
        let (listener, _) = try await echoServer(net, settings: serverSettings, serverErrors: serverErrors)
        var quiet = ChannelSettings()
        quiet.heartbeatInterval = .seconds(60)  // this client never pings
        let client = try await PeerChannel.connect(host: "127.0.0.1", port: listener.port, credentials: net.member(), settings: quiet,
                                                   group: group, logger: logger, policy: net.policy())
        let e = try await serverErrors.waitForOne()
        guard case .peerSilent = e.code else { return XCTFail("\(e)") }
        await client.close()
        await listener.close()
    }

    func testHeartbeatsKeepAnIdleChannelAlive() async throws {
        let net = TestNetwork()
        var s = ChannelSettings()
        s.heartbeatInterval = .milliseconds(50)
        s.peerTimeout = .milliseconds(300)
        let serverErrors = Refusals()
        let (listener, _) = try await echoServer(net, settings: s, serverErrors: serverErrors)
        let client = try await PeerChannel.connect(host: "127.0.0.1", port: listener.port, credentials: net.member(), settings: s,
                                                   group: group, logger: logger, policy: net.policy())
        // The behaviour under test, not synchronisation: the application stays silent for more than
        // three peer timeouts, and only the heartbeats may keep the channel alive.
        try await Task.sleep(nanoseconds: 1_000_000_000)
        XCTAssertTrue(serverErrors.all.isEmpty, "\(serverErrors.all)")
        try await client.send(type: 20, payload: [1])
        let back = try await client.receive()
        XCTAssertEqual(back?.type, 21)
        await client.close()
        await listener.close()
    }

    func testOversizedAndTruncatedFramesAreRefusedWithoutCrash() async throws {
        let net = TestNetwork()
        var s = ChannelSettings()
        s.maxFrameSize = 64 * 1024
        let serverErrors = Refusals()
        let (listener, _) = try await echoServer(net, settings: s, serverErrors: serverErrors)
        // Oversized: a header claiming 1 GiB, sent under the frame encoder.
        let client = try await PeerChannel.connect(host: "127.0.0.1", port: listener.port, credentials: net.member(), settings: s,
                                                   group: group, logger: logger, policy: net.policy())
        try await rawWrite(client, [0x40, 0, 0, 0, 1, 16, 0, 0])
        var e = try await serverErrors.waitForOne()
        guard case .malformed(let m) = e.code, m.contains("over its limit") else { return XCTFail("\(e)") }
        await client.close()
        // Truncated: half a frame, then close.
        let serverErrors2 = Refusals()
        let (listener2, _) = try await echoServer(net, settings: s, serverErrors: serverErrors2)
        let c2 = try await PeerChannel.connect(host: "127.0.0.1", port: listener2.port, credentials: net.member(), settings: s,
                                               group: group, logger: logger, policy: net.policy())
        try await rawWrite(c2, Array(Frame(type: 16, payload: [UInt8](repeating: 1, count: 100)).encoded().prefix(50)))
        await c2.close()
        e = try await serverErrors2.waitForOne()
        guard case .malformed(let m2) = e.code, m2.contains("closed inside a frame") else { return XCTFail("\(e)") }
        await listener.close()
        await listener2.close()
    }

    func testRandomBytesOnTheSocketDoNotHurtTheListener() async throws {
        let net = TestNetwork()
        let (listener, refusals) = try await echoServer(net)
        var rng = SeededRandom(seed: 77)
        for round in 0..<5 {
            let garbage = (0..<(200 * (round + 1))).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let ch = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: listener.port).get()
            var buf = ch.allocator.buffer(capacity: garbage.count)
            buf.writeBytes(garbage)
            try? await ch.writeAndFlush(buf).get()
            try? await ch.closeFuture.get()  // the server hangs up on garbage
        }
        _ = try await refusals.waitForOne()
        // Still serving members.
        let ok = try await PeerChannel.connect(host: "127.0.0.1", port: listener.port, credentials: net.member(),
                                               group: group, logger: logger, policy: net.policy())
        try await ok.send(type: 16, payload: [9])
        let back = try await ok.receive()
        XCTAssertEqual(back?.payload, [9])
        await ok.close()
        await listener.close()
    }

    /// Writes bytes under the frame encoder, as a buggy or hostile peer would.
    func rawWrite(_ ch: PeerChannel, _ bytes: [UInt8]) async throws {
        let channel = ch.channel
        try await channel.eventLoop.submit {
            let ctx = try channel.pipeline.syncOperations.context(handlerType: FrameChannelHandler.self)
            var buf = channel.allocator.buffer(capacity: bytes.count)
            buf.writeBytes(bytes)
            ctx.writeAndFlush(NIOAny(buf), promise: nil)
        }.get()
    }
}

func XCTAssertThrowsAsync<T>(_ body: @autoclosure () async throws -> T, file: StaticString = #filePath, line: UInt = #line) async {
    do {
        _ = try await body()
        XCTFail("expected an error", file: file, line: line)
    } catch {}
}
