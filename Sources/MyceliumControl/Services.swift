// Services in the control state (issue 17): what the network wants to run (each service's spec and
// its generation), where (the leader's scheduler writes each service's slot → node assignment), and
// how each instance is doing (reported by the node that runs it). Pure, replicated by Raft like the
// VM table; every agent answers DNS and the API from it.
//
// Who writes what:
//  - `deploy` / `remove`: an operator's request, checked and proposed by the leader;
//  - `assign`: the leader's scheduler, a compare-and-swap on the service's generation, so a plan made
//    against an older spec is refused everywhere;
//  - `report`: a node about its own instances (the leader proposes it for the node that sent it over
//    the authenticated peer channel, and only slots assigned to that node are taken);
//  - `nodeInfo`: a node about itself: its labels, the drivers it offers, whether it drains;
//  - `endpoints`: a node about its pods: each address in its own pod CIDR with the network identity
//    its datapath gives it (what other nodes' datapaths need to accept natively routed packets).
// Placement rules (constraints, spread, trust) are the scheduler's (Sources/Scheduler); the table
// only bounds and stores them, so a rule this build does not understand stays a readable string.

import MyceliumCore
import MyceliumIdentity
import MyceliumSpores

public enum ServiceDriverKind: UInt8, Sendable, Equatable, CaseIterable, CustomStringConvertible {
    case process = 1, podman = 2, k3s = 3
    public var description: String {
        switch self { case .process: "process"; case .podman: "podman"; case .k3s: "k3s" }
    }
    public init?(name: String) {
        guard let k = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = k
    }
}

public struct ServicePort: Sendable, Equatable {
    public var name: String
    public var port: UInt16
    /// "tcp" or "udp".
    public var proto: String
    public init(name: String, port: UInt16, proto: String = "tcp") { self.name = name; self.port = port; self.proto = proto }
}

public enum ServiceHealthKind: Sendable, Equatable {
    case tcp(port: UInt16)
    case http(port: UInt16, path: String)
    case exec([String])
}

public struct ServiceHealthSpec: Sendable, Equatable {
    public var kind: ServiceHealthKind
    public var intervalMillis: UInt32
    public var timeoutMillis: UInt32
    /// Consecutive failures before the instance counts as unhealthy.
    public var threshold: UInt32
    public init(kind: ServiceHealthKind, intervalMillis: UInt32 = 2000, timeoutMillis: UInt32 = 1000, threshold: UInt32 = 3) {
        self.kind = kind; self.intervalMillis = intervalMillis; self.timeoutMillis = timeoutMillis; self.threshold = threshold
    }
}

public enum RestartPolicy: UInt8, Sendable, Equatable, CaseIterable, CustomStringConvertible {
    /// Restart whenever the instance ends or turns unhealthy (a long-running service).
    case always = 1
    /// Restart when it exits with an error, is killed, or turns unhealthy; a clean exit is final.
    case onFailure = 2
    case never = 3
    public var description: String {
        switch self { case .always: "always"; case .onFailure: "on-failure"; case .never: "never" }
    }
    public init?(name: String) {
        guard let p = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = p
    }
}

/// Where instances may and should go (interpreted by the scheduler).
public struct ServicePlacement: Sendable, Equatable {
    /// "binpack" or "spread".
    public var strategy: String = "binpack"
    /// Hard rules, e.g. "zone == eu", "rack != r3", "zone in (a, b)", "has gpu", "driver podman".
    public var constraints: [String] = []
    /// Soft rules with a weight (negative: avoid).
    public var preferences: [(rule: String, weight: Int32)] = []
    /// Minimum trust of a node (parts per million of full trust, as the trust ledger counts).
    public var minTrustPPM: UInt32 = 0
    /// The label level to spread across ("region", "zone", "rack"); "" = nodes.
    public var spreadLevel: String = ""
    /// At most this many instances per node (0: no limit).
    public var maxPerNode: UInt16 = 0
    /// Services this one never shares a node with.
    public var antiAffinity: [String] = []
    public init() {}

    public static func == (a: Self, b: Self) -> Bool {
        a.strategy == b.strategy && a.constraints == b.constraints && a.minTrustPPM == b.minTrustPPM && a.spreadLevel == b.spreadLevel
            && a.maxPerNode == b.maxPerNode && a.antiAffinity == b.antiAffinity
            && a.preferences.map(\.rule) == b.preferences.map(\.rule) && a.preferences.map(\.weight) == b.preferences.map(\.weight)
    }
}

/// A volume (Volumes.swift) a service's instance mounts, and where the workload sees it.
public struct ServiceVolume: Sendable, Equatable, Hashable {
    /// The volume's name (`mycelium volume create NAME`).
    public var name: String
    /// An absolute path: where a podman container sees the filesystem (`-v MOUNT:PATH`); a process
    /// gets the node's mount point in `MYCELIUM_VOLUME_<NAME>` (it runs in the node's mount namespace).
    public var path: String
    public init(name: String, path: String) { self.name = name; self.path = path }
    public static let maxPath = 1024
    public static let maxVolumes = 8
    /// The environment variable that gives a process instance the mount point of `name`.
    public static func environmentName(_ name: String) -> String {
        "MYCELIUM_VOLUME_" + name.uppercased().replacingOccurrences(of: "-", with: "_")
    }
}

