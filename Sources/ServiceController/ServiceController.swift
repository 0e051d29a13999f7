// The service controller's core (issue 17), a pure value hosted by the agent.
//
// Leader duties: when services, nodes' placement facts or members' statuses change (and every few
// seconds anyway), run the scheduler (Sources/Scheduler) over the members and the service table and
// propose each service whose placement changed (`ServiceCommand.assign`, a compare-and-swap on its
// generation). A member recorded failed is `down` to the scheduler, so its instances are placed
// elsewhere in the plan that follows the record; a suspect keeps what it has and gets nothing new.
//
// Every node: tell the network its placement facts (labels, drivers, address) until the table holds
// them; keep its singleton lease renewed while it runs a service of one replica (NodeLease: a node
// cut off from the leader stops those before the leader may place them elsewhere); reconcile the instances the table assigns it (ServiceReconciler: start, restart per policy,
// stop what moved away) and report how they are doing (`ServiceCommand.report`, through the
// leader), batched, only what changed.

import MyceliumControl
import MyceliumIdentity
import MyceliumSpores
import Scheduler

public struct ServiceSettings: Sendable, Equatable {
    /// What this node tells the network about itself.
    public var info: ServiceNodeInfo
    /// The leader re-plans at least this often (ms), changes or not.
    public var planEveryMillis: UInt64 = 5000
    /// ... and at most this often, however many changes arrive (ms).
    public var planAtMostMillis: UInt64 = 100
    /// A node sends its instance reports at most this often (ms), and again if they did not apply.
    public var reportEveryMillis: UInt64 = 250
    public init(info: ServiceNodeInfo = ServiceNodeInfo()) { self.info = info }
}

public struct ServiceController: Controller {
    public typealias Action = ServiceAction
    public typealias Report = ServiceDriverReport
    public var name: String { "service" }
    public let settings: ServiceSettings
    /// The reconciler's memory, per instance ID.
    public private(set) var local: [String: LocalInstance] = [:]
    var dirty = true
    /// Per service, what its plan depends on as last applied (spec generation and placement).
    struct PlanInput: Equatable, Sendable { var generation: UInt64; var assignments: [UInt16: NodeID] }
    var planInputs: [String: PlanInput] = [:]
    var lastPlan: UInt64?
    /// What the leader proposed per service (generation, slots, pending) and when.
    var proposed: [String: (generation: UInt64, slots: [UInt16: NodeID], pending: String, at: UInt64)] = [:]
    var lastReport: UInt64?
    var lastInfo: UInt64?
    var reconcileNeeded = true
    /// What the last plan could not place, per service (for the operator).
    public private(set) var unplaced: [String: String] = [:]
    /// The lease under which this node runs singletons.
    public private(set) var lease: NodeLease
    /// Control time as last seen changing, and when (this node's ms): the leader's estimate of it.
    var controlTimeSeen: (time: Int64, at: UInt64) = (0, 0)
    /// When the leader last asked for a spore tick to bring control time past a lease.
    var clockNudgedAt: UInt64?

    /// `run` must differ between starts of the same node (the agent draws it at random).
    public init(settings: ServiceSettings, run: UInt64) {
        self.settings = settings
        lease = NodeLease(run: run)
    }

    /// A service with one replica: two copies must never run at once (fenced by the node lease).
    static func singleton(_ spec: ServiceSpec) -> Bool { spec.replicas == 1 }

    public mutating func applied(_ change: ControlChange, context: ControllerContext) -> [ControllerEffect<ServiceAction>] {
        switch change {
        case let .service(name, record):
            // Instance reports change a record too, but not what the plan depends on.
            reconcileNeeded = true
            let key = record.map { PlanInput(generation: $0.generation, assignments: $0.assignments) }
            if planInputs[name] != key { planInputs[name] = key; dirty = true }
        case .serviceNode, .restored:
            dirty = true; reconcileNeeded = true
        case .spore(let signed):
            if case .renewLease = signed.command {
                let before = lease.trustedUntil
                lease.applied(signed, node: context.node, spore: context.state.spore)
                if lease.trustedUntil != before { reconcileNeeded = true }
            }
            // What changes a member's status, capacity or trust; not leases, votes in progress or settings.
            switch signed.command {
            case .admit, .refresh, .setStatus, .revoke, .tick, .decideVote: dirty = true; reconcileNeeded = true
            default: break
            }
        default: break
        }
        return []
    }

