// MyceliumRBD against a real Ceph cluster: the suite brings one up once (scripts/ceph up in a
// temporary directory: 1 mon, 1 mgr, 3 OSDs on files) and takes it down at the end, also when a test
// fails. If the cluster cannot start here every test FAILS with the reason (never a skip).
// Needs root and Debian's Ceph (scripts/setup).

import Foundation
import Glibc
import XCTest
import CephTestSupport
@testable import MyceliumRBD

final class MyceliumRBDTests: XCTestCase {
    // Set once in class setUp, read by the tests (XCTest runs them one at a time).
    nonisolated(unsafe) static var cluster: CephTestClusterResult?

    override class func setUp() {
        super.setUp()
        cluster = CephTestCluster.up(suite: "MyceliumRBDTests", osds: 3)
    }

    override class func tearDown() {
        CephTestCluster.down(cluster.upCluster, suite: "MyceliumRBDTests")
        super.tearDown()
    }

    func requireCluster() throws -> TestCluster { try Self.cluster.require() }

    struct SocketError: Error, CustomStringConvertible { let description: String }

    func uniqueName(_ prefix: String) -> String { "\(prefix)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))" }

    /// Asserts that `body` throws an RBDError matching `check`.
    func assertThrows(_ what: String, file: StaticString = #filePath, line: UInt = #line,
                      _ body: () async throws(RBDError) -> Void, _ check: (RBDError) -> Bool) async {
        do {
            try await body()
            XCTFail("\(what): succeeded, but should have failed", file: file, line: line)
        } catch {
            XCTAssertTrue(check(error), "\(what): wrong error: \(error)", file: file, line: line)
        }
    }

    // MARK: images

    func testCreateWriteReadSnapshotDelete() async throws {
        let c = try requireCluster()
        let conn = try await CephConnection.connect(c.config)
        let rbdExists = try await conn.poolExists("rbd")
        XCTAssertTrue(rbdExists)
        let missingExists = try await conn.poolExists("no-such-pool")
        XCTAssertFalse(missingExists)
        let name = uniqueName("vol")
        try await conn.createImage(pool: "rbd", name: name, size: 64 << 20)
        cleanUp(c, name)
        let listed = try await conn.images(pool: "rbd").contains(name)
        XCTAssertTrue(listed)

        let img = try await conn.openImage(pool: "rbd", name: name)
        let info = try await img.stat()
        XCTAssertEqual(info.size, 64 << 20)
        XCTAssertEqual(info.objectSize, 4 << 20)

        // Bytes at an offset that spans two 4 MiB objects, read back exactly.
        var bytes = [UInt8](repeating: 0, count: 1 << 20)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        let offset: UInt64 = (4 << 20) - 4096
        try await img.write(bytes, at: offset)
        try await img.flush()
        let readBack = try await img.read(count: bytes.count, at: offset)
        XCTAssertEqual(readBack, bytes)
        let unwritten = try await img.read(count: 16, at: 0)
        XCTAssertEqual(unwritten, [UInt8](repeating: 0, count: 16), "unwritten space reads as zeros")

        // A snapshot keeps the old bytes while the image moves on.
        try await img.createSnapshot("before")
        try await img.write([0xAA, 0xBB], at: offset)
        let snaps = try await img.snapshots()
        XCTAssertEqual(snaps.map(\.name), ["before"])
        XCTAssertEqual(snaps.first?.size, 64 << 20)
        let atSnap = try await conn.openImage(pool: "rbd", name: name, snapshot: "before")
        let snapBytes = try await atSnap.read(count: 2, at: offset)
        XCTAssertEqual(snapBytes, Array(bytes.prefix(2)))
        await assertThrows("write to a snapshot", { () throws(RBDError) in try await atSnap.write([1], at: 0) }) {
            if case .invalidArgument(_, _, let e) = $0 { return e == EROFS } else { return false }
        }
        try await atSnap.close()
        let current = try await img.read(count: 2, at: offset)
        XCTAssertEqual(current, [0xAA, 0xBB])
        await assertThrows("a snapshot name that exists", { () throws(RBDError) in try await img.createSnapshot("before") }) {
            if case .alreadyExists = $0 { return true } else { return false }
        }

        // Deleting is refused while snapshots exist and while the image is open.
        await assertThrows("delete while the image is open here", { () throws(RBDError) in try await conn.removeImage(pool: "rbd", name: name) }) {
            if case .inUse(let image, let watchers, _, let e) = $0 { return image == "rbd/\(name)" && e == EBUSY && watchers.count == 1 } else { return false }
        }
        try await img.removeSnapshot("before")
        let snapsLeft = try await img.snapshots()
        XCTAssertEqual(snapsLeft, [])
        try await img.close()
        try await img.close()  // idempotent
        await assertThrows("I/O on a closed image", { () throws(RBDError) in _ = try await img.read(count: 1, at: 0) }) {
            if case .closed = $0 { return true } else { return false }
        }

        try await conn.removeImage(pool: "rbd", name: name)
        let stillListed = try await conn.images(pool: "rbd").contains(name)
        XCTAssertFalse(stillListed)
        await assertThrows("delete a deleted image", { () throws(RBDError) in try await conn.removeImage(pool: "rbd", name: name) }) {
            if case .notFound(_, _, let e) = $0 { return e == ENOENT } else { return false }
        }
        await assertThrows("open a deleted image", { () throws(RBDError) in _ = try await conn.openImage(pool: "rbd", name: name) }) {
            if case .notFound = $0 { return true } else { return false }
        }
    }

