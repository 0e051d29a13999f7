// A whole Mycelium control plane in one process: several nodes, each with the real Raft, the real
// control state, the real governor (failure detection, the Byzantine-tolerant vote, reconcile,
// handoff, admissions) and the real network controller, over a simulated network with delays,
// loss, partitions, crashes, restarts and lying voters. One seed draws the scenario; the same seed
// replays it exactly (`mycelium-sim governor --seed N`).
//
// The shell here does what the agent does (Sources/MyceliumAgent): it carries out the same effects
// in the same order. What the agent adds — sockets, TLS, files, clocks — is what this replaces.
//
// Checked at every step:
//  - at most one leader per term;
//  - every member's pod CIDR is unique, on every node (no two owners of one block);
//  - a live member that every honest node could reach is never recorded failed;
//  - membership (certificates of `certificateLifetime` simulated seconds, renewed by the network):
//    every honest member that is up holds a valid certificate at every simulated second; every
//    certificate installed in a spore carries a quorum of valid signatures of its generation; a
//    revoked member is known revoked on every live node within a bound and is never renewed again.
// Checked by the end (after the faults heal):
//  - the network forms (handoff committed, sclerotia = Raft voters) within a bound;
//  - a member killed for good is recorded failed within a bound, and leaves the Raft voters;
//  - every vote round opened at an honest, live voter is decided there within a bound;
//  - every live member has a pod CIDR;
//  - VMs: one VM (its primary and replica chosen by the seed) never runs on two nodes at once, whatever
//    the partitions and crashes (its primary fences itself when it cannot renew its lease; the replica
//    starts only after the lease ended); after healing it runs on exactly one live node;
//  - then `steadyLifetimes` more certificate lifetimes pass, with the leader crashed and restarted
//    every half lifetime, and every honest live member stays valid throughout.

import MembershipController
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumMembership
import MyceliumRaft
import MyceliumSpores
import MyceliumVote
import NetworkController
import VMController

public struct GovernorSimulationOptions: Sendable {
    public var seed: UInt64
    /// Founding members (3...7); nil lets the seed choose.
    public var nodeCount: Int?
    /// Lying voters (at most one, and only where a vote can tolerate it); nil lets the seed choose.
    public var liars: Int?
    /// Simulated seconds of faults after formation.
    public var faultSeconds: Int64 = 30
    /// Keep the last trace lines of the run.
    public var trace = false
    /// Lifetime of every membership certificate, in simulated seconds (renewed at two thirds).
    public var certificateLifetime: Int64 = 60
    /// Certificate lifetimes to run after the end checks, with leader crashes.
    public var steadyLifetimes = 2
    /// Revoke a member during the faults (nil lets the seed choose; only with five nodes or more).
    public var revoke: Bool?
    /// The VM controller's lease and fencing settings (tests break them to see the check fire).
    public var vm = VMSettings()
    /// The operator asks for planned migrations of the VM during the fault phase.
    public var migrations = true
    /// The simulated driver pauses the guest before it reports it ready to switch (false: a broken
    /// driver that leaves it running, which the two-copies check must catch).
    public var handOverPauses = true

    public init(seed: UInt64, nodeCount: Int? = nil, liars: Int? = nil, trace: Bool = false) {
        self.seed = seed; self.nodeCount = nodeCount; self.liars = liars; self.trace = trace
    }
}

public struct GovernorSimulationResult: Sendable {
    public var seed: UInt64
    public var nodeCount = 0
    public var liars = 0
    public var failure: String?
    public var failedAt: SimTime?
    public var scenario = ""
    public var formedAt: SimTime?
    public var killed: Int?
    public var killedRecordedAt: SimTime?
    public var roundsOpened = 0
    public var roundsDecided = 0
    public var failuresRecorded = 0
    public var leadersElected = 0
    /// Certificates the network installed (renewals and admissions), seen at the leader.
    public var certificatesIssued = 0
    /// Sclerotia links added to the chain, seen at the leader.
    public var linksAdded = 0
    public var revoked: Int?
    /// Certificates that expired while the network could not commit for half their renewal window
    /// (no quorum: nothing can be renewed then, by design).
    public var expiredUnavailable = 0
    /// The VM's ownership epoch at the end (1 = never moved) and where it ran then.
    public var vmEpoch: UInt64 = 0
    public var vmRunsOn: Int?
    /// Steps at which a live node ran the VM (the rest it was down: fenced, failing over or restarting).
    public var vmRunningSteps = 0
    /// Planned migrations the operator asked for, and how many switched (the rest aborted).
    public var migrationsRequested = 0
    public var migrationsSwitched = 0
    public var messages = 0
    public var steps = 0
    public var trace: [String] = []

    public var passed: Bool { failure == nil }
    public var replayCommand: String { "mycelium-sim governor --seed \(seed) --nodes \(nodeCount) --liars \(liars)" }
    public var summary: String {
        let status = failure.map { "FAILED at t=\(failedAt ?? 0)ms: \($0)" } ?? "ok"
        return "seed \(seed) nodes=\(nodeCount) liars=\(liars) \(status) | formed=\(formedAt.map { "\($0)ms" } ?? "never") "
            + "killed=\(killed.map { "n\($0)" } ?? "none") recorded=\(killedRecordedAt.map { "\($0)ms" } ?? "-") "
            + "rounds=\(roundsDecided)/\(roundsOpened) failures=\(failuresRecorded) leaders=\(leadersElected) "
            + "certs=\(certificatesIssued) links=\(linksAdded) expired-unavailable=\(expiredUnavailable) revoked=\(revoked.map { "n\($0)" } ?? "none") vm=epoch \(vmEpoch) on \(vmRunsOn.map { "n\($0)" } ?? "none") up \(steps > 0 ? vmRunningSteps * 100 / steps : 0)% migrations=\(migrationsSwitched)/\(migrationsRequested) msgs=\(messages) | \(scenario)"
    }
}

public struct GovernorSimulation {
    static let tickMs: SimTime = 100
    static let ticksPerSecond: UInt64 = 10
    /// Spore time of simulated time zero (seconds): certificates are valid around it.
    static let epochSeconds: Int64 = 1_800_000_000
    /// Bounds (simulated milliseconds).
    static let formationBound: SimTime = 15_000
    static let failureBound: SimTime = 25_000
    static let roundBound: SimTime = 8_000
    static let settleBound: SimTime = 30_000

