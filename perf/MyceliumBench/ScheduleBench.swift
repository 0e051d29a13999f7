import Foundation
import MyceliumCore
import MyceliumIdentity
import Scheduler

/// `mycelium-bench schedule [--services N] [--nodes N] [--runs N] [--seed S]`
///
/// The service scheduler's throughput: N single-replica binpack services (100–2000 millicpu,
/// 64–1024 MiB, a quarter with constraints, some with trust floors and preferences) planned from
/// scratch onto a cluster of labelled nodes (regions, zones, racks, capabilities, trust). All
/// binpack, so that "nodes used" measures packing quality. Reported: the median plan time of
/// --runs runs, placements/s, the ratio to the goal (10,000 services in < 1 s) and to Nomad's
/// published C2M figure (~1,500 placements/s, as quoted in ARCHITECTURE.md; Nomad is not run
/// here). Then the same with Nomad's candidate limit for service jobs (⌈log2 nodes⌉ feasible nodes
/// scored per placement), to show what sampling buys and costs in packing; then a re-plan after
/// 10% of the nodes fail: how many instances move and how long it takes. Every plan is checked
/// with PlanCheck.
func runScheduleBench(_ args: [String]) async throws {
    func option(_ name: String) -> String? {
        guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
        return args[i + 1]
    }
    let serviceCount = option("--services").flatMap(Int.init) ?? 10_000
    let nodeCount = option("--nodes").flatMap(Int.init) ?? 1_000
    let runs = max(option("--runs").flatMap(Int.init) ?? 5, 1)
    let seed = option("--seed").flatMap(UInt64.init) ?? 1
    var rng = SeededRandom(seed: seed)
    let nodes = (0..<nodeCount).map { _ in benchNode(&rng) }
    let services = (0..<serviceCount).map { benchService($0, &rng) }
    let demandCpu = services.reduce(0.0) { $0 + Double($1.resources.cpuMillis) }
    let capacityCpu = nodes.reduce(0.0) { $0 + Double($1.capacity.cpuMillis) }
    print("schedule benchmark: \(serviceCount) single-replica services on \(nodeCount) nodes, seed \(seed), "
          + "\(runs) runs each, on \(machineLine())")
    print("demand is \(fmt(100 * demandCpu / capacityCpu))% of the cluster's CPU; "
          + "\(services.filter { !$0.constraints.isEmpty }.count) services have constraints")
    print(String(repeating: "-", count: 100))

    func timed(_ current: [Assignment], _ nodes: [SchedulerNode], _ options: PlanOptions) -> (plan: Plan, median: Double) {
        var times: [Double] = []
        var plan = Plan()
        for _ in 0..<runs {
            let start = now()
            plan = Scheduler.plan(nodes: nodes, services: services, current: current, seed: seed, options: options)
            times.append(now() - start)
        }
        let faults = PlanCheck.violations(of: plan, nodes: nodes, services: services, current: current)
        if !faults.isEmpty { print("  PLAN CHECK FAILED (\(faults.count)): \(faults.prefix(3))") }
        return (plan, median(times))
    }
    func usage(_ plan: Plan, _ nodes: [SchedulerNode]) -> String {
        var used: [NodeID: Double] = [:]
        let byName = Dictionary(uniqueKeysWithValues: services.map { ($0.name, $0) })
        for a in plan.assignments { used[a.node, default: 0] += Double(byName[a.service]!.resources.cpuMillis) }
        let capacity = Dictionary(uniqueKeysWithValues: nodes.map { ($0.id, Double($0.capacity.cpuMillis)) })
        let mean = used.reduce(0.0) { $0 + $1.value / capacity[$1.key]! } / Double(max(used.count, 1))
        return "\(used.count) nodes used, mean CPU use of those \(fmt(100 * mean))%"
    }

    let full = timed([], nodes, PlanOptions())
    let placed = full.plan.assignments.count
    let rate = Double(placed) / full.median
    print("full scan:       \(placed) placed, \(full.plan.unplaced.count) short, median \(fmt(full.median * 1000, 1)) ms "
          + "= \(fmt(rate)) placements/s")
    print("                 goal (\(serviceCount) in < 1 s): \(fmt(full.median, 3)) s = \(fmt(full.median * 100))% of the budget; "
          + "\(fmt(rate / 1500, 1))× Nomad's published C2M ~1,500 placements/s (not run here)")
    print("                 \(usage(full.plan, nodes))")

    var sampled = PlanOptions()
    sampled.candidateLimit = max(2, Int((log2(Double(nodeCount))).rounded(.up)))
    let limited = timed([], nodes, sampled)
    print("candidates \(sampled.candidateLimit!):   \(limited.plan.assignments.count) placed, median \(fmt(limited.median * 1000, 1)) ms "
          + "= \(fmt(Double(limited.plan.assignments.count) / limited.median)) placements/s; \(usage(limited.plan, nodes))")

    // 10% of the nodes fail; everything they ran must move, nothing else may.
    var failed = nodes
    var order = Array(failed.indices)
    order.shuffle(using: &rng)
    for i in order.prefix(nodeCount / 10) { failed[i].condition = .down }
    let replan = timed(full.plan.assignments, failed, PlanOptions())
    let down = Set(order.prefix(nodeCount / 10).map { nodes[$0].id })
    let onFailed = full.plan.assignments.filter { down.contains($0.node) }.count
    let movedElsewhere = replan.plan.stopped.filter { down.contains($0.assignment.node) }.count
    print("10% nodes down:  \(onFailed) instances were on them; re-plan stopped \(replan.plan.stopped.count) "
          + "(\(movedElsewhere) on failed nodes), started \(replan.plan.started.count), \(replan.plan.unplaced.count) short; "
          + "median \(fmt(replan.median * 1000, 1)) ms")
    for u in (full.plan.unplaced + replan.plan.unplaced).prefix(3) { print("  short: \(u.service): \(u.reason)") }
}

