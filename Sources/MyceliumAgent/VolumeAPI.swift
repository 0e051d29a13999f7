// Volumes in the agent (issue 18): the storage driver made at start, the volume commands sent through
// the leader, and the local API: `GET /v1/volumes[?name=]`, `POST /v1/volume/create|snapshot|delete`,
// `GET /v1/storage`.
//
// Like VM and service commands, any node takes an operator's request, names the node that is to carry
// it out, and sends it to the leader (forwarded over the peer channel), which refuses what the table
// would refuse and proposes the rest: a refused request leaves nothing behind. A node's reports (its
// storage facts, a task's outcome) travel the same way; the leader takes what they say of a node only
// from that node, and placement decisions and retasks only from itself.

import Foundation
import Logging
import MyceliumAPI
import MyceliumControl
import MyceliumIdentity
import MyceliumRBD
import NIOHTTP1
import StorageController
import StorageDriver
import Synchronization
import ServiceRuntime
import VMHost

extension Agent {
    /// The storage driver (local files under HOME/volumes, Ceph when ceph_conf is set), or nil with
    /// the reason (logged) when even the local directory cannot be made.
    static func makeVolumeDriver(_ config: AgentConfig, logger: Logger) -> VolumeDriver? {
        // A home that cannot hold a directory (tests with an unwritable home) keeps no volumes.
        let ceph = config.cephConf.isEmpty ? nil
            : CephClientConfig(confFile: config.cephConf, clientName: config.cephClient, keyring: config.cephKeyring.isEmpty ? nil : config.cephKeyring)
        do {
            let d = try VolumeDriver(settings: VolumeDriverSettings(directory: config.home + "/volumes", ceph: ceph))
            let cephText = ceph == nil ? "no Ceph cluster configured (ceph_conf)" : "Ceph via \(config.cephConf) as \(config.cephClient)"
            logger.info("volumes: local files under \(config.home)/volumes; \(cephText)")
            return d
        } catch {
            logger.error("this node keeps no volumes", metadata: ["error": "\(error)"])
            return nil
        }
    }

    static func volumeSettings(_ config: AgentConfig) -> VolumeSettings {
        VolumeSettings(info: StorageNodeInfo(ceph: !config.cephConf.isEmpty, cephHost: config.cephHost))
    }

    /// The classes a volume may name: the local driver's, then Ceph's.
    static var volumeClasses: [DataClass] { DataClass.defaults }

    /// A follower forwarded a volume command (an operator's, or its controller's).
    func serveForwardedVolume(_ body: [UInt8], from peer: UInt64) -> KVAnswer {
        guard let command = try? VolumeCommand(decoding: body) else {
            return KVAnswer(status: .badRequest, body: json(APIErrorResponse(error: "malformed forwarded volume command", code: .badRequest)))
        }
        guard raft.role == .leader else {
            return KVAnswer(status: .serviceUnavailable, body: json(APIErrorResponse(error: "not the leader any more; retry", code: .noLeader)))
        }
        guard let sender = router.nodeIDs[peer] else {
            return KVAnswer(status: .forbidden, body: json(APIErrorResponse(error: "unknown peer", code: .notAuthorized)))
        }
        return proposeVolume(command, from: sender)
    }

    /// The leader: refuse what the table would refuse, else propose.
    func proposeVolume(_ command: VolumeCommand, from sender: MyceliumIdentity.NodeID) -> KVAnswer {
        func refuse(_ m: String, _ status: HTTPResponseStatus = .conflict) -> KVAnswer {
            KVAnswer(status: status, body: json(APIErrorResponse(error: m, code: .volumeRefused)))
        }
        switch command {
        case .storageNode(let node, _), .taskDone(_, _, let node, _, _), .placementDone(_, let node, _, _):
            if node != sender { return refuse("\(sender) may report only on itself, not on \(node)", .forbidden) }
        case .placement, .retask:
            if sender != nodeID { return refuse("placement decisions and retasks are the leader's own", .forbidden) }
        case .create, .snapshot, .delete:
            break
        }
        var trial = control.volumes
        do { _ = try trial.apply(command, spore: spore, now: control.nowMillis, user: { self.control.volumeConsumer($0)?.refusal }) } catch { return refuse("\(error)") }
        do { _ = try raft.propose(ControlEntry.volume(command, millis: Self.wallMillis()).encoded()) } catch {
            return KVAnswer(status: .serviceUnavailable, body: json(APIErrorResponse(error: "proposal refused: \(error); retry", code: .noLeader)))
        }
        processReady()
        let what: String
        switch command {
        case let .create(spec, _, executor): what = "volume \(spec.name) (\(spec.sizeBytes) bytes, class \(spec.dataClass)) proposed; \(executor) creates it"
        case let .snapshot(name, snap, _): what = "snapshot \(snap) of volume \(name) proposed"
        case let .delete(name, _): what = "deletion of volume \(name) proposed"
        default: what = "proposed"
        }
        return KVAnswer(status: .accepted, body: json(ActionResponse(result: what)))
    }

