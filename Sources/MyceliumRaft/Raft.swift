// Raft as a pure value type (Ongaro & Ousterhout 2014; Ongaro's thesis 2014), in the style of etcd-io/raft.
//
// The shell feeds it ticks (`tick()`), messages (`step(_:)`) and requests (`propose`, `readIndex`, ...). It never
// touches a clock, a socket, a file or the global random generator. Its outputs are collected in a `Ready`,
// which the shell carries out in this order (the contract, as in etcd's doc.go):
//
//  1. persist `ready.snapshot`, `ready.entries` and `ready.hardState`, and fsync;
//  2. only then send `ready.messages` (a vote or an acknowledgement must never precede its durable record);
//  3. apply `ready.snapshot` to the state machine, then `ready.committedEntries` in order;
//  4. call `advance(ready)`.
//
// Stepping and ticking between `ready()` and `advance(_:)` is allowed; a second `ready()` is not.

import MyceliumCore

/// Everything the shell must do after the node changed. See the contract at the top of Raft.swift.
public struct Ready: Sendable {
    /// The hard state to persist, if it changed.
    public var hardState: HardState?
    /// Entries to append to stable storage. An entry whose index is already stored replaces it and everything
    /// after it (the leader overwrote a conflicting suffix, Raft §5.3).
    public var entries: [Entry] = []
    /// A snapshot received from the leader: persist it, then restore the state machine from it.
    public var snapshot: Snapshot?
    /// Messages to send after persisting.
    public var messages: [Message] = []
    /// Committed entries to apply, in order. `.confChange` entries were already applied by Raft itself; the
    /// state machine should skip them (the new configuration is `Raft.confState`).
    public var committedEntries: [Entry] = []
    /// Reads that may be served once the state machine has applied their index (thesis §6.4).
    public var readStates: [ReadState] = []
    /// Whether the write must be fsynced before messages are sent (a term, vote, entry or snapshot changed).
    public var mustSync = false

    public init() {}

    public var isEmpty: Bool {
        hardState == nil && entries.isEmpty && snapshot == nil && messages.isEmpty && committedEntries.isEmpty
            && readStates.isEmpty
    }
}

/// What a node finds on its disk when it starts.
public struct RaftStorageState: Sendable, Equatable {
    public var hardState: HardState
    /// The latest snapshot, if any; the shell restores its state machine from it before applying entries.
    public var snapshot: Snapshot?
    /// The stored entries after the snapshot, contiguous.
    public var entries: [Entry]

    public init(hardState: HardState = HardState(), snapshot: Snapshot? = nil, entries: [Entry] = []) {
        self.hardState = hardState
        self.snapshot = snapshot
        self.entries = entries
    }

    /// The storage every founding member starts from: one committed entry at index 1, term 1 that adds the
    /// initial voters. Nodes that join later start from `RaftStorageState()` and learn this entry from the
    /// leader, so every member agrees on the configuration history.
    public static func bootstrap(voters: [NodeID]) -> RaftStorageState {
        let cc = ConfChange(voters.sorted().map { .addVoter($0) })
        let e = Entry(term: 1, index: 1, kind: .confChange, data: RaftCodec.encode(cc))
        return RaftStorageState(hardState: HardState(term: 1, vote: .none, commit: 1), entries: [e])
    }

    /// Applies what a `Ready` asked to persist, as a durable store would (used by simulators and tests).
    public mutating func persist(_ rd: Ready) {
        if let s = rd.snapshot {
            if let i = entries.firstIndex(where: { $0.index == s.metadata.index }), entries[i].term == s.metadata.term {
                entries.removeSubrange(...i)
            } else {
                entries.removeAll()
            }
            snapshot = s
            hardState.commit = max(hardState.commit, s.metadata.index)
        }
        if let first = rd.entries.first {
            if let i = entries.firstIndex(where: { $0.index >= first.index }) { entries.removeSubrange(i...) }
            entries.append(contentsOf: rd.entries)
        }
        if let hs = rd.hardState { hardState = hs }
    }

    /// Records a snapshot the shell took at `snapshot.metadata.index` and drops the entries it covers.
    public mutating func compact(with snapshot: Snapshot) {
        self.snapshot = snapshot
        entries.removeAll { $0.index <= snapshot.metadata.index }
    }
}

/// One Raft node. A value: copy it, store it, run thousands of them in one process.
public struct Raft: Sendable {
    public let id: NodeID
    public let config: RaftConfig

    public private(set) var term: UInt64 = 0
    public private(set) var vote: NodeID = .none
    /// The leader of the current term, if known.
    public private(set) var leader: NodeID = .none
    public private(set) var role: Role = .follower
    /// The configuration in force: the latest one in the log, committed or not (thesis §4.1). A configuration
    /// entry takes effect on each node as soon as it is appended, and is rolled back if the entry is overwritten.
    public private(set) var confState = ConfState()

    var log = RaftLog()
    /// Log entries up to here have been scanned for configuration changes (always the last index).
    var confScannedIndex: UInt64 = 0
    /// Configurations that took effect after the snapshot, by entry index: for compaction (the configuration in
    /// force at the snapshot's index) and for rolling back when a configuration entry is overwritten.
    var confHistory: [(index: UInt64, conf: ConfState)] = []
    var snapshotConf = ConfState()
    var progress: [NodeID: Progress] = [:]