private func benchNode(_ rng: inout SeededRandom) -> SchedulerNode {
    let id = try! NodeID(bytes: (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) })
    let region = Int.random(in: 0..<3, using: &rng)
    var caps: Set<String> = []
    if rng.chance(0.9) { caps.insert("podman") }
    if rng.chance(0.3) { caps.insert("k3s") }
    if rng.chance(0.2) { caps.insert("libvirt") }
    if rng.chance(0.05) { caps.insert("gpu") }
    return SchedulerNode(
        id: id,
        capacity: Resources(cpuMillis: UInt32(Int.random(in: 4...16, using: &rng) * 4000),
                            memoryMiB: UInt32(Int.random(in: 4...32, using: &rng) * 4096)),
        labels: ["region": "r\(region)", "zone": "r\(region)-z\(Int.random(in: 0..<3, using: &rng))",
                 "rack": "k\(Int.random(in: 0..<10, using: &rng))"],
        capabilities: caps, trust: Double(Int.random(in: 5...10, using: &rng)) / 10,
        reserved: Resources(cpuMillis: rng.chance(0.2) ? 2000 : 0, memoryMiB: rng.chance(0.2) ? 4096 : 0))
}

private func benchService(_ i: Int, _ rng: inout SeededRandom) -> ServiceDemand {
    var d = ServiceDemand(name: "svc-\(i)", replicas: 1,
                          resources: Resources(cpuMillis: UInt32(Int.random(in: 100...2000, using: &rng)),
                                               memoryMiB: UInt32(Int.random(in: 64...1024, using: &rng))),
                          strategy: .binpack)
    if rng.chance(0.25) {
        let choices: [Constraint] = [.capability("podman"), .capability("k3s"), .labelEquals("region", "r1"),
                                     .labelIn("zone", ["r0-z0", "r2-z1"]), .labelNotEquals("region", "r2"), .capability("gpu")]
        d.constraints = [choices[Int.random(in: 0..<choices.count, using: &rng)]]
    }
    if rng.chance(0.1) { d.minTrust = 0.8 }
    if rng.chance(0.1) { d.preferences = [Preference(.labelEquals("region", "r\(Int.random(in: 0..<3, using: &rng))"), weight: 2)] }
    return d
}
