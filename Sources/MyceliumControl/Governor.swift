// The governor: the rules that decide who fails, who leads and who governs, as a pure value.
//
// It holds this node's failure detector, its Byzantine-tolerant vote instance and the leader's
// bookkeeping, and it reads (never changes) Raft and the control state. The shell (the agent, or
// the simulator) feeds it ticks, messages and applied changes, and carries out the effects it
// returns, in order. Like Raft.swift it never touches a clock, a socket, a file or a global random
// generator: time is ticks, randomness is a parameter.
//
// A network's life, and where each step is decided:
//  1. bootstrap: the genesis node is the only voter; admitted nodes join Raft as learners
//     (`reconcile`, step 2);
//  2. handoff: once `handoffMembers` are present, caught-up eligible learners are promoted until
//     `sclerotia` voters exist, recorded as the sclerotia, and `handoff` is committed (steps 3–4);
//  3. distributed: failed voters are removed and replaced (step 1, then 3).
// Failures: a detector candidate is reported to the leader (`memberDuties`), the leader puts it to
// the vote (`failureReported` → `openVote`), voters answer from their own observations
// (`joinRound`), the decision certificate records the failure (`handleVoteEffects`), and the
// failed node leaves the Raft configuration (`reconcile`, step 1).
//
// Effect contract: effects are carried out in the order returned. A `.persistVote` must be durable
// before any later effect of the same batch is carried out; if it cannot be stored, the shell drops
// the rest of the batch (sending a vote it could not store risks equivocating after a crash).

import MyceliumCore
import MyceliumIdentity
import MyceliumMembership
import MyceliumRaft
import MyceliumSpores
import MyceliumVote

public struct GovernorSettings: Sendable {
    /// Members needed before the genesis node hands control to the sclerotia.
    public var handoffMembers: Int = 3
    /// Raft voters to keep (rounded down to an odd number).
    public var sclerotia: Int = 5
    public var ticksPerSecond: UInt64 = 10
    /// Ticks of each vote phase (commit, reveal).
    public var votePhaseTicks: UInt32 = 5
    /// Seconds without a leader before falling back to seed spores.
    public var fallbackSeconds: Int = 10
    /// A member is probed by everyone once it has been admitted this long (spore seconds), even if
    /// it never reached us: a node that died before reaching others is still found out.
    public var probeGraceSeconds: Int64 = 10
    public var detector = FailureDetectorSettings()
    /// How long finished rounds are kept in the vote instance.
    public var voteRetentionTicks: UInt64 = 600

    public init() {}
}

/// How this node answers vote rounds. Production code has only `HonestVoter`; a Byzantine
/// behaviour exists in the test and simulation targets, never in a product.
public protocol VoterBehaviour: Sendable {
    /// What this node says in `round`, given its honest answer (nil: it does not know and abstains).
    func say(_ honest: Bool?, in round: SporeRound) -> Bool?
    /// Failure accusations to raise at this tick (an honest node raises none).
    func accusations(tick: UInt64, ticksPerSecond: UInt64, members: [UInt64], using rng: inout some RandomNumberGenerator) -> [UInt64]
    /// A conflicting commitment to send `voter` instead of this node's real one (nil: the real one, as
    /// an honest node always does). `sign` signs a commitment as this node. Only the test-only
    /// `EquivocatingVoter` (MyceliumSim) returns one: the network must prove it and slash it.
    func equivocation(of commit: SignedCommit, to voter: MyceliumIdentity.NodeID, sign: (_ commitment: [UInt8]) -> SignedCommit) -> SignedCommit?
}

extension VoterBehaviour {
    public func equivocation(of commit: SignedCommit, to voter: MyceliumIdentity.NodeID, sign: (_ commitment: [UInt8]) -> SignedCommit) -> SignedCommit? { nil }
}

public struct HonestVoter: VoterBehaviour {
    public init() {}
    public func say(_ honest: Bool?, in round: SporeRound) -> Bool? { honest }
    public func accusations(tick: UInt64, ticksPerSecond: UInt64, members: [UInt64], using rng: inout some RandomNumberGenerator) -> [UInt64] { [] }
}

public enum GovernorLogLevel: Sendable { case debug, info, notice, warning, error }

/// What the governor's counters count (the shell maps them to metrics).
public enum GovernorMetric: Sendable {
    case votesOpened, votesDecidedYes, votesDecidedNo, votesClosed, slashings, failuresRecorded
}

public enum GovernorEffect: Sendable {
    /// Propose this configuration change; report its index back with `confChangeProposed(at:)`.
    case proposeConfChange(ConfChange, reason: String)
    /// Hand Raft leadership to this voter (thesis §3.10).
    case transferLeadership(to: UInt64, reason: String)
    /// Sign this command as this node and propose it (directly when leader, else through the leader).
    case submit(SporeCommand)
    /// Propose (or forward to the leader) a command someone else signed.
    case propose(SignedCommand)
    /// Ask to be admitted: send this node's admission to the leader, or to every contact.
    case requestAdmission
    case send(to: UInt64, PeerMessage)
    /// Store this node's own vote durably before anything later in the batch (see the contract).
    case persistVote(OwnVote, sequence: UInt64)
    case readSeedSpores(reason: String)
    /// A line for the operator's event list.
    case note(String)
    case log(GovernorLogLevel, String, [String: String])
    case count(GovernorMetric)
    case roundOpened(sequence: UInt64)
    case roundDecided(sequence: UInt64)
    case roundMessages(sequence: UInt64, count: Int)
}

