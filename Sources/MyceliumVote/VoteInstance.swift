// The commit-reveal vote as a pure state machine, in the style of etcd-io/raft (Step/Ready) and
// swift-cluster-membership's SWIM.Instance: a value type that takes messages and ticks and returns
// effects. It never reads a clock, a socket, a file or the global random generator.
//
// Safety argument (see docs/VOTE.md for the full statement). Let W be the round's total weight and
// B the weight of Byzantine voters. A node accepts result X only when voters whose *valid* reveal of X
// (opening their signed commitment) it holds weigh more than 2W/3. If two nodes accepted X ≠ Y, the two
// revealer sets would overlap in more than W/3 of weight; an honest voter commits once and reveals once,
// so the overlap is Byzantine, i.e. B > W/3. Hence with B < W/3 no two honest nodes accept different
// results, and any accepted result was revealed by honest voters weighing more than W/3.

import MyceliumCore
import MyceliumIdentity

/// Why a round failed on this node. A failed round never yields an answer; the caller may retry
/// with a new round (new sequence number).
public struct RoundFailure: Hashable, Sendable, CustomStringConvertible {
    public enum Reason: Hashable, Sendable {
        /// The reveal deadline passed without any result reaching more than two thirds of the weight.
        case deadlinePassed
        /// Even if every voter that can still be counted revealed the leading result, it would not reach two thirds.
        case supermajorityUnreachable
    }
    public let reason: Reason
    /// The best-supported result and its weight when the round failed (nil when nothing was revealed).
    public let leading: VoteResult?
    public let leadingWeight: UInt64
    public let totalWeight: UInt64

    public var description: String {
        let why = reason == .deadlinePassed ? "reveal deadline passed" : "no result can reach two thirds"
        return "failed (\(why)); leading \(leading.map(\.description) ?? "none") with \(leadingWeight)/\(totalWeight)"
    }
}

/// A round's outcome on this node.
public enum RoundOutcome: Hashable, Sendable, CustomStringConvertible {
    /// More than two thirds of the weight revealed `result`; the certificate proves it to anyone.
    case accepted(VoteResult, DecisionCertificate)
    case failed(RoundFailure)

    public var acceptedResult: VoteResult? {
        if case let .accepted(r, _) = self { return r }
        return nil
    }
    public var description: String {
        switch self {
        case let .accepted(r, c): return "accepted \(r) (\(c.entries.count) signers)"
        case let .failed(f): return f.description
        }
    }
}

/// What this node must persist so it never commits twice in one round after a restart (which
/// would be equivocation: an honest node slashed for a crash).
public struct OwnVote: Hashable, Sendable {
    public let round: RoundID
    public let result: VoteResult
    public let salt: [UInt8]
    public let commit: SignedCommit
}

/// An instruction from the vote to its shell. Carry them out in order: persist before sending.
public enum VoteEffect: Hashable, Sendable {
    /// Durably store this node's vote before sending anything for the round (fsync), and pass it
    /// back to `open(_:vote:restoring:using:)` after a restart.
    case persist(OwnVote)
    /// Send to every other voter of the round.
    case broadcast(VoteMessage)
    /// Send to one voter (a signed commitment handed to an attester whose summary differs).
    case send(to: NodeID, VoteMessage)
    /// The round's outcome on this node (emitted once per round).
    case decided(RoundID, RoundOutcome)
    /// Verified proof of misbehaviour: propose it to the primary spore (through Raft) for slashing.
    case evidence(Evidence)
}

