import Foundation
import MyceliumAPI
@testable import MyceliumDashboard
import XCTest

final class DashboardModelTests: XCTestCase {
    func member(_ id: String, _ status: String = "alive", sclerotium: Bool = false, trust: Int = 1_000_000) -> MemberInfo {
        MemberInfo(id: id, status: status, roles: "[member]", addresses: ["127.0.0.1:1"], sclerotium: sclerotium, cpus: 2,
                   key: "SECRET-LOOKING-FINGERPRINT", expiresInSeconds: 100, trust: trust, jailed: false, approvedSclerotium: false)
    }

    func status(members: [MemberInfo], events: [String] = [], leader: String = "node-a", voters: [String] = ["node-a"],
                sclerotia: [String] = ["node-a"], votes: [VoteRoundInfo] = []) -> StatusResponse {
        StatusResponse(network: "net-x", node: "node-a", role: "leader", raftMember: "voter", leader: leader, term: 3, commitIndex: 9,
                       appliedIndex: 9, epoch: "3.9", phase: "distributed", sclerotia: sclerotia, voters: voters, health: "ok",
                       members: members, votes: votes, events: events, podCIDR: "none", podCIDRFile: "")
    }

    func testLayoutIsACircleForFewAndAGridThatFitsTheBoxForAHundred() {
        XCTAssertTrue(DashboardModel.layout(count: 0).points.isEmpty)
        let three = DashboardModel.layout(count: 3)
        XCTAssertEqual(three.points.count, 3)
        // On one circle around the centre.
        let d = three.points.map { (($0.x - 500) * ($0.x - 500) + ($0.y - 350) * ($0.y - 350)).squareRoot() }
        XCTAssertEqual(d[0], d[1], accuracy: 1e-6); XCTAssertEqual(d[1], d[2], accuracy: 1e-6)
        for n in [25, 100, 250] {
            let l = DashboardModel.layout(count: n)
            XCTAssertEqual(l.points.count, n)
            XCTAssertTrue(l.points.allSatisfy { $0.x - l.radius >= 0 && $0.x + l.radius <= 1000 && $0.y - l.radius >= 0 && $0.y + l.radius <= 700 },
                          "\(n) nodes stay inside the box")
            // No two nodes overlap, and at 100 a node is still big enough to see and hover.
            var minGap = Double.infinity
            for i in 0..<n { for j in (i + 1)..<n {
                let a = l.points[i], b = l.points[j]
                minGap = min(minGap, ((a.x - b.x) * (a.x - b.x) + (a.y - b.y) * (a.y - b.y)).squareRoot())
            } }
            XCTAssertGreaterThan(minGap, 2 * l.radius, "\(n) nodes do not overlap")
            if n == 100 { XCTAssertGreaterThanOrEqual(l.radius, 15) }
        }
    }

    func testMembersMarkLeaderSclerotiaLearnersAndTrustAndCarryNoKey() throws {
        let s = status(members: [member("node-c", "failed", trust: 250_000), member("node-a", sclerotium: true), member("node-b", sclerotium: true)],
                       leader: "node-a", voters: ["node-a"], sclerotia: ["node-a", "node-b"])
        let m = DashboardModel.members(s)
        XCTAssertEqual(m.map(\.id), ["node-a", "node-b", "node-c"])
        XCTAssertEqual(m.map(\.leader), [true, false, false])
        XCTAssertEqual(m.map(\.raft), ["voter", "learner", "none"])
        XCTAssertEqual(m[2].status, "failed")
        XCTAssertEqual(m[2].trust, 0.25, accuracy: 1e-9)
        let json = String(decoding: try JSONEncoder().encode(m), as: UTF8.self)
        XCTAssertFalse(json.contains("SECRET-LOOKING-FINGERPRINT"), "no key reaches the page")
    }