/// A failure question this node is checking for itself before it answers.
struct PendingCheck: Sendable {
    let round: SporeRound
    let since: UInt64
    let deadline: UInt64
}

public struct Governor: Sendable {
    public let me: UInt64
    /// This node's certificate (the newest the network issued it; `present` switches it).
    public private(set) var certificate: MembershipCertificate
    public let settings: GovernorSettings
    let behaviour: any VoterBehaviour
    /// Held only to let a test-only behaviour sign a conflicting commitment (`VoterBehaviour.equivocation`).
    let voteKey: SigningKey

    public private(set) var detector: FailureDetector<UInt64>
    public private(set) var votes: VoteInstance
    public private(set) var ticks: UInt64 = 0
    /// Peers we have received a frame from; only these are probed before their grace period ends.
    public private(set) var heardFrom: Set<UInt64> = []
    /// The tick at which a frame last arrived from each peer.
    public private(set) var lastHeard: [UInt64: UInt64] = [:]
    public private(set) var fallback: String?
    var lastLeaderSeen: UInt64 = 0

    // Leader bookkeeping.
    var pendingConfChange: UInt64 = 0
    var lastGovernanceProposal: UInt64 = 0
    var lastGovernanceIndex: UInt64 = 0
    var reconcileSoon = false
    /// Failure reports by target, then reporter, with the tick of the latest report. Members repeat
    /// a report every second while they hold the candidate, so only recent reports count.
    var failureReports: [UInt64: [UInt64: UInt64]] = [:]
    var lastVoteOpened: [UInt64: UInt64] = [:]
    var proposedAdmits: [UInt64: UInt64] = [:]
    var noted: Set<String> = []
    var lastTransfer: UInt64 = 0
    /// Raft ids of the spore's members, for names in notes and for lookups by Raft id.
    var names: [UInt64: MyceliumIdentity.NodeID] = [:]

    // Votes.
    var voteRounds: [RoundID: UInt64] = [:]
    var earlyVoteMessages: [RoundID: [VoteMessage]] = [:]
    var earlyVoteSince: [RoundID: UInt64] = [:]
    var pendingChecks: [UInt64: PendingCheck] = [:]
    /// Decisions committed for rounds this node had not opened yet (it was still checking).
    var committedDecisions: [RoundID: DecisionCertificate] = [:]
    /// This node's own votes found on disk at start (a restart must never vote twice).
    var storedVotes: [UInt64: OwnVote] = [:]

    public var node: MyceliumIdentity.NodeID { certificate.nodeID }

    public init(me: UInt64, certificate: MembershipCertificate, key: SigningKey, settings: GovernorSettings,
                behaviour: any VoterBehaviour = HonestVoter(), storedVotes: [UInt64: OwnVote] = [:]) {
        self.me = me
        self.certificate = certificate
        self.settings = settings
        self.behaviour = behaviour
        self.voteKey = key
        self.detector = FailureDetector(me: me, peers: [], settings: settings.detector)
        self.votes = VoteInstance(key: key, id: certificate.nodeID, retentionTicks: settings.voteRetentionTicks)
        self.storedVotes = storedVotes
    }

    var tps: UInt64 { max(1, settings.ticksPerSecond) }

    /// The network issued this node a newer certificate.
    public mutating func present(_ cert: MembershipCertificate) {
        precondition(cert.nodeID == certificate.nodeID, "a node presents only its own certificate")
        certificate = cert
    }

    // MARK: ticks

    /// One tick, after Raft's. `lostConnections`: peers whose link to us had a connection and lost it
    /// (evaluated only while a failure question is being checked).
    public mutating func tick(raft: Raft, state: ControlState, lostConnections: @autoclosure () -> Set<UInt64>,
                              using rng: inout some RandomNumberGenerator) -> [GovernorEffect] {
        ticks += 1
        var out: [GovernorEffect] = []
        let spore = state.spore
        handleVoteEffects(votes.tick(), raft: raft, spore: spore, into: &out)
        if !pendingChecks.isEmpty { finishChecks(raft: raft, spore: spore, lostConnections: lostConnections(), using: &rng, into: &out) }
        for victim in behaviour.accusations(tick: ticks, ticksPerSecond: tps,
                                            members: spore.presentMembers.map { $0.id.compact }.filter { $0 != me }, using: &rng) {
            requestFailureVote(victim, raft: raft, state: state, into: &out)
        }
        for e in detector.tick(using: &rng) { handleDetector(e, into: &out) }
        if raft.leader != .none { lastLeaderSeen = ticks }
        if raft.role == .leader {
            // Every tick while short of voters (a learner catching up is promoted within a tick).
            let short = raft.confState.voters.count < targetVoters(spore: spore)
            if ticks % tps == 0 || pendingConfChange != 0 || short { reconcile(raft: raft, spore: spore, into: &out) }
            if ticks % tps == 0 { superviseVotes(raft: raft, spore: spore, into: &out) }
        }
        if ticks % tps == 0 {
            memberDuties(raft: raft, state: state, into: &out)
            pruneEarlyVoteMessages()
            detector.setPeers(probeTargets(spore))
        }
        checkFallback(raft: raft, into: &out)
        return out
    }

