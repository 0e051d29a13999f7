// The node agent: the shell around the pure cores.
//
// It owns the sockets (PeerListener, PeerLinks), the disk (WAL, latent spore, seed spores) and the
// clock (a tick task), and drives three pure values: `Raft`, the `PrimarySpore` it replicates, and
// the `FailureDetector`. Every Raft `Ready` is carried out in the contract's order: persist (fsync),
// then send, then apply, then advance.
//
// Governance, in order of a network's life:
//  1. bootstrap: the genesis node is the only Raft voter; it admits nodes by invite, and each
//     admitted node joins the Raft group as a learner;
//  2. handoff: once `handoff_members` are present, the leader promotes caught-up, eligible
//     learners to voters (one at a time), records them as sclerotia, and commits `handoff`;
//  3. distributed: the leader keeps `sclerotia` voters, replacing failed ones.

import Foundation
import Logging
import MyceliumCore
import MyceliumIdentity
import MyceliumMembership
import MyceliumRaft
import MyceliumSpores
import MyceliumTransport
import MyceliumVote
import MyceliumWAL
import NIOCore
import NIOPosix

/// Application frame types on agent channels.
enum AgentFrame {
    static let raft: UInt8 = 16
    /// A node asks to be admitted: SignedCommand(.admit) + its advertised address.
    static let join: UInt8 = 17
    /// A member asks the leader to propose a signed command.
    static let propose: UInt8 = 18
    /// First frame on a link: sender's raft id and advertised address.
    static let hello: UInt8 = 19
    static let probe: UInt8 = 20
    /// A member reports a failure candidate to the leader.
    static let report: UInt8 = 21
    /// A Byzantine-tolerant vote message (commit, reveal or summary), see AgentVotes.swift.
    static let vote: UInt8 = 22
}

/// Files in the node's home directory.
public struct AgentPaths: Sendable {
    public let home: String
    public var nodeKey: String { home + "/node.key" }
    public var nodeCert: String { home + "/node.cert" }
    public var networkKey: String { home + "/network.key" }
    public var inviteLedger: String { home + "/invites.ledger" }
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
    let paths: AgentPaths
    let logger: Logger
    let key: SigningKey
    let certificate: MembershipCertificate
    let network: NetworkIdentity
    let me: UInt64
    let genesisAuthority: GenesisJoinAuthority?

    var raft: Raft
    let wal: WriteAheadLog
    var spore: PrimarySpore
    var rng: SeededRandom
    var detector: FailureDetector<UInt64>

    var links: [UInt64: PeerLink] = [:]
    /// Addresses we may dial, by raft id: confirmed ones from the spore, then hints (hello, join, latent).
    var addressHints: [UInt64: [String]] = [:]
    var nodeIDs: [UInt64: MyceliumIdentity.NodeID] = [:]
    var contactLinks: [String: PeerLink] = [:]
    var listener: PeerListener?
    let group: EventLoopGroup
    var tickTask: Task<Void, Never>?
    var api: APIServer?
    var metricsServer: APIServer?

    // Leader bookkeeping.
    var pendingConfChange: UInt64 = 0
    var lastGovernanceProposal: UInt64 = 0
    var lastGovernanceIndex: UInt64 = 0
    var reconcileSoon = false
    var failureReports: [UInt64: Set<UInt64>] = [:]
    var confirmed: Set<String> = []
    var proposedAdmits: [UInt64: Int64] = [:]
    /// Peers we have received a frame from. Only these are probed: a node that never reached us
    /// (still dialling, just admitted) is not suspected by us; others who do hear it will judge.
    var heardFrom: Set<UInt64> = []

    // Timers, in ticks.
    var ticks: UInt64 = 0
    var lastRefresh: UInt64 = 0
    var lastSeedWrite = 0.0
    var seedEpochWritten = SporeEpoch.zero
    var lastLatentSave = SporeEpoch.zero
    var lastLeaderSeen: UInt64 = 0
    public private(set) var fallback: String?
    /// Set first by `stop()`: nothing may touch the WAL or the network after it.
    var stopped = false
    var startedAt = Date()
    var events: [String] = []

    // Byzantine-tolerant votes (AgentVotes.swift).
    var votes: VoteInstance
    var voteRounds: [RoundID: UInt64] = [:]
    var earlyVoteMessages: [RoundID: [VoteMessage]] = [:]
    var earlyVoteSince: [RoundID: UInt64] = [:]
    var lastVoteOpened: [UInt64: UInt64] = [:]
    var voteFallbackNoted: Set<String> = []
    var pendingChecks: [UInt64: PendingCheck] = [:]
    var voteTimings: [UInt64: VoteTiming] = [:]
    let instruments = AgentInstruments()
    // The replicated KV (KV.swift).
    var kv = KVState()
    var pendingPuts: [(String, [UInt8], CheckedContinuation<UInt64, Error>)] = []
    var flushScheduled = false
    var kvWaiters: [UInt64: (term: UInt64, waiters: [CheckedContinuation<UInt64, Error>])] = [:]
    var kvServer: KVServer?
    var lastLeader: UInt64 = 0
    /// The tick at which a frame last arrived from each peer.
    var lastHeard: [UInt64: UInt64] = [:]

