// Compact, stable text forms of Raft values for traces, logs and transcript tests
// (e.g. `1->2 term=2 Append prev=2/2 commit=2 entries=[3/2 'x']`).

extension Entry: CustomStringConvertible {
    /// `index/term`, then the payload as text (normal entries) or the decoded change (configuration entries).
    public var description: String {
        switch kind {
        case .normal:
            return "\(index)/\(term)" + (data.isEmpty ? "" : " '\(String(decoding: data, as: UTF8.self))'")
        case .confChange:
            let cc = (try? RaftCodec.decodeConfChange(data)).map { c in
                c.changes.isEmpty ? "leave-joint" : c.changes.map { op -> String in
                    switch op {
                    case let .addVoter(n): return "v\(n)"
                    case let .addLearner(n): return "l\(n)"
                    case let .removeNode(n): return "r\(n)"
                    }
                }.joined(separator: " ")
            } ?? "?"
            return "\(index)/\(term) conf(\(cc))"
        }
    }
}

extension ConfState: CustomStringConvertible {
    public var description: String {
        func list(_ ids: [NodeID]) -> String { ids.map(String.init).joined(separator: " ") }
        var s = "voters=(\(list(voters)))"
        if isJoint { s += "&&(\(list(votersOutgoing)))" }
        if !learners.isEmpty { s += " learners=(\(list(learners)))" }
        if !learnersNext.isEmpty { s += " learners_next=(\(list(learnersNext)))" }
        if autoLeave { s += " autoleave" }
        return s
    }
}

extension Message: CustomStringConvertible {
    public var description: String {
        let head = "\(from)->\(to) term=\(term)"
        switch kind {
        case let .preVote(li, lt): return "\(head) PreVote last=\(li)/\(lt)"
        case let .preVoteResponse(g): return "\(head) PreVoteResponse \(g ? "granted" : "rejected")"
        case let .vote(li, lt, t): return "\(head) Vote last=\(li)/\(lt)\(t ? " (transfer)" : "")"
        case let .voteResponse(g): return "\(head) VoteResponse \(g ? "granted" : "rejected")"
        case let .append(pi, pt, es, c):
            return "\(head) Append prev=\(pi)/\(pt) commit=\(c) entries=[\(es.map(\.description).joined(separator: ", "))]"
        case let .appendResponse(s, i, hi, ht):
            return s ? "\(head) AppendResponse ok index=\(i)" : "\(head) AppendResponse reject index=\(i) hint=\(hi)/\(ht)"
        case let .heartbeat(c, r): return "\(head) Heartbeat commit=\(c)" + (r > 0 ? " read-round=\(r)" : "")
        case let .heartbeatResponse(r): return "\(head) HeartbeatResponse" + (r > 0 ? " read-round=\(r)" : "")
        case let .snapshotChunk(meta, off, total, chunk):
            return "\(head) Snapshot \(meta.index)/\(meta.term) bytes \(off)..<\(off + UInt64(chunk.count)) of \(total)"
        case let .snapshotResponse(i, t, r): return "\(head) SnapshotResponse \(i)/\(t) received=\(r)"
        case .timeoutNow: return "\(head) TimeoutNow"
        }
    }
}
