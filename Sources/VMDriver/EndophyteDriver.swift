// The VM controller's driver (issue 16): carries out `VMAction`s on this node's libvirt daemon
// (VMHost) and replicates guest RAM with the Endophyte engine. The decisions (who runs, who holds,
// when to fence) are the pure VMController's; this only makes them so.
//
//  - run: start the guest (cold boot), or take over from the replicated image (the replica became
//    the primary: its standby domain, waiting in `-incoming defer`, gets the last committed RAM and
//    device state and resumes), or resume it after fencing; then replicate to the record's replica,
//    reconnecting until it answers (the guest runs unprotected meanwhile, and `vm show` says so).
//  - hold: keep a replica image (a file under the state directory) and a standby domain; accept
//    the primary's connection (one listener per node; the source names the VM first, `Attach`).
//
// Replication runs over rhizomorph (encrypted and authenticated chunk by chunk, striped over the
// session's connections). One rhizomorph listener serves every VM this node holds a replica of: it
// accepts any of the keys of those VMs' primaries (rz_accept_any), and the key a source proved must
// then be the primary of the VM it attaches to.
//  - fence: stop replicating (its epochs would resume the guest) and pause the guest.
//  - destroy: stop everything, remove the domain and the image.
//  - handOver (planned migration): the replication thread, once protected, runs the Endophyte
//    migration (converge while the guest runs, blackout: pause, last pages and device state,
//    commit on the target), then reports `readyToSwitch` to the controller and waits, paused, for
//    `handOverDecided`: switched (the guest stays paused; `hold` then drops it) or aborted (it
//    resumes, if the lease allows, and replication goes on over the same connection).
//
// Blocking work (libvirt, QEMU, the replication loop) runs on its own threads; `perform` returns
// when the action has taken effect locally.

import DirtyPages
import Endophyte
import Foundation
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRBD
import Rhizomorph
import StorageDriver
import VMController
import VMHost

public struct EndophyteDriverSettings: Sendable {
    public var libvirtURI: String
    /// libvirt's QEMU run directory, where it writes `<domain>.pid`.
    public var qemuRunDirectory: String
    /// Replica images and serial logs (one of each per VM).
    public var stateDirectory: String
    /// The dirty-page preload shim for QEMU (nil: the hash engine tracks guest RAM).
    public var shimLibrary: String?
    /// Where this node accepts replication connections.
    public var listenHost: String
    public var listenPort: UInt16
    public var replication: ReplicationConfig
    /// Output commit (Remus network buffering): the guest's network output leaves this host only once the
    /// replica has committed the checkpoint that follows it. Off: packets go out at once, and a
    /// failover may contradict replies clients already saw.
    public var outputCommit: Bool
    public var outputCommitLimits: OutputCommitLimits
    /// Where a VM's data disk (VMSpec.disk, a volume name) is on this host; nil: unknown here (a VM
    /// naming it is refused). The agent answers from its volume table.
    public var diskSource: @Sendable (String) -> VMDiskSource?
    /// How long a takeover's fence keeps the old primary's Ceph clients out (VolumeFencing).
    public var fenceExpirySeconds: Double

    public init(libvirtURI: String, qemuRunDirectory: String = "/run/libvirt/qemu", stateDirectory: String, shimLibrary: String? = nil,
                listenHost: String, listenPort: UInt16,
                replication: ReplicationConfig = ReplicationConfig(epochInterval: 0.1, rpoBound: 2, emergencyPolicy: .continueUnprotected, ackTimeout: 2),
                outputCommit: Bool = true, outputCommitLimits: OutputCommitLimits = OutputCommitLimits(),
                diskSource: @escaping @Sendable (String) -> VMDiskSource? = { _ in nil },
                fenceExpirySeconds: Double = VolumeFencing.defaultExpirySeconds) {
        self.diskSource = diskSource; self.fenceExpirySeconds = fenceExpirySeconds
        self.libvirtURI = libvirtURI; self.qemuRunDirectory = qemuRunDirectory; self.stateDirectory = stateDirectory
        self.shimLibrary = shimLibrary; self.listenHost = listenHost; self.listenPort = listenPort; self.replication = replication
        self.outputCommit = outputCommit; self.outputCommitLimits = outputCommitLimits
    }
}

/// Where another node takes replication connections, and its key (the agent answers from its spore).
public struct ReplicationPeer: Sendable, Equatable {
    public var host: String
    public var port: UInt16
    public var key: PublicKey
    public init(host: String, port: UInt16, key: PublicKey) { self.host = host; self.port = port; self.key = key }
}

/// A transition of a VM on this node, for events and metrics (`mycelium_vm_transitions_total{kind}`).
public enum VMTransition: String, Sendable, CaseIterable {
    case started, adopted, resumed, replicating, protected, unprotected, tookOver = "took_over", fenced, holding, destroyed
    case migrated, rolledBack = "rolled_back"
    /// Not a transition: a line worth an operator's attention (a refused connection, a fallback).
    case notice
}

/// What the driver reports of one VM here (for `vm show`, status and metrics).
public struct LocalVMState: Sendable, Equatable {
    public enum Role: String, Sendable { case primary, fenced, replica }
    public var role: Role
    public var ownershipEpoch: UInt64
    /// Primary: the engine's protection state ("syncing", "protected", "unprotected: …"); replica: "holding".
    public var replication: String
    /// Primary: uffd-remote or hash (and why); replica: nil.
    public var engine: String?
    /// Replica: the last committed engine epoch of the image.
    public var committedEpoch: UInt64
    /// Primary: how the last connection synced the replica ("resync by hashes: 312 of 65536 pages
    /// differed, 1.2 MiB sent", "full copy: …").
    public var lastSync: String?
    /// Primary: checkpoints over the last minute (nil before the first).
    public var recent: EpochWindow.Summary?
    /// Primary: seconds since the last committed checkpoint (what a crash would lose now), the
    /// throttle level (0…1).
    public var rpoSeconds: Double?
    public var throttle: Double?
    /// Primary: "on (N packets held, M dropped)", "on, passing through until …" or "off (…)"; replica: nil.
    public var outputCommit: String?
    /// Primary, while the engine brings the replica up to date: bytes of guest memory sent and in all
    /// (pages × page size, holes and zero pages included; nil when not syncing).
    public var syncBytesDone: UInt64?
    public var syncBytesTotal: UInt64?

