import K3sController
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumSpores
import ServiceController
import XCTest

/// The k3s driver's pure core: who runs the K3s server and who joins it, the claim through the control
/// state, the join token kept out of every printed form, the Deployments the server applies and
/// deletes, and how k3s services meet the service controller.
final class K3sCoreTests: XCTestCase {
    typealias W = K3sWorld

    /// The members in node-ID order (the auto rule picks the lowest offering k3s).
    func ordered(_ n: UInt8 = 3) -> [UInt8] { (1...n).sorted { W.id($0) < W.id($1) } }

    func testRolesFollowTheBinaryTheOffersAndTheRecordedServer() throws {
        var w = try W()
        let (low, mid, high) = (ordered()[0], ordered()[1], ordered()[2])
        XCTAssertEqual(K3sRoles.decide(state: w.state, me: W.id(low), settings: W.settings(low, binary: nil)),
                       .unavailable("no `k3s` binary on PATH (/usr/bin): K3s is not installed on this machine"))
        // Until the table records that the node offers k3s, it waits (the claim would be refused).
        guard case .wait = K3sRoles.decide(state: w.state, me: W.id(low), settings: W.settings(low)) else { return XCTFail() }
        try w.offer(mid, k3s: true); try w.offer(high, k3s: true); try w.offer(low, k3s: false)
        // auto: the lowest node ID among those offering k3s claims; the others wait for it.
        XCTAssertEqual(K3sRoles.decide(state: w.state, me: W.id(mid), settings: W.settings(mid)), .claim)
        guard case .wait(let why) = K3sRoles.decide(state: w.state, me: W.id(high), settings: W.settings(high)) else { return XCTFail() }
        XCTAssertTrue(why.contains("\(W.id(mid))"), why)
        // k3s_role = server claims even when not the lowest; agent never does.
        XCTAssertEqual(K3sRoles.decide(state: w.state, me: W.id(high), settings: W.settings(high, role: .server)), .claim)
        guard case .wait = K3sRoles.decide(state: w.state, me: W.id(mid), settings: W.settings(mid, role: .agent)) else { return XCTFail() }

        try w.service(.k3sServer(node: W.id(high), url: "https://10.0.0.\(high):6443", token: W.token))
        guard case .run(let server) = K3sRoles.decide(state: w.state, me: W.id(high), settings: W.settings(high)),
              case .run(let agent) = K3sRoles.decide(state: w.state, me: W.id(mid), settings: W.settings(mid, role: .agent)) else { return XCTFail() }
        XCTAssertEqual(server.role, .server); XCTAssertEqual(server.serverURL, "")
        XCTAssertEqual(agent.role, .agent); XCTAssertEqual(agent.serverURL, "https://10.0.0.\(high):6443")
        XCTAssertEqual(agent.token, W.token)
        XCTAssertEqual(agent.podCIDR, CIDR("10.244.\(mid).0/24")); XCTAssertEqual(agent.clusterCIDR, CIDR("10.244.0.0/16"))
        XCTAssertEqual(server.arguments, ["/usr/local/bin/k3s", "server", "--config", "/var/lib/mycelium/k3s/config.yaml"])
        // A node without a pod CIDR waits for one.
        var bare = try W(members: 1)
        try bare.spore(.admit(MembershipCertificate.issue(by: bare.genesis, nodeID: W.id(9), nodeKey: W.key(9).publicKey, roles: [.member],
                                                          serial: 9, issuedAt: 1_800_000_000, validFor: 86_400)), by: 9)
        guard case .wait(let noCIDR) = K3sRoles.decide(state: bare.state, me: W.id(9), settings: W.settings(9)) else { return XCTFail() }
        XCTAssertTrue(noCIDR.contains("pod CIDR"), noCIDR)
    }

