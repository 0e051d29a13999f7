import Foundation
import MyceliumAPI
@testable import MyceliumAgent
import ServiceRuntime
import XCTest

/// Real `myceliumd` processes on loopback, driven through the real `mycelium` CLI and the agents'
/// local API. Each cluster lives in its own temporary directory and kills what it started.
final class AgentCluster {
    let dir: String
    let basePort: Int
    /// 32 ports from basePort: node nK listens on +K, other names (x1) on +20+K; tests may use +10…+19.
    let ports: PortBlock
    private let lock = NSLock()
    private var shutDown = false
    var processes: [String: Process] = [:]
    var seedDirs: [String] = []
    /// Where node `n` listens (loopback unless a test puts nodes in namespaces).
    var listenHost: (String) -> String = { _ in "127.0.0.1" }
    /// The network namespace node `n` runs in, if any.
    var netns: ((String) -> String)?
    /// Enter it with `nsenter --net` (the host's /sys, with its cgroup mounts, stays visible: what a
    /// real host's agent sees) instead of `ip netns exec` (which mounts a /sys of the namespace).
    var enterNetOnly = false
    /// The daemon binary node `n` runs (the test-only `myceliumd-byzantine` for a liar).
    var daemon: (String) -> String = { _ in "myceliumd" }
    /// Extra configuration lines for node `n`.
    var extraConfig: (String) -> String = { _ in "" }

