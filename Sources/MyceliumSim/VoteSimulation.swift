// A deterministic simulator that attacks the vote: one seed draws the electorate, its trust, the
// Byzantine voters and their behaviour, slow and partitioned honest voters, and every network delay.
// Honest voters run the real `VoteInstance` with real Ed25519 keys; Byzantine voters are scripted
// agents that sign whatever helps them. After every round the run checks safety (agreement, no
// false result, valid certificates), that every provable act was slashed, that no honest voter was
// slashed for a lie, and liveness where the model promises it.
//
// Time is in ticks of 100 µs. Keys are derived from the seed, so a run replays bit for bit.

import MyceliumCore
import MyceliumIdentity
@_spi(Simulation) import MyceliumVote

/// Network timing of a simulated run. One tick is 100 µs.
public enum VoteNetworkProfile: String, Sendable, CaseIterable {
    /// 0.2–1 ms one-way, rare 5 ms spikes; 15 ms commit and reveal phases.
    case lan
    /// 10–150 ms one-way, 5% spikes up to +100 ms; 400 ms commit and reveal phases.
    case wan

    public static let microsecondsPerTick = 100
    var minDelay: UInt64 { self == .lan ? 2 : 100 }
    var maxDelay: UInt64 { self == .lan ? 10 : 1500 }
    var spikeChance: Double { self == .lan ? 0.01 : 0.05 }
    var spikeDelay: UInt64 { self == .lan ? 50 : 1000 }
    public var phaseTicks: UInt32 { self == .lan ? 150 : 4000 }
    /// Mean one-way delay in milliseconds, spikes included.
    public var meanDelayMilliseconds: Double {
        let ms = Double(Self.microsecondsPerTick) / 1000
        return (Double(minDelay + maxDelay) / 2 + spikeChance * Double(spikeDelay) / 2) * ms
    }
}

/// How a Byzantine voter attacks.
public enum ByzantineBehaviour: String, Sendable, CaseIterable {
    /// Sends one commitment (to the true result) to half the voters and another (to a false one) to
    /// the other half, reveals each half its own, and sprays forged, malformed and unknown-round messages.
    case equivocator
    /// Commits, then never reveals (the last-revealer attack), and sends no summary.
    case withholder
    /// Re-signs the first honest commitment it sees as its own; then either "reveals" the copied
    /// voter's (result, salt) or withholds.
    case copier
    /// All colluders commit and reveal the same false result and send summaries claiming they saw no
    /// reveals at all, to frame honest voters as withholders.
    case colluder
}

/// What to simulate. Fields left nil are drawn from the seed.
public struct VoteSimOptions: Sendable {
    public var seed: UInt64
    /// Electorate size (4...100 in the tests; up to `VoteLimits.maxVoters`).
    public var voters: Int?
    /// Number of Byzantine voters.
    public var byzantine: Int?
    /// Restrict the behaviours drawn for Byzantine voters.
    public var behaviours: [ByzantineBehaviour]?
    /// Honest voters that are delayed (late to open the round, slow links) or partitioned for a while.
    public var slowHonest: Int?
    public var rounds: Int = 3
    public var profile: VoteNetworkProfile = .lan
    /// Outside the model: colluders hold between 1/3 and 2/3 of the weight. Rounds must fail or
    /// stall; a false result must still never be accepted.
    public var beyondBound = false
    /// In rounds without a verifiable truth, let a minority of honest voters observe the other answer.
    public var honestDisagreement = true
    /// Keep the last simulated events for printing.
    public var trace = false

    public init(seed: UInt64, voters: Int? = nil, byzantine: Int? = nil, behaviours: [ByzantineBehaviour]? = nil,
                slowHonest: Int? = nil, rounds: Int = 3, profile: VoteNetworkProfile = .lan, beyondBound: Bool = false,
                trace: Bool = false) {
        self.seed = seed; self.voters = voters; self.byzantine = byzantine; self.behaviours = behaviours
        self.slowHonest = slowHonest; self.rounds = rounds; self.profile = profile; self.beyondBound = beyondBound
        self.trace = trace
    }

    /// The command that replays exactly this run.
    public var replayCommand: String {
        var s = "mycelium-sim vote --seed \(seed)"
        if let v = voters { s += " --voters \(v)" }
        if let b = byzantine { s += " --byzantine \(b)" }
        if let b = behaviours { s += " --behaviours \(b.map(\.rawValue).joined(separator: ","))" }
        if let h = slowHonest { s += " --slow-honest \(h)" }
        if rounds != 3 { s += " --rounds \(rounds)" }
        if profile != .lan { s += " --profile \(profile.rawValue)" }
        if beyondBound { s += " --beyond-bound" }
        if !honestDisagreement { s += " --no-honest-disagreement" }
        return s
    }
}

