// The replicated KV's front door: etcd's gRPC-gateway form over HTTP on `client_listen`
// (POST /v3/kv/put, /v3/kv/range, /v3/kv/deleterange; JSON, base64 keys and values), so an etcd
// user's client works and one load client measures both systems. The store itself is
// MyceliumControl.KVStore, part of the control state. Off loopback it is served only over TLS with
// client certificates (AgentConfig.validateClientTLS), since anyone who reaches it could write.
//
// As etcd:
//  - ranges are linearizable unless the request says `serializable: true`: the leader serves them
//    after a ReadIndex round (Raft thesis §6.4) once it has applied up to the read index; a
//    follower forwards them (and writes) to the leader over the peer channel;
//  - writes from every concurrent client are batched: while one entry is being made durable the
//    next batch collects, and one fsync covers all of it (group commit).

import Foundation
import MyceliumControl
import MyceliumCore
import MyceliumRaft
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A linearizable read waiting for its ReadIndex, then for the state to apply up to it.
struct ReadWaiter {
    var index: UInt64?
    let continuation: CheckedContinuation<Void, Error>
}

/// A KV request's answer: HTTP status and gateway JSON.
struct KVAnswer: Sendable {
    let status: HTTPResponseStatus
    let body: [UInt8]
    static func error(_ e: KVError) -> KVAnswer {
        KVAnswer(status: HTTPResponseStatus(statusCode: e.httpStatus), body: KVGateway.encode(e))
    }
}

/// The gateway paths, numbered for forwarding.
enum KVPath: UInt8, Sendable {
    case put = 1, range = 2, deleteRange = 3
    /// Not KV: a VM command (VMAPI.swift) the leader proposes; forwarded the same way.
    case vm = 4
    /// Not KV: a service command (ServiceAPI.swift) the leader proposes.
    case service = 5
    /// Not KV: an instance's log tail, asked of the node that runs it (ServiceAPI.swift).
    case serviceLogs = 6
    /// Not KV: a volume command (VolumeAPI.swift) the leader proposes.
    case volume = 7
    init?(uri: String) {
        switch uri {
        case "/v3/kv/put": self = .put
        case "/v3/kv/range": self = .range
        case "/v3/kv/deleterange": self = .deleteRange
        default: return nil
        }
    }
}

extension Agent {
    /// Answers one gateway request. `forwarded`: it came from a follower, so it is never forwarded again.
    func serveKV(_ path: KVPath, _ body: [UInt8], forwarded: Bool = false) async -> KVAnswer {
        let limits = control.kv.limits
        do {
            switch path {
            case .vm, .service, .serviceLogs, .volume:
                throw KVError(.invalidRequest("not a KV request"))
            case .range:
                let r = try KVGateway.decodeRange(body, limits: limits)
                try control.kv.validateRange(key: r.key, rangeEnd: r.rangeEnd)
                if r.revision > control.kv.revision { throw KVError(.futureRevision(requested: r.revision, current: control.kv.revision)) }
                if r.revision != 0 && r.revision < control.kv.revision {
                    throw KVError(.compacted(requested: r.revision, current: control.kv.revision))
                }
                if !r.serializable {
                    if raft.role != .leader { return try await forward(path, body, forwarded: forwarded) }
                    try await linearizableBarrier()
                }
                let result = control.kv.range(key: r.key, rangeEnd: r.rangeEnd, limit: Int(clamping: r.limit),
                                              countOnly: r.countOnly, keysOnly: r.keysOnly)
                return KVAnswer(status: .ok, body: KVGateway.encode(result, header: result.revision, identity: kvIdentity))
            case .put, .deleteRange:
                let op: KVOperation = path == .put ? try KVGateway.decodePut(body, limits: limits).operation
                                                   : try KVGateway.decodeDeleteRange(body, limits: limits).operation
                if raft.role != .leader { return try await forward(path, body, forwarded: forwarded) }
                let result = try await write(op)
                return KVAnswer(status: .ok, body: KVGateway.encode(result, header: result.revision, identity: kvIdentity))
            }
        } catch let e as KVError {
            return .error(e)
        } catch {
            return .error(KVError(.unavailable("\(error)")))
        }
    }