    var electionElapsed = 0
    var heartbeatElapsed = 0
    var randomizedElectionTimeout = 0
    var random: SeededRandom
    var votes: [NodeID: Bool] = [:]
    var outbox: [Message] = []

    var leadTransferee: NodeID = .none
    /// Index of the latest membership change appended by this leader; one uncommitted change at a time.
    var pendingConfIndex: UInt64 = 0

    var readRound: UInt64 = 0
    var pendingReads: [(context: UInt64, index: UInt64, round: UInt64)] = []
    var readsAwaitingCommit: [UInt64] = []
    var readStates: [ReadState] = []
    var readHeartbeatPending = false

    /// The latest snapshot (taken locally or received), sent to followers whose next entry was compacted.
    public private(set) var latestSnapshot: Snapshot?
    var unstableSnapshot: Snapshot?
    var incomingSnapshot: (metadata: SnapshotMetadata, data: [UInt8])?

    var proposalsPending = false
    var persistedHardState = HardState()
    var readyOutstanding = false

    /// Starts a node from what it finds on disk.
    ///
    /// - Parameter random: only used to seed the node's own generator for election timeouts; pass a seeded
    ///   generator for reproducible runs.
    public init(config: RaftConfig, storage: RaftStorageState, random: inout some RandomNumberGenerator) throws(RaftError) {
        try config.validate()
        self.id = config.id
        self.config = config
        self.random = SeededRandom(seed: random.next())
        let hs = storage.hardState
        var snapIndex: UInt64 = 0, snapTerm: UInt64 = 0
        if let s = storage.snapshot {
            snapIndex = s.metadata.index
            snapTerm = s.metadata.term
            snapshotConf = s.metadata.confState
            latestSnapshot = s
        }
        let entries = storage.entries.filter { $0.index > snapIndex }
        for (i, e) in entries.enumerated() where e.index != snapIndex + 1 + UInt64(i) {
            throw RaftError(.inconsistentStorage("entry \(i) after snapshot \(snapIndex) has index \(e.index), expected \(snapIndex + 1 + UInt64(i))"), node: id)
        }
        let commit = max(hs.commit, snapIndex)
        let last = snapIndex + UInt64(entries.count)
        if commit > last {
            throw RaftError(.inconsistentStorage("commit index \(commit) is beyond the last stored entry \(last)"), node: id)
        }
        log = RaftLog(snapshotIndex: snapIndex, snapshotTerm: snapTerm, entries: entries, committed: commit)
        term = hs.term
        vote = hs.vote
        persistedHardState = HardState(term: hs.term, vote: hs.vote, commit: commit)
        confState = snapshotConf
        confScannedIndex = snapIndex
        scanConfiguration()
        becomeFollower(term: term, leader: .none)
    }

    // MARK: - Read-only state

    public var commitIndex: UInt64 { log.committed }
    public var appliedIndex: UInt64 { log.applied }
    public var firstIndex: UInt64 { log.firstIndex }
    public var lastIndex: UInt64 { log.lastIndex }
    public var lastTerm: UInt64 { log.lastTerm }
    /// Highest index confirmed durable through `advance`.
    public var stableIndex: UInt64 { log.stableIndex }
    public var hardState: HardState { HardState(term: term, vote: vote, commit: log.committed) }
    /// The entry at `index`, or nil if compacted or absent.
    public func entry(at index: UInt64) -> Entry? { log.entry(at: index) }
    /// The term of the entry at `index` (also known for the snapshot's last index).
    public func term(at index: UInt64) -> UInt64? { log.term(at: index) }
    /// The follower this leader is transferring leadership to, if any.
    public var transferee: NodeID { leadTransferee }

    /// The highest log index the leader knows `node` has (nil when not leader or not a member). The agent uses it
    /// to promote a learner only once it has caught up (thesis §4.2.1).
    public func matchIndex(of node: NodeID) -> UInt64? { role == .leader ? progress[node]?.match : nil }

    /// The leader's view of a follower, for tests and status pages.
    public func progressDescription(of node: NodeID) -> String? {
        guard let p = progress[node] else { return nil }
        return "match=\(p.match) next=\(p.next) state=\(p.state.rawValue)"
    }

    /// Ticks since this node last heard from a leader (0 on the leader). A learner never campaigns, so
    /// on one cut off from the leader this only grows; `leader` then names a leader that may be gone.
    public var ticksSinceLeader: Int { role == .leader ? 0 : electionElapsed }

    // MARK: - Inputs

    /// Advances logical time by one tick (election timeouts, heartbeats, check-quorum).
    public mutating func tick() {
        defer { assertInvariants() }
        switch role {
        case .leader: tickLeader()
        case .follower, .preCandidate, .candidate:
            electionElapsed += 1
            if promotable && electionElapsed >= randomizedElectionTimeout {
                electionElapsed = 0
                campaign(config.preVote ? .preElection : .election)
            }
        }
    }

    /// Campaigns at once (etcd's MsgHup) if this node may. For a node that is its group's only voter
    /// (the genesis node of a new network) this makes it leader without waiting an election timeout.
    public mutating func campaignNow() {
        defer { assertInvariants() }
        guard role != .leader, promotable else { return }
        electionElapsed = 0
        campaign(config.preVote ? .preElection : .election)
    }

