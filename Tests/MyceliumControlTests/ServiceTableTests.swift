import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
@testable import ServiceController
import XCTest

/// The service table (issue 17): deploys bump generations, placements are compare-and-swaps on them,
/// a node's reports count only for slots assigned to it, and the whole table survives a snapshot.
final class ServiceTableTests: XCTestCase {
    let genesis = SigningKey(seed: Array(repeating: 7, count: 32))
    var network: NetworkIdentity { NetworkIdentity(genesisKey: genesis.publicKey) }
    var index: UInt64 = 0
    var time: Int64 = 1_800_000_010_000

    func key(_ i: UInt8) -> SigningKey { SigningKey(seed: Array(repeating: i, count: 32)) }
    func id(_ i: UInt8) -> MyceliumIdentity.NodeID { MyceliumIdentity.NodeID(publicKey: key(i).publicKey) }

    func spore(_ s: inout ControlState, _ c: SporeCommand, by i: UInt8) throws {
        index += 1; time += 1000
        _ = try s.apply(Entry(term: 1, index: index, data: ControlEntry.spore(SignedCommand(c, author: id(i), key: key(i), network: network.id), millis: time).encoded()))
    }

    @discardableResult
    func service(_ s: inout ControlState, _ c: ServiceCommand) throws -> [ControlChange] {
        index += 1
        return try s.apply(Entry(term: 1, index: index, data: ControlEntry.service(c).encoded()))
    }

    func refusal(_ s: inout ControlState, _ c: ServiceCommand) -> String {
        do { try service(&s, c); return "accepted" } catch { return "\(error)" }
    }

    func world() throws -> ControlState {
        var s = ControlState(network: network)
        for i: UInt8 in 1...3 {
            let cert = MembershipCertificate.issue(by: genesis, nodeID: id(i), nodeKey: key(i).publicKey,
                                                   roles: [.member, .sclerotiumEligible, .inviter], serial: UInt64(i),
                                                   issuedAt: 1_800_000_000, validFor: 86_400)
            try spore(&s, .admit(cert), by: i)
            try spore(&s, .refresh(Capabilities(cpus: 2, memoryMiB: 2048)), by: i)
        }
        return s
    }

    var web: ServiceSpec {
        var p = ServicePlacement()
        p.constraints = ["zone == a"]; p.preferences = [(rule: "rack == r1", weight: -3)]; p.spreadLevel = "zone"; p.maxPerNode = 1
        return ServiceSpec(name: "web", command: ["/bin/sleep", "100"], environment: ["A": "b"], replicas: 2, cpuMillis: 250, memoryMiB: 64,
                           ports: [ServicePort(name: "http", port: 8080)],
                           health: ServiceHealthSpec(kind: .http(port: 8080, path: "/healthz")), restart: .onFailure, maxRestarts: 3,
                           placement: p, dependsOn: ["db"])
    }

