// Unit tests, section by section of the Raft paper (Ongaro & Ousterhout 2014) and Ongaro's thesis.

@_spi(Testing) import MyceliumRaft
import MyceliumCore
import XCTest

/// A small cluster with instant, controllable delivery for unit tests.
struct TestCluster {
    var nodes: [NodeID: Raft] = [:]
    var storage: [NodeID: RaftStorageState] = [:]
    var queue: [Message] = []
    var applied: [NodeID: [Entry]] = [:]
    var readStates: [NodeID: [ReadState]] = [:]
    /// Messages for which this returns true are dropped.
    var drop: (Message) -> Bool = { _ in false }
    var rng = SeededRandom(seed: 42)

    init(voters: [NodeID], learners: [NodeID] = [], configure: (inout RaftConfig) -> Void = { _ in }) throws {
        var boot = RaftStorageState.bootstrap(voters: voters)
        if !learners.isEmpty {
            boot.entries[0].data = RaftCodec.encode(ConfChange(voters.map { .addVoter($0) } + learners.map { .addLearner($0) }))
        }
        for id in voters + learners {
            var cfg = RaftConfig(id: id)
            configure(&cfg)
            storage[id] = boot
            nodes[id] = try Raft(config: cfg, storage: boot, random: &rng)
        }
    }

    mutating func addEmptyNode(_ id: NodeID, configure: (inout RaftConfig) -> Void = { _ in }) throws {
        var cfg = RaftConfig(id: id)
        configure(&cfg)
        storage[id] = RaftStorageState()
        nodes[id] = try Raft(config: cfg, storage: storage[id]!, random: &rng)
    }

    var ids: [NodeID] { nodes.keys.sorted() }
    var leader: NodeID? { ids.first { nodes[$0]!.role == .leader } }

    mutating func processReady(_ id: NodeID) {
        guard nodes[id]?.hasReady == true else { return }
        let rd = nodes[id]!.ready()
        storage[id]!.persist(rd)
        queue.append(contentsOf: rd.messages)
        applied[id, default: []].append(contentsOf: rd.committedEntries)
        readStates[id, default: []].append(contentsOf: rd.readStates)
        nodes[id]!.advance(rd)
    }

    /// Runs Ready/Advance and delivers messages until nothing moves.
    mutating func stabilize() {
        for _ in 0..<1000 {
            var moved = false
            for id in ids where nodes[id]!.hasReady { processReady(id); moved = true }
            let batch = queue
            queue.removeAll()
            for m in batch where !drop(m) && nodes[m.to] != nil {
                nodes[m.to]!.step(m)
                moved = true
            }
            if !moved { return }
        }
        XCTFail("cluster did not stabilize")
    }

    /// Ticks `id` until its election timeout fires, then stabilizes.
    mutating func elect(_ id: NodeID) {
        let term = nodes[id]!.term
        var n = 0
        while nodes[id]!.role == .follower && nodes[id]!.term == term && n < 100 { nodes[id]!.tick(); n += 1 }
        stabilize()
    }

    mutating func tickAll(_ n: Int) {
        for _ in 0..<n {
            for id in ids { nodes[id]!.tick() }
            stabilize()
        }
    }
}

final class ElectionTests: XCTestCase {
    /// §5.2: a single voter elects itself and commits alone.
    func testSingleNodeElectsItselfAndCommits() throws {
        var c = try TestCluster(voters: [1])
        c.elect(1)
        XCTAssertEqual(c.nodes[1]!.role, .leader)
        try c.nodes[1]!.propose([7])
        c.stabilize()
        XCTAssertEqual(c.applied[1]!.last?.data, [7])
    }

    /// §5.2: exactly one leader, elected with a majority.
    func testThreeNodesElectOneLeader() throws {
        var c = try TestCluster(voters: [1, 2, 3])
        c.elect(2)
        XCTAssertEqual(c.leader, 2)
        XCTAssertEqual(c.ids.filter { c.nodes[$0]!.role == .leader }.count, 1)
        XCTAssertEqual(c.nodes[1]!.leader, 2)
        XCTAssertEqual(c.nodes[2]!.term, 2)
    }

