// Durable storage for one Raft node: a write-ahead log of segment files plus snapshot files.
//
// Segment `wal-<seq>.log` = 16-byte header ("MYCW", u16 version, u16 reserved, u64 sequence), then records:
//
//     u32 payload length | u32 CRC-32C over (type, payload) | u8 type | payload
//
// Record types: an entry, a hard state, or a snapshot marker (the log now starts after that snapshot).
// A later entry with an index already in the log replaces that suffix, exactly as Raft overwrote it.
//
// Rules:
// - `save` returns only after fdatasync: nothing is acknowledged before it is durable.
// - A crash can tear only the tail of the newest segment. On open, a record that runs past the end of the
//   file, or the very last record failing its checksum, is a torn write: the file is truncated there.
// - Any other bad record (a checksum failure with data after it, or anything wrong in an older segment) is
//   corruption: opening fails with an error naming the file and the byte offset. Nothing is skipped silently.
// - Snapshots go through `ChecksummedFile` (temporary file, fsync, rename, fsync of the directory) before the
//   log refers to them.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import MyceliumCore
import MyceliumRaft

/// A failure of the write-ahead log, naming the file (and the byte offset where that helps).
public struct WALError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: Equatable, Sendable {
        /// A record in the middle of the log is damaged. Never skipped: the node must not start from it.
        case corruptRecord(reason: String)
        /// The segment header is wrong (not a WAL segment, or a version this build does not know).
        case badSegmentHeader(reason: String)
        /// Records contradict each other (e.g. a gap in entry indexes, or a marker for a missing snapshot).
        case inconsistent(reason: String)
        /// The file system refused an operation.
        case file(FileError)
    }

    public let path: String
    public let offset: Int?
    public let code: Code

    public init(path: String, offset: Int? = nil, _ code: Code) {
        self.path = path
        self.offset = offset
        self.code = code
    }

    public var description: String {
        let at = offset.map { " at byte \($0)" } ?? ""
        switch code {
        case let .corruptRecord(reason):
            return "\(path)\(at): corrupt WAL record: \(reason). The damage is not at the tail, so it is not a torn "
                + "write; refusing to start from this log. Restore the node from a peer (remove its data directory) or a backup."
        case let .badSegmentHeader(reason):
            return "\(path)\(at): not a usable WAL segment: \(reason)"
        case let .inconsistent(reason):
            return "\(path)\(at): inconsistent WAL: \(reason)"
        case let .file(e):
            return e.description
        }
    }
}

/// What `open` found and repaired.
public struct WALRecovery: Sendable, Equatable {
    /// The state to start Raft from.
    public var state: RaftStorageState
    /// If a torn tail was cut off: the segment, the offset it was truncated at and how many bytes went.
    public var truncatedTail: (path: String, offset: Int, bytes: Int)?

    public static func == (a: WALRecovery, b: WALRecovery) -> Bool {
        a.state == b.state && a.truncatedTail?.path == b.truncatedTail?.path
            && a.truncatedTail?.offset == b.truncatedTail?.offset && a.truncatedTail?.bytes == b.truncatedTail?.bytes
    }
}

/// The write-ahead log and snapshot store of one Raft node. Not thread-safe: one owner (the node's shell).
public final class WriteAheadLog {
    static let magic: [UInt8] = Array("MYCW".utf8)
    static let version: UInt16 = 1
    static let headerSize = 16
    static let recordHeaderSize = 9
    static let maxRecordBytes = RaftCodec.maxEntryBytes + 64

    enum RecordType: UInt8 { case entry = 1, hardState = 2, snapshotMarker = 3 }

    struct Segment {
        var sequence: UInt64
        var path: String
        /// Highest entry index written to this segment (0 if none).
        var maxIndex: UInt64
    }

    public let directory: String
    public let segmentBytes: Int
    private var segments: [Segment] = []
    private var fd: Int32 = -1
    private var size = 0
    private var hardState = HardState()
    private var snapshotIndex: UInt64 = 0
    private var lastIndex: UInt64 = 0
    private var latestSnapshot: (index: UInt64, term: UInt64)?