/// A service as the network records it: what the operator deployed, normalised.
public struct ServiceSpec: Sendable, Equatable {
    public var name: String
    public var driver: ServiceDriverKind
    /// argv for `process`; the command inside the container for `podman`/`k3s` (empty: the image's).
    public var command: [String]
    /// A root filesystem directory (`podman`) or an image reference (`k3s`); empty for `process`.
    public var image: String
    public var environment: [String: String]
    public var replicas: UInt16
    public var cpuMillis: UInt32
    public var memoryMiB: UInt32
    public var ports: [ServicePort]
    public var health: ServiceHealthSpec?
    public var restart: RestartPolicy
    /// Restarts before an instance is left failed (0: no limit).
    public var maxRestarts: UInt32
    /// The first restart's delay; doubled at each further restart up to 30 s.
    public var restartDelayMillis: UInt32
    public var placement: ServicePlacement
    /// Services that must have a healthy instance before this one's instances start.
    public var dependsOn: [String]
    /// Volumes its instance mounts (a service with one runs at most one instance). Came later than
    /// the rest: encoded as a trailing field of `ServiceCommand.deploy` and a trailing section of the
    /// table, so entries and snapshots without it still decode.
    public var volumes: [ServiceVolume] = []

    public static let maxReplicas: UInt16 = 1000
    public static let maxList = 64
    public static let maxText = 4096

    public init(name: String, driver: ServiceDriverKind = .process, command: [String] = [], image: String = "", environment: [String: String] = [:],
                replicas: UInt16 = 1, cpuMillis: UInt32 = 100, memoryMiB: UInt32 = 64, ports: [ServicePort] = [], health: ServiceHealthSpec? = nil,
                restart: RestartPolicy = .always, maxRestarts: UInt32 = 0, restartDelayMillis: UInt32 = 500,
                placement: ServicePlacement = ServicePlacement(), dependsOn: [String] = [], volumes: [ServiceVolume] = []) {
        self.name = name; self.driver = driver; self.command = command; self.image = image; self.environment = environment
        self.replicas = replicas; self.cpuMillis = cpuMillis; self.memoryMiB = memoryMiB; self.ports = ports; self.health = health
        self.restart = restart; self.maxRestarts = maxRestarts; self.restartDelayMillis = restartDelayMillis
        self.placement = placement; self.dependsOn = dependsOn; self.volumes = volumes
    }

