// The local API: HTTP/1.1 with JSON over a unix socket (mode 0600, so only the node's operator can
// use it). `mycelium status` and friends are its clients; so is `curl --unix-socket`.
//
//   GET  /v1/status        the network, members, roles, leader, term, health, recent events
//   GET  /v1/spore         the primary spore as this node holds it (JSON)
//   GET  /v1/spore/export  a signed seed spore of it (binary), for `mycelium spore export`
//   POST /v1/leave         this node leaves the network
//   POST /v1/vote/failure?node=ID  asks the network (a Byzantine-tolerant vote) whether ID has failed
//   GET  /metrics          Prometheus text format (also on `metrics_listen` over TCP, for scraping)

import Foundation
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import MyceliumVote
import NIOCore
import NIOHTTP1
import NIOPosix

final class APIServer: Sendable {
    let channel: Channel
    let path: String

    static func bootstrap(agent: Agent, group: EventLoopGroup, metricsOnly: Bool) -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                    try ch.pipeline.syncOperations.addHandler(APIHandler(agent: agent, metricsOnly: metricsOnly))
                }
            }
    }

    static func start(path: String, agent: Agent, group: EventLoopGroup) async throws -> APIServer {
        unlink(path)
        let ch = try await bootstrap(agent: agent, group: group, metricsOnly: false).bind(unixDomainSocketPath: path).get()
        chmod(path, 0o600)
        return APIServer(channel: ch, path: path)
    }

    /// The Prometheus endpoint on TCP: serves GET /metrics and nothing else (the API stays on the socket).
    static func startMetrics(host: String, port: Int, agent: Agent, group: EventLoopGroup) async throws -> APIServer {
        let ch = try await bootstrap(agent: agent, group: group, metricsOnly: true).bind(host: host, port: port).get()
        return APIServer(channel: ch, path: "")
    }

    init(channel: Channel, path: String) { self.channel = channel; self.path = path }

    func close() async {
        try? await channel.close().get()
        if !path.isEmpty { unlink(path) }
    }
}

final class APIHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let agent: Agent
    let metricsOnly: Bool

    init(agent: Agent, metricsOnly: Bool) { self.agent = agent; self.metricsOnly = metricsOnly }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else { return }
        let agent = self.agent
        let channel = context.channel
        let method = head.method, uri = head.uri, metricsOnly = self.metricsOnly
        Task {
            let (status, type, body) = await agent.answer(method: method, uri: uri, metricsOnly: metricsOnly)
            channel.eventLoop.execute {
                var headers = HTTPHeaders()
                headers.add(name: "Content-Type", value: type)
                headers.add(name: "Content-Length", value: "\(body.count)")
                headers.add(name: "Connection", value: "close")
                channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)), promise: nil)
                var buf = channel.allocator.buffer(capacity: body.count)
                buf.writeBytes(body)
                channel.write(HTTPServerResponsePart.body(.byteBuffer(buf)), promise: nil)
                channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in channel.close(promise: nil) }
            }
        }
    }
}

extension Agent {
    func answer(method: HTTPMethod, uri: String, metricsOnly: Bool = false) -> (HTTPResponseStatus, String, [UInt8]) {
        if method == .GET && uri == "/metrics" {
            updateGauges()
            return (.ok, "text/plain; version=0.0.4", AgentMetrics.registry.emitToBuffer())
        }
        if metricsOnly { return (.notFound, "text/plain", Array("only /metrics is served here; the API is on the local socket\n".utf8)) }
        switch (method, uri) {
        case (.GET, "/v1/status"): return (.ok, "application/json", json(status()))
        case (.GET, "/v1/spore"): return (.ok, "application/json", json(sporeJSON()))
        case (.GET, "/v1/spore/export"):
            let seed = SeedSpore(spore: spore, signer: certificate, key: key, writtenAt: Int64(Date().timeIntervalSince1970))
            return (.ok, "application/octet-stream", seed.encoded())
        case (.POST, "/v1/leave"):
            guard spore.members[certificate.nodeID] != nil else { return (.conflict, "application/json", json(["error": "not a member"])) }
            submit(.setStatus(node: certificate.nodeID, .left))
            processReady()
            return (.accepted, "application/json", json(["result": "leave proposed; the network removes this node once it commits"]))
        case (.POST, _) where uri.hasPrefix("/v1/vote/failure?node="):
            let text = String(uri.dropFirst("/v1/vote/failure?node=".count))
            guard let node = try? MyceliumIdentity.NodeID(parsing: text), let m = spore.members[node] else {
                return (.badRequest, "application/json", json(["error": "'\(text)' is not a member of this network; see 'mycelium status'"]))
            }
            guard m.status == .alive || m.status == .suspect else {
                return (.conflict, "application/json", json(["error": "\(node) is already \(m.status)"]))
            }
            if let reason = spore.voteUnavailable(.failure, node: node) {
                return (.conflict, "application/json", json(["error": "no Byzantine-tolerant vote on \(node) can be formed: \(reason)"]))
            }
            requestFailureVote(node.compact)
            processReady()
            return (.accepted, "application/json", json(["result": "failure vote on \(node) requested; watch 'mycelium status'"]))
        default:
            return (.notFound, "application/json", json(["error": "no such endpoint: \(method) \(uri)"]))
        }
    }

