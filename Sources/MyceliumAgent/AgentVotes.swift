// The agent's shell around the Byzantine-tolerant vote (MyceliumVote.VoteInstance, a pure state
// machine). The primary spore opens, decides and closes rounds through committed commands, so every
// node opens the same round with the same electorate; this file carries the vote's messages between
// agents (frame type 22), persists this node's own vote before sending it, answers each question from
// this node's own observations, and commits certificates and evidence back into the spore.
//
// Two uses, as the issue asks: confirming a failure before it is recorded (and VMs move), and
// admitting a sclerotium after the handoff. A test agent can be told to lie (`vote_lie = true`).

import Foundation
import Logging
import MyceliumCore
import MyceliumIdentity
import MyceliumMembership
import MyceliumRaft
import MyceliumSpores
import MyceliumTransport
import MyceliumVote

/// How one round went on this node: from applying its opening entry to its own decision.
struct VoteTiming: Sendable {
    var opened: Double
    var decided: Double?
    var messagesSent = 0
    var latencyMilliseconds: Double { decided.map { ($0 - opened) * 1000 } ?? -1 }
}

/// A failure question this node is checking for itself before it answers.
struct PendingCheck: Sendable {
    let round: SporeRound
    let since: UInt64
    let deadline: UInt64
}

extension Agent {
    var votePhaseTicks: UInt32 { UInt32(max(1, config.votePhaseMilliseconds / config.tickMilliseconds)) }

    /// The leader opens a round about `node`, at most once per few seconds per node.
    func openVote(_ kind: VoteKind, about node: MyceliumIdentity.NodeID) {
        guard raft.role == .leader, spore.openRound(kind, node: node) == nil else { return }
        let key = node.compact &+ UInt64(kind.rawValue)
        let ticksPerSecond = UInt64(max(1, 1000 / config.tickMilliseconds))
        if let last = lastVoteOpened[key], ticks < last + 3 * ticksPerSecond { return }
        lastVoteOpened[key] = ticks
        submit(.openVote(kind, node: node, commitTicks: votePhaseTicks, revealTicks: votePhaseTicks))
    }

    /// A vote command was committed and applied to the spore.
    func appliedVoteCommand(_ command: SporeCommand) {
        switch command {
        case .openVote:
            guard let round = spore.rounds[spore.voteSequence] else { return }
            instruments.votesOpened.increment()
            note("vote \(round.sequence) opened: \(round.kind) of \(round.node), \(round.spec.voters.count) voters, tolerates \(round.spec.assumedFaults) liar(s)")
            joinRound(round)
        case let .decideVote(seq, _):
            guard let round = spore.rounds[seq], let result = round.decision else { return }
            let verdict = result == .yes ? "yes" : "no"
            (result == .yes ? instruments.votesDecidedYes : instruments.votesDecidedNo).increment()
            note("vote \(seq) decided \(verdict): \(round.kind) of \(round.node)")
            logger.notice("vote decided", metadata: ["round": "\(seq)", "kind": "\(round.kind)", "node": "\(round.node)", "result": "\(verdict)"])
            if round.kind == .failure && result == .yes {
                instruments.failuresRecorded.increment()
                note("recorded failure of \(round.node) (confirmed by vote \(seq))")
                logger.warning("member recorded as failed after a Byzantine-tolerant vote", metadata: ["node": "\(round.node)"])
            }
        case let .voteEvidence(seq, bytes):
            if let e = try? Evidence(decoding: bytes) {
                instruments.slashings.increment()
                note("slashed \(e.accused) for \(e.offence) in vote \(seq): trust now \(spore.trust.score(of: e.accused))")
                logger.warning("voter slashed", metadata: ["node": "\(e.accused)", "offence": "\(e.offence)", "round": "\(seq)"])
            }
        case let .closeVote(seq):
            instruments.votesClosed.increment()
            note("vote \(seq) closed without a decision")
        default:
            break
        }
    }

    func refusedVoteCommand(_ command: SporeCommand, _ error: Error) {
        guard case let .openVote(kind, node, _, _) = command else { return }
        if voteFallbackNoted.insert("open \(kind) \(node)").inserted {
            note("cannot open a \(kind) vote on \(node): \(error)")
        }
    }

