// When greedy placement leaves a service short, a bounded search looks for a rearrangement.
//
// Moving the short service's own instances alone can never help: its instances are identical, and
// with everything else fixed, any node with room takes one, so greedy already places the most
// possible. What can help is moving instances that earlier services received in this same plan
// (never kept ones: stability), e.g. a service that took the only node with a GPU label while it
// could have run anywhere. The search re-places those together with the short service's instances:
// depth-first over (instance, node), trying k = (placed + 1), (placed + 2), ... instances of the
// short service while every moved instance must land somewhere, and stops at the first k that has no
// solution (if k cannot be placed, k + 1 cannot either). Identical instances of one service take
// nodes in non-decreasing order, so the search never tries two orders of the same multiset.
//
// Bounded by `PlanOptions.searchBudget` node visits per service and `totalSearchBudget` per plan.
// With at most `maxMovable` movable instances, all of them are candidates, which makes the result
// optimal for small clusters: no earlier service loses an instance, and each service gets the most
// instances possible given those placed before it.

extension Engine {
    enum SearchOutcome { case found, infeasible, exhausted }

    mutating func rearrange(for s: Int) {
        guard placed[s] < replicas[s], !newPlacements.isEmpty, !eligibility(of: s).ready.isEmpty else { return }
        let budgetLeft = min(options.searchBudget, options.totalSearchBudget - searchSpent)
        guard budgetLeft > 0 else { searchGaveUp.insert(s); return }
        // Scanning this plan's new placements is work too: charged to the plan's budget, so that an
        // overloaded cluster with thousands of short services cannot turn the plan quadratic.
        searchSpent += newPlacements.count / 8

        var seen = Set<Int>()
        var live: [(service: Int, slot: Int)] = []
        for (t, slot) in newPlacements where t < s && slotNode[t][slot] >= 0 && !slotKept[t][slot] {
            if seen.insert(t << 32 | slot).inserted { live.append((t, slot)) }
        }
        if live.count > options.maxMovable {
            // Only instances on nodes this service could use can make room for it directly, and
            // those with the most other nodes to go to are the likeliest to move.
            let usable = eligibility(of: s).matches
            live = Array(live.filter { usable[Int(slotNode[$0.service][$0.slot])] }
                .sorted { (-eligibility(of: $0.service).ready.count, $0.service, $0.slot) < (-eligibility(of: $1.service).ready.count, $1.service, $1.slot) }
                .prefix(options.maxMovable))
        }
        guard !live.isEmpty else { return }
        live.sort { ($0.service, $0.slot) < ($1.service, $1.slot) }

        let ownNew = (0..<replicas[s]).filter { slotNode[s][$0] >= 0 && !slotKept[s][$0] }
        var original: [(service: Int, slot: Int, node: Int32)] = []
        for (t, slot) in live + ownNew.map({ (s, $0) }) {
            original.append((t, slot, slotNode[t][slot]))
            remove(t, slot: slot)
        }
        let freeSlots = (0..<replicas[s]).filter { slotNode[s][$0] < 0 }

        var budget = budgetLeft
        var best: [(service: Int, slot: Int, node: Int32)]?
        var outcome = SearchOutcome.infeasible
        for k in (ownNew.count + 1)...freeSlots.count {
            let items = freeSlots.prefix(k).map { (service: s, slot: $0) } + live
            var chosen = [Int](repeating: 0, count: items.count)
            outcome = search(items, 0, &chosen, &budget)
            guard outcome == .found else { break }
            best = items.map { ($0.service, $0.slot, slotNode[$0.service][$0.slot]) }
            for it in items { remove(it.service, slot: it.slot) }
        }
        searchSpent += budgetLeft - budget
        if outcome == .exhausted { searchGaveUp.insert(s) }
        for (t, slot, n) in best ?? original {
            place(t, slot: slot, on: n, kept: false)
        }
    }

    private mutating func search(_ items: [(service: Int, slot: Int)], _ i: Int, _ chosen: inout [Int],
                                 _ budget: inout Int) -> SearchOutcome {
        if i == items.count { return .found }
        let (t, slot) = items[i]
        let list = eligibility(of: t).ready
        var pos = i > 0 && items[i - 1].service == t ? chosen[i - 1] : 0
        while pos < list.count {
            if budget == 0 { return .exhausted }
            budget -= 1
            let n = list[pos]
            if canHost(t, on: n) {
                place(t, slot: slot, on: n, kept: false, record: false)
                chosen[i] = pos
                let r = search(items, i + 1, &chosen, &budget)
                if r == .found { return .found }
                remove(t, slot: slot)
                if r == .exhausted { return .exhausted }
            }
            pos += 1
        }
        return .infeasible
    }
}
