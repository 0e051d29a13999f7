// The VM controller's core (issue 16): what each node does about the VM table, as a pure value.
//
// Leader duties, once a second:
//  - a VM whose primary the network recorded failed (or revoked) fails over to its replica, once the
//    primary's ownership lease has lapsed in spore time (the table refuses it earlier anyway);
//  - a VM without a live replica gets one: the first candidate of `VMTable.candidates`.
// Every node, for the VMs it holds:
//  - as primary it keeps its ownership lease (`VMTable.lease(for:)`) renewed through Raft, and runs
//    the guest only while the lease is certainly valid: when its estimate of spore time comes within
//    `fenceMargin` of the lease's end it pauses the guest (self-fencing: a cut-off primary stops
//    before the replica may start), and resumes it once a renewal lands;
//  - as replica it holds the replicated image for the current epoch;
//  - a node that holds a copy of an older epoch, or of a VM no longer its own, destroys it (never
//    resumes it).
// The driver (libvirt + the replication engine) carries out the actions; nothing here touches them.
//
// Not yet hosted by the agent (no driver yet). Known gap, found by the simulation (patch kept for the
// next step): a primary restarted within its lease replays its own old renewal from its Raft log and
// takes it for a fresh one, so for a moment it may run a copy the network already failed over; the
// fix is to trust only renewals this run submitted and saw committed after it caught up.
//
// Clock assumption: spore time is the leader's wall clock, in whole seconds. A primary estimates it
// from the last spore time it saw plus its own ticks since, which lags the truth by at most the apply
// delay; the table lets the replica take over only `VMTable.takeoverSlack` seconds after the lease's
// end. Safe while leaders' clocks agree within takeoverSlack + fenceMargin − (apply delay), i.e. with
// NTP (milliseconds). Membership tolerates 10 s of skew; VM fencing needs this tighter bound.

import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumSpores

public enum VMAction: Sendable, Equatable {
    /// Run (start, or resume after fencing) the guest as its primary at this epoch.
    case run(VMRecord)
    /// Hold the replicated image of this VM at this epoch (receive its epochs).
    case hold(VMRecord)
    /// Pause the guest at once: this node can no longer prove it owns the VM.
    case fence(name: String, reason: String)
    /// Destroy this node's copy (stale epoch, or the VM moved or was deleted).
    case destroy(name: String, reason: String)
}

public struct VMSettings: Sendable, Equatable {
    /// Length of the ownership lease (spore seconds).
    public var leaseSeconds: UInt32 = 4
    /// The primary renews its lease this often (seconds).
    public var renewEverySeconds: UInt64 = 1
    /// The primary pauses its guest this long before its lease ends, by its own estimate.
    public var fenceMarginSeconds: Int64 = 1
    public init() {}
}

public struct VMController: Controller {
    public var name: String { "vm" }
    public let settings: VMSettings
    /// What this node was last asked to do per VM (the driver's view), with the epoch.
    public private(set) var local: [String: (role: Role, epoch: UInt64)] = [:]
    public enum Role: Sendable, Equatable { case primary, fenced, replica }
    var lastRenewal: UInt64?
    /// Each lease renewal of ours this controller saw applied: the lease's end, the tick it applied
    /// at, and the spore time it was stamped with. A node trusts a lease only from what it saw in this
    /// run: after a restart its spore time is stale, and its ticks say nothing of the time it was down.
    var leaseSeen: [String: (expiresAt: Int64, tick: UInt64, stamped: Int64)] = [:]
    var proposedAt: [String: UInt64] = [:]
    var sporeTimeSeen: (time: Int64, tick: UInt64) = (0, 0)

    public init(settings: VMSettings = VMSettings()) { self.settings = settings }

    public mutating func applied(_ change: ControlChange, context: ControllerContext) -> [ControllerEffect<VMAction>] {
        switch change {
        case .vm, .restored: return reconcileLocal(context)
        case .spore(let s):
            if case .acquireLease(let lease, _) = s.command {
                if s.author == context.node, let l = context.state.spore.leases[lease], l.holder == context.node {
                    leaseSeen[lease] = (l.expiresAt, context.tick, context.state.spore.now)
                }
                return reconcileLocal(context)
            }
            if case .setStatus = s.command, context.isLeader { return leaderDuties(context) }
            return []
        default: return []
        }
    }

    public mutating func tick(context: ControllerContext) -> [ControllerEffect<VMAction>] {
        if context.state.spore.now != sporeTimeSeen.time { sporeTimeSeen = (context.state.spore.now, context.tick) }
        var out = reconcileLocal(context)
        let tps = max(1, context.ticksPerSecond)
        if hasPrimary(context), lastRenewal.map({ context.tick >= $0 + settings.renewEverySeconds * tps }) ?? true {
            lastRenewal = context.tick
            for r in context.state.vms.vms.values.sorted(by: { $0.name < $1.name }) where r.primary == context.node {
                out.append(.submit(.acquireLease(name: VMTable.lease(for: r.name), ttlSeconds: settings.leaseSeconds)))
            }
        }
        if context.isLeader && context.tick % tps == 0 { out += leaderDuties(context) }
        return out
    }

