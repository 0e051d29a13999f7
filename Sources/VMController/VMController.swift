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
// Planned migration (VMs.swift has the table's side). When the record names a pending migration to
// the replica and this node runs the guest with a valid lease, it asks its driver to hand the guest
// over (`handOver`): converge while the guest runs, pause it at an epoch the target committed, then
// report `readyToSwitch` and wait, paused. The controller then submits the switch, signed by this
// node (`SporeCommand.vmSwitch`). If the switch applies, the target renews a lease of its own (at
// once: a new primary does not wait for the next renewal round) and takes over as in a failover; this
// node becomes the replica and its paused copy is dropped (`handOverDecided(switched: true)`, then
// `hold`). If an abort applies first (the leader's deadline, or the driver's failure), the guest
// resumes here (`handOverDecided(switched: false, resume:)`, only while the lease is valid). Which of
// the two entries Raft orders first decides; no copy runs before its entry applied.
//
// A restarted primary re-applies its own old renewals from the Raft log. Taken for fresh ones, they
// would let it run, for a moment, a copy the network already failed over (found by the simulation).
// So every renewal carries a nonce from this run (`renewLease`: a token the node draws at each start
// plus a count), and a lease counts only from a renewal this run sent. It counts from when it was
// sent, not when it applied: the leader stamps it no earlier than that, so a node that applies it
// late (catching up) still stops before the lease ends.
//
// Clock assumption: control time (`ControlState.nowMillis`) is the proposing leader's wall clock in
// milliseconds, stamped on each spore entry. A renewal sent at real time t is proposed after t, so
// it is stamped no earlier than t − ε (ε: that leader's clock error) and its lease ends no earlier
// than t − ε + L. The primary stops at t + L − M (M = `fenceMarginMillis`), counted on the agent's
// monotonic clock (`ControllerContext.millis`, not its ticks, which lag under load) and enforced by
// the driver's watchdog even if the agent dies. The table lets the replica take over only once
// control time reads the lease's end + S (S = `VMTable.takeoverSlackMillis`), i.e. at real time
// t + L + S − ε' or later. The two copies are apart by at least M + S − ε − ε' − (time to pause the
// guest) − (monotonic clock rate error over L): with M = S = 500 ms, about 1 s minus the clock
// errors, safe with NTP (milliseconds). Membership tolerates 10 s of skew; VM fencing needs this
// tighter bound.
//
// Failover time, host killed at k: the replica may start at the latest renewal's stamp + L + S, at
// most k + L + S (the renewal just before the kill) and at least k + L + S − renew period: 2.0–2.5 s
// with the defaults, in parallel with the failure's detection and the vote.

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
    /// Hand the guest over to the record's migration target (its replica): converge while it runs,
    /// pause it at an epoch the target committed, report `readyToSwitch`, and wait for the decision.
    case handOver(VMRecord)
    /// The planned switch applied (`switched`: the guest stays paused here, the target runs it), or
    /// the migration was aborted: the guest resumes here if `resume` (the lease allows it), else it
    /// stays paused until a later `run`.
    case handOverDecided(name: String, switched: Bool, resume: Bool)
}

/// What the VM driver tells its controller.
public enum VMDriverReport: Sendable, Equatable {
    /// The guest is paused at ownership epoch `epoch` and the target committed its last state: the
    /// switch may be made.
    case readyToSwitch(name: String, epoch: UInt64)
    /// The hand-over failed before the guest was paused for good (the guest runs on here).
    case handOverFailed(name: String, epoch: UInt64, reason: String)
    /// A `run` or `hold` of the VM at `epoch` failed here (libvirt did not answer, a takeover could
    /// not start the standby): the controller asks again later, so a VM does not stay down for want
    /// of a second attempt.
    case actionFailed(name: String, epoch: UInt64, reason: String)
}

public struct VMSettings: Sendable, Equatable {
    /// Length of the ownership lease (whole seconds, the spore's lease unit; the VM table counts its
    /// end to the millisecond of control time).
    public var leaseSeconds: UInt32 = 2
    /// The primary renews its lease this often (ms): a renewal may take L − M − this long to
    /// commit before the guest is paused.
    public var renewEveryMillis: UInt64 = 500
    /// The primary pauses its guest this long before its lease ends, by its own monotonic clock (ms).
    public var fenceMarginMillis: Int64 = 500
    /// The leader aborts a planned migration that has not switched after this long (spore seconds).
    public var migrationTimeoutSeconds: Int64 = 60
    public init() {}
}