    struct Node {
        let index: Int
        let key: SigningKey
        /// The certificate on "disk": the newest the membership controller's driver stored.
        var certificate: MembershipCertificate
        var membership: MembershipController?
        var vmc: VMController?
        /// The VMs whose guest this node runs now (what its driver would have started and not paused).
        var running: Set<String> = []
        /// Commands this node sent to others to propose (picks the sclerotium to try when it is
        /// outside the Raft configuration).
        var proposals = 0
        /// The certificate last checked valid (its serial), so each is verified once.
        var checkedSerial: UInt64 = 0
        var raftID: UInt64 { certificate.nodeID.compact }
        var raft: Raft?
        var durable = RaftStorageState()
        var control: ControlState
        var governor: Governor?
        var pods: PodCIDRController
        var storedVotes: [UInt64: OwnVote] = [:]
        var liar: Bool
        var up = true
        var killedForGood = false
        var random: SeededRandom
        /// When each round (by sequence) was opened here, for the decision bound.
        var roundsOpenedAt: [UInt64: SimTime] = [:]
    }

    let options: GovernorSimulationOptions
    var random: SeededRandom
    var nodes: [Node] = []
    var network: SimNetwork<PeerMessage>
    var now: SimTime = 0
    var result: GovernorSimulationResult
    var leadersByTerm: [UInt64: UInt64] = [:]
    var byRaftID: [UInt64: Int] = [:]
    var settings = GovernorSettings()
    /// Per node: the last time it was down or cut off from some other node (for the "never a live
    /// node recorded failed" check).
    var lastUnreachable: [SimTime] = []
    var partitionedUntil: SimTime = 0
    var partitioned: Set<Int> = []
    var traceLines: [String] = []
    let genesis: SigningKey
    /// Crashed nodes to restart, with the time (crashes are short: a certificate outlives them).
    var restartAt: [Int: SimTime] = [:]
    /// Where the VM ran, to report it.
    var vmCreated = false
    /// What simulated VM drivers will report, when (a hand-over pauses the guest after a converge).
    var driverReports: [(at: SimTime, node: Int, report: VMDriverReport)] = []
    var nextMigrationAt: SimTime = .max
    var migrationTargets = 0
    var revokeAt: SimTime?
    var revokedSince: SimTime?
    /// Steps at which no leader had a live, reachable majority of its voters (nothing can be renewed
    /// then, by design), to tell a renewal the network could not make from one it failed to make.
    var unavailableSteps: [SimTime] = []
    /// Serials of certificates that expired while the network could not renew them (counted once).
    var excusedExpiries: Set<UInt64> = []

    public static func run(_ options: GovernorSimulationOptions) -> GovernorSimulationResult {
        var sim = GovernorSimulation(options: options)
        sim.runAll()
        if options.trace && sim.result.trace.isEmpty { sim.result.trace = sim.traceLines }
        return sim.result
    }

    init(options: GovernorSimulationOptions) {
        self.options = options
        var r = SeededRandom(seed: options.seed)
        let n = options.nodeCount ?? [3, 4, 5, 5, 6, 7].randomElement(using: &r)!
        // One liar only where the vote tolerates one: four trusted voters besides the subject.
        let liars = options.liars ?? ((n >= 6 && r.next() % 2 == 0) ? 1 : 0)
        result = GovernorSimulationResult(seed: options.seed)
        result.nodeCount = n
        result.liars = liars
        network = SimNetwork(faults: NetworkFaults(lossProbability: 0, minDelay: 1, maxDelay: 8), random: r.fork())
        settings.handoffMembers = n
        settings.sclerotia = min(5, n)
        settings.ticksPerSecond = Self.ticksPerSecond
        settings.votePhaseTicks = 10
        settings.fallbackSeconds = 30
        settings.voteRetentionTicks = 600
        let genesis = SigningKey(seed: (0..<32).map { _ in UInt8(truncatingIfNeeded: r.next()) })
        self.genesis = genesis
        for i in 0..<n {
            let key = SigningKey(seed: (0..<32).map { _ in UInt8(truncatingIfNeeded: r.next()) })
            let id = NodeID(publicKey: key.publicKey)
            let cert = MembershipCertificate.issue(by: genesis, nodeID: id, nodeKey: key.publicKey,
                                                   roles: [.member, .sclerotiumEligible, .inviter], serial: UInt64(i + 1),
                                                   issuedAt: Self.epochSeconds - 1, validFor: options.certificateLifetime)
            let node = Node(index: i, key: key, certificate: cert, control: ControlState(network: NetworkIdentity(genesisKey: genesis.publicKey)),
                            pods: PodCIDRController(), liar: i >= n - liars, random: r.fork())
            nodes.append(node)
            byRaftID[node.raftID] = i
        }
        lastUnreachable = Array(repeating: 0, count: n)
        if n >= 5 && (options.revoke ?? (r.next() % 3 == 0)) { revokeAt = 0 }
        random = r
        nodes[0].durable = RaftStorageState.bootstrap(voters: [nodes[0].raftID])
        for i in nodes.indices { boot(i) }
    }

    // MARK: the run

