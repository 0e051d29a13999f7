import Foundation
import K3sController
import MyceliumControl
import MyceliumIdentity
import XCTest
import Yams

/// The files the agent writes for K3s, byte for byte against reviewed golden files
/// (Tests/K3sTests/Golden; `MYCELIUM_UPDATE_GOLDEN=1` rewrites them, then review the diff), and read
/// back with independent parsers (Yams, JSONSerialization) for what K3s and containerd will see.
final class K3sGoldenTests: XCTestCase {
    static let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden").path

    func check(_ text: String, _ file: String) throws {
        let path = Self.golden + "/" + file
        if ProcessInfo.processInfo.environment["MYCELIUM_UPDATE_GOLDEN"] == "1" {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return
        }
        let want = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertEqual(text, want, "\(file) differs from the golden file; if the change is intended, run with MYCELIUM_UPDATE_GOLDEN=1 and review the diff")
    }

    static func config(_ role: K3sRole) -> K3sNodeConfig {
        K3sNodeConfig(role: role, binary: "/usr/local/bin/k3s", node: K3sWorld.id(role == .server ? 1 : 2), nodeIP: role == .server ? "10.0.0.1" : "10.0.0.2",
                      serverURL: role == .server ? "" : "https://10.0.0.1:6443", token: K3sWorld.token, clusterCIDR: CIDR("10.244.0.0/16")!,
                      podCIDR: CIDR(role == .server ? "10.244.1.0/24" : "10.244.2.0/24")!, serviceCIDR: "10.43.0.0/16", clusterDNS: "10.43.0.10",
                      apiPort: 6443, directory: "/var/lib/mycelium/k3s", cniConfDir: "/etc/cni/net.d", cniBinDir: "/opt/cni/bin",
                      podCIDRFile: "/var/lib/mycelium/podcidr")
    }

    func testServerConfigYAML() throws {
        let text = K3sConfigFile.yaml(Self.config(.server))
        try check(text, "server-config.yaml")
        let y = try XCTUnwrap(try Yams.load(yaml: text) as? [String: Any])
        XCTAssertEqual(y["flannel-backend"] as? String, "none")
        XCTAssertEqual(y["disable-network-policy"] as? Bool, true)
        XCTAssertEqual(y["disable"] as? [String], ["traefik", "servicelb"])
        XCTAssertEqual(y["cluster-cidr"] as? String, "10.244.0.0/16")
        XCTAssertEqual(y["node-ip"] as? String, "10.0.0.1")
        XCTAssertEqual(y["token"] as? String, K3sWorld.token.secret)
        XCTAssertEqual(y["write-kubeconfig"] as? String, "/var/lib/mycelium/k3s/kubeconfig.yaml")
        XCTAssertEqual(y["kube-controller-manager-arg"] as? [String], ["allocate-node-cidrs=false"])
        XCTAssertNil(y["server"], "the server joins nobody")
        // Every key is a real K3s server flag (the long names `k3s server --help` lists).
        let serverFlags: Set<String> = ["token", "node-name", "node-ip", "node-label", "data-dir", "advertise-address", "https-listen-port", "tls-san",
                                        "write-kubeconfig", "write-kubeconfig-mode", "cluster-cidr", "service-cidr", "cluster-dns", "flannel-backend",
                                        "disable-network-policy", "disable", "kube-controller-manager-arg"]
        XCTAssertEqual(Set(y.keys).subtracting(serverFlags), [])
    }

    func testAgentConfigYAML() throws {
        let text = K3sConfigFile.yaml(Self.config(.agent))
        try check(text, "agent-config.yaml")
        let y = try XCTUnwrap(try Yams.load(yaml: text) as? [String: Any])
        XCTAssertEqual(y["server"] as? String, "https://10.0.0.1:6443")
        XCTAssertEqual(y["token"] as? String, K3sWorld.token.secret)
        // Server-only settings would make `k3s agent` refuse to start.
        let agentFlags: Set<String> = ["server", "token", "node-name", "node-ip", "node-label", "data-dir"]
        XCTAssertEqual(Set(y.keys).subtracting(agentFlags), [])
    }

