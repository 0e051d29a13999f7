// The first phase of a plan: decide which current instances stay. Stability comes first: an instance
// that is still valid never moves just because another node would now score better (a move is a
// restart). Only the rules below stop an instance.

import MyceliumIdentity

extension Engine {
    /// Keeps every valid current assignment and returns the stops for the rest. Per instance: the
    /// service and slot still exist, the node is known and neither draining nor down, constraints
    /// and trust hold. Per node, then: maxPerNode, anti-affinity and capacity (which can break when a
    /// node's capacity shrinks or a service's rules change), resolved by stopping the least
    /// important instances.
    mutating func keepValid(_ current: [Assignment]) -> [Stop] {
        var stops: [Stop] = []
        var perNode: [Int32: [(service: Int, slot: Int)]] = [:]
        for a in Set(current).sorted() {
            if let reason = invalidity(of: a) {
                stops.append(Stop(assignment: a, reason: reason))
                continue
            }
            let s = serviceIndex[a.service]!
            let n = Int32(nodeIndex[a.node]!)
            if slotNode[s][a.slot] >= 0 {
                let other = nodes[Int(slotNode[s][a.slot])].id
                stops.append(Stop(assignment: a, reason: "duplicate: slot \(a.slot) of \(a.service) already runs on \(other)"))
                continue
            }
            place(s, slot: a.slot, on: n, kept: true)
            perNode[n, default: []].append((s, a.slot))
        }
        for n in perNode.keys.sorted() {
            stops += resolve(node: n, instances: perNode[n]!)
        }
        return stops
    }

    /// Why one current assignment cannot stay, judged on its own; nil if it can.
    func invalidity(of a: Assignment) -> String? {
        guard let s = serviceIndex[a.service] else { return "service \(a.service) was removed" }
        guard a.slot >= 0, a.slot < replicas[s] else { return "scaled down to \(replicas[s]) replicas" }
        guard let n = nodeIndex[a.node] else { return "node \(a.node) is not in the node list (left the network)" }
        let node = nodes[n]
        switch node.condition {
        case .down: return "node \(node.id) is down"
        case .draining: return "node \(node.id) is draining"
        case .ready, .suspect: break
        }
        if !eligibility(of: s).matches[n] {
            return Engine.eligibilityFailures(services[s], node).joined(separator: "; ")
        }
        return nil
    }

    /// Stops instances on one node until maxPerNode, anti-affinity and capacity hold there.
    private mutating func resolve(node n: Int32, instances: [(service: Int, slot: Int)]) -> [Stop] {
        var stops: [Stop] = []
        let id = nodes[Int(n)].id
        func stop(_ s: Int, _ slot: Int, _ reason: String) {
            remove(s, slot: slot)
            stops.append(Stop(assignment: Assignment(service: services[s].name, slot: slot, node: id), reason: reason))
        }
        // Lower service index = placed first = more important.
        let present = Set(instances.map(\.service)).sorted()
        for s in present where maxPerNode[s] != Int.max {
            let slots = instances.filter { $0.service == s }.map(\.slot).sorted()
            for slot in slots.dropFirst(maxPerNode[s]) {
                stop(s, slot, "more than maxPerNode=\(maxPerNode[s]) instances of \(services[s].name) on node \(id)")
            }
        }
        var keptServices: [Int] = []
        for s in present where onNode[s][n] != nil {
            if let c = keptServices.first(where: { conflicts[s].contains($0) }) {
                for (t, slot) in instances where t == s && slotNode[s][slot] == n {
                    stop(s, slot, "anti-affinity with \(services[c].name) on node \(id)")
                }
            } else {
                keptServices.append(s)
            }
        }
        guard freeCpu[Int(n)] < 0 || freeMem[Int(n)] < 0 else { return stops }
        // Over capacity (it shrank, or `reserved` grew): stop the lowest priority, highest slot first,
        // then restart any of those that fit again, most important first.
        let remaining = instances.filter { slotNode[$0.service][$0.slot] == n }.sorted { a, b in
            let pa = services[a.service].priority, pb = services[b.service].priority
            if pa != pb { return pa < pb }
            if a.slot != b.slot { return a.slot > b.slot }
            return a.service > b.service
        }
        var removed: [(service: Int, slot: Int)] = []
        for (s, slot) in remaining where freeCpu[Int(n)] < 0 || freeMem[Int(n)] < 0 {
            remove(s, slot: slot)
            removed.append((s, slot))
        }
        for (s, slot) in removed.reversed() {
            if freeCpu[Int(n)] >= cpu[s] && freeMem[Int(n)] >= mem[s] {
                place(s, slot: slot, on: n, kept: true)
            } else {
                let node = nodes[Int(n)]
                stops.append(Stop(assignment: Assignment(service: services[s].name, slot: slot, node: id), reason:
                    "node \(id) is over capacity (capacity \(node.capacity), reserved \(node.reserved)); "
                    + "stopped to fit, lowest priority and highest slot first"))
            }
        }
        return stops
    }

    /// Every constraint and trust failure of `node` for `service`, as operator text.
    static func eligibilityFailures(_ service: ServiceDemand, _ node: SchedulerNode) -> [String] {
        var out: [String] = []
        for c in service.constraints where !c.holds(on: node) {
            switch c {
            case let .capability(cap): out.append("node \(node.id) lacks capability '\(cap)'")
            case let .hasLabel(k): out.append("node \(node.id) has no label \(k)")
            case let .node(id, why): out.append("node \(node.id) is not \(id) (\(why))")
            case let .labelEquals(k, _), let .labelIn(k, _), let .labelNotEquals(k, _):
                out.append("node \(node.id) fails constraint \(c) (\(k)=\(node.labels[k] ?? "unset"))")
            }
        }
        if !(node.trust >= service.minTrust) {
            out.append("node \(node.id) has trust \(node.trust), below minTrust \(service.minTrust)")
        }
        return out
    }
}
