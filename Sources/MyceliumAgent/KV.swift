// A small replicated key-value store on the sclerotia's Raft group, reached over HTTP with etcd's
// gRPC-gateway form (POST /v3/kv/put and /v3/kv/range, JSON, base64 keys and values), so one load
// client measures both systems. It is what the control plane stores beyond the spore (assignments,
// service records), and it is how Raft's throughput and latency are put side by side with etcd.
//
// Writes from every concurrent client are batched: while one Raft entry is being made durable, the
// next batch collects, and one fsync covers all of it (group commit).

import Foundation
import MyceliumCore
import MyceliumRaft
import NIOCore
import NIOHTTP1
import NIOPosix

enum KVLimits {
    static let maxKey = 1024
    static let maxValue = 64 * 1024
    static let maxKeys = 1_000_000
    static let maxBatch = 4096
}

/// The KV state and its snapshot form, combined with the spore in one Raft snapshot.
struct KVState: Sendable {
    var items: [String: [UInt8]] = [:]
    var revision: UInt64 = 0

    static let snapshotMagic: [UInt8] = Array("MYSN".utf8)

    /// Raft entry: `2 | u32 count | (key string, value blob)*`.
    static func entry(_ puts: [(String, [UInt8])]) -> [UInt8] {
        var w = ByteWriter(capacity: 8 + puts.reduce(0) { $0 + $1.0.utf8.count + $1.1.count + 8 })
        w.u8(2); w.u32(UInt32(puts.count))
        for (k, v) in puts { w.string(k); w.blob(v) }
        return w.bytes
    }

    mutating func apply(entryData: [UInt8], index: UInt64) throws {
        var r = ByteReader(entryData)
        _ = try r.u8()
        let n = Int(try r.u32())
        guard n <= KVLimits.maxBatch else { throw DecodeError(.tooLong(field: "kv batch", length: n, limit: KVLimits.maxBatch), at: 1) }
        for _ in 0..<n {
            let k = try r.string("key", limit: KVLimits.maxKey)
            let v = try r.blob("value", limit: KVLimits.maxValue)
            if items[k] == nil && items.count >= KVLimits.maxKeys { continue }  // refused identically everywhere
            items[k] = v
        }
        try r.finish()
        revision = index
    }

    /// Snapshot bytes: magic, the spore, then the items sorted by key.
    static func snapshot(spore: [UInt8], kv: KVState) -> [UInt8] {
        var w = ByteWriter(capacity: spore.count + kv.items.count * 300 + 32)
        w.raw(snapshotMagic); w.blob(spore); w.u64(kv.revision); w.u32(UInt32(kv.items.count))
        for (k, v) in kv.items.sorted(by: { $0.key < $1.key }) { w.string(k); w.blob(v) }
        return w.bytes
    }

    /// Splits snapshot bytes into the spore's bytes and the KV state (older snapshots hold only a spore).
    static func restore(_ data: [UInt8]) throws -> (spore: [UInt8], kv: KVState) {
        guard data.starts(with: snapshotMagic) else { return (data, KVState()) }
        var r = ByteReader(data)
        _ = try r.raw(4)
        let spore = try r.blob("spore", limit: 64 << 20)
        var kv = KVState()
        kv.revision = try r.u64()
        let n = Int(try r.u32())
        guard n <= KVLimits.maxKeys else { throw DecodeError(.tooLong(field: "kv items", length: n, limit: KVLimits.maxKeys), at: r.offset) }
        for _ in 0..<n { kv.items[try r.string("key", limit: KVLimits.maxKey)] = try r.blob("value", limit: KVLimits.maxValue) }
        try r.finish()
        return (spore, kv)
    }
}

struct KVError: Error, CustomStringConvertible {
    let status: HTTPResponseStatus
    let description: String
}

extension Agent {
    /// Queues a put; returns the revision (Raft index) once it is committed and applied here.
    func put(key: String, value: [UInt8]) async throws -> UInt64 {
        guard raft.role == .leader else {
            let hint = nodeIDs[raft.leader].flatMap { spore.members[$0]?.addresses.first } ?? "unknown"
            throw KVError(status: .serviceUnavailable, description: "not the leader; the leader's peer address is \(hint)")
        }
        guard key.utf8.count <= KVLimits.maxKey, value.count <= KVLimits.maxValue else {
            throw KVError(status: .payloadTooLarge, description: "key over \(KVLimits.maxKey) bytes or value over \(KVLimits.maxValue)")
        }
        guard kv.items[key] != nil || kv.items.count + pendingPuts.count < KVLimits.maxKeys else {
            throw KVError(status: .insufficientStorage, description: "the KV holds \(KVLimits.maxKeys) keys, its limit; delete or reuse keys")
        }
        return try await withCheckedThrowingContinuation { c in
            pendingPuts.append((key, value, c))
            if kvWaiters.isEmpty && !flushScheduled {
                // Nothing in flight: propose at once (a lone client pays no extra hop).
                flushPuts()
            } else if !flushScheduled {
                // Entries are being made durable: collect what arrives meanwhile into the next one.
                flushScheduled = true
                Task { await self.flushPuts() }
            }
        }
    }

