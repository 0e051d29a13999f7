// `mycelium doctor`: the first command a new operator runs. This file only probes (the kernel, the
// disk, the configured daemons, the local agent's API, /sys/fs/bpf and the host's veths); every
// verdict comes from MyceliumAPI's DoctorRules (pure, unit-tested). Checks and what each measures
// are listed in docs/OPERATIONS.md.

import ArgumentParser
import DirtyPages
import Foundation
import K3sDriver
import Libvirt
import MyceliumAgent
import MyceliumAPI
import MyceliumCNI
import MyceliumCore
import MyceliumIdentity
import MyceliumRBD
import MyceliumSpores
import ServiceRuntime

struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check this node (or, with --all, the network) and say what is wrong and what to do.",
        discussion: """
            Run it first on a new node, as root, with the agent's configuration. Each
            check prints a verdict (OK, WARN, FAIL, or SKIP when it does not apply),
            one line of what it found, and for anything not OK what to do. The exit
            code is 1 if any check failed (warnings do not fail).

            On this node:
              kernel.*     bpffs; tcx BPF links (a real BPF_LINK_CREATE probe);
                           userfaultfd write-protect with PAGEMAP_SCAN; /dev/kvm
                           with hardware virtualization or TCG only; cgroup v2
                           cpu and memory controllers
              deps.*       libvirt, podman, Ceph: reachable when configured
              disk.fsync   20 fsyncs in the home directory, as in
                           etcdctl check perf: warn above 10 ms p99, fail above 100
              port.*       the configured listen addresses accept connections
              leftover.*   BPF pins under /sys/fs/bpf named myc* that no running
                           myceliumd uses; mycelium-cni veths with no pod behind
              driver.*     the service drivers this machine offers
            From the local agent's API (HOME/agent.sock):
              agent.api, cluster.quorum, cert.expiry, spore.seed (seed_dirs, seed_urls),
              clock.skew (members' clocks as measured at their last handshake)
            With --all, also each member's liveness, clock, certificate, and
            whether its address is reachable from here. The agent's API is a
            local socket, so the kernel, disk and leftover checks are local
            only: run doctor on each node for those.

            Examples:
              mycelium doctor --config /etc/mycelium/myceliumd.conf
              mycelium doctor --all -o json | jq '.checks[] | select(.verdict != "ok")'
            """)

    @Option(help: "The agent's configuration file (default: /etc/mycelium/myceliumd.conf if it exists, else the defaults).")
    var config: String?
    @Option(help: ArgumentHelp("The node's state directory; overrides 'home' in the configuration.", discussion: "Defaults to $MYCELIUM_HOME, else /var/lib/mycelium."))
    var home: String?
    @Flag(help: "Also check every member of the network, as the local agent sees it.") var all = false
    @Option(help: "The k3s executable, as the agent's k3s_binary setting (looked up on PATH unless it holds a '/').")
    var k3sBinary: String?
    @Option(help: "fsyncs to measure in the home directory.") var fsyncs = 20
    @OptionGroup var out: OutputOptions

    func run() async throws {
        var cfg = AgentConfig()
        let path = config ?? (FileManager.default.fileExists(atPath: "/etc/mycelium/myceliumd.conf") ? "/etc/mycelium/myceliumd.conf" : nil)
        if let path {
            let text: String
            do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
                throw CLIError("cannot read \(path): \(error.localizedDescription)", hint: "give the agent's configuration with --config FILE")
            }
            do { cfg = try AgentConfig.parse(text, source: path) } catch { throw CLIError("\(error)", hint: "fix the configuration; myceliumd refuses it too") }
        }
        if let home { cfg.home = home } else if path == nil { cfg.home = Home.resolve(nil).path }
        if let k3sBinary { cfg.k3sBinary = k3sBinary }

        var checks: [DoctorCheck] = []
        // The local agent first: the port checks need to know whether it runs.
        let socket = cfg.apiSocketPath
        var status: StatusResponse?
        var agentError: String?
        do { status = try await AgentClient(socket: socket, timeoutSeconds: 5).status() } catch { agentError = "\(error)" }
        let isMember = FileManager.default.fileExists(atPath: cfg.home + "/node.cert")

        checks += DoctorProbes.kernel(cfg)
        checks += await DoctorProbes.dependencies(cfg)
        checks.append(DoctorProbes.fsync(in: cfg.home, count: max(1, min(fsyncs, 1000))))
        checks += DoctorProbes.ports(cfg, agentRunning: status != nil,
                                     vmsOffered: checks.contains { $0.check == "deps.libvirt" && $0.verdict == .ok })
        checks.append(DoctorProbes.bpfPins(cfg))
        checks.append(DoctorProbes.veths())
        checks += DoctorProbes.drivers(cfg)

        if let status {
            checks.append(DoctorRules.agentReachable(nil, socket: socket))
            checks += await DoctorProbes.network(status, cfg, all: all)
        } else if isMember || all {
            checks.append(DoctorRules.agentReachable(agentError ?? "no answer", socket: socket))
        } else {
            checks.append(DoctorCheck("agent.api", .skip, "no agent answers at \(socket), and \(cfg.home) holds no membership yet: network checks skipped",
                                      fix: "join a network first: mycelium node join --home \(cfg.home) INVITE"))
        }
        if let cert = try? readCertificate(cfg.home + "/node.cert"), status == nil {
            // Without the agent, the certificate on disk (the agent's view is newer when it runs).
            checks.append(DoctorRules.certificate(member: nil, expiresInSeconds: cert.expiresAt - unixNow(), lifetimeSeconds: cert.expiresAt - cert.issuedAt))
        }
        let node = status?.node ?? (try? KeyFile.read(from: cfg.home + "/node.key")).map { NodeID(publicKey: $0.publicKey).description } ?? "unknown"
        let report = DoctorReport(node: node, scope: all ? "network" : "node", checks: checks)
        switch out.output {
        case .json: print(String(decoding: try APIJSON.encode(report), as: UTF8.self))
        case .text: print(report.text(), terminator: "")
        }
        if report.exitCode != 0 { throw ExitCode(report.exitCode) }
    }
}