    func testTheFirstClaimWinsAndTheTokenIsNeverPrinted() throws {
        var w = try W()
        for i: UInt8 in 1...3 { try w.offer(i, k3s: i != 3) }
        let low = ordered().first { $0 != 3 }!, other = ordered().first { $0 != 3 && $0 != low }!
        var core = K3sController(settings: W.settings(low))
        var now: UInt64 = 1000
        // Claim: the driver draws the token (the core has no randomness), then the node asks the leader.
        var effects = core.tick(context: w.context(low, millis: now))
        XCTAssertEqual(acts(effects), [.generateToken])
        XCTAssertTrue(acts(core.tick(context: w.context(low, millis: now + 100))).isEmpty, "one token request at a time")
        _ = core.reported(.token(W.token), context: w.context(low, millis: now))
        now += 100
        effects = core.tick(context: w.context(low, millis: now))
        guard case let .k3sServer(node, url, token)? = requests(effects).first else { return XCTFail("no claim: \(effects)") }
        XCTAssertEqual(node, W.id(low)); XCTAssertEqual(url, "https://10.0.0.\(low):6443"); XCTAssertEqual(token, W.token)
        // Claims are refused from a node that does not offer k3s, and from anyone once one is recorded.
        XCTAssertTrue(w.refusal(.k3sServer(node: W.id(3), url: "https://10.0.0.3:6443", token: W.token)).contains("does not offer the k3s driver"))
        let changes = try w.service(.k3sServer(node: node, url: url, token: token))
        XCTAssertEqual(changes.count, 1)
        let second = w.refusal(.k3sServer(node: W.id(other), url: "https://10.0.0.\(other):6443", token: K3sToken(secret: "another-token-0123456789")))
        XCTAssertTrue(second.contains("the K3s server of this network is \(W.id(low)) already"), second)
        XCTAssertEqual(w.refusal(.k3sServer(node: node, url: url, token: token)), "accepted", "the same claim again is a no-op")
        XCTAssertTrue(w.refusal(.k3sServer(node: node, url: url, token: K3sToken(secret: "changed-token-0123456789"))).contains("do not change"))
        XCTAssertTrue(w.refusal(.k3sServer(node: W.id(other), url: url, token: K3sToken(secret: "short"))).contains("16 to 256"))

        // Now it runs the server.
        effects = core.tick(context: w.context(low, millis: now + 100))
        guard case .run(let config)? = acts(effects).first else { return XCTFail("no run: \(effects)") }
        XCTAssertEqual(config.role, .server)
        XCTAssertTrue(acts(core.tick(context: w.context(low, millis: now + 200))).allSatisfy { $0 == .sync }, "the same config is not sent again")

        // Nowhere printable: the token, the config, the action, the command, the table, refusals.
        let secret = W.token.secret
        let printed = ["\(W.token)", String(reflecting: W.token), "\(config)", String(reflecting: config), "\(K3sAction.run(config))",
                       String(reflecting: K3sAction.run(config)), "\(ServiceCommand.k3sServer(node: node, url: url, token: token))",
                       String(reflecting: ServiceCommand.k3sServer(node: node, url: url, token: token)), "\(w.state.services.k3s!)",
                       String(reflecting: w.state.services), "\(effects)", second]
        var dumped = ""
        dump(w.state.services.k3s!, to: &dumped)
        for text in printed + [dumped] { XCTAssertFalse(text.contains(secret), "the token leaks in: \(text.prefix(300))") }
        XCTAssertTrue(K3sConfigFile.yaml(config).contains(secret), "only the file K3s reads holds it")

        // The record survives a snapshot; it goes when its node leaves the spore for good.
        let restored = try ControlState.restore(w.state.snapshot(), network: w.network)
        XCTAssertEqual(restored.services.k3s, w.state.services.k3s)
        XCTAssertEqual(restored, w.state)
        try w.leaveForGood(low, then: other)
        XCTAssertNil(w.state.services.k3s, "a server that left takes the record with it; another node may claim")
    }

