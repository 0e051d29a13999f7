// The local API: HTTP/1.1 with JSON over a unix socket (mode 0600, so only the node's operator can
// use it). `mycelium status` and friends are its clients; so is `curl --unix-socket`. The answers'
// types, the routes and the typed client are in MyceliumAPI.
//
//   GET  /v1/status        the network, members, roles, leader, term, health, recent events
//   GET  /v1/spore         the primary spore as this node holds it (JSON)
//   GET  /v1/spore/export  a signed seed spore of it (binary), for `mycelium spore export`
//   POST /v1/leave         this node leaves the network
//   POST /v1/vote/failure?node=ID  asks the network (a Byzantine-tolerant vote) whether ID has failed
//   GET  /v1/membership    the sclerotia chain, certificates being issued, revocations
//   POST /v1/revoke?node=ID&reason=TEXT  asks the network to revoke a member
//   GET  /v1/vms           the VM table: where each VM runs, its replica, epoch and lease
//   POST /v1/vm/create?name=&memory_mib=&vcpus=&kernel=&initrd=&cmdline=&on=&replica=auto|none|ID
//   POST /v1/vm/delete?name=  (VMAPI.swift: proposed by the leader, forwarded there from any node)
//   POST /v1/vm/migrate?name=&to=  (to: a node ID; default the VM's replica)
//   GET  /v1/services      the service table: instances, where they run, health, endpoints, events
//   POST /v1/service/deploy  (body: the spec as JSON)   POST /v1/service/stop?name=
//   GET  /v1/service/logs?name=&instance=&bytes=  (ServiceAPI.swift)
//   GET  /v1/events?after=SEQ  the kept events (the latest 200) numbered above SEQ
//   GET  /metrics          Prometheus text format (also on `metrics_listen` over TCP, for scraping)

import Foundation
import MyceliumAPI
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