    func testEventKindsFollowTheAgentsWording() {
        let cases: [(String, EventKind)] = [
            ("admitted node-b", .admission),
            ("join request from node-b at 127.0.0.1:1", .admission),
            ("handoff: sclerotia node-a, node-b now own the primary spore", .handoff),
            ("recorded failure of node-c (confirmed by vote 4)", .failure),
            ("failure of node-c confirmed by 2 of 3 voters", .failure),
            ("suspect node-c", .failure),
            ("remove failed node node-c", .failure),
            ("vote 4 opened: failure of node-c, 3 voters, tolerates 0", .vote),
            ("vote 4 decided yes: failure of node-c", .vote),
            ("no Byzantine-tolerant vote on node-c is possible (too few voters); confirming by a majority of the voters' reports", .vote),
            ("slashed node-d for equivocation in vote 5: trust now 0.5", .slashing),
            ("the leader's connections closed; campaigning without waiting for the election timeout", .election),
            ("configuration now voters=3 learners=0", .election),
            ("failing VM web over from node-a to node-b (epoch 1 → 2)", .handoff),
            ("started; listening on 127.0.0.1:7946", .other),
        ]
        for (text, kind) in cases { XCTAssertEqual(DashboardModel.kind(of: text), kind, text) }
        XCTAssertEqual(DashboardModel.split("+12.345s admitted node-b").at, "+12.345s")
        XCTAssertEqual(DashboardModel.split("+12.345s admitted node-b").text, "admitted node-b")
        XCTAssertEqual(DashboardModel.split("no stamp here").at, "")
    }

    func testFilterByKindsAndTextAndParseKinds() throws {
        let events = [EventView(seq: 1, at: "", text: "admitted node-b", kind: .admission),
                      EventView(seq: 2, at: "", text: "vote 1 decided yes: failure of node-c", kind: .vote),
                      EventView(seq: 3, at: "", text: "recorded failure of node-c", kind: .failure)]
        XCTAssertEqual(DashboardModel.filter(events, kinds: [], text: "").map(\.seq), [1, 2, 3])
        XCTAssertEqual(DashboardModel.filter(events, kinds: [.vote, .failure], text: "").map(\.seq), [2, 3])
        XCTAssertEqual(DashboardModel.filter(events, kinds: [], text: "NODE-C").map(\.seq), [2, 3])
        XCTAssertEqual(DashboardModel.filter(events, kinds: [.admission], text: "node-c").map(\.seq), [])
        XCTAssertEqual(try DashboardModel.kinds("vote,failure").get(), [.vote, .failure])
        guard case .failure(let message) = DashboardModel.kinds("vote,bogus") else { return XCTFail("an unknown kind is refused") }
        XCTAssertTrue(message.message.contains("bogus") && message.message.contains("admission"), message.message)
    }

    func testHistoryKeepsEventsOnceInOrderBoundedAndSamplesTrust() {
        var h = DashboardHistory(maxEvents: 3, maxSamples: 2)
        h.absorb(status(members: [member("node-a")], events: ["+1.000s a", "+2.000s b"]), at: 0)
        h.absorb(status(members: [member("node-a")], events: ["+1.000s a", "+2.000s b", "+3.000s c"]), at: 1)
        XCTAssertEqual(h.events.map(\.text), ["a", "b", "c"])
        XCTAssertEqual(h.events.map(\.seq), [1, 2, 3])
        // The agent's window moved on: the old lines are not taken for new ones.
        h.absorb(status(members: [member("node-a", trust: 500_000)], events: ["+2.000s b", "+3.000s c", "+4.000s d"]), at: 2)
        XCTAssertEqual(h.events.map(\.text), ["b", "c", "d"], "bounded to 3, oldest dropped")
        XCTAssertEqual(h.trust["node-a"]?.map(\.trust), [1.0, 0.5], "a sample at start and when trust changed (not at 1 s: unchanged)")
        h.absorb(status(members: [member("node-a", trust: 400_000)]), at: 3)
        XCTAssertEqual(h.trust["node-a"]?.map(\.trust), [0.5, 0.4], "bounded to 2 samples")
    }

