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

    /// close() while other threads are inside every kind of call on the same session (and from
    /// inside a page callback): every call ends with success, a timeout or `.closed`, nothing
    /// hangs, and the C session is freed only after the last call left it. The scenario is the
    /// `rhizomorph-stress` executable, so that scripts/test can also run it built with
    /// AddressSanitizer and ThreadSanitizer (a close that frees too early is a heap-use-after-free
    /// there); here it runs as built, in a child process.
    func testCloseWhileOtherThreadsAreInsideTheSession() throws {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("rhizomorph-stress").path) && dir.path != "/" {
            dir = dir.deletingLastPathComponent()
        }
        let p = Process()
        p.executableURL = dir.appendingPathComponent("rhizomorph-stress")
        p.arguments = ["--rounds", "12", "--seed", "\(UInt64.random(in: 1...1_000_000))"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, text)
        XCTAssertTrue(text.contains("12 rounds passed"), text)
    }

    func testMessageAssemblerAcceptsOnlyWhatAddsUp() throws {
        let a = MessageAssembler(maxMessageBytes: 1024, initialCapacity: 16)
        // Chunks in any order, past the initial capacity.
        try [UInt8](repeating: 2, count: 500).withUnsafeBytes { try a.page(offset: 500, $0) }
        try [UInt8](repeating: 1, count: 500).withUnsafeBytes { try a.page(offset: 0, $0) }
        let (type, buffer) = try a.complete(label: MessageLabel.encode(type: 7, length: 1000))
        XCTAssertEqual(type, 7)
        XCTAssertEqual(Array(buffer.body), [UInt8](repeating: 1, count: 500) + [UInt8](repeating: 2, count: 500))
        // An empty message is a barrier alone.
        XCTAssertEqual(try a.complete(label: MessageLabel.encode(type: 9, length: 0)).buffer.count, 0)

        func refused(_ what: String, _ body: () throws -> Void) {
            XCTAssertThrowsError(try body(), what) { XCTAssertEqual(($0 as? RhizomorphError)?.code, .malformed, what) }
        }
        refused("a chunk past the limit") { try [UInt8](repeating: 0, count: 10).withUnsafeBytes { try a.page(offset: 1020, $0) } }
        refused("an offset far past the limit") { try [UInt8]([1]).withUnsafeBytes { try a.page(offset: UInt64.max - 1, $0) } }
        let b = MessageAssembler(maxMessageBytes: 1024)
        try [UInt8]([1, 2, 3]).withUnsafeBytes { try b.page(offset: 0, $0) }
        refused("fewer bytes than announced") { _ = try b.complete(label: MessageLabel.encode(type: 1, length: 4)) }
        let c = MessageAssembler(maxMessageBytes: 1024)
        try [UInt8]([1, 2, 3]).withUnsafeBytes { try c.page(offset: 4, $0) }
        refused("bytes beyond the announced length") { _ = try c.complete(label: MessageLabel.encode(type: 1, length: 3)) }
        refused("another label version") { _ = try MessageLabel.decode(2 << 56 | 5) }
        XCTAssertEqual(try MessageLabel.decode(MessageLabel.encode(type: 200, length: MessageLabel.maxLength)).length, MessageLabel.maxLength)
    }

    /// Messages of every size, with bodies scattered over many buffers, arrive whole, in order and
    /// intact over two paths, in both directions at once; closing one end ends the other's wait.
    func testMessageChannelDeliversWholeMessagesInOrder() throws {
        let server = try identity(10), client = try identity(11)
        let listener = try Listener(addresses: ["127.0.0.1", "127.0.0.2"])
        let serverConfig = Configuration(identity: server, network: network, peer: client.publicKey)
        let acceptor = Background { () throws -> Session in try listener.accept(serverConfig, timeoutMilliseconds: 10_000) }
        let config = Configuration(identity: client, network: network, peer: server.publicKey)
        let paths = ["127.0.0.1", "127.0.0.2"].map { Path(local: $0, remote: $0, port: listener.port) }
        let a = MessageChannel(session: try Session.connect(config, paths: paths), maxMessageBytes: 8 << 20)
        let b = MessageChannel(session: try acceptor.wait(), maxMessageBytes: 8 << 20)
        defer { a.close(); b.close() }

        // A region to take scattered "pages" from; each message's body is the concatenation.
        var region = [UInt8](repeating: 0, count: 4 << 20)
        var x: UInt32 = 99
        for i in region.indices { x = x &* 1_103_515_245 &+ 12345; region[i] = UInt8(truncatingIfNeeded: x >> 16) }
        let sizes = [0, 1, 8, 4096, 65536, 65537, 300_000, 3 << 20, 17, 0, 1 << 20]
        let expected: [[UInt8]] = sizes.enumerated().map { i, n in Array(region[(i * 4099) % (1 << 20)..<((i * 4099) % (1 << 20) + n)]) }
        let echo = Background { () throws -> Int in
            // Echo every message back with its type plus one, while the other side is still sending.
            var n = 0
            while n < sizes.count {
                let m = try b.receive(timeout: 20)
                let body = [UInt8](m.body)
                b.recycle(m)
                try body.withUnsafeBytes { try b.send(type: m.type &+ 1, parts: [$0]) }
                n += 1
            }
            return n
        }
        try region.withUnsafeBytes { r in
            for (i, n) in sizes.enumerated() {
                // Pieces of 4 KiB or less taken from two places, so both gathering and direct runs happen.
                let start = (i * 4099) % (1 << 20)
                var parts: [UnsafeRawBufferPointer] = []
                var off = 0
                while off < n {
                    let len = min(n - off, off % 3 == 0 ? 4096 : 1000)
                    parts.append(UnsafeRawBufferPointer(rebasing: r[(start + off)..<(start + off + len)]))
                    off += len
                }
                try a.send(type: UInt8(i), parts: parts)
            }
        }
        for (i, want) in expected.enumerated() {
            let m = try a.receive(timeout: 20)
            XCTAssertEqual(m.type, UInt8(i) &+ 1, "message \(i) out of order")
            XCTAssertEqual(m.body.count, want.count, "message \(i)")
            XCTAssertTrue([UInt8](m.body) == want, "message \(i) differs")
            a.recycle(m)
        }
        XCTAssertEqual(try echo.wait(), sizes.count)
        XCTAssertEqual(a.bytesSent, UInt64(sizes.reduce(0, +)))
        let st = a.session.statistics
        XCTAssertGreaterThan(st.bytesPerPath[0], 0)
        XCTAssertGreaterThan(st.bytesPerPath[1], 0)

        // Nothing more comes: a bounded wait times out; the peer's close ends an unbounded one.
        XCTAssertThrowsError(try a.receive(timeout: 0.05)) { XCTAssertEqual(($0 as? RhizomorphError)?.code, .timedOut) }
        let waiting = Background { () throws -> ReceivedMessage in try a.receive(timeout: nil) }
        b.close()
        XCTAssertThrowsError(try waiting.wait()) { e in
            XCTAssertEqual((e as? RhizomorphError)?.code, .system(ECONNRESET), "\(e)")
        }
        XCTAssertThrowsError(try b.receive(timeout: 1)) { XCTAssertEqual(($0 as? RhizomorphError)?.code, .closed) }
    }

    func testRDMAProbeReportsNoDeviceHere() throws {
        // No RDMA hardware on the development machines: probing must say "none", not fail.
        XCTAssertGreaterThanOrEqual(try rdmaDeviceCount(), 0)
    }
}
