import Foundation
import MyceliumAPI
import ServiceRuntime
import XCTest

/// The k3s driver in a real agent. K3s cannot be installed on the project's machines, so `k3s_binary`
/// points at a stand-in (a Python script): `k3s server --config FILE` serves a minimal Kubernetes API
/// (server-side apply, list and delete of Deployments, every pod ready at once) on loopback and writes
/// the kubeconfig where config.yaml's `write-kubeconfig` says, as K3s does. Everything else is real:
/// the agent finds the binary, claims the K3s server role through Raft, writes config.yaml and the
/// conflist, supervises the process, applies the service as a Deployment and reports it ready.
final class K3sAgentTests: XCTestCase {
    static let standIn = #"""
    #!/usr/bin/env python3
    # Stand-in for k3s in tests: K3s cannot be installed on these machines.
    import http.server, json, os, re, signal, sys, threading
    role, cfg = sys.argv[1], sys.argv[3]
    d = os.path.dirname(cfg)
    with open(d + "/standin-starts", "a") as f: f.write("%d %s\n" % (os.getpid(), " ".join(sys.argv[1:])))
    if role != "server":
        signal.pause()
    kubeconfig = re.search(r'^write-kubeconfig: "(.*)"$', open(cfg).read(), re.M).group(1)
    deployments, lock = {}, threading.Lock()
    prefix = "/apis/apps/v1/namespaces/mycelium/deployments"
    class API(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def answer(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code); self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def record(self, body=""):
            with open(d + "/standin-requests", "a") as f:
                f.write(json.dumps({"method": self.command, "path": self.path, "type": self.headers.get("Content-Type", ""),
                                    "auth": self.headers.get("Authorization", ""), "body": body}) + "\n")
        def with_status(self, o):
            o = dict(o); r = o.get("spec", {}).get("replicas", 0)
            o["status"] = {"replicas": r, "readyReplicas": r}
            return o
        def do_PATCH(self):
            body = self.rfile.read(int(self.headers["Content-Length"])).decode(); self.record(body)
            path = self.path.split("?")[0]
            if self.headers.get("Content-Type") != "application/apply-patch+yaml": return self.answer(415, {"kind": "Status", "message": "media type"})
            if path == "/api/v1/namespaces/mycelium": return self.answer(200, json.loads(body))
            with lock: deployments[path[len(prefix) + 1:]] = json.loads(body)
            self.answer(200, self.with_status(json.loads(body)))
        def do_GET(self):
            self.record()
            with lock: items = [self.with_status(o) for o in deployments.values()]
            self.answer(200, {"kind": "DeploymentList", "items": items})
        def do_DELETE(self):
            self.record()
            with lock: gone = deployments.pop(self.path.split("?")[0][len(prefix) + 1:], None)
            self.answer(200 if gone else 404, {"kind": "Status"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), API)
    with open(kubeconfig + ".tmp", "w") as f:
        f.write("apiVersion: v1\nkind: Config\nclusters:\n- name: default\n  cluster:\n    server: http://127.0.0.1:%d\n"
                "contexts:\n- name: default\n  context: {cluster: default, user: default}\ncurrent-context: default\n"
                "users:\n- name: default\n  user:\n    token: standin-admin-token\n" % server.server_address[1])
    os.rename(kubeconfig + ".tmp", kubeconfig)
    server.serve_forever()

    """#

    func text(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
    func alive(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return false }
        return !(stat.split(separator: ")").last?.trimmingCharacters(in: .whitespaces).hasPrefix("Z") ?? true)
    }

    func testAK3sServiceIsAppliedAsADeploymentThroughTheAgentsK3sServer() async throws {
        let c = try AgentCluster()
        defer { c.shutdown() }
        let bin = c.dir + "/bin", cni = c.dir + "/cni"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        try Self.standIn.write(toFile: bin + "/k3s", atomically: true, encoding: .utf8)
        chmod(bin + "/k3s", 0o755)
        let home = c.home("n1"), k3s = c.home("n1") + "/k3s"
        // Whatever happens, nothing of the stand-in outlives the test (it runs in its own cgroup).
        defer { (try? ProcessRuntime.leftovers(of: k3s + "/run"))?.kill() }
        c.extraConfig = { _ in
            "handoff_members = 1\nsclerotia = 1\nk3s_binary = \"\(bin)/k3s\"\nk3s_cni_conf_dir = \"\(cni)/net.d\"\nk3s_cni_bin_dir = \"\(cni)/bin\"\n"
        }
        try c.createNetwork()
        try await c.waitUntil("1 node formed", nodes: ["n1"], AgentCluster.formed(1))

        // The only node offering k3s claims the server role and runs `k3s server`.
        try await waitUntil("k3s server started", timeout: 30, poll: 0.1) { self.text(k3s + "/standin-starts").contains("server --config \(k3s)/config.yaml") }
        let config = text(k3s + "/config.yaml")
        XCTAssertTrue(config.contains("flannel-backend: \"none\"") && config.contains("cluster-cidr: \"10.244.0.0/16\""), config)
        let token = try XCTUnwrap(config.split(separator: "\n").first { $0.hasPrefix("token: ") }.map { String($0.dropFirst(8).dropLast()) })
        XCTAssertGreaterThanOrEqual(token.count, 64)
        let conflist = text(cni + "/net.d/10-mycelium.conflist")
        XCTAssertTrue(conflist.contains("\"type\": \"mycelium-cni\"") && conflist.contains("\"subnet\": \"10.244."), conflist)

        // Deploy: applied as a Deployment through the (stand-in) API, reported ready, shown.
        let spec = c.dir + "/hello.yaml"
        try "name: hello\ndriver: k3s\nimage: docker.io/library/nginx:1.27\nreplicas: 2\nports: [{name: http, port: 80}]\nhealth: {type: http, port: 80, path: /}\n"
            .write(toFile: spec, atomically: true, encoding: .utf8)
        let (rc, out) = try c.cli(["service", "deploy", spec, "--home", home, "--wait", "40"])
        XCTAssertEqual(rc, 0, out)
        XCTAssertTrue(out.contains("serving     2 of 2; Kubernetes: 2 of 2 pods ready (Deployment mycelium/hello, generation 1"), out)
        let requests = text(k3s + "/standin-requests").split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: String]
        }
        let apply = try XCTUnwrap(requests.first { $0["method"] == "PATCH" && $0["path"]!.hasPrefix("/apis/apps/v1/namespaces/mycelium/deployments/hello?") })
        XCTAssertEqual(apply["path"], "/apis/apps/v1/namespaces/mycelium/deployments/hello?fieldManager=mycelium&force=true")
        XCTAssertEqual(apply["type"], "application/apply-patch+yaml")
        XCTAssertEqual(apply["auth"], "Bearer standin-admin-token")
        let body = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(apply["body"]!.utf8)) as? [String: Any])
        XCTAssertEqual((body["spec"] as? [String: Any])?["replicas"] as? Int, 2)

        // The join token is nowhere but config.yaml: not in the API's answers, the CLI's, or the log.
        let shown = try c.cli(["service", "show", "hello", "--home", home, "-o", "json"]).1 + (try c.cli(["service", "list", "--home", home, "-o", "json"]).1)
            + (try c.cli(["status", "--home", home, "-o", "json"]).1) + (try c.cli(["spore", "show", "--home", home]).1)
        XCTAssertFalse(shown.contains(token), "the token leaks through the API or the CLI")
        XCTAssertFalse(text(home + ".log").contains(token), "the token leaks into the agent's log")

        // Stop: the Deployment is deleted.
        XCTAssertEqual(try c.cli(["service", "stop", "hello", "--home", home]).0, 0)
        try await waitUntil("the Deployment is deleted", timeout: 20, poll: 0.1) {
            self.text(k3s + "/standin-requests").contains("\"method\": \"DELETE\", \"path\": \"/apis/apps/v1/namespaces/mycelium/deployments/hello\"")
        }

        // The agent stops: so does k3s, with everything it started.
        let pid = try XCTUnwrap(Int32(text(k3s + "/standin-starts").split(separator: " ").first ?? ""))
        XCTAssertTrue(alive(pid))
        c.terminate("n1")
        try await waitUntil("k3s stopped with the agent", timeout: 15, poll: 0.05) { !self.alive(pid) }
    }

    func testWithoutK3sTheNodeDoesNotOfferItAndDeploySaysWhy() async throws {
        let c = try AgentCluster()
        defer { c.shutdown() }
        c.extraConfig = { _ in "handoff_members = 1\nsclerotia = 1\nk3s_binary = \"\(c.dir)/no-such-dir/k3s\"\n" }
        try c.createNetwork()
        try await c.waitUntil("1 node formed", nodes: ["n1"], AgentCluster.formed(1))
        let spec = c.dir + "/hello.yaml"
        try "name: hello\ndriver: k3s\nimage: nginx\n".write(toFile: spec, atomically: true, encoding: .utf8)
        var out = ""
        // Until the node's facts are recorded, "no live member offers services yet" may answer first.
        try await waitUntil("deploy refused for want of k3s", timeout: 20, poll: 0.2) {
            out = (try? self.cliOut(c, ["service", "deploy", spec, "--home", c.home("n1"), "--wait", "0"])) ?? ""
            return out.contains("no member offers the k3s driver")
        }
        XCTAssertTrue(out.contains("no node found a `k3s` binary on its PATH (K3s is not installed)") && out.contains("mycelium doctor"), out)
        let services = try await AgentClient(socket: c.home("n1") + "/agent.sock").services()
        XCTAssertTrue(services.services.isEmpty, "nothing half-deployed")
        XCTAssertTrue(text(c.home("n1") + ".log").contains("this node does not offer the k3s driver"), "the agent says why at start")
        XCTAssertFalse(FileManager.default.fileExists(atPath: c.home("n1") + "/k3s"), "a node without k3s writes nothing for it")
    }

    func cliOut(_ c: AgentCluster, _ args: [String]) throws -> String { try c.cli(args).1 }
}
