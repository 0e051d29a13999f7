// The scheduler's inputs and outputs: plain values, so a plan can be replicated, compared and replayed.

import MyceliumIdentity

/// CPU in thousandths of a core and memory in MiB.
///
/// `+` saturates at `UInt32.max` and `-` at zero: resources come from operators and node reports,
/// and a typo must not trap the controller.
public struct Resources: Sendable, Equatable, Hashable, CustomStringConvertible {
    public var cpuMillis: UInt32
    public var memoryMiB: UInt32

    public init(cpuMillis: UInt32, memoryMiB: UInt32) {
        self.cpuMillis = cpuMillis
        self.memoryMiB = memoryMiB
    }

    public static let zero = Resources(cpuMillis: 0, memoryMiB: 0)

    public static func + (a: Resources, b: Resources) -> Resources {
        let (c, co) = a.cpuMillis.addingReportingOverflow(b.cpuMillis)
        let (m, mo) = a.memoryMiB.addingReportingOverflow(b.memoryMiB)
        return Resources(cpuMillis: co ? .max : c, memoryMiB: mo ? .max : m)
    }

    public static func - (a: Resources, b: Resources) -> Resources {
        Resources(cpuMillis: a.cpuMillis > b.cpuMillis ? a.cpuMillis - b.cpuMillis : 0,
                  memoryMiB: a.memoryMiB > b.memoryMiB ? a.memoryMiB - b.memoryMiB : 0)
    }

    /// True when both dimensions are at most those of `other`.
    public func fits(in other: Resources) -> Bool { cpuMillis <= other.cpuMillis && memoryMiB <= other.memoryMiB }

    public var description: String { "\(cpuMillis) millicpu, \(memoryMiB) MiB" }
}

/// What the membership layer says about a node. Only `ready` nodes receive new instances; `suspect`
/// ones keep theirs (a suspicion may be wrong, and moving costs a restart); `draining` and `down`
/// ones lose theirs.
public enum NodeCondition: Sendable, Equatable, Hashable {
    case ready, draining, suspect, down
}

public struct SchedulerNode: Sendable, Equatable {
    public var id: NodeID
    public var capacity: Resources
    /// Free-form; `region`, `zone` and `rack` also form the spread hierarchy.
    public var labels: [String: String]
    /// Runtimes and features the node offers, e.g. "podman", "k3s", "libvirt".
    public var capabilities: Set<String>
    /// 0...1; a service only runs on nodes at or above its `minTrust`.
    public var trust: Double
    public var condition: NodeCondition
    /// Used by things this scheduler does not place (VMs); counted against `capacity`.
    public var reserved: Resources

    public init(id: NodeID, capacity: Resources, labels: [String: String] = [:], capabilities: Set<String> = [],
                trust: Double = 1, condition: NodeCondition = .ready, reserved: Resources = .zero) {
        self.id = id
        self.capacity = capacity
        self.labels = labels
        self.capabilities = capabilities
        self.trust = trust
        self.condition = condition
        self.reserved = reserved
    }
}

/// How to choose among feasible nodes once preferences and the service's own spread are equal.
public enum Strategy: Sendable, Equatable, Hashable {
    /// The node that ends fullest (fewer, fuller nodes; room left for large services).
    case binpack
    /// The node that ends emptiest (even load, smaller blast radius).
    case spread
}

/// A hard rule: a node that fails one never runs the service.
public enum Constraint: Sendable, Equatable, Hashable, CustomStringConvertible {
    case labelEquals(String, String)
    /// Also holds on a node without the label.
    case labelNotEquals(String, String)
    case labelIn(String, [String])
    case hasLabel(String)
    case capability(String)
    /// Only this node (a service whose local volume lives on it: it cannot move); `because` says why.
    case node(NodeID, because: String)

    public func holds(on node: SchedulerNode) -> Bool {
        switch self {
        case let .labelEquals(k, v): return node.labels[k] == v
        case let .labelNotEquals(k, v): return node.labels[k] != v
        case let .labelIn(k, vs): return node.labels[k].map(vs.contains) ?? false
        case let .hasLabel(k): return node.labels[k] != nil
        case let .capability(c): return node.capabilities.contains(c)
        case let .node(id, _): return node.id == id
        }
    }

    public var description: String {
        switch self {
        case let .labelEquals(k, v): return "\(k)=\(v)"
        case let .labelNotEquals(k, v): return "\(k)!=\(v)"
        case let .labelIn(k, vs): return "\(k) in [\(vs.joined(separator: ", "))]"
        case let .hasLabel(k): return "has label \(k)"
        case let .capability(c): return "capability '\(c)'"
        case let .node(id, why): return "node \(id) (\(why))"
        }
    }
}

