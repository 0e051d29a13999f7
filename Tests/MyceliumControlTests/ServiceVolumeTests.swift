import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import Scheduler
@testable import ServiceController
import XCTest

/// A service names volumes (issue 18): the field is trailing (older bytes decode), the control state
/// refuses what cannot be mounted before anything is recorded (missing, uncreated, someone else's, more
/// than one instance), a used volume cannot be deleted, and the scheduler pins a service with a local
/// volume to the volume's node while a Ceph volume lets it move.
final class ServiceVolumeTests: XCTestCase {
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

    func service(_ s: inout ControlState, _ c: ServiceCommand) throws {
        index += 1
        _ = try s.apply(Entry(term: 1, index: index, data: ControlEntry.service(c).encoded()))
    }

    func volume(_ s: inout ControlState, _ c: VolumeCommand) throws {
        index += 1
        _ = try s.apply(Entry(term: 1, index: index, data: ControlEntry.volume(c).encoded()))
    }

    func vm(_ s: inout ControlState, _ c: VMCommand) throws {
        index += 1
        _ = try s.apply(Entry(term: 1, index: index, data: ControlEntry.vm(c).encoded()))
    }

    func refusal(_ body: () throws -> Void) -> String {
        do { try body(); return "accepted" } catch { return "\(error)" }
    }

    func world() throws -> ControlState {
        var s = ControlState(network: network)
        for i: UInt8 in 1...3 {
            let cert = MembershipCertificate.issue(by: genesis, nodeID: id(i), nodeKey: key(i).publicKey,
                                                   roles: [.member, .sclerotiumEligible, .inviter], serial: UInt64(i),
                                                   issuedAt: 1_800_000_000, validFor: 86_400)
            try spore(&s, .admit(cert), by: i)
            try spore(&s, .refresh(Capabilities(cpus: 2, memoryMiB: 2048)), by: i)
            try service(&s, .nodeInfo(node: id(i), ServiceNodeInfo(address: "10.0.0.\(i)")))
        }
        return s
    }

    /// Creates volume `name` (local on node `home`, or Ceph) and reports it created.
    func created(_ s: inout ControlState, _ name: String, home: UInt8, ceph: Bool = false) throws {
        if ceph {
            try volume(&s, .storageNode(node: id(home), StorageNodeInfo(ceph: true, cephHost: "")))
            try volume(&s, .create(VolumeSpec(name: name, sizeBytes: 1 << 30, dataClass: "replicated", driver: .ceph), home: id(home), executor: id(home)))
        } else {
            try volume(&s, .create(VolumeSpec(name: name, sizeBytes: 1 << 30, dataClass: "local", driver: .local), home: id(home), executor: id(home)))
        }
        try volume(&s, .taskDone(name: name, task: s.volumes.volumes[name]!.task!.id, node: id(home), ok: true, message: ""))
    }

    func db(_ volumes: [ServiceVolume] = [ServiceVolume(name: "data", path: "/data")], name: String = "db", replicas: UInt16 = 1) -> ServiceSpec {
        ServiceSpec(name: name, command: ["/bin/sleep", "100"], replicas: replicas, volumes: volumes)
    }

