// A whole Raft cluster in one process, driven by one seed (after TigerBeetle's VOPR and FoundationDB's
// simulation). The seed draws the cluster size, the Raft tunables, the network, disks and clocks, the fault
// schedule and the client workload. The run has two phases:
//
//  1. safety: faults of every kind; the invariant checkers run after every step;
//  2. liveness: the network heals, crashed nodes restart, and a write must commit within a bounded time.
//
// Finally the recorded client history must be linearizable. Replaying a seed replays the run exactly.

@_spi(Testing) import MyceliumRaft
import MyceliumCore

/// What to simulate. Everything not set here is drawn from the seed.
public struct RaftSimulationOptions: Sendable {
    public var seed: UInt64
    /// 3, 5 or 7; nil lets the seed choose.
    public var nodeCount: Int?
    /// Length of the faulty phase, in simulated milliseconds.
    public var safetyDuration: SimTime
    /// The bound on the liveness phase: a write must commit within this many milliseconds after healing.
    public var livenessBound: SimTime
    /// Keep a trace of events (costly; used to explain a failure).
    public var trace: Bool
    /// A deliberate Raft bug, for mutation tests.
    @_spi(Testing) public var mutation: RaftConfig.Mutation = .none

    public init(seed: UInt64, nodeCount: Int? = nil, safetyDuration: SimTime = 3000, livenessBound: SimTime = 3000,
                trace: Bool = false) {
        self.seed = seed
        self.nodeCount = nodeCount
        self.safetyDuration = safetyDuration
        self.livenessBound = livenessBound
        self.trace = trace
    }
}

/// The outcome of one run.
public struct RaftSimulationResult: Sendable {
    public var seed: UInt64
    public var nodeCount: Int
    /// The first broken property, or nil if the run passed.
    public var failure: String?
    public var failedAt: SimTime?
    public var scenario: String
    public var maxCommitIndex: UInt64 = 0
    public var leadersElected = 0
    public var writesCompleted = 0
    public var readsCompleted = 0
    public var operationsUnknown = 0
    public var crashes = 0
    public var snapshotsInstalled = 0
    /// Leader transfers started during the run.
    public var leaderTransfers = 0
    /// Membership changes proposed (and accepted by the leader) during the run.
    public var membershipChanges = 0
    /// The configuration the last leader ended with.
    public var finalConfiguration = ""
    public var messagesSent = 0
    public var steps = 0
    /// The last trace lines before the end (only with `trace`).
    public var trace: [String] = []

    public var passed: Bool { failure == nil }

    /// The command that replays this run exactly.
    public var replayCommand: String {
        "mycelium-sim raft --seed \(seed) --nodes \(nodeCount)" + (mutationFlag.map { " --mutation \($0)" } ?? "")
    }
    /// The hidden `--mutation` value this run used, if any.
    public var mutationFlag: String?

    public var summary: String {
        let status = failure.map { "FAILED at t=\(failedAt ?? 0)ms: \($0)" } ?? "ok"
        return "seed \(seed) nodes=\(nodeCount) \(status) | commit=\(maxCommitIndex) leaders=\(leadersElected) "
            + "writes=\(writesCompleted) reads=\(readsCompleted) unknown=\(operationsUnknown) crashes=\(crashes) "
            + "snapshots=\(snapshotsInstalled) confChanges=\(membershipChanges) transfers=\(leaderTransfers) [\(finalConfiguration)] msgs=\(messagesSent) steps=\(steps) | \(scenario)"
    }
}

/// The simulator. `RaftSimulation.run(_:)` is the whole API.
public struct RaftSimulation {
    struct Node {
        var id: NodeID
        var raft: Raft?
        var durable: RaftStorageState
        var kv = KVStore()
        var random: SeededRandom
        var pendingReads: [ReadState] = []
        var writing = false
    }

    struct Client {
        enum State {
            case idle(until: SimTime)
            case writing(node: NodeID, sequence: UInt32, op: Int, deadline: SimTime)
            case reading(node: NodeID, context: UInt64, key: UInt8, invoked: SimTime, index: UInt64?, deadline: SimTime)
        }
        var id: UInt32
        var sequence: UInt32 = 0
        var state: State = .idle(until: 0)
        var leaderHint: NodeID = .none
    }