    func testGenerationsPlacementsAndReports() throws {
        var s = try world()
        try service(&s, .deploy(web))
        XCTAssertEqual(s.services.services["web"]?.generation, 1)
        // The same spec again changes nothing; a changed one is a new generation.
        XCTAssertTrue(try service(&s, .deploy(web)).isEmpty)
        try service(&s, .assign(name: "web", generation: 1, [0: id(1), 1: id(2)], pending: ""))
        XCTAssertEqual(s.services.services["web"]?.assignments, [0: id(1), 1: id(2)])
        // Reports count only for the reporter's own slots.
        let running = InstanceReport(node: id(1), generation: 1, state: .running, health: .healthy, address: "10.0.0.1")
        try service(&s, .report(node: id(1), [("web", 0, running), ("web", 1, running)]))
        XCTAssertEqual(s.services.services["web"]?.instances[0], running)
        XCTAssertNil(s.services.services["web"]?.instances[1], "node 1 cannot report on node 2's slot")
        XCTAssertEqual(s.services.services["web"]?.servingSlots, [0])
        var changed = web
        changed.replicas = 1
        try service(&s, .deploy(changed))
        let r = try XCTUnwrap(s.services.services["web"])
        XCTAssertEqual(r.generation, 2)
        XCTAssertEqual(r.assignments, [0: id(1)], "slots beyond the new replica count go")
        XCTAssertEqual(r.servingSlots, [], "an instance of the old generation no longer serves")
        // A plan made against generation 1 is refused everywhere.
        XCTAssertTrue(refusal(&s, .assign(name: "web", generation: 1, [0: id(3)], pending: "")).contains("generation 2"))
        XCTAssertTrue(refusal(&s, .assign(name: "web", generation: 2, [1: id(3)], pending: "")).contains("beyond"))
        // A moved slot forgets the old node's report.
        try service(&s, .assign(name: "web", generation: 2, [0: id(3)], pending: ""))
        XCTAssertNil(s.services.services["web"]?.instances[0])
        XCTAssertFalse(s.services.services["web"]!.events.isEmpty)
        // Another driver under a taken name is refused; so is removing an unknown service.
        var other = web
        other.driver = .podman; other.image = "/srv/rootfs"
        XCTAssertTrue(refusal(&s, .deploy(other)).contains("taken"))
        XCTAssertTrue(refusal(&s, .remove(name: "nope")).contains("no service"))
        try service(&s, .nodeInfo(node: id(2), ServiceNodeInfo(labels: ["zone": "a"], drivers: [.process, .podman], address: "10.0.0.2")))
        XCTAssertEqual(s.services.nodes[id(2)]?.labels, ["zone": "a"])
        // Draining is the operator's: a node's own facts neither set nor clear it.
        try service(&s, .drain(node: id(2), true))
        try service(&s, .nodeInfo(node: id(2), ServiceNodeInfo(labels: ["zone": "b"], drivers: [.process], draining: false, address: "10.0.0.2")))
        XCTAssertEqual(s.services.nodes[id(2)]?.draining, true)
        XCTAssertEqual(s.services.nodes[id(2)]?.labels, ["zone": "b"])
        XCTAssertTrue(refusal(&s, .drain(node: id(3), true)).contains("placement facts"), "a node that never reported cannot be drained yet")

        // The snapshot carries all of it, byte for byte.
        let restored = try ControlState.restore(s.snapshot(), network: network)
        XCTAssertEqual(restored.services, s.services)
        XCTAssertEqual(restored.snapshot(), s.snapshot())
        try service(&s, .remove(name: "web"))
        XCTAssertNil(s.services.services["web"])
    }

    func testCommandsRoundTripAndBadSpecsAreRefused() throws {
        let commands: [ServiceCommand] = [
            .deploy(web), .remove(name: "web"), .assign(name: "web", generation: 4, [0: id(1), 7: id(2)], pending: "1 of the replicas not placed"),
            .report(node: id(1), [("web", 0, InstanceReport(node: id(1), generation: 2, state: .failed, health: .unhealthy, restarts: 3, message: "exited 1"))]),
            .nodeInfo(node: id(3), ServiceNodeInfo(labels: ["rack": "r1"], drivers: [.process], draining: true, address: "10.0.0.3")),
            .drain(node: id(2), true), .drain(node: id(2), false),
        ]
        for c in commands { XCTAssertEqual(try ServiceCommand(decoding: c.encoded()), c) }
        XCTAssertEqual(try ControlEntry.decode(ControlEntry.service(.remove(name: "web"), millis: 1_800_000_123_456).encoded()),
                       .service(.remove(name: "web"), millis: 1_800_000_123_456))
        // A stamped service entry moves control time (its events carry it); an older stamp does not.
        var timed = try world()
        let before = timed.nowMillis
        index += 1
        _ = try timed.apply(Entry(term: 1, index: index, data: ControlEntry.service(.deploy(web), millis: before + 750).encoded()))
        XCTAssertEqual(timed.nowMillis, before + 750)
        XCTAssertEqual(timed.services.services["web"]?.events.last?.millis, before + 750)
        index += 1
        _ = try timed.apply(Entry(term: 1, index: index, data: ControlEntry.service(.remove(name: "web"), millis: 5).encoded()))
        XCTAssertEqual(timed.nowMillis, before + 750, "control time never goes back")
        var s = try world()
        var bad = web; bad.name = "Web"
        XCTAssertTrue(refusal(&s, .deploy(bad)).contains("lowercase"))
        bad = web; bad.command = []
        XCTAssertTrue(refusal(&s, .deploy(bad)).contains("needs a command"))
        bad = web; bad.ports = [ServicePort(name: "a", port: 80), ServicePort(name: "b", port: 80)]
        XCTAssertTrue(refusal(&s, .deploy(bad)).contains("twice"))
        bad = web; bad.placement.spreadLevel = "planet"
        XCTAssertTrue(refusal(&s, .deploy(bad)).contains("spread level"))
        bad = web; bad.dependsOn = ["web"]
        XCTAssertTrue(refusal(&s, .deploy(bad)).contains("itself"))
        XCTAssertTrue(s.services.services.isEmpty, "nothing half-deployed")
        // A member's placement facts come from members only.
        XCTAssertTrue(refusal(&s, .nodeInfo(node: id(9), ServiceNodeInfo())).contains("not a member"))
    }

