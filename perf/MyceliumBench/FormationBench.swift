import Foundation
import MyceliumAgent
import MyceliumAPI
import MyceliumCore
import MyceliumIdentity

/// `mycelium-bench formation [--sizes 3,10,50] [--rounds N]`
///
/// For each size: pre-provisions N node homes (keys, genesis-issued certificates, the genesis
/// node's address), starts N `myceliumd` processes at once on loopback, and measures the time from
/// the first process start until every member reports the same primary spore (same epoch and
/// leader, phase distributed, N alive members). Reports the median and the ratio to the goal
/// (10 nodes in under 1 s). Build everything in release first: `swift build -c release`.
func runFormationBench(_ args: [String]) async throws {
    var sizes = [3, 10, 50]
    var rounds = 3
    if let i = args.firstIndex(of: "--sizes"), i + 1 < args.count { sizes = args[i + 1].split(separator: ",").compactMap { Int($0) } }
    if let i = args.firstIndex(of: "--rounds"), i + 1 < args.count, let n = Int(args[i + 1]) { rounds = n }
    let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
    guard FileManager.default.isExecutableFile(atPath: bin + "/myceliumd") else {
        print("formation: \(bin)/myceliumd not found; run 'swift build -c release' first")
        return
    }
    print("formation benchmark on \(machineLine()), \(rounds) rounds per size")
    for n in sizes {
        var times: [Double] = []
        for r in 1...rounds {
            let t = try await formOnce(n: n, bin: bin)
            times.append(t)
            print("  \(n) nodes, round \(r): \(fmt(t, 2)) s")
        }
        let m = median(times)
        print("  \(n) nodes: median \(fmt(m, 2)) s" + (n == 10 ? "  (goal < 1 s: \(fmt(m / 1.0, 2))x the goal)" : ""))
    }
}

private func formOnce(n: Int, bin: String) async throws -> Double {
    let net = try LoopbackNetwork(n: n, bin: bin)
    defer { net.stop() }
    let start = now()
    try net.startAll()
    try await net.waitFormed(timeout: 120)
    let elapsed = now() - start
    // MYCELIUM_BENCH_EVENTS=1 prints what the genesis node did, with its timestamps.
    if ProcessInfo.processInfo.environment["MYCELIUM_BENCH_EVENTS"] != nil, let v = await net.status(1) {
        for e in v.events { print("    n1 \(e)") }
    }
    return elapsed
}

/// N pre-provisioned agents (keys, genesis-issued certificates, the genesis node's address), started
/// as real `myceliumd` processes; removed and killed by `stop()`. On loopback, or each in a network
/// namespace of its own (`mycelium-bench vm`: the VM hosts of scripts/vmhost).
final class LoopbackNetwork {
    let n: Int
    let bin: String
    let dir = NSTemporaryDirectory() + "myc-bench-\(UUID().uuidString.prefix(8))"
    var procs: [Process] = []
    /// Node i listens on base + i: free ports below the kernel's ephemeral range (see BenchHygiene).
    let base: Int
    /// Where node i listens, and the network namespace it runs in (nil: this one).
    let listenHost: (Int) -> String
    let netns: ((Int) -> String)?
    /// Each agent's output goes to `dir/nI.log` (for a post-mortem while the run is alive).
    let keepLogs: Bool

    convenience init(n: Int, bin: String, extraConfig: String = "") throws {
        try self.init(n: n, bin: bin, perNode: { _ in extraConfig })
    }