    static var binDir: String {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("myceliumd").path) && dir.path != "/" {
            dir = dir.deletingLastPathComponent()
        }
        return dir.path
    }

    init() throws {
        ports = try PortBlock()
        basePort = ports.base
        dir = NSTemporaryDirectory() + "myc-agents-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        LiveClusters.shared.add(self)
    }

    deinit { shutdown() }

    /// Kills every agent this cluster started, waits for each, removes the directory and frees the
    /// ports. Idempotent; run when the test finishes (see `LiveClusters`) whether it passed or not.
    func shutdown() {
        lock.lock()
        let running = Array(processes.values)
        processes = [:]
        let first = !shutDown
        shutDown = true
        lock.unlock()
        for p in running where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        for p in running { p.waitUntilExit() }
        guard first else { return }
        // Service instances die with their agent (its reaper kills them), unless the test killed the
        // reaper too (a host's namespace killed whole): their cgroups go here, before the homes.
        for n in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where FileManager.default.fileExists(atPath: dir + "/" + n + "/services") {
            // The agent's reaper outlives it while it removes the agent's instances (running podman,
            // which would recreate podman's run root after it is removed here): wait for it (10 s at most).
            if let text = try? String(contentsOfFile: dir + "/" + n + "/services/reaper.pid", encoding: .utf8),
               let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1 {
                let deadline = Date().addingTimeInterval(10)
                while Foundation.kill(pid, 0) == 0 && Date() < deadline { usleep(20_000) }  // polls for its exit
            }
            (try? ProcessRuntime.leftovers(of: dir + "/" + n + "/services"))?.kill()
            // Containers of the podman driver (with their network attachments), and podman's run root
            // (outside the home when the home's path is long).
            if let podman = PodmanRuntime.leftovers(of: dir + "/" + n + "/services/podman-instances") {
                podman.remove()
                try? FileManager.default.removeItem(atPath: podman.settings.runroot)
            }
        }
        // Service volumes an agent killed outright left mounted (its loop devices, Ceph export daemons).
        for n in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where FileManager.default.fileExists(atPath: dir + "/" + n + "/volumes/mnt") {
            VolumeMounts(volumeDirectory: dir + "/" + n + "/volumes").cleanup()
        }
        // A closure stored here may capture the cluster; dropping them breaks that cycle.
        listenHost = { _ in "127.0.0.1" }
        netns = nil
        extraConfig = { _ in "" }
        // MYCELIUM_KEEP_TEST_STATE=1 keeps the homes and logs for a post-mortem.
        if ProcessInfo.processInfo.environment["MYCELIUM_KEEP_TEST_STATE"] == nil { try? FileManager.default.removeItem(atPath: dir) }
        ports.release()
        LiveClusters.shared.remove(self)
    }

    func enter(_ ns: String) -> [String] { enterNetOnly ? ["nsenter", "--net=/run/netns/" + ns] : ["ip", "netns", "exec", ns] }

    func home(_ n: String) -> String { dir + "/" + n }
    func port(_ n: String) -> Int { basePort + (n.hasPrefix("n") ? 0 : 20) + (Int(n.dropFirst()) ?? 0) }

    @discardableResult
    func cli(_ args: [String], netns: String? = nil) throws -> (Int32, String) {
        let p = Process()
        if let netns {
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = enter(netns) + [Self.binDir + "/mycelium"] + args
        } else {
            p.executableURL = URL(fileURLWithPath: Self.binDir + "/mycelium")
            p.arguments = args
        }
        let o = Pipe()
        p.standardOutput = o
        p.standardError = o
        try p.run()
        let out = o.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self))
    }

    func writeConfig(_ n: String, extra: String = "") throws {
        var text = "home = \"\(home(n))\"\nlisten = \"\(listenHost(n)):\(port(n))\"\n"
        if !seedDirs.isEmpty { text += "seed_dirs = [" + seedDirs.map { "\"\($0)\"" }.joined(separator: ", ") + "]\n" }
        let extras = extraConfig(n) + extra
        // Agents on one loopback would all ask for DNS's default port; only tests that ask get DNS.
        if !extras.contains("dns_listen") { text += "dns_listen = \"\"\n" }
        text += extras
        try text.write(toFile: home(n) + ".conf", atomically: true, encoding: .utf8)
    }

    /// The environment of every agent: it stops when this test process dies, however it dies.
    static var agentEnvironment: [String: String] {
        ProcessInfo.processInfo.environment.merging(["MYCELIUM_EXIT_WITH_PARENT": "1"]) { $1 }
    }

    func start(_ n: String) throws {
        // Starting a name that still runs would lose track of the old process; stop it first.
        if let old = processes[n], old.isRunning {
            kill(old.processIdentifier, SIGKILL)
            old.waitUntilExit()
        }
        let p = Process()
        p.environment = Self.agentEnvironment
        if let netns {
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = enter(netns(n)) + [Self.binDir + "/" + daemon(n), "--config", home(n) + ".conf"]
        } else {
            p.executableURL = URL(fileURLWithPath: Self.binDir + "/" + daemon(n))
            p.arguments = ["--config", home(n) + ".conf"]
        }
        let log = FileHandle(forWritingAtPath: home(n) + ".log") ?? {
            FileManager.default.createFile(atPath: home(n) + ".log", contents: nil)
            return FileHandle(forWritingAtPath: home(n) + ".log")!
        }()
        log.seekToEndOfFile()
        p.standardOutput = log
        p.standardError = log
        // An agent that dies on its own says how in its log (a test kill shows as signal 9 or 15).
        let logPath = home(n) + ".log"
        p.terminationHandler = { proc in
            let how = proc.terminationReason == .uncaughtSignal ? "signal \(proc.terminationStatus)" : "status \(proc.terminationStatus)"
            if let h = FileHandle(forWritingAtPath: logPath) { h.seekToEndOfFile(); h.write(Data("[harness] myceliumd exited with \(how)\n".utf8)); try? h.close() }
        }
        lock.lock()
        defer { lock.unlock() }
        guard !shutDown else { throw AgentTestError("cluster \(dir) was already shut down; cannot start \(n)") }
        try p.run()
        processes[n] = p
    }

    func kill9(_ n: String) {
        guard let p = processes[n] else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        processes[n] = nil
    }

    /// Sends `sig` to n's agent (SIGSTOP freezes it: alive to the kernel, silent to the network).
    func signal(_ n: String, _ sig: Int32) {
        guard let p = processes[n] else { return }
        kill(p.processIdentifier, sig)
    }

    /// SIGTERM, and SIGKILL if the agent has not stopped within 10 s (then the test fails: a
    /// graceful stop must finish).
    func terminate(_ n: String, file: StaticString = #filePath, line: UInt = #line) {
        guard let p = processes[n] else { return }
        kill(p.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(10)
        while p.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }  // polls the exit, bounded
        if p.isRunning {
            XCTFail("\(n) did not stop within 10 s of SIGTERM", file: file, line: line)
            kill(p.processIdentifier, SIGKILL)
        }
        p.waitUntilExit()
        processes[n] = nil
    }

    /// Creates the network on n1 and starts it (`validity`: the certificates' lifetime, e.g. "60s").
    func createNetwork(validity: String? = nil) throws {
        XCTAssertEqual(try cli(["network", "create", "--home", home("n1")] + (validity.map { ["--validity", $0] } ?? [])).0, 0)
        try writeConfig("n1")
        try start("n1")
    }

    /// Invites `n` (with `roles`, if given), has it join through `inviter`, and starts its agent.
    func join(_ n: String, inviter: String = "n1", roles: String? = nil, startAgent: Bool = true) throws {
        func invite() throws -> String {
            let (code, token) = try cli(["invite", "create", "--home", home(inviter), "--address", "\(listenHost(inviter)):\(port(inviter))"]
                                        + (roles.map { ["--roles", $0] } ?? []))
            XCTAssertEqual(code, 0, token)
            return token.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        var token = try invite()
        var lastError = ""
        for _ in 0..<100 {
            let (c, out) = try cli(["node", "join", "--home", home(n), token], netns: netns?(n))
            if c == 0 {
                try writeConfig(n)
                if startAgent { try start(n) }
                return
            }
            // An attempt that gave up waiting (a loaded machine) may still have been admitted, which
            // used the invite: join again with a new one, as an operator would.
            if out.contains("already been used") { token = try invite() }
            lastError = out
            Thread.sleep(forTimeInterval: 0.1)  // polls until the inviter accepts joins, 100 tries at most
        }
        throw AgentError("join of \(n) failed: \(lastError)")
    }

    func status(_ n: String) async -> StatusResponse? {
        try? await AgentClient(socket: home(n) + "/agent.sock").status()
    }

    /// Polls until `condition` holds for the statuses of `nodes`, or fails the test after `timeout`.
    func waitUntil(_ what: String, nodes: [String], timeout: Double = 45, file: StaticString = #filePath, line: UInt = #line,
                   _ condition: ([StatusResponse]) -> Bool) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        var last: [StatusResponse] = []
        while Date() < deadline {
            var views: [StatusResponse] = []
            for n in nodes { if let s = await status(n) { views.append(s) } }
            last = views
            if views.count == nodes.count && condition(views) { return }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        let summary = last.map { "\($0.node) role=\($0.role) leader=\($0.leader) epoch=\($0.epoch) events=\($0.events.suffix(4))" }
        XCTFail("timed out waiting for \(what):\n" + summary.joined(separator: "\n"), file: file, line: line)
        throw AgentError("timed out: \(what)")
    }

    /// Every view has the same leader and epoch, is distributed, and counts `alive` live members.
    static func formed(_ alive: Int) -> ([StatusResponse]) -> Bool {
        { views in
            let leaders = Set(views.map(\.leader))
            let epochs = Set(views.map(\.epoch))
            return leaders.count == 1 && !leaders.contains("none") && epochs.count == 1
                && views.allSatisfy { $0.phase == "distributed" }
                && views.allSatisfy { v in v.members.filter(\.isAlive).count == alive }
        }
    }
}

func members(_ v: StatusResponse) -> [MemberInfo] { v.members }
func epochIndex(_ v: StatusResponse) -> Int { Int(v.epoch.split(separator: ".").last ?? "0") ?? 0 }
