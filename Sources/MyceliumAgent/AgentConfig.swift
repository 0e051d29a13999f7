// myceliumd's configuration: a small TOML subset (`key = value`, `#` comments, strings, integers,
// booleans, arrays of strings). Every setting is listed in `AgentConfig.settings` with its
// default and what it does; `myceliumd --print-config` prints that list as a commented file.
// An unknown key, a wrong type or a bad value is an error naming the line.

import MyceliumControl
import MyceliumCore

public struct AgentConfig: Sendable, Equatable {
    /// The node's state directory: keys, certificate, Raft log, latent spore.
    public var home = "/var/lib/mycelium"
    /// host:port for authenticated channels between agents.
    public var listen = "127.0.0.1:7946"
    /// host:port other nodes should dial (defaults to `listen`).
    public var advertise = ""
    /// Unix socket for the local API used by `mycelium status` (defaults to HOME/agent.sock).
    public var apiSocket = ""
    /// host:port serving Prometheus metrics at /metrics over HTTP (empty: only on the API socket).
    public var metricsListen = ""
    /// host:port serving the replicated KV over HTTP in etcd's gateway form (empty: not served).
    public var clientListen = ""
    /// PEM certificate (chain) the KV listener presents (etcd's --cert-file).
    public var clientCertFile = ""
    /// PEM private key of `clientCertFile` (etcd's --key-file).
    public var clientKeyFile = ""
    /// PEM CA certificates a KV client's certificate must be signed by (etcd's --trusted-ca-file with
    /// --client-cert-auth): with the three set, the KV is served over TLS 1.2+ to clients with a certificate only.
    public var clientTrustedCAFile = ""
    /// Addresses of nodes to contact first when this node has no latent spore yet.
    public var join: [String] = []
    /// Directories (local or mounted shares) where the leader writes seed spores and a cold node reads them.
    public var seedDirs: [String] = []
    /// HTTP(S) URLs (directory-like) where the leader PUTs seed spores and a cold node GETs them.
    public var seedURLs: [String] = []
    /// Members needed before the bootstrap agent hands control to the sclerotia.
    public var handoffMembers = 3
    /// Voting sclerotia to keep (3 or 5; 1 only for a single-node network).
    public var sclerotia = 3
    /// Milliseconds per Raft tick.
    public var tickMilliseconds = 100
    /// Ticks without a leader before an election (randomised up to twice this).
    public var electionTicks = 10
    /// Ticks between leader heartbeats.
    public var heartbeatTicks = 1
    /// Seconds without quorum before falling back to seed spores.
    public var fallbackSeconds = 30
    /// Minimum seconds between two seed-spore writes.
    public var seedIntervalSeconds = 1
    /// Directory for this node's scheduled backups of the control state (empty: none; docs/BACKUP.md).
    public var backupDir = ""
    /// Seconds between two scheduled backups (k3s etcd-snapshot: 12 h).
    public var backupIntervalSeconds = 43_200
    /// Scheduled backups kept in `backupDir`; older ones are deleted (k3s etcd-snapshot: 5).
    public var backupKeep = 5
    /// trace, debug, info, notice, warning, error or critical.
    public var logLevel = "info"
    /// text (human-readable, the default) or json (one JSON object per line; JSONLogHandler.swift).
    public var logFormat = "text"
    /// Milliseconds each phase (commit, reveal) of a Byzantine-tolerant vote may last; set it above the
    /// worst one-way delay between nodes plus the spread in when they apply the opening entry.
    public var votePhaseMilliseconds = 2000
    /// Milliseconds a peer that missed its probes (direct and indirect) stays suspect before this node
    /// reports it to the leader, which puts its failure to the vote.
    public var suspicionMilliseconds = 500
    /// The network's pod range; the first leader records it in the control state, where it never changes.
    public var podCIDRPool = "10.244.0.0/16"
    /// Prefix length of each node's block of the pod range.
    public var podCIDRNodePrefix = 24
    /// Where this node's pod CIDR is written for mycelium-cni (empty: HOME/podcidr). Point the CNI
    /// configuration's ipam.podCIDRFile here.
    public var podCIDRFile = ""
    /// The libvirt daemon this node runs endophyte VMs through; the node offers VMs only if it answers
    /// (empty: this node runs no VMs).
    public var libvirtURI = "qemu:///system"
    /// libvirt's QEMU run directory (where it writes `<domain>.pid`).
    public var libvirtQEMURunDir = "/run/libvirt/qemu"
    /// TCP port (on the `listen` host) where this node takes VM replication connections; the same on
    /// every node of a network.
    public var vmReplicationPort = 7947
    /// The dirty-page preload shim QEMU gets (LD_PRELOAD) so guest RAM is tracked by uffd; empty:
    /// the hash engine tracks it from outside.
    public var dirtyPageShim = ""
    /// Output commit for endophyte VMs run here (Remus network buffering): a guest's network output leaves the
    /// node only once its replica holds the checkpoint after it. Off: lower latency, and a failover
    /// may contradict what clients saw.
    public var vmOutputCommit = true
    /// This node's labels for service placement ("zone=eu", "rack=r1"; region, zone and rack are
    /// the spread levels).
    public var nodeLabels: [String] = []
    /// host:port where this agent answers DNS for NAME.service.mycelium (empty: off).
    public var dnsListen = "127.0.0.1:8600"
    /// How this node's eBPF datapath reaches other nodes' pods: auto (natively on the same subnet,
    /// VXLAN beyond it), native, vxlan, or off (the agent programs no datapath).
    public var datapathMode = "auto"
    /// The compiled datapath (make -C CSources/bpf builds CSources/bpf/build/datapath.bpf.o); the
    /// agent drives the datapath only when this file exists.
    public var datapathObject = "/usr/lib/mycelium/datapath.bpf.o"
    /// Where the datapath's maps and programs are pinned (mycelium-cni's pinDir).
    public var datapathPinDir = "/sys/fs/bpf/mycelium"
    /// Answer NAME.service.mycelium to this node's pods on the node's address, port 53 (containers'
    /// resolv.conf points there), when the node drives its datapath.
    public var podDNS = true
    /// The podman binary of the podman service driver (empty: found on PATH; "off": no podman driver).
    public var podman = ""
    /// Where the mycelium-cni plugin is (empty: beside this agent's executable).
    public var cniBinDir = ""
    /// The k3s executable (looked up on PATH unless it holds a "/"); the node offers the k3s driver
    /// only if it is found. Empty: never run K3s here.
    public var k3sBinary = "k3s"
    /// auto, server or agent: whether this node may claim the K3s server role (docs/SERVICES.md).
    public var k3sRole = "auto"
    /// Where K3s's containerd reads CNI configurations (with flannel off: containerd's default).
    public var k3sCNIConfDir = "/etc/cni/net.d"
    /// Where K3s's containerd finds CNI plugins; the agent links mycelium-cni there if it is missing.
    public var k3sCNIBinDir = "/opt/cni/bin"
    /// The Ceph cluster's configuration file this node reaches it by (empty: local volumes only).
    public var cephConf = ""
    /// The Ceph client (cephx user) this node acts as.
    public var cephClient = "client.admin"
    /// That client's keyring (empty: the one the configuration file names).
    public var cephKeyring = ""
    /// The CRUSH host of this node's OSDs (empty: this node holds no Ceph data).
    public var cephHost = ""

