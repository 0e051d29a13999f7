// The service scheduler: a pure function from (nodes, services, current assignments, seed) to a plan.
//
// Model. A service asks for `replicas` identical instances, numbered by slot (0..<replicas). A plan
// is the whole desired set of (service, slot, node) after it, plus the difference from `current`:
// what to start, what to stop and why, and which services stay short and what an operator can do.
// The scheduler owns no state and does no I/O: no clock, file, socket or global randomness. The
// same inputs and seed always give the same plan, whatever the order of the input lists, so a
// controller can compute it on the Raft leader, replicate it, and replay it in a test.
//
// A plan is made in three phases:
//  1. Keep (Keep.swift): every current instance that is still valid stays where it is, even when
//     another node would now score better; a move is a restart. Instances of removed services,
//     slots above `replicas`, instances on draining or down nodes, or on nodes that no longer
//     satisfy the constraints or trust floor are stopped. `suspect` nodes keep what they run but
//     get nothing new. If a node runs more than it can hold (its capacity shrank), its lowest
//     priority, highest slot instances are stopped until it fits.
//  2. Place (Placement.swift): services in a fixed order (priority, then larger instances first,
//     then the most constrained) each fill their missing slots greedily on the best feasible node.
//  3. Repair (Search.swift): a service left short triggers a bounded search that may move the
//     instances earlier services received in this plan to make room. Finally, short services get one
//     more greedy pass, in case a repair freed room for them.
//
// Hard rules hold in every plan: a node's instances plus `reserved` never exceed its capacity;
// constraints, trust floors, maxPerNode and (symmetric) anti-affinity hold for every instance; new
// instances land only on ready nodes. A plan is a fixpoint: planning again from its assignments with
// nothing changed starts and stops nothing.

import MyceliumIdentity

public enum Scheduler {
    /// Slots one service may have; a plan allocates per slot, so a typo of a few zeros must not
    /// exhaust memory. Replicas above it are reported unplaced.
    public static let maxReplicas = 100_000

    /// The plan that takes the cluster from `current` to the services' desired state.
    ///
    /// - Parameters:
    ///   - nodes: every member; when an ID repeats, the first entry counts.
    ///   - services: the desired services; when a name repeats, the first counts and the others
    ///     are reported unplaced.
    ///   - current: what runs now (as last applied); anything unknown or invalid is stopped.
    ///   - seed: breaks ties between equally good nodes; the same seed gives the same plan.
    public static func plan(nodes: [SchedulerNode], services: [ServiceDemand], current: [Assignment], seed: UInt64) -> Plan {
        plan(nodes: nodes, services: services, current: current, seed: seed, options: PlanOptions())
    }

    /// `plan(nodes:services:current:seed:)` with non-default search and sampling limits.
    public static func plan(nodes: [SchedulerNode], services: [ServiceDemand], current: [Assignment], seed: UInt64,
                            options: PlanOptions) -> Plan {
        var engine = Engine(nodes: nodes, services: services, options: options, seed: seed)
        let stops = engine.keepValid(current)
        for s in engine.services.indices where engine.placed[s] < engine.replicas[s] {
            engine.placeGreedily(s)
            engine.rearrange(for: s)
        }
        for s in engine.services.indices where engine.placed[s] < engine.replicas[s] {
            engine.placeGreedily(s)
        }
        return engine.makePlan(current: current, stops: stops)
    }

    /// The order in which `plan` places services (names; later duplicates of a name are left out).
    public static func placementOrder(nodes: [SchedulerNode], services: [ServiceDemand]) -> [String] {
        Engine(nodes: nodes, services: services, options: PlanOptions(), seed: 0).services.map(\.name)
    }
}

extension Engine {
    func makePlan(current: [Assignment], stops: [Stop]) -> Plan {
        var assignments: [Assignment] = []
        for (s, d) in services.enumerated() {
            for (slot, n) in slotNode[s].enumerated() where n >= 0 {
                assignments.append(Assignment(service: d.name, slot: slot, node: nodes[Int(n)].id))
            }
        }
        assignments.sort()
        let before = Set(current)
        let after = Set(assignments)
        var unplaced: [Unplaced] = []
        for s in services.indices where placed[s] < requested[s] {
            var reasons: [String] = []
            if requested[s] > replicas[s] {
                reasons.append("\(requested[s]) replicas exceed the scheduler's limit of \(Scheduler.maxReplicas); split the service")
            }
            if placed[s] < replicas[s] { reasons.append(unplacedReason(s)) }
            unplaced.append(Unplaced(service: services[s].name, missing: requested[s] - placed[s], reason: reasons.joined(separator: "; ")))
        }
        for d in duplicates where d.replicas > 0 {
            unplaced.append(Unplaced(service: d.name, missing: d.replicas,
                                     reason: "another service named \(d.name) comes first in the list; give each service a unique name"))
        }
        unplaced.sort { $0.service < $1.service }
        return Plan(
            assignments: assignments,
            started: assignments.filter { !before.contains($0) },
            // A stop whose instance came back to the same node is no change at all.
            stopped: stops.filter { !after.contains($0.assignment) }.sorted { $0.assignment < $1.assignment },
            unplaced: unplaced)
    }
}
