// mycelium-bench vm --sections migration,failover: a planned migration next to libvirt's own live
// migration, and a failover split into its phases with what it loses (issue 16).
//
// Both sections run on simulated hosts (scripts/vmhost: network namespaces with their own libvirtd,
// through VMHarness, the tests' harness) and the test guest (scripts/vm-guest: QEMU TCG, 1 vCPU; it
// prints `COUNT tag n` about every 100 ms and writes 256 KiB of random bytes per line).
//
// migration: on the same two daemons (hosts a and b) and the same guest size, in one run,
//   (b) libvirt: a plain guest (the same domain XML, no Mycelium) live-migrated a→b→a… with
//       virDomainMigrateToURI3(LIVE | PEER2PEER) (`virsh migrate --live --p2p`); QEMU's own downtime
//       and total time from the completed job's statistics;
//   (a) Mycelium: three agents (hosts a, b, c), the VM created on a with its replica on b, protected,
//       then `mycelium vm migrate web` (from c) back and forth.
//   Blackout is measured the same way for both: libvirt lifecycle events from both daemons, stamped
//   on arrival with this process's monotonic clock: the source's last SUSPENDED → the target's
//   first RESUMED. Total: the command (or API call) → that RESUMED.
// failover: per repetition a fresh cluster; once the VM is protected, host a is killed (agent,
//   libvirtd, QEMU) at a random instant; the agents' events (`mycelium status`: relative stamps,
//   mapped onto this clock by the tightest arrival) split kill → suspect → failure recorded →
//   ownership moved → guest resumed on b (libvirt's RESUMED event); RPO from the serial logs.

import Endophyte
import Foundation
import Libvirt
import MyceliumAPI
import MyceliumControl
import VMHarness
import VMHost

/// CLOCK_MONOTONIC seconds: the clock the lifecycle events are stamped with.
private func mono() -> Double { LibvirtEventLoop.monotonicSeconds() }

/// Lifecycle events of every domain on the watched daemons, as they arrive.
final class LifecycleLog: @unchecked Sendable {
    // SAFETY (Sendable): `events` is guarded by `lock`; the subscriptions and connections are only
    // touched by the thread that made the log.
    private let lock = NSLock()
    private var events: [(host: String, event: DomainLifecycleEvent)] = []
    private var subscriptions: [LifecycleEventSubscription] = []
    private(set) var connections: [String: LibvirtConnection] = [:]

    /// Subscribes to host `name`'s daemon (its own connection, opened after the event loop started).
    func watch(_ name: String, uri: String) throws {
        try LibvirtEventLoop.start()
        let c = try LibvirtConnection(uri: uri)
        subscriptions.append(try c.subscribeToLifecycleEvents { [weak self] e in self?.add(name, e) })
        connections[name] = c
    }

    private func add(_ host: String, _ e: DomainLifecycleEvent) { lock.withLock { events.append((host, e)) } }

    func stop() {
        subscriptions.forEach { $0.cancel() }
        subscriptions = []
        connections = [:]
    }

    func first(_ host: String, _ domain: String, _ kind: DomainLifecycleEvent.Kind, after t: Double) -> DomainLifecycleEvent? {
        lock.withLock { events.first { $0.host == host && $0.event.domain == domain && $0.event.kind == kind && $0.event.receivedAt > t }?.event }
    }

    func last(_ host: String, _ domain: String, _ kind: DomainLifecycleEvent.Kind, before t: Double) -> DomainLifecycleEvent? {
        lock.withLock { events.last { $0.host == host && $0.event.domain == domain && $0.event.kind == kind && $0.event.receivedAt < t }?.event }
    }

    /// The target's first RESUMED after `t0`, and the source's last SUSPENDED before it (the guest's
    /// blackout as both daemons report it); waits up to `timeout` for the RESUMED.
    func blackout(_ domain: String, from source: String, to target: String, after t0: Double, timeout: Double) async throws
        -> (suspended: DomainLifecycleEvent, resumed: DomainLifecycleEvent) {
        let deadline = mono() + timeout
        while true {
            if let r = first(target, domain, .resumed, after: t0) {
                guard let s = last(source, domain, .suspended, before: r.receivedAt) else {
                    throw BenchError("\(domain) resumed on \(target) but \(source) never reported it suspended")
                }
                return (s, r)
            }
            if mono() > deadline { throw BenchError("\(domain) not resumed on host \(target) within \(Int(timeout)) s of the migration's start") }
            try await Task.sleep(nanoseconds: 2_000_000)
        }
    }
}

