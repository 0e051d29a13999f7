import Foundation
import MyceliumAPI
import MyceliumCore
import MyceliumIdentity
import MyceliumSpores
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import XCTest
@testable import MyceliumAgent

/// A real HTTP server on loopback that stores PUT bodies and answers GETs, as a web server with
/// upload enabled would; `corrupt` flips a byte of every answer, `failWith` answers every request
/// with that status.
final class SeedHTTPServer: @unchecked Sendable {
    let files = NIOLockedValueBox<[String: [UInt8]]>([:])
    let corrupt = NIOLockedValueBox(false)
    let failWith = NIOLockedValueBox<Int?>(nil)
    var channel: Channel!
    var port: Int { channel.localAddress!.port! }

    init() throws {
        channel = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { [self] ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                    try ch.pipeline.syncOperations.addHandler(Handler(server: self))
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
    }

    // The last reference may go on the event loop (the child initializer holds the server), where
    // waiting is forbidden: deinit only asks the channel to close.
    deinit { channel.close(promise: nil) }

    /// The child initializer holds the server, so deinit alone never runs: tests close it in a defer.
    func close() { try? channel.close().wait() }

    final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let server: SeedHTTPServer
        var head: HTTPRequestHead?
        var body: [UInt8] = []
        init(server: SeedHTTPServer) { self.server = server }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h): head = h; body = []
            case .body(var b): body += b.readBytes(length: b.readableBytes) ?? []
            case .end:
                guard let h = head else { return }
                var status = HTTPResponseStatus.ok
                var answer: [UInt8] = []
                if let code = server.failWith.withLockedValue({ $0 }) {
                    status = HTTPResponseStatus(statusCode: code)
                } else if h.method == .PUT {
                    server.files.withLockedValue { $0[h.uri] = body }
                    status = .created
                } else if let f = server.files.withLockedValue({ $0[h.uri] }) {
                    answer = f
                    if server.corrupt.withLockedValue({ $0 }), !answer.isEmpty { answer[answer.count / 2] ^= 0x40 }
                } else {
                    status = .notFound
                }
                var headers = HTTPHeaders()
                headers.add(name: "Content-Length", value: "\(answer.count)")
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
                var buf = context.channel.allocator.buffer(capacity: answer.count)
                buf.writeBytes(answer)
                context.write(wrapOutboundOut(.body(.byteBuffer(buf))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
    }
}

final class HTTPSeedStoreTests: XCTestCase {
    func seed() -> (SeedSpore, NetworkID) {
        let genesis = SigningKey(), node = SigningKey()
        let net = NetworkIdentity(genesisKey: genesis.publicKey)
        let cert = MembershipCertificate.issue(by: genesis, nodeID: NodeID(publicKey: node.publicKey), nodeKey: node.publicKey,
                                               roles: [.member, .sclerotiumEligible, .inviter], serial: 1, issuedAt: 0, validFor: 1 << 40)
        var spore = PrimarySpore(network: net)
        try! spore.apply(SignedCommand(.admit(cert), author: cert.nodeID, key: node, network: net.id), epoch: SporeEpoch(term: 1, index: 1), time: 10)
        try! spore.apply(SignedCommand(.setSclerotia([cert.nodeID]), author: cert.nodeID, key: node, network: net.id), epoch: SporeEpoch(term: 1, index: 2), time: 11)
        return (SeedSpore(spore: spore, signer: cert, key: node, writtenAt: 12), net.id)
    }

    func testPutThenGetVerifiesAndEachFailureIsClear() async throws {
        let server = try SeedHTTPServer()
        defer { server.close() }
        let (s, net) = seed()
        let store = HTTPSeedStore(base: "http://127.0.0.1:\(server.port)/seeds", network: net)
        let missing = try await store.read()
        XCTAssertNil(missing, "nothing there yet is not an error")
        try await store.write(s)
        XCTAssertNotNil(server.files.withLockedValue { $0["/seeds/\(net).seed"] }, "PUT to base + NETWORK.seed")
        let (best, problems) = await newestSeedSpore(from: [store], network: net, knownEpoch: nil, now: 20)
        XCTAssertEqual(best?.epoch, SporeEpoch(term: 1, index: 2), "\(problems)")

        server.corrupt.withLockedValue { $0 = true }
        let (none, why) = await newestSeedSpore(from: [store], network: net, knownEpoch: nil, now: 20)
        XCTAssertNil(none)
        XCTAssertTrue(why.first?.problem.contains("checksum") == true, "a corrupted download says so: \(why)")
        server.corrupt.withLockedValue { $0 = false }

        server.failWith.withLockedValue { $0 = 503 }
        do { try await store.write(s); XCTFail("a refused PUT must throw") } catch {
            XCTAssertTrue("\(error)".contains("503"), "\(error)")
        }
        let nobody = HTTPSeedStore(base: "http://127.0.0.1:1/", network: net)
        do { _ = try await nobody.read(); XCTFail("no server must throw") } catch {}
        XCTAssertThrowsError(try HTTPClient.parse("ftp://x/"))
        XCTAssertEqual(try HTTPClient.parse("https://[::1]:8443/a/b").port, 8443)
    }

