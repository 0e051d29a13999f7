// The K3s controller's core (issue 17, the `k3s` driver), a pure value hosted by the agent beside the
// service controller.
//
// Every node that found a `k3s` binary:
//  - decides its K3s role from the control state (`K3sRoles.decide`): the node recorded as the K3s
//    server runs `k3s server`; every other one runs `k3s agent` joining the recorded URL with the
//    recorded token. While no server is recorded, one node claims the role: a node configured
//    `k3s_role = "server"`, else (auto) the lowest node ID among the alive members offering k3s.
//    The claim carries a token the driver drew from the system's CSPRNG; the control state keeps the
//    first claim and refuses the rest;
//  - has its driver write K3s's config.yaml and the conflist and supervise the k3s process (the
//    driver restarts it with a doubling delay; a changed config restarts it at once).
// The server node also reconciles the k3s services into Deployments through the Kubernetes API: every
// `syncEveryMillis` the driver lists the Deployments it manages; each service whose Deployment is
// missing or at another generation is applied, each Deployment without a service is deleted, and the
// ready counts go into the control state (`ServiceCommand.k3sStatus`) for `mycelium service show`.
// A node without `k3s` does nothing here and does not offer the k3s driver.

import MyceliumControl
import MyceliumIdentity
import MyceliumSpores

public enum K3sRolePreference: String, Sendable, Equatable, CaseIterable {
    /// The lowest node ID among the alive members offering k3s claims the server role.
    case auto
    /// This node claims the server role when none is recorded.
    case server
    /// This node never claims it: it waits for a server and joins it.
    case agent
}

public struct K3sSettings: Sendable, Equatable {
    /// The k3s executable found on PATH at start; nil: none (then `missing` says why).
    public var binary: String?
    public var missing: String
    public var role: K3sRolePreference
    /// HOME/k3s.
    public var directory: String
    public var cniConfDir: String
    public var cniBinDir: String
    public var podCIDRFile: String
    /// This node's address (K3s's node-ip; the server's URL host).
    public var nodeIP: String
    public var apiPort: UInt16 = 6443
    public var serviceCIDR = "10.43.0.0/16"
    public var clusterDNS = "10.43.0.10"
    /// The server lists its Deployments this often (ms).
    public var syncEveryMillis: UInt64 = 2000
    /// A claim or a status report not applied is sent again after this long (ms).
    public var retryMillis: UInt64 = 2000

    public init(binary: String?, missing: String = "", role: K3sRolePreference = .auto, directory: String, cniConfDir: String = "/etc/cni/net.d",
                cniBinDir: String = "/opt/cni/bin", podCIDRFile: String, nodeIP: String) {
        self.binary = binary; self.missing = missing; self.role = role; self.directory = directory; self.cniConfDir = cniConfDir
        self.cniBinDir = cniBinDir; self.podCIDRFile = podCIDRFile; self.nodeIP = nodeIP
    }

    public var serverURL: String { "https://\(nodeIP):\(apiPort)" }
}

/// What this node does about K3s now.
public enum K3sDecision: Sendable, Equatable {
    /// Run K3s with this configuration.
    case run(K3sNodeConfig)
    /// Claim the server role (no server is recorded and this node is the one to take it).
    case claim
    /// Nothing to run yet, and why.
    case wait(String)
    /// This node cannot run K3s, and why.
    case unavailable(String)
}

public enum K3sRoles {
    public static func decide(state: ControlState, me: NodeID, settings: K3sSettings) -> K3sDecision {
        guard let binary = settings.binary else { return .unavailable(settings.missing) }
        guard let pool = state.pods.pool, let mine = state.pods.cidr(of: me) else {
            return .wait("this node has no pod CIDR in the primary spore yet")
        }
        func config(_ role: K3sRole, _ c: K3sCluster) -> K3sNodeConfig {
            K3sNodeConfig(role: role, binary: binary, node: me, nodeIP: settings.nodeIP, serverURL: role == .agent ? c.url : "", token: c.token,
                          clusterCIDR: pool, podCIDR: mine, serviceCIDR: settings.serviceCIDR, clusterDNS: settings.clusterDNS,
                          apiPort: settings.apiPort, directory: settings.directory, cniConfDir: settings.cniConfDir,
                          cniBinDir: settings.cniBinDir, podCIDRFile: settings.podCIDRFile)
        }
        if let c = state.services.k3s { return .run(config(c.server == me ? .server : .agent, c)) }
        guard state.services.nodes[me]?.drivers.contains(.k3s) == true else {
            return .wait("the network has not recorded that this node offers the k3s driver yet")
        }
        switch settings.role {
        case .server: return .claim
        case .agent: return .wait("no K3s server yet; this node (k3s_role = agent) joins the one another node starts")
        case .auto:
            let candidates = state.spore.members.values.filter { m in
                m.status == .alive && state.services.nodes[m.id]?.drivers.contains(.k3s) == true
            }.map(\.id).sorted()
            if candidates.first == me { return .claim }
            return .wait("no K3s server yet; \(candidates.first.map { "\($0)" } ?? "another node") is to start it")
        }
    }