    func testPlacementRulesParseOrSayHowToWriteThem() throws {
        XCTAssertEqual(try ServiceRules.parse("zone == eu"), .labelEquals("zone", "eu"))
        XCTAssertEqual(try ServiceRules.parse(" rack!=r3 "), .labelNotEquals("rack", "r3"))
        XCTAssertEqual(try ServiceRules.parse("zone in (a, b,c)"), .labelIn("zone", ["a", "b", "c"]))
        XCTAssertEqual(try ServiceRules.parse("has gpu"), .hasLabel("gpu"))
        XCTAssertEqual(try ServiceRules.parse("driver podman"), .capability("podman"))
        for bad in ["zone =", "zone = eu", "in (a)", "", "zone == eu west"] {
            XCTAssertThrowsError(try ServiceRules.parse(bad), bad) { XCTAssertTrue("\($0)".contains("KEY == VALUE")) }
        }
    }
}

/// One node's reconciler: starts what is assigned, restarts per policy with a doubling delay, gives
/// up after max_restarts, stops what moved away, waits for dependencies.
final class ServiceReconcilerTests: XCTestCase {
    let me = MyceliumIdentity.NodeID(publicKey: SigningKey(seed: Array(repeating: 1, count: 32)).publicKey)

    func record(_ policy: RestartPolicy = .always, max: UInt32 = 0, generation: UInt64 = 1, deps: [String] = []) -> ServiceRecord {
        var r = ServiceRecord(spec: ServiceSpec(name: "web", command: ["sleep", "9"], replicas: 1, restart: policy, maxRestarts: max,
                                                restartDelayMillis: 100, dependsOn: deps), generation: generation)
        r.assignments = [0: me]
        return r
    }

    func step(_ r: ServiceRecord?, _ local: inout [String: LocalInstance], at now: UInt64, deps: String? = nil) -> [ServiceAction] {
        ServiceReconciler.step(desired: r.map { [($0, UInt16(0))] } ?? [], local: &local, now: now) { _ in deps }
    }

    func observe(_ local: inout [String: LocalInstance], _ state: ObservedState, health: InstanceReport.Health = .unknown) {
        let generation = local["web-0"]!.generation
        local["web-0"]?.observed = ServiceDriverReport(id: "web-0", generation: generation, state: state, health: health)
    }