    public init(role: Role, ownershipEpoch: UInt64, replication: String, engine: String?, committedEpoch: UInt64, lastSync: String? = nil,
                recent: EpochWindow.Summary? = nil, rpoSeconds: Double? = nil, throttle: Double? = nil, outputCommit: String? = nil) {
        self.role = role; self.ownershipEpoch = ownershipEpoch; self.replication = replication
        self.engine = engine; self.committedEpoch = committedEpoch; self.lastSync = lastSync
        self.recent = recent; self.rpoSeconds = rpoSeconds; self.throttle = throttle; self.outputCommit = outputCommit
    }
}

/// A primary's checkpoints over the last minute: pause percentiles and bytes shipped per second.
public final class EpochWindow: @unchecked Sendable {
    // SAFETY (Sendable): `entries` is guarded by `lock`.
    public struct Summary: Sendable, Equatable {
        public var epochs: Int
        public var pauseP50: Double
        public var pauseP99: Double
        public var bytesPerSecond: Double
    }
    let lock = PthreadLock()
    var entries: [(at: Double, pause: Double, bytes: Int)] = []
    public static let span = 60.0

    public init() {}

    public func record(_ r: EpochReport, at now: Double) {
        lock.withLock {
            entries.append((now, r.pauseSeconds, r.bytesSent))
            if let cut = entries.firstIndex(where: { $0.at >= now - Self.span }), cut > 0 { entries.removeFirst(cut) }
        }
    }

    public func summary(at now: Double) -> Summary? {
        let e = lock.withLock { entries.filter { $0.at >= now - Self.span } }
        guard let first = e.first else { return nil }
        let pauses = e.map(\.pause).sorted()
        func pct(_ p: Double) -> Double { pauses[min(pauses.count - 1, Int((Double(pauses.count - 1) * p).rounded()))] }
        let seconds = max(1, now - first.at)
        return Summary(epochs: e.count, pauseP50: pct(0.5), pauseP99: pct(0.99), bytesPerSecond: Double(e.reduce(0) { $0 + $1.bytes }) / seconds)
    }
}

public final class EndophyteDriver: ControllerDriver, @unchecked Sendable {
    // SAFETY (Sendable): the tables, and each VM's `record`, `fenced`, `source`, `transport` and `stopping` (shared with
    // its replication or serving thread), are guarded by `lock`; the rest of a VM's objects is touched
    // only by the action running on it (actions run one at a time, in order).
    public typealias Action = VMAction
    public typealias Report = VMDriverReport

    public let settings: EndophyteDriverSettings
    let host: VMHost
    let identity: SigningKey
    let network: NetworkID
    let peer: @Sendable (MyceliumIdentity.NodeID) -> ReplicationPeer?
    let report: @Sendable (VMTransition, String) -> Void
    let listener: Rhizomorph.Listener
    let lock = PthreadLock()
    var primaries: [String: Primary] = [:]
    var replicas: [String: Replica] = [:]
    var closed = false
    /// Per VM run here as primary: the monotonic ms until which its lease lets it run (the watchdog's).
    var deadlines: [String: UInt64] = [:]
    var reportSink: (@Sendable (VMDriverReport) -> Void)?

    final class Primary: @unchecked Sendable {
        var record: VMRecord
        let domain: EndophyteDomain
        let region: MappedRegion
        let tracking: GuestRAMTracking
        var source: ReplicationSource?
        var transport: ReplicationTransport?
        var thread: Thread?
        var stopping = false
        var fenced = false
        /// A hand-over asked for and not yet taken up by the replication thread.
        var handOver: VMRecord?
        let window = EpochWindow()
        /// The controller's decision on the hand-over in progress (nil: none yet).
        var decision: HandOverDecision?
        /// Output commit on the guest's NIC (nil: off, or it could not be attached: `outputCommitOff`).
        var gate: OutputCommitGate?
        var outputCommitOff = "off"
        init(record: VMRecord, domain: EndophyteDomain, region: MappedRegion, tracking: GuestRAMTracking) {
            self.record = record; self.domain = domain; self.region = region; self.tracking = tracking
        }
    }

    enum HandOverDecision: Equatable { case switched, aborted(resume: Bool) }

    final class Replica: @unchecked Sendable {
        var record: VMRecord
        let image: MappedRegion
        let receiver: ReplicaReceiver
        var standby: EndophyteDomain?
        /// The image is the standby's own guest RAM (its memfd): a takeover copies nothing.
        let imageInStandby: Bool
        var transport: ReplicationTransport?
        init(record: VMRecord, image: MappedRegion, receiver: ReplicaReceiver, standby: EndophyteDomain?, imageInStandby: Bool) {
            self.record = record; self.image = image; self.receiver = receiver; self.standby = standby; self.imageInStandby = imageInStandby
        }
    }