/// The agents' recent events (`mycelium status`), polled; each placed on this process's monotonic
/// clock. The agents stamp events relative to their own start (wall clock); for each agent, arrival
/// − stamp over every event seen is an upper bound of its offset, and the smallest is within one
/// poll of it (events arriving within the poll interval of being noted are common during a
/// failover: suspect, vote, record). So times here are accurate to about the poll interval (25 ms).
final class AgentEventWatch: @unchecked Sendable {
    // SAFETY (Sendable): every field below is guarded by `lock`.
    private let lock = NSLock()
    private var seen: [Int: [(stamp: Double, text: String, arrival: Double)]] = [:]
    private var offsets: [Int: Double] = [:]
    private var replicaEpochs: [(epoch: Int, arrival: Double)] = []
    private var stopped = false
    private var task: Task<Void, Never>?

    init(_ net: LoopbackNetwork, nodes: [Int], replicaNode: Int) {
        let clients = nodes.map { ($0, net.client($0)) }, replica = net.client(replicaNode)
        task = Task { [weak self] in
            while let self, !self.lock.withLock({ self.stopped }) {
                for (i, client) in clients {
                    guard let v = try? await client.status() else { continue }
                    self.record(i, v.events, at: mono())
                }
                if let here = try? await replica.vms().vms.first?.here,
                   let r = here.range(of: "replica: image at replication epoch "), let e = Int(here[r.upperBound...]) {
                    let at = mono()
                    self.lock.withLock { if self.replicaEpochs.last?.epoch != e { self.replicaEpochs.append((e, at)) } }
                }
                try? await Task.sleep(nanoseconds: 25_000_000)
            }
        }
    }

    private func record(_ node: Int, _ events: [String], at arrival: Double) {
        lock.withLock {
            var list = seen[node] ?? []
            for line in events {
                // "+12.345s text"
                guard line.hasPrefix("+"), let sp = line.firstIndex(of: " "), let stamp = Double(line.dropFirst().prefix(upTo: sp).dropLast()) else { continue }
                let text = String(line[line.index(after: sp)...])
                if list.contains(where: { $0.stamp == stamp && $0.text == text }) { continue }
                list.append((stamp, text, arrival))
                offsets[node] = min(offsets[node] ?? .infinity, arrival - stamp)
            }
            seen[node] = list
        }
    }

    func stop() async {
        lock.withLock { stopped = true }
        await task?.value
    }

    /// The earliest event on any of `nodes` whose text satisfies `match`, on this process's clock.
    func first(on nodes: [Int], after t: Double, _ match: (String) -> Bool) -> (at: Double, text: String)? {
        lock.withLock {
            nodes.compactMap { n -> (Double, String)? in
                guard let off = offsets[n] else { return nil }
                return seen[n]?.map { ($0.stamp + off, $0.text) }.filter { $0.0 > t && match($0.1) }.min { $0.0 < $1.0 }
            }.min { $0.0 < $1.0 }
        }
    }

    /// When the replica's committed epoch last changed before `t` (as polled), and to what.
    func replicaEpoch(before t: Double) -> (epoch: Int, at: Double)? {
        lock.withLock { replicaEpochs.last { $0.arrival < t }.map { ($0.epoch, $0.arrival) } }
    }
}

/// Three agents on VM hosts a, b, c (n1 on a, …), each offering VMs through its host's libvirtd, the
/// guest RAM tracked through the preload shim: the tests' `onThreeHosts`, for the benchmark.
final class VMCluster {
    let hosts: VMHosts
    let net: LoopbackNetwork
    let letters = ["a", "b", "c"]
    private(set) var ids: [Int: String] = [:]

    init(hosts: VMHosts, bin: String, shim: String) throws {
        self.hosts = hosts
        let letters = letters
        net = try LoopbackNetwork(n: 3, bin: bin, perNode: { i in
            let h = letters[i - 1]
            return "libvirt_uri = \"\(hosts.uri(h))\"\nlibvirt_qemu_run_dir = \"\(hosts.qemuRunDirectory(h))\"\ndirty_page_shim = \"\(shim)\"\n"
        }, listenHost: { hosts.address(letters[$0 - 1]) }, netns: { hosts.name(letters[$0 - 1]) }, keepLogs: true)
    }