/// One round of a run.
public struct VoteSimRoundReport: Sendable {
    public let sequence: UInt64
    public let criticality: Criticality
    public let verifiableTruth: Bool
    public let electorate: Int
    /// Byzantine share of the round's weight, in parts per thousand.
    public let byzantineWeightPermille: UInt64
    /// Honest voters that accepted the true result / failed / never decided.
    public let honestAccepted: Int
    public let honestFailed: Int
    public let honestUndecided: Int
    /// Ticks from opening to acceptance on on-time honest voters (median and maximum), if any accepted.
    public let medianLatencyTicks: UInt64?
    public let maxLatencyTicks: UInt64?
    public let messages: Int
    public let bytes: Int
}

/// The result of one simulated run.
public struct VoteSimReport: Sendable {
    public let options: VoteSimOptions
    public let voters: Int
    /// Byzantine voters by world index, with their behaviour.
    public let byzantine: [(index: Int, behaviour: ByzantineBehaviour)]
    public let slowHonest: [Int]
    public let rounds: [VoteSimRoundReport]
    /// Offences slashed, in the order the simulated Raft log applied them.
    public let slashed: [OffenceKey]
    /// Slow or partitioned honest voters penalised as withholders (allowed; see docs/VOTE.md).
    public let honestWithholdingPenalties: Int
    /// Junk messages (forged, malformed, unknown round) that honest voters refused, and refusals of any kind.
    public let junkRefused: Int
    public let refusals: Int
    /// Every safety, evidence or liveness property that did not hold. Empty when the run passed.
    public let violations: [String]
    public let trace: [String]

    public var passed: Bool { violations.isEmpty }
    public var replayCommand: String { options.replayCommand }

    public var summary: String {
        let kinds = Dictionary(grouping: byzantine, by: \.behaviour).map { "\($0.value.count) \($0.key.rawValue)" }.sorted()
        let acc = rounds.reduce(0) { $0 + $1.honestAccepted }, fail = rounds.reduce(0) { $0 + $1.honestFailed }
        let lat = rounds.compactMap(\.medianLatencyTicks)
        let latText = lat.isEmpty ? "-" : "\(Double(lat.sorted()[lat.count / 2]) * Double(VoteNetworkProfile.microsecondsPerTick) / 1000) ms"
        return "seed \(options.seed): \(passed ? "ok" : "FAILED") n=\(voters) byzantine=[\(kinds.joined(separator: ", "))] "
            + "slow=\(slowHonest.count) \(options.profile.rawValue)\(options.beyondBound ? " beyond-bound" : "") "
            + "rounds=\(rounds.count) honest accepted/failed=\(acc)/\(fail) slashed=\(slashed.count) "
            + (honestWithholdingPenalties > 0 ? "honest-withholding-penalties=\(honestWithholdingPenalties) " : "")
            + "refused=\(refusals) median latency \(latText)"
            + (passed ? "" : "\n  " + violations.prefix(8).joined(separator: "\n  "))
    }
}

/// Runs one seeded simulation. The same options always produce the same report.
public func runVoteSimulation(_ options: VoteSimOptions) -> VoteSimReport {
    var world = VoteWorld(options)
    return world.run()
}

/// Runs one seeded simulation; see `VoteSimOptions` for the parameters.
public func runVoteSimulation(seed: UInt64, voters: Int? = nil, byzantine: Int? = nil, rounds: Int = 3,
                              profile: VoteNetworkProfile = .lan, beyondBound: Bool = false,
                              trace: Bool = false) -> VoteSimReport {
    runVoteSimulation(VoteSimOptions(seed: seed, voters: voters, byzantine: byzantine, rounds: rounds, profile: profile,
                                     beyondBound: beyondBound, trace: trace))
}

// MARK: - the simulated world

private enum Payload {
    case message(VoteMessage)
    /// Must be refused: forged signature, unknown round.
    case junk(VoteMessage)
    /// Must be refused by the decoder.
    case junkBytes([UInt8])
}

private struct Event {
    enum Kind {
        case deliver(from: Int, to: Int, Payload)
        case open(Int)
        case wake(Int)
    }
    let time: UInt64
    let seq: UInt64
    let kind: Kind
    func precedes(_ o: Event) -> Bool { time != o.time ? time < o.time : seq < o.seq }
}

/// A binary min-heap of events ordered by (time, sequence): ties keep their scheduling order.
private struct EventQueue {
    private var items: [Event] = []
    var isEmpty: Bool { items.isEmpty }
    mutating func push(_ e: Event) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            guard items[i].precedes(items[p]) else { break }
            items.swapAt(i, p); i = p
        }
    }
    mutating func pop() -> Event? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let top = items.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < items.count && items[l].precedes(items[m]) { m = l }
            if r < items.count && items[r].precedes(items[m]) { m = r }
            if m == i { break }
            items.swapAt(i, m); i = m
        }
        return top
    }
}

