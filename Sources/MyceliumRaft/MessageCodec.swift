// The wire form of Raft messages, for the transport: a version byte, the header, then a tag and the fields of
// the message kind. Decoding is bounds-checked and refuses unknown tags, oversized fields and trailing bytes,
// so a hostile peer can make it throw but never crash or over-allocate.

import MyceliumCore

extension RaftCodec {
    /// Version of the message encoding.
    public static let messageVersion: UInt8 = 1
    /// Most entries one append may carry.
    public static let maxEntriesPerMessage = 65_535

    public static func encode(_ m: Message) -> [UInt8] {
        var w = ByteWriter(capacity: m.byteSize + 16)
        w.u8(messageVersion)
        w.u64(m.from)
        w.u64(m.to)
        w.u64(m.term)
        switch m.kind {
        case let .preVote(li, lt): w.u8(1); w.u64(li); w.u64(lt)
        case let .preVoteResponse(g): w.u8(2); w.bool(g)
        case let .vote(li, lt, t): w.u8(3); w.u64(li); w.u64(lt); w.bool(t)
        case let .voteResponse(g): w.u8(4); w.bool(g)
        case let .append(pi, pt, es, c):
            precondition(es.count <= maxEntriesPerMessage, "raft codec: \(es.count) entries in one message")
            w.u8(5); w.u64(pi); w.u64(pt); w.u64(c)
            w.u16(UInt16(es.count))
            for e in es { write(e, to: &w) }
        case let .appendResponse(s, i, hi, ht): w.u8(6); w.bool(s); w.u64(i); w.u64(hi); w.u64(ht)
        case let .heartbeat(c, r): w.u8(7); w.u64(c); w.u64(r)
        case let .heartbeatResponse(r): w.u8(8); w.u64(r)
        case let .snapshotChunk(meta, off, total, chunk):
            w.u8(9); write(meta, to: &w); w.u64(off); w.u64(total); w.blob(chunk)
        case let .snapshotResponse(i, t, r): w.u8(10); w.u64(i); w.u64(t); w.u64(r)
        case .timeoutNow: w.u8(11)
        }
        return w.bytes
    }

    public static func decodeMessage(_ bytes: [UInt8]) throws(DecodeError) -> Message {
        do {
            var r = ByteReader(bytes)
            let v = try r.u8()
            if v != messageVersion { throw DecodeError(.unknownVersion(field: "raft message", value: UInt64(v)), at: 0) }
            let from = try r.u64(), to = try r.u64(), term = try r.u64()
            let at = r.offset
            let kind: Message.Kind
            switch try r.u8() {
            case 1: kind = .preVote(lastIndex: try r.u64(), lastTerm: try r.u64())
            case 2: kind = .preVoteResponse(granted: try r.bool("granted"))
            case 3: kind = .vote(lastIndex: try r.u64(), lastTerm: try r.u64(), transfer: try r.bool("transfer"))
            case 4: kind = .voteResponse(granted: try r.bool("granted"))
            case 5:
                let pi = try r.u64(), pt = try r.u64(), c = try r.u64()
                let n = try r.count("entries", limit: maxEntriesPerMessage)
                var es: [Entry] = []
                es.reserveCapacity(min(n, 1024))
                for _ in 0..<n { es.append(try readEntry(&r)) }
                kind = .append(prevIndex: pi, prevTerm: pt, entries: es, commit: c)
            case 6:
                kind = .appendResponse(success: try r.bool("success"), index: try r.u64(), hintIndex: try r.u64(), hintTerm: try r.u64())
            case 7: kind = .heartbeat(commit: try r.u64(), readRound: try r.u64())
            case 8: kind = .heartbeatResponse(readRound: try r.u64())
            case 9:
                let meta = try readSnapshotMetadata(&r)
                let off = try r.u64(), total = try r.u64()
                kind = .snapshotChunk(metadata: meta, offset: off, totalSize: total, chunk: try r.blob("snapshot chunk", limit: maxEntryBytes))
            case 10: kind = .snapshotResponse(index: try r.u64(), term: try r.u64(), receivedBytes: try r.u64())
            case 11: kind = .timeoutNow
            case let tag: throw DecodeError(.invalid(field: "raft message kind", reason: "unknown tag \(tag)"), at: at)
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