    func testVolumesAreATrailingFieldSoOlderBytesStillDecode() throws {
        let plain = db([])
        let withVolumes = db([ServiceVolume(name: "data", path: "/data"), ServiceVolume(name: "logs", path: "/var/log/db")])
        let old = ServiceCommand.deploy(plain).encoded(), new = ServiceCommand.deploy(withVolumes).encoded()
        XCTAssertEqual(Array(new.prefix(old.count)), old, "the volumes are appended, nothing else changes")
        XCTAssertEqual(try ServiceCommand(decoding: old), .deploy(plain))
        XCTAssertEqual(try ServiceCommand(decoding: new), .deploy(withVolumes))
        for cut in old.count + 1..<new.count { XCTAssertThrowsError(try ServiceCommand(decoding: Array(new.prefix(cut))), "cut at \(cut)") }

        // The snapshot: a table without volumes encodes as before (no section 3); one with them restores.
        var s = try world()
        try service(&s, .deploy(ServiceSpec(name: "web", command: ["/bin/true"])))
        let before = s.services.encoded()
        try created(&s, "data", home: 1)
        try created(&s, "logs", home: 1)
        XCTAssertEqual(s.services.encoded(), before)
        try service(&s, .deploy(withVolumes))
        let restored = try ControlState.restore(s.snapshot(), network: network)
        XCTAssertEqual(restored.services, s.services)
        XCTAssertEqual(restored.services.services["db"]?.spec.volumes, withVolumes.volumes)
        XCTAssertEqual(try ServiceTable(decoding: before).services["web"]?.spec.volumes, [])
        let bytes = s.services.encoded()
        for cut in [bytes.count - 1, bytes.count - 5] { XCTAssertThrowsError(try ServiceTable(decoding: Array(bytes.prefix(cut)))) }
    }

    func testSpecRulesWithoutTheNetwork() {
        XCTAssertNil(db().problem)
        XCTAssertTrue(db(replicas: 2).problem?.contains("exactly 1 instance") == true, db(replicas: 2).problem ?? "accepted")
        XCTAssertTrue(db(replicas: 2).problem?.contains("RBD's exclusive lock") == true)
        for bad in ["data", "/", "/a/../b", "/a:b", "/x,y"] {
            XCTAssertTrue(db([ServiceVolume(name: "data", path: bad)]).problem?.contains("mount path") == true, bad)
        }
        XCTAssertTrue(db([ServiceVolume(name: "Data", path: "/d")]).problem?.contains("lowercase") == true)
        XCTAssertTrue(db([ServiceVolume(name: "a", path: "/d"), ServiceVolume(name: "a", path: "/e")]).problem?.contains("named twice") == true)
        XCTAssertTrue(db([ServiceVolume(name: "a", path: "/d"), ServiceVolume(name: "b", path: "/d")]).problem?.contains("two volumes") == true)
        var k3s = db()
        k3s.driver = .k3s; k3s.image = "nginx"
        XCTAssertTrue(k3s.problem?.contains("k3s service cannot mount") == true)
        XCTAssertEqual(ServiceVolume.environmentName("my-data"), "MYCELIUM_VOLUME_MY_DATA")
    }

    func testOneConsumerAtATimeRefusedBeforeAnythingIsRecorded() throws {
        var s = try world()
        XCTAssertTrue(refusal { try self.service(&s, .deploy(self.db())) }.contains("no volume named 'data'; create it with 'mycelium volume create"))
        try volume(&s, .create(VolumeSpec(name: "data", sizeBytes: 1 << 30, dataClass: "local", driver: .local), home: id(2), executor: id(2)))
        XCTAssertTrue(refusal { try self.service(&s, .deploy(self.db())) }.contains("not created"))
        XCTAssertNil(s.services.services["db"], "nothing recorded")
        try volume(&s, .taskDone(name: "data", task: s.volumes.volumes["data"]!.task!.id, node: id(2), ok: true, message: ""))
        XCTAssertTrue(refusal { try self.service(&s, .deploy(self.db(replicas: 3))) }.contains("exactly 1 instance"))
        try service(&s, .deploy(db()))
        XCTAssertEqual(s.volumeConsumer("data"), .service("db"))
        // The same service may deploy again (a new generation) with the same volume.
        var again = db()
        again.environment = ["X": "1"]
        try service(&s, .deploy(again))
        XCTAssertEqual(s.services.services["db"]?.generation, 2)
        // Another service, or a VM, may not have it.
        XCTAssertTrue(refusal { try self.service(&s, .deploy(self.db(name: "db2"))) }.contains("already mounted by service 'db'"))
        XCTAssertTrue(refusal { try self.vm(&s, .create(VMSpec(name: "v", memoryMiB: 256, vcpus: 1, disk: "data"), primary: self.id(2), replica: nil)) }
            .contains("already mounted by service 'db'"))
        // Deleting it is refused while the service mounts it, with what to do.
        let del = refusal { try self.volume(&s, .delete(name: "data", executor: self.id(2))) }
        XCTAssertTrue(del.contains("mounted by service 'db'; stop the service first ('mycelium service stop db')"), del)
        try service(&s, .remove(name: "db"))
        XCTAssertNil(s.volumeConsumer("data"))
        // A VM's disk excludes services the same way.
        try vm(&s, .create(VMSpec(name: "v", memoryMiB: 256, vcpus: 1, disk: "data"), primary: id(2), replica: nil))
        XCTAssertTrue(refusal { try self.service(&s, .deploy(self.db())) }.contains("already the disk of VM 'v'"))
        XCTAssertTrue(refusal { try self.volume(&s, .delete(name: "data", executor: self.id(2))) }.contains("is the disk of VM 'v'; delete the VM first"))
    }