private enum Role {
    case honest
    case byzantine(ByzantineBehaviour)
    var isHonest: Bool { if case .honest = self { return true }; return false }
}

/// A scripted Byzantine voter's plan for the current round.
private struct ByzantinePlan {
    var reveals: [(targets: [Int], reveal: SignedReveal)] = []
    var copiedVoter: Int?
    var copierReveals = false
}

/// Everything the checker needs to know about the round in progress.
private struct RoundTrack {
    let spec: RoundSpec
    let truth: VoteResult
    let falseResult: VoteResult
    /// What each honest voter observed. In rounds without a verifiable truth a minority of honest
    /// voters may see the other answer (a node that is down for some and up for others).
    let views: [VoteResult]
    let split: Bool
    /// World indices of the voters.
    let members: [Int]
    var openAt: [UInt64]
    /// heldCommit[node][voterIndex]: the first commitment the honest node accepted from that voter.
    var heldCommit: [[[UInt8]?]]
    /// validReveal[node][voterIndex]: the result of an opening reveal the node accepted.
    var validReveal: [[VoteResult?]]
    var summaryLacks: [[Bool]?]
    var decided: [(outcome: RoundOutcome, at: UInt64)?]
    var expectBadReveal: Set<Int> = []
    var messages = 0
    var bytes = 0
}

private struct VoteWorld {
    let options: VoteSimOptions
    let profile: VoteNetworkProfile
    let n: Int
    var rng: SeededRandom
    var nodeRandom: [SeededRandom]
    let keys: [SigningKey]
    let ids: [NodeID]
    var roles: [Role]
    var slow: [Bool]
    var slowExtra: [UInt64]
    var partitionedUntil: [UInt64]
    var instances: [VoteInstance?]
    var ledger = TrustLedger()
    let network: NetworkID
    var queue = EventQueue()
    var seq: UInt64 = 0
    var now: UInt64 = 0
    var linkLast: [Int: UInt64] = [:]
    var pending: [[(from: Int, message: VoteMessage)]]
    var track: RoundTrack?
    var plans: [ByzantinePlan]
    var violations: [String] = []
    var slashed: [OffenceKey] = []
    var honestWithholding = 0
    var junkRefused = 0
    var refusals = 0
    /// A reference box, so tracing can be a non-mutating call with a lazily built message.
    final class TraceLog { var lines: [String] = [] }
    let traceLog = TraceLog()
    var roundIndex = 0

    init(_ options: VoteSimOptions) {
        self.options = options
        profile = options.profile
        var rng = SeededRandom(seed: options.seed)
        // Sizes drawn by the seed stay small enough for a debug build; larger ones are asked for explicitly.
        let sizes = [4, 4, 5, 6, 7, 7, 10, 13, 16]
        n = max(options.voters ?? sizes[Int(rng.next() % UInt64(sizes.count))], 1)
        var keys: [SigningKey] = []
        var nodeRandom: [SeededRandom] = []
        for _ in 0..<n {
            var seed: [UInt8] = []
            for _ in 0..<4 { withUnsafeBytes(of: rng.next()) { seed.append(contentsOf: $0) } }
            keys.append(SigningKey(seed: seed))
            nodeRandom.append(rng.fork())
        }
        self.keys = keys
        self.nodeRandom = nodeRandom
        ids = keys.map { NodeID(publicKey: $0.publicKey) }
        network = NetworkID(genesisKey: keys[0].publicKey)
        roles = Array(repeating: .honest, count: n)
        slow = Array(repeating: false, count: n)
        slowExtra = Array(repeating: 0, count: n)
        partitionedUntil = Array(repeating: 0, count: n)
        instances = Array(repeating: nil, count: n)
        pending = Array(repeating: [], count: n)
        plans = Array(repeating: ByzantinePlan(), count: n)
        self.rng = rng

        // Founding members get varied trust, so weights differ (and the weight cap is exercised).
        for i in 0..<n { ledger.admit(ids[i], score: 400_000 + self.rng.next() % 600_001) }
        chooseAdversary()
        for i in 0..<n where roles[i].isHonest {
            instances[i] = VoteInstance(key: keys[i], retentionTicks: 2 * UInt64(profile.phaseTicks) * 2)
        }
    }