    /// Opens the committed round in this node's vote instance, with this node's answer.
    ///
    /// Asked whether a node has failed, this node answers only from what it saw itself: "yes" when
    /// its own failure detector suspects the node, "no" when anything arrived from the node in the
    /// last second. Otherwise it checks: it sends the node a probe and waits up to half a vote phase.
    /// An answer means "no"; a connection it had to the node and lost (closed, refused) means "yes";
    /// anything else (say a link still being dialled) leaves it unsure, and it abstains. Abstaining
    /// can only make a round fail; it can never make a wrong answer win.
    func joinRound(_ round: SporeRound) {
        voteRounds[round.spec.id] = round.sequence
        voteTimings[round.sequence] = VoteTiming(opened: Date().timeIntervalSince1970)
        if voteTimings.count > 2 * spore.limits.maxRounds, let oldest = voteTimings.keys.min() { voteTimings[oldest] = nil }
        let path = paths.votesDir + "/\(round.sequence).vote"
        var restoring: OwnVote?
        if AtomicFile.exists(path) {
            restoring = try? OwnVote(decoding: ChecksummedFile.read(kind: FileKind.ownVote, from: path))
        }
        guard round.kind == .failure, restoring == nil, round.spec.index(of: certificate.nodeID) != nil else {
            enterRound(round, answer: round.kind == .sclerotium ? sclerotiumAnswer(round) : nil, restoring: restoring)
            return
        }
        let peer = round.node.compact
        let ticksPerSecond = UInt64(max(1, 1000 / config.tickMilliseconds))
        if suspects(peer) { return enterRound(round, answer: true, restoring: nil) }
        if let heard = lastHeard[peer], ticks < heard + ticksPerSecond { return enterRound(round, answer: false, restoring: nil) }
        let window = UInt64(max(1, Int(votePhaseTicks) / 2))
        pendingChecks[round.sequence] = PendingCheck(round: round, since: ticks, deadline: ticks + window)
        (links[peer] ?? makeLink(peer))?.send(Frame(type: AgentFrame.probe, payload: encodeProbe(.ping(seq: rng.next()))))
    }

    func suspects(_ peer: UInt64) -> Bool {
        switch detector.health[peer] {
        case .suspect?, .candidate?: return true
        default: return false
        }
    }

    /// Answers the failure questions whose direct check is over (called every tick).
    func finishChecks() {
        for (seq, c) in pendingChecks {
            let peer = c.round.node.compact
            let heard = lastHeard[peer].map { $0 >= c.since } ?? false
            guard heard || ticks >= c.deadline else { continue }
            pendingChecks[seq] = nil
            let answer: Bool? = heard ? false : (suspects(peer) || links[peer]?.lostConnection == true) ? true : nil
            enterRound(c.round, answer: answer, restoring: nil)
        }
    }

    func sclerotiumAnswer(_ round: SporeRound) -> Bool {
        let peer = round.node.compact
        return spore.members[round.node]?.status == .alive && (heardFrom.contains(peer) || detector.health[peer] == .alive)
    }

    /// `answer` is this node's honest judgement (true = yes, nil = it does not know and abstains);
    /// a lying test agent inverts it.
    func enterRound(_ round: SporeRound, answer: Bool?, restoring: OwnVote?) {
        var vote: VoteResult?
        if round.spec.index(of: certificate.nodeID) != nil {
            let said = config.voteLie ? !(answer ?? false) : answer
            vote = said.map { $0 ? .yes : .no }
        }
        var rng = SystemRandomNumberGenerator()
        do {
            handleVoteEffects(try votes.open(round.spec, vote: vote, restoring: restoring, using: &rng))
        } catch {
            logger.debug("vote round not opened", metadata: ["round": "\(round.sequence)", "reason": "\(error)"])
        }
        earlyVoteSince[round.spec.id] = nil
        for m in earlyVoteMessages.removeValue(forKey: round.spec.id) ?? [] { stepVote(m) }
    }

    func receiveVote(_ payload: [UInt8], from peer: UInt64) {
        guard let m = try? VoteMessage(decoding: payload), m.sender.compact == peer else {
            logger.debug("refused a vote message that is malformed or not from its channel's peer", metadata: ["peer": "\(peer)"])
            return
        }
        if votes.spec(of: m.round) == nil {
            // The round's opening entry has not been applied here yet: keep a few messages for it.
            // Bounded in total: only members can send these, but a faulty one must not fill memory.
            let held = earlyVoteMessages.values.reduce(0) { $0 + $1.count }
            if held < 2048 && (earlyVoteMessages[m.round] != nil || earlyVoteMessages.count < 16) {
                if earlyVoteMessages[m.round] == nil { earlyVoteSince[m.round] = ticks }
                earlyVoteMessages[m.round, default: []].append(m)
            }
            return
        }
        stepVote(m)
    }

