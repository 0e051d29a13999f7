import Foundation
@testable import K3sController
@testable import K3sDriver
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import Synchronization
import XCTest

/// The K3s driver against stand-ins, because K3s cannot be installed on the project's machines: a
/// `k3s` shell script on a temporary PATH for the supervision, and a small HTTP server for the
/// Kubernetes API. What they check is the driver's side: the files, the command line, restarts,
/// stopping everything, and the exact API requests. Needs root (cgroups).
final class K3sDriverTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "myc-k3s-\(UUID().uuidString.prefix(8).lowercased())"
        try FileManager.default.createDirectory(atPath: dir + "/bin", withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// Polls `condition` every 20 ms until it holds or `seconds` pass.
    func eventually(_ what: String, within seconds: Double = 10, _ condition: () throws -> Bool) rethrows {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return }
            usleep(20_000)
        }
        XCTFail("not within \(seconds) s: \(what)")
    }

    func text(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
    func alive(_ pid: Int32) -> Bool {
        // A zombie is gone for our purposes; /proc/PID/stat's third field is its state.
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return false }
        return !(stat.split(separator: ")").last?.trimmingCharacters(in: .whitespaces).hasPrefix("Z") ?? true)
    }

    /// The stand-in: records each start (pid and argv) and the config it was given beside the config,
    /// starts a child (as k3s starts containerd), and exits with 3 when told to crash at start.
    func installStandIn() throws -> String {
        let path = dir + "/bin/k3s"
        try """
        #!/bin/sh
        # Stand-in for k3s in tests: K3s cannot be installed on these machines.
        d="${3%/*}"
        echo "$$ $*" >> "$d/standin-starts"
        cp "$3" "$d/standin-config-$$.yaml"
        if [ -f "$d/standin-crash" ]; then rm -f "$d/standin-crash"; exit 3; fi
        sleep 1000 &
        echo $! > "$d/standin-child"
        wait

        """.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
        return path
    }

    func config(_ binary: String, nodeIP: String = "10.0.0.1") -> K3sNodeConfig {
        K3sNodeConfig(role: .server, binary: binary, node: K3sWorld.id(1), nodeIP: nodeIP, serverURL: "", token: K3sWorld.token,
                      clusterCIDR: CIDR("10.244.0.0/16")!, podCIDR: CIDR("10.244.1.0/24")!, serviceCIDR: "10.43.0.0/16", clusterDNS: "10.43.0.10",
                      apiPort: 6443, directory: dir + "/k3s", cniConfDir: dir + "/cni/net.d", cniBinDir: dir + "/cni/bin", podCIDRFile: dir + "/podcidr")
    }

    func testLocatingK3sOnPATHAndSayingWhyNot() throws {
        let (none, why) = K3sBinary.locate("k3s", path: dir + "/bin:/nonexistent")
        XCTAssertNil(none)
        XCTAssertTrue(why.contains("no `k3s` binary on PATH (\(dir)/bin:/nonexistent)") && why.contains("does not offer the k3s driver"), why)
        let path = try installStandIn()
        XCTAssertEqual(K3sBinary.locate("k3s", path: "/nonexistent:" + dir + "/bin").0, path)
        XCTAssertEqual(K3sBinary.locate(path, path: nil).0, path)
        XCTAssertNil(K3sBinary.locate("", path: dir + "/bin").0, "k3s_binary = \"\" turns it off")
        chmod(path, 0o644)
        XCTAssertNil(K3sBinary.locate("k3s", path: dir + "/bin").0, "not executable: not k3s")
    }

    func testSupervisesTheK3sBinaryRestartsItAndStopsEverything() async throws {
        let binary = try installStandIn()
        let reports = Mutex<[K3sReport]>([])
        let driver = try K3sDriver(directory: dir + "/k3s")
        driver.reportTo { r in reports.withLock { $0.append(r) } }
        let starts = dir + "/k3s/standin-starts"
        func startLines() -> [Substring] { text(starts).split(separator: "\n") }
        func pid(_ line: Substring) -> Int32 { Int32(line.split(separator: " ")[0])! }
        var stopped = false
        defer { if !stopped { let sem = DispatchSemaphore(value: 0); Task { await driver.stopAll(); sem.signal() }; sem.wait() } }

        let c = config(binary)
        try await driver.perform(.run(c))
        eventually("the stand-in started") { startLines().count == 1 }
        let first = startLines()[0]
        XCTAssertEqual(first.split(separator: " ", maxSplits: 1)[1], "server --config \(dir)/k3s/config.yaml")
        // The stand-in records its start, then copies what it was given.
        eventually("the stand-in read its config") { text(dir + "/k3s/standin-config-\(pid(first)).yaml") == K3sConfigFile.yaml(c) }
        XCTAssertEqual(try AtomicFile.mode(of: c.configPath) & 0o777, 0o600, "config.yaml holds the token: root only")
        XCTAssertEqual(text(c.conflistPath), K3sConfigFile.conflist(c))
        eventually("its child started") { !text(dir + "/k3s/standin-child").isEmpty }
        let child1 = Int32(text(dir + "/k3s/standin-child").trimmingCharacters(in: .whitespacesAndNewlines))!

        // The same config again changes nothing.
        try await driver.perform(.run(c))
        XCTAssertEqual(startLines().count, 1)

        // It dies: restarted after the first delay (500 ms), and its child went with it (one cgroup).
        kill(pid(first), SIGKILL)
        eventually("restarted") { startLines().count == 2 }
        eventually("the dead one's child is gone") { !alive(child1) }
        XCTAssertTrue(reports.withLock { $0 }.contains { if case .process(.restarting(let exit, 1, 500)) = $0 { return exit == "killed by signal 9" }; return false },
                      "\(reports.withLock { $0 })")
        eventually("reported running again") { reports.withLock { $0 }.last == .process(.running(restarts: 1)) }

        // It dies again, then fails at start: the delay doubles each time.
        _ = FileManager.default.createFile(atPath: dir + "/k3s/standin-crash", contents: nil)
        kill(pid(startLines()[1]), SIGKILL)
        eventually("restarted after crashing at start", within: 8) { startLines().count == 4 }
        let delays = reports.withLock { $0 }.compactMap { r -> UInt64? in if case .process(.restarting(_, _, let ms)) = r { return ms }; return nil }
        XCTAssertEqual(delays, [500, 1000, 2000], "doubling while it keeps failing within a minute of its start")

        // A changed configuration restarts it at once with the new file.
        let changed = config(binary, nodeIP: "10.0.0.9")
        try await driver.perform(.run(changed))
        eventually("restarted with the new config") { startLines().count == 5 }
        eventually("the new config was read") { text(dir + "/k3s/standin-config-\(pid(startLines()[4])).yaml").contains("node-ip: \"10.0.0.9\"") }

        // The agent stops: k3s and its children are gone, and nothing starts it again.
        eventually("the last child started") { Int32(text(dir + "/k3s/standin-child").trimmingCharacters(in: .whitespacesAndNewlines)).map(alive) ?? false }
        let lastChild = Int32(text(dir + "/k3s/standin-child").trimmingCharacters(in: .whitespacesAndNewlines))!
        let last = pid(startLines()[4])
        await driver.stopAll()
        stopped = true
        eventually("k3s stopped") { !alive(last) }
        eventually("its child stopped") { !alive(lastChild) }
        XCTAssertEqual(reports.withLock { $0 }.last, .process(.stopped))
        let before = startLines().count
        try await Task.sleep(nanoseconds: 1_200_000_000)  // longer than the next restart delay would be
        XCTAssertEqual(startLines().count, before, "nothing restarts a stopped k3s")
    }

    func testKubernetesAPICallsAgainstAStandInAPIServer() async throws {
        let api = StandInAPIServer()
        try api.start()
        defer { api.stop() }
        let kubeconfig = dir + "/kubeconfig.yaml"
        try api.kubeconfig(token: "bearer-of-the-test").write(toFile: kubeconfig, atomically: true, encoding: .utf8)
        let reports = Mutex<[K3sReport]>([])
        let driver = try K3sDriver(directory: dir + "/k3s", kubeconfig: kubeconfig)
        driver.reportTo { r in reports.withLock { $0.append(r) } }
        func last() -> K3sReport? { reports.withLock { $0.last } }

        var spec = ServiceSpec(name: "web", driver: .k3s, image: "docker.io/library/nginx:1.27", replicas: 2, ports: [ServicePort(name: "http", port: 80)])
        spec.health = ServiceHealthSpec(kind: .tcp(port: 80))
        let manifest = K3sWorkload.manifest(ServiceRecord(spec: spec, generation: 3))
        try await driver.perform(.apply(manifest))
        XCTAssertEqual(last(), .applied(name: "web", generation: 3))
        let applied = api.requests
        XCTAssertEqual(applied.map { "\($0.method) \($0.uri)" }, [
            "PATCH /api/v1/namespaces/mycelium?fieldManager=mycelium&force=true",
            "PATCH /apis/apps/v1/namespaces/mycelium/deployments/web?fieldManager=mycelium&force=true",
        ])
        XCTAssertEqual(applied.map(\.contentType), ["application/apply-patch+yaml", "application/apply-patch+yaml"])
        XCTAssertEqual(applied.map(\.authorization), ["Bearer bearer-of-the-test", "Bearer bearer-of-the-test"])
        XCTAssertEqual(applied[0].body, K3sWorkload.namespaceObject)
        XCTAssertEqual(applied[1].body, manifest.deployment)

        try await driver.perform(.sync)
        XCTAssertEqual(last(), .workloads([K3sObservedWorkload(name: "web", generation: 3, ready: 0)]))
        XCTAssertEqual(api.requests.last.map { "\($0.method) \($0.uri)" },
                       "GET /apis/apps/v1/namespaces/mycelium/deployments?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dmycelium")
        api.setReady("web", 2)
        try await driver.perform(.sync)
        XCTAssertEqual(last(), .workloads([K3sObservedWorkload(name: "web", generation: 3, ready: 2)]))

        // The API refuses: the report carries its message for the operator.
        api.failApplies((422, "Deployment.apps \"web\" is invalid: spec.template.spec.containers[0].image: Required value"))
        try await driver.perform(.apply(manifest))
        guard case let .applyFailed("web", message)? = last() else { return XCTFail("\(String(describing: last()))") }
        XCTAssertTrue(message.contains("422") && message.contains("image: Required value"), message)
        api.failApplies(nil)

        try await driver.perform(.delete(name: "web"))
        XCTAssertEqual(api.requests.last.map { "\($0.method) \($0.uri)" }, "DELETE /apis/apps/v1/namespaces/mycelium/deployments/web")
        XCTAssertEqual(api.deploymentNames, [])
        try await driver.perform(.delete(name: "web"))  // already gone: 404 is fine, nothing reported
        XCTAssertEqual(last(), .applyFailed(name: "web", message: message))

        // No API yet (K3s has not written its kubeconfig): said plainly.
        try FileManager.default.removeItem(atPath: kubeconfig)
        try await driver.perform(.sync)
        guard case .apiUnavailable(let why)? = last() else { return XCTFail() }
        XCTAssertTrue(why.contains("no kubeconfig at \(kubeconfig) yet"), why)
        XCTAssertFalse(reports.withLock { "\($0)" }.contains("bearer-of-the-test"), "no credential in a report")
    }

    /// The core and the driver together, as the agent hosts them: the server node's controller syncs,
    /// applies what is missing, and reports ready pods into the control state.
    func testTheServersControllerAndDriverConvergeOnTheStandInAPI() async throws {
        let api = StandInAPIServer()
        try api.start()
        defer { api.stop() }
        let kubeconfig = dir + "/kubeconfig.yaml"
        try api.kubeconfig(token: "t0k3n-for-tests").write(toFile: kubeconfig, atomically: true, encoding: .utf8)
        let inbox = Mutex<[K3sReport]>([])
        let driver = try K3sDriver(directory: dir + "/k3s", kubeconfig: kubeconfig)
        driver.reportTo { r in inbox.withLock { $0.append(r) } }

        var w = try K3sWorld()
        for i: UInt8 in 1...3 { try w.offer(i, k3s: true) }
        try w.service(.k3sServer(node: K3sWorld.id(1), url: "https://10.0.0.1:6443", token: K3sWorld.token))
        try w.service(.deploy(ServiceSpec(name: "web", driver: .k3s, image: "nginx", replicas: 2)))
        try w.service(.deploy(ServiceSpec(name: "api", driver: .k3s, image: "api:1", replicas: 1)))
        // Not a real k3s binary: the controller only needs one to decide it runs the server.
        var settings = K3sWorld.settings(1)
        settings.syncEveryMillis = 100
        var core = K3sController(settings: settings)
        var now: UInt64 = 1000
        let stopped = Mutex(false)
        defer { if !stopped.withLock({ $0 }) { let sem = DispatchSemaphore(value: 0); Task { await driver.stopAll(); sem.signal() }; sem.wait() } }

        func round() async throws {
            now += 100
            var effects = core.tick(context: w.context(1, millis: now))
            while !effects.isEmpty {
                var next: [ControllerEffect<K3sAction>] = []
                for e in effects {
                    switch e {
                    case .act(.run): break  // the supervision has its own test
                    case .act(let a): try await driver.perform(a)
                    case .request(.service(let c, _)): try w.service(c)
                    default: break
                    }
                }
                for r in inbox.withLock({ r in defer { r = [] }; return r }) { next += core.reported(r, context: w.context(1, millis: now)) }
                effects = next
            }
        }
        for _ in 0..<5 { try await round() }
        XCTAssertEqual(api.deploymentNames, ["api", "web"])
        XCTAssertEqual(w.state.services.k3s?.workloads["web"], K3sWorkloadStatus(name: "web", generation: 1, ready: 0))
        api.setReady("web", 2); api.setReady("api", 1)
        for _ in 0..<5 { try await round() }
        XCTAssertEqual(w.state.services.k3s?.workloads.mapValues(\.ready), ["web": 2, "api": 1])
        // A stopped service's Deployment is deleted.
        try w.service(.remove(name: "api"))
        for _ in 0..<5 { try await round() }
        XCTAssertEqual(api.deploymentNames, ["web"])
        await driver.stopAll()
        stopped.withLock { $0 = true }
    }
}