    /// Draws the Byzantine voters and the slow honest ones, keeping Byzantine weight below one third
    /// (or, beyond the bound, between one and two thirds).
    mutating func chooseAdversary() {
        let weights = currentWeights()
        let total = weights.reduce(0, +)
        var order = Array(0..<n)
        for i in stride(from: n - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        var byz: [Int]
        if options.beyondBound {
            let b = min(max(options.byzantine ?? (n + 2) / 3, (n + 2) / 3), n - 1)
            byz = Array(order.prefix(b))
            var honest = Array(order.dropFirst(b))
            // Raise the colluders' weight to at least a third, keep it at most two thirds.
            var guardCount = 0
            while byz.map({ weights[$0] }).reduce(0, +) * 3 < total, guardCount < n * n {
                let light = byz.min { weights[$0] < weights[$1] }!, heavy = honest.max { weights[$0] < weights[$1] }!
                if weights[heavy] <= weights[light] { break }
                byz[byz.firstIndex(of: light)!] = heavy; honest[honest.firstIndex(of: heavy)!] = light
                guardCount += 1
            }
            while byz.count > 1 && byz.map({ weights[$0] }).reduce(0, +) * 3 > total * 2 { honest.append(byz.removeLast()) }
            for b in byz { roles[b] = .byzantine(.colluder) }
        } else {
            let maxB = (n - 1) / 3
            var b = min(options.byzantine ?? Int(rng.next() % UInt64(maxB + 1)), n)
            byz = Array(order.prefix(b))
            var honest = Array(order.dropFirst(b))
            var guardCount = 0
            while b > 0 && byz.map({ weights[$0] }).reduce(0, +) * 3 >= total {
                let heavy = byz.max { weights[$0] < weights[$1] }!, light = honest.min { weights[$0] < weights[$1] }!
                if weights[light] >= weights[heavy] || guardCount > n * n {
                    // Cannot stay under a third by swapping: drop a Byzantine voter instead.
                    byz.removeAll { $0 == heavy }; honest.append(heavy); b -= 1
                    continue
                }
                byz[byz.firstIndex(of: heavy)!] = light; honest[honest.firstIndex(of: light)!] = heavy
                guardCount += 1
            }
            let kinds = options.behaviours ?? ByzantineBehaviour.allCases
            for x in byz { roles[x] = .byzantine(kinds[Int(rng.next() % UInt64(kinds.count))]) }
        }
        let honestList = (0..<n).filter { roles[$0].isHonest }
        let s = min(options.slowHonest ?? (options.beyondBound ? 0 : Int(rng.next() % UInt64(max(honestList.count / 4, 0) + 1))),
                    honestList.count)
        for i in honestList.prefix(s) {
            slow[i] = true
            let phase = UInt64(profile.phaseTicks)
            slowExtra[i] = phase / 4 + rng.next() % (phase * 5 / 4 + 1)
        }
    }

    func policy(_ c: Criticality, verifiable: Bool) -> QuorumPolicy {
        QuorumPolicy(criticality: c, minimumTrust: 300_000, sclerotiaOnly: false, minimumFaultsTolerated: n >= 4 ? 1 : 0,
                     commitTicks: profile.phaseTicks, revealTicks: profile.phaseTicks, verifiableTruth: verifiable)
    }

    var candidates: [VoterCandidate] { (0..<n).map { VoterCandidate(id: ids[$0], key: keys[$0].publicKey, isSclerotium: false) } }

    func currentWeights() -> [UInt64] {
        let p = policy(.routineHealth, verifiable: false)
        let e = (try? p.electorate(from: candidates, ledger: ledger)).map(\.voters) ?? []
        return ids.map { id in e.first { $0.id == id }?.weight ?? 0 }
    }

    func trace(_ s: @autoclosure () -> String) {
        guard options.trace else { return }
        traceLog.lines.append("t=\(now) " + s())
        if traceLog.lines.count > 400 { traceLog.lines.removeFirst(traceLog.lines.count - 400) }
    }

    mutating func violation(_ s: String) {
        violations.append("round \(roundIndex): \(s)")
        trace("VIOLATION " + s)
    }

    func name(_ i: Int) -> String {
        switch roles[i] {
        case .honest: return "n\(i)\(slow[i] ? "(slow)" : "")"
        case let .byzantine(b): return "n\(i)(\(b.rawValue))"
        }
    }

    // MARK: running

    mutating func run() -> VoteSimReport {
        var reports: [VoteSimRoundReport] = []
        for r in 0..<max(options.rounds, 1) {
            roundIndex = r
            guard let report = runRound() else { break }
            reports.append(report)
        }
        return VoteSimReport(options: options, voters: n,
                             byzantine: (0..<n).compactMap { i in
                                 if case let .byzantine(b) = roles[i] { return (i, b) }
                                 return nil
                             },
                             slowHonest: (0..<n).filter { slow[$0] }, rounds: reports, slashed: slashed,
                             honestWithholdingPenalties: honestWithholding, junkRefused: junkRefused, refusals: refusals,
                             violations: violations, trace: traceLog.lines)
    }

    mutating func runRound() -> VoteSimRoundReport? {
        let kinds = Criticality.allCases
        let criticality = kinds[Int(rng.next() % UInt64(kinds.count))]
        let verifiable = rng.chance(0.5)
        let spec: RoundSpec
        do {
            spec = try policy(criticality, verifiable: verifiable).makeRound(
                network: network, sequence: UInt64(roundIndex + 1),
                subject: RoundSubject.health(check: "sim-\(roundIndex)", target: ids[0]), candidates: candidates, ledger: ledger)
        } catch {
            // Slashing can shrink the electorate below 3f+1; the vote then refuses to run, which is correct.
            trace("round \(roundIndex) not opened: \(error)")
            return nil
        }
        let truth: VoteResult, falseResult: VoteResult
        if verifiable {
            var t: [UInt8] = [], f: [UInt8] = []
            for _ in 0..<8 { t.append(UInt8(truncatingIfNeeded: rng.next())) }
            f = t; f[0] ^= 0xFF
            truth = try! VoteResult(t); falseResult = try! VoteResult(f)
        } else {
            truth = rng.chance(0.5) ? .yes : .no
            falseResult = truth == .yes ? .no : .yes
        }
        let members = spec.voters.map { v in ids.firstIndex(of: v.id)! }
        var views = Array(repeating: truth, count: n)
        var split = false
        if !verifiable && !options.beyondBound && options.honestDisagreement && rng.chance(0.5) {
            // Up to half of the honest voters see the opposite: honest disagreement, which only the
            // two-thirds threshold (not a simple majority) keeps from turning into split decisions.
            let honest = members.filter { roles[$0].isHonest }
            // Between a quarter and a half: near-even splits are where a weak threshold would break.
            let k = honest.count / 4 + Int(rng.next() % UInt64(honest.count / 2 - honest.count / 4 + 1))
            var order = honest
            for j in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(j, Int(rng.next() % UInt64(j + 1))) }
            for i in order.prefix(k) { views[i] = falseResult; split = true }
        }
        let phase = UInt64(profile.phaseTicks)
        var openAt = Array(repeating: UInt64(0), count: n)
        let start = now + 1
        for i in members {
            // On-time voters apply the opening Raft entry within a few ticks of each other; slow ones lag.
            openAt[i] = start + (slow[i] ? rng.next() % (phase / 2 + 1) : rng.next() % 3)
            if slow[i] && rng.chance(0.5) { partitionedUntil[i] = start + rng.next() % (2 * phase + 1) } else { partitionedUntil[i] = 0 }
            push(openAt[i], .open(i))
            push(openAt[i] + phase, .wake(i))
            push(openAt[i] + 2 * phase, .wake(i))
            plans[i] = ByzantinePlan()
        }
        track = RoundTrack(spec: spec, truth: truth, falseResult: falseResult, views: views, split: split, members: members, openAt: openAt,
                           heldCommit: Array(repeating: Array(repeating: nil, count: members.count), count: n),
                           validReveal: Array(repeating: Array(repeating: nil, count: members.count), count: n),
                           summaryLacks: Array(repeating: nil, count: n), decided: Array(repeating: nil, count: n))
        trace("round \(roundIndex) \(spec.id) \(criticality) verifiable=\(verifiable) truth=\(truth) voters=\(members.map(name))"
              + (split ? " honest minority seeing \(falseResult): \(members.filter { views[$0] != truth }.map(name))" : ""))

        while let e = queue.pop() {
            now = max(now, e.time)
            switch e.kind {
            case let .open(i): open(i)
            case let .wake(i): wake(i)
            case let .deliver(from, to, p): deliver(from: from, to: to, p)
            }
        }
        // Let every instance pass its retention time, so the round is forgotten everywhere.
        let end = (openAt.max() ?? now) + 2 * phase + (instances.compactMap { $0?.retentionTicks }.max() ?? 0) + 1
        now = max(now, end)
        for i in 0..<n where instances[i] != nil { advance(i, to: now) }
        if !queue.isEmpty {  // effects emitted at purge time (none expected), drain them too
            while let e = queue.pop() { if case let .deliver(from, to, p) = e.kind { deliver(from: from, to: to, p) } }
        }
        for i in 0..<n { pending[i].removeAll() }
        return check()
    }

