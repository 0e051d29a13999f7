import Foundation
import MyceliumAPI
import XCTest

/// `mycelium dashboard` against real agents, checked in a real browser: Debian's chromium, headless,
/// loads the page (its JS renders the first snapshot, then the server-sent events) and dumps the DOM;
/// the test asserts on the members' `data-status`. Screenshots at a small and a large window are
/// checked to be PNGs; with MYCELIUM_UPDATE_SCREENSHOTS=1 they are also copied to docs/ (docs/DASHBOARD.md).
final class DashboardBrowserTests: XCTestCase {
    /// A process whose output is collected as it comes (the dashboard prints its URL once listening).
    final class Running: @unchecked Sendable {
        let process = Process()
        private let lock = NSLock()
        private var text = ""
        var output: String { lock.lock(); defer { lock.unlock() }; return text }

        init(_ args: [String], executable: String = AgentCluster.binDir + "/mycelium") throws {
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = args
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = pipe
            pipe.fileHandleForReading.readabilityHandler = { [weak self] h in
                let d = h.availableData
                guard let self, !d.isEmpty else { return }
                self.lock.lock(); self.text += String(decoding: d, as: UTF8.self); self.lock.unlock()
            }
            try process.run()
        }

        func stop() {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }

        /// The DevTools port chromium prints once listening (`DevTools listening on ws://127.0.0.1:PORT/...`).
        func devToolsPort(timeout: Double = 30) throws -> Int {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                if let r = output.range(of: "DevTools listening on ws://127.0.0.1:") {
                    if let port = Int(output[r.upperBound...].prefix { $0.isNumber }) { return port }
                }
                if !process.isRunning { break }
                Thread.sleep(forTimeInterval: 0.05)  // polling its output, bounded by the deadline
            }
            throw AgentTestError("chromium did not open its DevTools port within \(timeout) s: \(output.suffix(2000))")
        }

        /// The URL it prints once listening, or a failure naming what it printed.
        func url(timeout: Double = 30) throws -> String {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                let out = output
                if let r = out.range(of: "serving on ") {
                    let rest = out[r.upperBound...]
                    return String(rest.prefix { $0 != " " && $0 != "\n" })
                }
                if !process.isRunning { break }
                Thread.sleep(forTimeInterval: 0.05)  // polling its output, bounded by the deadline
            }
            throw AgentTestError("the dashboard did not print its URL within \(timeout) s: \(output)")
        }
    }

    static let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Runs headless chromium on `url` with `args` in a throwaway profile; returns its stdout.
    func chromium(_ url: String, _ args: [String]) throws -> String {
        guard let bin = Self.chromium else {
            throw AgentTestError("chromium is not installed; run scripts/setup (it installs Debian's chromium)")
        }
        let profile = NSTemporaryDirectory() + "myc-chromium-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: profile) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        p.arguments = ["-s", "KILL", "60", bin, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                       "--user-data-dir=" + profile] + args + [url]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        _ = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    func dom(_ url: String) throws -> String { try chromium(url, ["--dump-dom"]) }

    /// Polls the page as chromium renders it until `condition` holds, or fails after `timeout`.
    func waitForDOM(_ url: String, _ what: String, timeout: Double, _ condition: (String) -> Bool) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        var last = ""
        while Date() < deadline {
            last = try dom(url)
            if condition(last) { return last }
        }
        XCTFail("timed out after \(timeout) s waiting for the page to show \(what); last DOM:\n\(last.prefix(4000))")
        throw AgentTestError("timed out: \(what)")
    }

    func status(of id: String, in dom: String) -> String? {
        guard let r = dom.range(of: "data-member=\"\(id)\" data-status=\"") else { return nil }
        return String(dom[r.upperBound...].prefix { $0 != "\"" })
    }

    func screenshot(_ url: String, width: Int, height: Int, name: String, into dir: String) throws {
        let path = dir + "/" + name
        _ = try chromium(url, ["--hide-scrollbars", "--window-size=\(width),\(height)", "--screenshot=" + path])
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertGreaterThan(data.count, 5000, "\(name) is a real picture")
        XCTAssertEqual(Array(data.prefix(4)), [0x89, 0x50, 0x4E, 0x47], "\(name) is a PNG")
        if ProcessInfo.processInfo.environment["MYCELIUM_UPDATE_SCREENSHOTS"] == "1" {
            let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("docs").appendingPathComponent(name)
            try? FileManager.default.removeItem(at: docs)
            try FileManager.default.copyItem(atPath: path, toPath: docs.path)
        }
    }

    /// Evaluates `expression` in the open page through the DevTools protocol (python3's standard library
    /// speaks the websocket) until it yields `want`, or fails after `timeout`.
    func cdp(_ port: Int, _ expression: String, want: String, timeout: Double, file: StaticString = #filePath, line: UInt = #line) throws {
        let script = NSTemporaryDirectory() + "myc-cdp-\(UUID().uuidString.prefix(8)).py"
        try Data(Self.cdpScript.utf8).write(to: URL(fileURLWithPath: script))
        defer { try? FileManager.default.removeItem(atPath: script) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [script, String(port), expression, want, String(timeout)]
        let o = Pipe(); p.standardOutput = o; p.standardError = o
        try p.run()
        let out = String(decoding: o.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        if p.terminationStatus != 0 {
            XCTFail("the open page did not show \(want) within \(timeout) s (\(expression)): \(out)", file: file, line: line)
            throw AgentTestError("timed out: \(want)")
        }
    }

    static let cdpScript = #"""
import base64, json, os, socket, struct, sys, time, urllib.request
port, expr, want, timeout = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
page = next(t for t in json.load(urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port)) if t["type"] == "page")
path = page["webSocketDebuggerUrl"].split(":%d" % port, 1)[1]
s = socket.create_connection(("127.0.0.1", port), timeout=15)
s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, port, base64.b64encode(os.urandom(16)).decode())).encode())
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(4096)
head, buf = buf.split(b"\r\n\r\n", 1)
if b" 101 " not in head.split(b"\r\n")[0]:
    sys.exit("no websocket: %r" % head)
