// The volume controller's core (issue 18), a pure value hosted by the agent like the service and VM
// controllers (MyceliumControl/Controller.swift).
//
// Leader duties (only the leader proposes):
//   - placement: from the members' trust and status, which CRUSH host qualifies for which data class;
//     when that differs from the last decision, or the last decision's executor is gone before
//     carrying it out, propose a new decision (`VolumeCommand.placement`). One decision covers every
//     host, so a burst of trust changes becomes one batch of CRUSH moves, not one per change.
//   - tasks: a volume task whose executor is no longer a live member goes to another node that can
//     carry it out (`retask`).
// Every node: tell the network its storage facts until the table holds them; carry out each task and
// placement decision the table gives it, once per id (the driver's steps are idempotent, so one
// carried out again after a restart changes nothing twice); report the outcome through the leader,
// again if it did not apply.

import MyceliumControl
import MyceliumIdentity
import MyceliumSpores

public struct VolumeSettings: Sendable, Equatable {
    /// What this node tells the network about its storage.
    public var info: StorageNodeInfo
    public var classes: [DataClass]
    /// A report or fact not applied after this long is sent again (ms).
    public var resendMillis: UInt64 = 2000
    /// The leader proposes a placement or a retask at most this often (ms).
    public var proposeAtMostMillis: UInt64 = 1000
    /// A placement decision that failed is decided again (and retried) after this long (ms).
    public var retryPlacementMillis: UInt64 = 10_000
    public init(info: StorageNodeInfo, classes: [DataClass] = DataClass.defaults) { self.info = info; self.classes = classes }
}

/// What the driver is to do.
public enum VolumeAction: Sendable, Equatable {
    /// Carry out `record`'s task (`record.task` is set).
    case perform(VolumeRecord)
    /// Move the CRUSH hosts as placement decision `id` says: `hosts` carries, for each host, a trust
    /// that qualifies it for exactly the decided classes (so the planner reproduces the decision).
    case place(id: UInt64, hosts: [StorageHost])
}

/// What the driver tells its controller.
public enum VolumeReport: Sendable, Equatable {
    case taskDone(name: String, task: UInt64, ok: Bool, message: String)
    case placementDone(id: UInt64, ok: Bool, message: String)
}

public struct VolumeController: Controller {
    public typealias Action = VolumeAction
    public typealias Report = VolumeReport
    public var name: String { "volume" }
    public let settings: VolumeSettings
    /// Tasks handed to the driver (id → when), and outcomes waiting to apply (id → report, when sent).
    var started: [UInt64: UInt64] = [:]
    var outcomes: [UInt64: (report: VolumeReport, sent: UInt64)] = [:]
    var placementStarted: UInt64?
    var placementOutcome: (report: VolumeReport, sent: UInt64)?
    var lastInfo: UInt64?
    var lastProposal: UInt64?
    var lastPlacement: UInt64?

    public init(settings: VolumeSettings) { self.settings = settings }

    public mutating func applied(_ change: ControlChange, context: ControllerContext) -> [ControllerEffect<VolumeAction>] {
        switch change {
        case .volume, .storageNode, .storagePlacement, .restored, .spore: return work(context)
        default: return []
        }
    }

    public mutating func tick(context: ControllerContext) -> [ControllerEffect<VolumeAction>] {
        var out: [ControllerEffect<VolumeAction>] = []
        let table = context.state.volumes
        if context.state.spore.members[context.node] != nil, table.nodes[context.node] != settings.info,
           lastInfo.map({ context.millis >= $0 + settings.resendMillis }) ?? true {
            lastInfo = context.millis
            out.append(.request(.volume(.storageNode(node: context.node, settings.info))))
        }
        // Outcomes that did not apply (a leader change lost them) go again.
        for (id, o) in outcomes.sorted(by: { $0.key < $1.key }) where context.millis >= o.sent + settings.resendMillis {
            outcomes[id]?.sent = context.millis
            out.append(.request(.volume(Self.command(o.report, node: context.node))))
        }
        if let o = placementOutcome, context.millis >= o.sent + settings.resendMillis {
            placementOutcome?.sent = context.millis
            out.append(.request(.volume(Self.command(o.report, node: context.node))))
        }
        return out + work(context)
    }

    public mutating func reported(_ report: VolumeReport, context: ControllerContext) -> [ControllerEffect<VolumeAction>] {
        switch report {
        case let .taskDone(_, task, _, _): outcomes[task] = (report, context.millis)
        case .placementDone: placementOutcome = (report, context.millis)
        }
        return [.request(.volume(Self.command(report, node: context.node)))]
    }

    static func command(_ r: VolumeReport, node: NodeID) -> VolumeCommand {
        switch r {
        case let .taskDone(name, task, ok, message): .taskDone(name: name, task: task, node: node, ok: ok, message: message)
        case let .placementDone(id, ok, message): .placementDone(id: id, node: node, ok: ok, message: message)
        }
    }