/// One node's view of every open round: the commit-reveal vote as a pure state machine.
///
/// Usage by a shell: when a Raft entry opens a round, call `open`; feed every received message to
/// `step`; call `tick` at a fixed interval; carry out the returned effects in order (persist before
/// send). Refused messages throw a `VoteError` and change nothing.
///
/// ## Guarantees
/// Let W be the round's total weight and B the weight of Byzantine voters (colluding, adaptive, unable
/// to forge Ed25519 or break BLAKE2b). Honest voters persist their vote before sending it.
/// - **Agreement:** if B < W/3, no two honest nodes accept different results for one round, under any
///   message delay, loss, reordering or partition, even when honest voters observe different values.
/// - **Validity:** every accepted result was revealed by honest voters holding more than 2W/3 − B. If all
///   honest voters observe the same value v, nothing but v is accepted unless B > 2W/3. So with
///   W/3 ≤ B ≤ 2W/3 colluders rounds fail or stall, but never accept a fabricated result.
/// - **No wrong answers:** a round that does not reach more than 2W/3 fails explicitly
///   (`RoundOutcome.failed`).
/// - **Liveness:** if B < W/3, honest voters agree, and messages between them arrive within the
///   deadlines, every honest voter accepts.
/// - **Evidence:** equivocation, bad reveals and wrong results are proven only by the accused's own
///   signatures, so honest voters are never slashed for them. Withholding is proven by attesters
///   holding more than 2W/3 and can hit a partitioned honest voter, so its penalty is mild.
///
/// docs/VOTE.md states these exactly, with the proof sketch and what is *not* detected.
public struct VoteInstance: Sendable {
    /// This node's stable ID.
    public let id: NodeID
    private let key: SigningKey
    /// Ticks since this instance started.
    public private(set) var now: UInt64 = 0
    /// How long a round is kept after its reveal deadline, to take in late summaries (for evidence)
    /// and to refuse stragglers with a precise error. After that its messages are `unknownRound`.
    public var retentionTicks: UInt64
    private var rounds: [RoundID: RoundState] = [:]

    /// - Parameters:
    ///   - key: this node's signing key. `id` defaults to the ID derived from it.
    ///   - retentionTicks: see `retentionTicks`.
    public init(key: SigningKey, id: NodeID? = nil, retentionTicks: UInt64 = 1000) {
        self.key = key
        self.id = id ?? NodeID(publicKey: key.publicKey)
        self.retentionTicks = retentionTicks
    }

    /// Rounds currently held (open or retained).
    public var roundIDs: [RoundID] { Array(rounds.keys) }
    /// The outcome of a round on this node, if decided and still retained.
    public func outcome(of round: RoundID) -> RoundOutcome? { rounds[round]?.outcome }
    public func spec(of round: RoundID) -> RoundSpec? { rounds[round]?.spec }

    /// Opens a round on this node.
    ///
    /// - Parameters:
    ///   - vote: this node's result, or nil to abstain or when it is not a voter (it still tallies).
    ///   - restoring: the `OwnVote` persisted before a restart; reused instead of committing afresh.
    ///   - rng: the salt source. **In production pass `SystemRandomNumberGenerator`**: the salt is
    ///     what hides a yes/no vote until the reveal. Seeded generators are for the simulator.
    public mutating func open(_ spec: RoundSpec, vote: VoteResult?, restoring: OwnVote? = nil,
                              using rng: inout some RandomNumberGenerator) throws(VoteError) -> [VoteEffect] {
        guard rounds[spec.id] == nil else { throw VoteError(.duplicateRound(spec.id)) }
        var round = RoundState(spec: spec, openedAt: now, myIndex: spec.index(of: id))
        var effects: [VoteEffect] = []
        if let mine = round.myIndex {
            var own: OwnVote?
            if let restoring, restoring.round == spec.id, restoring.commit.voter == id {
                own = restoring
            } else if let vote {
                var salt = [UInt8](); salt.reserveCapacity(VoteLimits.saltBytes)
                for _ in 0..<(VoteLimits.saltBytes / 8) { withUnsafeBytes(of: rng.next()) { salt.append(contentsOf: $0) } }
                let c = Commitment.compute(round: spec.id, voter: id, result: vote, salt: salt)
                own = OwnVote(round: spec.id, result: vote, salt: salt,
                              commit: SignedCommit.sign(round: spec.id, voter: id, commitment: c, key: key))
                effects.append(.persist(own!))
            }
            if let own {
                round.own = own
                round.commits[mine] = own.commit
                round.commitsHeld += 1
                effects.append(.broadcast(.commit(own.commit)))
            }
        }
        effects += advance(&round)
        rounds[spec.id] = round
        return effects
    }