    let options: RaftSimulationOptions
    var random: SeededRandom
    var nodes: [Node] = []
    // Scheduling state lives in flat arrays: reading it must not copy whole nodes (debug builds do).
    var up: [Bool] = []
    var clocks: [SimClock] = []
    var disks: [SimDisk<Ready>] = []
    var restartAt: [SimTime?] = []
    var network: SimNetwork<Message>
    var clients: [Client] = []
    var history: [RegisterOperation] = []
    var invariants = RaftInvariants()
    var now: SimTime = 0
    var result: RaftSimulationResult
    var nextFaultAt: SimTime = 0
    /// Membership changes (simple, learner promotion and joint) are proposed on this schedule; .max disables them.
    var nextMembershipAt: SimTime = .max
    var flapping: (a: [NodeID], b: [NodeID], until: SimTime, cut: Bool)?
    var inLiveness = false
    var livenessStart: SimTime = 0
    var livenessWriteDone = false
    var nextReadContext: UInt64 = 1
    var compactEvery: UInt64
    var keyCount: UInt8
    var traceRing: [String] = []

    /// Runs one simulation to completion.
    public static func run(_ options: RaftSimulationOptions) -> RaftSimulationResult {
        var sim = RaftSimulation(options: options)
        sim.runAll()
        return sim.result
    }

    init(options: RaftSimulationOptions) {
        self.options = options
        var rng = SeededRandom(seed: options.seed)
        // Always draw the size, so passing --nodes with the size a seed chose replays the same run.
        let drawnSize = [3, 5, 7][Int.random(in: 0..<3, using: &rng)]
        let n = options.nodeCount ?? drawnSize
        // Raft tunables: small windows and messages exercise batching limits, flow control and chunking.
        var base = RaftConfig(id: 1)
        base.preVote = rng.chance(0.8)
        base.checkQuorum = rng.chance(0.8)
        base.maxInflightMessages = [1, 4, 64][Int.random(in: 0..<3, using: &rng)]
        base.maxInflightBytes = [512, 1 << 20][Int.random(in: 0..<2, using: &rng)]
        base.maxBytesPerMessage = [64, 1024, 1 << 20][Int.random(in: 0..<3, using: &rng)]
        base.snapshotChunkBytes = [16, 64, 4096][Int.random(in: 0..<3, using: &rng)]
        base.mutation = options.mutation
        compactEvery = [8, 32, 100_000][Int.random(in: 0..<3, using: &rng)]
        keyCount = UInt8.random(in: 2...5, using: &rng)
        // Network: loss, duplication, delay (with reordering) and spikes.
        let faults = NetworkFaults(
            lossProbability: rng.chance(0.3) ? 0 : Double.random(in: 0...0.2, using: &rng),
            duplicateProbability: rng.chance(0.5) ? 0 : Double.random(in: 0...0.1, using: &rng),
            minDelay: 1, maxDelay: SimTime.random(in: 2...30, using: &rng),
            spikeProbability: rng.chance(0.5) ? 0 : 0.02, spikeDelay: 200)
        network = SimNetwork(faults: faults, random: rng.fork())
        let slowDisks = rng.chance(0.5)
        let drift = Double.random(in: 0...0.25, using: &rng)
        let ids = (1...UInt64(n)).map { $0 }
        let boot = RaftStorageState.bootstrap(voters: ids)
        for id in ids {
            var nodeRandom = rng.fork()
            var cfg = base
            cfg.id = id
            // Per-node clock drift: a 10 ms tick stretched or shrunk by up to `drift`.
            let period = max(1, SimTime((10.0 * (1 + Double.random(in: -drift...drift, using: &nodeRandom))).rounded()))
            let disk = SimDisk<Ready>(minLatency: 0, maxLatency: slowDisks ? 5 : 1,
                                      stallProbability: slowDisks ? 0.02 : 0, stallLatency: slowDisks ? 150 : 0,
                                      random: nodeRandom.fork())
            let raft = try! Raft(config: cfg, storage: boot, random: &nodeRandom)
            clocks.append(SimClock(period: period, phase: SimTime.random(in: 0..<period, using: &nodeRandom)))
            disks.append(disk)
            up.append(true)
            restartAt.append(nil)
            nodes.append(Node(id: id, raft: raft, durable: boot, random: nodeRandom))
        }
        for c in 1...3 { clients.append(Client(id: UInt32(c), state: .idle(until: SimTime.random(in: 0...50, using: &rng)))) }
        random = rng
        let scenario = "preVote=\(base.preVote) checkQuorum=\(base.checkQuorum) inflight=\(base.maxInflightMessages)/\(base.maxInflightBytes)B "
            + "msg=\(base.maxBytesPerMessage)B chunk=\(base.snapshotChunkBytes)B compactEvery=\(compactEvery) keys=\(keyCount) "
            + "loss=\(fmt(faults.lossProbability)) dup=\(fmt(faults.duplicateProbability)) delay=1-\(faults.maxDelay)ms "
            + "spikes=\(faults.spikeProbability > 0) slowDisks=\(slowDisks) drift=\(fmt(drift))"
        result = RaftSimulationResult(seed: options.seed, nodeCount: n, scenario: scenario)
        switch options.mutation {
        case .none: break
        case .commitPriorTermByCounting: result.mutationFlag = "commit-prior-term"
        case .voteIgnoringLogRecency: result.mutationFlag = "vote-ignoring-log"
        }
        nextFaultAt = SimTime.random(in: 100...400, using: &random)
        if random.chance(0.6) { nextMembershipAt = SimTime.random(in: 200...800, using: &random) }
        result.scenario += " membership=\(nextMembershipAt != .max)"
    }