    /// Sends a volume command to the leader (proposed here when this node leads).
    func sendVolume(_ command: VolumeCommand) async -> (HTTPResponseStatus, [UInt8]) {
        if raft.role == .leader {
            let a = proposeVolume(command, from: nodeID)
            return (a.status, a.body)
        }
        do {
            let a = try await forward(.volume, command.encoded(), forwarded: false)
            return (a.status, a.body)
        } catch {
            return (.serviceUnavailable, json(APIErrorResponse(error: "\(error)", code: .noLeader)))
        }
    }

    /// Bytes from "10G", "512M", "1T", "4096" (binary units; K, M, G, T with an optional "i"/"iB"/"B").
    static func parseSize(_ text: String) -> UInt64? {
        var t = text.trimmingCharacters(in: .whitespaces)
        for suffix in ["iB", "B", "i"] where t.hasSuffix(suffix) && t.count > suffix.count { t.removeLast(suffix.count); break }
        let shift: UInt64
        switch t.last {
        case "K", "k": shift = 10
        case "M", "m": shift = 20
        case "G", "g": shift = 30
        case "T", "t": shift = 40
        default: shift = 0
        }
        if shift > 0 { t.removeLast() }
        guard let n = UInt64(t), n <= UInt64.max >> shift else { return nil }
        return n << shift
    }

    /// `POST /v1/volume/ACTION?QUERY`.
    func answerVolume(action: String, query: String) async -> (HTTPResponseStatus, [UInt8]) {
        let q = APIQuery.parse(Substring(query))
        func bad(_ m: String) -> (HTTPResponseStatus, [UInt8]) { (.badRequest, json(APIErrorResponse(error: m, code: .badRequest))) }
        func conflict(_ m: String) -> (HTTPResponseStatus, [UInt8]) { (.conflict, json(APIErrorResponse(error: m, code: .volumeRefused))) }
        guard let name = q["name"], !name.isEmpty else { return bad("\(action) needs name=NAME") }
        let leader = router.nodeIDs[raft.leader] ?? nodeID
        switch action {
        case "create":
            guard let sizeText = q["size"], !sizeText.isEmpty else { return bad("create needs size=SIZE, like 10G, 512M or a number of bytes") }
            guard let size = Self.parseSize(sizeText) else { return bad("size '\(sizeText)' is not a size: use a number with K, M, G or T (binary units), like 10G") }
            let table = control.volumes
            let cephNodes = table.nodes.filter { $0.value.ceph && VolumeTable.live($0.key, spore) }
            let className = q["class"].flatMap { $0.isEmpty ? nil : $0 } ?? (cephNodes.isEmpty ? VolumeSpec.localClass : DataClass.privateData.name)
            let spec: VolumeSpec
            if className == VolumeSpec.localClass {
                spec = VolumeSpec(name: name, sizeBytes: size, dataClass: className, driver: .local)
            } else {
                guard let c = Self.volumeClasses.first(where: { $0.name == className }) else {
                    return bad("unknown class '\(className)'; the classes are \(([VolumeSpec.localClass] + Self.volumeClasses.map(\.name)).joined(separator: ", "))")
                }
                if cephNodes.isEmpty {
                    return conflict("class \(c.name) keeps \(c.replicas) replicas on hosts with trust ≥ \(formatTrust(c.minTrust)), and no live node of this network "
                                    + "reaches a Ceph cluster (ceph_conf); the local driver keeps one copy on one node: use --class local, or configure Ceph")
                }
                let holders = (table.placement?.hosts ?? [:]).filter { $0.value.contains(c.name) }.keys.sorted()
                if table.placement == nil || table.placement?.doneID == 0 {
                    return conflict("no storage placement has been carried out yet (see 'mycelium storage status'); retry in a few seconds")
                }
                if holders.isEmpty {
                    return conflict("no storage host qualifies for class \(c.name) (trust ≥ \(formatTrust(c.minTrust))); see 'mycelium storage status'")
                }
                spec = VolumeSpec(name: name, sizeBytes: size, dataClass: c.name, driver: .ceph)
            }
            if let p = spec.problem { return bad(p) }
            var home = nodeID
            if let on = q["on"], !on.isEmpty {
                guard let id = try? MyceliumIdentity.NodeID(parsing: on), spore.members[id] != nil else {
                    return (.badRequest, json(APIErrorResponse(error: "node '\(on)' is not a member of this network; see 'mycelium status'", code: .unknownNode)))
                }
                home = id
            }
            let executor: MyceliumIdentity.NodeID
            if spec.driver == .local {
                executor = home
            } else {
                guard let e = VolumeController.cephExecutor(control, leader: leader) else { return conflict("no live node reaches the Ceph cluster") }
                executor = e
            }
            return await sendVolume(.create(spec, home: home, executor: executor))
        case "snapshot":
            guard let snap = q["snapshot"], !snap.isEmpty else { return bad("snapshot needs snapshot=NAME") }
            guard let r = control.volumes.volumes[name] else { return conflict("no volume named '\(name)'; see 'mycelium volume list'") }
            guard let e = executor(for: r, leader: leader) else { return conflict(unavailable(r)) }
            return await sendVolume(.snapshot(name: name, snapshot: snap, executor: e))
        case "delete":
            guard let r = control.volumes.volumes[name] else { return conflict("no volume named '\(name)'; see 'mycelium volume list'") }
            guard let e = executor(for: r, leader: leader) else { return conflict(unavailable(r)) }
            return await sendVolume(.delete(name: name, executor: e))
        default:
            return (.notFound, json(APIErrorResponse(error: "no volume action '\(action)'; there are create, snapshot and delete", code: .notFound)))
        }
    }