    /// Decodes and handles one message from the wire.
    public mutating func step(bytes: [UInt8]) throws(VoteError) -> [VoteEffect] {
        try step(try VoteMessage(decoding: bytes))
    }

    /// Handles one message. Throws (and changes nothing) when the message is refused.
    public mutating func step(_ message: VoteMessage) throws(VoteError) -> [VoteEffect] {
        let rid = message.round
        guard let spec = rounds[rid]?.spec else { throw VoteError(.unknownRound(rid)) }
        guard let sender = spec.index(of: message.sender) else {
            throw VoteError(.notEligible(voter: message.sender, round: rid))
        }
        // Taken out of the dictionary while it changes, so its arrays are uniquely referenced and
        // mutate in place (no copy per message); put back on every path, including refusals.
        var round = rounds.removeValue(forKey: rid)!
        defer { rounds[rid] = round }
        let voter = spec.voters[sender]
        var effects: [VoteEffect] = []
        switch message {
        case let .commit(c):
            guard c.verify(key: voter.key) else { throw VoteError(.badSignature(what: "commitment", voter: voter.id)) }
            if let held = round.commits[sender] {
                if held.commitment != c.commitment { effects += round.noteEquivocation(held, c) }
                // An identical duplicate (retransmission) is harmless.
            } else {
                guard round.commitsOpen else { throw VoteError(.commitPhaseClosed(voter: voter.id, round: rid)) }
                round.commits[sender] = c
                round.commitsHeld += 1
            }
        case let .reveal(r):
            guard r.verify(key: voter.key) else { throw VoteError(.badSignature(what: "reveal", voter: voter.id)) }
            guard let held = round.commits[sender] else { throw VoteError(.revealBeforeCommit(voter: voter.id, round: rid)) }
            if !r.opens(held) {
                effects += round.report(.badReveal(held, r))
                round.faulty[sender] = true
                round.retally()
            } else if round.reveals[sender] == nil {
                guard now < round.revealDeadline else { throw VoteError(.revealPhaseClosed(voter: voter.id, round: rid)) }
                round.reveals[sender] = r
                // The commit phase is deliberately *not* closed on the first reveal: with per-link
                // delays an honest commitment can still be in flight, and refusing it would cost
                // liveness. Copying a revealed result is bounded by the deadline skew instead
                // (see docs/VOTE.md, "What commit-reveal does not prevent").
                if !round.faulty[sender] { round.tally[r.result, default: 0] += voter.weight }
                if case let .accepted(x, cert)? = round.outcome, r.result != x, spec.verifiableTruth {
                    effects += round.report(.wrongResult(held, r, cert))
                }
            }
        case let .summary(s):
            guard s.verify(key: voter.key) else { throw VoteError(.badSignature(what: "round summary", voter: voter.id)) }
            effects += round.absorb(s, from: sender, selfIndex: round.myIndex)
        }
        effects += advance(&round)
        return effects
    }

    /// Adopts a decision certificate committed through Raft, for a round this node failed or has not
    /// decided (its commit phase may have closed before a slow commitment arrived, so local outcomes
    /// can differ; the committed certificate is the shared truth).
    ///
    /// Emits `.decided` when the local outcome changes, nothing when this node already accepted the
    /// same result. Throws `invalidCertificate` when the certificate does not verify, or when this node
    /// accepted a *different* result, which is impossible while Byzantine weight is below a third, so
    /// the shell should raise an alarm rather than act.
    public mutating func adopt(_ certificate: DecisionCertificate) throws(VoteError) -> [VoteEffect] {
        let rid = certificate.round
        guard var round = rounds.removeValue(forKey: rid) else { throw VoteError(.unknownRound(rid)) }
        defer { rounds[rid] = round }
        try certificate.verify(spec: round.spec)
        if case let .accepted(mine, _)? = round.outcome {
            if mine == certificate.result { return [] }
            throw VoteError(.invalidCertificate(reason: "certifies \(certificate.result) but this node accepted \(mine) in \(rid): Byzantine weight must be at least a third"))
        }
        return round.accept(certificate.result, certificate)
    }