    public init(config: AgentConfig, logger: Logger, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) throws {
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
        let network = NetworkIdentity(genesisKey: certificate.issuerKey)
        let me = certificate.nodeID.compact
        var authority: GenesisJoinAuthority?
        if AtomicFile.exists(paths.networkKey) {
            let genesis = try KeyFile.read(from: paths.networkKey, kind: FileKind.networkSecretKey)
            authority = GenesisJoinAuthority(genesis: genesis, ledger: try InviteLedger(path: paths.inviteLedger))
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
        let rng = seed.fork()
        let raft = try Raft(config: RaftConfig(id: me, electionTicks: config.electionTicks, heartbeatTicks: config.heartbeatTicks),
                            storage: storage, random: &seed)
        var spore = PrimarySpore(network: network)
        var kvState = KVState()
        if let s = storage.snapshot, !s.data.isEmpty {
            let (sporeBytes, restored) = try KVState.restore(s.data)
            spore = try PrimarySpore(decoding: sporeBytes)
            kvState = restored
        }

        self.config = config
        self.paths = paths
        self.logger = logger
        self.group = group
        self.key = key
        self.certificate = certificate
        self.network = network
        self.me = me
        self.genesisAuthority = authority
        self.wal = wal
        self.rng = rng
        self.raft = raft
        self.spore = spore
        self.detector = FailureDetector(me: me, peers: [])
        self.kv = kvState
        self.votes = VoteInstance(key: key, id: certificate.nodeID, retentionTicks: UInt64(max(1, 60_000 / config.tickMilliseconds)))
        self.nodeIDs = [me: certificate.nodeID]
    }

    // MARK: lifecycle

    public func start() async throws {
        loadLatentSpore()
        if let peers = try? String(contentsOfFile: paths.joinPeers, encoding: .utf8) {
            for a in peers.split(separator: "\n") where !a.isEmpty { addContact(String(a)) }
        }
        for a in config.join { addContact(a) }
        if contactLinks.isEmpty && addressHints.isEmpty && !(config.seedDirs.isEmpty && config.seedURLs.isEmpty) { await readSeedSpores(reason: "cold start") }
        guard let (host, port) = splitAddress(config.listen) else { throw AgentError("listen '\(config.listen)' is not host:port") }
        let creds = credentials
        let net = network.id
        listener = try await PeerListener.start(
            host: host, port: port, credentials: creds, group: group, logger: logger,
            policy: { HandshakePolicy(network: net, now: Int64(Date().timeIntervalSince1970)) },
            joinAuthority: genesisAuthority,
            onPeer: { [weak self] ch in await self?.serve(ch) })
        api = try await APIServer.start(path: config.apiSocketPath, agent: self, group: group)
        if let (kh, kp) = splitAddress(config.clientListen) {
            do {
                kvServer = try await KVServer.start(host: kh, port: kp, agent: self, group: group)
            } catch {
                throw AgentError("cannot serve clients on \(config.clientListen): \(error); choose another client_listen or leave it empty")
            }
        }
        if let (mh, mp) = splitAddress(config.metricsListen) {
            do {
                metricsServer = try await APIServer.startMetrics(host: mh, port: mp, agent: self, group: group)
            } catch {
                throw AgentError("cannot serve metrics on \(config.metricsListen): \(error); choose another metrics_listen or leave it empty")
            }
        }
        logger.info("agent started", metadata: ["node": "\(certificate.nodeID)", "network": "\(network.id)",
                                                "listen": "\(config.listen)", "raft_id": "\(me)"])
        note("started; listening on \(config.listen)")
        // The only voter of its group (a new network's genesis node) need not wait for a timeout.
        if raft.confState.voters == [me] && raft.role != .leader {
            raft.campaignNow()
            processReady()
            if raft.role == .leader && spore.members[certificate.nodeID] == nil {
                propose(SignedCommand(.admit(certificate), author: certificate.nodeID, key: key, network: network.id))
                processReady()
            }
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
        for l in links.values { l.stop() }
        for l in contactLinks.values { l.stop() }
        await listener?.close()
        await api?.close()
        await metricsServer?.close()
        await kvServer?.close()
        for (_, _, c) in pendingPuts { c.resume(throwing: KVError(status: .serviceUnavailable, description: "agent stopping")) }
        pendingPuts = []
        for (_, w) in kvWaiters { for c in w.waiters { c.resume(throwing: KVError(status: .serviceUnavailable, description: "agent stopping")) } }
        kvWaiters = [:]
        wal.close()
        note("stopped")
        logger.info("agent stopped")
    }

    nonisolated var credentials: NodeCredentials { NodeCredentials(key: key, network: network.id, credential: .member(certificate)) }

    func note(_ s: String) {
        let stamp = String(format: "%.3f", Date().timeIntervalSince(startedAt))
        events.append("+\(stamp)s \(s)")
        if events.count > 200 { events.removeFirst(events.count - 200) }
    }

    // MARK: ticks and Ready

    func onTick() {
        guard !stopped else { return }
        ticks += 1
        raft.tick()
        handleVoteEffects(votes.tick())
        finishChecks()
        fabricateAccusation()
        for e in detector.tick(using: &rng) { handleDetector(e) }
        let ticksPerSecond = UInt64(max(1, 1000 / config.tickMilliseconds))
        if raft.leader != .none { lastLeaderSeen = ticks }
        if raft.role == .leader {
            // Every tick while short of voters (a learner catching up is promoted within a tick).
            let short = raft.confState.voters.count < targetVoters(present: spore.presentMembers.count)
            if ticks % ticksPerSecond == 0 || pendingConfChange != 0 || short { reconcile() }
            if ticks % ticksPerSecond == 0 { superviseVotes() }
        }
        if ticks % ticksPerSecond == 0 {
            everySecond(); updateGauges(); pruneEarlyVoteMessages()
            detector.setPeers(probeTargets())  // members past their grace period join the probing
        }
        if raft.leader != lastLeader {
            if raft.leader != .none { instruments.leaderChanges.increment() }
            lastLeader = raft.leader
        }
        if spore.members[certificate.nodeID] != nil && ticks - lastRefresh >= 10 * ticksPerSecond {
            lastRefresh = ticks
            submit(.refresh(localCapabilities()))
        }
        checkFallback(ticksPerSecond: ticksPerSecond)
        processReady()
    }

    /// Slow housekeeping: get ourselves admitted, and confirm the addresses we reached.
    func everySecond() {
        let myStatus = spore.members[certificate.nodeID]?.status
        let notMember = myStatus == nil || myStatus == .failed || myStatus == .left
        // A node restarted after the others recorded it failed does not hear from any leader: ask again.
        let lost = raft.leader == .none && ticks - lastLeaderSeen > 3 * UInt64(max(1, 1000 / config.tickMilliseconds))
        if notMember || lost {
            let admit = SignedCommand(.admit(certificate), author: certificate.nodeID, key: key, network: network.id)
            if raft.role == .leader {
                propose(admit)  // the genesis node admits itself once it leads
            } else {
                // Ask the leader if we know it; otherwise everyone we can reach (they forward it).
                var j = ByteWriter()
                j.blob(admit.encoded()); j.string(config.advertisedAddress)
                let frame = Frame(type: AgentFrame.join, payload: j.bytes)
                if raft.leader != .none, let link = links[raft.leader] ?? makeLink(raft.leader) {
                    link.send(frame)
                } else {
                    for l in Array(contactLinks.values) + Array(links.values) { l.send(frame) }
                }
            }
        } else if !contactLinks.isEmpty && !links.isEmpty {
            // Admitted and connected through the spore's addresses: the introductions are done.
            for l in contactLinks.values { l.stop() }
            contactLinks = [:]
        }
        // Failure candidates are reported every second until recorded: a report sent while there
        // was no leader (the failed node may have been the leader) must not be lost.
        for (peer, h) in detector.health where h == .candidate {
            if let node = nodeIDs[peer], spore.members[node]?.status == .failed { continue }
            if raft.role == .leader {
                recordReport(peer, by: me)
            } else if raft.leader != .none, let link = links[raft.leader] ?? makeLink(raft.leader) {
                var w = ByteWriter(); w.u64(peer)
                link.send(Frame(type: AgentFrame.report, payload: w.bytes))
            }
        }
        for (id, link) in links {
            guard let a = link.connectedAddress, let node = nodeIDs[id], let m = spore.members[node], !m.addresses.contains(a),
                  spore.members[certificate.nodeID] != nil else { continue }
            if confirmed.insert("\(id)@\(a)@\(spore.epoch.term)").inserted { submit(.confirmAddress(node: node, address: a)) }
        }
    }

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
            if let s = rd.snapshot {
                if let (sporeBytes, restoredKV) = try? KVState.restore(s.data), let restored = try? PrimarySpore(decoding: sporeBytes) {
                    spore = restored; kv = restoredKV; sporeChanged()
                }
            }
            for e in rd.committedEntries where e.kind == .normal { apply(e) }
            if rd.committedEntries.contains(where: { $0.kind == .confChange }) {
                pendingConfChange = 0
                note("configuration now voters=\(raft.confState.voters.count) learners=\(raft.confState.learners.count)")
            }
            raft.advance(rd)
            if raft.role != .leader && !kvWaiters.isEmpty { answerKVWaiters(applied: nil) }
            // A member admitted or a governance step applied: take the next step now, not at the next second.
            if reconcileSoon && raft.role == .leader && pendingConfChange == 0 {
                reconcileSoon = false
                reconcile()
            }
            // The next membership step can start as soon as the previous one is applied.
            if raft.role == .leader && pendingConfChange == 0 && rd.committedEntries.contains(where: { $0.kind == .confChange }) {
                reconcile()
            }
        }
        maybeCompact()
    }

