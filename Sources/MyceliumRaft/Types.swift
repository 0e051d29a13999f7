// The values Raft exchanges with its shell: log entries, the durable hard state, configurations,
// snapshots and messages. Everything here is a plain value; nothing refers to a clock, a socket or a file.

/// A Raft node identifier. The agent maps node identities (keys) to these numbers; 0 means "nobody".
public typealias NodeID = UInt64

extension NodeID {
    /// The "no node" value used for an unknown leader or an unset vote.
    public static let none: NodeID = 0
}

/// One log entry. `index` and `term` identify it uniquely (Raft §5.3, the Log Matching Property).
public struct Entry: Sendable, Equatable, Hashable {
    public enum Kind: UInt8, Sendable {
        /// Application data (or an empty no-op a new leader appends, Raft §8).
        case normal = 0
        /// An encoded `ConfChange`. Raft applies it itself as soon as it is appended (thesis §4.1), and rolls it
        /// back if the entry is overwritten.
        case confChange = 1
    }

    public var term: UInt64
    public var index: UInt64
    public var kind: Kind
    public var data: [UInt8]

    public init(term: UInt64, index: UInt64, kind: Kind = .normal, data: [UInt8] = []) {
        self.term = term
        self.index = index
        self.kind = kind
        self.data = data
    }

    /// The size used for flow control and message batching: payload plus a fixed overhead.
    public var byteSize: Int { data.count + 24 }
}

/// The state that must be on stable storage before any message that depends on it is sent (Raft Figure 2).
public struct HardState: Sendable, Equatable, Hashable {
    public var term: UInt64
    public var vote: NodeID
    public var commit: UInt64

    public init(term: UInt64 = 0, vote: NodeID = .none, commit: UInt64 = 0) {
        self.term = term
        self.vote = vote
        self.commit = commit
    }
}

/// A cluster configuration. While `votersOutgoing` is non-empty the cluster is in a joint configuration
/// (Raft thesis §4.3) and every decision needs a majority of both voter sets.
///
/// All sets are kept as sorted arrays so iteration order, and therefore every simulated run, is deterministic.
public struct ConfState: Sendable, Equatable, Hashable {
    /// Voters of the incoming (or only) configuration.
    public var voters: [NodeID]
    /// Voters of the outgoing configuration; empty unless joint.
    public var votersOutgoing: [NodeID]
    /// Non-voting members that receive the log (thesis §4.2.1).
    public var learners: [NodeID]
    /// Outgoing voters that become learners when the joint configuration is left.
    public var learnersNext: [NodeID]
    /// Whether the leader leaves the joint configuration by itself once it is committed.
    public var autoLeave: Bool

    public init(voters: [NodeID] = [], votersOutgoing: [NodeID] = [], learners: [NodeID] = [],
                learnersNext: [NodeID] = [], autoLeave: Bool = false) {
        self.voters = voters.sorted()
        self.votersOutgoing = votersOutgoing.sorted()
        self.learners = learners.sorted()
        self.learnersNext = learnersNext.sorted()
        self.autoLeave = autoLeave
    }

    public var isJoint: Bool { !votersOutgoing.isEmpty }

    /// Every node that votes in either half of the configuration.
    public var allVoters: [NodeID] { sortedUnion(voters, votersOutgoing) }

    /// Every node the leader replicates to.
    public var allMembers: [NodeID] { sortedUnion(sortedUnion(allVoters, learners), learnersNext) }

    public func isVoter(_ id: NodeID) -> Bool { voters.contains(id) || votersOutgoing.contains(id) }
    public func isLearner(_ id: NodeID) -> Bool { !isVoter(id) && (learners.contains(id) || learnersNext.contains(id)) }
}

func sortedUnion(_ a: [NodeID], _ b: [NodeID]) -> [NodeID] {
    if b.isEmpty { return a }
    if a.isEmpty { return b }
    var out = a
    for x in b where !a.contains(x) { out.append(x) }
    out.sort()
    return out
}

/// A membership change, carried in a log entry of kind `.confChange`.
///
/// A change that touches at most one voter is applied directly ("simple" change, thesis §4.1). Anything larger
/// goes through a joint configuration (thesis §4.3), like etcd's ConfChangeV2. An empty change leaves the joint
/// configuration.
///
/// The known pitfalls of single-server changes are handled: a configuration takes effect when appended, not
/// when committed (§4.1); only one change may be uncommitted at a time; a new leader accepts a change only after
/// it committed an entry of its own term (the fix for the bug Ongaro reported on raft-dev in 2015); a leader
/// that removed itself keeps managing the cluster until the change commits, then steps down (§4.2.2); and a node
/// whose removal is not yet committed may still campaign, so its crash cannot leave the others without a quorum.
public struct ConfChange: Sendable, Equatable, Hashable {
    public enum Operation: Sendable, Equatable, Hashable {
        case addVoter(NodeID)
        case addLearner(NodeID)
        case removeNode(NodeID)
    }

