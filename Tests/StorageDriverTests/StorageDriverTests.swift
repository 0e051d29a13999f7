// Trust-aware placement on a REAL Ceph cluster: the suite brings one up once (scripts/ceph up with
// 4 OSDs, each in its own CRUSH host node0..node3) and takes it down at the end, also when a test
// fails. Placement is checked with the cluster's own mapping (`osd map` → acting OSDs → their CRUSH
// hosts), never with our model of it. If the cluster cannot start every test FAILS with the reason.
// Needs root and Debian's Ceph (scripts/setup).

import Foundation
import Glibc
import MyceliumIdentity
import MyceliumRBD
import StorageController
@testable import StorageDriver
import XCTest
import CephTestSupport

func nodeID(_ n: Int) -> NodeID {
    var bytes = [UInt8](repeating: 0, count: 16)
    bytes[15] = UInt8(n)
    return try! NodeID(bytes: bytes)
}

final class StorageDriverTests: XCTestCase {
    static let osds = 4
    nonisolated(unsafe) static var cluster: CephTestClusterResult?

    override class func setUp() {
        super.setUp()
        cluster = CephTestCluster.up(suite: "StorageDriverTests", osds: osds)
    }

    override class func tearDown() {
        CephTestCluster.down(cluster.upCluster, suite: "StorageDriverTests")
        super.tearDown()
    }

    func requireCluster() throws -> TestCluster { try Self.cluster.require() }

    /// node0..node3 with trust 0.9, 0.8, 0.6, 0.15: all four are public, node0-2 are private and
    /// sensitive, node3 never holds private or sensitive data.
    var hosts: [StorageHost] {
        [900_000, 800_000, 600_000, 150_000].enumerated().map { i, t in
            StorageHost(crushName: "node\(i)", node: nodeID(i), trust: TrustPPM(t))
        }
    }

    /// Deletes the class pools when the test ends, however it ends.
    func deletePoolsAtEnd(_ c: TestCluster, _ pools: [String]) {
        addTeardownBlock {
            guard let conn = try? await CephConnection.connect(c.config) else { return }
            for p in pools { try? await conn.deletePool(p) }
        }
    }

    // MARK: trust moves data