    func send(_ m: Message) {
        guard let link = links[m.to] ?? makeLink(m.to) else { return }
        link.send(Frame(type: AgentFrame.raft, payload: RaftCodec.encode(m)))
    }

    /// Entry payload: `1 | i64 leader time | SignedCommand`.
    static func entryData(_ c: SignedCommand, time: Int64) -> [UInt8] {
        var w = ByteWriter(capacity: 128)
        w.u8(1); w.i64(time); w.raw(c.encoded())
        return w.bytes
    }

    func apply(_ e: Entry) {
        if e.data.first == 2 {
            do { try kv.apply(entryData: e.data, index: e.index) } catch {
                logger.error("undecodable KV entry skipped", metadata: ["index": "\(e.index)", "error": "\(error)"])
            }
            answerKVWaiters(applied: e)
            return
        }
        answerKVWaiters(applied: e)  // a waiter whose index now holds another entry learns it lost
        guard e.data.first == 1, e.data.count > 9 else { return }  // leader no-op
        var r = ByteReader(e.data)
        _ = try? r.u8()
        guard let time = try? r.i64(), let signed = try? SignedCommand(decoding: Array(e.data[9...])) else {
            logger.error("undecodable committed entry skipped", metadata: ["index": "\(e.index)"])
            return
        }
        do {
            try spore.apply(signed, epoch: SporeEpoch(term: e.term, index: e.index), time: time)
            switch signed.command {
            case .admit, .setSclerotia, .handoff, .decideVote, .setStatus: reconcileSoon = true
            default: break
            }
            if case .admit(let c) = signed.command {
                note("admitted \(c.nodeID)")
                logger.info("member admitted", metadata: ["node": "\(c.nodeID)"])
            }
            if case .handoff = signed.command {
                note("handoff: sclerotia \(spore.sclerotia.map { "\($0)" }.joined(separator: ", ")) now own the primary spore")
                logger.notice("handoff committed: the sclerotia's Raft group owns the primary spore")
            }
            if case let .setStatus(n, status) = signed.command, status == .failed {
                note("recorded failure of \(n)")
                instruments.failuresRecorded.increment()
                logger.warning("member recorded as failed", metadata: ["node": "\(n)"])
            }
            appliedVoteCommand(signed.command)
        } catch {
            refusedVoteCommand(signed.command, error)
            // Every replica refuses the same command in the same way; nothing to undo.
            logger.debug("committed command refused by the spore", metadata: ["index": "\(e.index)", "reason": "\(error)"])
        }
        sporeChanged()
    }

