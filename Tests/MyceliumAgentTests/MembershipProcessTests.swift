import Foundation
import MyceliumAPI
@testable import MyceliumAgent
import XCTest

/// Membership issued by the network, with real agents (issue 15): certificates of 60 s renewed for
/// more than five lifetimes through restarts, a leader kill and the genesis node's loss for good; an
/// invite made on another member after that; a revocation; a node back after its certificate expired.
final class MembershipProcessTests: XCTestCase {
    /// Samples the live nodes twice a second for the whole test: the longest stretch in which no live
    /// node saw a leader, and every live member whose certificate had expired in some node's view.
    final class Watch: @unchecked Sendable {
        // SAFETY: every field is guarded by `lock`.
        private let lock = NSLock()
        private var live: [String] = []
        private var lastLeaderSeen = Date()
        private(set) var longestWithoutLeader = 0.0
        private(set) var expired: [String] = []
        private(set) var skews: [Int64] = []
        private var task: Task<Void, Never>?

        func setLive(_ nodes: [String]) { lock.withLock { live = nodes; lastLeaderSeen = max(lastLeaderSeen, Date()) } }
        func remove(_ n: String) { lock.withLock { live.removeAll { $0 == n } } }
        func add(_ n: String) { lock.withLock { if !live.contains(n) { live.append(n) } } }
        var report: (Double, [String], [Int64]) { lock.withLock { (longestWithoutLeader, expired, skews) } }

        func start(_ c: AgentCluster) {
            let dir = c.dir
            task = Task { [weak self] in
                while !Task.isCancelled {
                    guard let self else { return }
                    let nodes = self.lock.withLock { self.live }
                    var views: [StatusResponse] = []
                    for n in nodes { if let v = try? await AgentClient(socket: dir + "/" + n + "/agent.sock").status() { views.append(v) } }
                    self.lock.withLock {
                        if views.contains(where: { $0.leader != "none" }) { self.lastLeaderSeen = Date() }
                        self.longestWithoutLeader = max(self.longestWithoutLeader, Date().timeIntervalSince(self.lastLeaderSeen))
                        for v in views {
                            for m in v.members where m.isAlive && m.revoked != true {
                                if let cert = m.certificate, cert.expiresInSeconds <= 0 {
                                    self.expired.append("\(v.node) sees \(m.id) alive with a certificate expired \(-cert.expiresInSeconds) s ago")
                                }
                                if let s = m.clockSkewSeconds { self.skews.append(s) }
                            }
                        }
                    }
                    try? await Task.sleep(nanoseconds: 500_000_000)  // the sampling period, not a synchronisation
                }
            }
        }

        func stop() { task?.cancel() }
    }

    func cli(_ c: AgentCluster, _ args: [String]) throws -> (Int32, String) { try c.cli(args) }

    func nodeID(_ c: AgentCluster, _ n: String) async throws -> String {
        let s = await c.status(n)
        return try XCTUnwrap(s).node
    }