    func testRestartsDoubleTheirDelayAndStopWhenThePolicySays() {
        var local: [String: LocalInstance] = [:]
        let r = record(.always, max: 2)
        guard case .start(let plan) = step(r, &local, at: 0).first else { return XCTFail("not started") }
        XCTAssertEqual(plan.id, "web-0")
        XCTAssertTrue(step(r, &local, at: 10).isEmpty, "started once, not twice")
        observe(&local, .exited(code: 1))
        XCTAssertTrue(step(r, &local, at: 1000).isEmpty, "the restart waits its delay")
        XCTAssertTrue(step(r, &local, at: 1050).isEmpty)
        XCTAssertEqual(step(r, &local, at: 1100).count, 1, "restarted after 100 ms")
        observe(&local, .killed(signal: 9))
        XCTAssertTrue(step(r, &local, at: 2000).isEmpty)
        XCTAssertTrue(step(r, &local, at: 2150).isEmpty, "the second delay is 200 ms")
        XCTAssertEqual(step(r, &local, at: 2200).count, 1)
        observe(&local, .exited(code: 1))
        XCTAssertTrue(step(r, &local, at: 3000).isEmpty)
        XCTAssertTrue(step(r, &local, at: 60_000).isEmpty, "gave up after 2 restarts")
        let report = ServiceReconciler.report(local["web-0"]!, node: me, address: "10.0.0.1", spec: r.spec)
        XCTAssertEqual(report.state, .failed)
        XCTAssertTrue(report.message.contains("gave up after 2 restarts"), report.message)

        // on-failure: a clean exit is final; never: nothing restarts, an unhealthy one keeps running.
        var l2: [String: LocalInstance] = [:]
        let r2 = record(.onFailure)
        _ = step(r2, &l2, at: 0)
        observe(&l2, .exited(code: 0))
        XCTAssertTrue(step(r2, &l2, at: 0).isEmpty && step(r2, &l2, at: 10_000).isEmpty)
        XCTAssertEqual(ServiceReconciler.report(l2["web-0"]!, node: me, address: "", spec: r2.spec).state, .exited)
        var l3: [String: LocalInstance] = [:]
        let r3 = record(.never)
        _ = step(r3, &l3, at: 0)
        observe(&l3, .running, health: .unhealthy)
        XCTAssertTrue(step(r3, &l3, at: 0).isEmpty && step(r3, &l3, at: 10_000).isEmpty)
        // always: an unhealthy instance is replaced after the delay.
        var l4: [String: LocalInstance] = [:]
        let r4 = record(.always)
        _ = step(r4, &l4, at: 0)
        observe(&l4, .running, health: .unhealthy)
        XCTAssertTrue(step(r4, &l4, at: 0).isEmpty)
        XCTAssertEqual(step(r4, &l4, at: 100), [.start(InstancePlan(id: "web-0", slot: 0, generation: 1, spec: r4.spec))])
    }

    func testGenerationsDependenciesAndMovesAway() {
        var local: [String: LocalInstance] = [:]
        XCTAssertTrue(step(record(deps: ["db"]), &local, at: 0, deps: "no serving instance of db").isEmpty)
        XCTAssertEqual(ServiceReconciler.report(local["web-0"]!, node: me, address: "", spec: record().spec).state, .pending)
        XCTAssertEqual(step(record(deps: ["db"]), &local, at: 5, deps: nil).count, 1, "starts once db serves")
        observe(&local, .running, health: .healthy)
        guard case .start(let p)? = step(record(generation: 2), &local, at: 10).first else { return XCTFail("a new generation restarts") }
        XCTAssertEqual(p.generation, 2)
        XCTAssertEqual(step(nil, &local, at: 20), [.stop(id: "web-0", reason: "no longer assigned to this node")])
        XCTAssertTrue(local.isEmpty)
    }
}

