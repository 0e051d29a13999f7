// The working state of one plan: nodes and services turned into dense indices and flat arrays, so
// the placement loop touches integers, not dictionaries of strings.

import MyceliumIdentity

/// Which nodes may run a service depends only on its constraints and trust floor; services that
/// share both share one scan of the nodes (thousands of services have a handful of signatures).
struct EligibilityKey: Hashable {
    var constraints: [Constraint]
    var minTrust: Double
}

struct Eligibility {
    /// Per node: every constraint holds and trust ≥ the floor, whatever the node's condition.
    var matches: [Bool]
    /// The matching nodes that are ready, ascending: the only candidates for new instances.
    var ready: [Int32]
}

struct Engine {
    let options: PlanOptions
    let seed: UInt64

    // MARK: nodes, sorted by ID so that the input order never changes a plan
    let nodes: [SchedulerNode]
    let nodeIndex: [NodeID: Int]
    let nodeKey: [UInt64]
    /// capacity − reserved (negative when reserved alone overflows the node).
    let allocCpu: [Int64], allocMem: [Int64]
    let invAllocCpu: [Double], invAllocMem: [Double]
    var freeCpu: [Int64], freeMem: [Int64]

    // MARK: services, in placement order (see `placementOrder`)
    let services: [ServiceDemand]
    /// Later definitions of a name already taken; never scheduled, reported unplaced.
    let duplicates: [ServiceDemand]
    let serviceIndex: [String: Int]
    let serviceKey: [UInt64]
    let cpu: [Int64], mem: [Int64]
    /// Slots the plan fills: the requested replicas, at most `Scheduler.maxReplicas`.
    let replicas: [Int]
    /// What the operator asked for (≥ 0), for reporting the part above the limit.
    let requested: [Int]
    let maxPerNode: [Int]
    /// Symmetric anti-affinity, as service indices.
    let conflicts: [[Int]]
    let eligibilityOf: [Int]
    let eligibilities: [Eligibility]
    let eligibilityKeys: [EligibilityKey]
    /// Index into `preferenceScores`, or −1 for a service without preferences.
    let preferenceOf: [Int]
    let preferenceScores: [[Int]]
    /// Per service, the spread levels above the node as indices into `domains` (coarsest first).
    let spreadLevels: [[Int]]
    /// Per level, each node's failure-domain number (nodes without the labels share one domain).
    let domains: [[Int32]]

    // MARK: the evolving placement
    /// Per service and slot: the node index, or −1.
    var slotNode: [[Int32]]
    /// Per service and slot: true when the instance comes from `current` (it must not move).
    var slotKept: [[Bool]]
    var onNode: [[Int32: Int32]]
    var domainCount: [[[Int32: Int32]]]
    var placed: [Int]
    /// New placements in the order they were made (entries go stale when the search moves them).
    var newPlacements: [(service: Int, slot: Int)] = []
    var searchSpent = 0
    var searchGaveUp: Set<Int> = []

