// The agent's private podman: its own containers.conf, CNI network directory, storage and run
// directories, so the machine's podman configuration is never read nor changed, and the node's
// containers are only the agent's. `prepare()` checks what the podman driver needs (podman, runc,
// conmon, our mycelium-cni plugin, the datapath's BPF object, a bpf filesystem for its pins), writes
// the configuration and says how to reach podman; or throws what is missing and how to get it.
//
// What is written (under `directory`, the agent's HOME/podman):
//  - containers.conf: runtime runc (crun fails on this kind of hybrid cgroup layout), cgroupfs,
//    file events (no journald needed), k8s-file logs, the ulimits a root without CAP_SYS_RESOURCE
//    can set, network backend cni with `net.d` as the only network directory and the plugin
//    directories (ours first);
//  - net.d/NETWORK.conflist: the one network, of type mycelium-cni, whose IPAM reads the pod CIDR
//    file the network controller writes and keeps its allocations in `cni/`.
// Storage (--root) is under `directory`. What must not survive a reboot lives at
// /run/mycelium-podman-HASH (HASH naming the directory; tmpfs on a normal host, and short: podman
// refuses a run root over 50 bytes): the run root, podman's tmp_dir (podman takes a missing "alive"
// file there for a reboot and resets its containers' state) and the IPAM allocations (an address is
// held by a network namespace, which a reboot ends too).

import Foundation
import MyceliumCore

/// How to reach the agent's podman: every podman command runs with these.
public struct PodmanSettings: Sendable, Equatable, Codable {
    /// The podman binary (absolute).
    public var podman: String
    /// --root (image and container storage) and --runroot (state that does not survive a reboot).
    public var root: String
    public var runroot: String
    /// CONTAINERS_CONF.
    public var containersConf: String
    /// The CNI network containers join (`--network`).
    public var network: String
    /// The IPAM allocations of that network (one file per address), to check nothing is left.
    public var allocationsDirectory: String

    public init(podman: String, root: String, runroot: String, containersConf: String, network: String, allocationsDirectory: String) {
        self.podman = podman
        self.root = root
        self.runroot = runroot
        self.containersConf = containersConf
        self.network = network
        self.allocationsDirectory = allocationsDirectory
    }

    /// argv up to the podman subcommand.
    public var base: [String] { [podman, "--root", root, "--runroot", runroot] }

    /// The whole environment of a podman command (nothing of the agent's own leaks in).
    public var environment: [String: String] {
        ["CONTAINERS_CONF": containersConf, "PATH": Spawner.defaultPath,
         "HOME": URL(fileURLWithPath: containersConf).deletingLastPathComponent().path]
    }
}

public struct PodmanSetup: Sendable {
    /// The agent's podman directory (HOME/podman).
    public var directory: String
    /// The podman binary; "" looks for it on PATH and in the usual directories.
    public var podman = ""
    /// Directories CNI plugins are looked up in; the one holding `mycelium-cni` must be among them.
    public var pluginDirectories: [String]
    /// The datapath's BPF object and where its maps and programs are pinned (mycelium-cni's
    /// `bpfObject` and `pinDir`).
    public var bpfObject: String
    public var pinDirectory: String
    /// The node's pod CIDR as the network controller writes it (ipam.podCIDRFile).
    public var podCIDRFile: String
    public var network = "mycelium"
    /// The pods' MTU (0: the plugin's default, the host's); below the underlay's when pods cross
    /// nodes in VXLAN (its 50 bytes).
    public var mtu = 0
    /// Where containers ask for names (their resolv.conf), searching `service.mycelium` first; empty:
    /// podman's default (the host's resolv.conf).
    public var dnsServers: [String] = []

    public init(directory: String, pluginDirectories: [String], bpfObject: String, pinDirectory: String, podCIDRFile: String) {
        self.directory = directory
        self.pluginDirectories = pluginDirectories
        self.bpfObject = bpfObject
        self.pinDirectory = pinDirectory
        self.podCIDRFile = podCIDRFile
    }

    /// Why the podman driver cannot be offered, with what to do.
    public struct Unavailable: Error, Sendable, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    static let searchPath = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/libexec/podman", "/usr/lib/podman"]