    // MARK: - Main loop

    mutating func runAll() {
        let end = options.safetyDuration + options.livenessBound
        while result.failure == nil {
            guard let t = nextEventTime(), t <= end else { break }
            now = t
            if !inLiveness && now >= options.safetyDuration { startLiveness() }
            stepOnce()
            result.steps += 1
            if inLiveness && !livenessWriteDone && now > livenessStart + options.livenessBound {
                fail("liveness: no write committed within \(options.livenessBound) ms after the network healed")
            }
        }
        if result.failure == nil && !livenessWriteDone {
            fail("liveness: no write committed within \(options.livenessBound) ms after the network healed")
        }
        if result.failure == nil, let key = Linearizability.firstViolation(history) {
            let ops = history.filter { $0.key == key }
            fail("linearizability: the history of key \(key) has no linearization (\(ops.count) operations)")
            if options.trace {
                for op in ops { trace("  client \(op.client) \(op.kind) [\(op.invoked), \(op.returned.map(String.init) ?? "never")]") }
            }
        }
        result.leadersElected = invariants.leadersElected
        result.maxCommitIndex = invariants.maxCommitted
        result.messagesSent = network.sent
        result.operationsUnknown = history.filter { $0.returned == nil }.count
        result.trace = traceRing
        if let l = nodes.indices.first(where: { up[$0] && nodes[$0].raft!.role == .leader }) {
            let c = nodes[l].raft!.confState
            result.finalConfiguration = "voters \(c.voters)" + (c.learners.isEmpty ? "" : " learners \(c.learners)")
        }
    }

    func nextEventTime() -> SimTime? {
        var t: SimTime? = nextFaultAt
        func consider(_ x: SimTime?) { if let x, t == nil || x < t! { t = x } }
        if inLiveness { t = nil } else { consider(nextMembershipAt) }
        consider(network.nextDeliveryTime)
        for i in nodes.indices {
            if up[i] {
                consider(clocks[i].nextTick)
                consider(disks[i].nextCompletionTime)
            } else {
                consider(restartAt[i])
            }
        }
        for c in clients.indices {
            switch clients[c].state {
            case let .idle(until): consider(until)
            case let .writing(_, _, _, deadline): consider(deadline)
            case let .reading(_, _, _, _, _, deadline): consider(deadline)
            }
        }
        if !inLiveness { consider(options.safetyDuration) }
        return t
    }