    init(nodes input: [SchedulerNode], services demands: [ServiceDemand], options: PlanOptions, seed: UInt64) {
        self.options = options
        self.seed = seed

        var seen = Set<NodeID>()
        let nodes = input.filter { seen.insert($0.id).inserted }.sorted { $0.id < $1.id }
        self.nodes = nodes
        var nodeIndex: [NodeID: Int] = [:]
        for (i, n) in nodes.enumerated() { nodeIndex[n.id] = i }
        self.nodeIndex = nodeIndex
        nodeKey = nodes.map { fnv1a64($0.id.bytes) }
        allocCpu = nodes.map { Int64($0.capacity.cpuMillis) - Int64($0.reserved.cpuMillis) }
        allocMem = nodes.map { Int64($0.capacity.memoryMiB) - Int64($0.reserved.memoryMiB) }
        invAllocCpu = allocCpu.map { $0 > 0 ? 1 / Double($0) : 0 }
        invAllocMem = allocMem.map { $0 > 0 ? 1 / Double($0) : 0 }
        freeCpu = allocCpu
        freeMem = allocMem

        var names = Set<String>()
        var unique: [ServiceDemand] = []
        var duplicates: [ServiceDemand] = []
        var requestedByName: [String: Int] = [:]
        for var d in demands {
            d.replicas = max(d.replicas, 0)
            if names.insert(d.name).inserted {
                requestedByName[d.name] = d.replicas
                d.replicas = min(d.replicas, Scheduler.maxReplicas)
                unique.append(d)
            } else {
                duplicates.append(d)
            }
        }
        self.duplicates = duplicates

        // Eligibility per distinct (constraints, trust floor).
        var keyIndex: [EligibilityKey: Int] = [:]
        var eligibilities: [Eligibility] = []
        var keys: [EligibilityKey] = []
        var eligibilityByName: [String: Int] = [:]
        for d in unique {
            let key = EligibilityKey(constraints: d.constraints, minTrust: d.minTrust)
            if let k = keyIndex[key] { eligibilityByName[d.name] = k; continue }
            var matches = [Bool](repeating: false, count: nodes.count)
            var ready: [Int32] = []
            for (i, n) in nodes.enumerated() where n.trust >= d.minTrust && d.constraints.allSatisfy({ $0.holds(on: n) }) {
                matches[i] = true
                if n.condition == .ready { ready.append(Int32(i)) }
            }
            keyIndex[key] = eligibilities.count
            eligibilityByName[d.name] = eligibilities.count
            eligibilities.append(Eligibility(matches: matches, ready: ready))
            keys.append(key)
        }
        self.eligibilities = eligibilities
        eligibilityKeys = keys

        let ordered = Engine.placementOrder(unique, nodes: nodes, eligibleCount: { eligibilities[eligibilityByName[$0.name]!].ready.count })
        services = ordered
        var serviceIndex: [String: Int] = [:]
        for (i, d) in ordered.enumerated() { serviceIndex[d.name] = i }
        self.serviceIndex = serviceIndex
        serviceKey = ordered.map { fnv1a64($0.name.utf8) }
        cpu = ordered.map { Int64($0.resources.cpuMillis) }
        mem = ordered.map { Int64($0.resources.memoryMiB) }
        replicas = ordered.map(\.replicas)
        requested = ordered.map { requestedByName[$0.name]! }
        eligibilityOf = ordered.map { eligibilityByName[$0.name]! }

        var conflicts = [Set<Int>](repeating: [], count: ordered.count)
        var maxPerNode = ordered.map { max($0.maxPerNode ?? Int.max, 0) }
        for (i, d) in ordered.enumerated() {
            for other in d.antiAffinity {
                guard let j = serviceIndex[other] else { continue }
                if j == i { maxPerNode[i] = min(maxPerNode[i], 1); continue }
                conflicts[i].insert(j)
                conflicts[j].insert(i)
            }
        }
        self.conflicts = conflicts.map { $0.sorted() }
        self.maxPerNode = maxPerNode

        var prefIndex: [[Preference]: Int] = [:]
        var preferenceScores: [[Int]] = []
        preferenceOf = ordered.map { d in
            guard !d.preferences.isEmpty else { return -1 }
            if let k = prefIndex[d.preferences] { return k }
            prefIndex[d.preferences] = preferenceScores.count
            preferenceScores.append(nodes.map { n in
                d.preferences.reduce(0) { $0 + ($1.constraint.holds(on: n) ? $1.weight : 0) }
            })
            return preferenceScores.count - 1
        }
        self.preferenceScores = preferenceScores

        var levelIndex: [[String]: Int] = [:]
        var domains: [[Int32]] = []
        spreadLevels = ordered.map { d in
            Engine.spreadPaths(d.spreadLevel).map { path in
                if let k = levelIndex[path] { return k }
                var ids: [[String?]: Int32] = [:]
                domains.append(nodes.map { n in
                    let values = path.map { n.labels[$0] }
                    if let id = ids[values] { return id }
                    ids[values] = Int32(ids.count)
                    return Int32(ids.count - 1)
                })
                levelIndex[path] = domains.count - 1
                return domains.count - 1
            }
        }
        self.domains = domains

        slotNode = ordered.map { [Int32](repeating: -1, count: $0.replicas) }
        slotKept = ordered.map { [Bool](repeating: false, count: $0.replicas) }
        onNode = [[Int32: Int32]](repeating: [:], count: ordered.count)
        domainCount = spreadLevels.map { [[Int32: Int32]](repeating: [:], count: $0.count) }
        placed = [Int](repeating: 0, count: ordered.count)
    }

