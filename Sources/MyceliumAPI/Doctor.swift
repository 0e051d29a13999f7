// `mycelium doctor`'s judgement: each check's verdict, detail and fix from facts a thin shell
// measured (Sources/mycelium/DoctorCommand.swift probes the kernel, the disk, the local agent).
// Pure: no file, socket, clock or process is touched here, so every rule is unit-tested
// (Tests/MyceliumAPITests/DoctorTests.swift). The JSON field names are a contract: `check`,
// `verdict`, `detail`, `fix`, `node` (in `checks`), `ok`/`warn`/`fail`/`skip` (in `summary`).

import Foundation

/// How a check came out. `skip`: not applicable here (not configured, or needs the agent).
public enum DoctorVerdict: String, Codable, Sendable, Equatable, Comparable, CaseIterable {
    case ok, skip, warn, fail

    private var rank: Int { switch self { case .ok: 0; case .skip: 1; case .warn: 2; case .fail: 3 } }
    public static func < (a: DoctorVerdict, b: DoctorVerdict) -> Bool { a.rank < b.rank }
}

/// One check's outcome: what was checked, the verdict, one line of detail, and what to do.
public struct DoctorCheck: Codable, Sendable, Equatable {
    /// Stable dotted name, e.g. `kernel.bpffs`, `disk.fsync`, `cluster.quorum`.
    public var check: String
    public var verdict: DoctorVerdict
    /// One line: what was measured or found.
    public var detail: String
    /// What to do about it (empty when nothing is to be done).
    public var fix: String
    /// The member this check is about when it is not the local node (`--all`), else nil.
    public var node: String?

    public init(_ check: String, _ verdict: DoctorVerdict, _ detail: String, fix: String = "", node: String? = nil) {
        self.check = check; self.verdict = verdict; self.detail = detail; self.fix = fix; self.node = node
    }

    enum CodingKeys: String, CodingKey { case check, verdict, detail, fix, node }

    /// Every field always present (`node` is null for the local node), so consumers see one shape.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(check, forKey: .check)
        try c.encode(verdict, forKey: .verdict)
        try c.encode(detail, forKey: .detail)
        try c.encode(fix, forKey: .fix)
        try c.encode(node, forKey: .node)
    }
}

/// The whole report: `mycelium doctor -o json` prints exactly this.
public struct DoctorReport: Codable, Sendable, Equatable {
    public struct Summary: Codable, Sendable, Equatable {
        public var ok: Int, warn: Int, fail: Int, skip: Int
        public init(ok: Int, warn: Int, fail: Int, skip: Int) { self.ok = ok; self.warn = warn; self.fail = fail; self.skip = skip }
    }
    /// The local node's ID, or `unknown` without an identity.
    public var node: String
    /// `node` (this machine) or `network` (`--all`).
    public var scope: String
    public var checks: [DoctorCheck]
    public var summary: Summary
    /// The worst verdict (`ok` when every check passed or was skipped).
    public var verdict: DoctorVerdict

    public init(node: String, scope: String, checks: [DoctorCheck]) {
        self.node = node; self.scope = scope; self.checks = checks
        func n(_ v: DoctorVerdict) -> Int { checks.filter { $0.verdict == v }.count }
        summary = Summary(ok: n(.ok), warn: n(.warn), fail: n(.fail), skip: n(.skip))
        let worst = checks.map(\.verdict).max() ?? .ok
        verdict = worst == .skip ? .ok : worst
    }

    /// 0: no failure (warnings allowed); 1: at least one check failed.
    public var exitCode: Int32 { summary.fail > 0 ? 1 : 0 }

    /// Aligned text: `VERDICT  CHECK  DETAIL` and an indented `fix:` line under anything not ok.
    public func text() -> String {
        let width = max(20, checks.map { $0.check.count + ($0.node.map { $0.count + 3 } ?? 0) }.max() ?? 0)
        var out = ""
        for c in checks {
            let name = c.check + (c.node.map { " (\($0))" } ?? "")
            out += c.verdict.rawValue.uppercased().padding(toLength: 6, withPad: " ", startingAt: 0)
                + name.padding(toLength: width + 2, withPad: " ", startingAt: 0) + c.detail + "\n"
            if !c.fix.isEmpty && c.verdict != .ok { out += String(repeating: " ", count: 6 + width + 2) + "fix: " + c.fix + "\n" }
        }
        out += "\(summary.ok) ok, \(summary.warn) warning(s), \(summary.fail) failure(s), \(summary.skip) skipped\n"
        return out
    }
}

