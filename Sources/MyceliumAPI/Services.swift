// The service part of the local API (issue 17): the spec file an operator writes (YAML, read with
// Yams; JSON is YAML too), and the views of the service table the agent answers with.
//
// A spec file, every field but `name` and (for `process`) `command` optional:
//
//   name: web                      # a DNS label: web.service.mycelium
//   driver: process                # process (default) | podman | k3s
//   command: [python3, -m, http.server, "8080"]   # or one string, run with /bin/sh -c
//   image: /srv/rootfs/web         # podman: a root filesystem directory; k3s: an image reference
//   env: {GREETING: hello}
//   replicas: 2
//   resources: {cpu: 250m, memory: 64Mi}          # cpu: 250m, 0.5 or 2; memory: 64Mi, 1Gi or MiB
//   ports: [{name: http, port: 8080}]             # or [8080]
//   health: {type: http, port: 8080, path: /, interval: 2s, timeout: 1s, threshold: 3}
//   restart: {policy: always, max_restarts: 0, delay: 500ms}   # always | on-failure | never
//   placement:
//     strategy: spread             # binpack (default) | spread
//     constraints: ["zone == eu", "driver process"]
//     preferences: [{rule: "rack == r1", weight: 10}]
//     min_trust: 0.2               # a fraction of full trust
//     spread: zone                 # region | zone | rack; default nodes
//     max_per_node: 1
//     anti_affinity: [db]
//   depends_on: [db]
//   volumes: ["db:/data"]          # or [{name: db, path: /data}]: mounts volume db (replicas: 1);
//                                  # a process finds it in $MYCELIUM_VOLUME_DB, a container at /data

import Foundation
import Yams

/// A service spec as the operator writes it. Decoding checks every field it can without the network
/// (units, names of policies, unknown keys), so a typo is an error with its line, not a default.
public struct ServiceSpecDocument: Codable, Sendable, Equatable {
    public var name: String
    public var driver: String = "process"
    public var command: [String] = []
    public var image: String = ""
    public var env: [String: String] = [:]
    public var replicas: Int = 1
    public var cpuMillis: Int = 100
    public var memoryMiB: Int = 64
    public var ports: [Port] = []
    public var health: Health?
    public var restart = Restart()
    public var placement = Placement()
    public var dependsOn: [String] = []
    /// Volumes the instance mounts (`mycelium service deploy --volume NAME:/PATH` adds one).
    public var volumes: [Volume] = []

    /// A volume and where the workload sees it: `NAME:/PATH` or `{name: NAME, path: /PATH}`.
    public struct Volume: Codable, Sendable, Equatable {
        public var name: String
        public var path: String
        public init(name: String, path: String) { self.name = name; self.path = path }
        /// "NAME:/PATH" (the CLI's and a spec file's short form), or nil.
        public init?(short: String) {
            guard let colon = short.firstIndex(of: ":") else { return nil }
            let n = String(short[..<colon]), p = String(short[short.index(after: colon)...])
            guard !n.isEmpty, p.hasPrefix("/") else { return nil }
            self.init(name: n, path: p)
        }
        enum CodingKeys: String, CodingKey { case name, path }
        public init(from decoder: Decoder) throws {
            if let c = try? decoder.singleValueContainer(), let t = try? c.decode(String.self) {
                guard let v = Volume(short: t) else { throw Self.invalid(decoder, "volume '\(t)': write NAME:/PATH, like db:/data") }
                self = v; return
            }
            let c = try decoder.container(keyedBy: CodingKeys.self)
            try Self.refuseUnknown(decoder, ["name", "path"], in: "a volume")
            self.init(name: try c.decode(String.self, forKey: .name), path: try c.decode(String.self, forKey: .path))
        }
    }