    func home(_ i: Int) -> String { net.dir + "/n\(i)" }
    func serial(_ i: Int) -> String { home(i) + "/vms/web.serial" }
    func vm(_ i: Int) async -> VMInfo? { try? await net.client(i).vms().vms.first }

    /// Formed, every node offering VMs, and VM `web` created on n`primary` with its replica on n`replica`.
    func createVM(memoryMiB: Int, guest: (kernel: String, initrd: String), primary: Int = 1, replica: Int = 2) async throws {
        try net.startAll()
        try await net.waitFormed(timeout: 120)
        try await waitFor("every node offers VMs", timeout: 60) {
            guard let v = await self.net.status(1) else { return false }
            return v.members.count == 3 && v.members.allSatisfy { $0.features == "libvirt" }
        }
        for i in 1...3 { ids[i] = await net.status(i)?.node }
        try cli(["vm", "create", "web", "--memory", "\(memoryMiB)M", "--kernel", guest.kernel, "--initrd", guest.initrd,
                 "--cmdline", Guest.cmdline, "--on", ids[primary]!, "--replica", ids[replica]!, "--home", home(1)])
    }

    /// `primary` runs the guest, counting and protected; `replica` holds a committed image.
    func waitProtected(primary: Int, replica: Int, timeout: Double = 120) async throws {
        try await waitFor("the guest counts on n\(primary)", timeout: timeout) { SerialLog(path: self.serial(primary)).counts.count >= 3 }
        try await waitFor("web protected on n\(primary)", timeout: timeout) {
            guard let v = await self.vm(primary) else { return false }
            return v.primary == self.ids[primary] && v.here?.hasPrefix("primary: protected") == true
        }
        try await waitFor("n\(replica) holds a committed image", timeout: timeout) {
            let here = await self.vm(replica)?.here ?? ""
            return here.hasPrefix("replica: image at replication epoch") && here != "replica: image at replication epoch 0"
        }
    }

    /// Runs the `mycelium` CLI next to this benchmark; its output, or an error with it if it failed.
    /// (posix_spawn through VMHarness's runTool: Foundation's Process waiting for EOF from an async
    /// context deadlocked here before; see `capture`.)
    @discardableResult
    func cli(_ args: [String]) throws -> String { try runTool([net.bin + "/mycelium"] + args) }

    /// The newest event of node `i` containing `text`, without its stamp.
    func lastEvent(_ i: Int, containing text: String) async -> String? {
        await net.status(i)?.events.last { $0.contains(text) }.map { String($0.drop { $0 != " " }.dropFirst()) }
    }
}

/// Polls `condition` every 20 ms until it holds, or fails after `timeout` (never a fixed sleep).
func waitFor(_ what: String, timeout: Double, _ condition: () async throws -> Bool) async throws {
    let deadline = mono() + timeout
    while !(try await condition()) {
        if mono() > deadline { throw BenchError("timed out after \(Int(timeout)) s waiting for \(what)") }
        try await Task.sleep(nanoseconds: 20_000_000)
    }
}

/// The numbers in "… in 312 ms (copy 150 ms, device state 28 ms, resume 20 ms)": every "N ms", in order.
func milliseconds(in text: String) -> [Int] {
    let words = text.split(whereSeparator: { $0 == " " || $0 == "(" || $0 == "," })
    return zip(words, words.dropFirst()).compactMap { $1.hasPrefix("ms") ? Int($0) : nil }
}

private func ms(_ s: Double) -> String { fmt(s * 1000, 0) + " ms" }
private func medianMs(_ xs: [Double]) -> String { xs.isEmpty ? "-" : ms(median(xs)) }

/// Brings up VM hosts `letters` for one part of the run; they are torn down by `body`'s end, and by
/// a signal that stops the run.
func withVMHosts<T>(_ letters: [String], _ body: (VMHosts) async throws -> T) async throws -> T {
    let hosts = try VMHosts(letters)
    let (prefix, scratch) = (hosts.prefix, hosts.scratch)
    BenchHygiene.atSignal(hosts) {
        _ = try? runTool([Repo.vmhost, "down-all", prefix])
        try? FileManager.default.removeItem(atPath: scratch)
    }
    defer {
        BenchHygiene.forgetCleanup(hosts)
        for problem in hosts.tearDown() { print("  WARNING: \(problem)") }
    }
    return try await body(hosts)
}

