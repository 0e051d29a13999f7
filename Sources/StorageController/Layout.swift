// The planner's inputs and outputs: the storage hosts as the control plane sees them, the CRUSH
// layout as the cluster reports it, and the actions that turn one into the other. Plain values.

import MyceliumIdentity

/// What membership and the vote say about the member a storage host belongs to.
public enum HostHealth: Sendable, Hashable, CustomStringConvertible {
    /// Alive and in good standing.
    case ready
    /// Suspected but not confirmed failed: keeps its place (a suspicion may be wrong, and moving
    /// its data costs a full re-replication). Ceph itself stops using its OSDs while they are down.
    case suspect
    /// Its failure was confirmed by the vote: its data is rebuilt elsewhere at once.
    case failed
    /// No longer a member (removed, or jailed for a proven offence): holds nothing.
    case revoked

    public var description: String {
        switch self {
        case .ready: return "ready"
        case .suspect: return "suspect"
        case .failed: return "failed"
        case .revoked: return "revoked"
        }
    }
}

/// One CRUSH host (a node's OSDs) and the member it belongs to.
public struct StorageHost: Sendable, Hashable {
    /// The CRUSH host bucket's name (e.g. the node's hostname; `nodeN` in scripts/ceph).
    public var crushName: String
    /// The member that runs this host's OSDs.
    public var node: NodeID
    /// That member's current trust (the ledger's score).
    public var trust: TrustPPM
    public var health: HostHealth

    public init(crushName: String, node: NodeID, trust: TrustPPM, health: HostHealth = .ready) {
        self.crushName = crushName; self.node = node; self.trust = trust; self.health = health
    }
}

/// A CRUSH rule as the planner cares about it: the root it takes and the failure domain it
/// spreads replicas over. nil fields: the rule is not the simple take/chooseleaf/emit form.
public struct CrushRuleState: Sendable, Hashable {
    public var root: String?
    public var failureDomain: String?
    public init(root: String?, failureDomain: String?) { self.root = root; self.failureDomain = failureDomain }
}

/// A pool as the planner cares about it.
public struct PoolState: Sendable, Hashable {
    /// The CRUSH rule's name (nil: the pool names a rule id that does not exist).
    public var rule: String?
    public var size: Int
    public var minSize: Int
    public var applications: Set<String>
    public init(rule: String?, size: Int, minSize: Int, applications: Set<String>) {
        self.rule = rule; self.size = size; self.minSize = minSize; self.applications = applications
    }
}

/// The cluster's CRUSH map and pools, as observed (the driver reads them from the monitors).
public struct CrushLayout: Sendable, Hashable {
    /// Every CRUSH bucket by name → its type ("root", "host", ...). Device-class shadow buckets
    /// (`name~class`) are left out.
    public var bucketTypes: [String: String]
    /// Every bucket's direct children by name: buckets, and devices as `osd.N`.
    public var children: [String: Set<String>]
    public var rules: [String: CrushRuleState]
    public var pools: [String: PoolState]

    public init(bucketTypes: [String: String] = [:], children: [String: Set<String>] = [:],
                rules: [String: CrushRuleState] = [:], pools: [String: PoolState] = [:]) {
        self.bucketTypes = bucketTypes; self.children = children; self.rules = rules; self.pools = pools
    }
}

/// One change to the cluster, carried out by the driver as one monitor command. Every action is
/// idempotent on the cluster: applying it when it already holds is a no-op.
public enum StorageAction: Sendable, Hashable, CustomStringConvertible {
    /// `osd crush add-bucket ROOT root`
    case createRoot(root: String)
    /// `osd crush link HOST root=ROOT`: the host's OSDs may now hold the root's classes.
    case link(host: String, root: String)
    /// `osd crush unlink HOST ROOT`: its data of that class moves to the hosts that remain.
    case unlink(host: String, root: String)
    /// `osd crush rule create-replicated RULE ROOT host`
    case createRule(rule: String, root: String)
    /// `osd pool create POOL PGS PGS replicated RULE` with `size`
    case createPool(pool: String, rule: String, pgCount: Int, size: Int)
    /// `osd pool set POOL size N`
    case setPoolSize(pool: String, size: Int)
    /// `osd pool set POOL min_size N`
    case setPoolMinSize(pool: String, minSize: Int)
    /// `osd pool application enable POOL APP`
    case enableApplication(pool: String, application: String)

    public var description: String {
        switch self {
        case .createRoot(let r): return "create CRUSH root \(r)"
        case .link(let h, let r): return "link host \(h) into root \(r)"
        case .unlink(let h, let r): return "unlink host \(h) from root \(r)"
        case .createRule(let rule, let r): return "create CRUSH rule \(rule) (root \(r), one replica per host)"
        case .createPool(let p, let rule, let pgs, let size): return "create pool \(p) (rule \(rule), \(pgs) PGs, size \(size))"
        case .setPoolSize(let p, let n): return "set pool \(p) size \(n)"
        case .setPoolMinSize(let p, let n): return "set pool \(p) min_size \(n)"
        case .enableApplication(let p, let a): return "enable application \(a) on pool \(p)"
        }
    }
}

/// Bad planner input: nothing is planned, nothing changes.
public enum StoragePlanError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalidClass(name: String, reason: String)
    case duplicateClass(name: String)
    case invalidHost(name: String, reason: String)
    case duplicateHost(name: String)
    case invalidPGCount(Int)

    public var description: String {
        switch self {
        case .invalidClass(let n, let r): return "storage class '\(n)': \(r)"
        case .duplicateClass(let n): return "storage class '\(n)' is defined twice: give each class one definition"
        case .invalidHost(let n, let r): return "storage host '\(n)': \(r)"
        case .duplicateHost(let n): return "storage host '\(n)' is listed twice: each CRUSH host belongs to one member"
        case .invalidPGCount(let n): return "placement groups per pool must be 1-4096 (got \(n))"
        }
    }
}
