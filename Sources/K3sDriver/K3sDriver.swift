// The K3s controller's driver: everything K3s-related a node does. It writes K3s's config.yaml and
// the mycelium-cni conflist (atomically; config.yaml 0600, it holds the join token), supervises the
// k3s process (K3sSupervisor), draws join tokens from libsodium's CSPRNG, and talks to the Kubernetes
// API of the local K3s server (KubeClient) to apply, list and delete the Deployments of k3s services.
// The core (K3sController) decides; this only does and reports.
//
// Not testable against a real K3s here (K3s cannot be installed on the project's machines): the
// tests run a stand-in `k3s` script and a stand-in API server (Tests/K3sTests).

import Foundation
import K3sController
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import Synchronization

/// Where the k3s binary is, or why this node has none.
public enum K3sBinary {
    /// Looks `name` up on `path` (a PATH value) unless it contains a "/". Returns the executable's
    /// path, or nil and the operator-facing reason.
    public static func locate(_ name: String, path: String?) -> (String?, String) {
        if name.isEmpty { return (nil, "k3s is turned off on this node (k3s_binary = \"\")") }
        if name.contains("/") {
            return access(name, X_OK) == 0 ? (name, "") : (nil, "no executable k3s at \(name) (k3s_binary); K3s is not installed there")
        }
        let dirs = (path ?? "").split(separator: ":").map(String.init).filter { !$0.isEmpty }
        for d in dirs {
            let p = d + "/" + name
            var st = stat()
            if stat(p, &st) == 0, st.st_mode & S_IFMT == S_IFREG, access(p, X_OK) == 0 { return (p, "") }
        }
        return (nil, "no `\(name)` binary on PATH (\(dirs.joined(separator: ":"))): K3s is not installed on this machine, so this node does not offer the k3s driver. Install K3s (https://docs.k3s.io) and restart the agent")
    }
}

public final class K3sDriver: ControllerDriver, Sendable {
    public typealias Action = K3sAction
    public typealias Report = K3sReport

    let supervisor: K3sSupervisor
    let sink = Mutex<(@Sendable (K3sReport) -> Void)?>(nil)
    /// The configuration k3s runs with now, with its files' bytes (a change restarts it).
    let current = Mutex<(config: K3sNodeConfig, files: [UInt8])?>(nil)
    /// Set by `stopAll()`: an action still queued then must not start k3s again.
    let closed = Mutex(false)
    /// The mycelium-cni executable to link into the CNI binary directory ("" to leave it alone).
    let cniPlugin: String
    /// Overrides the kubeconfig the server's K3s writes (tests point it at a stand-in API).
    let kubeconfig: String?

    /// `directory`: HOME/k3s. `cniPlugin`: where mycelium-cni is (linked into K3s's CNI bin directory
    /// when that holds none).
    public init(directory: String, cniPlugin: String = "", kubeconfig: String? = nil) throws {
        try AtomicFile.makeDirectory(directory, mode: 0o700)
        let ref = K3sDriverRef()
        supervisor = try K3sSupervisor(directory: directory + "/run") { state in ref.get()?.send(.process(state)) }
        self.cniPlugin = cniPlugin
        self.kubeconfig = kubeconfig
        ref.set(self)
    }

    public func reportTo(_ sink: @escaping @Sendable (K3sReport) -> Void) { self.sink.withLock { $0 = sink } }
    func send(_ r: K3sReport) { sink.withLock { $0 }?(r) }

    public func perform(_ action: K3sAction) async throws {
        switch action {
        case .generateToken:
            send(.token(Self.newToken()))
        case .run(let config):
            guard !closed.withLock({ $0 }) else { return }
            try await run(config)
        case .halt:
            current.withLock { $0 = nil }
            await supervisor.stop()
        case .sync:
            await sync()
        case .apply(let m):
            do {
                let api = try client()
                try await api.apply(path: K3sWorkload.namespacePath, object: K3sWorkload.namespaceObject, fieldManager: K3sWorkload.fieldManager)
                try await api.apply(path: K3sWorkload.deploymentPath(m.name), object: m.deployment, fieldManager: K3sWorkload.fieldManager)
                send(.applied(name: m.name, generation: m.generation))
            } catch {
                send(.applyFailed(name: m.name, message: "\(error)"))
            }
        case .delete(let name):
            do { try await client().delete(K3sWorkload.deploymentPath(name)) } catch {
                send(.apiUnavailable("\(error)"))
            }
        }
    }