    /// Processes exactly one event due at `now`, in a fixed priority order so runs are deterministic.
    mutating func stepOnce() {
        if !inLiveness && nextFaultAt <= now { injectFault(); return }
        if !inLiveness && nextMembershipAt <= now { changeMembership(); return }
        for i in nodes.indices where !up[i] {
            if let r = restartAt[i], r <= now { restart(i); return }
        }
        for i in nodes.indices where up[i] {
            if let t = disks[i].nextCompletionTime, t <= now, let rd = disks[i].popCompleted(now: now) {
                finishWrite(i, rd)
                return
            }
        }
        if let d = network.popDue(now: now) {
            let i = Int(d.to - 1)
            guard up[i] else { return }
            if options.trace { trace("deliver \(d.payload)") }
            nodes[i].raft!.step(d.payload)
            afterInput(i)
            return
        }
        for i in nodes.indices where up[i] && clocks[i].nextTick <= now {
            clocks[i].advance()
            nodes[i].raft!.tick()
            afterInput(i)
            return
        }
        for c in clients.indices { if clientStep(c) { return } }
    }

    mutating func afterInput(_ i: Int) {
        pump(i)
        check(i)
    }

    mutating func check(_ i: Int) {
        guard result.failure == nil, up[i] else { return }
        if let v = invariants.check(nodes[i].raft!) { fail(v) }
    }

    // MARK: - The shell: persist, then send, then apply (the Ready/Advance contract)

    mutating func pump(_ i: Int) {
        while up[i], !nodes[i].writing, nodes[i].raft!.hasReady {
            let rd = nodes[i].raft!.ready()
            if rd.hardState == nil && rd.entries.isEmpty && rd.snapshot == nil {
                finishWrite(i, rd) // nothing to persist; no disk round trip
            } else {
                nodes[i].writing = true
                disks[i].submit(rd, now: now)
            }
        }
    }

    mutating func finishWrite(_ i: Int, _ rd: Ready) {
        nodes[i].writing = false
        let id = nodes[i].id
        nodes[i].durable.persist(rd)
        if let v = invariants.checkDurableCommit(nodes[i].durable.hardState.commit, node: id) { fail(v); return }
        // Only now, with the write durable, may the messages leave.
        for m in rd.messages { network.send(from: id, to: m.to, m, now: now) }
        if let s = rd.snapshot {
            guard let kv = try? KVStore(snapshot: s.data) else { fail("node \(id): undecodable snapshot at \(s.metadata.index)"); return }
            nodes[i].kv = kv
            result.snapshotsInstalled += 1
            trace("node \(id) installed snapshot \(s.metadata.index)/\(s.metadata.term)")
        }
        for e in rd.committedEntries {
            if let v = invariants.checkApplied(e, node: id) { fail(v); return }
            if e.index <= nodes[i].kv.appliedIndex { continue }
            if let cmd = nodes[i].kv.apply(e) { writeApplied(cmd, on: id) }
        }
        nodes[i].pendingReads.append(contentsOf: rd.readStates)
        nodes[i].raft!.advance(rd)
        serveReads(i)
        maybeCompact(i)
        afterInput(i)
    }

    mutating func maybeCompact(_ i: Int) {
        guard up[i], nodes[i].raft!.appliedIndex >= nodes[i].raft!.firstIndex - 1 + compactEvery else { return }
        let applied = nodes[i].raft!.appliedIndex
        do {
            try nodes[i].raft!.compact(upTo: applied, snapshotData: nodes[i].kv.snapshot())
        } catch {
            fail("node \(nodes[i].id): compaction failed: \(error)")
            return
        }
        // The shell writes the snapshot file atomically before dropping the log (AtomicFile in production).
        nodes[i].durable.compact(with: nodes[i].raft!.latestSnapshot!)
    }

    // MARK: - Faults