    /// §5.2: timeouts are randomized in [electionTicks, 2 * electionTicks) from the injected generator, and the same
    /// seed gives the same timeout.
    func testElectionTimeoutIsRandomizedFromTheInjectedGenerator() throws {
        func ticksToCampaign(seed: UInt64) throws -> Int {
            var rng = SeededRandom(seed: seed)
            var r = try Raft(config: RaftConfig(id: 1), storage: .bootstrap(voters: [1, 2, 3]), random: &rng)
            var n = 0
            while r.role == .follower { r.tick(); n += 1 }
            return n
        }
        var seen = Set<Int>()
        for seed in UInt64(0)..<40 {
            let t = try ticksToCampaign(seed: seed)
            XCTAssertTrue((10..<20).contains(t), "\(t)")
            XCTAssertEqual(t, try ticksToCampaign(seed: seed))
            seen.insert(t)
        }
        XCTAssertGreaterThan(seen.count, 3)
    }

    /// §5.2: at most one vote per term.
    func testVotesOncePerTerm() throws {
        var rng = SeededRandom(seed: 1)
        var r = try Raft(config: RaftConfig(id: 1, preVote: false, checkQuorum: false), storage: .bootstrap(voters: [1, 2, 3]), random: &rng)
        r.step(Message(from: 2, to: 1, term: 5, kind: .vote(lastIndex: 1, lastTerm: 1, transfer: false)))
        r.step(Message(from: 3, to: 1, term: 5, kind: .vote(lastIndex: 1, lastTerm: 1, transfer: false)))
        let rd = r.ready()
        XCTAssertEqual(rd.hardState?.vote, 2)
        XCTAssertEqual(rd.messages.map(\.kind), [.voteResponse(granted: true), .voteResponse(granted: false)])
    }

    /// §5.4.1: no vote for a candidate whose log is less up to date.
    func testRejectsCandidateWithStaleLog() throws {
        var c = try TestCluster(voters: [1, 2, 3]) { $0.preVote = false; $0.checkQuorum = false }
        c.elect(1)
        try c.nodes[1]!.propose([1])
        c.stabilize()
        var r = c.nodes[2]!
        r.step(Message(from: 3, to: 2, term: 9, kind: .vote(lastIndex: 2, lastTerm: 2, transfer: false)))
        XCTAssertEqual(r.ready().messages.first?.kind, .voteResponse(granted: false))
    }

    /// Thesis §9.6: a pre-candidate does not bump its term; a failed pre-vote leaves the cluster's terms alone.
    func testPreVoteDoesNotChangeTerms() throws {
        var c = try TestCluster(voters: [1, 2, 3])
        c.elect(1)
        c.drop = { $0.from == 3 || $0.to == 3 }
        for _ in 0..<60 { c.nodes[3]!.tick(); c.stabilize() }
        XCTAssertEqual(c.nodes[3]!.role, .preCandidate)
        XCTAssertEqual(c.nodes[3]!.term, 2)
        c.drop = { _ in false }
        c.tickAll(3)
        XCTAssertEqual(c.leader, 1)
        XCTAssertEqual(c.ids.map { c.nodes[$0]!.term }, [2, 2, 2])
    }