    public init() {}

    public struct Setting: Sendable {
        public let key: String
        public let help: String
        let apply: @Sendable (inout AgentConfig, Value) throws(ConfigError) -> Void
        let render: @Sendable (AgentConfig) -> String
    }

    public enum Value: Sendable, Equatable {
        case string(String), int(Int), bool(Bool), strings([String])
    }

    public static let settings: [Setting] = [
        string("home", "The node's state directory: keys, certificate, Raft log, latent spore.", \.home),
        string("listen", "host:port for authenticated channels between agents.", \.listen),
        string("advertise", "host:port other nodes dial to reach this one (empty: same as listen).", \.advertise),
        string("api_socket", "Unix socket for the local API used by 'mycelium status' (empty: HOME/agent.sock).", \.apiSocket),
        string("metrics_listen", "host:port serving Prometheus metrics at /metrics (empty: only on the API socket, via curl --unix-socket).", \.metricsListen),
        string("client_listen", "host:port serving the replicated KV, etcd gateway style: POST /v3/kv/put, /v3/kv/range, /v3/kv/deleterange (empty: off). Plain HTTP only on loopback; any other address needs client_cert_file, client_key_file and client_trusted_ca_file.", \.clientListen),
        string("client_cert_file", "PEM certificate (chain) the KV listener presents, like etcd's --cert-file (empty: no TLS).", \.clientCertFile),
        string("client_key_file", "PEM private key of client_cert_file, like etcd's --key-file.", \.clientKeyFile),
        string("client_trusted_ca_file", "PEM CA certificates that must have signed a KV client's certificate, like etcd's --trusted-ca-file with --client-cert-auth: clients without one are refused.", \.clientTrustedCAFile),
        strings("join", "Addresses of nodes to contact when this node has no latent spore yet.", \.join),
        strings("seed_dirs", "Directories (local or mounted shares) for seed spores.", \.seedDirs),
        strings("seed_urls", "HTTP(S) URLs, like \"http://10.0.0.9:8080/seeds/\": the leader PUTs seed spores there (NETWORK.seed), a cold node GETs them.", \.seedURLs),
        int("handoff_members", "Members needed before the bootstrap agent hands control to the sclerotia.", \.handoffMembers, 1...100),
        int("sclerotia", "Voting sclerotia to keep: 1, 3 or 5 (7 at most).", \.sclerotia, 1...7),
        int("tick_ms", "Milliseconds per Raft tick.", \.tickMilliseconds, 10...10_000),
        int("election_ticks", "Ticks without a leader before an election (randomised up to twice this).", \.electionTicks, 2...1000),
        int("heartbeat_ticks", "Ticks between leader heartbeats (less than election_ticks).", \.heartbeatTicks, 1...100),
        int("fallback_s", "Seconds without quorum before falling back to seed spores.", \.fallbackSeconds, 1...86_400),
        int("seed_interval_s", "Minimum seconds between two seed-spore writes.", \.seedIntervalSeconds, 0...3600),
        string("backup_dir", "Directory where this node writes signed backups of the control state every backup_interval_s (empty: no scheduled backups). Every node with it set takes them; put it on a node that is not a sclerotium or on a mounted share, so a backup survives the loss of every sclerotium (docs/BACKUP.md).", \.backupDir),
        int("backup_interval_s", "Seconds between two scheduled backups (default 12 h, like k3s etcd-snapshot).", \.backupIntervalSeconds, 1...31_536_000),
        int("backup_keep", "Scheduled backups kept in backup_dir; the oldest beyond this are deleted (default 5).", \.backupKeep, 1...10_000),
        string("log_level", "trace, debug, info, notice, warning, error or critical.", \.logLevel),
        string("log_format", "text (human-readable lines) or json (one JSON object per line with the stable fields ts, level, msg, logger, agent, node, peer, term, vote, vm, service, volume; for Loki or Elasticsearch). myceliumd --log-format overrides it.", \.logFormat),
        int("suspicion_ms", "Milliseconds a peer that missed its direct and indirect probes stays suspect before it is reported for a failure vote (the vote, with each voter's own check, confirms it). Higher: fewer votes on a flaky network, slower failover.", \.suspicionMilliseconds, 0...600_000),
        int("vote_phase_ms", "Milliseconds for each phase (commit, reveal) of a Byzantine-tolerant vote; above the worst one-way delay.", \.votePhaseMilliseconds, 10...600_000),
        string("pod_cidr_pool", "The network's pod range (like K3s's cluster-cidr); the first leader records it and it never changes.", \.podCIDRPool),
        int("pod_cidr_node_prefix", "Prefix length of each node's block of the pod range (like K3s's node-cidr-mask-size).", \.podCIDRNodePrefix, 16...30),
        string("pod_cidr_file", "Where this node's pod CIDR is written for mycelium-cni's ipam.podCIDRFile (empty: HOME/podcidr).", \.podCIDRFile),
        string("libvirt_qemu_run_dir", "libvirt's QEMU run directory, where it writes DOMAIN.pid.", \.libvirtQEMURunDir),
        int("vm_replication_port", "TCP port on the listen host for VM replication (the same on every node).", \.vmReplicationPort, 1...65535),
        bool("vm_output_commit", "Hold a replicated VM's network output until its replica has committed the checkpoint after it (Remus output commit); false: lower latency, but a failover may contradict replies clients already got. 'mycelium vm show' says when it is off.", \.vmOutputCommit),
        string("dirty_page_shim", "Path of the dirty-page preload shim for QEMU (libmdp_preload.so); empty: the hash engine.", \.dirtyPageShim),
        strings("node_labels", "This node's labels for service placement, like [\"zone=eu\", \"rack=r1\"] (region, zone and rack are the levels a service can spread across).", \.nodeLabels),
        string("dns_listen", "host:port where this agent answers DNS for NAME.service.mycelium (A and SRV records of healthy instances), like Consul's port 8600; empty: off. DNS is unauthenticated: keep it on loopback or a trusted network.", \.dnsListen),
        string("podman", "The podman binary of the podman service driver (empty: found on PATH; \"off\": this node offers no podman driver). The node offers podman only when podman, runc, conmon, mycelium-cni and the datapath's BPF object are found; 'mycelium service show' says why not.", \.podman),
        string("cni_bin_dir", "Directory of the mycelium-cni plugin podman calls for containers' networks (empty: the directory of this agent's executable).", \.cniBinDir),
        string("datapath_mode", "How this node's eBPF datapath reaches other nodes' pods: auto (natively to nodes on this node's subnet, VXLAN to the others), native, vxlan, or off (the agent programs no datapath).", \.datapathMode),
        string("datapath_object", "The compiled eBPF datapath (make -C CSources/bpf builds CSources/bpf/build/datapath.bpf.o); the agent drives the datapath only when this file exists.", \.datapathObject),
        string("datapath_pin_dir", "Where the datapath's maps and programs are pinned in bpffs (mycelium-cni's pinDir must be the same).", \.datapathPinDir),
        bool("pod_dns", "Answer NAME.service.mycelium to this node's pods (sources in pod_cidr_pool only) on the node's address, port 53, where containers' resolv.conf points, when the node drives its datapath; false: pods get no service names.", \.podDNS),
        string("ceph_conf", "The Ceph cluster's configuration file (ceph.conf) this node reaches it by; empty: this node keeps local volumes only (HOME/volumes). Nodes with it carry out the Ceph work the leader decides.", \.cephConf),
        string("ceph_client", "The Ceph client (cephx user) this node acts as; it needs the monitor caps to move CRUSH hosts and create pools (client.admin, or a user with 'mon allow *').", \.cephClient),
        string("ceph_keyring", "That client's keyring file (empty: the one ceph.conf names). Keep it readable by root only: it is a secret.", \.cephKeyring),
        string("ceph_host", "The CRUSH host of this node's OSDs (its hostname in 'ceph osd tree'); the leader moves it between the data classes' roots as this node's trust changes. Empty: this node holds no Ceph data.", \.cephHost),
        string("k3s_binary", "The k3s executable, looked up on PATH unless it holds a '/'. The node offers the k3s service driver only when it is found ('mycelium doctor' says); empty: never run K3s here.", \.k3sBinary),
        string("k3s_role", "auto, server or agent: auto lets the lowest node ID among the members offering k3s start the K3s server, server makes this node claim it, agent makes it only join.", \.k3sRole),
        string("k3s_cni_conf_dir", "Where K3s's containerd reads CNI configurations; the agent writes 10-mycelium.conflist there (with flannel-backend none K3s keeps containerd's default).", \.k3sCNIConfDir),
        string("k3s_cni_bin_dir", "Where K3s's containerd finds CNI plugins; the agent links mycelium-cni there when it is missing.", \.k3sCNIBinDir),
        string("libvirt_uri", "The libvirt daemon for endophyte VMs (virsh -c URI); checked at start: the node offers VMs only if it answers. Empty: no VMs here.", \.libvirtURI),
    ]