    public struct Port: Codable, Sendable, Equatable {
        public var name: String
        public var port: Int
        public var proto: String
        public init(name: String, port: Int, proto: String = "tcp") { self.name = name; self.port = port; self.proto = proto }
        enum CodingKeys: String, CodingKey { case name, port, proto = "protocol" }
        public init(from decoder: Decoder) throws {
            if let c = try? decoder.singleValueContainer(), let p = try? c.decode(Int.self) {
                self.init(name: "port\(p)", port: p); return
            }
            let c = try decoder.container(keyedBy: CodingKeys.self)
            try Self.refuseUnknown(decoder, ["name", "port", "protocol"], in: "a port")
            let port = try c.decode(Int.self, forKey: .port)
            self.init(name: try c.decodeIfPresent(String.self, forKey: .name) ?? "port\(port)", port: port,
                      proto: try c.decodeIfPresent(String.self, forKey: .proto) ?? "tcp")
        }
    }

    public struct Health: Codable, Sendable, Equatable {
        /// tcp | http | exec
        public var type: String
        public var port: Int?
        public var path: String?
        public var command: [String]?
        public var intervalMillis: Int = 2000
        public var timeoutMillis: Int = 1000
        public var threshold: Int = 3
        public init(type: String, port: Int? = nil, path: String? = nil, command: [String]? = nil) {
            self.type = type; self.port = port; self.path = path; self.command = command
        }
        enum CodingKeys: String, CodingKey { case type, port, path, command, interval, timeout, threshold }
        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            try Self.refuseUnknown(decoder, ["type", "port", "path", "command", "interval", "timeout", "threshold"], in: "health")
            type = try c.decode(String.self, forKey: .type)
            guard ["tcp", "http", "exec"].contains(type) else { throw Self.invalid(decoder, "health type '\(type)': use tcp, http or exec") }
            port = try c.decodeIfPresent(Int.self, forKey: .port)
            path = try c.decodeIfPresent(String.self, forKey: .path)
            command = try c.decodeIfPresent(Command.self, forKey: .command)?.argv
            if let d = try c.decodeIfPresent(String.self, forKey: .interval) { intervalMillis = try ServiceSpecDocument.millis(d, decoder) }
            if let d = try c.decodeIfPresent(String.self, forKey: .timeout) { timeoutMillis = try ServiceSpecDocument.millis(d, decoder) }
            threshold = try c.decodeIfPresent(Int.self, forKey: .threshold) ?? 3
            if (type == "tcp" || type == "http") && port == nil { throw Self.invalid(decoder, "a \(type) health check needs a port") }
            if type == "exec" && (command ?? []).isEmpty { throw Self.invalid(decoder, "an exec health check needs a command") }
        }
        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(type, forKey: .type); try c.encodeIfPresent(port, forKey: .port); try c.encodeIfPresent(path, forKey: .path)
            try c.encodeIfPresent(command, forKey: .command)
            try c.encode("\(intervalMillis)ms", forKey: .interval); try c.encode("\(timeoutMillis)ms", forKey: .timeout)
            try c.encode(threshold, forKey: .threshold)
        }
    }

    public struct Restart: Codable, Sendable, Equatable {
        /// always | on-failure | never
        public var policy = "always"
        public var maxRestarts = 0
        public var delayMillis = 500
        public init() {}
        enum CodingKeys: String, CodingKey { case policy, maxRestarts = "max_restarts", delay }
        public init(from decoder: Decoder) throws {
            if let c = try? decoder.singleValueContainer(), let p = try? c.decode(String.self) { policy = p } else {
                let c = try decoder.container(keyedBy: CodingKeys.self)
                try Self.refuseUnknown(decoder, ["policy", "max_restarts", "delay"], in: "restart")
                policy = try c.decodeIfPresent(String.self, forKey: .policy) ?? "always"
                maxRestarts = try c.decodeIfPresent(Int.self, forKey: .maxRestarts) ?? 0
                if let d = try c.decodeIfPresent(String.self, forKey: .delay) { delayMillis = try ServiceSpecDocument.millis(d, decoder) }
            }
            guard ["always", "on-failure", "never"].contains(policy) else {
                throw Self.invalid(decoder, "restart policy '\(policy)': use always, on-failure or never")
            }
        }
        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(policy, forKey: .policy); try c.encode(maxRestarts, forKey: .maxRestarts); try c.encode("\(delayMillis)ms", forKey: .delay)
        }
    }

    public struct Preference: Codable, Sendable, Equatable {
        public var rule: String
        public var weight: Int
        public init(rule: String, weight: Int) { self.rule = rule; self.weight = weight }
    }

    public struct Placement: Codable, Sendable, Equatable {
        public var strategy = "binpack"
        public var constraints: [String] = []
        public var preferences: [Preference] = []
        public var minTrust: Double = 0
        /// region | zone | rack | "" (nodes)
        public var spread = ""
        public var maxPerNode = 0
        public var antiAffinity: [String] = []
        public init() {}
        enum CodingKeys: String, CodingKey {
            case strategy, constraints, preferences, spread
            case minTrust = "min_trust", maxPerNode = "max_per_node", antiAffinity = "anti_affinity"
        }
        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            try Self.refuseUnknown(decoder, ["strategy", "constraints", "preferences", "spread", "min_trust", "max_per_node", "anti_affinity"], in: "placement")
            strategy = try c.decodeIfPresent(String.self, forKey: .strategy) ?? "binpack"
            constraints = try c.decodeIfPresent([String].self, forKey: .constraints) ?? []
            preferences = try c.decodeIfPresent([Preference].self, forKey: .preferences) ?? []
            minTrust = try c.decodeIfPresent(Double.self, forKey: .minTrust) ?? 0
            spread = try c.decodeIfPresent(String.self, forKey: .spread) ?? ""
            if spread == "node" || spread == "nodes" { spread = "" }
            maxPerNode = try c.decodeIfPresent(Int.self, forKey: .maxPerNode) ?? 0
            antiAffinity = try c.decodeIfPresent([String].self, forKey: .antiAffinity) ?? []
            guard (0...1).contains(minTrust) else { throw Self.invalid(decoder, "min_trust \(minTrust) is a fraction from 0 to 1") }
        }
    }

    /// A command as a list, or one string run with /bin/sh -c.
    struct Command: Decodable {
        var argv: [String]
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) { argv = ["/bin/sh", "-c", s] } else { argv = try c.decode([String].self) }
        }
    }

    enum CodingKeys: String, CodingKey {
        case name, driver, command, image, env, replicas, resources, ports, health, restart, placement
        case dependsOn = "depends_on", volumes
    }
    enum ResourceKeys: String, CodingKey { case cpu, memory }

    public init(name: String, command: [String] = []) { self.name = name; self.command = command }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        try Self.refuseUnknown(decoder, ["name", "driver", "command", "image", "env", "replicas", "resources", "ports", "health", "restart",
                                         "placement", "depends_on", "volumes"], in: "a service spec")
        name = try c.decode(String.self, forKey: .name)
        driver = try c.decodeIfPresent(String.self, forKey: .driver) ?? "process"
        guard ["process", "podman", "k3s"].contains(driver) else { throw Self.invalid(decoder, "driver '\(driver)': use process, podman or k3s") }
        command = try c.decodeIfPresent(Command.self, forKey: .command)?.argv ?? []
        image = try c.decodeIfPresent(String.self, forKey: .image) ?? ""
        env = try c.decodeIfPresent([String: String].self, forKey: .env) ?? [:]
        replicas = try c.decodeIfPresent(Int.self, forKey: .replicas) ?? 1
        if c.contains(.resources) {
            let r = try c.nestedContainer(keyedBy: ResourceKeys.self, forKey: .resources)
            if let cpu = try Self.text(r, .cpu) { cpuMillis = try Self.cpuMillis(cpu, decoder) }
            if let memory = try Self.text(r, .memory) { memoryMiB = try Self.mebibytes(memory, decoder) }
        }
        ports = try c.decodeIfPresent([Port].self, forKey: .ports) ?? []
        health = try c.decodeIfPresent(Health.self, forKey: .health)
        restart = try c.decodeIfPresent(Restart.self, forKey: .restart) ?? Restart()
        placement = try c.decodeIfPresent(Placement.self, forKey: .placement) ?? Placement()
        dependsOn = try c.decodeIfPresent([String].self, forKey: .dependsOn) ?? []
        volumes = try c.decodeIfPresent([Volume].self, forKey: .volumes) ?? []
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name); try c.encode(driver, forKey: .driver); try c.encode(command, forKey: .command)
        try c.encode(image, forKey: .image); try c.encode(env, forKey: .env); try c.encode(replicas, forKey: .replicas)
        var r = c.nestedContainer(keyedBy: ResourceKeys.self, forKey: .resources)
        try r.encode("\(cpuMillis)m", forKey: .cpu); try r.encode("\(memoryMiB)Mi", forKey: .memory)
        try c.encode(ports, forKey: .ports); try c.encodeIfPresent(health, forKey: .health); try c.encode(restart, forKey: .restart)
        try c.encode(placement, forKey: .placement); try c.encode(dependsOn, forKey: .dependsOn)
        if !volumes.isEmpty { try c.encode(volumes, forKey: .volumes) }
    }

    /// Reads a spec file (YAML or JSON). Errors say where and what.
    public static func parse(_ text: String, file: String = "the spec") throws -> ServiceSpecDocument {
        do {
            return try YAMLDecoder().decode(ServiceSpecDocument.self, from: text)
        } catch let e as DecodingError {
            throw ServiceSpecError(message: "\(file): " + Self.describe(e))
        } catch {
            throw ServiceSpecError(message: "\(file) is not valid YAML: \(error)")
        }
    }

    static func describe(_ e: DecodingError) -> String {
        func path(_ p: [CodingKey]) -> String { p.isEmpty ? "the top level" : p.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".") }
        switch e {
        case let .keyNotFound(key, ctx): return "\(path(ctx.codingPath + [key])) is missing"
        case let .typeMismatch(type, ctx): return "\(path(ctx.codingPath)) should be \(type == String.self ? "a string" : type == Int.self ? "a whole number" : "\(type)")"
        case let .valueNotFound(_, ctx): return "\(path(ctx.codingPath)) has no value"
        case let .dataCorrupted(ctx): return ctx.codingPath.isEmpty ? ctx.debugDescription : "\(path(ctx.codingPath)): \(ctx.debugDescription)"
        @unknown default: return "\(e)"
        }
    }

    // MARK: units

    static func text<K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ key: K) throws -> String? {
        if let i = try? c.decodeIfPresent(Int.self, forKey: key) { return "\(i)" }
        if let d = try? c.decodeIfPresent(Double.self, forKey: key) { return "\(d)" }
        return try c.decodeIfPresent(String.self, forKey: key)
    }

    /// "250m" → 250, "0.5" → 500, "2" → 2000.
    public static func cpuMillis(_ s: String, _ decoder: Decoder? = nil) throws -> Int {
        let t = s.trimmingCharacters(in: .whitespaces)
        if t.hasSuffix("m"), let v = Int(t.dropLast()), v >= 0 { return v }
        if let v = Double(t), v >= 0, v <= 1024 { return Int((v * 1000).rounded()) }
        throw invalidUnit(decoder, "cpu '\(s)': write millicpus (250m) or CPUs (0.5, 2)")
    }

    /// "64Mi" → 64, "1Gi" → 1024, "512M" → 489 (rounded up), "128" → 128 (MiB).
    public static func mebibytes(_ s: String, _ decoder: Decoder? = nil) throws -> Int {
        let t = s.trimmingCharacters(in: .whitespaces)
        let units: [(String, Double)] = [("Ki", 1.0 / 1024), ("Mi", 1), ("Gi", 1024), ("Ti", 1_048_576), ("K", 1000.0 / 1048576), ("M", 1e6 / 1048576),
                                         ("G", 1e9 / 1048576), ("T", 1e12 / 1048576)]
        for (suffix, factor) in units where t.hasSuffix(suffix) {
            if let v = Double(t.dropLast(suffix.count)), v >= 0 { return Int((v * factor).rounded(.up)) }
        }
        if let v = Int(t), v >= 0 { return v }
        throw invalidUnit(decoder, "memory '\(s)': write 64Mi, 1Gi, 512M or a number of MiB")
    }

    /// "500ms" → 500, "2s" → 2000, "1m" → 60000, "250" → 250 (ms).
    public static func millis(_ s: String, _ decoder: Decoder? = nil) throws -> Int {
        let t = s.trimmingCharacters(in: .whitespaces)
        for (suffix, factor) in [("ms", 1.0), ("s", 1000), ("m", 60_000)] where t.hasSuffix(suffix) {
            if let v = Double(t.dropLast(suffix.count)), v >= 0, v < 1e7 { return Int((v * factor).rounded()) }
        }
        if let v = Int(t), v >= 0 { return v }
        throw invalidUnit(decoder, "duration '\(s)': write 500ms, 2s or 1m")
    }

    static func invalidUnit(_ decoder: Decoder?, _ m: String) -> Error {
        decoder.map { invalid($0, m) } ?? ServiceSpecError(message: m)
    }
}

