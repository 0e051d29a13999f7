// The storage planner's rules, one scenario each: fresh cluster, trust drop and recovery, failed and
// revoked members, the last hosts of a class, conflicts with existing names, and bad input.

import MyceliumIdentity
@testable import StorageController
import XCTest

final class PlannerTests: XCTestCase {
    let planner = StoragePlanner(pgCount: 32)
    /// Trusts 0.9, 0.8, 0.6 and 0.15: everyone is public, three are private and sensitive.
    let hosts = [host(0, trust: 900_000), host(1, trust: 800_000), host(2, trust: 600_000), host(3, trust: 150_000)]

    func testDefaultClasses() {
        XCTAssertEqual(DataClass.defaults.map(\.name), ["public", "private", "sensitive"])
        XCTAssertEqual(DataClass.defaults.map(\.replicas), [2, 3, 3])
        XCTAssertEqual(DataClass.defaults.map(\.minReplicas), [1, 2, 2])
        XCTAssertEqual(DataClass.defaults.map(\.minTrust), [100_000, 300_000, 500_000])
        for c in DataClass.defaults { XCTAssertNil(c.problem, "\(c)") }
        XCTAssertEqual(DataClass.sensitiveData.rootName, "mycelium-sensitive")
        XCTAssertEqual(DataClass.sensitiveData.poolName, "mycelium-sensitive")
        XCTAssertEqual(formatTrust(500_000), "0.5")
        XCTAssertEqual(formatTrust(123_400), "0.1234")
        XCTAssertEqual(formatTrust(1_000_000), "1")
        XCTAssertEqual(formatTrust(0), "0")
        XCTAssertEqual(formatTrust(5), "0.000005")
    }

    func testFreshClusterGetsRootsLinksRulesAndPoolsInOrder() throws {
        let plan = try planner.plan(hosts: hosts, classes: DataClass.defaults, observed: freshCluster(hosts: 4))
        let roots: [StorageAction] = ["private", "public", "sensitive"].map { .createRoot(root: "mycelium-\($0)") }
        let links: [StorageAction] = [
            .link(host: "node0", root: "mycelium-private"), .link(host: "node1", root: "mycelium-private"), .link(host: "node2", root: "mycelium-private"),
            .link(host: "node0", root: "mycelium-public"), .link(host: "node1", root: "mycelium-public"),
            .link(host: "node2", root: "mycelium-public"), .link(host: "node3", root: "mycelium-public"),
            .link(host: "node0", root: "mycelium-sensitive"), .link(host: "node1", root: "mycelium-sensitive"), .link(host: "node2", root: "mycelium-sensitive"),
        ]
        let rules: [StorageAction] = ["private", "public", "sensitive"].map { .createRule(rule: "mycelium-\($0)", root: "mycelium-\($0)") }
        var pools: [StorageAction] = []
        for c in [DataClass.privateData, .publicData, .sensitiveData] {
            pools += [.createPool(pool: c.poolName, rule: c.ruleName, pgCount: 32, size: c.replicas),
                      .setPoolMinSize(pool: c.poolName, minSize: c.minReplicas),
                      .enableApplication(pool: c.poolName, application: "rbd")]
        }
        XCTAssertEqual(plan.actions, roots + links + rules + pools)
        XCTAssertEqual(plan.desired, ["mycelium-public": ["node0", "node1", "node2", "node3"],
                                      "mycelium-private": ["node0", "node1", "node2"],
                                      "mycelium-sensitive": ["node0", "node1", "node2"]])
        XCTAssertEqual(plan.verdicts.map(\.status), [.healthy, .healthy, .healthy])
        let sensitive = try XCTUnwrap(plan.verdict(for: "sensitive"))
        XCTAssertEqual(sensitive.excluded, [ExcludedHost(host: "node3", reason: "trust 0.15 < 0.5")])
        XCTAssertEqual(sensitive.message, "sensitive: 3 hosts at trust ≥ 0.5 (node0, node1, node2) hold its 3 replicas. Left out: node3 (trust 0.15 < 0.5).")

        // Applied, the plan is a fixpoint: planning again changes nothing.
        let after = applying(plan.actions, to: freshCluster(hosts: 4))
        let again = try planner.plan(hosts: hosts, classes: DataClass.defaults, observed: after)
        XCTAssertEqual(again.actions, [])
        XCTAssertEqual(again.desired, plan.desired)
    }