    mutating func push(_ at: UInt64, _ kind: Event.Kind) {
        seq += 1
        queue.push(Event(time: at, seq: seq, kind: kind))
    }

    func voterIndex(_ i: Int) -> Int? { track!.spec.index(of: ids[i]) }

    mutating func send(_ from: Int, _ to: Int, _ p: Payload) {
        track!.messages += 1
        switch p {
        case let .message(m), let .junk(m): track!.bytes += m.encoded().count
        case let .junkBytes(b): track!.bytes += b.count
        }
        if now < partitionedUntil[from] || now < partitionedUntil[to] { return }  // dropped by the partition
        var d = profile.minDelay + rng.next() % (profile.maxDelay - profile.minDelay + 1)
        if rng.chance(profile.spikeChance) { d += rng.next() % (profile.spikeDelay + 1) }
        d += slowExtra[from] + slowExtra[to]
        // Per-link FIFO, as over one TCP/TLS channel: a reveal never overtakes its commitment.
        let link = from * n + to
        let at = max(now + d, linkLast[link] ?? 0)
        linkLast[link] = at
        push(at, .deliver(from: from, to: to, p))
    }

    mutating func broadcast(_ from: Int, _ p: Payload, to targets: [Int]? = nil) {
        for j in targets ?? track!.members where j != from { send(from, j, p) }
    }