/// The thin shell: each function measures and hands the facts to DoctorRules.
enum DoctorProbes {
    static func kernel(_ cfg: AgentConfig) -> [DoctorCheck] {
        var out: [DoctorCheck] = []
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        let bpffs = mounts.split(separator: "\n").contains { l in let f = l.split(separator: " "); return f.count > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf" }
        out.append(DoctorRules.bpffs(mounted: bpffs, datapathOff: cfg.datapathMode == "off"))
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: &u.release) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        out.append(DoctorRules.tcx(BPFProbe.tcx(), kernel: release))
        let engines = probeDirtyPageEngines()
        let uffd = engines.first { $0.engine == .uffdAsync }
        out.append(DoctorRules.userfaultfd(available: uffd?.isAvailable ?? false, reason: uffd?.reason ?? "no userfaultfd engine"))
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let flags = cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") }.map { Set($0.split(separator: " ").map(String.init)) } ?? []
        let kvmFD = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        if kvmFD >= 0 { close(kvmFD) }
        out.append(DoctorRules.kvm(devicePresent: FileManager.default.fileExists(atPath: "/dev/kvm"), opens: kvmFD >= 0,
                                   hardwareFlags: flags.contains("vmx") || flags.contains("svm"), libvirtConfigured: !cfg.libvirtURI.isEmpty))
        let root = "/sys/fs/cgroup"
        let facts: DoctorRules.CgroupFacts
        if let c = try? String(contentsOfFile: root + "/cgroup.controllers", encoding: .utf8) {
            facts = .v2(controllers: c.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        } else if FileManager.default.fileExists(atPath: root + "/memory/memory.limit_in_bytes") || FileManager.default.fileExists(atPath: root + "/cpu/cpu.cfs_quota_us") {
            facts = .v1(memory: FileManager.default.fileExists(atPath: root + "/memory/memory.limit_in_bytes"),
                        cpu: FileManager.default.fileExists(atPath: root + "/cpu/cpu.cfs_quota_us"))
        } else {
            facts = .none
        }
        out.append(DoctorRules.cgroups(facts))
        return out
    }

    static func dependencies(_ cfg: AgentConfig) async -> [DoctorCheck] {
        var out: [DoctorCheck] = []
        if cfg.libvirtURI.isEmpty {
            out.append(DoctorRules.dependency("libvirt", configured: false, setting: "libvirt_uri", reachable: false, detail: "", fix: ""))
        } else {
            do {
                _ = try LibvirtConnection(uri: cfg.libvirtURI)
                out.append(DoctorCheck("deps.libvirt", .ok, "libvirt answers at \(cfg.libvirtURI): this node offers VMs"))
            } catch {
                // The agent carries on without VMs, so this warns (set libvirt_uri = "" to say so).
                out.append(DoctorCheck("deps.libvirt", .warn, "libvirt does not answer at \(cfg.libvirtURI) (\(error)): this node runs no VMs",
                                       fix: "start libvirtd (libvirtd -d), or set libvirt_uri = \"\" if this node runs no VMs"))
            }
        }
        if cfg.podman == "off" {
            out.append(DoctorRules.dependency("podman", configured: false, setting: "podman", reachable: false, detail: "", fix: ""))
        } else {
            let found = cfg.podman.isEmpty ? findOnPath("podman") : (FileManager.default.isExecutableFile(atPath: cfg.podman) ? cfg.podman : nil)
            if let found {
                let (code, text) = run(found, ["--version"], timeout: 10)
                out.append(code == 0 ? DoctorCheck("deps.podman", .ok, "\(text.trimmingCharacters(in: .whitespacesAndNewlines)) at \(found)")
                           : DoctorCheck("deps.podman", .fail, "\(found) --version failed: \(text.prefix(200))", fix: "reinstall podman, or set podman = \"off\""))
            } else {
                out.append(DoctorCheck("deps.podman", .warn, "no podman \(cfg.podman.isEmpty ? "on PATH" : "at \(cfg.podman)"): this node offers no podman driver",
                                       fix: "apt-get install podman runc, or set podman = \"off\" to say so"))
            }
        }
        if cfg.cephConf.isEmpty {
            out.append(DoctorRules.dependency("ceph", configured: false, setting: "ceph_conf", reachable: false, detail: "", fix: ""))
        } else {
            let c = CephClientConfig(confFile: cfg.cephConf, clientName: cfg.cephClient, keyring: cfg.cephKeyring.isEmpty ? nil : cfg.cephKeyring,
                                     connectTimeout: 5, monitorOpTimeout: 5)
            do {
                _ = try await CephConnection.connect(c)
                out.append(DoctorCheck("deps.ceph", .ok, "Ceph answers (\(cfg.cephConf) as \(cfg.cephClient))"))
            } catch {
                out.append(DoctorCheck("deps.ceph", .fail, "cannot reach Ceph with \(cfg.cephConf) as \(cfg.cephClient): \(error)",
                                       fix: "check the monitors run ('ceph -s') and the keyring is readable; or remove ceph_conf"))
            }
        }
        return out
    }

    /// Appends 512 bytes and fdatasyncs, `count` times, in a scratch file of `dir` (removed after).
    static func fsync(in dir: String, count: Int) -> DoctorCheck {
        let path = dir + "/.doctor-fsync-\(getpid())"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return DoctorRules.fsync(samples: [], directory: dir, error: String(cString: strerror(errno))) }
        defer { close(fd); unlink(path) }
        let block = [UInt8](repeating: 0x6d, count: 512)
        var samples: [Double] = []
        for _ in 0..<count {
            guard block.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == block.count else {
                return DoctorRules.fsync(samples: [], directory: dir, error: "write: \(String(cString: strerror(errno)))")
            }
            let t0 = DispatchTime.now().uptimeNanoseconds
            guard fdatasync(fd) == 0 else { return DoctorRules.fsync(samples: [], directory: dir, error: "fdatasync: \(String(cString: strerror(errno)))") }
            samples.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        return DoctorRules.fsync(samples: samples, directory: dir)
    }

    static func ports(_ cfg: AgentConfig, agentRunning: Bool, vmsOffered: Bool) -> [DoctorCheck] {
        var out: [DoctorCheck] = []
        var seen = Set<String>()
        // The VM replication listener exists only on a node whose libvirt answers.
        let replication = vmsOffered ? splitAddress(cfg.listen).map { "\($0.host.contains(":") ? "[\($0.host)]" : $0.host):\(cfg.vmReplicationPort)" } ?? "" : ""
        for (name, address) in [("listen", cfg.listen), ("advertise", cfg.advertise), ("metrics_listen", cfg.metricsListen), ("client_listen", cfg.clientListen),
                                ("vm_replication_port", replication)] {
            guard let (host, port) = splitAddress(address), seen.insert("\(host):\(port)").inserted else { continue }
            let target = host == "0.0.0.0" ? "127.0.0.1" : host == "::" ? "::1" : host
            out.append(DoctorRules.port(name, address: address, connectable: tcpConnects(target, port, timeout: 2), agentRunning: agentRunning))
        }
        return out
    }

    /// Pin dirs under /sys/fs/bpf named like ours, against the pin dirs of the myceliumd processes running now.
    static func bpfPins(_ cfg: AgentConfig) -> DoctorCheck {
        let root = "/sys/fs/bpf"
        var candidates = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).filter { $0.hasPrefix("myc") }.map { root + "/" + $0 }
        if cfg.datapathPinDir.hasPrefix(root + "/"), FileManager.default.fileExists(atPath: cfg.datapathPinDir), !candidates.contains(cfg.datapathPinDir) {
            candidates.append(cfg.datapathPinDir)
        }
        return DoctorRules.bpfPins(candidates: candidates, owned: runningAgentPinDirs())
    }

