// The text an operator reads: why a service is short, and why one node cannot take it.

import MyceliumIdentity
@testable import Scheduler
import XCTest

final class ReasonTests: XCTestCase {
    func reason(_ nodes: [SchedulerNode], _ services: [ServiceDemand], current: [Assignment] = []) -> String {
        let p = Scheduler.plan(nodes: nodes, services: services, current: current, seed: 1)
        XCTAssertEqual(p.unplaced.count, 1)
        return p.unplaced.first?.reason ?? ""
    }

    func testMissingCapability() {
        let r = reason([node(1, caps: ["k3s"]), node(2)], [service("web", constraints: [.capability("podman")])])
        XCTAssertTrue(r.hasPrefix("no ready node has capability 'podman'"), r)
    }

    func testConstraintsThatHoldOnlySeparately() {
        let r = reason([node(1, labels: ["zone": "a"]), node(2, labels: ["zone": "b"], caps: ["podman"])],
                       [service("web", constraints: [.labelEquals("zone", "a"), .capability("podman")])])
        XCTAssertTrue(r.contains("no ready node satisfies the constraints (zone=a, capability 'podman') together"), r)
    }

    func testTrustTooLow() {
        let r = reason([node(1, trust: 0.6), node(2, trust: 0.3)], [service("web", minTrust: 0.8)])
        XCTAssertTrue(r.contains("2 ready nodes but none has trust ≥ 0.8 (highest: 0.6)"), r)
    }

    func testNotEnoughRoomAmongMatchingNodes() {
        let eu = ["zone": "eu"]
        let nodes = [node(1, mem: 1024, labels: eu), node(2, mem: 256, labels: eu), node(3, mem: 256, labels: eu), node(4, labels: ["zone": "us"])]
        let r = reason(nodes, [service("web", 3, cpu: 100, mem: 512, constraints: [.labelEquals("zone", "eu")])])
        XCTAssertTrue(r.hasPrefix("3 ready nodes match the constraints (zone=eu); none can take another instance: 3 lack room for 100 millicpu, 512 MiB"), r)
        XCTAssertTrue(r.contains("most free: 4000 millicpu, 256 MiB"), r)
        XCTAssertTrue(r.hasSuffix("add capacity there or lower the request"), r)
    }

    func testNothingReady() {
        let r = reason([node(1, condition: .down), node(2, condition: .draining), node(3, condition: .suspect)], [service("web")])
        XCTAssertEqual(r, "no node is ready (1 draining, 1 down, 1 suspect); bring nodes back or add nodes")
    }

    func testMatchingNodeThatIsNotReadyIsMentioned() {
        let r = reason([node(1, caps: ["podman"], condition: .draining), node(2)], [service("web", constraints: [.capability("podman")])])
        XCTAssertTrue(r.hasSuffix("; 1 more matching node is draining, down or suspect"), r)
    }

    func testMaxPerNodeAndAntiAffinity() {
        let mpn = reason([node(1)], [service("web", 2, maxPerNode: 1)])
        XCTAssertTrue(mpn.contains("1 already run maxPerNode=1; add matching nodes or raise maxPerNode"), mpn)
        let aa = reason([node(1)], [service("db", cpu: 1000), service("web", antiAffinity: ["db"])])
        XCTAssertTrue(aa.contains("1 run db, which this service must not share a node with; add matching nodes or relax antiAffinity"), aa)
    }

    func testExplainOneNode() {
        let web = service("web", cpu: 1000, mem: 512, constraints: [.capability("podman")], minTrust: 0.5, maxPerNode: 1)
        XCTAssertNil(Scheduler.explain(service: web, node: node(1, caps: ["podman"])))
        let down = Scheduler.explain(service: web, node: node(1, caps: ["podman"], condition: .down)) ?? ""
        XCTAssertTrue(down.contains("is down"), down)
        let suspect = Scheduler.explain(service: web, node: node(1, caps: ["podman"], condition: .suspect)) ?? ""
        XCTAssertTrue(suspect.contains("gets no new ones"), suspect)
        let wrong = Scheduler.explain(service: web, node: node(1, trust: 0.2)) ?? ""
        XCTAssertTrue(wrong.contains("lacks capability 'podman'") && wrong.contains("trust 0.2, below minTrust 0.5"), wrong)
        let full = Scheduler.explain(service: web, node: node(1, cpu: 1500, caps: ["podman"]), assignments: [at("db", 0, 1)],
                                     services: [service("db", cpu: 600)]) ?? ""
        XCTAssertTrue(full.contains("has 900 millicpu and 7680 MiB free"), full)
        // Anti-affinity named only on the other side still counts.
        let shy = Scheduler.explain(service: web, node: node(1, caps: ["podman"]), assignments: [at("db", 0, 1)],
                                    services: [service("db", antiAffinity: ["web"])]) ?? ""
        XCTAssertTrue(shy.contains("runs db, which web must not share a node with"), shy)
        let twice = Scheduler.explain(service: web, node: node(1, caps: ["podman"]), assignments: [at("web", 0, 1)]) ?? ""
        XCTAssertTrue(twice.contains("already runs 1 instance of web (maxPerNode=1)"), twice)
    }
}