/// The leader's half: the scheduler's plan becomes `assign` entries; a member recorded failed loses
/// its instances in the next plan; a node reports its instances through the leader.
final class ServiceControllerTests: XCTestCase {
    func testTheLeaderPlacesAndMovesInstancesOffAMemberThatIsDown() throws {
        let t = ServiceTableTests(name: "world", testClosure: { _ in })
        var s = try t.world()
        for i: UInt8 in 1...3 {
            try t.service(&s, .nodeInfo(node: t.id(i), ServiceNodeInfo(labels: ["zone": "z\(i)"], address: "10.0.0.\(i)")))
        }
        var spec = ServiceSpec(name: "web", command: ["sleep", "9"], replicas: 2)
        spec.placement.maxPerNode = 1
        try t.service(&s, .deploy(spec))
        var leader = ServiceController(settings: ServiceSettings(info: ServiceNodeInfo(labels: ["zone": "z1"], address: "10.0.0.1")), run: 1 << 20)
        var clock: UInt64 = 10_000
        func tick() -> [ControllerEffect<ServiceAction>] {
            clock += 100
            return leader.tick(context: ControllerContext(node: t.id(1), isLeader: true, state: s, tick: clock / 100, ticksPerSecond: 10, millis: clock))
        }
        func proposals(_ effects: [ControllerEffect<ServiceAction>]) -> [ServiceCommand] {
            effects.compactMap { if case .propose(.service(let c, _)) = $0 { return c }; return nil }
        }
        let first = proposals(tick())
        guard case let .assign(name, generation, slots, pending)? = first.first else { return XCTFail("no placement proposed: \(first)") }
        XCTAssertEqual(name, "web"); XCTAssertEqual(generation, 1); XCTAssertEqual(pending, "")
        XCTAssertEqual(Set(slots.values).count, 2, "max_per_node 1: two nodes")
        for c in try t.service(&s, first[0]) { _ = leader.applied(c, context: ControllerContext(node: t.id(1), isLeader: true, state: s, tick: 0, ticksPerSecond: 10)) }
        XCTAssertTrue(proposals(tick()).isEmpty, "nothing new to propose once the placement applied")
        XCTAssertFalse(leader.dirty)
        // A node's report changes the record but not what the plan depends on: no re-plan for it.
        let report = InstanceReport(node: slots[0]!, generation: 1, state: .running, health: .healthy)
        for c in try t.service(&s, .report(node: slots[0]!, [("web", 0, report)])) {
            _ = leader.applied(c, context: ControllerContext(node: t.id(1), isLeader: true, state: s, tick: 0, ticksPerSecond: 10))
        }
        XCTAssertFalse(leader.dirty, "reports do not make the leader re-plan")
        // The member holding slot 0 leaves (down to the scheduler, like one recorded failed): the next
        // plan moves that slot, and only it.
        let failed = try XCTUnwrap(slots[0])
        let failedIndex = try XCTUnwrap((1...3).map(UInt8.init).first { t.id($0) == failed })
        try t.spore(&s, .setStatus(node: failed, .left), by: failedIndex)
        for c in [ControlChange.restored] { _ = leader.applied(c, context: ControllerContext(node: t.id(1), isLeader: true, state: s, tick: 0, ticksPerSecond: 10)) }
        let moved = proposals(tick())
        guard case let .assign(_, _, after, _)? = moved.first else { return XCTFail("the failed member's instance was not moved: \(moved)") }
        XCTAssertEqual(after[1], slots[1], "the healthy instance stays")
        XCTAssertNotEqual(after[0], failed)
        XCTAssertNotNil(after[0])
        try t.service(&s, moved[0])

        // Draining the node of slot 1 takes that instance off it; with one node down and one holding
        // slot 0 (one per node), nowhere is left for it: unplaced, and the record says why.
        let drained = try XCTUnwrap(after[1])
        try t.service(&s, .drain(node: drained, true))
        _ = leader.applied(.serviceNode(drained), context: ControllerContext(node: t.id(1), isLeader: true, state: s, tick: 0, ticksPerSecond: 10))
        guard case let .assign(_, _, final, why)? = proposals(tick()).first else { return XCTFail("the drained node's instance was not moved") }
        XCTAssertEqual(final[0], after[0])
        XCTAssertNil(final[1])
        XCTAssertFalse(final.values.contains(drained), "nothing on the drained node")
        XCTAssertTrue(why.contains("1 of the replicas not placed"), why)
    }
}