// MARK: migration

struct MigrationSample {
    var blackout: Double, total: Double, call: Double
    var qemuDowntimeMs: UInt64? = nil, qemuTotalMs: UInt64? = nil, qemuSetupMs: UInt64? = nil, qemuIterations: UInt64? = nil, qemuBytes: UInt64? = nil
    var detail = ""
}

func runMigrationSection(memoryMiB: Int, reps: Int, bin: String, guest: (kernel: String, initrd: String)) async throws {
    print("\nmigration: \(memoryMiB) MiB guest, \(reps) migrations each way alternately (a→b, b→a, …), on the same two namespaced libvirt daemons")
    try await withVMHosts(["a", "b", "c"]) { hosts in
        let log = LifecycleLog()
        defer { log.stop() }
        try log.watch("a", uri: hosts.uri("a"))
        try log.watch("b", uri: hosts.uri("b"))

        // (b) libvirt's own live migration of a plain guest of the same spec, before any agent runs
        // (the agents' fencing watchdog pauses a Mycelium-marked primary it holds no lease for, and
        // the plain guest has the same domain XML).
        var plain: [MigrationSample] = []
        do {
            let spec = VMSpec(name: "plain", memoryMiB: UInt32(memoryMiB), vcpus: 1, kernel: guest.kernel, initrd: guest.initrd, cmdline: Guest.cmdline)
            let serial = hosts.scratch + "/plain.serial"
            let vmA = try VMHost(uri: hosts.uri("a"), qemuRunDirectory: hosts.qemuRunDirectory("a"))
            let vmB = try VMHost(uri: hosts.uri("b"), qemuRunDirectory: hosts.qemuRunDirectory("b"))
            defer { try? vmA.remove("plain"); try? vmB.remove("plain") }
            _ = try vmA.start(spec, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: serial))
            try await waitFor("the plain guest counts", timeout: 180) { SerialLog(path: serial).counts.count >= 3 }
            for r in 0..<reps * 2 {
                let (src, dst) = r % 2 == 0 ? ("a", "b") : ("b", "a")
                // Running on the source for a while first, as the Mycelium guest is between its migrations.
                let before = SerialLog(path: serial).counts.count
                try await waitFor("the plain guest counts on \(src)", timeout: 60) { SerialLog(path: serial).counts.count >= before + 10 }
                let dom = try log.connections[src]!.domain(named: "plain")
                let t0 = mono()
                try dom.migrate(to: "qemu+tcp://\(hosts.address(dst))/system", options: [.live, .peerToPeer])
                let t1 = mono()
                let (s, res) = try await log.blackout("plain", from: src, to: dst, after: t0, timeout: 30)
                let stats = (try? dom.completedJobStatistics()) ?? (try? log.connections[dst]!.domain(named: "plain").completedJobStatistics()) ?? nil
                var sample = MigrationSample(blackout: res.receivedAt - s.receivedAt, total: res.receivedAt - t0, call: t1 - t0)
                sample.qemuDowntimeMs = stats?.downtimeMs; sample.qemuTotalMs = stats?.elapsedMs; sample.qemuSetupMs = stats?.setupMs
                sample.qemuIterations = stats?.memoryIterations; sample.qemuBytes = stats?.dataProcessed
                plain.append(sample)
                print("  libvirt  \(src)→\(dst): blackout \(ms(sample.blackout)), total \(ms(sample.total)) (call returned at \(ms(sample.call))); "
                      + "QEMU: downtime \(stats?.downtimeMs.map { "\($0) ms" } ?? "?"), total \(stats?.elapsedMs.map { "\($0) ms" } ?? "?"), "
                      + "setup \(stats?.setupMs.map { "\($0) ms" } ?? "?"), \(stats?.memoryIterations.map { "\($0)" } ?? "?") RAM passes, "
                      + "\(stats?.dataProcessed.map { "\($0 >> 20) MiB" } ?? "?") sent")
            }
        }

        // (a) Mycelium: three agents, the VM on a with its replica on b, migrated back and forth.
        var ours: [MigrationSample] = []
        let cluster = try VMCluster(hosts: hosts, bin: bin, shim: try buildShim(into: hosts.scratch))
        defer { cluster.net.stop() }
        try await cluster.createVM(memoryMiB: memoryMiB, guest: guest)
        try await cluster.waitProtected(primary: 1, replica: 2)
        for r in 0..<reps * 2 {
            let (src, dst) = r % 2 == 0 ? (1, 2) : (2, 1)
            let (srcHost, dstHost) = (cluster.letters[src - 1], cluster.letters[dst - 1])
            try await cluster.waitProtected(primary: src, replica: dst)
            let before = SerialLog(path: cluster.serial(src)).counts.count
            try await waitFor("the guest counts on n\(src)", timeout: 60) { SerialLog(path: cluster.serial(src)).counts.count >= before + 10 }
            let t0 = mono()
            try cluster.cli(["vm", "migrate", "web", "--home", cluster.home(3)])
            let t1 = mono()
            let (s, res) = try await log.blackout("web", from: srcHost, to: dstHost, after: t0, timeout: 30)
            var sample = MigrationSample(blackout: res.receivedAt - s.receivedAt, total: res.receivedAt - t0, call: t1 - t0)
            // Where the time went, as the drivers report it.
            try await waitFor("n\(dst) reports its takeover", timeout: 10) { await cluster.lastEvent(dst, containing: "took over at ownership epoch \(r + 2)") != nil }
            let took = await cluster.lastEvent(dst, containing: "took over at ownership epoch \(r + 2)") ?? ""
            // The source's driver reports its side once the switch's decision reached it, which may
            // be after the target resumed: waited for briefly, left out if it does not come.
            try? await waitFor("n\(src) reports its hand-over", timeout: 5) {
                await cluster.lastEvent(src, containing: "switched to \(cluster.ids[dst] ?? "?"); paused here for good") != nil
            }
            let switched = await cluster.lastEvent(src, containing: "paused here for good") ?? ""
            let t = milliseconds(in: took)  // [total, copy, device state, resume]
            let activation = t.first.map { Double($0) / 1000 } ?? .nan
            sample.detail = "activation on the target \(t.first.map { "\($0) ms" } ?? "?")"
                + (t.count >= 4 ? " (image copy \(t[1]), device state \(t[2]), resume \(t[3]) ms)" : "")
                + "; before it, \(ms(sample.blackout - activation)) from the pause to the switch being recorded and learned by the target"
                + (switched.isEmpty ? "" : "; source: \(switched.drop { $0 != "(" })")
            ours.append(sample)
            print("  Mycelium n\(src)→n\(dst): blackout \(ms(sample.blackout)), total \(ms(sample.total)) (command returned at \(ms(sample.call))); \(sample.detail)")
        }

        let (lb, lt) = (median(plain.map(\.blackout)), median(plain.map(\.total)))
        let (mb, mt) = (median(ours.map(\.blackout)), median(ours.map(\.total)))
        let qd = median(plain.compactMap { $0.qemuDowntimeMs.map { Double($0) / 1000 } })
        let qt = median(plain.compactMap { $0.qemuTotalMs.map { Double($0) / 1000 } })
        print("  medians over \(reps * 2) migrations each (blackout: source SUSPENDED → target RESUMED, libvirt events on both daemons):")
        print("                blackout    total")
        print("    libvirt   \(ms(lb).leftPad(10))  \(ms(lt).leftPad(8))   QEMU's own: downtime \(ms(qd)), total \(ms(qt))")
        print("    Mycelium  \(ms(mb).leftPad(10))  \(ms(mt).leftPad(8))")
        print("    Mycelium / libvirt: blackout \(fmt(mb / lb, 2))×, total \(fmt(mt / lt, 2))×")
        print("    goal blackout ≤ QEMU's downtime (\(ms(qd))): \(mb <= qd ? "met" : "NOT met (\(fmt(mb / qd, 1))×)"); "
              + "total ≤ QEMU's total (\(ms(qt))): \(mt <= qt ? "met" : "NOT met (\(fmt(mt / qt, 1))×)")")
    }
}