    /// A join token: 32 bytes from libsodium's CSPRNG, hex (K3s takes any string).
    static func newToken() -> K3sToken {
        K3sToken(secret: "myc" + Sodium.randomBytes(32).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined())
    }

    func run(_ c: K3sNodeConfig) async throws {
        let yaml = Array(K3sConfigFile.yaml(c).utf8), conflist = Array(K3sConfigFile.conflist(c).utf8)
        try AtomicFile.makeDirectory(c.directory, mode: 0o700)
        try AtomicFile.makeDirectory(c.cniDataDir, mode: 0o700)
        try AtomicFile.makeDirectory(c.cniConfDir, mode: 0o755)
        // config.yaml holds the join token: readable by root only.
        try AtomicFile.write(yaml, to: c.configPath, mode: 0o600)
        try AtomicFile.write(conflist, to: c.conflistPath, mode: 0o644)
        linkPlugin(into: c.cniBinDir)
        let files = yaml + conflist
        let changed = current.withLock { cur -> Bool in
            let changed = cur.map { $0.config.arguments != c.arguments || $0.files != files } ?? true
            cur = (c, files)
            return changed
        }
        await supervisor.run(c.arguments, environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                             restart: changed)
    }

    /// Puts mycelium-cni where K3s's containerd looks for CNI plugins, unless one is there.
    func linkPlugin(into dir: String) {
        guard !cniPlugin.isEmpty, AtomicFile.exists(cniPlugin) else { return }
        let target = dir + "/mycelium-cni"
        if AtomicFile.exists(target) { return }
        try? AtomicFile.makeDirectory(dir, mode: 0o755)
        _ = symlink(cniPlugin, target)
    }

    func client() throws -> KubeClient {
        let path = kubeconfig ?? current.withLock { $0?.config.kubeconfigPath } ?? ""
        guard !path.isEmpty else { throw KubeError("this node runs no K3s server") }
        return KubeClient(endpoint: try KubeEndpoint.load(kubeconfig: path))
    }

    func sync() async {
        do {
            let list = try await client().get(K3sWorkload.listPath) ?? [:]
            let items = list["items"] as? [[String: Any]] ?? []
            let observed = items.compactMap { item -> K3sObservedWorkload? in
                guard let meta = item["metadata"] as? [String: Any], let name = meta["name"] as? String else { return nil }
                let annotations = meta["annotations"] as? [String: Any] ?? [:]
                let generation = (annotations[K3sWorkload.generationAnnotation] as? String).flatMap { UInt64($0) } ?? 0
                let ready = ((item["status"] as? [String: Any])?["readyReplicas"] as? Int) ?? 0
                return K3sObservedWorkload(name: name, generation: generation, ready: UInt16(clamping: ready))
            }
            send(.workloads(observed))
        } catch {
            send(.apiUnavailable("\(error)"))
        }
    }

    /// Stops k3s (the agent stops).
    public func stopAll() async {
        closed.withLock { $0 = true }
        current.withLock { $0 = nil }
        await supervisor.stop()
    }

    public func logs(maxBytes: Int) -> String { supervisor.logs(maxBytes: maxBytes) }
}

final class K3sDriverRef: @unchecked Sendable {
    private let lock = NSLock()
    private weak var driver: K3sDriver?
    func set(_ d: K3sDriver) { lock.lock(); driver = d; lock.unlock() }
    func get() -> K3sDriver? { lock.lock(); defer { lock.unlock() }; return driver }
}