    /// Service spores over HTTP: PUT beside the seed spore, found and verified by an offline reader.
    func testServiceSporesOverHTTP() async throws {
        let server = try SeedHTTPServer()
        defer { server.close() }
        let genesis = SigningKey(), node = SigningKey()
        let net = NetworkIdentity(genesisKey: genesis.publicKey)
        let cert = MembershipCertificate.issue(by: genesis, nodeID: NodeID(publicKey: node.publicKey), nodeKey: node.publicKey,
                                               roles: [.member, .sclerotiumEligible, .inviter], serial: 1, issuedAt: 0, validFor: 1 << 40)
        var spore = PrimarySpore(network: net)
        try spore.apply(SignedCommand(.admit(cert), author: cert.nodeID, key: node, network: net.id), epoch: SporeEpoch(term: 1, index: 1), time: 10)
        let store = HTTPSeedStore(base: "http://127.0.0.1:\(server.port)/seeds/", network: net.id)
        try await store.write(SeedSpore(spore: spore, signer: cert, key: node, writtenAt: 12))
        let content = ServiceSpore.Content(name: "web", generation: 1, replicas: 1, driver: "process", ports: [ServiceSpore.Port(name: "http", port: 80)],
                                           instances: [ServiceSpore.Instance(slot: 0, node: cert.nodeID, address: "10.1.2.3", generation: 1, serving: true)])
        try await store.writeService(ServiceSpore(network: net.id, content: content, epoch: SporeEpoch(term: 1, index: 1), issuedAtMillis: 13_000,
                                                  signer: cert, key: node))
        XCTAssertNotNil(server.files.withLockedValue { $0["/seeds/\(net.id).service-web.spore"] }, "PUT to base + NETWORK.service-NAME.spore")
        var found = await findService("web", in: [store], network: net.id, now: 20)
        XCTAssertEqual(found.endpoints, ["10.1.2.3:80"], "\(found.problems)")
        found = await findService("db", in: [store], network: net.id, now: 20)
        XCTAssertNil(found.record)
        XCTAssertTrue(found.problems.contains { $0.problem.contains("no record of 'db'") }, "a 404 is 'no record': \(found.problems)")
        server.corrupt.withLockedValue { $0 = true }
        found = await findService("web", in: [store], network: net.id, now: 20)
        XCTAssertNil(found.record)
        XCTAssertTrue(found.problems.contains { $0.problem.contains("checksum") }, "\(found.problems)")
    }

    /// Real agents: the leader publishes its seed spore over HTTP, and it verifies.
    func testTheLeaderPublishesSeedSporesOverHTTP() async throws {
        let server = try SeedHTTPServer()
        defer { server.close() }
        let c = try AgentCluster()
        let port = server.port
        c.extraConfig = { _ in "seed_urls = [\"http://127.0.0.1:\(port)/mycelium/\"]\n" }
        try c.createNetwork()
        for n in ["n2", "n3"] { try c.join(n) }
        try await c.waitUntil("3 nodes formed", nodes: ["n1", "n2", "n3"], AgentCluster.formed(3))
        let net = try NetworkID(parsing: await c.status("n1")!.network)
        // Seed writes are rate-limited (seed_interval_s): the one naming all three comes within a second or two.
        func published() -> SeedSpore? {
            guard let body = server.files.withLockedValue({ $0["/mycelium/\(net).seed"] }) else { return nil }
            return try? SeedSpore(verifying: ChecksummedFile.decode(body, kind: FileKind.seedSpore, path: "http"), network: net,
                                  knownEpoch: nil, now: Int64(Date().timeIntervalSince1970))
        }
        try await waitUntil("the leader PUT a seed spore naming all three", timeout: 30) { published()?.spore.presentMembers.count == 3 }
        XCTAssertEqual(published()?.spore.presentMembers.count, 3, "the published seed spore verifies and names every member")
    }
}