    /// The transport's hint that the leader is gone shortens the wait to a few ticks, and the same
    /// hint from one follower about a healthy leader changes nothing (pre-vote needs a quorum that
    /// no longer hears the leader).
    func testLeaderUnreachableHintIsFastAndCannotDisruptAHealthyLeader() throws {
        var c = try TestCluster(voters: [1, 2, 3]) { $0.preVote = true; $0.checkQuorum = true }
        c.elect(1)
        let term = c.nodes[1]!.term
        c.nodes[2]!.leaderUnreachable(1)
        c.tickAll(6)
        XCTAssertEqual(c.leader, 1)
        XCTAssertEqual(c.ids.map { c.nodes[$0]!.term }, [term, term, term], "a wrong hint disrupts nothing")

        c.drop = { $0.from == 1 || $0.to == 1 }  // the leader dies
        c.nodes[2]!.leaderUnreachable(1)
        c.nodes[3]!.leaderUnreachable(1)
        var ticks = 0
        while !(c.nodes[2]!.role == .leader || c.nodes[3]!.role == .leader) && ticks < 30 {
            for id in [2, 3] as [NodeID] { c.nodes[id]!.tick() }
            c.stabilize()
            ticks += 1
        }
        XCTAssertTrue(c.nodes[2]!.role == .leader || c.nodes[3]!.role == .leader)
        XCTAssertLessThanOrEqual(ticks, 3, "logical ticks, not an election timeout (10)")
    }

    /// Thesis §4.2.1: learners replicate but never campaign.
    func testLearnerNeverCampaigns() throws {
        var c = try TestCluster(voters: [1], learners: [2])
        for _ in 0..<100 { c.nodes[2]!.tick() }
        XCTAssertEqual(c.nodes[2]!.role, .follower)
        c.elect(1)
        try c.nodes[1]!.propose([5])
        c.stabilize()
        XCTAssertEqual(c.applied[2]!.last?.data, [5])
    }
}

final class ReplicationTests: XCTestCase {
    /// §5.3: a follower with a conflicting suffix is brought in line; the leader backs up by whole terms.
    func testConflictingFollowerSuffixIsOverwritten() throws {
        var c = try TestCluster(voters: [1, 2, 3]) { $0.preVote = false; $0.checkQuorum = false }
        c.elect(1)
        // Node 1 appends entries that reach nobody, then loses leadership.
        c.drop = { _ in true }
        for i in 0..<5 { try c.nodes[1]!.propose([UInt8(i)]) }
        c.stabilize()
        c.drop = { $0.from == 1 || $0.to == 1 }
        c.elect(2)
        try c.nodes[2]!.propose([42])
        c.stabilize()
        c.drop = { _ in false }
        c.tickAll(3)
        XCTAssertEqual(c.nodes[1]!.role, .follower)
        XCTAssertEqual(c.nodes[1]!.lastIndex, c.nodes[2]!.lastIndex)
        for i in 1...c.nodes[2]!.lastIndex { XCTAssertEqual(c.nodes[1]!.entry(at: i), c.nodes[2]!.entry(at: i)) }
        XCTAssertEqual(c.applied[1]!.last?.data, c.applied[2]!.last?.data)
    }

    /// Batching: proposals made between two Readies travel in one append per follower.
    func testProposalsAreBatched() throws {
        var c = try TestCluster(voters: [1, 2, 3])
        c.elect(1)
        for i in 0..<50 { try c.nodes[1]!.propose([UInt8(i)]) }
        let rd = c.nodes[1]!.ready()
        let appends = rd.messages.filter { if case .append = $0.kind { return true } else { return false } }
        XCTAssertEqual(appends.count, 2)
        if case let .append(_, _, entries, _) = appends[0].kind { XCTAssertEqual(entries.count, 50) }
        c.nodes[1]!.advance(rd)
    }

    /// Pipelining with flow control: at most `maxInflightMessages` appends outstanding per follower.
    func testInflightMessageWindow() throws {
        var c = try TestCluster(voters: [1, 2]) { $0.maxInflightMessages = 3; $0.maxBytesPerMessage = 1 }
        c.elect(1)
        // Acks from 2 are lost, so nothing is freed.
        c.drop = { $0.from == 2 }
        for i in 0..<10 { try c.nodes[1]!.propose([UInt8(i)]) }
        let rd = c.nodes[1]!.ready()
        XCTAssertEqual(rd.messages.filter { $0.to == 2 }.count, 3)
        c.nodes[1]!.advance(rd)
        // Once acks flow again, everything gets through.
        c.drop = { _ in false }
        c.tickAll(2)
        XCTAssertEqual(c.nodes[2]!.lastIndex, c.nodes[1]!.lastIndex)
        XCTAssertEqual(c.nodes[2]!.commitIndex, c.nodes[1]!.lastIndex)
    }