    func testSnapshotsWithoutAK3sClusterKeepTheirFormat() throws {
        // An empty table encodes as the 12 zero bytes snapshot formats before 5 stand for, and a table
        // without a K3s cluster as format 5 always did: older snapshots restore, and restore to no cluster.
        XCTAssertEqual(ServiceTable().encoded(), [UInt8](repeating: 0, count: 12))
        var w = try W()
        try w.offer(1, k3s: true)
        let old = w.state.services.encoded()
        XCTAssertNil(try ServiceTable(decoding: old).k3s)
        try w.service(.k3sServer(node: W.id(1), url: "https://10.0.0.1:6443", token: W.token))
        let new = w.state.services.encoded()
        XCTAssertEqual(Array(new.prefix(old.count)), old, "the K3s section only follows what format 5 holds")
        XCTAssertEqual(try ServiceTable(decoding: new), w.state.services)
        XCTAssertThrowsError(try ServiceTable(decoding: old + [2]), "an unknown trailing section is an error, not ignored")
        XCTAssertThrowsError(try ServiceTable(decoding: Array(new.dropLast())))
        // Commands round-trip.
        for c: ServiceCommand in [.k3sServer(node: W.id(2), url: "https://h:6443", token: W.token),
                                  .k3sStatus(node: W.id(2), [K3sWorkloadStatus(name: "web", generation: 3, ready: 2, message: "ok")])] {
            XCTAssertEqual(try ServiceCommand(decoding: c.encoded()), c)
        }
    }

    func kube(_ name: String, replicas: UInt16 = 2) -> ServiceSpec {
        ServiceSpec(name: name, driver: .k3s, image: "docker.io/library/nginx:1.27", replicas: replicas)
    }

    func testTheServerAppliesDeletesAndReportsDeployments() throws {
        var w = try W()
        for i: UInt8 in 1...3 { try w.offer(i, k3s: true) }
        let server = ordered()[0], agent = ordered()[1]
        try w.service(.k3sServer(node: W.id(server), url: "https://10.0.0.\(server):6443", token: W.token))
        try w.service(.deploy(kube("web")))
        try w.service(.deploy(kube("api", replicas: 1)))
        var web = kube("web", replicas: 3); web.environment = ["A": "b"]
        try w.service(.deploy(web))  // generation 2
        XCTAssertEqual(w.state.services.services["web"]?.generation, 2)

        // Pure reconcile: a missing or outdated Deployment is applied, one without a service deleted.
        let observed = [K3sObservedWorkload(name: "web", generation: 1, ready: 2), K3sObservedWorkload(name: "old", generation: 4, ready: 1)]
        let actions = K3sRoles.reconcile(services: w.state.services, observed: observed)
        XCTAssertEqual(actions.map(\.description), ["apply Deployment api at generation 1", "apply Deployment web at generation 2", "delete Deployment old"])
        XCTAssertEqual(K3sRoles.reconcile(services: w.state.services, observed: [K3sObservedWorkload(name: "web", generation: 2, ready: 3),
                                                                                 K3sObservedWorkload(name: "api", generation: 1, ready: 1)]), [])

        // The controller on the server node: sync, reconcile on the answer, report ready counts.
        var core = K3sController(settings: W.settings(server))
        var now: UInt64 = 1000
        XCTAssertTrue(acts(core.tick(context: w.context(server, millis: now))).contains(.sync))
        let applied = acts(core.reported(.workloads(observed), context: w.context(server, millis: now)))
        XCTAssertEqual(applied, actions)
        _ = core.reported(.applyFailed(name: "api", message: "the API answered 422: bad image"), context: w.context(server, millis: now))
        now += 100
        let status = requests(core.tick(context: w.context(server, millis: now)))
        guard case let .k3sStatus(node, statuses)? = status.first else { return XCTFail("no status: \(status)") }
        XCTAssertEqual(node, W.id(server))
        XCTAssertEqual(statuses, [K3sWorkloadStatus(name: "api", generation: 0, ready: 0, message: "apply failed: the API answered 422: bad image"),
                                  K3sWorkloadStatus(name: "web", generation: 1, ready: 2, message: "applying generation 2 (the Deployment has 1)")])
        // Only the server reports; its report updates the table once.
        XCTAssertTrue(w.refusal(.k3sStatus(node: W.id(agent), statuses)).contains("not the K3s server"))
        XCTAssertEqual(try w.service(status[0]).count, 2)
        XCTAssertEqual(w.state.services.k3s?.workloads["web"]?.ready, 2)
        XCTAssertTrue(requests(core.tick(context: w.context(server, millis: now + 3000))).isEmpty, "nothing new to report")
        // Stopping a service drops its status.
        try w.service(.remove(name: "api"))
        XCTAssertNil(w.state.services.k3s?.workloads["api"])

        // An agent node runs `k3s agent` and never talks to the API.
        var agentCore = K3sController(settings: W.settings(agent))
        let agentActs = acts(agentCore.tick(context: w.context(agent, millis: 1000)))
        XCTAssertEqual(agentActs.count, 1)
        guard case .run(let c)? = agentActs.first else { return XCTFail() }
        XCTAssertEqual(c.role, .agent)
        XCTAssertTrue(acts(agentCore.tick(context: w.context(agent, millis: 5000))).isEmpty)
        // A node that loses its role stops k3s.
        try w.leaveForGood(server, then: agent)
        XCTAssertEqual(acts(agentCore.tick(context: w.context(agent, millis: 6000))).map(\.description).first?.hasPrefix("stop k3s"), true)
    }