    /// Keeps the address book, the failure detector's peer list and the local caches in step with the spore.
    func sporeChanged() {
        for m in spore.members.values {
            let id = m.id.compact
            nodeIDs[id] = m.id
            if !m.addresses.isEmpty {
                let merged = m.addresses + (addressHints[id] ?? []).filter { !m.addresses.contains($0) }
                addressHints[id] = merged
                links[id]?.setAddresses(merged)
            }
        }
        detector.setPeers(probeTargets())
        if spore.epoch.index >= lastLatentSave.index + 1 || spore.epoch.term != lastLatentSave.term {
            saveLatentSpore()
        }
        if raft.role == .leader { writeSeedSpores(force: false) }
    }

    // MARK: proposals

    /// Signs a command and gets it proposed: directly when leader, else through the leader.
    func submit(_ command: SporeCommand) {
        let signed = SignedCommand(command, author: certificate.nodeID, key: key, network: network.id)
        propose(signed)
    }

    func propose(_ signed: SignedCommand) {
        if raft.role == .leader {
            do {
                _ = try raft.propose(Self.entryData(signed, time: Int64(Date().timeIntervalSince1970)))
            } catch {
                logger.debug("proposal refused", metadata: ["reason": "\(error)"])
            }
        } else if raft.leader != .none, let link = links[raft.leader] ?? makeLink(raft.leader) {
            link.send(Frame(type: AgentFrame.propose, payload: signed.encoded()))
        }
    }

    // MARK: leader duties