    /// The transport saw the leader go away (its connections closed and could not be re-opened). A
    /// follower then stops honouring the leader's lease and campaigns within one to three ticks instead
    /// of a whole election timeout. This is only a liveness hint: the pre-vote still needs a quorum of
    /// nodes that no longer hear the leader either, so a follower merely cut off from a healthy leader
    /// cannot disrupt it, and safety never depends on timing.
    public mutating func leaderUnreachable(_ node: NodeID) {
        defer { assertInvariants() }
        guard role == .follower, node != .none, leader == node else { return }
        leader = .none
        // Staggered by rank among the remaining voters (1 tick for the first, 2 for the next, ...), so
        // followers that all noticed at once do not split the vote; if the first one's log is behind,
        // its pre-vote fails and the next one campaigns a tick later.
        let rank = confState.voters.filter { $0 != node }.sorted().firstIndex(of: id) ?? 0
        electionElapsed = max(electionElapsed, randomizedElectionTimeout - 1 - rank)
    }

    /// Proposes application data. Returns the index the entry was appended at; it is committed when it appears
    /// in `Ready.committedEntries` (if a new leader overwrites it, an entry with another term appears there).
    @discardableResult
    public mutating func propose(_ data: [UInt8]) throws(RaftError) -> UInt64 {
        try checkCanPropose()
        appendAsLeader(Entry(term: term, index: log.lastIndex + 1, data: data))
        return log.lastIndex
    }

    /// Proposes a membership change (thesis §4.1, §4.3). Only one may be uncommitted at a time.
    @discardableResult
    public mutating func proposeConfChange(_ cc: ConfChange) throws(RaftError) -> UInt64 {
        try checkCanPropose()
        if pendingConfIndex > log.committed {
            throw RaftError(.confChangeInProgress(index: pendingConfIndex), node: id)
        }
        if case let .failure(f) = ConfChanger.apply(cc, to: confState) { throw RaftError(.invalidConfChange(f.reason), node: id) }
        appendAsLeader(Entry(term: term, index: log.lastIndex + 1, kind: .confChange, data: RaftCodec.encode(cc)))
        pendingConfIndex = log.lastIndex
        scanConfiguration()
        return log.lastIndex
    }

    /// Requests a linearizable read (ReadIndex, thesis §6.4). A `ReadState` with the same context appears in a
    /// later `Ready` once a quorum confirmed this node is still leader; serve the read after applying its index.
    /// Reads are dropped if leadership is lost meanwhile; retry them on the new leader.
    public mutating func readIndex(context: UInt64) throws(RaftError) {
        guard role == .leader else { throw RaftError(.notLeader(leader: leader), node: id) }
        // A new leader does not know the commit index until it commits an entry of its own term (§6.4 step 1).
        if log.term(at: log.committed) != term {
            readsAwaitingCommit.append(context)
            return
        }
        startRead(context)
    }

    /// Hands leadership to `target` (thesis §3.10): bring it up to date, then tell it to campaign at once.
    public mutating func transferLeadership(to target: NodeID) throws(RaftError) {
        guard role == .leader else { throw RaftError(.notLeader(leader: leader), node: id) }
        guard confState.isVoter(target) else { throw RaftError(.notAVoter(target), node: id) }
        if target == id || leadTransferee == target { return }
        leadTransferee = target
        // The transfer must finish within one election timeout or it is abandoned.
        electionElapsed = 0
        if progress[target]?.match == log.lastIndex {
            send(to: target, .timeoutNow)
        } else {
            sendAppend(to: target)
        }
    }

    /// Tells Raft the shell saved a snapshot of the state machine at `index` (which it has applied), so the log
    /// up to there can be discarded (Raft §7). The snapshot is kept to catch up followers.
    public mutating func compact(upTo index: UInt64, snapshotData: [UInt8]) throws(RaftError) {
        guard index > log.snapshotIndex, index <= log.applied else {
            throw RaftError(.compactionOutOfRange(requested: index, firstIndex: log.firstIndex, applied: log.applied), node: id)
        }
        let conf = confState(at: index)
        let meta = SnapshotMetadata(index: index, term: log.term(at: index)!, confState: conf)
        log.compact(to: index)
        latestSnapshot = Snapshot(metadata: meta, data: snapshotData)
        snapshotConf = conf
        confHistory.removeAll { $0.index <= index }
    }

    /// The configuration in force right after the entry at `index`.
    public func confState(at index: UInt64) -> ConfState {
        confHistory.last(where: { $0.index <= index })?.conf ?? snapshotConf
    }

    // MARK: - Ready / Advance

    /// Whether `ready()` has anything to do.
    public var hasReady: Bool {
        !outbox.isEmpty || hardState != persistedHardState || unstableSnapshot != nil
            || log.unstableFrom <= log.lastIndex || log.committed > log.applying || !readStates.isEmpty
            || (proposalsPending && role == .leader) || (readHeartbeatPending && role == .leader)
    }

