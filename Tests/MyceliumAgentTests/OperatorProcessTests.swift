import Foundation
import MyceliumAPI
@testable import MyceliumAgent
import XCTest

/// The operator's tools against real agents: `mycelium doctor` (with a stale BPF pin and an orphaned
/// mycelium-cni veth made by the test, both removed in defer) and myceliumd's JSON logs. Needs root,
/// bpftool and iproute2.
final class OperatorProcessTests: XCTestCase {
    /// The JSON object in a CLI's combined output (libraries may print to stderr before it).
    func report(_ out: String, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let start = try XCTUnwrap(out.firstIndex(of: "{"), "no JSON in: \(out)", file: file, line: line)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out[start...].utf8)) as? [String: Any], out, file: file, line: line)
    }

    func checks(_ r: [String: Any], _ name: String, node: String? = nil) -> [[String: Any]] {
        ((r["checks"] as? [[String: Any]]) ?? []).filter { $0["check"] as? String == name && (node == nil || $0["node"] as? String == node) }
    }

    func sh(_ args: [String]) -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let o = Pipe()
        p.standardOutput = o
        p.standardError = o
        do { try p.run() } catch { return (-1, "\(error)") }
        let d = o.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: d, as: UTF8.self))
    }

    func testDoctorChecksARealAgentAndReportsAStalePinAndAnOrphanedVeth() async throws {
        if sh(["mountpoint", "-q", "/sys/fs/bpf"]).0 != 0 { XCTAssertEqual(sh(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"]).0, 0) }
        let c = try AgentCluster()
        defer { c.shutdown() }
        c.seedDirs = [c.dir + "/seeds"]
        try c.createNetwork()
        try c.join("n2")
        try await c.waitUntil("n1 leads and sees n2 alive", nodes: ["n1"]) { vs in
            vs[0].leader == vs[0].node && vs[0].members.filter(\.isAlive).count == 2 && vs[0].members.allSatisfy { !$0.addresses.isEmpty }
        }
        let n2 = await c.status("n2")!.node
        let conf = c.home("n1") + ".conf"

        // A healthy node: the agent answers, the network has its leader, the listen port accepts.
        // (Not asserting exit 0: this shared machine may hold other runs' leftovers.)
        let r1 = try report(try c.cli(["doctor", "--config", conf, "--all", "-o", "json"]).1)
        XCTAssertEqual(r1["scope"] as? String, "network")
        XCTAssertEqual(checks(r1, "agent.api").first?["verdict"] as? String, "ok", "\(r1)")
        XCTAssertEqual(checks(r1, "cluster.quorum").first?["verdict"] as? String, "ok", "\(checks(r1, "cluster.quorum"))")
        XCTAssertEqual(checks(r1, "port.listen").first?["verdict"] as? String, "ok", "\(checks(r1, "port.listen"))")
        XCTAssertEqual(checks(r1, "kernel.bpffs").first?["verdict"] as? String, "ok")
        XCTAssertEqual(checks(r1, "kernel.tcx").first?["verdict"] as? String, "ok", "this kernel has tcx (MACHINE.md)")
        XCTAssertEqual(checks(r1, "kernel.userfaultfd").first?["verdict"] as? String, "ok", "\(checks(r1, "kernel.userfaultfd"))")
        XCTAssertTrue((checks(r1, "disk.fsync").first?["detail"] as? String)?.contains("p99") == true, "\(checks(r1, "disk.fsync"))")
        XCTAssertEqual(checks(r1, "cert.expiry").first?["verdict"] as? String, "ok")
        XCTAssertEqual(checks(r1, "cluster.member", node: n2).first?["verdict"] as? String, "ok", "--all checks each member")
        XCTAssertEqual(checks(r1, "port.member", node: n2).first?["verdict"] as? String, "ok", "n2's address reachable from here")
        XCTAssertNotNil(checks(r1, "clock.skew", node: n2).first, "n2's clock is checked")
        let seed = checks(r1, "spore.seed").first
        XCTAssertEqual(seed?["verdict"] as? String, "ok", "the leader writes seed spores to seed_dirs: \(String(describing: seed))")
        XCTAssertTrue((seed?["detail"] as? String)?.contains("newest seed spore at epoch") == true, "\(String(describing: seed))")

        // Leftovers: a pinned map under /sys/fs/bpf no agent owns, and a mycelium-cni-named veth whose
        // peer never went into a pod's namespace.
        let tag = String(UInt64.random(in: 0..<(1 << 40)), radix: 16).padding(toLength: 11, withPad: "0", startingAt: 0)
        let pinDir = "/sys/fs/bpf/myc-doctor-" + tag
        let veth = "myc" + tag, peer = "mdp" + tag.prefix(8)
        defer {
            _ = sh(["rm", "-rf", pinDir])
            _ = sh(["ip", "link", "del", veth])
        }
        XCTAssertEqual(sh(["mkdir", pinDir]).0, 0)
        let made = sh(["bpftool", "map", "create", pinDir + "/leftover", "type", "array", "key", "4", "value", "4", "entries", "1", "name", "mycdoc"])
        XCTAssertEqual(made.0, 0, made.1)
        let link = sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer])
        XCTAssertEqual(link.0, 0, link.1)

        let (code, out) = try c.cli(["doctor", "--config", conf, "-o", "json"])
        XCTAssertEqual(code, 1, "a failed check makes the exit code non-zero: \(out)")
        let r2 = try report(out)
        let pins = try XCTUnwrap(checks(r2, "leftover.bpf_pins").first)
        XCTAssertEqual(pins["verdict"] as? String, "fail")
        XCTAssertTrue((pins["detail"] as? String)?.contains(pinDir) == true, "\(pins)")
        XCTAssertTrue((pins["fix"] as? String)?.contains("rm -r") == true, "\(pins)")
        XCTAssertFalse((pins["detail"] as? String)?.contains("/sys/fs/bpf/mycelium,") == true, "the running agents' pin dir is theirs")
        let veths = try XCTUnwrap(checks(r2, "leftover.veths").first)
        XCTAssertEqual(veths["verdict"] as? String, "fail")
        XCTAssertTrue((veths["detail"] as? String)?.contains(veth) == true, "\(veths)")
        XCTAssertTrue((veths["fix"] as? String)?.contains("ip link del \(veth)") == true, "\(veths)")
        XCTAssertEqual(r2["verdict"] as? String, "fail")

        // The text form says the same, with the fix under the failure.
        let (tcode, text) = try c.cli(["doctor", "--config", conf])
        XCTAssertEqual(tcode, 1)
        XCTAssertTrue(text.contains("FAIL  leftover.bpf_pins"), text)
        XCTAssertTrue(text.contains("fix: remove them") && text.contains("rm -r \(pinDir)"), text)

        // An agent that is down is a failure for a member.
        c.terminate("n1")
        let (dcode, dout) = try c.cli(["doctor", "--config", conf, "-o", "json"])
        XCTAssertEqual(dcode, 1)
        XCTAssertEqual(checks(try report(dout), "agent.api").first?["verdict"] as? String, "fail")
    }

    /// A deploy that cannot complete (2 replicas, at most 1 per node, on a one-node network) waits its
    /// --wait: without a terminal it prints plain progress lines, on a terminal (a pty from `script`)
    /// a bar redrawn in place with rate and ETA.
    func testLongWaitsShowProgress() async throws {
        let c = try AgentCluster()
        defer { c.shutdown() }
        try c.createNetwork()
        try await c.waitUntil("n1 leads", nodes: ["n1"]) { $0[0].leader == $0[0].node }
        for name in ["web", "tty"] {
            try "name: \(name)\ncommand: [sleep, \"600\"]\nreplicas: 2\nresources: {memory: 16Mi}\nplacement: {max_per_node: 1}\n"
                .write(toFile: c.home(name + ".yaml"), atomically: true, encoding: .utf8)
        }
        // Until n1 has announced what it offers, the leader refuses deploys (an operator retries).
        var (code, out) = try c.cli(["service", "deploy", c.home("web.yaml"), "--home", c.home("n1"), "--wait", "4"])
        let deadline = Date().addingTimeInterval(20)
        while out.contains("offers services yet") && Date() < deadline {
            try await Task.sleep(nanoseconds: 200_000_000)  // polls until n1's capabilities are in the spore
            (code, out) = try c.cli(["service", "deploy", c.home("web.yaml"), "--home", c.home("n1"), "--wait", "4"])
        }
        XCTAssertNotEqual(code, 0, out)
        let progress = out.split(separator: "\n").filter { $0.hasPrefix("progress: deploying web: ") }
        XCTAssertFalse(progress.isEmpty, out)
        XCTAssertTrue(progress.contains { $0.contains("50% (1 of 2 replicas)") && $0.contains("elapsed 0:0") }, out)
        XCTAssertFalse(out.contains("\u{1B}["), "no terminal codes on a pipe")

        let cmd = [AgentCluster.binDir + "/mycelium", "service", "deploy", c.home("tty.yaml"), "--home", c.home("n1"), "--wait", "3"].joined(separator: " ")
        let (_, tty) = sh(["script", "-qec", cmd, "/dev/null"])
        XCTAssertTrue(tty.contains("\r\u{1B}[Kdeploying tty  [##########----------]   50%  1/2 replicas"), tty)
        XCTAssertTrue(tty.contains("ETA "), tty)
        XCTAssertFalse(tty.contains("progress: "), "a terminal gets the bar, not the plain lines")

        // -o json on a pipe: stdout is JSON only, no progress.
        let (_, json) = try c.cli(["service", "deploy", c.home("web.yaml"), "--home", c.home("n1"), "--wait", "3", "-o", "json"])
        XCTAssertFalse(json.contains("progress: "), json)
    }

    func testJSONLogsCarryStableFields() async throws {
        let c = try AgentCluster()
        defer { c.shutdown() }
        c.extraConfig = { _ in "log_format = \"json\"\n" }
        try c.createNetwork()
        try c.join("n2")
        try await c.waitUntil("n1 leads and sees n2 alive", nodes: ["n1", "n2"]) { vs in
            vs.allSatisfy { $0.leader == vs[0].leader && $0.leader != "none" } && vs[0].members.filter(\.isAlive).count == 2
        }
        let n1 = await c.status("n1")!.node, n2 = await c.status("n2")!.node
        // A service deployment, so a line carries the `service` field.
        try "name: web\ncommand: [sleep, \"600\"]\nresources: {memory: 16Mi}\n".write(toFile: c.home("web.yaml"), atomically: true, encoding: .utf8)
        var deployed = (Int32(1), "")
        let deadline = Date().addingTimeInterval(20)
        repeat {
            deployed = try c.cli(["service", "deploy", c.home("web.yaml"), "--home", c.home("n1"), "--wait", "0"])
            if deployed.0 == 0 { break }
            try await Task.sleep(nanoseconds: 200_000_000)  // polls until a member offers services
        } while Date() < deadline
        XCTAssertEqual(deployed.0, 0, deployed.1)
        c.terminate("n2")
        c.terminate("n1")
        for (name, id) in [("n1", n1), ("n2", n2)] {
            let text = try String(contentsOfFile: c.home(name) + ".log", encoding: .utf8)
            var lines: [[String: Any]] = []
            for l in text.split(separator: "\n") where !l.hasPrefix("[harness]") {
                guard let o = try? JSONSerialization.jsonObject(with: Data(l.utf8)) as? [String: Any] else {
                    XCTFail("\(name): not a JSON line: \(l)")
                    continue
                }
                lines.append(o)
                for f in ["ts", "level", "msg", "logger"] { XCTAssertNotNil(o[f] as? String, "\(name): no \(f) in \(l)") }
                XCTAssertEqual(o["agent"] as? String, id, "\(name): every line names its agent: \(l)")
                XCTAssertTrue((o["ts"] as? String)?.hasSuffix("Z") == true && (o["ts"] as? String)?.count == 24, "\(l)")
            }
            XCTAssertGreaterThan(lines.count, 3, text)
            XCTAssertTrue(lines.contains { $0["msg"] as? String == "agent started" && $0["node"] as? String == id && $0["listen"] != nil }, "\(name)")
            let leader = lines.first { $0["msg"] as? String == "leader changed" }
            XCTAssertNotNil(leader, "\(name): the leader change is logged")
            XCTAssertNotNil((leader?["term"] as? String).flatMap(UInt64.init), "\(String(describing: leader))")
            XCTAssertEqual(leader?["peer"] as? String, n1, "n1 is the leader")
            // No secret: the invite n2 joined with (a one-time secret) never appears.
            XCTAssertFalse(text.contains("myc-invite-"), "\(name)'s log holds no invite token")
        }
        let n1Lines = try String(contentsOfFile: c.home("n1") + ".log", encoding: .utf8).split(separator: "\n")
            .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        XCTAssertTrue(n1Lines.contains { $0["msg"] as? String == "admitting a joiner" && $0["node"] as? String == n2 }, "the joiner is the line's node")
        XCTAssertTrue(n1Lines.contains { $0["event"] as? String == "true" && $0["node"] as? String == n2 }, "events name their member")
        XCTAssertTrue(n1Lines.contains { $0["service"] as? String == "web" && $0["msg"] as? String == "service deployment proposed" }, "the service is a field")
    }

    func testDefaultLogsStayHumanReadable() async throws {
        let c = try AgentCluster()
        defer { c.shutdown() }
        try c.createNetwork()
        try await c.waitUntil("n1 leads", nodes: ["n1"]) { $0[0].leader == $0[0].node }
        c.terminate("n1")
        let text = try String(contentsOfFile: c.home("n1") + ".log", encoding: .utf8)
        XCTAssertTrue(text.contains("agent started"), text)
        XCTAssertFalse(text.split(separator: "\n").contains { $0.hasPrefix("{") }, text)
    }
}

