// Raft messages on the wire between agents. The simulator passes `Message` values directly; real
// agents carry them in frames over authenticated channels, so each needs a bounded encoding.

import MyceliumCore
import MyceliumRaft

public enum RaftWire {
    /// Entries per append, bounded so one frame stays under the channel's maximum.
    static let maxEntries = 65_536
    static let maxChunk = 4 << 20

    public static func encode(_ m: Message) -> [UInt8] {
        var w = ByteWriter(capacity: 64)
        w.u64(m.from); w.u64(m.to); w.u64(m.term)
        switch m.kind {
        case let .preVote(li, lt): w.u8(1); w.u64(li); w.u64(lt)
        case let .preVoteResponse(g): w.u8(2); w.bool(g)
        case let .vote(li, lt, transfer): w.u8(3); w.u64(li); w.u64(lt); w.bool(transfer)
        case let .voteResponse(g): w.u8(4); w.bool(g)
        case let .append(pi, pt, entries, commit):
            w.u8(5); w.u64(pi); w.u64(pt); w.u64(commit)
            w.u32(UInt32(entries.count))
            for e in entries { RaftCodec.write(e, to: &w) }
        case let .appendResponse(s, i, hi, ht): w.u8(6); w.bool(s); w.u64(i); w.u64(hi); w.u64(ht)
        case let .heartbeat(c, rr): w.u8(7); w.u64(c); w.u64(rr)
        case let .heartbeatResponse(rr): w.u8(8); w.u64(rr)
        case let .snapshotChunk(meta, off, total, chunk):
            w.u8(9); RaftCodec.write(meta, to: &w); w.u64(off); w.u64(total); w.blob(chunk)
        case let .snapshotResponse(i, t, rb): w.u8(10); w.u64(i); w.u64(t); w.u64(rb)
        case .timeoutNow: w.u8(11)
        }
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws(DecodeError) -> Message {
        do {
            var r = ByteReader(bytes)
            let from = try r.u64(), to = try r.u64(), term = try r.u64()
            let at = r.offset
            let kind: Message.Kind
            switch try r.u8() {
            case 1: kind = .preVote(lastIndex: try r.u64(), lastTerm: try r.u64())
            case 2: kind = .preVoteResponse(granted: try r.bool())
            case 3: kind = .vote(lastIndex: try r.u64(), lastTerm: try r.u64(), transfer: try r.bool())
            case 4: kind = .voteResponse(granted: try r.bool())
            case 5:
                let pi = try r.u64(), pt = try r.u64(), commit = try r.u64()
                let n = Int(try r.u32())
                if n > maxEntries { throw DecodeError(.tooLong(field: "entries", length: n, limit: maxEntries), at: r.offset - 4) }
                var entries: [Entry] = []
                entries.reserveCapacity(min(n, 1024))
                for _ in 0..<n { entries.append(try RaftCodec.readEntry(&r)) }
                kind = .append(prevIndex: pi, prevTerm: pt, entries: entries, commit: commit)
            case 6: kind = .appendResponse(success: try r.bool(), index: try r.u64(), hintIndex: try r.u64(), hintTerm: try r.u64())
            case 7: kind = .heartbeat(commit: try r.u64(), readRound: try r.u64())
            case 8: kind = .heartbeatResponse(readRound: try r.u64())
            case 9:
                let meta = try RaftCodec.readSnapshotMetadata(&r)
                kind = .snapshotChunk(metadata: meta, offset: try r.u64(), totalSize: try r.u64(), chunk: try r.blob("chunk", limit: maxChunk))
            case 10: kind = .snapshotResponse(index: try r.u64(), term: try r.u64(), receivedBytes: try r.u64())
            case 11: kind = .timeoutNow
            case let t: throw DecodeError(.invalid(field: "raft message", reason: "unknown kind \(t)"), at: at)
            }
            try r.finish()
            return Message(from: from, to: to, term: term, kind: kind)
        } catch let e as DecodeError {
            throw e
        } catch {
            throw DecodeError(.invalid(field: "raft message", reason: "\(error)"), at: 0)
        }
    }
}