    /// Collects the work for the shell. Call `advance(_:)` with the result when done.
    public mutating func ready() -> Ready {
        assert(!readyOutstanding, "raft \(id): ready() called again before advance()")
        flushBatchedSends()
        var rd = Ready()
        let hs = hardState
        if hs != persistedHardState { rd.hardState = hs }
        rd.snapshot = unstableSnapshot
        if log.unstableFrom <= log.lastIndex { rd.entries = Array(log.entries(in: log.unstableFrom...log.lastIndex)) }
        rd.messages = outbox
        outbox.removeAll(keepingCapacity: true)
        if log.committed > log.applying {
            rd.committedEntries = Array(log.entries(in: (log.applying + 1)...log.committed))
            log.applying = log.committed
        }
        rd.readStates = readStates
        readStates.removeAll()
        rd.mustSync = rd.snapshot != nil || !rd.entries.isEmpty
            || (rd.hardState.map { $0.term != persistedHardState.term || $0.vote != persistedHardState.vote } ?? false)
        readyOutstanding = true
        return rd
    }

    /// Confirms the shell persisted, sent and applied everything in `rd`.
    public mutating func advance(_ rd: Ready) {
        defer { assertInvariants() }
        readyOutstanding = false
        if let hs = rd.hardState { persistedHardState = hs }
        if let s = rd.snapshot {
            if unstableSnapshot?.metadata == s.metadata { unstableSnapshot = nil }
            log.applied = max(log.applied, s.metadata.index)
        }
        if let last = rd.entries.last { log.stable(to: last.index, term: last.term) }
        if let last = rd.committedEntries.last { log.applied = max(log.applied, last.index) }
        // The leader counts itself towards a quorum only for entries on its own disk.
        if role == .leader, var me = progress[id] {
            if log.stableIndex > me.match {
                me.match = log.stableIndex
                me.next = max(me.next, me.match + 1)
                progress[id] = me
                if maybeCommit() { broadcastAppend() }
            }
        }
    }

    // MARK: - Messages

    /// Feeds a message received from another node. Malformed, stale and duplicated messages are ignored.
    public mutating func step(_ m: Message) {
        defer { assertInvariants() }
        guard m.to == id, m.from != id, m.from != .none else { return }
        if m.term > term {
            switch m.kind {
            case .preVote, .vote(_, _, false):
                // Check-quorum lease (thesis §6.2, §9.6): while we hear from a leader, ignore campaigns, so a node
                // that was cut off cannot depose a healthy leader. Transfers (§3.10) override the lease.
                if config.checkQuorum && leader != .none && electionElapsed < config.electionTicks { return }
            default: break
            }
            switch m.kind {
            case .preVote: break // A pre-vote never changes our term.
            case .preVoteResponse(granted: true): break // Granted for the term we would campaign in.
            case .append, .heartbeat, .snapshotChunk: becomeFollower(term: m.term, leader: m.from)
            default: becomeFollower(term: m.term, leader: .none)
            }
        } else if m.term < term {
            switch m.kind {
            case .append, .heartbeat:
                // A stale leader (e.g. back from a partition) must learn our term, or with check-quorum and
                // pre-vote it could keep followers from ever campaigning.
                if config.checkQuorum || config.preVote {
                    send(to: m.from, .appendResponse(success: false, index: 0, hintIndex: 0, hintTerm: 0))
                }
            case .preVote:
                send(to: m.from, .preVoteResponse(granted: false))
            default: break
            }
            return
        }

        switch m.kind {
        case let .preVote(lastIndex, lastTerm):
            handleVoteRequest(m, lastIndex: lastIndex, lastTerm: lastTerm, pre: true)
            return
        case let .vote(lastIndex, lastTerm, _):
            handleVoteRequest(m, lastIndex: lastIndex, lastTerm: lastTerm, pre: false)
            return
        default: break
        }

        switch role {
        case .leader: stepLeader(m)
        case .preCandidate, .candidate: stepCandidate(m)
        case .follower: stepFollower(m)
        }
    }

    private mutating func handleVoteRequest(_ m: Message, lastIndex: UInt64, lastTerm: UInt64, pre: Bool) {
        // Raft §5.2: one vote per term. A pre-vote may be granted for a future term even if we voted in ours.
        let canVote = vote == m.from || (vote == .none && leader == .none) || (pre && m.term > term)
        // Raft §5.4.1: only for a candidate whose log is at least as up to date as ours.
        let upToDate = config.mutation == .voteIgnoringLogRecency
            || log.isUpToDate(lastIndex: lastIndex, lastTerm: lastTerm)
        if canVote && upToDate {
            send(to: m.from, term: m.term, pre ? .preVoteResponse(granted: true) : .voteResponse(granted: true))
            if !pre {
                electionElapsed = 0
                vote = m.from
            }
        } else {
            send(to: m.from, pre ? .preVoteResponse(granted: false) : .voteResponse(granted: false))
        }
    }

    private mutating func stepFollower(_ m: Message) {
        switch m.kind {
        case let .append(prevIndex, prevTerm, entries, commit):
            electionElapsed = 0
            leader = m.from
            handleAppend(from: m.from, prevIndex: prevIndex, prevTerm: prevTerm, entries: entries, commit: commit)
        case let .heartbeat(commit, round):
            electionElapsed = 0
            leader = m.from
            handleHeartbeat(from: m.from, commit: commit, round: round)
        case let .snapshotChunk(meta, offset, total, chunk):
            electionElapsed = 0
            leader = m.from
            handleSnapshotChunk(from: m.from, meta, offset: offset, total: total, chunk: chunk)
        case .timeoutNow:
            // Leader transfer (§3.10): campaign at once, without pre-vote, even inside a lease.
            if promotable { campaign(.transfer) }
        default: break
        }
    }