    /// Why a name cannot be a service's (it is a DNS label: `NAME.service.mycelium`), or nil.
    public static func nameProblem(_ name: String) -> String? {
        let n = Array(name.utf8)
        if n.isEmpty || n.count > 63 { return "a service name is 1 to 63 characters (got \(n.count))" }
        func lower(_ c: UInt8) -> Bool { (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c) }
        func digit(_ c: UInt8) -> Bool { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) }
        if !lower(n[0]) { return "a service name starts with a lowercase letter ('\(name)')" }
        if !n.allSatisfy({ lower($0) || digit($0) || $0 == UInt8(ascii: "-") }) || n.last == UInt8(ascii: "-") {
            return "a service name has only lowercase letters, digits and inner '-' ('\(name)'): it is a DNS name"
        }
        return nil
    }

    /// Why this spec cannot be run, or nil (checked before proposing and again when applied).
    public var problem: String? {
        if let p = Self.nameProblem(name) { return p }
        switch driver {
        case .process: if command.isEmpty { return "a process service needs a command" }
        case .podman: if image.isEmpty { return "a podman service needs an image: a root filesystem directory on every node that may run it" }
        case .k3s:
            if image.isEmpty { return "a k3s service needs an image (a container image reference)" }
            if restart != .always { return "a k3s service runs as a Kubernetes Deployment, whose pods always restart: use restart policy always" }
        }
        if replicas > Self.maxReplicas { return "replicas \(replicas) is over \(Self.maxReplicas)" }
        if memoryMiB == 0 { return "memory must be at least 1 MiB (resources.memory)" }
        if memoryMiB > 1 << 22 { return "memory \(memoryMiB) MiB is over 4 TiB" }
        if cpuMillis > 1_024_000 { return "cpu \(cpuMillis)m is over 1024 CPUs" }
        let lists: [(String, Int)] = [("command", command.count), ("environment", environment.count), ("ports", ports.count),
                                      ("constraints", placement.constraints.count), ("preferences", placement.preferences.count),
                                      ("anti_affinity", placement.antiAffinity.count), ("depends_on", dependsOn.count)]
        for (what, n) in lists where n > Self.maxList { return "\(what) has \(n) entries, over \(Self.maxList)" }
        let texts = command + [image] + environment.keys + environment.values + placement.constraints + placement.preferences.map(\.rule)
        if texts.contains(where: { $0.utf8.count > Self.maxText }) { return "a command argument, image, variable or rule is over \(Self.maxText) bytes" }
        var seen = Set<UInt16>()
        for p in ports {
            if p.port == 0 { return "port '\(p.name)' is 0; give the port the instances listen on" }
            if p.proto != "tcp" && p.proto != "udp" { return "port '\(p.name)' has protocol '\(p.proto)'; use tcp or udp" }
            if !seen.insert(p.port).inserted { return "port \(p.port) is listed twice" }
            if p.name.utf8.count > 32 { return "port name '\(p.name)' is over 32 bytes" }
        }
        if let h = health {
            if h.intervalMillis < 100 || h.timeoutMillis == 0 || h.threshold == 0 {
                return "health: interval is at least 100 ms, timeout and threshold at least 1"
            }
            if case .exec(let c) = h.kind, c.isEmpty || c.count > Self.maxList { return "health: exec needs a command" }
            if case .http(_, let path) = h.kind, !path.hasPrefix("/") || path.utf8.count > 1024 { return "health: http path must start with '/'" }
        }
        if placement.strategy != "binpack" && placement.strategy != "spread" { return "strategy '\(placement.strategy)': use binpack or spread" }
        if placement.minTrustPPM > 1_000_000 { return "min_trust is a fraction from 0 to 1" }
        if !["", "region", "zone", "rack"].contains(placement.spreadLevel) {
            return "spread level '\(placement.spreadLevel)': use region, zone or rack (or none for nodes)"
        }
        for other in placement.antiAffinity + dependsOn {
            if let p = Self.nameProblem(other) { return "'\(other)' in anti_affinity/depends_on: \(p)" }
            if other == name { return "a service cannot depend on or avoid itself ('\(name)')" }
        }
        return volumesProblem
    }

    /// Why the spec's volumes cannot be mounted as written, or nil (the network's rules, whether each
    /// exists and is free, are the control state's: `ControlState.serviceVolumeProblem`).
    var volumesProblem: String? {
        guard !volumes.isEmpty else { return nil }
        if volumes.count > ServiceVolume.maxVolumes { return "a service mounts at most \(ServiceVolume.maxVolumes) volumes (got \(volumes.count))" }
        if driver == .k3s { return "a k3s service cannot mount a volume: Kubernetes places its pods; use the process or podman driver" }
        if replicas > 1 {
            return "a service with a volume runs exactly 1 instance (a volume has one writer at a time: RBD's exclusive lock, one filesystem mount); set replicas: 1, or give each copy its own service and volume"
        }
        var names = Set<String>(), paths = Set<String>()
        for v in volumes {
            if let p = VolumeSpec.nameProblem(v.name, what: "volume") { return p }
            let parts = v.path.split(separator: "/", omittingEmptySubsequences: false)
            if !v.path.hasPrefix("/") || v.path == "/" || v.path.utf8.count > ServiceVolume.maxPath || parts.contains("..") || parts.contains(".")
                || v.path.utf8.contains(where: { $0 < 0x20 || $0 == 0x3A || $0 == 0x2C }) {
                return "volume '\(v.name)': the mount path '\(v.path)' must be an absolute path other than '/' (no '.', '..', ':' or ',', at most \(ServiceVolume.maxPath) bytes), like /data"
            }
            if !names.insert(v.name).inserted { return "volume '\(v.name)' is named twice" }
            if !paths.insert(v.path).inserted { return "two volumes are mounted at \(v.path)" }
        }
        return nil
    }

    /// The trailing volume field: a count, then name and path of each.
    func encodeVolumes(into w: inout ByteWriter) {
        w.u8(UInt8(clamping: volumes.count)); for v in volumes { w.string(v.name); w.string(v.path) }
    }

    static func decodeVolumes(_ r: inout ByteReader) throws -> [ServiceVolume] {
        let n = Int(try r.u8())
        if n == 0 { throw DecodeError(.invalid(field: "volumes", reason: "an empty volume list is left out, not written"), at: r.offset) }
        if n > ServiceVolume.maxVolumes { throw DecodeError(.tooLong(field: "volumes", length: n, limit: ServiceVolume.maxVolumes), at: r.offset) }
        return try (0..<n).map { _ in ServiceVolume(name: try r.string("volume name", limit: 63), path: try r.string("volume path", limit: ServiceVolume.maxPath)) }
    }

    func encode(into w: inout ByteWriter) {
        func list(_ a: [String]) { w.u16(UInt16(a.count)); for s in a { w.string(s) } }
        w.string(name); w.u8(driver.rawValue); list(command); w.string(image)
        let env = environment.sorted { $0.key < $1.key }
        w.u16(UInt16(env.count)); for (k, v) in env { w.string(k); w.string(v) }
        w.u16(replicas); w.u32(cpuMillis); w.u32(memoryMiB)
        w.u16(UInt16(ports.count)); for p in ports { w.string(p.name); w.u16(p.port); w.string(p.proto) }
        if let h = health {
            switch h.kind {
            case .tcp(let port): w.u8(1); w.u16(port)
            case .http(let port, let path): w.u8(2); w.u16(port); w.string(path)
            case .exec(let c): w.u8(3); list(c)
            }
            w.u32(h.intervalMillis); w.u32(h.timeoutMillis); w.u32(h.threshold)
        } else {
            w.u8(0)
        }
        w.u8(restart.rawValue); w.u32(maxRestarts); w.u32(restartDelayMillis)
        w.string(placement.strategy); list(placement.constraints)
        w.u16(UInt16(placement.preferences.count))
        for p in placement.preferences { w.string(p.rule); w.u32(UInt32(bitPattern: p.weight)) }
        w.u32(placement.minTrustPPM); w.string(placement.spreadLevel); w.u16(placement.maxPerNode); list(placement.antiAffinity)
        list(dependsOn)
    }

    static func decode(_ r: inout ByteReader) throws -> ServiceSpec {
        func list(_ field: String, limit: Int = maxText) throws -> [String] {
            let n = Int(try r.u16())
            if n > maxList { throw DecodeError(.tooLong(field: field, length: n, limit: maxList), at: r.offset) }
            return try (0..<n).map { _ in try r.string(field, limit: limit) }
        }
        let name = try r.string("service name", limit: 63)
        let driverByte = try r.u8()
        guard let driver = ServiceDriverKind(rawValue: driverByte) else {
            throw DecodeError(.invalid(field: "driver", reason: "unknown driver \(driverByte)"), at: r.offset)
        }
        var s = ServiceSpec(name: name, driver: driver)
        s.command = try list("command"); s.image = try r.string("image", limit: maxText)
        let envCount = Int(try r.u16())
        if envCount > maxList { throw DecodeError(.tooLong(field: "environment", length: envCount, limit: maxList), at: r.offset) }
        for _ in 0..<envCount { let k = try r.string("env key", limit: maxText); s.environment[k] = try r.string("env value", limit: maxText) }
        s.replicas = try r.u16(); s.cpuMillis = try r.u32(); s.memoryMiB = try r.u32()
        let portCount = Int(try r.u16())
        if portCount > maxList { throw DecodeError(.tooLong(field: "ports", length: portCount, limit: maxList), at: r.offset) }
        s.ports = try (0..<portCount).map { _ in ServicePort(name: try r.string("port name", limit: 32), port: try r.u16(), proto: try r.string("proto", limit: 8)) }
        let healthTag = try r.u8()
        if healthTag != 0 {
            let kind: ServiceHealthKind
            switch healthTag {
            case 1: kind = .tcp(port: try r.u16())
            case 2: kind = .http(port: try r.u16(), path: try r.string("health path", limit: 1024))
            case 3: kind = .exec(try list("health command"))
            default: throw DecodeError(.invalid(field: "health", reason: "unknown check \(healthTag)"), at: r.offset)
            }
            s.health = ServiceHealthSpec(kind: kind, intervalMillis: try r.u32(), timeoutMillis: try r.u32(), threshold: try r.u32())
        }
        let policy = try r.u8()
        guard let restart = RestartPolicy(rawValue: policy) else { throw DecodeError(.invalid(field: "restart", reason: "unknown policy \(policy)"), at: r.offset) }
        s.restart = restart; s.maxRestarts = try r.u32(); s.restartDelayMillis = try r.u32()
        s.placement.strategy = try r.string("strategy", limit: 16)
        s.placement.constraints = try list("constraints")
        let prefCount = Int(try r.u16())
        if prefCount > maxList { throw DecodeError(.tooLong(field: "preferences", length: prefCount, limit: maxList), at: r.offset) }
        s.placement.preferences = try (0..<prefCount).map { _ in (rule: try r.string("preference", limit: maxText), weight: Int32(bitPattern: try r.u32())) }
        s.placement.minTrustPPM = try r.u32(); s.placement.spreadLevel = try r.string("spread level", limit: 16)
        s.placement.maxPerNode = try r.u16(); s.placement.antiAffinity = try list("anti_affinity", limit: 63)
        s.dependsOn = try list("depends_on", limit: 63)
        return s
    }
}

