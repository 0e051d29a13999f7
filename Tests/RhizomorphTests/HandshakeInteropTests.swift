// The stream handshake has two implementations: MyceliumIdentity's Swift core (used by Endophyte's
// TCP transport) and CRhizomorph's C (the reference). Each is run here against the other over real
// loopback sockets: they must accept each other, and refuse the same tampering with matching errors
// on both sides (docs/HANDSHAKE.md, "Refusals").

import Endophyte
import Foundation
import MyceliumCore
import MyceliumIdentity
import Rhizomorph
import XCTest

final class HandshakeInteropTests: XCTestCase {
    let network = NetworkID(genesisKey: SigningKey(seed: [UInt8](repeating: 0xA1, count: 32)).publicKey)
    let otherNetwork = NetworkID(genesisKey: SigningKey(seed: [UInt8](repeating: 0xA2, count: 32)).publicKey)
    let server = SigningKey(seed: [UInt8](repeating: 0x51, count: 32))
    let client = SigningKey(seed: [UInt8](repeating: 0xC1, count: 32))
    let stranger = SigningKey(seed: [UInt8](repeating: 0x99, count: 32))

    /// The C library's code for each Swift code: the same refusal must read the same on both sides.
    static let matching: [StreamHandshakeError.Code: RhizomorphError.Code] = [
        .wrongNetwork: .wrongNetwork, .wrongPeerKey: .wrongPeerIdentity, .badSignature: .badSignature,
        .malformed: .malformed, .versionMismatch: .versionMismatch,
    ]

    final class Background<T>: @unchecked Sendable {
        private let done = DispatchSemaphore(value: 0)
        private var result: Result<T, Error>?
        init(_ body: @escaping @Sendable () throws -> T) {
            Thread.detachNewThread { [self] in
                result = Result { try body() }
                done.signal()
            }
        }
        func wait() -> Result<T, Error> {
            done.wait()
            return result!
        }
    }

    // MARK: raw sockets for the Swift side

    static func connectTCP(port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { close(fd); throw POSIXError(.ECONNREFUSED) }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    static func listenTCP() -> (fd: Int32, port: UInt16) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(fd, 4)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return (fd, UInt16(bigEndian: addr.sin_port))
    }

    static func acceptTCP(_ listener: Int32) -> Int32 {
        let fd = accept(listener, nil, nil)
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    static func write(_ fd: Int32, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    static func readExact(_ fd: Int32, _ n: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var got = 0
        while got < n {
            let r = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, n - got, 0) }
            if r <= 0 { throw POSIXError(.ECONNRESET) }
            got += r
        }
        return out
    }

    static func readMessage(_ fd: Int32) throws -> [UInt8] {
        let pre = try readExact(fd, StreamHandshake.preambleBytes)
        return pre + (try readExact(fd, try StreamHandshake.bodyLength(preamble: pre)))
    }

    // MARK: Swift client against the C server

    enum Tamper { case none, flipProofByte, replayProof }

    /// Runs the Swift client against rz_accept; returns the Swift outcome and the C outcome.
    func swiftClientAgainstC(clientNetwork: NetworkID? = nil, serverExpects: PublicKey? = nil, tamper: Tamper = .none,
                             oldProof: [UInt8]? = nil)
        throws -> (swift: Result<[UInt8], Error>, c: Result<[UInt8], Error>, proof: [UInt8]) {
        let listener = try Listener(addresses: ["127.0.0.1"])
        var config = Configuration(identity: server, network: network, peer: serverExpects ?? client.publicKey)
        config.connectionsPerPath = 1
        let cfg = config
        let acceptor = Background { () throws -> [UInt8] in
            let s = try listener.accept(cfg, timeoutMilliseconds: 10_000)
            defer { s.close() }
            return s.id
        }
        let fd = try Self.connectTCP(port: listener.port)
        defer { close(fd) }
        var hs = StreamHandshakeClient(identity: client, network: clientNetwork ?? network,
                                       ephemeralSecret: Sodium.randomBytes(32), nonce: Sodium.randomBytes(32))
        var sentProof: [UInt8] = []
        let swift: Result<[UInt8], Error> = Result { () throws -> [UInt8] in
            Self.write(fd, hs.hello)
            guard let reply = try? Self.readMessage(fd) else { throw ConnectionEnded() }
            var proof: [UInt8]
            do { proof = try hs.receiveReply(reply, accepts: { $0 == self.server.publicKey }) } catch let e as StreamHandshakeError {
                if let r = e.reject { Self.write(fd, r) }
                throw e
            }
            switch tamper {
            case .none: break
            case .flipProofByte: proof[proof.count - 1] ^= 1
            case .replayProof: proof = oldProof!
            }
            sentProof = proof
            Self.write(fd, proof)
            guard let verdict = try? Self.readMessage(fd) else { throw ConnectionEnded() }
            try hs.receiveVerdict(verdict)
            return hs.sessionID
        }
        return (swift, acceptor.wait(), sentProof)
    }

