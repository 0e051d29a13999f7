// IPAM against the real file system: allocation order, release, exhaustion, persistence across instances,
// and mutual exclusion between threads (separate lock file descriptions, as separate processes have).

import Foundation
import XCTest
@testable import MyceliumCNI

/// withLock with an untyped closure (typed-throws closures are not inferred in Swift 6 without FullTypedThrows).
func locked<T>(_ store: IPAMStore, _ body: (LockedIPAM) throws -> T) throws(CNIError) -> T {
    try store.withLock { (l) throws(CNIError) -> T in
        do { return try body(l) } catch let e as CNIError { throw e } catch { throw CNIError(.ioFailure, "\(error)") }
    }
}

final class IPAMTests: XCTestCase {
    var dir = ""

    override func setUp() {
        dir = NSTemporaryDirectory() + "myc-ipam-unit-\(getpid())-\(Unique.next())"
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func range(_ s: String = "10.9.0.0/29", start: String? = nil, end: String? = nil) throws -> IPRange {
        try IPRange(subnet: IPv4CIDR(s)!, start: start.flatMap(IPv4Address.init), end: end.flatMap(IPv4Address.init))
    }

    func testAllocateReleaseRoundRobin() throws {
        let store = IPAMStore(dataDir: dir, network: "n")
        let r = try range()  // .1 - .6
        let a = try locked(store) { try $0.reserve(in: r, containerID: "c1", ifname: "eth0") }
        let b = try locked(store) { try $0.reserve(in: r, containerID: "c2", ifname: "eth0") }
        XCTAssertEqual(a.0.ip.description, "10.9.0.1")
        XCTAssertEqual(b.0.ip.description, "10.9.0.2")
        XCTAssertFalse(a.reused)
        // Same attachment again (an ADD retried after a crash): same address.
        let again = try locked(store) { try $0.reserve(in: r, containerID: "c1", ifname: "eth0") }
        XCTAssertEqual(again.0.ip, a.0.ip)
        XCTAssertTrue(again.reused)
        try locked(store) { try $0.release(a.0.ip) }
        try locked(store) { try $0.release(a.0.ip) }  // idempotent
        // A freed address is not reused at once: allocation continues after the last one handed out.
        let c = try locked(store) { try $0.reserve(in: r, containerID: "c3", ifname: "eth0") }
        XCTAssertEqual(c.0.ip.description, "10.9.0.3")
        let found = try locked(store) { try $0.find(containerID: "c2", ifname: "eth0") }
        XCTAssertEqual(found?.ip, b.0.ip)
    }

    func testExhaustionAndPersistenceAcrossInstances() throws {
        let r = try range()
        for i in 0..<6 {
            // A fresh store instance each time, as each plugin process has.
            let store = IPAMStore(dataDir: dir, network: "n")
            _ = try locked(store) { try $0.reserve(in: r, containerID: "c\(i)", ifname: "eth0") }
        }
        let store = IPAMStore(dataDir: dir, network: "n")
        XCTAssertThrowsError(try locked(store) { try $0.reserve(in: r, containerID: "c6", ifname: "eth0") }) {
            let e = $0 as? CNIError
            XCTAssertEqual(e?.code, .addressRangeExhausted)
            XCTAssertTrue(e?.msg.contains("10.9.0.0/29") ?? false, e?.msg ?? "")
        }
        let all = try locked(IPAMStore(dataDir: dir, network: "n")) { try $0.allocations() }
        XCTAssertEqual(all.map { $0.ip.description }, (1...6).map { "10.9.0.\($0)" })
        XCTAssertEqual(Set(all.map { $0.containerID }).count, 6)
        // Another network's state is separate.
        let other = try locked(IPAMStore(dataDir: dir, network: "m")) { try $0.reserve(in: r, containerID: "x", ifname: "eth0") }
        XCTAssertEqual(other.0.ip.description, "10.9.0.1")
    }

    func testRangeBounds() throws {
        let r = try range("10.9.0.0/24", start: "10.9.0.250", end: "10.9.0.251")
        XCTAssertEqual(r.count, 2)
        XCTAssertThrowsError(try range("10.9.0.0/24", start: "10.9.0.0"))
        XCTAssertThrowsError(try range("10.9.0.0/24", end: "10.9.0.255"))
        XCTAssertThrowsError(try range("10.9.0.0/24", start: "10.9.0.9", end: "10.9.0.8"))
    }

    func testPodCIDRFileHook() throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var cfg = IPAMConfig()
        cfg.podCIDRFile = dir + "/podcidr"
        XCTAssertThrowsError(try IPRange.resolve(cfg)) { XCTAssertEqual(($0 as? CNIError)?.code, .noPodCIDR) }
        try "10.55.3.0/24\n".write(toFile: cfg.podCIDRFile, atomically: true, encoding: .utf8)
        XCTAssertEqual(try IPRange.resolve(cfg).subnet.description, "10.55.3.0/24")
        try "garbage".write(toFile: cfg.podCIDRFile, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try IPRange.resolve(cfg)) { XCTAssertEqual(($0 as? CNIError)?.code, .invalidConfig) }
    }

    /// 40 threads race for 30 addresses, each with its own store and lock descriptor: exactly 30 win, all
    /// distinct, 10 see "exhausted".
    func testConcurrentAllocationNeverDuplicates() throws {
        let r = try range("10.9.0.0/27", start: "10.9.0.1", end: "10.9.0.30")
        let lock = NSLock()
        nonisolated(unsafe) var got: [IPv4Address] = []
        nonisolated(unsafe) var exhausted = 0
        let dir = self.dir
        DispatchQueue.concurrentPerform(iterations: 40) { i in
            let store = IPAMStore(dataDir: dir, network: "n")
            do {
                let a = try locked(store) { try $0.reserve(in: r, containerID: "c\(i)", ifname: "eth0") }
                lock.lock(); got.append(a.0.ip); lock.unlock()
            } catch {
                lock.lock()
                if (error as? CNIError)?.code == .addressRangeExhausted { exhausted += 1 }
                lock.unlock()
            }
        }
        XCTAssertEqual(got.count, 30)
        XCTAssertEqual(Set(got).count, 30, "an address was handed out twice")
        XCTAssertEqual(exhausted, 10)
    }
}