/// The rules. Each takes what was measured and returns the check.
public enum DoctorRules {
    // MARK: kernel

    /// bpffs: the datapath pins its maps and programs there; bpffs is not mounted at boot everywhere.
    public static func bpffs(mounted: Bool, datapathOff: Bool) -> DoctorCheck {
        if mounted { return DoctorCheck("kernel.bpffs", .ok, "bpffs is mounted at /sys/fs/bpf") }
        if datapathOff { return DoctorCheck("kernel.bpffs", .skip, "bpffs is not mounted; datapath_mode is off, so nothing needs it") }
        return DoctorCheck("kernel.bpffs", .fail, "bpffs is not mounted at /sys/fs/bpf: the eBPF datapath cannot pin its maps",
                           fix: "mount -t bpf bpf /sys/fs/bpf (and add it to /etc/fstab: bpf /sys/fs/bpf bpf defaults 0 0)")
    }

    /// What a BPF_LINK_CREATE of a tcx link on a device that does not exist answered.
    public enum TCXProbe: Equatable, Sendable {
        /// ENODEV: the kernel knows tcx and looked for the device.
        case supported
        /// EINVAL (or another errno): the kernel does not know the tcx attach type.
        case unsupported(errno: Int32)
        /// The probe program could not be loaded (not root, no BPF).
        case cannotLoad(String)
    }

    public static func tcx(_ p: TCXProbe, kernel: String) -> DoctorCheck {
        switch p {
        case .supported:
            return DoctorCheck("kernel.tcx", .ok, "tcx BPF links work (kernel \(kernel))")
        case .unsupported(let e):
            return DoctorCheck("kernel.tcx", .warn, "the kernel refused a tcx link (errno \(e)); the datapath falls back to tc clsact (kernel \(kernel))",
                               fix: "use Linux 6.6 or newer for tcx links, which outlive the loader and order programs safely")
        case .cannotLoad(let why):
            return DoctorCheck("kernel.tcx", .fail, "cannot load a BPF program: \(why)",
                               fix: "run myceliumd (and doctor) as root, with a kernel built with CONFIG_BPF_SYSCALL")
        }
    }

    /// userfaultfd write-protect with PAGEMAP_SCAN: the cheap way to find a VM's dirty pages.
    public static func userfaultfd(available: Bool, reason: String) -> DoctorCheck {
        available
            ? DoctorCheck("kernel.userfaultfd", .ok, "userfaultfd async write-protect and PAGEMAP_SCAN work: " + reason)
            : DoctorCheck("kernel.userfaultfd", .warn, "no uffd write-protect with PAGEMAP_SCAN (\(reason)); VM replication falls back to page hashing, which costs CPU",
                          fix: "use Linux 6.7 or newer (UFFD_FEATURE_WP_ASYNC, PAGEMAP_SCAN)")
    }

    /// /dev/kvm: hardware virtualization, a paravirtual KVM (no vmx/svm: Linux guests do not boot), or none.
    public static func kvm(devicePresent: Bool, opens: Bool, hardwareFlags: Bool, libvirtConfigured: Bool) -> DoctorCheck {
        if !libvirtConfigured { return DoctorCheck("kernel.kvm", .skip, "libvirt_uri is empty: this node runs no VMs") }
        if devicePresent && opens && hardwareFlags { return DoctorCheck("kernel.kvm", .ok, "/dev/kvm with hardware virtualization (vmx/svm)") }
        if devicePresent && opens {
            return DoctorCheck("kernel.kvm", .warn, "/dev/kvm exists but the CPU shows no vmx/svm (a paravirtual KVM such as PVM): Linux guests need TCG here, which is slow",
                               fix: "run VMs with TCG (as the tests do), or give this machine nested hardware virtualization")
        }
        if devicePresent {
            return DoctorCheck("kernel.kvm", .warn, "/dev/kvm exists but cannot be opened: only TCG emulation",
                               fix: "run as root or add the agent's user to the kvm group")
        }
        return DoctorCheck("kernel.kvm", .warn, "no /dev/kvm: VMs run under TCG emulation only",
                           fix: "enable virtualization in the firmware and load kvm_intel or kvm_amd")
    }

    /// The cgroup layout services run in.
    public enum CgroupFacts: Equatable, Sendable {
        case v2(controllers: [String])
        case v1(memory: Bool, cpu: Bool)
        case none
    }