    /// Brings Raft's configuration in line with the spore: every present member replicates (as a
    /// learner first); eligible, caught-up learners become voters until `sclerotia` voters exist;
    /// failed voters are removed. One configuration change at a time.
    func reconcile() {
        guard raft.role == .leader else { return }
        if pendingConfChange != 0 && raft.appliedIndex < pendingConfChange { return }
        pendingConfChange = 0
        let cs = raft.confState
        if cs.isJoint { return }
        let present = spore.presentMembers
        let presentIDs = Set(present.map { $0.id.compact })
        let failed = spore.members.values.filter { $0.status == .failed || $0.status == .left }.map { $0.id.compact }

        // 1. Remove failed or departed nodes from the configuration (voters first: they hold quorum hostage).
        if let gone = failed.first(where: { cs.isVoter($0) && $0 != me }) ?? failed.first(where: { cs.isLearner($0) }) {
            proposeConf(ConfChange([.removeNode(gone)]), "remove failed node \(nodeIDs[gone].map { "\($0)" } ?? "\(gone)")")
            return
        }
        // 2. Every present member replicates.
        if let newcomer = present.first(where: { !cs.allMembers.contains($0.id.compact) }) {
            proposeConf(ConfChange([.addLearner(newcomer.id.compact)]), "add \(newcomer.id) as learner")
            return
        }
        // 3. Keep `sclerotia` voters once enough members are present.
        let target = targetVoters(present: present.count)
        let voters = cs.voters.filter { presentIDs.contains($0) || $0 == me }
        if voters.count < target {
            // Chosen by trust first, then capability; after the handoff a newcomer must also win an
            // admission vote (where the network is large enough for one).
            let candidates = present.filter { $0.roles.contains(.sclerotiumEligible) && cs.isLearner($0.id.compact) }
                .sorted { (spore.trust.score(of: $0.id), $0.capabilities.cpus, $1.id) > (spore.trust.score(of: $1.id), $1.capabilities.cpus, $0.id) }
            for c in candidates {
                let id = c.id.compact
                if spore.phase == .distributed && !spore.approvedSclerotia.contains(c.id) && !spore.sclerotia.contains(c.id) {
                    if let reason = spore.voteUnavailable(.sclerotium, node: c.id) {
                        if voteFallbackNoted.insert("sclerotium \(c.id)").inserted {
                            note("no admission vote for \(c.id) is possible (\(reason)); choosing by capability")
                        }
                    } else {
                        openVote(.sclerotium, about: c.id)
                        continue
                    }
                }
                // Caught up to within a few entries: promoting it cannot stall commits for long.
                if let match = raft.matchIndex(of: id), match > 0, match + 10 >= raft.lastIndex {
                    proposeConf(ConfChange([.addVoter(id)]), "promote \(c.id) to voter (caught up at \(match))")
                    return
                }
            }
        }
        // 4. Record the sclerotia and hand off.
        let voterIDs = raft.confState.voters.compactMap { nodeIDs[$0] }.sorted()
        // A governance command is proposed at most once per second: if the spore refuses it (say
        // a voter is not admitted yet), proposing it again on every commit would spin.
        // Proposed again only once the previous one has applied, so a refused proposal cannot spin
        // (only an accepted one triggers the next reconcile at once) and an accepted one is followed by
        // the next step without waiting.
        let nowTick = ticks
        if raft.appliedIndex >= lastGovernanceIndex && (nowTick > lastGovernanceProposal || lastGovernanceIndex > 0) {
            if voters.count >= target && Set(spore.sclerotia) != Set(voterIDs) && voterIDs.count == raft.confState.voters.count
                && voterIDs.allSatisfy({ spore.members[$0]?.status == .alive }) {
                lastGovernanceProposal = nowTick
                submit(.setSclerotia(voterIDs))
                lastGovernanceIndex = raft.lastIndex
            } else if spore.phase == .bootstrap && present.count >= config.handoffMembers && voters.count >= target
                        && Set(spore.sclerotia) == Set(voterIDs) && !spore.sclerotia.isEmpty {
                lastGovernanceProposal = nowTick
                submit(.handoff)
                lastGovernanceIndex = raft.lastIndex
            }
        }
        // 5. Admit nodes whose join requests arrived, once.
        writeSeedSpores(force: false)
    }

    func targetVoters(present: Int) -> Int {
        // Before the handoff one voter (the bootstrap agent) suffices; after it, losing members below
        // `handoff_members` must not shrink the group.
        if spore.phase == .bootstrap && present < config.handoffMembers { return 1 }
        var t = min(config.sclerotia, present)
        if t % 2 == 0 { t -= 1 }
        return max(1, t)
    }

    func proposeConf(_ cc: ConfChange, _ why: String) {
        do {
            pendingConfChange = try raft.proposeConfChange(cc)
            note(why)
            logger.info("configuration change", metadata: ["change": "\(why)"])
        } catch {
            logger.debug("configuration change refused", metadata: ["change": "\(why)", "reason": "\(error)"])
        }
    }

