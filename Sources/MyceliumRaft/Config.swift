// Tunables of one Raft node. Times are in ticks: the shell decides how long a tick is.

/// Configuration of one Raft node.
public struct RaftConfig: Sendable, Equatable {
    /// This node's id; never `NodeID.none`.
    public var id: NodeID
    /// A follower that hears nothing from a leader for a random number of ticks in
    /// `[electionTicks, 2 * electionTicks)` starts an election (Raft §5.2). Must exceed `heartbeatTicks`.
    public var electionTicks: Int
    /// A leader sends heartbeats every this many ticks.
    public var heartbeatTicks: Int
    /// Pre-vote (thesis §9.6): a node first asks whether it could win before it bumps its term, so a node coming
    /// back from a partition cannot depose a healthy leader.
    public var preVote: Bool
    /// Check-quorum (thesis §6.2): a leader that has not heard from a quorum within an election timeout steps
    /// down, and a follower that heard from a leader within that time ignores vote requests (the "lease").
    public var checkQuorum: Bool
    /// Maximum bytes of entries per append message (batching). At least one entry is always sent.
    public var maxBytesPerMessage: Int
    /// Maximum append messages in flight to one follower while pipelining.
    public var maxInflightMessages: Int
    /// Maximum entry bytes in flight to one follower while pipelining.
    public var maxInflightBytes: Int
    /// Size of one InstallSnapshot chunk.
    public var snapshotChunkBytes: Int
    /// Serve ReadIndex requests without a heartbeat round, trusting check-quorum's lease.
    ///
    /// Off by default. Safe only if clocks drift by less than the margin between the leader's check-quorum
    /// period and the followers' minimum election timeout: a deposed leader must notice it lost its quorum before
    /// any other node can be elected. Requires `checkQuorum`.
    public var leaseReads: Bool
    /// Deliberate bugs for mutation testing. Never set outside tests.
    @_spi(Testing) public var mutation: Mutation

    /// Deliberate bugs the simulator's checkers must catch (mutation testing).
    @_spi(Testing) public enum Mutation: Sendable, Equatable {
        case none
        /// Commit any entry replicated on a majority, ignoring Raft §5.4.2 (the Figure 8 bug).
        case commitPriorTermByCounting
        /// Grant votes without the up-to-date check of Raft §5.4.1.
        case voteIgnoringLogRecency
    }

    public init(id: NodeID, electionTicks: Int = 10, heartbeatTicks: Int = 1, preVote: Bool = true,
                checkQuorum: Bool = true, maxBytesPerMessage: Int = 1 << 20, maxInflightMessages: Int = 256,
                maxInflightBytes: Int = 32 << 20, snapshotChunkBytes: Int = 1 << 20, leaseReads: Bool = false) {
        self.id = id
        self.electionTicks = electionTicks
        self.heartbeatTicks = heartbeatTicks
        self.preVote = preVote
        self.checkQuorum = checkQuorum
        self.maxBytesPerMessage = maxBytesPerMessage
        self.maxInflightMessages = maxInflightMessages
        self.maxInflightBytes = maxInflightBytes
        self.snapshotChunkBytes = snapshotChunkBytes
        self.leaseReads = leaseReads
        self.mutation = .none
    }

    func validate() throws(RaftError) {
        func bad(_ s: String) -> RaftError { RaftError(.invalidConfig(s), node: id) }
        if id == .none { throw bad("id must not be 0 (0 means 'nobody')") }
        if heartbeatTicks <= 0 { throw bad("heartbeatTicks must be positive, is \(heartbeatTicks)") }
        if electionTicks <= heartbeatTicks {
            throw bad("electionTicks (\(electionTicks)) must be greater than heartbeatTicks (\(heartbeatTicks))")
        }
        if maxInflightMessages <= 0 { throw bad("maxInflightMessages must be positive") }
        if maxInflightBytes <= 0 { throw bad("maxInflightBytes must be positive") }
        if maxBytesPerMessage <= 0 { throw bad("maxBytesPerMessage must be positive") }
        if snapshotChunkBytes <= 0 { throw bad("snapshotChunkBytes must be positive") }
        if leaseReads && !checkQuorum { throw bad("leaseReads requires checkQuorum: the lease is check-quorum's") }
    }
}

/// Misuse of the Raft API, with what the caller can do about it.
public struct RaftError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: Equatable, Sendable {
        /// Only the leader accepts this request. `leader` is the current leader if known.
        case notLeader(leader: NodeID)
        /// A leader transfer is in progress; proposals are refused until it ends (thesis §3.10).
        case transferInProgress(to: NodeID)
        /// Another membership change (at `index`) is not yet committed; one at a time (thesis §4.1).
        case confChangeInProgress(index: UInt64)
        /// The membership change cannot be applied to the current configuration.
        case invalidConfChange(String)
        /// The node is not a voter of the current configuration.
        case notAVoter(NodeID)
        /// Compaction must cover applied entries only and move forward.
        case compactionOutOfRange(requested: UInt64, firstIndex: UInt64, applied: UInt64)
        /// The configuration is unusable.
        case invalidConfig(String)
        /// The restored storage is inconsistent (e.g. entries not contiguous, commit beyond the log).
        case inconsistentStorage(String)
    }

    public let code: Code
    /// The node that refused.
    public let node: NodeID

    public init(_ code: Code, node: NodeID) {
        self.code = code
        self.node = node
    }

    public var description: String {
        switch code {
        case let .notLeader(leader):
            return "raft node \(node): not the leader" + (leader == .none ? "; no leader known yet, retry later" : "; send to node \(leader)")
        case let .transferInProgress(to):
            return "raft node \(node): leadership is being transferred to node \(to); retry on the new leader"
        case let .confChangeInProgress(index):
            return "raft node \(node): the membership change at index \(index) is not committed yet; retry after it is"
        case let .invalidConfChange(reason):
            return "raft node \(node): invalid membership change: \(reason)"
        case let .notAVoter(id):
            return "raft node \(node): node \(id) is not a voter of the current configuration"
        case let .compactionOutOfRange(requested, first, applied):
            return "raft node \(node): cannot compact up to \(requested): must be in [\(first), \(applied)] (first index, applied index)"
        case let .invalidConfig(reason):
            return "raft node \(node): invalid configuration: \(reason)"
        case let .inconsistentStorage(reason):
            return "raft node \(node): stored state is inconsistent: \(reason)"
        }
    }
}
