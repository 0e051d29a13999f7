import Foundation
import MyceliumAPI
import XCTest

/// Services on real agents (issue 17): three hosts as network namespaces on a bridge, each with its
/// own agent; a `process` service deployed with the real CLI from a YAML file, reached by its DNS
/// name from another host with the real `dig` and `curl`, restarted when its health check fails, and
/// moved when its host dies. Needs root (CI is root).
final class ServiceProcessTests: XCTestCase {
    func testAProcessServiceIsPlacedServedByNameRestartedAndMovedWhenItsHostDies() async throws {
        let net = try HostNetwork(names: ["n1", "n2", "n3"])
        let c = try AgentCluster()
        defer { c.shutdown(); net.tearDown() }
        c.listenHost = { net.ip($0) }
        c.netns = { net.ns($0) }
        c.enterNetOnly = true
        c.extraConfig = { n in "dns_listen = \"127.0.0.1:8600\"\nnode_labels = [\"zone=z\(n.dropFirst())\"]\n" }
        try c.createNetwork()
        for n in ["n2", "n3"] { try c.join(n) }
        try await c.waitUntil("3 nodes formed", nodes: net.names, AgentCluster.formed(3))
        var nodeOf: [String: String] = [:]
        for n in net.names { nodeOf[await c.status(n)?.node ?? ""] = n }

        // Two replicas, one per node, answering HTTP; a check that fails turns them unhealthy.
        let spec = c.home("web.yaml")
        try """
            name: web
            command: [python3, -m, http.server, "18080", --bind, "0.0.0.0", --directory, "."]
            replicas: 2
            resources: {cpu: 200m, memory: 128Mi}
            ports: [{name: http, port: 18080}]
            health: {type: http, port: 18080, path: /, interval: 300ms, timeout: 500ms, threshold: 2}
            restart: {policy: always, delay: 200ms}
            placement: {strategy: spread, max_per_node: 1}
            """.write(toFile: spec, atomically: true, encoding: .utf8)
        let (rc, out) = try c.cli(["service", "deploy", spec, "--home", c.home("n1"), "--wait", "60"], netns: net.ns("n1"))
        XCTAssertEqual(rc, 0, out)
        var web = try await service("web", on: "n2", c)
        XCTAssertEqual(web.serving, 2, "\(web)")
        let hosts = Set(web.instances.map(\.node))
        XCTAssertEqual(hosts.count, 2, "max_per_node 1 puts the replicas on two nodes")

        // Reached by name from the third node: dig answers both addresses, curl gets a page from each.
        let expected = Set(web.instances.map { net.ip(nodeOf[$0.node]!) })
        try await waitUntil("DNS answers both instances", timeout: 20, poll: 0.2) {
            Set(try net.run("n3", "dig @127.0.0.1 -p 8600 +short +time=1 +tries=1 web.service.mycelium").split(separator: "\n").map(String.init)) == expected
        }
        let srv = try net.run("n3", "dig @127.0.0.1 -p 8600 +short +time=1 +tries=1 SRV web.service.mycelium")
        XCTAssertTrue(srv.contains("18080"), srv)
        XCTAssertTrue(try net.run("n3", "dig @127.0.0.1 -p 8600 +time=1 +tries=1 nope.service.mycelium").contains("NXDOMAIN"))
        for ip in expected {
            XCTAssertTrue(try net.run("n3", "curl -sf --max-time 5 http://\(ip):18080/").contains("<"), "instance at \(ip) serves")
        }

        // Its log is readable from any member: the third node's agent fetches it from the instance's node.
        let (lrc, lout) = try c.cli(["service", "logs", "web", "--instance", "\(web.instances[0].slot)", "--home", c.home("n3"), "-o", "json"], netns: net.ns("n3"))
        XCTAssertEqual(lrc, 0, lout)
        XCTAssertTrue(lout.contains("\"node\"") && lout.contains(web.instances[0].node), "the log came from the instance's node: \(lout)")
        XCTAssertTrue(lout.contains("\\\"GET "), "python's access log of the health checks: \(lout)")

        // An instance whose process dies is restarted where it is (restart policy always).
        let victim = try XCTUnwrap(web.instances.first)
        let victimHost = try XCTUnwrap(nodeOf[victim.node])
        XCTAssertEqual(net.kill(in: victimHost, matching: "http.server"), 1, "one instance on its host")
        try await waitUntil("the killed instance is restarted and serves", timeout: 30, poll: 0.2) {
            let s = try await self.service("web", on: "n1", c)
            return s.instances.first { $0.id == victim.id }.map { $0.restarts >= 1 && $0.serving } ?? false
        }

        // Kill the host of an instance (its agent and everything in its namespace): the instance is
        // placed on the node that had none, and DNS follows.
        let dead = victimHost
        let survivors = net.names.filter { $0 != dead }
        let killedAt = Date()
        net.killEverything(in: dead)
        c.kill9(dead)
        let deadIP = net.ip(dead)
        try await waitUntil("the dead host's instance runs elsewhere and DNS drops it", timeout: 60, poll: 0.2) {
            let answer = Set(try net.run(survivors[0], "dig @127.0.0.1 -p 8600 +short +time=1 +tries=1 web.service.mycelium").split(separator: "\n").map(String.init))
            return answer.count == 2 && !answer.contains(deadIP) && answer.isSubset(of: Set(survivors.map(net.ip)))
        }
        print("service failover: \(String(format: "%.2f", Date().timeIntervalSince(killedAt))) s from the host's death to DNS answering only live instances (a timing for the log, not asserted)")
        web = try await service("web", on: survivors[0], c)
        XCTAssertEqual(Set(web.instances.map { nodeOf[$0.node]! }), Set(survivors), "\(web)")

        // Drain one survivor from the other's CLI: its instance stops and, with one instance per node
        // and no other node left, stays unplaced with the reason; undone, it comes back.
        let drained = survivors[1]
        let drainedID = try XCTUnwrap(nodeOf.first { $0.value == drained }?.key)
        var (drc, dout) = try c.cli(["service", "drain", "--node", drainedID, "--home", c.home(survivors[0])], netns: net.ns(survivors[0]))
        XCTAssertEqual(drc, 0, dout)
        try await waitUntil("the drained node's instance stops", timeout: 30, poll: 0.1) {
            let s = try await self.service("web", on: survivors[0], c)
            return net.processes(in: drained, matching: "http.server").isEmpty && !s.pending.isEmpty && s.serving == 1
        }
        (drc, dout) = try c.cli(["service", "drain", "--undo", "--node", drainedID, "--home", c.home(survivors[0])], netns: net.ns(survivors[0]))
        XCTAssertEqual(drc, 0, dout)
        try await waitUntil("the undrained node runs an instance again", timeout: 30, poll: 0.1) {
            try await self.service("web", on: survivors[0], c).serving == 2
        }

        // Stopped: the record goes and no instance process is left on the live hosts.
        let (src, sout) = try c.cli(["service", "stop", "web", "--home", c.home(survivors[0])], netns: net.ns(survivors[0]))
        XCTAssertEqual(src, 0, sout)
        try await waitUntil("instances stopped", timeout: 20, poll: 0.2) {
            survivors.allSatisfy { net.processes(in: $0, matching: "http.server").isEmpty }
        }
    }