    mutating func runAll() {
        // Formation: healthy network.
        let formDeadline = Self.formationBound
        runUntil(formDeadline) { $0.formed }
        guard result.failure == nil else { return }
        guard formed else { return fail("the network did not form within \(formDeadline) ms") }
        result.formedAt = now
        createVM()
        if options.migrations { nextMigrationAt = now + 2000 }

        // Faults: restarts, partitions, message loss, and one node killed for good.
        let faultEnd = now + options.faultSeconds * 1000
        let killAt = now + SimTime(random.next() % UInt64(max(1, options.faultSeconds * 1000 / 2)))
        let honest = nodes.indices.filter { !nodes[$0].liar }
        // The node that dies may be the leader, a sclerotium or a plain member; never a liar (its death
        // would leave no liar to test) and never the last honest founder.
        let victim = honest.randomElement(using: &random)!
        var scenario = ["kill n\(victim) at \(killAt)ms"]
        // A revoked member: honest, not the victim, not the genesis node (whose loss is tested apart).
        let revokee = revokeAt == nil ? nil : honest.filter { $0 != victim && $0 != 0 }.randomElement(using: &random)
        if revokee != nil { revokeAt = now + SimTime(random.next() % UInt64(max(1, options.faultSeconds * 1000))) }
        var nextFault = now + 2000
        while now < faultEnd && result.failure == nil {
            // Killed for good only while the others keep a majority of the voters without it: a
            // group whose quorum dies for good needs an operator (backup/restore), not the governor.
            if now >= killAt && result.killed == nil && quorumSurvives(without: victim) {
                crash(victim, forGood: true)
                result.killed = victim
                scenario.append("killed n\(victim) at \(now)ms")
            }
            if let r = revokee, let at = revokeAt, now >= at, let l = leaderIndex, nodes[l].governor != nil,
               nodes[l].control.spore.revoked[nodes[r].certificate.nodeID] == nil {
                // The operator repeats a revocation that did not commit (it went to a leader that lost
                // its majority): `member revoke` returns once submitted; `mycelium status` shows whether it landed.
                submit(l, .revoke(node: nodes[r].certificate.nodeID, reason: "simulated operator decision"))
                if result.revoked == nil { scenario.append("revoke n\(r) at \(now)ms") }
                result.revoked = r
                revokeAt = now + 2000
            }
            if now >= nextMigrationAt {
                requestMigration()
                nextMigrationAt = now + 4000 + SimTime(result.migrationsRequested % 3) * 1500
            }
            if now >= nextFault {
                scenario.append(injectFault())
                nextFault = now + 3000 + SimTime(random.next() % 4000)
            }
            for (i, at) in restartAt where now >= at { restartAt[i] = nil; if !nodes[i].up && !nodes[i].killedForGood { restart(i) } }
            if !partitioned.isEmpty && now >= partitionedUntil { heal() }
            step()
        }
        // Heal: everything comes back; then the victim dies if it has not yet.
        heal()
        network.faults = NetworkFaults(lossProbability: 0, minDelay: 1, maxDelay: 8)
        for i in nodes.indices where !nodes[i].up && !nodes[i].killedForGood { restart(i) }
        if result.killed == nil {
            runUntil(now + Self.settleBound) { sim in sim.quorumSurvives(without: victim) }
            crash(victim, forGood: true)
            result.killed = victim
            scenario.append("killed n\(victim) after healing at \(now)ms")
        }
        result.scenario = scenario.joined(separator: "; ")
        let healedAt = now
        runUntil(healedAt + Self.failureBound) { sim in sim.victimRemoved(victim) }
        if victimRemoved(victim) { result.killedRecordedAt = now }
        guard result.failure == nil else { return }
        guard victimRemoved(victim) else {
            return fail("n\(victim), killed for good, was not recorded failed and removed from the voters within \(Self.failureBound) ms of healing")
        }
        // Settle (restarted members rejoin, replacements are promoted), then the end-state checks.
        runUntil(now + Self.settleBound) { sim in sim.settled(victim) }
        guard result.failure == nil else { return }
        checkEnd(victim)
        guard result.failure == nil else { return }
        steady(victim)
    }

    /// More certificate lifetimes, with the leader crashed (and restarted 3 s later) every half lifetime.
    mutating func steady(_ victim: Int) {
        let end = now + SimTime(options.steadyLifetimes) * SimTime(options.certificateLifetime) * 1000
        var nextCrash = now + SimTime(options.certificateLifetime) * 500
        while now < end && result.failure == nil {
            if now >= nextCrash, let l = leaderIndex, quorumSurvives(without: l) {
                crash(l, forGood: false)
                restartAt[l] = now + 3000
                trace("leader n\(l) crashed")
                nextCrash = now + SimTime(options.certificateLifetime) * 500
            }
            for (i, at) in restartAt where now >= at { restartAt[i] = nil; if !nodes[i].up && !nodes[i].killedForGood { restart(i) } }
            step()
        }
    }

    mutating func runUntil(_ deadline: SimTime, _ done: (GovernorSimulation) -> Bool) {
        while now < deadline && result.failure == nil {
            step()
            if done(self) { return }
        }
    }

    /// One tick: deliver what is due, tick every live node, check invariants.
    mutating func step() {
        let tickEnd = now + Self.tickMs
        while let t = network.nextDeliveryTime, t <= tickEnd {
            guard let d = network.popDue(now: t) else { break }
            now = max(now, d.at)
            deliver(d)
            if result.failure != nil { return }
        }
        now = tickEnd
        for i in nodes.indices where nodes[i].up { tick(i) }
        result.steps += 1
        checkInvariants()
        checkVMs()
        if !leaderHasQuorum {
            unavailableSteps.append(now)
            if unavailableSteps.count > 20_000 { unavailableSteps.removeFirst(10_000) }
        }
        if now % 1000 == 0 { checkMembership() }
        if options.trace, now % 1000 == 0, let l = leaderIndex {
            let sp = nodes[l].control.spore
            func names(_ ks: [SclerotiumKey]) -> String { ks.map { k in nodes.firstIndex { $0.certificate.nodeID == k.id }.map { "n\($0)" } ?? "?" }.joined(separator: ",") }
            trace("leader n\(l) links \(sp.chain.links.map { "[\(names($0.members))]" }.joined()) pending [\(sp.pendingLink.map { names($0.link.members) } ?? "")] sclerotia [\(names(sp.sclerotiaKeys()))]")
            trace("leader n\(l) term \(nodes[l].raft!.term) spore now \(sp.now - Self.epochSeconds) gen \(sp.chain.generation) pending link \(sp.pendingLink.map { "\($0.link.generation) (\($0.signatures.count) sigs)" } ?? "none") issuances \(sp.issuances.count)")
        }
    }

    // MARK: faults