/// How an instance is doing, as the node that runs it reported.
public struct InstanceReport: Sendable, Equatable {
    public enum State: UInt8, Sendable, Equatable, CustomStringConvertible {
        /// Assigned, not started yet (waiting for a dependency, or for its restart delay).
        case pending = 1, starting = 2, running = 3, exited = 4, failed = 5
        public var description: String {
            switch self { case .pending: "pending"; case .starting: "starting"; case .running: "running"; case .exited: "exited"; case .failed: "failed" }
        }
    }
    public enum Health: UInt8, Sendable, Equatable, CustomStringConvertible {
        case unknown = 0, healthy = 1, unhealthy = 2
        public var description: String { switch self { case .unknown: "unknown"; case .healthy: "healthy"; case .unhealthy: "unhealthy" } }
    }
    /// The node that runs it (the slot's assignment when reported).
    public var node: NodeID
    /// The spec generation the instance runs.
    public var generation: UInt64
    public var state: State
    public var health: Health
    public var restarts: UInt32
    /// Where it answers (IPv4 dotted quad; "" when it does not).
    public var address: String
    /// The last thing that happened to it, for the operator.
    public var message: String
    public static let maxMessage = 200

    public init(node: NodeID, generation: UInt64, state: State, health: Health, restarts: UInt32 = 0, address: String = "", message: String = "") {
        self.node = node; self.generation = generation; self.state = state; self.health = health; self.restarts = restarts
        self.address = address; self.message = VMMigration.clipped(message, Self.maxMessage)
    }

    /// Answers traffic: running and healthy (a node reports an instance without a check healthy
    /// while it runs; one with a check only once the check passed, so DNS never names an instance
    /// that is still starting up).
    public var serving: Bool { state == .running && health == .healthy }

    func encode(into w: inout ByteWriter) {
        w.raw(node.bytes); w.u64(generation); w.u8(state.rawValue); w.u8(health.rawValue); w.u32(restarts); w.string(address); w.string(message)
    }

    static func decode(_ r: inout ByteReader) throws -> InstanceReport {
        let node = try NodeID(bytes: r.raw(16)), generation = try r.u64()
        let s = try r.u8(), h = try r.u8()
        guard let state = State(rawValue: s), let health = Health(rawValue: h) else {
            throw DecodeError(.invalid(field: "instance report", reason: "state \(s) health \(h)"), at: r.offset)
        }
        return InstanceReport(node: node, generation: generation, state: state, health: health, restarts: try r.u32(),
                              address: try r.string("address", limit: 64), message: try r.string("message", limit: maxMessage))
    }
}

/// One service as the network records it.
public struct ServiceRecord: Sendable, Equatable {
    public var spec: ServiceSpec
    /// Bumped at every deploy of a changed spec: instances of an older generation are replaced.
    public var generation: UInt64
    /// Slot → node, as the leader's scheduler last placed them (slots missing: not placed).
    public var assignments: [UInt16: NodeID]
    /// Slot → the latest report of its instance (dropped when the slot moves or goes).
    public var instances: [UInt16: InstanceReport]
    /// Why some slots are not placed ("" when all are).
    public var pending: String
    /// The last events (control time in Unix ms, text), oldest first.
    public var events: [(millis: Int64, text: String)]
    public static let maxEvents = 12

    public var name: String { spec.name }

    public init(spec: ServiceSpec, generation: UInt64) {
        self.spec = spec; self.generation = generation; assignments = [:]; instances = [:]; pending = ""; events = []
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.spec == b.spec && a.generation == b.generation && a.assignments == b.assignments && a.instances == b.instances
            && a.pending == b.pending && a.events.map(\.millis) == b.events.map(\.millis) && a.events.map(\.text) == b.events.map(\.text)
    }

    mutating func event(_ text: String, at millis: Int64) {
        events.append((millis, VMMigration.clipped(text, 200)))
        if events.count > Self.maxEvents { events.removeFirst(events.count - Self.maxEvents) }
    }

    /// The instances that answer traffic now: assigned, reported serving at the current generation
    /// by the node they are assigned to.
    public var servingSlots: [UInt16] {
        assignments.keys.sorted().filter { slot in
            guard let i = instances[slot] else { return false }
            return i.serving && i.node == assignments[slot] && i.generation == generation
        }
    }
}