    func testAPartitionedNodeStopsItsSingletonBeforeItsReplacementStarts() async throws {
        let net = try HostNetwork(names: ["n1", "n2", "n3"])
        let c = try AgentCluster()
        defer { c.shutdown(); net.tearDown() }
        c.listenHost = { net.ip($0) }
        c.netns = { net.ns($0) }
        c.enterNetOnly = true
        try c.createNetwork()
        for n in ["n2", "n3"] { try c.join(n) }
        try await c.waitUntil("3 nodes formed", nodes: net.names, AgentCluster.formed(3))
        let marker = "mycelium-singleton-\(UUID().uuidString.prefix(8))"
        let spec = c.home("db.yaml")
        try "name: db\ncommand: [python3, -c, 'import time; time.sleep(600)', \(marker)]\nresources: {memory: 32Mi}\n"
            .write(toFile: spec, atomically: true, encoding: .utf8)
        let (rc, out) = try c.cli(["service", "deploy", spec, "--home", c.home("n1"), "--wait", "30"], netns: net.ns("n1"))
        XCTAssertEqual(rc, 0, out)
        func hosts() -> [String] { net.names.filter { !net.processes(in: $0, matching: marker).isEmpty } }
        try await waitUntil("db runs on one node", timeout: 20, poll: 0.05) { hosts().count == 1 }
        let cut = hosts()[0], rest = net.names.filter { $0 != cut }

        // Cut its host off. Its agent can no longer renew the node lease: it stops db; the others
        // confirm its failure and the leader places db elsewhere only after that lease ended.
        try net.setLink(cut, up: false)
        defer { try? net.setLink(cut, up: true) }
        var stoppedAt: Date?, startedAt: Date?
        try await waitUntil("db stops on the cut-off node and starts on another", timeout: 60, poll: 0.05) {
            if stoppedAt == nil && net.processes(in: cut, matching: marker).isEmpty { stoppedAt = Date() }
            if startedAt == nil && rest.contains(where: { !net.processes(in: $0, matching: marker).isEmpty }) { startedAt = Date() }
            return stoppedAt != nil && startedAt != nil
        }
        let stopped = try XCTUnwrap(stoppedAt), started = try XCTUnwrap(startedAt)
        XCTAssertLessThan(stopped, started, "the cut-off copy stopped before the replacement started: never two at once")
        print("singleton: stopped on the cut-off node, replacement started \(String(format: "%.2f", started.timeIntervalSince(stopped))) s later (not asserted)")
        XCTAssertEqual(rest.filter { !net.processes(in: $0, matching: marker).isEmpty }.count, 1)
    }

