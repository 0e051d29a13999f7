// Real processes in real cgroups. Every test ends in tearDown with the harness's check that nothing it
// started (process or cgroup) is left.

import Foundation
import XCTest
@testable import ServiceRuntime

final class ProcessRuntimeTests: XCTestCase {
    private var harnesses: [Harness] = []

    private func harness(_ tag: String, logMaxBytes: Int = 10 << 20, logKeep: Int = 3, layout: CgroupLayout? = nil,
                         directory: String? = nil) throws -> Harness {
        try requireRoot()
        let h = try Harness(tag, logMaxBytes: logMaxBytes, logKeep: logKeep, layout: layout, directory: directory)
        harnesses.append(h)
        return h
    }

    override func tearDown() async throws {
        // Reverse order: a harness sharing another's directory must not lose it first.
        for h in harnesses.reversed() { await h.finish() }
        harnesses = []
    }

    // MARK: start, stop, exit

    func testStartRunsInItsCgroupAndDirectoryAndStopEndsIt() async throws {
        let h = try harness("start")
        let rt = h.runtime
        // The program reports its own cgroups: it was in them from its first instruction.
        try rt.start(InstanceSpec(id: "web-0", command: ["sh", "-c", "cat /proc/self/cgroup; pwd; exec sleep 1000"]))
        let pid = try XCTUnwrap(h.runningPid("web-0"))
        XCTAssertEqual(rt.status("web-0")?.health, .healthy, "no health check: healthy while running")
        let name = "\(h.tree.prefix)-web-0"
        try await waitUntil("the log shows the cgroup and directory") { rt.logs("web-0", maxBytes: 4096).contains(rt.directory(of: "web-0") + "\n") }
        let log = rt.logs("web-0", maxBytes: 4096)
        switch h.tree.layout {
        case .v1:
            XCTAssertTrue(log.contains(":memory:/mycelium/\(name)\n"), log)
            XCTAssertTrue(log.contains(":cpu:/mycelium/\(name)\n"), log)
        case .v2:
            XCTAssertTrue(log.contains("0::/mycelium/\(name)\n"), log)
        }
        for d in h.cgroupDirs("web-0") {
            XCTAssertEqual(try String(contentsOfFile: d + "/cgroup.procs", encoding: .utf8), "\(pid)\n", d)
        }
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/cwd"), rt.directory(of: "web-0"))
        // Only 0-2 are open in the service: none of the runtime's or the test's descriptors leaked.
        let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").sorted()
        XCTAssertEqual(fds, ["0", "1", "2"])
        XCTAssertThrowsError(try rt.start(InstanceSpec(id: "web-0", command: ["sleep", "1"]))) { e in
            XCTAssertEqual((e as? RuntimeError)?.code, .alreadyRunning)
        }

        await rt.stop("web-0")
        XCTAssertTrue(isDead(pid))
        XCTAssertNil(rt.status("web-0"), "a stopped instance is forgotten")
        XCTAssertEqual(h.leftoverCgroups(), [])
        try await waitUntil("the final state is reported") { h.events.states("web-0").count == 3 }
        XCTAssertEqual(h.events.states("web-0"), [.starting, .running(pid: pid), .killed(signal: SIGTERM)])
        XCTAssertEqual(h.events.all.last?.exits, 1)
        XCTAssertTrue(rt.logs("web-0", maxBytes: 4096).contains("/mycelium/"), "the log outlives the instance")
    }

