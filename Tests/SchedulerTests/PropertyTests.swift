// Many random small clusters from a seeded generator: every plan keeps the hard rules, keeps valid
// instances, is deterministic and a fixpoint, and places as many instances as an exhaustive search.

import MyceliumCore
import MyceliumIdentity
@testable import Scheduler
import XCTest

struct SmallCase {
    var nodes: [SchedulerNode]
    var services: [ServiceDemand]
    var current: [Assignment]
    /// All services the same size and no anti-affinity: then the most instances per service in
    /// placement order is also the most instances in total (the feasible sets form a matroid).
    var uniform: Bool

    static func random(_ rng: inout SeededRandom) -> SmallCase {
        func pick<T>(_ xs: [T]) -> T { xs[Int.random(in: 0..<xs.count, using: &rng)] }
        let uniform = rng.chance(0.3)
        let nodes = (1...Int.random(in: 1...4, using: &rng)).map { i in
            node(i, cpu: pick([1000, 2000, 3000]), mem: pick([1024, 2048]), labels: ["zone": pick(["z0", "z1"])],
                 caps: rng.chance(0.7) ? ["podman"] : [], trust: pick([0.3, 0.6, 1.0]),
                 condition: pick([.ready, .ready, .ready, .ready, .ready, .ready, .suspect, .draining, .down]),
                 reserved: rng.chance(0.2) ? Resources(cpuMillis: 500, memoryMiB: 0) : .zero)
        }
        var budget = Int.random(in: 1...6, using: &rng)
        var services: [ServiceDemand] = []
        let size = (cpu: UInt32(pick([500, 1000, 1500])), mem: UInt32(pick([256, 512, 1024])))
        for k in 0..<Int.random(in: 1...3, using: &rng) where budget > 0 {
            let replicas = Int.random(in: 1...budget, using: &rng)
            budget -= replicas
            var d = service("s\(k)", replicas, cpu: uniform ? size.cpu : pick([500, 1000, 1500]), mem: uniform ? size.mem : pick([256, 512, 1024]),
                            strategy: pick([.binpack, .spread]), minTrust: pick([0, 0, 0.5]), spread: pick([nil, "zone"]),
                            maxPerNode: pick([nil, nil, 1, 2]), priority: pick([0, 0, 1]))
            if rng.chance(0.3) { d.constraints = [pick([.capability("podman"), .labelEquals("zone", "z0"), .labelNotEquals("zone", "z0")])] }
            if rng.chance(0.2) { d.preferences = [Preference(.labelEquals("zone", "z1"), weight: pick([-2, 3]))] }
            if !uniform && k > 0 && rng.chance(0.3) { d.antiAffinity = ["s\(Int.random(in: 0..<k, using: &rng))"] }
            services.append(d)
        }
        var current: [Assignment] = []
        for _ in 0..<Int.random(in: 0...4, using: &rng) {
            current.append(at(pick(services.map(\.name) + ["gone"]), Int.random(in: 0...3, using: &rng), Int.random(in: 1...5, using: &rng)))
        }
        return SmallCase(nodes: nodes, services: services, current: current, uniform: uniform)
    }
}