    mutating func injectFault() -> String {
        let live = nodes.indices.filter { nodes[$0].up }
        switch random.next() % 4 {
        case 0:
            // Crash and restart a node a few seconds later (the restart happens at heal time at the latest).
            guard let i = live.filter({ !nodes[$0].killedForGood }).randomElement(using: &random) else { return "nothing" }
            crash(i, forGood: false)
            // Back within 2–6 s: shorter than a third of a lifetime, so its certificate outlives the outage.
            restartAt[i] = now + 2000 + SimTime(random.next() % 4000)
            return "crash n\(i) at \(now)ms"
        case 1:
            // Cut a minority off for a few seconds.
            let size = max(1, (nodes.count - 1) / 2)
            let cut = Array(nodes.indices.shuffled(using: &random).prefix(size))
            partition(cut, for: 2000 + SimTime(random.next() % 5000))
            return "partition \(cut.map { "n\($0)" }.joined(separator: ",")) at \(now)ms"
        case 2:
            // Restart whoever is down (not the killed node).
            let down = nodes.indices.filter { !nodes[$0].up && !nodes[$0].killedForGood }
            for i in down { restart(i) }
            return "restart \(down.map { "n\($0)" }.joined(separator: ",")) at \(now)ms"
        default:
            network.faults = NetworkFaults(lossProbability: 0.05, duplicateProbability: 0.01, minDelay: 1, maxDelay: 30)
            return "lossy network at \(now)ms"
        }
    }

    mutating func partition(_ cut: [Int], for duration: SimTime) {
        let rest = nodes.indices.filter { !cut.contains($0) }
        network.partition(cut.map { nodes[$0].raftID }, rest.map { nodes[$0].raftID })
        partitioned = Set(cut)
        partitionedUntil = now + duration
        for i in nodes.indices { lastUnreachable[i] = now }
    }

    mutating func heal() {
        if !partitioned.isEmpty { for i in nodes.indices { lastUnreachable[i] = now } }
        network.heal()
        partitioned = []
    }

    mutating func crash(_ i: Int, forGood: Bool) {
        guard nodes[i].up else { if forGood { nodes[i].killedForGood = true }; return }
        nodes[i].up = false
        nodes[i].killedForGood = forGood
        nodes[i].raft = nil
        nodes[i].governor = nil
        nodes[i].membership = nil
        nodes[i].vmc = nil
        nodes[i].running = []  // the guest dies with its host
        driverReports.removeAll { $0.node == i }
        network.dropAll(to: nodes[i].raftID)
        lastUnreachable[i] = now
        trace("n\(i) crashed\(forGood ? " for good" : "")")
    }

    mutating func restart(_ i: Int) {
        nodes[i].up = true
        lastUnreachable[i] = now
        boot(i)
        trace("n\(i) restarted")
    }

    /// Starts (or restarts) node `i` from its durable Raft state, as the agent does.
    mutating func boot(_ i: Int) {
        var n = nodes[i]
        var r = n.random
        n.raft = try! Raft(config: RaftConfig(id: n.raftID, electionTicks: 10, heartbeatTicks: 1), storage: n.durable, random: &r)
        n.control = ControlState(network: n.control.network)
        if let s = n.durable.snapshot, !s.data.isEmpty { n.control = try! ControlState.restore(s.data, network: n.control.network) }
        var g = Governor(me: n.raftID, certificate: n.certificate, key: n.key, settings: settings,
                         behaviour: n.liar ? LyingVoter() as any VoterBehaviour : HonestVoter(), storedVotes: n.storedVotes)
        g.restored(state: n.control)
        n.governor = g
        n.membership = MembershipController(key: n.key, certificate: n.certificate, genesis: i == 0 ? genesis : nil)
        n.pods = PodCIDRController()
        n.vmc = VMController(settings: options.vm, run: r.next())
        n.random = r
        nodes[i] = n
        if i == 0 && n.raft!.confState.voters == [n.raftID] && n.raft!.role != .leader {
            nodes[i].raft!.campaignNow()
            processReady(i)
            if nodes[i].raft!.role == .leader && nodes[i].control.spore.members[n.certificate.nodeID] == nil {
                submit(i, .admit(n.certificate))
                processReady(i)
            }
        }
    }

    // MARK: one node's shell

    mutating func tick(_ i: Int) {
        nodes[i].raft!.tick()
        var r = nodes[i].random
        let lost = lostConnections(i)
        let effects = nodes[i].governor!.tick(raft: nodes[i].raft!, state: nodes[i].control, lostConnections: lost, using: &r)
        nodes[i].random = r
        carry(i, effects)
        guard nodes[i].up else { return }
        let ctx = context(i)
        carryControllers(i, nodes[i].pods.tick(context: ctx))
        if nodes[i].up { carryVM(i, nodes[i].vmc!.tick(context: ctx)) }
        for d in driverReports where d.node == i && d.at <= now {
            guard nodes[i].up else { break }
            if case .readyToSwitch(let name, _) = d.report, options.handOverPauses {
                nodes[i].running.remove(name); trace("n\(i): paused VM \(name) for the switch")
            }
            carryVM(i, nodes[i].vmc!.reported(d.report, context: context(i)))
        }
        driverReports.removeAll { $0.node == i && $0.at <= now }
        if nodes[i].up { carryMembership(i, nodes[i].membership!.tick(context: ctx)) }
        let g = nodes[i].governor!
        if g.ticks % (10 * Self.ticksPerSecond) == 0, nodes[i].control.spore.members[nodes[i].certificate.nodeID] != nil {
            submit(i, .refresh(Capabilities(cpus: 2, memoryMiB: 4096, features: .libvirt)))
        }
        processReady(i)
    }

    func context(_ i: Int) -> ControllerContext {
        ControllerContext(node: nodes[i].certificate.nodeID, isLeader: nodes[i].raft?.role == .leader, state: nodes[i].control,
                          tick: nodes[i].governor?.ticks ?? 0, ticksPerSecond: Self.ticksPerSecond, millis: UInt64(max(0, now)))
    }

    /// Peers whose connection we would see closed: crashed ones (a partition only goes silent).
    func lostConnections(_ i: Int) -> Set<UInt64> {
        Set(nodes.filter { !$0.up }.map(\.raftID))
    }

