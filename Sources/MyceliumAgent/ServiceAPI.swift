// Services in the agent (issue 17): the controller's driver made at start, the requests it sends
// through the leader, and the local API: `GET /v1/services`, `POST /v1/service/deploy` (the spec as
// JSON in the body), `POST /v1/service/stop?name=`, `GET /v1/service/logs?name=&instance=&bytes=`.
//
// Like VM commands, any node takes an operator's request; it goes to the leader (forwarded over the
// peer channel), which refuses what the table would refuse or what no member could ever run, and
// proposes the rest, so a refused spec leaves nothing behind. A node's own reports and placement
// facts travel the same way; the leader takes what they say of a node only from that node.

import Foundation
import NetworkController
import Logging
import MyceliumAPI
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumSpores
import NIOHTTP1
import MyceliumRBD
import Scheduler
import ServiceController
import ServiceDNS
import ServiceDriver
import ServiceRuntime
import StorageDriver
import Synchronization

extension Agent {
    /// The process driver under HOME/services (with podman when this node has what it needs), or the
    /// reason this node runs no services.
    static func makeServiceDriver(_ config: AgentConfig, logger: Logger, volumes book: VolumeBook? = nil) -> (ProcessServiceDriver?, String) {
        let dir = config.home + "/services"
        do {
            // The previous run's reaper goes first, so it cannot kill what this run starts.
            ServiceReaper.stopPredecessor(dir)
            let podman = podmanSettings(config)
            if case .failure(let why) = podman { logger.info("this node offers no podman driver", metadata: ["reason": "\(why)"]) }
            let d = try ProcessServiceDriver(directory: dir, podman: podman, volumes: serviceVolumeMounts(config, logger: logger),
                                             volumeSource: { book?.serviceSource($0) })
            startServiceReaper(dir, logger: logger)
            return (d, "")
        } catch {
            logger.error("this node cannot run services", metadata: ["error": "\(error)"])
            return (nil, "\(error)")
        }
    }

    /// How this node mounts service volumes (under HOME/volumes/mnt). Before a Ceph volume is
    /// attached, every other client of its image is fenced through this node's Ceph settings, as a
    /// VM's takeover does (StorageDriver/Fencing.swift).
    static func serviceVolumeMounts(_ config: AgentConfig, logger: Logger) -> VolumeMounts {
        let conf = config.cephConf, client = config.cephClient
        let keyring = config.cephKeyring.isEmpty ? nil : config.cephKeyring
        return VolumeMounts(volumeDirectory: config.home + "/volumes", fence: { pool, image in
            guard !conf.isEmpty else { throw VolumeMountError("this node has no Ceph cluster configured (ceph_conf)") }
            let c = try await CephConnection.connect(CephClientConfig(confFile: conf, clientName: client, keyring: keyring))
            let f = try await VolumeFencing.fenceOthers(connection: c, pool: pool, image: image)
            logger.notice("service volume: \(f) before attaching it")
            return "\(f)"
        })
    }

    /// The agent's private podman (HOME/podman, ServiceRuntime/PodmanSetup.swift) on the CNI network
    /// `mycelium` of mycelium-cni, whose IPAM reads the pod CIDR file the network controller writes;
    /// or why this node cannot offer podman.
    static func podmanSettings(_ config: AgentConfig) -> Result<PodmanSettings, PodmanSetup.Unavailable> {
        if config.podman == "off" { return .failure(PodmanSetup.Unavailable(description: "turned off in the agent's configuration (podman = \"off\")")) }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let binDir = config.cniBinDir.isEmpty ? URL(fileURLWithPath: exe).deletingLastPathComponent().path : config.cniBinDir
        var setup = PodmanSetup(directory: config.home + "/podman", pluginDirectories: [binDir],
                                bpfObject: config.datapathObject.isEmpty ? "/usr/lib/mycelium/datapath.bpf.o" : config.datapathObject,
                                pinDirectory: config.datapathPinDir, podCIDRFile: config.podCIDRFilePath)
        setup.podman = config.podman
        let pods = podNetworkFacts(config)
        setup.mtu = pods.mtu
        setup.dnsServers = pods.dns.map { [$0] } ?? []
        do { return .success(try setup.prepare()) } catch { return .failure(error) }
    }