/// What a node tells the network about itself for placement.
public struct ServiceNodeInfo: Sendable, Equatable {
    /// Free-form labels; "region", "zone" and "rack" are the spread levels.
    public var labels: [String: String]
    /// The drivers this node offers (`process`, and `podman` where the agent found what it needs).
    public var drivers: [ServiceDriverKind]
    /// Drained (`ServiceCommand.drain`, an operator's decision): it gets nothing new and its
    /// instances move elsewhere. What the node itself says here is ignored.
    public var draining: Bool
    /// Where its instances answer (the node's underlay IPv4).
    public var address: String
    /// Why it does not offer some drivers, for the operator ("podman: runc is not installed …"; "" when
    /// it offers them all or has nothing to say).
    public var unavailable: String
    public static let maxUnavailable = 400
    public init(labels: [String: String] = [:], drivers: [ServiceDriverKind] = [.process], draining: Bool = false, address: String = "",
                unavailable: String = "") {
        self.labels = labels; self.drivers = drivers; self.draining = draining; self.address = address
        self.unavailable = VMMigration.clipped(unavailable, Self.maxUnavailable)
    }

    func encode(into w: inout ByteWriter) {
        let l = labels.sorted { $0.key < $1.key }
        w.u16(UInt16(l.count)); for (k, v) in l { w.string(k); w.string(v) }
        w.u8(UInt8(drivers.count)); for d in drivers { w.u8(d.rawValue) }
        w.bool(draining); w.string(address); w.string(VMMigration.clipped(unavailable, Self.maxUnavailable))
    }

    static func decode(_ r: inout ByteReader) throws -> ServiceNodeInfo {
        var info = ServiceNodeInfo(drivers: [])
        let n = Int(try r.u16())
        if n > ServiceSpec.maxList { throw DecodeError(.tooLong(field: "labels", length: n, limit: ServiceSpec.maxList), at: r.offset) }
        for _ in 0..<n { let k = try r.string("label", limit: 63); info.labels[k] = try r.string("label value", limit: 63) }
        let d = Int(try r.u8())
        for _ in 0..<d {
            let b = try r.u8()
            guard let k = ServiceDriverKind(rawValue: b) else { throw DecodeError(.invalid(field: "driver", reason: "unknown driver \(b)"), at: r.offset) }
            info.drivers.append(k)
        }
        info.draining = try r.bool("draining"); info.address = try r.string("address", limit: 64)
        info.unavailable = try r.string("unavailable drivers", limit: maxUnavailable)
        return info
    }
}

/// A node's pods as its datapath's endpoint map holds them (Cilium's ipcache entries of one agent):
/// pod address (IPv4, host order) → network identity. A node publishes its own, only addresses inside
/// its own pod CIDR (the table refuses any other), at most `maxPerNode`.
public enum PodEndpoints {
    public static let maxPerNode = 4096

    static func encode(_ eps: [UInt32: UInt32], into w: inout ByteWriter) {
        w.u32(UInt32(eps.count))
        for (ip, id) in eps.sorted(by: { $0.key < $1.key }) { w.u32(ip); w.u32(id) }
    }

    /// Addresses in strictly ascending order (one encoding per set), at most `maxPerNode`.
    static func decode(_ r: inout ByteReader) throws -> [UInt32: UInt32] {
        let n = Int(try r.u32())
        if n > maxPerNode { throw DecodeError(.tooLong(field: "pod endpoints", length: n, limit: maxPerNode), at: r.offset) }
        var out: [UInt32: UInt32] = [:]
        var previous: UInt32?
        for _ in 0..<n {
            let ip = try r.u32(), id = try r.u32()
            if let p = previous, ip <= p {
                throw DecodeError(.invalid(field: "pod endpoints", reason: "addresses out of order or repeated"), at: r.offset)
            }
            previous = ip
            out[ip] = id
        }
        return out
    }

    static func format(_ v: UInt32) -> String { "\(v >> 24).\(v >> 16 & 255).\(v >> 8 & 255).\(v & 255)" }
}

public enum ServiceCommand: Sendable, Equatable {
    /// Create a service, or update one (a changed spec bumps the generation).
    case deploy(ServiceSpec)
    case remove(name: String)
    /// The leader's placement of every slot of `name` at `generation`; `pending` says why some are not placed.
    case assign(name: String, generation: UInt64, [UInt16: NodeID], pending: String)
    /// A node's reports on its own instances.
    case report(node: NodeID, [(name: String, slot: UInt16, InstanceReport)])
    case nodeInfo(node: NodeID, ServiceNodeInfo)
    /// An operator drains a node (it gets nothing new and its instances move elsewhere) or undoes it.
    /// Recorded apart from the node's own facts, which never change it.
    case drain(node: NodeID, Bool)
    /// A node claims the K3s server role for itself, with the URL K3s agents join and the join token
    /// (K3sCluster.swift; the first claim wins).
    case k3sServer(node: NodeID, url: String, token: K3sToken)
    /// The K3s server's reading of the k3s services' Deployments.
    case k3sStatus(node: NodeID, [K3sWorkloadStatus])
    /// A node's pods (address → network identity, `PodEndpoints`), replacing what it published before.
    case endpoints(node: NodeID, [UInt32: UInt32])