// MARK: failover

struct FailoverSample {
    var detect: Double, vote: Double, record: Double, start: Double, total: Double
    /// Of `record`: from the failure recorded to the leader proposing the new owner (the lease's lapse).
    var untilProposed: Double?
    var linesLost: Int, lineInterval: Double, epochAge: Double?
    var activation: String
}

/// `primaries`: where the VM runs in each run, in turn: "leader" (n1, the genesis node, which leads
/// Raft after formation: its death also costs an election) or "follower" (n2; the leader survives).
func runFailoverSection(memoryMiB: Int, reps: Int, bin: String, guest: (kernel: String, initrd: String), primaries: [String] = ["leader"]) async throws {
    print("\nfailover: \(memoryMiB) MiB guest, \(reps) runs; each a fresh cluster, the primary's host killed at a random instant once protected; "
          + "primary on the Raft leader's host / a follower's in turn: \(primaries.joined(separator: ", "))")
    var byCase: [String: [FailoverSample]] = [:]
    for rep in 1...reps {
        let onLeader = primaries[(rep - 1) % primaries.count] == "leader"
        let s = try await withVMHosts(["a", "b", "c"]) { hosts in
            try await failoverOnce(hosts, memoryMiB: memoryMiB, bin: bin, guest: guest, primary: onLeader ? 1 : 2, replica: onLeader ? 2 : 3)
        }
        byCase[onLeader ? "leader" : "follower", default: []].append(s)
        print("  run \(rep) (primary on \(onLeader ? "the leader's host" : "a follower's host")): detection \(ms(s.detect)), vote \(ms(s.vote)), record \(ms(s.record)) (failover proposed after \(s.untilProposed.map { ms($0) } ?? "?")), "
              + "start \(ms(s.start)); kill → running \(ms(s.total)); "
              + "lost \(s.linesLost) line(s) ≈ \(ms(Double(s.linesLost) * s.lineInterval)), ≈ \(s.linesLost * 64) pages written; "
              + "replica's epoch \(s.epochAge.map { ms($0) } ?? "?") old at the kill; \(s.activation)")
    }
    for (name, samples) in byCase.sorted(by: { $0.key < $1.key }) {
    print("  medians over \(samples.count) runs with the primary on \(name == "leader" ? "the Raft leader's host" : "a follower's host"):")
    print("    kill → suspect (detection)      \(medianMs(samples.map(\.detect)))")
    print("    suspect → failure recorded (vote) \(medianMs(samples.map(\.vote)))")
    print("    recorded → ownership moved (record) \(medianMs(samples.map(\.record))), of which until the leader proposed it (the lease lapsing) \(medianMs(samples.compactMap(\.untilProposed)))")
    print("    moved → guest running on the replica (start) \(medianMs(samples.map(\.start)))")
    print("    kill → running                  \(medianMs(samples.map(\.total)))   (goal 3 s)")
    print("    RPO: \(fmt(median(samples.map { Double($0.linesLost) }), 1)) line(s) lost ≈ \(medianMs(samples.map { Double($0.linesLost) * $0.lineInterval })) of guest progress, "
          + "≈ \(Int(median(samples.map { Double($0.linesLost * 64) }))) pages of its writes; replica's committed epoch \(medianMs(samples.compactMap(\.epochAge))) old at the kill")
    }
}

