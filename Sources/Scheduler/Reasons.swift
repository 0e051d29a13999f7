// Operator text: why a service is short, and why one node cannot take it. Each message narrows the
// cluster step by step (ready, constraints, trust, then what fills the matching nodes) and ends with
// what to change.

import MyceliumIdentity

extension Engine {
    func unplacedReason(_ s: Int) -> String {
        let d = services[s]
        guard !nodes.isEmpty else { return "the cluster has no nodes; add nodes" }
        let ready = nodes.indices.filter { nodes[$0].condition == .ready }
        if ready.isEmpty {
            let count = { (c: NodeCondition) in nodes.filter { $0.condition == c }.count }
            return "no node is ready (\(count(.draining)) draining, \(count(.down)) down, \(count(.suspect)) suspect); "
                + "bring nodes back or add nodes"
        }
        let notReadyMatching = nodes.indices.filter { nodes[$0].condition != .ready && eligibility(of: s).matches[$0] }.count
        let elsewhere = notReadyMatching == 0 ? ""
            : "; \(notReadyMatching) more matching node\(notReadyMatching == 1 ? " is" : "s are") draining, down or suspect"

        let matching = ready.filter { n in d.constraints.allSatisfy { $0.holds(on: nodes[n]) } }
        if matching.isEmpty {
            let unmet = d.constraints.filter { c in !ready.contains { c.holds(on: nodes[$0]) } }
            if let pin = unmet.first(where: { if case .node = $0 { true } else { false } }), case let .node(id, why) = pin {
                return "it runs only on node \(id) (\(why)), which is not ready (down, suspect or draining); "
                    + "it waits for that node" + elsewhere
            }
            if !unmet.isEmpty {
                return "no ready node has \(unmet.map(Engine.phrase).joined(separator: ", nor ")); "
                    + "add such a node or drop the constraint" + elsewhere
            }
            return "no ready node satisfies the constraints \(Engine.list(d.constraints)) together; "
                + "add such a node or relax the constraints" + elsewhere
        }
        let constraintText = d.constraints.isEmpty ? "" : " match the constraints \(Engine.list(d.constraints))"
        let trusted = matching.filter { nodes[$0].trust >= d.minTrust }
        if trusted.isEmpty {
            let highest = matching.map { nodes[$0].trust }.max() ?? 0
            return "\(plural(matching.count, "ready node"))\(constraintText) but none has trust ≥ \(d.minTrust) "
                + "(highest: \(highest)); lower minTrust or wait for those nodes' trust to grow" + elsewhere
        }

        var conflicting = 0, atMax = 0, full = 0
        var conflictNames = Set<String>()
        var mostFreeCpu: Int64 = 0, mostFreeMem: Int64 = 0
        for i in trusted {
            let n = Int32(i)
            let blockers = conflicts[s].filter { onNode[$0][n] != nil }
            if !blockers.isEmpty {
                conflicting += 1
                blockers.forEach { conflictNames.insert(services[$0].name) }
            } else if Int(onNode[s][n] ?? 0) >= maxPerNode[s] {
                atMax += 1
            } else if freeCpu[i] < cpu[s] || freeMem[i] < mem[s] {
                full += 1
                mostFreeCpu = max(mostFreeCpu, freeCpu[i])
                mostFreeMem = max(mostFreeMem, freeMem[i])
            }
        }
        let trustText = d.minTrust > 0 ? "\(constraintText.isEmpty ? " have" : " and have") trust ≥ \(d.minTrust)" : ""
        var text = "\(plural(trusted.count, "ready node"))\(constraintText)\(trustText); none can take another instance:"
        var causes: [(count: Int, text: String, action: String)] = []
        if full > 0 {
            causes.append((full, "\(full) lack room for \(d.resources) (most free: \(mostFreeCpu) millicpu, \(mostFreeMem) MiB)",
                           "add capacity there or lower the request"))
        }
        if atMax > 0 {
            causes.append((atMax, "\(atMax) already run maxPerNode=\(maxPerNode[s])", "add matching nodes or raise maxPerNode"))
        }
        if conflicting > 0 {
            causes.append((conflicting, "\(conflicting) run \(conflictNames.sorted().joined(separator: ", ")), "
                           + "which this service must not share a node with", "add matching nodes or relax antiAffinity"))
        }
        text += " " + causes.map(\.text).joined(separator: "; ")
        if let main = causes.max(by: { $0.count < $1.count }) { text += "; " + main.action }
        text += elsewhere
        if searchGaveUp.contains(s) {
            text += " (the search for a rearrangement of this plan's new instances stopped at its budget; one may exist)"
        }
        return text
    }