    public static func == (a: Self, b: Self) -> Bool { a.encoded() == b.encoded() }
    static let maxK3sStatuses = 10_000

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 128)
        switch self {
        case .deploy(let spec):
            w.u8(1); spec.encode(into: &w)
            // A trailing field, only when it mounts volumes: a spec without any encodes as before.
            if !spec.volumes.isEmpty { spec.encodeVolumes(into: &w) }
        case .remove(let name): w.u8(2); w.string(name)
        case let .assign(name, generation, slots, pending):
            w.u8(3); w.string(name); w.u64(generation); w.u16(UInt16(slots.count))
            for (slot, node) in slots.sorted(by: { $0.key < $1.key }) { w.u16(slot); w.raw(node.bytes) }
            w.string(VMMigration.clipped(pending, 400))
        case let .report(node, reports):
            w.u8(4); w.raw(node.bytes); w.u32(UInt32(reports.count))
            for (name, slot, report) in reports { w.string(name); w.u16(slot); report.encode(into: &w) }
        case let .nodeInfo(node, info): w.u8(5); w.raw(node.bytes); info.encode(into: &w)
        case let .drain(node, on): w.u8(6); w.raw(node.bytes); w.bool(on)
        case let .k3sServer(node, url, token): w.u8(7); w.raw(node.bytes); w.string(url); w.string(token.secret)
        case let .k3sStatus(node, statuses):
            w.u8(8); w.raw(node.bytes); w.u32(UInt32(statuses.count)); for st in statuses { st.encode(into: &w) }
        case let .endpoints(node, eps): w.u8(9); w.raw(node.bytes); PodEndpoints.encode(eps, into: &w)
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(DecodeError) {
        do {
            var r = ByteReader(bytes)
            let tag = try r.u8()
            switch tag {
            case 1:
                var spec = try ServiceSpec.decode(&r)
                if !r.isAtEnd { spec.volumes = try ServiceSpec.decodeVolumes(&r) }
                self = .deploy(spec)
            case 2: self = .remove(name: try r.string("service name", limit: 63))
            case 3:
                let name = try r.string("service name", limit: 63), generation = try r.u64()
                let n = Int(try r.u16())
                if n > Int(ServiceSpec.maxReplicas) { throw DecodeError(.tooLong(field: "assignments", length: n, limit: Int(ServiceSpec.maxReplicas)), at: r.offset) }
                var slots: [UInt16: NodeID] = [:]
                for _ in 0..<n { let slot = try r.u16(); slots[slot] = try NodeID(bytes: r.raw(16)) }
                self = .assign(name: name, generation: generation, slots, pending: try r.string("pending", limit: 400))
            case 4:
                let node = try NodeID(bytes: r.raw(16))
                let n = Int(try r.u32())
                if n > ServiceTable.maxInstances { throw DecodeError(.tooLong(field: "reports", length: n, limit: ServiceTable.maxInstances), at: r.offset) }
                var reports: [(name: String, slot: UInt16, InstanceReport)] = []
                for _ in 0..<n { reports.append((try r.string("service name", limit: 63), try r.u16(), try InstanceReport.decode(&r))) }
                self = .report(node: node, reports)
            case 5: self = .nodeInfo(node: try NodeID(bytes: r.raw(16)), try ServiceNodeInfo.decode(&r))
            case 6: self = .drain(node: try NodeID(bytes: r.raw(16)), try r.bool("drain"))
            case 7:
                self = .k3sServer(node: try NodeID(bytes: r.raw(16)), url: try r.string("k3s url", limit: 200),
                                  token: K3sToken(secret: try r.string("k3s token", limit: K3sToken.maxBytes)))
            case 8:
                let node = try NodeID(bytes: r.raw(16))
                let n = Int(try r.u32())
                if n > Self.maxK3sStatuses { throw DecodeError(.tooLong(field: "k3s statuses", length: n, limit: Self.maxK3sStatuses), at: r.offset) }
                self = .k3sStatus(node: node, try (0..<n).map { _ in try K3sWorkloadStatus.decode(&r) })
            case 9: self = .endpoints(node: try NodeID(bytes: r.raw(16)), try PodEndpoints.decode(&r))
            default: throw DecodeError(.invalid(field: "service command", reason: "unknown tag \(tag)"), at: 0)
            }
            try r.finish()
        } catch let e as DecodeError {
            throw e
        } catch {
            throw DecodeError(.invalid(field: "service command", reason: "\(error)"), at: 0)
        }
    }
}

/// The services the network runs, and the nodes' placement facts.
public struct ServiceTable: Sendable, Equatable {
    public internal(set) var services: [String: ServiceRecord] = [:]
    public internal(set) var nodes: [NodeID: ServiceNodeInfo] = [:]
    /// Per node, the control time (Unix ms) at which its singleton lease (`svc/NODE`) ends, as last
    /// renewed: the spore counts whole seconds and forgets a lease once it ended.
    public internal(set) var leaseUntilMillis: [NodeID: Int64] = [:]
    /// The network's K3s cluster, once a node claimed the server role (K3sCluster.swift).
    public internal(set) var k3s: K3sCluster?
    /// Each node's pods as it last published them (`ServiceCommand.endpoints`; no entry: none).
    public internal(set) var podEndpoints: [NodeID: [UInt32: UInt32]] = [:]
    public static let leasePrefix = "svc/"
    /// Control time after a node's lease ended before its singletons may start elsewhere (ms).
    public static let takeoverSlackMillis: Int64 = 500

    /// Whether `node` may still run singletons at control time `now`: its lease (plus the slack) has
    /// not ended.
    public func mayStillRunSingletons(_ node: NodeID, now: Int64) -> Bool {
        guard let until = leaseUntilMillis[node] else { return false }
        return until.saturatingAdding(Self.takeoverSlackMillis) > now
    }

    /// The spore applied a renewal of `leaseName` stamped `now` (control time, ms).
    mutating func noteLease(_ leaseName: String, ttlSeconds: UInt32, now: Int64, spore: PrimarySpore) {
        guard leaseName.hasPrefix(Self.leasePrefix), let l = spore.leases[leaseName], leaseName == Self.leasePrefix + "\(l.holder)" else { return }
        leaseUntilMillis[l.holder] = max(leaseUntilMillis[l.holder] ?? 0, now.saturatingAdding(Int64(ttlSeconds) * 1000))
    }
    public static let maxServices = 10_000
    public static let maxInstances = 100_000

    public init() {}