    /// What the K3s server does about the k3s services given the Deployments it manages: apply each
    /// missing or outdated one, delete each without a service. In name order.
    public static func reconcile(services: ServiceTable, observed: [K3sObservedWorkload]) -> [K3sAction] {
        let seen = Dictionary(observed.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var out: [K3sAction] = []
        for r in services.services.values.sorted(by: { $0.name < $1.name }) where r.spec.driver == .k3s {
            if seen[r.name]?.generation != r.generation { out.append(.apply(K3sWorkload.manifest(r))) }
        }
        for o in observed.sorted(by: { $0.name < $1.name }) where services.services[o.name]?.spec.driver != .k3s {
            out.append(.delete(name: o.name))
        }
        return out
    }

    /// The server's report on every k3s service.
    public static func statuses(services: ServiceTable, observed: [K3sObservedWorkload]?, apiProblem: String?,
                                applyErrors: [String: String]) -> [K3sWorkloadStatus] {
        let seen = Dictionary((observed ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        return services.services.values.sorted(by: { $0.name < $1.name }).filter { $0.spec.driver == .k3s }.map { r in
            if let o = seen[r.name] {
                let message = applyErrors[r.name].map { "apply failed: " + $0 }
                    ?? (o.generation == r.generation ? "" : "applying generation \(r.generation) (the Deployment has \(o.generation))")
                return K3sWorkloadStatus(name: r.name, generation: o.generation, ready: o.ready, message: message)
            }
            let message = applyErrors[r.name].map { "apply failed: " + $0 }
                ?? apiProblem.map { "the Kubernetes API does not answer: " + $0 } ?? "creating its Deployment"
            return K3sWorkloadStatus(name: r.name, generation: 0, ready: 0, message: message)
        }
    }
}

/// A Deployment the server's driver found (one it manages).
public struct K3sObservedWorkload: Sendable, Equatable {
    public var name: String
    /// Its `mycelium.io/generation` annotation (0 when missing).
    public var generation: UInt64
    public var ready: UInt16
    public init(name: String, generation: UInt64, ready: UInt16) { self.name = name; self.generation = generation; self.ready = ready }
}

public enum K3sAction: Sendable, Equatable, CustomStringConvertible {
    /// Draw a join token from the system's CSPRNG and report it.
    case generateToken
    /// Write config.yaml and the conflist; start k3s, or restart it if its configuration changed.
    case run(K3sNodeConfig)
    /// Stop k3s (this node no longer runs it).
    case halt(reason: String)
    /// List the Deployments this agent manages and report them (server).
    case sync
    /// Server-side apply of the namespace and this Deployment.
    case apply(K3sManifest)
    case delete(name: String)

    public var description: String {
        switch self {
        case .generateToken: "generate a K3s token"
        case .run(let c): "run \(c)"
        case .halt(let why): "stop k3s (\(why))"
        case .sync: "list Deployments"
        case .apply(let m): "apply Deployment \(m.name) at generation \(m.generation)"
        case .delete(let name): "delete Deployment \(name)"
        }
    }
}

/// How the supervised k3s process is doing.
public enum K3sProcessState: Sendable, Equatable {
    case stopped
    case running(restarts: UInt32)
    /// It ended; the driver starts it again after `retryInMillis`.
    case restarting(lastExit: String, restarts: UInt32, retryInMillis: UInt64)
    case failed(String)
}

public enum K3sReport: Sendable, Equatable {
    case token(K3sToken)
    case process(K3sProcessState)
    case workloads([K3sObservedWorkload])
    /// Listing failed (K3s still starting, its kubeconfig not written yet, an API error).
    case apiUnavailable(String)
    case applied(name: String, generation: UInt64)
    case applyFailed(name: String, message: String)
}

public struct K3sController: Controller {
    public typealias Action = K3sAction
    public typealias Report = K3sReport
    public var name: String { "k3s" }
    public let settings: K3sSettings

    /// What the driver was last told to run (nil: nothing runs).
    public private(set) var running: K3sNodeConfig?
    public private(set) var process: K3sProcessState = .stopped
    /// Why this node runs no K3s now ("" while it runs it).
    public private(set) var waiting = ""
    var token: K3sToken?
    var tokenRequested = false
    var claimedAt: UInt64?
    var lastSync: UInt64?
    var syncOutstanding = false
    var observed: [K3sObservedWorkload]?
    var apiProblem: String?
    var applyErrors: [String: String] = [:]
    var statusSentAt: UInt64?
    var statusSent: [K3sWorkloadStatus]?

    public init(settings: K3sSettings) { self.settings = settings }

    public mutating func applied(_ change: ControlChange, context: ControllerContext) -> [ControllerEffect<K3sAction>] { [] }

    public mutating func reported(_ report: K3sReport, context: ControllerContext) -> [ControllerEffect<K3sAction>] {
        switch report {
        case .token(let t): token = t; tokenRequested = false
        case .process(let p): process = p
        case .workloads(let w):
            syncOutstanding = false; observed = w; apiProblem = nil
            guard running?.role == .server else { return [] }
            return K3sRoles.reconcile(services: context.state.services, observed: w).map { .act($0) }
        case .apiUnavailable(let why): syncOutstanding = false; apiProblem = why
        case .applied(let name, _): applyErrors[name] = nil
        case let .applyFailed(name, message): applyErrors[name] = message
        }
        return []
    }

    public mutating func tick(context: ControllerContext) -> [ControllerEffect<K3sAction>] {
        guard context.state.spore.members[context.node] != nil else { return [] }
        let now = context.millis
        var out: [ControllerEffect<K3sAction>] = []
        switch K3sRoles.decide(state: context.state, me: context.node, settings: settings) {
        case .unavailable(let why), .wait(let why):
            waiting = why
            if running != nil { running = nil; out.append(.act(.halt(reason: why))) }
        case .claim:
            waiting = "claiming the K3s server role"
            if running != nil { running = nil; out.append(.act(.halt(reason: "no K3s server is recorded"))) }
            if let t = token {
                if claimedAt.map({ now >= $0 + settings.retryMillis }) ?? true {
                    claimedAt = now
                    out.append(.request(.service(.k3sServer(node: context.node, url: settings.serverURL, token: t))))
                    out.append(.note("claiming the K3s server role at \(settings.serverURL)"))
                }
            } else if !tokenRequested {
                tokenRequested = true
                out.append(.act(.generateToken))
            }
        case .run(let config):
            waiting = ""
            if running != config {
                running = config
                out.append(.act(.run(config)))
                out.append(.note("k3s \(config.role) configured (\(config.configPath))"))
            }
        }
        if running?.role == .server {
            if !syncOutstanding || lastSync.map({ now >= $0 + 5 * settings.syncEveryMillis }) ?? true,
               lastSync.map({ now >= $0 + settings.syncEveryMillis }) ?? true {
                lastSync = now; syncOutstanding = true
                out.append(.act(.sync))
            }
            out += reportStatus(context)
        } else {
            observed = nil; apiProblem = nil; applyErrors = [:]; statusSent = nil
        }
        return out
    }

    /// The server tells the network how its Deployments are doing, when that changed.
    mutating func reportStatus(_ context: ControllerContext) -> [ControllerEffect<K3sAction>] {
        let table = context.state.services
        guard table.k3s?.server == context.node, observed != nil || apiProblem != nil else { return [] }
        let now = table.services.values.contains { $0.spec.driver == .k3s }
            ? K3sRoles.statuses(services: table, observed: observed, apiProblem: apiProblem, applyErrors: applyErrors) : []
        let recorded = now.filter { table.k3s?.workloads[$0.name] != $0 }
        guard !recorded.isEmpty else { statusSent = nil; return [] }
        if statusSent == now, let at = statusSentAt, context.millis < at + settings.retryMillis { return [] }
        statusSent = now; statusSentAt = context.millis
        return [.request(.service(.k3sStatus(node: context.node, recorded)))]
    }

    /// One line for `mycelium doctor`-style output: what K3s does on this node.
    public var statusLine: String {
        guard settings.binary != nil else { return "k3s: not offered: " + settings.missing }
        if let r = running {
            switch process {
            case .running(let n): return "k3s: \(r.role) running (\(r.configPath))" + (n > 0 ? ", \(n) restarts" : "")
            case let .restarting(exit, n, ms): return "k3s: \(r.role) \(exit); restarting in \(ms) ms (\(n) restarts so far)"
            case .failed(let why): return "k3s: \(r.role) cannot start: \(why)"
            case .stopped: return "k3s: \(r.role) starting"
            }
        }
        return "k3s: offered (\(settings.binary!)), not running: " + waiting
    }
}