    func executor(for r: VolumeRecord, leader: MyceliumIdentity.NodeID) -> MyceliumIdentity.NodeID? {
        switch r.spec.driver {
        case .local: return VolumeTable.live(r.home, spore) ? r.home : nil
        case .ceph: return VolumeController.cephExecutor(control, leader: leader)
        }
    }

    func unavailable(_ r: VolumeRecord) -> String {
        r.spec.driver == .local
            ? "volume \(r.name) is a local file on \(r.home), which is not a live member (\(spore.members[r.home].map { "\($0.status)" } ?? "gone")); it can only be changed there"
            : "no live node reaches the Ceph cluster"
    }

    // MARK: views

    func volumeInfo(_ r: VolumeRecord) -> VolumeInfo {
        let state: String
        if let t = r.task {
            switch t.operation {
            case .create: state = "creating"
            case .snapshot: state = "snapshotting"
            case .delete: state = "deleting"
            }
        } else {
            state = r.created ? "ready" : "failed"
        }
        let location = r.spec.driver == .local ? "HOME/volumes/\(r.name).img on \(r.home)"
            : "pool mycelium-\(r.spec.dataClass), image \(r.name)"
        return VolumeInfo(name: r.name, sizeBytes: r.spec.sizeBytes, dataClass: r.spec.dataClass, driver: "\(r.spec.driver)", state: state,
                          home: "\(r.home)", location: location, snapshots: r.snapshots,
                          task: r.task.map { "\($0.operation) by \($0.executor)" }, message: r.message,
                          usedBy: control.volumeConsumer(r.name).map { "\($0)" }, placement: placementWhy(r))
    }

    /// Where a volume's replicas are and why.
    func placementWhy(_ r: VolumeRecord) -> String {
        if r.spec.driver == .local {
            let status = spore.members[r.home].map { "\($0.status)" } ?? "gone"
            return "one copy, on \(r.home) (\(status)): the local driver does not replicate"
        }
        guard let c = Self.volumeClasses.first(where: { $0.name == r.spec.dataClass }) else { return "class \(r.spec.dataClass) is unknown to this node" }
        let hosts = (control.volumes.placement?.hosts ?? [:])
        let holders = hosts.filter { $0.value.contains(c.name) }.keys.sorted()
        let others = hosts.filter { !$0.value.contains(c.name) }.keys.sorted()
        var s = "class \(c.name) keeps \(c.replicas) replicas on hosts with trust ≥ \(formatTrust(c.minTrust)): "
            + (holders.isEmpty ? "no host qualifies now" : holders.joined(separator: ", "))
        if holders.count < c.replicas && !holders.isEmpty { s += " (only \(holders.count): degraded)" }
        if !others.isEmpty { s += "; not on " + others.joined(separator: ", ") + " (trust too low, failed or left)" }
        return s
    }

