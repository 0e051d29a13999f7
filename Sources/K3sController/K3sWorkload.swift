// A k3s service as Kubernetes objects: one Deployment in the `mycelium` namespace, applied by the K3s
// server's agent with server-side apply (field manager "mycelium"). Pure: the same spec and
// generation always give the same bytes.
//
// Mapping (ServiceSpec → apps/v1 Deployment):
//   replicas → spec.replicas; image → the container's image; command → its command (empty: the
//   image's entrypoint); env (+ MYCELIUM_SERVICE) → env, sorted; cpu/memory → requests and limits
//   (the scheduler's reservation and the cgroup limit, as for the process driver); ports → container
//   ports; the health check → liveness and readiness probes (so ready pods are the serving ones);
//   the generation → the annotation `mycelium.io/generation`, read back to know what is applied.
// Kubernetes, not Mycelium's scheduler, places the pods; placement rules of the spec do not apply.

import MyceliumControl

public struct K3sManifest: Sendable, Equatable {
    public var name: String
    public var generation: UInt64
    /// The Deployment as JSON (valid YAML: the body of an apply-patch+yaml request).
    public var deployment: String
    public init(name: String, generation: UInt64, deployment: String) { self.name = name; self.generation = generation; self.deployment = deployment }
}

public enum K3sWorkload {
    public static let namespace = "mycelium"
    public static let fieldManager = "mycelium"
    public static let generationAnnotation = "mycelium.io/generation"
    public static let serviceLabel = "mycelium.io/service"
    public static let managedByLabel = "app.kubernetes.io/managed-by"

    /// The Namespace object, applied before the first Deployment.
    public static var namespaceObject: String {
        JSONText.object([("apiVersion", .string("v1")), ("kind", .string("Namespace")),
                         ("metadata", .object([("name", .string(namespace))]))]).rendered()
    }

    public static func deploymentPath(_ name: String) -> String { "/apis/apps/v1/namespaces/\(namespace)/deployments/\(name)" }
    public static var namespacePath: String { "/api/v1/namespaces/\(namespace)" }
    /// The Deployments this agent manages (listed to find what to update, delete and report).
    public static var listPath: String {
        "/apis/apps/v1/namespaces/\(namespace)/deployments?labelSelector=" + managedByLabel.replacingSlash() + "%3D" + fieldManager
    }

    public static func manifest(_ r: ServiceRecord) -> K3sManifest {
        K3sManifest(name: r.name, generation: r.generation, deployment: deployment(r.spec, generation: r.generation).rendered())
    }

    public static func deployment(_ s: ServiceSpec, generation: UInt64) -> JSONText {
        let labels: JSONText = .object([(serviceLabel, .string(s.name))])
        var container: [(String, JSONText)] = [("name", .string(s.name)), ("image", .string(s.image))]
        if !s.command.isEmpty { container.append(("command", .array(s.command.map { .string($0) }))) }
        var env = s.environment
        env["MYCELIUM_SERVICE"] = s.name
        container.append(("env", .array(env.sorted { $0.key < $1.key }.map { .object([("name", .string($0.key)), ("value", .string($0.value))]) })))
        if !s.ports.isEmpty {
            container.append(("ports", .array(s.ports.map { p in
                var port: [(String, JSONText)] = []
                if let n = portName(p.name) { port.append(("name", .string(n))) }
                port += [("containerPort", .int(Int64(p.port))), ("protocol", .string(p.proto.uppercased()))]
                return .object(port)
            })))
        }
        let amounts: JSONText = .object([("cpu", .string("\(s.cpuMillis)m")), ("memory", .string("\(s.memoryMiB)Mi"))])
        container.append(("resources", .object([("requests", amounts), ("limits", amounts)])))
        if let h = s.health {
            let probe = probe(h)
            container.append(("livenessProbe", probe))
            container.append(("readinessProbe", probe))
        }
        return .object([
            ("apiVersion", .string("apps/v1")),
            ("kind", .string("Deployment")),
            ("metadata", .object([
                ("name", .string(s.name)),
                ("namespace", .string(namespace)),
                ("labels", .object([(managedByLabel, .string(fieldManager)), (serviceLabel, .string(s.name))])),
                ("annotations", .object([(generationAnnotation, .string(String(generation)))])),
            ])),
            ("spec", .object([
                ("replicas", .int(Int64(s.replicas))),
                ("selector", .object([("matchLabels", labels)])),
                ("template", .object([
                    ("metadata", .object([("labels", labels)])),
                    ("spec", .object([
                        ("restartPolicy", .string("Always")),
                        ("containers", .array([.object(container)])),
                    ])),
                ])),
            ])),
        ])
    }

    static func probe(_ h: ServiceHealthSpec) -> JSONText {
        let check: (String, JSONText)
        switch h.kind {
        case .tcp(let port): check = ("tcpSocket", .object([("port", .int(Int64(port)))]))
        case let .http(port, path): check = ("httpGet", .object([("path", .string(path)), ("port", .int(Int64(port)))]))
        case .exec(let c): check = ("exec", .object([("command", .array(c.map { .string($0) }))]))
        }
        func seconds(_ ms: UInt32) -> Int64 { Int64(max(1, (ms + 999) / 1000)) }
        return .object([check, ("periodSeconds", .int(seconds(h.intervalMillis))), ("timeoutSeconds", .int(seconds(h.timeoutMillis))),
                        ("failureThreshold", .int(Int64(max(1, h.threshold))))])
    }

    /// A Kubernetes port name (IANA_SVC_NAME: 1–15 lowercase letters, digits and inner '-', with a
    /// letter), or nil when the spec's name cannot be one (the port is then unnamed).
    static func portName(_ name: String) -> String? {
        let n = name.lowercased()
        let u = Array(n.utf8)
        guard (1...15).contains(u.count), u.first != UInt8(ascii: "-"), u.last != UInt8(ascii: "-"),
              u.allSatisfy({ (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == UInt8(ascii: "-") }),
              u.contains(where: { (0x61...0x7A).contains($0) }), !n.contains("--") else { return nil }
        return n
    }
}

extension String {
    /// Percent-encodes '/' (the only reserved character our label keys hold) for a query value.
    func replacingSlash() -> String { split(separator: "/", omittingEmptySubsequences: false).joined(separator: "%2F") }
}