/// The podman driver's part in the pure core: a container's own (pod) address goes into its
/// instance report instead of the node's, and nodes that cannot offer podman say why, in the deploy
/// refusal and in a service's pending reason.
final class PodmanServiceCoreTests: XCTestCase {
    func testAContainerIsReportedAtItsPodAddressAndNodesWithoutPodmanSayWhy() throws {
        let t = ServiceTableTests(name: "world", testClosure: { _ in })
        var s = try t.world()
        let why = "podman: runc is not installed (apt-get install runc)"
        for i: UInt8 in 2...3 {
            try t.service(&s, .nodeInfo(node: t.id(i), ServiceNodeInfo(drivers: [.process], address: "10.0.0.\(i)", unavailable: why)))
        }
        var spec = ServiceSpec(name: "web", driver: .podman, command: ["/bin/httpd", "-f"], image: "/srv/web", replicas: 2)
        spec.cpuMillis = 100  // two replicas: not a singleton, which would wait for the node lease
        // No node offers podman: the deploy is refused with the nodes' reasons.
        let refusal = try XCTUnwrap(ServiceRules.impossible(spec, state: s))
        XCTAssertTrue(refusal.contains("offers no podman driver: runc is not installed (apt-get install runc)"), refusal)

        // Node 1 offers it: the service is placed there, and its report carries the pod address.
        let info = ServiceNodeInfo(drivers: [.process, .podman], address: "10.0.0.1")
        try t.service(&s, .nodeInfo(node: t.id(1), info))
        XCTAssertNil(ServiceRules.impossible(spec, state: s))
        try t.service(&s, .deploy(spec))
        try t.service(&s, .assign(name: "web", generation: 1, [0: t.id(1)], pending: ""))
        var node = ServiceController(settings: ServiceSettings(info: info), run: 3 << 20)
        var clock: UInt64 = 10_000
        func ctx() -> ControllerContext { ControllerContext(node: t.id(1), isLeader: false, state: s, tick: clock / 100, ticksPerSecond: 10, millis: clock) }
        let started = node.tick(context: ctx()).compactMap { e -> InstancePlan? in if case .act(.start(let p)) = e { return p }; return nil }
        XCTAssertEqual(started.map(\.id), ["web-0"])
        _ = node.reported(ServiceDriverReport(id: "web-0", generation: 1, state: .running, health: .healthy, address: "10.244.1.7"), context: ctx())
        clock += 1000
        let reports = node.tick(context: ctx()).compactMap { e -> [(name: String, slot: UInt16, InstanceReport)]? in
            if case .request(.service(.report(_, let batch), _)) = e { return batch }; return nil
        }.flatMap { $0 }
        XCTAssertEqual(reports.first?.2.address, "10.244.1.7", "the pod address, not the node's")
        XCTAssertEqual(reports.first?.2.state, .running)

        // A process (no address of its own) is reported at its node's address.
        _ = node.reported(ServiceDriverReport(id: "web-0", generation: 1, state: .running, health: .healthy), context: ctx())
        clock += 1000
        let again = node.tick(context: ctx()).compactMap { e -> [(name: String, slot: UInt16, InstanceReport)]? in
            if case .request(.service(.report(_, let batch), _)) = e { return batch }; return nil
        }.flatMap { $0 }
        XCTAssertEqual(again.first?.2.address, "10.0.0.1")

        // Node 1 loses podman: the leader's plan leaves the service unplaced, with the nodes' reasons.
        try t.service(&s, .nodeInfo(node: t.id(1), ServiceNodeInfo(drivers: [.process], address: "10.0.0.1", unavailable: why)))
        var leader = ServiceController(settings: ServiceSettings(info: ServiceNodeInfo(drivers: [.process], address: "10.0.0.1", unavailable: why)), run: 5 << 20)
        let plan = leader.tick(context: ControllerContext(node: t.id(1), isLeader: true, state: s, tick: clock / 100, ticksPerSecond: 10, millis: clock))
        let pending = plan.compactMap { e -> String? in if case .propose(.service(.assign(_, _, _, let p), _)) = e { return p }; return nil }.first ?? ""
        XCTAssertTrue(pending.contains("capability 'podman'") && pending.contains("offers no podman driver: runc is not installed"), pending)
        XCTAssertLessThanOrEqual(pending.utf8.count, 400)
    }
}