/// One failover: VM `web` on n`primary` (host a for n1, b for n2) replicated to n`replica`; the
/// primary's host is killed.
private func failoverOnce(_ hosts: VMHosts, memoryMiB: Int, bin: String, guest: (kernel: String, initrd: String),
                          primary p: Int, replica r: Int) async throws -> FailoverSample {
    let letters = ["a", "b", "c"]
    let survivors = [1, 2, 3].filter { $0 != p }
    let log = LifecycleLog()
    defer { log.stop() }
    try log.watch(letters[r - 1], uri: hosts.uri(letters[r - 1]))
    let cluster = try VMCluster(hosts: hosts, bin: bin, shim: try buildShim(into: hosts.scratch))
    defer { cluster.net.stop() }
    try await cluster.createVM(memoryMiB: memoryMiB, guest: guest, primary: p, replica: r)
    try await cluster.waitProtected(primary: p, replica: r)
    let watch = AgentEventWatch(cluster.net, nodes: survivors, replicaNode: r)
    // The guest's line rate on the primary (its RPO unit), over 2 s; then a random instant within 1 s.
    let (c0, t0) = (SerialLog(path: cluster.serial(p)).counts.count, mono())
    try await Task.sleep(nanoseconds: 2_000_000_000)
    let (c1, t1) = (SerialLog(path: cluster.serial(p)).counts.count, mono())
    let lineInterval = c1 > c0 ? (t1 - t0) / Double(c1 - c0) : .nan
    try await Task.sleep(nanoseconds: UInt64.random(in: 0..<1_000_000_000))

    let primaryLed = await cluster.net.status(r)?.leader == cluster.ids[p]
    let tKill = mono()
    try hosts.kill(letters[p - 1])
    let lastOnA = SerialLog(path: cluster.serial(p)).last
    let resumed = try await waitForEvent(log, letters[r - 1], "web", .resumed, after: tKill, timeout: 120)
    try await waitFor("the guest counts on n\(r)", timeout: 30) { !SerialLog(path: cluster.serial(r)).counts.isEmpty }
    let idP = String((cluster.ids[p] ?? "?").prefix(8))
    try await waitFor("n\(r) notes the takeover", timeout: 10) { watch.first(on: [r], after: tKill) { $0.contains("took over at ownership epoch 2") } != nil }
    await watch.stop()

    // The governor names a node by its ID, or by its compact number before it learned the name: the
    // ID is preferred, any suspicion after the kill is the fallback (only the primary's host died).
    func aboutPrimary(_ prefix: [String]) -> (at: Double, text: String)? {
        watch.first(on: survivors, after: tKill) { t in prefix.contains { t.hasPrefix($0) } && t.contains(idP) }
            ?? watch.first(on: survivors, after: tKill) { t in prefix.contains { t.hasPrefix($0) } }
    }
    let suspect = aboutPrimary(["suspect ", "failure candidate "])
    let recorded = aboutPrimary(["recorded failure of"])
    let moved = watch.first(on: [r], after: tKill) { $0.contains("running VM web as its primary (epoch 2)") }
        ?? watch.first(on: survivors, after: tKill) { $0.contains("failing VM web over") }
    let took = watch.first(on: [r], after: tKill) { $0.contains("took over at ownership epoch 2") }
    let proposed = watch.first(on: survivors, after: tKill) { $0.contains("failing VM web over") }
    guard let suspect, let recorded, let moved else {
        throw BenchError("missing events after the kill: suspect \(suspect?.text ?? "-"), recorded \(recorded?.text ?? "-"), moved \(moved?.text ?? "-")")
    }
    let firstOnB = SerialLog(path: cluster.serial(r)).counts.first
    let lost = max(0, (lastOnA?.n ?? 0) - (firstOnB?.n ?? 0) + 1)
    let epochAge = watch.replicaEpoch(before: tKill).map { tKill - $0.at }
    let t = milliseconds(in: took?.text ?? "")
    return FailoverSample(detect: suspect.at - tKill, vote: recorded.at - suspect.at, record: moved.at - recorded.at,
                          start: resumed.receivedAt - moved.at, total: resumed.receivedAt - tKill,
                          untilProposed: proposed.map { $0.at - recorded.at },
                          linesLost: lost, lineInterval: lineInterval, epochAge: epochAge,
                          activation: "activation \(t.first.map { "\($0) ms" } ?? "?")" + (t.count >= 4 ? " (copy \(t[1]), device state \(t[2]), resume \(t[3]) ms)" : "")
                              + "; last on n\(p) \(lastOnA?.n ?? -1), first on n\(r) \(firstOnB?.n ?? -1)"
                              + (primaryLed ? "; n\(p) led Raft (the vote waited for a new leader)" : "; the leader survived"))
}

private func waitForEvent(_ log: LifecycleLog, _ host: String, _ domain: String, _ kind: DomainLifecycleEvent.Kind, after t: Double,
                          timeout: Double) async throws -> DomainLifecycleEvent {
    let deadline = mono() + timeout
    while true {
        if let e = log.first(host, domain, kind, after: t) { return e }
        if mono() > deadline { throw BenchError("\(domain) not \(kind) on host \(host) within \(Int(timeout)) s") }
        try await Task.sleep(nanoseconds: 5_000_000)
    }
}