    private init(directory: String, segmentBytes: Int) {
        self.directory = directory
        self.segmentBytes = segmentBytes
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    /// Opens (or creates) the log in `directory`, repairs a torn tail, and returns what it holds.
    public static func open(directory: String, segmentBytes: Int = 64 << 20) throws(WALError) -> (WriteAheadLog, WALRecovery) {
        let wal = WriteAheadLog(directory: directory, segmentBytes: segmentBytes)
        do { try AtomicFile.makeDirectory(directory) } catch { throw WALError(path: directory, .file(error)) }
        let recovery = try wal.load()
        return (wal, recovery)
    }

    // MARK: - Writing

    /// Persists what a `Ready` asks for, then fsyncs; returns only once it is durable. A Ready that
    /// only moves the commit index (`mustSync` false: no entries, no snapshot, same term and vote) is
    /// not written at all: a commit index that lags after a crash is safe (it is learned again from the
    /// leader, and the log is replayed up to it), and skipping it saves an fdatasync on the path of
    /// every commit. Writing it unsynced instead could leave a torn record *before* a later synced one,
    /// which the open-time rules rightly treat as corruption.
    public func save(_ rd: Ready) throws(WALError) {
        if !rd.mustSync && rd.snapshot == nil && rd.entries.isEmpty { return }
        try save(hardState: rd.hardState, entries: rd.entries, snapshot: rd.snapshot)
    }

    public func save(hardState hs: HardState?, entries: [Entry], snapshot: Snapshot? = nil) throws(WALError) {
        var w = ByteWriter(capacity: 64 + entries.reduce(0) { $0 + $1.data.count + 40 })
        if let s = snapshot {
            try writeSnapshotFile(s)
            appendMarker(s.metadata, to: &w)
        }
        var maxIndex: UInt64 = 0
        for e in entries {
            appendRecord(.entry, to: &w) { RaftCodec.write(e, to: &$0) }
            maxIndex = max(maxIndex, e.index)
            lastIndex = e.index
        }
        if let hs {
            appendRecord(.hardState, to: &w) { RaftCodec.write(hs, to: &$0) }
            hardState = hs
        }
        if w.bytes.isEmpty { return }
        try write(w.bytes)
        segments[segments.count - 1].maxIndex = max(segments[segments.count - 1].maxIndex, maxIndex)
        if let s = snapshot { try deleteSnapshots(except: s.metadata) }
        if size >= segmentBytes { try rotate() }
    }

    /// Records a snapshot the shell took of its state machine, then deletes what it makes unnecessary: segments
    /// whose entries are all covered, and older snapshot files.
    public func compact(with snapshot: Snapshot) throws(WALError) {
        try writeSnapshotFile(snapshot)
        var w = ByteWriter(capacity: 64)
        appendMarker(snapshot.metadata, to: &w)
        try write(w.bytes)
        let covered = snapshot.metadata.index
        // The newest segment always stays: it is where the log continues.
        while segments.count > 1 && segments[0].maxIndex <= covered {
            let s = segments.removeFirst()
            if unlink(s.path) != 0 { throw WALError(path: s.path, .file(FileError(path: s.path, .system(operation: "unlink", errno: errno)))) }
        }
        try deleteSnapshots(except: snapshot.metadata)
    }

    /// Older snapshot files are useless once a newer one is durable (the newest is always the one loaded).
    private func deleteSnapshots(except keep: SnapshotMetadata) throws(WALError) {
        var deleted = false
        for old in listFiles(prefix: "snap-", suffix: ".snap") where old < snapshotPath(keep) {
            unlink(directory + "/" + old)
            deleted = true
        }
        if deleted { try sync(directory: true) }
    }

    /// Closes the active segment. Further use is a programming error.
    public func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }


    private func appendMarker(_ m: SnapshotMetadata, to w: inout ByteWriter) {
        appendRecord(.snapshotMarker, to: &w) { $0.u64(m.index); $0.u64(m.term) }
        snapshotIndex = max(snapshotIndex, m.index)
        latestSnapshot = (m.index, m.term)
    }

    private func appendRecord(_ type: RecordType, to w: inout ByteWriter, _ body: (inout ByteWriter) -> Void) {
        let start = w.bytes.count
        w.u32(0)
        w.u32(0)
        w.u8(type.rawValue)
        body(&w)
        let length = w.bytes.count - start - Self.recordHeaderSize
        w.patchU32(UInt32(length), at: start)
        let crc = w.bytes.withUnsafeBytes { CRC32C.update(0, UnsafeRawBufferPointer(rebasing: $0[(start + 8)...])) }
        w.patchU32(crc, at: start + 4)
    }