    mutating func injectFault() {
        let ids = nodes.map(\.id)
        let roll = Int.random(in: 0..<100, using: &random)
        if let f = flapping, now < f.until {
            // Flapping partition: the cut comes and goes.
            if f.cut { network.heal() } else { network.partition(f.a, f.b) }
            flapping!.cut.toggle()
            nextFaultAt = now + SimTime.random(in: 10...60, using: &random)
            return
        }
        flapping = nil
        switch roll {
        case 0..<15:
            let (a, b) = split(ids)
            network.heal()
            network.partition(a, b)
            trace("fault: partition \(a) | \(b)")
        case 15..<25:
            // Asymmetric: some directed links fail, others keep working.
            network.heal()
            for x in ids { for y in ids where x != y && random.chance(0.3) { network.block(from: x, to: y) } }
            trace("fault: asymmetric partition")
        case 25..<32:
            let (a, b) = split(ids)
            flapping = (a, b, now + SimTime.random(in: 200...600, using: &random), false)
            trace("fault: flapping partition \(a) | \(b)")
        case 32..<40:
            // Isolate whoever leads.
            if let l = nodes.first(where: { $0.raft?.role == .leader })?.id {
                network.heal()
                network.partition([l], ids.filter { $0 != l })
                trace("fault: isolate leader \(l)")
            }
        case 40..<60:
            network.heal()
            trace("fault: heal")
        case 60..<85:
            let upNodes = nodes.indices.filter { up[$0] }
            if let i = upNodes.randomElement(using: &random) {
                crash(i, restartAfter: SimTime.random(in: 20...600, using: &random))
            }
        default:
            // Disks get slow for a while on one node.
            let i = Int.random(in: 0..<nodes.count, using: &random)
            disks[i].stallProbability = random.chance(0.5) ? 0.3 : 0
            disks[i].stallLatency = 100
            trace("fault: node \(nodes[i].id) disk stalls \(disks[i].stallProbability)")
        }
        nextFaultAt = now + SimTime.random(in: 30...400, using: &random)
    }

    /// Proposes a membership change on the leader: promote a learner, re-add a removed node as a learner,
    /// remove a voter (possibly the leader), or demote one voter and remove another at once (a joint change).
    /// Sometimes transfers leadership instead.
    mutating func changeMembership() {
        nextMembershipAt = now + SimTime.random(in: 150...600, using: &random)
        guard let l = nodes.indices.first(where: { up[$0] && nodes[$0].raft!.role == .leader }) else { return }
        let conf = nodes[l].raft!.confState
        if random.chance(0.25), let target = conf.voters.filter({ $0 != nodes[l].id }).randomElement(using: &random) {
            // Leader transfer (thesis §3.10) under the same faults.
            if (try? nodes[l].raft!.transferLeadership(to: target)) != nil {
                trace("transfer: node \(nodes[l].id) hands leadership to \(target)")
                result.leaderTransfers += 1
            }
            afterInput(l)
            return
        }
        if conf.isJoint { return }
        let all = nodes.map(\.id)
        let removed = all.filter { !conf.isVoter($0) && !conf.learners.contains($0) }
        var cc: ConfChange?
        if let learner = conf.learners.randomElement(using: &random), random.chance(0.7) {
            cc = ConfChange([.addVoter(learner)])
        } else if let r = removed.randomElement(using: &random) {
            cc = ConfChange([.addLearner(r)])
        } else if conf.voters.count >= 3 {
            let v = conf.voters.shuffled(using: &random)
            cc = random.chance(0.5) ? ConfChange([.removeNode(v[0])]) : ConfChange([.addLearner(v[0]), .removeNode(v[1])])
        }
        guard let change = cc else { return }
        if (try? nodes[l].raft!.proposeConfChange(change)) != nil {
            trace("membership: node \(nodes[l].id) proposes \(change.changes)")
            result.membershipChanges += 1
        }
        afterInput(l)
    }

    func split(_ ids: [NodeID]) -> ([NodeID], [NodeID]) {
        var rng = random
        let shuffled = ids.shuffled(using: &rng)
        let k = Int.random(in: 1..<ids.count, using: &rng)
        return (Array(shuffled[..<k]).sorted(), Array(shuffled[k...]).sorted())
    }