    /// Applies `command` at control time `now` (Unix ms); `pods` bounds the addresses a node may
    /// publish. Refusals change nothing and are identical on every replica.
    public mutating func apply(_ command: ServiceCommand, spore: PrimarySpore, pods: PodCIDRTable, now: Int64) throws(ControlError) -> [ControlChange] {
        func refuse(_ why: String) -> ControlError { ControlError(.serviceRefused(why)) }
        switch command {
        case .deploy(let spec):
            if let p = spec.problem { throw refuse(p) }
            if var r = services[spec.name] {
                if r.spec.driver != spec.driver {
                    throw refuse("the name '\(spec.name)' is taken by a \(r.spec.driver) service; stop it first ('mycelium service stop \(spec.name)') or choose another name")
                }
                if r.spec == spec { return [] }
                r.spec = spec
                r.generation += 1
                r.assignments = r.assignments.filter { $0.key < spec.replicas }
                r.event("updated to generation \(r.generation) (\(spec.replicas) replicas)", at: now)
                services[spec.name] = r
                return [.service(name: spec.name, r)]
            }
            if services.count >= Self.maxServices { throw refuse("the network runs \(Self.maxServices) services, the most it records") }
            var r = ServiceRecord(spec: spec, generation: 1)
            r.event("deployed (\(spec.replicas) replicas, \(spec.driver))", at: now)
            services[spec.name] = r
            return [.service(name: spec.name, r)]

        case .remove(let name):
            guard services.removeValue(forKey: name) != nil else { throw refuse("no service named '\(name)'; see 'mycelium service list'") }
            k3s?.workloads[name] = nil
            return [.service(name: name, nil)]

        case let .assign(name, generation, slots, pending):
            guard var r = services[name] else { throw refuse("no service named '\(name)'") }
            if generation != r.generation { throw refuse("'\(name)' is at generation \(r.generation), the plan was made at \(generation)") }
            for (slot, node) in slots {
                if slot >= r.spec.replicas { throw refuse("slot \(slot) of '\(name)' is beyond its \(r.spec.replicas) replicas") }
                guard spore.members[node] != nil else { throw refuse("\(node) is not a member") }
            }
            for (slot, node) in slots where r.assignments[slot] != node {
                r.event(r.assignments[slot] == nil ? "instance \(slot) placed on \(node)" : "instance \(slot) moved from \(r.assignments[slot]!) to \(node)", at: now)
            }
            for slot in r.assignments.keys where slots[slot] == nil { r.event("instance \(slot) unplaced", at: now) }
            if pending != r.pending && !pending.isEmpty { r.event("pending: " + pending, at: now) }
            r.assignments = slots
            r.instances = r.instances.filter { slots[$0.key] == $0.value.node }
            r.pending = VMMigration.clipped(pending, 400)
            services[name] = r
            return [.service(name: name, r)]

        case let .report(node, reports):
            var changed: [String: ServiceRecord] = [:]
            for (name, slot, report) in reports {
                guard var r = changed[name] ?? services[name], r.assignments[slot] == node, report.node == node else { continue }
                let before = r.instances[slot]
                if before?.state != report.state || before?.health != report.health || before?.restarts != report.restarts {
                    r.event("instance \(slot) on \(node): \(report.state), \(report.health)" + (report.message.isEmpty ? "" : ": " + report.message), at: now)
                }
                r.instances[slot] = report
                changed[name] = r
            }
            for (name, r) in changed { services[name] = r }
            return changed.keys.sorted().map { .service(name: $0, changed[$0]) }

        case let .nodeInfo(node, info):
            guard spore.members[node] != nil else { throw refuse("\(node) is not a member") }
            var info = info
            info.draining = nodes[node]?.draining ?? false  // the operator's decision, not the node's
            if nodes[node] == info { return [] }
            nodes[node] = info
            return [.serviceNode(node)]

        case let .drain(node, on):
            guard spore.members[node] != nil else { throw refuse("\(node) is not a member; see 'mycelium status'") }
            guard var info = nodes[node] else { throw refuse("\(node) has not told the network its placement facts yet (is its agent running?); retry") }
            if info.draining == on { return [] }
            info.draining = on
            nodes[node] = info
            return [.serviceNode(node)]

        case .k3sServer, .k3sStatus:
            return try applyK3s(command, spore: spore)

        case let .endpoints(node, eps):
            guard spore.members[node] != nil, spore.revoked[node] == nil else { throw refuse("\(node) is not a member") }
            if eps.count > PodEndpoints.maxPerNode {
                throw refuse("\(node) published \(eps.count) pod endpoints, over \(PodEndpoints.maxPerNode)")
            }
            if !eps.isEmpty {
                guard let cidr = pods.cidr(of: node) else { throw refuse("\(node) has no pod CIDR, so it has no pods to publish") }
                if let bad = eps.keys.sorted().first(where: { $0 & cidr.mask != cidr.address }) {
                    throw refuse("pod address \(PodEndpoints.format(bad)) is outside \(node)'s pod CIDR \(cidr); a node publishes only its own pods")
                }
            }
            if (podEndpoints[node] ?? [:]) == eps { return [] }
            podEndpoints[node] = eps.isEmpty ? nil : eps
            return [.podEndpoints(node)]
        }
    }

    /// Drops what a member that left for good had (called when the spore forgets it).
    mutating func forget(_ node: NodeID) -> [ControlChange] {
        leaseUntilMillis[node] = nil
        if k3s?.server == node { k3s = nil }
        var changes: [ControlChange] = []
        if podEndpoints.removeValue(forKey: node) != nil { changes.append(.podEndpoints(node)) }
        if nodes.removeValue(forKey: node) != nil { changes.append(.serviceNode(node)) }
        return changes
    }

