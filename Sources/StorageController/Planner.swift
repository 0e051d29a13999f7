// The storage planner: from the storage hosts (with their members' trust and health), the data
// classes and the CRUSH layout the cluster reports, the layout it should have and the ordered
// actions that get it there, with a verdict per class that says what the operator should do.
//
// Rules (docs/STORAGE.md, "Data classes"):
//  - A class's root holds exactly the hosts whose member is ready or suspect, has trust ≥ the
//    class's minimum, and whose CRUSH host bucket exists. Failed and revoked members hold nothing.
//  - Trust is a security boundary: a host that no longer qualifies is unlinked even when that leaves
//    the class with fewer hosts than replicas (or none). The verdict says the class is degraded,
//    blocked or unplaceable and what to do; data is never kept on a distrusted host for availability
//    (with at least 2 qualifying hosts; below that Ceph itself keeps former holders, and the verdict says so).
//  - Links come before unlinks, so data leaving a host can go straight to the hosts that replace it.
//  - With fewer qualifying hosts than replicas (at least 2), the pool's size shrinks to the number of
//    hosts (after the unlinks) and grows back when hosts return (with the links): Ceph keeps
//    a former holder in a placement group whose mapping is shorter than the pool's size (pg_temp), so
//    shrinking is what actually evicts a distrusted host. Below 2 hosts it cannot (see `poolSize`).
//  - Names are fixed per class (`mycelium-CLASS` for root, rule and pool). Something else already
//    using one of them (a bucket that is not a root, a rule over another root, a pool with another
//    rule) is a conflict: nothing is created for that class, the verdict names the object and the
//    command that resolves it; hosts that stop qualifying are still unlinked from its root.
//  - A pool is created only once at least one host qualifies (a pool whose rule maps to no OSD has
//    placement groups stuck creating).
//  - Deterministic: the output depends only on the input values, never on their order.
// Pure: no clock, no I/O, no randomness.

import MyceliumControl
import MyceliumIdentity

/// How one class stands after the plan is applied.
public struct ClassVerdict: Sendable, Hashable, CustomStringConvertible {
    public enum Status: Sendable, Hashable {
        /// At least `replicas` hosts qualify.
        case healthy
        /// Fewer hosts than replicas, at least 2: the pool runs with one copy per qualifying host.
        case degraded
        /// One host: a new pool's writes wait; an existing pool's other copies stay where they were.
        case blocked
        /// No host qualifies.
        case unplaceable
        /// One of the class's names is taken by something else; nothing was created for it.
        case conflict
    }

    public let className: String
    public let status: Status
    /// The hosts holding the class's replicas once the plan is applied, by CRUSH name.
    public let hosts: [String]
    /// Storage hosts left out, with why (e.g. "trust 0.4 < 0.5", "failed").
    public let excluded: [ExcludedHost]
    /// What happened and what the operator should do.
    public let message: String

    public var description: String { message }
}

/// A storage host that may not hold a class's data, and why.
public struct ExcludedHost: Sendable, Hashable {
    public let host: String
    public let reason: String
}

/// The planner's answer.
public struct StoragePlan: Sendable, Hashable {
    /// Class root → the hosts it holds once the plan is applied (sorted).
    public let desired: [String: [String]]
    /// In order: create roots, link hosts, create rules, create and set pools, unlink hosts.
    public let actions: [StorageAction]
    /// One per class, by class name.
    public let verdicts: [ClassVerdict]

    public func verdict(for className: String) -> ClassVerdict? { verdicts.first { $0.className == className } }
}

/// Plans the CRUSH layout and pools of the data classes.
public struct StoragePlanner: Sendable {
    /// Placement groups of a newly created pool (Ceph's autoscaler may change it later).
    public var pgCount: Int
    /// The application pools are tagged with.
    public static let application = "rbd"
    /// The failure domain of every class rule: one replica per host.
    public static let failureDomain = "host"

    public init(pgCount: Int = 32) { self.pgCount = pgCount }