    mutating func crash(_ i: Int, restartAfter delay: SimTime) {
        trace("fault: crash node \(nodes[i].id) (restart in \(delay) ms)")
        nodes[i].raft = nil
        up[i] = false
        disks[i].crash() // unsynced writes are lost
        nodes[i].writing = false
        nodes[i].pendingReads = []
        nodes[i].kv = KVStore()
        restartAt[i] = now + delay
        result.crashes += 1
    }

    mutating func restart(_ i: Int) {
        restartAt[i] = nil
        var cfg = RaftConfig(id: nodes[i].id)
        // Same tunables as before the crash.
        if let any = nodes.first(where: { $0.raft != nil })?.raft?.config { cfg = any; cfg.id = nodes[i].id }
        let durable = nodes[i].durable
        do {
            let r = try Raft(config: cfg, storage: durable, random: &nodes[i].random)
            nodes[i].raft = r
            up[i] = true
            nodes[i].kv = try durable.snapshot.map { try KVStore(snapshot: $0.data) } ?? KVStore()
        } catch {
            fail("node \(nodes[i].id) cannot restart from its disk: \(error)")
            return
        }
        clocks[i].nextTick = max(clocks[i].nextTick, now + 1)
        trace("restart node \(nodes[i].id) term=\(nodes[i].raft!.term) commit=\(nodes[i].raft!.commitIndex)")
        if let v = invariants.checkRestart(nodes[i].raft!) { fail(v); return }
        afterInput(i)
    }

    /// Heals the network and disks and restarts crashed nodes, except a minority of the voters, which stay down:
    /// a healthy majority alone must make progress.
    mutating func startLiveness() {
        inLiveness = true
        livenessStart = now
        flapping = nil
        network.heal()
        network.faults = NetworkFaults(minDelay: 1, maxDelay: 5)
        // The newest committed configuration: the one held by the node with the highest commit index.
        var best = 0
        var bestCommit: UInt64 = 0
        for i in nodes.indices {
            let c = up[i] ? nodes[i].raft!.commitIndex : nodes[i].durable.hardState.commit
            if c > bestCommit { best = i; bestCommit = c }
        }
        var conf: ConfState
        if up[best] {
            conf = nodes[best].raft!.confState
        } else {
            // Recover it the way the node would on restart.
            var rng = SeededRandom(seed: 0)
            conf = (try? Raft(config: RaftConfig(id: nodes[best].id), storage: nodes[best].durable, random: &rng))?.confState ?? ConfState()
        }
        // Only when no configuration change is pending anywhere is the quorum of `conf` certain to stay the quorum.
        let pending = nodes.indices.contains { i in
            if up[i] {
                let r = nodes[i].raft!
                return r.lastIndex > bestCommit && (bestCommit + 1...r.lastIndex).contains { r.entry(at: $0)?.kind == .confChange }
            }
            return nodes[i].durable.entries.contains { $0.index > bestCommit && $0.kind == .confChange }
        }
        var keepDown: [NodeID] = []
        if !conf.isJoint && !pending && conf.voters.count >= 3 {
            let k = Int.random(in: 0...((conf.voters.count - 1) / 2), using: &random)
            keepDown = Array(conf.voters.shuffled(using: &random).prefix(k))
        }
        for i in nodes.indices {
            disks[i].stallProbability = 0
            if keepDown.contains(nodes[i].id) {
                if up[i] { crash(i, restartAfter: 0) }
                restartAt[i] = nil
            } else if !up[i] {
                restartAt[i] = now
            }
        }
        result.scenario += " livenessDown=\(keepDown)"
        trace("liveness phase: healed; restarting crashed nodes except \(keepDown) of voters \(conf.voters)")
    }

    // MARK: - Clients

    /// Runs the client whose action is due, if any. Returns whether one ran.
    mutating func clientStep(_ c: Int) -> Bool {
        switch clients[c].state {
        case let .idle(until) where until <= now:
            startOperation(c)
            return true
        case let .writing(_, _, _, deadline) where deadline <= now:
            // The outcome is unknown: the write stays in the history without a reply.
            clients[c].state = .idle(until: now + 1)
            clients[c].leaderHint = .none
            return true
        case let .reading(_, _, _, _, _, deadline) where deadline <= now:
            clients[c].state = .idle(until: now + 1)
            clients[c].leaderHint = .none
            return true
        default:
            return false
        }
    }

