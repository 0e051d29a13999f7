// The podman service runtime (ServiceRuntime/PodmanRuntime.swift) on the real machine: the agent's
// private podman configuration (PodmanSetup) with runc and our mycelium-cni plugin and eBPF datapath,
// busybox containers from a busybox-static root filesystem made here. Checks the address on the pod
// network, the log, limits, exit codes, health checks (http to the pod address, exec through
// `podman exec`), stop and leftovers, and that nothing is left: no container, veth, netns or CNI
// allocation. Needs root, podman and runc.

import Foundation
import MyceliumCore
import ServiceRuntime
import Synchronization
import XCTest
@testable import MyceliumCNI

/// A private podman setup for one test: rootfs, configuration, pin directory, a pod CIDR no other
/// test uses, and an `unreachable` route for it so a probe to an address without its /32 route can
/// never leave through the default route. `tearDown` removes all of it.
final class PodmanFixture {
    let tmp: String
    let rootfs: String
    let pinDir: String
    let subnet: String
    let settings: PodmanSettings
    let setup: PodmanSetup

    init() throws {
        try requireRoot()
        guard PodmanSetup.find("podman") != nil, PodmanSetup.find("runc") != nil else { throw TestFailure("these tests need podman and runc: apt-get install podman runc") }
        let id = "\(getpid())-\(Unique.next())"
        tmp = NSTemporaryDirectory() + "myc-podrt-\(id)"
        rootfs = tmp + "/rootfs"
        pinDir = "/sys/fs/bpf/mycelium-podrt-\(id)"
        subnet = "10.\(200 + Int.random(in: 0..<50)).\(Int.random(in: 0..<250)).0/24"
        let fm = FileManager.default
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "www"] { try fm.createDirectory(atPath: rootfs + "/" + d, withIntermediateDirectories: true) }
        try fm.copyItem(atPath: "/bin/busybox", toPath: rootfs + "/bin/busybox")
        for applet in ["sh", "httpd", "sleep", "echo", "test", "touch", "rm", "cat"] {
            try fm.createSymbolicLink(atPath: rootfs + "/bin/" + applet, withDestinationPath: "busybox")
        }
        try "hello-from-a-pod\n".write(toFile: rootfs + "/www/index.html", atomically: true, encoding: .utf8)
        try sh("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf")
        try "\(subnet)\n".write(toFile: tmp + "/podcidr", atomically: true, encoding: .utf8)
        try sh("ip route add unreachable \(subnet)")
        setup = PodmanSetup(directory: tmp + "/podman", pluginDirectories: [Paths.buildDir], bpfObject: try Paths.bpfObject(),
                            pinDirectory: pinDir, podCIDRFile: tmp + "/podcidr")
        settings = try setup.prepare()
    }

    /// A container's ID and network namespace path (to check both are gone later; other tests may
    /// run containers beside this one, so only this container's are checked).
    func attachment(_ name: String) throws -> (id: String, netns: String) {
        let f = try podman(["inspect", "--format", "{{.Id}} {{.NetworkSettings.SandboxKey}}", name]).stdout
            .split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        guard f.count == 2, !f[1].isEmpty else { throw TestFailure("no id and netns for \(name): \(f)") }
        return (f[0], f[1])
    }

    /// Its host veth, its netns and its datapath endpoint are gone.
    func assertGone(_ a: (id: String, netns: String), _ ip: IPv4Address, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertFalse(try PluginSandbox.hostVethExists(containerID: a.id), "the host veth is left", file: file, line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: a.netns), "the network namespace \(a.netns) is left", file: file, line: line)
        XCTAssertNil(try Datapath(pinDir: pinDir).endpoint(ip), "the datapath still knows \(ip)", file: file, line: line)
    }

    /// Runs podman with the fixture's settings (for checks).
    func podman(_ args: [String]) throws -> ProcessResult {
        let out = tmp + "/check.out", err = tmp + "/check.err"
        let quoted = (["/usr/bin/timeout", "120"] + settings.base + args).map { "'" + $0 + "'" }.joined(separator: " ")
        let r = try runProcess("/bin/sh", ["-c", "\(quoted) >'\(out)' 2>'\(err)' </dev/null"], env: settings.environment)
        return ProcessResult(status: r.status, stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                             stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
    }

    func containers() throws -> [String] {
        try podman(["ps", "-a", "--format", "{{.Names}}"]).stdout.split(separator: "\n").map(String.init)
    }

    func allocations() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: settings.allocationsDirectory)) ?? []).filter { IPv4Address($0) != nil }
    }

    func tearDown() {
        _ = try? podman(["rm", "-f", "-t", "0", "--all"])
        _ = try? Datapath(pinDir: pinDir).unload()
        _ = try? sh("ip route del unreachable \(subnet)", allowFailure: true)
        _ = try? sh("rm -rf '\(pinDir)' '\(tmp)' '\(settings.runroot)'", allowFailure: true)
    }
}