    mutating func advance(_ i: Int, to t: UInt64) {
        guard let inst = instances[i], t > inst.now else { return }
        let effects = instances[i]!.tick(t - inst.now)
        handle(i, effects)
    }

    mutating func handle(_ i: Int, _ effects: [VoteEffect]) {
        for e in effects {
            switch e {
            case .persist: break
            case let .broadcast(m):
                if case let .summary(s) = m, let t = track {
                    track!.summaryLacks[i] = (0..<t.members.count).map { !s.attestation.hasReveal(from: $0) }
                }
                trace("\(name(i)) broadcasts \(kind(m))")
                broadcast(i, .message(m))
            case let .send(to, m):
                if let j = ids.firstIndex(of: to) {
                    trace("\(name(i)) sends \(name(j)) \(kind(m))")
                    send(i, j, .message(m))
                }
            case let .decided(_, outcome):
                trace("\(name(i)) decided: \(outcome)")
                track!.decided[i] = (outcome, now)
            case let .evidence(ev):
                trace("\(name(i)) reports \(ev)")
                do {
                    if try ledger.slash(ev, spec: track!.spec) != nil {
                        slashed.append(ev.key)
                    } else if track!.members.count <= 16 {
                        try ev.verify(spec: track!.spec)  // duplicates must verify too (skipped for large n: cost)
                    }
                } catch {
                    violation("honest \(name(i)) produced evidence that does not verify: \(error)")
                }
            }
        }
    }

    func kind(_ m: VoteMessage) -> String {
        switch m {
        case let .commit(c): return "commit \(hexString(c.commitment.prefix(3)))"
        case let .reveal(r): return "reveal \(r.result)"
        case .summary: return "summary"
        }
    }

    mutating func open(_ i: Int) {
        let t = track!
        switch roles[i] {
        case .honest:
            advance(i, to: now)
            do {
                let effects = try instances[i]!.open(t.spec, vote: t.views[i], using: &nodeRandom[i])
                for case let .persist(own) in effects { if let v = voterIndex(i) { track!.heldCommit[i][v] = own.commit.commitment } }
                handle(i, effects)
            } catch {
                violation("honest \(name(i)) could not open the round: \(error)")
            }
            let queued = pending[i]
            pending[i].removeAll()
            for q in queued { deliver(from: q.from, to: i, .message(q.message)) }
        case let .byzantine(b):
            openByzantine(i, b)
        }
    }

    mutating func wake(_ i: Int) {
        switch roles[i] {
        case .honest: advance(i, to: now)
        case let .byzantine(b): wakeByzantine(i, b)
        }
    }

    mutating func deliver(from: Int, to: Int, _ p: Payload) {
        guard let t = track else { return }
        guard roles[to].isHonest else {
            if case let .message(m) = p, case let .byzantine(b) = roles[to] { byzantineReceives(to, b, from: from, m) }
            return
        }
        advance(to, to: now)
        let message: VoteMessage
        switch p {
        case let .junkBytes(bytes):
            do {
                _ = try instances[to]!.step(bytes: bytes)
                violation("\(name(to)) accepted malformed bytes from \(name(from))")
            } catch { junkRefused += 1; refusals += 1 }
            return
        case let .junk(m):
            do {
                _ = try instances[to]!.step(m)
                violation("\(name(to)) accepted a forged or unknown-round message from \(name(from))")
            } catch { junkRefused += 1; refusals += 1 }
            return
        case let .message(m):
            message = m
        }
        let sender = t.spec.index(of: message.sender)
        do {
            let effects = try instances[to]!.step(message)
            if let v = sender {
                switch message {
                case let .commit(c):
                    if track!.heldCommit[to][v] == nil { track!.heldCommit[to][v] = c.commitment }
                case let .reveal(r):
                    if let held = track!.heldCommit[to][v] {
                        if Commitment.opens(held, round: r.round, voter: r.voter, result: r.result, salt: r.salt) {
                            if track!.validReveal[to][v] == nil { track!.validReveal[to][v] = r.result }
                        } else {
                            track!.expectBadReveal.insert(v)
                        }
                    }
                case .summary: break
                }
            }
            trace("\(name(to)) ← \(name(from)) \(kind(message))")
            handle(to, effects)
        } catch {
            refusals += 1
            if case .unknownRound = error.code, now < t.openAt[to], pending[to].count < 8 * t.members.count {
                // The shell's job: hold messages for a round that the log will open here shortly.
                pending[to].append((from, message))
                return
            }
            trace("\(name(to)) refused \(kind(message)) from \(name(from)): \(error)")
        }
    }

    // MARK: Byzantine agents

