import Foundation
import MyceliumCore
import XCTest

/// A block of loopback TCP ports for one cluster, reserved for its lifetime.
///
/// The ports lie below the kernel's ephemeral range (32768+ here, see
/// /proc/sys/net/ipv4/ip_local_port_range), so no outgoing connection can take one as its local
/// port. Test clusters use 20000–29999, the benchmarks 30000–32767 and scripts/demo 10000–19999,
/// so suites run back to back or side by side never share a block. Within the test range a block
/// is claimed by binding an abstract Unix socket named after it (released by the kernel when the
/// holder exits, however it exits), and every port of it is checked free before use.
final class PortBlock {
    static let first = 20_000, last = 29_999
    let base: Int
    let size: Int
    private var claim: Int32

    init(size: Int = 32) throws {
        self.size = size
        let blocks = (Self.last + 1 - Self.first) / size
        for _ in 0..<200 {
            let base = Self.first + Int.random(in: 0..<blocks) * size
            guard let fd = Self.claimAbstract("mycelium-test-ports-\(base)") else { continue }
            if (base..<base + size).allSatisfy(Self.isFree) {
                self.base = base
                claim = fd
                return
            }
            close(fd)
        }
        throw AgentTestError("no free block of \(size) loopback ports in \(Self.first)-\(Self.last); are old myceliumd processes still running? (pgrep -a myceliumd)")
    }

    deinit { release() }

    func release() {
        if claim >= 0 { close(claim); claim = -1 }
    }

    private static func claimAbstract(_ name: String) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(name.utf8)
        // A leading NUL puts the name in the abstract namespace: no file to clean up.
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            p[0] = 0
            for (i, b) in bytes.prefix(p.count - 1).enumerated() { p[i + 1] = b }
        }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + 1 + min(bytes.count, 107))
        let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } } == 0
        if !ok { close(fd); return nil }
        return fd
    }

    static func isFree(_ port: Int) -> Bool { LoopbackPort.isFree(port) }
}

struct AgentTestError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Polls `condition` every `poll` seconds until it holds, or fails the test after `timeout`.
func waitUntil(_ what: String, timeout: Double = 30, poll: Double = 0.05, file: StaticString = #filePath, line: UInt = #line,
               _ condition: () async throws -> Bool) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try await condition() { return }
        try await Task.sleep(nanoseconds: UInt64(poll * 1e9))
    }
    if try await condition() { return }
    XCTFail("timed out after \(timeout) s waiting for \(what)", file: file, line: line)
    throw AgentTestError("timed out: \(what)")
}

/// Every live `AgentCluster`, so that its agents are stopped and its files removed when the test
/// that made it finishes, even when the test leaks the cluster (a closure stored on it that
/// captures it keeps it alive forever) or throws. An interrupted run is covered by the agents'
/// MYCELIUM_EXIT_WITH_PARENT=1 and by scripts/test, which runs the suite in a TMPDIR of its own
/// and removes it on exit.
final class LiveClusters: NSObject, XCTestObservation, @unchecked Sendable {
    static let shared: LiveClusters = {
        let o = LiveClusters()
        XCTestObservationCenter.shared.addTestObserver(o)
        return o
    }()
    private let lock = NSLock()
    private var clusters: [ObjectIdentifier: AgentCluster] = [:]

    func add(_ c: AgentCluster) { lock.withLock { clusters[ObjectIdentifier(c)] = c } }
    func remove(_ c: AgentCluster) { _ = lock.withLock { clusters.removeValue(forKey: ObjectIdentifier(c)) } }

    func shutdownAll() {
        let all = lock.withLock { () -> [AgentCluster] in let a = Array(clusters.values); clusters = [:]; return a }
        for c in all { c.shutdown() }
    }

    func testCaseDidFinish(_ testCase: XCTestCase) { shutdownAll() }
    func testBundleDidFinish(_ testBundle: Bundle) { shutdownAll() }
}