def exact(n):
    global buf
    while len(buf) < n:
        chunk = s.recv(65536)
        if not chunk: raise EOFError("devtools closed")
        buf += chunk
    out, buf = buf[:n], buf[n:]
    return out
def send(obj):
    data, mask = json.dumps(obj).encode(), os.urandom(4)
    n = len(data)
    hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
    s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
def recv():
    msg = b""
    while True:
        b0, b1 = exact(2)
        n = b1 & 0x7f
        if n == 126: n = struct.unpack(">H", exact(2))[0]
        elif n == 127: n = struct.unpack(">Q", exact(8))[0]
        msg += exact(n)
        if b0 & 0x80: return json.loads(msg)
deadline, i, last = time.time() + timeout, 0, None
while time.time() < deadline:
    i += 1
    send({"id": i, "method": "Runtime.evaluate", "params": {"expression": expr, "returnByValue": True}})
    m = recv()
    while m.get("id") != i: m = recv()
    last = m.get("result", {}).get("result", {}).get("value")
    if str(last) == want:
        sys.exit(0)
    time.sleep(0.2)  # the poll interval, bounded by the deadline
sys.exit("last value: %r" % (last,))
"""#

    func testTheMapShowsEveryMemberAndTurnsAKilledOneFailedInARealBrowser() async throws {
        let c = try AgentCluster()
        defer { c.shutdown() }
        let names = ["n1", "n2", "n3"]
        try c.createNetwork()
        for n in names.dropFirst() { try c.join(n) }
        try await c.waitUntil("3 nodes formed", nodes: names, AgentCluster.formed(3))
        let views = await asyncMap(names) { await c.status($0)! }
        let ids = views.map(\.node)
        let keys = views[0].members.map(\.key)

        let dash = try Running(["dashboard", "--home", c.home("n1"), "--listen", "127.0.0.1:0"])
        defer { dash.stop() }
        let url = try dash.url()
        XCTAssertTrue(url.hasPrefix("http://127.0.0.1:"), url)

        let before = try waitForDOM(url, "all 3 members alive", timeout: 60) { d in ids.allSatisfy { status(of: $0, in: d) == "alive" } }
        XCTAssertTrue(before.contains("class=\"member\""), "the map draws the members")
        XCTAssertTrue(before.contains("data-leader=\"true\""), "the leader is marked")
        XCTAssertEqual(before.components(separatedBy: "data-sclerotium=\"true\"").count - 1, 3, "3 sclerotia marked")
        XCTAssertTrue(before.contains("data-empty=\"vms\"") && before.contains("data-empty=\"services\""), "empty workloads say none yet")
        for k in keys where !k.isEmpty { XCTAssertFalse(before.contains(k), "no member key in the page") }

        let shots = NSTemporaryDirectory() + "myc-dash-shots-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: shots, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: shots) }

        // A browser that keeps the page open: the DevTools protocol reads its DOM, the page is never reloaded.
        let bin = try XCTUnwrap(Self.chromium, "chromium is not installed; run scripts/setup")
        let profile = shots + "/profile"
        let browser = try Running(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                                   "--user-data-dir=" + profile, "--remote-debugging-port=0", "--window-size=1280,900", url], executable: bin)
        defer { browser.stop() }
        let devtools = try browser.devToolsPort()
        try cdp(devtools, "window.__mark = 'same-page'; document.querySelectorAll('[data-status=alive][data-id]').length", want: "3", timeout: 30)
        // The map draws n1's own links (the agent the dashboard reads), both up.
        for peer in ids.dropFirst() {
            try cdp(devtools, "(document.querySelector('line[data-link=\"\(peer)\"]') || {getAttribute: () => 'missing'}).getAttribute('data-state')",
                    want: "up", timeout: 30)
        }

        // n3 dies; the dashboard reads n1's agent, whose spore records the failure; the open page turns it.
        let victim = ids[2]
        c.kill9("n3")
        let killed = Date()
        try cdp(devtools, "window.__mark + ':' + (document.querySelector('g[data-id=\"\(victim)\"]') || {getAttribute: () => 'missing'}).getAttribute('data-status')",
                want: "same-page:failed", timeout: 90)
        print("dashboard: the open page showed \(victim) failed \(String(format: "%.1f", Date().timeIntervalSince(killed))) s after its agent was killed")
        try cdp(devtools, "String(document.querySelector('#timeline tr[data-kind=failure]') !== null)", want: "true", timeout: 10)
        try cdp(devtools, "(document.querySelector('line[data-link=\"\(victim)\"]') || {getAttribute: () => 'missing'}).getAttribute('data-state')",
                want: "down", timeout: 30)

        let after = try waitForDOM(url, "\(victim) failed", timeout: 30) { d in status(of: victim, in: d) == "failed" }
        XCTAssertEqual(status(of: ids[0], in: after), "alive")
        XCTAssertTrue(after.contains("data-kind=\"failure\""), "the timeline shows the failure")
        XCTAssertTrue(after.contains("data-kind=\"vote\""), "the timeline shows the vote on it (with 3 members: why none is possible and the majority instead)")
        XCTAssertTrue(after.contains("data-id=\"\(victim)\" data-status=\"failed\""), "the map's node turned failed")

        try screenshot(url, width: 800, height: 600, name: "dashboard-small.png", into: shots)
        try screenshot(url, width: 1920, height: 1080, name: "dashboard-large.png", into: shots)
    }

    /// With 5 members a Byzantine-tolerant vote can be formed: the open page shows the round decided
    /// with its voters, and the timeline its opening and decision.
    func testTheOpenPageShowsTheVoteOnAKilledMemberWithItsVoters() async throws {
        let c = try AgentCluster()
        defer { c.shutdown() }
        let names = ["n1", "n2", "n3", "n4", "n5"]
        try c.createNetwork()
        for n in names.dropFirst() { try c.join(n) }
        try await c.waitUntil("5 nodes formed", nodes: names, AgentCluster.formed(5))
        let victim = await c.status("n5")!.node

        let dash = try Running(["dashboard", "--home", c.home("n1"), "--listen", "127.0.0.1:0"])
        defer { dash.stop() }
        let url = try dash.url()
        let bin = try XCTUnwrap(Self.chromium, "chromium is not installed; run scripts/setup")
        let profile = NSTemporaryDirectory() + "myc-chromium-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: profile) }
        let browser = try Running(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                                   "--user-data-dir=" + profile, "--remote-debugging-port=0", url], executable: bin)
        defer { browser.stop() }
        let devtools = try browser.devToolsPort()
        try cdp(devtools, "window.__mark = 'same-page'; document.querySelectorAll('[data-status=alive][data-id]').length", want: "5", timeout: 30)

        c.kill9("n5")
        try cdp(devtools, "window.__mark + ':' + (document.querySelector('g[data-id=\"\(victim)\"]') || {getAttribute: () => 'missing'}).getAttribute('data-status')",
                want: "same-page:failed", timeout: 90)
        // The round about it, decided yes, naming its (4 surviving) voters; the timeline has the vote's lines.
        try cdp(devtools, "String(Array.from(document.querySelectorAll('#votes tr[data-state=\"decided yes\"]')).map(r => r.textContent).some(t => t.includes('\(victim.dropFirst(5).prefix(8))') && t.split(',').length >= 3))",
                want: "true", timeout: 30)
        try cdp(devtools, "String(Array.from(document.querySelectorAll('#timeline tr[data-kind=vote]')).some(r => /decided yes/.test(r.textContent)))",
                want: "true", timeout: 10)
    }

    func testNonLoopbackIsRefusedWithoutTLSAndTokenAndRequestsWithoutTheTokenGet401() throws {
        let dir = NSTemporaryDirectory() + "myc-dash-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }

        // Elsewhere than loopback without TLS and a token: refused, saying what to pass.
        let refused = try Running(["dashboard", "--home", dir, "--listen", "0.0.0.0:0"])
        refused.process.waitUntilExit()
        XCTAssertNotEqual(refused.process.terminationStatus, 0)
        let msg = refused.output
        XCTAssertTrue(msg.contains("--tls-cert") && msg.contains("--token-file") && msg.contains("not a loopback"), msg)

        let token = "dash-token-" + UUID().uuidString
        try Data((token + "\n").utf8).write(to: URL(fileURLWithPath: dir + "/token"))
        // A self-signed certificate for the TLS case.
        let gen = Process()
        gen.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        gen.arguments = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost", "-days", "1",
                         "-keyout", dir + "/key.pem", "-out", dir + "/cert.pem"]
        gen.standardError = FileHandle.nullDevice
        try gen.run(); gen.waitUntilExit()
        XCTAssertEqual(gen.terminationStatus, 0, "openssl made a certificate")

        let needTLS = try Running(["dashboard", "--home", dir, "--listen", "0.0.0.0:0", "--token-file", dir + "/token"])
        needTLS.process.waitUntilExit()
        XCTAssertNotEqual(needTLS.process.terminationStatus, 0)
        XCTAssertTrue(needTLS.output.contains("--tls-cert") && !needTLS.output.contains(token), needTLS.output)

        // With TLS and a token it serves on every address (no agent runs here: the page says so).
        let dash = try Running(["dashboard", "--home", dir, "--listen", "0.0.0.0:0", "--tls-cert", dir + "/cert.pem", "--tls-key", dir + "/key.pem",
                                "--token-file", dir + "/token"])
        defer { dash.stop() }
        let url = try dash.url()
        XCTAssertTrue(url.hasPrefix("https://"), url)
        let port = url.split(separator: ":").last!.filter(\.isNumber)
        let base = "https://127.0.0.1:\(port)"
        func curl(_ args: [String]) throws -> String {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
            p.arguments = ["-sk", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %header{set-cookie}"] + args
            let o = Pipe(); p.standardOutput = o
            try p.run()
            let d = o.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return String(decoding: d, as: UTF8.self)
        }
        XCTAssertTrue(try curl([base + "/"]).hasPrefix("401"))
        XCTAssertTrue(try curl([base + "/api/snapshot"]).hasPrefix("401"))
        XCTAssertTrue(try curl(["-H", "Authorization: Bearer wrong-token-0123456789", base + "/api/snapshot"]).hasPrefix("401"))
        XCTAssertTrue(try curl(["-H", "Authorization: Bearer " + token, base + "/api/snapshot"]).hasPrefix("200"))
        let login = try curl([base + "/login?token=" + token])
        XCTAssertTrue(login.hasPrefix("303") && login.contains("HttpOnly") && login.contains("Secure"), login)
        XCTAssertTrue(try curl(["-H", "Cookie: mycelium_dashboard=" + token, base + "/"]).hasPrefix("200"))
        XCTAssertTrue(try curl([base + "/login?token=nope"]).hasPrefix("401"))
        // The filtered timeline, and the stream (read for 2 s: it does not end by itself).
        let auth = ["-H", "Authorization: Bearer " + token]
        XCTAssertTrue(try curl(auth + [base + "/api/events?kind=vote,failure&q=x"]).hasPrefix("200"))
        XCTAssertTrue(try curl(auth + [base + "/api/events?kind=bogus"]).hasPrefix("400"))
        let stream = Process()
        stream.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        stream.arguments = ["-skN", "--max-time", "2"] + auth + [base + "/api/stream"]
        let so = Pipe(); stream.standardOutput = so
        try stream.run()
        let events = String(decoding: so.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        stream.waitUntilExit()
        XCTAssertGreaterThanOrEqual(events.components(separatedBy: "event: snapshot\ndata: {").count - 1, 2, "a snapshot per poll: \(events.prefix(300))")
        XCTAssertTrue(events.contains("does not answer"), "the page says the agent does not answer")
        // Plain HTTP to the TLS port gets no page.
        XCTAssertFalse(try curl(["http://127.0.0.1:\(port)/"]).hasPrefix("200"))
        XCTAssertFalse(dash.output.contains(token), "the token is never printed")
    }
}
