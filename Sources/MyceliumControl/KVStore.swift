// The replicated key-value store of the control plane, with etcd's semantics for Put, Range and
// DeleteRange: byte keys and values, a store revision that starts at 1 and rises by one for every
// operation that changes something, and per-key create/mod revisions and versions (mvccpb.KeyValue).
//
// It is a pure value: Raft carries `KVBatch` bytes, every replica calls `apply` on the same batches
// in the same order and reaches the same store and the same snapshot bytes. No history is kept
// (every older revision counts as compacted), so reads are always at the current revision.

import MyceliumCore

/// The bounds every replica enforces identically. They are part of the replicated state's contract:
/// all members of one group must use the same limits, or their refusals (and so their stores) differ.
public struct KVLimits: Sendable, Equatable {
    public var maxKeyBytes: Int
    public var maxValueBytes: Int
    public var maxKeys: Int
    public var maxBatchOperations: Int

    public init(maxKeyBytes: Int = 1024, maxValueBytes: Int = 64 * 1024, maxKeys: Int = 1_000_000, maxBatchOperations: Int = 4096) {
        self.maxKeyBytes = maxKeyBytes
        self.maxValueBytes = maxValueBytes
        self.maxKeys = maxKeys
        self.maxBatchOperations = maxBatchOperations
    }

    public static let standard = KVLimits()
}

/// One key with its metadata, as etcd's `mvccpb.KeyValue` (without leases, which this store has not).
public struct KeyValue: Sendable, Equatable {
    public var key: [UInt8]
    public var value: [UInt8]
    /// The revision of the put that created the key (since its last deletion).
    public var createRevision: Int64
    /// The revision of the last put to the key.
    public var modRevision: Int64
    /// 1 after creation, +1 on each put; a delete resets it (the next put starts at 1 again).
    public var version: Int64

    public init(key: [UInt8], value: [UInt8], createRevision: Int64, modRevision: Int64, version: Int64) {
        self.key = key
        self.value = value
        self.createRevision = createRevision
        self.modRevision = modRevision
        self.version = version
    }
}

/// One write, as proposed through Raft.
public enum KVOperation: Sendable, Equatable {
    case put(key: [UInt8], value: [UInt8], prevKV: Bool)
    /// `rangeEnd` follows etcd: empty = only `key`; `[0]` = every key ≥ `key`; else `[key, rangeEnd)`.
    case deleteRange(key: [UInt8], rangeEnd: [UInt8], prevKV: Bool)
}

/// What one operation did, in the order of the batch.
public enum KVResult: Sendable, Equatable {
    /// `revision` is the store revision after the put (the put's own revision).
    case put(revision: Int64, prevKV: KeyValue?)
    /// `revision` is the store revision after the delete (unchanged when nothing was deleted).
    case deleteRange(revision: Int64, deleted: Int64, prevKVs: [KeyValue])
    /// Refused on every replica alike; the store is unchanged by this operation.
    case refused(KVError, revision: Int64)

    /// The store revision after this operation: the response header's revision.
    public var revision: Int64 {
        switch self {
        case let .put(r, _), let .deleteRange(r, _, _), let .refused(_, r): return r
        }
    }
}

/// The answer to a range read.
public struct KVRangeResult: Sendable, Equatable {
    /// The store revision the read saw.
    public var revision: Int64
    /// The matching keys in byte order, cut at `limit`; empty when `countOnly`.
    public var kvs: [KeyValue]
    /// How many keys match in total, whatever the limit.
    public var count: Int64
    /// True when `limit` left matching keys out.
    public var more: Bool

    public init(revision: Int64, kvs: [KeyValue], count: Int64, more: Bool) {
        self.revision = revision
        self.kvs = kvs
        self.count = count
        self.more = more
    }
}

/// A list of writes that Raft carries as one entry.
public struct KVBatch: Sendable, Equatable {
    public var operations: [KVOperation]

