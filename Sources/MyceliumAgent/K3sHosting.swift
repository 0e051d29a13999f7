// The k3s driver in the agent (issue 17): found at start like the other drivers (a `k3s` binary on
// PATH, `k3s_binary`), hosted as its own controller (Sources/K3sController, Sources/K3sDriver). A node
// without k3s hosts the controller with no driver: it never acts, and the node does not offer k3s.

import Foundation
import K3sController
import K3sDriver
import Logging
import MyceliumAPI
import MyceliumControl

extension Agent {
    /// The K3s controller's settings and its driver (nil when this node cannot run K3s; the settings
    /// then say why).
    static func makeK3s(_ config: AgentConfig, logger: Logger) -> (K3sSettings, K3sDriver?) {
        var (binary, missing) = K3sBinary.locate(config.k3sBinary, path: ProcessInfo.processInfo.environment["PATH"])
        var driver: K3sDriver?
        if binary != nil {
            do {
                driver = try K3sDriver(directory: config.home + "/k3s", cniPlugin: siblingExecutable("mycelium-cni"))
            } catch {
                logger.error("k3s was found but cannot be supervised; this node does not offer the k3s driver", metadata: ["error": "\(error)"])
                (binary, missing) = (nil, "k3s was found but cannot be supervised: \(error)")
            }
        } else {
            logger.info("this node does not offer the k3s driver", metadata: ["reason": "\(missing)"])
        }
        let settings = K3sSettings(binary: binary, missing: missing, role: K3sRolePreference(rawValue: config.k3sRole) ?? .auto,
                                   directory: config.home + "/k3s", cniConfDir: config.k3sCNIConfDir, cniBinDir: config.k3sCNIBinDir,
                                   podCIDRFile: config.podCIDRFilePath, nodeIP: splitAddress(config.advertisedAddress)?.host ?? "127.0.0.1")
        return (settings, driver)
    }

    /// An executable installed beside this one ("" when there is none).
    static func siblingExecutable(_ name: String) -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let path = URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent(name).path
        return FileManager.default.isExecutableFile(atPath: path) ? path : ""
    }
}

/// The K3s controller's driver on a node without k3s: the controller never asks it for anything.
struct NoK3sDriver: ControllerDriver {
    typealias Action = K3sAction
    typealias Report = K3sReport
    func perform(_ action: K3sAction) async throws {}
}

extension Agent {
    /// A k3s service as `mycelium service list/show` shows it: Kubernetes places its pods, so it has
    /// no instances on nodes here; what the K3s server read of its Deployment is its status.
    static func k3sServiceInfo(_ r: ServiceRecord, _ table: ServiceTable) -> ServiceInfo {
        var ready = 0
        var status = r.pending
        if let c = table.k3s {
            if let w = table.k3s?.workloads[r.name] {
                ready = Int(w.ready)
                status = "Kubernetes: \(w.ready) of \(r.spec.replicas) pods ready (Deployment \(K3sWorkload.namespace)/\(r.name)"
                    + (w.generation == 0 ? "" : ", generation \(w.generation)") + ", K3s server \(c.server))" + (w.message.isEmpty ? "" : "; " + w.message)
            } else if status.isEmpty {
                status = "Kubernetes: waiting for the K3s server \(c.server) to apply Deployment \(K3sWorkload.namespace)/\(r.name)"
            }
        }
        return ServiceInfo(name: r.name, driver: "\(r.spec.driver)", generation: r.generation, replicas: Int(r.spec.replicas), serving: ready,
                           pending: status, instances: [], endpoints: [], events: r.events.map { ServiceEventInfo(at: $0.millis, text: $0.text) },
                           spec: document(r.spec))
    }
}