    public static func cgroups(_ f: CgroupFacts) -> DoctorCheck {
        let needed = ["cpu", "memory"]
        switch f {
        case .v2(let controllers):
            let missing = needed.filter { !controllers.contains($0) }
            if missing.isEmpty { return DoctorCheck("kernel.cgroups", .ok, "cgroup v2 with \(controllers.joined(separator: " "))") }
            return DoctorCheck("kernel.cgroups", .fail, "cgroup v2 lacks the \(missing.joined(separator: " and ")) controller(s): service limits cannot be applied",
                               fix: "enable them at the root: echo +\(missing.joined(separator: " +")) > /sys/fs/cgroup/cgroup.subtree_control")
        case let .v1(memory, cpu):
            if memory && cpu {
                return DoctorCheck("kernel.cgroups", .warn, "cgroup v1 (hybrid layout): services run with cpu and memory limits, but podman needs runc and cgroup v2 is preferred",
                                   fix: "boot with systemd.unified_cgroup_hierarchy=1 for cgroup v2, or keep runtime = \"runc\" in containers.conf")
            }
            return DoctorCheck("kernel.cgroups", .fail, "cgroup v1 without the \(memory ? "cpu" : "memory") controller mounted",
                               fix: "mount cgroup2 at /sys/fs/cgroup, or the v1 cpu and memory controllers under /sys/fs/cgroup")
        case .none:
            return DoctorCheck("kernel.cgroups", .fail, "no usable cgroups at /sys/fs/cgroup: services cannot run",
                               fix: "mount -t cgroup2 none /sys/fs/cgroup")
        }
    }

    // MARK: disk

    /// p99 of the measured fsync latencies (nearest rank), in seconds.
    public static func p99(_ samples: [Double]) -> Double? {
        guard !samples.isEmpty else { return nil }
        let s = samples.sorted()
        let rank = Int((0.99 * Double(s.count)).rounded(.up))
        return s[max(0, min(s.count - 1, rank - 1))]
    }

    /// Like `etcdctl check perf`: the Raft log fsyncs on every write, so a slow disk slows every decision.
    /// etcd warns above 10 ms p99 of WAL fsync; above 100 ms elections start failing.
    public static func fsync(samples: [Double], directory: String, error: String? = nil) -> DoctorCheck {
        if let error {
            return DoctorCheck("disk.fsync", .fail, "cannot measure fsync in \(directory): \(error)", fix: "check that the home directory exists and is writable")
        }
        guard let p = p99(samples) else { return DoctorCheck("disk.fsync", .skip, "no fsync measured") }
        let p50 = samples.sorted()[samples.count / 2]
        let text = String(format: "%d fsyncs in %@: p50 %.2f ms, p99 %.2f ms", samples.count, directory, p50 * 1000, p * 1000)
        if p <= 0.010 { return DoctorCheck("disk.fsync", .ok, text) }
        if p <= 0.100 {
            return DoctorCheck("disk.fsync", .warn, text + " (above etcd's 10 ms): Raft commits will be slow",
                               fix: "put the home directory on an SSD or NVMe disk not shared with heavy writers")
        }
        return DoctorCheck("disk.fsync", .fail, text + ": leaders will miss heartbeats and elections will churn",
                           fix: "move the home directory to a fast local disk (SSD/NVMe); network filesystems are too slow for the Raft log")
    }

    // MARK: services this node is configured to use

    /// libvirt, podman or Ceph: `nil` reachable when not configured.
    public static func dependency(_ name: String, configured: Bool, setting: String, reachable: Bool, detail: String, fix: String) -> DoctorCheck {
        if !configured { return DoctorCheck("deps." + name, .skip, "\(setting) not set: this node does not use \(name)") }
        return reachable ? DoctorCheck("deps." + name, .ok, detail) : DoctorCheck("deps." + name, .fail, detail, fix: fix)
    }

    // MARK: the network, as the local agent sees it

    public static func agentReachable(_ error: String?, socket: String) -> DoctorCheck {
        guard let error else { return DoctorCheck("agent.api", .ok, "the local agent answers at \(socket)") }
        return DoctorCheck("agent.api", .fail, error,
                           fix: "start it: myceliumd --config /etc/mycelium/myceliumd.conf (the network checks below need it)")
    }

