// Majority arithmetic for simple and joint configurations (Raft §5.2, thesis §4.3).

enum VoteResult: Equatable { case pending, won, lost }

enum Quorum {
    /// The highest index replicated on a majority of `voters`. An empty voter set puts no constraint on the
    /// joint result, as etcd does for the empty outgoing half.
    static func committedIndex(voters: [NodeID], match: (NodeID) -> UInt64) -> UInt64 {
        if voters.isEmpty { return .max }
        var m = voters.map(match)
        m.sort(by: >)
        return m[voters.count / 2]
    }

    static func jointCommittedIndex(_ c: ConfState, match: (NodeID) -> UInt64) -> UInt64 {
        min(committedIndex(voters: c.voters, match: match), committedIndex(voters: c.votersOutgoing, match: match))
    }

    static func voteResult(voters: [NodeID], votes: [NodeID: Bool]) -> VoteResult {
        if voters.isEmpty { return .won }
        var granted = 0, rejected = 0
        for v in voters {
            switch votes[v] {
            case true?: granted += 1
            case false?: rejected += 1
            case nil: break
            }
        }
        let q = voters.count / 2 + 1
        if granted >= q { return .won }
        if rejected >= q || voters.count - rejected < q { return .lost }
        return .pending
    }

    static func jointVoteResult(_ c: ConfState, votes: [NodeID: Bool]) -> VoteResult {
        let a = voteResult(voters: c.voters, votes: votes)
        let b = voteResult(voters: c.votersOutgoing, votes: votes)
        if a == b { return a }
        if a == .lost || b == .lost { return .lost }
        return .pending
    }

    /// Whether the nodes for which `active` is true form a quorum of the (possibly joint) configuration.
    static func isActiveQuorum(_ c: ConfState, active: (NodeID) -> Bool) -> Bool {
        func ok(_ vs: [NodeID]) -> Bool { vs.isEmpty || vs.filter(active).count >= vs.count / 2 + 1 }
        return ok(c.voters) && ok(c.votersOutgoing)
    }
}

/// Computes the configuration that results from a `ConfChange` (thesis §4.1 and §4.3, following etcd's rules).
struct ConfChangeFailure: Error { let reason: String; init(_ r: String) { reason = r } }

enum ConfChanger {
    static func apply(_ cc: ConfChange, to cs: ConfState) -> Result<ConfState, ConfChangeFailure> {
        var out = cs
        if cc.changes.isEmpty {
            guard cs.isJoint else { return .failure(ConfChangeFailure("cannot leave a joint configuration: not in one")) }
            out.votersOutgoing = []
            out.learners = sortedUnion(out.learners, out.learnersNext)
            out.learnersNext = []
            out.autoLeave = false
            return .success(out)
        }
        if cs.isJoint {
            return .failure(ConfChangeFailure("configuration is joint; leave it before changing membership again"))
        }
        for op in cc.changes {
            switch op {
            case let .addVoter(id), let .addLearner(id), let .removeNode(id):
                if id == .none { return .failure(ConfChangeFailure("node id 0 is reserved")) }
            }
            applyOperation(op, to: &out)
        }
        if out.voters.isEmpty { return .failure(ConfChangeFailure("the change removes every voter")) }
        // Bootstrapping an empty configuration needs no joint phase: there is no old majority to protect.
        let changedVoters = symmetricDifferenceCount(cs.voters, out.voters)
        if cs.voters.isEmpty || (cc.transition == .auto && changedVoters <= 1) {
            return .success(out)
        }
        // Joint: the old voters stay as the outgoing half; learners that were voters wait in learnersNext.
        var joint = cs
        joint.votersOutgoing = cs.voters
        for op in cc.changes { applyOperation(op, to: &joint) }
        joint.autoLeave = cc.transition == .auto
        return .success(joint)
    }

    private static func applyOperation(_ op: ConfChange.Operation, to c: inout ConfState) {
        switch op {
        case let .addVoter(id):
            c.learners.removeAll { $0 == id }
            c.learnersNext.removeAll { $0 == id }
            if !c.voters.contains(id) { c.voters.append(id); c.voters.sort() }
        case let .addLearner(id):
            c.voters.removeAll { $0 == id }
            if c.votersOutgoing.contains(id) {
                if !c.learnersNext.contains(id) { c.learnersNext.append(id); c.learnersNext.sort() }
            } else if !c.learners.contains(id) {
                c.learners.append(id); c.learners.sort()
            }
        case let .removeNode(id):
            c.voters.removeAll { $0 == id }
            c.learners.removeAll { $0 == id }
            c.learnersNext.removeAll { $0 == id }
        }
    }

    private static func symmetricDifferenceCount(_ a: [NodeID], _ b: [NodeID]) -> Int {
        a.filter { !b.contains($0) }.count + b.filter { !a.contains($0) }.count
    }
}