    func testSwiftClientAndCServerAcceptEachOther() throws {
        let (swift, c, _) = try swiftClientAgainstC()
        let swiftID = try swift.get(), cID = try c.get()
        XCTAssertEqual(swiftID, cID, "both ends agree on the session the C server chose")
    }

    func testSwiftClientAndCServerRefuseTheSameTampering() throws {
        let (_, _, genuineProof) = try swiftClientAgainstC()
        let cases: [(String, () throws -> (swift: Result<[UInt8], Error>, c: Result<[UInt8], Error>, proof: [UInt8]), StreamHandshakeError.Code)] = [
            ("wrong network", { try self.swiftClientAgainstC(clientNetwork: self.otherNetwork) }, .wrongNetwork),
            ("wrong expected key", { try self.swiftClientAgainstC(serverExpects: self.stranger.publicKey) }, .wrongPeerKey),
            ("flipped signature byte", { try self.swiftClientAgainstC(tamper: .flipProofByte) }, .badSignature),
            ("replayed proof", { try self.swiftClientAgainstC(tamper: .replayProof, oldProof: genuineProof) }, .badSignature),
        ]
        for (name, run, expected) in cases {
            let (swift, c, _) = try run()
            guard case .failure(let se as StreamHandshakeError) = swift else { XCTFail("\(name): the Swift client did not refuse: \(swift)"); continue }
            guard case .failure(let ce as RhizomorphError) = c else { XCTFail("\(name): the C server accepted: \(c)"); continue }
            XCTAssertEqual(se.code, expected, "\(name): \(se)")
            XCTAssertEqual(ce.code, Self.matching[expected], "\(name): \(ce)")
            XCTAssertTrue(se.byPeer, "\(name): the C server found it and told the Swift client: \(se)")
            XCTAssertTrue(se.message.contains(ce.message), "\(name): the REJECT carries the C reason: \(se.message) / \(ce.message)")
        }
    }

    // MARK: C client against the Swift server

    enum ServerTamper { case none, flipReplySignature, replayReply }

    func cClientAgainstSwift(clientNetwork: NetworkID? = nil, serverExpects: PublicKey? = nil, tamper: ServerTamper = .none,
                             oldReply: [UInt8]? = nil)
        throws -> (swift: Result<[UInt8], Error>, c: Result<[UInt8], Error>, reply: [UInt8]) {
        let (lfd, port) = Self.listenTCP()
        defer { close(lfd) }
        let (srv, net, expect) = (server, network, serverExpects ?? client.publicKey)
        let swiftSide = Background { () throws -> ([UInt8], [UInt8]) in
            let fd = Self.acceptTCP(lfd)
            defer { close(fd) }
            let hello = try Self.readMessage(fd)
            let hs: StreamHandshakeServer
            do {
                hs = try StreamHandshakeServer(hello: hello, identity: srv, network: net, accepts: { $0 == expect },
                                               ephemeralSecret: Sodium.randomBytes(32), nonce: Sodium.randomBytes(32),
                                               sessionID: Sodium.randomBytes(16), cipher: 2)
            } catch let e as StreamHandshakeError {
                if let r = e.reject { Self.write(fd, r) }
                throw e
            }
            var reply = hs.reply
            switch tamper {
            case .none: break
            case .flipReplySignature: reply[reply.count - 1] ^= 1
            case .replayReply: reply = oldReply!
            }
            Self.write(fd, reply)
            let proof = try Self.readMessage(fd)
            do { Self.write(fd, try hs.receiveProof(proof)) } catch let e as StreamHandshakeError {
                if let r = e.reject { Self.write(fd, r) }
                throw e
            }
            // Hold the connection until the C client has its session, then let it go.
            _ = try? Self.readMessage(fd)
            return (hs.sessionID, hs.reply)
        }
        var config = Configuration(identity: client, network: clientNetwork ?? network, peer: server.publicKey)
        config.connectionsPerPath = 1
        let c = Result { () throws -> [UInt8] in
            let s = try Session.connect(config, paths: [Path(local: "127.0.0.1", remote: "127.0.0.1", port: port)])
            defer { s.close() }
            return s.id
        }
        let swiftResult = swiftSide.wait()
        let swift = swiftResult.map { $0.0 }
        return (swift, c, (try? swiftResult.get().1) ?? [])
    }

