import MyceliumAPI
import XCTest

/// Service spec files (issue 17): YAML read with Yams, units and policies checked, typos refused with
/// where they are, and the canonical JSON the CLI sends reads back the same.
final class ServiceSpecTests: XCTestCase {
    let example = """
        name: web
        command: [python3, -m, http.server, "8080"]
        replicas: 3
        env: {GREETING: hello}
        resources: {cpu: 250m, memory: 1Gi}
        ports: [{name: http, port: 8080}, 9090]
        health: {type: http, port: 8080, path: /healthz, interval: 1s, timeout: 500ms, threshold: 2}
        restart: {policy: on-failure, max_restarts: 5, delay: 2s}
        placement:
          strategy: spread
          constraints: ["zone in (a, b)"]
          preferences: [{rule: "rack == r1", weight: 10}]
          min_trust: 0.25
          spread: zone
          max_per_node: 1
          anti_affinity: [db]
        depends_on: [db]
        """

    func testTheDocumentedExampleReadsAndRoundTrips() throws {
        let d = try ServiceSpecDocument.parse(example)
        XCTAssertEqual(d.name, "web")
        XCTAssertEqual(d.command, ["python3", "-m", "http.server", "8080"])
        XCTAssertEqual(d.replicas, 3)
        XCTAssertEqual(d.cpuMillis, 250)
        XCTAssertEqual(d.memoryMiB, 1024)
        XCTAssertEqual(d.ports, [.init(name: "http", port: 8080), .init(name: "port9090", port: 9090)])
        XCTAssertEqual(d.health?.intervalMillis, 1000)
        XCTAssertEqual(d.health?.timeoutMillis, 500)
        XCTAssertEqual(d.restart.policy, "on-failure")
        XCTAssertEqual(d.restart.delayMillis, 2000)
        XCTAssertEqual(d.placement.minTrust, 0.25)
        XCTAssertEqual(d.placement.spread, "zone")
        XCTAssertEqual(d.placement.preferences, [.init(rule: "rack == r1", weight: 10)])
        XCTAssertEqual(d.dependsOn, ["db"])
        // What the CLI sends is JSON; the agent reads the same document back.
        XCTAssertEqual(try APIJSON.decode(ServiceSpecDocument.self, from: APIJSON.encode(d)), d)
        // A command given as one string runs through the shell; defaults fill the rest.
        let s = try ServiceSpecDocument.parse("name: a\ncommand: echo hi && sleep 9\n")
        XCTAssertEqual(s.command, ["/bin/sh", "-c", "echo hi && sleep 9"])
        XCTAssertEqual(s.replicas, 1)
        XCTAssertEqual(s.restart.policy, "always")
    }

    func testUnitsAcceptTheUsualSpellings() throws {
        XCTAssertEqual(try ServiceSpecDocument.cpuMillis("0.5"), 500)
        XCTAssertEqual(try ServiceSpecDocument.cpuMillis("2"), 2000)
        XCTAssertEqual(try ServiceSpecDocument.mebibytes("512M"), 489)
        XCTAssertEqual(try ServiceSpecDocument.mebibytes("128"), 128)
        XCTAssertEqual(try ServiceSpecDocument.millis("1m"), 60_000)
        XCTAssertThrowsError(try ServiceSpecDocument.mebibytes("lots"))
        XCTAssertThrowsError(try ServiceSpecDocument.millis("-1s"))
    }

    func testMistakesAreErrorsThatSayWhere() {
        func error(_ yaml: String) -> String {
            do { _ = try ServiceSpecDocument.parse(yaml, file: "web.yaml"); return "accepted" } catch { return "\(error)" }
        }
        XCTAssertTrue(error("name: web\nreplica: 2\n").contains("unknown field 'replica'"), error("name: web\nreplica: 2\n"))
        XCTAssertTrue(error("name: web\ndriver: docker\n").contains("use process, podman or k3s"))
        XCTAssertTrue(error("command: [x]\n").contains("name is missing"), error("command: [x]\n"))
        XCTAssertTrue(error("name: web\nresources: {memory: lots}\n").contains("memory 'lots'"))
        XCTAssertTrue(error("name: web\nrestart: sometimes\n").contains("always, on-failure or never"))
        XCTAssertTrue(error("name: web\nhealth: {type: http}\n").contains("needs a port"))
        XCTAssertTrue(error("name: web\nreplicas: two\n").contains("replicas"))
        XCTAssertTrue(error("name: [\n").contains("web.yaml"))
        XCTAssertTrue(error("name: web\nplacement: {min_trust: 3}\n").contains("fraction"))
    }
}