/// The JSON line format itself (pure), and the `log_format` setting.
final class JSONLogLineTests: XCTestCase {
    func testRenderHasStableFieldsAndEscapes() throws {
        let line = JSONLogLine.render(timestamp: 1_796_665_200.25, level: .notice, message: "leader \"changed\"\n", label: "myceliumd",
                                      metadata: ["round": "7", "leader": "node-abc", "term": "3", "agent": "node-me", "error": "x",
                                                 "invite_token": "myc-invite-SECRET", "msg": "shadow"])
        XCTAssertTrue(line.hasPrefix("{\"ts\":\"2026-12-07T17:40:00.250Z\",\"level\":\"notice\",\"msg\":\"leader \\\"changed\\\"\\n\",\"logger\":\"myceliumd\","), line)
        let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        XCTAssertEqual(o["vote"], "7", "round is the vote field")
        XCTAssertEqual(o["peer"], "node-abc", "the leader is the peer field")
        XCTAssertEqual(o["term"], "3")
        XCTAssertEqual(o["agent"], "node-me")
        XCTAssertEqual(o["invite_token"], "[redacted]")
        XCTAssertFalse(line.contains("SECRET"))
        XCTAssertEqual(o["msg"], "leader \"changed\"\n", "metadata cannot overwrite msg")
        XCTAssertEqual(o["meta_msg"], "shadow")
    }

    func testEventSubjects() {
        XCTAssertEqual(JSONLogLine.subjects(in: "VM vm1: started as its primary (epoch 3)"), ["vm": "vm1"])
        XCTAssertEqual(JSONLogLine.subjects(in: "volume data: create (task 4) is this node's to carry out"), ["volume": "data"])
        XCTAssertEqual(JSONLogLine.subjects(in: "admitted node-0h0687nea3yf5q99xxmqwj0se286y"), ["node": "node-0h0687nea3yf5q99xxmqwj0se286y"])
        XCTAssertEqual(JSONLogLine.subjects(in: "service web placed on 3 nodes"), ["service": "web"])
        XCTAssertEqual(JSONLogLine.subjects(in: "quorum regained; fallback over"), [:])
    }

    func testLogFormatSetting() throws {
        XCTAssertEqual(try AgentConfig.parse("log_format = \"json\"").logFormat, "json")
        XCTAssertEqual(AgentConfig().logFormat, "text")
        XCTAssertThrowsError(try AgentConfig.parse("log_format = \"xml\""))
    }
}