    func testVotesNewestFirstWithDecisionAndVoters() {
        let rounds = [VoteRoundInfo(sequence: 1, kind: "failure", node: "node-c", voters: 2, tolerates: 0, state: "decided yes",
                                    localLatencyMilliseconds: 12.5, localMessagesSent: 3, voterIDs: ["node-aaaaaaaaaaaa", "node-bbbbbbbbbbbb"]),
                      VoteRoundInfo(sequence: 2, kind: "failure", node: "node-d", voters: 4, tolerates: 1, state: "open",
                                    localLatencyMilliseconds: -1, localMessagesSent: 0)]
        let v = DashboardModel.votes(rounds)
        XCTAssertEqual(v.map(\.sequence), [2, 1])
        XCTAssertEqual(v.map(\.open), [true, false])
        XCTAssertNil(v[0].latencyMs)
        XCTAssertEqual(v[0].voterLabels, [], "an older agent names no voters")
        XCTAssertEqual(v[1].voterLabels, ["aaaaaaaa", "bbbbbbbb"])
        XCTAssertEqual(v[1].state, "decided yes")
    }

    func testWorkloadViewsCarryNoSecrets() throws {
        var spec = ServiceSpecDocument(name: "web")
        spec.env = ["PASSWORD": "hunter2-secret"]
        let svc = ServiceInfo(name: "web", driver: "process", generation: 1, replicas: 1, serving: 1, pending: "",
                              instances: [ServiceInstanceInfo(id: "web-0", slot: 0, node: "node-a", state: "running", health: "healthy",
                                                              serving: true, address: "10.0.0.1", restarts: 0, message: "", generation: 1)],
                              endpoints: ["10.0.0.1:80"], events: [], spec: spec)
        let views = DashboardModel.services(ServicesResponse(services: [svc], dns: ""))
        XCTAssertEqual(views.first?.serving, 1)
        XCTAssertFalse(String(decoding: try JSONEncoder().encode(views), as: UTF8.self).contains("hunter2"))
        let vm = VMInfo(name: "db", memoryMiB: 128, vcpus: 1, kernel: "/k", initrd: "/i", cmdline: "root=/dev/vda token=s3cret",
                        primary: "node-a", replica: nil, epoch: 1, leaseLeftMillis: 1000, protection: "unprotected")
        let vmViews = DashboardModel.vms(VMsResponse(vms: [vm]))
        XCTAssertEqual(vmViews.first?.replica, "none")
        XCTAssertFalse(String(decoding: try JSONEncoder().encode(vmViews), as: UTF8.self).contains("s3cret"))
    }
}

final class DashboardSecurityTests: XCTestCase {
    func listen(_ s: String) throws -> DashboardListen { try DashboardListen.parse(s).get() }

    func testListenParsingAndLoopback() throws {
        XCTAssertEqual(try listen("127.0.0.1:8470"), DashboardListen(host: "127.0.0.1", port: 8470))
        XCTAssertEqual(try listen("[::1]:0"), DashboardListen(host: "::1", port: 0))
        XCTAssertTrue(try listen("127.0.0.1:1").isLoopback)
        XCTAssertTrue(try listen("127.1.2.3:1").isLoopback)
        XCTAssertTrue(try listen("localhost:1").isLoopback)
        XCTAssertTrue(try listen("[::1]:1").isLoopback)
        XCTAssertFalse(try listen("0.0.0.0:1").isLoopback)
        XCTAssertFalse(try listen("10.0.0.1:1").isLoopback)
        XCTAssertFalse(try listen("127.example.com:1").isLoopback)
        for bad in ["8470", "host:", ":80", "h:99999", "[::1]"] {
            guard case .failure(let e) = DashboardListen.parse(bad) else { return XCTFail("\(bad) is refused") }
            XCTAssertTrue(e.message.contains("e.g."), e.message)
        }
    }