    func testK3sServicesAreKubernetesToPlaceAndSayWhyTheyCannotRun() throws {
        var w = try W()
        for i: UInt8 in 1...3 { try w.offer(i, k3s: false) }
        // No member offers k3s: deploy is refused with the reason an operator can act on.
        let why = try XCTUnwrap(ServiceRules.impossible(kube("web"), state: w.state))
        XCTAssertTrue(why.contains("no node found a `k3s` binary on its PATH") && why.contains("mycelium doctor"), why)
        XCTAssertNil(ServiceRules.impossible(ServiceSpec(name: "p", command: ["sleep", "1"]), state: w.state))
        // Kubernetes's pods always restart.
        var never = kube("web"); never.restart = .never
        XCTAssertTrue(never.problem?.contains("use restart policy always") == true)

        // Deployed while a node offered k3s, then none does: no slots, and the pending reason says why.
        try w.offer(2, k3s: true)
        XCTAssertNil(ServiceRules.impossible(kube("web"), state: w.state))
        try w.service(.deploy(kube("web")))
        try w.service(.deploy(ServiceSpec(name: "p", command: ["sleep", "1"], replicas: 1)))
        var leader = ServiceController(settings: ServiceSettings(), run: 1 << 20)
        func plan(_ at: UInt64) -> [ServiceCommand] {
            leader.tick(context: w.context(1, leader: true, millis: at)).compactMap { if case .propose(.service(let c, _)) = $0 { return c }; return nil }
        }
        var proposals = plan(10_000)
        guard case let .assign("web", 1, slots, pending)? = proposals.first(where: { if case .assign("web", _, _, _) = $0 { return true }; return false }) else {
            return XCTFail("\(proposals)")
        }
        XCTAssertTrue(slots.isEmpty, "the scheduler never places k3s services on nodes")
        XCTAssertEqual(pending, "waiting for a node to start the K3s server")
        XCTAssertTrue(proposals.contains { if case .assign("p", _, let s, _) = $0 { return s.count == 1 }; return false }, "process services still placed")
        for p in proposals { try w.service(p) }
        try w.offer(2, k3s: false)
        _ = leader.applied(.serviceNode(W.id(2)), context: w.context(1, leader: true, millis: 10_100))
        proposals = plan(10_200)
        guard case let .assign("web", 1, _, noK3s)? = proposals.first else { return XCTFail("\(proposals)") }
        XCTAssertEqual(noK3s, ServiceRules.noK3s)
        try w.service(proposals[0])
        XCTAssertEqual(w.state.services.services["web"]?.pending, ServiceRules.noK3s)
        // The controller of a node without k3s says so, and does nothing.
        var none = K3sController(settings: W.settings(1, binary: nil))
        XCTAssertTrue(none.tick(context: w.context(1, millis: 1000)).isEmpty)
        XCTAssertEqual(none.statusLine, "k3s: not offered: no `k3s` binary on PATH (/usr/bin): K3s is not installed on this machine")
    }
}
