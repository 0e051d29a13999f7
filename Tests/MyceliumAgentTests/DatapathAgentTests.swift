import Foundation
import MyceliumAPI
import MyceliumCNI
import ServiceRuntime
import XCTest

/// The datapath across nodes, driven by the agents (issue 17): three hosts as network namespaces on
/// one bridge, each agent loading its own eBPF datapath (pinned apart, as three machines would) and
/// programming routes to the other nodes' pod CIDRs from the control state alone: native on the
/// shared subnet, VXLAN when asked; a host's death removes its route everywhere. Pods made by the
/// real mycelium-cni plugin on two hosts then talk through the agent-programmed datapath, with
/// forwarding off, so nothing but eBPF carries them; natively too, with no identity added by hand:
/// each agent publishes its node's pods through the control state. Needs root (CI is root).
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

            // Pods on n1 and n2 made by the CNI plugin, no service's: a natively routed packet carries
            // no identity, so the receiving node must know the sender's. Each agent reads its
            // datapath's endpoints and publishes them through the control state; the other agents
            // record them. Nothing is added by hand.
            let mine = NetworkConfig.networkIdentity(ofNetwork: "mycelium")
            let theirs = NetworkConfig.networkIdentity(ofNetwork: "other")
            XCTAssertNotEqual(mine, theirs)
            let a = try CNIPod(net: net, host: "n1", home: c.home("n1"), pin: pins["n1"]!, name: "a")
            defer { a.remove() }
            let b = try CNIPod(net: net, host: "n2", home: c.home("n2"), pin: pins["n2"]!, name: "b")
            defer { b.remove() }
            // A pod of another network on n3, published by n3 with its own identity.
            let x = try CNIPod(net: net, host: "n3", home: c.home("n3"), pin: pins["n3"]!, name: "x", network: "other")
            defer { x.remove() }
            func remotes(_ n: String) -> [IPv4Address: UInt32] { (try? Datapath(pinDir: pins[n]!).remotes()) ?? [:] }
            let made = Date()
            try await waitUntil("every node records the other nodes' pods with their identities", timeout: 30, poll: 0.2) {
                let n1 = remotes("n1"), n2 = remotes("n2"), n3 = remotes("n3")
                return n1[IPv4Address(b.ip)!] == mine && n1[IPv4Address(x.ip)!] == theirs
                    && n2[IPv4Address(a.ip)!] == mine && n2[IPv4Address(x.ip)!] == theirs
                    && n3[IPv4Address(a.ip)!] == mine && n3[IPv4Address(b.ip)!] == mine
            }
            print("the pods' identities reached every other node \(String(format: "%.1f", Date().timeIntervalSince(made))) s after the last was made")
            XCTAssertNil(remotes("n1")[IPv4Address(a.ip)!], "a node does not record its own pods as remote")
            XCTAssertTrue(a.ping(b.ip), "a (n1) reaches b (n2) natively: n2 knows a's identity from n1's publication")
            XCTAssertTrue(b.ping(a.ip), "and back")
            let before = try Datapath(pinDir: pins["n2"]!).stats(IPv4Address(b.ip)!).drops[0]
            XCTAssertFalse(x.ping(b.ip), "a pod of another network is dropped at the receiving node")
            let drops = try Datapath(pinDir: pins["n2"]!).stats(IPv4Address(b.ip)!).drops[0]
            XCTAssertGreaterThan(drops, before, "node n2 counted x's packets as policy drops on b")
            XCTAssertEqual(try net.run("n2", "sysctl -n net.ipv4.ip_forward").trimmingCharacters(in: .whitespacesAndNewlines), "0",
                           "forwarding is off: only eBPF carried the packets")

            // Kill n3 whole: once the network agrees it failed, its route and its pods' identities go
            // from n1 and n2.
            net.killEverything(in: "n3")
            c.kill9("n3")
            try await waitUntil("n3's route and pods are removed from the survivors", timeout: 60, poll: 0.2) {
                ["n1", "n2"].allSatisfy { n in
                    self.routes(pins[n]!) == expected(n, alive: ["n1", "n2"], vxlan: false) && remotes(n)[IPv4Address(x.ip)!] == nil
                }
            }
            XCTAssertEqual(remotes("n2")[IPv4Address(a.ip)!], mine, "the live node's pods stay")
            // A pod that goes is withdrawn: n1 publishes its smaller set and n2 forgets a.
            a.remove()
            try await waitUntil("n2 forgets a once it is gone from n1", timeout: 30, poll: 0.2) { remotes("n2")[IPv4Address(a.ip)!] == nil }
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

    /// The whole path a user sees: two podman services on two hosts, the client finding the server by
    /// name (the DNS its node serves pods) and reaching its pod address natively across the underlay,
    /// with nothing added by hand: routes from the members' pod CIDRs, identities from the instances'
    /// reports and the nodes' published pods. A pod that is no service instance gets in as well.
    func testTwoPodmanServicesOnTwoHostsReachEachOtherByName() async throws {
        guard PodmanSetup.find("podman") != nil, PodmanSetup.find("runc") != nil else {
            throw AgentTestError("this test needs podman and runc: apt-get install podman runc")
        }
        try await runCluster(mode: "auto", extra: { n in "node_labels = [\"zone=z\(n.dropFirst())\"]\ncni_bin_dir = \"\(AgentCluster.binDir)\"\n" }) { net, c, pins in
            let rootfs = c.dir + "/rootfs"
            for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "www"] { try FileManager.default.createDirectory(atPath: rootfs + "/" + d, withIntermediateDirectories: true) }
            try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: rootfs + "/bin/busybox")
            for a in ["sh", "httpd", "wget", "sleep", "echo", "cat", "nslookup", "sed", "tail", "ping", "ip", "nc", "timeout"] { try FileManager.default.createSymbolicLink(atPath: rootfs + "/bin/" + a, withDestinationPath: "busybox") }
            try "hello-across-hosts\n".write(toFile: rootfs + "/www/index.html", atomically: true, encoding: .utf8)
            // busybox-static's wget resolves names through glibc's NSS, which a static binary cannot
            // load, and crashes with -T (Debian's 1.35); its nslookup has a resolver of its own, which
            // reads the resolv.conf podman wrote (the node's address, search service.mycelium).
            try """
                while true; do
                  ip=$(nslookup web 2>/dev/null | sed -n '/^Address/{/:53$/!s/.*[^0-9.]\\([0-9][0-9.]*\\)$/\\1/p}' | tail -n 1)
                  if [ -n "$ip" ]; then timeout 3 wget -q -O - "http://$ip:8080/index.html" || echo "miss $ip"; else echo "web not resolved"; fi
                  sleep 0.3
                done

                """.write(toFile: rootfs + "/client.sh", atomically: true, encoding: .utf8)
            let web = c.home("web.yaml"), client = c.home("client.yaml")
            try """
                name: web
                driver: podman
                image: \(rootfs)
                command: [/bin/httpd, -f, -p, "8080", -h, /www]
                ports: [{name: http, port: 8080}]
                health: {type: tcp, port: 8080, interval: 300ms, timeout: 1s, threshold: 2}
                placement: {constraints: ["zone == z2"]}
                """.write(toFile: web, atomically: true, encoding: .utf8)
            try """
                name: client
                driver: podman
                image: \(rootfs)
                command: [/bin/sh, /client.sh]
                placement: {constraints: ["zone == z1"]}
                depends_on: [web]
                """.write(toFile: client, atomically: true, encoding: .utf8)
            for f in [web, client] {
                let (rc, out) = try c.cli(["service", "deploy", f, "--home", c.home("n1"), "--wait", "90"], netns: net.ns("n1"))
                XCTAssertEqual(rc, 0, out)
            }
            // The client (on n1) resolves "web" through its node's DNS (search service.mycelium) and
            // fetches the page from the pod on n2; its log says so.
            var last = ""
            do {
                try await waitUntil("the client on n1 fetches the page of web on n2 by name", timeout: 60, poll: 0.5) {
                    let (_, out) = try c.cli(["service", "logs", "client", "--home", c.home("n1"), "--bytes", "2000"], netns: net.ns("n1"))
                    last = out
                    return out.contains("hello-across-hosts")
                }
            } catch {
                let show = (try? c.cli(["service", "list", "--home", c.home("n1")], netns: net.ns("n1")).1) ?? ""
                let info = (try? await AgentClient(socket: c.home("n1") + "/agent.sock").services().services) ?? []
                var stats = ""
                for (name, host) in [("client", "n1"), ("web", "n2")] {
                    if let ip = info.first(where: { $0.name == name })?.instances.first?.address, let a = IPv4Address(ip) {
                        stats += "\(name) \(ip) on \(host): \((try? Datapath(pinDir: pins[host]!).stats(a)).map { "\($0)" } ?? "no endpoint")\n"
                    }
                }
                var probe = ""
                if let webIP = info.first(where: { $0.name == "web" })?.instances.first?.address,
                   let p = try? CNIPod(net: net, host: "n1", home: c.home("n1"), pin: pins["n1"]!, name: "d",
                                       ipamDir: PodmanSetup.runroot(for: c.home("n1") + "/podman") + "/cni") {
                    try? Datapath(pinDir: pins["n2"]!).addRemote(IPv4Address(p.ip)!, networkId: NetworkConfig.networkIdentity(ofNetwork: "mycelium"))
                    probe = "debug pod \(p.ip) pings web: \(p.ping(webIP)); " + ((try? HostNetwork.sh("ip netns exec \(p.ns) ip route; ip netns exec \(p.ns) ip link")) ?? "")
                    probe += "\ncurl from the debug pod: " + ((try? HostNetwork.sh("ip netns exec \(p.ns) curl -sS --max-time 3 http://\(webIP):8080/index.html 2>&1 || true")) ?? "?")
                    if let l = PodmanRuntime.leftovers(of: c.home("n1") + "/services/podman-instances") {
                        let q = (l.settings.base + ["exec", PodmanRuntime.containerName("client-0"), "/bin/sh", "-c",
                                 "ip addr; ip route; cat /etc/resolv.conf; ping -c 2 -W 1 \(webIP); echo | nc -w 2 \(webIP) 8080; echo nc=$?"]).map { "'" + $0 + "'" }.joined(separator: " ")
                        let env = l.settings.environment.map { "\($0.key)='\($0.value)'" }.joined(separator: " ")
                        probe += "\ninside the client: " + ((try? HostNetwork.sh("env -i \(env) \(q) </dev/null 2>&1 || true")) ?? "?")
                    }
                    probe += "\nn1 forwarding: " + ((try? net.run("n1", "sysctl -n net.ipv4.ip_forward")) ?? "?")
                    probe += "\nweb stats after: \((try? Datapath(pinDir: pins["n2"]!).stats(IPv4Address(webIP)!)).map { "\($0)" } ?? "")"
                    p.remove()
                }
                XCTFail("\(probe)\nthe client's log: \(last)\nservices: \(show)\nn1 routes: \(self.routes(pins["n1"]!))\nn2 remotes: \((try? Datapath(pinDir: pins["n2"]!).remotes()) ?? [:])\n\(stats)")
                throw error
            }
            XCTAssertTrue(last.contains("hello-across-hosts"), last)
            let info = try await AgentClient(socket: c.home("n1") + "/agent.sock").services().services
            let webIP = try XCTUnwrap(info.first { $0.name == "web" }?.instances.first?.address)
            let clientIP = try XCTUnwrap(info.first { $0.name == "client" }?.instances.first?.address)
            XCTAssertTrue(self.routes(pins["n1"]!).contains { $0.via == net.ip("n2") && !$0.vxlan }, "n1 routes natively to n2's pods")
            let remotes = try Datapath(pinDir: pins["n2"]!).remotes()
            XCTAssertNotNil(remotes[IPv4Address(clientIP)!], "n2 knows the client's identity from its report: \(remotes)")
            // A pod that is no service instance gets in too: n1 publishes it with its identity.
            // (IPAM shared with the agent's podman, so the two never hand out the same address.)
            let stray = try CNIPod(net: net, host: "n1", home: c.home("n1"), pin: pins["n1"]!, name: "s",
                                   ipamDir: PodmanSetup.runroot(for: c.home("n1") + "/podman") + "/cni")
            defer { stray.remove() }
            try await waitUntil("a pod that is no service instance reaches web once n1 published it", timeout: 30, poll: 0.2) {
                stray.ping(webIP)
            }
            for name in ["client", "web"] {
                let (rc, out) = try c.cli(["service", "stop", name, "--home", c.home("n1")], netns: net.ns("n1"))
                XCTAssertEqual(rc, 0, out)
            }
        }
    }

    /// Three hosts with agents that drive their datapaths; everything removed afterwards.
    func runCluster(mode: String, extra: @escaping (String) -> String = { _ in "" },
                    _ body: (HostNetwork, AgentCluster, [String: String]) async throws -> Void) async throws {
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
            "datapath_mode = \"\(mode)\"\ndatapath_object = \"\(obj)\"\ndatapath_pin_dir = \"\(pins[n]!)\"\n" + extra(n)
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

    init(net: HostNetwork, host: String, home: String, pin: String, name: String, network: String = "mycelium", ipamDir: String? = nil) throws {
        ns = "myc\(net.tag)p\(name)"
        hostNS = net.ns(host)
        let plugin = AgentCluster.binDir + "/mycelium-cni"
        config = """
            {"cniVersion": "1.0.0", "name": "\(network)", "type": "mycelium-cni", "pinDir": "\(pin)",
             "bpfObject": "\(try DatapathAgentTests.bpfObject())",
             "ipam": {"podCIDRFile": "\(home)/podcidr", "dataDir": "\(ipamDir ?? home + "/cni-ipam")"}}
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
