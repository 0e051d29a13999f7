// An independent checker of the scheduler's promises, written without the scheduler's engine so a bug
// there cannot hide here. Used by the simulation and the property tests; a controller may also run
// it on a plan before committing it.

import MyceliumIdentity

public enum PlanCheck {
    /// Every broken promise of `plan` for these inputs, as text (empty when the plan is sound):
    /// structure and bookkeeping, capacity, node conditions, constraints, trust, maxPerNode,
    /// anti-affinity, stability of valid current instances, local maximality (a short service has
    /// no node left that could take one more instance) and unplaced reports.
    public static func violations(of plan: Plan, nodes nodeList: [SchedulerNode], services serviceList: [ServiceDemand],
                                  current: [Assignment]) -> [String] {
        var out: [String] = []
        var nodes: [NodeID: SchedulerNode] = [:]
        for n in nodeList where nodes[n.id] == nil { nodes[n.id] = n }
        var services: [String: ServiceDemand] = [:]
        var duplicates: [ServiceDemand] = []
        for d in serviceList {
            if services[d.name] == nil { services[d.name] = d } else { duplicates.append(d) }
        }
        func conflict(_ a: String, _ b: String) -> Bool {
            a != b && (services[a]?.antiAffinity.contains(b) == true || services[b]?.antiAffinity.contains(a) == true)
        }
        func limit(_ d: ServiceDemand) -> Int {
            let m = max(d.maxPerNode ?? Int.max, 0)
            return d.antiAffinity.contains(d.name) ? min(m, 1) : m
        }
        func eligible(_ d: ServiceDemand, _ n: SchedulerNode) -> Bool {
            n.trust >= d.minTrust && d.constraints.allSatisfy { $0.holds(on: n) }
        }

        // Structure and bookkeeping.
        for (a, b) in zip(plan.assignments, plan.assignments.dropFirst()) where !(a.service < b.service || (a.service == b.service && a.slot < b.slot)) {
            out.append("assignments not sorted by (service, slot) or slot repeated: \(a), \(b)")
        }
        let before = Set(current), after = Set(plan.assignments)
        if plan.started != plan.assignments.filter({ !before.contains($0) }) {
            out.append("started is not exactly the new assignments, in order")
        }
        if Set(plan.stopped.map(\.assignment)) != before.subtracting(after) || plan.stopped.count != before.subtracting(after).count {
            out.append("stopped is not exactly the current assignments the plan drops")
        }
        for s in plan.stopped where s.reason.isEmpty { out.append("stop of \(s.assignment) has no reason") }

        // Every instance on its own.
        var byNode: [NodeID: [Assignment]] = [:]
        var count: [String: Int] = [:]
        for a in plan.assignments {
            guard let d = services[a.service] else { out.append("\(a): unknown service"); continue }
            guard let n = nodes[a.node] else { out.append("\(a): unknown node"); continue }
            if a.slot < 0 || a.slot >= d.replicas { out.append("\(a): slot outside 0..<\(d.replicas)") }
            switch n.condition {
            case .down, .draining: out.append("\(a): node is \(n.condition)")
            case .suspect where !before.contains(a): out.append("\(a): new instance on a suspect node")
            default: break
            }
            if !eligible(d, n) { out.append("\(a): constraints or trust floor fail on its node") }
            byNode[a.node, default: []].append(a)
            count[a.service, default: 0] += 1
        }

        // Every node.
        func fits(_ list: [Assignment], _ n: SchedulerNode) -> Bool {
            var c = Int64(n.reserved.cpuMillis), m = Int64(n.reserved.memoryMiB)
            for a in list {
                c += Int64(services[a.service]?.resources.cpuMillis ?? 0)
                m += Int64(services[a.service]?.resources.memoryMiB ?? 0)
            }
            return c <= Int64(n.capacity.cpuMillis) && m <= Int64(n.capacity.memoryMiB)
        }
        func relationalFaults(_ list: [Assignment]) -> [String] {
            var faults: [String] = []
            var per: [String: Int] = [:]
            for a in list { per[a.service, default: 0] += 1 }
            for (name, k) in per where k > limit(services[name]!) { faults.append("\(k) instances of \(name) (maxPerNode \(limit(services[name]!)))") }
            let names = per.keys.sorted()
            for (i, a) in names.enumerated() { for b in names[(i + 1)...] where conflict(a, b) { faults.append("\(a) and \(b) are anti-affine") } }
            return faults
        }
        for (id, list) in byNode {
            let n = nodes[id]!
            if !fits(list, n) { out.append("node \(id) over capacity") }
            for f in relationalFaults(list) { out.append("node \(id): \(f)") }
        }

        // Stability: on a node where the individually valid current instances fit together, all stay.
        var valid: [NodeID: [Assignment]] = [:]
        var slotsSeen: [String: Int] = [:]
        for a in before {
            guard let d = services[a.service], let n = nodes[a.node], a.slot >= 0, a.slot < d.replicas,
                  n.condition == .ready || n.condition == .suspect, eligible(d, n) else { continue }
            valid[a.node, default: []].append(a)
            slotsSeen["\(a.service)#\(a.slot)", default: 0] += 1
        }
        for (id, list) in valid where fits(list, nodes[id]!) && relationalFaults(list).isEmpty
            && list.allSatisfy({ slotsSeen["\($0.service)#\($0.slot)"] == 1 }) {
            for a in list where !after.contains(a) { out.append("\(a): valid current instance was not kept") }
        }

        // Local maximality and unplaced reports.
        var expected: [String: [Int]] = [:]
        for d in duplicates where d.replicas > 0 { expected[d.name, default: []].append(d.replicas) }
        for d in services.values where count[d.name, default: 0] < d.replicas {
            expected[d.name, default: []].append(d.replicas - count[d.name, default: 0])
            if d.replicas > Scheduler.maxReplicas { continue }
            for n in nodes.values where n.condition == .ready && eligible(d, n) {
                let list = byNode[n.id] ?? []
                if fits(list + [Assignment(service: d.name, slot: -1, node: n.id)], n),
                   list.filter({ $0.service == d.name }).count < limit(d),
                   !list.contains(where: { conflict($0.service, d.name) }) {
                    out.append("\(d.name) is short but node \(n.id) could take another instance")
                    break
                }
            }
        }
        var reported: [String: [Int]] = [:]
        for u in plan.unplaced {
            reported[u.service, default: []].append(u.missing)
            if u.reason.isEmpty { out.append("unplaced \(u.service) has no reason") }
        }
        if reported.mapValues({ $0.sorted() }) != expected.mapValues({ $0.sorted() }) {
            out.append("unplaced reports \(reported) but the plan leaves short \(expected)")
        }
        return out
    }
}