    /// Quorum: a leader, and enough live voters that one more failure is survivable.
    public static func quorum(leader: String, health: String, voters: [String], alive: Set<String>) -> DoctorCheck {
        let up = voters.filter { alive.contains($0) }.count
        let majority = voters.count / 2 + 1
        let counts = "\(up) of \(voters.count) voters alive (majority \(majority))"
        if leader == "none" || leader.isEmpty {
            return DoctorCheck("cluster.quorum", .fail, "no leader; \(counts); health: \(health)",
                               fix: "start the sclerotia that are down ('mycelium status' lists them); with fewer than \(majority) nothing commits")
        }
        if voters.count > 0 && up < majority {
            return DoctorCheck("cluster.quorum", .fail, "leader \(leader) but only \(counts)",
                               fix: "bring voters back before anything else fails; the network cannot commit")
        }
        if health != "ok" {
            return DoctorCheck("cluster.quorum", .warn, "leader \(leader), \(counts); health: \(health)", fix: "see 'mycelium status' for the events")
        }
        if voters.count > 1 && up == majority {
            return DoctorCheck("cluster.quorum", .warn, "leader \(leader), \(counts): one more voter failure stops the network",
                               fix: "restart the voters that are down, or add members so the network can replace them")
        }
        return DoctorCheck("cluster.quorum", .ok, "leader \(leader), \(counts)")
    }

    /// A member's clock against this node's, measured at their latest handshake. `limit`: the skew
    /// the certificates tolerate (MyceliumIdentity's maxClockSkew).
    public static func clockSkew(member: String, skewSeconds: Int64?, limit: Int64) -> DoctorCheck {
        guard let s = skewSeconds else {
            return DoctorCheck("clock.skew", .skip, "not measured (no handshake with it yet)", node: member)
        }
        let a = abs(s)
        let text = "clock \(s >= 0 ? "+" : "")\(s) s against this node"
        if a <= 1 { return DoctorCheck("clock.skew", .ok, text, node: member) }
        if a < limit {
            return DoctorCheck("clock.skew", .warn, text + " (certificates tolerate \(limit) s)",
                               fix: "run an NTP client (chrony, systemd-timesyncd) on both machines", node: member)
        }
        return DoctorCheck("clock.skew", .fail, text + ": beyond the \(limit) s certificates tolerate; handshakes may be refused",
                           fix: "synchronise the clocks (chronyc makestep) and keep an NTP client running", node: member)
    }

    /// A membership certificate's expiry: renewed at two thirds of its lifetime while the member is alive.
    public static func certificate(member: String?, expiresInSeconds: Int64, lifetimeSeconds: Int64) -> DoctorCheck {
        let days = Double(expiresInSeconds) / 86_400
        let left = expiresInSeconds >= 86_400 ? String(format: "%.1f days", days) : "\(expiresInSeconds) s"
        if expiresInSeconds <= 0 {
            return DoctorCheck("cert.expiry", .fail, "the membership certificate expired \(-expiresInSeconds) s ago: peers refuse it",
                               fix: "rejoin with an invite: mycelium node join --home HOME INVITE (the node keeps its key and ID)", node: member)
        }
        if expiresInSeconds < lifetimeSeconds / 5 {
            return DoctorCheck("cert.expiry", .warn, "expires in \(left), in the last fifth of its lifetime: renewal is overdue",
                               fix: "check that the network has a leader and that this member is alive ('mycelium status'); renewal needs both", node: member)
        }
        return DoctorCheck("cert.expiry", .ok, "expires in \(left)", node: member)
    }

    /// A member's liveness as the spore records it (`--all`).
    public static func member(_ id: String, status: String, revoked: Bool) -> DoctorCheck {
        if revoked { return DoctorCheck("cluster.member", .skip, "revoked", node: id) }
        switch status {
        case "alive": return DoctorCheck("cluster.member", .ok, "alive", node: id)
        case "left": return DoctorCheck("cluster.member", .skip, "left the network", node: id)
        case "suspect": return DoctorCheck("cluster.member", .warn, "suspect: missed its probes", fix: "check that its agent runs and its port is reachable", node: id)
        default: return DoctorCheck("cluster.member", .fail, "\(status)", fix: "restart its agent, or revoke it if the machine is gone: mycelium member revoke \(id)", node: id)
        }
    }

