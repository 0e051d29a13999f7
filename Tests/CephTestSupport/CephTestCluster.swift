// A real Ceph cluster for a test suite: scripts/ceph up in a temporary directory in the class setUp,
// down in the class tearDown (also when a test failed). Shared by MyceliumRBDTests and
// StorageDriverTests. If the cluster cannot start, `require()` throws the script's own reason, so
// every test FAILS with it (never a skip).

import Foundation
import Glibc
import MyceliumRBD

/// The cluster of this test run.
public struct TestCluster: Sendable {
    public let dir: String
    public let conf: String
    public let keyring: String
    public var config: CephClientConfig { CephClientConfig(confFile: conf, clientName: "client.admin", keyring: keyring) }
}

public enum CephTestCluster {
    static let repoRoot: String = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path
    static var script: String { repoRoot + "/scripts/ceph" }

    public struct NoCluster: Error, CustomStringConvertible { public let description: String }

    /// Brings a cluster of `osds` OSDs up for `suite`; the cluster, or why there is none.
    public static func up(suite: String, osds: Int = 3) -> Result<TestCluster, NoCluster> {
        let base = ProcessInfo.processInfo.environment["TMPDIR"].map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 } ?? "/tmp"
        let dir = "\(base)/mycelium-ceph-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let t0 = Date()
        let (rc, out, err) = run(["up", dir], env: ["MYCELIUM_CEPH_OSDS": String(osds)])
        guard rc == 0 else {
            // The script's own verdict first ("ceph: timed out ... waiting for ..."), then the daemon logs.
            let verdict = err.split(separator: "\n").filter { $0.hasPrefix("ceph: ") }.joined(separator: "; ")
            _ = run(["down", dir])
            return .failure(NoCluster(description: "scripts/ceph up \(dir) failed (exit \(rc)): \(verdict)\n\(err.suffix(2000))"))
        }
        var kv: [String: String] = [:]
        for line in out.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { kv[String(parts[0])] = String(parts[1]) }
        }
        guard let conf = kv["conf"], let keyring = kv["keyring"] else {
            _ = run(["down", dir])
            return .failure(NoCluster(description: "scripts/ceph up printed no conf=/keyring= lines: \(out)"))
        }
        print("\(suite): Ceph cluster (\(osds) OSDs) up in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s at \(dir)")
        return .success(TestCluster(dir: dir, conf: conf, keyring: keyring))
    }

    /// Takes the cluster down and says so when something stays behind.
    public static func down(_ cluster: TestCluster?, suite: String) {
        guard let dir = cluster?.dir else { return }
        let (rc, _, err) = run(["down", dir])
        if rc != 0 { print("\(suite): scripts/ceph down \(dir) failed: \(err)") }
        if FileManager.default.fileExists(atPath: dir) { print("\(suite): \(dir) still exists after down") }
    }

    /// Runs scripts/ceph with ARGS; (exit status, stdout, stderr). Output goes through files, not
    /// pipes: the daemons it starts outlive it, and Foundation's Process did not see the script exit
    /// once they had (waitUntilExit hung), so this spawns and waits itself, like VMHarness.runTool.
    public static func run(_ args: [String], env extra: [String: String] = [:]) -> (Int32, String, String) {
        let base = NSTemporaryDirectory() + "ceph-run-\(getpid())-\(UUID().uuidString)"
        let outPath = base + ".out", errPath = base + ".err"
        defer { unlink(outPath); unlink(errPath) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let argv = ([script] + args).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var envList = ProcessInfo.processInfo.environment
        for (k, v) in extra { envList[k] = v }
        let envp = envList.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, script, &actions, nil, argv, envp)
        guard rc == 0 else { return (-1, "", "cannot run \(script): \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exit: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (exit, (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "", (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
    }
}

/// What a suite's class setUp got: the cluster, or why there is none.
public typealias CephTestClusterResult = Result<TestCluster, CephTestCluster.NoCluster>

extension Optional where Wrapped == CephTestClusterResult {
    /// The cluster, or an error (the test FAILS, never skips) saying why there is none.
    public func require() throws -> TestCluster {
        guard let result = self else { throw CephTestCluster.NoCluster(description: "no Ceph cluster: class setUp did not run") }
        do { return try result.get() } catch { throw CephTestCluster.NoCluster(description: "no Ceph cluster: \(error.description)") }
    }

    /// The cluster to take down, if one came up.
    public var upCluster: TestCluster? { try? self?.get() }
}

