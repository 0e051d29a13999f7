import CephTestSupport
import Foundation
import MyceliumAPI
import MyceliumRBD
import XCTest

/// Trust-aware placement end to end through real agents and a real Ceph cluster (issue 18): a member
/// that holds an OSD host cheats in the vote, the network proves it and slashes it, and the leader's
/// next placement takes its host out of the classes its trust no longer reaches, so a sensitive
/// volume's data leaves it. The cheat is the test-only `myceliumd-byzantine` with
/// MYCELIUM_BYZANTINE=equivocate (Tests/ByzantineAgent, MyceliumSim.EquivocatingVoter): it votes
/// honestly but signs conflicting commitments, and accuses live members so that rounds open. The
/// voters holding the other commitment prove a bad reveal (trust × 1/4: 0.6 → 0.15, below private and
/// sensitive) and two commitments prove equivocation, for which the network also revokes the member
/// (MyceliumSpores/Votes.swift); either way its host must leave private and sensitive.
///
/// Five agents, so that a round about one member has the four voters a Byzantine-tolerant vote needs.
/// n1..n3 each run "their" OSD host of the 3-OSD test cluster (node0..node2); the cheat is n3 (node2).
final class TrustPlacementProcessTests: XCTestCase {
    let names = ["n1", "n2", "n3", "n4", "n5"]
    let cheat = "n3", cheatHost = "node2"

    func storage(_ c: AgentCluster, _ n: String) async -> StorageStatusResponse? {
        try? await AgentClient(socket: c.home(n) + "/agent.sock").storage()
    }

    func hosts(_ s: StorageStatusResponse?, _ cls: String) -> [String] {
        s?.classes.first { $0.name == cls }?.hosts ?? []
    }

    /// Polls `n`'s storage status until `done` holds (deadline `seconds`); the last answer.
    func waitStorage(_ c: AgentCluster, _ n: String, _ what: String, seconds: Double,
                     _ done: (StorageStatusResponse) -> Bool) async throws -> StorageStatusResponse {
        let deadline = Date().addingTimeInterval(seconds)
        var last: StorageStatusResponse?
        while Date() < deadline {
            last = await storage(c, n)
            if let s = last, done(s) { return s }
            try await Task.sleep(nanoseconds: 250_000_000)
        }
        XCTFail("\(what) within \(Int(seconds)) s; last storage status: placement \(last?.placement ?? "none"), classes \(last?.classes.map { "\($0.name)=\($0.hosts)" } ?? [])")
        throw CancellationError()
    }