    mutating func salt(_ i: Int) -> [UInt8] {
        var s: [UInt8] = []
        for _ in 0..<4 { withUnsafeBytes(of: nodeRandom[i].next()) { s.append(contentsOf: $0) } }
        return s
    }

    mutating func commit(_ i: Int, _ result: VoteResult, to targets: [Int]) -> SignedReveal {
        let rid = track!.spec.id
        let s = salt(i)
        let c = SignedCommit.sign(round: rid, voter: ids[i], commitment: Commitment.compute(round: rid, voter: ids[i], result: result, salt: s),
                                  key: keys[i])
        broadcast(i, .message(.commit(c)), to: targets)
        return SignedReveal.sign(round: rid, voter: ids[i], result: result, salt: s, key: keys[i])
    }

    mutating func openByzantine(_ i: Int, _ b: ByzantineBehaviour) {
        let t = track!
        let others = t.members.filter { $0 != i }
        trace("\(name(i)) opens")
        switch b {
        case .equivocator:
            // Tell each voter what it already believes when honest voters disagree; otherwise split evenly.
            let a = t.split ? others.filter { t.views[$0] == t.truth } : others.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
            let bGroup = others.filter { !a.contains($0) }
            plans[i].reveals = [(a, commit(i, t.truth, to: a)), (bGroup, commit(i, t.falseResult, to: bGroup))]
            // Junk every honest voter must refuse.
            if let victim = others.first {
                let forged = SignedReveal(round: t.spec.id, voter: ids[i], result: t.falseResult, salt: salt(i),
                                          signature: keys[victim].sign([1, 2, 3]))
                send(i, victim, .junk(.reveal(forged)))
                var bytes = VoteMessage.reveal(forged).encoded()
                bytes.removeLast(Int(nodeRandom[i].next() % UInt64(bytes.count)) + 1)
                send(i, others[Int(nodeRandom[i].next() % UInt64(others.count))], .junkBytes(bytes))
                let unknown = RoundID(unchecked: Sodium.hash(salt(i), domain: "sim/unknown-round"))
                let c = SignedCommit.sign(round: unknown, voter: ids[i], commitment: salt(i), key: keys[i])
                send(i, others[Int(nodeRandom[i].next() % UInt64(others.count))], .junk(.commit(c)))
            }
        case .withholder:
            _ = commit(i, nodeRandom[i].chance(0.5) ? t.truth : t.falseResult, to: others)
        case .copier:
            plans[i].copierReveals = nodeRandom[i].chance(0.5)
        case .colluder:
            plans[i].reveals = [(others, commit(i, t.falseResult, to: others))]
        }
    }

    mutating func wakeByzantine(_ i: Int, _ b: ByzantineBehaviour) {
        let t = track!
        let phase = UInt64(profile.phaseTicks)
        if now == t.openAt[i] + phase {
            for (targets, reveal) in plans[i].reveals { broadcast(i, .message(.reveal(reveal)), to: targets) }
        } else if now == t.openAt[i] + 2 * phase, b == .colluder {
            // A lying summary: "I saw no reveals", to frame honest voters as withholders.
            let count = t.members.count
            let s = RoundSummary.sign(round: t.spec.id, attester: ids[i], revealed: Array(repeating: false, count: count),
                                      commitments: Array(repeating: nil, count: count), key: keys[i])
            broadcast(i, .message(.summary(s)))
        }
    }

    mutating func byzantineReceives(_ i: Int, _ b: ByzantineBehaviour, from: Int, _ m: VoteMessage) {
        guard b == .copier, let t = track else { return }
        switch m {
        case let .commit(c) where plans[i].copiedVoter == nil && c.round == t.spec.id:
            plans[i].copiedVoter = from
            let copy = SignedCommit.sign(round: c.round, voter: ids[i], commitment: c.commitment, key: keys[i])
            trace("\(name(i)) copies \(name(from))'s commitment")
            broadcast(i, .message(.commit(copy)))
        case let .reveal(r) where from == plans[i].copiedVoter && plans[i].copierReveals:
            let fake = SignedReveal.sign(round: r.round, voter: ids[i], result: r.result, salt: r.salt, key: keys[i])
            broadcast(i, .message(.reveal(fake)))
        default: break
        }
    }

    // MARK: checking

