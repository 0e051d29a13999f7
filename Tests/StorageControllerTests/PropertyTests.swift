// Many random clusters from a seeded generator: every plan, applied, is a fixpoint; no class root
// ever holds a host that does not qualify; the plan does not depend on input order; actions come in
// a safe order (a pool shrinks only after the unlinks); verdicts match the numbers. A failure names its seed.

import MyceliumIdentity
@testable import StorageController
import XCTest

final class PlannerPropertyTests: XCTestCase {
    struct Case {
        var hosts: [StorageHost]
        var classes: [DataClass]
        var observed: CrushLayout
    }

    func randomCase(_ rng: inout SeededRandom) -> Case {
        let n = Int.random(in: 0...6, using: &rng)
        var observed = freshCluster(hosts: n)
        var hosts: [StorageHost] = (0..<n).map { i in
            host(i, trust: rng.pick([0, 50_000, 100_000, 300_000, 299_999, 500_000, 700_000, 1_000_000]),
                 rng.pick([.ready, .ready, .ready, .suspect, .failed, .revoked]))
        }
        if rng.chance(0.2) { hosts.append(host(40, trust: 900_000)) }  // not in the CRUSH map yet
        var classes = DataClass.defaults.filter { _ in rng.chance(0.8) }
        if rng.chance(0.3) {
            let r = Int.random(in: 2...4, using: &rng)
            classes.append(DataClass(name: "c\(r)", minTrust: rng.pick([0, 400_000, 800_000]), replicas: r,
                                     minReplicas: Int.random(in: 1...r, using: &rng)))
        }
        // Some history: class roots with random members (some no longer qualifying, some strays),
        // pools with drifted settings, occasionally a conflicting name.
        for c in classes where rng.chance(0.5) {
            observed.bucketTypes[c.rootName] = "root"
            var linked = Set<String>()
            for i in 0..<n where rng.chance(0.5) { linked.insert("node\(i)") }
            if rng.chance(0.2) { linked.insert("osd.0") }
            observed.children[c.rootName] = linked
            if rng.chance(0.7) { observed.rules[c.ruleName] = CrushRuleState(root: c.rootName, failureDomain: "host") }
            if rng.chance(0.5), observed.rules[c.ruleName] != nil {
                observed.pools[c.poolName] = PoolState(rule: c.ruleName, size: Int.random(in: 1...4, using: &rng),
                                                       minSize: Int.random(in: 1...2, using: &rng), applications: rng.chance(0.5) ? ["rbd"] : [])
            }
        }
        if rng.chance(0.1), let c = classes.first {
            observed.pools[c.poolName] = PoolState(rule: "replicated_rule", size: 3, minSize: 2, applications: [])
        }
        return Case(hosts: hosts, classes: classes, observed: observed)
    }

    func qualifies(_ h: StorageHost, _ c: DataClass, _ observed: CrushLayout) -> Bool {
        (h.health == .ready || h.health == .suspect) && h.trust >= c.minTrust && observed.bucketTypes[h.crushName] == "host"
    }

    func testRandomClustersKeepThePlannerRules() throws {
        let planner = StoragePlanner(pgCount: 16)
        for seed in UInt64(1)...400 {
            var rng = SeededRandom(seed: seed)
            let c = randomCase(&rng)
            let plan = try planner.plan(hosts: c.hosts, classes: c.classes, observed: c.observed)
            let after = applying(plan.actions, to: c.observed)

            // Fixpoint: applied once, there is nothing left to do.
            let again = try planner.plan(hosts: c.hosts, classes: c.classes, observed: after)
            XCTAssertEqual(again.actions, [], "seed \(seed): not a fixpoint: \(again.actions)")

            // The order of the input does not matter.
            var shuffled = rng
            let other = try planner.plan(hosts: c.hosts.shuffled(using: &shuffled), classes: c.classes.shuffled(using: &shuffled), observed: c.observed)
            XCTAssertEqual(other, plan, "seed \(seed): the plan depends on input order")

            for cls in c.classes {
                let verdict = try XCTUnwrap(plan.verdict(for: cls.name), "seed \(seed)")
                let qualifying = c.hosts.filter { qualifies($0, cls, c.observed) }.map(\.crushName).sorted()
                // Trust is the boundary: whatever else holds, a class root ends up with no host that
                // does not qualify (conflicts included).
                if after.bucketTypes[cls.rootName] == "root" {
                    let members = after.children[cls.rootName] ?? []
                    XCTAssertTrue(members.isSubset(of: Set(qualifying)), "seed \(seed): \(cls.name) root holds \(members.sorted()), qualifying \(qualifying)")
                }
                if verdict.status == .conflict { continue }
                XCTAssertEqual(after.children[cls.rootName].map { $0.sorted() }, qualifying, "seed \(seed): \(cls.name) root")
                XCTAssertEqual(verdict.hosts, qualifying, "seed \(seed)")
                let q = qualifying.count
                let expected: ClassVerdict.Status = q >= cls.replicas ? .healthy : q >= 2 ? .degraded : q == 1 ? .blocked : .unplaceable
                XCTAssertEqual(verdict.status, expected, "seed \(seed): \(verdict.message)")
                if !qualifying.isEmpty {
                    XCTAssertEqual(after.pools[cls.poolName]?.rule, cls.ruleName, "seed \(seed)")
                    // One copy per qualifying host when there are fewer than replicas (at least 2).
                    let size = q >= 2 ? min(cls.replicas, q) : cls.replicas
                    XCTAssertEqual(after.pools[cls.poolName]?.size, size, "seed \(seed)")
                    XCTAssertEqual(after.pools[cls.poolName]?.minSize, min(cls.minReplicas, size), "seed \(seed)")
                }
            }

            // Order: a root exists before anything is linked into it, a rule before its pool, every
            // link before any unlink (data leaving a host can go straight to its replacement).
            var created = Set(c.observed.bucketTypes.keys), rules = Set(c.observed.rules.keys)
            var seenUnlink = false
            for a in plan.actions {
                switch a {
                case .createRoot(let r): created.insert(r)
                case .link(_, let r):
                    XCTAssertTrue(created.contains(r), "seed \(seed): link into \(r) before it exists")
                    XCTAssertFalse(seenUnlink, "seed \(seed): link after an unlink")
                case .createRule(let rule, _): rules.insert(rule)
                case .createPool(_, let rule, _, _): XCTAssertTrue(rules.contains(rule), "seed \(seed): pool before its rule")
                case .unlink: seenUnlink = true
                case .enableApplication: XCTAssertFalse(seenUnlink, "seed \(seed)")
                case .setPoolSize, .setPoolMinSize: break  // shrinking comes after the unlinks, growing before
                }
            }
            // Nothing untouched by the planner changes: the default root, its rule and pool rbd.
            XCTAssertEqual(after.children["default"], c.observed.children["default"], "seed \(seed)")
            XCTAssertEqual(after.pools["rbd"], c.observed.pools["rbd"], "seed \(seed)")
        }
    }
}
