// Safety checkers run after every simulation step (Raft Figure 3's properties, checked on live node state).

import MyceliumRaft

/// Watches a cluster and reports the first broken Raft safety property.
public struct RaftInvariants: Sendable {
    private struct EntryID: Hashable { var index: UInt64; var term: UInt64 }
    private struct Seen: Equatable { var data: [UInt8]; var kind: Entry.Kind; var prevTerm: UInt64? }

    /// Leader of each term observed so far (Election Safety).
    private var leaderOfTerm: [UInt64: NodeID] = [:]
    /// Every entry any node has reported committed, by index (State Machine Safety).
    public private(set) var committed: [UInt64: Entry] = [:]
    /// Content and predecessor term of every (index, term) observed (Log Matching).
    private var seen: [EntryID: Seen] = [:]
    private var checkedCommit: [NodeID: UInt64] = [:]
    private var maxDurableCommit: [NodeID: UInt64] = [:]
    public private(set) var leadersElected = 0
    public private(set) var maxCommitted: UInt64 = 0

    public init() {}

    /// Checks one node's current state. Call after every step that touched it.
    public mutating func check(_ r: Raft) -> String? {
        // Election Safety (§5.2): at most one leader per term.
        if r.role == .leader {
            if let other = leaderOfTerm[r.term] {
                if other != r.id { return "election safety: nodes \(other) and \(r.id) are both leader of term \(r.term)" }
            } else {
                leaderOfTerm[r.term] = r.id
                leadersElected += 1
                // Leader Completeness (§5.4): the new leader holds every entry committed so far.
                for i in stride(from: r.firstIndex, through: maxCommitted, by: 1) {
                    guard let c = committed[i] else { continue }
                    guard let e = r.entry(at: i) else {
                        return "leader completeness: leader \(r.id) of term \(r.term) lacks committed entry \(i)/\(c.term) (its last index is \(r.lastIndex))"
                    }
                    if e != c {
                        return "leader completeness: leader \(r.id) of term \(r.term) has \(i)/\(e.term) where \(i)/\(c.term) was committed"
                    }
                }
            }
        }
        // State Machine Safety (§5.4.3): no two nodes commit different entries at one index.
        var from = (checkedCommit[r.id] ?? 0) + 1
        if from < r.firstIndex { from = r.firstIndex }
        if from <= r.commitIndex {
            for i in from...r.commitIndex {
                guard let e = r.entry(at: i) else { return "node \(r.id): committed entry \(i) missing from its log" }
                if let c = committed[i] {
                    if c != e {
                        return "state machine safety: node \(r.id) committed \(i)/\(e.term) but \(i)/\(c.term) was committed before"
                    }
                } else {
                    committed[i] = e
                    maxCommitted = max(maxCommitted, i)
                    if let v = noteSeen(e, in: r) { return v }
                }
            }
        }
        checkedCommit[r.id] = max(checkedCommit[r.id] ?? 0, r.commitIndex)
        // Log Matching (§5.3) on the uncommitted tail; the committed prefix equals `committed` above.
        if r.commitIndex < r.lastIndex {
            for i in (r.commitIndex + 1)...r.lastIndex {
                if let v = noteSeen(r.entry(at: i)!, in: r) { return v }
            }
        }
        return nil
    }

    private mutating func noteSeen(_ e: Entry, in r: Raft) -> String? {
        let prev = e.index > 1 ? r.term(at: e.index - 1) : 0
        let id = EntryID(index: e.index, term: e.term)
        if let s = seen[id] {
            if s.data != e.data || s.kind != e.kind {
                return "log matching: two different entries \(e.index)/\(e.term) (node \(r.id))"
            }
            if let p = prev, let q = s.prevTerm, p != q {
                return "log matching: entry \(e.index)/\(e.term) follows term \(p) on node \(r.id) but term \(q) elsewhere"
            }
            if s.prevTerm == nil && prev != nil { seen[id]!.prevTerm = prev }
        } else {
            seen[id] = Seen(data: e.data, kind: e.kind, prevTerm: prev)
        }
        return nil
    }

    /// A node applied `e`: it must be the committed entry at that index.
    public func checkApplied(_ e: Entry, node: NodeID) -> String? {
        if let c = committed[e.index], c != e {
            return "state machine safety: node \(node) applied \(e.index)/\(e.term) but \(e.index)/\(c.term) is committed"
        }
        return nil
    }

    /// A node's durable commit index must never go backwards, across restarts too.
    public mutating func checkDurableCommit(_ commit: UInt64, node: NodeID) -> String? {
        if commit < maxDurableCommit[node] ?? 0 {
            return "durability: node \(node)'s durable commit index went back from \(maxDurableCommit[node]!) to \(commit)"
        }
        maxDurableCommit[node] = commit
        return nil
    }

    /// After a restart the node must start at or above its last durable commit index.
    public mutating func checkRestart(_ r: Raft) -> String? {
        checkedCommit[r.id] = 0
        if r.commitIndex < maxDurableCommit[r.id] ?? 0 {
            return "durability: node \(r.id) restarted with commit index \(r.commitIndex), below its durable \(maxDurableCommit[r.id]!)"
        }
        return nil
    }
}