    /// The label paths that name a failure domain at each level below `level`, coarsest first. Zones
    /// are keyed by (region, zone), so zone "a" of two regions are two domains.
    static func spreadPaths(_ level: String?) -> [[String]] {
        guard let level else { return [] }
        let hierarchy = ["region", "zone", "rack"]
        guard let start = hierarchy.firstIndex(of: level) else { return [[level]] }
        return (start..<hierarchy.count).map { Array(hierarchy[0...$0]) }
    }

    /// Higher priority first; then services whose nodes are scarce (fewest eligible nodes, in powers
    /// of two), before others fill those nodes; then larger instances first (first-fit decreasing
    /// packs better: small ones fill the gaps large ones leave); then by name, for determinism.
    /// Powers of two keep "any node" and "90% of nodes" in one class, ordered by size.
    static func placementOrder(_ services: [ServiceDemand], nodes: [SchedulerNode],
                               eligibleCount: (ServiceDemand) -> Int) -> [ServiceDemand] {
        var totalCpu = 0.0, totalMem = 0.0
        for n in nodes where n.condition == .ready {
            totalCpu += Double(max(Int64(n.capacity.cpuMillis) - Int64(n.reserved.cpuMillis), 0))
            totalMem += Double(max(Int64(n.capacity.memoryMiB) - Int64(n.reserved.memoryMiB), 0))
        }
        let keyed = services.map { d -> (d: ServiceDemand, scarcity: Int, size: Double) in
            let size = Double(d.resources.cpuMillis) / max(totalCpu, 1) + Double(d.resources.memoryMiB) / max(totalMem, 1)
            return (d, Int.bitWidth - eligibleCount(d).leadingZeroBitCount, size)
        }
        return keyed.sorted { a, b in
            if a.d.priority != b.d.priority { return a.d.priority > b.d.priority }
            if a.scarcity != b.scarcity { return a.scarcity < b.scarcity }
            if a.size != b.size { return a.size > b.size }
            return a.d.name < b.d.name
        }.map(\.d)
    }

    // MARK: primitives

    mutating func place(_ s: Int, slot: Int, on n: Int32, kept: Bool, record: Bool = true) {
        slotNode[s][slot] = n
        slotKept[s][slot] = kept
        freeCpu[Int(n)] -= cpu[s]
        freeMem[Int(n)] -= mem[s]
        onNode[s][n, default: 0] += 1
        for (i, level) in spreadLevels[s].enumerated() { domainCount[s][i][domains[level][Int(n)], default: 0] += 1 }
        placed[s] += 1
        if !kept && record { newPlacements.append((s, slot)) }
    }

    mutating func remove(_ s: Int, slot: Int) {
        let n = slotNode[s][slot]
        precondition(n >= 0, "removing an empty slot")
        slotNode[s][slot] = -1
        slotKept[s][slot] = false
        freeCpu[Int(n)] += cpu[s]
        freeMem[Int(n)] += mem[s]
        decrement(&onNode[s], n)
        for (i, level) in spreadLevels[s].enumerated() { decrement(&domainCount[s][i], domains[level][Int(n)]) }
        placed[s] -= 1
    }

    private func decrement(_ d: inout [Int32: Int32], _ k: Int32) {
        if let c = d[k], c > 1 { d[k] = c - 1 } else { d[k] = nil }
    }

    /// Whether a new instance of `s` fits on `n` now: capacity, maxPerNode and anti-affinity
    /// (eligibility and readiness are the caller's: it iterates an eligible list).
    @inline(__always)
    func canHost(_ s: Int, on n: Int32) -> Bool {
        let i = Int(n)
        if freeCpu[i] < cpu[s] || freeMem[i] < mem[s] { return false }
        if maxPerNode[s] != Int.max, Int(onNode[s][n] ?? 0) >= maxPerNode[s] { return false }
        for c in conflicts[s] where onNode[c][n] != nil { return false }
        return true
    }

    func eligibility(of s: Int) -> Eligibility { eligibilities[eligibilityOf[s]] }
}