    func stepVote(_ m: VoteMessage) {
        do {
            handleVoteEffects(try votes.step(m))
        } catch {
            logger.debug("vote message refused", metadata: ["from": "\(m.sender)", "reason": "\(error)"])
        }
    }

    func handleVoteEffects(_ effects: [VoteEffect]) {
        for e in effects {
            switch e {
            case .persist(let own):
                guard let seq = voteRounds[own.round] else { continue }
                do {
                    try AtomicFile.makeDirectory(paths.votesDir)
                    try ChecksummedFile.write(kind: FileKind.ownVote, payload: own.encoded(), to: paths.votesDir + "/\(seq).vote")
                } catch {
                    // Sending a vote we could not store risks equivocating after a crash: stay silent.
                    logger.error("cannot store this node's vote; abstaining", metadata: ["round": "\(seq)", "error": "\(error)"])
                    return
                }
            case .broadcast(let m):
                guard let spec = votes.spec(of: m.round) else { continue }
                let frame = Frame(type: AgentFrame.vote, payload: m.encoded())
                for v in spec.voters where v.id != certificate.nodeID {
                    (links[v.id.compact] ?? makeLink(v.id.compact))?.send(frame)
                }
                if let seq = voteRounds[m.round] { voteTimings[seq]?.messagesSent += spec.voters.count - 1 }
            case let .send(to, m):
                (links[to.compact] ?? makeLink(to.compact))?.send(Frame(type: AgentFrame.vote, payload: m.encoded()))
                if let seq = voteRounds[m.round] { voteTimings[seq]?.messagesSent += 1 }
            case let .decided(rid, outcome):
                guard let seq = voteRounds[rid] else { continue }
                voteTimings[seq]?.decided = Date().timeIntervalSince1970
                switch outcome {
                case let .accepted(_, cert):
                    if spore.rounds[seq]?.isOpen == true { submit(.decideVote(sequence: seq, certificate: cert.encoded())) }
                case .failed(let f):
                    note("vote \(seq) failed here: \(f)")
                    if raft.role == .leader && spore.rounds[seq]?.isOpen == true { submit(.closeVote(sequence: seq)) }
                }
            case .evidence(let ev):
                guard let seq = voteRounds[ev.round] else { continue }
                note("evidence: \(ev)")
                submit(.voteEvidence(sequence: seq, evidence: ev.encoded()))
            }
        }
    }

    /// An operator (or a benchmark) asks whether `peer` has failed: the leader puts it to a vote.
    func requestFailureVote(_ peer: UInt64) {
        if raft.role == .leader {
            recordReport(peer, by: me)
        } else if raft.leader != .none, let link = links[raft.leader] ?? makeLink(raft.leader) {
            var w = ByteWriter(); w.u64(peer)
            link.send(Frame(type: AgentFrame.report, payload: w.bytes))
        }
    }

    /// Drops messages held for rounds that never opened here (30 s): a round that opens later is
    /// long past its deadlines, and a faulty member's messages for made-up rounds must not stay.
    func pruneEarlyVoteMessages() {
        let limit = UInt64(max(1, 30_000 / config.tickMilliseconds))
        for (rid, since) in earlyVoteSince where ticks > since + limit {
            earlyVoteSince[rid] = nil
            earlyVoteMessages[rid] = nil
        }
    }

    /// A lying test agent also accuses a live member now and then, to show the vote protects it.
    func fabricateAccusation() {
        guard config.voteLie, ticks % (5 * UInt64(max(1, 1000 / config.tickMilliseconds))) == 0,
              let victim = spore.presentMembers.map({ $0.id.compact }).filter({ $0 != me }).randomElement(using: &rng) else { return }
        requestFailureVote(victim)
    }

    /// Leader housekeeping, every second: close rounds that outlived their deadlines everywhere,
    /// and forget finished rounds' files.
    func superviseVotes() {
        guard raft.role == .leader else { return }
        let limit = Int64(2 * config.votePhaseMilliseconds / 1000 + 10)
        for r in spore.rounds.values where r.isOpen && spore.now - r.openedAt > limit {
            submit(.closeVote(sequence: r.sequence))
        }
    }
}