    var kvIdentity: KVHeaderIdentity {
        KVHeaderIdentity(clusterID: network.id.bytes.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }, memberID: me, raftTerm: raft.term)
    }

    // MARK: writes

    /// Queues a write; returns its result once it is committed and applied here.
    func write(_ op: KVOperation) async throws -> KVResult {
        try control.kv.validate(op)
        if case .put(let key, _, _) = op, control.kv[key] == nil,
           control.kv.count + pendingPuts.count >= control.kv.limits.maxKeys {
            throw KVError(.storeFull(limit: control.kv.limits.maxKeys))
        }
        return try await withCheckedThrowingContinuation { c in
            pendingPuts.append((op, c))
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
            let batch = Array(pendingPuts.prefix(control.kv.limits.maxBatchOperations))
            pendingPuts.removeFirst(batch.count)
            do {
                let index = try raft.propose(ControlEntry.kv(KVBatch(batch.map(\.0))).encoded())
                kvWaiters[index] = (raft.term, batch.map(\.1))
            } catch {
                for (_, c) in batch { c.resume(throwing: KVError(.unavailable("proposal refused: \(error)"))) }
            }
        }
        processReady()
    }

    /// Called for each applied entry and after leadership changes.
    func answerKVWaiters(applied e: Entry?, results: [KVResult]) {
        if let e, let w = kvWaiters.removeValue(forKey: e.index) {
            if w.term == e.term && results.count == w.waiters.count {
                for (c, r) in zip(w.waiters, results) { c.resume(returning: r) }
            } else {
                for c in w.waiters { c.resume(throwing: KVError(.unavailable("leadership changed; the write was not committed, retry"))) }
            }
        }
        if raft.role != .leader && !kvWaiters.isEmpty {
            // A deposed leader's pending writes may or may not commit; the client must retry (as with etcd).
            for (_, w) in kvWaiters { for c in w.waiters { c.resume(throwing: KVError(.unavailable("leadership lost; retry"))) } }
            kvWaiters = [:]
        }
        if let e { releaseReads(upTo: e.index) }
    }

    // MARK: linearizable reads

    /// Returns once this leader has confirmed it still leads (a quorum answered a heartbeat sent
    /// after the read arrived) and has applied everything committed before the read.
    func linearizableBarrier() async throws {
        let context = nextReadContext
        nextReadContext += 1
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
            readWaiters[context] = ReadWaiter(index: nil, continuation: c)
            do {
                try raft.readIndex(context: context)
            } catch {
                readWaiters[context] = nil
                c.resume(throwing: KVError(.unavailable("not the leader; retry")))
                return
            }
            processReady()
        }
    }

    func answerReads(_ states: [ReadState]) {
        for s in states { readWaiters[s.context]?.index = s.index }
        releaseReads(upTo: raft.appliedIndex)
        if raft.role != .leader { failReadWaiters("leadership lost; retry") }
    }

    func releaseReads(upTo applied: UInt64) {
        for (ctx, w) in readWaiters {
            if let i = w.index, i <= applied {
                readWaiters[ctx] = nil
                w.continuation.resume()
            }
        }
    }

    func failReadWaiters(_ why: String) {
        let waiting = readWaiters
        readWaiters = [:]
        for w in waiting.values { w.continuation.resume(throwing: KVError(.unavailable(why))) }
    }

    func failKVClients(_ why: String) {
        for (_, c) in pendingPuts { c.resume(throwing: KVError(.unavailable(why))) }
        pendingPuts = []
        for (_, w) in kvWaiters { for c in w.waiters { c.resume(throwing: KVError(.unavailable(why))) } }
        kvWaiters = [:]
        failReadWaiters(why)
        let waiting = forwardWaiters
        forwardWaiters = [:]
        for c in waiting.values { c.resume(returning: .error(KVError(.unavailable(why)))) }
    }

    // MARK: forwarding to the leader

    func forward(_ path: KVPath, _ body: [UInt8], forwarded: Bool) async throws -> KVAnswer {
        guard !forwarded else { throw KVError(.unavailable("not the leader any more; retry")) }
        guard raft.leader != .none, router.links[raft.leader] != nil || router.addressHints[raft.leader] != nil else {
            throw KVError(.unavailable("no leader; retry when the network has one ('mycelium status')"))
        }
        return await ask(raft.leader, path, body)
    }

    /// Sends `body` for `path` to `peer` over the authenticated peer channel; its answer, or an
    /// error when it does not answer within two election timeouts.
    func ask(_ peer: UInt64, _ path: KVPath, _ body: [UInt8]) async -> KVAnswer {
        let id = nextReadContext
        nextReadContext += 1
        let timeout = UInt64(max(2, config.electionTicks * 2) * config.tickMilliseconds) * 1_000_000
        return await withCheckedContinuation { (c: CheckedContinuation<KVAnswer, Never>) in
            forwardWaiters[id] = c
            sendPeer(peer, .clientRequest(id: id, path: path.rawValue, body: body))
            Task { [weak self] in
                try? await Task.sleep(nanoseconds: timeout)
                await self?.forwardTimedOut(id)
            }
        }
    }

    func forwardTimedOut(_ id: UInt64) {
        forwardWaiters.removeValue(forKey: id)?.resume(returning: .error(KVError(.unavailable("the node asked did not answer in time; retry"))))
    }

    /// A follower forwarded a client's request to us.
    func serveForwarded(_ id: UInt64, _ pathByte: UInt8, _ body: [UInt8], from peer: UInt64) {
        Task {
            var answer: KVAnswer
            if pathByte == KVPath.vm.rawValue {
                answer = self.serveForwardedVM(body)
            } else if pathByte == KVPath.service.rawValue {
                answer = self.serveForwardedService(body, from: peer)
            } else if pathByte == KVPath.volume.rawValue {
                answer = self.serveForwardedVolume(body, from: peer)
            } else if pathByte == KVPath.serviceLogs.rawValue {
                let (status, bytes) = self.localServiceLogs(query: String(decoding: body, as: UTF8.self))
                answer = KVAnswer(status: status, body: bytes)
            } else if let path = KVPath(rawValue: pathByte) {
                answer = await self.serveKV(path, body, forwarded: true)
            } else {
                answer = .error(KVError(.invalidRequest("unknown forwarded request \(pathByte)")))
            }
            if answer.body.count > Frame.defaultMaxSize - 1024 {
                answer = .error(KVError(.invalidRequest("the answer (\(answer.body.count) bytes) is too large to forward; use 'limit' or send the range to the leader")))
            }
            await self.sendPeer(peer, .clientAnswer(id: id, status: UInt16(answer.status.code), body: answer.body))
        }
    }

    func forwardAnswered(_ id: UInt64, _ status: UInt16, _ body: [UInt8]) {
        forwardWaiters.removeValue(forKey: id)?.resume(returning: KVAnswer(status: HTTPResponseStatus(statusCode: Int(status)), body: body))
    }
}