    /// A sensitive host's trust drops below 0.5: it leaves the sensitive root (and only that one),
    /// the class is reported degraded with what to do; when trust recovers it is linked back.
    func testTrustDropUnlinksTheHostAndRecoveryLinksItBack() throws {
        let base = applying(try planner.plan(hosts: hosts, classes: DataClass.defaults, observed: freshCluster(hosts: 4)).actions,
                            to: freshCluster(hosts: 4))
        var dropped = hosts
        dropped[2].trust = 400_000
        let plan = try planner.plan(hosts: dropped, classes: DataClass.defaults, observed: base)
        XCTAssertEqual(plan.actions, [.unlink(host: "node2", root: "mycelium-sensitive"), .setPoolSize(pool: "mycelium-sensitive", size: 2)])
        let v = try XCTUnwrap(plan.verdict(for: "sensitive"))
        XCTAssertEqual(v.status, .degraded)
        XCTAssertEqual(v.hosts, ["node0", "node1"])
        XCTAssertTrue(v.message.hasPrefix("sensitive: only 2 hosts at trust ≥ 0.5 (node0, node1), replicas 3 cannot be placed — degraded"), v.message)
        XCTAssertTrue(v.message.contains("degraded: the pool runs with 2 copies until more hosts qualify"), v.message)
        XCTAssertTrue(v.message.contains("raise another storage host's trust to ≥ 0.5"), v.message)
        XCTAssertTrue(v.message.contains("node2 (trust 0.4 < 0.5)"), v.message)
        XCTAssertEqual(plan.verdict(for: "private")?.status, .healthy)

        let droppedLayout = applying(plan.actions, to: base)
        XCTAssertEqual(droppedLayout.children["mycelium-sensitive"], ["node0", "node1"])
        XCTAssertEqual(droppedLayout.children["mycelium-private"], ["node0", "node1", "node2"])
        XCTAssertEqual(droppedLayout.pools["mycelium-sensitive"]?.size, 2)
        XCTAssertEqual(droppedLayout.pools["mycelium-sensitive"]?.minSize, 2)
        let back = try planner.plan(hosts: hosts, classes: DataClass.defaults, observed: droppedLayout)
        XCTAssertEqual(back.actions, [.link(host: "node2", root: "mycelium-sensitive"), .setPoolSize(pool: "mycelium-sensitive", size: 3)])
        XCTAssertEqual(back.verdict(for: "sensitive")?.status, .healthy)
    }

    /// Trust is a security boundary: the last qualifying hosts are unlinked too, and the verdict
    /// says the class is blocked (below min replicas) or unplaceable.
    func testLastHostsOfAClassAreUnlinkedAndTheVerdictSaysSo() throws {
        let base = applying(try planner.plan(hosts: hosts, classes: DataClass.defaults, observed: freshCluster(hosts: 4)).actions,
                            to: freshCluster(hosts: 4))
        var oneLeft = hosts
        oneLeft[1].trust = 200_000
        oneLeft[2].trust = 200_000
        let blocked = try planner.plan(hosts: oneLeft, classes: DataClass.defaults, observed: base)
        XCTAssertEqual(blocked.verdict(for: "sensitive")?.status, .blocked)
        XCTAssertTrue(blocked.verdict(for: "sensitive")!.message.contains("but a pool needs 2 copies on 2 hosts — blocked: Ceph keeps the pool's other copies"), blocked.verdict(for: "sensitive")!.message)
        XCTAssertEqual(blocked.verdict(for: "private")?.status, .blocked)

        var none = hosts
        for i in none.indices { none[i].trust = 200_000 }
        let plan = try planner.plan(hosts: none, classes: DataClass.defaults, observed: base)
        XCTAssertEqual(Set(plan.actions), Set(["node0", "node1", "node2"].flatMap { h in
            ["private", "sensitive"].map { StorageAction.unlink(host: h, root: "mycelium-\($0)") } }))
        let v = try XCTUnwrap(plan.verdict(for: "sensitive"))
        XCTAssertEqual(v.status, .unplaceable)
        XCTAssertTrue(v.message.contains("no storage host has trust ≥ 0.5 — unplaceable: Ceph keeps the pool's other copies"), v.message)
        XCTAssertEqual(plan.verdict(for: "public")?.status, .healthy)
    }