public struct VMController: Controller {
    public typealias Report = VMDriverReport
    public var name: String { "vm" }
    public let settings: VMSettings
    /// This run's token; renewals carry `run + n`. A renewal whose nonce this run did not send is an
    /// old run's (or someone's replay).
    public let run: UInt64
    var renewalsSent = 0
    /// Renewals sent and not yet applied: nonce → when it was sent (`ControllerContext.millis`) and the lease.
    var pendingRenewals: [UInt64: (sent: UInt64, lease: String)] = [:]
    /// What this node was last asked to do per VM (the driver's view), with the epoch.
    public private(set) var local: [String: (role: Role, epoch: UInt64, replica: MyceliumIdentity.NodeID?)] = [:]
    public enum Role: Sendable, Equatable { case primary, fenced, replica, handingOver }
    /// When the last renewal round was sent (`ControllerContext.millis`).
    var lastRenewal: UInt64?
    /// Per lease, the moment (`ControllerContext.millis` of this run) before which it is certainly
    /// ours: the latest applied renewal this run sent, from its send time plus its length minus the
    /// fence margin. A node trusts only what it sent in this run: after a restart its control time is
    /// stale, and its clock says nothing of the time it was down.
    var leaseTrusted: [String: UInt64] = [:]
    /// The trusted-until moment last told to the driver per VM (a keepAlive per renewal, not per tick).
    var toldUntil: [String: UInt64] = [:]
    var proposedAt: [String: UInt64] = [:]
    /// Planned migrations this node tried to hand over (name, epoch, request time): one attempt each.
    var handOversTried: Set<String> = []
    /// VMs paused here for a switch: the tick the switch was last submitted (resent until decided).
    var switchSentAt: [String: UInt64] = [:]
    /// VMs whose last run/hold failed here: not asked again before this tick.
    var retryAt: [String: UInt64] = [:]
    /// Seconds between attempts after a failed run or hold.
    public static let retrySeconds: UInt64 = 5
    /// The last control time seen, and when (`ControllerContext.millis`).
    var controlTimeSeen: (time: Int64, at: UInt64) = (0, 0)

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
                if s.author == context.node, let (sent, forLease) = pendingRenewals.removeValue(forKey: nonce), forLease == lease,
                   context.state.spore.leases[lease]?.holder == context.node {
                    let left = Int64(ttl) * 1000 - settings.fenceMarginMillis
                    let until = left > 0 ? sent + UInt64(left) : 0
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
        if context.state.nowMillis != controlTimeSeen.time { controlTimeSeen = (context.state.nowMillis, context.millis) }
        var out = reconcileLocal(context)
        let tps = max(1, context.ticksPerSecond)
        if hasPrimary(context), lastRenewal.map({ context.millis >= $0 + settings.renewEveryMillis }) ?? true {
            lastRenewal = context.millis
            // Renewals older than a lease can no longer make one valid; forget them (lost submissions).
            let horizon = UInt64(settings.leaseSeconds) * 1000
            pendingRenewals = pendingRenewals.filter { context.millis < $0.value.sent + horizon }
            for r in context.state.vms.vms.values.sorted(by: { $0.name < $1.name }) where r.primary == context.node {
                // Not twice in one tick (reconcileLocal renews a new primary's lease at once).
                let lease = VMTable.lease(for: r)
                if pendingRenewals.values.contains(where: { $0.lease == lease && $0.sent == context.millis }) { continue }
                out.append(renew(r, context))
            }
        }
        // A switch not applied yet is sent again (a lost submission; a duplicate is refused by the table).
        for (name, at) in switchSentAt.sorted(by: { $0.key < $1.key }) where context.tick >= at + 2 * tps {
            guard let r = context.state.vms.vms[name], r.primary == context.node, let m = r.migration,
                  local[name]?.role == .handingOver, local[name]?.epoch == r.epoch else { switchSentAt[name] = nil; continue }
            switchSentAt[name] = context.tick
            out.append(.submit(.vmSwitch(name: name, to: m.to, epoch: r.epoch)))
        }
        // Every tick: a failover waits for a lease that lapses to the millisecond.
        if context.isLeader { out += leaderDuties(context) }
        return out
    }