    // MARK: inbound

    /// Serves one inbound authenticated channel until it closes.
    func serve(_ ch: PeerChannel) async {
        let peer = ch.peer.nodeID.compact
        nodeIDs[peer] = ch.peer.nodeID
        if ch.peer.joiningWith != nil {
            note("issued a certificate to joiner \(ch.peer.nodeID)")
        }
        do {
            while let f = try await ch.receive() { handle(f, from: peer) }
        } catch {
            logger.debug("inbound channel closed", metadata: ["peer": "\(ch.peer.nodeID)", "reason": "\(error)"])
        }
        inboundClosed(peer)
    }

    /// The leader's channel to us closed. If our own link to it is lost too (a process that died
    /// closes both at once), tell Raft, which then campaigns within a few ticks instead of waiting a
    /// whole election timeout. A hint only: pre-vote still needs a quorum that no longer hears it.
    func inboundClosed(_ peer: UInt64) {
        guard !stopped, peer == raft.leader, raft.role == .follower else { return }
        Task { [weak self] in
            try? await Task.sleep(nanoseconds: 20_000_000)
            await self?.confirmLeaderGone(peer)
        }
    }

    func confirmLeaderGone(_ peer: UInt64) {
        guard !stopped, peer == raft.leader, raft.role == .follower, links[peer]?.lostConnection == true else { return }
        note("the leader's connections closed; campaigning without waiting for the election timeout")
        logger.info("leader unreachable: both connections closed", metadata: ["leader": "\(nodeIDs[peer].map { "\($0)" } ?? "\(peer)")"])
        raft.leaderUnreachable(peer)
        processReady()
    }

    func handle(_ f: Frame, from peer: UInt64) {
        lastHeard[peer] = ticks
        if !pendingChecks.isEmpty { finishChecks() }  // an answer to a direct check: vote at once
        if heardFrom.insert(peer).inserted, let node = nodeIDs[peer], spore.members[node] != nil {
            detector.setPeers(probeTargets())
        }
        switch f.type {
        case AgentFrame.raft:
            guard let m = try? RaftCodec.decodeMessage(f.payload), m.from == peer, m.to == me else {
                logger.warning("refused a Raft message that does not come from its channel's peer", metadata: ["peer": "\(peer)"])
                return
            }
            raft.step(m)
        case AgentFrame.hello:
            var r = ByteReader(f.payload)
            if let id = try? r.u64(), id == peer, let addr = try? r.string("address", limit: 255) {
                remember(addr, for: peer)
            }
        case AgentFrame.join:
            var r = ByteReader(f.payload)
            guard let blob = try? r.blob("command", limit: 8192), let addr = try? r.string("address", limit: 255),
                  let signed = try? SignedCommand(decoding: blob), case .admit(let cert) = signed.command,
                  cert.nodeID.compact == peer else { return }
            remember(addr, for: peer)
            let status = spore.members[cert.nodeID]?.status
            if status == nil || status == .failed || status == .left {
                if raft.role == .leader {
                    let now = Int64(Date().timeIntervalSince1970)
                    if let at = proposedAdmits[peer], now - at < 2 { break }
                    proposedAdmits[peer] = now
                    note("join request from \(cert.nodeID) at \(addr)")
                }
                propose(signed)
            }
        case AgentFrame.propose:
            if let signed = try? SignedCommand(decoding: f.payload) { propose(signed) }
        case AgentFrame.probe:
            if let m = decodeProbe(f.payload) { for e in detector.receive(m, from: peer) { handleDetector(e) } }
        case AgentFrame.report:
            var r = ByteReader(f.payload)
            if let target = try? r.u64() { recordReport(target, by: peer) }
        case AgentFrame.vote:
            receiveVote(f.payload, from: peer)
        default:
            break
        }
        processReady()
    }

    func remember(_ address: String, for peer: UInt64) {
        var hints = addressHints[peer] ?? []
        if !hints.contains(address) { hints.append(address); addressHints[peer] = hints }
        links[peer]?.setAddresses(hints)
    }

    // MARK: outbound links

    func makeLink(_ id: UInt64) -> PeerLink? {
        guard id != me, let addrs = addressHints[id], !addrs.isEmpty else { return nil }
        let link = PeerLink(raftID: id, addresses: addrs, dialer: dialer())
        links[id] = link
        return link
    }

    /// A contact from the join list or a seed spore: dialled to introduce ourselves; its raft id is
    /// learned from the verified channel.
    func addContact(_ address: String) {
        guard contactLinks[address] == nil, address != config.advertisedAddress else { return }
        contactLinks[address] = PeerLink(raftID: 0, addresses: [address], dialer: dialer())
    }