    func testResize() async throws {
        let c = try requireCluster()
        let conn = try await CephConnection.connect(c.config)
        let name = uniqueName("grow")
        try await conn.createImage(pool: "rbd", name: name, size: 8 << 20)
        cleanUp(c, name)
        let img = try await conn.openImage(pool: "rbd", name: name)
        try await img.write([1, 2, 3, 4], at: 100)
        try await img.resize(to: 32 << 20)
        let grown = try await img.stat().size
        XCTAssertEqual(grown, 32 << 20)
        try await img.write([9, 9], at: (32 << 20) - 2)
        let tail = try await img.read(count: 2, at: (32 << 20) - 2)
        XCTAssertEqual(tail, [9, 9])
        let keptAfterGrow = try await img.read(count: 4, at: 100)
        XCTAssertEqual(keptAfterGrow, [1, 2, 3, 4], "growing keeps the data")
        try await img.resize(to: 4 << 20)
        let shrunk = try await img.stat().size
        XCTAssertEqual(shrunk, 4 << 20)
        let keptAfterShrink = try await img.read(count: 4, at: 100)
        XCTAssertEqual(keptAfterShrink, [1, 2, 3, 4], "shrinking keeps what is below the new size")
        await assertThrows("resize to 0", { () throws(RBDError) in try await img.resize(to: 0) }) {
            if case .invalidArgument(_, _, let e) = $0 { return e == EINVAL } else { return false }
        }
        try await img.close()
    }

    func testBadInputGivesTypedErrors() async throws {
        let c = try requireCluster()
        let conn = try await CephConnection.connect(c.config)
        let name = uniqueName("bad")
        // A placement group's own view (pg query to its primary OSD); a malformed id is refused before Ceph sees it.
        let query = try await conn.placementGroupCommand("1.0", "query", ["format": .string("json")])
        let pg = try JSONSerialization.jsonObject(with: Data(query.output.utf8)) as? [String: Any]
        XCTAssertNotNil(pg?["state"] as? String, query.output.prefix(200).description)
        XCTAssertEqual((pg?["acting"] as? [Int])?.count, 3, "pool 1 (.mgr or rbd) has size 3 on the 3 OSDs")
        await assertThrows("a malformed PG id", { () throws(RBDError) in _ = try await conn.placementGroupCommand("1/0", "query") }) {
            if case .invalidArgument(_, _, EINVAL) = $0 { return true } else { return false }
        }
        // Extra client options: a known one is applied, an unknown one refused by name.
        var cacheOff = c.config
        cacheOff.options = ["rbd_cache": "false"]
        _ = try await CephConnection.connect(cacheOff)
        var unknown = c.config
        unknown.options = ["no_such_ceph_option": "1"]
        await assertThrows("an unknown client option", { () throws(RBDError) in _ = try await CephConnection.connect(unknown) }) {
            if case .invalidArgument(let reason, _, _) = $0 { return reason.contains("no_such_ceph_option=1") } else { return false }
        }
        await assertThrows("size 0", { () throws(RBDError) in try await conn.createImage(pool: "rbd", name: name, size: 0) }) {
            if case .invalidArgument(_, _, let e) = $0 { return e == EINVAL } else { return false }
        }
        let halfCreated = try await conn.images(pool: "rbd").contains(name)
        XCTAssertFalse(halfCreated, "nothing half-created")
        await assertThrows("a name with a slash", { () throws(RBDError) in try await conn.createImage(pool: "rbd", name: "a/b", size: 1 << 20) }) {
            if case .invalidArgument = $0 { return true } else { return false }
        }
        await assertThrows("a pool that does not exist", { () throws(RBDError) in
            try await conn.createImage(pool: "no-such-pool", name: name, size: 1 << 20)
        }) { if case .poolNotFound(let p, _, let e) = $0 { return p == "no-such-pool" && e == ENOENT } else { return false } }
        await assertThrows("open in a pool that does not exist", { () throws(RBDError) in
            _ = try await conn.openImage(pool: "no-such-pool", name: name)
        }) { if case .poolNotFound = $0 { return true } else { return false } }

        try await conn.createImage(pool: "rbd", name: name, size: 1 << 20)
        cleanUp(c, name)
        await assertThrows("a name that exists", { () throws(RBDError) in try await conn.createImage(pool: "rbd", name: name, size: 1 << 20) }) {
            if case .alreadyExists(_, _, let e) = $0 { return e == EEXIST } else { return false }
        }

        // Deleting an image another client has open: refused, naming that client; the image survives.
        let other = try await CephConnection.connect(c.config)
        let img = try await other.openImage(pool: "rbd", name: name)
        let otherAddress = try await other.address()
        await assertThrows("delete an image open elsewhere", { () throws(RBDError) in try await conn.removeImage(pool: "rbd", name: name) }) {
            if case .inUse(_, let watchers, _, let e) = $0 { return e == EBUSY && watchers.contains { $0.contains(otherAddress) } } else { return false }
        }
        let survived = try await conn.images(pool: "rbd").contains(name)
        XCTAssertTrue(survived)
        try await img.close()
        try await conn.removeImage(pool: "rbd", name: name)

        await assertThrows("blocklist garbage", { () throws(RBDError) in try await conn.blocklist(address: "x\"}", expirySeconds: 60) }) {
            if case .invalidArgument = $0 { return true } else { return false }
        }
    }