    func testNonLoopbackNeedsTLSAndATokenAndSaysWhatToPass() throws {
        let token = String(repeating: "t", count: 32)
        XCTAssertNoThrow(try DashboardSecurity(listen: listen("127.0.0.1:0")).validate().get())
        guard case .failure(let e) = DashboardSecurity(listen: try listen("0.0.0.0:8470")).validate() else { return XCTFail("refused") }
        XCTAssertTrue(e.message.contains("--tls-cert") && e.message.contains("--token-file") && e.message.contains("127.0.0.1"), e.message)
        guard case .failure(let e2) = DashboardSecurity(listen: try listen("10.0.0.1:8470"), token: token).validate() else { return XCTFail("refused") }
        XCTAssertTrue(e2.message.contains("--tls-cert") && !e2.message.contains("--token-file"), e2.message)
        XCTAssertFalse(e2.message.contains(token), "the token is never in a message")
        guard case .failure = DashboardSecurity(listen: try listen("10.0.0.1:8470"), tlsCertificate: "c.pem", tlsKey: "k.pem").validate() else {
            return XCTFail("TLS without a token is refused")
        }
        XCTAssertNoThrow(try DashboardSecurity(listen: listen("10.0.0.1:8470"), tlsCertificate: "c.pem", tlsKey: "k.pem", token: token).validate().get())
        guard case .failure = DashboardSecurity(listen: try listen("127.0.0.1:1"), tlsCertificate: "c.pem").validate() else { return XCTFail("cert without key") }
        guard case .failure(let e3) = DashboardSecurity(listen: try listen("127.0.0.1:1"), token: "short").validate() else { return XCTFail("short token") }
        XCTAssertFalse(e3.message.contains("short\""), e3.message)
    }

    func testAuthorizationByBearerOrCookie() throws {
        let token = "0123456789abcdef0123"
        let open = DashboardSecurity(listen: try listen("127.0.0.1:0"))
        XCTAssertTrue(open.authorized(authorization: nil, cookie: nil))
        let s = DashboardSecurity(listen: try listen("127.0.0.1:0"), token: token)
        XCTAssertFalse(s.authorized(authorization: nil, cookie: nil))
        XCTAssertFalse(s.authorized(authorization: "Bearer wrong", cookie: nil))
        XCTAssertFalse(s.authorized(authorization: "Bearer " + token + "x", cookie: nil))
        XCTAssertTrue(s.authorized(authorization: "Bearer " + token, cookie: nil))
        XCTAssertTrue(s.authorized(authorization: nil, cookie: "a=b; mycelium_dashboard=" + token))
        XCTAssertFalse(s.authorized(authorization: nil, cookie: "mycelium_dashboard=" + token.dropLast()))
        XCTAssertTrue(s.matches(token)); XCTAssertFalse(s.matches(""))
    }
}

final class DashboardPageTests: XCTestCase {
    func testTheEmbeddedSnapshotCannotCloseItsScriptAndStaysTheSameJSON() throws {
        var s = DashboardSnapshot.empty
        s.events = [EventView(seq: 1, at: "", text: "</script><script>alert(1)</script> & \u{2028}", kind: .other)]
        let json = String(decoding: try dashboardJSON(s), as: UTF8.self)
        let page = DashboardPage.render(snapshotJSON: json)
        let start = try XCTUnwrap(page.range(of: "<script id=\"initial\" type=\"application/json\">"))
        let end = try XCTUnwrap(page.range(of: "</script>", range: start.upperBound..<page.endIndex))
        let embedded = String(page[start.upperBound..<end.lowerBound])
        XCTAssertFalse(embedded.contains("<") || embedded.contains(">"))
        let back = try JSONDecoder().decode(DashboardSnapshot.self, from: Data(embedded.utf8))
        XCTAssertEqual(back, s, "the escaped JSON decodes to the same snapshot")
        XCTAssertFalse(page.contains("cdn") || page.contains("https://"), "nothing is fetched from elsewhere")
    }
}