    private mutating func stepCandidate(_ m: Message) {
        switch m.kind {
        case .append, .heartbeat, .snapshotChunk:
            // Someone won this term (§5.2); follow it.
            becomeFollower(term: m.term, leader: m.from)
            stepFollower(m)
        case let .preVoteResponse(granted) where role == .preCandidate:
            votes[m.from] = granted
            switch Quorum.jointVoteResult(confState, votes: votes) {
            case .won: campaign(.election)
            case .lost: becomeFollower(term: term, leader: .none)
            case .pending: break
            }
        case let .voteResponse(granted) where role == .candidate:
            votes[m.from] = granted
            switch Quorum.jointVoteResult(confState, votes: votes) {
            case .won: becomeLeader()
            case .lost: becomeFollower(term: term, leader: .none)
            case .pending: break
            }
        default: break
        }
    }

    private mutating func stepLeader(_ m: Message) {
        guard progress[m.from] != nil else { return }
        progress[m.from]!.recentActive = true
        switch m.kind {
        case let .appendResponse(success, index, hintIndex, hintTerm):
            handleAppendResponse(from: m.from, success: success, index: index, hintIndex: hintIndex, hintTerm: hintTerm)
        case let .heartbeatResponse(round):
            handleHeartbeatResponse(from: m.from, round: round)
        case let .snapshotResponse(index, term, received):
            guard var pr = progress[m.from], pr.state == .snapshot, let pending = pr.pendingSnapshot,
                  pending.index == index, pending.term == term else { return }
            pr.snapshotAcked = received
            progress[m.from] = pr
            sendSnapshotChunk(to: m.from)
        default: break
        }
    }

    // MARK: - Follower side

    private mutating func handleAppend(from: NodeID, prevIndex: UInt64, prevTerm: UInt64, entries: [Entry], commit: UInt64) {
        if prevIndex < log.committed {
            // Everything up to our commit index already matches the leader (Leader Completeness, §5.4).
            send(to: from, .appendResponse(success: true, index: log.committed, hintIndex: 0, hintTerm: 0))
            return
        }
        if log.matchTerm(prevIndex, prevTerm) {
            guard let truncatedFrom = log.appendFollowing(prevIndex: prevIndex, entries) else {
                assertionFailure("raft \(id): leader \(from) tried to overwrite committed entries (commit \(log.committed))")
                return
            }
            if let k = truncatedFrom { rollBackConfiguration(from: k) }
            scanConfiguration()
            let lastNew = prevIndex + UInt64(entries.count)
            // §5.3: commit up to min(leaderCommit, index of last new entry).
            commitTo(min(commit, lastNew))
            send(to: from, .appendResponse(success: true, index: lastNew, hintIndex: 0, hintTerm: 0))
        } else {
            // Tell the leader where our log could match so it can skip a whole term at a time.
            let hint = log.indexOfLastEntry(atOrBelow: min(prevIndex, log.lastIndex), withTermAtMost: prevTerm)
            send(to: from, .appendResponse(success: false, index: prevIndex, hintIndex: hint, hintTerm: log.term(at: hint) ?? 0))
        }
    }

    private mutating func handleHeartbeat(from: NodeID, commit: UInt64, round: UInt64) {
        // The leader never sends a commit index beyond what it knows we hold.
        commitTo(min(commit, log.lastIndex))
        send(to: from, .heartbeatResponse(readRound: round))
    }

    private mutating func handleSnapshotChunk(from: NodeID, _ meta: SnapshotMetadata, offset: UInt64, total: UInt64, chunk: [UInt8]) {
        if offset == 0 {
            incomingSnapshot = (meta, [])
        }
        guard var incoming = incomingSnapshot, incoming.metadata == meta, UInt64(incoming.data.count) == offset else {
            // Out of order, duplicated or from another snapshot: tell the leader where we really are.
            let have = incomingSnapshot?.metadata == meta ? UInt64(incomingSnapshot!.data.count) : 0
            send(to: from, .snapshotResponse(index: meta.index, term: meta.term, receivedBytes: have))
            return
        }
        incomingSnapshot = nil
        incoming.data.append(contentsOf: chunk)
        if UInt64(incoming.data.count) < total {
            incomingSnapshot = incoming
            send(to: from, .snapshotResponse(index: meta.index, term: meta.term, receivedBytes: UInt64(incoming.data.count)))
            return
        }
        installSnapshot(Snapshot(metadata: meta, data: incoming.data), from: from)
    }

    private mutating func installSnapshot(_ s: Snapshot, from: NodeID) {
        let meta = s.metadata
        if meta.index <= log.committed {
            send(to: from, .appendResponse(success: true, index: log.committed, hintIndex: 0, hintTerm: 0))
            return
        }
        if log.matchTerm(meta.index, meta.term) {
            // The snapshot is a prefix of our log: keep the log, just learn the commit index (Raft §7).
            commitTo(meta.index)
            send(to: from, .appendResponse(success: true, index: meta.index, hintIndex: 0, hintTerm: 0))
            return
        }
        log.restore(meta)
        unstableSnapshot = s
        latestSnapshot = s
        confState = meta.confState
        snapshotConf = meta.confState
        confHistory = []
        confScannedIndex = meta.index
        rebuildProgress()
        send(to: from, .appendResponse(success: true, index: meta.index, hintIndex: 0, hintTerm: 0))
    }