    /// An executable file named `name` on PATH or in the usual directories.
    public static func find(_ name: String) -> String? {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init) + searchPath
        for dir in path where !dir.isEmpty {
            let p = dir + "/" + name
            if isExecutable(p) { return p }
        }
        return nil
    }

    static func isExecutable(_ p: String) -> Bool {
        var st = stat()
        return stat(p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG && access(p, X_OK) == 0
    }

    public var runroot: String { Self.runroot(for: directory) }

    /// /run/mycelium-podman-HASH: what a reboot must clear, of the podman of `directory` only.
    public static func runroot(for directory: String) -> String {
        let h = String(CRC32C.checksum(Array(directory.utf8)), radix: 16)
        return "/run/mycelium-podman-" + String(repeating: "0", count: 8 - h.count) + h
    }

    /// IPAM's data directory (ipam.dataDir) and this network's allocations in it.
    public var ipamDirectory: String { runroot + "/cni" }
    public var allocationsDirectory: String { ipamDirectory + "/" + network }

    /// Checks what the driver needs and writes the configuration; the settings to run podman with.
    public func prepare() throws(Unavailable) -> PodmanSettings {
        func missing(_ m: String) -> Unavailable { Unavailable(description: m) }
        for d in dnsServers where d.split(separator: ".").count != 4 || !d.allSatisfy({ $0.isNumber || $0 == "." }) {
            throw missing("podman driver: DNS server '\(d)' is not an IPv4 address")
        }
        for p in [directory, bpfObject, pinDirectory, podCIDRFile] + pluginDirectories {
            if !p.hasPrefix("/") || p.contains("\"") || p.contains("\\") || p.contains("\n") {
                throw missing("podman driver: '\(p)' must be an absolute path without quotes, backslashes or line breaks")
            }
        }
        let podmanPath: String
        if podman.isEmpty {
            guard let p = Self.find("podman") else { throw missing("podman is not installed (apt-get install podman runc)") }
            podmanPath = p
        } else {
            guard Self.isExecutable(podman) else { throw missing("podman binary \(podman) is not an executable file; fix the agent's 'podman' setting") }
            podmanPath = podman
        }
        guard let runc = Self.find("runc") else {
            throw missing("runc is not installed (apt-get install runc); the podman driver runs containers with runc")
        }
        guard let conmon = Self.find("conmon") else { throw missing("conmon is not installed (apt-get install conmon)") }
        guard pluginDirectories.contains(where: { Self.isExecutable($0 + "/mycelium-cni") }) else {
            throw missing("no mycelium-cni plugin in \(pluginDirectories.joined(separator: ", ")); install it there or set cni_bin_dir to its directory")
        }
        guard FileManager.default.isReadableFile(atPath: bpfObject) else {
            throw missing("the datapath's BPF object \(bpfObject) is missing (build it with 'make -C CSources/bpf', or set datapath_object)")
        }
        if let problem = Self.bpffsProblem(pinDirectory) { throw missing(problem) }

        let netDir = directory + "/net.d", tmpDir = runroot + "/libpod-tmp", cniDir = ipamDirectory
        let conf = directory + "/containers.conf"
        let plugins = pluginDirectories + (pluginDirectories.contains("/usr/lib/cni") ? [] : ["/usr/lib/cni"])
        let containersConf = """
            # Written by the mycelium agent for its podman service driver; rewritten at every start.
            [containers]
            default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
            log_driver = "k8s-file"
            log_size_max = 10485760
            \(dnsServers.isEmpty ? "" : "dns_servers = [" + dnsServers.map { "\"\($0)\"" }.joined(separator: ", ") + "]\ndns_searches = [\"service.mycelium\"]\n")

            [engine]
            runtime = "runc"
            cgroup_manager = "cgroupfs"
            events_logger = "file"
            tmp_dir = "\(tmpDir)"
            conmon_path = ["\(conmon)"]

            [engine.runtimes]
            runc = ["\(runc)"]

            [network]
            network_backend = "cni"
            network_config_dir = "\(netDir)"
            cni_plugin_dirs = [\(plugins.map { "\"\($0)\"" }.joined(separator: ", "))]
            default_network = "\(network)"

            """
        func q(_ s: String) -> String { "\"" + s + "\"" }
        let conflist = """
            {
              "cniVersion": "1.0.0",
              "name": \(q(network)),
              "plugins": [
                {
                  "type": "mycelium-cni",\(mtu > 0 ? "\n      \"mtu\": \(mtu)," : "")
                  "bpfObject": \(q(bpfObject)),
                  "pinDir": \(q(pinDirectory)),
                  "ipam": {"podCIDRFile": \(q(podCIDRFile)), "dataDir": \(q(cniDir))}
                }
              ]
            }

            """
        do {
            for d in [directory, netDir, directory + "/storage", runroot, tmpDir, cniDir] { try AtomicFile.makeDirectory(d) }
            try AtomicFile.write(Array(containersConf.utf8), to: conf)
            try AtomicFile.write(Array(conflist.utf8), to: netDir + "/\(network).conflist")
        } catch {
            throw missing("podman driver: cannot write its configuration under \(directory): \(error)")
        }
        return PodmanSettings(podman: podmanPath, root: directory + "/storage", runroot: runroot, containersConf: conf,
                              network: network, allocationsDirectory: allocationsDirectory)
    }

    /// Why the datapath cannot pin under `dir` (the mount that holds it, the deepest mount point on
    /// its path, is not a bpf filesystem), or nil.
    static func bpffsProblem(_ dir: String) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8) else {
            return "datapath pin directory \(dir): cannot read /proc/self/mounts"
        }
        var best = (point: "", type: "")
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count >= 3 else { continue }
            let point = f[1].replacingOccurrences(of: "\\040", with: " ")
            let inside = point == "/" || dir == point || dir.hasPrefix(point + "/")
            if inside && point.count >= best.point.count { best = (point, String(f[2])) }
        }
        if best.type != "bpf" {
            return "datapath pin directory \(dir) is not on a bpf filesystem (it is on \(best.type.isEmpty ? "nothing known" : best.type) at \(best.point)): mount one (mount -t bpf bpf /sys/fs/bpf) or set datapath_pin_dir"
        }
        return nil
    }
}
