// Shared helpers for the CNI tests: root check, running processes, throwaway network namespaces, the built
// plugin binary and the compiled BPF object.

import Foundation
import XCTest
@testable import MyceliumCNI

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// These tests create namespaces, veths and BPF pins: they need root. Not being root is a failure, never a skip.
func requireRoot(file: StaticString = #filePath, line: UInt = #line) throws {
    if getuid() != 0 {
        XCTFail("MyceliumCNITests must run as root (they create network namespaces, veths and BPF pins)", file: file, line: line)
        throw TestFailure("not root")
    }
}

struct ProcessResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

let spawnLock = NSLock()

/// Runs a program to completion with optional stdin and extra environment. posix_spawn + poll + waitpid rather
/// than Foundation.Process: podman's conmon double-forks and Process's child monitoring was seen to hang on it.
@discardableResult
func runProcess(_ path: String, _ args: [String] = [], env: [String: String]? = nil, stdin: String? = nil,
                cwd: String? = nil) throws -> ProcessResult {
    _ = signal(SIGPIPE, SIG_IGN)  // a child that exits without reading stdin must not kill the test
    var inFds: [Int32] = [0, 0], outFds: [Int32] = [0, 0], errFds: [Int32] = [0, 0]
    // A working directory goes through the shell (posix_spawn_file_actions_addchdir_np is not imported).
    let (program, arguments) = cwd.map { ("/bin/sh", ["-c", "cd \"$0\" && exec \"$@\"", $0, path] + args) } ?? (path, args)
    let argv = ([program] + arguments).map { strdup($0) } + [nil]
    let environment = env ?? ProcessInfo.processInfo.environment
    let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        argv.forEach { free($0) }
        envp.forEach { free($0) }
    }
    // Pipes are created and marked close-on-exec under the same lock as posix_spawn, so a concurrent spawn never
    // inherits another run's pipe (which would hold off that run's end-of-file).
    var pid: pid_t = 0
    let rc: Int32 = spawnLock.withLock {
        guard pipe(&inFds) == 0, pipe(&outFds) == 0, pipe(&errFds) == 0 else { return errno }
        for fd in inFds + outFds + errFds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inFds[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outFds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errFds[1], 2)
        let rc = posix_spawn(&pid, program, &actions, nil, argv, envp)
        close(inFds[0]); close(outFds[1]); close(errFds[1])
        return rc
    }
    guard rc == 0 else {
        close(inFds[1]); close(outFds[0]); close(errFds[0])
        throw TestFailure("spawning \(path): \(String(cString: strerror(rc)))")
    }
    // Inputs here are small (a few KiB, well under the pipe buffer), so write them before reading.
    if let stdin {
        let bytes = Array(stdin.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(inFds[1], $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            off += n
        }
    }
    close(inFds[1])
    var out: [UInt8] = [], err: [UInt8] = []
    var fds = [pollfd(fd: outFds[0], events: Int16(POLLIN), revents: 0), pollfd(fd: errFds[0], events: Int16(POLLIN), revents: 0)]
    var open = 2
    var chunk = [UInt8](repeating: 0, count: 65536)
    while open > 0 {
        if poll(&fds, 2, -1) < 0 {
            if errno == EINTR { continue }
            break
        }
        for i in 0..<2 where fds[i].fd >= 0 && fds[i].revents != 0 {
            let n = chunk.withUnsafeMutableBytes { read(fds[i].fd, $0.baseAddress, $0.count) }
            if n > 0 {
                if i == 0 { out += chunk[0..<n] } else { err += chunk[0..<n] }
            } else if n == 0 || errno != EINTR {
                close(fds[i].fd)
                fds[i].fd = -1
                open -= 1
            }
        }
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    // WIFEXITED / WEXITSTATUS, spelled out (the macros are not imported).
    let exit: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    return ProcessResult(status: exit, stdout: String(decoding: out, as: UTF8.self), stderr: String(decoding: err, as: UTF8.self))
}

/// Runs a shell command; throws with its output when it fails.
@discardableResult
func sh(_ command: String, allowFailure: Bool = false) throws -> String {
    let r = try runProcess("/bin/sh", ["-c", command])
    if r.status != 0 && !allowFailure {
        throw TestFailure("`\(command)` exited \(r.status): \(r.stderr)\(r.stdout)")
    }
    return r.stdout
}

enum Paths {
    /// Directory of the test bundle, where SwiftPM also puts the executables (.build/debug).
    static var buildDir: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        // swift test runs `<Pkg>PackageTests.xctest` (a file on Linux); be tolerant of a bundle directory too.
        if dir.lastPathComponent.hasSuffix(".xctest") { dir = dir.deletingLastPathComponent() }
        return dir.path
    }

    static var plugin: String { buildDir + "/mycelium-cni" }

    /// The repository (resolving the dev package's symlinks back to the real tree).
    static var repo: String {
        let real = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath()
        return real.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    static var testsDir: String { URL(fileURLWithPath: #filePath).resolvingSymlinksInPath().deletingLastPathComponent().path }

    /// The compiled datapath; built with `make -C CSources/bpf` when missing. MYCELIUM_BPF_OBJECT overrides.
    static func bpfObject() throws -> String {
        if let p = ProcessInfo.processInfo.environment["MYCELIUM_BPF_OBJECT"], !p.isEmpty { return p }
        let path = repo + "/CSources/bpf/build/datapath.bpf.o"
        if !FileManager.default.fileExists(atPath: path) { try sh("make -C '\(repo)/CSources/bpf'") }
        guard FileManager.default.fileExists(atPath: path) else { throw TestFailure("no BPF object at \(path)") }
        return path
    }
}

/// Unique names per test run.
enum Unique {
    nonisolated(unsafe) static var counter = 0
    static func next() -> Int {
        counter += 1
        return counter
    }
}

/// A network namespace that lives for one test (`ip netns add myc-cni-test-<pid>-N`).
final class TestNetns: @unchecked Sendable {
    let name: String
    var path: String { "/run/netns/" + name }

    init() throws {
        name = "myc-cni-test-\(getpid())-\(Unique.next())"
        try sh("ip netns add \(name)")
        try sh("ip -n \(name) link set lo up")
    }

    func exec(_ command: String, allowFailure: Bool = false) throws -> String {
        try sh("ip netns exec \(name) \(command)", allowFailure: allowFailure)
    }

    func json(_ ipArgs: String) throws -> JSON {
        try JSON.parse(try sh("ip -n \(name) -j \(ipArgs)"))
    }

    deinit { _ = try? sh("ip netns del \(name)", allowFailure: true) }
}

/// A private environment for plugin runs: IPAM state dir, BPF pin dir; torn down at the end.
final class PluginSandbox: @unchecked Sendable {
    let id = "\(getpid())-\(Unique.next())"
    let dataDir: String
    let pinDir: String
    let bpfObject: String
    let network: String

    init(network: String = "cnitest") throws {
        dataDir = NSTemporaryDirectory() + "myc-cni-ipam-\(id)"
        pinDir = "/sys/fs/bpf/mycelium-cnitest-\(id)"
        bpfObject = try Paths.bpfObject()
        self.network = network
        try sh("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf")
    }

    /// A plugin configuration (one element of a conflist, as the runtime passes it).
    func config(version: String = "1.1.0", subnet: String = "10.77.0.0/24", extra: [(String, JSON)] = [],
                ipamExtra: [(String, JSON)] = []) -> JSON {
        .object([
            ("cniVersion", .string(version)),
            ("name", .string(network)),
            ("type", .string("mycelium-cni")),
            ("bpfObject", .string(bpfObject)),
            ("pinDir", .string(pinDir)),
            ("ipam", .object([("subnet", .string(subnet)), ("dataDir", .string(dataDir))] + ipamExtra)),
        ] + extra)
    }

    var ipamDir: String { dataDir + "/" + network }

    /// Addresses currently allocated on disk.
    func allocatedIPs() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: ipamDir)) ?? []).filter { IPv4Address($0) != nil }.sorted()
    }

    func invoke(_ command: String, config: JSON?, containerID: String? = nil, netns: String? = nil, ifname: String? = "eth0",
                stdin: String? = nil, extraEnv: [String: String] = [:]) throws -> PluginRun {
        var env: [String: String] = ["CNI_COMMAND": command, "CNI_PATH": Paths.buildDir, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]
        if let containerID { env["CNI_CONTAINERID"] = containerID }
        if let netns { env["CNI_NETNS"] = netns }
        if let ifname { env["CNI_IFNAME"] = ifname }
        env.merge(extraEnv) { $1 }
        let start = DispatchTime.now()
        let r = try runProcess(Paths.plugin, env: env, stdin: stdin ?? config?.serialized ?? "")
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e6
        return PluginRun(result: r, milliseconds: elapsed)
    }

    /// Host veths (`myc…`) whose name belongs to this attachment.
    static func hostVethExists(containerID: String, ifname: String = "eth0") throws -> Bool {
        let name = CNIPlugin.hostVethName(containerID: containerID, ifname: ifname)
        return try sh("ip -o link show").contains(" \(name)@") || (try sh("ip -o link show")).contains(" \(name):")
    }

    deinit {
        _ = try? Datapath(pinDir: pinDir).unload()
        _ = try? sh("rm -rf '\(pinDir)' '\(dataDir)'", allowFailure: true)
    }
}

struct PluginRun {
    let result: ProcessResult
    let milliseconds: Double
    var status: Int32 { result.status }
    var json: JSON? { try? JSON.parse(result.stdout) }

    /// The error code of a failed run, checking the spec's error shape on the way.
    func errorCode(file: StaticString = #filePath, line: UInt = #line) -> Int? {
        XCTAssertNotEqual(status, 0, "expected a failure, got: \(result.stdout)", file: file, line: line)
        guard let j = json else {
            XCTFail("stdout is not JSON: \(result.stdout) / stderr: \(result.stderr)", file: file, line: line)
            return nil
        }
        XCTAssertNotNil(j["cniVersion"]?.stringValue, "error without cniVersion", file: file, line: line)
        XCTAssertFalse(j["msg"]?.stringValue?.isEmpty ?? true, "error without msg", file: file, line: line)
        return j["code"]?.intValue
    }
}
