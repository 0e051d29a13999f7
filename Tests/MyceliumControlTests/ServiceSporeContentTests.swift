import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import XCTest

/// What the leader puts in a service's spore and when a seed location needs it rewritten
/// (ServiceSporePlan): only on change, a singleton's lease only once it moved far, a tombstone
/// for a removed service.
final class ServiceSporeContentTests: XCTestCase {
    let genesis = SigningKey(seed: Array(repeating: 7, count: 32))
    var network: NetworkIdentity { NetworkIdentity(genesisKey: genesis.publicKey) }
    var index: UInt64 = 0
    var time: Int64 = 1_800_000_010_000

    func key(_ i: UInt8) -> SigningKey { SigningKey(seed: Array(repeating: i, count: 32)) }
    func id(_ i: UInt8) -> MyceliumIdentity.NodeID { MyceliumIdentity.NodeID(publicKey: key(i).publicKey) }

    func spore(_ s: inout ControlState, _ c: SporeCommand, by i: UInt8, advance: Int64 = 1000) throws {
        index += 1; time += advance
        _ = try s.apply(Entry(term: 1, index: index, data: ControlEntry.spore(SignedCommand(c, author: id(i), key: key(i), network: network.id), millis: time).encoded()))
    }

    func service(_ s: inout ControlState, _ c: ServiceCommand) throws {
        index += 1
        _ = try s.apply(Entry(term: 1, index: index, data: ControlEntry.service(c, millis: time).encoded()))
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

    func testRecordsFollowTheTableAndAreRewrittenOnlyWhenTheyChange() throws {
        var s = try world()
        let web = ServiceSpec(name: "web", command: ["/bin/sleep", "100"], replicas: 2, ports: [ServicePort(name: "http", port: 8080)])
        try service(&s, .deploy(web))
        try service(&s, .assign(name: "web", generation: 1, [0: id(1), 1: id(2)], pending: ""))
        var current = ServiceSporePlan.contents(s.services, spore: s.spore)
        var c = try XCTUnwrap(current["web"])
        XCTAssertEqual(c.instances.map(\.node), [id(1), id(2)])
        XCTAssertEqual(c.serving, [], "nothing reported yet")
        XCTAssertNil(c.owner, "two replicas: no singleton owner")
        XCTAssertEqual(c.ports, [ServiceSpore.Port(name: "http", port: 8080)])
        XCTAssertEqual(ServiceSporePlan.changes(current: current, written: [:]).map(\.name), ["web"])
        var written = current
        XCTAssertTrue(ServiceSporePlan.changes(current: current, written: written).isEmpty, "unchanged: nothing to write")

        // An instance serving is a change; a report that changes nothing the record holds is not.
        try service(&s, .report(node: id(1), [("web", 0, InstanceReport(node: id(1), generation: 1, state: .running, health: .healthy, address: "10.0.0.1"))]))
        current = ServiceSporePlan.contents(s.services, spore: s.spore)
        c = try XCTUnwrap(current["web"])
        XCTAssertEqual(c.serving.map(\.address), ["10.0.0.1"])
        XCTAssertEqual(ServiceSporePlan.changes(current: current, written: written).map(\.name), ["web"])
        written = current
        try service(&s, .report(node: id(1), [("web", 0, InstanceReport(node: id(1), generation: 1, state: .running, health: .healthy, restarts: 1, address: "10.0.0.1"))]))
        XCTAssertTrue(ServiceSporePlan.changes(current: ServiceSporePlan.contents(s.services, spore: s.spore), written: written).isEmpty,
                      "a restart count is not in the record")
        // An instance moved to another node is a change.
        try service(&s, .assign(name: "web", generation: 1, [0: id(3), 1: id(2)], pending: ""))
        current = ServiceSporePlan.contents(s.services, spore: s.spore)
        XCTAssertEqual(current["web"]?.instances.first?.node, id(3))
        XCTAssertEqual(current["web"]?.serving, [], "the moved slot forgot the old node's report")
        XCTAssertEqual(ServiceSporePlan.changes(current: current, written: written).map(\.name), ["web"])

        // A singleton names its node and that node's lease; renewals rewrite it only every 30 s.
        let db = ServiceSpec(name: "db", command: ["/bin/sleep", "100"], replicas: 1)
        try service(&s, .deploy(db))
        try service(&s, .assign(name: "db", generation: 1, [0: id(2)], pending: ""))
        try spore(&s, .acquireLease(name: ServiceTable.leasePrefix + "\(id(2))", ttlSeconds: 2), by: 2)
        current = ServiceSporePlan.contents(s.services, spore: s.spore)
        let owner = try XCTUnwrap(current["db"]?.owner)
        XCTAssertEqual(owner.node, id(2))
        XCTAssertEqual(owner.leaseUntilMillis, time + 2000)
        written = current
        try spore(&s, .renewLease(name: ServiceTable.leasePrefix + "\(id(2))", ttlSeconds: 2, run: 1), by: 2, advance: 500)
        XCTAssertTrue(ServiceSporePlan.changes(current: ServiceSporePlan.contents(s.services, spore: s.spore), written: written).isEmpty)
        try spore(&s, .renewLease(name: ServiceTable.leasePrefix + "\(id(2))", ttlSeconds: 2, run: 2), by: 2, advance: ServiceSporePlan.leaseRefreshMillis)
        XCTAssertEqual(ServiceSporePlan.changes(current: ServiceSporePlan.contents(s.services, spore: s.spore), written: written).map(\.name), ["db"])

        // Removed: a tombstone, once.
        written = ServiceSporePlan.contents(s.services, spore: s.spore)
        try service(&s, .remove(name: "db"))
        current = ServiceSporePlan.contents(s.services, spore: s.spore)
        let tomb = ServiceSporePlan.changes(current: current, written: written)
        XCTAssertEqual(tomb, [.tombstone("db", generation: 1)])
        written["db"] = tomb[0]
        XCTAssertTrue(ServiceSporePlan.changes(current: current, written: written).isEmpty)
    }
}