    public init(settings: EndophyteDriverSettings, identity: SigningKey, network: NetworkID,
                peer: @escaping @Sendable (MyceliumIdentity.NodeID) -> ReplicationPeer?,
                report: @escaping @Sendable (VMTransition, String) -> Void) throws {
        self.settings = settings
        self.identity = identity
        self.network = network
        self.peer = peer
        self.report = report
        try FileManager.default.createDirectory(atPath: settings.stateDirectory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        host = try VMHost(uri: settings.libvirtURI, qemuRunDirectory: settings.qemuRunDirectory)
        listener = try Rhizomorph.Listener(addresses: [settings.listenHost], port: settings.listenPort)
        let t = Thread { [weak self] in self?.acceptLoop() }
        t.name = "vm-replica-listener"
        t.start()
    }

    public var port: UInt16 { listener.port }

    /// Stops replication threads and the listener; leaves the guests as they are (an agent restart
    /// must not take VMs down).
    public func close() {
        let (ps, rs) = lock.withLock { () -> ([Primary], [Replica]) in
            closed = true
            return (Array(primaries.values), Array(replicas.values))
        }
        for p in ps {
            stopReplication(p)
            // The guest runs on without this agent, unprotected: its network must not wait for
            // commits that will not come (held packets are sent; the filters go).
            p.gate?.detach(flush: true)
        }
        for t in lock.withLock({ rs.compactMap(\.transport) }) { t.close() }
        // The accept loop leaves within one accept timeout; the listener itself is freed with the
        // last session that holds it (Rhizomorph.Listener's deinit).
    }

    public func states() -> [String: LocalVMState] {
        lock.withLock {
            var out: [String: LocalVMState] = [:]
            for (n, p) in primaries {
                let st = p.source?.status
                out[n] = LocalVMState(role: p.fenced ? .fenced : .primary, ownershipEpoch: p.record.epoch,
                                      replication: p.record.replica == nil ? "unprotected: no replica" : (st.map { "\($0.state)" } ?? "connecting"),
                                      engine: "\(p.tracking.tracker.engine)" + (p.tracking.fallbackReason.map { " (\($0))" } ?? ""),
                                      committedEpoch: st?.committedEpoch ?? 0, lastSync: st?.lastSync.map { "\($0)" },
                                      recent: p.window.summary(at: Double(VMWatchdog.monotonicMilliseconds()) / 1000),
                                      rpoSeconds: st.flatMap { $0.secondsSinceCommit.isFinite ? $0.secondsSinceCommit : nil },
                                      throttle: st?.throttleLevel, outputCommit: p.gate.map(Self.describe) ?? p.outputCommitOff)
                if let st, st.state == .syncing, let total = st.syncPagesTotal {
                    out[n]?.syncBytesDone = UInt64(st.syncPagesDone) * UInt64(dirtyPageSize)
                    out[n]?.syncBytesTotal = UInt64(total) * UInt64(dirtyPageSize)
                }
            }
            for (n, r) in replicas {
                out[n] = LocalVMState(role: .replica, ownershipEpoch: r.record.epoch, replication: "holding", engine: nil,
                                      committedEpoch: r.receiver.committedEpoch)
            }
            return out
        }
    }

    public func reportTo(_ sink: @escaping @Sendable (VMDriverReport) -> Void) {
        lock.withLock { reportSink = sink }
    }

    func tellController(_ r: VMDriverReport) {
        lock.withLock { reportSink }?(r)
    }

    static func describe(_ g: OutputCommitGate) -> String {
        let s = g.status
        if let why = s.broken { return "on, but broken: \(why); restart the agent to attach it again" }
        switch s.mode {
        case .holding: return "on (\(s.heldPackets) packets held, \(s.dropped) dropped)"
        // Worded without "protected": the replication field says whether the guest is.
        case .passingThrough: return "on, passing through until a replica holds a checkpoint (\(s.dropped) dropped)"
        }
    }

    public func perform(_ action: VMAction) async throws {
        switch action {
        case .run(let r):
            do {
                try await fenceDiskBeforeTakeOver(r)
                try run(r)
            } catch {
                // A guest started (or taken over) but not made a primary here must not run untracked.
                if lock.withLock({ primaries[r.name] }) == nil { try? host.domain(named: r.name).pauseThroughLibvirt() }
                tellController(.actionFailed(name: r.name, epoch: r.epoch, reason: "\(error)"))
                throw error
            }
        case let .keepAlive(name, seconds): try keepAlive(name, seconds: seconds)
        case .hold(let r):
            do { try hold(r) } catch {
                tellController(.actionFailed(name: r.name, epoch: r.epoch, reason: "\(error)"))
                throw error
            }
        case let .fence(name, reason): fence(name, reason: reason)
        case let .destroy(name, reason): try destroy(name, reason: reason)
        case .handOver(let r): handOver(r)
        case let .handOverDecided(name, switched, resume): handOverDecided(name, switched ? .switched : .aborted(resume: resume))
        }
    }

    // MARK: primary

    /// The watchdog's deadline for `name` moves to `seconds` from now.
    func keepAlive(_ name: String, seconds: Double) throws {
        let until = VMWatchdog.monotonicMilliseconds() + UInt64(max(0, seconds) * 1000)
        let all = lock.withLock { () -> [String: UInt64] in
            deadlines[name] = until
            return deadlines
        }
        try VMWatchdog.write(all, to: settings.stateDirectory)
    }

    func forgetDeadline(_ name: String) {
        let all = lock.withLock { () -> [String: UInt64] in
            deadlines[name] = nil
            return deadlines
        }
        try? VMWatchdog.write(all, to: settings.stateDirectory)
    }

    func run(_ r: VMRecord) throws {
        if let p = lock.withLock({ primaries[r.name] }) {
            let wasFenced = lock.withLock { p.fenced }
            if wasFenced {
                // Its replication thread has stopped (fenced, or paused for a hand-over that did
                // not switch): the guest resumes and replication starts again.
                stopReplication(p)
                try p.domain.resume()
                lock.withLock { p.fenced = false }
                report(.resumed, "VM \(r.name): lease renewed, guest resumed (epoch \(r.epoch))")
            }
            let replicaChanged = lock.withLock { () -> Bool in
                defer { p.record = r }
                return p.record.replica != r.replica
            }
            if replicaChanged || p.thread == nil { startReplication(p) }
            return
        }
        let domain: EndophyteDomain
        if let rep = lock.withLock({ replicas.removeValue(forKey: r.name) }) {
            domain = try takeOver(r, from: rep)
        } else {
            domain = try startOrAdopt(r)
        }
        let region = try domain.openGuestRAM()
        let tracking = try domain.openDirtyTracker(region: region, shimReport: shimReport(r.name))
        if let why = tracking.fallbackReason { report(.notice, "VM \(r.name): guest RAM tracked by the hash engine: \(why)") }
        let p = Primary(record: r, domain: domain, region: region, tracking: tracking)
        attachOutputCommit(p)
        lock.withLock { primaries[r.name] = p }
        startReplication(p)
    }

    /// A domain of this VM already here at this epoch (the agent restarted) is adopted; one of an
    /// older epoch is stale and removed; otherwise the guest boots.
    func startOrAdopt(_ r: VMRecord) throws -> EndophyteDomain {
        if let m = try host.managedDomains().first(where: { $0.name == r.name }) {
            let d = try host.domain(named: r.name)
            if m.metadata.role == .primary && m.metadata.ownershipEpoch == r.epoch, try d.state() != .shutOff {
                // Paused by the watchdog while the agent was away, or fenced: the lease is valid again.
                if try d.state() == .paused { try d.resume() }
                report(.adopted, "VM \(r.name): found here at epoch \(r.epoch); adopting it")
                return d
            }
            report(.destroyed, "VM \(r.name): removing a stale copy here (\(m.metadata.role) at epoch \(m.metadata.ownershipEpoch); the VM is at \(r.epoch))")
            try host.remove(r.name)
        }
        let d = try host.start(r.spec, domainConfig(r, role: .primary))
        report(.started, "VM \(r.name): started as its primary (epoch \(r.epoch))")
        return d
    }

    /// Before this node takes a VM with an RBD disk over (it holds the replica and is now the
    /// primary), the old primary's QEMU may still hold the image's exclusive lock: a dead host's, or a
    /// frozen one's that would write as soon as it wakes. Every other client of the image is
    /// blocklisted and its lock broken (VolumeFencing) before our QEMU opens it: a VM with an RBD disk
    /// has no standby domain waiting here (its QEMU would have the image open and be fenced with the
    /// rest), so `takeOver` starts one after this.
    func fenceDiskBeforeTakeOver(_ r: VMRecord) async throws {
        guard !r.spec.disk.isEmpty, lock.withLock({ primaries[r.name] == nil && replicas[r.name] != nil }) else { return }
        guard case let .rbd(pool, image, conf, client)? = settings.diskSource(r.spec.disk) else {
            if settings.diskSource(r.spec.disk) == nil { throw Self.unresolvedDisk(r.spec) }
            return  // a file: nothing else can write it
        }
        let conn: CephConnection
        do { conn = try await CephConnection.connect(CephClientConfig(confFile: conf, clientName: client)) } catch {
            throw VMDriverError("VM \(r.name): cannot fence the old writer of its disk \(pool)/\(image) before taking over: \(error)")
        }
        let f = try await VolumeFencing.fenceOthers(connection: conn, pool: pool, image: image, expirySeconds: settings.fenceExpirySeconds)
        report(.notice, "VM \(r.name): disk \(f) before taking over")
    }

    static func unresolvedDisk(_ spec: VMSpec) -> VMDriverError {
        VMDriverError("VM \(spec.name): its disk '\(spec.disk)' is not a volume this node knows (no RBD image or file for it): create the volume first, or check the name")
    }

    /// Failover: the standby gets the replica's last committed epoch (RAM and device state together)
    /// and resumes.
    func takeOver(_ r: VMRecord, from rep: Replica) throws -> EndophyteDomain {
        lock.withLock { rep.transport }?.close()
        // The session may still be applying an epoch it acknowledged: the image and its epoch are read
        // only once it has stopped, so the guest resumes from one whole epoch.
        guard rep.receiver.waitUntilIdle(timeout: 10) else {
            throw VMDriverError("VM \(r.name): its replication session did not stop within 10 s of its connection being closed; the image may still be changing, so it is not taken over")
        }
        let epoch = rep.receiver.committedEpoch
        guard epoch > 0 else {
            throw VMDriverError("VM \(r.name): this node became its primary but holds no committed image (none recorded before this agent restarted, or it was being changed then, and no sync committed since: a kept image is then only a base for a resync, possibly mixed); it cannot continue the guest")
        }
        let standby: EndophyteDomain, inPlace: Bool
        if let s = rep.standby, (try? s.isWaitingForState()) == true {
            (standby, inPlace) = (s, rep.imageInStandby)
        } else {
            // The standby is gone (its QEMU died): a new one gets a copy of the image (our mapping
            // of the old one's memory outlives it).
            try? host.remove(r.name)
            (standby, inPlace) = (try host.start(r.spec, domainConfig(r, role: .standby)), false)
        }
        let t = try standby.activate(image: RAMImage(epoch: epoch, region: rep.image),
                                     deviceState: DeviceState(epoch: epoch, bytes: rep.receiver.deviceState), imageInGuestRAM: inPlace)
        try standby.setOwnership(EndophyteMetadata(role: .primary, ownershipEpoch: r.epoch))
        report(.tookOver, "VM \(r.name): took over at ownership epoch \(r.epoch) from replicated epoch \(epoch) in \(Int(t.total * 1000)) ms "
            + "(\(inPlace ? "in place, checks" : "copy") \(Int(t.checkAndCopy * 1000)) ms, device state \(Int(t.loadDeviceState * 1000)) ms, resume \(Int(t.resume * 1000)) ms)")
        try? FileManager.default.removeItem(atPath: imagePath(r.name))
        try? FileManager.default.removeItem(atPath: replicaStatePath(r.name))
        return standby
    }

    /// Puts the guest's network output behind an output commit gate (when on). It passes packets
    /// through until a replica is connected. A guest without the NIC (a domain from an older agent)
    /// runs without, and `vm show` says why.
    func attachOutputCommit(_ p: Primary) {
        guard settings.outputCommit else {
            p.outputCommitOff = "off (vm_output_commit = false: replies may leave before the replica has the state they come from)"
            return
        }
        do {
            p.gate = try OutputCommitGate(domain: p.domain, limits: settings.outputCommitLimits, mode: .passingThrough)
        } catch {
            p.outputCommitOff = "off: could not attach it to the guest's NIC: \(error)"
            report(.notice, "VM \(p.record.name): output commit is off: \(error)")
        }
    }

    func startReplication(_ p: Primary) {
        stopReplication(p)
        let name = p.record.name
        guard let replica = p.record.replica else {
            p.gate?.setMode(.passingThrough)
            return
        }
        lock.withLock { p.stopping = false }
        let t = Thread { [weak self] in self?.replicate(p, to: replica) }
        t.name = "vm-\(name)-source"
        p.thread = t
        t.start()
        report(.replicating, "VM \(name): replicating to \(replica)")
    }

    func stopReplication(_ p: Primary) {
        guard let t = p.thread else { return }
        let (source, transport) = lock.withLock { () -> (ReplicationSource?, ReplicationTransport?) in
            p.stopping = true
            return (p.source, p.transport)
        }
        source?.requestStop()
        transport?.close()
        while t.isExecuting { usleep(1000) }  // the loop leaves within one epoch once its transport is closed
        p.thread = nil
    }

    func replicate(_ p: Primary, to replica: MyceliumIdentity.NodeID) {
        let name = p.record.name
        var lastError = ""
        let gate = p.gate
        let policy = settings.replication.emergencyPolicy
        while !lock.withLock({ p.stopping || closed }) {
            // Not connected: unprotected, unless the policy keeps the guest paused until a replica
            // has a checkpoint (its held packets then wait for that commit).
            if policy == .continueUnprotected { gate?.setMode(.passingThrough) }
            do {
                guard let ep = peer(replica) else { throw VMDriverError("no replication address known for \(replica)") }
                let path = Rhizomorph.Path(local: localAddress, remote: ep.host, port: ep.port)
                let t = try RhizomorphReplicationTransport.connect(paths: [path], identity: identity, network: network, peerKey: ep.key)
                try t.sendAttach(Attach(name: name, ownershipEpoch: lock.withLock { p.record.epoch }))
                let window = p.window
                let source = try ReplicationSource(region: p.region, tracker: p.tracking.tracker, config: settings.replication,
                                                   hooks: p.domain.sourceHooks(afterPause: { gate?.sealAtPause() }),
                                                   onEvent: { e in
                    Self.steer(gate, by: e)
                    if case .epochCommitted(let r) = e { window.record(r, at: Double(VMWatchdog.monotonicMilliseconds()) / 1000) }
                })
                // Published under the lock, and checked against a stop that came meanwhile (which
                // could not close what it did not see).
                let stop = lock.withLock { () -> Bool in
                    p.transport = t
                    p.source = source
                    return p.stopping
                }
                if stop { t.close(); break }
                let sync = try source.connect(t)
                report(.protected, "VM \(name): protected (\(sync); replica \(replica))")
                if case .libvirt(let why) = p.domain.controlChannel() {
                    report(.notice, "VM \(name): checkpoints go through libvirt's monitor passthrough (pauses 4-5 ms longer): \(why)")
                }
                lastError = ""
                while !lock.withLock({ p.stopping || closed }) {
                    if let h = lock.withLock({ () -> VMRecord? in
                        defer { p.handOver = nil; p.decision = nil }
                        return p.handOver
                    }) {
                        // The guest stays paused after a switch, or after an abort it may not resume
                        // from: this thread ends; a later `run` resumes it (and replicates anew).
                        if !handOver(p, source, h) { return }
                        continue
                    }
                    try source.checkpoint()
                }
            } catch {
                let text = "\(error)"
                if text != lastError { report(.unprotected, "VM \(name): not protected: \(text); retrying") }
                lastError = text
            }
            lock.withLock { p.transport }?.close()
            for _ in 0..<10 where !lock.withLock({ p.stopping || closed }) { usleep(100_000) }
        }
    }

    /// Output commit follows the engine: a boundary's commit releases what the guest sent before its
    /// pause; holding starts when a replica connects and stops when the guest runs unprotected.
    static func steer(_ gate: OutputCommitGate?, by event: EndophyteEvent) {
        guard let gate else { return }
        switch event {
        case .connected, .protectionRestored: gate.setMode(.holding)
        case .epochCommitted: gate.releaseCommitted()
        case .emergency(_, .continueUnprotected): gate.setMode(.passingThrough)
        default: break
        }
    }

    // MARK: planned migration

    func handOver(_ r: VMRecord) {
        guard let p = lock.withLock({ primaries[r.name] }), let target = r.migration?.to else { return }
        let problem = lock.withLock { () -> String? in
            if p.record.epoch != r.epoch { return "this node runs it at epoch \(p.record.epoch), not \(r.epoch)" }
            if p.record.replica != target || p.thread == nil { return "it is not replicating to the target \(target)" }
            if p.fenced { return "the guest is fenced here" }
            p.handOver = r
            return nil
        }
        if let problem {
            report(.notice, "VM \(r.name): cannot hand over: \(problem)")
            tellController(.handOverFailed(name: r.name, epoch: r.epoch, reason: problem))
            return
        }
        report(.notice, "VM \(r.name): handing over to \(target) once its replica is protected")
    }

    func handOverDecided(_ name: String, _ d: HandOverDecision) {
        guard let p = lock.withLock({ primaries[name] }) else { return }
        lock.withLock {
            // Not taken up yet: an abort just forgets it (the guest never paused).
            if p.handOver != nil { p.handOver = nil } else { p.decision = d }
        }
    }

    /// Runs the hand-over on the replication thread. True: the guest runs here (rolled back), keep
    /// replicating. False: it stays paused (switched, or not allowed to resume); the thread ends.
    func handOver(_ p: Primary, _ source: ReplicationSource, _ r: VMRecord) -> Bool {
        let name = r.name, epoch = r.epoch, target = r.migration?.to.description ?? "?"
        let stop: @Sendable () -> Bool = { [lock] in lock.withLock { p.stopping || self.closed } }
        let hooks = MigrationHooks(
            recordOwner: { [self] in
                // Paused at an epoch the target committed (its ack came back): the switch may be made.
                report(.notice, "VM \(name): paused for the switch to \(target) at replication epoch \(source.status.committedEpoch); waiting for it to apply")
                tellController(.readyToSwitch(name: name, epoch: epoch))
                while true {
                    // The decision first: a switch is followed at once by `hold`, which stops this
                    // thread; the switch must still be seen as one.
                    switch lock.withLock({ p.decision }) {
                    case .switched?: return
                    case .aborted?: throw VMDriverError("the migration was aborted before the switch")
                    case nil:
                        if stop() { throw VMDriverError("the hand-over was stopped (fenced or destroyed)") }
                        usleep(500)
                    }
                }
            },
            mayResume: { [lock] in
                switch lock.withLock({ p.decision }) {
                case .aborted(let resume)?: return resume && !stop()
                case .switched?: return false
                case nil: return !stop()  // failed before the pause was reported: nobody else runs it
                }
            })
        do {
            let m = try PlannedMigration.run(source: source, policy: MigrationPolicy(), hooks: hooks)
            lock.withLock { p.fenced = true }
            report(.migrated, "VM \(name): switched to \(target); paused here for good (blackout here \(Int(m.blackoutSeconds * 1000)) ms "
                + "from the pause, \(m.convergeRounds + m.turboRounds) pre-copy rounds, \(m.bytesSent >> 20) MiB, total \(Int(m.totalSeconds * 1000)) ms)")
            return false
        } catch {
            let decided = lock.withLock { p.decision }
            if case .aborted(let resume)? = decided {
                if !resume { lock.withLock { p.fenced = true } }
                report(.rolledBack, "VM \(name): migration aborted; the guest \(resume ? "runs on here" : "stays paused until its lease is renewed")")
                return resume
            }
            if stop() {
                lock.withLock { p.fenced = true }
                return false
            }
            // Failed before the pause was reported: the guest was resumed by the rollback.
            report(.rolledBack, "VM \(name): hand-over to \(target) failed, the guest runs on here: \(error)")
            tellController(.handOverFailed(name: name, epoch: epoch, reason: "\(error)"))
            return true
        }
    }

    func fence(_ name: String, reason: String) {
        guard let p = lock.withLock({ primaries[name] }) else { return }
        stopReplication(p)
        do { try p.domain.pause() } catch { report(.notice, "VM \(name): pausing the guest to fence it failed: \(error)") }
        // What it sent since the last commit must never leave: the replica may take over from there.
        if let n = p.gate?.discardHeld(), n > 0 { report(.notice, "VM \(name): discarded \(n) held packets of the fenced guest") }
        lock.withLock { p.fenced = true }
        report(.fenced, "VM \(name): fenced (guest paused): \(reason)")
    }

    // MARK: replica

    func hold(_ r: VMRecord) throws {
        // This node ran it and is its replica now (a planned switch, or it was fenced). Its guest's
        // RAM, paused, is the best base for the image it holds from now on: the new primary resyncs it
        // by hashes and sends what changed since, not the whole region. Our mapping of that memfd
        // outlives the domain, so it is copied straight into the new standby's RAM below (a file only
        // when no standby can run here).
        var oldGuestRAM: MappedRegion?
        if let p = lock.withLock({ primaries.removeValue(forKey: r.name) }) {
            stopReplication(p)
            p.gate?.detach(flush: false)
            forgetDeadline(r.name)
            if p.region.length == Int(r.spec.memoryMiB) << 20 { oldGuestRAM = p.region }
            try host.remove(r.name)
        }
        let held = lock.withLock { () -> Bool in
            guard let rep = replicas[r.name] else { return false }
            rep.record = r
            return true
        }
        if held { return }
        let bytes = Int(r.spec.memoryMiB) << 20
        // A standby waiting in `-incoming defer` turns a failover into one device-state load and a
        // resume (a cold start costs seconds under TCG). The replica writes its epochs straight into
        // the standby's guest RAM (a memfd QEMU leaves alone while it waits for its stream), so a
        // takeover copies nothing either; the image is a file only when no standby can run here.
        //
        // A base for a resync by hashes: the RAM of a standby this agent finds waiting (it
        // restarted), or an image file (kept by an agent without a standby, or the paused guest's RAM
        // of a primary that became the replica). Only a base: the receiver starts at committed epoch
        // 0, so it cannot be taken over before that resync commits (the agent may have died mid-apply).
        // It is this VM's: named after it, and a source must name the VM and its ownership epoch
        // (Attach) and be its primary. Even a base from an older life of the VM only costs pages: the
        // resync is exact for any base.
        //
        // More than a base when the journal (ReplicaStateFile) says the image kept across this
        // agent's restart is exactly a committed epoch of this ownership epoch: it can be taken over
        // at once, even if the primary died while this agent was down.
        var standby: EndophyteDomain?, image: MappedRegion?, reused = false, keptAcrossRestart = false
        do {
            // A standby's QEMU opens the VM's RBD disk at once (it would then be a watcher the
            // takeover fences with the old writer): such a VM's standby starts at takeover, after
            // the fence, and the replica is a file until then.
            if case .rbd? = settings.diskSource(r.spec.disk) {
                if try host.managedDomains().contains(where: { $0.name == r.name }) { try host.remove(r.name) }
                throw VMDriverError("its disk is an RBD image; the standby starts at takeover, after fencing the old writer")
            }
            let found = try host.managedDomains().first { $0.name == r.name }
            if let found, found.metadata.role == .standby, let d = try? host.domain(named: r.name), (try? d.isWaitingForState()) == true,
               let ram = try? d.openGuestRAM(), ram.length == bytes {
                try d.setOwnership(EndophyteMetadata(role: .standby, ownershipEpoch: r.epoch))
                (standby, image, reused, keptAcrossRestart) = (d, ram, true, true)
                report(.notice, "VM \(r.name): keeping the image found here as a base for a resync by hashes (the RAM of the standby waiting here)")
            } else {
                if found != nil { try host.remove(r.name) }
                let d = try host.start(r.spec, domainConfig(r, role: .standby))
                standby = d
                let ram = try d.openGuestRAM()
                guard ram.length == bytes else { throw VMDriverError("the standby's RAM is \(ram.length) bytes, not \(bytes)") }
                if let old = oldGuestRAM {
                    memcpy(ram.base, old.base, bytes)
                    reused = true
                } else if FileManager.default.fileExists(atPath: imagePath(r.name)) {
                    let (file, kept) = try MappedRegion.openImage(path: imagePath(r.name), length: bytes)
                    if kept { memcpy(ram.base, file.base, bytes); reused = true }
                }
                try? FileManager.default.removeItem(atPath: imagePath(r.name))
                image = ram
                if reused { report(.notice, "VM \(r.name): keeping the image found here as a base for a resync by hashes") }
            }
        } catch {
            report(.notice, "VM \(r.name): no standby domain here (\(error)); the replica is a file and a failover starts a standby then")
        }
        let inStandby = image != nil
        if image == nil, let old = oldGuestRAM {
            do { try Self.saveBase(old, to: imagePath(r.name)) } catch {
                report(.notice, "VM \(r.name): could not keep the guest's RAM as the replica's base (\(error)); it gets a full copy")
            }
        }
        if image == nil {
            let (file, kept) = try MappedRegion.openImage(path: imagePath(r.name), length: bytes)
            if kept { report(.notice, "VM \(r.name): keeping the image found here as a base for a resync by hashes") }
            (image, reused) = (file, kept)
            // A file kept by this agent as a replica (not the base saved from a guest's RAM above).
            keptAcrossRestart = kept && oldGuestRAM == nil
        }
        let statePath = replicaStatePath(r.name)
        var committed: (epoch: UInt64, deviceState: [UInt8])?
        if keptAcrossRestart {
            let (found, why) = ReplicaStateFile.read(path: statePath, ownershipEpoch: r.epoch)
            committed = found
            report(.notice, found != nil
                ? "VM \(r.name): the image kept here is committed \(why) (recorded before this agent restarted): it can be taken over at once"
                : "VM \(r.name): the image kept here is only a base (\(why))")
        }
        if committed == nil { try? FileManager.default.removeItem(atPath: statePath) }
        let journal = ReplicaStateFile(path: statePath, ownershipEpoch: r.epoch) { [report] why in report(.notice, "VM \(r.name): \(why)") }
        let rep = Replica(record: r, image: image!, receiver: ReplicaReceiver(region: image!, stagingReservePages: 256, imageIsBase: reused,
                                                                             committed: committed, journal: journal),
                          standby: standby, imageInStandby: inStandby)
        lock.withLock { replicas[r.name] = rep }
        report(.holding, "VM \(r.name): holding its replica (epoch \(r.epoch))")
    }

    /// How long one accept waits before the set of allowed sources is read again (a replica added
    /// meanwhile, a primary replaced).
    static let acceptRecheck = 0.5

    /// The keys that may connect: the primaries of the replicas held here.
    func allowedSources() -> [PublicKey] {
        let primaries = lock.withLock { Set(replicas.values.map(\.record.primary)) }
        return Array(Set(primaries.compactMap { peer($0)?.key }))
    }

    func acceptLoop() {
        var lastError = ""
        while !lock.withLock({ closed }) {
            let allowed = allowedSources()
            guard !allowed.isEmpty else {
                // Nobody may connect: a source that tries waits in the listener's queue until a
                // replica of its VM is held here, or gives up and retries.
                usleep(UInt32(Self.acceptRecheck * 1_000_000))
                continue
            }
            let t: RhizomorphReplicationTransport
            do {
                t = try RhizomorphReplicationTransport.accept(from: listener, identity: identity, network: network,
                                                              allowedPeers: allowed, timeout: Self.acceptRecheck)
                lastError = ""
            } catch {
                if lock.withLock({ closed }) { return }
                if case .timeout = error.code { continue }
                let text = "\(error)"
                if text != lastError { report(.notice, "replication connection refused: \(text)") }
                lastError = text
                continue
            }
            let th = Thread { [weak self] in self?.serve(t) }
            th.name = "vm-replica"
            th.start()
        }
    }

    func serve(_ t: RhizomorphReplicationTransport) {
        do {
            let a = try t.receiveAttach(timeout: 5)
            let rep = try lock.withLock { () throws -> Replica in
                guard let rep = replicas[a.name] else { throw VMDriverError("this node holds no replica of '\(a.name)'") }
                guard a.ownershipEpoch == rep.record.epoch, peer(rep.record.primary)?.key == t.peerKey else {
                    throw VMDriverError("'\(a.name)' at ownership epoch \(a.ownershipEpoch) from a node that is not its primary at epoch \(rep.record.epoch)")
                }
                rep.transport = t
                return rep
            }
            let end = rep.receiver.serve(t)
            report(.notice, "VM \(a.name): replication session ended: \(end) (image at epoch \(rep.receiver.committedEpoch))")
        } catch {
            report(.notice, "replication connection refused: \(error)")
            t.close()
        }
    }

    // MARK: destroy

    func destroy(_ name: String, reason: String) throws {
        let (p, r) = lock.withLock { (primaries.removeValue(forKey: name), replicas.removeValue(forKey: name)) }
        if let p {
            stopReplication(p)
            p.gate?.detach(flush: false)
        }
        lock.withLock { r?.transport }?.close()
        forgetDeadline(name)
        try host.remove(name)
        try? FileManager.default.removeItem(atPath: imagePath(name))
        try? FileManager.default.removeItem(atPath: replicaStatePath(name))
        report(.destroyed, "VM \(name): copy here destroyed: \(reason)")
    }

    // MARK: checks

    /// Checks a spec on this node before the network records it here: the kernel and initrd can be
    /// read, and libvirt accepts the domain's definition (defined under a throwaway name, then
    /// undefined at once). Throws what is wrong, in libvirt's words where it is libvirt's.
    public func validate(_ spec: VMSpec) throws {
        for (what, path) in [("kernel", spec.kernel), ("initrd", spec.initrd)] where !path.isEmpty {
            guard access(path, R_OK) == 0 else {
                throw VMDriverError("the \(what) '\(path)' cannot be read on this node (\(String(cString: strerror(errno)))); every host that may run the VM needs it at that path")
            }
        }
        var disk: VMDiskSource?
        if !spec.disk.isEmpty {
            guard let d = settings.diskSource(spec.disk) else { throw Self.unresolvedDisk(spec) }
            if case let .rbd(_, _, conf, _) = d, access(conf, R_OK) != 0 {
                throw VMDriverError("VM \(spec.name): the Ceph conf '\(conf)' of its disk '\(spec.disk)' cannot be read on this node (\(String(cString: strerror(errno))))")
            }
            if case let .file(path) = d, access(path, R_OK | W_OK) != 0 {
                throw VMDriverError("VM \(spec.name): the file '\(path)' of its disk '\(spec.disk)' cannot be read and written on this node (\(String(cString: strerror(errno))))")
            }
            disk = d
        }
        var probe = spec
        probe.name = "mycelium-check-\(UInt32.random(in: 0...UInt32.max))"
        let xml = try EndophyteDomainXML.make(probe, EndophyteDomainConfig(role: .primary, ownershipEpoch: 0, serialLog: serialLog(probe.name), disk: disk))
        do {
            let d = try host.connection.define(xml: xml)
            try? d.undefine()
        } catch {
            throw VMDriverError("libvirt refuses this VM: \(error.message)")
        }
    }

    /// Writes `region` to `path` (through a temporary file and a rename: a crash leaves the old
    /// file or the new one, and either is only a base for a resync).
    static func saveBase(_ region: MappedRegion, to path: String) throws {
        let tmp = path + ".base"
        let fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VMDriverError("cannot create \(tmp): \(String(cString: strerror(errno)))") }
        var done = 0
        while done < region.length {
            let n = write(fd, region.base + done, min(region.length - done, 8 << 20))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let e = String(cString: strerror(errno))
                Glibc.close(fd); unlink(tmp)
                throw VMDriverError("cannot write \(tmp): \(e)")
            }
            done += n
        }
        Glibc.close(fd)
        guard rename(tmp, path) == 0 else {
            let e = String(cString: strerror(errno))
            unlink(tmp)
            throw VMDriverError("cannot rename \(tmp): \(e)")
        }
    }

    // MARK: paths

    /// The address replication leaves from: the listen host, or any when it is a wildcard (the
    /// kernel then picks by route, in the remote's address family).
    var localAddress: String { ["", "0.0.0.0", "::"].contains(settings.listenHost) ? "" : settings.listenHost }

    func imagePath(_ name: String) -> String { settings.stateDirectory + "/" + name + ".ram" }
    /// The replica's journal: which committed epoch its image holds (ReplicaStateFile).
    func replicaStatePath(_ name: String) -> String { settings.stateDirectory + "/" + name + ".replica" }
    func serialLog(_ name: String) -> String { settings.stateDirectory + "/" + name + ".serial" }
    func shimReport(_ name: String) -> String? { settings.shimLibrary == nil ? nil : settings.stateDirectory + "/" + name + ".shim" }
    /// The direct QMP monitor's socket, beside the serial log; none when the path is too long for
    /// a Unix socket (the checkpoint then goes through libvirt's passthrough).
    func controlSocket(_ name: String) -> String? {
        let path = settings.stateDirectory + "/" + name + ".qmp"
        return EndophyteDomainXML.controlSocketProblem(path) == nil ? path : nil
    }

    func domainConfig(_ r: VMRecord, role: EndophyteRole) throws -> EndophyteDomainConfig {
        var disk: VMDiskSource?
        if !r.spec.disk.isEmpty {
            guard let d = settings.diskSource(r.spec.disk) else { throw Self.unresolvedDisk(r.spec) }
            disk = d
        }
        return EndophyteDomainConfig(role: role, ownershipEpoch: r.epoch, serialLog: serialLog(r.name),
                                     shim: settings.shimLibrary.map { DirtyPageShim(library: $0, report: shimReport(r.name)!) },
                                     nic: Self.nic(for: r.name), controlSocket: controlSocket(r.name), disk: disk)
    }

    /// Every endophyte gets one virtio NIC on a tap named after the VM (`myc` + 8 hex digits of a
    /// hash of its name, the same on every host); wiring the tap is the host's business.
    static func nic(for name: String) -> GuestNIC {
        var h: UInt32 = 0x811c_9dc5
        for b in name.utf8 { h = (h ^ UInt32(b)) &* 0x0100_0193 }
        let hex = String(h, radix: 16)
        return GuestNIC(mac: GuestNIC.mac(for: name), tap: "myc" + String(repeating: "0", count: 8 - hex.count) + hex)
    }
}

public struct VMDriverError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}