    public init(_ operations: [KVOperation]) { self.operations = operations }

    static let formatVersion: UInt8 = 1
    static let putTag: UInt8 = 1
    static let deleteRangeTag: UInt8 = 2

    /// `u8 version(1) | u32 count | op*`; op = `u8 tag | blob key | blob value-or-rangeEnd | bool prevKV`.
    public func encoded() -> [UInt8] {
        var size = 5
        for op in operations {
            switch op {
            case let .put(k, v, _): size += 10 + k.count + v.count
            case let .deleteRange(k, e, _): size += 10 + k.count + e.count
            }
        }
        var w = ByteWriter(capacity: size)
        w.u8(Self.formatVersion)
        w.u32(UInt32(operations.count))
        for op in operations {
            switch op {
            case let .put(key, value, prevKV):
                w.u8(Self.putTag); w.blob(key); w.blob(value); w.bool(prevKV)
            case let .deleteRange(key, rangeEnd, prevKV):
                w.u8(Self.deleteRangeTag); w.blob(key); w.blob(rangeEnd); w.bool(prevKV)
            }
        }
        return w.bytes
    }

    /// Decodes a batch from a Raft entry. Lengths and the operation count are checked against
    /// `limits` before anything is read or allocated; unknown versions and tags are refused.
    /// Semantic checks (empty key, store full) are left to `apply`, which refuses per operation.
    public init(decoding bytes: [UInt8], limits: KVLimits = .standard) throws(KVError) {
        do {
            var r = ByteReader(bytes)
            let version = try r.u8()
            guard version == Self.formatVersion else {
                throw DecodeError(.unknownVersion(field: "kv batch format", value: UInt64(version)), at: 0)
            }
            let countAt = r.offset
            let n = Int(try r.u32())
            guard n <= limits.maxBatchOperations else {
                throw DecodeError(.tooLong(field: "kv batch operations", length: n, limit: limits.maxBatchOperations), at: countAt)
            }
            // Each operation takes at least 10 bytes, so a lying count cannot reserve much.
            var ops: [KVOperation] = []
            ops.reserveCapacity(min(n, r.remaining / 10))
            for _ in 0..<n {
                let tagAt = r.offset
                switch try r.u8() {
                case Self.putTag:
                    let key = try r.blob("key", limit: limits.maxKeyBytes)
                    let value = try r.blob("value", limit: limits.maxValueBytes)
                    ops.append(.put(key: key, value: value, prevKV: try r.bool("prev_kv")))
                case Self.deleteRangeTag:
                    let key = try r.blob("key", limit: limits.maxKeyBytes)
                    let end = try r.blob("range_end", limit: limits.maxKeyBytes)
                    ops.append(.deleteRange(key: key, rangeEnd: end, prevKV: try r.bool("prev_kv")))
                case let tag:
                    throw DecodeError(.unknownVersion(field: "kv operation tag", value: UInt64(tag)), at: tagAt)
                }
            }
            try r.finish()
            operations = ops
        } catch let e as DecodeError {
            throw KVError(.malformedBatch(e))
        } catch {
            throw KVError(.malformedBatch(DecodeError(.invalid(field: "kv batch", reason: "\(error)"), at: 0)))
        }
    }
}

/// The store. Keys are kept both in a dictionary (point lookups) and in a sorted array (range scans
/// in O(log n + k)); the two always hold the same key set.
public struct KVStore: Sendable, Equatable {
    struct Entry: Sendable, Equatable {
        var value: [UInt8]
        var createRevision: Int64
        var modRevision: Int64
        var version: Int64
    }

    /// The store revision: 1 when empty and new (as etcd), +1 for each operation that changed something.
    public private(set) var revision: Int64 = 1
    public let limits: KVLimits
    private var sortedKeys: [[UInt8]] = []
    private var entries: [[UInt8]: Entry] = [:]

    public init(limits: KVLimits = .standard) { self.limits = limits }