    /// Regression (found by simulator seeds 10 and 40): a lost append must not leave a full window stuck forever;
    /// the next heartbeat answer frees a slot and replication resumes.
    func testLostAppendDoesNotStallAFullWindow() throws {
        var c = try TestCluster(voters: [1, 2]) { $0.maxInflightMessages = 1 }
        c.elect(1)
        c.drop = { if case .append = $0.kind { return $0.to == 2 } else { return false } }
        try c.nodes[1]!.propose([1])
        c.stabilize()
        try c.nodes[1]!.propose([2])
        c.stabilize()
        XCTAssertLessThan(c.nodes[2]!.lastIndex, c.nodes[1]!.lastIndex)
        c.drop = { _ in false }
        c.tickAll(3)
        XCTAssertEqual(c.nodes[2]!.lastIndex, c.nodes[1]!.lastIndex)
        XCTAssertEqual(c.nodes[2]!.commitIndex, c.nodes[1]!.lastIndex)
    }

    /// Flow control by bytes: a follower is not sent more than `maxInflightBytes` unacknowledged.
    func testInflightByteWindow() throws {
        var c = try TestCluster(voters: [1, 2]) { $0.maxInflightBytes = 100; $0.maxBytesPerMessage = 60 }
        c.elect(1)
        c.drop = { $0.from == 2 }
        for _ in 0..<10 { try c.nodes[1]!.propose([UInt8](repeating: 1, count: 30)) }
        let rd = c.nodes[1]!.ready()
        let bytes = rd.messages.filter { $0.to == 2 }.reduce(0) { total, m in
            if case let .append(_, _, es, _) = m.kind { return total + es.reduce(0) { $0 + $1.byteSize } }
            return total
        }
        XCTAssertLessThanOrEqual(bytes, 100 + 60)
        XCTAssertLessThan(bytes, 10 * 54)
        c.nodes[1]!.advance(rd)
    }

    /// §5.4.2: a leader does not count replicas of an entry from an earlier term; with the mutation it does.
    func testEarlierTermEntriesAreNotCommittedByCounting() throws {
        for mutation in [RaftConfig.Mutation.none, .commitPriorTermByCounting] {
            var rng = SeededRandom(seed: 1)
            // Node 1 holds entry 2 from term 2, uncommitted, and is now leader of term 4 (its no-op is 3/4).
            let e1 = RaftStorageState.bootstrap(voters: [1, 2, 3]).entries[0]
            let storage = RaftStorageState(hardState: HardState(term: 3, vote: 0, commit: 1),
                                           entries: [e1, Entry(term: 2, index: 2, data: [9])])
            var cfg = RaftConfig(id: 1, preVote: false, checkQuorum: false)
            cfg.mutation = mutation
            var r = try Raft(config: cfg, storage: storage, random: &rng)
            while r.role != .candidate { r.tick() }
            r.step(Message(from: 2, to: 1, term: 4, kind: .voteResponse(granted: true)))
            XCTAssertEqual(r.role, .leader)
            r.advance(r.ready())
            // Node 2 acknowledges entry 2 only: 2/2 is on a majority but 3/4 is not.
            r.step(Message(from: 2, to: 1, term: 4, kind: .appendResponse(success: true, index: 2, hintIndex: 0, hintTerm: 0)))
            XCTAssertEqual(r.commitIndex, mutation == .none ? 1 : 2)
            // Acknowledging 3/4 commits everything up to it, 2/2 included (indirectly, §5.4.2).
            r.step(Message(from: 2, to: 1, term: 4, kind: .appendResponse(success: true, index: 3, hintIndex: 0, hintTerm: 0)))
            XCTAssertEqual(r.commitIndex, 3)
        }
    }

