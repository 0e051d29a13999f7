// The HTTP/JSON form of etcd's KV API, as etcd's grpc-gateway serves it on /v3/kv/put, /v3/kv/range
// and /v3/kv/deleterange, so etcd's HTTP clients and load tools work unchanged. Pure: bytes in,
// requests out; results in, bytes out. The agent owns the sockets.
//
// The JSON follows the protobuf JSON mapping grpc-gateway uses: field names as in the .proto
// (snake_case), bytes as base64, 64-bit integers as strings (numbers are also accepted on input),
// fields at their default value left out of responses, and fields in .proto field-number order.

import Foundation

/// `etcdserverpb.PutRequest`.
public struct PutRequest: Sendable, Equatable, Codable {
    public var key: [UInt8]
    public var value: [UInt8]
    public var prevKV: Bool

    public init(key: [UInt8], value: [UInt8], prevKV: Bool = false) {
        self.key = key
        self.value = value
        self.prevKV = prevKV
    }

    /// The write to propose.
    public var operation: KVOperation { .put(key: key, value: value, prevKV: prevKV) }

    enum CodingKeys: String, CodingKey {
        case key, value, prevKV = "prev_kv", lease, ignoreValue = "ignore_value", ignoreLease = "ignore_lease"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        key = try c.bytes(.key)
        value = try c.bytes(.value)
        prevKV = try c.decodeIfPresent(Bool.self, forKey: .prevKV) ?? false
        // Silently dropping these would write something other than what the client asked for.
        if try c.int64(.lease) != 0 { throw KVError(.unsupported("leases: this store has none; send the put without 'lease'")) }
        if try c.decodeIfPresent(Bool.self, forKey: .ignoreValue) == true {
            throw KVError(.unsupported("'ignore_value'; send the value to write"))
        }
        if try c.decodeIfPresent(Bool.self, forKey: .ignoreLease) == true {
            throw KVError(.unsupported("'ignore_lease': this store has no leases; leave it out"))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(KVGateway.base64Encode(key), forKey: .key)
        try c.encode(KVGateway.base64Encode(value), forKey: .value)
        if prevKV { try c.encode(true, forKey: .prevKV) }
    }
}

/// `etcdserverpb.RangeRequest`, without sorting and revision filters (refused when set).
public struct RangeRequest: Sendable, Equatable, Codable {
    public var key: [UInt8]
    public var rangeEnd: [UInt8]
    public var limit: Int64
    /// 0 = current. Any other revision is answered only if it is the current one (no history is kept).
    public var revision: Int64
    /// etcd's local (non-linearizable) read; the agent decides whether to go through the leader.
    public var serializable: Bool
    public var countOnly: Bool
    public var keysOnly: Bool

    public init(key: [UInt8], rangeEnd: [UInt8] = [], limit: Int64 = 0, revision: Int64 = 0,
                serializable: Bool = false, countOnly: Bool = false, keysOnly: Bool = false) {
        self.key = key
        self.rangeEnd = rangeEnd
        self.limit = limit
        self.revision = revision
        self.serializable = serializable
        self.countOnly = countOnly
        self.keysOnly = keysOnly
    }

    enum CodingKeys: String, CodingKey {
        case key, rangeEnd = "range_end", limit, revision, serializable, countOnly = "count_only", keysOnly = "keys_only"
        case sortOrder = "sort_order", sortTarget = "sort_target"
        case minModRevision = "min_mod_revision", maxModRevision = "max_mod_revision"
        case minCreateRevision = "min_create_revision", maxCreateRevision = "max_create_revision"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        key = try c.bytes(.key)
        rangeEnd = try c.bytes(.rangeEnd)
        limit = try c.int64(.limit)
        revision = try c.int64(.revision)
        serializable = try c.decodeIfPresent(Bool.self, forKey: .serializable) ?? false
        countOnly = try c.decodeIfPresent(Bool.self, forKey: .countOnly) ?? false
        keysOnly = try c.decodeIfPresent(Bool.self, forKey: .keysOnly) ?? false
        guard limit >= 0 else { throw KVError(.invalidRequest("'limit' is \(limit); send 0 (no limit) or a positive number")) }
        guard revision >= 0 else { throw KVError(.invalidRequest("'revision' is \(revision); send 0 (current) or a positive number")) }
        // Ignoring these would answer with other keys, or in another order, than the client asked for.
        if try !c.isDefaultEnum(.sortOrder, defaultName: "NONE") || !c.isDefaultEnum(.sortTarget, defaultName: "KEY") {
            throw KVError(.unsupported("'sort_order'/'sort_target': keys are always returned in ascending key order; sort on the client"))
        }
        for f in [CodingKeys.minModRevision, .maxModRevision, .minCreateRevision, .maxCreateRevision] where try c.int64(f) != 0 {
            throw KVError(.unsupported("'\(f.rawValue)': filter on the client"))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(KVGateway.base64Encode(key), forKey: .key)
        if !rangeEnd.isEmpty { try c.encode(KVGateway.base64Encode(rangeEnd), forKey: .rangeEnd) }
        if limit != 0 { try c.encode(String(limit), forKey: .limit) }
        if revision != 0 { try c.encode(String(revision), forKey: .revision) }
        if serializable { try c.encode(true, forKey: .serializable) }
        if countOnly { try c.encode(true, forKey: .countOnly) }
        if keysOnly { try c.encode(true, forKey: .keysOnly) }
    }
}

/// `etcdserverpb.DeleteRangeRequest`.
public struct DeleteRangeRequest: Sendable, Equatable, Codable {
    public var key: [UInt8]
    public var rangeEnd: [UInt8]
    public var prevKV: Bool