    /// `GET /v1/volumes[?name=NAME]`.
    func answerVolumes(query: String) async -> (HTTPResponseStatus, [UInt8]) {
        let q = APIQuery.parse(Substring(query))
        if let name = q["name"], !name.isEmpty {
            guard let r = control.volumes.volumes[name] else {
                return (.notFound, json(APIErrorResponse(error: "no volume named '\(name)'; see 'mycelium volume list'", code: .notFound)))
            }
            var info = volumeInfo(r)
            if r.spec.driver == .ceph, r.created, let volumeDriver, volumeDriver.settings.ceph != nil {
                if let p = try? await volumeDriver.placement(of: r) { info.replicas = p.actingHosts.enumerated().map { "\($1) (osd.\(p.acting[$0]))" } }
            }
            return (.ok, json(VolumesResponse(volumes: [info])))
        }
        return (.ok, json(VolumesResponse(volumes: control.volumes.volumes.values.sorted { $0.name < $1.name }.map(volumeInfo))))
    }

    /// `GET /v1/storage`.
    func storageStatus() async -> StorageStatusResponse {
        let table = control.volumes
        var advice: [String] = []
        var ceph: CephStatusInfo?
        var cephError: String?
        let here: String
        if let d = volumeDriver, let c = d.settings.ceph {
            here = "local files under \(config.home)/volumes, and Ceph as \(c.clientName) via \(c.confFile)"
            do {
                let s = try await d.clusterStatus()
                ceph = CephStatusInfo(health: s.health, checks: s.checks, osds: s.osds, osdsUp: s.osdsUp, osdsIn: s.osdsIn, pgs: s.pgs,
                                      pgsNotClean: s.unhealthyPGs, pgStates: s.pgStates, bytesTotal: s.bytesTotal, bytesUsed: s.bytesUsed,
                                      bytesAvailable: s.bytesAvailable)
                if s.health != "HEALTH_OK" { advice.append("the cluster reports \(s.health): " + (s.checks.isEmpty ? "see 'ceph health detail'" : s.checks.joined(separator: "; "))) }
                if s.osdsUp < s.osds { advice.append("\(s.osds - s.osdsUp) of \(s.osds) OSDs are down: start them, or mark them out if their host is gone ('ceph osd out ID')") }
                if s.unhealthyPGs > 0 { advice.append("\(s.unhealthyPGs) of \(s.pgs) placement groups are not active+clean: data is moving or degraded; wait, and check 'ceph pg stat'") }
            } catch {
                cephError = "\(error)"
                advice.append("this node cannot read the Ceph cluster: \(error)")
            }
        } else {
            here = volumeDriver == nil ? "no volumes (HOME/volumes cannot be made; see the agent's log)" : "local files under \(config.home)/volumes only (no ceph_conf)"
        }
        let hosts = table.placement?.hosts ?? [:]
        var classes = [DataClassInfo(name: VolumeSpec.localClass, minTrust: 0, replicas: 1, status: "local", hosts: [],
                                     message: "local: one copy in a file on the volume's home node, for a single machine or a demo")]
        let anyCeph = table.nodes.values.contains { $0.ceph }
        for c in Self.volumeClasses {
            let holders = hosts.filter { $0.value.contains(c.name) }.keys.sorted()
            let status: String
            switch holders.count {
            case c.replicas...: status = "healthy"
            case 2...: status = "degraded"
            case 1: status = "blocked"
            default: status = "unplaceable"
            }
            var message = "\(c.name): trust ≥ \(formatTrust(c.minTrust)), \(c.replicas) replicas; "
                + (holders.isEmpty ? "no storage host qualifies" : "held by \(holders.joined(separator: ", "))")
            if anyCeph && status != "healthy" {
                message += ". To restore: raise a storage host's trust to ≥ \(formatTrust(c.minTrust)) or add one"
                if table.volumes.values.contains(where: { $0.spec.dataClass == c.name }) { advice.append("class \(c.name) is \(status): " + message) }
            }
            classes.append(DataClassInfo(name: c.name, minTrust: Double(c.minTrust) / 1_000_000, replicas: c.replicas, status: anyCeph ? status : "no ceph",
                                         hosts: holders, message: anyCeph ? message : "\(c.name): needs a Ceph cluster (ceph_conf on the storage nodes)"))
        }
        let nodes = table.nodes.sorted { $0.key < $1.key }.map { node, info in
            StorageNodeEntry(node: "\(node)", status: spore.members[node].map { "\($0.status)" } ?? "gone",
                             trust: Double(spore.trust.score(of: node)) / 1_000_000, cephHost: info.cephHost, ceph: info.ceph,
                             classes: info.cephHost.isEmpty ? [] : hosts[info.cephHost] ?? [], problem: info.problem)
        }
        let placement: String
        if let p = table.placement {
            placement = "decision \(p.id): " + (p.doneID == p.id ? "done by \(p.executor)" : p.message.isEmpty ? "in progress on \(p.executor)" : "failed on \(p.executor)")
                + (p.message.isEmpty ? "" : " (\(p.message))")
            if p.doneID != p.id && !p.message.isEmpty { advice.append("the last placement decision failed: \(p.message); it is retried every 10 s") }
        } else {
            placement = anyCeph ? "none yet (no node named its CRUSH host: set ceph_host on the nodes that run OSDs)" : "none (no Ceph)"
            if anyCeph { advice.append("no node named its CRUSH host: set ceph_host in the configuration of each node that runs OSDs") }
        }
        for r in table.volumes.values.sorted(by: { $0.name < $1.name }) where !r.created && r.task == nil {
            advice.append("volume \(r.name) was never created (\(r.message)): 'mycelium volume delete \(r.name)', then create it again")
        }
        return StorageStatusResponse(node: here, ceph: ceph, cephError: cephError, classes: classes, nodes: nodes, placement: placement,
                                     volumes: table.volumes.count, advice: advice)
    }
}