    func testBadSpecsAreClearErrorsAndNothingIsDeployed() async throws {
        let c = try AgentCluster()
        defer { c.shutdown() }
        c.extraConfig = { _ in "handoff_members = 1\nsclerotia = 1\n" }
        try c.createNetwork()
        try await c.waitUntil("1 node formed", nodes: ["n1"], AgentCluster.formed(1))
        func deploy(_ yaml: String) throws -> (Int32, String) {
            let f = c.home("bad.yaml")
            try yaml.write(toFile: f, atomically: true, encoding: .utf8)
            return try c.cli(["service", "deploy", f, "--home", c.home("n1"), "--wait", "0"])
        }
        let cases: [(String, String)] = [
            ("name: a\ndriver: docker\ncommand: [x]\n", "use process, podman or k3s"),
            ("name: a\ncommand: [x]\nreplica: 2\n", "unknown field 'replica'"),
            ("name: a\ncommand: [x\n", "bad.yaml"),
            ("name: a\ncommand: [sleep, '9']\nresources: {memory: 64Ti}\n", "out of range"),
            ("name: a\ncommand: [sleep, '9']\nresources: {memory: 900Gi}\n", "no member can run an instance of 'a'"),
            ("name: a\ncommand: [sleep, '9']\nplacement: {constraints: [\"zone == mars\"]}\n", "fails constraint zone=mars"),
            ("name: a\ncommand: [sleep, '9']\nplacement: {constraints: [\"zone = mars\"]}\n", "cannot read the rule"),
            ("name: a\ndriver: podman\n", "needs an image"),
            ("name: a\ndriver: podman\nimage: web:latest\ncommand: [x]\n", "absolute path of a root filesystem"),
            ("name: a\ndriver: podman\nimage: /srv/web\n", "needs a command"),
        ]
        for (yaml, expected) in cases {
            let (rc, out) = try deploy(yaml)
            XCTAssertNotEqual(rc, 0, yaml)
            XCTAssertTrue(out.contains(expected), "\(yaml) → \(out)")
        }
        let s = try await AgentClient(socket: c.home("n1") + "/agent.sock").services()
        XCTAssertTrue(s.services.isEmpty, "nothing half-deployed: \(s.services.map(\.name))")

        // An instance never outlives its agent: SIGKILL the agent, and its reaper kills the instance.
        let marker = "mycelium-reaper-test-\(UUID().uuidString.prefix(8))"
        defer { _ = try? HostNetwork.sh("pkill -9 -f '[m]\(marker.dropFirst())' || true") }
        let (rc, out) = try deploy("name: sleeper\ncommand: [python3, -c, 'import time; time.sleep(300)', \(marker)]\n")
        XCTAssertEqual(rc, 0, out)
        // "[m]..." so pgrep does not find the shell that runs it (its command line holds the pattern).
        func running() -> Bool { ((try? HostNetwork.sh("pgrep -f '[m]\(marker.dropFirst())' || true")) ?? "").isEmpty == false }
        try await waitUntil("the instance runs", timeout: 30, poll: 0.1) { running() }
        c.kill9("n1")
        try await waitUntil("the reaper kills the instance of the dead agent", timeout: 20, poll: 0.1) { !running() }
    }