    public init(key: [UInt8], rangeEnd: [UInt8] = [], prevKV: Bool = false) {
        self.key = key
        self.rangeEnd = rangeEnd
        self.prevKV = prevKV
    }

    /// The write to propose.
    public var operation: KVOperation { .deleteRange(key: key, rangeEnd: rangeEnd, prevKV: prevKV) }

    enum CodingKeys: String, CodingKey { case key, rangeEnd = "range_end", prevKV = "prev_kv" }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        key = try c.bytes(.key)
        rangeEnd = try c.bytes(.rangeEnd)
        prevKV = try c.decodeIfPresent(Bool.self, forKey: .prevKV) ?? false
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(KVGateway.base64Encode(key), forKey: .key)
        if !rangeEnd.isEmpty { try c.encode(KVGateway.base64Encode(rangeEnd), forKey: .rangeEnd) }
        if prevKV { try c.encode(true, forKey: .prevKV) }
    }
}

/// The ids etcd puts in every response header besides the revision; zero ones are left out.
public struct KVHeaderIdentity: Sendable, Equatable {
    public var clusterID: UInt64
    public var memberID: UInt64
    public var raftTerm: UInt64

    public init(clusterID: UInt64 = 0, memberID: UInt64 = 0, raftTerm: UInt64 = 0) {
        self.clusterID = clusterID
        self.memberID = memberID
        self.raftTerm = raftTerm
    }
}

public enum KVGateway {
    /// The largest body worth parsing: a maximal key and value in base64 plus generous room for JSON.
    public static func maxBodyBytes(_ limits: KVLimits = .standard) -> Int {
        (limits.maxKeyBytes * 2 + limits.maxValueBytes + 2) / 3 * 4 + 4096
    }

    // MARK: requests

    public static func decodePut(_ body: [UInt8], limits: KVLimits = .standard) throws(KVError) -> PutRequest {
        let r = try decode(PutRequest.self, body, limits)
        if r.key.isEmpty { throw KVError(.keyNotProvided) }
        return r
    }

    public static func decodeRange(_ body: [UInt8], limits: KVLimits = .standard) throws(KVError) -> RangeRequest {
        let r = try decode(RangeRequest.self, body, limits)
        if r.key.isEmpty { throw KVError(.keyNotProvided) }
        return r
    }

    public static func decodeDeleteRange(_ body: [UInt8], limits: KVLimits = .standard) throws(KVError) -> DeleteRangeRequest {
        let r = try decode(DeleteRangeRequest.self, body, limits)
        if r.key.isEmpty { throw KVError(.keyNotProvided) }
        return r
    }

