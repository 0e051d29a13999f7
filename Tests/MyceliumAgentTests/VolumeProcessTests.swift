import CephTestSupport
import Foundation
import MyceliumAPI
@testable import MyceliumAgent
import MyceliumRBD
import XCTest

/// `mycelium volume ...` and `mycelium storage status` against networks of real agents: local
/// volumes (the embedded default) and volumes on a real Ceph cluster with the leader's
/// Raft-committed, trust-aware placement carried out by the agents.
final class VolumeProcessTests: XCTestCase {
    func startNetwork(_ c: AgentCluster) async throws -> [String] {
        let names = ["n1", "n2", "n3"]
        try c.createNetwork()
        for n in names.dropFirst() { try c.join(n) }
        try await c.waitUntil("3 nodes formed", nodes: names, AgentCluster.formed(3))
        return names
    }

    func volumes(_ c: AgentCluster, _ n: String) async -> [VolumeInfo] {
        (try? await AgentClient(socket: c.home(n) + "/agent.sock").volumes().volumes) ?? []
    }

    func testLocalVolumesFromAnyNodeAndBadRequestsLeaveNothing() async throws {
        let c = try AgentCluster()
        // libvirt's test driver (a real libvirt connection to an in-process fake hypervisor): VMs are
        // records here, enough to name a volume as a disk.
        c.extraConfig = { n in
            "libvirt_uri = \"test:///default\"\npodman = \"off\"\ndatapath_mode = \"off\"\n"
                + "vm_replication_port = \(c.port("n1") - 1 + 10 + (Int(n.dropFirst()) ?? 0))\n"
        }
        let names = try await startNetwork(c)
        let n2 = await c.status("n2")!.node

        // Created from n1 on n2's disk: the task is n2's, the file appears there, sparse.
        var (code, out) = try c.cli(["volume", "create", "data", "--size", "64M", "--on", n2, "--home", c.home("n1"), "-o", "json"])
        XCTAssertEqual(code, 0, out)
        let v = try APIJSON.decode(VolumeInfo.self, from: Array(out.utf8))
        XCTAssertEqual(v.state, "ready")
        XCTAssertEqual(v.dataClass, "local", "without Ceph the default class is local")
        XCTAssertEqual(v.sizeBytes, 64 << 20)
        XCTAssertEqual(v.home, n2)
        let file = c.home("n2") + "/volumes/data.img"
        var st = stat()
        XCTAssertEqual(stat(file, &st), 0, "the volume's file is on its home node")
        XCTAssertEqual(st.st_size, 64 << 20)
        XCTAssertLessThan(st.st_blocks * 512, 1 << 20, "a new volume takes no space (sparse)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: c.home("n1") + "/volumes/data.img"))
        for n in names {
            try await waitUntil("\(n) holds data") { await self.volumes(c, n).map { [$0.name, $0.state] } == [["data", "ready"]] }
        }

        // Data written into the file survives a snapshot; the snapshot is a copy.
        let fd = open(file, O_WRONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(pwrite(fd, "hello", 5, 3 << 20), 5)
        close(fd)
        (code, out) = try c.cli(["volume", "snapshot", "data", "s1", "--home", c.home("n3")])
        XCTAssertEqual(code, 0, out)
        let snap = try String(contentsOfFile: c.home("n2") + "/volumes/data@s1.img", encoding: .isoLatin1)
        XCTAssertEqual(snap.utf8.count, 64 << 20)
        XCTAssertTrue(snap.dropFirst(3 << 20).hasPrefix("hello"))

        // Bad input: a clear error each, and nothing recorded.
        let bad: [([String], String)] = [
            (["volume", "create", "data", "--size", "1G"], "exists"),
            (["volume", "create", "zero", "--size", "0"], "at least 1 MiB"),
            (["volume", "create", "huge", "--size", "65T"], "at most 64 TiB"),
            (["volume", "create", "odd", "--size", "lots"], "'lots' is not a size"),
            (["volume", "create", "Bad_Name", "--size", "1G"], "lowercase"),
            (["volume", "create", "x", "--size", "1G", "--class", "gold"], "unknown class 'gold'"),
            (["volume", "create", "x", "--size", "1G", "--class", "sensitive"], "use --class local"),
            (["volume", "snapshot", "data", "s1"], "has a snapshot 's1'"),
            (["volume", "delete", "nope"], "no volume named 'nope'"),
            (["volume", "show", "nope"], "no volume named 'nope'"),
        ]
        for (args, expected) in bad {
            let (code, out) = try c.cli(args + ["--home", c.home("n1")])
            XCTAssertNotEqual(code, 0, "\(args): \(out)")
            XCTAssertTrue(out.contains(expected), "\(args) should say '\(expected)': \(out)")
        }
        let recorded = await volumes(c, "n1").map(\.name)
        XCTAssertEqual(recorded, ["data"], "refused requests record nothing")

        (code, out) = try c.cli(["storage", "status", "--home", c.home("n1")])
        XCTAssertEqual(code, 0, out)
        XCTAssertTrue(out.contains("local files under"), out)

        // A VM with the volume as its disk runs on the volume's node, unprotected; the volume cannot be
        // deleted or given to a second VM while it is the first one's.
        let k = ["--memory", "64M", "--kernel", "/bin/sh"]
        (code, out) = try c.cli(["vm", "create", "web", "--disk", "data", "--replica", "auto", "--home", c.home("n1")] + k)
        XCTAssertNotEqual(code, 0, out)
        XCTAssertTrue(out.contains("no other node can take the VM over"), out)
        (code, out) = try c.cli(["vm", "create", "web", "--disk", "data", "--replica", "none", "--home", c.home("n1"), "-o", "json"] + k)
        XCTAssertEqual(code, 0, out)
        let vm = try APIJSON.decode(VMInfo.self, from: Array(out.utf8))
        XCTAssertEqual(vm.disk, "data")
        XCTAssertEqual(vm.primary, n2, "a VM on a local volume runs on the volume's node")
        XCTAssertNil(vm.replica)
        let vmBad: [([String], String)] = [
            (["vm", "create", "web2", "--disk", "data", "--replica", "none"] + k, "already the disk of VM 'web'"),
            (["vm", "create", "web3", "--disk", "nope"] + k, "no volume named 'nope'"),
            (["volume", "delete", "data"], "is the disk of VM 'web'"),
        ]
        for (args, expected) in vmBad {
            let (code, out) = try c.cli(args + ["--home", c.home("n1")])
            XCTAssertNotEqual(code, 0, "\(args): \(out)")
            XCTAssertTrue(out.contains(expected), "\(args) should say '\(expected)': \(out)")
        }
        (code, out) = try c.cli(["volume", "show", "data", "--home", c.home("n3"), "-o", "json"])
        XCTAssertEqual(try APIJSON.decode(VolumeInfo.self, from: Array(out.utf8)).usedBy, "vm web")
        (code, out) = try c.cli(["vm", "delete", "web", "--home", c.home("n1")])
        XCTAssertEqual(code, 0, out)
        try await waitUntil("web deleted") { ((try? await AgentClient(socket: c.home("n1") + "/agent.sock").vms().vms) ?? [vm]).isEmpty }

        // Deleted with its snapshot: the files go.
        (code, out) = try c.cli(["volume", "delete", "data", "--home", c.home("n3")])
        XCTAssertEqual(code, 0, out)
        XCTAssertFalse(FileManager.default.fileExists(atPath: file))
        XCTAssertFalse(FileManager.default.fileExists(atPath: c.home("n2") + "/volumes/data@s1.img"))
        for n in names { try await waitUntil("\(n) forgot data") { await self.volumes(c, n).isEmpty } }
    }

    func testCephVolumesArePlacedByTrustThroughTheLeader() async throws {
        let cluster = try Self.ceph.require()
        let c = try AgentCluster()
        // Each agent nK runs "its" OSD host of the test cluster (node0..node2: osd.K-1).
        c.extraConfig = { n in
            "libvirt_uri = \"\"\npodman = \"off\"\ndatapath_mode = \"off\"\n"
                + "ceph_conf = \"\(cluster.conf)\"\nceph_keyring = \"\(cluster.keyring)\"\nceph_host = \"node\((Int(n.dropFirst()) ?? 1) - 1)\"\n"
        }
        _ = try await startNetwork(c)
        let admin = try await CephConnection.connect(cluster.config)

        // The founders hold trust 0.6: every class qualifies all three hosts. The leader decides,
        // one agent carries it out, and the cluster gets a root, rule and pool per class.
        let deadline = Date().addingTimeInterval(90)
        var status: StorageStatusResponse?
        while Date() < deadline {
            status = try? await AgentClient(socket: c.home("n2") + "/agent.sock").storage()
            if let s = status, s.placement.contains(": done by"), s.classes.first(where: { $0.name == "sensitive" })?.hosts.count == 3 { break }
            try await Task.sleep(nanoseconds: 200_000_000)
        }
        let s = try XCTUnwrap(status)
        XCTAssertTrue(s.placement.contains(": done by"), "\(s.placement)")
        XCTAssertEqual(s.classes.first { $0.name == "sensitive" }?.hosts, ["node0", "node1", "node2"])
        XCTAssertEqual(s.classes.first { $0.name == "sensitive" }?.status, "healthy")
        XCTAssertNotNil(s.ceph, "the node reads the cluster's health: \(s.cephError ?? "")")
        XCTAssertEqual(s.ceph?.osds, 3)
        for pool in ["mycelium-public", "mycelium-private", "mycelium-sensitive"] {
            let exists = try await admin.poolExists(pool)
            XCTAssertTrue(exists, "\(pool) was created by the placement")
        }

        // A sensitive volume: an RBD image in the class's pool, replicas on the class's hosts.
        var (code, out) = try c.cli(["volume", "create", "db", "--size", "32M", "--class", "sensitive", "--home", c.home("n3"), "-o", "json"])
        XCTAssertEqual(code, 0, out)
        let v = try APIJSON.decode(VolumeInfo.self, from: Array(out.utf8))
        XCTAssertEqual(v.state, "ready", v.message)
        XCTAssertEqual(v.driver, "ceph")
        let images = try await admin.images(pool: "mycelium-sensitive")
        XCTAssertEqual(images, ["db"])
        let img = try await admin.openImage(pool: "mycelium-sensitive", name: "db")
        let size = try await img.stat().size
        XCTAssertEqual(size, 32 << 20)
        try await img.close()
        // The cluster's own mapping: 3 OSDs on the 3 hosts (once a pool grown from an earlier, smaller
        // decision has peered).
        var shown: VolumeInfo?
        let mapped = Date().addingTimeInterval(60)
        repeat {
            (code, out) = try c.cli(["volume", "show", "db", "--home", c.home("n1"), "-o", "json"])
            XCTAssertEqual(code, 0, out)
            shown = try APIJSON.decode(VolumeInfo.self, from: Array(out.utf8))
            if shown?.replicas?.count == 3 { break }
            try await Task.sleep(nanoseconds: 250_000_000)
        } while Date() < mapped
        XCTAssertEqual(Set(shown?.replicas?.map { String($0.prefix(5)) } ?? []), ["node0", "node1", "node2"],
                       "the cluster maps its objects to the 3 hosts: \(shown?.replicas ?? [])")
        XCTAssertTrue(shown?.placement.contains("node0, node1, node2") == true, shown?.placement ?? "")

        (code, out) = try c.cli(["volume", "snapshot", "db", "s1", "--home", c.home("n2")])
        XCTAssertEqual(code, 0, out)
        let img2 = try await admin.openImage(pool: "mycelium-sensitive", name: "db")
        let snaps = try await img2.snapshots().map(\.name)
        XCTAssertEqual(snaps, ["s1"])
        try await img2.close()

        // Refused while a client has it open (its snapshot stays too); deleted with its snapshot once
        // nobody has: the image goes.
        let user = try await admin.openImage(pool: "mycelium-sensitive", name: "db")
        (code, out) = try c.cli(["volume", "delete", "db", "--home", c.home("n1")])
        XCTAssertNotEqual(code, 0, out)
        XCTAssertTrue(out.contains("still open by client."), out)
        let kept = try await admin.openImage(pool: "mycelium-sensitive", name: "db", snapshot: "s1")
        try await kept.close()
        try await user.close()
        (code, out) = try c.cli(["volume", "delete", "db", "--home", c.home("n1")])
        XCTAssertEqual(code, 0, out)
        let left = try await admin.images(pool: "mycelium-sensitive")
        XCTAssertEqual(left, [])
    }

    nonisolated(unsafe) static var ceph: CephTestClusterResult?

    override class func setUp() {
        super.setUp()
        ceph = CephTestCluster.up(suite: "VolumeProcessTests")
    }

    override class func tearDown() {
        CephTestCluster.down(ceph.upCluster, suite: "VolumeProcessTests")
        super.tearDown()
    }
}