/// The page at 100 members in a real browser (Debian's chromium, headless): the page rendered with a
/// snapshot built by the real view model from a 100-member status (no agents: 100 real ones do not fit
/// on the test machine), checked in the DOM and photographed. With MYCELIUM_UPDATE_SCREENSHOTS=1 the
/// picture is copied to docs/dashboard-100.png.
final class DashboardHundredMembersBrowserTests: XCTestCase {
    func testAHundredMembersAllDrawnWithoutOverlapInARealBrowser() throws {
        guard let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            return XCTFail("chromium is not installed; run scripts/setup (it installs Debian's chromium)")
        }
        let ids = (0..<100).map { String(format: "node-%02d", $0) + String(repeating: "x", count: 30) }
        let members = ids.enumerated().map { i, id in
            MemberInfo(id: id, status: i % 17 == 5 ? "failed" : (i % 13 == 3 ? "suspect" : "alive"), roles: "[member]", addresses: ["10.0.\(i).1:7946"],
                       sclerotium: i < 5, cpus: 4, key: "k\(i)", expiresInSeconds: 100, trust: 1_000_000 - i * 5000, jailed: false, approvedSclerotium: false)
        }
        let status = StatusResponse(network: "net-hundred", node: ids[0], role: "leader", raftMember: "voter", leader: ids[0], term: 7, commitIndex: 1,
                                    appliedIndex: 1, epoch: "7.1", phase: "distributed", sclerotia: Array(ids.prefix(5)), voters: Array(ids.prefix(3)),
                                    health: "ok", members: members, votes: [], events: ["+1.000s admitted \(ids[99])"], podCIDR: "none", podCIDRFile: "")
        var s = DashboardSnapshot.empty
        var h = DashboardHistory()
        h.absorb(status, at: 0)
        s.version = 1; s.reachable = true; s.error = ""; s.network = status.network; s.observer = status.node; s.leader = status.leader
        s.term = status.term; s.health = status.health; s.members = DashboardModel.members(status); s.events = h.events; s.trust = h.trust
        s.vms = []; s.services = []; s.volumes = []; s.datapath = nil; s.panelErrors = ["datapath": "no datapath in this test"]

        let dir = NSTemporaryDirectory() + "myc-dash100-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let page = dir + "/page.html"
        try Data(DashboardPage.render(snapshotJSON: String(decoding: try dashboardJSON(s), as: UTF8.self)).utf8).write(to: URL(fileURLWithPath: page))

        func run(_ args: [String]) throws -> String {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
            p.arguments = ["-s", "KILL", "60", chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                           "--user-data-dir=" + dir + "/profile"] + args + ["file://" + page]
            let o = Pipe(); p.standardOutput = o; p.standardError = FileHandle.nullDevice
            try p.run()
            let d = o.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return String(decoding: d, as: UTF8.self)
        }
        let dom = try run(["--dump-dom"])
        XCTAssertEqual(dom.components(separatedBy: "<g class=\"member\"").count - 1, 100, "every member is drawn")
        XCTAssertEqual(dom.components(separatedBy: "data-status=\"failed\" data-leader").count - 1, members.filter { $0.status == "failed" }.count)
        XCTAssertTrue(dom.contains("\(members.filter { $0.status == "alive" }.count) alive / 100<"), "the header counts the members")
        let shot = dir + "/dashboard-100.png"
        _ = try run(["--hide-scrollbars", "--window-size=1920,1080", "--screenshot=" + shot])
        let png = try Data(contentsOf: URL(fileURLWithPath: shot))
        XCTAssertEqual(Array(png.prefix(4)), [0x89, 0x50, 0x4E, 0x47])
        if ProcessInfo.processInfo.environment["MYCELIUM_UPDATE_SCREENSHOTS"] == "1" {
            let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("docs/dashboard-100.png")
            try? FileManager.default.removeItem(at: docs)
            try FileManager.default.copyItem(atPath: shot, toPath: docs.path)
        }
    }
}