    mutating func startOperation(_ c: Int) {
        var target = clients[c].leaderHint
        if target == .none || !up[Int(target - 1)] {
            target = nodes.randomElement(using: &random)!.id
        }
        let i = Int(target - 1)
        guard up[i] else {
            clients[c].state = .idle(until: now + SimTime.random(in: 5...20, using: &random))
            return
        }
        let key = UInt8.random(in: 0..<keyCount, using: &random)
        let client = clients[c].id
        let deadline = now + 800
        if random.chance(0.5) {
            clients[c].sequence += 1
            let seq = clients[c].sequence
            let cmd = KVCommand(client: client, sequence: seq, key: key, value: UInt64(client) << 32 | UInt64(seq))
            do {
                try nodes[i].raft!.propose(cmd.encoded())
            } catch {
                rejected(c, error)
                return
            }
            history.append(RegisterOperation(client: client, key: key, kind: .write(cmd.value), invoked: now, returned: nil))
            clients[c].state = .writing(node: target, sequence: seq, op: history.count - 1, deadline: deadline)
        } else {
            let ctx = nextReadContext
            nextReadContext += 1
            do {
                try nodes[i].raft!.readIndex(context: ctx)
            } catch {
                rejected(c, error)
                return
            }
            clients[c].state = .reading(node: target, context: ctx, key: key, invoked: now, index: nil, deadline: deadline)
        }
        clients[c].leaderHint = target
        afterInput(i)
    }

    mutating func rejected(_ c: Int, _ error: RaftError) {
        if case let .notLeader(l) = error.code { clients[c].leaderHint = l } else { clients[c].leaderHint = .none }
        clients[c].state = .idle(until: now + SimTime.random(in: 2...20, using: &random))
    }

    mutating func writeApplied(_ cmd: KVCommand, on node: NodeID) {
        guard let c = clients.firstIndex(where: { $0.id == cmd.client }),
              case let .writing(target, seq, op, _) = clients[c].state, target == node, seq == cmd.sequence else { return }
        history[op].returned = now
        result.writesCompleted += 1
        if inLiveness && history[op].invoked >= livenessStart { livenessWriteDone = true }
        clients[c].state = .idle(until: now + SimTime.random(in: 0...20, using: &random))
    }

    mutating func serveReads(_ i: Int) {
        let id = nodes[i].id
        for rs in nodes[i].pendingReads {
            guard let c = clients.firstIndex(where: {
                if case let .reading(node, ctx, _, _, _, _) = $0.state { return node == id && ctx == rs.context }
                return false
            }), case let .reading(node, ctx, key, invoked, _, deadline) = clients[c].state else { continue }
            clients[c].state = .reading(node: node, context: ctx, key: key, invoked: invoked, index: rs.index, deadline: deadline)
        }
        nodes[i].pendingReads = []
        // Serve every read on this node whose index has been applied (§6.4 step 4).
        for c in clients.indices {
            guard case let .reading(node, _, key, invoked, index?, _) = clients[c].state, node == id,
                  nodes[i].kv.appliedIndex >= index else { continue }
            history.append(RegisterOperation(client: clients[c].id, key: key, kind: .read(nodes[i].kv.values[key]),
                                             invoked: invoked, returned: now))
            result.readsCompleted += 1
            clients[c].state = .idle(until: now + SimTime.random(in: 0...20, using: &random))
        }
    }

    // MARK: - Reporting

    mutating func fail(_ message: String) {
        guard result.failure == nil else { return }
        result.failure = message
        result.failedAt = now
        trace("FAILURE: \(message)")
    }

    mutating func trace(_ line: String) {
        guard options.trace else { return }
        traceRing.append("t=\(now) \(line)")
        if traceRing.count > 400 { traceRing.removeFirst(traceRing.count - 400) }
    }
}

func fmt(_ d: Double) -> String {
    let x = (d * 1000).rounded() / 1000
    return "\(x)"
}