    /// Starts the service reaper (ServiceDriver/ServiceReaper.swift) and records its pid.
    static func startServiceReaper(_ dir: String, logger: Logger) {
        // Only myceliumd knows --service-reaper (a test hosting an agent must not start a copy of itself).
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        guard URL(fileURLWithPath: exe).lastPathComponent == "myceliumd" else {
            logger.warning("no service reaper: this agent does not run as myceliumd; its instances outlive it if it dies", metadata: ["executable": "\(exe)"])
            return
        }
        switch spawnDetached(["/proc/self/exe", "--service-reaper", dir, "--agent-pid", "\(getpid())"]) {
        case .success(let pid):
            do { try AtomicFile.write(Array("\(pid)\n".utf8), to: ServiceReaper.pidPath(dir)) } catch {
                logger.warning("cannot record the service reaper's pid; a restarted agent cannot stop it first", metadata: ["error": "\(error)"])
            }
        case .failure(let e):
            logger.error("the service reaper did not start: instances outlive this agent if it dies", metadata: ["error": "\(e.description)"])
        }
    }

    /// What this node tells the network about itself for placement.
    static func serviceSettings(_ config: AgentConfig, driver: ProcessServiceDriver?, k3s: Bool = false) -> ServiceSettings {
        var labels: [String: String] = [:]
        for l in config.nodeLabels {
            let parts = l.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { labels[String(parts[0])] = String(parts[1]) }
        }
        let host = splitAddress(config.advertisedAddress)?.host ?? "127.0.0.1"
        var drivers: [ServiceDriverKind] = []
        if let driver {
            drivers.append(.process)
            if driver.podman != nil { drivers.append(.podman) }
        }
        if k3s { drivers.append(.k3s) }
        return ServiceSettings(info: ServiceNodeInfo(labels: labels, drivers: drivers, draining: false, address: host,
                                                     unavailable: driver?.podmanUnavailable ?? ""))
    }