    public mutating func reported(_ report: ServiceDriverReport, context: ControllerContext) -> [ControllerEffect<ServiceAction>] {
        guard var i = local[report.id], i.generation == report.generation else { return [] }
        i.observed = report
        local[report.id] = i
        reconcileNeeded = true
        return reconcile(context)
    }

    public mutating func tick(context: ControllerContext) -> [ControllerEffect<ServiceAction>] {
        var out: [ControllerEffect<ServiceAction>] = []
        let state = context.state
        guard state.spore.members[context.node] != nil else { return out }
        let now = context.millis
        // Placement facts, until the table holds them.
        var recorded = state.services.nodes[context.node]
        recorded?.draining = false  // the operator's, not compared
        if recorded != settings.info, lastInfo.map({ now >= $0 + 2000 }) ?? true {
            lastInfo = now
            out.append(.request(.service(.nodeInfo(node: context.node, settings.info))))
        }
        if context.isLeader { out += nudgeControlTime(context) + plan(context) }
        // Singletons here (assigned or still running) keep the node lease renewed, and are checked
        // against it every tick: a lapse stops them without waiting for any change to arrive.
        let holdsSingleton = state.services.services.values.contains { r in
            Self.singleton(r.spec) && r.assignments.values.contains(context.node)
        } || local.values.contains { $0.started && (state.services.services[$0.service].map { Self.singleton($0.spec) } ?? false) }
        if holdsSingleton {
            if let renewal = lease.renewal(node: context.node, now: now) { out.append(.submit(renewal)) }
            reconcileNeeded = true
        }
        // Restart delays run out without any change arriving.
        if reconcileNeeded || local.values.contains(where: { $0.restartAt.map { now >= $0 } ?? false || !$0.waitingFor.isEmpty }) {
            out += reconcile(context)
        }
        out += reports(context)
        return out
    }

    // MARK: every node

    mutating func reconcile(_ context: ControllerContext) -> [ControllerEffect<ServiceAction>] {
        reconcileNeeded = false
        let table = context.state.services
        var desired: [(record: ServiceRecord, slot: UInt16)] = []
        for r in table.services.values.sorted(by: { $0.name < $1.name }) {
            for (slot, node) in r.assignments.sorted(by: { $0.key < $1.key }) where node == context.node { desired.append((r, slot)) }
        }
        let leaseValid = lease.valid(at: context.millis)
        let actions = ServiceReconciler.step(desired: desired, local: &local, now: context.millis, fenced: { spec in
            Self.singleton(spec) && !leaseValid ? "this node's singleton lease is not renewed (cut off from the leader?)" : nil
        }) { spec in
            let missing = spec.dependsOn.filter { dep in table.services[dep].map { $0.servingSlots.isEmpty } ?? true }
            return missing.isEmpty ? nil : "no serving instance of " + missing.joined(separator: ", ")
        }
        return actions.map { .act($0) }
    }

    mutating func reports(_ context: ControllerContext) -> [ControllerEffect<ServiceAction>] {
        let now = context.millis
        if let last = lastReport, now < last + settings.reportEveryMillis { return [] }
        let table = context.state.services
        var batch: [(name: String, slot: UInt16, InstanceReport)] = []
        for (_, i) in local.sorted(by: { $0.key < $1.key }) {
            guard let r = table.services[i.service], r.assignments[i.slot] == context.node, r.generation == i.generation else { continue }
            // A container answers on its own (pod) address; a process on its node's.
            let own = i.observed?.address ?? ""
            let report = ServiceReconciler.report(i, node: context.node, address: own.isEmpty ? settings.info.address : own, spec: r.spec)
            if r.instances[i.slot] != report { batch.append((i.service, i.slot, report)) }
            if batch.count >= 512 { break }
        }
        guard !batch.isEmpty else { return [] }
        lastReport = now
        return [.request(.service(.report(node: context.node, batch)))]
    }