/// The volume table as the VM driver's threads read it (a copy the agent refreshes as volume entries
/// apply), and how this node reaches each volume: a Ceph volume through QEMU's librbd with this
/// node's Ceph settings, a local volume only on its home node.
final class VolumeBook: Sendable {
    private let records = Mutex<[String: VolumeRecord]>([:])
    let me: MyceliumIdentity.NodeID
    let home: String
    let cephConf: String
    let cephClient: String

    init(me: MyceliumIdentity.NodeID, config: AgentConfig) {
        self.me = me; home = config.home; cephConf = config.cephConf; cephClient = config.cephClient
    }

    func update(_ table: VolumeTable) { records.withLock { $0 = table.volumes } }

    /// Where a service's volume is, as this node reaches it (ServiceRuntime/VolumeMounts.swift).
    func serviceSource(_ name: String) -> ServiceVolumeSource? {
        switch source(name) {
        case let .rbd(pool, image, conf, client)?: return .rbd(pool: pool, image: image, cephConf: conf, clientName: client)
        case let .file(path)?: return .file(path: path)
        case nil: return nil
        }
    }

    func source(_ name: String) -> VMDiskSource? {
        guard let r = records.withLock({ $0[name] }), r.created else { return nil }
        switch r.spec.driver {
        case .ceph:
            return cephConf.isEmpty ? nil : .rbd(pool: "mycelium-" + r.spec.dataClass, image: r.name, cephConf: cephConf, clientName: cephClient)
        case .local:
            return r.home == me ? .file(path: home + "/volumes/" + r.name + ".img") : nil
        }
    }
}

/// The storage controller of a node that cannot keep volumes: it still reports and decides nothing.
/// Its tasks fail with the reason, so none waits forever.
final class NoVolumeDriver: ControllerDriver, @unchecked Sendable {
    typealias Action = VolumeAction
    typealias Report = VolumeReport
    let reason: String
    let sink = Mutex<(@Sendable (VolumeReport) -> Void)?>(nil)
    init(reason: String) { self.reason = reason }
    func reportTo(_ sink: @escaping @Sendable (VolumeReport) -> Void) { self.sink.withLock { $0 = sink } }
    func perform(_ action: VolumeAction) async throws {
        let report: VolumeReport
        switch action {
        case .perform(let r): report = .taskDone(name: r.name, task: r.task?.id ?? 0, ok: false, message: "this node keeps no volumes: \(reason)")
        case .place(let id, _): report = .placementDone(id: id, ok: false, message: "this node keeps no volumes: \(reason)")
        }
        sink.withLock { $0 }?(report)
    }
}