    func testFailedAndRevokedMembersHoldNothingSuspectOnesKeepTheirPlace() throws {
        let base = applying(try planner.plan(hosts: hosts, classes: DataClass.defaults, observed: freshCluster(hosts: 4)).actions,
                            to: freshCluster(hosts: 4))
        var changed = hosts
        changed[0].health = .failed
        changed[1].health = .suspect
        changed[3].health = .revoked
        let plan = try planner.plan(hosts: changed, classes: DataClass.defaults, observed: base)
        XCTAssertEqual(Set(plan.actions), [
            .unlink(host: "node0", root: "mycelium-public"), .unlink(host: "node0", root: "mycelium-private"),
            .unlink(host: "node0", root: "mycelium-sensitive"), .unlink(host: "node3", root: "mycelium-public"),
            .setPoolSize(pool: "mycelium-private", size: 2), .setPoolSize(pool: "mycelium-sensitive", size: 2),
        ])
        let v = try XCTUnwrap(plan.verdict(for: "public"))
        XCTAssertEqual(v.hosts, ["node1", "node2"])
        XCTAssertEqual(v.status, .healthy)
        XCTAssertTrue(v.message.contains("node0 (failed (confirmed by the vote))"), v.message)
        XCTAssertTrue(v.message.contains("node3 (revoked"), v.message)
    }

    func testAClassWithNoQualifyingHostGetsNoPool() throws {
        let gold = DataClass(name: "gold", minTrust: 950_000, replicas: 3)
        let plan = try planner.plan(hosts: hosts, classes: [gold], observed: freshCluster(hosts: 4))
        XCTAssertEqual(plan.actions, [.createRoot(root: "mycelium-gold"), .createRule(rule: "mycelium-gold", root: "mycelium-gold")])
        let v = try XCTUnwrap(plan.verdict(for: "gold"))
        XCTAssertEqual(v.status, .unplaceable)
        XCTAssertTrue(v.message.contains("its pool is not created until one does"), v.message)
    }

    func testHostsMissingFromCrushAndStrayItemsInAClassRoot() throws {
        var layout = applying(try planner.plan(hosts: hosts, classes: DataClass.defaults, observed: freshCluster(hosts: 4)).actions,
                              to: freshCluster(hosts: 4))
        // Someone linked an OSD and an unknown host into the sensitive root by hand.
        layout.bucketTypes["stray"] = "host"
        layout.children["mycelium-sensitive"]!.formUnion(["osd.3", "stray"])
        let newcomer = host(9, trust: 900_000)  // a member whose OSDs are not created yet
        let plan = try planner.plan(hosts: hosts + [newcomer], classes: DataClass.defaults, observed: layout)
        XCTAssertEqual(plan.actions, [.unlink(host: "osd.3", root: "mycelium-sensitive"), .unlink(host: "stray", root: "mycelium-sensitive")])
        XCTAssertTrue(plan.verdict(for: "sensitive")!.excluded.contains(ExcludedHost(host: "node9", reason: "no CRUSH host node9 (its OSDs are not created yet)")))
    }

    func testPoolSettingsThatDriftedAreSetBack() throws {
        var layout = applying(try planner.plan(hosts: hosts, classes: DataClass.defaults, observed: freshCluster(hosts: 4)).actions,
                              to: freshCluster(hosts: 4))
        layout.pools["mycelium-sensitive"]!.size = 2
        layout.pools["mycelium-sensitive"]!.minSize = 1
        layout.pools["mycelium-public"]!.applications = []
        let plan = try planner.plan(hosts: hosts, classes: DataClass.defaults, observed: layout)
        XCTAssertEqual(plan.actions, [.enableApplication(pool: "mycelium-public", application: "rbd"),
                                      .setPoolSize(pool: "mycelium-sensitive", size: 3), .setPoolMinSize(pool: "mycelium-sensitive", minSize: 2)])
    }