    // MARK: the leader

    /// Leader: a singleton on a member that is down stays there until that member's lease (plus the
    /// slack) has ended in control time, which moves only as entries apply; with the member dead no
    /// renewal comes to move it. Once this leader's estimate says the lease has ended, a spore tick
    /// (stamped with its clock) brings control time there; its commit re-plans with that time.
    /// The plan itself still reads only the replicated control time, so the fence holds whatever
    /// this estimate says.
    mutating func nudgeControlTime(_ context: ControllerContext) -> [ControllerEffect<ServiceAction>] {
        let state = context.state
        if state.nowMillis != controlTimeSeen.time { controlTimeSeen = (state.nowMillis, context.millis) }
        var end: Int64?
        for r in state.services.services.values where Self.singleton(r.spec) {
            for node in r.assignments.values {
                guard let m = state.spore.members[node], m.status == .failed || m.status == .left,
                      state.services.mayStillRunSingletons(node, now: state.nowMillis),
                      let until = state.services.leaseUntilMillis[node] else { continue }
                let free = until.saturatingAdding(ServiceTable.takeoverSlackMillis)
                end = min(end ?? free, free)
            }
        }
        guard let end else { return [] }
        let since = context.millis >= controlTimeSeen.at ? context.millis - controlTimeSeen.at : 0
        let estimate = controlTimeSeen.time.saturatingAdding(Int64(clamping: since))
        guard estimate >= end, clockNudgedAt.map({ context.millis >= $0 + 500 }) ?? true else { return [] }
        clockNudgedAt = context.millis
        return [.submit(.tick)]
    }

    mutating func plan(_ context: ControllerContext) -> [ControllerEffect<ServiceAction>] {
        let now = context.millis
        if let last = lastPlan {
            if now < last + settings.planAtMostMillis { return [] }
            if !dirty && now < last + settings.planEveryMillis { return [] }
        }
        dirty = false
        lastPlan = now
        let state = context.state
        let records = state.services.services.values.sorted { $0.name < $1.name }
        // k3s services are Kubernetes's to place (the K3s server applies them as Deployments,
        // Sources/K3sController): never slots on nodes here, only a reason while they cannot run.
        let plan = Scheduler.plan(nodes: ServiceRules.nodes(state), services: records.filter { $0.spec.driver != .k3s }.map { ServiceRules.demand($0, volumes: state.volumes) },
                                  current: ServiceRules.current(state.services), seed: 0x6d79_6365_6c69_756d)
        var slots: [String: [UInt16: NodeID]] = [:]
        for a in plan.assignments { slots[a.service, default: [:]][UInt16(a.slot)] = a.node }
        var reasons: [String: String] = [:]
        for u in plan.unplaced {
            let notes = state.services.services[u.service].map { ServiceRules.driverNotes($0.spec, state: state) } ?? ""
            // Clipped as the table keeps it, so the next plan compares equal.
            reasons[u.service] = VMMigration.clipped("\(u.missing) of the replicas not placed: \(u.reason)" + notes, 400)
        }
        unplaced = reasons
        var out: [ControllerEffect<ServiceAction>] = []
        for r in records {
            let want = slots[r.name] ?? [:], pending = r.spec.driver == .k3s ? ServiceRules.k3sPending(state) : reasons[r.name] ?? ""
            if want == r.assignments && pending == r.pending { proposed[r.name] = nil; continue }
            if let p = proposed[r.name], p.generation == r.generation, p.slots == want, p.pending == pending, now < p.at + 3000 { continue }
            proposed[r.name] = (r.generation, want, pending, now)
            out.append(.propose(.service(.assign(name: r.name, generation: r.generation, want, pending: pending))))
        }
        for name in proposed.keys where state.services.services[name] == nil { proposed[name] = nil }
        return out
    }
}
