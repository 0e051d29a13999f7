// The replicated key-value state machine the Raft simulation runs, and its command encoding.

import MyceliumCore
import MyceliumRaft

/// A write carried in a Raft entry: who asked (for matching the reply) and what to store.
public struct KVCommand: Sendable, Equatable {
    public var client: UInt32
    public var sequence: UInt32
    public var key: UInt8
    public var value: UInt64

    public init(client: UInt32, sequence: UInt32, key: UInt8, value: UInt64) {
        self.client = client
        self.sequence = sequence
        self.key = key
        self.value = value
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 17)
        w.u32(client); w.u32(sequence); w.u8(key); w.u64(value)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws {
        var r = ByteReader(bytes)
        client = try r.u32(); sequence = try r.u32(); key = try r.u8(); value = try r.u64()
        try r.finish()
    }
}

/// An in-memory map from small keys to values, rebuilt from snapshot plus log after a crash.
public struct KVStore: Sendable, Equatable {
    public private(set) var values: [UInt8: UInt64] = [:]
    public private(set) var appliedIndex: UInt64 = 0

    public init() {}

    /// Applies one committed entry; returns the command it carried, if any.
    public mutating func apply(_ e: Entry) -> KVCommand? {
        precondition(e.index == appliedIndex + 1, "kv: applying index \(e.index) after \(appliedIndex)")
        appliedIndex = e.index
        guard e.kind == .normal, !e.data.isEmpty, let cmd = try? KVCommand(decoding: e.data) else { return nil }
        values[cmd.key] = cmd.value
        return cmd
    }

    /// A deterministic encoding (sorted by key).
    public func snapshot() -> [UInt8] {
        var w = ByteWriter(capacity: 16 + values.count * 9)
        w.u64(appliedIndex)
        w.u16(UInt16(values.count))
        for k in values.keys.sorted() { w.u8(k); w.u64(values[k]!) }
        return w.bytes
    }

    public init(snapshot bytes: [UInt8]) throws {
        var r = ByteReader(bytes)
        appliedIndex = try r.u64()
        let n = try r.count("kv entries", limit: 256)
        for _ in 0..<n { let k = try r.u8(); values[k] = try r.u64() }
        try r.finish()
    }
}
