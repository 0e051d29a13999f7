// The node agent: a thin shell around the pure cores.
//
// It owns the sockets (PeerRouter.swift), the disk (WAL, latent and seed spores, own votes) and the
// clock (a tick task), and drives the pure values:
//   - `Raft` (MyceliumRaft), through the Ready loop below — the one place where persist → send →
//     apply → advance is enforced;
//   - `ControlState` (MyceliumControl): what Raft replicates (spore, KV, pod CIDRs);
//   - `Governor` (MyceliumControl): failure detection, the vote, reconcile, handoff, admissions —
//     its effects are carried out in AgentGovernance.swift;
//   - controllers (ControllerHost.swift), one per subsystem, each with its own driver.
// Nothing here decides who fails, who leads or who owns what: that is all in the pure cores, which
// the simulator (MyceliumSim) runs without this shell.

import Foundation
import Logging
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import MyceliumTransport
import MyceliumVote
import MyceliumWAL
import MembershipController
import VMController
import VMDriver
import ServiceController
import ServiceDriver
import ServiceDNS
import NetworkController
import NetworkDriver
import K3sController
import K3sDriver
import StorageController
import StorageDriver
import NIOCore
import NIOPosix

/// Files in the node's home directory.
public struct AgentPaths: Sendable {
    public let home: String
    public var nodeKey: String { home + "/node.key" }
    public var nodeCert: String { home + "/node.cert" }
    public var networkKey: String { home + "/network.key" }
    public var raftDir: String { home + "/raft" }
    public var latentSpore: String { home + "/latent.spore" }
    /// Written by `mycelium node join`: the inviter's addresses, tried when there is no latent spore.
    public var joinPeers: String { home + "/join.peers" }
    /// This node's own votes, written before they are sent (a restart must never vote twice).
    public var votesDir: String { home + "/votes" }
    public init(home: String) { self.home = home }
}

public struct AgentError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

