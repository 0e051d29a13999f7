// Loopback tests of the Swift wrapper: two paths (127.0.0.1 and 127.0.0.2), an ordered stream through
// file descriptors, pages with barriers, and refusal of a peer with the wrong identity.

import Foundation
import XCTest
import MyceliumIdentity
import Rhizomorph

final class RhizomorphTests: XCTestCase {
    private let network = NetworkID(genesisKey: SigningKey(seed: [UInt8](repeating: 0xEE, count: 32)).publicKey)

    private func identity(_ byte: UInt8) throws -> SigningKey { SigningKey(seed: [UInt8](repeating: byte, count: 32)) }

    /// Runs `body` on another thread; `wait()` returns its result.
    private final class Background<T>: @unchecked Sendable {
        private let done = DispatchSemaphore(value: 0)
        private var result: Result<T, Error>?
        init(_ body: @escaping @Sendable () throws -> T) {
            Thread.detachNewThread { [self] in
                result = Result { try body() }
                done.signal()
            }
        }
        func wait() throws -> T {
            done.wait()
            return try result!.get()
        }
    }

    private final class CallCounter: @unchecked Sendable {
        private let lock = NSLock()
        private var n = 0
        func add() { lock.lock(); n += 1; lock.unlock() }
        var value: Int { lock.lock(); defer { lock.unlock() }; return n }
    }

