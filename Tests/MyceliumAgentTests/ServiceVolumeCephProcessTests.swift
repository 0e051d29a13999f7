import CephTestSupport
import Foundation
import MyceliumAPI
import MyceliumRBD
import ServiceRuntime
import XCTest

extension VolumeProcessTests {
    /// A service with a Ceph volume on real agents: written through qemu-storage-daemon's mount on
    /// the node that runs it; that node's agent is killed outright (its export daemon and mount stay
    /// behind, a zombie still holding the image); the service moves, the new node fences the old
    /// daemon before attaching, and the data is there.
    func testAServiceWithACephVolumeMovesWhenItsNodeDiesAndTheOldNodeIsFenced() async throws {
        let cluster = try Self.ceph.require()
        let c = try AgentCluster()
        defer { c.shutdown() }
        c.extraConfig = { n in
            "libvirt_uri = \"\"\npodman = \"off\"\ndatapath_mode = \"off\"\n"
                + "ceph_conf = \"\(cluster.conf)\"\nceph_keyring = \"\(cluster.keyring)\"\nceph_host = \"node\((Int(n.dropFirst()) ?? 1) - 1)\"\n"
        }
        let names = try await startNetwork(c)
        var nodeOf: [String: String] = [:]
        for n in names { nodeOf[await c.status(n)?.node ?? ""] = n }
        // The class pools exist once the leader's placement is carried out.
        try await waitUntil("the placement is done", timeout: 90, poll: 0.2) {
            let s = try? await AgentClient(socket: c.home("n2") + "/agent.sock").storage()
            return s?.placement.contains(": done by") == true
        }
        var (code, out) = try c.cli(["volume", "create", "store", "--size", "64M", "--class", "public", "--home", c.home("n1")])
        XCTAssertEqual(code, 0, out)
        let admin = try await CephConnection.connect(cluster.config)
        let before = try await admin.monitorCommand("osd blocklist ls", ["format": .string("json")]).output
        addTeardownBlock {
            // Lift what the test's fences added, so later tests on this cluster start clean.
            guard let conn = try? await CephConnection.connect(cluster.config),
                  let now = try? await conn.monitorCommand("osd blocklist ls", ["format": .string("json")]).output else { return }
            for addr in Self.addresses(now) where !before.contains(addr) { try? await conn.unblocklist(address: addr) }
            // The image (the agents, their export daemons and mounts are gone by now: `defer` above).
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline {
                do { try await conn.removeImage(pool: "mycelium-public", name: "store"); return } catch { try? await Task.sleep(nanoseconds: 500_000_000) }
            }
        }

        let spec = c.home("store.yaml")
        try """
            name: store
            command: ["/bin/sh", "-c", "echo started >> \\"$MYCELIUM_VOLUME_STORE/starts\\" && sync \\"$MYCELIUM_VOLUME_STORE/starts\\" && exec sleep 1000"]
            resources: {cpu: 50m, memory: 32Mi}
            """.write(toFile: spec, atomically: true, encoding: .utf8)
        (code, out) = try c.cli(["service", "deploy", spec, "--volume", "store:/data", "--home", c.home("n1"), "--wait", "90"])
        XCTAssertEqual(code, 0, out)
        XCTAssertFalse(out.contains("runs only on"), "a Ceph volume does not pin: \(out)")
        let listed = try await AgentClient(socket: c.home("n1") + "/agent.sock").services().services
        let first = try XCTUnwrap(listed.first { $0.name == "store" })
        let old = try XCTUnwrap(nodeOf[first.instances.first?.node ?? ""])
        let oldMount = c.home(old) + "/volumes/mnt/store"
        try await waitUntil("the instance wrote through the Ceph mount on \(old)", timeout: 30) {
            (try? String(contentsOfFile: oldMount + "/starts", encoding: .utf8)) == "started\n"
        }
        let pidText = try String(contentsOfFile: c.home(old) + "/volumes/mnt/.rbd-store.pid", encoding: .utf8)
        let oldDaemon = try XCTUnwrap(Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines)))

        // (What it wrote is synced: what a killed node had only in its page cache is lost, as in any crash.)
        // The node dies without a word: its agent is killed; its export daemon and mount stay.
        let survivor = names.first { $0 != old }!
        c.kill9(old)
        XCTAssertEqual(kill(oldDaemon, 0), 0, "the old node's export daemon still runs (a zombie holding the image)")
        var moved: ServiceInfo?
        try await waitUntil("the service runs on another node", timeout: 120, poll: 0.2) {
            let s = try? await AgentClient(socket: c.home(survivor) + "/agent.sock").services().services.first { $0.name == "store" }
            moved = s
            return s.map { $0.serving == 1 && $0.instances.first.map { $0.node != first.instances[0].node } == true } ?? false
        }
        let new = try XCTUnwrap(nodeOf[moved?.instances.first?.node ?? ""])
        var seen = ""
        try await waitUntil("the new node sees the first run's data and appends (has: \(seen.debugDescription))", timeout: 30) {
            seen = (try? String(contentsOfFile: c.home(new) + "/volumes/mnt/store/starts", encoding: .utf8)) ?? "(no file)"
            return seen == "started\nstarted\n"
        }
        // The zombie's client is on the cluster's blocklist: it can never write the image again.
        let now = try await admin.monitorCommand("osd blocklist ls", ["format": .string("json")]).output
        XCTAssertFalse(Self.addresses(now).filter { !before.contains($0) }.isEmpty, "the new node fenced the old client: \(now)")
    }

    /// The `addr` values of `osd blocklist ls` (its output may hold more than one JSON array).
    static func addresses(_ json: String) -> [String] {
        json.components(separatedBy: "\"addr\":\"").dropFirst().compactMap { $0.split(separator: "\"", maxSplits: 1).first.map(String.init) }
    }
}