    /// Every running myceliumd's datapath_pin_dir (from its --config, else the default).
    static func runningAgentPinDirs() -> Set<String> {
        var owned = Set<String>()
        for pid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where pid.allSatisfy(\.isNumber) {
            guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !raw.isEmpty else { continue }
            let argv = raw.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            guard let exe = argv.first, (exe as NSString).lastPathComponent.hasPrefix("myceliumd") else { continue }
            // The agent's own helpers (watchdog, reaper) are myceliumd too, with no datapath.
            if argv.contains("--vm-watchdog") || argv.contains("--service-reaper") { continue }
            var c = AgentConfig()
            if let i = argv.firstIndex(of: "--config"), i + 1 < argv.count {
                var file = argv[i + 1]
                if !file.hasPrefix("/"), let cwd = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/cwd") { file = cwd + "/" + file }
                if let text = try? String(contentsOfFile: file, encoding: .utf8), let parsed = try? AgentConfig.parse(text) { c = parsed }
            }
            owned.insert(c.datapathPinDir)
        }
        return owned
    }

    static func veths() -> DoctorCheck {
        let (code, text) = run("/usr/sbin/ip", ["-j", "-d", "link", "show", "type", "veth"], timeout: 10)
        guard code == 0, let list = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]] else {
            return DoctorCheck("leftover.veths", .skip, "cannot list veths with ip -j link (\(code)): \(text.prefix(120))")
        }
        let veths = list.compactMap { l -> DoctorRules.Veth? in
            guard let name = l["ifname"] as? String else { return nil }
            return DoctorRules.Veth(name: name, peerInOtherNamespace: l["link_netnsid"] != nil)
        }
        // The IPAM allocations of mycelium-cni's default data dir (one file per address: "containerID\nifname\n").
        var allocated: Set<String>?
        let data = CNIDefaults.dataDir
        if let networks = try? FileManager.default.contentsOfDirectory(atPath: data) {
            var names = Set<String>()
            for n in networks {
                for f in (try? FileManager.default.contentsOfDirectory(atPath: data + "/" + n)) ?? [] where f.first?.isNumber == true {
                    let lines = ((try? String(contentsOfFile: data + "/" + n + "/" + f, encoding: .utf8)) ?? "").split(separator: "\n")
                    if lines.count >= 2 { names.insert(CNIPlugin.hostVethName(containerID: String(lines[0]), ifname: String(lines[1]))) }
                }
            }
            allocated = names.isEmpty ? nil : names
        }
        return DoctorRules.veths(veths, allocated: allocated)
    }

    static func drivers(_ cfg: AgentConfig) -> [DoctorCheck] {
        var out = [DoctorCheck("driver.process", .ok, "offered: runs commands in cgroups of their own; needs nothing installed")]
        if cfg.k3sBinary.isEmpty {
            out.append(DoctorCheck("driver.k3s", .skip, "k3s_binary is empty: this node never runs K3s"))
        } else {
            let (k3s, missing) = K3sBinary.locate(cfg.k3sBinary, path: ProcessInfo.processInfo.environment["PATH"])
            out.append(k3s.map { DoctorCheck("driver.k3s", .ok, "offered: k3s at \($0): the agent writes its config.yaml and supervises it") }
                       ?? DoctorCheck("driver.k3s", .skip, "missing: " + missing, fix: "install k3s to offer the k3s driver (optional)"))
        }
        return out
    }

    /// What the local agent knows: quorum, this node's certificate, seed spores, members' clocks; with
    /// `all`, each member's liveness, certificate and reachability from here.
    static func network(_ s: StatusResponse, _ cfg: AgentConfig, all: Bool) async -> [DoctorCheck] {
        var out: [DoctorCheck] = []
        let alive = Set(s.members.filter(\.isAlive).map(\.id))
        out.append(DoctorRules.quorum(leader: s.leader, health: s.health, voters: s.voters, alive: alive))
        if let me = s.members.first(where: { $0.id == s.node }), let c = me.certificate {
            out.append(DoctorRules.certificate(member: nil, expiresInSeconds: c.expiresInSeconds, lifetimeSeconds: c.lifetimeSeconds))
        } else {
            out.append(DoctorCheck("cert.expiry", .warn, "the agent holds no certificate record for this node yet", fix: "wait for its admission; 'mycelium status' shows it"))
        }
        out.append(await seed(cfg, network: s.network, currentEpoch: s.epoch))
        for m in s.members where m.id != s.node && (m.isAlive || all) && m.revoked != true {
            out.append(DoctorRules.clockSkew(member: m.id, skewSeconds: m.clockSkewSeconds, limit: maxClockSkew))
        }
        guard all else { return out }
        for m in s.members where m.id != s.node {
            out.append(DoctorRules.member(m.id, status: m.status, revoked: m.revoked == true))
            guard m.isAlive else { continue }
            if let c = m.certificate {
                out.append(DoctorRules.certificate(member: m.id, expiresInSeconds: c.expiresInSeconds, lifetimeSeconds: c.lifetimeSeconds))
            }
            let reachable = m.addresses.filter { a in splitAddress(a).map { tcpConnects($0.host, $0.port, timeout: 2) } ?? false }
            out.append(m.addresses.isEmpty ? DoctorCheck("port.member", .skip, "no address confirmed yet", node: m.id)
                       : reachable.isEmpty ? DoctorCheck("port.member", .fail, "none of \(m.addresses.joined(separator: ", ")) accepts a connection from here",
                                                         fix: "check its agent runs and no firewall blocks the port", node: m.id)
                       : DoctorCheck("port.member", .ok, "\(reachable.joined(separator: ", ")) accepts connections from here", node: m.id))
        }
        return out
    }

    static func seed(_ cfg: AgentConfig, network: String, currentEpoch: String) async -> DoctorCheck {
        let count = cfg.seedDirs.count + cfg.seedURLs.count
        guard count > 0, let net = try? NetworkID(parsing: network) else {
            return DoctorRules.seedSpore(stores: count, newest: nil, problems: [], currentEpoch: currentEpoch, intervalSeconds: cfg.seedIntervalSeconds)
        }
        // The places a cold node reads, read the same way (each seed verified against the network).
        let stores = cfg.seedDirs.map { DirectorySeedStore(directory: $0, network: net) as SeedSporeStore }
            + cfg.seedURLs.map { HTTPSeedStore(base: $0, network: net) as SeedSporeStore }
        let now = unixNow()
        let (best, problems) = await newestSeedSpore(from: stores, network: net, knownEpoch: nil, now: now)
        return DoctorRules.seedSpore(stores: stores.count, newest: best.map { (epoch: $0.epoch.description, ageSeconds: now - $0.writtenAt) },
                                     problems: problems.map { "\($0.location): \($0.problem)" }, currentEpoch: currentEpoch,
                                     intervalSeconds: cfg.seedIntervalSeconds)
    }

    // MARK: helpers

    static func findOnPath(_ name: String) -> String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        return nil
    }

    /// Runs a program with a deadline (ServiceRuntime's CommandRunner: killed with its process group
    /// when late); (exit status, stdout and stderr interleaved), or (-1, why) when it cannot start.
    static func run(_ exe: String, _ args: [String], timeout: Double) -> (Int32, String) {
        do {
            let r = try CommandRunner.run([exe] + args, environment: ProcessInfo.processInfo.environment,
                                          timeoutMillis: Int32(timeout * 1000), mergeErrors: true, instance: "doctor")
            return r.timedOut ? (-1, "\(exe) did not answer within \(Int(timeout)) s") : (r.status, r.stdout)
        } catch {
            return (-1, "\(error)")
        }
    }

    /// A TCP connect to host:port (IPv4 or IPv6 literal, or a name) within `timeout` seconds.
    static func tcpConnects(_ host: String, _ port: Int, timeout: Int) -> Bool {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &res) == 0, let first = res else { return false }
        defer { freeaddrinfo(first) }
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype, a.pointee.ai_protocol)
            if fd >= 0 {
                var tv = timeval(tv_sec: timeout, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                let ok = connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0
                close(fd)
                if ok { return true }
            }
            ai = a.pointee.ai_next
        }
        return false
    }
}

/// A real probe of tcx (the C datapath's `myc_dp_probe_tcx`, with libbpf): nothing is attached.
enum BPFProbe {
    static func tcx() -> DoctorRules.TCXProbe {
        do { return try Datapath.probeTCX().map { .unsupported(errno: $0) } ?? .supported } catch { return .cannotLoad(error.message) }
    }
}