    public func plan(hosts: [StorageHost], classes: [DataClass], observed: CrushLayout) throws(StoragePlanError) -> StoragePlan {
        guard (1...4096).contains(pgCount) else { throw .invalidPGCount(pgCount) }
        var seenClasses = Set<String>()
        for c in classes {
            if let p = c.problem { throw .invalidClass(name: c.name, reason: p) }
            guard seenClasses.insert(c.name).inserted else { throw .duplicateClass(name: c.name) }
        }
        var seenHosts = Set<String>()
        for h in hosts {
            if let p = Self.hostNameProblem(h.crushName) { throw .invalidHost(name: h.crushName, reason: p) }
            guard seenHosts.insert(h.crushName).inserted else { throw .duplicateHost(name: h.crushName) }
        }
        let hosts = hosts.sorted { $0.crushName < $1.crushName }

        var roots: [StorageAction] = [], links: [StorageAction] = [], rules: [StorageAction] = []
        var pools: [StorageAction] = [], unlinks: [StorageAction] = [], shrinks: [StorageAction] = []
        var desired: [String: [String]] = [:]
        var verdicts: [ClassVerdict] = []

        for c in classes.sorted(by: { $0.name < $1.name }) {
            let root = c.rootName
            // Who qualifies, and why the others do not.
            var qualifying: [String] = []
            var excluded: [ExcludedHost] = []
            for h in hosts {
                if let why = exclusion(of: h, for: c, observed) {
                    excluded.append(ExcludedHost(host: h.crushName, reason: why))
                } else {
                    qualifying.append(h.crushName)
                }
            }
            let want = Set(qualifying)

            let rootType = observed.bucketTypes[root]
            let ownsRoot = rootType == "root"
            let linked = ownsRoot ? observed.children[root] ?? [] : []
            let conflicts = self.conflicts(of: c, observed)

            // Unlinks happen whatever else is wrong: trust is the boundary.
            for item in linked.subtracting(want).sorted() { unlinks.append(.unlink(host: item, root: root)) }

            if !conflicts.isEmpty {
                let kept = linked.intersection(want).sorted()
                if ownsRoot { desired[root] = kept }
                let message = "\(c.name): " + conflicts.joined(separator: "; ")
                    + ". Nothing is created for this class until that is resolved"
                    + (ownsRoot ? "; hosts that no longer qualify are still removed from its root." : ".")
                verdicts.append(ClassVerdict(className: c.name, status: .conflict, hosts: kept, excluded: excluded, message: message))
                continue
            }

            desired[root] = qualifying
            if rootType == nil { roots.append(.createRoot(root: root)) }
            for h in qualifying where !linked.contains(h) { links.append(.link(host: h, root: root)) }
            if observed.rules[c.ruleName] == nil { rules.append(.createRule(rule: c.ruleName, root: root)) }
            let (size, minSize) = Self.poolSize(c, qualifying: qualifying.count)
            if let pool = observed.pools[c.poolName] {
                // Growing: size before min_size, with the links. Shrinking: min_size before size,
                // after the unlinks (so the hosts that left are dropped, not a random qualifying one).
                if size > pool.size { pools.append(.setPoolSize(pool: c.poolName, size: size)) }
                if minSize > pool.minSize { pools.append(.setPoolMinSize(pool: c.poolName, minSize: minSize)) }
                if minSize < pool.minSize { shrinks.append(.setPoolMinSize(pool: c.poolName, minSize: minSize)) }
                if size < pool.size { shrinks.append(.setPoolSize(pool: c.poolName, size: size)) }
                if !pool.applications.contains(Self.application) {
                    pools.append(.enableApplication(pool: c.poolName, application: Self.application))
                }
            } else if !qualifying.isEmpty {
                pools.append(.createPool(pool: c.poolName, rule: c.ruleName, pgCount: pgCount, size: size))
                pools.append(.setPoolMinSize(pool: c.poolName, minSize: minSize))
                pools.append(.enableApplication(pool: c.poolName, application: Self.application))
            }
            verdicts.append(verdict(c, qualifying: qualifying, excluded: excluded,
                                    poolExists: observed.pools[c.poolName] != nil))
        }
        return StoragePlan(desired: desired, actions: roots + links + rules + pools + unlinks + shrinks, verdicts: verdicts)
    }

    /// The pool's size and min_size for `qualifying` hosts. Ceph fills a placement group whose CRUSH
    /// mapping is shorter than the pool's size with the OSDs that held it before (pg_temp): a host that
    /// left the root would keep serving the class. So with fewer qualifying hosts than replicas (but at
    /// least 2) the pool shrinks to one copy per qualifying host, and grows back when hosts return.
    /// Below 2 hosts the pool keeps its size: Ceph refuses size 1 unless told it really means it,
    /// and the verdict says what that leaves (see `verdict`).
    static func poolSize(_ c: DataClass, qualifying q: Int) -> (size: Int, minSize: Int) {
        let size = q >= 2 ? min(c.replicas, q) : c.replicas
        return (size, min(c.minReplicas, size))
    }