    /// The planner's classes on the real cluster: sensitive data sits only on hosts at trust ≥ 0.5;
    /// a host whose trust drops is unlinked and the cluster moves the data off it; when its trust
    /// recovers the data comes back. Re-applying the same plan changes nothing.
    func testTrustDropMovesSensitiveDataOffTheHostAndBack() async throws {
        let c = try requireCluster()
        let conn = try await CephConnection.connect(c.config)
        let driver = CephStorageDriver(connection: conn)
        let planner = StoragePlanner(pgCount: 16)
        deletePoolsAtEnd(c, DataClass.defaults.map(\.poolName))

        let osdHosts = try await driver.osdHosts()
        XCTAssertEqual(Set(osdHosts.values), ["node0", "node1", "node2", "node3"], "scripts/ceph puts each OSD in its own host")
        var hosts = self.hosts

        var t0 = Date()
        let first = try await driver.reconcile(hosts: hosts, classes: DataClass.defaults, planner: planner)
        print("StorageDriverTests: first reconcile applied \(first.applied.count) actions in \(String(format: "%.2f", Date().timeIntervalSince(t0))) s")
        XCTAssertEqual(first.applied.count, 3 + 10 + 3 + 9, "\(first.applied)")
        XCTAssertEqual(first.verdicts.map(\.status), [.healthy, .healthy, .healthy], first.verdicts.map(\.message).joined(separator: "\n"))
        XCTAssertEqual(first.layout.children["mycelium-sensitive"], ["node0", "node1", "node2"])
        XCTAssertEqual(first.layout.children["mycelium-private"], ["node0", "node1", "node2"])
        XCTAssertEqual(first.layout.children["mycelium-public"], ["node0", "node1", "node2", "node3"])
        XCTAssertEqual(first.layout.rules["mycelium-sensitive"], CrushRuleState(root: "mycelium-sensitive", failureDomain: "host"))
        XCTAssertEqual(first.layout.pools["mycelium-sensitive"], PoolState(rule: "mycelium-sensitive", size: 3, minSize: 2, applications: ["rbd"]))
        XCTAssertEqual(first.layout.pools["mycelium-public"], PoolState(rule: "mycelium-public", size: 2, minSize: 1, applications: ["rbd"]))
        XCTAssertEqual(first.layout.children["default"], ["node0", "node1", "node2", "node3"], "the default root is left alone")

        // Idempotent: planning again finds nothing to do, and sending every action again changes nothing.
        let second = try await driver.reconcile(hosts: hosts, classes: DataClass.defaults, planner: planner)
        XCTAssertEqual(second.applied, [])
        XCTAssertEqual(second.layout, first.layout)
        for a in first.applied { try await driver.apply(a) }
        let reapplied = try await driver.observe()
        XCTAssertEqual(reapplied, first.layout, "re-sending the same actions changed the cluster")

        // A volume in the sensitive class, written across 8 objects.
        let pool = DataClass.sensitiveData.poolName
        let name = "vol-\(getpid())"
        try await conn.createImage(pool: pool, name: name, size: 32 << 20)
        addTeardownBlock { try? await conn.removeImage(pool: pool, name: name) }
        let img = try await conn.openImage(pool: pool, name: name)
        let info = try await img.stat()
        XCTAssertTrue(info.blockNamePrefix.hasPrefix("rbd_data."), info.blockNamePrefix)
        var objects: [String] = ["rbd_header." + info.blockNamePrefix.dropFirst("rbd_data.".count)]
        var written: [(UInt64, [UInt8])] = []
        for k in 0..<8 {
            let bytes = [UInt8](repeating: UInt8(0x40 + k), count: 4096)
            let offset = UInt64(k) * info.objectSize
            try await img.write(bytes, at: offset)
            written.append((offset, bytes))
            let hex = String(k, radix: 16)
            objects.append(info.blockNamePrefix + "." + String(repeating: "0", count: 16 - hex.count) + hex)
        }
        try await img.flush()
        func readBack(_ when: String) async throws {
            for (offset, bytes) in written {
                let got = try await img.read(count: bytes.count, at: offset)
                XCTAssertEqual(got, bytes, "\(when): data at \(offset)")
            }
        }

        // Where the cluster puts them: three replicas, only on node0-2, never on node3.
        try await waitForPlacement(driver, pool, objects, on: ["node0", "node1", "node2"], copies: 3, "after creating the classes")

        // node2's trust drops below 0.5: it leaves the sensitive root (only that one), the class is
        // degraded (its pool shrinks to 2 copies: Ceph would otherwise keep node2 in the acting set
        // through pg_temp), and the cluster moves every replica off node2.
        hosts[2].trust = 400_000
        t0 = Date()
        let dropped = try await driver.reconcile(hosts: hosts, classes: DataClass.defaults, planner: planner)
        XCTAssertEqual(dropped.applied, [.unlink(host: "node2", root: "mycelium-sensitive"), .setPoolSize(pool: pool, size: 2)])
        let verdict = try XCTUnwrap(dropped.verdict(for: "sensitive"))
        XCTAssertEqual(verdict.status, .degraded)
        XCTAssertTrue(verdict.message.hasPrefix("sensitive: only 2 hosts at trust ≥ 0.5 (node0, node1), replicas 3 cannot be placed — degraded"), verdict.message)
        print("StorageDriverTests: \(verdict.message)")
        XCTAssertEqual(dropped.layout.children["mycelium-private"], ["node0", "node1", "node2"], "node2 is still private")
        let left = try await waitForPlacement(driver, pool, objects, on: ["node0", "node1"], copies: 2, "after node2's trust dropped")
        print("StorageDriverTests: sensitive data left node2 \(String(format: "%.2f", Date().timeIntervalSince(t0))) s after the reconcile began (placement seen after \(String(format: "%.2f", left)) s of polling)")
        try await readBack("with node2 unlinked")

        // Trust recovers: node2 is linked back and the replicas return to it.
        hosts[2].trust = 600_000
        t0 = Date()
        let restored = try await driver.reconcile(hosts: hosts, classes: DataClass.defaults, planner: planner)
        XCTAssertEqual(restored.applied, [.link(host: "node2", root: "mycelium-sensitive"), .setPoolSize(pool: pool, size: 3)])
        XCTAssertEqual(restored.verdict(for: "sensitive")?.status, .healthy)
        try await waitForPlacement(driver, pool, objects, on: ["node0", "node1", "node2"], copies: 3, "after node2's trust recovered")
        print("StorageDriverTests: sensitive data mapped back to node2 after \(String(format: "%.2f", Date().timeIntervalSince(t0))) s")
        // ... and the cluster settles: every placement group active+clean (a sanity check before the
        // next step; the manager's report may lag, so this does not time node2's recovery).
        try await waitForPGs(conn, "every PG active+clean after node2 came back") { states in
            states.allSatisfy { $0.key == "active+clean" }
        }
        print("StorageDriverTests: every PG active+clean \(String(format: "%.2f", Date().timeIntervalSince(t0))) s after node2 came back")
        try await readBack("with node2 back")

        let last = try await driver.reconcile(hosts: hosts, classes: DataClass.defaults, planner: planner)
        XCTAssertEqual(last.applied, [])
        try await img.close()
        try await conn.removeImage(pool: pool, name: name)
    }

