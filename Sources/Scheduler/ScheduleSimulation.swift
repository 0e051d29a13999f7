// A seeded run of a cluster's life: nodes fail, come back, turn suspect, drain, leave, join, shrink
// and lose trust; services are deployed, scaled and removed. After every step the scheduler plans,
// the plan is checked and applied. One seed is one run; `mycelium-sim schedule --seed N` replays it.
//
// Checked after every step:
//  - PlanCheck: capacity, constraints, trust, maxPerNode, anti-affinity, new instances only on ready
//    nodes, stability of valid instances, bookkeeping, local maximality, unplaced reports;
//  - determinism: the same inputs in shuffled order and the same seed give the same plan;
//  - fixpoint: planning again from the plan's own assignments starts and stops nothing;
//  - convergence when capacity allows: a service is fully placed whenever its eligible ready nodes
//    outnumber every node that could be closed to it — those running anti-affine services, those
//    holding its own other instances, and those too full, at most ⌊used / (smallest free room)⌋ per
//    dimension. At the end all nodes heal and the same holds.

import MyceliumCore
import MyceliumIdentity

public struct ScheduleSimulationOptions: Sendable {
    public var seed: UInt64
    public var steps: Int
    /// Keep the trace of the whole run (otherwise only a failure's last lines are kept).
    public var trace: Bool

    public init(seed: UInt64, steps: Int = 80, trace: Bool = false) {
        self.seed = seed
        self.steps = steps
        self.trace = trace
    }
}

public struct ScheduleSimulationResult: Sendable {
    public var seed: UInt64
    public var steps: Int
    public var failure: String?
    public var failedAtStep: Int?
    public var trace: [String] = []
    public var started = 0
    public var stopped = 0
    /// Steps that ended with some service short.
    public var shortSteps = 0
    /// (step, service) pairs where capacity provably allowed every replica, so all had to be placed.
    public var convergenceChecks = 0
    public var finalNodes = 0
    public var finalServices = 0

    public var passed: Bool { failure == nil }
    public var replayCommand: String { "mycelium-sim schedule --seed \(seed) --steps \(steps) --trace" }
    public var summary: String {
        let status = failure.map { "FAILED at step \(failedAtStep ?? -1): \($0)" } ?? "ok"
        return "seed \(seed) \(status) | steps=\(steps) nodes=\(finalNodes) services=\(finalServices) started=\(started) "
            + "stopped=\(stopped) short-steps=\(shortSteps) convergence-checks=\(convergenceChecks)"
    }
}

public enum ScheduleSimulation {
    public static func run(_ options: ScheduleSimulationOptions) -> ScheduleSimulationResult {
        var world = SimWorld(seed: options.seed)
        var result = ScheduleSimulationResult(seed: options.seed, steps: options.steps)
        var trace: [String] = []
        func log(_ line: String) {
            trace.append(line)
            if !options.trace && trace.count > 400 { trace.removeFirst(200) }
        }
        for step in 0...options.steps {
            let heal = step == options.steps
            let events = step == 0 ? world.genesis() : heal ? world.heal() : world.randomEvent()
            events.forEach { log("step \(step): \($0)") }
            if let failure = world.planAndCheck(step: step, result: &result, log: log) {
                result.failure = failure
                result.failedAtStep = step
                break
            }
        }
        result.finalNodes = world.nodes.count
        result.finalServices = world.services.count
        result.trace = options.trace || result.failure != nil ? trace : []
        return result
    }
}

struct SimWorld {
    var rng: SeededRandom
    let seed: UInt64
    var nodes: [SchedulerNode] = []
    var fullCapacity: [NodeID: Resources] = [:]
    var names: [NodeID: String] = [:]
    var services: [ServiceDemand] = []
    var current: [Assignment] = []
    var nextNode = 0, nextService = 0

    init(seed: UInt64) {
        self.seed = seed
        rng = SeededRandom(seed: seed)
    }

    func name(_ id: NodeID) -> String { names[id] ?? "\(id)" }

    mutating func pick<T>(_ xs: [T]) -> T? { xs.isEmpty ? nil : xs[Int.random(in: 0..<xs.count, using: &rng)] }