    // MARK: - Leader side

    private mutating func handleAppendResponse(from: NodeID, success: Bool, index: UInt64, hintIndex: UInt64, hintTerm: UInt64) {
        guard var pr = progress[from] else { return }
        if !success {
            // Skip back past the follower's conflicting term in one step (§5.3).
            let hint = hintTerm > 0 ? log.indexOfLastEntry(atOrBelow: hintIndex, withTermAtMost: hintTerm) : hintIndex
            if pr.maybeDecrease(rejected: index, hint: hint) {
                if pr.state == .replicate { pr.becomeProbe() }
                progress[from] = pr
                sendAppend(to: from)
            }
            return
        }
        let wasPaused = pr.isPaused
        guard pr.maybeUpdate(index) else {
            progress[from] = pr
            return
        }
        switch pr.state {
        case .probe: pr.becomeReplicate()
        case .snapshot:
            if let s = pr.pendingSnapshot, pr.match >= s.index {
                pr.becomeProbe()
                pr.becomeReplicate()
            }
        case .replicate: pr.inflights.free(upTo: index)
        }
        progress[from] = pr
        if maybeCommit() {
            broadcastAppend()
        } else if wasPaused {
            sendAppend(to: from)
        }
        guard role == .leader else { return }
        // Keep the pipeline full (batching + pipelining, bounded by the inflight window).
        while sendAppend(to: from, sendIfEmpty: false) {}
        if from == leadTransferee, progress[from]?.match == log.lastIndex {
            send(to: from, .timeoutNow)
        }
    }

    private mutating func handleHeartbeatResponse(from: NodeID, round: UInt64) {
        guard var pr = progress[from] else { return }
        pr.probeSent = false
        // A lost append can leave the window full forever; a heartbeat answer proves the link works again.
        if pr.state == .replicate && pr.inflights.isFull { pr.inflights.freeFirst() }
        if round > pr.readAck { pr.readAck = round }
        progress[from] = pr
        if pr.state == .snapshot {
            sendSnapshotChunk(to: from) // retransmit the chunk that may have been lost
        } else if pr.match < log.lastIndex {
            sendAppend(to: from)
        }
        confirmReads()
    }

    /// Commits the highest index replicated on a quorum, if it belongs to the current term (§5.4.2: entries of
    /// earlier terms are committed only indirectly, which is what prevents the Figure 8 anomaly).
    private mutating func maybeCommit() -> Bool {
        var advanced = false
        while role == .leader {
            let candidate = Quorum.jointCommittedIndex(confState) { progress[$0]?.match ?? 0 }
            guard candidate != .max, candidate > log.committed else { break }
            if config.mutation != .commitPriorTermByCounting && log.term(at: candidate) != term { break }
            commitTo(candidate)
            advanced = true
        }
        if advanced && role == .leader {
            if log.term(at: log.committed) == term && !readsAwaitingCommit.isEmpty {
                let waiting = readsAwaitingCommit
                readsAwaitingCommit = []
                for c in waiting { startRead(c) }
            }
            maybeAutoLeaveJoint()
        }
        return advanced
    }

    private mutating func maybeAutoLeaveJoint() {
        guard role == .leader, confState.isJoint, confState.autoLeave, pendingConfIndex <= log.committed,
              leadTransferee == .none else { return }
        appendAsLeader(Entry(term: term, index: log.lastIndex + 1, kind: .confChange, data: RaftCodec.encode(ConfChange.leaveJoint)))
        pendingConfIndex = log.lastIndex
        scanConfiguration()
    }

    /// Sends entries (or a snapshot) to `to`. Returns whether a message was sent.
    @discardableResult
    private mutating func sendAppend(to: NodeID, sendIfEmpty: Bool = true) -> Bool {
        guard role == .leader, to != id, var pr = progress[to], !pr.isPaused else { return false }
        let prevIndex = pr.next - 1
        guard let prevTerm = log.term(at: prevIndex) else {
            // The entries the follower needs were compacted: send the snapshot instead (Raft §7).
            guard let s = latestSnapshot else {
                assertionFailure("raft \(id): log compacted without a snapshot")
                return false
            }
            pr.becomeSnapshot(s.metadata)
            progress[to] = pr
            sendSnapshotChunk(to: to)
            return true
        }
        let entries = log.entries(from: pr.next, maxBytes: config.maxBytesPerMessage)
        if entries.isEmpty && !sendIfEmpty { return false }
        send(to: to, .append(prevIndex: prevIndex, prevTerm: prevTerm, entries: Array(entries), commit: log.committed))
        if let last = entries.last {
            switch pr.state {
            case .replicate:
                pr.next = last.index + 1
                pr.inflights.add(lastIndex: last.index, bytes: entries.reduce(0) { $0 + $1.byteSize })
            case .probe: pr.probeSent = true
            case .snapshot: break
            }
        } else if pr.state == .probe {
            pr.probeSent = true
        }
        progress[to] = pr
        return true
    }