    /// The leader counts itself only for entries on its own disk (persist before acknowledging).
    func testLeaderCountsItselfOnlyAfterPersisting() throws {
        var c = try TestCluster(voters: [1, 2, 3])
        c.elect(1)
        try c.nodes[1]!.propose([1])
        let rd = c.nodes[1]!.ready() // not yet persisted
        let index = c.nodes[1]!.lastIndex
        c.nodes[1]!.step(Message(from: 2, to: 1, term: 2, kind: .appendResponse(success: true, index: index, hintIndex: 0, hintTerm: 0)))
        // One follower has it, the leader's own copy is not durable yet: no majority.
        XCTAssertLessThan(c.nodes[1]!.commitIndex, index)
        c.nodes[1]!.advance(rd)
        XCTAssertEqual(c.nodes[1]!.commitIndex, index)
    }
}

final class ReadIndexTests: XCTestCase {
    /// Thesis §6.4: a read is released only after a quorum confirms the leader, at the commit index it saw.
    func testReadIndexNeedsAQuorumRound() throws {
        var c = try TestCluster(voters: [1, 2, 3])
        c.elect(1)
        try c.nodes[1]!.readIndex(context: 7)
        let rd = c.nodes[1]!.ready()
        XCTAssertTrue(rd.readStates.isEmpty)
        XCTAssertEqual(rd.messages.filter { if case .heartbeat(_, 1) = $0.kind { return true } else { return false } }.count, 2)
        c.queue.append(contentsOf: rd.messages)
        c.nodes[1]!.advance(rd)
        c.stabilize()
        XCTAssertEqual(c.readStates[1], [ReadState(context: 7, index: c.nodes[1]!.commitIndex)])
    }

    /// Thesis §6.4 step 1: a new leader first commits an entry of its term.
    func testNewLeaderDefersReadsUntilItCommitsInItsTerm() throws {
        var c = try TestCluster(voters: [1, 2, 3])
        let term = c.nodes[1]!.term
        while c.nodes[1]!.role != .leader {
            c.nodes[1]!.tick()
            c.processReady(1)
            let batch = c.queue; c.queue = []
            for m in batch { c.nodes[m.to]!.step(m) }
            for id: NodeID in [2, 3] { c.processReady(id) }
            let back = c.queue; c.queue = []
            for m in back { c.nodes[m.to]!.step(m) }
        }
        XCTAssertGreaterThan(c.nodes[1]!.term, term)
        try c.nodes[1]!.readIndex(context: 1)
        XCTAssertTrue(c.nodes[1]!.ready().readStates.isEmpty)
    }

    func testReadOnFollowerIsRefusedWithLeaderHint() throws {
        var c = try TestCluster(voters: [1, 2, 3])
        c.elect(1)
        XCTAssertThrowsError(try c.nodes[2]!.readIndex(context: 1)) { e in
            XCTAssertEqual((e as? RaftError)?.code, .notLeader(leader: 1))
        }
    }

    /// Lease reads (off by default) are answered without a round trip.
    func testLeaseReadsAnswerImmediately() throws {
        var c = try TestCluster(voters: [1, 2, 3]) { $0.leaseReads = true }
        c.elect(1)
        try c.nodes[1]!.readIndex(context: 3)
        XCTAssertEqual(c.nodes[1]!.ready().readStates, [ReadState(context: 3, index: c.nodes[1]!.commitIndex)])
        XCTAssertFalse(RaftConfig(id: 1).leaseReads)
    }
}

final class MembershipAndMisuseTests: XCTestCase {
    /// Thesis §4.2.1: a learner catches up, then is promoted to voter with a simple change.
    func testAddLearnerThenPromote() throws {
        var c = try TestCluster(voters: [1, 2, 3])
        c.elect(1)
        for i in 0..<5 { try c.nodes[1]!.propose([UInt8(i)]) }
        c.stabilize()
        try c.addEmptyNode(4)
        try c.nodes[1]!.proposeConfChange(ConfChange([.addLearner(4)]))
        c.stabilize()
        c.tickAll(2)
        XCTAssertEqual(c.nodes[4]!.confState.learners, [4])
        XCTAssertEqual(c.nodes[4]!.commitIndex, c.nodes[1]!.commitIndex)
        try c.nodes[1]!.proposeConfChange(ConfChange([.addVoter(4)]))
        c.stabilize()
        XCTAssertEqual(c.nodes[1]!.confState.voters, [1, 2, 3, 4])
        XCTAssertEqual(c.nodes[4]!.confState.voters, [1, 2, 3, 4])
        XCTAssertFalse(c.nodes[1]!.confState.isJoint)
    }