/// A soft rule: nodes where it holds gain `weight` (negative: avoid them unless nothing else fits).
public struct Preference: Sendable, Equatable, Hashable {
    public var constraint: Constraint
    public var weight: Int

    public init(_ constraint: Constraint, weight: Int) {
        self.constraint = constraint
        self.weight = weight
    }
}

/// What an operator asks for: `replicas` identical instances (slots `0..<replicas`).
public struct ServiceDemand: Sendable, Equatable {
    public var name: String
    public var replicas: Int
    public var resources: Resources
    public var strategy: Strategy
    public var constraints: [Constraint]
    public var preferences: [Preference]
    public var minTrust: Double
    /// The failure domain to spread instances across: a label key. "region", "zone" and "rack" form
    /// a hierarchy (region > zone > rack > node) and spread at every level below the one named; any
    /// other key spreads across its values, then nodes. nil spreads across nodes only.
    public var spreadLevel: String?
    /// At most this many instances on one node (1: all on distinct nodes).
    public var maxPerNode: Int?
    /// Services this one never shares a node with; symmetric (either side naming the other suffices).
    /// Naming the service itself means `maxPerNode` 1.
    public var antiAffinity: [String]
    /// Higher is more important: placed first, and stopped last when a node shrinks below what it runs.
    public var priority: Int

    public init(name: String, replicas: Int, resources: Resources, strategy: Strategy = .binpack,
                constraints: [Constraint] = [], preferences: [Preference] = [], minTrust: Double = 0,
                spreadLevel: String? = nil, maxPerNode: Int? = nil, antiAffinity: [String] = [], priority: Int = 0) {
        self.name = name
        self.replicas = replicas
        self.resources = resources
        self.strategy = strategy
        self.constraints = constraints
        self.preferences = preferences
        self.minTrust = minTrust
        self.spreadLevel = spreadLevel
        self.maxPerNode = maxPerNode
        self.antiAffinity = antiAffinity
        self.priority = priority
    }
}

/// One instance of a service: its slot runs on `node`.
public struct Assignment: Sendable, Equatable, Hashable, Comparable, CustomStringConvertible {
    public var service: String
    public var slot: Int
    public var node: NodeID

    public init(service: String, slot: Int, node: NodeID) {
        self.service = service
        self.slot = slot
        self.node = node
    }

    /// By service, then slot, then node: the order of every list in a `Plan`.
    public static func < (a: Assignment, b: Assignment) -> Bool {
        if a.service != b.service { return a.service < b.service }
        if a.slot != b.slot { return a.slot < b.slot }
        return a.node < b.node
    }

    public var description: String { "\(service)#\(slot)@\(node)" }
}

/// A service short of its replicas, with what an operator can do about it.
public struct Unplaced: Sendable, Equatable {
    public var service: String
    public var missing: Int
    public var reason: String

    public init(service: String, missing: Int, reason: String) {
        self.service = service
        self.missing = missing
        self.reason = reason
    }
}

/// An instance the plan stops, and why.
public struct Stop: Sendable, Equatable, Hashable {
    public var assignment: Assignment
    public var reason: String

    public init(assignment: Assignment, reason: String) {
        self.assignment = assignment
        self.reason = reason
    }
}

public struct Plan: Sendable, Equatable {
    /// The whole desired set after this plan, sorted by (service, slot).
    public var assignments: [Assignment]
    /// Assignments new in this plan (not in `current`), sorted.
    public var started: [Assignment]
    /// Current assignments the plan drops, sorted by assignment.
    public var stopped: [Stop]
    /// Services short of their replicas, sorted by name.
    public var unplaced: [Unplaced]

    public init(assignments: [Assignment] = [], started: [Assignment] = [], stopped: [Stop] = [], unplaced: [Unplaced] = []) {
        self.assignments = assignments
        self.started = started
        self.stopped = stopped
        self.unplaced = unplaced
    }
}

/// Knobs with defaults that suit a controller; tests and benchmarks change them.
public struct PlanOptions: Sendable, Equatable {
    /// Node visits the rearranging search may spend on one short service before giving up.
    public var searchBudget: Int = 10_000
    /// Node visits all rearranging searches of one plan may spend together (bounds an overloaded cluster).
    public var totalSearchBudget: Int = 200_000
    /// New placements (of services placed earlier) the search may move; above this many, only those
    /// on nodes the short service could use.
    public var maxMovable: Int = 24
    /// nil (the default) scores every feasible node. A number makes each placement score only that
    /// many feasible candidates, visited from a seeded offset, as Nomad's service scheduler does
    /// (max(2, ⌈log2 nodes⌉); scheduler/stack.go, SetNodes): faster, but packing suffers (see
    /// `mycelium-bench schedule`, which prints the nodes used both ways). It never causes a miss:
    /// when fewer candidates are feasible, every node is visited.
    public var candidateLimit: Int?

    public init() {}
}