    // MARK: encoding (part of the control-state snapshot)

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 64 + services.count * 256)
        w.u32(UInt32(services.count))
        for r in services.values.sorted(by: { $0.name < $1.name }) {
            r.spec.encode(into: &w); w.u64(r.generation)
            w.u16(UInt16(r.assignments.count))
            for (slot, node) in r.assignments.sorted(by: { $0.key < $1.key }) { w.u16(slot); w.raw(node.bytes) }
            w.u16(UInt16(r.instances.count))
            for (slot, i) in r.instances.sorted(by: { $0.key < $1.key }) { w.u16(slot); i.encode(into: &w) }
            w.string(r.pending)
            w.u8(UInt8(r.events.count)); for e in r.events { w.i64(e.millis); w.string(e.text) }
        }
        w.u32(UInt32(nodes.count))
        for (node, info) in nodes.sorted(by: { $0.key < $1.key }) { w.raw(node.bytes); info.encode(into: &w) }
        w.u32(UInt32(leaseUntilMillis.count))
        for (node, until) in leaseUntilMillis.sorted(by: { $0.key < $1.key }) { w.raw(node.bytes); w.i64(until) }
        // Added after snapshot format 5 without a new format, as optional sections in ascending tag
        // order (1: the K3s cluster, 2: the nodes' pod endpoints): a table without them encodes exactly
        // as before, and older snapshots (which end here) restore with neither.
        if let c = k3s { w.u8(1); c.encode(into: &w) }
        let published = podEndpoints.filter { !$0.value.isEmpty }
        if !published.isEmpty {
            w.u8(2); w.u32(UInt32(published.count))
            for (node, eps) in published.sorted(by: { $0.key < $1.key }) { w.raw(node.bytes); PodEndpoints.encode(eps, into: &w) }
        }
        // 3: the services' volumes (by service name), only when some service mounts one.
        let mounting = services.values.filter { !$0.spec.volumes.isEmpty }.sorted(by: { $0.name < $1.name })
        if !mounting.isEmpty {
            w.u8(3); w.u32(UInt32(mounting.count))
            for r in mounting { w.string(r.name); r.spec.encodeVolumes(into: &w) }
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(DecodeError) {
        do {
            var r = ByteReader(bytes)
            let n = Int(try r.u32())
            if n > Self.maxServices { throw DecodeError(.tooLong(field: "services", length: n, limit: Self.maxServices), at: 0) }
            for _ in 0..<n {
                var rec = ServiceRecord(spec: try ServiceSpec.decode(&r), generation: try r.u64())
                let a = Int(try r.u16())
                for _ in 0..<a { let slot = try r.u16(); rec.assignments[slot] = try NodeID(bytes: r.raw(16)) }
                let i = Int(try r.u16())
                for _ in 0..<i { let slot = try r.u16(); rec.instances[slot] = try InstanceReport.decode(&r) }
                rec.pending = try r.string("pending", limit: 400)
                let e = Int(try r.u8())
                if e > ServiceRecord.maxEvents { throw DecodeError(.tooLong(field: "events", length: e, limit: ServiceRecord.maxEvents), at: r.offset) }
                for _ in 0..<e { rec.events.append((try r.i64(), try r.string("event", limit: 400))) }
                if services.updateValue(rec, forKey: rec.name) != nil {
                    throw DecodeError(.invalid(field: "service", reason: "'\(rec.name)' listed twice"), at: r.offset)
                }
            }
            let m = Int(try r.u32())
            if m > 1 << 20 { throw DecodeError(.tooLong(field: "service nodes", length: m, limit: 1 << 20), at: r.offset) }
            for _ in 0..<m { let node = try NodeID(bytes: r.raw(16)); nodes[node] = try ServiceNodeInfo.decode(&r) }
            let l = Int(try r.u32())
            if l > 1 << 20 { throw DecodeError(.tooLong(field: "service leases", length: l, limit: 1 << 20), at: r.offset) }
            for _ in 0..<l { let node = try NodeID(bytes: r.raw(16)); leaseUntilMillis[node] = try r.i64() }
            var lastSection: UInt8 = 0
            while !r.isAtEnd {
                let tag = try r.u8()
                guard tag > lastSection else {
                    throw DecodeError(.invalid(field: "service table", reason: "section \(tag) after section \(lastSection)"), at: r.offset)
                }
                lastSection = tag
                switch tag {
                case 1: k3s = try K3sCluster.decode(&r)
                case 2:
                    let n = Int(try r.u32())
                    if n > 1 << 20 { throw DecodeError(.tooLong(field: "pod endpoint nodes", length: n, limit: 1 << 20), at: r.offset) }
                    for _ in 0..<n {
                        let node = try NodeID(bytes: r.raw(16))
                        let eps = try PodEndpoints.decode(&r)
                        if eps.isEmpty { throw DecodeError(.invalid(field: "pod endpoints", reason: "\(node) listed with none"), at: r.offset) }
                        if podEndpoints.updateValue(eps, forKey: node) != nil {
                            throw DecodeError(.invalid(field: "pod endpoints", reason: "\(node) listed twice"), at: r.offset)
                        }
                    }
                case 3:
                    let n = Int(try r.u32())
                    if n > services.count { throw DecodeError(.tooLong(field: "service volumes", length: n, limit: services.count), at: r.offset) }
                    for _ in 0..<n {
                        let name = try r.string("service name", limit: 63)
                        let volumes = try ServiceSpec.decodeVolumes(&r)
                        guard services[name] != nil, services[name]!.spec.volumes.isEmpty else {
                            throw DecodeError(.invalid(field: "service volumes", reason: "volumes of '\(name)': unknown service or listed twice"), at: r.offset)
                        }
                        services[name]!.spec.volumes = volumes
                    }
                default:
                    throw DecodeError(.invalid(field: "service table", reason: "unknown section \(tag) (written by a newer build: upgrade this node)"), at: r.offset)
                }
            }
            try r.finish()
        } catch let e as DecodeError {
            throw e
        } catch {
            throw DecodeError(.invalid(field: "service table", reason: "\(error)"), at: 0)
        }
    }
}