    /// How many keys the store holds.
    public var count: Int { sortedKeys.count }

    /// The key's current value and metadata, if it exists.
    public subscript(key: [UInt8]) -> KeyValue? {
        entries[key].map { keyValue(key, $0) }
    }

    // MARK: writes

    /// Refuses an operation the store would refuse, so the leader can answer before proposing it.
    /// `apply` refuses the same things deterministically, since the store may change in between.
    public func validate(_ op: KVOperation) throws(KVError) {
        if let e = refusal(of: op) { throw e }
    }

    /// Refuses a batch the followers would not decode, and any operation `validate` refuses.
    public func validate(_ batch: KVBatch) throws(KVError) {
        guard batch.operations.count <= limits.maxBatchOperations else {
            throw KVError(.tooManyOperations(count: batch.operations.count, limit: limits.maxBatchOperations))
        }
        for op in batch.operations { try validate(op) }
    }

    /// Applies every operation in order and returns one result per operation.
    public mutating func apply(_ batch: KVBatch) -> [KVResult] {
        var results: [KVResult] = []
        results.reserveCapacity(batch.operations.count)
        for op in batch.operations { results.append(apply(op)) }
        return results
    }

    /// Applies one operation.
    public mutating func apply(_ op: KVOperation) -> KVResult {
        if let e = refusal(of: op) { return .refused(e, revision: revision) }
        switch op {
        case let .put(key, value, prevKV):
            let rev = revision + 1
            var previous: KeyValue?
            if var e = entries[key] {
                if prevKV { previous = keyValue(key, e) }
                e.value = value
                e.modRevision = rev
                e.version += 1
                entries[key] = e
            } else {
                sortedKeys.insert(key, at: lowerBound(key))
                entries[key] = Entry(value: value, createRevision: rev, modRevision: rev, version: 1)
            }
            revision = rev
            return .put(revision: rev, prevKV: previous)

        case let .deleteRange(key, rangeEnd, prevKV):
            let span = matching(key: key, rangeEnd: rangeEnd)
            // etcd does not bump the revision for a delete that removed nothing.
            guard !span.isEmpty else { return .deleteRange(revision: revision, deleted: 0, prevKVs: []) }
            var previous: [KeyValue] = []
            if prevKV { previous.reserveCapacity(span.count) }
            for i in span {
                let k = sortedKeys[i]
                if let e = entries.removeValue(forKey: k), prevKV { previous.append(keyValue(k, e)) }
            }
            sortedKeys.removeSubrange(span)
            revision += 1
            return .deleteRange(revision: revision, deleted: Int64(span.count), prevKVs: previous)
        }
    }

    private func refusal(of op: KVOperation) -> KVError? {
        switch op {
        case let .put(key, value, _):
            if let e = checkKey(key) { return e }
            if value.count > limits.maxValueBytes {
                return KVError(.valueTooLarge(length: value.count, limit: limits.maxValueBytes))
            }
            if entries[key] == nil && sortedKeys.count >= limits.maxKeys {
                return KVError(.storeFull(limit: limits.maxKeys))
            }
            if revision >= KVStore.maxRevision { return KVError(.revisionExhausted) }
        case let .deleteRange(key, rangeEnd, _):
            if let e = checkKey(key) { return e }
            if rangeEnd.count > limits.maxKeyBytes {
                return KVError(.keyTooLong(field: "range_end", length: rangeEnd.count, limit: limits.maxKeyBytes))
            }
            if revision >= KVStore.maxRevision { return KVError(.revisionExhausted) }
        }
        return nil
    }

    private func checkKey(_ key: [UInt8]) -> KVError? {
        if key.isEmpty { return KVError(.keyNotProvided) }
        if key.count > limits.maxKeyBytes { return KVError(.keyTooLong(field: "key", length: key.count, limit: limits.maxKeyBytes)) }
        return nil
    }

