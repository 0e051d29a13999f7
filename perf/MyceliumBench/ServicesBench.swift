import Foundation
import MyceliumAgent
import MyceliumAPI

/// `mycelium-bench services [--agents 10] [--instances 1000] [--kills 10]`
///
/// Real agents on loopback (`myceliumd`, release), their process driver and its cgroups:
///  1. scale: one service of `--instances` replicas of `sleep` over `--agents` agents; time from the
///     deploy to every instance reported running, against the physical limit measured in the same
///     run: this process spawning and reaping as many `sleep`s one after another (posix_spawn);
///  2. failover: a service of 3 replicas, one per node, on 5 agents; SIGKILL the agent that runs
///     instance 0 (its reaper kills the instance) and time, as another agent's API (and DNS) sees it,
///     until the service answers only from live nodes, and until 3 instances run on live nodes
///     again; the killed agent restarts and rejoins before the next kill.
///     Nomad's defaults (reference, not run here): ~10 s heartbeat TTL plus grace before it
///     reschedules; Kubernetes: ~5 min of tolerations.
func runServicesBench(_ args: [String]) async throws {
    func option(_ name: String, _ fallback: Int) -> Int {
        guard let i = args.firstIndex(of: name), i + 1 < args.count, let v = Int(args[i + 1]) else { return fallback }
        return v
    }
    let agents = option("--agents", 10), instances = option("--instances", 1000), kills = option("--kills", 10)
    let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
    guard FileManager.default.isExecutableFile(atPath: bin + "/myceliumd"), FileManager.default.isExecutableFile(atPath: "/bin/sleep") else {
        print("services: \(bin)/myceliumd not found; build it in release first (swift build -c release --product myceliumd)")
        return
    }
    guard getuid() == 0 else { print("services: instances run in cgroups of their own; run as root"); return }
    print("services benchmark on \(machineLine())")
    if instances > 0 { try await scale(agents: agents, instances: instances, bin: bin) }
    if kills > 0 { try await failover(kills: kills, bin: bin) }
}

private func deploy(_ net: LoopbackNetwork, _ yaml: String) async throws {
    _ = try await net.client(1).deployService(try ServiceSpecDocument.parse(yaml))
}

/// Polls node `i`'s view until `done` holds for the service; the time it took.
private func until(_ net: LoopbackNetwork, node i: Int, _ name: String, timeout: Double, _ done: (ServiceInfo) -> Bool) async throws -> Double {
    let start = now()
    var last: ServiceInfo?
    while now() - start < timeout {
        if let s = try? await net.client(i).services().services.first(where: { $0.name == name }) {
            last = s
            if done(s) { return now() - start }
        }
        try await Task.sleep(nanoseconds: 20_000_000)
    }
    throw AgentError("\(name) did not get there within \(Int(timeout)) s: \(last.map { "\($0.serving) of \($0.replicas) serving, \($0.pending)" } ?? "not recorded")")
}

private func scale(agents: Int, instances: Int, bin: String) async throws {
    // The limit: spawning and reaping the same number of processes from here, one after another.
    let t0 = now()
    for _ in 0..<instances {
        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
        defer { argv.forEach { free($0) } }
        guard posix_spawn(&pid, "/bin/true", nil, nil, argv, environ) == 0 else { throw AgentError("posix_spawn failed") }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }
    let spawnLimit = now() - t0
    let net = try LoopbackNetwork(n: agents, bin: bin, perNode: { _ in "handoff_members = 3\n" })
    defer { net.stop() }
    try net.startAll()
    try await net.waitFormed(timeout: 180)
    let perNode = (instances + agents - 1) / agents
    let start = now()
    try await deploy(net, """
        name: many
        command: [sleep, "3600"]
        replicas: \(instances)
        resources: {cpu: 1m, memory: 1Mi}
        placement: {strategy: spread, max_per_node: \(perNode)}
        """)
    _ = try await until(net, node: 1, "many", timeout: 600) { s in s.instances.filter { $0.state == "running" }.count == instances }
    let t = now() - start
    print("  scale: \(instances) process instances over \(agents) agents running in \(fmt(t, 2)) s (\(fmt(Double(instances) / t)) instances/s); "
          + "spawning and reaping \(instances) processes from one process: \(fmt(spawnLimit, 2)) s, so \(fmt(t / spawnLimit, 1))x that limit")
    // Stopped, and every instance gone, before the next part measures anything.
    _ = try await net.client(1).stopService("many")
    let stopping = now()
    while now() - stopping < 120, try await net.client(1).services().services.contains(where: { $0.name == "many" }) {
        try await Task.sleep(nanoseconds: 50_000_000)
    }
}

private func failover(kills: Int, bin: String) async throws {
    let net = try LoopbackNetwork(n: 5, bin: bin, perNode: { _ in "handoff_members = 5\n" })
    defer { net.stop() }
    try net.startAll()
    try await net.waitFormed(timeout: 120)
    var ids: [String: Int] = [:]
    for i in 1...5 { if let v = await net.status(i) { ids[v.node] = i } }
    try await deploy(net, """
        name: web
        command: [sleep, "3600"]
        replicas: 3
        resources: {cpu: 10m, memory: 8Mi}
        placement: {strategy: spread, max_per_node: 1}
        """)
    _ = try await until(net, node: 1, "web", timeout: 60) { $0.serving == 3 }
    try await Task.sleep(nanoseconds: 11_000_000_000)  // past the members' probe grace (see below)
    var times: [Double] = [], answered: [Double] = []
    for k in 1...kills {
        let s = try await net.client(ids.values.min()!).services().services.first { $0.name == "web" }!
        guard let victim = s.instances.first.flatMap({ ids[$0.node] }) else { throw AgentError("instance 0 of web is not placed") }
        let observer = (1...5).first { $0 != victim }!
        let deadNode = s.instances[0].node
        let killed = now()
        net.kill9(victim)
        var answering: Double?
        let t = try await until(net, node: observer, "web", timeout: 60) { s in
            // What DNS names: serving instances, none on the dead node (its agent's detector dropped it).
            let serving = s.instances.filter(\.serving)
            if answering == nil && !serving.isEmpty && !serving.contains(where: { $0.node == deadNode }) { answering = now() - killed }
            return s.instances.filter { $0.serving && $0.node != deadNode }.count == 3
        }
        times.append(t)
        answered.append(answering ?? t)
        print("  failover \(k): node n\(victim) killed; the service answers only from live nodes after \(fmt(answering ?? t, 2)) s, "
              + "3 instances running on live nodes after \(fmt(t, 2)) s")
        try net.start(victim)
        try await net.waitFormed(timeout: 120)
        // A member is probed only once it has been one for probeGraceSeconds (10 s): a kill sooner
        // after its (re)admission would measure that grace, not failover. Pace the kills past it.
        try await Task.sleep(nanoseconds: 11_000_000_000)
    }
    print("  over \(kills) kills: answering only from live nodes: median \(fmt(median(answered), 2)) s, max \(fmt(answered.max() ?? 0, 2)) s "
          + "(goal < 3 s: \(fmt(median(answered) / 3, 2))x the goal); replicas restored: median \(fmt(median(times), 2)) s, max \(fmt(times.max() ?? 0, 2)) s. "
          + "Nomad's defaults take ~10 s+ to reschedule, Kubernetes ~5 min (not run here)")
}