    private static func decode<T: Decodable>(_ type: T.Type, _ body: [UInt8], _ limits: KVLimits) throws(KVError) -> T {
        guard body.count <= maxBodyBytes(limits) else {
            throw KVError(.valueTooLarge(length: body.count, limit: maxBodyBytes(limits)))
        }
        // grpc-gateway reads an empty body as an empty message (it accepts io.EOF), so do the same:
        // the request then fails on its missing key, as etcd's does.
        let isBlank = body.allSatisfy { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
        do {
            return try JSONDecoder().decode(T.self, from: Data(isBlank ? Array("{}".utf8) : body))
        } catch let e as KVError {
            throw e
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            throw KVError(.invalidRequest("field '\(fieldPath(context))' has the wrong type: \(context.debugDescription)"))
        } catch let DecodingError.dataCorrupted(context) {
            if context.codingPath.isEmpty {
                throw KVError(.invalidRequest("the body is not valid JSON; send a JSON object such as {\"key\": \"Zm9v\"}"))
            }
            throw KVError(.invalidRequest("field '\(fieldPath(context))': \(context.debugDescription)"))
        } catch {
            throw KVError(.invalidRequest("the body is not the expected JSON object: \(error)"))
        }
    }

    private static func fieldPath(_ c: DecodingError.Context) -> String {
        c.codingPath.map(\.stringValue).joined(separator: ".")
    }

    // MARK: responses

    /// The response to a put or delete-range (or the error body if it was refused). Use
    /// `result.revision` for `revision` unless the header must say otherwise.
    public static func encode(_ result: KVResult, header revision: Int64, identity: KVHeaderIdentity = .init()) -> [UInt8] {
        var j = JSONWriter()
        switch result {
        case let .put(_, prevKV):
            j.open()
            j.header(revision, identity)
            if let prevKV { j.key("prev_kv"); j.keyValue(prevKV) }
            j.close()
        case let .deleteRange(_, deleted, prevKVs):
            j.open()
            j.header(revision, identity)
            if deleted != 0 { j.key("deleted"); j.string(String(deleted)) }
            if !prevKVs.isEmpty { j.key("prev_kvs"); j.keyValues(prevKVs) }
            j.close()
        case let .refused(error, _):
            return encode(error)
        }
        return j.bytes
    }

    /// The response to a range read.
    public static func encode(_ result: KVRangeResult, header revision: Int64, identity: KVHeaderIdentity = .init()) -> [UInt8] {
        var j = JSONWriter()
        j.open()
        j.header(revision, identity)
        if !result.kvs.isEmpty { j.key("kvs"); j.keyValues(result.kvs) }
        if result.more { j.key("more"); j.raw("true") }
        if result.count != 0 { j.key("count"); j.string(String(result.count)) }
        j.close()
        return j.bytes
    }

    /// etcd's gateway error body; send it with `error.httpStatus`.
    public static func encode(_ error: KVError) -> [UInt8] {
        var j = JSONWriter()
        j.open()
        j.key("error"); j.string(error.message)
        j.key("code"); j.raw(String(error.grpcCode))
        j.key("message"); j.string(error.message)
        j.close()
        return j.bytes
    }
}

// MARK: JSON helpers

/// Writes JSON in a fixed field order, which JSONEncoder does not promise.
struct JSONWriter {
    var bytes: [UInt8] = []
    private var needsComma = false

    mutating func raw(_ s: String) { bytes.append(contentsOf: s.utf8); needsComma = true }

    mutating func open() { bytes.append(UInt8(ascii: "{")); needsComma = false }
    mutating func close() { bytes.append(UInt8(ascii: "}")); needsComma = true }

    mutating func key(_ k: String) {
        if needsComma { bytes.append(UInt8(ascii: ",")) }
        string(k)
        bytes.append(UInt8(ascii: ":"))
        needsComma = false
    }

    mutating func string(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): bytes += Array("\\\"".utf8)
            case UInt8(ascii: "\\"): bytes += Array("\\\\".utf8)
            case 0x0A: bytes += Array("\\n".utf8)
            case 0x0D: bytes += Array("\\r".utf8)
            case 0x09: bytes += Array("\\t".utf8)
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes += Array("\\u00".utf8) + [hex[Int(b >> 4)], hex[Int(b & 15)]]
            default: bytes.append(b)
            }
        }
        bytes.append(UInt8(ascii: "\""))
        needsComma = true
    }

    mutating func header(_ revision: Int64, _ id: KVHeaderIdentity) {
        key("header"); open()
        if id.clusterID != 0 { key("cluster_id"); string(String(id.clusterID)) }
        if id.memberID != 0 { key("member_id"); string(String(id.memberID)) }
        if revision != 0 { key("revision"); string(String(revision)) }
        if id.raftTerm != 0 { key("raft_term"); string(String(id.raftTerm)) }
        close()
    }

    /// mvccpb.KeyValue in field order: key, create_revision, mod_revision, version, value.
    mutating func keyValue(_ kv: KeyValue) {
        open()
        if !kv.key.isEmpty { key("key"); string(KVGateway.base64Encode(kv.key)) }
        if kv.createRevision != 0 { key("create_revision"); string(String(kv.createRevision)) }
        if kv.modRevision != 0 { key("mod_revision"); string(String(kv.modRevision)) }
        if kv.version != 0 { key("version"); string(String(kv.version)) }
        if !kv.value.isEmpty { key("value"); string(KVGateway.base64Encode(kv.value)) }
        close()
    }

    mutating func keyValues(_ kvs: [KeyValue]) {
        bytes.append(UInt8(ascii: "["))
        needsComma = false
        for kv in kvs {
            if needsComma { bytes.append(UInt8(ascii: ",")) }
            keyValue(kv)
        }
        bytes.append(UInt8(ascii: "]"))
        needsComma = true
    }
}