    /// Far beyond any real workload (one write per nanosecond for 146 years), and it keeps `+ 1`
    /// from trapping on a store restored from a hostile snapshot.
    static let maxRevision: Int64 = 1 << 62

    // MARK: reads

    /// A range read with etcd's rules: empty `rangeEnd` = the single key; `rangeEnd == [0]` = every
    /// key ≥ `key` (so `key == [0], rangeEnd == [0]` is every key); otherwise `[key, rangeEnd)` in
    /// byte order. `limit` ≤ 0 means no limit. The caller refuses an empty key (`validateRange`).
    public func range(key: [UInt8], rangeEnd: [UInt8], limit: Int = 0, countOnly: Bool = false, keysOnly: Bool = false) -> KVRangeResult {
        let span = matching(key: key, rangeEnd: rangeEnd)
        let total = Int64(span.count)
        if countOnly { return KVRangeResult(revision: revision, kvs: [], count: total, more: false) }
        let taken = limit > 0 && limit < span.count ? span.lowerBound..<(span.lowerBound + limit) : span
        var kvs: [KeyValue] = []
        kvs.reserveCapacity(taken.count)
        for i in taken {
            let k = sortedKeys[i]
            guard let e = entries[k] else { continue }
            var kv = keyValue(k, e)
            if keysOnly { kv.value = [] }
            kvs.append(kv)
        }
        return KVRangeResult(revision: revision, kvs: kvs, count: total, more: taken.count < span.count)
    }

    /// Refuses a range read etcd would refuse.
    public func validateRange(key: [UInt8], rangeEnd: [UInt8]) throws(KVError) {
        if let e = checkKey(key) { throw e }
        if rangeEnd.count > limits.maxKeyBytes {
            throw KVError(.keyTooLong(field: "range_end", length: rangeEnd.count, limit: limits.maxKeyBytes))
        }
    }

    /// Positions in `sortedKeys` that a key/range_end pair selects.
    private func matching(key: [UInt8], rangeEnd: [UInt8]) -> Range<Int> {
        let lo = lowerBound(key)
        if rangeEnd.isEmpty {
            return lo < sortedKeys.count && sortedKeys[lo] == key ? lo..<(lo + 1) : lo..<lo
        }
        if rangeEnd == [0] { return lo..<sortedKeys.count }
        let hi = lowerBound(rangeEnd)
        return hi > lo ? lo..<hi : lo..<lo
    }