    /// Unix milliseconds by this node's wall clock: the stamp a leader puts on what it proposes.
    static func wallMillis() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)) }

    /// A controller's request for the leader: proposed here when this node leads, else forwarded.
    func requestOfLeader(_ entry: ControlEntry) {
        if case .volume(let command, _) = entry {
            if raft.role == .leader {
                _ = proposeVolume(command, from: nodeID)
            } else {
                let body = command.encoded()
                Task { _ = try? await self.forward(.volume, body, forwarded: false) }
            }
            return
        }
        guard case .service(let command, _) = entry else {
            logger.warning("a controller asked the leader for an entry that is not a service command; dropped")
            return
        }
        if raft.role == .leader {
            _ = proposeService(command, from: nodeID)
            return
        }
        let body = command.encoded()
        Task { _ = try? await self.forward(.service, body, forwarded: false) }
    }

    /// A follower forwarded a service command (an operator's, or its controller's).
    func serveForwardedService(_ body: [UInt8], from peer: UInt64) -> KVAnswer {
        guard let command = try? ServiceCommand(decoding: body) else {
            return KVAnswer(status: .badRequest, body: json(APIErrorResponse(error: "malformed forwarded service command", code: .badRequest)))
        }
        guard raft.role == .leader else {
            return KVAnswer(status: .serviceUnavailable, body: json(APIErrorResponse(error: "not the leader any more; retry", code: .noLeader)))
        }
        guard let sender = router.nodeIDs[peer] else {
            return KVAnswer(status: .forbidden, body: json(APIErrorResponse(error: "unknown peer", code: .notAuthorized)))
        }
        return proposeService(command, from: sender)
    }

    /// The leader: refuse what the table would refuse, or what no member could ever run; else propose.
    func proposeService(_ command: ServiceCommand, from sender: MyceliumIdentity.NodeID) -> KVAnswer {
        func refuse(_ m: String, _ status: HTTPResponseStatus = .conflict) -> KVAnswer {
            KVAnswer(status: status, body: json(APIErrorResponse(error: m, code: .serviceRefused)))
        }
        switch command {
        case .report(let node, _), .nodeInfo(let node, _), .k3sServer(let node, _, _), .k3sStatus(let node, _), .endpoints(let node, _):
            if node != sender { return refuse("\(sender) may report only on itself, not on \(node)", .forbidden) }
        case .assign:
            return refuse("placements are the leader's own", .forbidden)
        case .deploy(let spec):
            if let p = ServiceRules.problem(spec) { return refuse(p, .badRequest) }
            if let p = control.serviceVolumeProblem(spec) { return refuse(p) }
            if let p = ServiceRules.impossible(spec, state: control) { return refuse(p) }
        case .remove, .drain:
            break
        }
        var trial = control.services
        do { _ = try trial.apply(command, spore: spore, pods: control.pods, now: control.nowMillis) } catch { return refuse("\(error)") }
        // Before the proposal: a one-voter leader commits and applies it within processReady().
        let existed: Bool = if case .deploy(let spec) = command { control.services.services[spec.name] != nil } else { false }
        do { _ = try raft.propose(ControlEntry.service(command, millis: Self.wallMillis()).encoded()) } catch {
            return KVAnswer(status: .serviceUnavailable, body: json(APIErrorResponse(error: "proposal refused: \(error); retry", code: .noLeader)))
        }
        processReady()
        switch command {
        case .deploy(let spec):
            let update = existed
            logger.info("service \(update ? "update" : "deployment") proposed", metadata: ["service": "\(spec.name)", "peer": "\(sender)", "replicas": "\(spec.replicas)"])
            return KVAnswer(status: .accepted, body: json(ActionResponse(result: "service \(spec.name) \(update ? "update" : "deployment") proposed; watch 'mycelium service show \(spec.name)'")))
        case .remove(let name):
            logger.info("service stop proposed", metadata: ["service": "\(name)", "peer": "\(sender)"])
            return KVAnswer(status: .accepted, body: json(ActionResponse(result: "service \(name) stop proposed; its instances stop once it commits")))
        case let .drain(node, on):
            return KVAnswer(status: .accepted, body: json(ActionResponse(result: on
                ? "drain of \(node) proposed: it gets no new instance and its instances move elsewhere; watch 'mycelium service list'"
                : "\(node) takes instances again once this commits")))
        default:
            return KVAnswer(status: .accepted, body: json(ActionResponse(result: "proposed")))
        }
    }

    // MARK: the local API

    func servicesResponse() -> ServicesResponse {
        let table = control.services
        return ServicesResponse(services: table.services.values.sorted { $0.name < $1.name }.map { r in
            if r.spec.driver == .k3s { return Self.k3sServiceInfo(r, table) }
            let serving = Set(servingSlots(r))
            let instances = (0..<r.spec.replicas).map { slot -> ServiceInstanceInfo in
                let node = r.assignments[slot]
                let i = r.instances[slot].flatMap { $0.node == node ? $0 : nil }
                return ServiceInstanceInfo(id: ServiceReconciler.instanceID(r.name, slot), slot: Int(slot), node: node.map { "\($0)" } ?? "",
                                           state: node == nil ? "unplaced" : i.map { "\($0.state)" } ?? "unknown",
                                           health: i.map { "\($0.health)" } ?? "unknown", serving: serving.contains(slot),
                                           address: i?.address ?? "", restarts: i?.restarts ?? 0, message: i?.message ?? "",
                                           generation: i?.generation ?? 0)
            }
            let port = r.spec.ports.first?.port
            let endpoints = serving.sorted().compactMap { slot -> String? in
                guard let a = r.instances[slot]?.address, !a.isEmpty else { return nil }
                return port.map { "\(a):\($0)" } ?? a
            }
            var info = ServiceInfo(name: r.name, driver: "\(r.spec.driver)", generation: r.generation, replicas: Int(r.spec.replicas),
                                   serving: serving.count, pending: r.pending, instances: instances, endpoints: endpoints,
                                   events: r.events.map { ServiceEventInfo(at: $0.millis, text: $0.text) }, spec: Self.document(r.spec))
            info.pinned = ServiceRules.pinned(r.spec, volumes: control.volumes).map { "node \($0.node): \($0.why)" }
            return info
        }, dns: dnsAddress)
    }

    /// The slots that answer traffic: reported serving, on a member that is alive in the spore and
    /// that this agent's own failure detector does not suspect (a dead host's instances leave DNS as
    /// soon as it misses its probes, before the vote confirms its failure; a wrong suspicion only
    /// hides an instance until the host answers again).
    func servingSlots(_ r: ServiceRecord) -> [UInt16] {
        r.servingSlots.filter { slot in
            r.assignments[slot].map { spore.members[$0]?.status == .alive && !suspectedForServices.contains($0.compact) } ?? false
        }
    }

    /// Follows the failure detector: DNS and the API stop naming instances on a node it suspects, or
    /// whose connection from here broke and has stayed broken for `linkLossTicks` ticks (a process or
    /// host that died closes its sockets: the kernel says so long before a probe can; a link that
    /// comes back within the grace hides nothing).
    func followSuspicions() {
        let lost = lostConnections()
        linkLostSince = linkLostSince.filter { lost.contains($0.key) }
        for p in lost where linkLostSince[p] == nil { linkLostSince[p] = governor.ticks }
        let cut = linkLostSince.filter { governor.ticks - $0.value >= Self.linkLossTicks }.keys
        let now = governor.locallySuspected.union(cut)
        if now != suspectedForServices {
            suspectedForServices = now
            refreshServiceEndpoints()
        }
    }

    /// `POST /v1/service/ACTION?QUERY` with `body`.
    func answerService(action: String, query: String, body: [UInt8]) async -> (HTTPResponseStatus, [UInt8]) {
        let q = APIQuery.parse(Substring(query))
        func bad(_ m: String) -> (HTTPResponseStatus, [UInt8]) { (.badRequest, json(APIErrorResponse(error: m, code: .badRequest))) }
        let command: ServiceCommand
        switch action {
        case "deploy":
            let doc: ServiceSpecDocument
            do { doc = try APIJSON.decode(ServiceSpecDocument.self, from: body) } catch {
                return bad("the body is not a service spec (\(error)); send one with 'mycelium service deploy FILE'")
            }
            switch Self.spec(doc) {
            case .success(let spec): command = .deploy(spec)
            case .failure(let e): return bad(e.message)
            }
        case "drain", "undrain":
            var node = nodeID
            if let text = q["node"], !text.isEmpty {
                guard let id = try? MyceliumIdentity.NodeID(parsing: text), spore.members[id] != nil else {
                    return bad("'\(text)' is not a member of this network; see 'mycelium status'")
                }
                node = id
            }
            command = .drain(node: node, action == "drain")
        case "stop":
            guard let name = q["name"], !name.isEmpty else { return bad("stop needs name=NAME") }
            guard control.services.services[name] != nil else {
                return (.notFound, json(APIErrorResponse(error: "no service named '\(name)'; see 'mycelium service list'", code: .serviceRefused)))
            }
            command = .remove(name: name)
        default:
            return (.notFound, json(APIErrorResponse(error: "no service action '\(action)'; there are deploy, stop, drain and undrain", code: .notFound)))
        }
        if raft.role == .leader {
            let a = proposeService(command, from: nodeID)
            return (a.status, a.body)
        }
        do {
            let a = try await forward(.service, command.encoded(), forwarded: false)
            return (a.status, a.body)
        } catch {
            return (.serviceUnavailable, json(APIErrorResponse(error: "\(error)", code: .noLeader)))
        }
    }

    /// `GET /v1/service/logs?name=&instance=&bytes=`: the instance's log tail, read here when it runs
    /// here, else asked of the node that runs it over the authenticated peer channel.
    func serviceLogs(query: String) async -> (HTTPResponseStatus, [UInt8]) {
        let q = APIQuery.parse(Substring(query))
        guard let name = q["name"], let r = control.services.services[name] else {
            return (.notFound, json(APIErrorResponse(error: "no service named '\(q["name"] ?? "")'; see 'mycelium service list'", code: .serviceRefused)))
        }
        var id = q["instance"] ?? ""
        if let slot = UInt16(id), slot < r.spec.replicas { id = ServiceReconciler.instanceID(name, slot) }
        // No instance named: the first one here, else the first one placed.
        let slots = r.assignments.sorted { $0.key < $1.key }
        let slot: UInt16?
        if id.isEmpty {
            slot = slots.first { $0.value == nodeID }?.key ?? slots.first?.key
        } else {
            slot = slots.first { ServiceReconciler.instanceID(name, $0.key) == id }?.key
        }
        guard let slot, let node = r.assignments[slot] else {
            return (.notFound, json(APIErrorResponse(error: id.isEmpty ? "no instance of '\(name)' is placed; see 'mycelium service show \(name)'"
                : "no instance '\(id)' of '\(name)' is placed; see 'mycelium service show \(name)'", code: .serviceRefused)))
        }
        let bytes = min(max(Int(q["bytes"] ?? "") ?? 16384, 1), 1 << 20)
        let local = "name=\(name)&instance=\(ServiceReconciler.instanceID(name, slot))&bytes=\(bytes)"
        if node == nodeID { return localServiceLogs(query: local) }
        guard spore.members[node]?.status == .alive else {
            return (.serviceUnavailable, json(APIErrorResponse(error: "\(ServiceReconciler.instanceID(name, slot)) runs on \(node), which is \(spore.members[node]?.status.description ?? "not a member"); its log is on that node's disk", code: .serviceRefused)))
        }
        // A forwarded answer must fit one frame.
        let forwarded = "name=\(name)&instance=\(ServiceReconciler.instanceID(name, slot))&bytes=\(min(bytes, Frame.defaultMaxSize / 2))"
        let answer = await ask(node.compact, .serviceLogs, Array(forwarded.utf8))
        return (answer.status, answer.body)
    }

    /// The log tail of an instance this node runs (`instance` is its full ID).
    func localServiceLogs(query: String) -> (HTTPResponseStatus, [UInt8]) {
        let q = APIQuery.parse(Substring(query))
        let name = q["name"] ?? "", id = q["instance"] ?? ""
        let bytes = min(max(Int(q["bytes"] ?? "") ?? 16384, 1), 1 << 20)
        guard let r = control.services.services[name],
              r.assignments.contains(where: { $0.value == nodeID && ServiceReconciler.instanceID(name, $0.key) == id }) else {
            return (.conflict, json(APIErrorResponse(error: "\(id) does not run on \(nodeID) (any more); see 'mycelium service show \(name)'", code: .serviceRefused)))
        }
        let text = serviceDriver?.logs(id, maxBytes: bytes) ?? ""
        return (.ok, json(ServiceLogsResponse(instance: id, node: "\(nodeID)", log: text)))
    }

    // MARK: spec conversion

    struct SpecProblem: Error { let message: String }

    /// The operator's document as the table's spec, or what is wrong with it.
    static func spec(_ d: ServiceSpecDocument) -> Result<ServiceSpec, SpecProblem> {
        func fail(_ m: String) -> Result<ServiceSpec, SpecProblem> { .failure(SpecProblem(message: m)) }
        guard let driver = ServiceDriverKind(name: d.driver) else { return fail("driver '\(d.driver)': use process, podman or k3s") }
        guard let restart = RestartPolicy(name: d.restart.policy) else { return fail("restart policy '\(d.restart.policy)': use always, on-failure or never") }
        guard (0...Int(ServiceSpec.maxReplicas)).contains(d.replicas) else { return fail("replicas \(d.replicas) is outside 0…\(ServiceSpec.maxReplicas)") }
        guard (0...1_024_000).contains(d.cpuMillis), (1...(1 << 22)).contains(d.memoryMiB) else {
            return fail("resources: cpu \(d.cpuMillis)m or memory \(d.memoryMiB) MiB is out of range (memory at least 1 MiB)")
        }
        var ports: [ServicePort] = []
        for p in d.ports {
            guard (1...65535).contains(p.port) else { return fail("port \(p.port) is outside 1…65535") }
            ports.append(ServicePort(name: p.name, port: UInt16(p.port), proto: p.proto))
        }
        var health: ServiceHealthSpec?
        if let h = d.health {
            let kind: ServiceHealthKind
            switch h.type {
            case "tcp", "http":
                guard let port = h.port, (1...65535).contains(port) else { return fail("health: a \(h.type) check needs a port from 1 to 65535") }
                kind = h.type == "tcp" ? .tcp(port: UInt16(port)) : .http(port: UInt16(port), path: h.path ?? "/")
            default:
                kind = .exec(h.command ?? [])
            }
            guard h.intervalMillis <= 3_600_000, h.timeoutMillis <= 3_600_000, (0...1000).contains(h.threshold) else {
                return fail("health: interval and timeout at most 1 h, threshold at most 1000")
            }
            health = ServiceHealthSpec(kind: kind, intervalMillis: UInt32(h.intervalMillis), timeoutMillis: UInt32(h.timeoutMillis), threshold: UInt32(h.threshold))
        }
        guard (0...Int(UInt32.max)).contains(d.restart.maxRestarts), (0...3_600_000).contains(d.restart.delayMillis) else {
            return fail("restart: max_restarts or delay out of range")
        }
        var placement = ServicePlacement()
        placement.strategy = d.placement.strategy
        placement.constraints = d.placement.constraints
        placement.preferences = d.placement.preferences.map { (rule: $0.rule, weight: Int32(clamping: $0.weight)) }
        placement.minTrustPPM = UInt32((d.placement.minTrust * 1_000_000).rounded())
        placement.spreadLevel = d.placement.spread
        guard (0...Int(UInt16.max)).contains(d.placement.maxPerNode) else { return fail("max_per_node \(d.placement.maxPerNode) is out of range") }
        placement.maxPerNode = UInt16(d.placement.maxPerNode)
        placement.antiAffinity = d.placement.antiAffinity
        let spec = ServiceSpec(name: d.name, driver: driver, command: d.command, image: d.image, environment: d.env, replicas: UInt16(d.replicas),
                               cpuMillis: UInt32(d.cpuMillis), memoryMiB: UInt32(d.memoryMiB), ports: ports, health: health, restart: restart,
                               maxRestarts: UInt32(d.restart.maxRestarts), restartDelayMillis: UInt32(d.restart.delayMillis),
                               placement: placement, dependsOn: d.dependsOn,
                               volumes: d.volumes.map { ServiceVolume(name: $0.name, path: $0.path) })
        if let p = spec.problem ?? ServiceRules.problem(spec) { return fail(p) }
        return .success(spec)
    }

    /// The table's spec as the operator's document (what `service show` prints).
    static func document(_ s: ServiceSpec) -> ServiceSpecDocument {
        var d = ServiceSpecDocument(name: s.name, command: s.command)
        d.driver = "\(s.driver)"; d.image = s.image; d.env = s.environment; d.replicas = Int(s.replicas)
        d.cpuMillis = Int(s.cpuMillis); d.memoryMiB = Int(s.memoryMiB)
        d.ports = s.ports.map { .init(name: $0.name, port: Int($0.port), proto: $0.proto) }
        if let h = s.health {
            var dh: ServiceSpecDocument.Health
            switch h.kind {
            case .tcp(let port): dh = .init(type: "tcp", port: Int(port))
            case .http(let port, let path): dh = .init(type: "http", port: Int(port), path: path)
            case .exec(let c): dh = .init(type: "exec", command: c)
            }
            dh.intervalMillis = Int(h.intervalMillis); dh.timeoutMillis = Int(h.timeoutMillis); dh.threshold = Int(h.threshold)
            d.health = dh
        }
        d.restart.policy = "\(s.restart)"; d.restart.maxRestarts = Int(s.maxRestarts); d.restart.delayMillis = Int(s.restartDelayMillis)
        d.placement.strategy = s.placement.strategy; d.placement.constraints = s.placement.constraints
        d.placement.preferences = s.placement.preferences.map { .init(rule: $0.rule, weight: Int($0.weight)) }
        d.placement.minTrust = Double(s.placement.minTrustPPM) / 1_000_000; d.placement.spread = s.placement.spreadLevel
        d.placement.maxPerNode = Int(s.placement.maxPerNode); d.placement.antiAffinity = s.placement.antiAffinity
        d.dependsOn = s.dependsOn
        d.volumes = s.volumes.map { .init(name: $0.name, path: $0.path) }
        return d
    }
}