extension KeyedDecodingContainer {
    /// A protobuf `bytes` field: absent or null = empty, otherwise base64.
    func bytes(_ k: Key) throws -> [UInt8] {
        guard let s = try decodeIfPresent(String.self, forKey: k) else { return [] }
        guard let b = KVGateway.base64Decode(s) else {
            throw KVError(.invalidRequest("field '\(k.stringValue)' is not valid base64; encode the bytes in base64 (\"foo\" is \"Zm9v\")"))
        }
        return b
    }

    /// A protobuf int64 field: absent or null = 0, a JSON string (as grpc-gateway writes) or number.
    func int64(_ k: Key) throws -> Int64 {
        guard contains(k), try !decodeNil(forKey: k) else { return 0 }
        if let s = try? decode(String.self, forKey: k) {
            guard let v = Int64(s) else {
                throw KVError(.invalidRequest("field '\(k.stringValue)' is \"\(s)\", not a 64-bit integer"))
            }
            return v
        }
        guard let v = try? decode(Int64.self, forKey: k) else {
            throw KVError(.invalidRequest("field '\(k.stringValue)' is not a 64-bit integer; send it as a number or a decimal string"))
        }
        return v
    }

    /// A protobuf enum field, given by name or number: true when absent or at its zero value.
    func isDefaultEnum(_ k: Key, defaultName: String) throws -> Bool {
        guard contains(k), try !decodeNil(forKey: k) else { return true }
        if let s = try? decode(String.self, forKey: k) { return s == defaultName || s == "0" }
        if let n = try? decode(Int64.self, forKey: k) { return n == 0 }
        throw KVError(.invalidRequest("field '\(k.stringValue)' is neither an enum name nor a number"))
    }
}

// MARK: base64 (the protobuf JSON mapping's rules)

private let base64Standard = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

extension KVGateway {
    /// Standard base64 with padding, as protobuf's JSON mapping writes bytes.
    public static func base64Encode(_ b: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((b.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= b.count {
            let v = UInt32(b[i]) << 16 | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2])
            out += [base64Standard[Int(v >> 18 & 63)], base64Standard[Int(v >> 12 & 63)], base64Standard[Int(v >> 6 & 63)], base64Standard[Int(v & 63)]]
            i += 3
        }
        let rest = b.count - i
        if rest == 1 {
            let v = UInt32(b[i]) << 16
            out += [base64Standard[Int(v >> 18 & 63)], base64Standard[Int(v >> 12 & 63)], UInt8(ascii: "="), UInt8(ascii: "=")]
        } else if rest == 2 {
            let v = UInt32(b[i]) << 16 | UInt32(b[i + 1]) << 8
            out += [base64Standard[Int(v >> 18 & 63)], base64Standard[Int(v >> 12 & 63)], base64Standard[Int(v >> 6 & 63)], UInt8(ascii: "=")]
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes base64 as protobuf's JSON mapping (Go protojson) accepts it: the standard or the URL-safe
    /// alphabet, padded when the length is a multiple of 4 and unpadded otherwise. Nil when invalid.
    public static func base64Decode(_ s: String) -> [UInt8]? {
        var chars = Array(s.utf8)
        let urlSafe = chars.contains(UInt8(ascii: "-")) || chars.contains(UInt8(ascii: "_"))
        if chars.count % 4 == 0 {
            var pad = 0
            while pad < 2, let last = chars.last, last == UInt8(ascii: "=") { chars.removeLast(); pad += 1 }
        }
        guard chars.count % 4 != 1 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count * 3 / 4)
        var acc: UInt32 = 0, bits = 0
        for c in chars {
            let v: UInt32
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): v = UInt32(c - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): v = UInt32(c - UInt8(ascii: "a")) + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = UInt32(c - UInt8(ascii: "0")) + 52
            case UInt8(ascii: "+") where !urlSafe: v = 62
            case UInt8(ascii: "/") where !urlSafe: v = 63
            case UInt8(ascii: "-") where urlSafe: v = 62
            case UInt8(ascii: "_") where urlSafe: v = 63
            default: return nil
            }
            acc = acc << 6 | v
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: acc >> UInt32(bits)))
                acc &= (1 << UInt32(bits)) - 1
            }
        }
        return out
    }
}

extension KVStore {
    /// Serves a gateway range request. Only the current revision can be read (no history is kept),
    /// so an older one is refused as etcd refuses a compacted one, and a later one as a future one.
    public func range(_ request: RangeRequest) throws(KVError) -> KVRangeResult {
        try validateRange(key: request.key, rangeEnd: request.rangeEnd)
        if request.revision != 0 && request.revision < revision {
            throw KVError(.compacted(requested: request.revision, current: revision))
        }
        if request.revision > revision {
            throw KVError(.futureRevision(requested: request.revision, current: revision))
        }
        return range(key: request.key, rangeEnd: request.rangeEnd, limit: Int(clamping: request.limit),
                     countOnly: request.countOnly, keysOnly: request.keysOnly)
    }
}
