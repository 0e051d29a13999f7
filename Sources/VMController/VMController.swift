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
// A restarted primary re-applies its own old renewals from the Raft log. Taken for fresh ones, they
// would let it run, for a moment, a copy the network already failed over (found by the simulation).
// So every renewal carries a nonce from this run (`renewLease`: a token the node draws at each start
// plus a count), and a lease counts only from a renewal this run sent. It counts from when it was
// sent, not when it applied: the leader stamps it no earlier than that (to the second), so a node
// that applies it late (catching up) still stops before the lease ends.
//
// Clock assumption: spore time is the leader's wall clock in whole seconds, stamped on each entry when
// it is proposed. A renewal sent at real time t is stamped no earlier than ⌊t⌋, so its lease ends no
// earlier than t − 1 + L; the primary stops at t + L − fenceMargin by its own ticks; the leader lets
// the replica take over only once its clock reads the lease's end + `VMTable.takeoverSlack`, i.e. at
// t + L or later. With margin and slack at 1 s the two copies are apart by at least
// 1 s − (leader clock error) − (tick drift over L) − (time to pause the guest): safe with NTP
// (milliseconds). Membership tolerates 10 s of skew; VM fencing needs this tighter bound.

import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumSpores

public enum VMAction: Sendable, Equatable {
    /// Run (start, resume after fencing, or take over from the replicated image) the guest as its
    /// primary at this epoch, replicating to the record's replica; again when the replica changes.
    case run(VMRecord)
    /// Hold the replicated image of this VM at this epoch (receive its epochs).
    case hold(VMRecord)
    /// This node's guest of `name` may run `seconds` more from now, unless a later keepAlive extends
    /// it: what the lease allows, minus the fence margin. The driver hands it to a watchdog that
    /// outlives the agent, so a guest whose agent died is paused in time too. Comes before the `run`
    /// it covers.
    case keepAlive(name: String, seconds: Double)
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
    /// This run's token; renewals carry `run + n`. A renewal whose nonce this run did not send is an
    /// old run's (or someone's replay).
    public let run: UInt64
    var renewalsSent = 0
    /// Renewals sent and not yet applied: nonce → the tick it was sent at.
    var pendingRenewals: [UInt64: UInt64] = [:]
    /// What this node was last asked to do per VM (the driver's view), with the epoch.
    public private(set) var local: [String: (role: Role, epoch: UInt64, replica: MyceliumIdentity.NodeID?)] = [:]
    public enum Role: Sendable, Equatable { case primary, fenced, replica }
    var lastRenewal: UInt64?
    /// Per lease, the last tick (of this run) before which it is certainly ours: the latest applied
    /// renewal this run sent, from its send tick plus its length minus the fence margin. A node trusts
    /// only what it sent in this run: after a restart its spore time is stale, and its ticks say nothing
    /// of the time it was down.
    var leaseTrusted: [String: UInt64] = [:]
    /// The trusted-until tick last told to the driver per VM (a keepAlive per renewal, not per tick).
    var toldUntil: [String: UInt64] = [:]
    var proposedAt: [String: UInt64] = [:]
    var sporeTimeSeen: (time: Int64, tick: UInt64) = (0, 0)

    /// `run` must differ between starts of the same node (the agent draws it at random at each start).
    public init(settings: VMSettings = VMSettings(), run: UInt64) {
        self.settings = settings
        self.run = run
    }

    public mutating func applied(_ change: ControlChange, context: ControllerContext) -> [ControllerEffect<VMAction>] {
        switch change {
        case .vm, .restored: return reconcileLocal(context)
        case .spore(let s):
            if case .renewLease(let lease, let ttl, let nonce) = s.command {
                if s.author == context.node, let sent = pendingRenewals.removeValue(forKey: nonce),
                   context.state.spore.leases[lease]?.holder == context.node {
                    let left = Int64(ttl) - settings.fenceMarginSeconds
                    let until = left > 0 ? sent + UInt64(left) * max(1, context.ticksPerSecond) : 0
                    leaseTrusted[lease] = max(leaseTrusted[lease] ?? 0, until)
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
            // Renewals older than a lease can no longer make one valid; forget them (lost submissions).
            let horizon = UInt64(settings.leaseSeconds) * tps
            pendingRenewals = pendingRenewals.filter { context.tick < $0.value + horizon }
            for r in context.state.vms.vms.values.sorted(by: { $0.name < $1.name }) where r.primary == context.node {
                renewalsSent += 1
                let nonce = run &+ UInt64(renewalsSent)
                pendingRenewals[nonce] = context.tick
                out.append(.submit(.renewLease(name: VMTable.lease(for: r.name), ttlSeconds: settings.leaseSeconds, run: nonce)))
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

    /// Whether this node's lease on `name` is certainly valid now: the spore names it the holder and a
    /// renewal this run sent, applied, still has more than the fence margin left by this node's ticks.
    func holdsLease(_ name: String, _ context: ControllerContext) -> Bool {
        let lease = VMTable.lease(for: name)
        guard context.state.spore.leases[lease]?.holder == context.node, let until = leaseTrusted[lease] else { return false }
        return context.tick < until
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
                if valid, let until = leaseTrusted[VMTable.lease(for: r.name)], toldUntil[r.name] != until {
                    toldUntil[r.name] = until
                    let left = Double(until - context.tick) / Double(max(1, context.ticksPerSecond))
                    out.append(.act(.keepAlive(name: r.name, seconds: left)))
                }
                // Run again when the replica changed too: the driver then replicates to the new one.
                if valid && (current?.role != .primary || current?.epoch != r.epoch || current?.replica != r.replica) {
                    local[r.name] = (.primary, r.epoch, r.replica)
                    out.append(.act(.run(r)))
                    out.append(.note("running VM \(r.name) as its primary (epoch \(r.epoch))"))
                } else if !valid && current?.role == .primary {
                    local[r.name] = (.fenced, r.epoch, r.replica)
                    out.append(.act(.fence(name: r.name, reason: "its ownership lease cannot be proven valid (no renewal landed)")))
                    out.append(.note("fenced VM \(r.name): lease not renewed; paused until it is"))
                }
            } else if r.replica == context.node {
                if local[r.name]?.role != .replica || local[r.name]?.epoch != r.epoch {
                    if local[r.name]?.role == .primary || local[r.name]?.role == .fenced {
                        out.append(.act(.fence(name: r.name, reason: "this node is the replica now (epoch \(r.epoch))")))
                    }
                    local[r.name] = (.replica, r.epoch, r.replica)
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
        func recently(_ key: String, seconds: UInt64 = 2) -> Bool {
            if let at = proposedAt[key], context.tick < at + seconds * max(1, context.ticksPerSecond) { return true }
            proposedAt[key] = context.tick
            return false
        }
        for r in table.vms.values.sorted(by: { $0.name < $1.name }) {
            if gone(r.primary) {
                guard let replica = r.replica, !gone(replica) else {
                    if !recently("down \(r.name) \(r.epoch)", seconds: 30) { out.append(.note("VM \(r.name) lost its primary \(r.primary) and has no live replica: it is down until the primary returns")) }
                    continue
                }
                // A suspect replica may be dead too (not yet confirmed): moving the VM there could
                // leave it on a dead host. Wait until it is alive again or recorded failed.
                guard spore.members[replica]?.status == .alive else {
                    if !recently("suspect replica \(r.name) \(r.epoch)", seconds: 30) {
                        out.append(.note("VM \(r.name) lost its primary \(r.primary); its replica \(replica) is suspect: failing over once it answers"))
                    }
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