    /// Proposes everything queued as one entry; the waiters are answered when it applies.
    func flushPuts() {
        flushScheduled = false
        guard !pendingPuts.isEmpty else { return }
        while !pendingPuts.isEmpty {
            let batch = Array(pendingPuts.prefix(KVLimits.maxBatch))
            pendingPuts.removeFirst(batch.count)
            do {
                let index = try raft.propose(KVState.entry(batch.map { ($0.0, $0.1) }))
                kvWaiters[index] = (raft.term, batch.map(\.2))
            } catch {
                for (_, _, c) in batch { c.resume(throwing: KVError(status: .serviceUnavailable, description: "proposal refused: \(error)")) }
            }
        }
        processReady()
    }

    /// Called for each applied KV entry and after leadership changes.
    func answerKVWaiters(applied e: Entry?) {
        if let e, let w = kvWaiters.removeValue(forKey: e.index) {
            if w.term == e.term {
                for c in w.waiters { c.resume(returning: e.index) }
            } else {
                for c in w.waiters { c.resume(throwing: KVError(status: .serviceUnavailable, description: "leadership changed; the write was not committed, retry")) }
            }
        }
        if raft.role != .leader && !kvWaiters.isEmpty {
            // A deposed leader's pending writes may or may not commit; the client must retry (as with etcd).
            for (_, w) in kvWaiters { for c in w.waiters { c.resume(throwing: KVError(status: .serviceUnavailable, description: "leadership lost; retry")) } }
            kvWaiters = [:]
        }
    }

    func get(key: String) -> ([UInt8]?, UInt64) { (kv.items[key], kv.revision) }
}

/// HTTP/1.1 with keep-alive on `client_listen`: the KV in etcd's gateway form.
final class KVServer: Sendable {
    let channel: Channel
    static func start(host: String, port: Int, agent: Agent, group: EventLoopGroup) async throws -> KVServer {
        let ch = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                    try ch.pipeline.syncOperations.addHandler(KVHandler(agent: agent))
                }
            }
            .bind(host: host, port: port).get()
        return KVServer(channel: ch)
    }
    init(channel: Channel) { self.channel = channel }
    func close() async { try? await channel.close().get() }
}

final class KVHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let agent: Agent
    var head: HTTPRequestHead?
    var body: [UInt8] = []

    init(agent: Agent) { self.agent = agent }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h; body = []
        case .body(var b):
            if body.count + b.readableBytes <= KVLimits.maxValue * 2 + 4096 { body += b.readBytes(length: b.readableBytes) ?? [] }
        case .end:
            guard let h = head else { return }
            let request = body
            let agent = self.agent
            let channel = context.channel
            let keepAlive = h.isKeepAlive
            Task {
                let (status, json) = await Self.serve(h, request, agent)
                channel.eventLoop.execute {
                    var headers = HTTPHeaders()
                    headers.add(name: "Content-Type", value: "application/json")
                    headers.add(name: "Content-Length", value: "\(json.count)")
                    if !keepAlive { headers.add(name: "Connection", value: "close") }
                    channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: h.version, status: status, headers: headers)), promise: nil)
                    var buf = channel.allocator.buffer(capacity: json.count)
                    buf.writeBytes(json)
                    channel.write(HTTPServerResponsePart.body(.byteBuffer(buf)), promise: nil)
                    channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in
                        if !keepAlive { channel.close(promise: nil) }
                    }
                }
            }
        }
    }

    static func serve(_ h: HTTPRequestHead, _ body: [UInt8], _ agent: Agent) async -> (HTTPResponseStatus, [UInt8]) {
        func reply(_ s: HTTPResponseStatus, _ o: [String: Any]) -> (HTTPResponseStatus, [UInt8]) {
            (s, Array((try? JSONSerialization.data(withJSONObject: o)) ?? Data("{}".utf8)))
        }
        guard h.method == .POST, h.uri == "/v3/kv/put" || h.uri == "/v3/kv/range" else {
            return reply(.notFound, ["error": "only POST /v3/kv/put and /v3/kv/range are served here", "code": 5])
        }
        guard let o = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
              let k64 = o["key"] as? String, let kData = Data(base64Encoded: k64), let key = String(data: kData, encoding: .utf8) else {
            return reply(.badRequest, ["error": "body must be JSON with a base64 'key' (and 'value' for put)", "code": 3])
        }
        if h.uri == "/v3/kv/range" {
            let (v, rev) = await agent.get(key: key)
            var answer: [String: Any] = ["header": ["revision": "\(rev)"]]
            if let v { answer["kvs"] = [["key": k64, "value": Data(v).base64EncodedString()]]; answer["count"] = "1" }
            return reply(.ok, answer)
        }
        guard let v64 = o["value"] as? String, let value = Data(base64Encoded: v64) else {
            return reply(.badRequest, ["error": "put needs a base64 'value'", "code": 3])
        }
        do {
            let rev = try await agent.put(key: key, value: Array(value))
            return reply(.ok, ["header": ["revision": "\(rev)"]])
        } catch let e as KVError {
            return reply(e.status, ["error": e.description, "code": 14])
        } catch {
            return reply(.internalServerError, ["error": "\(error)", "code": 13])
        }
    }
}