    mutating func check() -> VoteSimRoundReport {
        let t = track!
        let spec = t.spec
        let members = t.members
        func weight(_ i: Int) -> UInt64 { spec.voters[spec.index(of: ids[i])!].weight }
        let honest = members.filter { roles[$0].isHonest }
        let onTime = honest.filter { !slow[$0] }
        let byzWeight = members.filter { !roles[$0].isHonest }.reduce(0) { $0 + weight($1) }
        let slowWeight = members.filter { slow[$0] }.reduce(0) { $0 + weight($1) }
        let withinBound = byzWeight * 3 < spec.totalWeight

        // Safety: agreement, validity, certificates.
        var acceptedResults = Set<VoteResult>()
        var accepted = 0, failed = 0, undecided = 0
        var latencies: [UInt64] = []
        for i in honest {
            switch t.decided[i]?.outcome {
            case let .accepted(r, cert)?:
                accepted += 1
                acceptedResults.insert(r)
                // Validity: an accepted result was seen by honest voters holding more than a third of the
                // weight (with no honest disagreement: it is the truth).
                let backing = honest.filter { t.views[$0] == r }.reduce(0) { $0 + weight($1) }
                if !t.split && r != t.truth { violation("honest \(name(i)) accepted a false result \(r) (truth \(t.truth))") }
                if t.split && withinBound && backing * 3 <= spec.totalWeight {
                    violation("honest \(name(i)) accepted \(r), which honest voters holding only \(backing)/\(spec.totalWeight) saw")
                }
                do { try cert.verify(spec: spec) } catch { violation("certificate of \(name(i)) does not verify: \(error)") }
                if !slow[i] { latencies.append(t.decided[i]!.at - t.openAt[i]) }
            case .failed?: failed += 1
            case nil: undecided += 1
            }
        }
        if acceptedResults.count > 1 { violation("honest voters accepted different results: \(acceptedResults.sorted())") }
        if options.beyondBound && !acceptedResults.isSubset(of: Set(honest.map { t.views[$0] })) {
            violation("beyond the bound a false result was accepted")
        }
        // Liveness, where the model promises it: Byzantine weight < 1/3, no slow honest voters.
        if withinBound && slowWeight == 0 && !t.split && !options.beyondBound && accepted != honest.count {
            violation("with Byzantine weight \(byzWeight)/\(spec.totalWeight) and a healthy network, only \(accepted) of \(honest.count) honest voters accepted")
        }

        // Every provable act is slashed.
        var expected: [OffenceKey] = []
        for (v, voter) in spec.voters.enumerated() {
            let i = members[v]
            guard !roles[i].isHonest else { continue }
            let held = Set(onTime.compactMap { t.heldCommit[$0][v] })
            if held.count > 1 { expected.append(OffenceKey(accused: voter.id, round: spec.id, offence: .equivocation)) }
            if t.expectBadReveal.contains(v) { expected.append(OffenceKey(accused: voter.id, round: spec.id, offence: .badReveal)) }
            let lacking = onTime.filter { t.summaryLacks[$0]?[v] == true }.reduce(0) { $0 + weight($1) }
            if spec.isSupermajority(lacking) && honest.contains(where: { t.heldCommit[$0][v] != nil }) {
                expected.append(OffenceKey(accused: voter.id, round: spec.id, offence: .withheldReveal))
            }
            if spec.verifiableTruth {
                for j in honest {
                    if case let .accepted(x, _)? = t.decided[j]?.outcome, let r = t.validReveal[j][v], r != x {
                        expected.append(OffenceKey(accused: voter.id, round: spec.id, offence: .wrongResult))
                        break
                    }
                }
            }
        }
        let slashedNow = Set(slashed.filter { $0.round == spec.id })
        if withinBound || options.beyondBound {
            for k in expected where !slashedNow.contains(k) {
                violation("\(k.offence) by \(name(ids.firstIndex(of: k.accused)!)) left evidence but was not slashed")
            }
        }
        // No honest voter is slashed for a lie; withholding penalties only where a partition explains them.
        for k in slashedNow {
            let i = ids.firstIndex(of: k.accused)!
            guard roles[i].isHonest else { continue }
            if k.offence != .withheldReveal {
                violation("honest \(name(i)) was slashed for \(k.offence)")
            } else if slow[i] {
                honestWithholding += 1
            } else if (byzWeight + slowWeight) * 3 <= spec.totalWeight * 2 {
                violation("on-time honest \(name(i)) was slashed as a withholder although liars and slow voters hold only \(byzWeight + slowWeight)/\(spec.totalWeight)")
            } else {
                honestWithholding += 1
            }
        }
        // Credit the voters of one honest certificate, as the agent would after committing it.
        for i in honest {
            if case let .accepted(_, cert)? = t.decided[i]?.outcome {
                try? ledger.creditCorrectVotes(cert, spec: spec)
                break
            }
        }
        ledger.advanceEpoch()
        latencies.sort()
        return VoteSimRoundReport(sequence: spec.sequence, criticality: spec.criticality, verifiableTruth: spec.verifiableTruth,
                                  electorate: members.count, byzantineWeightPermille: byzWeight * 1000 / spec.totalWeight,
                                  honestAccepted: accepted, honestFailed: failed, honestUndecided: undecided,
                                  medianLatencyTicks: latencies.isEmpty ? nil : latencies[latencies.count / 2],
                                  maxLatencyTicks: latencies.last, messages: t.messages, bytes: t.bytes)
    }
}