    public enum Transition: UInt8, Sendable {
        /// Simple if possible; otherwise joint, and the leader leaves the joint configuration automatically.
        case auto = 0
        /// Always joint, and stay joint until an explicit empty `ConfChange` (leave-joint) is committed.
        case explicitJoint = 1
    }

    public var changes: [Operation]
    public var transition: Transition

    public init(_ changes: [Operation], transition: Transition = .auto) {
        self.changes = changes
        self.transition = transition
    }

    /// The change that leaves a joint configuration.
    public static var leaveJoint: ConfChange { ConfChange([]) }
}

/// Identifies a snapshot: the last entry it covers and the configuration at that entry.
public struct SnapshotMetadata: Sendable, Equatable, Hashable {
    public var index: UInt64
    public var term: UInt64
    public var confState: ConfState

    public init(index: UInt64, term: UInt64, confState: ConfState) {
        self.index = index
        self.term = term
        self.confState = confState
    }
}

/// A state-machine snapshot with the Raft metadata needed to restart from it (Raft §7).
public struct Snapshot: Sendable, Equatable {
    public var metadata: SnapshotMetadata
    public var data: [UInt8]

    public init(metadata: SnapshotMetadata, data: [UInt8]) {
        self.metadata = metadata
        self.data = data
    }
}

/// A read that may be served once the state machine has applied `index` (ReadIndex, thesis §6.4).
public struct ReadState: Sendable, Equatable {
    /// The caller's context passed to `readIndex(context:)`.
    public var context: UInt64
    public var index: UInt64

    public init(context: UInt64, index: UInt64) {
        self.context = context
        self.index = index
    }
}

/// The role a node plays in its current term.
public enum Role: String, Sendable, Equatable {
    case follower, preCandidate, candidate, leader
}

/// A message between Raft nodes. The shell delivers it to `to` by any means; loss, duplication and reordering
/// are all tolerated.
public struct Message: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// Pre-vote request (thesis §9.6). `term` is the term the sender would campaign in; its own term is unchanged.
        case preVote(lastIndex: UInt64, lastTerm: UInt64)
        case preVoteResponse(granted: Bool)
        /// RequestVote (Raft §5.2). `transfer` marks a campaign started by leader transfer, which may disturb a
        /// live leader's lease (thesis §3.10).
        case vote(lastIndex: UInt64, lastTerm: UInt64, transfer: Bool)
        case voteResponse(granted: Bool)
        /// AppendEntries (Raft §5.3).
        case append(prevIndex: UInt64, prevTerm: UInt64, entries: [Entry], commit: UInt64)
        /// Reply to `append` or to a completed snapshot. On success `index` is the highest index known to match.
        /// On rejection `index` is the rejected `prevIndex` and `hintIndex`/`hintTerm` help the leader skip back
        /// a whole term at a time (Raft §5.3, the optimisation after Figure 7).
        case appendResponse(success: Bool, index: UInt64, hintIndex: UInt64, hintTerm: UInt64)
        /// Heartbeat carrying the commit index and the latest ReadIndex round (thesis §6.4).
        case heartbeat(commit: UInt64, readRound: UInt64)
        case heartbeatResponse(readRound: UInt64)
        /// One chunk of an InstallSnapshot (Raft §7). `offset` is where `chunk` starts in the snapshot data.
        case snapshotChunk(metadata: SnapshotMetadata, offset: UInt64, totalSize: UInt64, chunk: [UInt8])
        /// The follower has received `receivedBytes` bytes of the snapshot identified by `index`/`term`.
        case snapshotResponse(index: UInt64, term: UInt64, receivedBytes: UInt64)
        /// Start an election now, skipping pre-vote (leader transfer, thesis §3.10).
        case timeoutNow
    }

    public var from: NodeID
    public var to: NodeID
    public var term: UInt64
    public var kind: Kind

    public init(from: NodeID, to: NodeID, term: UInt64, kind: Kind) {
        self.from = from
        self.to = to
        self.term = term
        self.kind = kind
    }

    /// An approximate wire size, used by simulators and for byte-based flow control.
    public var byteSize: Int {
        switch kind {
        case let .append(_, _, entries, _): return 40 + entries.reduce(0) { $0 + $1.byteSize }
        case let .snapshotChunk(_, _, _, chunk): return 64 + chunk.count
        default: return 32
        }
    }
}