/// The serving endpoints of every service, readable off the actor: DNS answers from it on its event
/// loop without waiting for the agent. The agent replaces it whenever the service table or a
/// member's status changes.
final class ServiceEndpointsView: Sendable {
    private let byName = Mutex<[String: [ServiceEndpoint]]>([:])
    func lookup(_ service: String) -> [ServiceEndpoint]? { byName.withLock { $0[service] } }
    func replace(_ all: [String: [ServiceEndpoint]]) { byName.withLock { $0 = all } }
}

extension Agent {
    /// Whether `changes` may change what DNS answers.
    static func touchesServices(_ changes: [ControlChange]) -> Bool {
        changes.contains { c in
            switch c {
            case .service, .serviceNode, .restored: return true
            case .spore(let signed):
                switch signed.command {
                case .admit, .setStatus, .revoke, .tick, .decideVote, .refresh: return true
                default: return false
                }
            default: return false
            }
        }
    }

    func refreshServiceEndpoints() {
        var all: [String: [ServiceEndpoint]] = [:]
        for r in control.services.services.values {
            let port = r.spec.ports.first?.port ?? 0
            all[r.name] = servingSlots(r).compactMap { slot in
                guard let i = r.instances[slot] else { return nil }
                return ServiceEndpoint(ipv4: i.address, port: port, instance: ServiceReconciler.instanceID(r.name, slot), node: "\(i.node)")
            }
        }
        serviceEndpoints.replace(all)
    }

