// What one node's K3s is: its role, the files the agent writes for it (K3s's real config.yaml and
// the CNI conflist that makes K3s's containerd use mycelium-cni), and the command that runs it.
// Pure: the driver writes `K3sConfigFile.yaml(c)` and `.conflist(c)` where `c` says, atomically.
//
// Why these settings (K3s server/agent flags, written as config.yaml keys):
//  - `flannel-backend: none` and `disable-network-policy: true`: the pod network is Mycelium's eBPF
//    datapath through mycelium-cni, not flannel or kube-router;
//  - `disable: [traefik, servicelb]`: services are reached through Mycelium (DNS, the datapath), and
//    neither an ingress nor klipper-lb is wanted on every node;
//  - `cluster-cidr`: the network's pod range from the primary spore; each node's block of it is the
//    spore's too, handed out by mycelium-cni's IPAM (the conflist), so the controller manager does not
//    allocate node CIDRs of its own (`allocate-node-cidrs=false`);
//  - with flannel off, K3s leaves containerd's CNI directories at containerd's defaults
//    (/etc/cni/net.d, /opt/cni/bin): the agent writes the conflist into that configuration directory.

import MyceliumControl
import MyceliumIdentity

public enum K3sRole: String, Sendable, Equatable {
    case server, agent
}

/// Everything K3s on this node needs. Its description never shows the token.
public struct K3sNodeConfig: Sendable, Equatable, CustomStringConvertible {
    public var role: K3sRole
    /// The k3s executable (found on PATH at start).
    public var binary: String
    public var node: NodeID
    public var nodeIP: String
    /// Agents: the server they join ("https://IP:6443"); "" for the server.
    public var serverURL: String
    public var token: K3sToken
    /// The network's pod range (K3s's cluster-cidr).
    public var clusterCIDR: CIDR
    /// This node's block of it, from the primary spore.
    public var podCIDR: CIDR
    public var serviceCIDR: String
    public var clusterDNS: String
    public var apiPort: UInt16
    /// Where the agent keeps K3s's files (HOME/k3s).
    public var directory: String
    public var cniConfDir: String
    public var cniBinDir: String
    /// The file the agent writes this node's pod CIDR to (mycelium-cni's ipam.podCIDRFile).
    public var podCIDRFile: String

    public init(role: K3sRole, binary: String, node: NodeID, nodeIP: String, serverURL: String, token: K3sToken, clusterCIDR: CIDR, podCIDR: CIDR,
                serviceCIDR: String, clusterDNS: String, apiPort: UInt16, directory: String, cniConfDir: String, cniBinDir: String, podCIDRFile: String) {
        self.role = role; self.binary = binary; self.node = node; self.nodeIP = nodeIP; self.serverURL = serverURL; self.token = token
        self.clusterCIDR = clusterCIDR; self.podCIDR = podCIDR; self.serviceCIDR = serviceCIDR; self.clusterDNS = clusterDNS; self.apiPort = apiPort
        self.directory = directory; self.cniConfDir = cniConfDir; self.cniBinDir = cniBinDir; self.podCIDRFile = podCIDRFile
    }

    public var configPath: String { directory + "/config.yaml" }
    public var dataDir: String { directory + "/data" }
    public var kubeconfigPath: String { directory + "/kubeconfig.yaml" }
    public var cniDataDir: String { directory + "/cni" }
    public var conflistPath: String { cniConfDir + "/10-mycelium.conflist" }
    /// K3s's node name: DNS-safe and stable for the node.
    public var nodeName: String { Self.nodeName(node) }
    /// argv of the k3s process.
    public var arguments: [String] { [binary, role.rawValue, "--config", configPath] }

    public static func nodeName(_ node: NodeID) -> String {
        "mycelium-" + node.bytes.prefix(6).map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined()
    }

    public var description: String {
        "k3s \(role) on \(nodeIP) (\(configPath)" + (serverURL.isEmpty ? "" : ", joining \(serverURL)") + ")"
    }
}

public enum K3sConfigFile {
    /// K3s's config.yaml for this node (`k3s server|agent --config PATH` reads it; every key is the
    /// long name of a flag). Values are YAML double-quoted scalars (JSON string syntax, a subset).
    public static func yaml(_ c: K3sNodeConfig) -> String {
        func q(_ s: String) -> String { JSONText.quoted(s) }
        var lines = [
            "# K3s configuration written by the Mycelium agent of \(c.node) (K3s \(c.role)).",
            "# The agent rewrites it from the primary spore; edit the agent's settings instead.",
            "# This node's pod CIDR is \(c.podCIDR) (the primary spore's); mycelium-cni assigns pod addresses from it",
            "# through \(c.conflistPath).",
        ]
        if c.role == .agent { lines.append("server: " + q(c.serverURL)) }
        lines += [
            "token: " + q(c.token.secret),
            "node-name: " + q(c.nodeName),
            "node-ip: " + q(c.nodeIP),
            "node-label:",
            "  - " + q("mycelium.io/node=" + c.nodeName),
            "data-dir: " + q(c.dataDir),
        ]
        if c.role == .server {
            lines += [
                "advertise-address: " + q(c.nodeIP),
                "https-listen-port: \(c.apiPort)",
                "tls-san:",
                "  - " + q(c.nodeIP),
                "write-kubeconfig: " + q(c.kubeconfigPath),
                "write-kubeconfig-mode: " + q("0600"),
                "cluster-cidr: " + q(c.clusterCIDR.description),
                "service-cidr: " + q(c.serviceCIDR),
                "cluster-dns: " + q(c.clusterDNS),
                "flannel-backend: " + q("none"),
                "disable-network-policy: true",
                "disable:",
                "  - " + q("traefik"),
                "  - " + q("servicelb"),
                "kube-controller-manager-arg:",
                "  - " + q("allocate-node-cidrs=false"),
            ]
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The CNI network configuration list K3s's containerd reads: mycelium-cni with this node's pod
    /// CIDR (also in `podCIDRFile`, which the plugin reads when the subnet is absent) and the cluster's
    /// DNS for the pods.
    public static func conflist(_ c: K3sNodeConfig) -> String {
        JSONText.object([
            ("cniVersion", .string("1.0.0")),
            ("name", .string("mycelium")),
            ("plugins", .array([
                .object([
                    ("type", .string("mycelium-cni")),
                    ("ipam", .object([
                        ("subnet", .string(c.podCIDR.description)),
                        ("podCIDRFile", .string(c.podCIDRFile)),
                        ("dataDir", .string(c.cniDataDir)),
                    ])),
                    ("dns", .object([
                        ("nameservers", .array([.string(c.clusterDNS)])),
                        ("search", .array([.string(K3sWorkload.namespace + ".svc.cluster.local"), .string("svc.cluster.local"), .string("cluster.local")])),
                    ])),
                ]),
            ])),
        ]).rendered()
    }
}
