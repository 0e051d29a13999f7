// One node's reconciler: a pure function of (what the table assigns this node, what its driver
// reports, what it asked before, the time) → driver actions and instance reports. Like a kubelet's
// sync loop, without the I/O: the driver starts and stops, this decides.
//
// Per instance (a slot of a service assigned here):
//  - not started, or started at an older generation → start it (the driver replaces an older
//    copy), unless a service it depends on has no serving instance yet ("pending");
//  - ended (exited, killed, failed to start) or running but unhealthy → restart per the policy
//    (always; on-failure unless it exited 0; never), after a delay that doubles with each
//    consecutive failure up to 30 s, at most `maxRestarts` times (0: no limit), then left failed;
//  - started here but no longer assigned here → stop it;
//  - a singleton (one replica) runs only while this node's lease is valid (NodeLease): fenced, it
//    is stopped and waits.

import MyceliumControl
import MyceliumIdentity

/// What the driver last said of an instance.
public enum ObservedState: Sendable, Equatable {
    case starting, running
    case exited(code: Int32)
    case killed(signal: Int32)
    /// It could not be started (command not found, image missing, cgroup refused).
    case failed(String)
}

/// A driver's report on one instance (of the generation it was started at).
public struct ServiceDriverReport: Sendable, Equatable {
    public var id: String
    public var generation: UInt64
    public var state: ObservedState
    public var health: InstanceReport.Health
    /// Why it is unhealthy, or what went wrong ("" otherwise).
    public var message: String
    /// Where the instance answers when it has an address of its own (a container's pod IP); "" means
    /// its node's address.
    public var address: String
    public init(id: String, generation: UInt64, state: ObservedState, health: InstanceReport.Health = .unknown, message: String = "",
                address: String = "") {
        self.id = id; self.generation = generation; self.state = state; self.health = health; self.message = message
        self.address = address
    }
}

/// What the driver runs for one instance.
public struct InstancePlan: Sendable, Equatable {
    public var id: String
    public var slot: UInt16
    public var generation: UInt64
    public var spec: ServiceSpec
    public init(id: String, slot: UInt16, generation: UInt64, spec: ServiceSpec) {
        self.id = id; self.slot = slot; self.generation = generation; self.spec = spec
    }
}

public enum ServiceAction: Sendable, Equatable {
    /// Run this instance (replacing a copy of another generation, or one that ended).
    case start(InstancePlan)
    /// Stop every process of this instance.
    case stop(id: String, reason: String)
}

/// The reconciler's memory of one instance.
public struct LocalInstance: Sendable, Equatable {
    public var service: String
    public var slot: UInt16
    /// The generation last started (or waiting to start).
    public var generation: UInt64
    public var started: Bool
    public var restarts: UInt32 = 0
    /// Failures since it last ran healthy: the restart delay doubles with each.
    public var consecutive: UInt32 = 0
    /// When the pending restart is due (`ControllerContext.millis`).
    public var restartAt: UInt64?
    public var gaveUp = false
    /// What it waits for before it may start ("" when nothing).
    public var waitingFor = ""
    /// The last driver report of this generation.
    public var observed: ServiceDriverReport?
}

public enum ServiceReconciler {
    public static func instanceID(_ service: String, _ slot: UInt16) -> String { "\(service)-\(slot)" }

    public static let maxDelayMillis: UInt64 = 30_000

    /// The delay before restart number `consecutive + 1`.
    public static func delay(_ spec: ServiceSpec, consecutive: UInt32) -> UInt64 {
        let base = UInt64(max(1, spec.restartDelayMillis))
        return min(maxDelayMillis, base << UInt64(min(consecutive, 15)))
    }

    /// Whether an instance that ended this way (or runs unhealthy) is restarted under `policy`.
    public static func restarts(_ policy: RestartPolicy, after state: ObservedState, unhealthy: Bool) -> Bool {
        switch policy {
        case .never: return false
        case .always: return true
        case .onFailure:
            if unhealthy { return true }
            if case .exited(let code) = state { return code != 0 }
            return true
        }
    }