    private func temporaryFile(_ name: String) -> (path: String, fd: Int32) {
        let path = NSTemporaryDirectory() + "rz-xctest-\(getpid())-\(name)"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0)
        return (path, fd)
    }

    func testTwoPathStreamThroughFileDescriptors() throws {
        let server = try identity(1), client = try identity(2)
        let listener = try Listener(addresses: ["127.0.0.1", "127.0.0.2"])
        let serverConfig = Configuration(identity: server, network: network, peer: client.publicKey)
        let sink = temporaryFile("sink")
        defer { close(sink.fd); unlink(sink.path) }
        let sinkFD = sink.fd
        let receiver = Background { () throws -> (UInt64, [UInt8]) in
            let session = try listener.accept(serverConfig, timeoutMilliseconds: 10_000)
            defer { session.close() }
            let n = try session.receive(intoFileDescriptor: sinkFD)
            return (n, session.id)
        }

        var payload = [UInt8](repeating: 0, count: 3 << 20)
        var x: UInt32 = 12345
        for i in payload.indices { x = x &* 1_103_515_245 &+ 12345; payload[i] = UInt8(truncatingIfNeeded: x >> 16) }
        let source = temporaryFile("source")
        defer { close(source.fd); unlink(source.path) }
        XCTAssertEqual(payload.withUnsafeBytes { write(source.fd, $0.baseAddress, $0.count) }, payload.count)
        lseek(source.fd, 0, SEEK_SET)

        var config = Configuration(identity: client, network: network, peer: server.publicKey)
        config.chunkSize = 16384
        let paths = [Path(local: "127.0.0.1", remote: "127.0.0.1", port: listener.port),
                     Path(local: "127.0.0.2", remote: "127.0.0.2", port: listener.port)]
        let session = try Session.connect(config, paths: paths)
        XCTAssertTrue(session.waitForConnections(4, timeoutMilliseconds: 5000))
        try session.send(fromFileDescriptor: source.fd, length: UInt64(payload.count))
        let stats = session.statistics
        let clientID = session.id
        session.close()

        let (received, serverID) = try receiver.wait()
        XCTAssertEqual(received, UInt64(payload.count))
        XCTAssertEqual(clientID, serverID)
        XCTAssertEqual(stats.connectionsJoined, 4, "2 paths x 2 connections")
        XCTAssertEqual(stats.bytesSent, UInt64(payload.count))
        var back = [UInt8](repeating: 0, count: payload.count)
        XCTAssertEqual(back.withUnsafeMutableBytes { pread(sink.fd, $0.baseAddress, $0.count, 0) }, payload.count)
        XCTAssertEqual(back, payload)
    }

    func testPagesAndBarriers() throws {
        let server = try identity(3), client = try identity(4)
        let listener = try Listener(addresses: ["127.0.0.1", "127.0.0.2"])
        let serverConfig = Configuration(identity: server, network: network, peer: client.publicKey)
        let pageSize = 4096, pages = 64, epochs = 3
        let receiver = Background { () throws -> ([UInt8], [UInt64], [Int]) in
            let session = try listener.accept(serverConfig, timeoutMilliseconds: 10_000)
            defer { session.close() }
            var region = [UInt8](repeating: 0, count: pageSize * pages)
            var barriers: [UInt64] = []
            var pagesPerEpoch: [Int] = []
            var count = 0
            try session.receivePages(
                onPage: { offset, data in
                    // The first byte of every page carries its epoch: no page may overtake its barrier.
                    XCTAssertEqual(Int(data[0]), barriers.count)
                    region.withUnsafeMutableBytes { dst in
                        dst.baseAddress!.advanced(by: Int(offset)).copyMemory(from: data.baseAddress!, byteCount: data.count)
                    }
                    count += 1
                },
                onBarrier: { epoch in
                    barriers.append(epoch)
                    pagesPerEpoch.append(count)
                    count = 0
                })
            return (region, barriers, pagesPerEpoch)
        }

        let config = Configuration(identity: client, network: network, peer: server.publicKey)
        let paths = [Path(local: "127.0.0.1", remote: "127.0.0.1", port: listener.port),
                     Path(local: "127.0.0.2", remote: "127.0.0.2", port: listener.port)]
        let session = try Session.connect(config, paths: paths)
        var expected = [UInt8](repeating: 0, count: pageSize * pages)
        var sentPerEpoch: [Int] = []
        for epoch in 0..<epochs {
            // Epoch 0 writes every page, later epochs every other page, newest content wins.
            let chosen = (0..<pages).filter { epoch == 0 || $0 % 2 == epoch % 2 }.reversed()
            for page in chosen {
                var bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: page &* 7 &+ epoch), count: pageSize)
                bytes[0] = UInt8(epoch)
                try session.sendPage(offset: UInt64(page * pageSize), bytes)
                expected.replaceSubrange(page * pageSize..<(page + 1) * pageSize, with: bytes)
            }
            sentPerEpoch.append(chosen.count)
            try session.sendBarrier(epoch: UInt64(100 + epoch))
        }
        try session.end(timeoutMilliseconds: 10_000)
        session.close()

        let (region, barriers, pagesPerEpoch) = try receiver.wait()
        XCTAssertEqual(barriers, [100, 101, 102])
        XCTAssertEqual(pagesPerEpoch, sentPerEpoch)
        XCTAssertEqual(region, expected)
    }

    func testWrongIdentityIsRefused() throws {
        let server = try identity(5), client = try identity(6), mallory = try identity(7)
        let listener = try Listener(addresses: ["127.0.0.1"])
        let serverConfig = Configuration(identity: server, network: network, peer: client.publicKey)
        let acceptor = Background { () throws -> Session in try listener.accept(serverConfig, timeoutMilliseconds: 10_000) }

        let config = Configuration(identity: mallory, network: network, peer: server.publicKey)
        XCTAssertThrowsError(try Session.connect(config, paths: [Path(local: "127.0.0.1", remote: "127.0.0.1", port: listener.port)])) { error in
            let e = error as? RhizomorphError
            XCTAssertEqual(e?.code, .wrongPeerIdentity)
            XCTAssertTrue(e?.message.contains("wrong peer identity") ?? false, "\(String(describing: e))")
        }
        XCTAssertThrowsError(try acceptor.wait()) { error in
            let e = error as? RhizomorphError
            XCTAssertEqual(e?.code, .wrongPeerIdentity)
            XCTAssertTrue(e?.message.contains("expected") ?? false, "\(String(describing: e))")
        }
    }

    /// close() while other threads are inside receive and send calls on the same session: they must
    /// all return (with `.closed` or the session's failure) and the C session must be freed only
    /// after the last of them left it. Before the fix, close() freed it under their feet: a
    /// use-after-free that AddressSanitizer reports (build with -sanitize=address).
    func testCloseWhileOtherThreadsAreInsideTheSession() throws {
        let server = try identity(8), client = try identity(9)
        let listener = try Listener(addresses: ["127.0.0.1"])
        for round in 0..<5 {
            let serverConfig = Configuration(identity: server, network: network, peer: client.publicKey)
            let acceptor = Background { () throws -> Session in try listener.accept(serverConfig, timeoutMilliseconds: 10_000) }
            var config = Configuration(identity: client, network: network, peer: server.publicKey)
            config.connectionsPerPath = 1
            let peer = try Session.connect(config, paths: [Path(local: "127.0.0.1", remote: "127.0.0.1", port: listener.port)])
            defer { peer.close() }
            let session = try acceptor.wait()

            let calls = CallCounter()
            var workers: [Background<String>] = []
            for w in 0..<8 {
                workers.append(Background { () -> String in
                    let page = [UInt8](repeating: UInt8(w), count: 4096)
                    while true {
                        do {
                            if w % 2 == 0 {
                                try session.receivePages(timeoutMilliseconds: 2, onPage: { _, _ in }, onBarrier: { _ in })
                            } else {
                                try session.sendPage(offset: UInt64(w * 4096), page)
                                _ = session.statistics
                            }
                        } catch let e as RhizomorphError where e.code == .timedOut {
                        } catch let e as RhizomorphError {
                            return "\(e.code)"
                        } catch {
                            return "\(error)"
                        }
                        calls.add()
                    }
                })
            }
            // Close only once every worker is busy inside the session.
            let deadline = Date().addingTimeInterval(10)
            while calls.value < 200 && Date() < deadline { sched_yield() }
            XCTAssertGreaterThanOrEqual(calls.value, 200, "round \(round): workers never got going")
            session.close()
            for w in workers {
                let outcome = try w.wait()
                XCTAssertEqual(outcome, "closed", "round \(round): a worker ended with \(outcome)")
            }
            XCTAssertThrowsError(try session.flush(timeoutMilliseconds: 0)) { XCTAssertEqual(($0 as? RhizomorphError)?.code, .closed) }
        }
    }

    func testRDMAProbeReportsNoDeviceHere() throws {
        // No RDMA hardware on the development machines: probing must say "none", not fail.
        XCTAssertGreaterThanOrEqual(try rdmaDeviceCount(), 0)
    }
}