    func status() -> [String: Any] {
        let cs = raft.confState
        let leaderID = raft.leader == .none ? "none" : (router.nodeIDs[raft.leader].map { "\($0)" } ?? "\(raft.leader)")
        return [
            "network": "\(network.id)",
            "node": "\(certificate.nodeID)",
            "role": raft.role.rawValue,
            "raft_member": cs.isVoter(me) ? "voter" : (cs.isLearner(me) ? "learner" : "none"),
            "leader": leaderID,
            "term": raft.term,
            "commit_index": raft.commitIndex,
            "applied_index": raft.appliedIndex,
            "epoch": "\(spore.epoch)",
            "phase": spore.phase == .bootstrap ? "bootstrap" : "distributed",
            "sclerotia": spore.sclerotia.map { "\($0)" },
            "voters": cs.voters.compactMap { router.nodeIDs[$0].map { "\($0)" } },
            "health": fallback ?? (raft.leader == .none ? "no leader" : "ok"),
            "members": sporeJSON()["members"] ?? [],
            "votes": sporeJSON()["votes"] ?? [],
            "events": Array(events.suffix(30)),
            "pod_cidr": control.pods.cidr(of: certificate.nodeID).map { "\($0)" } ?? "none",
            "pod_cidr_file": config.podCIDRFilePath,
        ]
    }

    func sporeJSON() -> [String: Any] {
        let members: [[String: Any]] = spore.members.values.sorted { $0.id < $1.id }.map { m in
            [
                "id": "\(m.id)", "status": "\(m.status)", "roles": "\(m.roles)", "addresses": m.addresses,
                "sclerotium": spore.sclerotia.contains(m.id), "cpus": Int(m.capabilities.cpus),
                "key": m.key.fingerprint, "expires_in_s": m.expiresAt - spore.now,
                "trust": Int(spore.trust.score(of: m.id)), "jailed": spore.trust.isJailed(m.id),
                "approved_sclerotium": spore.approvedSclerotia.contains(m.id),
            ]
        }
        let votes: [[String: Any]] = spore.rounds.values.sorted { $0.sequence < $1.sequence }.map { r in
            [
                "sequence": Int(r.sequence), "kind": "\(r.kind)", "node": "\(r.node)", "voters": r.spec.voters.count,
                "tolerates": Int(r.spec.assumedFaults),
                "state": r.decision.map { $0 == .yes ? "decided yes" : "decided no" } ?? (r.closed ? "closed" : "open"),
                "local_latency_ms": voteTimings[r.sequence]?.latencyMilliseconds ?? -1,
                "local_messages_sent": voteTimings[r.sequence]?.messagesSent ?? 0,
            ]
        }
        return [
            "network": "\(network.id)", "epoch": "\(spore.epoch)", "phase": spore.phase == .bootstrap ? "bootstrap" : "distributed",
            "members": members, "sclerotia": spore.sclerotia.map { "\($0)" }, "settings": spore.settings, "votes": votes,
            "leases": spore.leases.values.map { ["name": $0.name, "holder": "\($0.holder)", "expires_in_s": $0.expiresAt - spore.now] },
        ]
    }

    func json(_ o: Any) -> [UInt8] {
        Array((try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys, .prettyPrinted])) ?? Data("{}".utf8))
    }
}

/// A minimal client for the local API (used by the CLI).
public enum AgentAPIClient {
    public static func request(socket: String, method: String, path: String) async throws -> (Int, [UInt8]) {
        let fd = Foundation.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw AgentError("cannot create a unix socket") }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socket.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw AgentError("socket path too long: \(socket)") }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b }; p[bytes.count] = 0 }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard rc == 0 else {
            throw AgentError("no agent answers at \(socket) (\(String(cString: strerror(errno)))); is myceliumd running with this --home?")
        }
        // An agent that is stopping or wedged must not hang the CLI (or a test) forever.
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let req = Array("\(method) \(path) HTTP/1.1\r\nHost: agent\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".utf8)
        _ = req.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                throw AgentError("the agent at \(socket) did not answer within 10 s")
            }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        guard let sep = out.firstRange(of: Array("\r\n\r\n".utf8)) else { throw AgentError("malformed answer from the agent") }
        let head = String(decoding: out[..<sep.lowerBound], as: UTF8.self)
        let code = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
        return (code, Array(out[sep.upperBound...]))
    }
}