/// What a runtime reported, in order.
final class Seen: Sendable {
    let statuses = Mutex<[InstanceStatus]>([])
}

final class PodmanRuntimeTests: XCTestCase {
    func makeRuntime(_ f: PodmanFixture, _ seen: Seen? = nil) throws -> PodmanRuntime {
        try PodmanRuntime(settings: f.settings, stateDirectory: f.tmp + "/state", onChange: { s in seen?.statuses.withLock { $0.append(s) } })
    }

    func waitFor(_ what: String, timeout: Double = 30, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try condition() { return }
            Thread.sleep(forTimeInterval: 0.05)  // polls the condition, bounded by the deadline
        }
        XCTFail("timed out waiting for \(what)")
        throw TestFailure("timed out waiting for \(what)")
    }

    func testAContainerServesOnItsPodAddressWithItsLogLimitsAndHealthAndStopLeavesNothing() async throws {
        let f = try PodmanFixture()
        defer { f.tearDown() }
        let rt = try makeRuntime(f)
        let spec = InstanceSpec(id: "web-0", command: ["/bin/sh", "-c", "echo started $GREETING; exec httpd -f -p 8080 -h /www"],
                                environment: ["GREETING": "hi-there"], cpuMillis: 500, memoryMiB: 48,
                                health: .http(port: 8080, path: "/index.html", intervalMillis: 200, timeoutMillis: 1000, threshold: 2))
        try await rt.start(spec, rootfs: f.rootfs)
        let status = try XCTUnwrap(rt.status("web-0"))
        XCTAssertTrue(status.state.isRunning, "\(status)")
        let ip = try XCTUnwrap(IPv4Address(status.address), "no pod address: \(status)")
        XCTAssertTrue(try XCTUnwrap(IPv4CIDR(f.subnet)).contains(ip), "\(ip) is outside the pod CIDR \(f.subnet)")
        try waitFor("the http check passes") { rt.status("web-0")?.health == .healthy }

        // Reachable on its pod address (the /32 route mycelium-cni installed, through the datapath).
        let page = try sh("curl -sf --max-time 5 http://\(ip):8080/index.html")
        XCTAssertTrue(page.contains("hello-from-a-pod"), page)
        XCTAssertNotNil(try Datapath(pinDir: f.pinDir).endpoint(ip), "the datapath knows the pod")
        try waitFor("the log holds the container's output") { rt.logs("web-0", maxBytes: 4096).contains("started hi-there") }
        let limits = try f.podman(["inspect", "--format", "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{index .Config.Labels \"mycelium.instance\"}}",
                                   PodmanRuntime.containerName("web-0")]).stdout
        XCTAssertEqual(limits.trimmingCharacters(in: .whitespacesAndNewlines), "\(48 << 20) 500000000 web-0")
        XCTAssertEqual(f.allocations(), [status.address])
        let attachment = try f.attachment(PodmanRuntime.containerName("web-0"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: attachment.netns))
        XCTAssertTrue(try PluginSandbox.hostVethExists(containerID: attachment.id))

        // Stop: the container, its veth, its netns and its address are gone.
        await rt.stop("web-0", graceSeconds: 2)
        XCTAssertNil(rt.status("web-0"))
        XCTAssertEqual(try f.containers(), [])
        XCTAssertEqual(f.allocations(), [], "the address was released")
        try f.assertGone(attachment, ip)
        XCTAssertTrue(rt.logs("web-0", maxBytes: 4096).contains("started hi-there"), "the log stays after the stop")
    }

    func testAnExitIsReportedWithItsCodeAndTheContainerRemoved() async throws {
        let f = try PodmanFixture()
        defer { f.tearDown() }
        let seen = Seen()
        let rt = try makeRuntime(f, seen)
        try await rt.start(InstanceSpec(id: "job-0", command: ["/bin/sh", "-c", "echo working; sleep 1; echo failing >&2; exit 3"]), rootfs: f.rootfs)
        try waitFor("the exit") { rt.status("job-0")?.state == .exited(code: 3) }
        XCTAssertEqual(rt.status("job-0")?.exits, 1)
        let log = rt.logs("job-0", maxBytes: 4096)
        XCTAssertTrue(log.contains("working") && log.contains("failing"), "stdout and stderr in the log: \(log)")
        try waitFor("the ended container is removed") { try f.containers().isEmpty }
        XCTAssertEqual(f.allocations(), [])
        let states = seen.statuses.withLock { $0.map(\.state) }
        XCTAssertEqual(states.first, .starting)
        XCTAssertTrue(states.contains { $0.isRunning })

        // A command that ends at once (before its address could be read) is reported with its code too.
        try await rt.start(InstanceSpec(id: "job-2", command: ["/bin/sh", "-c", "exit 7"]), rootfs: f.rootfs)
        try waitFor("the immediate exit") { rt.status("job-2")?.state == .exited(code: 7) }
        try waitFor("its container is removed") { try f.containers().isEmpty }
        XCTAssertEqual(f.allocations(), [])

        // It can run again under the same id; a command missing from the rootfs is a clear error.
        do {
            try await rt.start(InstanceSpec(id: "job-0", command: ["/bin/no-such-program"]), rootfs: f.rootfs)
            XCTFail("a missing command must fail")
        } catch {
            XCTAssertTrue("\(error)".contains("missing from the root filesystem"), "\(error)")
        }
        if case .failed = rt.status("job-0")?.state {} else { XCTFail("\(String(describing: rt.status("job-0")))") }
        XCTAssertEqual(try f.containers(), [], "nothing is left of the failed start")
        XCTAssertEqual(f.allocations(), [])
        do {
            try await rt.start(InstanceSpec(id: "job-1", command: ["/bin/sh"]), rootfs: f.tmp + "/nowhere")
            XCTFail("a missing rootfs must fail")
        } catch {
            XCTAssertTrue("\(error)".contains("is not a directory on this node"), "\(error)")
        }
    }

    func testAnExecCheckRunsInTheContainerAndLeftoversOfAnEarlierRunAreRemoved() async throws {
        let f = try PodmanFixture()
        defer { f.tearDown() }
        let first = try makeRuntime(f)
        try await first.start(InstanceSpec(id: "db-0", command: ["/bin/sh", "-c", "touch /tmp/ok; exec sleep 600"],
                                           health: .exec(command: ["/bin/test", "-e", "/tmp/ok"], intervalMillis: 200, timeoutMillis: 5000, threshold: 1)),
                              rootfs: f.rootfs)
        try waitFor("the exec check passes") { first.status("db-0")?.health == .healthy }
        let attachment = try f.attachment(PodmanRuntime.containerName("db-0"))
        let ip = try XCTUnwrap(IPv4Address(first.status("db-0")?.address ?? ""))
        XCTAssertEqual(try f.podman(["exec", PodmanRuntime.containerName("db-0"), "/bin/rm", "/tmp/ok"]).status, 0)
        try waitFor("the exec check fails") {
            if case .unhealthy(let why) = first.status("db-0")?.health { return why.contains("exit code 1") }
            return false
        }

        // A new runtime on the same podman (the agent restarted; the old one is not stopped, as after
        // a crash) removes the old container with its network attachment.
        let second = try makeRuntime(f)
        XCTAssertEqual(second.cleanupLeftovers(), [PodmanRuntime.containerName("db-0")])
        XCTAssertEqual(try f.containers(), [])
        XCTAssertEqual(f.allocations(), [])
        try f.assertGone(attachment, ip)
        // The service reaper's view: the recorded settings find the same podman.
        XCTAssertEqual(PodmanRuntime.leftovers(of: f.tmp + "/state")?.settings, f.settings)
        try waitFor("the first runtime sees its container end") {
            if case .running = first.status("db-0")?.state { return false }
            return true
        }
    }

    func testSetupSaysWhatIsMissing() throws {
        let dir = NSTemporaryDirectory() + "myc-podsetup-\(getpid())-\(Unique.next())"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var s = PodmanSetup(directory: dir, pluginDirectories: [dir + "/nope"], bpfObject: dir + "/x.o", pinDirectory: "/sys/fs/bpf/x", podCIDRFile: dir + "/podcidr")
        s.podman = dir + "/podman"
        XCTAssertTrue(try failure(s).contains("is not an executable file"))
        s.podman = ""
        if PodmanSetup.find("podman") != nil && PodmanSetup.find("runc") != nil && PodmanSetup.find("conmon") != nil {
            XCTAssertTrue(try failure(s).contains("no mycelium-cni plugin in \(dir)/nope"))
            s.pluginDirectories = [Paths.buildDir]
            XCTAssertTrue(try failure(s).contains("BPF object \(dir)/x.o is missing"))
            s.bpfObject = try Paths.bpfObject()
            s.pinDirectory = dir + "/pins"
            XCTAssertTrue(try failure(s).contains("is not on a bpf filesystem"))
        }
        let long = PodmanSetup.runroot(for: String(repeating: "/long", count: 40))
        XCTAssertTrue(long.hasPrefix("/run/mycelium-podman-") && long.utf8.count <= 50, long)
        XCTAssertNotEqual(PodmanSetup.runroot(for: "/var/lib/a/podman"), PodmanSetup.runroot(for: "/var/lib/b/podman"))
    }

    func failure(_ s: PodmanSetup) throws -> String {
        do {
            _ = try s.prepare()
            XCTFail("prepare succeeded")
            return ""
        } catch {
            return error.description
        }
    }
}