    /// Thesis §4.1 and §4.2.2 (regression, found by simulator seed 231 when configurations applied at commit
    /// time): the leader of {1, 2} appends its own removal, crashes before replicating it, and restarts. Node 2
    /// still counts 1 as a voter but cannot get its vote (1's log is longer); 1 must still campaign, lead the
    /// new configuration {2} until it commits, and step down so 2 takes over.
    func testLeaderThatRemovedItselfAndCrashedDoesNotBlockTheCluster() throws {
        var c = try TestCluster(voters: [1, 2])
        c.elect(1)
        c.drop = { _ in true }
        try c.nodes[1]!.proposeConfChange(ConfChange([.removeNode(1)]))
        c.stabilize()
        XCTAssertEqual(c.nodes[1]!.confState.voters, [2])
        XCTAssertEqual(c.nodes[2]!.confState.voters, [1, 2])
        // Crash and restart 1 from its disk; the network works again.
        var rng = SeededRandom(seed: 5)
        c.nodes[1] = try Raft(config: RaftConfig(id: 1), storage: c.storage[1]!, random: &rng)
        c.drop = { _ in false }
        c.tickAll(120)
        XCTAssertEqual(c.leader, 2)
        XCTAssertEqual(c.nodes[2]!.confState.voters, [2])
        XCTAssertEqual(c.nodes[2]!.commitIndex, c.nodes[2]!.lastIndex)
        try c.nodes[2]!.propose([1])
        c.stabilize()
        XCTAssertEqual(c.applied[2]!.last?.data, [1])
    }

    /// A new leader accepts no membership change until it has committed an entry of its own term.
    func testNewLeaderRefusesConfChangeBeforeCommittingInItsTerm() throws {
        var c = try TestCluster(voters: [1, 2, 3]) { $0.preVote = false; $0.checkQuorum = false }
        c.elect(1)
        // 2 wins an election, but none of its appends arrive, so its no-op stays uncommitted.
        c.drop = { m in
            if case .append = m.kind { return true }
            return m.from == 1 || m.to == 1
        }
        c.elect(2)
        let before = c.nodes[2]!.commitIndex
        XCTAssertEqual(c.nodes[2]!.role, .leader)
        XCTAssertLessThan(before, c.nodes[2]!.lastIndex)
        XCTAssertThrowsError(try c.nodes[2]!.proposeConfChange(ConfChange([.removeNode(3)]))) { e in
            XCTAssertEqual((e as? RaftError)?.code, .confChangeInProgress(index: c.nodes[2]!.lastIndex))
        }
        c.drop = { _ in false }
        c.tickAll(3)
        XCTAssertEqual(c.nodes[2]!.role, .leader)
        XCTAssertNoThrow(try c.nodes[2]!.proposeConfChange(ConfChange([.removeNode(3)])))
    }

    func testInvalidConfChangesAreTypedErrors() throws {
        var c = try TestCluster(voters: [1])
        c.elect(1)
        XCTAssertThrowsError(try c.nodes[1]!.proposeConfChange(ConfChange([.removeNode(1)]))) { e in
            guard case .invalidConfChange? = (e as? RaftError)?.code else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try c.nodes[1]!.proposeConfChange(.leaveJoint))
        XCTAssertThrowsError(try c.nodes[1]!.transferLeadership(to: 9)) { e in
            XCTAssertEqual((e as? RaftError)?.code, .notAVoter(9))
        }
    }