    private mutating func sendSnapshotChunk(to: NodeID) {
        guard var pr = progress[to], pr.state == .snapshot, let s = latestSnapshot else { return }
        if pr.pendingSnapshot != s.metadata {
            // A newer snapshot replaced the one being sent; start over with it.
            pr.becomeSnapshot(s.metadata)
        }
        let total = UInt64(s.data.count)
        let offset = min(pr.snapshotAcked, total)
        if offset == total && total > 0 { progress[to] = pr; return } // all sent; waiting for the install to be acknowledged
        let end = min(Int(offset) + config.snapshotChunkBytes, s.data.count)
        progress[to] = pr
        send(to: to, .snapshotChunk(metadata: s.metadata, offset: offset, totalSize: total, chunk: Array(s.data[Int(offset)..<end])))
    }

    private mutating func broadcastAppend(sendIfEmpty: Bool = true) {
        for m in confState.allMembers where m != id { sendAppend(to: m, sendIfEmpty: sendIfEmpty) }
    }

    private mutating func broadcastHeartbeat() {
        for m in confState.allMembers where m != id {
            let commit = min(progress[m]?.match ?? 0, log.committed)
            send(to: m, .heartbeat(commit: commit, readRound: readRound))
        }
    }

    /// Sends appends for proposals and heartbeats for reads made since the last `ready()`, so many requests
    /// share one message per follower (batching).
    private mutating func flushBatchedSends() {
        if role == .leader {
            if proposalsPending {
                // Pipelining: fill each follower's inflight window, not just one message.
                for m in confState.allMembers where m != id {
                    while sendAppend(to: m, sendIfEmpty: false) {}
                }
            }
            if readHeartbeatPending { broadcastHeartbeat() }
        }
        proposalsPending = false
        readHeartbeatPending = false
    }

    private mutating func startRead(_ context: UInt64) {
        if confState.allVoters == [id] || config.leaseReads {
            // Alone, or trusting the check-quorum lease (see `RaftConfig.leaseReads` for the clock assumption).
            readStates.append(ReadState(context: context, index: log.committed))
            return
        }
        readRound += 1
        pendingReads.append((context, log.committed, readRound))
        progress[id]?.readAck = readRound
        readHeartbeatPending = true
    }

    private mutating func confirmReads() {
        while let first = pendingReads.first,
              Quorum.isActiveQuorum(confState, active: { (progress[$0]?.readAck ?? 0) >= first.round }) {
            readStates.append(ReadState(context: first.context, index: first.index))
            pendingReads.removeFirst()
        }
    }

    private mutating func tickLeader() {
        heartbeatElapsed += 1
        electionElapsed += 1
        if electionElapsed >= config.electionTicks {
            electionElapsed = 0
            if config.checkQuorum {
                // Thesis §6.2: a leader that cannot reach a quorum steps down instead of serving stale reads.
                progress[id]?.recentActive = true
                if !Quorum.isActiveQuorum(confState, active: { progress[$0]?.recentActive ?? false }) {
                    becomeFollower(term: term, leader: .none)
                    return
                }
                for m in confState.allMembers where m != id { progress[m]?.recentActive = false }
            }
            if leadTransferee != .none { leadTransferee = .none } // the transfer timed out
        }
        if heartbeatElapsed >= config.heartbeatTicks {
            heartbeatElapsed = 0
            broadcastHeartbeat()
        }
    }

    private mutating func checkCanPropose() throws(RaftError) {
        guard role == .leader else { throw RaftError(.notLeader(leader: leader), node: id) }
        if leadTransferee != .none { throw RaftError(.transferInProgress(to: leadTransferee), node: id) }
    }

    private mutating func appendAsLeader(_ e: Entry) {
        log.appendAsLeader(CollectionOfOne(e))
        proposalsPending = true
        scanConfiguration()
    }

    // MARK: - Roles

    /// Whether this node may campaign: it votes in its latest configuration, or that configuration removes it
    /// but is not committed yet. In the second case it leads (if elected) a configuration without itself, which
    /// the thesis allows (§4.2.2); without this, a leader that crashed right after appending its own removal
    /// could leave the remaining voters, who still count it, unable to elect anyone (its longer log wins no votes
    /// for them, and it would never campaign).
    private var promotable: Bool {
        if confState.isVoter(id) { return true }
        guard let latest = confHistory.last, latest.index > log.committed else { return false }
        let previous = confHistory.count >= 2 ? confHistory[confHistory.count - 2].conf : snapshotConf
        return previous.isVoter(id)
    }

    private enum CampaignKind { case preElection, election, transfer }

    private mutating func campaign(_ kind: CampaignKind) {
        guard promotable else { return }
        let voteTerm: UInt64
        if kind == .preElection {
            role = .preCandidate
            leader = .none
            votes = [:]
            voteTerm = term + 1
        } else {
            reset(term: term + 1)
            role = .candidate
            vote = id
            voteTerm = term
        }
        votes[id] = true
        if Quorum.jointVoteResult(confState, votes: votes) == .won {
            // A single voter wins alone.
            if kind == .preElection { campaign(.election) } else { becomeLeader() }
            return
        }
        for v in confState.allVoters where v != id {
            switch kind {
            case .preElection:
                send(to: v, term: voteTerm, .preVote(lastIndex: log.lastIndex, lastTerm: log.lastTerm))
            case .election, .transfer:
                send(to: v, term: voteTerm, .vote(lastIndex: log.lastIndex, lastTerm: log.lastTerm, transfer: kind == .transfer))
            }
        }
    }

