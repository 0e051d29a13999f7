import Foundation
import MyceliumCNI
import XCTest

/// The datapath across nodes, driven by the agents (issue 17): three hosts as network namespaces on
/// one bridge, each agent loading its own eBPF datapath (pinned apart, as three machines would) and
/// programming routes to the other nodes' pod CIDRs from the control state alone: native on the
/// shared subnet, VXLAN when asked; a host's death removes its route everywhere. Pods made by the
/// real mycelium-cni plugin on two hosts then talk through the agent-programmed datapath, with
/// forwarding off, so nothing but eBPF carries them. Needs root (CI is root).
final class DatapathAgentTests: XCTestCase {
    struct Route: Hashable, CustomStringConvertible {
        var cidr: String, via: String, vxlan: Bool
        var description: String { "\(cidr) via \(via)\(vxlan ? " vxlan" : "")" }
    }

    func routes(_ pin: String) -> Set<Route> {
        Set(((try? Datapath(pinDir: pin).routes()) ?? []).map { Route(cidr: "\($0.cidr)", via: "\($0.node)", vxlan: $0.vxlan) })
    }

    func podCIDR(_ c: AgentCluster, _ n: String) -> String {
        ((try? String(contentsOfFile: c.home(n) + "/podcidr", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func testAgentsRouteToEachOthersPodsAndForgetADeadHost() async throws {
        try await runCluster(mode: "auto") { net, c, pins in
            // auto on one subnet: native routes to both other nodes' blocks.
            func expected(_ n: String, alive: [String], vxlan: Bool) -> Set<Route> {
                Set(alive.filter { $0 != n }.map { Route(cidr: self.podCIDR(c, $0), via: net.ip($0), vxlan: vxlan) })
            }
            try await waitUntil("every node routes natively to the other two", timeout: 30, poll: 0.2) {
                net.names.allSatisfy { n in self.routes(pins[n]!) == expected(n, alive: net.names, vxlan: false) }
            }
            XCTAssertEqual(Set(net.names.map { self.podCIDR(c, $0) }).count, 3, "three distinct pod CIDRs")

            // Pods on n1 and n2 made by the CNI plugin: the routes carry them, but a natively routed
            // packet from a pod the receiving node has no identity for is dropped (policy).
            let a = try CNIPod(net: net, host: "n1", home: c.home("n1"), pin: pins["n1"]!, name: "a")
            defer { a.remove() }
            let b = try CNIPod(net: net, host: "n2", home: c.home("n2"), pin: pins["n2"]!, name: "b")
            defer { b.remove() }
            XCTAssertFalse(a.ping(b.ip), "a pod with no recorded identity must not get through")
            let drops = try Datapath(pinDir: pins["n2"]!).stats(IPv4Address(b.ip)!).drops[0]
            XCTAssertGreaterThan(drops, 0, "node n2 counted the policy drops on b")

            // Kill n3 whole: once the network agrees it failed, its route goes from n1 and n2.
            net.killEverything(in: "n3")
            c.kill9("n3")
            try await waitUntil("n3's route is removed from the survivors", timeout: 60, poll: 0.2) {
                ["n1", "n2"].allSatisfy { n in self.routes(pins[n]!) == expected(n, alive: ["n1", "n2"], vxlan: false) }
            }
        }
    }

    func testVXLANCarriesPodsAndTheirNetworkAcrossHosts() async throws {
        try await runCluster(mode: "vxlan") { net, c, pins in
            try await waitUntil("every node routes in VXLAN to the other two", timeout: 30, poll: 0.2) {
                net.names.allSatisfy { n in
                    let r = self.routes(pins[n]!)
                    return r.count == 2 && r.allSatisfy(\.vxlan)
                }
            }
            // In VXLAN the sender's network identity travels as the VNI: pods of the same network
            // reach each other with no per-pod state on the receiver; a pod of another network is
            // dropped by the receiving datapath.
            let a = try CNIPod(net: net, host: "n1", home: c.home("n1"), pin: pins["n1"]!, name: "a")
            defer { a.remove() }
            let b = try CNIPod(net: net, host: "n2", home: c.home("n2"), pin: pins["n2"]!, name: "b")
            defer { b.remove() }
            let x = try CNIPod(net: net, host: "n3", home: c.home("n3"), pin: pins["n3"]!, name: "x", network: "other")
            defer { x.remove() }
            XCTAssertTrue(a.ping(b.ip), "a (n1) reaches b (n2) through the agents' VXLAN routes")
            if ProcessInfo.processInfo.environment["MYC_DEBUG_POD"] != nil {
                print("a stats on n1: \(try Datapath(pinDir: pins["n1"]!).stats(IPv4Address(a.ip)!))")
                print("b stats on n2: \(try Datapath(pinDir: pins["n2"]!).stats(IPv4Address(b.ip)!))")
                for h in ["n1", "n2"] { print("\(h): " + ((try? net.run(h, "ip -s -d link show myc-vxlan; ip -s link show eth0; tc filter show dev eth0 ingress; bpftool net")) ?? "?")) }
                print(self.routes(pins["n1"]!), self.routes(pins["n2"]!))
            }
            XCTAssertTrue(b.ping(a.ip), "and back")
            XCTAssertFalse(x.ping(b.ip), "a pod of another network is dropped")
            let drops = try Datapath(pinDir: pins["n2"]!).stats(IPv4Address(b.ip)!).drops[0]
            XCTAssertGreaterThan(drops, 0, "n2's datapath counted the other network's packets as policy drops")
            XCTAssertEqual(try net.run("n1", "sysctl -n net.ipv4.ip_forward").trimmingCharacters(in: .whitespacesAndNewlines), "0",
                           "forwarding is off: only eBPF carried the packets")

            // Pods resolve service names at their node's address, port 53; nobody else is answered there.
            let spec = c.home("tick.yaml")
            try "name: tick\ncommand: [sleep, \"600\"]\nreplicas: 1\n".write(toFile: spec, atomically: true, encoding: .utf8)
            let (rc, out) = try c.cli(["service", "deploy", spec, "--home", c.home("n1"), "--wait", "60"], netns: net.ns("n1"))
            XCTAssertEqual(rc, 0, out)
            let dig = "dig @\(net.ip("n1")) +short +time=1 +tries=1 tick.service.mycelium"
            try await waitUntil("pod a resolves tick.service.mycelium at its node", timeout: 20, poll: 0.2) {
                let answer = (try? HostNetwork.sh("ip netns exec \(a.ns) \(dig)")) ?? ""
                return net.names.map(net.ip).contains(answer)
            }
            let outsider = (try? net.run("n2", dig + " || true")) ?? ""
            let answered = outsider.split(separator: "\n").contains { IPv4Address(String($0)) != nil }
            XCTAssertFalse(answered, "a host (not a pod) got an answer: \(outsider)")
            XCTAssertTrue(outsider.contains("timed out"), "the non-pod query is dropped unanswered: \(outsider)")
        }
    }

    /// Three hosts with agents that drive their datapaths; everything removed afterwards.
    func runCluster(mode: String, _ body: (HostNetwork, AgentCluster, [String: String]) async throws -> Void) async throws {
        let obj = try Self.bpfObject()
        let net = try HostNetwork(names: ["n1", "n2", "n3"])
        let c = try AgentCluster()
        var pins: [String: String] = [:]
        for n in net.names { pins[n] = "/sys/fs/bpf/myc-test-\(net.tag)-\(n)" }
        defer {
            c.shutdown()
            net.tearDown()
            for p in pins.values { try? Datapath(pinDir: p).unload() }
        }
        c.listenHost = { net.ip($0) }
        c.netns = { net.ns($0) }
        c.enterNetOnly = true
        c.extraConfig = { n in
            "datapath_mode = \"\(mode)\"\ndatapath_object = \"\(obj)\"\ndatapath_pin_dir = \"\(pins[n]!)\"\n"
        }
        try c.createNetwork()
        for n in ["n2", "n3"] { try c.join(n) }
        try await c.waitUntil("3 nodes formed", nodes: net.names, AgentCluster.formed(3))
        try await body(net, c, pins)
    }

    static func bpfObject() throws -> String {
        if let p = ProcessInfo.processInfo.environment["MYCELIUM_BPF_OBJECT"], !p.isEmpty { return p }
        let repo = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let path = repo + "/CSources/bpf/build/datapath.bpf.o"
        if !FileManager.default.fileExists(atPath: path) { try HostNetwork.sh("make -s -C '\(repo)/CSources/bpf'") }
        guard FileManager.default.fileExists(atPath: path) else { throw AgentTestError("no BPF object at \(path) (make -C CSources/bpf)") }
        return path
    }
}

/// A pod made by the real mycelium-cni plugin: a network namespace of its own whose eth0 the plugin
/// plugs into host `host`'s namespace, with an address from that host's pod CIDR (the file its agent
/// writes) and its endpoint in that host's datapath.
final class CNIPod {
    let ns: String
    let ip: String
    let config: String
    let hostNS: String
    let env: [String: String]

    init(net: HostNetwork, host: String, home: String, pin: String, name: String, network: String = "mycelium") throws {
        ns = "myc\(net.tag)p\(name)"
        hostNS = net.ns(host)
        let plugin = AgentCluster.binDir + "/mycelium-cni"
        config = """
            {"cniVersion": "1.0.0", "name": "\(network)", "type": "mycelium-cni", "pinDir": "\(pin)",
             "bpfObject": "\(try DatapathAgentTests.bpfObject())",
             "ipam": {"podCIDRFile": "\(home)/podcidr", "dataDir": "\(home)/cni-ipam"}}
            """
        try HostNetwork.sh("ip netns add \(ns)")
        // The plugin runs in the host's network namespace (as a runtime on that host would run it) and
        // moves the pod's end of the veth into the pod's namespace. nsenter, not `ip netns exec`: that
        // mounts a /sys of its own, without the bpffs the datapath is pinned in.
        env = ["CNI_COMMAND": "ADD", "CNI_CONTAINERID": ns, "CNI_NETNS": "/var/run/netns/\(ns)", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"]
        let out = try HostNetwork.sh("nsenter --net=/run/netns/\(hostNS) env \(env.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: " ")) \(plugin) <<'EOF'\n\(config)\nEOF")
        let result = (try? JSONSerialization.jsonObject(with: Data(out.utf8))) as? [String: Any]
        let first = (result?["ips"] as? [[String: Any]])?.first?["address"] as? String
        guard let address = first?.split(separator: "/").first else {
            _ = try? HostNetwork.sh("ip netns del \(ns)")
            throw AgentTestError("mycelium-cni ADD gave no address: \(out)")
        }
        ip = String(address)
        if ProcessInfo.processInfo.environment["MYC_DEBUG_POD"] != nil {
            print("pod \(name) on \(host): \(out)\nendpoints: \((try? Datapath(pinDir: pin).endpoints()) ?? [])")
        }
    }

    func ping(_ to: String) -> Bool {
        (try? HostNetwork.sh("ip netns exec \(ns) ping -c 2 -i 0.2 -W 1 \(to) >/dev/null 2>&1 && echo ok || echo no").contains("ok")) ?? false
    }

    func remove() {
        var del = env
        del["CNI_COMMAND"] = "DEL"
        _ = try? HostNetwork.sh("nsenter --net=/run/netns/\(hostNS) env \(del.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: " ")) \(AgentCluster.binDir + "/mycelium-cni") <<'EOF'\n\(config)\nEOF")
        _ = try? HostNetwork.sh("ip netns del \(ns)")
    }
}