    func testCreateAndUsePool() async throws {
        let c = try requireCluster()
        let conn = try await CephConnection.connect(c.config)
        let pool = uniqueName("pool")
        let existsBefore = try await conn.poolExists(pool)
        XCTAssertFalse(existsBefore)
        try await conn.createPool(pool)
        addTeardownBlock { try? await conn.deletePool(pool) }
        let existsAfter = try await conn.poolExists(pool)
        XCTAssertTrue(existsAfter)
        await assertThrows("create it again", { () throws(RBDError) in try await conn.createPool(pool) }) {
            if case .alreadyExists = $0 { return true } else { return false }
        }
        try await conn.createImage(pool: pool, name: "v", size: 1 << 20)
        let img = try await conn.openImage(pool: pool, name: "v")
        try await img.write([42], at: 0)
        let readBack = try await img.read(count: 1, at: 0)
        XCTAssertEqual(readBack, [42])
        try await img.close()
        try await conn.removeImage(pool: pool, name: "v")
        try await conn.deletePool(pool)
        let existsAtEnd = try await conn.poolExists(pool)
        XCTAssertFalse(existsAtEnd)
    }

    // MARK: asynchronous I/O

    /// 16 requests in flight at once (rbd_aio_*, no thread per request): 512 distinct 4 KiB blocks
    /// written at queue depth 16, flushed, read back at queue depth 16 and with the blocking read;
    /// every byte is where it was written.
    func testAsyncIOAtQueueDepth16ReadsBackWhatItWrote() async throws {
        let c = try requireCluster()
        let conn = try await CephConnection.connect(c.config)
        let name = uniqueName("aio")
        try await conn.createImage(pool: "rbd", name: name, size: 16 << 20)
        cleanUp(c, name)
        let img = try await conn.openImage(pool: "rbd", name: name)
        let blocks = 512, block = 4096, depth = 16
        func pattern(_ k: Int) -> [UInt8] { (0..<block).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ k &* 131 &+ 1) } }
        // Block k goes to slot (k * 37) % 4096 of the 16 MiB image: scattered, never overlapping.
        func offset(_ k: Int) -> UInt64 { UInt64((k * 37) % 4096 * block) }

        let t0 = Date()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<depth {
                group.addTask {
                    for k in stride(from: worker, to: blocks, by: depth) { try await img.aioWrite(RBDBuffer(pattern(k)), at: offset(k)) }
                }
            }
            try await group.waitForAll()
        }
        try await img.aioFlush()
        print("MyceliumRBDTests: \(blocks) x 4 KiB async writes at queue depth \(depth) in \(String(format: "%.2f", Date().timeIntervalSince(t0))) s")

        let readBack = try await withThrowingTaskGroup(of: [(Int, [UInt8])].self) { group in
            for worker in 0..<depth {
                group.addTask {
                    var out: [(Int, [UInt8])] = []
                    let buf = RBDBuffer(count: block)
                    for k in stride(from: worker, to: blocks, by: depth) {
                        let n = try await img.aioRead(into: buf, at: offset(k))
                        XCTAssertEqual(n, block)
                        out.append((k, buf.bytes))
                    }
                    return out
                }
            }
            var all: [Int: [UInt8]] = [:]
            for try await part in group { for (k, b) in part { all[k] = b } }
            return all
        }
        XCTAssertEqual(readBack.count, blocks)
        for k in 0..<blocks where readBack[k] != pattern(k) { XCTFail("block \(k) at \(offset(k)) read back wrong"); break }
        let blocking = try await img.read(count: block, at: offset(5))
        XCTAssertEqual(blocking, pattern(5), "the blocking read sees the async write")
        let viaArray = try await img.aioRead(count: block, at: offset(6))
        XCTAssertEqual(viaArray, pattern(6))

        // Bounds: a range outside the buffer is refused before librbd sees it; one past the image's end by librbd.
        let small = RBDBuffer(count: 512)
        await assertThrows("a range outside the buffer", { () throws(RBDError) in try await img.aioWrite(small, bufferOffset: 256, length: 512, at: 0) }) {
            if case .invalidArgument(let reason, _, EINVAL) = $0 { return reason.contains("outside the 512-byte buffer") } else { return false }
        }
        await assertThrows("a negative buffer offset", { () throws(RBDError) in _ = try await img.aioRead(into: small, bufferOffset: -1, length: 1, at: 0) }) {
            if case .invalidArgument = $0 { return true } else { return false }
        }
        await assertThrows("a write past the image's end", { () throws(RBDError) in try await img.aioWrite(small, at: 32 << 20) }) {
            if case .invalidArgument = $0 { return true } else { return false }
        }

        // A closed image refuses every asynchronous call with .closed (never touches the freed handle).
        try await img.close()
        await assertThrows("aioWrite on a closed image", { () throws(RBDError) in try await img.aioWrite(small, at: 0) }) {
            if case .closed(let op) = $0 { return op.contains("(async)") } else { return false }
        }
        await assertThrows("aioRead on a closed image", { () throws(RBDError) in _ = try await img.aioRead(into: small, at: 0) }) {
            if case .closed = $0 { return true } else { return false }
        }
        await assertThrows("aioFlush on a closed image", { () throws(RBDError) in try await img.aioFlush() }) {
            if case .closed = $0 { return true } else { return false }
        }
    }

    // MARK: fencing

    /// The fencing primitive of issue 18: A holds the exclusive lock; B cannot write; B blocklists A,
    /// breaks its lock and takes it; B writes; A's writes are refused by Ceph from then on.
    func testExclusiveLockAndBlocklistFenceTheOldWriter() async throws {
        let c = try requireCluster()
        let a = try await CephConnection.connect(c.config)
        let b = try await CephConnection.connect(c.config)
        let name = uniqueName("fence")
        try await a.createImage(pool: "rbd", name: name, size: 4 << 20)
        cleanUp(c, name)
        let aAddress = try await a.address()
        addTeardownBlock { try? await b.unblocklist(address: aAddress) }

        let ia = try await a.openImage(pool: "rbd", name: name)
        try await ia.acquireExclusiveLock()
        let aOwns = try await ia.ownsExclusiveLock()
        XCTAssertTrue(aOwns)
        try await ia.write(Array("from A".utf8), at: 0)

        let ib = try await b.openImage(pool: "rbd", name: name)
        let bOwnsBefore = try await ib.ownsExclusiveLock()
        XCTAssertFalse(bOwnsBefore)
        let owners = try await ib.lockOwners()
        XCTAssertEqual(owners.count, 1)
        XCTAssertEqual(owners.first?.address, aAddress, "B sees A (by the address A reports for itself) as the owner")

        await assertThrows("B writes while A holds the lock", { () throws(RBDError) in try await ib.write(Array("from B".utf8), at: 0) }) {
            if case .lockedElsewhere = $0 { return true } else { return false }
        }
        await assertThrows("B takes the lock while A holds it", { () throws(RBDError) in try await ib.acquireExclusiveLock() }) {
            if case .lockedElsewhere = $0 { return true } else { return false }
        }
        let aView = try await ia.read(count: 6, at: 0)
        XCTAssertEqual(aView, Array("from A".utf8))

        // Fence A, then take over.
        try await b.blocklist(address: aAddress, expirySeconds: 24 * 3600)
        try await ib.breakLock(owner: owners[0].owner)
        try await ib.acquireExclusiveLock()
        let bOwns = try await ib.ownsExclusiveLock()
        XCTAssertTrue(bOwns)
        try await ib.write(Array("from B".utf8), at: 0)
        try await ib.flush()

        // A, a zombie that still thinks it owns the volume, is refused.
        await assertThrows("A writes after being blocklisted", { () throws(RBDError) in try await ia.write(Array("zombie".utf8), at: 0) }) {
            if case .blocklisted(_, let e) = $0 { return e == ESHUTDOWN } else { return false }
        }
        let finalBytes = try await ib.read(count: 6, at: 0)
        XCTAssertEqual(finalBytes, Array("from B".utf8), "the volume's data is B's")
        try? await ia.close()
        try await ib.close()
    }

    // MARK: a cluster that is down

    func testDownClusterFailsFastWithAClearError() async throws {
        let c = try requireCluster()
        let dir = c.dir + "/down-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }

        /// Connects with a conf whose only monitor is 127.0.0.1:PORT; asserts a fast, clear `.unreachable`.
        func assertUnreachable(port: UInt16, _ what: String) async throws {
            let conf = dir + "/ceph-\(port).conf"
            try """
            [global]
            fsid = \(UUID().uuidString.lowercased())
            mon host = v2:127.0.0.1:\(port)
            ms bind msgr1 = false
            auth client required = cephx
            log file = \(dir)/client.log
            admin socket = \(dir)/$name.$pid.asok

            """.write(toFile: conf, atomically: true, encoding: .utf8)
            let t0 = Date()
            do {
                _ = try await CephConnection.connect(CephClientConfig(confFile: conf, keyring: c.keyring, connectTimeout: 3))
                XCTFail("\(what): connected to a cluster that is not running")
            } catch {
                let elapsed = Date().timeIntervalSince(t0)
                XCTAssertLessThan(elapsed, 10, "\(what): a down cluster must fail in seconds (took \(elapsed) s)")
                guard case .unreachable(let mons, _, _) = error else { return XCTFail("\(what): wrong error: \(error)") }
                XCTAssertTrue(mons.contains("127.0.0.1:\(port)"), "\(what): names the monitors: \(mons)")
                XCTAssertTrue(error.description.contains("is the cluster up?"), error.description)
                print("MyceliumRBDTests: \(what): failed after \(String(format: "%.2f", elapsed)) s: \(error)")
            }
        }

        // No monitor process: nothing listens on the port (bound, then closed).
        try await assertUnreachable(port: try freePort(), "no monitor")
        // A hung monitor: the port accepts connections (the kernel completes them) but never answers,
        // so only the connect timeout ends the wait.
        let (fd, port) = try listeningSocket()
        defer { close(fd) }
        try await assertUnreachable(port: port, "a monitor that never answers")

        await assertThrows("a conf file that does not exist", { () throws(RBDError) in
            _ = try await CephConnection.connect(CephClientConfig(confFile: dir + "/nope.conf"))
        }) { if case .invalidArgument = $0 { return true } else { return false } }
    }

    // MARK: helpers

    /// A port nothing listens on now.
    func freePort() throws -> UInt16 {
        let (fd, port) = try boundSocket()
        close(fd)
        return port
    }

    /// A socket listening on 127.0.0.1 that never accepts: connections complete and then hang.
    func listeningSocket() throws -> (Int32, UInt16) {
        let (fd, port) = try boundSocket()
        guard listen(fd, 16) == 0 else { close(fd); throw SocketError(description: "listen: errno \(errno)") }
        return (fd, port)
    }

    func boundSocket() throws -> (Int32, UInt16) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard ok else { close(fd); throw SocketError(description: "bind 127.0.0.1:0: errno \(errno)") }
        return (fd, UInt16(bigEndian: addr.sin_port))
    }

    /// Deletes the image when the test ends, however it ends (snapshots first); errors ignored.
    func cleanUp(_ c: TestCluster, _ name: String) {
        addTeardownBlock {
            guard let conn = try? await CephConnection.connect(c.config) else { return }
            if let img = try? await conn.openImage(pool: "rbd", name: name) {
                for s in (try? await img.snapshots()) ?? [] { try? await img.removeSnapshot(s.name) }
                try? await img.close()
            }
            try? await conn.removeImage(pool: "rbd", name: name)
        }
    }
}