    nonisolated func dialer() -> PeerLink.Dialer {
        let net = network.id
        return PeerLink.Dialer(
            credentials: credentials, group: group, logger: logger,
            policy: { HandshakePolicy(network: net, now: Int64(Date().timeIntervalSince1970)) },
            onConnected: { [weak self] id, address, peer in await self?.connected(to: peer, at: address) },
            greeting: { [weak self] in await self?.greeting() ?? [] })
    }

    func greeting() -> [Frame] {
        var w = ByteWriter()
        w.u64(me); w.string(config.advertisedAddress)
        var frames = [Frame(type: AgentFrame.hello, payload: w.bytes)]
        if spore.members[certificate.nodeID] == nil {
            var j = ByteWriter()
            j.blob(SignedCommand(.admit(certificate), author: certificate.nodeID, key: key, network: network.id).encoded())
            j.string(config.advertisedAddress)
            frames.append(Frame(type: AgentFrame.join, payload: j.bytes))
        }
        return frames
    }

    /// An outgoing dial succeeded: the peer's address is now confirmed (connection confirmation).
    func connected(to peer: VerifiedPeer, at address: String) {
        let id = peer.nodeID.compact
        nodeIDs[id] = peer.nodeID
        remember(address, for: id)
        if spore.members[peer.nodeID] != nil, spore.members[peer.nodeID]?.addresses.contains(address) == false,
           confirmed.insert("\(id)@\(address)").inserted {
            submit(.confirmAddress(node: peer.nodeID, address: address))
        }
    }

    // MARK: failure detection

    /// The members this node probes: those it has heard from, and any member admitted more than
    /// `graceSeconds` ago (spore time). A newcomer still dialling is not suspected at once, but one
    /// that died before ever reaching us is still found out, by everyone, not only by the leader.
    func probeTargets(graceSeconds: Int64 = 10) -> [UInt64] {
        spore.presentMembers.filter { heardFrom.contains($0.id.compact) || spore.now - $0.since > graceSeconds }
            .map { $0.id.compact }.filter { $0 != me }
    }

    func handleDetector(_ e: DetectorEffect<UInt64>) {
        switch e {
        case let .send(to, m):
            guard let link = links[to] ?? makeLink(to) else { return }
            link.send(Frame(type: AgentFrame.probe, payload: encodeProbe(m)))
        case .suspect(let p):
            note("suspect \(nodeIDs[p].map { "\($0)" } ?? "\(p)")")
        case .recovered(let p):
            note("recovered \(nodeIDs[p].map { "\($0)" } ?? "\(p)")")
            failureReports[p] = nil
        case .confirmFailure(let p):
            // Reported to the leader from `everySecond`; the leader records a failure only when a
            // majority of the voters (other than the suspect) agree.
            note("failure candidate \(nodeIDs[p].map { "\($0)" } ?? "\(p)"); reporting to the leader")
        }
    }

    /// A failure report reached the leader. Where a Byzantine-tolerant round can be formed, the
    /// failure is put to the vote (and recorded only with its certificate); in a network too small for
    /// one, a majority of the voters (other than the suspect) reporting it is the confirmation.
    func recordReport(_ target: UInt64, by reporter: UInt64) {
        guard raft.role == .leader, let node = nodeIDs[target], let m = spore.members[node], m.status != .failed else { return }
        if let reason = spore.voteUnavailable(.failure, node: node) {
            if voteFallbackNoted.insert("failure \(node)").inserted {
                note("no Byzantine-tolerant vote on \(node) is possible (\(reason)); confirming by a majority of the voters' reports")
                logger.warning("failure confirmed without a Byzantine-tolerant vote: the network is too small for one",
                               metadata: ["node": "\(node)", "reason": "\(reason)"])
            }
            failureReports[target, default: []].insert(reporter)
            let voters = raft.confState.voters.filter { $0 != target }
            let agreeing = failureReports[target]!.filter { voters.contains($0) }.count
            if agreeing * 2 > voters.count {
                note("failure of \(node) confirmed by \(agreeing) of \(voters.count) voters")
                submit(.setStatus(node: node, .failed))
                failureReports[target] = nil
            }
            return
        }
        openVote(.failure, about: node)
    }

    func encodeProbe(_ m: ProbeMessage<UInt64>) -> [UInt8] {
        var w = ByteWriter()
        switch m {
        case .ping(let s): w.u8(1); w.u64(s)
        case let .pingRequest(s, t): w.u8(2); w.u64(s); w.u64(t)
        case let .ack(s, about): w.u8(3); w.u64(s); w.u64(about)
        }
        return w.bytes
    }