    func testConflist() throws {
        let text = K3sConfigFile.conflist(Self.config(.agent))
        try check(text, "10-mycelium.conflist")
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        XCTAssertEqual(j["cniVersion"] as? String, "1.0.0")
        let plugin = try XCTUnwrap((j["plugins"] as? [[String: Any]])?.first)
        XCTAssertEqual(plugin["type"] as? String, "mycelium-cni")
        let ipam = try XCTUnwrap(plugin["ipam"] as? [String: Any])
        XCTAssertEqual(ipam["subnet"] as? String, "10.244.2.0/24", "the node's pod CIDR from the primary spore")
        XCTAssertEqual(ipam["podCIDRFile"] as? String, "/var/lib/mycelium/podcidr")
        XCTAssertEqual(Self.config(.agent).conflistPath, "/etc/cni/net.d/10-mycelium.conflist")
    }

    func testDeploymentManifest() throws {
        var s = ServiceSpec(name: "web", driver: .k3s, command: ["nginx", "-g", "daemon off;"], image: "docker.io/library/nginx:1.27",
                            environment: ["GREETING": "hello \"world\"", "A": "1"], replicas: 3, cpuMillis: 250, memoryMiB: 128,
                            ports: [ServicePort(name: "http", port: 80), ServicePort(name: "Metrics_Port", port: 9100, proto: "tcp")],
                            health: ServiceHealthSpec(kind: .http(port: 80, path: "/healthz"), intervalMillis: 1500, timeoutMillis: 500, threshold: 2))
        s.placement.constraints = ["zone == a"]
        let text = K3sWorkload.manifest(ServiceRecord(spec: s, generation: 4)).deployment
        try check(text, "deployment-web.json")
        let d = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        XCTAssertEqual(d["kind"] as? String, "Deployment")
        let meta = try XCTUnwrap(d["metadata"] as? [String: Any])
        XCTAssertEqual((meta["annotations"] as? [String: String])?["mycelium.io/generation"], "4")
        let spec = try XCTUnwrap(d["spec"] as? [String: Any])
        XCTAssertEqual(spec["replicas"] as? Int, 3)
        let container = try XCTUnwrap((((spec["template"] as? [String: Any])?["spec"] as? [String: Any])?["containers"] as? [[String: Any]])?.first)
        XCTAssertEqual(container["image"] as? String, "docker.io/library/nginx:1.27")
        XCTAssertEqual((container["env"] as? [[String: String]])?.first { $0["name"] == "GREETING" }?["value"], "hello \"world\"")
        XCTAssertEqual(((container["resources"] as? [String: Any])?["limits"] as? [String: String])?["memory"], "128Mi")
        let probe = try XCTUnwrap(container["livenessProbe"] as? [String: Any])
        XCTAssertEqual((probe["httpGet"] as? [String: Any])?["path"] as? String, "/healthz")
        XCTAssertEqual(probe["periodSeconds"] as? Int, 2)
        XCTAssertEqual(probe["failureThreshold"] as? Int, 2)
        let ports = try XCTUnwrap(container["ports"] as? [[String: Any]])
        XCTAssertEqual(ports[0]["name"] as? String, "http")
        XCTAssertNil(ports[1]["name"], "Metrics_Port cannot be a Kubernetes port name: left unnamed")
        // An exec check, no command, no ports.
        let bare = K3sWorkload.deployment(ServiceSpec(name: "job", driver: .k3s, image: "busybox", health: ServiceHealthSpec(kind: .exec(["true"]))), generation: 1).compact()
        XCTAssertTrue(bare.contains("\"exec\":{\"command\":[\"true\"]}"), bare)
        XCTAssertFalse(bare.contains("\"command\":[\"busybox"), bare)
    }
}