    /// What the table asks of this node now, and (on the leader) what it must decide.
    mutating func work(_ context: ControllerContext) -> [ControllerEffect<VolumeAction>] {
        let table = context.state.volumes
        var out: [ControllerEffect<VolumeAction>] = []
        // Forget what the table no longer holds as pending.
        let pending = Set(table.volumes.values.compactMap { $0.task?.id })
        started = started.filter { pending.contains($0.key) }
        outcomes = outcomes.filter { pending.contains($0.key) }
        for r in table.volumes.values.sorted(by: { $0.name < $1.name }) {
            guard let t = r.task, t.executor == context.node, started[t.id] == nil else { continue }
            started[t.id] = context.millis
            out.append(.note("volume \(r.name): \(t.operation) (task \(t.id)) is this node's to carry out"))
            out.append(.act(.perform(r)))
        }
        if let p = table.placement {
            if let o = placementOutcome, case let .placementDone(id, ok, message) = o.report,
               id != p.id || (ok && p.doneID == id) || (!ok && p.message == VMMigration.clipped(message, VolumeRecord.maxMessage)) {
                placementOutcome = nil  // applied (or superseded)
            }
            if p.executor == context.node, p.doneID != p.id, placementStarted != p.id {
                placementStarted = p.id
                out.append(.note("storage placement \(p.id): moving CRUSH hosts (\(Self.describe(p.hosts)))"))
                out.append(.act(.place(id: p.id, hosts: hosts(for: p, table))))
            }
        }
        if context.isLeader, lastProposal.map({ context.millis >= $0 + settings.proposeAtMostMillis }) ?? true {
            if let e = leaderDuty(context) {
                lastProposal = context.millis
                out.append(e)
            }
        }
        return out
    }

    /// The StorageHosts that make the planner carry out `p` exactly.
    func hosts(for p: StoragePlacement, _ table: VolumeTable) -> [StorageHost] {
        let owner = Dictionary(table.nodes.compactMap { $0.value.cephHost.isEmpty ? nil : ($0.value.cephHost, $0.key) }, uniquingKeysWith: { a, _ in a })
        return p.hosts.keys.sorted().compactMap { h in
            guard let node = owner[h] else { return nil }
            let classes = Set(p.hosts[h] ?? [])
            let trust = settings.classes.filter { classes.contains($0.name) }.map(\.minTrust).max() ?? 0
            return StorageHost(crushName: h, node: node, trust: trust, health: .ready)
        }
    }

    static func describe(_ hosts: [String: [String]]) -> String {
        hosts.keys.sorted().map { "\($0): \(hosts[$0]!.isEmpty ? "none" : hosts[$0]!.joined(separator: ","))" }.joined(separator: "; ")
    }

    /// The classes each storage host qualifies for now, from its member's trust and status.
    public static func desiredPlacement(_ state: ControlState, classes: [DataClass]) -> [String: [String]] {
        var out: [String: [String]] = [:]
        for (node, info) in state.volumes.nodes where !info.cephHost.isEmpty {
            guard let m = state.spore.members[node], m.status == .alive || m.status == .suspect,
                  !state.spore.trust.isJailed(node) else {
                out[info.cephHost] = []
                continue
            }
            let trust = state.spore.trust.score(of: node)
            out[info.cephHost] = classes.filter { trust >= $0.minTrust }.map(\.name).sorted()
        }
        return out
    }

    /// The node that carries out Ceph work: the leader when it can, else the lowest live node that can.
    public static func cephExecutor(_ state: ControlState, leader: NodeID) -> NodeID? {
        let table = state.volumes
        if table.nodes[leader]?.ceph == true, VolumeTable.live(leader, state.spore) { return leader }
        return table.nodes.filter { $0.value.ceph && VolumeTable.live($0.key, state.spore) }.keys.sorted().first
    }

    mutating func leaderDuty(_ context: ControllerContext) -> ControllerEffect<VolumeAction>? {
        let state = context.state, table = state.volumes
        // A task whose executor is gone goes to another node.
        for r in table.volumes.values.sorted(by: { $0.name < $1.name }) {
            guard let t = r.task, !VolumeTable.live(t.executor, state.spore) else { continue }
            let to: NodeID? = r.spec.driver == .local ? nil : Self.cephExecutor(state, leader: context.node)
            if let to, to != t.executor { return .propose(.volume(.retask(name: r.name, task: t.id, executor: to))) }
        }
        let desired = Self.desiredPlacement(state, classes: settings.classes)
        if desired.isEmpty { return nil }
        guard let executor = Self.cephExecutor(state, leader: context.node) else { return nil }
        if let p = table.placement, p.hosts == desired {
            if p.doneID == p.id { return nil }
            // Not carried out yet: wait for a live executor; decide again (so it is retried) only
            // after it failed, and not more often than `retryPlacementMillis`.
            if VolumeTable.live(p.executor, state.spore) {
                if p.message.isEmpty { return nil }
                if let last = lastPlacement, context.millis < last + settings.retryPlacementMillis { return nil }
            }
        }
        lastPlacement = context.millis
        return .propose(.volume(.placement(hosts: desired, executor: executor)))
    }
}