    func hasPrimary(_ context: ControllerContext) -> Bool {
        context.state.vms.vms.values.contains { $0.primary == context.node }
    }

    /// Spore time now, as this node can tell: the last spore time seen plus its own ticks since.
    func estimatedNow(_ context: ControllerContext) -> Int64 {
        let t = max(context.state.spore.now, sporeTimeSeen.time)
        let since = context.tick >= sporeTimeSeen.tick ? context.tick - sporeTimeSeen.tick : 0
        return t + Int64(since / max(1, context.ticksPerSecond))
    }

    /// Whether this node's lease on `name` is certainly valid now: a renewal this run saw applied,
    /// still the spore's, and less of its length gone (by this node's own ticks since it applied) than
    /// the lease had left when stamped, minus the fence margin.
    func holdsLease(_ name: String, _ context: ControllerContext) -> Bool {
        let lease = VMTable.lease(for: name)
        guard let l = context.state.spore.leases[lease], l.holder == context.node,
              let seen = leaseSeen[lease], seen.expiresAt == l.expiresAt else { return false }
        let left = seen.expiresAt - seen.stamped - settings.fenceMarginSeconds
        guard left > 0, context.tick >= seen.tick else { return false }
        return context.tick - seen.tick < UInt64(left) * max(1, context.ticksPerSecond)
    }

    /// Brings this node's copies in line with the table and its lease.
    mutating func reconcileLocal(_ context: ControllerContext) -> [ControllerEffect<VMAction>] {
        var out: [ControllerEffect<VMAction>] = []
        let table = context.state.vms.vms
        for (name, mine) in local.sorted(by: { $0.key < $1.key }) {
            guard let r = table[name] else {
                out.append(.act(.destroy(name: name, reason: "the VM was deleted")))
                local[name] = nil
                continue
            }
            if r.epoch > mine.epoch && r.primary != context.node && r.replica != context.node {
                out.append(.act(.destroy(name: name, reason: "ownership moved to \(r.primary) at epoch \(r.epoch); this copy (epoch \(mine.epoch)) is stale")))
                local[name] = nil
            }
        }
        for r in table.values.sorted(by: { $0.name < $1.name }) {
            if r.primary == context.node {
                let valid = holdsLease(r.name, context)
                let current = local[r.name]
                if valid && (current?.role != .primary || current?.epoch != r.epoch) {
                    local[r.name] = (.primary, r.epoch)
                    out.append(.act(.run(r)))
                    out.append(.note("running VM \(r.name) as its primary (epoch \(r.epoch))"))
                } else if !valid && current?.role == .primary {
                    local[r.name] = (.fenced, r.epoch)
                    out.append(.act(.fence(name: r.name, reason: "its ownership lease cannot be proven valid (no renewal landed)")))
                    out.append(.note("fenced VM \(r.name): lease not renewed; paused until it is"))
                }
            } else if r.replica == context.node {
                if local[r.name]?.role != .replica || local[r.name]?.epoch != r.epoch {
                    if local[r.name]?.role == .primary || local[r.name]?.role == .fenced {
                        out.append(.act(.fence(name: r.name, reason: "this node is the replica now (epoch \(r.epoch))")))
                    }
                    local[r.name] = (.replica, r.epoch)
                    out.append(.act(.hold(r)))
                }
            }
        }
        return out
    }

    /// Leader: fail over VMs of failed primaries; give unprotected VMs a replica.
    mutating func leaderDuties(_ context: ControllerContext) -> [ControllerEffect<VMAction>] {
        let spore = context.state.spore, table = context.state.vms
        var out: [ControllerEffect<VMAction>] = []
        func gone(_ n: MyceliumIdentity.NodeID) -> Bool {
            guard let m = spore.members[n] else { return true }
            return m.status == .failed || m.status == .left || spore.revoked[n] != nil
        }
        func recently(_ key: String) -> Bool {
            if let at = proposedAt[key], context.tick < at + 2 * max(1, context.ticksPerSecond) { return true }
            proposedAt[key] = context.tick
            return false
        }
        for r in table.vms.values.sorted(by: { $0.name < $1.name }) {
            if gone(r.primary) {
                guard let replica = r.replica, !gone(replica) else {
                    out.append(.note("VM \(r.name) lost its primary \(r.primary) and has no live replica: it is down until the primary returns"))
                    continue
                }
                let lapsed = estimatedNow(context) >= r.leaseUntil.saturatingAdding(VMTable.takeoverSlack)
                if lapsed && !recently("failover \(r.name) \(r.epoch)") {
                    out.append(.propose(.vm(.failover(name: r.name, to: replica, epoch: r.epoch))))
                    out.append(.note("failing VM \(r.name) over from \(r.primary) to \(replica) (epoch \(r.epoch) → \(r.epoch + 1))"))
                }
            } else if r.replica.map(gone) ?? true {
                if let pick = table.candidates(for: r.spec, spore: spore, excluding: [r.primary]).first,
                   !recently("replica \(r.name) \(r.epoch)") {
                    out.append(.propose(.vm(.setReplica(name: r.name, pick, epoch: r.epoch))))
                }
            }
        }
        return out
    }
}