    func testExplicitJointStaysJointUntilLeft() throws {
        var c = try TestCluster(voters: [1, 2, 3])
        c.elect(1)
        try c.nodes[1]!.proposeConfChange(ConfChange([.addLearner(3)], transition: .explicitJoint))
        c.stabilize()
        XCTAssertTrue(c.nodes[1]!.confState.isJoint)
        XCTAssertEqual(c.nodes[1]!.confState.learnersNext, [3])
        try c.nodes[1]!.proposeConfChange(.leaveJoint)
        c.stabilize()
        XCTAssertFalse(c.nodes[2]!.confState.isJoint)
        XCTAssertEqual(c.nodes[2]!.confState.voters, [1, 2])
        XCTAssertEqual(c.nodes[2]!.confState.learners, [3])
    }

    func testConfigurationIsRestoredFromTheCommittedLogOnRestart() throws {
        var c = try TestCluster(voters: [1, 2, 3])
        c.elect(1)
        try c.addEmptyNode(4)
        try c.nodes[1]!.proposeConfChange(ConfChange([.addLearner(4)]))
        c.stabilize()
        var rng = SeededRandom(seed: 9)
        let r = try Raft(config: RaftConfig(id: 2), storage: c.storage[2]!, random: &rng)
        XCTAssertEqual(r.confState.learners, [4])
    }

    func testMisuseErrors() throws {
        var c = try TestCluster(voters: [1, 2, 3])
        XCTAssertThrowsError(try c.nodes[1]!.propose([1])) { e in
            XCTAssertEqual((e as? RaftError)?.code, .notLeader(leader: .none))
            XCTAssertTrue("\(e)".contains("no leader known"))
        }
        c.elect(1)
        XCTAssertThrowsError(try c.nodes[1]!.compact(upTo: 100, snapshotData: [])) { e in
            guard case .compactionOutOfRange? = (e as? RaftError)?.code else { return XCTFail("\(e)") }
        }
        var rng = SeededRandom(seed: 1)
        XCTAssertThrowsError(try Raft(config: RaftConfig(id: 0), storage: RaftStorageState(), random: &rng))
        XCTAssertThrowsError(try Raft(config: RaftConfig(id: 1, electionTicks: 1, heartbeatTicks: 1), storage: RaftStorageState(), random: &rng))
        XCTAssertThrowsError(try Raft(config: RaftConfig(id: 1, checkQuorum: false, leaseReads: true), storage: RaftStorageState(), random: &rng))
        let gap = RaftStorageState(hardState: HardState(term: 1, vote: 0, commit: 0), entries: [Entry(term: 1, index: 2)])
        XCTAssertThrowsError(try Raft(config: RaftConfig(id: 1), storage: gap, random: &rng)) { e in
            guard case .inconsistentStorage? = (e as? RaftError)?.code else { return XCTFail("\(e)") }
        }
        let commitBeyond = RaftStorageState(hardState: HardState(term: 1, vote: 0, commit: 5), entries: [])
        XCTAssertThrowsError(try Raft(config: RaftConfig(id: 1), storage: commitBeyond, random: &rng))
    }

    func testCodecRoundTripsAndRefusesGarbage() throws {
        let cc = ConfChange([.addVoter(1), .addLearner(2), .removeNode(3)], transition: .explicitJoint)
        XCTAssertEqual(try RaftCodec.decodeConfChange(RaftCodec.encode(cc)), cc)
        let s = Snapshot(metadata: SnapshotMetadata(index: 9, term: 3, confState: ConfState(voters: [1, 2], votersOutgoing: [1, 3], learners: [4], learnersNext: [3], autoLeave: true)), data: [1, 2, 3])
        XCTAssertEqual(try RaftCodec.decodeSnapshot(RaftCodec.encode(s)), s)
        XCTAssertThrowsError(try RaftCodec.decodeConfChange([9, 0, 0]))
        XCTAssertThrowsError(try RaftCodec.decodeSnapshot(RaftCodec.encode(s) + [0]))
    }
}