    func testALocalVolumePinsTheServiceToItsNodeACephVolumeLetsItMove() throws {
        var s = try world()
        try created(&s, "local-data", home: 3)
        // Nodes 1 and 2 reach Ceph; node 3 does not, so the Ceph volume's service never goes there.
        for i: UInt8 in 1...2 { try volume(&s, .storageNode(node: id(i), StorageNodeInfo(ceph: true, cephHost: ""))) }
        try created(&s, "ceph-data", home: 1, ceph: true)
        try service(&s, .deploy(db([ServiceVolume(name: "local-data", path: "/data")], name: "pinned")))
        try service(&s, .deploy(db([ServiceVolume(name: "ceph-data", path: "/data")], name: "free")))
        let demands = s.services.services.values.sorted { $0.name < $1.name }.map { ServiceRules.demand($0, volumes: s.volumes) }
        var nodes = ServiceRules.nodes(s)
        XCTAssertEqual(nodes.count, 3)
        let first = Scheduler.plan(nodes: nodes, services: demands, current: [], seed: 1)
        XCTAssertEqual(first.assignments.first { $0.service == "pinned" }?.node, id(3), "a local volume's service runs on the volume's node")
        XCTAssertEqual(ServiceRules.pinned(s.services.services["pinned"]!.spec, volumes: s.volumes)?.node, id(3))
        XCTAssertTrue(ServiceRules.pinned(s.services.services["pinned"]!.spec, volumes: s.volumes)?.why.contains("cannot move") == true)
        XCTAssertNil(ServiceRules.pinned(s.services.services["free"]!.spec, volumes: s.volumes))
        let freeNode = try XCTUnwrap(first.assignments.first { $0.service == "free" }?.node)
        XCTAssertNotEqual(freeNode, id(3), "a Ceph volume's service runs only where Ceph is reachable")

        // Both nodes fail: the Ceph one moves (to the other node with Ceph), the pinned one waits and says why.
        for i in nodes.indices where nodes[i].id == id(3) || nodes[i].id == freeNode { nodes[i].condition = .down }
        let second = Scheduler.plan(nodes: nodes, services: demands, current: first.assignments, seed: 1)
        let moved = try XCTUnwrap(second.assignments.first { $0.service == "free" }?.node)
        XCTAssertNotEqual(moved, freeNode, "a Ceph volume's service moves")
        XCTAssertNotEqual(moved, id(3))
        XCTAssertNil(second.assignments.first { $0.service == "pinned" })
        let why = try XCTUnwrap(second.unplaced.first { $0.service == "pinned" }?.reason)
        XCTAssertTrue(why.contains("runs only on node \(id(3))") && why.contains("local volume 'local-data'"), why)

        // Deploy refuses a pinned service whose node can never take it (too big for it).
        var huge = db([ServiceVolume(name: "local-data", path: "/data")], name: "pinned")
        huge.memoryMiB = 4096
        try service(&s, .remove(name: "pinned"))
        let impossible = try XCTUnwrap(ServiceRules.impossible(huge, state: s))
        XCTAssertTrue(impossible.contains("local volume 'local-data'") || impossible.contains("\(id(3))"), impossible)
    }
}