    mutating func deliver(_ d: SimNetwork<PeerMessage>.Delivery) {
        guard let i = byRaftID[d.to], nodes[i].up else { return }
        var r = nodes[i].random
        let lost = lostConnections(i)
        carry(i, nodes[i].governor!.heard(from: d.from, raft: nodes[i].raft!, state: nodes[i].control, lostConnections: lost, using: &r))
        nodes[i].random = r
        guard nodes[i].up else { return }
        let raft = nodes[i].raft!, control = nodes[i].control
        switch d.payload {
        case .raft(let m):
            guard m.from == d.from, m.to == nodes[i].raftID else { return fail("a Raft message arrived from a peer other than its sender") }
            nodes[i].raft!.step(m)
        case .hello, .clientRequest, .clientAnswer:
            break
        case let .join(signed, address):
            carry(i, nodes[i].governor!.joinRequested(signed, from: d.from, address: address, raft: raft, state: control))
        case .propose(let signed):
            propose(i, signed)
        case .probe(let p):
            carry(i, nodes[i].governor!.receiveProbe(p, from: d.from))
        case .report(let target):
            carry(i, nodes[i].governor!.failureReported(target, by: d.from, raft: raft, state: control))
        case .vote(let v):
            carry(i, nodes[i].governor!.receiveVote(v, from: d.from, raft: raft, state: control))
        }
        if nodes[i].up { processReady(i) }
    }

    mutating func send(_ i: Int, to: UInt64, _ m: PeerMessage) {
        guard to != nodes[i].raftID, byRaftID[to] != nil else { return }
        result.messages += 1
        network.send(from: nodes[i].raftID, to: to, m, now: now)
    }

    mutating func carry(_ i: Int, _ effects: [GovernorEffect]) {
        for e in effects {
            guard nodes[i].up else { return }
            switch e {
            case let .proposeConfChange(cc, reason):
                if let index = try? nodes[i].raft!.proposeConfChange(cc) {
                    nodes[i].governor!.confChangeProposed(at: index)
                    trace("n\(i): \(reason)")
                }
            case let .transferLeadership(to, reason):
                if (try? nodes[i].raft!.transferLeadership(to: to)) != nil { trace("n\(i): \(reason)") }
            case .submit(let c):
                submit(i, c)
            case .propose(let s):
                propose(i, s)
            case .requestAdmission:
                let join = PeerMessage.join(SignedCommand(.admit(nodes[i].certificate), author: nodes[i].certificate.nodeID,
                                                          key: nodes[i].key, network: nodes[i].control.network.id), address: "n\(i)")
                let leader = nodes[i].raft!.leader
                if leader != .none { send(i, to: leader, join) } else { for n in nodes where n.index != i { send(i, to: n.raftID, join) } }
            case let .send(to, m):
                send(i, to: to, m)
            case let .persistVote(own, sequence):
                nodes[i].storedVotes[sequence] = own
            case .readSeedSpores, .log, .count, .roundMessages:
                break
            case .note(let s):
                trace("n\(i): \(s)")
            case .roundOpened(let seq):
                if nodes[i].roundsOpenedAt[seq] == nil { nodes[i].roundsOpenedAt[seq] = now; if i == 0 { result.roundsOpened += 1 } }
            case .roundDecided:
                if i == 0 { result.roundsDecided += 1 }
            }
        }
    }

    /// The VM controller's effects; its driver's actions become which node runs which guest.
    mutating func carryVM(_ i: Int, _ effects: [ControllerEffect<VMAction>]) {
        for e in effects {
            guard nodes[i].up else { return }
            switch e {
            case .act(.run(let r)): nodes[i].running.insert(r.name); trace("n\(i): runs VM \(r.name) at epoch \(r.epoch)")
            case .act(.fence(let name, let why)):
                nodes[i].running.remove(name); trace("n\(i): fences VM \(name): \(why)")
                driverReports.removeAll { $0.node == i }
            case .act(.destroy(let name, let why)):
                nodes[i].running.remove(name); trace("n\(i): destroys VM \(name): \(why)")
                driverReports.removeAll { $0.node == i }
            case .act(.handOver(let r)):
                // The driver converges while the guest runs, then pauses it and reports; one hand-over
                // in four fails before the pause instead (the guest runs on).
                migrationTargets += 1
                let report: VMDriverReport = migrationTargets % 4 == 0
                    ? .handOverFailed(name: r.name, epoch: r.epoch, reason: "simulated converge failure")
                    : .readyToSwitch(name: r.name, epoch: r.epoch)
                driverReports.append((now + 300 + SimTime(migrationTargets % 5) * 200, i, report))
                trace("n\(i): hands VM \(r.name) over at epoch \(r.epoch)")
            case .act(.handOverDecided(let name, let switched, let resume)):
                driverReports.removeAll { $0.node == i }
                if !switched && resume { nodes[i].running.insert(name) }
                trace("n\(i): hand-over of VM \(name) decided: \(switched ? "switched" : resume ? "aborted, resumes" : "aborted, stays paused")")
            case .act(.hold), .act(.keepAlive): break
            default: carryControllers(i, [e])
            }
        }
    }

    /// The membership controller's effects; its driver's "store" is the node's certificate on disk.
    mutating func carryMembership(_ i: Int, _ effects: [ControllerEffect<MembershipAction>]) {
        for e in effects {
            guard nodes[i].up else { return }
            if case .submit(let c) = e, options.trace { trace("n\(i): membership submits \(c)".prefix(160).description) }
            if case .act(.store(let cert)) = e {
                nodes[i].certificate = cert
                nodes[i].governor?.present(cert)
            } else {
                carryControllers(i, [e])
            }
        }
    }

    mutating func carryControllers<A>(_ i: Int, _ effects: [ControllerEffect<A>]) {
        for e in effects {
            guard nodes[i].up else { return }
            switch e {
            case .propose(let entry), .request(let entry):
                if nodes[i].raft!.role == .leader { _ = try? nodes[i].raft!.propose(entry.encoded()) }
            case .submit(let c): submit(i, c)
            case .note(let s): trace("n\(i): \(s)")
            case .act: break  // the driver writes a file; nothing to simulate
            }
        }
    }

    mutating func submit(_ i: Int, _ c: SporeCommand) {
        propose(i, SignedCommand(c, author: nodes[i].certificate.nodeID, key: nodes[i].key, network: nodes[i].control.network.id))
    }