    /// The first position whose key is not below `key`.
    private func lowerBound(_ key: [UInt8]) -> Int {
        var lo = 0, hi = sortedKeys.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if bytesLess(sortedKeys[mid], key) { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    private func keyValue(_ key: [UInt8], _ e: Entry) -> KeyValue {
        KeyValue(key: key, value: e.value, createRevision: e.createRevision, modRevision: e.modRevision, version: e.version)
    }

    // MARK: snapshot

    static let snapshotMagic: [UInt8] = Array("MYKV".utf8)
    static let snapshotVersion: UInt8 = 1

    /// `"MYKV" | u8 version(1) | i64 revision | u32 count | (blob key | blob value | i64 create | i64 mod | i64 version)*`
    /// with keys in byte order, so equal stores give identical bytes.
    public func encodedSnapshot() -> [UInt8] {
        var size = 17
        for k in sortedKeys { size += 32 + k.count + (entries[k]?.value.count ?? 0) }
        var w = ByteWriter(capacity: size)
        w.raw(Self.snapshotMagic)
        w.u8(Self.snapshotVersion)
        w.i64(revision)
        w.u32(UInt32(sortedKeys.count))
        for k in sortedKeys {
            guard let e = entries[k] else { continue }
            w.blob(k); w.blob(e.value)
            w.i64(e.createRevision); w.i64(e.modRevision); w.i64(e.version)
        }
        return w.bytes
    }

    /// Restores a store from `encodedSnapshot()` bytes. Refuses anything malformed, truncated,
    /// out of bounds, unsorted, duplicated or with metadata no sequence of writes could produce.
    public init(snapshot bytes: [UInt8], limits: KVLimits = .standard) throws(KVError) {
        self.limits = limits
        do {
            var r = ByteReader(bytes)
            guard try r.raw(4) == Self.snapshotMagic else { throw DecodeError(.badMagic, at: 0) }
            let version = try r.u8()
            guard version == Self.snapshotVersion else {
                throw DecodeError(.unknownVersion(field: "kv snapshot format", value: UInt64(version)), at: 4)
            }
            let rev = try r.i64()
            guard rev >= 1 && rev <= Self.maxRevision else {
                throw DecodeError(.invalid(field: "revision", reason: "\(rev) is outside 1...\(Self.maxRevision)"), at: 5)
            }
            let countAt = r.offset
            let n = Int(try r.u32())
            guard n <= limits.maxKeys else {
                throw DecodeError(.tooLong(field: "kv keys", length: n, limit: limits.maxKeys), at: countAt)
            }
            // A store of n keys needs at least n revisions after the initial one.
            guard Int64(n) <= rev - 1 else {
                throw DecodeError(.invalid(field: "kv keys", reason: "\(n) keys cannot exist at revision \(rev)"), at: countAt)
            }
            // Each entry takes at least 33 bytes, so a lying count cannot reserve much.
            var keys: [[UInt8]] = []
            keys.reserveCapacity(min(n, r.remaining / 33))
            var table: [[UInt8]: Entry] = [:]
            table.reserveCapacity(min(n, r.remaining / 33))
            for _ in 0..<n {
                let at = r.offset
                let key = try r.blob("key", limit: limits.maxKeyBytes)
                guard !key.isEmpty else { throw DecodeError(.invalid(field: "key", reason: "empty"), at: at) }
                if let last = keys.last, !bytesLess(last, key) {
                    throw DecodeError(.invalid(field: "key", reason: "not after the previous key (unsorted or duplicated)"), at: at)
                }
                let value = try r.blob("value", limit: limits.maxValueBytes)
                let create = try r.i64(), mod = try r.i64(), ver = try r.i64()
                // Revision 1 is the empty store, so every write has a revision in 2...rev; each
                // version step takes its own revision.
                guard create >= 2, create <= mod, mod <= rev, ver >= 1, ver <= mod - create + 1 else {
                    throw DecodeError(.invalid(field: "key metadata",
                                               reason: "create \(create), mod \(mod), version \(ver) impossible at revision \(rev)"), at: at)
                }
                keys.append(key)
                table[key] = Entry(value: value, createRevision: create, modRevision: mod, version: ver)
            }
            try r.finish()
            revision = rev
            sortedKeys = keys
            entries = table
        } catch let e as DecodeError {
            throw KVError(.malformedSnapshot(e))
        } catch {
            throw KVError(.malformedSnapshot(DecodeError(.invalid(field: "kv snapshot", reason: "\(error)"), at: 0)))
        }
    }
}

/// Byte order of keys, as etcd compares them (bytes.Compare).
@inline(__always) func bytesLess(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    let n = min(a.count, b.count)
    var i = 0
    while i < n {
        if a[i] != b[i] { return a[i] < b[i] }
        i += 1
    }
    return a.count < b.count
}

/// Why the KV refused something, with etcd's gRPC code so the gateway answers as etcd does.
public struct KVError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// An empty key (etcd: ErrGRPCEmptyKey).
        case keyNotProvided
        /// A key or range_end longer than the limit.
        case keyTooLong(field: String, length: Int, limit: Int)
        /// A value longer than the limit.
        case valueTooLarge(length: Int, limit: Int)
        /// A new key while the store holds its maximum number of keys.
        case storeFull(limit: Int)
        /// A batch with more operations than one Raft entry may carry.
        case tooManyOperations(count: Int, limit: Int)
        /// A request body that is not the JSON, base64 or field values expected.
        case invalidRequest(String)
        /// A request for something this store does not do (leases, sorting, ...).
        case unsupported(String)
        /// A read at a revision older than the current one: no history is kept (etcd: ErrGRPCCompacted).
        case compacted(requested: Int64, current: Int64)
        /// A read at a revision not reached yet (etcd: ErrGRPCFutureRev).
        case futureRevision(requested: Int64, current: Int64)
        /// The revision counter reached its ceiling.
        case revisionExhausted
        /// Raft entry bytes that do not decode as a batch.
        case malformedBatch(DecodeError)
        /// Snapshot bytes that do not decode as a store.
        case malformedSnapshot(DecodeError)
    }