    /// A renewal of `r`'s lease, with a nonce of this run.
    mutating func renew(_ r: VMRecord, _ context: ControllerContext) -> ControllerEffect<VMAction> {
        renewalsSent += 1
        let nonce = run &+ UInt64(renewalsSent)
        let lease = VMTable.lease(for: r)
        pendingRenewals[nonce] = (context.millis, lease)
        return .submit(.renewLease(name: lease, ttlSeconds: settings.leaseSeconds, run: nonce))
    }

    public mutating func reported(_ report: VMDriverReport, context: ControllerContext) -> [ControllerEffect<VMAction>] {
        switch report {
        case let .readyToSwitch(name, epoch):
            // Aborted, fenced or moved meanwhile: the decision was made without this report.
            guard let r = context.state.vms.vms[name], r.primary == context.node, r.epoch == epoch, let m = r.migration,
                  local[name]?.role == .handingOver, local[name]?.epoch == epoch else { return [] }
            switchSentAt[name] = context.tick
            return [.submit(.vmSwitch(name: name, to: m.to, epoch: epoch)),
                    .note("VM \(name) paused here at a state \(m.to) committed; switching it over (epoch \(epoch) → \(epoch + 1))")]
        case let .actionFailed(name, epoch, reason):
            guard let mine = local[name], mine.epoch == epoch, mine.role != .fenced else { return [] }
            local[name] = nil
            retryAt[name] = context.tick + Self.retrySeconds * max(1, context.ticksPerSecond)
            return [.note("VM \(name): \(mine.role == .replica ? "holding its replica" : "running it") failed here (\(reason)); trying again in \(Self.retrySeconds) s")]
        case let .handOverFailed(name, epoch, reason):
            guard let r = context.state.vms.vms[name], r.primary == context.node, r.epoch == epoch,
                  local[name]?.role == .handingOver, local[name]?.epoch == epoch else { return [] }
            local[name] = (.primary, r.epoch, r.replica)
            var out: [ControllerEffect<VMAction>] = [.note("planned migration of VM \(name) failed here: \(reason); it runs on here")]
            if r.migration != nil { out.insert(.submit(.vmAbortMigration(name: name, epoch: epoch, reason: reason)), at: 0) }
            return out
        }
    }

    func hasPrimary(_ context: ControllerContext) -> Bool {
        context.state.vms.vms.values.contains { $0.primary == context.node }
    }

    /// Control time now (Unix ms), as this node can tell: the last control time seen plus its own
    /// monotonic clock since.
    func estimatedNow(_ context: ControllerContext) -> Int64 {
        // A control time newer than the last one seen is news now (ticks note it as it changes).
        if context.state.nowMillis > controlTimeSeen.time { return context.state.nowMillis }
        let since = context.millis >= controlTimeSeen.at ? context.millis - controlTimeSeen.at : 0
        return controlTimeSeen.time.saturatingAdding(Int64(clamping: since))
    }