    /// One step. `desired`: the slots of each service assigned to this node now. `dependencyProblem`:
    /// why a spec's dependencies are not ready (nil: ready).
    /// `fenced`: why an instance of this spec must not run here now (a singleton without a valid
    /// node lease), or nil; a fenced instance is stopped and waits.
    public static func step(desired: [(record: ServiceRecord, slot: UInt16)], local: inout [String: LocalInstance], now: UInt64,
                            fenced: (ServiceSpec) -> String? = { _ in nil },
                            dependencyProblem: (ServiceSpec) -> String?) -> [ServiceAction] {
        var actions: [ServiceAction] = []
        var wanted = Set<String>()
        for (record, slot) in desired {
            let id = instanceID(record.name, slot)
            wanted.insert(id)
            let spec = record.spec
            func start(_ i: inout LocalInstance) {
                i.started = true; i.restartAt = nil; i.waitingFor = ""; i.observed = nil
                actions.append(.start(InstancePlan(id: id, slot: slot, generation: record.generation, spec: spec)))
            }
            var i = local[id] ?? LocalInstance(service: record.name, slot: slot, generation: record.generation, started: false)
            if i.generation != record.generation {
                i = LocalInstance(service: record.name, slot: slot, generation: record.generation, started: false)
            }
            if let why = fenced(spec) {
                if i.started { actions.append(.stop(id: id, reason: why)) }
                i.started = false; i.observed = nil; i.restartAt = nil; i.waitingFor = why
                local[id] = i
                continue
            }
            if !i.started {
                if let why = dependencyProblem(spec) { i.waitingFor = why } else { start(&i) }
                local[id] = i
                continue
            }
            guard let o = i.observed, !i.gaveUp else { local[id] = i; continue }
            let unhealthy = o.state == .running && o.health == .unhealthy
            let ended: Bool
            switch o.state {
            case .starting, .running: ended = false
            case .exited, .killed, .failed: ended = true
            }
            if o.state == .running && o.health != .unhealthy && (o.health == .healthy || spec.health == nil) { i.consecutive = 0 }
            if ended || unhealthy {
                if !restarts(spec.restart, after: o.state, unhealthy: unhealthy) {
                    if unhealthy { local[id] = i; continue }  // left running, reported unhealthy
                    i.gaveUp = true
                } else if spec.maxRestarts != 0 && i.restarts >= spec.maxRestarts {
                    i.gaveUp = true
                } else if let at = i.restartAt {
                    if now >= at { i.restarts += 1; i.consecutive += 1; start(&i) }
                } else {
                    i.restartAt = now + delay(spec, consecutive: i.consecutive)
                }
            }
            local[id] = i
        }
        for (id, i) in local.sorted(by: { $0.key < $1.key }) where !wanted.contains(id) {
            if i.started { actions.append(.stop(id: id, reason: "no longer assigned to this node")) }
            local[id] = nil
        }
        return actions
    }

    /// What this node reports of an instance.
    public static func report(_ i: LocalInstance, node: NodeID, address: String, spec: ServiceSpec) -> InstanceReport {
        func make(_ s: InstanceReport.State, _ h: InstanceReport.Health = .unknown, _ m: String = "") -> InstanceReport {
            InstanceReport(node: node, generation: i.generation, state: s, health: h, restarts: i.restarts, address: address, message: m)
        }
        if !i.started { return make(.pending, .unknown, i.waitingFor.isEmpty ? "" : "waiting: " + i.waitingFor) }
        guard let o = i.observed else { return make(.starting) }
        let ended: String?
        switch o.state {
        case .starting: return make(.starting, o.health)
        case .running: return make(.running, spec.health == nil ? .healthy : o.health, o.health == .unhealthy ? o.message : "")
        case .exited(let code): ended = "exited with code \(code)"
        case .killed(let signal): ended = "killed by signal \(signal)" + (signal == 9 && spec.memoryMiB > 0 ? " (out of memory? limit \(spec.memoryMiB) MiB)" : "")
        case .failed(let why): ended = why
        }
        let byPolicy = !restarts(spec.restart, after: o.state, unhealthy: false)
        let text = (ended ?? "") + (byPolicy ? " (restart policy \(spec.restart))" : i.gaveUp ? "; gave up after \(i.restarts) restarts" : "; restarting")
        if i.gaveUp || byPolicy {
            if case .exited(0) = o.state { return make(.exited, .unknown, text) }
            return make(.failed, .unhealthy, text)
        }
        return make(.exited, .unknown, text)
    }
}