    private func write(_ bytes: [UInt8]) throws(WALError) {
        precondition(fd >= 0, "WAL in \(directory) used after close")
        let path = segments.last!.path
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + written, $0.count - written, off_t(size + written)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw WALError(path: path, offset: size + written, .file(FileError(path: path, .system(operation: "write", errno: errno))))
            }
            written += n
        }
        size += written
        // fdatasync: the records are durable before anyone is told (Raft's persistence before sending).
        if fdatasync(fd) != 0 {
            throw WALError(path: path, .file(FileError(path: path, .system(operation: "fdatasync", errno: errno))))
        }
    }

    private func rotate() throws(WALError) {
        let next = (segments.last?.sequence ?? 0) + 1
        try createSegment(sequence: next)
        // A new segment starts with the hard state, so older segments can go once their entries are covered.
        var w = ByteWriter(capacity: 48)
        if let (index, term) = latestSnapshot {
            appendRecord(.snapshotMarker, to: &w) { $0.u64(index); $0.u64(term) }
        }
        appendRecord(.hardState, to: &w) { RaftCodec.write(hardState, to: &$0) }
        try write(w.bytes)
    }

    private func createSegment(sequence: UInt64) throws(WALError) {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
        let path = segmentPath(sequence)
        let f = Glibc.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if f < 0 { throw WALError(path: path, .file(FileError(path: path, .system(operation: "create segment", errno: errno)))) }
        fd = f
        var w = ByteWriter(capacity: Self.headerSize)
        w.raw(Self.magic)
        w.u16(Self.version)
        w.u16(0)
        w.u64(sequence)
        segments.append(Segment(sequence: sequence, path: path, maxIndex: 0))
        size = 0
        try write(w.bytes)
        try sync(directory: true)
    }

    private func writeSnapshotFile(_ s: Snapshot) throws(WALError) {
        let path = directory + "/" + snapshotPath(s.metadata)
        do {
            try ChecksummedFile.write(kind: FileKind.raftSnapshot, payload: RaftCodec.encode(s), to: path, mode: 0o600)
        } catch { throw WALError(path: path, .file(error)) }
    }

    private func sync(directory: Bool) throws(WALError) {
        do { try AtomicFile.syncDirectory(self.directory) } catch { throw WALError(path: self.directory, .file(error)) }
    }

    // MARK: - Reading

    private func load() throws(WALError) -> WALRecovery {
        for f in listFiles(prefix: "", suffix: "") where f.contains(".tmp.") { unlink(directory + "/" + f) }
        var state = RaftStorageState()
        if let snap = try loadNewestSnapshot() {
            state.snapshot = snap
            snapshotIndex = snap.metadata.index
            state.hardState.commit = snap.metadata.index
        }
        let names = listFiles(prefix: "wal-", suffix: ".log").sorted()
        var truncated: (path: String, offset: Int, bytes: Int)?
        var expectedNext: UInt64?
        for (n, name) in names.enumerated() {
            let path = directory + "/" + name
            let isLast = n == names.count - 1
            let bytes: [UInt8]
            do { bytes = try AtomicFile.read(path, limit: Int.max) } catch { throw WALError(path: path, .file(error)) }
            guard bytes.count >= Self.headerSize else {
                if isLast {
                    // Crashed while creating the segment: nothing in it was ever acknowledged.
                    unlink(path)
                    truncated = (path, 0, bytes.count)
                    continue
                }
                throw WALError(path: path, offset: 0, .badSegmentHeader(reason: "only \(bytes.count) bytes"))
            }
            let sequence = try parseHeader(bytes, path: path)
            var segment = Segment(sequence: sequence, path: path, maxIndex: 0)
            var offset = Self.headerSize
            while offset < bytes.count {
                switch parseRecord(bytes, at: offset) {
                case let .record(type, payload, end):
                    try replay(type, payload, into: &state, expectedNext: &expectedNext, segment: &segment, path: path, offset: offset)
                    offset = end
                case let .bad(reason, recordEnd):
                    let torn = isLast && (recordEnd == nil || recordEnd! >= bytes.count)
                    guard torn else { throw WALError(path: path, offset: offset, .corruptRecord(reason: reason)) }
                    try truncate(path: path, to: offset)
                    truncated = (path, offset, bytes.count - offset)
                    offset = bytes.count
                    continue
                }
            }
            if isLast { size = min(offset, bytes.count) }
            if let t = truncated, t.path == path { size = t.offset }
            segments.append(segment)
        }
        // What the newest snapshot covers is gone from the log; the rest must continue it. (The snapshot file is
        // written before its marker, so a crash in between leaves a snapshot the log does not mention yet.)
        if let meta = state.snapshot?.metadata {
            if let i = state.entries.firstIndex(where: { $0.index == meta.index }), state.entries[i].term == meta.term {
                state.entries.removeSubrange(...i)
            } else if state.entries.first?.index != meta.index + 1 {
                state.entries.removeAll()
            }
            state.hardState.commit = max(state.hardState.commit, meta.index)
            latestSnapshot = (meta.index, meta.term)
        }
        let snapIndex = state.snapshot?.metadata.index ?? 0
        if let first = state.entries.first, first.index != snapIndex + 1 {
            throw WALError(path: directory, .inconsistent(reason: "the log starts at entry \(first.index) but the snapshot ends at \(snapIndex)"))
        }
        if let last = state.entries.last, state.hardState.commit > last.index {
            throw WALError(path: directory, .inconsistent(reason: "commit index \(state.hardState.commit) beyond the last entry \(last.index)"))
        }
        if state.entries.isEmpty, state.hardState.commit > (state.snapshot?.metadata.index ?? 0) {
            throw WALError(path: directory, .inconsistent(reason: "commit index \(state.hardState.commit) but no entries after the snapshot"))
        }
        hardState = state.hardState
        lastIndex = state.entries.last?.index ?? snapshotIndex
        if let last = segments.last {
            fd = Glibc.open(last.path, O_WRONLY | O_CLOEXEC)
            if fd < 0 { throw WALError(path: last.path, .file(FileError(path: last.path, .system(operation: "open", errno: errno)))) }
        } else {
            try createSegment(sequence: 1)
        }
        return WALRecovery(state: state, truncatedTail: truncated)
    }

    private func parseHeader(_ bytes: [UInt8], path: String) throws(WALError) -> UInt64 {
        var r = ByteReader(bytes)
        do {
            guard try r.raw(4) == Self.magic else { throw WALError(path: path, offset: 0, .badSegmentHeader(reason: "wrong magic")) }
            let v = try r.u16()
            if v != Self.version { throw WALError(path: path, offset: 4, .badSegmentHeader(reason: "unknown version \(v)")) }
            _ = try r.u16()
            return try r.u64()
        } catch let e as WALError {
            throw e
        } catch {
            throw WALError(path: path, offset: 0, .badSegmentHeader(reason: "\(error)"))
        }
    }

    private enum Parsed {
        case record(RecordType, ArraySlice<UInt8>, end: Int)
        /// `recordEnd` is where the record claims to end (nil if even its header is incomplete).
        case bad(String, recordEnd: Int?)
    }

    private func parseRecord(_ bytes: [UInt8], at offset: Int) -> Parsed {
        guard bytes.count - offset >= Self.recordHeaderSize else {
            return .bad("record header truncated (\(bytes.count - offset) of \(Self.recordHeaderSize) bytes)", recordEnd: nil)
        }
        func u32(_ o: Int) -> UInt32 { UInt32(bytes[o]) << 24 | UInt32(bytes[o + 1]) << 16 | UInt32(bytes[o + 2]) << 8 | UInt32(bytes[o + 3]) }
        let length = Int(u32(offset))
        let stored = u32(offset + 4)
        if length > Self.maxRecordBytes {
            // A garbage length is most likely the tail of a torn write; let the caller decide by position.
            return .bad("record length \(length) exceeds the limit \(Self.maxRecordBytes)", recordEnd: nil)
        }
        let end = offset + Self.recordHeaderSize + length
        if end > bytes.count {
            return .bad("record of \(length) bytes runs past the end of the file", recordEnd: end)
        }
        let actual = bytes.withUnsafeBytes { CRC32C.update(0, UnsafeRawBufferPointer(rebasing: $0[(offset + 8)..<end])) }
        if actual != stored {
            return .bad("checksum mismatch (stored \(stored), computed \(actual))", recordEnd: end)
        }
        guard let type = RecordType(rawValue: bytes[offset + 8]) else {
            return .bad("unknown record type \(bytes[offset + 8])", recordEnd: end)
        }
        return .record(type, bytes[(offset + Self.recordHeaderSize)..<end], end: end)
    }

    private func replay(_ type: RecordType, _ payload: ArraySlice<UInt8>, into state: inout RaftStorageState,
                        expectedNext: inout UInt64?, segment: inout Segment, path: String, offset: Int) throws(WALError) {
        var r = ByteReader(Array(payload))
        do {
            switch type {
            case .entry:
                let e = try RaftCodec.readEntry(&r)
                try r.finish()
                segment.maxIndex = max(segment.maxIndex, e.index)
                if let next = expectedNext, e.index > next {
                    throw WALError(path: path, offset: offset, .inconsistent(reason: "entry \(e.index) follows \(next - 1)"))
                }
                // An index already present means Raft overwrote that suffix (§5.3).
                if let i = state.entries.firstIndex(where: { $0.index >= e.index }) { state.entries.removeSubrange(i...) }
                if let last = state.entries.last, last.index + 1 != e.index { state.entries.removeAll() }
                state.entries.append(e)
                expectedNext = e.index + 1
            case .hardState:
                state.hardState = try RaftCodec.readHardState(&r)
                try r.finish()
            case .snapshotMarker:
                let index = try r.u64()
                let term = try r.u64()
                try r.finish()
                let have = state.snapshot?.metadata.index ?? 0
                if index > have {
                    throw WALError(path: path, offset: offset, .inconsistent(reason: "refers to snapshot \(index)/\(term) but the newest snapshot file is at \(have)"))
                }
                // The log now starts after the snapshot. Keep the suffix only if it continues it (Raft §7).
                if let i = state.entries.firstIndex(where: { $0.index == index }), state.entries[i].term == term {
                    state.entries.removeSubrange(...i)
                } else if state.entries.first?.index != index + 1 {
                    state.entries.removeAll()
                }
                expectedNext = (state.entries.last?.index ?? index) + 1
            }
        } catch let e as WALError {
            throw e
        } catch {
            throw WALError(path: path, offset: offset, .corruptRecord(reason: "checksum matches but the record does not decode: \(error)"))
        }
    }

    private func truncate(path: String, to offset: Int) throws(WALError) {
        let f = Glibc.open(path, O_WRONLY | O_CLOEXEC)
        if f < 0 { throw WALError(path: path, .file(FileError(path: path, .system(operation: "open", errno: errno)))) }
        defer { Glibc.close(f) }
        if ftruncate(f, off_t(offset)) != 0 || fsync(f) != 0 {
            throw WALError(path: path, offset: offset, .file(FileError(path: path, .system(operation: "truncate torn tail", errno: errno))))
        }
    }

    private func loadNewestSnapshot() throws(WALError) -> Snapshot? {
        guard let name = listFiles(prefix: "snap-", suffix: ".snap").sorted().last else { return nil }
        let path = directory + "/" + name
        do {
            let payload = try ChecksummedFile.read(kind: FileKind.raftSnapshot, from: path)
            return try RaftCodec.decodeSnapshot(payload)
        } catch let e as FileError {
            throw WALError(path: path, .file(e))
        } catch {
            throw WALError(path: path, .corruptRecord(reason: "snapshot does not decode: \(error)"))
        }
    }

    // MARK: - Names

    private func segmentPath(_ sequence: UInt64) -> String { directory + "/wal-" + hex16(sequence) + ".log" }
    private func snapshotPath(_ m: SnapshotMetadata) -> String { "snap-" + hex16(m.index) + "-" + hex16(m.term) + ".snap" }

    private func listFiles(prefix: String, suffix: String) -> [String] {
        guard let d = opendir(directory) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let ent = readdir(d) {
            let name = withUnsafePointer(to: ent.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name == "." || name == ".." { continue }
            if name.hasPrefix(prefix) && name.hasSuffix(suffix) && !name.contains(".tmp.") { out.append(name) }
            else if prefix.isEmpty && suffix.isEmpty { out.append(name) }
        }
        return out
    }
}

func hex16(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 16 - s.count) + s
}