/// The most instances each service can have, lexicographically in `order`, with `kept` fixed:
/// every way of adding instances on ready nodes, tried exhaustively.
func bruteForceMaximum(_ c: SmallCase, kept: [Assignment], order: [String]) -> (perService: [Int], total: Int) {
    let services = order.map { name in c.services.first { $0.name == name }! }
    let nodes = c.nodes
    var count = [[Int]](repeating: [Int](repeating: 0, count: nodes.count), count: services.count)
    var freeCpu = nodes.map { Int($0.capacity.cpuMillis) - Int($0.reserved.cpuMillis) }
    var freeMem = nodes.map { Int($0.capacity.memoryMiB) - Int($0.reserved.memoryMiB) }
    for a in kept {
        let s = order.firstIndex(of: a.service)!, n = nodes.firstIndex { $0.id == a.node }!
        count[s][n] += 1
        freeCpu[n] -= Int(services[s].resources.cpuMillis)
        freeMem[n] -= Int(services[s].resources.memoryMiB)
    }
    let missing = services.indices.map { s in services[s].replicas - count[s].reduce(0, +) }
    func conflict(_ a: Int, _ b: Int) -> Bool {
        a != b && (services[a].antiAffinity.contains(services[b].name) || services[b].antiAffinity.contains(services[a].name))
    }
    var best: [Int] = []
    var bestTotal = 0
    var added = [Int](repeating: 0, count: services.count)
    func go(_ s: Int, _ n: Int, _ left: Int) {
        if s == services.count {
            if best.isEmpty || best.lexicographicallyPrecedes(added) { best = added }
            bestTotal = max(bestTotal, added.reduce(0, +))
            return
        }
        if n == nodes.count { go(s + 1, 0, s + 1 < services.count ? missing[s + 1] : 0); return }
        go(s, n + 1, left)  // nothing more of s on n
        let d = services[s], node = nodes[n]
        guard node.condition == .ready, node.trust >= d.minTrust, d.constraints.allSatisfy({ $0.holds(on: node) }),
              !services.indices.contains(where: { conflict(s, $0) && count[$0][n] > 0 }) else { return }
        var placed = 0
        while placed < left, count[s][n] < (d.maxPerNode ?? Int.max),
              freeCpu[n] >= Int(d.resources.cpuMillis), freeMem[n] >= Int(d.resources.memoryMiB) {
            placed += 1
            count[s][n] += 1; added[s] += 1
            freeCpu[n] -= Int(d.resources.cpuMillis); freeMem[n] -= Int(d.resources.memoryMiB)
            go(s, n + 1, left - placed)
        }
        count[s][n] -= placed; added[s] -= placed
        freeCpu[n] += placed * Int(d.resources.cpuMillis); freeMem[n] += placed * Int(d.resources.memoryMiB)
    }
    go(0, 0, missing.first ?? 0)
    let keptCount = services.indices.map { s in count[s].reduce(0, +) }
    return (zip(best, keptCount).map { $0 + $1 }, bestTotal + keptCount.reduce(0, +))
}

final class PropertyTests: XCTestCase {
    func testRandomSmallClusters() {
        var rng = SeededRandom(seed: 20_250_317)
        var short = 0, searched = 0
        for i in 0..<3000 {
            let c = SmallCase.random(&rng)
            let seed = rng.next()
            let p = Scheduler.plan(nodes: c.nodes, services: c.services, current: c.current, seed: seed)
            func label() -> String { "case \(i): \(c)\n\(p)" }

            XCTAssertEqual(PlanCheck.violations(of: p, nodes: c.nodes, services: c.services, current: c.current), [], label())
            XCTAssertEqual(Scheduler.plan(nodes: c.nodes.shuffled(using: &rng), services: c.services.shuffled(using: &rng),
                                          current: c.current.shuffled(using: &rng), seed: seed), p, "not deterministic: \(label())")
            let again = Scheduler.plan(nodes: c.nodes, services: c.services, current: p.assignments, seed: seed &+ 1)
            XCTAssertEqual(again.assignments, p.assignments, "not a fixpoint: \(label())")

            let order = Scheduler.placementOrder(nodes: c.nodes, services: c.services)
            let kept = p.assignments.filter(Set(c.current).contains)
            let (perService, total) = bruteForceMaximum(c, kept: kept, order: order)
            let got = order.map { name in p.assignments.filter { $0.service == name }.count }
            XCTAssertEqual(got, perService, "fewer instances than possible: \(label())")
            if c.uniform { XCTAssertEqual(got.reduce(0, +), total, "uniform case below the maximum total: \(label())") }
            if !p.unplaced.isEmpty { short += 1 }
            var greedyOnly = PlanOptions()
            greedyOnly.searchBudget = 0
            if Scheduler.plan(nodes: c.nodes, services: c.services, current: c.current, seed: seed, options: greedyOnly).assignments.count
                < p.assignments.count { searched += 1 }
        }
        // The generator must produce the interesting cases, or the checks above prove little.
        XCTAssertGreaterThan(short, 300, "too few cases with a short service")
        XCTAssertGreaterThan(searched, 10, "too few cases where the search beat greedy")
    }
}