public actor Agent {
    public let config: AgentConfig
    /// What this node can run (fingerprinted at start; announced in every refresh).
    let features: CapabilityFeatures
    /// Replication endpoints of the members, for the VM driver's threads.
    let vmPeers: ReplicationPeerBook
    /// This node's VM driver (nil: libvirt did not answer at start).
    let vmDriver: EndophyteDriver?
    /// What the driver's threads reported since the last tick.
    let vmEvents: VMEventInbox
    /// This node's service driver (nil: its state directory could not be set up).
    let serviceDriver: ProcessServiceDriver?
    let volumeDriver: VolumeDriver?
    let volumeBook: VolumeBook
    /// This node's K3s driver (nil: no k3s binary; K3sHosting.swift).
    let k3sDriver: K3sDriver?
    /// Where this agent answers DNS for *.service.mycelium ("" when it does not).
    var dnsAddress = ""
    var dnsServer: DNSServer?
    /// DNS for this node's pods (on the node's address, port 53), when it drives a datapath.
    var podDNSServer: DNSServer?
    /// Whether this node drives its eBPF datapath (the route controller is hosted).
    var drivesDatapath = false
    let serviceEndpoints = ServiceEndpointsView()
    /// The peers this agent's failure detector suspected when DNS last followed it.
    var suspectedForServices: Set<UInt64> = []
    /// Peers whose link from here lost its connection, with the tick it was first seen lost.
    var linkLostSince: [UInt64: UInt64] = [:]
    /// Ticks a lost link must stay lost before DNS leaves its node's instances out (a reconnect
    /// within this grace hides nothing).
    static let linkLossTicks: UInt64 = 2
    let vmInstruments = VMInstruments()
    let paths: AgentPaths
    let logger: Logger
    let key: SigningKey
    /// This node's certificate, chain and revocations, readable off the actor (Membership.swift).
    let identity: IdentityView
    let nodeID: MyceliumIdentity.NodeID
    let network: NetworkIdentity
    let me: UInt64
    /// Held by the genesis node while `network.key` is in its home: signs generation 0 (the founders'
    /// certificates and the first sclerotia link).
    let genesisKey: SigningKey?
    var joinAuthority: NetworkJoinAuthority?

    // The pure cores.
    var raft: Raft
    var control: ControlState
    var governor: Governor
    var controllers: ControllerHost
    /// Randomness for the governor (vote salts must be unpredictable: the system's CSPRNG).
    var random = SystemRandomNumberGenerator()

    let wal: WriteAheadLog
    let group: EventLoopGroup
    /// Links to peers, contacts and the listener (PeerRouter.swift).
    var router = RouterState()
    var tickTask: Task<Void, Never>?
    var reportTask: Task<Void, Never>?
    var api: APIServer?
    var metricsServer: APIServer?

    // Shell timers and caches.
    var ticks: UInt64 = 0
    var lastRefresh: UInt64 = 0
    var lastSeedWrite = 0.0
    /// When this node last took a scheduled backup (Unix ms; nil: not looked yet; Backups.swift).
    var lastBackupMillis: Int64?
    var seedEpochWritten = SporeEpoch.zero
    var serviceSpores = ServiceSporeWriter()
    var lastLatentSave = SporeEpoch.zero
    var confirmed: Set<String> = []
    /// Set first by `stop()`: nothing may touch the WAL or the network after it.
    var stopped = false
    var startedAt = Date()
    /// The controllers' clock (`ControllerContext.millis`) counts from here.
    let monotonicStart = ContinuousClock.now
    var events: [String] = []
    /// The number of the latest event (`GET /v1/events?after=`): events[i] is number eventSeq - events.count + 1 + i.
    var eventSeq: UInt64 = 0
    var voteTimings: [UInt64: VoteTiming] = [:]
    let instruments = AgentInstruments()
    var lastLeader: UInt64 = 0

    // The replicated KV's clients (KV.swift).
    var pendingPuts: [(KVOperation, CheckedContinuation<KVResult, Error>)] = []
    var flushScheduled = false
    var kvWaiters: [UInt64: (term: UInt64, waiters: [CheckedContinuation<KVResult, Error>])] = [:]
    var readWaiters: [UInt64: ReadWaiter] = [:]
    var nextReadContext: UInt64 = 1
    var forwardWaiters: [UInt64: CheckedContinuation<KVAnswer, Never>] = [:]
    /// Commands sent to another node to propose (see `proposalRoute`).
    var proposalsSent = 0
    var kvServer: KVServer?

    public var spore: PrimarySpore { control.spore }
    public var fallback: String? { governor.fallback }
    var ticksPerSecond: UInt64 { UInt64(max(1, 1000 / config.tickMilliseconds)) }

    public init(config: AgentConfig, logger: Logger, behaviour: any VoterBehaviour = HonestVoter(),
                group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) throws {
        // Everything is computed into locals first, then stored (an actor's init may not read its state).
        let paths = AgentPaths(home: config.home)
        guard AtomicFile.exists(paths.nodeKey) else {
            throw AgentError("no node identity in \(config.home); run 'mycelium identity init --home \(config.home)'")
        }
        let key = try KeyFile.read(from: paths.nodeKey)
        guard AtomicFile.exists(paths.nodeCert) else {
            throw AgentError("this node is not a member of a network (\(paths.nodeCert) missing); run 'mycelium network create' or 'mycelium node join INVITE'")
        }
        let certificate = try MembershipCertificate(decoding: ChecksummedFile.read(kind: FileKind.membershipCertificate, from: paths.nodeCert))
        try Self.checkNotExpired(certificate, paths: paths, now: Int64(Date().timeIntervalSince1970))
        let network = NetworkIdentity(genesisKey: certificate.genesisKey)
        let me = certificate.nodeID.compact
        var authority: SigningKey?
        if AtomicFile.exists(paths.networkKey) {
            authority = try KeyFile.read(from: paths.networkKey, kind: FileKind.networkSecretKey)
            if authority?.publicKey != network.genesisKey {
                throw AgentError("\(paths.networkKey) holds the genesis key of another network than \(paths.nodeCert); remove the stray file")
            }
        }
        try AtomicFile.makeDirectory(paths.raftDir)
        let (wal, recovery) = try WriteAheadLog.open(directory: paths.raftDir)
        if let t = recovery.truncatedTail {
            logger.warning("WAL had a torn tail from a crash; truncated it", metadata: ["file": "\(t.path)", "offset": "\(t.offset)", "bytes": "\(t.bytes)"])
        }
        var storage = recovery.state
        let fresh = storage.hardState == HardState() && storage.entries.isEmpty && storage.snapshot == nil
        // A node that was a member (it has a latent spore) but whose Raft log is gone may have voted in
        // a term it no longer remembers: starting it could let it vote twice in one term and elect two
        // leaders. etcd has the same hazard with a lost data dir; refuse instead of risking it.
        if fresh && authority == nil && AtomicFile.exists(paths.latentSpore) {
            throw AgentError("""
                this node was a member (\(paths.latentSpore) exists) but its Raft log in \(paths.raftDir) is empty or \
                missing; starting it could let it vote twice in one term. Wait until another node's 'mycelium status' \
                shows this node failed (or it left), then remove \(paths.latentSpore) and start again: it rejoins as a new replica.
                """)
        }
        if fresh && authority != nil {
            storage = RaftStorageState.bootstrap(voters: [me])
            try wal.save(hardState: storage.hardState, entries: storage.entries)
        }
        var seed = SeededRandom(seed: Sodium.randomBytes(8).reduce(0) { $0 << 8 | UInt64($1) })
        let raft = try Raft(config: RaftConfig(id: me, electionTicks: config.electionTicks, heartbeatTicks: config.heartbeatTicks),
                            storage: storage, random: &seed)
        var control = ControlState(network: network)
        if let s = storage.snapshot, !s.data.isEmpty {
            do {
                control = try ControlState.restore(s.data, network: network)
            } catch {
                throw AgentError("""
                    the Raft snapshot in \(paths.raftDir) cannot be restored (\(error)); this node cannot rebuild its \
                    state from it. Restore the directory from a backup, or remove \(paths.raftDir) and \(paths.latentSpore) \
                    once the others record this node failed, so it rejoins as a new replica.
                    """)
            }
        }
        var settings = GovernorSettings()
        settings.handoffMembers = config.handoffMembers
        settings.sclerotia = config.sclerotia
        settings.ticksPerSecond = UInt64(max(1, 1000 / config.tickMilliseconds))
        settings.votePhaseTicks = UInt32(max(1, config.votePhaseMilliseconds / config.tickMilliseconds))
        settings.detector.suspicionTimeout = max(1, config.suspicionMilliseconds / config.tickMilliseconds)
        settings.fallbackSeconds = config.fallbackSeconds
        settings.voteRetentionTicks = UInt64(max(1, 60_000 / config.tickMilliseconds))
        var governor = Governor(me: me, certificate: certificate, key: key, settings: settings, behaviour: behaviour,
                                storedVotes: Self.loadOwnVotes(paths.votesDir, logger: logger))
        governor.restored(state: control)
        let pods = PodNetworkSettings(pool: CIDR(config.podCIDRPool) ?? PodNetworkSettings.defaultPool,
                                      nodePrefix: UInt8(config.podCIDRNodePrefix))

        // What this node can run, found once at start (as Nomad fingerprints its drivers): VMs if
        // the libvirt daemon at libvirt_uri answers.
        let vmPeers = ReplicationPeerBook()
        vmPeers.update(from: control.spore, port: config.vmReplicationPort)
        let vmEvents = VMEventInbox()
        let volumeBook = VolumeBook(me: certificate.nodeID, config: config)
        volumeBook.update(control.volumes)
        self.volumeBook = volumeBook
        let (vmDriver, noVMs) = Self.makeVMDriver(config, key: key, network: network.id, peers: vmPeers, volumes: volumeBook,
                                                  inbox: vmEvents, logger: logger)
        let features: CapabilityFeatures = vmDriver == nil ? [] : .libvirt

        let (serviceDriver, noServices) = Self.makeServiceDriver(config, logger: logger, volumes: volumeBook)
        self.serviceDriver = serviceDriver
        let volumeDriver = Self.makeVolumeDriver(config, logger: logger)
        self.volumeDriver = volumeDriver
        let (k3sSettings, k3sDriver) = Self.makeK3s(config, logger: logger)
        self.k3sDriver = k3sDriver
        self.config = config
        self.features = features
        self.vmPeers = vmPeers
        self.vmDriver = vmDriver
        self.vmEvents = vmEvents
        self.paths = paths
        self.logger = logger
        self.group = group
        self.key = key
        let identity = IdentityView(key: key, certificate: certificate)
        identity.update(from: control.spore, me: certificate.nodeID)
        if identity.certificate != certificate { governor.present(identity.certificate) }
        self.identity = identity
        self.nodeID = certificate.nodeID
        self.network = network
        self.me = me
        self.genesisKey = authority
        self.wal = wal
        self.raft = raft
        self.control = control
        self.governor = governor
        self.controllers = ControllerHost(logger: logger)
        self.controllers.host(PodCIDRController(settings: pods), driver: PodCIDRFile(path: config.podCIDRFilePath))
        if let (routes, driver) = Self.makeDatapath(config, logger: logger) {
            self.controllers.host(routes, driver: driver)
            self.drivesDatapath = true
        }
        self.controllers.host(MembershipController(key: key, certificate: identity.certificate, genesis: authority),
                              driver: CertificateFile(path: paths.nodeCert))
        let vms = VMController(run: UInt64.random(in: 1...UInt64.max >> 1) << 16)
        if let vmDriver { self.controllers.host(vms, driver: vmDriver) } else { self.controllers.host(vms, driver: NoVMDriver(reason: noVMs)) }
        let services = ServiceController(settings: Self.serviceSettings(config, driver: serviceDriver, k3s: k3sDriver != nil), run: UInt64.random(in: 1...UInt64.max >> 1) << 16)
        if let serviceDriver { self.controllers.host(services, driver: serviceDriver) } else {
            self.controllers.host(services, driver: NoServiceDriver(reason: noServices))
        }
        if let k3sDriver { self.controllers.host(K3sController(settings: k3sSettings), driver: k3sDriver) } else {
            self.controllers.host(K3sController(settings: k3sSettings), driver: NoK3sDriver())
        }
        let volumes = VolumeController(settings: Self.volumeSettings(config))
        if let volumeDriver { self.controllers.host(volumes, driver: volumeDriver) } else {
            self.controllers.host(volumes, driver: NoVolumeDriver(reason: "HOME/volumes cannot be made; see the agent's log"))
        }
        self.router.nodeIDs = [me: certificate.nodeID]
    }

    // MARK: lifecycle

    public func start() async throws {
        loadLatentSpore()
        if let peers = try? String(contentsOfFile: paths.joinPeers, encoding: .utf8) {
            for a in peers.split(separator: "\n") where !a.isEmpty { addContact(String(a)) }
        }
        for a in config.join { addContact(a) }
        if router.contactLinks.isEmpty && router.addressHints.isEmpty && !(config.seedDirs.isEmpty && config.seedURLs.isEmpty) {
            await readSeedSpores(reason: "cold start")
        }
        try await startListener()
        api = try await APIServer.start(path: config.apiSocketPath, agent: self, group: group)
        if let (kh, kp) = splitAddress(config.clientListen) {
            let tls = try KVServer.tlsContext(config)
            do {
                kvServer = try await KVServer.start(host: kh, port: kp, agent: self, group: group, tls: tls)
            } catch {
                throw AgentError("cannot serve clients on \(config.clientListen): \(error); choose another client_listen or leave it empty")
            }
        }
        try await startDNS()
        await startPodDNS()
        if let (mh, mp) = splitAddress(config.metricsListen) {
            do {
                metricsServer = try await APIServer.startMetrics(host: mh, port: mp, agent: self, group: group)
            } catch {
                throw AgentError("cannot serve metrics on \(config.metricsListen): \(error); choose another metrics_listen or leave it empty")
            }
        }
        logger.info("agent started", metadata: ["node": "\(nodeID)", "network": "\(network.id)",
                                                "listen": "\(config.listen)", "raft_id": "\(me)"])
        note("started; listening on \(config.listen)")
        // The only voter of its group (a new network's genesis node) need not wait for a timeout.
        if raft.confState.voters == [me] && raft.role != .leader {
            raft.campaignNow()
            processReady()
            if raft.role == .leader && spore.members[nodeID] == nil {
                submit(.admit(certificate))
                processReady()
            }
        }
        // Drivers' reports reach their controllers in the order they were made, at once (a VM
        // handed over waits paused for what its controller does with the report).
        let (reports, sink) = AsyncStream.makeStream(of: (String, any Sendable).self)
        controllers.attach { name, report in sink.yield((name, report)) }
        reportTask = Task { [weak self] in
            for await (name, report) in reports { await self?.controllerReported(report, by: name) }
        }
        let tickNs = UInt64(config.tickMilliseconds) * 1_000_000
        tickTask = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: tickNs)
                await self?.onTick()
            }
        }
    }

    public func stop() async {
        stopped = true
        tickTask?.cancel()
        reportTask?.cancel()
        await stopRouter()
        await api?.close()
        await metricsServer?.close()
        await kvServer?.close()
        failKVClients("agent stopping")
        vmDriver?.close()
        await dnsServer?.close()
        await podDNSServer?.close()
        await serviceDriver?.stopAll()
        await k3sDriver?.stopAll()
        wal.close()
        note("stopped")
        logger.info("agent stopped")
    }

    nonisolated var credentials: NodeCredentials { identity.credentials }
    /// The certificate this node presents now (the newest the network issued it).
    nonisolated var certificate: MembershipCertificate { identity.certificate }

    func note(_ s: String, log: Bool = true) {
        let stamp = String(format: "%.3f", Date().timeIntervalSince(startedAt))
        events.append("+\(stamp)s \(s)")
        eventSeq += 1
        if events.count > 200 { events.removeFirst(events.count - 200) }
        // The events are logged too, with the workload or member they name as fields (JSON logs).
        if log { logger.info("\(s)", metadata: JSONLogLine.subjects(in: s).mapValues { .string($0) }.merging(["event": "true"]) { a, _ in a }) }
    }

    // MARK: ticks and Ready

    func controllerReported(_ report: any Sendable, by name: String) {
        guard !stopped else { return }
        carry(controllers.reported(report, by: name, context: controllerContext))
        processReady()
    }

    func onTick() {
        drainVMEvents()
        guard !stopped else { return }
        ticks += 1
        raft.tick()
        carry(governor.tick(raft: raft, state: control, lostConnections: lostConnections(), using: &random))
        carry(controllers.tick(context: controllerContext))
        followSuspicions()
        if ticks % ticksPerSecond == 0 {
            everySecond(); updateGauges()
        }
        if raft.leader != lastLeader {
            if raft.leader != .none { instruments.leaderChanges.increment() }
            logger.notice(raft.leader == .none ? "no leader" : "leader changed",
                          metadata: ["term": "\(raft.term)", "peer": "\(router.nodeIDs[raft.leader].map { "\($0)" } ?? (raft.leader == me ? "\(nodeID)" : "\(raft.leader)"))",
                                     "role": "\(raft.role)"])
            lastLeader = raft.leader
            if raft.role != .leader { failReadWaiters("leadership changed; retry") }
        }
        // Every 10 s, and within a second when the spore does not hold what this node offers yet (just
        // admitted, or memory changed): placement reads capabilities from the spore.
        if let me = spore.members[nodeID],
           ticks - lastRefresh >= 10 * ticksPerSecond || (ticks - lastRefresh >= ticksPerSecond && me.capabilities != localCapabilities()) {
            lastRefresh = ticks
            submit(.refresh(localCapabilities()))
        }
        processReady()
    }

    /// Slow housekeeping of the shell: retire introductions, confirm the addresses we reached, and
    /// (leader) publish a seed spore that a rate-limited write skipped.
    func everySecond() {
        if raft.role == .leader { writeSeedSpores(force: false) }
        writeServiceSpores()
        scheduledBackup()
        checkOwnCertificate()
        let admitted = spore.members[nodeID].map { $0.status == .alive || $0.status == .suspect } ?? false
        if admitted && !router.contactLinks.isEmpty && !router.links.isEmpty {
            // Admitted and connected through the spore's addresses: the introductions are done.
            for l in router.contactLinks.values { l.stop() }
            router.contactLinks = [:]
        }
        for (id, link) in router.links {
            guard let a = link.connectedAddress, let node = router.nodeIDs[id], let m = spore.members[node], !m.addresses.contains(a),
                  spore.members[nodeID] != nil else { continue }
            if confirmed.insert("\(id)@\(a)@\(spore.epoch.term)").inserted { submit(.confirmAddress(node: node, address: a)) }
        }
    }

    /// Carries out every Ready in the contract's order: persist, then send, then apply, then advance.
    func processReady() {
        guard !stopped else { return }
        while raft.hasReady {
            let rd = raft.ready()
            // A leader may send its appends before its own fsync (thesis §10.2.1): it counts itself
            // towards a quorum only for entries on its own disk, so the disk writes overlap. Everyone
            // else persists first (a vote or an acknowledgement must never outrun the disk).
            let sendEarly = raft.role == .leader
            if sendEarly { for m in rd.messages { send(m) } }
            do {
                try wal.save(rd)
                instruments.walSaves.increment()
            } catch {
                // Without durable storage we must not acknowledge anything: stop loudly.
                logger.critical("cannot write the Raft log; stopping", metadata: ["error": "\(error)"])
                fatalError("WAL write failed: \(error)")
            }
            if !sendEarly { for m in rd.messages { send(m) } }
            if let s = rd.snapshot { restore(s) }
            for e in rd.committedEntries where e.kind == .normal { apply(e) }
            let confChanged = rd.committedEntries.contains { $0.kind == .confChange }
            raft.advance(rd)
            answerReads(rd.readStates)
            if raft.role != .leader && !kvWaiters.isEmpty { answerKVWaiters(applied: nil, results: []) }
            carry(governor.readyApplied(confChanged: confChanged, raft: raft, state: control))
        }
        maybeCompact()
    }

    /// A snapshot from the leader replaces the whole state. One that cannot be restored is fatal,
    /// as a failed WAL write is: running on without the state would answer from a wrong one.
    func restore(_ s: Snapshot) {
        guard !s.data.isEmpty else { return }
        do {
            let restored = try ControlState.restore(s.data, network: network)
            keepStateIfNewer(than: restored)
            control = restored
        } catch {
            logger.critical("cannot restore the snapshot the leader sent; stopping", metadata: ["index": "\(s.metadata.index)", "error": "\(error)"])
            fatalError("snapshot restore failed at index \(s.metadata.index): \(error)")
        }
        governor.restored(state: control)
        volumeBook.update(control.volumes)
        carry(controllers.applied([.restored], context: controllerContext))
        refreshServiceEndpoints()
        sporeChanged()
    }

    func apply(_ e: Entry) {
        var changes: [ControlChange] = []
        var isSpore = false
        do {
            changes = try control.apply(e)
            isSpore = changes.contains { if case .spore = $0 { return true } else { return false } }
        } catch {
            // Every replica refuses the same entry in the same way; nothing to undo.
            if case .refused = error.code, case .spore(let signed, _)? = try? ControlEntry.decode(e.data) {
                isSpore = true
                carry(governor.refused(signed, error))
                logger.debug("committed command refused", metadata: ["index": "\(e.index)", "reason": "\(error)"])
            } else {
                logger.error("committed entry skipped", metadata: ["index": "\(e.index)", "reason": "\(error)"])
            }
        }
        answerKVWaiters(applied: e, results: changes.kvResults)
        if !changes.isEmpty {
            carry(governor.applied(changes, raft: raft, state: control, using: &random))
            if changes.contains(where: { if case .volume = $0 { true } else { false } }) { volumeBook.update(control.volumes) }
            carry(controllers.applied(changes, context: controllerContext))
            if Self.touchesServices(changes) { refreshServiceEndpoints() }
        }
        if isSpore { sporeChanged() }
    }

    /// Keeps the address book and the local caches in step with the spore.
    func sporeChanged() {
        identityChanged()
        for m in spore.members.values {
            let id = m.id.compact
            router.nodeIDs[id] = m.id
            if !m.addresses.isEmpty {
                let merged = m.addresses + (router.addressHints[id] ?? []).filter { !m.addresses.contains($0) }
                router.addressHints[id] = merged
                router.links[id]?.setAddresses(merged)
            }
        }
        if spore.epoch.index >= lastLatentSave.index + 1 || spore.epoch.term != lastLatentSave.term {
            saveLatentSpore()
        }
        if raft.role == .leader { writeSeedSpores(force: false) }
    }

    var controllerContext: ControllerContext {
        ControllerContext(node: nodeID, isLeader: raft.role == .leader, state: control, tick: ticks, ticksPerSecond: ticksPerSecond,
                          millis: UInt64((ContinuousClock.now - monotonicStart) / .milliseconds(1)))
    }

    // MARK: proposals

    /// Signs a command and gets it proposed: directly when leader, else through the leader.
    func submit(_ command: SporeCommand) {
        propose(SignedCommand(command, author: nodeID, key: key, network: network.id))
    }

    func propose(_ signed: SignedCommand) {
        if raft.role == .leader {
            do {
                _ = try raft.propose(ControlEntry.spore(signed, millis: Int64((Date().timeIntervalSince1970 * 1000).rounded(.down))).encoded())
            } catch {
                logger.debug("proposal refused", metadata: ["reason": "\(error)"])
            }
        } else {
            proposalsSent += 1
            if let to = proposalRoute(me: raft.id, leader: raft.leader, silentTicks: raft.ticksSinceLeader, patience: 2 * raft.config.electionTicks,
                                      sclerotia: control.spore.sclerotia, attempt: proposalsSent) {
                sendPeer(to, .propose(signed))
            }
        }
    }

    /// An entry only the leader proposes (a controller's): dropped on a follower, whose own
    /// controller is not the one that decides.
    func proposeAsLeader(_ entry: ControlEntry) {
        guard raft.role == .leader else { return }
        var entry = entry
        // A controller's service entry gets this leader's time, as spore entries do.
        if case .service(let command, 0) = entry { entry = .service(command, millis: Self.wallMillis()) }
        if case .volume(let command, 0) = entry { entry = .volume(command, millis: Self.wallMillis()) }
        do { _ = try raft.propose(entry.encoded()) } catch {
            logger.debug("proposal refused", metadata: ["reason": "\(error)"])
        }
    }

    func maybeCompact() {
        // The control state is small; keep the log short so a restart replays little.
        guard raft.appliedIndex > raft.firstIndex + 10_000 else { return }
        do {
            try raft.compact(upTo: raft.appliedIndex, snapshotData: control.snapshot())
            if let s = raft.latestSnapshot { try wal.compact(with: s) }
        } catch {
            logger.warning("log compaction failed", metadata: ["error": "\(error)"])
        }
    }

    func localCapabilities() -> Capabilities {
        Capabilities(cpus: UInt16(ProcessInfo.processInfo.activeProcessorCount),
                     memoryMiB: UInt32(ProcessInfo.processInfo.physicalMemory >> 20), diskGiB: 0, features: features)
    }

}

extension Array where Element == ControlChange {
    var kvResults: [KVResult] {
        for c in self { if case .kv(_, let r) = c { return r } }
        return []
    }
}