    /// Whether this node's lease on `name` is certainly valid now: the spore names it the holder and a
    /// renewal this run sent, applied, still has more than the fence margin left by this node's ticks.
    func holdsLease(_ r: VMRecord, _ context: ControllerContext) -> Bool {
        let lease = VMTable.lease(for: r)
        guard context.state.spore.leases[lease]?.holder == context.node, let until = leaseTrusted[lease] else { return false }
        return context.millis < until
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
            if r.primary != context.node && r.replica != context.node {
                let why = r.epoch > mine.epoch
                    ? "ownership moved to \(r.primary) at epoch \(r.epoch); this copy (epoch \(mine.epoch)) is stale"
                    : "this node no longer holds it (its replica is \(r.replica.map { "\($0)" } ?? "none"))"
                out.append(.act(.destroy(name: name, reason: why)))
                local[name] = nil
                switchSentAt[name] = nil
            }
        }
        for r in table.values.sorted(by: { $0.name < $1.name }) {
            if r.primary == context.node {
                let lease = VMTable.lease(for: r)
                let valid = holdsLease(r, context)
                let current = local[r.name]
                // A new primary (after a switch or a failover) renews at once, not at the next round.
                if leaseTrusted[lease] == nil && !pendingRenewals.values.contains(where: { $0.lease == lease }) {
                    out.append(renew(r, context))
                }
                if valid, let until = leaseTrusted[lease], toldUntil[r.name] != until {
                    toldUntil[r.name] = until
                    let left = Double(until - context.millis) / 1000
                    out.append(.act(.keepAlive(name: r.name, seconds: left)))
                }
                let attempt = "\(r.name)@\(r.epoch)/\(r.migration.map { "\($0.to)@\($0.since)" } ?? "")"
                if current?.role == .handingOver && current?.epoch == r.epoch {
                    if !valid {
                        // Converging (the guest runs) or paused for the switch: either way it must
                        // not run past the lease. The switch may still apply; the copy stays paused.
                        local[r.name] = (.fenced, r.epoch, r.replica)
                        switchSentAt[r.name] = nil
                        out.append(.act(.fence(name: r.name, reason: "its ownership lease cannot be proven valid during a hand-over")))
                        out.append(.note("fenced VM \(r.name) during its hand-over: lease not renewed"))
                    } else if r.migration == nil {
                        local[r.name] = (.primary, r.epoch, r.replica)
                        switchSentAt[r.name] = nil
                        out.append(.act(.handOverDecided(name: r.name, switched: false, resume: true)))
                        out.append(.note("VM \(r.name) stays here: \(r.migrationOutcome.isEmpty ? "its migration was aborted" : r.migrationOutcome)"))
                    }
                    continue
                }
                if valid, let m = r.migration, m.to == r.replica, current?.role == .primary, current?.epoch == r.epoch,
                   current?.replica == r.replica, !handOversTried.contains(attempt) {
                    handOversTried.insert(attempt)
                    local[r.name] = (.handingOver, r.epoch, r.replica)
                    out.append(.act(.handOver(r)))
                    out.append(.note("handing VM \(r.name) over to \(m.to) (planned migration)"))
                    continue
                }
                if let at = retryAt[r.name], context.tick < at { continue }
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
                if let at = retryAt[r.name], context.tick < at { continue }
                if local[r.name]?.role != .replica || local[r.name]?.epoch != r.epoch {
                    if local[r.name]?.role == .handingOver {
                        // The switch applied: the target runs the guest now; this copy stays paused.
                        switchSentAt[r.name] = nil
                        out.append(.act(.handOverDecided(name: r.name, switched: true, resume: false)))
                        out.append(.note("VM \(r.name) switched to \(r.primary) (epoch \(r.epoch)); this node holds its replica now"))
                    } else if local[r.name]?.role == .primary || local[r.name]?.role == .fenced {
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
        let tps = max(1, context.ticksPerSecond)
        if context.tick % (60 * tps) == 0 { proposedAt = proposedAt.filter { context.tick < $0.value + 60 * tps } }
        func recently(_ key: String, seconds: UInt64 = 2) -> Bool {
            if let at = proposedAt[key], context.tick < at + seconds * tps { return true }
            proposedAt[key] = context.tick
            return false
        }
        for r in table.vms.values.sorted(by: { $0.name < $1.name }) {
            if let m = r.migration, !gone(r.primary) {
                var why: String?
                if spore.members[m.to]?.status != .alive || spore.revoked[m.to] != nil {
                    why = "the target \(m.to) is not alive"
                } else if estimatedNow(context).saturatingSubtracting(m.since.saturatingMultiplied(by: 1000)) >= settings.migrationTimeoutSeconds * 1000 {
                    why = "not switched within \(settings.migrationTimeoutSeconds) s"
                }
                if let why, !recently("abort \(r.name) \(r.epoch)") {
                    out.append(.propose(.vm(.abortMigration(name: r.name, epoch: r.epoch, reason: why))))
                    out.append(.note("aborting the planned migration of VM \(r.name) to \(m.to): \(why)"))
                }
                if why != nil { continue }
            }
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
                let free = r.leaseUntilMillis.saturatingAdding(VMTable.takeoverSlackMillis)
                // A renewal the dead primary sent before it died may still commit ahead of this
                // proposal and extend the lease (the table then refuses it, rightly): a new lease end
                // is a new attempt as soon as it lapses; the same one is tried again after a second.
                if estimatedNow(context) >= free && !recently("failover \(r.name) \(r.epoch) \(r.leaseUntilMillis)", seconds: 1) {
                    // The table checks the lease against control time, which moves only with spore
                    // entries; with the primary dead (no more renewals) it can lag behind. A tick,
                    // committed just before, brings it to this leader's clock.
                    if context.state.nowMillis < free { out.append(.submit(.tick)) }
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