    mutating func propose(_ i: Int, _ s: SignedCommand) {
        let raft = nodes[i].raft!
        if raft.role == .leader {
            _ = try? nodes[i].raft!.propose(ControlEntry.spore(s, millis: Self.epochSeconds * 1000 + now).encoded())
        } else {
            nodes[i].proposals += 1
            if let to = proposalRoute(me: nodes[i].raftID, leader: raft.leader, silentTicks: raft.ticksSinceLeader, patience: 2 * raft.config.electionTicks,
                                      sclerotia: nodes[i].control.spore.sclerotia, attempt: nodes[i].proposals) {
                send(i, to: to, .propose(s))
            }
        }
    }

    /// The agent's Ready loop: persist, send, apply, advance.
    mutating func processReady(_ i: Int) {
        while nodes[i].up, nodes[i].raft!.hasReady {
            let rd = nodes[i].raft!.ready()
            nodes[i].durable.persist(rd)
            for m in rd.messages { send(i, to: m.to, .raft(m)) }
            if let s = rd.snapshot, !s.data.isEmpty {
                do { nodes[i].control = try ControlState.restore(s.data, network: nodes[i].control.network) } catch {
                    return fail("n\(i) could not restore a snapshot: \(error)")
                }
                nodes[i].governor!.restored(state: nodes[i].control)
                carryControllers(i, nodes[i].pods.applied(.restored, context: context(i)))
                carryMembership(i, nodes[i].membership!.applied(.restored, context: context(i)))
                carryVM(i, nodes[i].vmc!.applied(.restored, context: context(i)))
            }
            for e in rd.committedEntries where e.kind == .normal { apply(i, e) }
            let confChanged = rd.committedEntries.contains { $0.kind == .confChange }
            nodes[i].raft!.advance(rd)
            if nodes[i].raft!.role == .leader {
                let term = nodes[i].raft!.term
                if let other = leadersByTerm[term], other != nodes[i].raftID {
                    return fail("two leaders in term \(term): n\(byRaftID[other]!) and n\(i)")
                }
                if leadersByTerm[term] == nil { leadersByTerm[term] = nodes[i].raftID; result.leadersElected += 1 }
            }
            carry(i, nodes[i].governor!.readyApplied(confChanged: confChanged, raft: nodes[i].raft!, state: nodes[i].control))
        }
    }

    mutating func apply(_ i: Int, _ e: Entry) {
        let before = nodes[i].control.spore
        var changes: [ControlChange] = []
        do { changes = try nodes[i].control.apply(e) } catch {
            if case .refused = error.code, case .spore(let s, _)? = try? ControlEntry.decode(e.data) {
                if i == leaderIndex { trace("n\(i): committed command refused: \(error)") }
                carry(i, nodes[i].governor!.refused(s, error))
            }
        }
        guard !changes.isEmpty, nodes[i].up else { return }
        checkIssued(i, before: before, changes)
        if i == leaderIndex {
            for case .spore(let sc) in changes {
                if case let .setStatus(_, status) = sc.command, status == .failed { result.failuresRecorded += 1 }
                if case .vmSwitch = sc.command { result.migrationsSwitched += 1 }
                if case let .decideVote(seq, _) = sc.command, let round = nodes[i].control.spore.rounds[seq],
                   round.kind == .failure, round.decision == .yes { result.failuresRecorded += 1 }
            }
        }
        var r = nodes[i].random
        carry(i, nodes[i].governor!.applied(changes, raft: nodes[i].raft!, state: nodes[i].control, using: &r))
        nodes[i].random = r
        guard nodes[i].up else { return }
        let ctx = context(i)
        for c in changes {
            carryControllers(i, nodes[i].pods.applied(c, context: ctx))
            if nodes[i].up { carryMembership(i, nodes[i].membership!.applied(c, context: ctx)) }
            if nodes[i].up { carryVM(i, nodes[i].vmc!.applied(c, context: ctx)) }
        }
        var proposedAt = now
        if case .spore(_, let millis)? = try? ControlEntry.decode(e.data) { proposedAt = millis - Self.epochSeconds * 1000 }
        checkRecordedFailures(i, changes, proposedAt: proposedAt)
    }

    // MARK: checks

    /// A member recorded failed must have been down or cut off recently (honest voters never
    /// condemn a node they can all reach).
    /// `proposedAt`: when the entry was proposed (a node replaying its log after a restart applies old
    /// records; they are judged at the time they were made).
    mutating func checkRecordedFailures(_ i: Int, _ changes: [ControlChange], proposedAt: SimTime) {
        for case .spore(let s) in changes {
            var failedNode: MyceliumIdentity.NodeID?
            if case let .setStatus(node, status) = s.command, status == .failed { failedNode = node }
            if case let .decideVote(seq, _) = s.command, let round = nodes[i].control.spore.rounds[seq], round.kind == .failure,
               round.decision == .yes { failedNode = round.node }
            guard let node = failedNode, let j = nodes.firstIndex(where: { $0.certificate.nodeID == node }) else { continue }
            if j == result.killed || nodes[j].killedForGood { continue }
            // Detection takes a few seconds of silence; anything unreachable within the window counts.
            let window: SimTime = 30_000
            if nodes[j].up && proposedAt - lastUnreachable[j] > window {
                return fail("n\(j) was recorded failed at n\(i) although it was up and reachable for the last \(window) ms")
            }
        }
    }

    /// Every certificate a spore installs carries a quorum of valid signatures of its generation
    /// (checked here independently of the spore's own check), and a revoked member is never renewed.
    mutating func checkIssued(_ i: Int, before: PrimarySpore, _ changes: [ControlChange]) {
        let after = nodes[i].control.spore
        if after.chain.generation != before.chain.generation && i == leaderIndex { result.linksAdded += 1 }
        for (id, m) in after.members where before.members[id]?.certificate != m.certificate {
            let c = m.certificate
            if i == leaderIndex { result.certificatesIssued += 1 }
            guard let signers = after.chain.signers(of: c.generation) else {
                return fail("n\(i) installed a certificate of \(id) by unknown generation \(c.generation)")
            }
            let valid = Set(c.signatures.filter { Int($0.index) < signers.count && signers[Int($0.index)].key.verify($0.signature, for: c.signedBytes) }.map(\.index))
            if valid.count < quorumSize(of: signers.count) {
                return fail("n\(i) installed a certificate of \(id) with \(valid.count) valid signatures of \(signers.count) (quorum \(quorumSize(of: signers.count)))")
            }
            if before.revoked[id] != nil { return fail("n\(i) renewed \(id) after it was revoked") }
        }
    }