    /// The CRUSH hosts holding `volume`'s data by the cluster's own mapping (`volume show`), polled
    /// until `done` holds or `seconds` pass; the last answer.
    func replicaHosts(_ c: AgentCluster, _ volume: String, seconds: Double, until done: (Set<String>) -> Bool) async throws -> Set<String> {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let (code, out) = try c.cli(["volume", "show", volume, "--home", c.home("n1"), "-o", "json"])
            XCTAssertEqual(code, 0, out)
            let v = try APIJSON.decode(VolumeInfo.self, from: Array(out.utf8))
            let hosts = Set((v.replicas ?? []).map { String($0.prefix(5)) })
            if done(hosts) || Date() >= deadline { return hosts }
            try await Task.sleep(nanoseconds: 250_000_000)
        }
    }

    func testASlashedMembersHostLeavesTheClassesItsTrustNoLongerReaches() async throws {
        let cluster = try Self.ceph.require()
        // The cheat behaves for its first 60 s (formation, the first placement, the volume), then cheats.
        setenv("MYCELIUM_BYZANTINE", "equivocate", 1)
        setenv("MYCELIUM_BYZANTINE_QUIET_S", "60", 1)
        defer { unsetenv("MYCELIUM_BYZANTINE"); unsetenv("MYCELIUM_BYZANTINE_QUIET_S") }
        let c = try AgentCluster()
        c.daemon = { [cheat] n in n == cheat ? "myceliumd-byzantine" : "myceliumd" }
        c.extraConfig = { n in
            let k = Int(n.dropFirst()) ?? 1
            return "libvirt_uri = \"\"\npodman = \"off\"\ndatapath_mode = \"off\"\nhandoff_members = 5\nvote_phase_ms = 1500\n"
                + "ceph_conf = \"\(cluster.conf)\"\nceph_keyring = \"\(cluster.keyring)\"\n"
                + (k <= 3 ? "ceph_host = \"node\(k - 1)\"\n" : "")
        }
        try c.createNetwork()
        for n in names.dropFirst() { try c.join(n) }
        try await c.waitUntil("5 nodes formed", nodes: names, AgentCluster.formed(5))
        let cheatID = await c.status(cheat)!.node

        // 1. Everyone starts at the founders' trust (0.6): all three hosts hold every class, and a
        //    sensitive volume's data is on all three (the cluster's own mapping).
        let first = try await waitStorage(c, "n1", "a first placement with every host in sensitive", seconds: 50) { s in
            s.placement.contains(": done by") && self.hosts(s, "sensitive") == ["node0", "node1", "node2"]
        }
        XCTAssertEqual(hosts(first, "private"), ["node0", "node1", "node2"])
        var (code, out) = try c.cli(["volume", "create", "vault", "--size", "16M", "--class", "sensitive", "--home", c.home("n2"), "-o", "json"])
        XCTAssertEqual(code, 0, out)
        let before = try await replicaHosts(c, "vault", seconds: 30) { $0.count == 3 }
        XCTAssertEqual(before, ["node0", "node1", "node2"], "before the cheat cheats, its host holds a replica")

        // 2. The cheat's conflicting commitments are proven and it is slashed below private (0.3).
        try await c.waitUntil("the cheat slashed", nodes: ["n1"], timeout: 120) { vs in
            members(vs[0]).first { $0.id == cheatID }.map { $0.trust < 300_000 } ?? false
        }
        let after = await c.status("n1")!
        XCTAssertTrue(after.events.contains { $0.contains("slashed") },
                      "the slashing is in the events: \(after.events.suffix(10))")

        // 3. The leader's next placement: the cheat's host leaves private and sensitive.
        let moved = try await waitStorage(c, "n2", "the cheat's host out of sensitive and private", seconds: 120) { s in
            s.placement.contains(": done by") && self.hosts(s, "sensitive") == ["node0", "node1"] && self.hosts(s, "private") == ["node0", "node1"]
        }
        if let entry = moved.nodes.first(where: { $0.cephHost == cheatHost }) {
            XCTAssertLessThan(entry.trust, 0.3, "\(entry)")
            XCTAssertFalse(entry.classes.contains("sensitive") || entry.classes.contains("private"), "\(entry)")
        }

        // 4. The cluster's own mapping of the sensitive volume: no replica on the cheat's host (CRUSH never
        //    falls back to a host outside the class's root, so with 2 hosts left it runs undersized).
        let replicas = try await replicaHosts(c, "vault", seconds: 60) { [cheatHost] in !$0.isEmpty && !$0.contains(cheatHost) }
        XCTAssertFalse(replicas.contains(cheatHost), "the sensitive volume's data left the slashed host: \(replicas)")
        XCTAssertEqual(replicas, ["node0", "node1"])

        (code, out) = try c.cli(["volume", "delete", "vault", "--home", c.home("n1")])
        XCTAssertEqual(code, 0, out)
    }

    nonisolated(unsafe) static var ceph: CephTestClusterResult?

    override class func setUp() {
        super.setUp()
        ceph = CephTestCluster.up(suite: "TrustPlacementProcessTests")
    }

    override class func tearDown() {
        CephTestCluster.down(ceph.upCluster, suite: "TrustPlacementProcessTests")
        super.tearDown()
    }
}