public struct ServiceSpecError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

extension Decodable {
    static func invalid(_ decoder: Decoder, _ message: String) -> DecodingError {
        .dataCorrupted(DecodingError.Context(codingPath: decoder.codingPath, debugDescription: message))
    }

    /// A key this build does not know is a typo until proven otherwise (`replica:` for `replicas:`).
    static func refuseUnknown(_ decoder: Decoder, _ known: Set<String>, in what: String) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        if let bad = c.allKeys.map(\.stringValue).sorted().first(where: { !known.contains($0) }) {
            throw invalid(decoder, "unknown field '\(bad)' in \(what); known fields: \(known.sorted().joined(separator: ", "))")
        }
    }
}

// MARK: the table as the agent answers it

/// One instance of a service.
public struct ServiceInstanceInfo: Codable, Sendable, Equatable {
    /// NAME-SLOT, as `service logs --instance` takes it.
    public var id: String
    public var slot: Int
    public var node: String
    /// pending | starting | running | exited | failed | unknown (not reported yet)
    public var state: String
    /// healthy | unhealthy | unknown
    public var health: String
    /// Whether DNS answers with it now.
    public var serving: Bool
    public var address: String
    public var restarts: UInt32
    public var message: String
    public var generation: UInt64

    public init(id: String, slot: Int, node: String, state: String, health: String, serving: Bool, address: String, restarts: UInt32,
                message: String, generation: UInt64) {
        self.id = id; self.slot = slot; self.node = node; self.state = state; self.health = health; self.serving = serving
        self.address = address; self.restarts = restarts; self.message = message; self.generation = generation
    }
}