    func decodeProbe(_ b: [UInt8]) -> ProbeMessage<UInt64>? {
        var r = ByteReader(b)
        guard let tag = try? r.u8(), let s = try? r.u64() else { return nil }
        switch tag {
        case 1: return .ping(seq: s)
        case 2: return (try? r.u64()).map { .pingRequest(seq: s, target: $0) }
        case 3: return (try? r.u64()).map { .ack(seq: s, about: $0) }
        default: return nil
        }
    }

    // MARK: spores on disk

    func saveLatentSpore() {
        lastLatentSave = spore.epoch
        let latent = LatentSpore(from: spore, owner: certificate.nodeID, savedAt: Int64(Date().timeIntervalSince1970))
        do {
            try ChecksummedFile.write(kind: FileKind.latentSpore, payload: latent.encoded(signedBy: key), to: paths.latentSpore)
        } catch {
            logger.warning("cannot save the latent spore", metadata: ["error": "\(error)"])
        }
    }

    func loadLatentSpore() {
        guard AtomicFile.exists(paths.latentSpore) else { return }
        do {
            let bytes = try ChecksummedFile.read(kind: FileKind.latentSpore, from: paths.latentSpore)
            let latent = try LatentSpore(verifying: bytes, ownerKey: key.publicKey)
            for p in latent.peers where p.id != certificate.nodeID {
                addressHints[p.id.compact] = p.addresses
                nodeIDs[p.id.compact] = p.id
            }
            note("latent spore loaded: \(latent.peers.count) peers at epoch \(latent.epoch)")
            logger.info("reconnecting from the latent spore", metadata: ["peers": "\(latent.peers.count)", "epoch": "\(latent.epoch)"])
        } catch {
            logger.warning("latent spore refused; ignoring it", metadata: ["error": "\(error)"])
        }
    }

    var seedStores: [SeedSporeStore] {
        config.seedDirs.map { DirectorySeedStore(directory: $0, network: network.id) as SeedSporeStore }
            + config.seedURLs.map { HTTPSeedStore(base: $0, network: network.id, group: group) as SeedSporeStore }
    }

    func writeSeedSpores(force: Bool) {
        guard raft.role == .leader, !(config.seedDirs.isEmpty && config.seedURLs.isEmpty), spore.epoch > seedEpochWritten else { return }
        let now = Date().timeIntervalSince1970
        guard force || now - lastSeedWrite >= Double(config.seedIntervalSeconds) else { return }
        lastSeedWrite = now
        seedEpochWritten = spore.epoch
        let seed = SeedSpore(spore: spore, signer: certificate, key: key, writtenAt: Int64(now))
        for store in seedStores {
            Task { [logger] in
                do { try await store.write(seed) } catch {
                    logger.warning("cannot write seed spore", metadata: ["location": "\(store.location)", "error": "\(error)"])
                }
            }
        }
    }

    func readSeedSpores(reason: String) async {
        let (best, problems) = await newestSeedSpore(from: seedStores, network: network.id, knownEpoch: nil,
                                                     now: Int64(Date().timeIntervalSince1970))
        for p in problems { logger.warning("seed spore refused", metadata: ["location": "\(p.location)", "reason": "\(p.problem)"]) }
        guard let best else { return }
        note("\(reason): seed spore at epoch \(best.epoch) names \(best.spore.presentMembers.count) members")
        for m in best.spore.presentMembers where m.id != certificate.nodeID {
            addressHints[m.id.compact] = m.addresses
            nodeIDs[m.id.compact] = m.id
            for a in m.addresses { addContact(a) }
        }
    }

    func checkFallback(ticksPerSecond: UInt64) {
        let silent = (ticks - lastLeaderSeen) / ticksPerSecond
        if raft.leader == .none && silent >= UInt64(config.fallbackSeconds) {
            if fallback == nil {
                fallback = "no quorum for \(silent)s: falling back to seed spores to find the network"
                logger.warning("\(fallback!)")
                note(fallback!)
                Task { await self.readSeedSpores(reason: "fallback") }
            }
        } else if raft.leader != .none && fallback != nil {
            note("quorum regained; fallback over")
            logger.notice("quorum regained; fallback over")
            fallback = nil
        }
    }

    func maybeCompact() {
        // The spore is small; keep the log short so a restart replays little.
        guard raft.appliedIndex > raft.firstIndex + 10_000 else { return }
        do {
            try raft.compact(upTo: raft.appliedIndex, snapshotData: KVState.snapshot(spore: spore.encoded(), kv: kv))
            if let s = raft.latestSnapshot { try wal.compact(with: s) }
        } catch {
            logger.warning("log compaction failed", metadata: ["error": "\(error)"])
        }
    }

    func localCapabilities() -> Capabilities {
        Capabilities(cpus: UInt16(ProcessInfo.processInfo.activeProcessorCount),
                     memoryMiB: UInt32(ProcessInfo.processInfo.physicalMemory >> 20), diskGiB: 0)
    }
}