/// HTTP/1.1 with keep-alive on `client_listen`: the KV in etcd's gateway form, over TLS with client
/// certificates when `tls` is given (etcd's --client-cert-auth).
final class KVServer: Sendable {
    let channel: Channel
    static func start(host: String, port: Int, agent: Agent, group: EventLoopGroup, tls: NIOSSLContext? = nil) async throws -> KVServer {
        let ch = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    if let tls { try ch.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                    try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                    try ch.pipeline.syncOperations.addHandler(KVHandler(agent: agent))
                }
            }
            .bind(host: host, port: port).get()
        return KVServer(channel: ch)
    }

    /// The TLS context of `client_listen`: TLS 1.2 or later, and a client certificate signed by the
    /// trusted CA is required (a client without one fails the handshake). Errors name the setting to fix.
    static func tlsContext(_ config: AgentConfig) throws -> NIOSSLContext? {
        guard config.clientTLSEnabled else { return nil }
        func load<T>(_ setting: String, _ path: String, _ read: () throws -> T) throws -> T {
            do { return try read() } catch {
                throw AgentError("cannot read \(setting) '\(path)' (\(error)); it must be a readable PEM file")
            }
        }
        let chain = try load("client_cert_file", config.clientCertFile) { try NIOSSLCertificate.fromPEMFile(config.clientCertFile) }
        if chain.isEmpty { throw AgentError("client_cert_file '\(config.clientCertFile)' holds no PEM certificate") }
        let key = try load("client_key_file", config.clientKeyFile) { try NIOSSLPrivateKey(file: config.clientKeyFile, format: .pem) }
        let roots = try load("client_trusted_ca_file", config.clientTrustedCAFile) { try NIOSSLCertificate.fromPEMFile(config.clientTrustedCAFile) }
        if roots.isEmpty { throw AgentError("client_trusted_ca_file '\(config.clientTrustedCAFile)' holds no PEM certificate") }
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        tls.minimumTLSVersion = .tlsv12
        // Clients are identified by their certificate's chain to the CA, not by a host name.
        tls.certificateVerification = .noHostnameVerification
        tls.trustRoots = .certificates(roots)
        do { return try NIOSSLContext(configuration: tls) } catch {
            throw AgentError("cannot use client_cert_file '\(config.clientCertFile)' with client_key_file '\(config.clientKeyFile)': \(error); is the key the certificate's?")
        }
    }
    init(channel: Channel) { self.channel = channel }
    var port: Int? { channel.localAddress?.port }
    func close() async { try? await channel.close().get() }
}