    func testCertificatesAreIssuedRenewedAndRevokedByTheNetworkThroughFiveLifetimes() async throws {
        let c = try AgentCluster()
        let lifetime = 60.0
        try c.createNetwork(validity: "60s")
        // n2 may invite: it makes the invite after the genesis node is gone.
        try c.join("n2", roles: "member,sclerotium-eligible,inviter")
        for n in ["n3", "n4", "n5"] { try c.join(n) }
        let five = ["n1", "n2", "n3", "n4", "n5"]
        try await c.waitUntil("5 nodes formed", nodes: five, AgentCluster.formed(5))
        let formedAt = Date()
        let watch = Watch()
        watch.setLive(five)
        watch.start(c)
        defer { watch.stop() }
        let ids = Dictionary(uniqueKeysWithValues: try await asyncMap(five) { ($0, try await self.nodeID(c, $0)) })

        // A seed spore is signed by a sclerotium: a member that is not one says so and names one.
        let s1 = await c.status("n1")
        let v = try XCTUnwrap(s1)
        let plain = try XCTUnwrap(five.first { !v.sclerotia.contains(ids[$0]!) })
        let scl = try XCTUnwrap(five.first { v.sclerotia.contains(ids[$0]!) })
        let (code, out) = try cli(c, ["spore", "export", "--home", c.home(plain), c.dir + "/plain.spore"])
        XCTAssertNotEqual(code, 0, out)
        XCTAssertTrue(out.contains("not a sclerotium") && v.sclerotia.contains { out.contains($0) }, out)
        XCTAssertEqual(try cli(c, ["spore", "export", "--home", c.home(scl), c.dir + "/seed.spore"]).0, 0)
        let (vcode, vout) = try cli(c, ["spore", "verify", c.dir + "/seed.spore", "--network", v.network])
        XCTAssertEqual(vcode, 0, vout)

        // n5 goes away; it comes back after its certificate expired.
        c.terminate("n5")
        watch.remove("n5")
        let n5Expiry = try certificateExpiry(c, "n5")

        // The leader dies and is restarted once a new leader is in place.
        let leader = v.leader
        let oldLeader = try XCTUnwrap(five.first { ids[$0] == leader })
        let others = five.filter { $0 != oldLeader && $0 != "n5" }
        c.kill9(oldLeader)
        watch.remove(oldLeader)
        try await c.waitUntil("a new leader", nodes: others) { vs in vs.allSatisfy { $0.leader != leader && $0.leader != "none" } }
        try await waitUntil("\(oldLeader)'s port free for its restart") { PortBlock.isFree(c.port(oldLeader)) }
        try c.start(oldLeader)
        let four = five.filter { $0 != "n5" }
        try await c.waitUntil("4 nodes after the restart", nodes: four, timeout: 60, AgentCluster.formed(4))
        watch.add(oldLeader)

        // Within a lifetime every certificate was renewed by a quorum of the sclerotia.
        try await c.waitUntil("every certificate renewed by the sclerotia", nodes: four, timeout: lifetime) { vs in
            vs.allSatisfy { v in v.members.filter(\.isAlive).allSatisfy { ($0.certificate?.generation ?? 0) >= 1 } }
        }
        let inspect = try cli(c, ["cert", "inspect", "--home", c.home("n3")])
        XCTAssertEqual(inspect.0, 0, inspect.1)
        XCTAssertTrue(inspect.1.contains("quorum of sclerotia generation") && inspect.1.contains("signed by genesis key"), inspect.1)

        // The genesis node is lost for good, home and genesis key with it.
        c.kill9("n1")
        watch.remove("n1")
        try FileManager.default.removeItem(atPath: c.home("n1"))
        let three = ["n2", "n3", "n4"]
        try await c.waitUntil("n1 recorded failed", nodes: three, timeout: 60) { vs in
            vs.allSatisfy { v in v.leader != "none" && v.members.contains { $0.id == ids["n1"] && $0.status == "failed" } }
        }
        // A member with the inviter role admits a new node: the network issues its certificate.
        try c.join("n6", inviter: "n2")
        try await c.waitUntil("n6 admitted", nodes: three + ["n6"], timeout: 60, AgentCluster.formed(4))
        let n6 = try await nodeID(c, "n6")
        let s2 = await c.status("n2")
        let n6cert = try XCTUnwrap(s2?.members.first { $0.id == n6 }?.certificate)
        XCTAssertGreaterThanOrEqual(n6cert.generation, 1, "issued by a sclerotia quorum, not the genesis key")
        watch.add("n6")

        // The network revokes n6: everyone refuses it from then on.
        watch.remove("n6")
        let (rc, rout) = try cli(c, ["member", "revoke", "--home", c.home("n2"), n6, "--reason", "test revocation"])
        XCTAssertEqual(rc, 0, rout)
        try await c.waitUntil("n6 revoked everywhere", nodes: three, timeout: 30) { vs in
            vs.allSatisfy { v in v.members.contains { $0.id == n6 && $0.revoked == true && $0.status == "failed" } }
        }
        try await waitUntil("n6's handshakes refused as revoked", timeout: 30) {
            ((try? String(contentsOfFile: c.home("n6") + ".log", encoding: .utf8)) ?? "").contains("has been revoked")
        }
        c.terminate("n6")

        // n5 is back after its certificate expired: it says so and how to rejoin, then rejoins.
        try await waitUntil("n5's certificate expired", timeout: lifetime + 30, poll: 0.5) { Int64(Date().timeIntervalSince1970) > n5Expiry + 1 }
        let before = ((try? String(contentsOfFile: c.home("n5") + ".log", encoding: .utf8)) ?? "").count
        try c.start("n5")
        func restartLog() -> String {
            String(((try? String(contentsOfFile: c.home("n5") + ".log", encoding: .utf8)) ?? "").dropFirst(before))
        }
        try await waitUntil("n5 refuses to start on its expired certificate", timeout: 30) {
            restartLog().contains("myceliumd exited with status")
        }
        XCTAssertTrue(restartLog().contains("membership certificate expired") && restartLog().contains("node join"), restartLog())
        XCTAssertFalse(restartLog().contains("agent started"), restartLog())
        try c.join("n5", inviter: "n2")
        let back = three + ["n5"]
        try await c.waitUntil("n5 rejoined", nodes: back, timeout: 60, AgentCluster.formed(4))
        watch.add("n5")

        // On until five lifetimes have passed since formation.
        let end = formedAt.addingTimeInterval(5 * lifetime + 5)
        while Date() < end { try await Task.sleep(nanoseconds: 1_000_000_000) }  // the test's span, not a synchronisation
        try await c.waitUntil("still formed after five lifetimes", nodes: back, timeout: 30, AgentCluster.formed(4))
        let (gap, expired, skews) = watch.report
        XCTAssertEqual(expired, [], "a live member held an expired certificate")
        XCTAssertLessThan(gap, 20, "the network was without a leader for \(gap) s (longer than a failover)")
        XCTAssertFalse(skews.isEmpty, "clock skew was measured")
        XCTAssertTrue(skews.allSatisfy { abs($0) <= 1 }, "one machine, one clock: \(skews.prefix(10))")
        let s3 = await c.status("n3")
        let final = try XCTUnwrap(s3)
        XCTAssertGreaterThanOrEqual(final.chainGeneration ?? 0, 2, "the sclerotia changed after the losses, and the chain grew")
    }

    /// The expiry of the certificate in `n`'s home (what the agent starts from).
    func certificateExpiry(_ c: AgentCluster, _ n: String) throws -> Int64 {
        let (code, out) = try c.cli(["cert", "inspect", "--home", c.home(n), "-o", "json"])
        XCTAssertEqual(code, 0, out)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let text = try XCTUnwrap(json["expires"] as? String)
        return Int64(try XCTUnwrap(ISO8601DateFormatter().date(from: text)).timeIntervalSince1970)
    }
}

func asyncMap<T, U>(_ xs: [T], _ f: (T) async throws -> U) async rethrows -> [U] {
    var out: [U] = []
    for x in xs { out.append(try await f(x)) }
    return out
}