    /// Slow duties of every member, once a second: get admitted, and report failure candidates to
    /// the leader until they are recorded (a report sent while there was no leader — the failed
    /// node may have been the leader — must not be lost).
    mutating func memberDuties(raft: Raft, state: ControlState, into out: inout [GovernorEffect]) {
        let spore = state.spore
        let myStatus = spore.members[node]?.status
        let notMember = myStatus == nil || myStatus == .failed || myStatus == .left
        // A node restarted after the others recorded it failed does not hear from any leader: ask again.
        let lost = raft.leader == .none && ticks - lastLeaderSeen > 3 * tps
        if notMember || lost {
            if raft.role == .leader {
                out.append(.submit(.admit(certificate)))  // the genesis node admits itself once it leads
            } else {
                out.append(.requestAdmission)
            }
        }
        for (peer, h) in detector.health.sorted(by: { $0.key < $1.key }) where h == .candidate {
            if let m = member(peer, spore), m.status == .failed { continue }
            if raft.role == .leader {
                failureReported(peer, by: me, raft: raft, state: state, into: &out)
            } else if raft.leader != .none {
                out.append(.send(to: raft.leader, .report(target: peer)))
            }
        }
    }

    mutating func checkFallback(raft: Raft, into out: inout [GovernorEffect]) {
        let silent = (ticks - lastLeaderSeen) / tps
        if raft.leader == .none && silent >= UInt64(settings.fallbackSeconds) {
            if fallback == nil {
                let f = "no quorum for \(silent)s: falling back to seed spores to find the network"
                fallback = f
                out.append(.log(.warning, f, [:])); out.append(.note(f))
                out.append(.readSeedSpores(reason: "fallback"))
            }
        } else if raft.leader != .none && fallback != nil {
            out.append(.note("quorum regained; fallback over")); out.append(.log(.notice, "quorum regained; fallback over", [:]))
            fallback = nil
        }
    }

    // MARK: observations

    /// Something arrived from `peer` on an authenticated channel. Called for every frame, so it stays
    /// cheap: `lostConnections` is evaluated only while a failure question is being checked.
    public mutating func heard(from peer: UInt64, raft: Raft, state: ControlState, lostConnections: @autoclosure () -> Set<UInt64>,
                               using rng: inout some RandomNumberGenerator) -> [GovernorEffect] {
        var out: [GovernorEffect] = []
        lastHeard[peer] = ticks
        for e in detector.heard(from: peer) { handleDetector(e, into: &out) }
        if !pendingChecks.isEmpty {  // an answer to a direct check: vote at once
            finishChecks(raft: raft, spore: state.spore, lostConnections: lostConnections(), using: &rng, into: &out)
        }
        if heardFrom.insert(peer).inserted, member(peer, state.spore) != nil {
            detector.setPeers(probeTargets(state.spore))
        }
        return out
    }

    public mutating func receiveProbe(_ m: ProbeMessage<UInt64>, from peer: UInt64) -> [GovernorEffect] {
        var out: [GovernorEffect] = []
        for e in detector.receive(m, from: peer) { handleDetector(e, into: &out) }
        return out
    }

    /// A node asked to be admitted (its channel proved it is `peer`).
    public mutating func joinRequested(_ signed: SignedCommand, from peer: UInt64, address: String,
                                       raft: Raft, state: ControlState) -> [GovernorEffect] {
        guard case .admit(let cert) = signed.command, cert.nodeID.compact == peer else { return [] }
        let status = state.spore.members[cert.nodeID]?.status
        guard status == nil || status == .failed || status == .left else { return [] }
        var out: [GovernorEffect] = []
        if raft.role == .leader {
            if let at = proposedAdmits[peer], ticks < at + 2 * tps { return [] }
            proposedAdmits[peer] = ticks
            out.append(.note("join request from \(cert.nodeID) at \(address)"))
        }
        out.append(.propose(signed))
        return out
    }

    // MARK: applying committed entries