    /// A name already used for something else: nothing is created for that class, the verdict says
    /// what and how to resolve it; hosts that stop qualifying still leave a root that is ours.
    func testConflictsCreateNothingButStillUnlink() throws {
        var layout = freshCluster(hosts: 4)
        layout.bucketTypes["mycelium-public"] = "host"          // a host bucket with the root's name
        layout.rules["mycelium-private"] = CrushRuleState(root: "default", failureDomain: "osd")
        layout.pools["mycelium-sensitive"] = PoolState(rule: "replicated_rule", size: 3, minSize: 2, applications: ["rbd"])
        layout.bucketTypes["mycelium-sensitive"] = "root"
        layout.children["mycelium-sensitive"] = ["node2", "node3"]
        let plan = try planner.plan(hosts: hosts, classes: DataClass.defaults, observed: layout)
        XCTAssertEqual(plan.actions, [.unlink(host: "node3", root: "mycelium-sensitive")])
        XCTAssertEqual(plan.verdicts.map(\.status), [.conflict, .conflict, .conflict])
        let pool = plan.verdict(for: "sensitive")!.message
        XCTAssertTrue(pool.contains("pool mycelium-sensitive already exists with CRUSH rule replicated_rule, not mycelium-sensitive"), pool)
        XCTAssertTrue(pool.contains("ceph osd pool set mycelium-sensitive crush_rule mycelium-sensitive"), pool)
        XCTAssertTrue(pool.contains("hosts that no longer qualify are still removed"), pool)
        XCTAssertEqual(plan.verdict(for: "sensitive")!.hosts, ["node2"])
        XCTAssertTrue(plan.verdict(for: "public")!.message.contains("a CRUSH bucket named mycelium-public already exists as a host, not a root"))
        XCTAssertTrue(plan.verdict(for: "private")!.message.contains("CRUSH rule mycelium-private already exists but takes root default across osd"))
    }

    func testBadInputIsRefusedWithAClearError() {
        func refused(_ classes: [DataClass], _ hosts: [StorageHost] = [], pgs: Int = 32, expect expected: StoragePlanError,
                     file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try StoragePlanner(pgCount: pgs).plan(hosts: hosts, classes: classes, observed: freshCluster(hosts: 3)),
                                 file: file, line: line) { error in
                XCTAssertEqual(error as? StoragePlanError, expected, file: file, line: line)
            }
        }
        refused([DataClass(name: "zero", minTrust: 0, replicas: 0)], expect: .invalidClass(name: "zero", reason: "replicas must be at least 2 (got 0): a Ceph class keeps copies on different hosts; a single copy is the local driver's job"))
        refused([DataClass(name: "one", minTrust: 0, replicas: 1)], expect: .invalidClass(name: "one", reason: "replicas must be at least 2 (got 1): a Ceph class keeps copies on different hosts; a single copy is the local driver's job"))
        refused([DataClass(name: "many", minTrust: 0, replicas: 11)], expect: .invalidClass(name: "many", reason: "replicas must be at most 10 (got 11)"))
        refused([DataClass(name: "x", minTrust: 0, replicas: 2, minReplicas: 3)], expect: .invalidClass(name: "x", reason: "min replicas must be between 1 and replicas (2), got 3"))
        refused([DataClass(name: "Bad_Name", minTrust: 0, replicas: 2)], expect: .invalidClass(name: "Bad_Name", reason: "a class name is lowercase letters, digits and '-', not starting with '-'"))
        refused([DataClass(name: "", minTrust: 0, replicas: 2)], expect: .invalidClass(name: "", reason: "a class name has 1-32 characters (got 0)"))
        refused([DataClass(name: "t", minTrust: 1_000_001, replicas: 2)], expect: .invalidClass(name: "t", reason: "min trust is a fraction from 0 to 1 (got 1.000001)"))
        refused([.publicData, .publicData], expect: .duplicateClass(name: "public"))
        refused([.publicData], [host(1, trust: 1), host(1, trust: 2)], expect: .duplicateHost(name: "node1"))
        refused([.publicData], [StorageHost(crushName: "a b", node: nodeID(1), trust: 0)], expect: .invalidHost(name: "a b", reason: "a CRUSH host name is letters, digits, '-', '_' and '.'"))
        refused([.publicData], pgs: 0, expect: .invalidPGCount(0))
        XCTAssertEqual(StoragePlanError.invalidClass(name: "zero", reason: "r").description, "storage class 'zero': r")
    }
}