    /// Once a second: every honest member that is up and a live member at the leader presents a
    /// valid certificate; a revocation reached every live node within the bound.
    mutating func checkMembership() {
        guard let l = leaderIndex, result.failure == nil else { return }
        let leader = nodes[l].control.spore
        let sporeNow = Self.epochSeconds + now / 1000
        for i in nodes.indices where nodes[i].up && !nodes[i].killedForGood && i != result.revoked {
            guard let m = leader.members[nodes[i].certificate.nodeID], m.status == .alive || m.status == .suspect else { continue }
            let own = nodes[i].control.spore.members[nodes[i].certificate.nodeID]?.certificate
            let presented = [nodes[i].certificate, own].compactMap { $0 }.max { $0.expiresAt < $1.expiresAt }!
            if presented.expiresAt <= sporeNow && networkUnavailable(from: presented.renewAt, to: presented.expiresAt) {
                if excusedExpiries.insert(presented.serial).inserted { result.expiredUnavailable += 1 }
                continue
            }
            if presented.expiresAt <= sporeNow {
                return fail("n\(i), up and a member, presents a certificate that expired \(sporeNow - presented.expiresAt) s ago (serial \(presented.serial))")
            }
            if presented.serial != nodes[i].checkedSerial {
                do { try presented.verify(chain: leader.chain, now: sporeNow) } catch {
                    return fail("n\(i) presents a certificate that does not verify against the leader's chain: \(error)")
                }
                nodes[i].checkedSerial = presented.serial
            }
        }
        if let r = result.revoked, leader.revoked[nodes[r].certificate.nodeID] != nil {
            if revokedSince == nil { revokedSince = now }
            if now - revokedSince! > 5000 {
                for i in nodes.indices where nodes[i].up && i != r && now - lastUnreachable[i] > 10_000
                    && nodes[i].control.spore.revoked[nodes[r].certificate.nodeID] == nil {
                    return fail("n\(i) does not know n\(r) is revoked \(now - revokedSince!) ms after the leader committed it")
                }
            }
        }
    }

    /// Whether, between spore times `from` and `to`, no leader had a quorum for half that window or
    /// more (a renewal could not be made: certificates outlive only outages shorter than a third of
    /// their lifetime).
    func networkUnavailable(from: Int64, to: Int64) -> Bool {
        let a = (from - Self.epochSeconds) * 1000, b = (to - Self.epochSeconds) * 1000
        let down = SimTime(unavailableSteps.filter { $0 >= a && $0 <= b }.count) * Self.tickMs
        return down * 2 >= b - a
    }

    /// Whether some leader has a majority of its voters up and on its side of any partition.
    var leaderHasQuorum: Bool {
        guard let l = leaderIndex, let raft = nodes[l].raft else { return false }
        let reachable = raft.confState.voters.filter { id in
            guard let j = byRaftID[id], nodes[j].up else { return false }
            return partitioned.isEmpty || partitioned.contains(j) == partitioned.contains(l)
        }
        return reachable.count * 2 > raft.confState.voters.count
    }

    static let vmName = "vm-0"

    /// The leader records one VM: primary and replica drawn by the seed.
    mutating func createVM() {
        let pair = Array(nodes.indices.shuffled(using: &random).prefix(2))
        let spec = VMSpec(name: Self.vmName, memoryMiB: 256, vcpus: 1)
        runUntil(now + 5000) { sim in sim.leaderIndex.map { sim.nodes[$0].control.vms.vms[Self.vmName] != nil } ?? false }
        for _ in 0..<20 where !(leaderIndex.map { nodes[$0].control.vms.vms[Self.vmName] != nil } ?? false) {
            if let l = leaderIndex {
                let e = ControlEntry.vm(.create(spec, primary: nodes[pair[0]].certificate.nodeID, replica: nodes[pair[1]].certificate.nodeID))
                _ = try? nodes[l].raft!.propose(e.encoded())
            }
            runUntil(now + 500) { sim in sim.leaderIndex.map { sim.nodes[$0].control.vms.vms[Self.vmName] != nil } ?? false }
        }
        vmCreated = leaderIndex.map { nodes[$0].control.vms.vms[Self.vmName] != nil } ?? false
        if !vmCreated { fail("the VM could not be recorded") }
        trace("VM \(Self.vmName): primary n\(pair[0]), replica n\(pair[1])")
    }

    /// The operator asks for a planned migration of the VM to another alive node (taking turns);
    /// no random draw, so the rest of the run's randomness is what it was without migrations.
    mutating func requestMigration() {
        guard vmCreated, let l = leaderIndex, let r = nodes[l].control.vms.vms[Self.vmName], r.migration == nil else { return }
        let spore = nodes[l].control.spore
        let alive = nodes.indices.filter { j in
            let id = nodes[j].certificate.nodeID
            return id != r.primary && spore.members[id]?.status == .alive && spore.revoked[id] == nil
        }
        guard !alive.isEmpty else { return }
        let to = alive[result.migrationsRequested % alive.count]
        result.migrationsRequested += 1
        _ = try? nodes[l].raft!.propose(ControlEntry.vm(.requestMigration(name: Self.vmName, to: nodes[to].certificate.nodeID, epoch: r.epoch)).encoded())
        trace("operator: migrate VM \(Self.vmName) to n\(to) (epoch \(r.epoch))")
    }

    /// Why the VM is not where it should be once settled, or nil: it runs on its recorded primary and
    /// nowhere else; or, when that primary is gone for good (killed or revoked) with no live replica
    /// to fail over to (both copies lost: a double failure), it runs nowhere.
    func vmProblem(leader l: Int, victim: Int) -> String? {
        guard vmCreated else { return nil }
        guard let rec = nodes[l].control.vms.vms[Self.vmName] else { return "the VM's record is gone" }
        let runners = nodes.indices.filter { nodes[$0].up && nodes[$0].running.contains(Self.vmName) }
        let lost = [victim, result.revoked].compactMap { $0 }.contains { nodes[$0].certificate.nodeID == rec.primary }
        if lost { return runners.isEmpty ? nil : "VM \(Self.vmName) runs on \(runners.map { "n\($0)" }) although its primary is gone" }
        guard runners.count == 1, nodes[runners[0]].certificate.nodeID == rec.primary else {
            return "VM \(Self.vmName) runs on \(runners.map { "n\($0)" }) but its primary is \(rec.primary) (epoch \(rec.epoch))"
        }
        return nil
    }