    /// Advances time by `count` ticks (default one): closes phases whose deadline passed and
    /// forgets expired rounds. Jumping several ticks at once is the same as ticking one at a time
    /// when no message arrives in between, except that effects due at an intermediate tick are
    /// emitted at the end of the jump (the simulator jumps exactly to deadlines).
    public mutating func tick(_ count: UInt64 = 1) -> [VoteEffect] {
        now += count
        var effects: [VoteEffect] = []
        for rid in rounds.keys.sorted() {  // sorted: effects come out in the same order on every run
            guard let deadline = rounds[rid]?.revealDeadline else { continue }
            if now >= deadline + retentionTicks {
                rounds[rid] = nil
                continue
            }
            var round = rounds.removeValue(forKey: rid)!
            effects += advance(&round)
            rounds[rid] = round
        }
        return effects
    }

    /// Moves a round forward as far as its state and the clock allow.
    private func advance(_ round: inout RoundState) -> [VoteEffect] {
        let rid = round.spec.id
        var effects: [VoteEffect] = []
        // Fast path: with every voter's commitment in hand nobody can still commit, so revealing now
        // cannot help a copier; otherwise wait for the deadline.
        if round.commitsOpen && (now >= round.commitDeadline || round.commitsHeld == round.spec.voters.count) {
            round.commitsOpen = false
        }
        if !round.commitsOpen, !round.revealedOwn, let own = round.own, let mine = round.myIndex {
            round.revealedOwn = true
            let r = SignedReveal.sign(round: rid, voter: id, result: own.result, salt: own.salt, key: key)
            if now < round.revealDeadline {
                round.reveals[mine] = r
                round.tally[r.result, default: 0] += round.spec.voters[mine].weight
                effects.append(.broadcast(.reveal(r)))
            }
        }
        effects += round.decideIfPossible(now: now)
        if !round.summarySent && (now >= round.revealDeadline || round.allRevealsIn), let mine = round.myIndex {
            round.summarySent = true
            let s = RoundSummary.sign(round: rid, attester: id, revealed: round.reveals.map { $0 != nil },
                                      commitments: round.commits.map { $0?.commitment },
                                      key: key)
            effects.append(.broadcast(.summary(s)))
            effects += round.absorb(s, from: mine, selfIndex: mine)
        }
        return effects
    }
}

/// One round on one node.
struct RoundState: Sendable {
    let spec: RoundSpec
    let myIndex: Int?
    let commitDeadline: UInt64
    let revealDeadline: UInt64
    var commitsOpen = true
    var own: OwnVote?
    var revealedOwn = false
    var commits: [SignedCommit?]
    var commitsHeld = 0
    var reveals: [SignedReveal?]
    /// Voters proven to have equivocated or revealed badly here: never counted.
    var faulty: [Bool]
    var tally: [VoteResult: UInt64] = [:]
    var outcome: RoundOutcome?
    var summarySent = false
    var attestations: [SummaryAttestation?]
    /// Weight of the attesters that hold no reveal from voter i.
    var missingWeight: [UInt64]
    var reported: Set<OffenceKey> = []

    init(spec: RoundSpec, openedAt: UInt64, myIndex: Int?) {
        self.spec = spec
        self.myIndex = myIndex
        commitDeadline = openedAt + UInt64(spec.commitTicks)
        revealDeadline = commitDeadline + UInt64(spec.revealTicks)
        let n = spec.voters.count
        commits = Array(repeating: nil, count: n)
        reveals = Array(repeating: nil, count: n)
        faulty = Array(repeating: false, count: n)
        attestations = Array(repeating: nil, count: n)
        missingWeight = Array(repeating: 0, count: n)
    }

    /// Every voter whose commitment is held has revealed (or is known faulty), and no more commitments can come.
    var allRevealsIn: Bool {
        !commitsOpen && commits.indices.allSatisfy { commits[$0] == nil || reveals[$0] != nil || faulty[$0] }
    }

    mutating func retally() {
        tally = [:]
        for (i, r) in reveals.enumerated() where !faulty[i] {
            if let r { tally[r.result, default: 0] += spec.voters[i].weight }
        }
    }