    /// Why `h` may not hold `c`'s data, or nil if it may.
    func exclusion(of h: StorageHost, for c: DataClass, _ observed: CrushLayout) -> String? {
        switch h.health {
        case .failed: return "failed (confirmed by the vote)"
        case .revoked: return "revoked (no longer a member in good standing)"
        case .ready, .suspect: break
        }
        if h.trust < c.minTrust { return "trust \(formatTrust(h.trust)) < \(formatTrust(c.minTrust))" }
        switch observed.bucketTypes[h.crushName] {
        case nil: return "no CRUSH host \(h.crushName) (its OSDs are not created yet)"
        case "host": return nil
        case let t?: return "CRUSH bucket \(h.crushName) is a \(t), not a host"
        }
    }

    /// What already uses one of `c`'s names for something else.
    func conflicts(of c: DataClass, _ observed: CrushLayout) -> [String] {
        var out: [String] = []
        if let t = observed.bucketTypes[c.rootName], t != "root" {
            out.append("a CRUSH bucket named \(c.rootName) already exists as a \(t), not a root: rename it "
                       + "(ceph osd crush rename-bucket \(c.rootName) NEWNAME)")
        }
        if let r = observed.rules[c.ruleName], r.root != c.rootName || r.failureDomain != Self.failureDomain {
            out.append("CRUSH rule \(c.ruleName) already exists but takes root \(r.root ?? "(none)") across \(r.failureDomain ?? "(no failure domain)"), "
                       + "not root \(c.rootName) across hosts: rename it (ceph osd crush rule rename \(c.ruleName) NEWNAME)")
        }
        if let p = observed.pools[c.poolName], p.rule != c.ruleName {
            out.append("pool \(c.poolName) already exists with CRUSH rule \(p.rule ?? "(unknown)"), not \(c.ruleName): "
                       + "it is not this class's pool, or its rule was changed by hand; rename it (ceph osd pool rename \(c.poolName) NEWNAME), "
                       + "or, if it holds this class's data, give it the rule (ceph osd pool set \(c.poolName) crush_rule \(c.ruleName))")
        }
        return out
    }

    func verdict(_ c: DataClass, qualifying: [String], excluded: [ExcludedHost], poolExists: Bool) -> ClassVerdict {
        let t = formatTrust(c.minTrust)
        let q = qualifying.count
        let list = qualifying.joined(separator: ", ")
        let left = excluded.isEmpty ? "" : " Left out: " + excluded.map { "\($0.host) (\($0.reason))" }.joined(separator: ", ") + "."
        let fix = "raise another storage host's trust to ≥ \(t) or add a storage host with trust ≥ \(t)"
        // What Ceph does with fewer than 2 qualifying hosts (the pool keeps its size, see `poolSize`).
        let stranded = "Ceph keeps the pool's other copies on the hosts that held them (it never drops a placement group "
            + "below 2 copies by itself), so hosts that left this class may still serve its data; if they must not, "
            + "take their OSDs out (ceph osd out ID), which moves their data of every class"
        let status: ClassVerdict.Status
        var message: String
        if q >= c.replicas {
            status = .healthy
            message = "\(c.name): \(q) \(q == 1 ? "host" : "hosts") at trust ≥ \(t) (\(list)) hold its \(c.replicas) replicas."
        } else if q >= 2 {
            status = .degraded
            let writes = q < c.minReplicas ? " (and writes need \(q), not \(c.minReplicas))" : ""
            message = "\(c.name): only \(q) hosts at trust ≥ \(t) (\(list)), replicas \(c.replicas) cannot be placed — "
                + "degraded: the pool runs with \(q) copies\(writes) until more hosts qualify. To restore: \(fix), or lower the class's replicas to \(q)."
        } else if q == 1 {
            status = .blocked
            message = "\(c.name): only 1 host at trust ≥ \(t) (\(list)), but a pool needs 2 copies on 2 hosts — "
                + (poolExists ? "blocked: " + stranded : "blocked: its volumes get one copy and writes wait for \(c.minReplicas)")
                + ". To restore: \(fix)."
        } else {
            status = .unplaceable
            message = "\(c.name): no storage host has trust ≥ \(t) — "
                + (poolExists ? "unplaceable: " + stranded : "unplaceable: its pool is not created until one does")
                + ". To restore: \(fix)."
        }
        message += left
        return ClassVerdict(className: c.name, status: status, hosts: qualifying, excluded: excluded, message: message)
    }

    /// CRUSH names: the control state's rule (what the monitor accepts), one rule for both.
    static func hostNameProblem(_ name: String) -> String? { VolumeTable.crushNameProblem(name) }
}
