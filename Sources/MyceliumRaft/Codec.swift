// Binary encodings of Raft values, built on MyceliumCore's bounds-checked codec. Used for configuration
// entries, the WAL and snapshot files. Every decoder refuses trailing bytes and oversized fields.

import MyceliumCore

/// Encoders and decoders for Raft values (big-endian, versioned by the enclosing file or record format).
public enum RaftCodec {
    /// Limits that bound what a hostile or corrupt input can make a decoder allocate.
    public static let maxEntryBytes = 64 << 20
    public static let maxSnapshotBytes = 1 << 30
    public static let maxMembers = 4096

    public static func encode(_ cc: ConfChange) -> [UInt8] {
        var w = ByteWriter(capacity: 8 + 9 * cc.changes.count)
        w.u8(cc.transition.rawValue)
        w.u16(UInt16(cc.changes.count))
        for op in cc.changes {
            switch op {
            case let .addVoter(id): w.u8(0); w.u64(id)
            case let .addLearner(id): w.u8(1); w.u64(id)
            case let .removeNode(id): w.u8(2); w.u64(id)
            }
        }
        return w.bytes
    }

    public static func decodeConfChange(_ bytes: [UInt8]) throws(DecodeError) -> ConfChange {
        do {
            var r = ByteReader(bytes)
            let t = try r.u8()
            guard let transition = ConfChange.Transition(rawValue: t) else {
                throw DecodeError(.invalid(field: "conf change transition", reason: "unknown value \(t)"), at: 0)
            }
            let n = try r.count("conf change operations", limit: maxMembers)
            var ops: [ConfChange.Operation] = []
            for _ in 0..<n {
                let at = r.offset
                let tag = try r.u8()
                let id = try r.u64()
                switch tag {
                case 0: ops.append(.addVoter(id))
                case 1: ops.append(.addLearner(id))
                case 2: ops.append(.removeNode(id))
                default: throw DecodeError(.invalid(field: "conf change operation", reason: "unknown tag \(tag)"), at: at)
                }
            }
            try r.finish()
            return ConfChange(ops, transition: transition)
        } catch let e as DecodeError { throw e } catch { throw DecodeError(.invalid(field: "conf change", reason: "\(error)"), at: 0) }
    }

    public static func write(_ e: Entry, to w: inout ByteWriter) {
        w.u64(e.term)
        w.u64(e.index)
        w.u8(e.kind.rawValue)
        w.blob(e.data)
    }

    public static func readEntry(_ r: inout ByteReader) throws -> Entry {
        let term = try r.u64()
        let index = try r.u64()
        let at = r.offset
        let k = try r.u8()
        guard let kind = Entry.Kind(rawValue: k) else {
            throw DecodeError(.invalid(field: "entry kind", reason: "unknown value \(k)"), at: at)
        }
        let data = try r.blob("entry data", limit: maxEntryBytes)
        return Entry(term: term, index: index, kind: kind, data: data)
    }

    public static func write(_ hs: HardState, to w: inout ByteWriter) {
        w.u64(hs.term)
        w.u64(hs.vote)
        w.u64(hs.commit)
    }

    public static func readHardState(_ r: inout ByteReader) throws -> HardState {
        HardState(term: try r.u64(), vote: try r.u64(), commit: try r.u64())
    }

    public static func write(_ c: ConfState, to w: inout ByteWriter) {
        for set in [c.voters, c.votersOutgoing, c.learners, c.learnersNext] {
            w.u16(UInt16(set.count))
            for id in set { w.u64(id) }
        }
        w.bool(c.autoLeave)
    }

    public static func readConfState(_ r: inout ByteReader) throws -> ConfState {
        var sets: [[NodeID]] = []
        for name in ["voters", "outgoing voters", "learners", "next learners"] {
            let n = try r.count(name, limit: maxMembers)
            var ids: [NodeID] = []
            for _ in 0..<n { ids.append(try r.u64()) }
            sets.append(ids)
        }
        return ConfState(voters: sets[0], votersOutgoing: sets[1], learners: sets[2], learnersNext: sets[3],
                         autoLeave: try r.bool("auto leave"))
    }

    public static func write(_ m: SnapshotMetadata, to w: inout ByteWriter) {
        w.u64(m.index)
        w.u64(m.term)
        write(m.confState, to: &w)
    }

    public static func readSnapshotMetadata(_ r: inout ByteReader) throws -> SnapshotMetadata {
        let index = try r.u64()
        let term = try r.u64()
        return SnapshotMetadata(index: index, term: term, confState: try readConfState(&r))
    }

    /// A whole snapshot: metadata, then the state-machine data.
    public static func encode(_ s: Snapshot) -> [UInt8] {
        var w = ByteWriter(capacity: 64 + s.data.count)
        write(s.metadata, to: &w)
        w.blob(s.data)
        return w.bytes
    }

    public static func decodeSnapshot(_ bytes: [UInt8]) throws(DecodeError) -> Snapshot {
        do {
            var r = ByteReader(bytes)
            let meta = try readSnapshotMetadata(&r)
            let data = try r.blob("snapshot data", limit: maxSnapshotBytes)
            try r.finish()
            return Snapshot(metadata: meta, data: data)
        } catch let e as DecodeError { throw e } catch { throw DecodeError(.invalid(field: "snapshot", reason: "\(error)"), at: 0) }
    }
}