    /// Seed spores: what a network that lost its quorum restarts from.
    public static func seedSpore(stores: Int, newest: (epoch: String, ageSeconds: Int64)?, problems: [String],
                                 currentEpoch: String?, intervalSeconds: Int) -> DoctorCheck {
        if stores == 0 {
            return DoctorCheck("spore.seed", .warn, "no seed_dirs or seed_urls: after losing quorum this network has no seed spore to restart from",
                               fix: "set seed_dirs = [\"/var/lib/mycelium/seeds\"] (or a shared mount) on the sclerotia")
        }
        guard let newest else {
            return DoctorCheck("spore.seed", .fail, "no readable seed spore in \(stores) place(s): \(problems.joined(separator: "; "))",
                               fix: "check the seed places exist and are writable by the leader's agent")
        }
        let text = "newest seed spore at epoch \(newest.epoch), written \(newest.ageSeconds) s ago"
        guard let current = currentEpoch else { return DoctorCheck("spore.seed", .ok, text + " (agent not reachable: epoch not compared)") }
        if current == newest.epoch { return DoctorCheck("spore.seed", .ok, text + "; the network is at the same epoch") }
        if newest.ageSeconds <= Int64(max(60, 3 * intervalSeconds)) { return DoctorCheck("spore.seed", .ok, text + "; the network is at \(current) (written within the interval)") }
        return DoctorCheck("spore.seed", .warn, text + ", but the network is at \(current): the seed is stale",
                           fix: "the leader writes seeds; check its log for 'cannot write seed spore' and that seed_dirs are the same on every sclerotium")
    }

    // MARK: ports and leftovers

    /// A listening address of this node's config: bound by the agent (ok), free (agent not running), or taken by another process.
    public static func port(_ setting: String, address: String, connectable: Bool, agentRunning: Bool) -> DoctorCheck {
        if connectable { return DoctorCheck("port." + setting, .ok, "\(address) accepts connections") }
        if agentRunning {
            return DoctorCheck("port." + setting, .fail, "\(address) refuses connections although the agent runs",
                               fix: "check a firewall (nft list ruleset) and that \(setting) is an address of this machine")
        }
        return DoctorCheck("port." + setting, .skip, "\(address) is not listening (the agent is not running)")
    }

    /// Directories and pins under /sys/fs/bpf named like ours (`mycelium*`, `myc-*`) that no running agent uses.
    public static func bpfPins(candidates: [String], owned: Set<String>) -> DoctorCheck {
        let stale = candidates.filter { c in !owned.contains { c == $0 || c.hasPrefix($0 + "/") } }.sorted()
        if stale.isEmpty {
            return DoctorCheck("leftover.bpf_pins", .ok, candidates.isEmpty ? "no Mycelium pins in /sys/fs/bpf" : "\(candidates.count) pin dir(s), all used by running agents")
        }
        return DoctorCheck("leftover.bpf_pins", .fail, "stale BPF pins no running agent owns: \(stale.joined(separator: ", "))",
                           fix: "remove them (no agent uses them): rm -r \(stale.joined(separator: " "))")
    }

    /// One host-side veth as `ip -j -d link show type veth` lists it.
    public struct Veth: Equatable, Sendable {
        public var name: String
        /// The peer is in another network namespace (a pod's).
        public var peerInOtherNamespace: Bool
        public init(name: String, peerInOtherNamespace: Bool) { self.name = name; self.peerInOtherNamespace = peerInOtherNamespace }
    }

    /// mycelium-cni's host veths are "myc" + 11 hex digits (MyceliumCNI's hostVethName).
    public static func isOurVeth(_ name: String) -> Bool {
        name.count == 14 && name.hasPrefix("myc") && name.dropFirst(3).allSatisfy { $0.isHexDigit && !$0.isUppercase }
    }

    /// Our veths whose pod end is not in a pod's namespace (an ADD that crashed, a pod torn down
    /// without DEL) or that no IPAM allocation names (`allocated`: names derived from the
    /// allocations found; nil when no IPAM state was readable, then only the first rule applies).
    public static func veths(_ all: [Veth], allocated: Set<String>?) -> DoctorCheck {
        let ours = all.filter { isOurVeth($0.name) }
        let orphans = ours.filter { v in !v.peerInOtherNamespace || (allocated.map { !$0.contains(v.name) } ?? false) }.map(\.name).sorted()
        if orphans.isEmpty {
            return DoctorCheck("leftover.veths", .ok, ours.isEmpty ? "no mycelium-cni veths" : "\(ours.count) mycelium-cni veth(s), each with its pod")
        }
        return DoctorCheck("leftover.veths", .fail, "orphaned mycelium-cni veths (no pod behind them): \(orphans.joined(separator: ", "))",
                           fix: "delete them: " + orphans.map { "ip link del \($0)" }.joined(separator: "; "))
    }
}
