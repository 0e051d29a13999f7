import Foundation
import MyceliumAPI
@testable import MyceliumAgent
import XCTest

/// Whole networks of real agents. Each test takes 10–40 s; they assert behaviour, never timings.
final class AgentProcessTests: XCTestCase {
    let names = ["n1", "n2", "n3", "n4", "n5"]

    func formFive(_ c: AgentCluster) async throws {
        try c.createNetwork()
        for n in names.dropFirst() { try c.join(n) }
        try await c.waitUntil("5 nodes formed", nodes: names, AgentCluster.formed(5))
        let v = await c.status("n1")!
        XCTAssertEqual(v.sclerotia.count, 3, "3 sclerotia chosen")
        // Addresses are confirmed by whoever connects to a member after it is admitted: soon after
        // formation, not necessarily at the same instant.
        try await c.waitUntil("every address confirmed", nodes: ["n1"]) { vs in members(vs[0]).allSatisfy { !$0.addresses.isEmpty } }
    }

    func testFiveNodesFormAndSurviveTheLeadersDeath() async throws {
        let c = try AgentCluster()
        try await formFive(c)
        // The network controller gave every member its own pod CIDR, written where mycelium-cni reads it.
        let deadline = Date().addingTimeInterval(15)
        var blocks: [String] = []
        while Date() < deadline {
            blocks = names.compactMap { try? String(contentsOfFile: c.home($0) + "/podcidr", encoding: .utf8) }
            if blocks.count == names.count { break }
            try await Task.sleep(nanoseconds: 100_000_000)  // polling the files, bounded by the deadline
        }
        XCTAssertEqual(blocks.count, names.count, "pod CIDR files written: \(blocks)")
        XCTAssertEqual(Set(blocks).count, names.count, "each member's block is its own: \(blocks)")
        XCTAssertTrue(blocks.allSatisfy { $0.hasPrefix("10.244.") && $0.hasSuffix("/24\n") }, "\(blocks)")
        let leader = await c.status("n1")!.leader
        let found = await asyncFirst(names) { (await c.status($0)?.node ?? "") == leader }
        let victim = try XCTUnwrap(found)
        let rest = names.filter { $0 != victim }
        let before = epochIndex(await c.status(rest[0])!)
        c.kill9(victim)
        try await c.waitUntil("a new leader", nodes: rest) { vs in
            vs.allSatisfy { $0.leader != leader && $0.leader != "none" }
        }
        try await c.waitUntil("the old leader recorded failed, 3 voters again", nodes: rest) { vs in
            vs.allSatisfy { v in members(v).contains { $0.id == leader && $0.status == "failed" } }
                && vs.allSatisfy { $0.voters.count == 3 && !$0.voters.contains(leader) }
        }
        // Writes keep committing: every member refreshes itself through the new leader.
        try await c.waitUntil("writes commit", nodes: rest) { vs in vs.allSatisfy { epochIndex($0) > before + 3 } }
    }

    func testAFollowerRestartsFromItsLatentSpore() async throws {
        let c = try AgentCluster()
        try await formFive(c)
        let v = await c.status("n1")!
        let sclerotia = Set(v.sclerotia)
        let found = await asyncFirst(Array(names.dropFirst())) { !sclerotia.contains(await c.status($0)?.node ?? "") }
        let follower = try XCTUnwrap(found)
        c.kill9(follower)
        try await waitUntil("\(follower)'s port free for its restart") { PortBlock.isFree(c.port(follower)) }
        try c.start(follower)
        try await c.waitUntil("the follower is back", nodes: names, AgentCluster.formed(5))
        let events = await c.status(follower)?.events ?? []
        XCTAssertTrue(events.contains { $0.contains("latent spore loaded") }, "\(events)")
    }

    func testTheWholeNetworkRestartsFromDisk() async throws {
        let c = try AgentCluster()
        try await formFive(c)
        let ids = Set(members(await c.status("n1")!).map { $0.id })
        for n in names { c.terminate(n) }
        for n in names { try c.start(n) }
        try await c.waitUntil("re-formed from disk", nodes: names, AgentCluster.formed(5))
        let after = await c.status("n3")!
        XCTAssertEqual(Set(members(after).map { $0.id }), ids, "the same members, from disk")
    }