/// Singletons and the node lease: a node runs a one-replica service only under a lease it renewed
/// itself in this run, stops it when renewals stop applying, and the leader moves it only after the
/// lease ended in control time plus the slack.
final class SingletonLeaseTests: XCTestCase {
    func testACutOffNodeStopsItsSingletonBeforeTheLeaderMovesIt() throws {
        let t = ServiceTableTests(name: "world", testClosure: { _ in })
        var s = try t.world()
        for i: UInt8 in 1...3 { try t.service(&s, .nodeInfo(node: t.id(i), ServiceNodeInfo(address: "10.0.0.\(i)"))) }
        try t.service(&s, .deploy(ServiceSpec(name: "db", command: ["sleep", "9"], replicas: 1)))
        try t.service(&s, .assign(name: "db", generation: 1, [0: t.id(2)], pending: ""))
        var node = ServiceController(settings: ServiceSettings(info: ServiceNodeInfo(address: "10.0.0.2")), run: 7 << 20)
        var clock: UInt64 = 50_000
        func ctx(_ st: ControlState, leader: Bool = false, as i: UInt8 = 2) -> ControllerContext {
            ControllerContext(node: t.id(i), isLeader: leader, state: st, tick: clock / 100, ticksPerSecond: 10, millis: clock)
        }
        func acts(_ e: [ControllerEffect<ServiceAction>]) -> [ServiceAction] { e.compactMap { if case .act(let a) = $0 { return a }; return nil } }
        func renewals(_ e: [ControllerEffect<ServiceAction>]) -> [SporeCommand] { e.compactMap { if case .submit(let c) = $0 { return c }; return nil } }

        // Assigned, but no lease yet: it renews and waits.
        var e = node.tick(context: ctx(s))
        XCTAssertTrue(acts(e).isEmpty, "a singleton does not start before the node's lease applied")
        let first = try XCTUnwrap(renewals(e).first)
        // The renewal applies (stamped by the leader's clock): the instance starts.
        try t.spore(&s, first, by: 2)
        _ = node.applied(.spore(SignedCommand(first, author: t.id(2), key: t.key(2), network: t.network.id)), context: ctx(s))
        clock += 100
        e = node.tick(context: ctx(s))
        XCTAssertEqual(acts(e).count, 1, "started under a valid lease: \(e)")
        XCTAssertNotNil(s.services.leaseUntilMillis[t.id(2)])
        // Cut off: renewals keep being sent but none applies. 2 s lease − 500 ms margin after the
        // last applied one was sent, the instance is stopped.
        var stoppedAt: UInt64?
        for _ in 0..<30 {
            clock += 100
            if acts(node.tick(context: ctx(s))).contains(where: { if case .stop = $0 { return true }; return false }) { stoppedAt = clock; break }
        }
        XCTAssertEqual(stoppedAt, 50_000 + 1500, "stopped 1.5 s after the last renewal that applied was sent")

        // The leader sees node 2 leave, but its lease has not ended: db stays assigned there.
        var leader = ServiceController(settings: ServiceSettings(info: ServiceNodeInfo(address: "10.0.0.1")), run: 9 << 20)
        try t.spore(&s, .setStatus(node: t.id(2), .left), by: 2)
        let until = try XCTUnwrap(s.services.leaseUntilMillis[t.id(2)])
        XCTAssertTrue(s.services.mayStillRunSingletons(t.id(2), now: s.nowMillis))
        func plans(_ e: [ControllerEffect<ServiceAction>]) -> [ServiceCommand] { e.compactMap { if case .propose(.service(let c, _)) = $0 { return c }; return nil } }
        clock += 6000
        XCTAssertTrue(plans(leader.tick(context: ctx(s, leader: true, as: 1))).isEmpty, "not moved while the lease may still run it")
        // Control time passes the lease end + slack (spore entries advance it): now it moves.
        while s.nowMillis <= until + ServiceTable.takeoverSlackMillis { try t.spore(&s, .tick, by: 1) }
        _ = leader.applied(.restored, context: ctx(s, leader: true, as: 1))
        clock += 6000
        guard case let .assign(_, _, slots, _)? = plans(leader.tick(context: ctx(s, leader: true, as: 1))).first else { return XCTFail("db not moved") }
        XCTAssertNotEqual(slots[0], t.id(2))
    }
}

