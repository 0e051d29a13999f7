// Builders for the planner's tests, and a model of how Ceph applies the planner's actions (only to
// check that a plan, once applied, is a fixpoint; the real cluster is Tests/StorageDriverTests').

import MyceliumIdentity
@testable import StorageController

func nodeID(_ n: Int) -> NodeID {
    var bytes = [UInt8](repeating: 0, count: 16)
    bytes[14] = UInt8(n >> 8)
    bytes[15] = UInt8(n & 0xFF)
    return try! NodeID(bytes: bytes)
}

/// Host `nodeN` of member N.
func host(_ n: Int, trust: TrustPPM, _ health: HostHealth = .ready) -> StorageHost {
    StorageHost(crushName: "node\(n)", node: nodeID(n), trust: trust, health: health)
}

/// What scripts/ceph makes: root `default` holding hosts node0..node(N-1), one OSD each, the
/// `replicated_rule` and pool `rbd`.
func freshCluster(hosts: Int) -> CrushLayout {
    var l = CrushLayout()
    l.bucketTypes["default"] = "root"
    l.children["default"] = Set((0..<hosts).map { "node\($0)" })
    for i in 0..<hosts {
        l.bucketTypes["node\(i)"] = "host"
        l.children["node\(i)"] = ["osd.\(i)"]
    }
    l.rules["replicated_rule"] = CrushRuleState(root: "default", failureDomain: "host")
    l.pools["rbd"] = PoolState(rule: "replicated_rule", size: 3, minSize: 2, applications: ["rbd"])
    return l
}

/// Ceph's effect of each action, as far as the planner observes it.
func applying(_ actions: [StorageAction], to layout: CrushLayout) -> CrushLayout {
    var l = layout
    for a in actions {
        switch a {
        case .createRoot(let r):
            if l.bucketTypes[r] == nil { l.bucketTypes[r] = "root"; l.children[r] = [] }
        case .link(let h, let r):
            l.children[r, default: []].insert(h)
        case .unlink(let h, let r):
            l.children[r]?.remove(h)
        case .createRule(let rule, let r):
            if l.rules[rule] == nil { l.rules[rule] = CrushRuleState(root: r, failureDomain: "host") }
        case .createPool(let p, let rule, _, let size):
            if l.pools[p] == nil { l.pools[p] = PoolState(rule: rule, size: size, minSize: size - size / 2, applications: []) }
        case .setPoolSize(let p, let n):
            l.pools[p]?.size = n
        case .setPoolMinSize(let p, let n):
            l.pools[p]?.minSize = n
        case .enableApplication(let p, let app):
            l.pools[p]?.applications.insert(app)
        }
    }
    return l
}

/// A seeded generator (SplitMix64), so a failing property names its seed.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &self) < p }
    mutating func pick<T>(_ xs: [T]) -> T { xs[Int.random(in: 0..<xs.count, using: &self)] }
}