    func service(_ name: String, on n: String, _ c: AgentCluster) async throws -> ServiceInfo {
        let all = try await AgentClient(socket: c.home(n) + "/agent.sock").services()
        return try XCTUnwrap(all.services.first { $0.name == name }, "no service \(name) in \(all.services.map(\.name))")
    }
}

/// Hosts as network namespaces on one bridge (in a hub namespace of its own), removed in `tearDown`.
final class HostNetwork {
    let tag = String(UUID().uuidString.prefix(6)).lowercased()
    let names: [String]
    var hub: String { "myc\(tag)h" }
    let subnet: Int

    init(names: [String]) throws {
        self.names = names
        subnet = 10 + Int.random(in: 0..<200)
        guard getuid() == 0 else { throw AgentTestError("network namespaces need root (CI runs as root)") }
        do {
            try Self.sh("ip netns add \(hub) && ip -n \(hub) link add br0 type bridge && ip -n \(hub) link set br0 up && ip -n \(hub) link set lo up")
            for n in names {
                try Self.sh("ip netns add \(ns(n)) && ip -n \(ns(n)) link set lo up")
                try Self.sh("ip link add v\(tag)\(n) netns \(hub) type veth peer name eth0 netns \(ns(n))")
                try Self.sh("ip -n \(hub) link set v\(tag)\(n) master br0 up && ip -n \(ns(n)) addr add \(ip(n))/24 dev eth0 && ip -n \(ns(n)) link set eth0 up")
            }
        } catch {
            tearDown()
            throw error
        }
    }

    func ns(_ n: String) -> String { "myc\(tag)\(n)" }
    func ip(_ n: String) -> String { "10.232.\(subnet).\(Int(n.dropFirst())! + 10)" }

    /// The processes in `n`'s namespace whose command line contains `text`.
    func processes(in n: String, matching text: String) -> [Int32] {
        let pids = ((try? Self.sh("ip netns pids \(ns(n))")) ?? "").split(separator: "\n").compactMap { Int32($0) }
        return pids.filter { pid in
            guard let d = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            return String(decoding: d.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(text)
        }
    }

    /// SIGKILLs those processes; how many there were.
    func kill(in n: String, matching text: String) -> Int {
        let pids = processes(in: n, matching: text)
        for p in pids { Foundation.kill(p, SIGKILL) }
        return pids.count
    }

    /// Takes `n`'s link to the bridge down (a partition) or up again.
    func setLink(_ n: String, up: Bool) throws {
        try Self.sh("ip -n \(hub) link set v\(tag)\(n) \(up ? "up" : "down")")
    }

    /// Kills every process in `n`'s namespace (a host losing power).
    func killEverything(in n: String) {
        _ = try? Self.sh("for p in $(ip netns pids \(ns(n))); do kill -9 $p; done")
    }

    func tearDown() {
        for n in names { killEverything(in: n); _ = try? Self.sh("ip netns del \(ns(n))") }
        _ = try? Self.sh("ip netns del \(hub)")
    }

    /// Runs a shell command in `n`'s namespace; its standard output.
    @discardableResult
    func run(_ n: String, _ cmd: String) throws -> String {
        try Self.sh("ip netns exec \(ns(n)) sh -c \"\(cmd.replacingOccurrences(of: "\"", with: "\\\""))\"")
    }

    @discardableResult
    static func sh(_ cmd: String) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", cmd]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        if p.terminationStatus != 0 {
            throw AgentTestError("'\(cmd)' failed (\(p.terminationStatus)): " + String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
        }
        return String(decoding: o, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