    private mutating func becomeFollower(term newTerm: UInt64, leader newLeader: NodeID) {
        reset(term: newTerm)
        role = .follower
        leader = newLeader
    }

    private mutating func becomeLeader() {
        precondition(role == .candidate, "raft \(id): becoming leader from \(role)")
        role = .leader
        leader = id
        progress = [:]
        rebuildProgress()
        if var me = progress[id] {
            me.match = log.stableIndex
            me.becomeReplicate()
            me.recentActive = true
            progress[id] = me
        }
        // §8: a no-op entry of the new term lets earlier entries commit (and ReadIndex learn the commit index).
        appendAsLeader(Entry(term: term, index: log.lastIndex + 1))
        // No membership change before that no-op commits: uncommitted entries may hold one, and a change from a
        // leader that has not committed in its term can conflict with one it does not know about (the
        // single-server bug reported on raft-dev in 2015).
        pendingConfIndex = log.lastIndex
        broadcastAppend()
        proposalsPending = false
    }

    private mutating func reset(term newTerm: UInt64) {
        if newTerm != term {
            term = newTerm
            vote = .none
        }
        leader = .none
        electionElapsed = 0
        heartbeatElapsed = 0
        randomizedElectionTimeout = config.electionTicks + Int.random(in: 0..<config.electionTicks, using: &random)
        votes = [:]
        leadTransferee = .none
        pendingReads = []
        readsAwaitingCommit = []
        readHeartbeatPending = false
        proposalsPending = false
    }

    private mutating func rebuildProgress() {
        var next: [NodeID: Progress] = [:]
        for m in confState.allMembers {
            next[m] = progress[m] ?? Progress(next: log.lastIndex + 1, maxInflight: config.maxInflightMessages,
                                              maxInflightBytes: config.maxInflightBytes)
        }
        progress = next
    }

    // MARK: - Commit and configuration

    private mutating func commitTo(_ index: UInt64) {
        guard index > log.committed else { return }
        log.commit(to: index)
        // Thesis §4.2.2: a leader that is not part of the configuration steps down once that configuration is
        // committed. Until then it manages a cluster that does not include itself. It tells the followers the new
        // commit index first so they learn of it without waiting for an election.
        if role == .leader && !confState.isVoter(id) && (confHistory.last?.index ?? 0) <= log.committed {
            broadcastAppend()
            becomeFollower(term: term, leader: .none)
        }
    }

    /// Applies configuration entries appended since the last scan (thesis §4.1: a server uses the latest
    /// configuration in its log, committed or not). One uncommitted change at a time keeps every majority of
    /// the old configuration overlapping every majority of the new one.
    private mutating func scanConfiguration() {
        var changed = false
        while confScannedIndex < log.lastIndex {
            confScannedIndex += 1
            guard let e = log.entry(at: confScannedIndex), e.kind == .confChange else { continue }
            // An undecodable or inapplicable change is ignored, identically on every node holding this log.
            guard let cc = try? RaftCodec.decodeConfChange(e.data),
                  case let .success(next) = ConfChanger.apply(cc, to: confState) else { continue }
            confState = next
            confHistory.append((e.index, next))
            changed = true
        }
        if changed { onConfigurationChanged() }
    }

    /// The log was truncated from `index` on: configurations from the removed entries no longer apply.
    private mutating func rollBackConfiguration(from index: UInt64) {
        guard confScannedIndex >= index else { return }
        confScannedIndex = index - 1
        if confHistory.contains(where: { $0.index >= index }) {
            confHistory.removeAll { $0.index >= index }
            confState = confHistory.last?.conf ?? snapshotConf
            onConfigurationChanged()
        }
    }

    private mutating func onConfigurationChanged() {
        rebuildProgress()
        if role == .leader && leadTransferee != .none && !confState.isVoter(leadTransferee) { leadTransferee = .none }
    }

    // MARK: - Internal invariants

    /// Cheap structural invariants, checked after every input in debug builds (`assert` compiles away in release).
    private func assertInvariants() {
        assert(log.committed <= log.lastIndex, "raft \(id): commit \(log.committed) beyond last index \(log.lastIndex)")
        assert(log.applied <= log.committed && log.applying <= log.committed,
               "raft \(id): applied \(log.applied)/applying \(log.applying) beyond commit \(log.committed)")
        assert(log.unstableFrom >= log.firstIndex && log.unstableFrom <= log.lastIndex + 1,
               "raft \(id): unstable index \(log.unstableFrom) outside [\(log.firstIndex), \(log.lastIndex + 1)]")
        assert(role != .candidate || vote == id, "raft \(id): candidate that did not vote for itself")
        assert(role != .leader || leader == id, "raft \(id): leader that does not know it leads")
        assert(confScannedIndex == log.lastIndex, "raft \(id): configuration scanned to \(confScannedIndex), last index \(log.lastIndex)")
        if role == .leader {
            for (node, p) in progress {
                assert(p.match <= log.lastIndex, "raft \(id): follower \(node) matches \(p.match) beyond our last index \(log.lastIndex)")
            }
        }
    }

    // MARK: - Output

    private mutating func send(to: NodeID, term t: UInt64? = nil, _ kind: Message.Kind) {
        outbox.append(Message(from: id, to: to, term: t ?? term, kind: kind))
    }
}