    func testCClientAndSwiftServerAcceptEachOther() throws {
        let (swift, c, _) = try cClientAgainstSwift()
        XCTAssertEqual(try swift.get(), try c.get())
    }

    func testCClientAndSwiftServerRefuseTheSameTampering() throws {
        let (_, _, genuineReply) = try cClientAgainstSwift()
        XCTAssertFalse(genuineReply.isEmpty)
        let cases: [(String, () throws -> (swift: Result<[UInt8], Error>, c: Result<[UInt8], Error>, reply: [UInt8]), StreamHandshakeError.Code, Bool)] = [
            ("wrong network", { try self.cClientAgainstSwift(clientNetwork: self.otherNetwork) }, .wrongNetwork, false),
            ("wrong expected key", { try self.cClientAgainstSwift(serverExpects: self.stranger.publicKey) }, .wrongPeerKey, false),
            ("flipped signature byte", { try self.cClientAgainstSwift(tamper: .flipReplySignature) }, .badSignature, true),
            ("replayed reply", { try self.cClientAgainstSwift(tamper: .replayReply, oldReply: genuineReply) }, .badSignature, true),
        ]
        for (name, run, expected, cFinds) in cases {
            let (swift, c, _) = try run()
            guard case .failure(let se as StreamHandshakeError) = swift else { XCTFail("\(name): the Swift server did not refuse: \(swift)"); continue }
            guard case .failure(let ce as RhizomorphError) = c else { XCTFail("\(name): the C client accepted: \(c)"); continue }
            XCTAssertEqual(se.code, expected, "\(name): \(se)")
            XCTAssertEqual(ce.code, Self.matching[expected], "\(name): \(ce)")
            // Whoever found the fault says so; the other side hears it in a REJECT.
            XCTAssertEqual(se.byPeer, cFinds, "\(name): \(se)")
            XCTAssertEqual(ce.message.hasPrefix("peer refused"), !cFinds, "\(name): \(ce)")
        }
    }

    // MARK: Endophyte's transport against rhizomorph

    func testEndophyteTransportAndRhizomorphShareTheHandshake() throws {
        // Endophyte source -> rhizomorph listener.
        let listener = try Listener(addresses: ["127.0.0.1"])
        var config = Configuration(identity: server, network: network, peer: client.publicKey)
        config.connectionsPerPath = 1
        let cfg = config
        let acceptor = Background { () throws -> Bool in
            let s = try listener.accept(cfg, timeoutMilliseconds: 10_000)
            s.close()
            return true
        }
        let t = try TCPReplicationTransport.connect(host: "127.0.0.1", port: listener.port, identity: client, network: network,
                                                    accept: { $0 == self.server.publicKey })
        XCTAssertEqual(t.peerKey, server.publicKey)
        t.close()
        XCTAssertTrue(try acceptor.wait().get())

        // Rhizomorph client -> Endophyte replica, on the wrong network: both name the same cause.
        let replica = try ReplicationListener()
        defer { replica.close() }
        let (srv, net, ck) = (server, network, client.publicKey)
        let replicaSide = Background { () throws -> Bool in
            _ = try replica.accept(identity: srv, network: net, authorize: { $0 == ck })
            return true
        }
        var wrong = Configuration(identity: client, network: otherNetwork, peer: server.publicKey)
        wrong.connectionsPerPath = 1
        XCTAssertThrowsError(try Session.connect(wrong, paths: [Path(local: "127.0.0.1", remote: "127.0.0.1", port: replica.port)])) {
            XCTAssertEqual(($0 as? RhizomorphError)?.code, .wrongNetwork, "\($0)")
        }
        guard case .failure(let e) = replicaSide.wait(), case .authenticationFailed(let reason)? = (e as? EndophyteError)?.code else {
            return XCTFail("the replica accepted a peer from another network")
        }
        XCTAssertTrue(reason.contains("wrong network"), reason)
    }
}

/// The connection ended before a message arrived (the test shell's failure, not a refusal).
struct ConnectionEnded: Error {}
