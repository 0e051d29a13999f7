import Foundation
import MyceliumAPI
import MyceliumCore
import MyceliumIdentity
import MyceliumSpores
import XCTest
@testable import MyceliumAgent

/// Service spores on real agents (issue 17): three agents on loopback with a seed directory. The
/// leader writes each service's signed record beside the seed spore when a service is deployed,
/// rewrites it when its instance moves and leaves a tombstone when it is stopped; the real
/// `mycelium spore verify` and `mycelium service find` read them with no agent involved.
final class ServiceSporeProcessTests: XCTestCase {
    func testTheLeaderWritesServiceSporesThatVerifyOfflineAndFollowMoves() async throws {
        let c = try AgentCluster()
        defer { c.shutdown() }
        let seeds = c.dir + "/seeds"
        c.seedDirs = [seeds]
        let server = try SeedHTTPServer()
        defer { server.close() }
        let url = "http://127.0.0.1:\(server.port)/mycelium/"
        c.extraConfig = { _ in "seed_urls = [\"\(url)\"]\n" }
        try c.createNetwork()
        for n in ["n2", "n3"] { try c.join(n) }
        let names = ["n1", "n2", "n3"]
        try await c.waitUntil("3 nodes formed", nodes: names, AgentCluster.formed(3))
        let maybeStatus = await c.status("n1")
        let status = try XCTUnwrap(maybeStatus)
        let network = try NetworkID(parsing: status.network)
        var nodeOf: [String: String] = [:]
        for n in names { nodeOf[await c.status(n)?.node ?? ""] = n }

        // A singleton and a two-replica service with a port (sleepers: nothing to bind on one loopback).
        let marker = "mycelium-svcspore-\(UUID().uuidString.prefix(8))"
        for (name, replicas) in [("db", 1), ("web", 2)] {
            let spec = c.home("\(name).yaml")
            try "name: \(name)\ncommand: [python3, -c, 'import time; time.sleep(600)', \(marker)]\nreplicas: \(replicas)\nresources: {memory: 32Mi}\nports: [{name: http, port: 18080}]\n"
                .write(toFile: spec, atomically: true, encoding: .utf8)
            let (rc, out) = try c.cli(["service", "deploy", spec, "--home", c.home("n1"), "--wait", "30"])
            XCTAssertEqual(rc, 0, out)
        }
        let store = DirectorySeedStore(directory: seeds, network: network)
        func find(_ name: String) async -> ServiceLookup {
            await findService(name, in: [store], network: network, now: Int64(Date().timeIntervalSince1970))
        }

        // The records appear beside the seed spore and say what the agents say.
        var db: ServiceLookup!
        try await waitUntil("db's service spore names its serving owner", timeout: 20, poll: 0.1) {
            db = await find("db")
            return db.record?.content.owner != nil && db.record?.content.serving.count == 1
        }
        let info = try await service("db", on: "n1", c)
        let owner = try XCTUnwrap(db.record?.content.owner)
        XCTAssertEqual("\(owner.node)", info.instances.first?.node, "the record's owner is where db runs")
        XCTAssertTrue(status.sclerotia.contains("\(try XCTUnwrap(db.record).signer.nodeID)"), "signed by a sclerotium")
        try await waitUntil("web's service spore names both serving instances", timeout: 20, poll: 0.1) {
            await find("web").endpoints.count == 2
        }
        let webEndpoints = await find("web").endpoints
        XCTAssertTrue(webEndpoints.allSatisfy { $0.hasSuffix(":18080") }, "\(webEndpoints)")
        // The same records were PUT under the seed URL.
        try await waitUntil("the records are under the seed URL too", timeout: 20, poll: 0.1) {
            let overHTTP = await findService("web", in: [HTTPSeedStore(base: url, network: network)], network: network,
                                             now: Int64(Date().timeIntervalSince1970))
            return overHTTP.endpoints == webEndpoints
        }

        // `mycelium spore verify` on the file, as an operator would (JSON), and `service find`.
        let file = store.servicePath("db")
        var (rc, out) = try c.cli(["spore", "verify", file, "--network", "\(network)", "-o", "json"])
        XCTAssertEqual(rc, 0, out)
        let verified = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], out)
        XCTAssertEqual(verified["status"] as? String, "valid")
        XCTAssertEqual(verified["service"] as? String, "db")
        XCTAssertEqual((verified["owner"] as? [String: Any])?["node"] as? String, "\(owner.node)")
        (rc, out) = try c.cli(["service", "find", "web", "--network", "\(network)", "--seed-dir", seeds])
        XCTAssertEqual(rc, 0, out)
        XCTAssertTrue(out.contains(":18080"), out)

        // Refusals say why: a flipped signature bit, another network, no seed spore to verify against.
        let tampered = c.dir + "/tampered.spore"
        // The flip is in the signature inside the checksummed payload: re-wrapped, so the checksum holds.
        let inner = try ChecksummedFile.read(kind: FileKind.serviceSpore, from: file)
        var forged = inner; forged[forged.count - 10] ^= 1
        try AtomicFile.write(ChecksummedFile.encode(kind: FileKind.serviceSpore, payload: forged), to: tampered)
        (rc, out) = try c.cli(["spore", "verify", tampered, "--network", "\(network)", "--seed", c.dir + "/seeds/\(network).seed"])
        XCTAssertEqual(rc, 1, out)
        XCTAssertTrue(out.contains("INVALID") && out.contains("bad signature"), out)
        let otherNetwork = NetworkID(genesisKey: SigningKey().publicKey)
        (rc, out) = try c.cli(["spore", "verify", file, "--network", "\(otherNetwork)", "--seed", c.dir + "/seeds/\(network).seed"])
        XCTAssertEqual(rc, 1, out)
        XCTAssertTrue(out.contains("INVALID") && out.contains("not to the expected network"), out)
        (rc, out) = try c.cli(["spore", "verify", file, "--network", "\(otherNetwork)"])
        XCTAssertNotEqual(rc, 0, out)
        XCTAssertTrue(out.contains("--seed"), "says how to give the seed spore: \(out)")

        // Drain db's node: the singleton moves and the record follows, at a later epoch.
        let before = try XCTUnwrap(db.record)
        // A second location keeps the record as it is now (as one only a cut-off side reached would).
        let stale = DirectorySeedStore(directory: c.dir + "/stale-seeds", network: network)
        try AtomicFile.makeDirectory(stale.directory)
        for (from, to) in [(c.dir + "/seeds/\(network).seed", stale.path), (store.servicePath("db"), stale.servicePath("db"))] {
            try AtomicFile.write(try AtomicFile.read(from), to: to)
        }
        let ownerHost = try XCTUnwrap(nodeOf["\(owner.node)"])
        (rc, out) = try c.cli(["service", "drain", "--node", "\(owner.node)", "--home", c.home(ownerHost)])
        XCTAssertEqual(rc, 0, out)
        try await waitUntil("db's service spore names its new owner", timeout: 45, poll: 0.1) {
            db = await find("db")
            guard let r = db.record, let o = r.content.owner else { return false }
            return o.node != owner.node && r.content.serving.count == 1
        }
        let after = try XCTUnwrap(db.record)
        XCTAssertGreaterThan(after.epoch, before.epoch)
        XCTAssertEqual(ServiceSpore.authoritative(before, after), after, "the moved record outranks the old one")
        // A reader of both locations, in either order, gets the one owner the network chose.
        for order in [[stale, store], [store, stale]] {
            let both = await findService("db", in: order, network: network, now: Int64(Date().timeIntervalSince1970))
            XCTAssertEqual(both.record?.content.owner?.node, after.content.owner?.node, "\(both.problems)")
            XCTAssertTrue(both.conflicting.isEmpty)
        }

        // Stopped: a tombstone replaces web's record, and `service find` says it is gone.
        (rc, out) = try c.cli(["service", "stop", "web", "--home", c.home("n1")])
        XCTAssertEqual(rc, 0, out)
        try await waitUntil("web's record is a tombstone", timeout: 20, poll: 0.1) {
            await find("web").record?.content.removed == true
        }
        (rc, out) = try c.cli(["service", "find", "web", "--network", "\(network)", "--seed-dir", seeds, "-o", "json"])
        XCTAssertEqual(rc, 1, out)
        XCTAssertTrue(out.contains("\"removed\" : true"), out)

        // A record of a service the table does not have (as if its removal was never written here),
        // signed by a sclerotium: the next leader, in its first round, replaces it with a tombstone.
        let key = try KeyFile.read(from: c.home("n1") + "/node.key")
        let cert = try MembershipCertificate(decoding: ChecksummedFile.read(kind: FileKind.membershipCertificate, from: c.home("n1") + "/node.cert"))
        let ghost = ServiceSpore.Content(name: "ghost", generation: 1, replicas: 1, driver: "process",
                                         instances: [ServiceSpore.Instance(slot: 0, node: cert.nodeID, address: "127.0.0.1", generation: 1, serving: true)])
        try await store.writeService(ServiceSpore(network: network, content: ghost, epoch: SporeEpoch(term: 1, index: 1),
                                                  issuedAtMillis: Int64(Date().timeIntervalSince1970 * 1000), signer: cert, key: key))
        let ghostBefore = await find("ghost")
        XCTAssertEqual(ghostBefore.record?.content.removed, false, "\(ghostBefore.problems)")
        let now2 = await c.status("n2")
        let leader = try XCTUnwrap(nodeOf[now2?.leader ?? ""], "no leader: \(String(describing: now2))")
        c.kill9(leader)
        let rest = names.filter { $0 != leader }
        try await c.waitUntil("a new leader", nodes: rest) { views in
            let leaders = Set(views.map(\.leader))
            return leaders.count == 1 && !leaders.contains("none") && nodeOf[views[0].leader] != leader
        }
        try await waitUntil("the new leader tombstoned the ghost's record", timeout: 20, poll: 0.1) {
            await find("ghost").record?.content.removed == true
        }
        // db, still deployed, is written again under the new term by the new leader.
        let newLeader = await c.status(rest[0])?.leader ?? ""
        try await waitUntil("db's record is re-signed by the new leader", timeout: 20, poll: 0.1) {
            guard let r = await find("db").record else { return false }
            return r.epoch.term > after.epoch.term && "\(r.signer.nodeID)" == newLeader
        }
        (rc, out) = try c.cli(["service", "stop", "db", "--home", c.home(rest[0])])
        XCTAssertEqual(rc, 0, out)
        try await waitUntil("no instance left", timeout: 20, poll: 0.1) {
            ((try? HostNetwork.sh("pgrep -f '[m]\(marker.dropFirst())' || true")) ?? "x").isEmpty
        }
    }

    func service(_ name: String, on n: String, _ c: AgentCluster) async throws -> ServiceInfo {
        let all = try await AgentClient(socket: c.home(n) + "/agent.sock").services()
        return try XCTUnwrap(all.services.first { $0.name == name }, "no service \(name) in \(all.services.map(\.name))")
    }
}