    public let code: Code

    public init(_ code: Code) { self.code = code }

    /// The gRPC status code etcd answers with (the gateway's `"code"`).
    public var grpcCode: Int {
        switch code {
        case .keyNotProvided, .keyTooLong, .valueTooLarge, .tooManyOperations, .invalidRequest, .unsupported: return 3  // InvalidArgument
        case .storeFull, .revisionExhausted: return 8  // ResourceExhausted, as etcd's "database space exceeded"
        case .compacted, .futureRevision: return 11  // OutOfRange
        case .malformedBatch: return 13  // Internal
        case .malformedSnapshot: return 15  // DataLoss
        }
    }

    /// The HTTP status grpc-gateway maps `grpcCode` to.
    public var httpStatus: Int {
        switch grpcCode {
        case 3, 11: return 400
        case 8: return 429
        default: return 500
        }
    }

    /// The message the gateway sends. Where etcd has a fixed message for the same refusal it is used
    /// verbatim, because etcd's clients map those exact strings back to typed errors.
    public var message: String {
        switch code {
        case .keyNotProvided: return "etcdserver: key is not provided"
        case .valueTooLarge: return "etcdserver: request is too large"
        case .tooManyOperations: return "etcdserver: too many operations in txn request"
        case .storeFull: return "etcdserver: mvcc: database space exceeded"
        case .compacted: return "etcdserver: mvcc: required revision has been compacted"
        case .futureRevision: return "etcdserver: mvcc: required revision is a future revision"
        default: return description
        }
    }

    public var description: String {
        switch code {
        case .keyNotProvided:
            return "etcdserver: key is not provided; send a non-empty base64 'key'"
        case let .keyTooLong(field, length, limit):
            return "\(field) is \(length) bytes, over the limit of \(limit); use a shorter key (or a hash of it)"
        case let .valueTooLarge(length, limit):
            return "etcdserver: request is too large: the value is \(length) bytes, over the limit of \(limit); split it or store a reference"
        case let .storeFull(limit):
            return "etcdserver: mvcc: database space exceeded: the store holds \(limit) keys, its limit; delete keys or overwrite existing ones"
        case let .tooManyOperations(count, limit):
            return "etcdserver: too many operations in txn request: \(count), the limit is \(limit); split the batch"
        case let .invalidRequest(reason):
            return "invalid request: \(reason)"
        case let .unsupported(what):
            return "not supported: \(what)"
        case let .compacted(requested, current):
            return "etcdserver: mvcc: required revision has been compacted: revision \(requested) requested, only the current \(current) is kept; read at revision 0 (current)"
        case let .futureRevision(requested, current):
            return "etcdserver: mvcc: required revision is a future revision: revision \(requested) requested, the store is at \(current); retry later or read at revision 0"
        case .revisionExhausted:
            return "the store's revision reached \(KVStore.maxRevision), its ceiling; restore from a snapshot into a new group"
        case let .malformedBatch(e):
            return "a KV batch in the Raft log does not decode (\(e)); this member's log is corrupt or from an incompatible build: replace the member"
        case let .malformedSnapshot(e):
            return "the KV snapshot does not decode (\(e)); it is corrupt or from an incompatible build: restore from another member's snapshot"
        }
    }
}