    /// Emits evidence once per offence key.
    mutating func report(_ e: Evidence) -> [VoteEffect] {
        reported.insert(e.key).inserted ? [.evidence(e)] : []
    }

    mutating func noteEquivocation(_ a: SignedCommit, _ b: SignedCommit) -> [VoteEffect] {
        guard let i = spec.index(of: a.voter) else { return [] }
        if !faulty[i] {
            faulty[i] = true
            retally()
        }
        return report(.equivocating(a, b))
    }

    /// Takes in a verified summary: counts its attestation and, for every voter whose commitment the
    /// attester holds differently, hands the attester this node's signed copy. An honest attester
    /// then holds two signed commitments and reports the equivocation itself; a lying attester's
    /// entry costs nothing, since a commitment without the voter's signature proves nothing.
    mutating func absorb(_ s: RoundSummary, from attester: Int, selfIndex: Int?) -> [VoteEffect] {
        guard attestations[attester] == nil, s.commitments.count == spec.voters.count else { return [] }
        var effects: [VoteEffect] = []
        attestations[attester] = s.attestation
        let w = spec.voters[attester].weight
        for (i, claimed) in s.commitments.enumerated() {
            if !s.attestation.hasReveal(from: i) { missingWeight[i] += w }
            if attester != selfIndex, let claimed, let held = commits[i], held.commitment != claimed {
                effects.append(.send(to: spec.voters[attester].id, .commit(held)))
            }
        }
        effects += checkWithholding()
        return effects
    }

    /// Proves withholding for every voter whose signed commitment this node holds and whose reveal is
    /// missing at attesters weighing more than two thirds.
    mutating func checkWithholding() -> [VoteEffect] {
        var effects: [VoteEffect] = []
        for i in spec.voters.indices where spec.isSupermajority(missingWeight[i]) {
            guard let commit = commits[i] else { continue }
            let key = OffenceKey(accused: spec.voters[i].id, round: spec.id, offence: .withheldReveal)
            guard !reported.contains(key) else { continue }
            let lacking = attestations.compactMap { $0 }.filter { !$0.hasReveal(from: i) }
            effects += report(.withholding(commit, attestations: lacking))
        }
        return effects
    }

    /// Records acceptance and, where the truth is verifiable, proves every held reveal of another result wrong.
    mutating func accept(_ result: VoteResult, _ cert: DecisionCertificate) -> [VoteEffect] {
        outcome = .accepted(result, cert)
        var effects: [VoteEffect] = [.decided(spec.id, outcome!)]
        if spec.verifiableTruth {
            for (i, r) in reveals.enumerated() {
                if let r, r.result != result, let c = commits[i], r.opens(c) { effects += report(.wrongResult(c, r, cert)) }
            }
        }
        return effects
    }

    mutating func decideIfPossible(now: UInt64) -> [VoteEffect] {
        guard outcome == nil else { return [] }
        let leading = tally.max { a, b in a.value != b.value ? a.value < b.value : b.key < a.key }
        if let (result, weight) = leading, spec.isSupermajority(weight) {
            var entries: [DecisionCertificate.Entry] = []
            for (i, r) in reveals.enumerated() where !faulty[i] {
                guard let r, r.result == result, let c = commits[i] else { continue }
                entries.append(.init(voterIndex: UInt16(i), salt: r.salt, commitSignature: c.signature))
            }
            return accept(result, DecisionCertificate(round: spec.id, result: result, entries: entries))
        }
        // Weight that could still be counted for the leading result.
        var pending: UInt64 = 0
        for i in spec.voters.indices where reveals[i] == nil && !faulty[i] && (commitsOpen || commits[i] != nil) {
            pending += spec.voters[i].weight
        }
        let reason: RoundFailure.Reason
        if now >= revealDeadline {
            reason = .deadlinePassed
        } else if !spec.isSupermajority((leading?.value ?? 0) + pending) {
            reason = .supermajorityUnreachable
        } else {
            return []
        }
        outcome = .failed(RoundFailure(reason: reason, leading: leading?.key, leadingWeight: leading?.value ?? 0,
                                       totalWeight: spec.totalWeight))
        return [.decided(spec.id, outcome!)]
    }
}