    /// The control state applied `changes` (one committed entry).
    public mutating func applied(_ changes: [ControlChange], raft: Raft, state: ControlState,
                                 using rng: inout some RandomNumberGenerator) -> [GovernorEffect] {
        var out: [GovernorEffect] = []
        let spore = state.spore
        learnNames(spore)
        for change in changes {
            guard case .spore(let signed) = change else { continue }
            switch signed.command {
            case .admit, .setSclerotia, .handoff, .decideVote, .setStatus: reconcileSoon = true
            default: break
            }
            switch signed.command {
            case .admit(let c):
                out.append(.note("admitted \(c.nodeID)")); out.append(.log(.info, "member admitted", ["node": "\(c.nodeID)"]))
                proposedAdmits[c.nodeID.compact] = nil
            case .handoff:
                out.append(.note("handoff: sclerotia \(spore.sclerotia.map { "\($0)" }.joined(separator: ", ")) now own the primary spore"))
                out.append(.log(.notice, "handoff committed: the sclerotia's Raft group owns the primary spore", [:]))
            case let .setStatus(n, status) where status == .failed:
                out.append(.note("recorded failure of \(n)")); out.append(.count(.failuresRecorded))
                out.append(.log(.warning, "member recorded as failed", ["node": "\(n)"]))
                failureReports[n.compact] = nil
            default:
                break
            }
            appliedVoteCommand(signed.command, raft: raft, spore: spore, using: &rng, into: &out)
        }
        detector.setPeers(probeTargets(spore))
        return out
    }

    /// A committed spore command was refused (identically on every replica).
    public mutating func refused(_ signed: SignedCommand, _ error: ControlError) -> [GovernorEffect] {
        guard case let .openVote(kind, node, _, _) = signed.command else { return [] }
        return noteOnce("open \(kind) \(node)", "cannot open a \(kind) vote on \(node): \(error)")
    }

    /// The state was replaced by a snapshot.
    public mutating func restored(state: ControlState) {
        learnNames(state.spore)
        detector.setPeers(probeTargets(state.spore))
    }

    /// Called after each Ready has been applied and Raft advanced: a member admitted or a governance
    /// step applied, or a configuration change committed, lets the leader take the next step now
    /// rather than at the next second.
    public mutating func readyApplied(confChanged: Bool, raft: Raft, state: ControlState) -> [GovernorEffect] {
        var out: [GovernorEffect] = []
        if confChanged {
            pendingConfChange = 0
            out.append(.note("configuration now voters=\(raft.confState.voters.count) learners=\(raft.confState.learners.count)"))
        }
        guard raft.role == .leader, pendingConfChange == 0 else { return out }
        if reconcileSoon || confChanged {
            reconcileSoon = false
            reconcile(raft: raft, spore: state.spore, into: &out)
        }
        return out
    }

    public mutating func confChangeProposed(at index: UInt64) { pendingConfChange = index }

    // MARK: leader duties