public struct ServiceEventInfo: Codable, Sendable, Equatable {
    /// Unix milliseconds of control time.
    public var at: Int64
    public var text: String
    public init(at: Int64, text: String) { self.at = at; self.text = text }
}

public struct ServiceInfo: Codable, Sendable, Equatable {
    public var name: String
    public var driver: String
    public var generation: UInt64
    public var replicas: Int
    /// Instances answering traffic.
    public var serving: Int
    /// Why some replicas are not placed ("" when all are).
    public var pending: String
    public var instances: [ServiceInstanceInfo]
    /// `NAME.service.mycelium` endpoints (address:port of serving instances).
    public var endpoints: [String]
    public var events: [ServiceEventInfo]
    /// The spec as deployed.
    public var spec: ServiceSpecDocument
    /// Set when it can run on one node only, and why (a local volume lives there: it cannot move).
    public var pinned: String?

    public init(name: String, driver: String, generation: UInt64, replicas: Int, serving: Int, pending: String,
                instances: [ServiceInstanceInfo], endpoints: [String], events: [ServiceEventInfo], spec: ServiceSpecDocument) {
        self.name = name; self.driver = driver; self.generation = generation; self.replicas = replicas; self.serving = serving
        self.pending = pending; self.instances = instances; self.endpoints = endpoints; self.events = events; self.spec = spec
    }
}

public struct ServicesResponse: Codable, Sendable, Equatable {
    public var services: [ServiceInfo]
    /// Where this agent answers DNS for `*.service.mycelium` ("" when it does not).
    public var dns: String
    public init(services: [ServiceInfo], dns: String) { self.services = services; self.dns = dns }
}

/// The tail of an instance's log.
public struct ServiceLogsResponse: Codable, Sendable, Equatable {
    public var instance: String
    public var node: String
    public var log: String
    public init(instance: String, node: String, log: String) { self.instance = instance; self.node = node; self.log = log }
}
