// The real-component harness: hosts made by scripts/vmhost (a network namespace each, with its own
// libvirtd and virtlogd), the guest built by scripts/vm-guest, and helpers to read its serial log.
// Shared by the tests that run VMs (through VMTestSupport, which adds their XCTest glue) and by
// `mycelium-bench vm`; no XCTest here, so the release benchmark can link it. Never in a shipped product.

import Endophyte
import Foundation

public struct HarnessFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

public enum Repo {
    /// The repository root (through a dev package's symlinks back to the real tree).
    public static var root: String {
        // Tests/VMHarness/Harness.swift: three levels below the root.
        URL(fileURLWithPath: #filePath).resolvingSymlinksInPath()
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }
    public static var vmhost: String { root + "/scripts/vmhost" }
}

/// Runs a program to completion; its output goes through a file (a daemon it starts may keep
/// inherited descriptors open, which would hold off the end of a pipe).
@discardableResult
public func runTool(_ args: [String], allowFailure: Bool = false) throws -> String {
    let out = NSTemporaryDirectory() + "vmhost-run-\(getpid())-\(UUID().uuidString)"
    defer { unlink(out) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let argv = args.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, args[0], &actions, nil, argv, environ)
    guard rc == 0 else { throw HarnessFailure("cannot run \(args[0]): \(String(cString: strerror(rc)))") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let output = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
    let exit: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    if exit != 0 && !allowFailure { throw HarnessFailure("`\(args.joined(separator: " "))` exited \(exit):\n\(output)") }
    return output
}

/// Waits for `condition` with a deadline (never a fixed sleep standing in for it).
public func waitUntil(_ what: String, timeout: Double, _ condition: () throws -> Bool) throws {
    let deadline = monotonicSeconds() + timeout
    while true {
        if try condition() { return }
        if monotonicSeconds() > deadline { throw HarnessFailure("timed out after \(timeout) s waiting for \(what)") }
        usleep(20_000)
    }
}

/// The dirty-page preload shim, built from the tree like CSources/CDirtyPages/shim/qemu-selftest.sh
/// does (scripts/build-shim), into `dir`.
public func buildShim(into dir: String) throws -> String {
    let lib = dir + "/libmdp_preload.so"
    try runTool([Repo.root + "/scripts/build-shim", lib])
    return lib
}

/// The test guest (scripts/vm-guest), built once per machine into its cache.
public enum Guest {
    public static let files: Result<(kernel: String, initrd: String), HarnessFailure> = {
        do {
            let out = try runTool([Repo.root + "/scripts/vm-guest"])
            var kernel = "", initrd = ""
            for line in out.split(separator: "\n") {
                if line.hasPrefix("KERNEL=") { kernel = String(line.dropFirst(7)) }
                if line.hasPrefix("INITRD=") { initrd = String(line.dropFirst(7)) }
            }
            guard !kernel.isEmpty, !initrd.isEmpty else { return .failure(HarnessFailure("scripts/vm-guest printed no paths:\n\(out)")) }
            return .success((kernel, initrd))
        } catch {
            return .failure(HarnessFailure("\(error)"))
        }
    }()
    public static let cmdline = "console=ttyS0 quiet panic=-1"
}

/// Names unique to this test process (netns names, bridge, domains' files).
public enum Unique {
    nonisolated(unsafe) public static var counter = 0
    public static func next() -> Int {
        counter += 1
        return counter
    }
    /// Prefix of every host this process makes: `down-all` of it is the safety net. scripts/test
    /// sets MYCELIUM_VMHOST_PREFIX so its own trap can remove them even if this process is killed.
    public static var processPrefix: String {
        if let p = ProcessInfo.processInfo.environment["MYCELIUM_VMHOST_PREFIX"], !p.isEmpty, p.utf8.count <= 14 { return p }
        return "vmt\(getpid())x"
    }
}

/// Simulated VM hosts for one test or benchmark run, torn down by `tearDown()` (call it in a defer;
/// the tests' `TestHosts.down()` fails the test on what it reports).
open class VMHosts {
    public let prefix: String
    public let bridge: String
    public private(set) var names: [String] = []
    public let scratch: String

    /// Hosts `a`, `b`, … on one bridge at 10.231.0.1, .2, …
    public init(_ hosts: [String]) throws {
        let n = Unique.next()
        prefix = "\(Unique.processPrefix)\(n)-"
        bridge = "vmtbr\(getpid() % 100_000)x\(n)"
        scratch = NSTemporaryDirectory() + "vmhost-test-\(getpid())-\(n)"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        do {
            for (i, h) in hosts.enumerated() {
                let name = prefix + h
                names.append(name)
                try runTool([Repo.vmhost, "up", name, "10.231.0.\(i + 1)/24", bridge])
            }
        } catch {
            tearDown()
            throw error
        }
    }

    public func name(_ h: String) -> String { prefix + h }
    /// Host `h`'s address on the bridge (where its libvirtd listens on TCP, and its agent may).
    public func address(_ h: String) -> String { "10.231.0.\((names.firstIndex(of: prefix + h) ?? -1) + 1)" }
    public func uri(_ h: String) -> String { "qemu:///system?socket=\(state(h))/run/libvirt/libvirt-sock" }
    public func qemuRunDirectory(_ h: String) -> String { state(h) + "/run/libvirt/qemu" }
    /// libvirt's log of a domain's QEMU (its command line and stderr).
    public func qemuLog(_ h: String, _ domain: String) -> String { state(h) + "/log/qemu/\(domain).log" }
    public func state(_ h: String) -> String {
        (ProcessInfo.processInfo.environment["MYCELIUM_VMHOST_ROOT"] ?? "/tmp/mycelium-vmhost") + "/" + prefix + h
    }

    /// Host `h` dies at once: every process in it (daemons, QEMUs, an agent run there) gets SIGKILL
    /// and its link goes down; `down` still removes what is left.
    public func kill(_ h: String) throws { try runTool([Repo.vmhost, "kill", name(h)]) }

    /// Host `h` is cut off (its link down; everything in it runs on), or joined again.
    public func cut(_ h: String) throws { try runTool([Repo.vmhost, "cut", name(h)]) }
    public func heal(_ h: String) throws { try runTool([Repo.vmhost, "heal", name(h)]) }

    /// Everything the hosts made goes: domains, daemons, QEMUs, namespaces, the bridge, state.
    /// Returns what went wrong (empty: nothing is left).
    @discardableResult
    public func tearDown() -> [String] {
        var problems: [String] = []
        do {
            try runTool([Repo.vmhost, "down-all", prefix])
        } catch {
            problems.append("tearing down the hosts \(prefix)* failed: \(error)")
        }
        let left = ((try? runTool(["/usr/sbin/ip", "netns", "list"])) ?? "").split(separator: "\n").filter { $0.hasPrefix(prefix) }
        if !left.isEmpty { problems.append("network namespaces left behind: \(left)") }
        try? FileManager.default.removeItem(atPath: scratch)
        return problems
    }
}

/// What a guest printed on its serial port so far.
public struct SerialLog {
    /// Tags of `GUEST-READY <tag>` lines (one per boot).
    public var bootTags: [String] = []
    /// `COUNT <tag> <n>` lines, complete ones only, in order.
    public var counts: [(tag: String, n: Int)] = []
    /// The text after the last newline (a line QEMU was still printing).
    public var unfinishedLine = ""
    /// Complete lines that are neither (the kernel's, or the rest of a line begun on another host).
    public var otherLines: [String] = []

    public init(path: String) {
        let bytes = (try? Data(contentsOf: URL(fileURLWithPath: path))).map { [UInt8]($0) } ?? []
        // The guest's tty writes "\r\n" (ONLCR), which Swift reads as one Character: split the bytes.
        var lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map {
            String(decoding: $0.last == UInt8(ascii: "\r") ? $0.dropLast() : $0[...], as: UTF8.self)
        }
        unfinishedLine = lines.removeLast()
        for l in lines {
            let f = l.split(separator: " ")
            if f.count == 2, f[0] == "GUEST-READY" {
                bootTags.append(String(f[1]))
            } else if f.count == 3, f[0] == "COUNT", let n = Int(f[2]) {
                counts.append((String(f[1]), n))
            } else {
                otherLines.append(l)
            }
        }
    }

    public var last: (tag: String, n: Int)? { counts.last }
}
