import Foundation
import MyceliumAPI
@testable import MyceliumAgent
import XCTest

/// `mycelium vm create|list|show|delete` against a network of real agents: any node takes the
/// command, the leader decides, a refused command leaves nothing in the spore. The agents' libvirt is
/// libvirt's own test driver (`test:///default`, a real libvirt connection to an in-process fake
/// hypervisor), except n4's, which has none: it must never be chosen. (The VMs are records here;
/// running them is the VM driver's, tested against real libvirt daemons and QEMU elsewhere.)
final class VMAPIProcessTests: XCTestCase {
    func testVMsAreRecordedByTheNetworkFromAnyNodeAndBadRequestsLeaveNothing() async throws {
        let c = try AgentCluster()
        let names = ["n1", "n2", "n3", "n4"]
        // Each node's replication listener on a port of the test's block (+10…+19 are the test's own).
        c.extraConfig = { n in
            (n == "n4" ? "libvirt_uri = \"\"\n" : "libvirt_uri = \"test:///default\"\n")
                + "vm_replication_port = \(c.port("n1") - 1 + 10 + (Int(n.dropFirst()) ?? 0))\n"
        }
        try c.createNetwork()
        for n in names.dropFirst() { try c.join(n) }
        try await c.waitUntil("4 nodes formed", nodes: names, AgentCluster.formed(4))
        // Placement reads what each node announced (its first refresh, within a second of admission).
        try await c.waitUntil("capabilities announced", nodes: names) { vs in vs.allSatisfy { $0.members.allSatisfy { $0.cpus > 0 } } }
        let leaderID = await c.status("n1")!.leader
        var follower = "", followerID = ""
        var n4ID = ""
        for n in names {
            let s = await c.status(n)!
            if n == "n4" { n4ID = s.node } else if s.node != leaderID { follower = n; followerID = s.node }
        }

        // Created on a follower: forwarded to the leader, recorded with the follower as primary and
        // another node as replica.
        // Any readable file passes for a kernel with libvirt's test driver (it boots nothing).
        let k = ["--kernel", "/bin/sh"]
        let (code, out) = try c.cli(["vm", "create", "web-1", "--memory", "256M", "--home", c.home(follower), "-o", "json"] + k)
        XCTAssertEqual(code, 0, out)
        let created = try APIJSON.decode(VMInfo.self, from: Array(out.utf8))
        XCTAssertEqual(created.primary, followerID)
        XCTAssertNotNil(created.replica)
        XCTAssertNotEqual(created.replica, followerID)
        XCTAssertNotEqual(created.replica, n4ID, "a node without libvirt holds no copy")
        XCTAssertEqual(created.epoch, 1)
        XCTAssertEqual(created.memoryMiB, 256)
        XCTAssertEqual(created.protection, "protected")
        // Every node holds the same record.
        for n in names {
            try await waitUntil("\(n) holds web-1") {
                let vms = (try? await AgentClient(socket: c.home(n) + "/agent.sock").vms().vms) ?? []
                return vms.map { [$0.name, $0.primary, $0.replica ?? "-", "\($0.epoch)"] } == [[created.name, created.primary, created.replica ?? "-", "1"]]
            }
        }

        // Bad input: each a clear error, and the table unchanged.
        let bad: [([String], String)] = [
            (["vm", "create", "web-1", "--memory", "64M"] + k, "exists"),
            (["vm", "create", "Web_2", "--memory", "64M"] + k, "lowercase"),
            (["vm", "create", "big", "--memory", "900G"] + k, "MiB left for VMs"),
            (["vm", "create", "lost", "--memory", "64M", "--replica", "node-0000000000000000000000000000"] + k, "not a member"),
            (["vm", "create", "odd", "--memory", "lots"] + k, "is not a size"),
            (["vm", "create", "nokernel", "--memory", "64M", "--kernel", "/nonexistent/vmlinuz"], "cannot be read on this node"),
            (["vm", "create", "bootless", "--memory", "64M"], "no kernel"),
            (["vm", "delete", "nope"], "no VM named 'nope'"),
            (["vm", "create", "there", "--memory", "64M", "--on", n4ID] + k, "has no libvirt"),
        ]
        for (args, expected) in bad {
            let (code, out) = try c.cli(args + ["--home", c.home("n1")])
            XCTAssertNotEqual(code, 0, "\(args): \(out)")
            XCTAssertTrue(out.contains(expected), "\(args) should say '\(expected)': \(out)")
        }
        // A libvirt domain definition of the operator's own: what the network records is taken
        // from it, what cannot follow a VM between hosts is refused before anything is sent.
        let dir = NSTemporaryDirectory() + "vm-xml-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func file(_ name: String, _ xml: String) throws -> String {
            let path = dir + "/" + name
            try xml.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let own = try file("own.xml", """
            <domain type='kvm'><name>imported</name><memory unit='MiB'>96</memory><vcpu>2</vcpu>
            <os><type>hvm</type><kernel>/bin/sh</kernel><cmdline>console=ttyS0 quiet</cmdline></os>
            <devices><graphics type='vnc'/></devices></domain>
            """)
        let (xc, xout) = try c.cli(["vm", "create", "--xml", own, "--home", c.home("n1"), "-o", "json"])
        XCTAssertEqual(xc, 0, xout)
        XCTAssertTrue(xout.contains("ignored from") && xout.contains("devices/graphics"), xout)
        let all = try await AgentClient(socket: c.home("n1") + "/agent.sock").vms().vms
        let imported = try XCTUnwrap(all.first { $0.name == "imported" })
        XCTAssertEqual([imported.memoryMiB, UInt32(imported.vcpus)], [96, 2])
        XCTAssertEqual(imported.cmdline, "console=ttyS0 quiet")
        let badXML: [(String, String)] = [
            (try file("disk.xml", "<domain><name>d</name><memory>65536</memory><os><kernel>/bin/sh</kernel></os><devices><disk type='file'/></devices></domain>"),
             "disks are not replicated yet"),
            (try file("nokernel.xml", "<domain><name>d</name><memory>65536</memory></domain>"), "no <os><kernel>"),
            (try file("entity.xml", "<!DOCTYPE domain [<!ENTITY x SYSTEM \"file:///etc/hostname\">]><domain><name>&x;</name></domain>"), "entities"),
            (try file("broken.xml", "<domain><name>d</name>"), "not well-formed"),
            (try file("nic.xml", "<domain><name>d</name><memory>65536</memory><os><kernel>/bin/sh</kernel></os><devices><interface type='network'/></devices></domain>"),
             "its own NIC"),
        ]
        for (path, expected) in badXML {
            let (code, out) = try c.cli(["vm", "create", "--xml", path, "--home", c.home("n1")])
            XCTAssertNotEqual(code, 0, "\(path): \(out)")
            XCTAssertTrue(out.contains(expected), "\(path) should say '\(expected)': \(out)")
        }
        let (dx, dxout) = try c.cli(["vm", "delete", "imported", "--home", c.home("n1")])
        XCTAssertEqual(dx, 0, dxout)
        try await waitUntil("imported deleted") {
            (try? await AgentClient(socket: c.home("n1") + "/agent.sock").vms().vms.map(\.name)) == ["web-1"]
        }

        let after = try await AgentClient(socket: c.home("n1") + "/agent.sock").vms().vms
        XCTAssertEqual(after.map(\.name), ["web-1"], "refused commands left nothing")

        // Shown and listed as text; deleted from another node; gone everywhere.
        let (_, shown) = try c.cli(["vm", "show", "web-1", "--home", c.home("n1")])
        XCTAssertTrue(shown.contains("protected") && shown.contains(followerID), shown)
        let (dc, deleted) = try c.cli(["vm", "delete", "web-1", "--home", c.home("n1")])
        XCTAssertEqual(dc, 0, deleted)
        for n in names {
            try await waitUntil("\(n) forgot web-1") { (try? await AgentClient(socket: c.home(n) + "/agent.sock").vms().vms.isEmpty) == true }
        }
        let (_, listed) = try c.cli(["vm", "list", "--home", c.home("n2")])
        XCTAssertTrue(listed.contains("no VMs"), listed)
    }
}