    mutating func genesis() -> [String] {
        var events: [String] = []
        for _ in 0..<Int.random(in: 3...16, using: &rng) { events.append(addNode()) }
        for _ in 0..<Int.random(in: 1...6, using: &rng) { events.append(deploy()) }
        return events
    }

    mutating func heal() -> [String] {
        for i in nodes.indices {
            nodes[i].condition = .ready
            nodes[i].capacity = fullCapacity[nodes[i].id]!
        }
        return ["every node ready at full capacity"]
    }

    mutating func addNode() -> String {
        let id = try! NodeID(bytes: (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) })
        names[id] = "n\(nextNode)"
        nextNode += 1
        let capacity = Resources(cpuMillis: UInt32(Int.random(in: 4...16, using: &rng) * 1000),
                                 memoryMiB: UInt32(Int.random(in: 2...16, using: &rng) * 4096))
        var labels = ["region": "r\(Int.random(in: 0...1, using: &rng))", "zone": "z\(Int.random(in: 0...2, using: &rng))"]
        if rng.chance(0.8) { labels["rack"] = "k\(Int.random(in: 0...3, using: &rng))" }
        var caps = Set<String>()
        if rng.chance(0.85) { caps.insert("podman") }
        if rng.chance(0.4) { caps.insert("k3s") }
        if rng.chance(0.25) { caps.insert("libvirt") }
        let reserved = rng.chance(0.5) ? Resources.zero
            : Resources(cpuMillis: capacity.cpuMillis / UInt32(Int.random(in: 10...40, using: &rng)),
                        memoryMiB: capacity.memoryMiB / UInt32(Int.random(in: 10...40, using: &rng)))
        let node = SchedulerNode(id: id, capacity: capacity, labels: labels, capabilities: caps,
                                 trust: Double(Int.random(in: 2...10, using: &rng)) / 10, reserved: reserved)
        nodes.append(node)
        fullCapacity[id] = capacity
        return "join \(name(id)) (\(capacity), reserved \(reserved), \(labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")), "
            + "\(caps.sorted().joined(separator: ",")), trust \(node.trust))"
    }

    /// Total requested resources against the cluster's full capacity: deploys and scale-ups stop
    /// at 30%, so most steps have room and the convergence check has something to check.
    func demandFraction(adding extra: Resources, times k: Int) -> Double {
        var cpu = Double(extra.cpuMillis) * Double(k), mem = Double(extra.memoryMiB) * Double(k)
        for d in services {
            cpu += Double(d.resources.cpuMillis) * Double(d.replicas)
            mem += Double(d.resources.memoryMiB) * Double(d.replicas)
        }
        let capCpu = fullCapacity.values.reduce(0.0) { $0 + Double($1.cpuMillis) }
        let capMem = fullCapacity.values.reduce(0.0) { $0 + Double($1.memoryMiB) }
        return max(cpu / max(capCpu, 1), mem / max(capMem, 1))
    }

    mutating func deploy() -> String {
        let name = "svc\(nextService)"
        nextService += 1
        let resources = Resources(cpuMillis: UInt32(Int.random(in: 2...20, using: &rng) * 50),
                                  memoryMiB: UInt32(Int.random(in: 1...16, using: &rng) * 64))
        var replicas = Int.random(in: 1...5, using: &rng)
        while replicas > 0 && demandFraction(adding: resources, times: replicas) > 0.3 { replicas -= 1 }
        let constraintChoices: [Constraint] = [
            .capability("podman"), .capability("k3s"), .labelIn("region", ["r0"]), .labelIn("region", ["r0", "r1"]),
            .labelNotEquals("zone", "z1"), .hasLabel("rack"), .labelEquals("region", "r1"), .capability("gpu"),
        ]
        var constraints: [Constraint] = []
        if rng.chance(0.5) { constraints.append(pick(constraintChoices)!) }
        if rng.chance(0.15) { constraints.append(pick(constraintChoices)!) }
        var preferences: [Preference] = []
        if rng.chance(0.3) {
            preferences.append(Preference(.labelEquals("zone", "z\(Int.random(in: 0...2, using: &rng))"),
                                          weight: Int.random(in: -5...5, using: &rng)))
        }
        var antiAffinity: [String] = []
        if rng.chance(0.15), let other = pick(services) { antiAffinity.append(other.name) }
        if rng.chance(0.05) { antiAffinity.append(name) }
        let d = ServiceDemand(
            name: name, replicas: replicas, resources: resources, strategy: rng.chance(0.5) ? .binpack : .spread,
            constraints: constraints, preferences: preferences, minTrust: pick([0, 0, 0, 0.3, 0.6])!,
            spreadLevel: pick([nil, "region", "zone", "rack"])!, maxPerNode: rng.chance(0.3) ? Int.random(in: 1...2, using: &rng) : nil,
            antiAffinity: antiAffinity, priority: Int.random(in: 0...2, using: &rng))
        services.append(d)
        return "deploy \(name) ×\(replicas) (\(resources), \(d.strategy), constraints \(constraints), minTrust \(d.minTrust), "
            + "spread \(d.spreadLevel ?? "nodes"), maxPerNode \(d.maxPerNode.map(String.init) ?? "-"), anti-affinity \(antiAffinity), priority \(d.priority))"
    }

    mutating func randomEvent() -> [String] {
        let roll = Int.random(in: 0..<100, using: &rng)
        func node(_ where: (SchedulerNode) -> Bool) -> Int? {
            let candidates = nodes.indices.filter { `where`(nodes[$0]) }
            return candidates.isEmpty ? nil : candidates[Int.random(in: 0..<candidates.count, using: &rng)]
        }
        func set(_ i: Int, _ c: NodeCondition) -> String {
            nodes[i].condition = c
            return "\(name(nodes[i].id)) \(c)"
        }
        switch roll {
        case 0..<12: if let i = node({ $0.condition == .ready || $0.condition == .suspect }) { return [set(i, .down)] }
        case 12..<22: if let i = node({ $0.condition != .ready }) { return [set(i, .ready)] }
        case 22..<28: if let i = node({ $0.condition == .ready }) { return [set(i, .suspect)] }
        case 28..<34: if let i = node({ $0.condition == .ready }) { return [set(i, .draining)] }
        case 34..<38:
            if let i = node({ $0.condition == .draining || $0.condition == .down }) {
                let gone = nodes.remove(at: i)
                fullCapacity[gone.id] = nil
                return ["\(name(gone.id)) leaves"]
            }
        case 38..<46: if nodes.count < 30 { return [addNode()] }
        case 46..<51:
            if let i = node({ _ in true }) {
                let k = Double(Int.random(in: 4...9, using: &rng)) / 10
                nodes[i].capacity = Resources(cpuMillis: UInt32(Double(nodes[i].capacity.cpuMillis) * k),
                                              memoryMiB: UInt32(Double(nodes[i].capacity.memoryMiB) * k))
                return ["\(name(nodes[i].id)) shrinks to \(nodes[i].capacity)"]
            }
        case 51..<55:
            if let i = node({ $0.capacity != self.fullCapacity[$0.id] }) {
                nodes[i].capacity = fullCapacity[nodes[i].id]!
                return ["\(name(nodes[i].id)) back to \(nodes[i].capacity)"]
            }
        case 55..<59:
            if let i = node({ _ in true }) {
                nodes[i].trust = Double(Int.random(in: 0...10, using: &rng)) / 10
                return ["\(name(nodes[i].id)) trust \(nodes[i].trust)"]
            }
        case 59..<74: if services.count < 24 { return [deploy()] }
        case 74..<90:
            if !services.isEmpty {
                let i = Int.random(in: 0..<services.count, using: &rng)
                var target = Int.random(in: 0...7, using: &rng)
                while target > services[i].replicas
                    && demandFraction(adding: services[i].resources, times: target - services[i].replicas) > 0.3 { target -= 1 }
                services[i].replicas = target
                return ["scale \(services[i].name) to \(target)"]
            }
        default:
            if !services.isEmpty {
                let gone = services.remove(at: Int.random(in: 0..<services.count, using: &rng))
                return ["remove \(gone.name)"]
            }
        }
        return ["nothing happens"]
    }

    /// Plans, checks and applies; returns the first broken promise.
    mutating func planAndCheck(step: Int, result: inout ScheduleSimulationResult, log: (String) -> Void) -> String? {
        let planSeed = splitMix64(seed ^ UInt64(step))
        let plan = Scheduler.plan(nodes: nodes, services: services, current: current, seed: planSeed)
        log("  plan: +\(plan.started.count) -\(plan.stopped.count), \(plan.assignments.count) instances on \(nodes.count) nodes")
        for s in plan.started { log("    start \(s.service)#\(s.slot) on \(name(s.node))") }
        for s in plan.stopped { log("    stop \(s.assignment.service)#\(s.assignment.slot) on \(name(s.assignment.node)): \(s.reason)") }
        for u in plan.unplaced { log("    short \(u.service) by \(u.missing): \(u.reason)") }
        result.started += plan.started.count
        result.stopped += plan.stopped.count
        if !plan.unplaced.isEmpty { result.shortSteps += 1 }

        let faults = PlanCheck.violations(of: plan, nodes: nodes, services: services, current: current)
        if let f = faults.first { return f + (faults.count > 1 ? " (and \(faults.count - 1) more)" : "") }

        var shuffler = SeededRandom(seed: planSeed)
        let again = Scheduler.plan(nodes: nodes.shuffled(using: &shuffler), services: services.shuffled(using: &shuffler),
                                   current: current.shuffled(using: &shuffler), seed: planSeed)
        if again != plan { return "not deterministic: the same inputs in another order gave another plan" }

        let fixpoint = Scheduler.plan(nodes: nodes, services: services, current: plan.assignments, seed: planSeed &+ 1)
        if !fixpoint.started.isEmpty || !fixpoint.stopped.isEmpty {
            return "not a fixpoint: planning again from the plan's own assignments starts \(fixpoint.started) and stops \(fixpoint.stopped.map(\.assignment))"
        }

        for d in services where capacityAllowsAll(d, plan.assignments) {
            result.convergenceChecks += 1
            let have = plan.assignments.filter { $0.service == d.name }.count
            if have < d.replicas {
                return "\(d.name) has \(have) of \(d.replicas) replicas although capacity provably allows all"
            }
        }
        current = plan.assignments
        return nil
    }

    /// The sufficient condition in the header: when it holds, a locally maximal plan places every replica.
    func capacityAllowsAll(_ d: ServiceDemand, _ assignments: [Assignment]) -> Bool {
        guard d.replicas > 0, (d.maxPerNode ?? 1) >= 1, !services.contains(where: { $0.name == d.name && $0 != d }) else { return false }
        let eligible = nodes.filter { n in n.condition == .ready && n.trust >= d.minTrust && d.constraints.allSatisfy { $0.holds(on: n) } }
        guard !eligible.isEmpty else { return false }
        // The least room any eligible node has left once it is too full for one more instance.
        var roomCpu = Int64.max, roomMem = Int64.max
        for n in eligible {
            let cpu: Int64 = Int64(n.capacity.cpuMillis) - Int64(n.reserved.cpuMillis) - Int64(d.resources.cpuMillis)
            let mem: Int64 = Int64(n.capacity.memoryMiB) - Int64(n.reserved.memoryMiB) - Int64(d.resources.memoryMiB)
            roomCpu = min(roomCpu, cpu)
            roomMem = min(roomMem, mem)
        }
        guard roomCpu > 0, roomMem > 0 else { return false }
        var usedCpu: Int64 = 0, usedMem: Int64 = 0
        var byName: [String: ServiceDemand] = [:]
        for s in services { byName[s.name] = s }
        for a in assignments {
            usedCpu += Int64(byName[a.service]?.resources.cpuMillis ?? 0)
            usedMem += Int64(byName[a.service]?.resources.memoryMiB ?? 0)
        }
        let conflicting = services.filter { $0.name != d.name && ($0.antiAffinity.contains(d.name) || d.antiAffinity.contains($0.name)) }
        let closedByConflicts = conflicting.reduce(0) { $0 + $1.replicas }
        let closed = Int64(closedByConflicts + d.replicas - 1) + usedCpu / roomCpu + usedMem / roomMem
        return Int64(eligible.count) > closed
    }
}
