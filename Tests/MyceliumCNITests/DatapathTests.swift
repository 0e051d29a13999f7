// Pods wired by the plugin talk through the eBPF datapath: with IPv4 forwarding off in the host, a packet
// from one pod can only reach another pod if the BPF program redirects it, and the endpoint counters prove
// it did. Different network identities are isolated.

import Foundation
import XCTest
@testable import MyceliumCNI

final class DatapathTests: XCTestCase {
    var sandbox: PluginSandbox!
    var savedForwarding = ""

    override func setUpWithError() throws {
        try requireRoot()
        sandbox = try PluginSandbox()
        savedForwarding = try sh("sysctl -n net.ipv4.ip_forward").trimmingCharacters(in: .whitespacesAndNewlines)
        try sh("sysctl -q -w net.ipv4.ip_forward=0")
    }

    override func tearDown() {
        if !savedForwarding.isEmpty { _ = try? sh("sysctl -q -w net.ipv4.ip_forward=\(savedForwarding)") }
        sandbox = nil
    }

    func addPod(_ id: String, _ ns: TestNetns, config: JSON) throws -> IPv4Address {
        let r = try sandbox.invoke("ADD", config: config, containerID: id, netns: ns.path)
        XCTAssertEqual(r.status, 0, r.result.stdout)
        guard let a = r.json?["ips"]?.arrayValue?.first?["address"]?.stringValue, let ip = IPv4Address(String(a.dropLast(3))) else {
            throw TestFailure("ADD of \(id) gave no address: \(r.result.stdout)")
        }
        return ip
    }

    func testTwoPodsPingThroughEBPFWithForwardingOff() throws {
        let a = try TestNetns(), b = try TestNetns()
        let idA = "dp-a-\(getpid())", idB = "dp-b-\(getpid())"
        let ipA = try addPod(idA, a, config: sandbox.config())
        let ipB = try addPod(idB, b, config: sandbox.config())
        defer {
            _ = try? sandbox.invoke("DEL", config: sandbox.config(), containerID: idA, netns: a.path)
            _ = try? sandbox.invoke("DEL", config: sandbox.config(), containerID: idB, netns: b.path)
        }
        XCTAssertEqual(try sh("sysctl -n net.ipv4.ip_forward").trimmingCharacters(in: .whitespacesAndNewlines), "0")
        let dp = Datapath(pinDir: sandbox.pinDir)
        let beforeA = try dp.stats(ipA), beforeB = try dp.stats(ipB)

        let ping = try a.exec("busybox ping -c 3 -W 2 \(ipB)", allowFailure: true)
        XCTAssertTrue(ping.contains("3 packets received"), "pod A cannot ping pod B: \(ping)")
        let back = try b.exec("busybox ping -c 2 -W 2 \(ipA)", allowFailure: true)
        XCTAssertTrue(back.contains("2 packets received"), "pod B cannot ping pod A: \(back)")

        let afterA = try dp.stats(ipA), afterB = try dp.stats(ipB)
        XCTAssertGreaterThanOrEqual(afterA.txPackets - beforeA.txPackets, 5, "A's tx counter: \(afterA)")
        XCTAssertGreaterThanOrEqual(afterB.rxPackets - beforeB.rxPackets, 3, "B's rx counter: \(afterB)")
        XCTAssertGreaterThan(afterA.txBytes, beforeA.txBytes)
        // The operator's view of the same counters: `mycelium datapath stats`.
        let cli = try runProcess(Paths.buildDir + "/mycelium", ["datapath", "stats", "--pin-dir", sandbox.pinDir, "-o", "json"])
        XCTAssertEqual(cli.status, 0, cli.stderr)
        XCTAssertTrue(cli.stdout.contains("\"endpoint\" : \"\(ipA)\"") && cli.stdout.contains("\"tx_packets\" : \(afterA.txPackets)"), cli.stdout)
        let text = try runProcess(Paths.buildDir + "/mycelium", ["datapath", "stats", "--pin-dir", sandbox.pinDir])
        XCTAssertTrue(text.stdout.contains("\(ipB)") && text.stdout.contains("policy"), text.stdout)

        // A TCP exchange too (busybox nc), both ends inside the test's namespaces.
        let serverPID = try sh("ip netns exec \(b.name) busybox sh -c 'echo mycelium-hello | busybox nc -l -p 7777' "
                               + ">/dev/null 2>&1 </dev/null & echo $!").trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = try? sh("kill \(serverPID) 2>/dev/null", allowFailure: true) }
        var reply = ""
        for _ in 0..<20 where !reply.contains("mycelium-hello") {
            usleep(100_000)  // polls until the listener is up, 20 tries at most
            reply = try a.exec("busybox nc -w 2 \(ipB) 7777 </dev/null", allowFailure: true)
        }
        XCTAssertTrue(reply.contains("mycelium-hello"), "TCP through the datapath failed: \(reply)")
    }

    func testDifferentNetworksAreIsolated() throws {
        let red = try PluginSandbox(network: "red")
        let a = try TestNetns(), b = try TestNetns()
        // Same node, same pin dir (one datapath per node), two networks with their own identities and subnets.
        let cfgBlue = sandbox.config(subnet: "10.77.0.0/24")
        let cfgRed = red.config(subnet: "10.78.0.0/24").setting("pinDir", .string(sandbox.pinDir))
        let ipA = try addPod("iso-a-\(getpid())", a, config: cfgBlue)
        let ipB = try addPod("iso-b-\(getpid())", b, config: cfgRed)
        defer {
            _ = try? sandbox.invoke("DEL", config: cfgBlue, containerID: "iso-a-\(getpid())", netns: a.path)
            _ = try? red.invoke("DEL", config: cfgRed, containerID: "iso-b-\(getpid())", netns: b.path)
        }
        let dp = Datapath(pinDir: sandbox.pinDir)
        XCTAssertNotEqual(try dp.endpoint(ipA)?.networkId, try dp.endpoint(ipB)?.networkId)
        // Isolation is enforced where the destination lives, so the policy drops count on B's endpoint.
        let before = try dp.stats(ipB)
        let ping = try a.exec("busybox ping -c 2 -W 1 \(ipB)", allowFailure: true)
        XCTAssertTrue(ping.contains("0 packets received"), "pods of different networks reached each other: \(ping)")
        let after = try dp.stats(ipB)
        XCTAssertGreaterThanOrEqual(after.drops[0] - before.drops[0], 2, "no policy drops counted on B: \(after)")
        XCTAssertEqual(after.rxPackets, before.rxPackets, "B received packets from another network")
    }
}