    static func phrase(_ c: Constraint) -> String {
        switch c {
        case let .labelEquals(k, v): return "label \(k)=\(v)"
        case let .labelNotEquals(k, v): return "label \(k) other than \(v)"
        case let .labelIn(k, vs): return "label \(k) in [\(vs.joined(separator: ", "))]"
        case let .hasLabel(k): return "label \(k)"
        case let .capability(c): return "capability '\(c)'"
        case let .node(id, why): return "the identity \(id) (\(why))"
        }
    }

    static func list(_ cs: [Constraint]) -> String { "(" + cs.map(\.description).joined(separator: ", ") + ")" }
}

func plural(_ n: Int, _ noun: String) -> String { "\(n) \(noun)\(n == 1 ? "" : "s")" }

extension Scheduler {
    /// Why `node` cannot take one more instance of `service`, given `assignments` (the cluster's
    /// instances; only those on `node` matter) and `services` (for their resources and their side
    /// of anti-affinity; `service` itself need not be among them). nil when it can. Assignments of
    /// services not in `services` count as using nothing.
    public static func explain(service: ServiceDemand, node: SchedulerNode, assignments: [Assignment] = [],
                               services: [ServiceDemand] = []) -> String? {
        var reasons: [String] = []
        switch node.condition {
        case .ready: break
        case .suspect: reasons.append("node \(node.id) is suspect: it keeps its instances but gets no new ones")
        case .draining: reasons.append("node \(node.id) is draining")
        case .down: reasons.append("node \(node.id) is down")
        }
        reasons += Engine.eligibilityFailures(service, node)

        var byName: [String: ServiceDemand] = [:]
        for d in services where byName[d.name] == nil { byName[d.name] = d }
        byName[service.name] = service
        let here = assignments.filter { $0.node == node.id }

        let limit = service.antiAffinity.contains(service.name) ? min(service.maxPerNode ?? 1, 1) : service.maxPerNode
        let mine = here.filter { $0.service == service.name }.count
        if let limit, mine >= limit {
            reasons.append("node \(node.id) already runs \(mine) instance\(mine == 1 ? "" : "s") of \(service.name) (maxPerNode=\(limit))")
        }
        let blockers = Set(here.map(\.service)).filter { other in
            other != service.name && (service.antiAffinity.contains(other) || byName[other]?.antiAffinity.contains(service.name) == true)
        }
        if !blockers.isEmpty {
            reasons.append("node \(node.id) runs \(blockers.sorted().joined(separator: ", ")), which \(service.name) must not share a node with")
        }
        var usedCpu = Int64(node.reserved.cpuMillis), usedMem = Int64(node.reserved.memoryMiB)
        for a in here {
            guard let d = byName[a.service] else { continue }
            usedCpu += Int64(d.resources.cpuMillis)
            usedMem += Int64(d.resources.memoryMiB)
        }
        let freeCpu = Int64(node.capacity.cpuMillis) - usedCpu, freeMem = Int64(node.capacity.memoryMiB) - usedMem
        if freeCpu < Int64(service.resources.cpuMillis) || freeMem < Int64(service.resources.memoryMiB) {
            reasons.append("node \(node.id) has \(max(freeCpu, 0)) millicpu and \(max(freeMem, 0)) MiB free "
                           + "(capacity \(node.capacity), reserved \(node.reserved)); \(service.name) needs \(service.resources)")
        }
        return reasons.isEmpty ? nil : reasons.joined(separator: "; ")
    }
}