    /// Polls the cluster's own mapping of `objects` until every one has exactly `copies` acting OSDs,
    /// all on `hosts`, with nothing still moving (acting = up); fails with the last mapping after the
    /// deadline. Returns the seconds it took.
    @discardableResult
    func waitForPlacement(_ driver: CephStorageDriver, _ pool: String, _ objects: [String], on hosts: Set<String>, copies: Int,
                          _ when: String, deadline seconds: Double = 180,
                          file: StaticString = #filePath, line: UInt = #line) async throws -> Double {
        let t0 = Date()
        var last: [ObjectPlacement] = []
        while true {
            last = []
            for o in objects { last.append(try await driver.placement(pool: pool, object: o)) }
            let ok = last.allSatisfy { p in
                p.acting.count == copies && p.acting == p.up && Set(p.actingHosts).isSubset(of: hosts) && Set(p.actingHosts).count == copies
            }
            if ok { return Date().timeIntervalSince(t0) }
            if Date().timeIntervalSince(t0) > seconds {
                XCTFail("\(when): after \(Int(seconds)) s the cluster still maps: \(last.map(\.description).joined(separator: "; ")) (want \(copies) copies on \(hosts.sorted()))",
                        file: file, line: line)
                return seconds
            }
            try await Task.sleep(nanoseconds: 250_000_000)  // the next poll; the deadline bounds the wait
        }
    }

    /// Polls the cluster's status (`status`: placement groups by state, as the manager reports them)
    /// until `condition` holds; fails with the last states after the deadline.
    func waitForPGs(_ conn: CephConnection, _ what: String, deadline seconds: Double = 180,
                    file: StaticString = #filePath, line: UInt = #line, _ condition: ([String: Int]) -> Bool) async throws {
        let t0 = Date()
        var states: [String: Int] = [:]
        while true {
            let reply = try await conn.monitorCommand("status", ["format": .string("json")])
            let status = try JSONSerialization.jsonObject(with: Data(reply.output.utf8)) as? [String: Any]
            let byState = (status?["pgmap"] as? [String: Any])?["pgs_by_state"] as? [[String: Any]] ?? []
            states = [:]
            for s in byState {
                if let name = s["state_name"] as? String, let n = s["count"] as? Int { states[name] = n }
            }
            if !states.isEmpty && condition(states) { return }
            if Date().timeIntervalSince(t0) > seconds {
                XCTFail("\(what): after \(Int(seconds)) s the PGs are \(states)", file: file, line: line)
                return
            }
            try await Task.sleep(nanoseconds: 250_000_000)  // the next poll; the deadline bounds the wait
        }
    }

    // MARK: bad input

    func testBadInputIsRefusedAndAPoolWithAnotherRuleIsLeftAlone() async throws {
        let c = try requireCluster()
        let conn = try await CephConnection.connect(c.config)
        let driver = CephStorageDriver(connection: conn)
        let before = try await driver.observe()

        // A class with replicas 0: refused before anything is sent.
        do {
            _ = try await driver.reconcile(hosts: hosts, classes: [DataClass(name: "broken", minTrust: 0, replicas: 0)])
            XCTFail("a class with 0 replicas was accepted")
        } catch {
            guard case .plan(.invalidClass(let name, let reason)) = error else { return XCTFail("wrong error: \(error)") }
            XCTAssertEqual(name, "broken")
            XCTAssertTrue(reason.contains("replicas must be at least 2 (got 0)"), reason)
            XCTAssertTrue(error.description.contains("nothing was changed"), error.description)
            print("StorageDriverTests: \(error)")
        }
        let afterBad = try await driver.observe()
        XCTAssertEqual(afterBad, before, "a refused plan changed the cluster")
        XCTAssertNil(afterBad.bucketTypes["mycelium-broken"])

        // A pool that already exists with another rule (Ceph's default replicated_rule): a conflict,
        // nothing created for the class, the pool untouched.
        let taken = DataClass(name: "taken", minTrust: 0, replicas: 2)
        try await conn.createPool(taken.poolName)
        deletePoolsAtEnd(c, [taken.poolName])
        let report = try await driver.reconcile(hosts: hosts, classes: [taken])
        XCTAssertEqual(report.applied, [])
        let v = try XCTUnwrap(report.verdict(for: "taken"))
        XCTAssertEqual(v.status, .conflict)
        XCTAssertTrue(v.message.contains("pool mycelium-taken already exists with CRUSH rule replicated_rule, not mycelium-taken"), v.message)
        print("StorageDriverTests: \(v.message)")
        XCTAssertNil(report.layout.bucketTypes["mycelium-taken"], "no root was created for a conflicting class")
        XCTAssertNil(report.layout.rules["mycelium-taken"])
        XCTAssertEqual(report.layout.pools["mycelium-taken"]?.rule, "replicated_rule", "the existing pool keeps its rule")

        // A command Ceph refuses comes back typed, naming the step and the monitor's reason.
        do {
            try await driver.apply(.link(host: "no-such-host", root: "default"))
            XCTFail("linking a host that does not exist succeeded")
        } catch {
            guard case .ceph(let step, let e) = error else { return XCTFail("wrong error: \(error)") }
            XCTAssertTrue(step.contains("no-such-host"), step)
            if case .notFound = e {} else { XCTFail("wrong Ceph error: \(e)") }
            print("StorageDriverTests: \(error)")
        }
        // Unlinking what is not linked is already done.
        try await driver.apply(.unlink(host: "node3", root: "mycelium-nothing"))
    }
}