    /// `perNode(i)` gives node i (1-based) extra configuration lines.
    init(n: Int, bin: String, perNode: (Int) -> String, listenHost: @escaping (Int) -> String = { _ in "127.0.0.1" },
         netns: ((Int) -> String)? = nil, keepLogs: Bool = false) throws {
        self.n = n
        self.bin = bin
        self.listenHost = listenHost
        self.netns = netns
        self.keepLogs = keepLogs
        base = try BenchHygiene.ports(n + 1)
        BenchHygiene.ownDirectory(dir)
        let genesis = SigningKey()
        let issued = Int64(Date().timeIntervalSince1970)
        for i in 1...n {
            let home = dir + "/n\(i)"
            try AtomicFile.makeDirectory(home)
            let key = SigningKey()
            try KeyFile.write(key, to: home + "/node.key")
            let cert = MembershipCertificate.issue(by: genesis, nodeID: NodeID(publicKey: key.publicKey), nodeKey: key.publicKey,
                                                   roles: i == 1 ? [.member, .sclerotiumEligible, .inviter] : [.member, .sclerotiumEligible],
                                                   serial: UInt64(i), issuedAt: issued - 5, validFor: 3600)
            try ChecksummedFile.write(kind: FileKind.membershipCertificate, payload: cert.encoded(), to: home + "/node.cert")
            if i == 1 {
                try KeyFile.write(genesis, to: home + "/network.key", kind: FileKind.networkSecretKey)
            } else {
                try AtomicFile.write(Array("\(listenHost(1)):\(base + 1)".utf8), to: home + "/join.peers")
            }
            try "home = \"\(home)\"\nlisten = \"\(listenHost(i)):\(base + i)\"\nlog_level = \"warning\"\ndns_listen = \"\"\n\(perNode(i))"
                .write(toFile: home + ".conf", atomically: true, encoding: .utf8)
        }
    }

    func startAll() throws {
        for i in 1...n { try start(i) }
    }

    /// Starts node i (1-based), again if it was killed.
    func start(_ i: Int) throws {
        do {
            let p = Process()
            if let netns {
                p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
                p.arguments = ["netns", "exec", netns(i), bin + "/myceliumd", "--config", dir + "/n\(i).conf"]
            } else {
                p.executableURL = URL(fileURLWithPath: bin + "/myceliumd")
                p.arguments = ["--config", dir + "/n\(i).conf"]
            }
            p.environment = BenchHygiene.agentEnvironment
            if keepLogs, FileManager.default.createFile(atPath: dir + "/n\(i).log", contents: nil),
               let log = FileHandle(forWritingAtPath: dir + "/n\(i).log") {
                p.standardOutput = log
                p.standardError = log
            } else {
                p.standardOutput = FileHandle.nullDevice
                p.standardError = FileHandle.nullDevice
            }
            try BenchHygiene.run(p)
            if procs.count >= i { procs[i - 1] = p } else { procs.append(p) }
        }
    }

    /// SIGKILLs node i (its service reaper then kills its instances).
    func kill9(_ i: Int) {
        let p = procs[i - 1]
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        BenchHygiene.forget(p)
    }

    /// The local API of node i (1-based).
    func client(_ i: Int) -> AgentClient { AgentClient(socket: dir + "/n\(i)/agent.sock") }

    func status(_ i: Int) async -> StatusResponse? { try? await client(i).status() }

    /// Every member reports the same primary spore: same epoch and leader, distributed, N alive.
    func waitFormed(timeout: Double) async throws {
        let start = now()
        while now() - start < timeout {
            var views: [StatusResponse] = []
            for i in 1...n {
                guard let v = await status(i) else { break }
                views.append(v)
            }
            if views.count == n,
               Set(views.map(\.epoch)).count == 1, Set(views.map(\.leader)).count == 1,
               views.allSatisfy({ $0.phase == "distributed" }),
               views.allSatisfy({ $0.members.filter(\.isAlive).count == n }) {
                return
            }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        var views: [StatusResponse] = []
        for i in 1...n { if let v = await status(i) { views.append(v) } }
        let alive = views.map { $0.members.filter(\.isAlive).count }
        let why = "\(views.count)/\(n) agents answer; epochs \(Set(views.map(\.epoch)).sorted()); "
            + "leaders \(Set(views.map(\.leader)).count); phases \(Set(views.map(\.phase)).sorted()); "
            + "alive counts \(Set(alive).sorted()); exited: \(procs.enumerated().filter { !$0.element.isRunning }.map { "n\($0.offset + 1) (\($0.element.terminationReason == .uncaughtSignal ? "signal" : "status") \($0.element.terminationStatus))" })"
        if let v = await status(1) { for e in v.events.suffix(12) { print("    n1 \(e)") } }
        throw AgentError("\(n) nodes did not form within \(Int(timeout)) s: \(why)")
    }

    func stop() {
        for p in procs where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        for p in procs { p.waitUntilExit(); BenchHygiene.forget(p) }
        procs = []
        try? FileManager.default.removeItem(atPath: dir)
        BenchHygiene.disownDirectory(dir)
    }
}
