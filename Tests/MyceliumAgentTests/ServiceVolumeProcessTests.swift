import Foundation
import MyceliumAPI
import ServiceRuntime
import XCTest

/// A service naming a volume, on real agents through the real CLI (issue 18): a local volume pins the
/// service to the volume's node, its instance writes through a real loop-mounted ext4, the data
/// survives the service being stopped (everything detached) and deployed again, and the volume
/// cannot be deleted or given to another service meanwhile. Needs root (loop devices, mounts).
final class ServiceVolumeProcessTests: XCTestCase {
    func services(_ c: AgentCluster, _ n: String) async -> [ServiceInfo] {
        (try? await AgentClient(socket: c.home(n) + "/agent.sock").services().services) ?? []
    }

    func testAServiceWithALocalVolumeRunsOnItsNodeAndKeepsItsDataAcrossARestart() async throws {
        guard getuid() == 0 else { throw XCTSkip("loop devices and mounts need root") }
        let c = try AgentCluster()
        defer { c.shutdown() }
        c.extraConfig = { _ in "libvirt_uri = \"\"\npodman = \"off\"\ndatapath_mode = \"off\"\n" }
        let names = ["n1", "n2", "n3"]
        try c.createNetwork()
        for n in names.dropFirst() { try c.join(n) }
        try await c.waitUntil("3 nodes formed", nodes: names, AgentCluster.formed(3))
        let n2 = await c.status("n2")!.node
        var (code, out) = try c.cli(["volume", "create", "data", "--size", "64M", "--on", n2, "--home", c.home("n1")])
        XCTAssertEqual(code, 0, out)
        let image = c.home("n2") + "/volumes/data.img"
        let mount = c.home("n2") + "/volumes/mnt/data"

        // Each start appends a line to a file on the volume, then runs on.
        let spec = c.home("db.yaml")
        try """
            name: db
            command: ["/bin/sh", "-c", "echo started >> \\"$MYCELIUM_VOLUME_DATA/starts\\" && exec sleep 1000"]
            resources: {cpu: 50m, memory: 32Mi}
            """.write(toFile: spec, atomically: true, encoding: .utf8)
        // More than one replica with a volume is refused before anything is recorded.
        let many = c.home("many.yaml"), thief = c.home("thief.yaml")
        try "name: many\ncommand: [sleep, \"100\"]\nreplicas: 2\n".write(toFile: many, atomically: true, encoding: .utf8)
        try "name: thief\ncommand: [sleep, \"100\"]\n".write(toFile: thief, atomically: true, encoding: .utf8)
        (code, out) = try c.cli(["service", "deploy", many, "--volume", "data:/data", "--home", c.home("n1"), "--wait", "0"])
        XCTAssertNotEqual(code, 0, out)
        XCTAssertTrue(out.contains("exactly 1 instance"), out)
        (code, out) = try c.cli(["service", "deploy", spec, "--volume", "nope:/data", "--home", c.home("n1"), "--wait", "0"])
        XCTAssertNotEqual(code, 0, out)
        XCTAssertTrue(out.contains("no volume named 'nope'"), out)

        (code, out) = try c.cli(["service", "deploy", spec, "--volume", "data:/data", "--home", c.home("n3"), "--wait", "60"])
        XCTAssertEqual(code, 0, out)
        XCTAssertTrue(out.contains("runs only on node \(n2)"), "service show says it is pinned: \(out)")
        let all = await services(c, "n1")
        let db = try XCTUnwrap(all.first { $0.name == "db" })
        XCTAssertEqual(db.instances.map(\.node), [n2], "a local volume's service runs on the volume's node")
        XCTAssertTrue(VolumeMounts.isMounted(mount))
        try await waitUntil("the instance wrote through the mount") {
            (try? String(contentsOfFile: mount + "/starts", encoding: .utf8)) == "started\n"
        }

        // One consumer at a time; a mounted volume cannot be deleted.
        (code, out) = try c.cli(["service", "deploy", thief, "--volume", "data:/other", "--home", c.home("n1"), "--wait", "0"])
        XCTAssertNotEqual(code, 0, out)
        XCTAssertTrue(out.contains("already mounted by service 'db'"), out)
        (code, out) = try c.cli(["volume", "delete", "data", "--home", c.home("n1")])
        XCTAssertNotEqual(code, 0, out)
        XCTAssertTrue(out.contains("mounted by service 'db'; stop the service first"), out)
        (code, out) = try c.cli(["volume", "show", "data", "--home", c.home("n1")])
        XCTAssertTrue(out.contains("service db"), out)

        // Stopped: unmounted and detached, nothing left behind.
        (code, out) = try c.cli(["service", "stop", "db", "--home", c.home("n1")])
        XCTAssertEqual(code, 0, out)
        try await waitUntil("the volume is unmounted and its loop device detached", timeout: 30, poll: 0.1) {
            !VolumeMounts.isMounted(mount) && !FileManager.default.fileExists(atPath: mount) && VolumeMounts(volumeDirectory: c.home("n2") + "/volumes").loops(image).isEmpty
        }

        // Deployed again: the filesystem is found again (not remade) with the first run's line.
        (code, out) = try c.cli(["service", "deploy", spec, "--volume", "data:/data", "--home", c.home("n1"), "--wait", "60"])
        XCTAssertEqual(code, 0, out)
        try await waitUntil("the second run appended to the first run's file") {
            (try? String(contentsOfFile: mount + "/starts", encoding: .utf8)) == "started\nstarted\n"
        }
        (code, out) = try c.cli(["service", "stop", "db", "--home", c.home("n1")])
        XCTAssertEqual(code, 0, out)
        try await waitUntil("detached again", timeout: 30, poll: 0.1) { !VolumeMounts.isMounted(mount) }
        (code, out) = try c.cli(["volume", "delete", "data", "--home", c.home("n1")])
        XCTAssertEqual(code, 0, out)
    }
}