    /// Parses a configuration file's text. Unset keys keep their defaults.
    public static func parse(_ text: String, source: String = "config") throws(ConfigError) -> AgentConfig {
        var c = AgentConfig()
        var seen: Set<String> = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = stripComment(raw).trimmed()
            if line.isEmpty { continue }
            let at = "\(source):\(n + 1)"
            guard let eq = line.firstIndex(of: "=") else { throw ConfigError("\(at): expected 'key = value', got '\(line)'") }
            let key = line[..<eq].trimmed(), rawValue = line[line.index(after: eq)...].trimmed()
            guard let setting = settings.first(where: { $0.key == key }) else {
                throw ConfigError("\(at): unknown setting '\(key)'; known settings: \(settings.map(\.key).joined(separator: ", "))")
            }
            if !seen.insert(String(key)).inserted { throw ConfigError("\(at): '\(key)' is set twice") }
            let value: Value
            do { value = try parseValue(rawValue) } catch { throw ConfigError("\(at): \(error.message)") }
            do { try setting.apply(&c, value) } catch { throw ConfigError("\(at): \(error.message)") }
        }
        try c.validate()
        return c
    }

    public func validate() throws(ConfigError) {
        if heartbeatTicks >= electionTicks { throw ConfigError("heartbeat_ticks (\(heartbeatTicks)) must be less than election_ticks (\(electionTicks))") }
        if splitAddress(listen) == nil { throw ConfigError("listen '\(listen)' is not host:port") }
        if !["auto", "native", "vxlan", "off"].contains(datapathMode) {
            throw ConfigError("datapath_mode '\(datapathMode)': use auto, native, vxlan or off")
        }
        if !advertise.isEmpty && splitAddress(advertise) == nil { throw ConfigError("advertise '\(advertise)' is not host:port") }
        if !clientListen.isEmpty && splitAddress(clientListen) == nil { throw ConfigError("client_listen '\(clientListen)' is not host:port") }
        try validateClientTLS()
        if !metricsListen.isEmpty && splitAddress(metricsListen) == nil { throw ConfigError("metrics_listen '\(metricsListen)' is not host:port") }
        for j in join where splitAddress(j) == nil { throw ConfigError("join address '\(j)' is not host:port") }
        for u in seedURLs where !(u.hasPrefix("http://") || u.hasPrefix("https://")) {
            throw ConfigError("seed URL '\(u)' must start with http:// or https://")
        }
        guard let pool = CIDR(podCIDRPool) else {
            throw ConfigError("pod_cidr_pool '\(podCIDRPool)' is not an IPv4 network such as 10.244.0.0/16")
        }
        if podCIDRNodePrefix < pool.prefix {
            throw ConfigError("pod_cidr_node_prefix /\(podCIDRNodePrefix) is wider than the pod range \(podCIDRPool)")
        }
        if !dnsListen.isEmpty && splitAddress(dnsListen) == nil { throw ConfigError("dns_listen '\(dnsListen)' is not host:port") }
        for l in nodeLabels {
            let parts = l.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, !parts[0].isEmpty, parts[0].utf8.count <= 63, parts[1].utf8.count <= 63, !l.contains(" ") else {
                throw ConfigError("node label '\(l)' is not KEY=VALUE (each at most 63 bytes, no spaces), like \"zone=eu\"")
            }
        }
        if !["auto", "server", "agent"].contains(k3sRole) { throw ConfigError("k3s_role '\(k3sRole)' is not auto, server or agent") }
        let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
        if !levels.contains(logLevel) { throw ConfigError("log_level '\(logLevel)' is not one of \(levels.joined(separator: ", "))") }
        if !["text", "json"].contains(logFormat) { throw ConfigError("log_format '\(logFormat)' is not text or json") }
    }

    /// The KV accepts writes, so nobody unauthenticated may reach it: off loopback it is served only over
    /// TLS with client certificates (as etcd with --client-cert-auth); half a TLS setup is refused anywhere.
    func validateClientTLS() throws(ConfigError) {
        let tls = [("client_cert_file", clientCertFile), ("client_key_file", clientKeyFile), ("client_trusted_ca_file", clientTrustedCAFile)]
        let missing = tls.filter { $0.1.isEmpty }.map(\.0)
        if !missing.isEmpty && missing.count < tls.count {
            throw ConfigError("client TLS is half configured: also set \(missing.joined(separator: " and ")) (PEM files), or remove the other client_*_file settings")
        }
        guard let (host, _) = splitAddress(clientListen), !missing.isEmpty, !isLoopback(host) else { return }
        throw ConfigError("""
            client_listen '\(clientListen)' is not a loopback address, and the KV must not be writable by anyone who can reach it: \
            add client_cert_file, client_key_file and client_trusted_ca_file (PEM files: this server's certificate and key, \
            and the CA that signs client certificates), or listen on 127.0.0.1 or [::1]
            """)
    }

    /// TLS settings of the KV listener, when set (all three, as `validate()` ensures).
    public var clientTLSEnabled: Bool { !clientCertFile.isEmpty && !clientKeyFile.isEmpty && !clientTrustedCAFile.isEmpty }

    /// The documented configuration file with the current values.
    public func rendered() -> String {
        var out = "# myceliumd configuration. Every setting, its meaning, and its value here.\n"
        for s in Self.settings { out += "\n# \(s.help)\n\(s.key) = \(s.render(self))\n" }
        return out
    }

    public var advertisedAddress: String { advertise.isEmpty ? listen : advertise }
    public var podCIDRFilePath: String { podCIDRFile.isEmpty ? home + "/podcidr" : podCIDRFile }
    public var apiSocketPath: String { apiSocket.isEmpty ? home + "/agent.sock" : apiSocket }

    // MARK: setting constructors

    static func string(_ key: String, _ help: String, _ kp: WritableKeyPath<AgentConfig, String> & Sendable) -> Setting {
        Setting(key: key, help: help, apply: { (c: inout AgentConfig, v: Value) throws(ConfigError) in
            guard case .string(let s) = v else { throw ConfigError("'\(key)' takes a string in double quotes") }
            c[keyPath: kp] = s
        }, render: { quote($0[keyPath: kp]) })
    }

    static func int(_ key: String, _ help: String, _ kp: WritableKeyPath<AgentConfig, Int> & Sendable, _ range: ClosedRange<Int>) -> Setting {
        Setting(key: key, help: help, apply: { (c: inout AgentConfig, v: Value) throws(ConfigError) in
            guard case .int(let i) = v else { throw ConfigError("'\(key)' takes a whole number") }
            guard range.contains(i) else { throw ConfigError("'\(key)' must be between \(range.lowerBound) and \(range.upperBound), got \(i)") }
            c[keyPath: kp] = i
        }, render: { String($0[keyPath: kp]) })
    }

    static func bool(_ key: String, _ help: String, _ kp: WritableKeyPath<AgentConfig, Bool> & Sendable) -> Setting {
        Setting(key: key, help: help, apply: { (c: inout AgentConfig, v: Value) throws(ConfigError) in
            guard case .bool(let b) = v else { throw ConfigError("'\(key)' takes true or false") }
            c[keyPath: kp] = b
        }, render: { $0[keyPath: kp] ? "true" : "false" })
    }

    static func strings(_ key: String, _ help: String, _ kp: WritableKeyPath<AgentConfig, [String]> & Sendable) -> Setting {
        Setting(key: key, help: help, apply: { (c: inout AgentConfig, v: Value) throws(ConfigError) in
            switch v {
            case .strings(let a): c[keyPath: kp] = a
            case .string(let s): c[keyPath: kp] = [s]
            default: throw ConfigError("'\(key)' takes a list of strings, like [\"a\", \"b\"]")
            }
        }, render: { "[" + $0[keyPath: kp].map(quote).joined(separator: ", ") + "]" })
    }

    static func parseValue(_ s: Substring) throws(ConfigError) -> Value {
        if s == "true" { return .bool(true) }
        if s == "false" { return .bool(false) }
        if let i = Int(s) { return .int(i) }
        if s.hasPrefix("\"") { return .string(try unquote(s)) }
        if s.hasPrefix("[") && s.hasSuffix("]") {
            let inner = s.dropFirst().dropLast().trimmed()
            if inner.isEmpty { return .strings([]) }
            var items: [String] = []
            for part in inner.split(separator: ",") {
                let p = part.trimmed()
                if p.isEmpty { continue }
                items.append(try unquote(p))
            }
            return .strings(items)
        }
        throw ConfigError("cannot read value '\(s)': use \"text\", a number, true/false, or [\"a\", \"b\"]")
    }

    static func unquote(_ s: Substring) throws(ConfigError) -> String {
        guard s.count >= 2, s.hasPrefix("\""), s.hasSuffix("\"") else { throw ConfigError("unterminated string \(s)") }
        let body = s.dropFirst().dropLast()
        if body.contains("\"") || body.contains("\\") { throw ConfigError("quotes and backslashes inside strings are not supported: \(s)") }
        return String(body)
    }

    static func stripComment(_ s: Substring) -> Substring {
        var inString = false
        for i in s.indices {
            if s[i] == "\"" { inString.toggle() }
            if s[i] == "#" && !inString { return s[..<i] }
        }
        return s
    }
}

func quote(_ s: String) -> String { "\"" + s + "\"" }

public struct ConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ m: String) { message = m }
    public var description: String { message }
}

extension StringProtocol {
    func trimmed() -> Substring {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s.removeLast() }
        return s
    }
}

/// 127.0.0.0/8, ::1 or localhost: reachable from this machine only.
public func isLoopback(_ host: String) -> Bool {
    if host == "localhost" || host == "::1" { return true }
    let parts = host.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { p in UInt8(p).map { _ in true } ?? false }
}

/// "host:port" or "[v6]:port" into its parts.
public func splitAddress(_ s: String) -> (host: String, port: Int)? {
    guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), (1...65535).contains(port) else { return nil }
    var host = String(s[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    return host.isEmpty ? nil : (host, port)
}
