import Foundation
import MyceliumCore
import XCTest
@testable import MyceliumControl

private func b(_ s: String) -> [UInt8] { Array(s.utf8) }

private func put(_ k: String, _ v: String, prevKV: Bool = false) -> KVOperation {
    .put(key: b(k), value: b(v), prevKV: prevKV)
}

private func del(_ k: String, _ end: [UInt8] = [], prevKV: Bool = false) -> KVOperation {
    .deleteRange(key: b(k), rangeEnd: end, prevKV: prevKV)
}

private func keys(_ r: KVRangeResult) -> [String] { r.kvs.map { String(decoding: $0.key, as: UTF8.self) } }

private func json(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

final class KVStoreTests: XCTestCase {
    // MARK: puts, revisions, versions

    func testPutThenGet() {
        var s = KVStore()
        XCTAssertEqual(s.revision, 1, "a new store is at revision 1, as etcd")
        XCTAssertEqual(s.apply(KVBatch([put("foo", "bar")])), [.put(revision: 2, prevKV: nil)])
        let r = s.range(key: b("foo"), rangeEnd: [])
        XCTAssertEqual(r, KVRangeResult(revision: 2, kvs: [KeyValue(key: b("foo"), value: b("bar"), createRevision: 2, modRevision: 2, version: 1)],
                                        count: 1, more: false))
        XCTAssertEqual(s.range(key: b("fo"), rangeEnd: []).count, 0)
        XCTAssertEqual(s[b("foo")]?.value, b("bar"))
        XCTAssertNil(s[b("nope")])
    }

    func testRevisionRisesOnlyWhenSomethingChanges() {
        var s = KVStore()
        let results = s.apply(KVBatch([put("a", "1"), put("b", "2"), del("zzz"), put("a", "3"), del("a"), del("a")]))
        XCTAssertEqual(results.map(\.revision), [2, 3, 3, 4, 5, 5])
        XCTAssertEqual(results[2], .deleteRange(revision: 3, deleted: 0, prevKVs: []))
        XCTAssertEqual(results[4], .deleteRange(revision: 5, deleted: 1, prevKVs: []))
        XCTAssertEqual(s.revision, 5)
        // Putting the same value again is still a write (etcd bumps revision and version).
        XCTAssertEqual(s.apply(KVBatch([put("b", "2")])), [.put(revision: 6, prevKV: nil)])
        XCTAssertEqual(s[b("b")]?.version, 2)
    }

    func testCreateModRevisionAndVersionAcrossPutDeleteReput() {
        var s = KVStore()
        _ = s.apply(KVBatch([put("k", "v1"), put("other", "x"), put("k", "v2"), put("k", "v3")]))
        XCTAssertEqual(s[b("k")], KeyValue(key: b("k"), value: b("v3"), createRevision: 2, modRevision: 5, version: 3))
        _ = s.apply(KVBatch([del("k")]))
        XCTAssertNil(s[b("k")])
        XCTAssertEqual(s.revision, 6)
        _ = s.apply(KVBatch([put("k", "again")]))
        // After a delete the key starts over: a new create revision and version 1.
        XCTAssertEqual(s[b("k")], KeyValue(key: b("k"), value: b("again"), createRevision: 7, modRevision: 7, version: 1))
        XCTAssertEqual(s[b("other")], KeyValue(key: b("other"), value: b("x"), createRevision: 3, modRevision: 3, version: 1))
    }

    func testPrevKVOnPutAndDelete() {
        var s = KVStore()
        XCTAssertEqual(s.apply(KVBatch([put("a", "1", prevKV: true)])), [.put(revision: 2, prevKV: nil)], "no previous key, no prev_kv")
        let old = KeyValue(key: b("a"), value: b("1"), createRevision: 2, modRevision: 2, version: 1)
        XCTAssertEqual(s.apply(KVBatch([put("a", "2", prevKV: true)])), [.put(revision: 3, prevKV: old)])
        XCTAssertEqual(s.apply(KVBatch([put("a", "3", prevKV: false)])), [.put(revision: 4, prevKV: nil)])
        _ = s.apply(KVBatch([put("b", "x")]))
        let results = s.apply(KVBatch([.deleteRange(key: b("a"), rangeEnd: b("c"), prevKV: true)]))
        XCTAssertEqual(results, [.deleteRange(revision: 6, deleted: 2, prevKVs: [
            KeyValue(key: b("a"), value: b("3"), createRevision: 2, modRevision: 4, version: 3),
            KeyValue(key: b("b"), value: b("x"), createRevision: 5, modRevision: 5, version: 1),
        ])])
        XCTAssertEqual(s.count, 0)
    }

    // MARK: ranges

    private func sample() -> KVStore {
        var s = KVStore()
        let ks = ["a", "ab", "abc", "abd", "b", "ba", "c"]
        _ = s.apply(KVBatch(ks.map { put($0, "v" + $0) }))
        _ = s.apply(KVBatch([.put(key: [0xFF, 0x01], value: b("high"), prevKV: false)]))
        return s
    }

    func testRangeEndRules() {
        let s = sample()
        XCTAssertEqual(keys(s.range(key: b("ab"), rangeEnd: [])), ["ab"], "empty range_end: the single key")
        XCTAssertEqual(keys(s.range(key: b("abz"), rangeEnd: [])), [])
        XCTAssertEqual(keys(s.range(key: b("b"), rangeEnd: [0])), ["b", "ba", "c", "\u{FFFD}\u{01}"], "range_end [0]: every key ≥ key")
        XCTAssertEqual(s.range(key: [0], rangeEnd: [0]).count, 8, "key [0], range_end [0]: all keys")
        XCTAssertEqual(keys(s.range(key: b("ab"), rangeEnd: b("b"))), ["ab", "abc", "abd"], "[key, range_end)")
        XCTAssertEqual(keys(s.range(key: b("ab"), rangeEnd: b("ac"))), ["ab", "abc", "abd"], "prefix scan: last byte + 1")
        XCTAssertEqual(keys(s.range(key: b("abc"), rangeEnd: b("abd"))), ["abc"])
        XCTAssertEqual(s.range(key: b("c"), rangeEnd: b("a")).count, 0, "range_end before key: nothing")
        XCTAssertEqual(s.range(key: b("b"), rangeEnd: b("b")).count, 0, "range_end == key: nothing")
        // Byte order, not string order: 0xFF sorts after every ASCII byte.
        XCTAssertEqual(s.range(key: [0xFF], rangeEnd: [0xFF, 0x02]).kvs.map(\.key), [[0xFF, 0x01]])
    }

    func testLimitCountMoreCountOnlyKeysOnly() {
        let s = sample()
        let r = s.range(key: b("a"), rangeEnd: b("b"), limit: 2)
        XCTAssertEqual(keys(r), ["a", "ab"])
        XCTAssertEqual(r.count, 4, "count is every match, not just those returned")
        XCTAssertTrue(r.more)
        let exact = s.range(key: b("a"), rangeEnd: b("b"), limit: 4)
        XCTAssertEqual(exact.kvs.count, 4)
        XCTAssertFalse(exact.more, "a limit equal to the matches cuts nothing")
        XCTAssertFalse(s.range(key: b("a"), rangeEnd: b("b"), limit: 0).more)
        XCTAssertEqual(s.range(key: b("a"), rangeEnd: b("b"), limit: -1).kvs.count, 4, "negative limit = no limit")
        let c = s.range(key: b("a"), rangeEnd: [0], countOnly: true)
        XCTAssertEqual(c.kvs, [])
        XCTAssertEqual(c.count, 8)
        XCTAssertFalse(c.more)
        let k = s.range(key: b("ab"), rangeEnd: b("ac"), keysOnly: true)
        XCTAssertEqual(keys(k), ["ab", "abc", "abd"])
        XCTAssertTrue(k.kvs.allSatisfy { $0.value.isEmpty && $0.version == 1 })
    }

    func testDeleteRangeForms() {
        var s = sample()
        XCTAssertEqual(s.apply(KVBatch([del("ab", b("ac"))])).first, .deleteRange(revision: 10, deleted: 3, prevKVs: []))
        XCTAssertEqual(keys(s.range(key: b("a"), rangeEnd: b("b"))), ["a"])
        XCTAssertEqual(s.apply(KVBatch([del("b", [0])])).first?.revision, 11)
        XCTAssertEqual(keys(s.range(key: [0], rangeEnd: [0])), ["a"])
        XCTAssertEqual(s.apply(KVBatch([del("x", b("a"))])).first, .deleteRange(revision: 11, deleted: 0, prevKVs: []), "inverted range deletes nothing")
        // The sorted index and the table stay in step: a re-put lands in the right place.
        _ = s.apply(KVBatch([put("abc", "new"), put("0", "zero")]))
        XCTAssertEqual(keys(s.range(key: [0], rangeEnd: [0])), ["0", "a", "abc"])
    }

    func testGatewayRangeRefusesHistoryAndEmptyKey() throws {
        let s = sample()
        XCTAssertEqual(try s.range(RangeRequest(key: b("a"), rangeEnd: b("b"), revision: s.revision)).count, 4)
        XCTAssertEqual(try s.range(RangeRequest(key: b("a"), rangeEnd: b("b"), limit: 1)).kvs.count, 1)
        XCTAssertThrowsError(try s.range(RangeRequest(key: b("a"), revision: 2))) {
            XCTAssertEqual(($0 as? KVError)?.code, .compacted(requested: 2, current: 9))
            XCTAssertEqual(($0 as? KVError)?.grpcCode, 11)
        }
        XCTAssertThrowsError(try s.range(RangeRequest(key: b("a"), revision: 99))) {
            XCTAssertEqual(($0 as? KVError)?.code, .futureRevision(requested: 99, current: 9))
        }
        XCTAssertThrowsError(try s.range(RangeRequest(key: []))) { XCTAssertEqual(($0 as? KVError)?.code, .keyNotProvided) }
    }

    // MARK: limits and refusals

    func testValidateRefusesAsEtcd() {
        let s = KVStore()
        XCTAssertThrowsError(try s.validate(.put(key: [], value: b("v"), prevKV: false))) {
            let e = $0 as! KVError
            XCTAssertEqual(e.code, .keyNotProvided)
            XCTAssertEqual(e.grpcCode, 3)
            XCTAssertEqual(e.message, "etcdserver: key is not provided")
            XCTAssertEqual(e.httpStatus, 400)
        }
        XCTAssertThrowsError(try s.validate(.deleteRange(key: [], rangeEnd: [0], prevKV: false))) {
            XCTAssertEqual(($0 as? KVError)?.code, .keyNotProvided)
        }
        XCTAssertNoThrow(try s.validate(.put(key: [UInt8](repeating: 1, count: 1024), value: [UInt8](repeating: 2, count: 65536), prevKV: false)))
        XCTAssertThrowsError(try s.validate(.put(key: [UInt8](repeating: 1, count: 1025), value: [], prevKV: false))) {
            XCTAssertEqual(($0 as? KVError)?.code, .keyTooLong(field: "key", length: 1025, limit: 1024))
        }
        XCTAssertThrowsError(try s.validate(.put(key: b("k"), value: [UInt8](repeating: 2, count: 65537), prevKV: false))) {
            XCTAssertEqual(($0 as? KVError)?.code, .valueTooLarge(length: 65537, limit: 65536))
            XCTAssertEqual(($0 as? KVError)?.message, "etcdserver: request is too large")
        }
        XCTAssertThrowsError(try s.validate(KVBatch(Array(repeating: put("k", "v"), count: 4097)))) {
            XCTAssertEqual(($0 as? KVError)?.code, .tooManyOperations(count: 4097, limit: 4096))
        }
        XCTAssertNoThrow(try s.validate(KVBatch(Array(repeating: put("k", "v"), count: 4096))))
        XCTAssertEqual(KVLimits.standard, KVLimits(maxKeyBytes: 1024, maxValueBytes: 65536, maxKeys: 1_000_000, maxBatchOperations: 4096))
    }

    func testFullStoreRefusesNewKeysIdenticallyButAcceptsOverwrites() {
        let limits = KVLimits(maxKeys: 3)
        var a = KVStore(limits: limits)
        var b2 = KVStore(limits: limits)
        let batch = KVBatch([put("1", "x"), put("2", "x"), put("3", "x"), put("4", "x"), put("2", "y"), del("1"), put("4", "z")])
        let ra = a.apply(batch)
        XCTAssertEqual(ra, b2.apply(batch))
        XCTAssertEqual(ra[3], .refused(KVError(.storeFull(limit: 3)), revision: 4), "a refused op leaves the revision alone")
        XCTAssertEqual(ra[4], .put(revision: 5, prevKV: nil), "an existing key can still be overwritten")
        XCTAssertEqual(ra[6], .put(revision: 7, prevKV: nil), "a freed slot can be reused")
        XCTAssertEqual(keys(a.range(key: [0], rangeEnd: [0])), ["2", "3", "4"])
        XCTAssertEqual(a, b2)
        XCTAssertThrowsError(try a.validate(put("5", "x"))) { XCTAssertEqual(($0 as? KVError)?.grpcCode, 8) }
        XCTAssertNoThrow(try a.validate(put("3", "x")))
        // Bad operations inside a committed batch are refused per operation, never applied.
        let bad = a.apply(KVBatch([.put(key: [], value: [], prevKV: false), del("2")]))
        XCTAssertEqual(bad[0], .refused(KVError(.keyNotProvided), revision: 7))
        XCTAssertEqual(bad[1].revision, 8)
    }

    // MARK: determinism and encodings

    /// A deterministic pseudo-random workload (SplitMix64; tests may not use global randomness).
    private func workload(seed: UInt64, batches: Int) -> [KVBatch] {
        var x = seed
        func next() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        return (0..<batches).map { _ in
            KVBatch((0..<Int(next() % 20 + 1)).map { _ in
                let key = [UInt8(ascii: "k"), UInt8(next() % 40)] + (next() % 3 == 0 ? [UInt8(next() % 256)] : [])
                switch next() % 5 {
                case 0: return .deleteRange(key: key, rangeEnd: next() % 2 == 0 ? [] : [UInt8(ascii: "k"), UInt8(next() % 40)], prevKV: next() % 2 == 0)
                case 1: return .deleteRange(key: key, rangeEnd: [0], prevKV: true)
                default: return .put(key: key, value: (0..<Int(next() % 8)).map { _ in UInt8(next() % 256) }, prevKV: next() % 2 == 0)
                }
            })
        }
    }

    func testReplicasApplyingTheSameBatchesAgree() throws {
        let batches = workload(seed: 42, batches: 200)
        var a = KVStore(), b2 = KVStore()
        var revisions: [Int64] = []
        for batch in batches {
            // The follower sees the batch as Raft carries it: encoded bytes.
            let decoded = try KVBatch(decoding: batch.encoded())
            XCTAssertEqual(decoded, batch)
            let ra = a.apply(batch)
            XCTAssertEqual(ra, b2.apply(decoded))
            revisions += ra.map(\.revision)
        }
        XCTAssertEqual(a, b2)
        XCTAssertEqual(a.encodedSnapshot(), b2.encodedSnapshot())
        XCTAssertEqual(revisions, revisions.sorted(), "the revision never goes backwards")
        XCTAssertGreaterThan(a.count, 0)
        // A replica restored from the snapshot continues in lockstep.
        var c = try KVStore(snapshot: a.encodedSnapshot())
        XCTAssertEqual(c, a)
        for batch in workload(seed: 7, batches: 30) { XCTAssertEqual(a.apply(batch), c.apply(batch)) }
        XCTAssertEqual(a.encodedSnapshot(), c.encodedSnapshot())
    }

    func testSnapshotRoundTripAndRefusals() throws {
        var s = KVStore()
        XCTAssertEqual(try KVStore(snapshot: s.encodedSnapshot()), s, "the empty store round-trips")
        _ = s.apply(KVBatch([put("b", "2"), put("a", "1"), put("b", "3"), .put(key: b("c"), value: [], prevKV: false)]))
        let snap = s.encodedSnapshot()
        let restored = try KVStore(snapshot: snap)
        XCTAssertEqual(restored, s)
        XCTAssertEqual(restored.revision, 5)
        XCTAssertEqual(restored.encodedSnapshot(), snap)

        // Hand-built snapshots that are well-formed bytes but impossible or out of order.
        func snapshot(revision: Int64, _ entries: [([UInt8], Int64, Int64, Int64)]) -> [UInt8] {
            var w = ByteWriter()
            w.raw(Array("MYKV".utf8)); w.u8(1); w.i64(revision); w.u32(UInt32(entries.count))
            for (k, c, m, v) in entries { w.blob(k); w.blob(b("v")); w.i64(c); w.i64(m); w.i64(v) }
            return w.bytes
        }
        XCTAssertNoThrow(try KVStore(snapshot: snapshot(revision: 5, [(b("a"), 2, 4, 2), (b("b"), 3, 3, 1)])))
        let bad: [(String, [UInt8])] = [
            ("unsorted", snapshot(revision: 5, [(b("b"), 2, 2, 1), (b("a"), 3, 3, 1)])),
            ("duplicated", snapshot(revision: 5, [(b("a"), 2, 2, 1), (b("a"), 3, 3, 1)])),
            ("empty key", snapshot(revision: 5, [([], 2, 2, 1)])),
            ("mod before create", snapshot(revision: 5, [(b("a"), 3, 2, 1)])),
            ("mod after revision", snapshot(revision: 5, [(b("a"), 2, 6, 1)])),
            ("version 0", snapshot(revision: 5, [(b("a"), 2, 2, 0)])),
            ("version beyond its revisions", snapshot(revision: 5, [(b("a"), 2, 3, 3)])),
            ("create at revision 1", snapshot(revision: 5, [(b("a"), 1, 1, 1)])),
            ("revision 0", snapshot(revision: 0, [])),
            ("more keys than revisions", snapshot(revision: 2, [(b("a"), 2, 2, 1), (b("b"), 2, 2, 1)])),
            ("trailing byte", snapshot(revision: 5, []) + [0]),
            ("bad magic", [0x4E] + Array(snapshot(revision: 5, []).dropFirst())),
        ]
        for (why, bytes) in bad {
            XCTAssertThrowsError(try KVStore(snapshot: bytes), why) {
                guard case .malformedSnapshot = ($0 as? KVError)?.code else { return XCTFail("\(why): \($0)") }
            }
        }
        var small = KVStore(limits: KVLimits(maxKeys: 1))
        _ = small.apply(KVBatch([put("a", "1")]))
        XCTAssertThrowsError(try KVStore(snapshot: s.encodedSnapshot(), limits: KVLimits(maxKeys: 2)), "more keys than this member's limit")
        XCTAssertNoThrow(try KVStore(snapshot: small.encodedSnapshot(), limits: KVLimits(maxKeys: 1)))
    }

    /// Every truncation and every single-byte change either throws or decodes to something that
    /// re-encodes to exactly the same bytes; none may crash.
    func testEveryTruncationAndByteFlipOfABatchAndASnapshot() {
        let batch = KVBatch([put("key", "value", prevKV: true), .deleteRange(key: b("a"), rangeEnd: [0], prevKV: false),
                             .put(key: b("k2"), value: [], prevKV: false), .deleteRange(key: b("x"), rangeEnd: [], prevKV: true)])
        var s = KVStore()
        _ = s.apply(KVBatch([put("alpha", "1"), put("beta", "22"), put("alpha", "333"), put("gamma", "")]))
        let encodings: [(String, [UInt8], ([UInt8]) throws -> [UInt8])] = [
            ("batch", batch.encoded(), { try KVBatch(decoding: $0).encoded() }),
            ("snapshot", s.encodedSnapshot(), { try KVStore(snapshot: $0).encodedSnapshot() }),
        ]
        for (name, bytes, roundTrip) in encodings {
            XCTAssertEqual(try roundTrip(bytes), bytes, name)
            var accepted = 0
            for n in 0..<bytes.count {
                XCTAssertThrowsError(try roundTrip(Array(bytes.prefix(n))), "\(name) truncated to \(n) bytes was accepted")
            }
            for i in 0..<bytes.count {
                for flip: UInt8 in [0x01, 0x80, 0xFF] {
                    var m = bytes
                    m[i] ^= flip
                    if let again = try? roundTrip(m) {
                        XCTAssertEqual(again, m, "\(name) with byte \(i) ^ \(flip) decoded to something else")
                        accepted += 1
                    }
                }
            }
            XCTAssertGreaterThan(accepted, 0, "\(name): flips inside values must still decode")
        }
    }

    func testBatchDecoderBounds() {
        var w = ByteWriter()
        w.u8(1); w.u32(4097)
        XCTAssertThrowsError(try KVBatch(decoding: w.bytes)) {
            guard case .malformedBatch(let d) = ($0 as? KVError)?.code, case .tooLong = d.code else { return XCTFail("\($0)") }
        }
        var big = ByteWriter()
        big.u8(1); big.u32(1); big.u8(1); big.u32(0xFFFF_FFFF)
        XCTAssertThrowsError(try KVBatch(decoding: big.bytes), "a huge key length is refused before reading")
        var tag = ByteWriter()
        tag.u8(1); tag.u32(1); tag.u8(3); tag.blob(b("k")); tag.blob([]); tag.bool(false)
        XCTAssertThrowsError(try KVBatch(decoding: tag.bytes)) {
            guard case .malformedBatch(let d) = ($0 as? KVError)?.code, case .unknownVersion = d.code else { return XCTFail("\($0)") }
            XCTAssertEqual(($0 as? KVError)?.grpcCode, 13)
        }
        XCTAssertThrowsError(try KVBatch(decoding: [2, 0, 0, 0, 0]), "unknown batch format version")
        XCTAssertEqual(try KVBatch(decoding: [1, 0, 0, 0, 0]), KVBatch([]))
        let long = KVBatch([.put(key: [UInt8](repeating: 1, count: 1025), value: [], prevKV: false)]).encoded()
        XCTAssertThrowsError(try KVBatch(decoding: long))
    }

    // MARK: gateway

    func testGatewayDecodesRequests() throws {
        let p = try KVGateway.decodePut(b(#"{"key":"Zm9v","value":"YmFy","prev_kv":true}"#))
        XCTAssertEqual(p, PutRequest(key: b("foo"), value: b("bar"), prevKV: true))
        XCTAssertEqual(p.operation, put("foo", "bar", prevKV: true))
        XCTAssertEqual(try KVGateway.decodePut(b(#"{"key":"Zm9v"}"#)).value, [], "a missing value is the empty value, as etcd")
        let r = try KVGateway.decodeRange(b(#"{"key":"YQ==","range_end":"Yg==","limit":"2","count_only":true,"keys_only":true,"serializable":true}"#))
        XCTAssertEqual(r, RangeRequest(key: b("a"), rangeEnd: b("b"), limit: 2, serializable: true, countOnly: true, keysOnly: true))
        XCTAssertEqual(try KVGateway.decodeRange(b(#"{"key":"YQ","limit":5,"sort_order":"NONE"}"#)).limit, 5, "numbers and unpadded base64 accepted")
        XCTAssertEqual(try KVGateway.decodeRange(b(#"{"key":"_-8"}"#)).key, [0xFF, 0xEF], "URL-safe base64 accepted")
        let d = try KVGateway.decodeDeleteRange(b(#"{"key":"YQ==","range_end":"AA==","prev_kv":true,"unknown_field":1}"#))
        XCTAssertEqual(d.operation, .deleteRange(key: b("a"), rangeEnd: [0], prevKV: true))
        // The Codable forms are what a client would send.
        let sent = try JSONEncoder().encode(RangeRequest(key: b("a"), rangeEnd: [0], limit: 3, keysOnly: true))
        XCTAssertEqual(try KVGateway.decodeRange(Array(sent)), RangeRequest(key: b("a"), rangeEnd: [0], limit: 3, keysOnly: true))
        XCTAssertEqual(try KVGateway.decodePut(Array(try JSONEncoder().encode(p))), p)
    }

    func testGatewayRefusesBadRequests() {
        func code(_ body: String, _ decode: ([UInt8]) throws -> Any) -> KVError.Code? {
            do { _ = try decode(b(body)); return nil } catch { return (error as? KVError)?.code }
        }
        let putD: ([UInt8]) throws -> Any = { try KVGateway.decodePut($0) }
        let rangeD: ([UInt8]) throws -> Any = { try KVGateway.decodeRange($0) }
        let delD: ([UInt8]) throws -> Any = { try KVGateway.decodeDeleteRange($0) }
        for decode in [putD, rangeD, delD] {
            XCTAssertEqual(code(#"{"value":"YmFy"}"#, decode), .keyNotProvided)
            XCTAssertEqual(code(#"{"key":""}"#, decode), .keyNotProvided)
            XCTAssertEqual(code("", decode), .keyNotProvided, "an empty body is an empty request, as grpc-gateway reads it")
            for bad in [#"{"key":"Zm9v!"}"#, #"{"key":"Zm9"}"#.replacingOccurrences(of: "Zm9", with: "Z"), #"{"key":"Zm+_"}"#,
                        #"{"key":"Zm9v="}"#, "{not json", "[1,2]", #"{"key":12}"#] {
                guard case .invalidRequest = code(bad, decode) else {
                    XCTFail("\(bad) was not refused as an invalid request: \(String(describing: code(bad, decode)))")
                    continue
                }
            }
        }
        guard case .invalidRequest = code(#"{"key":"Zm9v","prev_kv":"yes"}"#, putD) else { return XCTFail("a string bool refused") }
        XCTAssertEqual(code(#"{"key":"Zm9v","lease":"7"}"#, putD).map { KVError($0).grpcCode }, 3)
        guard case .unsupported = code(#"{"key":"Zm9v","sort_order":"DESCEND"}"#, rangeD) else { return XCTFail("sort refused") }
        guard case .invalidRequest = code(#"{"key":"Zm9v","limit":"x"}"#, rangeD) else { return XCTFail("bad limit refused") }
        guard case .invalidRequest = code(#"{"key":"Zm9v","limit":-1}"#, rangeD) else { return XCTFail("negative limit refused") }
        guard case .valueTooLarge = code(String(repeating: " ", count: KVGateway.maxBodyBytes() + 1), putD) else { return XCTFail("huge body") }

        let err = json(KVGateway.encode(KVError(.keyNotProvided)))
        XCTAssertEqual(err, #"{"error":"etcdserver: key is not provided","code":3,"message":"etcdserver: key is not provided"}"#)
        let parsed = try? JSONSerialization.jsonObject(with: Data(KVGateway.encode(KVError(.invalidRequest("a \"quoted\"\n thing"))))) as? [String: Any]
        XCTAssertEqual(parsed?["code"] as? Int, 3)
        XCTAssertEqual(parsed?["message"] as? String, "invalid request: a \"quoted\"\n thing")
    }

    func testGatewayEncodesResponsesInEtcdShape() {
        var s = KVStore()
        _ = s.apply(KVBatch([put("foo", "x"), put("other", "y"), put("foo", "y")]))
        let put7 = s.apply(KVBatch([put("foo", "bar", prevKV: true)]))[0]
        XCTAssertEqual(json(KVGateway.encode(put7, header: put7.revision)),
                       #"{"header":{"revision":"5"},"prev_kv":{"key":"Zm9v","create_revision":"2","mod_revision":"4","version":"2","value":"eQ=="}}"#)
        let plain = s.apply(KVBatch([put("foo", "bar")]))[0]
        XCTAssertEqual(json(KVGateway.encode(plain, header: plain.revision, identity: KVHeaderIdentity(clusterID: 9, memberID: 8, raftTerm: 3))),
                       #"{"header":{"cluster_id":"9","member_id":"8","revision":"6","raft_term":"3"}}"#)
        let r = s.range(key: b("foo"), rangeEnd: [])
        XCTAssertEqual(json(KVGateway.encode(r, header: r.revision)),
                       #"{"header":{"revision":"6"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"6","version":"4","value":"YmFy"}],"count":"1"}"#)
        let cut = s.range(key: [0], rangeEnd: [0], limit: 1, keysOnly: true)
        XCTAssertEqual(json(KVGateway.encode(cut, header: cut.revision)),
                       #"{"header":{"revision":"6"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"6","version":"4"}],"more":true,"count":"2"}"#)
        let none = s.range(key: b("zzz"), rangeEnd: [])
        XCTAssertEqual(json(KVGateway.encode(none, header: none.revision)), #"{"header":{"revision":"6"}}"#)
        let emptyDelete = s.apply(KVBatch([del("zzz", prevKV: true)]))[0]
        XCTAssertEqual(json(KVGateway.encode(emptyDelete, header: emptyDelete.revision)), #"{"header":{"revision":"6"}}"#)
        let deleted = s.apply(KVBatch([del("a", b("p"), prevKV: true)]))[0]
        XCTAssertEqual(json(KVGateway.encode(deleted, header: deleted.revision)),
                       #"{"header":{"revision":"7"},"deleted":"2","prev_kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"6","version":"4","value":"YmFy"},{"key":"b3RoZXI=","create_revision":"3","mod_revision":"3","version":"1","value":"eQ=="}]}"#)
        let refused = s.apply(KVBatch([.put(key: [], value: [], prevKV: false)]))[0]
        XCTAssertEqual(json(KVGateway.encode(refused, header: refused.revision)), json(KVGateway.encode(KVError(.keyNotProvided))))
    }

    func testBase64MatchesFoundation() {
        var x: UInt8 = 0
        for n in 0..<40 {
            let bytes = (0..<n).map { _ in x &+= 37; return x }
            let ours = KVGateway.base64Encode(bytes)
            XCTAssertEqual(ours, Data(bytes).base64EncodedString())
            XCTAssertEqual(KVGateway.base64Decode(ours), bytes)
            XCTAssertEqual(KVGateway.base64Decode(ours.replacingOccurrences(of: "=", with: "")), bytes, "unpadded")
        }
    }
}