    /// Never two running copies of the VM.
    mutating func checkVMs() {
        let runners = nodes.indices.filter { nodes[$0].up && nodes[$0].running.contains(Self.vmName) }
        if runners.count == 1 { result.vmRunningSteps += 1 }
        result.vmRunsOn = runners.first
        if let l = leaderIndex, let r = nodes[l].control.vms.vms[Self.vmName] { result.vmEpoch = r.epoch }
        if runners.count > 1 {
            fail("VM \(Self.vmName) runs on \(runners.map { "n\($0)" }.joined(separator: " and ")) at once")
        }
    }

    mutating func checkInvariants() {
        for i in nodes.indices where nodes[i].up {
            let pods = nodes[i].control.pods.assignments
            let blocks = Array(pods.values)
            for a in blocks.indices { for b in blocks.indices where b > a && blocks[a].overlaps(blocks[b]) {
                return fail("n\(i) holds overlapping pod CIDRs \(blocks[a]) and \(blocks[b])")
            } }
        }
        // Rounds opened at an honest live voter are decided there within the bound.
        for i in nodes.indices where nodes[i].up && !nodes[i].liar {
            guard let g = nodes[i].governor else { continue }
            for (seq, at) in nodes[i].roundsOpenedAt where now - at > Self.roundBound {
                guard let round = nodes[i].control.spore.rounds[seq] else { nodes[i].roundsOpenedAt[seq] = nil; continue }
                // A round this node cannot see decided is fine only if it was restarted meanwhile or is not a voter.
                if round.spec.index(of: nodes[i].certificate.nodeID) == nil || lastUnreachable[i] > at { nodes[i].roundsOpenedAt[seq] = nil; continue }
                let local = g.votes.outcome(of: round.spec.id)
                if local == nil && round.isOpen {
                    return fail("vote \(seq) (\(round.kind) of \(round.node)) opened at n\(i) \(now - at) ms ago is still undecided there")
                }
                // Once the network committed a decision, every honest voter's own outcome is that
                // decision: a voter whose round failed locally (a late reveal, a lost message) must not
                // be left disagreeing with the certificate every replica applied.
                if let decided = round.decision, local?.acceptedResult != decided {
                    return fail("vote \(seq) (\(round.kind) of \(round.node)) was decided \(decided == .yes ? "yes" : "no") but n\(i)'s own outcome is \(local.map { "\($0)" } ?? "none")")
                }
                nodes[i].roundsOpenedAt[seq] = nil
            }
        }
    }

    var formed: Bool {
        guard let l = leaderIndex else { return false }
        let s = nodes[l].control.spore
        let voters = Set(nodes[l].raft!.confState.voters)
        return s.phase == .distributed && s.presentMembers.count == nodes.count
            && Set(s.sclerotia.map(\.compact)) == voters && voters.count == nodes[l].governor!.targetVoters(spore: s)
    }

    var leaderIndex: Int? {
        nodes.indices.filter { nodes[$0].up && nodes[$0].raft?.role == .leader }.max { nodes[$0].raft!.term < nodes[$1].raft!.term }
    }

    /// Whether the live voters other than `v` are a majority of the leader's configuration.
    func quorumSurvives(without v: Int) -> Bool {
        guard let l = leaderIndex, !nodes[l].raft!.confState.isJoint else { return false }
        let voters = nodes[l].raft!.confState.voters
        let live = voters.filter { id in id != nodes[v].raftID && byRaftID[id].map { nodes[$0].up } == true }
        return live.count * 2 > voters.count && partitioned.isEmpty
    }

    func victimRemoved(_ v: Int) -> Bool {
        guard let l = leaderIndex else { return false }
        let id = nodes[v].certificate.nodeID
        return nodes[l].control.spore.members[id]?.status == .failed && !nodes[l].raft!.confState.isVoter(nodes[v].raftID)
    }

    func settled(_ v: Int) -> Bool {
        guard let l = leaderIndex else { return false }
        let s = nodes[l].control.spore
        let voters = Set(nodes[l].raft!.confState.voters)
        let live = nodes.indices.filter { $0 != v && $0 != result.revoked }
        if vmProblem(leader: l, victim: v) != nil { return false }
        return Set(s.sclerotia.map(\.compact)) == voters && !nodes[l].raft!.confState.isJoint
            && live.allSatisfy { s.members[nodes[$0].certificate.nodeID]?.status == .alive }
            && live.allSatisfy { nodes[l].control.pods.cidr(of: nodes[$0].certificate.nodeID) != nil }
    }

    mutating func checkEnd(_ victim: Int) {
        guard let l = leaderIndex else { return fail("no leader after healing") }
        let s = nodes[l].control.spore
        let voters = Set(nodes[l].raft!.confState.voters)
        if Set(s.sclerotia.map(\.compact)) != voters {
            return fail("after settling, the sclerotia (\(s.sclerotia.count)) differ from the Raft voters (\(voters.count))")
        }
        if let r = result.revoked {
            let id = nodes[r].certificate.nodeID
            if s.revoked[id] == nil { return fail("n\(r)'s revocation was never committed") }
            if voters.contains(id.compact) { return fail("n\(r), revoked, is still a Raft voter") }
        }
        if let p = vmProblem(leader: l, victim: victim) { return fail("after settling, \(p)") }
        for i in nodes.indices where i != victim && i != result.revoked {
            let id = nodes[i].certificate.nodeID
            if s.members[id]?.status == .failed { return fail("n\(i), alive, is recorded failed") }
            if nodes[l].control.pods.cidr(of: id) == nil { return fail("n\(i) has no pod CIDR") }
        }
    }

    mutating func fail(_ why: String) {
        guard result.failure == nil else { return }
        result.failure = why
        result.failedAt = now
        result.trace = Array(traceLines.suffix(options.trace ? 4000 : 60))
    }

    mutating func trace(_ line: String) {
        traceLines.append("\(now)ms \(line)")
        if traceLines.count > 4000 { traceLines.removeFirst(2000) }
    }
}