    /// Answers DNS for *.service.mycelium on `dns_listen`, if set.
    func startDNS() async throws {
        guard let (host, port) = splitAddress(config.dnsListen) else { return }
        let view = serviceEndpoints
        do {
            let server = try await DNSServer.start(host: host, port: port, group: group) { view.lookup($0) }
            dnsServer = server
            dnsAddress = server.localAddress.map { "\($0.ipAddress ?? host):\($0.port ?? port)" } ?? config.dnsListen
            logger.info("answering DNS for *.service.mycelium", metadata: ["address": "\(dnsAddress)"])
        } catch {
            throw AgentError("cannot answer DNS on \(config.dnsListen): \(error); choose another dns_listen, or set dns_listen = \"\" to turn DNS off")
        }
    }

    /// DNS for this node's pods: on the node's own address, port 53 (resolv.conf has no port), and
    /// only to sources in the pod range: the node's pods reach it through the host stack; nobody
    /// else gets an answer. Not fatal: without it pods resolve no service names, and the log says so.
    func startPodDNS() async {
        guard drivesDatapath, config.podDNS, let host = splitAddress(config.advertisedAddress)?.host,
              let pool = CIDR(config.podCIDRPool) else { return }
        let view = serviceEndpoints
        do {
            podDNSServer = try await DNSServer.start(host: host, port: 53, group: group, allow: { peer in
                guard let ip = peer.ipAddress.flatMap(parseIPv4) else { return false }
                return ip & pool.mask == pool.address
            }) { view.lookup($0) }
            logger.info("answering DNS for *.service.mycelium to this node's pods", metadata: ["address": "\(host):53", "sources": "\(pool)"])
        } catch {
            logger.error("pods on this node cannot resolve service names: DNS for pods did not start; free port 53 on this address or set pod_dns = false",
                         metadata: ["address": "\(host):53", "error": "\(error)"])
        }
    }

    /// Where this node's pods ask for service names ("" when nowhere).
    var podDNSAddress: String { podDNSServer == nil ? "" : splitAddress(config.advertisedAddress)?.host ?? "" }
}