    func testAColdNodeFindsTheNetworkThroughSeedSpores() async throws {
        let c = try AgentCluster()
        c.seedDirs = [c.dir + "/share"]
        try c.createNetwork()
        for n in ["n2", "n3"] { try c.join(n) }
        try await c.waitUntil("3 nodes formed", nodes: ["n1", "n2", "n3"], AgentCluster.formed(3))
        let seedFile = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: c.dir + "/share").first)
        let net = await c.status("n1")!.network
        // The seed spore verifies; a tampered copy and a wrong network are refused, each with its reason.
        let good = try c.cli(["spore", "verify", c.dir + "/share/" + seedFile, "--network", net])
        XCTAssertEqual(good.0, 0, good.1)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: c.dir + "/share/" + seedFile))
        bytes[bytes.count - 10] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: c.dir + "/tampered.seed"))
        let tampered = try c.cli(["spore", "verify", c.dir + "/tampered.seed", "--network", net])
        XCTAssertNotEqual(tampered.0, 0)
        XCTAssertTrue(tampered.1.contains("INVALID"), tampered.1)
        let other = try c.cli(["network", "create", "--home", c.dir + "/elsewhere", "-o", "json"])
        let otherNet = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(other.1.utf8)) as? [String: Any])?["network_id"] as? String)
        let wrong = try c.cli(["spore", "verify", c.dir + "/share/" + seedFile, "--network", otherNet])
        XCTAssertTrue(wrong.1.contains("INVALID") && wrong.1.contains("network"), wrong.1)
        let replayed = try c.cli(["spore", "verify", c.dir + "/share/" + seedFile, "--network", net, "--newer-than", "999.0"])
        XCTAssertTrue(replayed.1.contains("older than"), replayed.1)

        // n4 gets its certificate by invite, but the inviter's address is lost before its agent
        // starts: the seed directory is the only way it can find the network.
        try c.join("n4", startAgent: false)
        try FileManager.default.removeItem(atPath: c.home("n4") + "/join.peers")
        try c.start("n4")
        try await c.waitUntil("n4 found the network from the seed spore", nodes: ["n1", "n2", "n3", "n4"], AgentCluster.formed(4))
        let events = await c.status("n4")?.events ?? []
        XCTAssertTrue(events.contains { $0.contains("seed spore at epoch") }, "\(events)")
    }

    func testANodeOfAnotherNetworkCannotJoin() async throws {
        let c = try AgentCluster()
        try c.createNetwork()
        try await c.waitUntil("n1 leads", nodes: ["n1"]) { vs in vs[0].role == "leader" }
        // A second network, with a valid invite of its own, pointed at n1's address.
        XCTAssertEqual(try c.cli(["network", "create", "--home", c.home("x1")]).0, 0)
        let (_, token) = try c.cli(["invite", "create", "--home", c.home("x1"), "--address", "127.0.0.1:\(c.port("n1"))"])
        let (code, out) = try c.cli(["node", "join", "--home", c.home("x2"), token.trimmingCharacters(in: .whitespacesAndNewlines)])
        XCTAssertNotEqual(code, 0)
        XCTAssertTrue(out.contains("network"), out)
        // A member of the other network running an agent that dials n1 never appears in n1's spore.
        try c.writeConfig("x1", extra: "join = [\"127.0.0.1:\(c.port("n1"))\"]\n")
        try c.start("x1")
        try await waitUntil("n1 refuses x1", timeout: 30) {
            ((try? String(contentsOfFile: c.home("n1") + ".log", encoding: .utf8)) ?? "").contains("refused peer")
        }
        let v = await c.status("n1")!
        XCTAssertEqual(members(v).count, 1, "\(members(v))")
        let log = (try? String(contentsOfFile: c.home("n1") + ".log", encoding: .utf8)) ?? ""
        XCTAssertTrue(log.contains("refused peer") && log.contains("networks never talk"), log.suffix(2000).description)
    }

    /// Prometheus metrics on the API socket and on `metrics_listen`, scraped with curl as Prometheus would.
    func testMetricsAreServedForPrometheus() async throws {
        let c = try AgentCluster()
        let metricsPort = c.port("n9")
        c.extraConfig = { n in n == "n1" ? "metrics_listen = \"127.0.0.1:\(metricsPort)\"\n" : "" }
        try c.createNetwork()
        for n in ["n2", "n3"] { try c.join(n) }
        try await c.waitUntil("3 nodes formed", nodes: ["n1", "n2", "n3"], AgentCluster.formed(3))
        let (code, body) = try await AgentClient(socket: c.home("n1") + "/agent.sock").request(method: "GET", path: "/metrics")
        XCTAssertEqual(code, 200)
        let text = String(decoding: body, as: UTF8.self)
        for name in ["mycelium_raft_term", "mycelium_raft_is_leader", "mycelium_raft_voters 3", "mycelium_members{status=\"alive\"} 3",
                     "mycelium_wal_saves_total", "# TYPE mycelium_raft_commit_index gauge"] {
            XCTAssertTrue(text.contains(name), "\(name) missing from:\n\(text)")
        }
        let curl = Process()
        curl.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        curl.arguments = ["-sf", "http://127.0.0.1:\(metricsPort)/metrics"]
        let out = Pipe()
        curl.standardOutput = out
        try curl.run()
        let scraped = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        curl.waitUntilExit()
        XCTAssertEqual(curl.terminationStatus, 0)
        XCTAssertTrue(scraped.contains("mycelium_raft_leader_changes_total"), scraped)
    }


    func curl(_ args: [String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        p.arguments = ["-s", "-w", "\n%{http_code}"] + args
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text)
    }

    /// The replicated KV in etcd's gateway form: a put on the leader is committed and readable from
    /// every node after the leader dies; a follower forwards writes and linearizable reads to the leader.
    func testTheKVCommitsThroughRaftAndSurvivesTheLeader() async throws {
        let c = try AgentCluster()
        let names = ["n1", "n2", "n3"]
        c.extraConfig = { n in "client_listen = \"127.0.0.1:\(c.port("n1") + 10 + (Int(n.dropFirst()) ?? 0))\"\n" }
        try c.createNetwork()
        for n in names.dropFirst() { try c.join(n) }
        try await c.waitUntil("3 nodes formed", nodes: names, AgentCluster.formed(3))
        let leaderID = await c.status("n1")!.leader
        var leader = "", follower = ""
        for n in names { if await c.status(n)!.node == leaderID { leader = n } else { follower = n } }
        func url(_ n: String, _ path: String) -> String { "http://127.0.0.1:\(c.port("n1") + 10 + (Int(n.dropFirst()) ?? 0))\(path)" }
        let key = Data("service/web".utf8).base64EncodedString(), value = Data("10.244.1.7:80".utf8).base64EncodedString()
        let put = try curl(["-X", "POST", "-d", "{\"key\":\"\(key)\",\"value\":\"\(value)\"}", url(leader, "/v3/kv/put")])
        XCTAssertTrue(put.1.hasSuffix("200") && put.1.contains("revision"), put.1)
        // A follower forwards writes to the leader (as etcd does), and its linearizable range sees them.
        let other = Data("service/db".utf8).base64EncodedString(), otherValue = Data("10.244.2.9:5432".utf8).base64EncodedString()
        let forwarded = try curl(["-X", "POST", "-d", "{\"key\":\"\(other)\",\"value\":\"\(otherValue)\"}", url(follower, "/v3/kv/put")])
        XCTAssertTrue(forwarded.1.hasSuffix("200") && forwarded.1.contains("\"revision\":\"3\""), forwarded.1)
        let seen = try curl(["-X", "POST", "-d", "{\"key\":\"\(other)\"}", url(follower, "/v3/kv/range")])
        XCTAssertTrue(seen.1.contains(otherValue) && seen.1.contains("\"mod_revision\":\"3\""), seen.1)
        let empty = try curl(["-X", "POST", "-d", "{\"key\":\"\"}", url(leader, "/v3/kv/put")])
        XCTAssertTrue(empty.1.hasSuffix("400") && empty.1.contains("key is not provided"), empty.1)
        let deleted = try curl(["-X", "POST", "-d", "{\"key\":\"\(other)\",\"prev_kv\":true}", url(follower, "/v3/kv/deleterange")])
        XCTAssertTrue(deleted.1.contains("\"deleted\":\"1\"") && deleted.1.contains(otherValue), deleted.1)
        let bad = try curl(["-X", "POST", "-d", "{nope", url(leader, "/v3/kv/put")])
        XCTAssertTrue(bad.1.hasSuffix("400"), bad.1)
        c.kill9(leader)
        let rest = names.filter { $0 != leader }
        try await c.waitUntil("a new leader", nodes: rest) { vs in vs.allSatisfy { $0.leader != leaderID && $0.leader != "none" } }
        for n in rest {
            let got = try curl(["-X", "POST", "-d", "{\"key\":\"\(key)\"}", url(n, "/v3/kv/range")])
            XCTAssertTrue(got.1.contains(value), "\(n) holds the committed value: \(got.1)")
        }
    }


    /// A member whose Raft log was lost must not start (it could vote twice in a term); it says how to
    /// recover, and after the network recorded it failed it rejoins as a new replica.
    func testAMemberWithALostRaftLogRefusesToStartThenRejoins() async throws {
        let c = try AgentCluster()
        let names = ["n1", "n2", "n3", "n4"]
        try c.createNetwork()
        for n in names.dropFirst() { try c.join(n) }
        try await c.waitUntil("4 nodes formed", nodes: names, AgentCluster.formed(4))
        let id = await c.status("n4")!.node
        c.terminate("n4")
        try FileManager.default.removeItem(atPath: c.home("n4") + "/raft")
        try c.start("n4")
        let p = try XCTUnwrap(c.processes["n4"])
        let deadline = Date().addingTimeInterval(20)
        while p.isRunning && Date() < deadline { try await Task.sleep(nanoseconds: 100_000_000) }
        XCTAssertFalse(p.isRunning, "an agent with a lost Raft log must refuse to start")
        XCTAssertNotEqual(p.terminationStatus, 0)
        c.processes["n4"] = nil
        let log = (try? String(contentsOfFile: c.home("n4") + ".log", encoding: .utf8)) ?? ""
        XCTAssertTrue(log.contains("vote twice"), log.suffix(1500).description)
        // The recovery the message describes.
        let rest = ["n1", "n2", "n3"]
        try await c.waitUntil("n4 recorded failed", nodes: rest, timeout: 60) { vs in
            vs.allSatisfy { v in members(v).contains { $0.id == id && $0.status == "failed" } }
        }
        try FileManager.default.removeItem(atPath: c.home("n4") + "/latent.spore")
        try c.start("n4")
        try await c.waitUntil("n4 rejoined as a new replica", nodes: names, timeout: 60, AgentCluster.formed(4))
    }

}

func asyncFirst<T>(_ xs: [T], _ p: (T) async -> Bool) async -> T? {
    for x in xs where await p(x) { return x }
    return nil
}