    func testStopKillsTheWholeTreeAfterGraceWhenTermIsIgnored() async throws {
        let h = try harness("tree")
        let rt = h.runtime
        // Every process ignores SIGTERM (SIG_IGN is inherited), and one leaves the process group.
        try rt.start(InstanceSpec(id: "tree-0", command: ["sh", "-c", "trap '' TERM; sleep 1000 & setsid sleep 1000 & sleep 1000 & wait"]))
        let cg = h.tree.cgroup(for: "tree-0")
        try await waitUntil("four processes in the cgroup") { cg.pids().count == 4 }
        let pids = cg.pids()
        let t0 = Date()
        await rt.stop("tree-0", graceMillis: 300)
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(t0), 0.25, "SIGKILL only after the grace period")
        for p in pids { XCTAssertTrue(isDead(p), "pid \(p) survived stop") }
        XCTAssertEqual(h.leftoverCgroups(), [])
        try await waitUntil("the kill is reported") { h.events.states("tree-0").last == .killed(signal: SIGKILL) }
    }

    func testStopSendsTermToEveryProcessFirst() async throws {
        let h = try harness("term")
        let rt = h.runtime
        // Each child writes a line when SIGTERM reaches it; the shell waits for them.
        let script = "trap 'wait; echo sh-term; exit 0' TERM; for i in 1 2; do sh -c 'trap \"echo term-$0; exit 0\" TERM; echo ready-$0; while :; do sleep 0.05; done' $i & done; wait"
        try rt.start(InstanceSpec(id: "term-0", command: ["sh", "-c", script]))
        try await waitUntil("the children have their traps") {
            let log = rt.logs("term-0", maxBytes: 4096)
            return log.contains("ready-1") && log.contains("ready-2")
        }
        await rt.stop("term-0", graceMillis: 10_000)
        let log = rt.logs("term-0", maxBytes: 4096)
        XCTAssertTrue(log.contains("term-1") && log.contains("term-2") && log.contains("sh-term"), "every process got SIGTERM: \(log)")
        try await waitUntil("the exit is reported") { h.events.states("term-0").last == .exited(code: 0) }
    }

    func testExitCodeIsReportedAndWhatTheProcessLeftIsKilled() async throws {
        let h = try harness("exit")
        let rt = h.runtime
        try rt.start(InstanceSpec(id: "job-0", command: ["sh", "-c", "sleep 1000 & echo $! > orphan; exit 7"]))
        try await waitUntil("exit 7") { h.state("job-0") == .exited(code: 7) }
        XCTAssertEqual(rt.status("job-0")?.exits, 1)
        XCTAssertEqual(rt.status("job-0")?.health, .unknown)
        let orphan = try XCTUnwrap(Int32(String(contentsOfFile: rt.directory(of: "job-0") + "/orphan", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        XCTAssertTrue(isDead(orphan), "the background child was killed with its cgroup")
        XCTAssertEqual(h.leftoverCgroups(), [], "the cgroup goes with the run")
        // The same id starts again; the count of ends carries on.
        try rt.start(InstanceSpec(id: "job-0", command: ["sh", "-c", "exit 0"]))
        try await waitUntil("second exit") { rt.status("job-0")?.exits == 2 }
        XCTAssertEqual(h.state("job-0"), .exited(code: 0))
        let states = h.events.states("job-0")
        XCTAssertEqual(states.count, 6)
        XCTAssertEqual(states[2], .exited(code: 7))
        XCTAssertEqual(states[5], .exited(code: 0))
    }

    func testCommandNotFoundAndPermissionDeniedThrowAtStart() async throws {
        let h = try harness("notfound")
        let rt = h.runtime
        XCTAssertThrowsError(try rt.start(InstanceSpec(id: "bad-0", command: ["no-such-command-mycelium"]))) { e in
            let err = e as? RuntimeError
            guard case let .commandNotFound(cmd, _)? = err?.code else { return XCTFail("\(e)") }
            XCTAssertEqual(cmd, "no-such-command-mycelium")
            XCTAssertTrue(err!.description.contains("command not found: no-such-command-mycelium"), err!.description)
        }
        guard case .failed(let why)? = h.state("bad-0") else { return XCTFail("\(String(describing: h.state("bad-0")))") }
        XCTAssertTrue(why.contains("command not found"))
        XCTAssertEqual(h.leftoverCgroups(), [], "a failed start removes its cgroup")

        XCTAssertThrowsError(try rt.start(InstanceSpec(id: "bad-1", command: ["/nonexistent/prog"]))) { e in
            guard case .commandNotFound? = (e as? RuntimeError)?.code else { return XCTFail("\(e)") }
        }
        let script = h.directory + "/not-executable.sh"
        try "#!/bin/sh\nexit 0\n".write(toFile: script, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try rt.start(InstanceSpec(id: "bad-2", command: [script]))) { e in
            XCTAssertEqual((e as? RuntimeError)?.code, .permissionDenied(command: script))
        }
        XCTAssertThrowsError(try rt.start(InstanceSpec(id: "Bad_Id", command: ["true"]))) { e in
            XCTAssertEqual((e as? RuntimeError)?.code, .invalidID)
        }
        XCTAssertThrowsError(try rt.start(InstanceSpec(id: "empty-0", command: []))) { e in
            XCTAssertEqual((e as? RuntimeError)?.code, .emptyCommand)
        }
        // A failed instance can be started again once fixed.
        try rt.start(InstanceSpec(id: "bad-0", command: ["true"]))
        try await waitUntil("true exits") { h.state("bad-0") == .exited(code: 0) }
    }

    // MARK: logs

    func testLogCapturesStdoutAndStderrAndRotates() async throws {
        let h = try harness("log", logMaxBytes: 1000, logKeep: 2)
        let rt = h.runtime
        try rt.start(InstanceSpec(id: "log-0", command: ["sh", "-c", "i=0; while [ $i -lt 600 ]; do echo \"line $i\"; i=$((i+1)); done; echo done >&2"]))
        try await waitUntil("exit") { h.state("log-0") == .exited(code: 0) }
        var expected = ""
        for i in 0..<600 { expected += "line \(i)\n" }
        expected += "done\n"

        let dir = rt.directory(of: "log-0")
        var stored = ""
        var total = 0
        for name in ["log.2", "log.1", "log"] {
            let data = try XCTUnwrap(FileManager.default.contents(atPath: dir + "/" + name), name)
            XCTAssertLessThanOrEqual(data.count, 1000, "\(name) exceeds the rotation size")
            total += data.count
            stored += String(decoding: data, as: UTF8.self)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/log.3"), "only logKeep rotated files are kept")
        XCTAssertTrue(expected.hasSuffix(stored), "the files hold the end of the output, in order, without gaps")
        XCTAssertGreaterThan(total, 2000, "rotated files are full")
        XCTAssertFalse(stored.contains("line 0\n"), "the oldest output was dropped")

        XCTAssertEqual(rt.logs("log-0", maxBytes: 100_000), stored)
        XCTAssertEqual(rt.logs("log-0", maxBytes: 15), String(expected.suffix(15)))
        XCTAssertEqual(rt.logs("log-0", maxBytes: 1500), String(expected.suffix(1500)), "a tail spanning two files")
    }

    func testAChattyServiceNeverBlocksTheCaller() async throws {
        let h = try harness("chatty", logMaxBytes: 64 << 10, logKeep: 1)
        let rt = h.runtime
        // Writes far more than a pipe holds (500000 lines); start returns at once and the output flows to the log.
        try rt.start(InstanceSpec(id: "chatty-0", command: ["sh", "-c", "yes mycelium | head -c 4500000; echo end"]))
        try await waitUntil("exit") { h.state("chatty-0") == .exited(code: 0) }
        XCTAssertTrue(rt.logs("chatty-0", maxBytes: 100).hasSuffix("mycelium\nend\n"))
    }

    // MARK: limits

    func testMemoryLimitKillsAProcessAboveItAndSparesOneBelow() async throws {
        let h = try harness("mem")
        let rt = h.runtime
        let py = try python3()
        let alloc = "import sys; b = bytearray(b'\\x01') * (int(sys.argv[1]) << 20); print('allocated', len(b) >> 20, flush=True)"
        try rt.start(InstanceSpec(id: "small-0", command: [py, "-c", alloc, "16"], memoryMiB: 64))
        try rt.start(InstanceSpec(id: "big-0", command: [py, "-c", alloc, "256"], memoryMiB: 64))
        try await waitUntil("both ended") { rt.status("small-0")?.exits == 1 && rt.status("big-0")?.exits == 1 }
        XCTAssertEqual(h.state("big-0"), .killed(signal: SIGKILL), rt.logs("big-0", maxBytes: 2000))
        XCTAssertFalse(rt.logs("big-0", maxBytes: 2000).contains("allocated"))
        XCTAssertEqual(h.state("small-0"), .exited(code: 0), rt.logs("small-0", maxBytes: 2000))
        XCTAssertEqual(rt.logs("small-0", maxBytes: 2000), "allocated 16\n")
    }

    func testLimitsAreWrittenToTheCgroup() async throws {
        let h = try harness("cpu")
        let rt = h.runtime
        try rt.start(InstanceSpec(id: "cpu-0", command: ["sleep", "1000"], cpuMillis: 250, memoryMiB: 32))
        try rt.start(InstanceSpec(id: "cpu-1", command: ["sleep", "1000"]))
        func read(_ path: String) throws -> String {
            try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        switch h.tree.layout {
        case .v1:
            XCTAssertEqual(try read(h.cgroupDirs("cpu-0")[1] + "/cpu.cfs_quota_us"), "25000")
            XCTAssertEqual(try read(h.cgroupDirs("cpu-0")[1] + "/cpu.cfs_period_us"), "100000")
            XCTAssertEqual(try read(h.cgroupDirs("cpu-1")[1] + "/cpu.cfs_quota_us"), "-1")
            XCTAssertEqual(try read(h.cgroupDirs("cpu-0")[0] + "/memory.limit_in_bytes"), "\(32 << 20)")
            let memsw = h.cgroupDirs("cpu-0")[0] + "/memory.memsw.limit_in_bytes"
            if FileManager.default.fileExists(atPath: memsw) { XCTAssertEqual(try read(memsw), "\(32 << 20)", "no escape into swap") }
            XCTAssertEqual(try read(h.cgroupDirs("cpu-1")[0] + "/memory.limit_in_bytes"), "9223372036854771712", "no limit")
        case .v2:
            XCTAssertEqual(try read(h.cgroupDirs("cpu-0")[0] + "/cpu.max"), "25000 100000")
            XCTAssertEqual(try read(h.cgroupDirs("cpu-1")[0] + "/cpu.max"), "max 100000")
            XCTAssertEqual(try read(h.cgroupDirs("cpu-0")[0] + "/memory.max"), "\(32 << 20)")
        }
        XCTAssertEqual(CgroupTree.quotaMicros(1000), 100_000)
        XCTAssertEqual(CgroupTree.quotaMicros(1), 1000, "the kernel's minimum quota")
    }

    // MARK: health

    func testTCPHealthGoesHealthyThenUnhealthyWhenTheServerStops() async throws {
        let h = try harness("tcp")
        let rt = h.runtime
        let server = try TestServer(http: false)
        try rt.start(InstanceSpec(id: "tcp-0", command: ["sleep", "1000"],
                                  health: .tcp(port: server.port, intervalMillis: 50, timeoutMillis: 1000, threshold: 3)))
        XCTAssertEqual(rt.status("tcp-0")?.health, .unknown, "not checked yet")
        try await waitUntil("healthy") { rt.status("tcp-0")?.health == .healthy }
        server.close()
        try await waitUntil("unhealthy") { if case .unhealthy = rt.status("tcp-0")?.health { return true } else { return false } }
        guard case let .unhealthy(why)? = rt.status("tcp-0")?.health else { return XCTFail() }
        XCTAssertTrue(why.contains("refused"), why)
        XCTAssertEqual(h.events.healths("tcp-0").filter { if case .unhealthy = $0 { return true } else { return false } }.count, 1,
                       "reported once, after `threshold` failures, not per failure")
        XCTAssertTrue(h.state("tcp-0")?.isRunning == true, "health never stops the process: the controller decides")
    }

    func testHTTPHealthFollowsTheStatusCode() async throws {
        let h = try harness("http")
        let rt = h.runtime
        let server = try TestServer(http: true)
        defer { server.close() }
        try rt.start(InstanceSpec(id: "http-0", command: ["sleep", "1000"],
                                  health: .http(port: server.port, path: "/healthz", intervalMillis: 50, timeoutMillis: 1000, threshold: 2)))
        try await waitUntil("healthy") { rt.status("http-0")?.health == .healthy }
        XCTAssertTrue(server.lastRequest.hasPrefix("GET /healthz HTTP/1.1\r\n"), server.lastRequest)
        XCTAssertTrue(server.lastRequest.contains("\r\nHost: 127.0.0.1:\(server.port)\r\n"), server.lastRequest)
        server.status = 503
        try await waitUntil("unhealthy on 503") { rt.status("http-0")?.health == .unhealthy("http 127.0.0.1:\(server.port)/healthz: status 503") }
        server.status = 302
        try await waitUntil("a redirect is healthy") { rt.status("http-0")?.health == .healthy }
        server.close()
        try await waitUntil("unhealthy when the server is gone") {
            if case let .unhealthy(why)? = rt.status("http-0")?.health { return why.contains("refused") } else { return false }
        }
    }

    func testExecHealthRunsInTheInstanceDirectoryAndIsKilledAtTheTimeout() async throws {
        let h = try harness("exec")
        let rt = h.runtime
        try rt.start(InstanceSpec(id: "exec-0", command: ["sleep", "1000"],
                                  health: .exec(command: ["test", "-e", "ready"], intervalMillis: 50, timeoutMillis: 2000, threshold: 2)))
        let flag = rt.directory(of: "exec-0") + "/ready"
        try await waitUntil("unhealthy while the flag is missing") { rt.status("exec-0")?.health == .unhealthy("exec check test: exit code 1") }
        XCTAssertTrue(FileManager.default.createFile(atPath: flag, contents: nil))
        try await waitUntil("healthy once the flag exists") { rt.status("exec-0")?.health == .healthy }
        try FileManager.default.removeItem(atPath: flag)
        try await waitUntil("unhealthy again") { rt.status("exec-0")?.health == .unhealthy("exec check test: exit code 1") }

        // A hanging check: killed at its timeout, in the instance's cgroup while it runs.
        try rt.start(InstanceSpec(id: "exec-1", command: ["sleep", "1000"],
                                  health: .exec(command: ["sh", "-c", "sleep 1000"], intervalMillis: 50, timeoutMillis: 200, threshold: 1)))
        let cg = h.tree.cgroup(for: "exec-1")
        try await waitUntil("the check runs in the cgroup") { cg.pids().count >= 2 }
        try await waitUntil("unhealthy on timeout") { rt.status("exec-1")?.health == .unhealthy("exec check sh: no result within 200 ms (killed)") }
        let main = try XCTUnwrap(h.runningPid("exec-1"))
        // Between checks only the service is left: the timed-out check's whole group was killed.
        try await waitUntil("only the service between checks") { cg.pids() == [main] }
    }

    func testStopEndsAnExecCheckInFlight() async throws {
        let h = try harness("execstop")
        let rt = h.runtime
        try rt.start(InstanceSpec(id: "slow-0", command: ["sleep", "1000"],
                                  health: .exec(command: ["sleep", "1000"], intervalMillis: 20, timeoutMillis: 60_000, threshold: 1)))
        let cg = h.tree.cgroup(for: "slow-0")
        try await waitUntil("the check is running") { cg.pids().count == 2 }
        let pids = cg.pids()
        let t0 = Date()
        await rt.stop("slow-0", graceMillis: 5000)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 5, "stop does not wait for the check's timeout")
        for p in pids { XCTAssertTrue(isDead(p), "pid \(p) survived stop") }
        XCTAssertEqual(h.leftoverCgroups(), [])
    }

    // MARK: leftovers and the other cgroup layout

    func testCleanupLeftoversKillsAnEarlierRunsInstancesOnly() async throws {
        let old = try harness("left")
        try old.runtime.start(InstanceSpec(id: "left-0", command: ["sh", "-c", "sleep 1000 & sleep 1000 & wait"]))
        let other = try harness("other")
        try other.runtime.start(InstanceSpec(id: "left-0", command: ["sleep", "1000"]))
        let cg = old.tree.cgroup(for: "left-0")
        try await waitUntil("the old tree is up") { cg.pids().count == 3 }
        let oldPids = cg.pids()

        // The agent restarts: a new runtime on the same directory.
        let restarted = try harness("left", directory: old.directory)
        XCTAssertEqual(restarted.tree.prefix, old.tree.prefix)
        try restarted.runtime.start(InstanceSpec(id: "keep-0", command: ["sleep", "1000"]))
        restarted.runtime.cleanupLeftovers()

        for p in oldPids { XCTAssertTrue(isDead(p), "leftover \(p) still running") }
        for d in cg.dirs { XCTAssertFalse(FileManager.default.fileExists(atPath: d), d) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: old.runtime.directory(of: "left-0")), "the leftover directory is removed")
        XCTAssertTrue(restarted.state("keep-0")?.isRunning == true, "the new runtime's own instance is kept")
        XCTAssertTrue(FileManager.default.fileExists(atPath: restarted.runtime.directory(of: "keep-0")))
        XCTAssertTrue(other.state("left-0")?.isRunning == true, "another state directory's instance is not touched")
    }

    /// The cgroup v2 code path (clone3 into the cgroup, cgroup.kill). On a hybrid host it runs on the
    /// cgroup2 hierarchy at /sys/fs/cgroup/unified, which has no controllers, so only limit-free
    /// instances work there.
    func testCgroupV2PathPlacesAndKillsTheTree() async throws {
        let layout: CgroupLayout
        switch try CgroupLayout.detect() {
        case let .v2(root, controllers): layout = .v2(root: root, controllers: controllers)
        case .v1:
            let unified = "/sys/fs/cgroup/unified"
            guard let c = readText(unified + "/cgroup.controllers") else {
                return XCTFail("neither a cgroup v2 host nor a hybrid one with \(unified)")
            }
            layout = .v2(root: unified, controllers: c.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        }
        let h = try harness("v2", layout: layout)
        let rt = h.runtime
        try rt.start(InstanceSpec(id: "v2-0", command: ["sh", "-c", "trap '' TERM; cat /proc/self/cgroup; sleep 1000 & sleep 1000 & wait"]))
        let cg = h.tree.cgroup(for: "v2-0")
        try await waitUntil("three processes") { cg.pids().count == 3 }
        XCTAssertTrue(rt.logs("v2-0", maxBytes: 4096).contains("0::/mycelium/\(h.tree.prefix)-v2-0\n"), rt.logs("v2-0", maxBytes: 4096))
        let pids = cg.pids()
        await rt.stop("v2-0", graceMillis: 100)
        for p in pids { XCTAssertTrue(isDead(p)) }
        XCTAssertEqual(h.leftoverCgroups(), [])
        if case let .v2(root, controllers) = layout, !controllers.contains("memory") {
            XCTAssertThrowsError(try rt.start(InstanceSpec(id: "v2-1", command: ["true"], memoryMiB: 64))) { e in
                XCTAssertEqual((e as? RuntimeError)?.code, .limitUnsupported(controller: "memory", root: root))
            }
        }
    }

    func testStopAllAndStopOfUnknownOrEndedInstances() async throws {
        let h = try harness("all")
        let rt = h.runtime
        for i in 0..<3 { try rt.start(InstanceSpec(id: "all-\(i)", command: ["sleep", "1000"])) }
        try rt.start(InstanceSpec(id: "done-0", command: ["true"]))
        try await waitUntil("done-0 ends") { h.state("done-0") == .exited(code: 0) }
        XCTAssertEqual(rt.all().map(\.id), ["all-0", "all-1", "all-2", "done-0"])
        await rt.stop("no-such-instance")
        await rt.stop("done-0")
        XCTAssertNil(rt.status("done-0"))
        await rt.stopAll()
        XCTAssertEqual(rt.all(), [])
        XCTAssertEqual(h.leftoverCgroups(), [])
    }
}