    /// Brings Raft's configuration in line with the spore: every present member replicates (as a
    /// learner first); eligible, caught-up learners become voters until `sclerotia` voters exist;
    /// failed voters are removed. One configuration change at a time.
    mutating func reconcile(raft: Raft, spore: PrimarySpore, into out: inout [GovernorEffect]) {
        guard raft.role == .leader else { return }
        // After the handoff only sclerotia may sign governance commands. A voter that is not one can
        // still be elected (say it was promoted and the leader died before recording it as a
        // sclerotium); it hands leadership to a sclerotium it hears from, which can govern.
        if spore.phase == .distributed && !spore.sclerotia.isEmpty && !spore.sclerotia.contains(node) {
            let governing = raft.confState.voters.filter { id in
                id != me && names[id].map { spore.sclerotia.contains($0) } == true && lastHeard[id].map { ticks <= $0 + 2 * tps } == true
            }
            if let target = governing.sorted().first, lastTransfer == 0 || ticks >= lastTransfer + 3 * tps {
                lastTransfer = ticks
                out.append(.transferLeadership(to: target, reason: "this leader is not a sclerotium; handing leadership to sclerotium \(label(target))"))
                return
            }
        }
        if pendingConfChange != 0 && raft.appliedIndex < pendingConfChange { return }
        pendingConfChange = 0
        let cs = raft.confState
        if cs.isJoint { return }
        let present = spore.presentMembers
        let presentIDs = Set(present.map { $0.id.compact })
        let failed = spore.members.values.filter { $0.status == .failed || $0.status == .left }.map { $0.id.compact }.sorted()

        // 1. Remove failed or departed nodes from the configuration (voters first: they hold quorum
        // hostage) — but never a voter whose removal would leave fewer live voters than a quorum. A
        // failure record can commit late (proposed in an old term, committed by the next leader)
        // about a node that is back; removing it while another voter is really dead would leave the
        // group without a quorum for good. Such a node rejoins and stays a voter.
        func heardRecently(_ id: UInt64) -> Bool { id == me || lastHeard[id].map { ticks <= $0 + 2 * tps } == true }
        func keepsQuorum(_ id: UInt64) -> Bool {
            let after = cs.voters.filter { $0 != id }
            return after.filter(heardRecently).count * 2 > after.count
        }
        let removable = failed.filter { cs.isVoter($0) && $0 != me && keepsQuorum($0) }
            .sorted { (heardRecently($0) ? 1 : 0, $0) < (heardRecently($1) ? 1 : 0, $1) }
        if let gone = removable.first ?? failed.first(where: { cs.isLearner($0) }) {
            out.append(.proposeConfChange(ConfChange([.removeNode(gone)]), reason: "remove failed node \(name(gone, spore))"))
            return
        }
        // 2. Every present member replicates.
        if let newcomer = present.first(where: { !cs.allMembers.contains($0.id.compact) }) {
            out.append(.proposeConfChange(ConfChange([.addLearner(newcomer.id.compact)]), reason: "add \(newcomer.id) as learner"))
            return
        }
        // 3. Keep `sclerotia` voters once enough members are present.
        let target = targetVoters(spore: spore)
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
                        out += noteOnce("sclerotium \(c.id)", "no admission vote for \(c.id) is possible (\(reason)); choosing by capability")
                    } else {
                        openVote(.sclerotium, about: c.id, raft: raft, spore: spore, into: &out)
                        continue
                    }
                }
                // Caught up to within a few entries: promoting it cannot stall commits for long.
                if let match = raft.matchIndex(of: id), match > 0, match + 10 >= raft.lastIndex {
                    out.append(.proposeConfChange(ConfChange([.addVoter(id)]), reason: "promote \(c.id) to voter (caught up at \(match))"))
                    return
                }
            }
        }
        // 4. Record the sclerotia and hand off. A governance command is proposed again only once the
        // previous one has applied, so a refused proposal cannot spin (only an accepted one triggers
        // the next reconcile at once) and an accepted one is followed by the next step without waiting.
        let voterIDs = raft.confState.voters.compactMap { member($0, spore)?.id }.sorted()
        if raft.appliedIndex >= lastGovernanceIndex && (ticks > lastGovernanceProposal || lastGovernanceIndex > 0) {
            if voters.count >= target && Set(spore.sclerotia) != Set(voterIDs) && voterIDs.count == raft.confState.voters.count
                && voterIDs.allSatisfy({ spore.members[$0]?.status == .alive }) {
                lastGovernanceProposal = ticks
                out.append(.submit(.setSclerotia(voterIDs)))
                lastGovernanceIndex = raft.lastIndex + 1
            } else if spore.phase == .bootstrap && present.count >= settings.handoffMembers && voters.count >= target
                        && Set(spore.sclerotia) == Set(voterIDs) && !spore.sclerotia.isEmpty {
                lastGovernanceProposal = ticks
                out.append(.submit(.handoff))
                lastGovernanceIndex = raft.lastIndex + 1
            }
        }
    }

    public func targetVoters(spore: PrimarySpore) -> Int {
        let present = spore.presentMembers.count
        // Before the handoff one voter (the bootstrap agent) suffices; after it, losing members below
        // `handoffMembers` must not shrink the group.
        if spore.phase == .bootstrap && present < settings.handoffMembers { return 1 }
        var t = min(settings.sclerotia, present)
        if t % 2 == 0 { t -= 1 }
        return max(1, t)
    }

    /// A failure report reached the leader. Where a Byzantine-tolerant round can be formed, the
    /// failure is put to the vote (and recorded only with its certificate); in a network too small for
    /// one, a majority of the voters (other than the suspect) reporting it is the confirmation.
    public mutating func failureReported(_ target: UInt64, by reporter: UInt64, raft: Raft, state: ControlState) -> [GovernorEffect] {
        var out: [GovernorEffect] = []
        failureReported(target, by: reporter, raft: raft, state: state, into: &out)
        return out
    }

    mutating func failureReported(_ target: UInt64, by reporter: UInt64, raft: Raft, state: ControlState, into out: inout [GovernorEffect]) {
        let spore = state.spore
        // A leader that can commit is alive: a report about it is a partition's artefact.
        guard raft.role == .leader, target != me, let m = member(target, spore), m.status != .failed else { return }
        let node = m.id
        if let reason = spore.voteUnavailable(.failure, node: node) {
            if noted.insert("failure \(node)").inserted {
                out.append(.note("no Byzantine-tolerant vote on \(node) is possible (\(reason)); confirming by a majority of the voters' reports"))
                out.append(.log(.warning, "failure confirmed without a Byzantine-tolerant vote: the network is too small for one",
                                ["node": "\(node)", "reason": reason]))
            }
            failureReports[target, default: [:]][reporter] = ticks
            let voters = raft.confState.voters.filter { $0 != target }
            let fresh = failureReports[target]!.filter { ticks <= $0.value + 3 * tps }.map(\.key)
            let agreeing = fresh.filter { voters.contains($0) }.count
            if agreeing * 2 > voters.count {
                out.append(.note("failure of \(node) confirmed by \(agreeing) of \(voters.count) voters"))
                out.append(.submit(.setStatus(node: node, .failed)))
                failureReports[target] = nil
            }
            return
        }
        openVote(.failure, about: node, raft: raft, spore: spore, into: &out)
    }

    /// An operator (or a benchmark) asks whether `peer` has failed: the leader puts it to a vote.
    public mutating func requestFailureVote(_ peer: UInt64, raft: Raft, state: ControlState) -> [GovernorEffect] {
        var out: [GovernorEffect] = []
        requestFailureVote(peer, raft: raft, state: state, into: &out)
        return out
    }

    mutating func requestFailureVote(_ peer: UInt64, raft: Raft, state: ControlState, into out: inout [GovernorEffect]) {
        if raft.role == .leader {
            failureReported(peer, by: me, raft: raft, state: state, into: &out)
        } else if raft.leader != .none {
            out.append(.send(to: raft.leader, .report(target: peer)))
        }
    }

    /// The leader opens a round about `node`, at most once per few seconds per node.
    mutating func openVote(_ kind: VoteKind, about node: MyceliumIdentity.NodeID, raft: Raft, spore: PrimarySpore, into out: inout [GovernorEffect]) {
        guard raft.role == .leader, spore.openRound(kind, node: node) == nil else { return }
        let key = node.compact &+ UInt64(kind.rawValue)
        if let last = lastVoteOpened[key], ticks < last + 3 * tps {
            out.append(.log(.debug, "vote not opened: one about this member was opened less than 3 s ago",
                            ["node": "\(node)", "kind": "\(kind)"]))
            return
        }
        lastVoteOpened[key] = ticks
        out.append(.submit(.openVote(kind, node: node, commitTicks: settings.votePhaseTicks, revealTicks: settings.votePhaseTicks)))
    }

    /// Leader housekeeping, every second: close rounds that outlived their deadlines everywhere.
    mutating func superviseVotes(raft: Raft, spore: PrimarySpore, into out: inout [GovernorEffect]) {
        guard raft.role == .leader else { return }
        let limit = Int64(2 * UInt64(settings.votePhaseTicks) / tps + 10)
        for r in spore.rounds.values.sorted(by: { $0.sequence < $1.sequence }) where r.isOpen && spore.now - r.openedAt > limit {
            out.append(.submit(.closeVote(sequence: r.sequence)))
        }
    }

    // MARK: the vote, as a voter

    mutating func appliedVoteCommand(_ command: SporeCommand, raft: Raft, spore: PrimarySpore,
                                     using rng: inout some RandomNumberGenerator, into out: inout [GovernorEffect]) {
        switch command {
        case .openVote:
            guard let round = spore.rounds[spore.voteSequence] else { return }
            out.append(.count(.votesOpened))
            out.append(.note("vote \(round.sequence) opened: \(round.kind) of \(round.node), \(round.spec.voters.count) voters, tolerates \(round.spec.assumedFaults) liar(s)"))
            joinRound(round, raft: raft, spore: spore, using: &rng, into: &out)
        case let .decideVote(seq, certificateBytes):
            guard let round = spore.rounds[seq], let result = round.decision else { return }
            let verdict = result == .yes ? "yes" : "no"
            out.append(.count(result == .yes ? .votesDecidedYes : .votesDecidedNo))
            out.append(.note("vote \(seq) decided \(verdict): \(round.kind) of \(round.node)"))
            out.append(.log(.notice, "vote decided", ["round": "\(seq)", "kind": "\(round.kind)", "node": "\(round.node)", "result": verdict]))
            if round.kind == .failure && result == .yes {
                out.append(.count(.failuresRecorded))
                out.append(.note("recorded failure of \(round.node) (confirmed by vote \(seq))"))
                out.append(.log(.warning, "member recorded as failed after a Byzantine-tolerant vote", ["node": "\(round.node)"]))
                failureReports[round.node.compact] = nil
            }
            // A voter that has not decided yet (it missed messages) adopts the committed decision,
            // so every honest voter's round ends decided, not timed out.
            // (A voter still checking before it answers opens its round later: it adopts then.)
            if let cert = try? DecisionCertificate(decoding: certificateBytes) {
                committedDecisions[round.spec.id] = cert
                adopt(cert, raft: raft, spore: spore, into: &out)
            }
        case let .voteEvidence(seq, bytes):
            if let e = try? Evidence(decoding: bytes) {
                out.append(.count(.slashings))
                out.append(.note("slashed \(e.accused) for \(e.offence) in vote \(seq): trust now \(spore.trust.score(of: e.accused))"))
                out.append(.log(.warning, "voter slashed", ["node": "\(e.accused)", "offence": "\(e.offence)", "round": "\(seq)"]))
            }
        case let .closeVote(seq):
            out.append(.count(.votesClosed))
            out.append(.note("vote \(seq) closed without a decision"))
        default:
            break
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
    mutating func joinRound(_ round: SporeRound, raft: Raft, spore: PrimarySpore,
                            using rng: inout some RandomNumberGenerator, into out: inout [GovernorEffect]) {
        voteRounds[round.spec.id] = round.sequence
        out.append(.roundOpened(sequence: round.sequence))
        let restoring = storedVotes.removeValue(forKey: round.sequence)
        guard round.kind == .failure, restoring == nil, round.spec.index(of: node) != nil else {
            enterRound(round, answer: round.kind == .sclerotium ? sclerotiumAnswer(round, spore) : nil, restoring: restoring,
                       raft: raft, spore: spore, using: &rng, into: &out)
            return
        }
        let peer = round.node.compact
        if suspects(peer) { return enterRound(round, answer: true, restoring: nil, raft: raft, spore: spore, using: &rng, into: &out) }
        if let heard = lastHeard[peer], ticks < heard + tps {
            return enterRound(round, answer: false, restoring: nil, raft: raft, spore: spore, using: &rng, into: &out)
        }
        let window = UInt64(max(1, Int(settings.votePhaseTicks) / 2))
        pendingChecks[round.sequence] = PendingCheck(round: round, since: ticks, deadline: ticks + window)
        out.append(.send(to: peer, .probe(.ping(seq: rng.next()))))
    }

    func suspects(_ peer: UInt64) -> Bool {
        switch detector.health[peer] {
        case .suspect?, .candidate?: return true
        default: return false
        }
    }

    /// Answers the failure questions whose direct check is over.
    mutating func finishChecks(raft: Raft, spore: PrimarySpore, lostConnections: Set<UInt64>,
                               using rng: inout some RandomNumberGenerator, into out: inout [GovernorEffect]) {
        for seq in pendingChecks.keys.sorted() {
            guard let c = pendingChecks[seq] else { continue }
            let peer = c.round.node.compact
            let heard = lastHeard[peer].map { $0 >= c.since } ?? false
            guard heard || ticks >= c.deadline else { continue }
            pendingChecks[seq] = nil
            let answer: Bool? = heard ? false : (suspects(peer) || lostConnections.contains(peer)) ? true : nil
            enterRound(c.round, answer: answer, restoring: nil, raft: raft, spore: spore, using: &rng, into: &out)
        }
    }

    func sclerotiumAnswer(_ round: SporeRound, _ spore: PrimarySpore) -> Bool {
        let peer = round.node.compact
        return spore.members[round.node]?.status == .alive && (heardFrom.contains(peer) || detector.health[peer] == .alive)
    }

    /// `answer` is this node's honest judgement (true = yes, nil = it does not know and abstains).
    mutating func enterRound(_ round: SporeRound, answer: Bool?, restoring: OwnVote?, raft: Raft, spore: PrimarySpore,
                             using rng: inout some RandomNumberGenerator, into out: inout [GovernorEffect]) {
        var vote: VoteResult?
        if round.spec.index(of: node) != nil {
            vote = behaviour.say(answer, in: round).map { $0 ? .yes : .no }
        }
        do {
            handleVoteEffects(try votes.open(round.spec, vote: vote, restoring: restoring, using: &rng), raft: raft, spore: spore, into: &out)
        } catch {
            out.append(.log(.debug, "vote round not opened", ["round": "\(round.sequence)", "reason": "\(error)"]))
        }
        earlyVoteSince[round.spec.id] = nil
        for m in earlyVoteMessages.removeValue(forKey: round.spec.id) ?? [] { stepVote(m, raft: raft, spore: spore, into: &out) }
        if let cert = committedDecisions.removeValue(forKey: round.spec.id) { adopt(cert, raft: raft, spore: spore, into: &out) }
    }

    /// Takes the committed decision as this node's own. A round not opened here yet is adopted when it
    /// opens; a certificate contradicting what this node accepted means a third of the weight lied,
    /// which the operator must hear about.
    mutating func adopt(_ cert: DecisionCertificate, raft: Raft, spore: PrimarySpore, into out: inout [GovernorEffect]) {
        do {
            handleVoteEffects(try votes.adopt(cert), raft: raft, spore: spore, into: &out)
        } catch {
            if case .unknownRound = error.code { return }
            out.append(.log(.error, "a committed vote decision contradicts this node's own; the vote's fault assumption was broken",
                            ["round": "\(cert.round)", "error": "\(error)"]))
        }
    }

    public mutating func receiveVote(_ m: VoteMessage, from peer: UInt64, raft: Raft, state: ControlState) -> [GovernorEffect] {
        guard m.sender.compact == peer else {
            return [.log(.debug, "refused a vote message not from its channel's peer", ["peer": "\(peer)"])]
        }
        var out: [GovernorEffect] = []
        if votes.spec(of: m.round) == nil {
            // The round's opening entry has not been applied here yet: keep a few messages for it.
            // Bounded in total: only members can send these, but a faulty one must not fill memory.
            let held = earlyVoteMessages.values.reduce(0) { $0 + $1.count }
            if held < 2048 && (earlyVoteMessages[m.round] != nil || earlyVoteMessages.count < 16) {
                if earlyVoteMessages[m.round] == nil { earlyVoteSince[m.round] = ticks }
                earlyVoteMessages[m.round, default: []].append(m)
            }
            return out
        }
        stepVote(m, raft: raft, spore: state.spore, into: &out)
        return out
    }

    mutating func stepVote(_ m: VoteMessage, raft: Raft, spore: PrimarySpore, into out: inout [GovernorEffect]) {
        do {
            handleVoteEffects(try votes.step(m), raft: raft, spore: spore, into: &out)
        } catch {
            out.append(.log(.debug, "vote message refused", ["from": "\(m.sender)", "reason": "\(error)"]))
        }
    }

    mutating func handleVoteEffects(_ effects: [VoteEffect], raft: Raft, spore: PrimarySpore, into out: inout [GovernorEffect]) {
        for e in effects {
            switch e {
            case .persist(let own):
                guard let seq = voteRounds[own.round] else { continue }
                out.append(.persistVote(own, sequence: seq))
            case .broadcast(let m):
                guard let spec = votes.spec(of: m.round) else { continue }
                for v in spec.voters where v.id != node {
                    var sent = m
                    if case .commit(let c) = m, let other = behaviour.equivocation(of: c, to: v.id, sign: { [voteKey, node] in
                        SignedCommit.sign(round: c.round, voter: node, commitment: $0, key: voteKey)
                    }) { sent = .commit(other) }
                    out.append(.send(to: v.id.compact, .vote(sent)))
                }
                if let seq = voteRounds[m.round] { out.append(.roundMessages(sequence: seq, count: spec.voters.count - 1)) }
            case let .send(to, m):
                out.append(.send(to: to.compact, .vote(m)))
                if let seq = voteRounds[m.round] { out.append(.roundMessages(sequence: seq, count: 1)) }
            case let .decided(rid, outcome):
                guard let seq = voteRounds[rid] else { continue }
                out.append(.roundDecided(sequence: seq))
                switch outcome {
                case let .accepted(_, cert):
                    if spore.rounds[seq]?.isOpen == true { out.append(.submit(.decideVote(sequence: seq, certificate: cert.encoded()))) }
                case .failed(let f):
                    out.append(.note("vote \(seq) failed here: \(f)"))
                    if raft.role == .leader && spore.rounds[seq]?.isOpen == true { out.append(.submit(.closeVote(sequence: seq))) }
                }
            case .evidence(let ev):
                guard let seq = voteRounds[ev.round] else { continue }
                out.append(.note("evidence: \(ev)"))
                out.append(.submit(.voteEvidence(sequence: seq, evidence: ev.encoded())))
            }
        }
    }

    /// Drops messages held for rounds that never opened here (30 s): a round that opens later is
    /// long past its deadlines, and a faulty member's messages for made-up rounds must not stay.
    mutating func pruneEarlyVoteMessages() {
        if committedDecisions.count > 64 { committedDecisions.removeAll() }
        let limit = 30 * tps
        for (rid, since) in earlyVoteSince where ticks > since + limit {
            earlyVoteSince[rid] = nil
            earlyVoteMessages[rid] = nil
        }
    }

    // MARK: failure detection

    /// The members this node probes: those it has heard from, and any member admitted more than
    /// `probeGraceSeconds` ago (spore time).
    func probeTargets(_ spore: PrimarySpore) -> [UInt64] {
        spore.presentMembers.filter { heardFrom.contains($0.id.compact) || spore.now - $0.since > settings.probeGraceSeconds }
            .map { $0.id.compact }.filter { $0 != me }
    }

    mutating func handleDetector(_ e: DetectorEffect<UInt64>, into out: inout [GovernorEffect]) {
        switch e {
        case let .send(to, m):
            out.append(.send(to: to, .probe(m)))
        case .suspect(let p):
            out.append(.note("suspect \(label(p))"))
        case .recovered(let p):
            out.append(.note("recovered \(label(p))"))
            failureReports[p] = nil
        case .confirmFailure(let p):
            out.append(.note("failure candidate \(label(p)); reporting to the leader"))
        }
    }

    // MARK: helpers

    func member(_ id: UInt64, _ spore: PrimarySpore) -> Member? {
        names[id].flatMap { spore.members[$0] }
    }

    func name(_ id: UInt64, _ spore: PrimarySpore) -> String { label(id) }
    func label(_ id: UInt64) -> String { names[id].map { "\($0)" } ?? "\(id)" }

    mutating func learnNames(_ spore: PrimarySpore) {
        for id in spore.members.keys { names[id.compact] = id }
    }

    mutating func noteOnce(_ key: String, _ text: String) -> [GovernorEffect] {
        noted.insert(key).inserted ? [.note(text)] : []
    }

    // MARK: status

    public var pendingChecksCount: Int { pendingChecks.count }

    /// The peers this node's own failure detector suspects now (missed their probes), before any vote:
    /// what a fast path may act on where a wrong guess costs little (DNS leaving out their services'
    /// instances), never what changes ownership.
    public var locallySuspected: Set<UInt64> { Set(detector.health.keys.filter { suspects($0) }) }
    public func health(of peer: UInt64) -> PeerHealth? { detector.health[peer] }
}
