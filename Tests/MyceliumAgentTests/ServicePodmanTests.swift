import Foundation
import MyceliumAPI
import ServiceRuntime
import XCTest

/// The podman service driver on a real agent (issue 17): one host as a network namespace, its agent
/// running podman + runc with the agent's own containers.conf and CNI conflist (mycelium-cni on the
/// eBPF datapath, IPAM from the pod CIDR the network controller wrote). A busybox httpd from a
/// busybox-static root filesystem made here is deployed with the real CLI, reached on its pod
/// address, named by DNS with that address, restarted when its health check fails, and stopped with
/// nothing left; an agent SIGKILLed takes its container with it (the reaper). Needs root, podman, runc.
final class ServicePodmanTests: XCTestCase {
    func testAPodmanServiceServesOnItsPodAddressIsNamedByDNSRestartedAndLeavesNothing() async throws {
        guard getuid() == 0 else { throw AgentTestError("podman services need root (CI runs as root)") }
        guard PodmanSetup.find("podman") != nil, PodmanSetup.find("runc") != nil else { throw AgentTestError("this test needs podman and runc: apt-get install podman runc") }
        let object = try DatapathAgentTests.bpfObject()
        try HostNetwork.sh("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf")
        let pinDir = "/sys/fs/bpf/mycelium-svcpod-\(getpid())-\(UUID().uuidString.prefix(6))"

        let net = try HostNetwork(names: ["n1"])
        let c = try AgentCluster()
        defer {
            c.shutdown()
            net.tearDown()
            _ = try? HostNetwork.sh("rm -rf '\(pinDir)'")
        }
        c.listenHost = { net.ip($0) }
        c.netns = { net.ns($0) }
        c.enterNetOnly = true
        c.extraConfig = { _ in
            """
            handoff_members = 1
            sclerotia = 1
            dns_listen = "127.0.0.1:8600"
            cni_bin_dir = "\(AgentCluster.binDir)"
            datapath_object = "\(object)"
            datapath_pin_dir = "\(pinDir)"
            pod_cidr_pool = "10.251.0.0/16"

            """
        }
        try c.createNetwork()
        try await c.waitUntil("1 node formed with a pod CIDR", nodes: ["n1"]) { v in AgentCluster.formed(1)(v) && !v[0].podCIDR.isEmpty }
        let status = await c.status("n1")
        let podCIDR = try XCTUnwrap(status?.podCIDR)
        let podman = try XCTUnwrap(PodmanRuntime.leftovers(of: c.home("n1") + "/services/podman-instances"),
                                   "the agent set up no podman: \((try? String(contentsOfFile: c.home("n1") + ".log", encoding: .utf8))?.suffix(2000) ?? "")")
        func allocations() -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: podman.settings.allocationsDirectory)) ?? []).filter { $0.split(separator: ".").count == 4 }
        }
        func veths() -> [String] {
            ((try? net.run("n1", "ip -o link show type veth")) ?? "").split(separator: "\n").compactMap { l in
                let f = l.split(separator: " ")
                return f.count > 1 && f[1].hasPrefix("myc") ? String(f[1]) : nil
            }
        }

        // A busybox httpd, its page and its health page in a root filesystem of its own.
        let rootfs = c.dir + "/rootfs"
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "www"] { try FileManager.default.createDirectory(atPath: rootfs + "/" + d, withIntermediateDirectories: true) }
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: rootfs + "/bin/busybox")
        for a in ["sh", "httpd", "echo"] { try FileManager.default.createSymbolicLink(atPath: rootfs + "/bin/" + a, withDestinationPath: "busybox") }
        try "hello-from-podman\n".write(toFile: rootfs + "/www/index.html", atomically: true, encoding: .utf8)
        try "ok\n".write(toFile: rootfs + "/www/health.html", atomically: true, encoding: .utf8)

        let spec = c.home("web.yaml")
        try """
            name: web
            driver: podman
            image: \(rootfs)
            command: [/bin/sh, -c, "echo web-starting; exec httpd -f -v -p 8080 -h /www"]
            resources: {cpu: 200m, memory: 32Mi}
            ports: [{name: http, port: 8080}]
            health: {type: http, port: 8080, path: /health.html, interval: 300ms, timeout: 1s, threshold: 2}
            restart: {policy: always, delay: 200ms}
            """.write(toFile: spec, atomically: true, encoding: .utf8)
        let (rc, out) = try c.cli(["service", "deploy", spec, "--home", c.home("n1"), "--wait", "90"], netns: net.ns("n1"))
        XCTAssertEqual(rc, 0, out)
        var web = try await service("web", c)
        XCTAssertEqual(web.serving, 1, "\(web)")
        let instance = try XCTUnwrap(web.instances.first)
        let podIP = instance.address
        XCTAssertTrue(Self.inside(podIP, podCIDR), "the instance's address \(podIP) is its pod address in \(podCIDR), not the node's \(net.ip("n1"))")
        XCTAssertEqual(allocations(), [podIP])
        XCTAssertEqual(web.endpoints, ["\(podIP):8080"])

        // Reached on the pod address from the host, and named by DNS with it.
        XCTAssertTrue(try net.run("n1", "curl -sf --max-time 5 http://\(podIP):8080/index.html").contains("hello-from-podman"))
        try await waitUntil("DNS answers the pod address", timeout: 20, poll: 0.2) {
            try net.run("n1", "dig @127.0.0.1 -p 8600 +short +time=1 +tries=1 web.service.mycelium") == podIP
        }
        let (lrc, logs) = try c.cli(["service", "logs", "web", "--home", c.home("n1")], netns: net.ns("n1"))
        XCTAssertEqual(lrc, 0, logs)
        XCTAssertTrue(logs.contains("web-starting"), logs)

        // The health page goes: the check fails, the instance is restarted (a new container), and
        // serves again once the page is back.
        func sandbox() throws -> String {
            try podmanOut(podman, ["inspect", "--format", "{{.NetworkSettings.SandboxKey}}", PodmanRuntime.containerName(instance.id)])
        }
        var namespaces = [try sandbox()]
        let firstID = try podmanOut(podman, ["inspect", "--format", "{{.Id}}", PodmanRuntime.containerName(instance.id)])
        try FileManager.default.removeItem(atPath: rootfs + "/www/health.html")
        try await waitUntil("the unhealthy instance is restarted", timeout: 30, poll: 0.1) {
            try await self.service("web", c).instances.first.map { $0.restarts >= 1 } ?? false
        }
        try "ok\n".write(toFile: rootfs + "/www/health.html", atomically: true, encoding: .utf8)
        try await waitUntil("the restarted instance serves", timeout: 30, poll: 0.1) {
            let s = try await self.service("web", c)
            return s.serving == 1 && s.instances.first.map { Self.inside($0.address, podCIDR) } ?? false
        }
        web = try await service("web", c)
        let secondID = try podmanOut(podman, ["inspect", "--format", "{{.Id}}", PodmanRuntime.containerName(instance.id)])
        XCTAssertNotEqual(firstID, secondID, "the restart made a new container")
        namespaces.append(try sandbox())
        XCTAssertEqual(allocations(), [web.instances[0].address], "one address allocated: the old container's was released")

        // Stopped: no container, address, veth or network namespace is left.
        let (src, sout) = try c.cli(["service", "stop", "web", "--home", c.home("n1")], netns: net.ns("n1"))
        XCTAssertEqual(src, 0, sout)
        try await waitUntil("the container is gone", timeout: 30, poll: 0.2) { podman.names() == [] }
        XCTAssertEqual(allocations(), [])
        XCTAssertEqual(veths(), [])
        for ns in namespaces { XCTAssertFalse(FileManager.default.fileExists(atPath: ns), "the container's network namespace \(ns) is left") }

        // An agent that restarts removes what its earlier run left (here with its reaper killed
        // first, as when the whole host went down), then starts what the table assigns again.
        let (rc2, out2) = try c.cli(["service", "deploy", spec, "--home", c.home("n1"), "--wait", "90"], netns: net.ns("n1"))
        XCTAssertEqual(rc2, 0, out2)
        XCTAssertEqual(podman.names(), [PodmanRuntime.containerName("web-0")])
        let orphanID = try podmanOut(podman, ["inspect", "--format", "{{.Id}}", PodmanRuntime.containerName("web-0")])
        let orphanNamespace = try sandbox()
        let reaper = try XCTUnwrap(Int32((try? String(contentsOfFile: c.home("n1") + "/services/reaper.pid", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""))
        kill(reaper, SIGKILL)
        c.kill9("n1")
        XCTAssertEqual(podman.names(), [PodmanRuntime.containerName("web-0")], "with no reaper the container outlives its agent")
        try c.start("n1")
        try await waitUntil("the restarted agent replaced the old container and serves", timeout: 60, poll: 0.2) {
            guard let s = try? await self.service("web", c), s.serving == 1,
                  let id = try? self.podmanOut(podman, ["inspect", "--format", "{{.Id}}", PodmanRuntime.containerName("web-0")]) else { return false }
            return id != orphanID
        }
        XCTAssertEqual(podman.names(), [PodmanRuntime.containerName("web-0")])
        XCTAssertFalse(FileManager.default.fileExists(atPath: orphanNamespace), "the old container's network namespace is left")
        XCTAssertEqual(allocations().count, 1, "only the new container's address: \(allocations())")

        // An agent that dies takes its container with it: its reaper removes it.
        let lastNamespace = try sandbox()
        c.kill9("n1")
        try await waitUntil("the reaper removes the dead agent's container", timeout: 60, poll: 0.2) { podman.names() == [] }
        XCTAssertEqual(allocations(), [])
        XCTAssertEqual(veths(), [])
        XCTAssertFalse(FileManager.default.fileExists(atPath: lastNamespace), "the container's network namespace is left")
    }

    func testANodeWithoutPodmanSaysWhyAtDeploy() async throws {
        let c = try AgentCluster()
        defer { c.shutdown() }
        c.extraConfig = { _ in "handoff_members = 1\nsclerotia = 1\npodman = \"off\"\n" }
        try c.createNetwork()
        try await c.waitUntil("1 node formed", nodes: ["n1"], AgentCluster.formed(1))
        let f = c.home("pod.yaml")
        try "name: pod\ndriver: podman\nimage: /srv/none\ncommand: [/bin/sh]\n".write(toFile: f, atomically: true, encoding: .utf8)
        var last = ""
        // The node's placement facts reach the table shortly after it formed.
        try await waitUntil("the deploy is refused with the node's reason", timeout: 20, poll: 0.2) {
            let (rc, out) = try c.cli(["service", "deploy", f, "--home", c.home("n1"), "--wait", "0"])
            last = out
            return rc != 0 && out.contains("offers no podman driver: turned off in the agent's configuration")
        }
        XCTAssertFalse(last.isEmpty)
        let s = try await AgentClient(socket: c.home("n1") + "/agent.sock").services()
        XCTAssertTrue(s.services.isEmpty, "nothing deployed: \(s.services.map(\.name))")
        XCTAssertNil(PodmanRuntime.leftovers(of: c.home("n1") + "/services/podman-instances"), "no podman set up")
    }

    static func inside(_ ip: String, _ cidr: String) -> Bool {
        func v(_ s: Substring) -> UInt32? {
            let p = s.split(separator: ".")
            guard p.count == 4 else { return nil }
            return p.reduce(UInt32(0)) { a, b in a << 8 | UInt32(UInt8(b) ?? 0) }
        }
        let parts = cidr.split(separator: "/")
        guard parts.count == 2, let net = v(parts[0]), let len = UInt32(parts[1]), let a = v(Substring(ip)) else { return false }
        let mask: UInt32 = len == 0 ? 0 : UInt32.max << (32 - len)
        return a & mask == net & mask
    }

    func podmanOut(_ l: PodmanRuntime.Leftovers, _ args: [String]) throws -> String {
        let q = (l.settings.base + args).map { "'" + $0 + "'" }.joined(separator: " ")
        let env = l.settings.environment.map { "\($0.key)='\($0.value)'" }.joined(separator: " ")
        return try HostNetwork.sh("env -i \(env) \(q) </dev/null")
    }

    func service(_ name: String, _ c: AgentCluster) async throws -> ServiceInfo {
        let all = try await AgentClient(socket: c.home("n1") + "/agent.sock").services()
        return try XCTUnwrap(all.services.first { $0.name == name }, "no service \(name) in \(all.services.map(\.name))")
    }
}