/// A singleton on a dead member waits for that member's lease in control time; the leader brings
/// control time there with a spore tick once its own estimate says the lease ended, never before.
final class SingletonTakeoverTests: XCTestCase {
    func testTheLeaderNudgesControlTimePastADeadHoldersLeaseThenMovesTheSingleton() throws {
        let t = ServiceTableTests(name: "world", testClosure: { _ in })
        var s = try t.world()
        for i: UInt8 in 1...3 { try t.service(&s, .nodeInfo(node: t.id(i), ServiceNodeInfo(address: "10.0.0.\(i)"))) }
        try t.service(&s, .deploy(ServiceSpec(name: "db", command: ["sleep", "9"], replicas: 1)))
        var leader = ServiceController(settings: ServiceSettings(info: ServiceNodeInfo(address: "10.0.0.1")), run: 1 << 20)
        var clock: UInt64 = 10_000
        func ctx() -> ControllerContext { ControllerContext(node: t.id(1), isLeader: true, state: s, tick: clock / 100, ticksPerSecond: 10, millis: clock) }
        func tick() -> [ControllerEffect<ServiceAction>] { clock += 100; return leader.tick(context: ctx()) }
        func proposals(_ e: [ControllerEffect<ServiceAction>]) -> [ServiceCommand] { e.compactMap { if case .propose(.service(let c, _)) = $0 { return c }; return nil } }
        func nudges(_ e: [ControllerEffect<ServiceAction>]) -> Int { e.filter { if case .submit(.tick) = $0 { return true }; return false }.count }
        func apply(_ changes: [ControlChange]) { for c in changes { _ = leader.applied(c, context: ctx()) } }

        guard case let .assign(_, _, slots, _)? = proposals(tick()).first, let holder = slots[0] else { return XCTFail("db not placed") }
        apply(try t.service(&s, .assign(name: "db", generation: 1, slots, pending: "")))
        // Pick a holder other than the leader's own node for the story; the table does not care.
        let holderIndex = try XCTUnwrap((1...3).map(UInt8.init).first { t.id($0) == holder })
        try t.spore(&s, .renewLease(name: ServiceTable.leasePrefix + "\(holder)", ttlSeconds: 2, run: 9), by: holderIndex)
        let leaseEnd = try XCTUnwrap(s.services.leaseUntilMillis[holder])
        try t.spore(&s, .setStatus(node: holder, .left), by: holderIndex)
        apply([.restored])
        XCTAssertLessThan(s.nowMillis, leaseEnd + ServiceTable.takeoverSlackMillis, "control time still inside the lease")

        // Until the estimate passes the lease end plus the slack: neither a move nor a nudge.
        let wait = leaseEnd + ServiceTable.takeoverSlackMillis - s.nowMillis
        var waited: Int64 = 0, nudged = 0
        while nudged == 0 && waited < 10_000 {
            let e = tick()
            waited += 100
            XCTAssertTrue(proposals(e).isEmpty, "moved while the dead holder's lease still held in control time: \(proposals(e))")
            nudged = nudges(e)
        }
        XCTAssertEqual(nudged, 1, "a spore tick was asked for")
        XCTAssertGreaterThanOrEqual(waited, wait, "not before the estimate passed the lease")
        XCTAssertLessThanOrEqual(waited, wait + 200, "as soon as it did")
        XCTAssertEqual(nudges(tick()), 0, "one nudge per half second at most")

        // The tick commits (stamped with the leader's clock): control time passes the lease, the plan moves db.
        t.time = leaseEnd + ServiceTable.takeoverSlackMillis - 1000  // the leader's clock when it stamps the tick: its estimate
        try t.spore(&s, .tick, by: 1)
        XCTAssertGreaterThanOrEqual(s.nowMillis, leaseEnd + ServiceTable.takeoverSlackMillis)
        apply([.restored])
        var moved: [ServiceCommand] = []
        for _ in 0..<3 where moved.isEmpty { moved = proposals(tick()) }
        guard case let .assign(_, _, after, _)? = moved.first else { return XCTFail("db was not moved off the dead holder: \(moved)") }
        XCTAssertNotEqual(after[0], holder)
        XCTAssertNotNil(after[0])
    }
}