final class APIHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let agent: Agent
    let metricsOnly: Bool
    var head: HTTPRequestHead?
    var body: [UInt8] = []
    var tooLarge = false
    /// A request body (a service spec) is at most this large.
    static let maxBody = 1 << 20

    init(agent: Agent, metricsOnly: Bool) { self.agent = agent; self.metricsOnly = metricsOnly }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h; body = []; tooLarge = false
            return
        case .body(var buf):
            if body.count + buf.readableBytes > Self.maxBody { tooLarge = true } else { body += buf.readBytes(length: buf.readableBytes) ?? [] }
            return
        case .end:
            break
        }
        guard let head else { return }
        self.head = nil
        let agent = self.agent, channel = context.channel, requestBody = body, tooLarge = self.tooLarge
        let method = head.method, uri = head.uri, metricsOnly = self.metricsOnly
        body = []
        Task {
            let (status, type, body) = await agent.respond(method: method, uri: uri, body: requestBody, metricsOnly: metricsOnly, tooLarge: tooLarge)
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
    /// One request of the local API (or of the metrics listener, `metricsOnly`).
    func respond(method: HTTPMethod, uri: String, body: [UInt8], metricsOnly: Bool, tooLarge: Bool) async -> (HTTPResponseStatus, String, [UInt8]) {
        if tooLarge {
            return (.payloadTooLarge, "application/json", json(APIErrorResponse(error: "request body over \(APIHandler.maxBody) bytes", code: .badRequest)))
        }
        switch metricsOnly ? nil : APIRoute(method: method.rawValue, target: uri) {
        case let .vm(action, query)?:
            let (s, b) = await answerVM(action: action, query: query)
            return (s, "application/json", b)
        case let .service(action, query)?:
            let (s, b) = await answerService(action: action, query: query, body: body)
            return (s, "application/json", b)
        case let .serviceLogs(query)?:
            let (s, b) = await serviceLogs(query: query)
            return (s, "application/json", b)
        case let .volume(action, query)?:
            let (s, b) = await answerVolume(action: action, query: query)
            return (s, "application/json", b)
        case let .volumes(query)?:
            let (s, b) = await answerVolumes(query: query)
            return (s, "application/json", b)
        case .storage?:
            return (.ok, "application/json", json(await storageStatus()))
        default:
            return answer(method: method, uri: uri, metricsOnly: metricsOnly)
        }
    }

    func answer(method: HTTPMethod, uri: String, metricsOnly: Bool = false) -> (HTTPResponseStatus, String, [UInt8]) {
        if method == .GET && uri == APIRoute.metricsPath {
            updateGauges()
            return (.ok, "text/plain; version=0.0.4", AgentMetrics.registry.emitToBuffer())
        }
        if metricsOnly { return (.notFound, "text/plain", Array("only /metrics is served here; the API is on the local socket\n".utf8)) }
        func refuse(_ status: HTTPResponseStatus, _ code: APIErrorCode, _ message: String) -> (HTTPResponseStatus, String, [UInt8]) {
            (status, "application/json", json(APIErrorResponse(error: message, code: code)))
        }
        func accept(_ result: String) -> (HTTPResponseStatus, String, [UInt8]) {
            (.accepted, "application/json", json(ActionResponse(result: result)))
        }
        switch APIRoute(method: method.rawValue, target: uri) {
        case .status: return (.ok, "application/json", json(status()))
        case .spore: return (.ok, "application/json", json(sporeResponse()))
        case .sporeExport:
            // A seed spore verifies only if a sclerotium of that spore signed it (the bootstrap agent
            // before the handoff). Anyone else says which member can.
            let mayWrite = spore.phase == .distributed ? spore.sclerotia.contains(nodeID)
                : spore.members[nodeID]?.roles.contains(.inviter) == true
            guard mayWrite else {
                let who = spore.sclerotia.compactMap { id in spore.members[id].map { "\(id) (\($0.addresses.first ?? "no address yet"))" } }
                return refuse(.conflict, .notASclerotium, """
                    this member is not a sclerotium, and a seed spore verifies only when a sclerotium signed it. \
                    Run 'mycelium spore export' on a sclerotium: \(who.isEmpty ? "none is known yet" : who.joined(separator: ", ")); \
                    or copy the newest file a leader wrote to a seed directory (seed_dirs)
                    """)
            }
            let seed = SeedSpore(spore: spore, signer: certificate, key: key, writtenAt: Int64(Date().timeIntervalSince1970))
            return (.ok, "application/octet-stream", seed.encoded())
        case .membership: return (.ok, "application/json", json(membershipResponse()))
        case .backup: return (.ok, "application/octet-stream", takeBackup().encoded())
        case .events(let query):
            switch EventsResponse.after(query: query) {
            case .failure(let e): return (.badRequest, "application/json", json(e))
            case .success(let after):
                return (.ok, "application/json", json(EventsResponse.window(kept: events, latestSeq: eventSeq, after: after,
                                                                             startedAtMillis: Int64(startedAt.timeIntervalSince1970 * 1000))))
            }
        case let .revoke(raw, rawReason):
            let text = raw.removingPercentEncoding ?? raw
            let reason = (rawReason.removingPercentEncoding ?? rawReason).isEmpty ? "revoked by an operator" : (rawReason.removingPercentEncoding ?? rawReason)
            guard let node = try? MyceliumIdentity.NodeID(parsing: text), spore.members[node] != nil else {
                return refuse(.badRequest, .unknownNode, "'\(text)' is not a member of this network; see 'mycelium status'")
            }
            if spore.revoked[node] != nil { return refuse(.conflict, .nodeNotLive, "\(node) is already revoked") }
            let me = spore.members[nodeID]
            guard spore.sclerotia.contains(nodeID) || (me?.roles.contains(.inviter) == true && !spore.sclerotia.contains(node)) else {
                return refuse(.forbidden, .notAuthorized, spore.sclerotia.contains(node)
                    ? "only a sclerotium may revoke a sclerotium; run this on one (see 'mycelium status')"
                    : "only a sclerotium or a member with the inviter role may revoke; this node has roles \(me?.roles.description ?? "none")")
            }
            submit(.revoke(node: node, reason: String(reason.prefix(Revocation.maxReason))))
            processReady()
            return accept("revocation of \(node) proposed; once it commits every node refuses it (watch 'mycelium status')")
        case .leave:
            guard spore.members[nodeID] != nil else { return refuse(.conflict, .notAMember, "not a member") }
            submit(.setStatus(node: nodeID, .left))
            processReady()
            return accept("leave proposed; the network removes this node once it commits")
        case .failureVote(let raw):
            let text = raw.removingPercentEncoding ?? raw
            guard let node = try? MyceliumIdentity.NodeID(parsing: text), let m = spore.members[node] else {
                return refuse(.badRequest, .unknownNode, "'\(text)' is not a member of this network; see 'mycelium status'")
            }
            guard m.status == .alive || m.status == .suspect else {
                return refuse(.conflict, .nodeNotLive, "\(node) is already \(m.status)")
            }
            if let reason = spore.voteUnavailable(.failure, node: node) {
                return refuse(.conflict, .voteUnavailable, "no Byzantine-tolerant vote on \(node) can be formed: \(reason)")
            }
            requestFailureVote(node.compact)
            processReady()
            return accept("failure vote on \(node) requested; the leader opens at most one round per member every 3 s: watch 'mycelium status' (votes)")
        case .vms: return (.ok, "application/json", json(vmsResponse()))
        case .services: return (.ok, "application/json", json(servicesResponse()))
        case .vm, .service, .serviceLogs, .volume, .volumes, .storage:  // answered in respond (they may wait for the leader or Ceph)
            return refuse(.notFound, .notFound, "no such endpoint: \(method) \(uri)")
        case .metrics, nil:
            return refuse(.notFound, .notFound, "no such endpoint: \(method) \(uri)")
        }
    }

    func status() -> StatusResponse {
        let cs = raft.confState
        let leaderID = raft.leader == .none ? "none" : (router.nodeIDs[raft.leader].map { "\($0)" } ?? "\(raft.leader)")
        return StatusResponse(
            network: "\(network.id)",
            node: "\(nodeID)",
            role: raft.role.rawValue,
            raftMember: cs.isVoter(me) ? "voter" : (cs.isLearner(me) ? "learner" : "none"),
            leader: leaderID,
            term: raft.term,
            commitIndex: raft.commitIndex,
            appliedIndex: raft.appliedIndex,
            epoch: "\(spore.epoch)",
            phase: phaseName,
            sclerotia: spore.sclerotia.map { "\($0)" },
            voters: cs.voters.compactMap { router.nodeIDs[$0].map { "\($0)" } },
            health: fallback ?? (raft.leader == .none ? "no leader" : "ok"),
            members: memberInfos(),
            votes: voteRoundInfos(),
            events: Array(events.suffix(30)),
            podCIDR: control.pods.cidr(of: nodeID).map { "\($0)" } ?? "none",
            podCIDRFile: config.podCIDRFilePath,
            warnings: membershipWarnings(),
            chainGeneration: spore.chain.generation,
            peers: peerLinkInfos())
    }

    func certificateInfo(_ c: MembershipCertificate) -> CertificateInfo {
        let signers: [String]
        if c.generation == 0 {
            signers = ["genesis key \(network.genesisKey.fingerprint)"]
        } else {
            let link = spore.chain.signers(of: c.generation) ?? []
            signers = c.signatures.map { Int($0.index) < link.count ? "\(link[Int($0.index)].id)" : "#\($0.index)" }
        }
        let now = max(spore.now, Int64(Date().timeIntervalSince1970))
        return CertificateInfo(serial: c.serial, generation: c.generation, signers: signers, issuedAt: c.issuedAt, expiresAt: c.expiresAt,
                               expiresInSeconds: c.expiresAt.saturatingSubtracting(now), renewInSeconds: c.renewAt.saturatingSubtracting(now), lifetimeSeconds: c.lifetime)
    }

    /// Members within 20% of their certificate's expiry, clocks that are off, a chain still at the genesis key.
    func membershipWarnings() -> [String] {
        var w: [String] = []
        for m in spore.members.values.sorted(by: { $0.id < $1.id }) where m.status == .alive || m.status == .suspect {
            let info = certificateInfo(m.certificate)
            if info.nearExpiry {
                w.append("certificate of \(m.id) expires in \(info.expiresInSeconds) s (within 20% of its lifetime) and was not renewed: is there a leader, and a quorum of sclerotia?")
            }
            if let skew = router.clockSkew[m.id.compact], abs(skew) * 2 > maxClockSkew {
                w.append("clock of \(m.id) differs by \(skew) s from this node's (refused beyond ±\(maxClockSkew) s): check NTP on both")
            }
        }
        if let p = spore.pendingLink { w.append("sclerotia link \(p.link.generation) is waiting for signatures (\(p.signatures.count) so far)") }
        return w
    }

    func membershipResponse() -> MembershipResponse {
        let chain = spore.chain
        let links = chain.links.map { l in
            LinkInfo(generation: l.generation, sclerotia: l.members.map { "\($0.id)" },
                     signedBy: l.signatures.map { s in
                         l.generation == 1 ? "genesis key \(network.genesisKey.fingerprint)"
                             : (chain.signers(of: l.generation - 1).map { Int(s.index) < $0.count ? "\($0[Int(s.index)].id)" : "#\(s.index)" } ?? "?")
                     },
                     issuedAt: l.issuedAt)
        }
        return MembershipResponse(
            network: "\(network.id)", genesisKey: network.genesisKey.fingerprint, certificateLifetimeSeconds: spore.lifetime, chain: links,
            pendingLink: spore.pendingLink?.link.generation,
            issuances: spore.issuances.values.sorted { $0.id < $1.id }.map {
                IssuanceInfo(id: $0.id, node: "\($0.certificate.nodeID)", purpose: $0.purpose.label, signatures: $0.signatures.count,
                             needed: quorumSize(of: chain.signers(of: $0.certificate.generation)?.count ?? 1))
            },
            revoked: spore.revoked.values.sorted { $0.node < $1.node }.map {
                RevocationInfo(node: "\($0.node)", serial: $0.serial, at: $0.at, reason: $0.reason)
            },
            certificate: certificateInfo(certificate))
    }

    func sporeResponse() -> SporeResponse {
        SporeResponse(
            network: "\(network.id)", epoch: "\(spore.epoch)", phase: phaseName, members: memberInfos(),
            sclerotia: spore.sclerotia.map { "\($0)" }, settings: spore.settings, votes: voteRoundInfos(),
            leases: spore.leases.values.sorted { $0.name < $1.name }.map {
                LeaseInfo(name: $0.name, holder: "\($0.holder)", expiresInSeconds: $0.expiresAt - spore.now)
            })
    }

    private var phaseName: String { spore.phase == .bootstrap ? "bootstrap" : "distributed" }

    func memberInfos() -> [MemberInfo] {
        spore.members.values.sorted { $0.id < $1.id }.map { m in
            MemberInfo(
                id: "\(m.id)", status: "\(m.status)", roles: "\(m.roles)", addresses: m.addresses,
                sclerotium: spore.sclerotia.contains(m.id), cpus: Int(m.capabilities.cpus), key: m.key.fingerprint,
                expiresInSeconds: m.expiresAt - spore.now, trust: Int(spore.trust.score(of: m.id)),
                jailed: spore.trust.isJailed(m.id), approvedSclerotium: spore.approvedSclerotia.contains(m.id),
                certificate: certificateInfo(m.certificate), clockSkewSeconds: router.clockSkew[m.id.compact],
                revoked: spore.revoked[m.id] != nil, features: "\(m.capabilities.features)")
        }
    }

    private func voteRoundInfos() -> [VoteRoundInfo] {
        spore.rounds.values.sorted { $0.sequence < $1.sequence }.map { r in
            VoteRoundInfo(
                sequence: Int(r.sequence), kind: "\(r.kind)", node: "\(r.node)", voters: r.spec.voters.count,
                tolerates: Int(r.spec.assumedFaults),
                state: r.decision.map { $0 == .yes ? "decided yes" : "decided no" } ?? (r.closed ? "closed" : "open"),
                localLatencyMilliseconds: voteTimings[r.sequence]?.latencyMilliseconds ?? -1,
                localMessagesSent: voteTimings[r.sequence]?.messagesSent ?? 0,
                voterIDs: r.spec.voters.map { "\($0.id)" },
                evidence: spore.trust.slashed.filter { $0.round == r.spec.id }.sorted().map { "\($0.accused): \($0.offence)" })
        }
    }

    /// The API's JSON; our own types always encode, so a failure is a bug worth a loud answer, not `{}`.
    func json<T: Encodable>(_ value: T) -> [UInt8] {
        do { return try APIJSON.encode(value) } catch {
            return Array("{\"error\" : \"the agent could not encode its answer: \(error)\", \"code\" : \"internal\"}".utf8)
        }
    }
}