final class KVHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let agent: Agent
    var head: HTTPRequestHead?
    var body: [UInt8] = []
    var tooLarge = false

    init(agent: Agent) { self.agent = agent }

    /// A failed TLS handshake (no client certificate, a wrong CA) or a broken request: drop the connection.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h; body = []; tooLarge = false
        case .body(var b):
            if body.count + b.readableBytes <= KVGateway.maxBodyBytes() { body += b.readBytes(length: b.readableBytes) ?? [] } else { tooLarge = true }
        case .end:
            guard let h = head else { return }
            let request = body, tooLarge = self.tooLarge
            let agent = self.agent
            let channel = context.channel
            let keepAlive = h.isKeepAlive
            Task {
                let answer: KVAnswer
                if h.method != .POST || KVPath(uri: h.uri) == nil {
                    answer = KVAnswer(status: .notFound, body: KVGateway.encode(KVError(.invalidRequest(
                        "only POST /v3/kv/put, /v3/kv/range and /v3/kv/deleterange are served here"))))
                } else if tooLarge {
                    answer = .error(KVError(.invalidRequest("request body over \(KVGateway.maxBodyBytes()) bytes")))
                } else {
                    answer = await agent.serveKV(KVPath(uri: h.uri)!, request)
                }
                channel.eventLoop.execute {
                    var headers = HTTPHeaders()
                    headers.add(name: "Content-Type", value: "application/json")
                    headers.add(name: "Content-Length", value: "\(answer.body.count)")
                    if !keepAlive { headers.add(name: "Connection", value: "close") }
                    channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: h.version, status: answer.status, headers: headers)), promise: nil)
                    var buf = channel.allocator.buffer(capacity: answer.body.count)
                    buf.writeBytes(answer.body)
                    channel.write(HTTPServerResponsePart.body(.byteBuffer(buf)), promise: nil)
                    channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in
                        if !keepAlive { channel.close(promise: nil) }
                    }
                }
            }
        }
    }
}
