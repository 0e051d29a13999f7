import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import NetworkController
import XCTest

final class ControlStateTests: XCTestCase {
    let genesis = SigningKey(seed: Array(repeating: 7, count: 32))
    var network: NetworkIdentity { NetworkIdentity(genesisKey: genesis.publicKey) }

    func member(_ i: UInt8) -> (SigningKey, MembershipCertificate) {
        let key = SigningKey(seed: Array(repeating: i, count: 32))
        let cert = MembershipCertificate.issue(by: genesis, nodeID: NodeID(publicKey: key.publicKey), nodeKey: key.publicKey,
                                               roles: [.member, .sclerotiumEligible, .inviter], serial: UInt64(i),
                                               issuedAt: 1_800_000_000, validFor: 86_400)
        return (key, cert)
    }

    func admit(_ state: inout ControlState, _ i: UInt8, index: UInt64) throws {
        let (key, cert) = member(i)
        let e = ControlEntry.spore(SignedCommand(.admit(cert), author: cert.nodeID, key: key, network: network.id), millis: 1_800_000_010_000)
        _ = try state.apply(Entry(term: 1, index: index, data: e.encoded()))
    }

    func testEntriesRoundTripAndUnknownKindsAreRefused() throws {
        let (key, cert) = member(1)
        let entries: [ControlEntry] = [
            .spore(SignedCommand(.refresh(Capabilities(cpus: 2)), author: cert.nodeID, key: key, network: network.id), millis: 5000),
            .kv(KVBatch([.put(key: [1], value: [2], prevKV: true), .deleteRange(key: [1], rangeEnd: [0], prevKV: false)])),
            .network(.configure(pool: CIDR("10.244.0.0/16")!, nodePrefix: 24)),
            .network(.assign(node: cert.nodeID, CIDR("10.244.3.0/24")!)),
            .network(.release(node: cert.nodeID)),
        ]
        for e in entries { XCTAssertEqual(try ControlEntry.decode(e.encoded()), e) }
        XCTAssertNil(try ControlEntry.decode([]), "an empty payload is the leader's no-op")
        XCTAssertThrowsError(try ControlEntry.decode([9, 1, 2]))
        for e in entries {
            let bytes = e.encoded()
            for cut in 1..<bytes.count { _ = try? ControlEntry.decode(Array(bytes.prefix(cut))) }  // never crashes
        }
    }

    /// Entries and snapshots of agents from before control time in milliseconds still apply alike.
    func testSecondStampsOfOlderAgentsReadAsMilliseconds() throws {
        let (key, cert) = member(1)
        let signed = SignedCommand(.admit(cert), author: cert.nodeID, key: key, network: network.id)
        var old = ByteWriter(capacity: 256)
        old.u8(1); old.i64(1_800_000_010); old.raw(signed.encoded())
        XCTAssertEqual(try ControlEntry.decode(old.bytes), .spore(signed, millis: 1_800_000_010_000))
        var s = ControlState(network: network)
        _ = try s.apply(Entry(term: 1, index: 1, data: old.bytes))
        XCTAssertEqual(s.nowMillis, 1_800_000_010_000)
        XCTAssertEqual(s.spore.now, 1_800_000_010)
        // A later stamp in ms moves both clocks; an earlier one moves neither.
        _ = try s.apply(Entry(term: 1, index: 2, data: ControlEntry.spore(SignedCommand(.tick, author: cert.nodeID, key: key, network: network.id), millis: 1_800_000_011_750).encoded()))
        XCTAssertEqual(s.nowMillis, 1_800_000_011_750)
        XCTAssertEqual(s.spore.now, 1_800_000_011)
        _ = try s.apply(Entry(term: 1, index: 3, data: ControlEntry.spore(SignedCommand(.tick, author: cert.nodeID, key: key, network: network.id), millis: 5).encoded()))
        XCTAssertEqual(s.nowMillis, 1_800_000_011_750, "control time never goes back")
        // A format-3 snapshot (no control time of its own) restores it from the spore's seconds; a
        // format-4 one (no service table: its last blob, 16 bytes when empty) restores without services.
        // format-5 one (no volume table: its last blob, 21 bytes when empty) restores without volumes.
        let v6 = s.snapshot()
        XCTAssertEqual(Array(v6[4..<6]), [0, 6])
        let v5 = Array(v6.prefix(4)) + [0, 5] + Array(v6[6..<(v6.count - 21)])
        XCTAssertEqual(try ControlState.restore(v5, network: network), s)
        let v4 = Array(v5.prefix(4)) + [0, 4] + Array(v5[6..<(v5.count - 16)])
        XCTAssertEqual(try ControlState.restore(v4, network: network), s)
        var v3 = Array(v4.prefix(4)) + [0, 3] + Array(v4[6..<14]) + Array(v4[22...])
        let restored = try ControlState.restore(v3, network: network)
        XCTAssertEqual(restored.nowMillis, 1_800_000_011_000)
        XCTAssertEqual(restored.spore, s.spore)
        v3[5] = 9
        XCTAssertThrowsError(try ControlState.restore(v3, network: network), "a newer format than this build reads")
    }

    func testPodCIDRsAreUniqueWhateverTheLeaderProposes() throws {
        var s = ControlState(network: network)
        try admit(&s, 1, index: 1)
        try admit(&s, 2, index: 2)
        let a = member(1).1.nodeID, b = member(2).1.nodeID
        func net(_ c: NetworkCommand, _ i: UInt64) throws -> [ControlChange] {
            try s.apply(Entry(term: 1, index: i, data: ControlEntry.network(c).encoded()))
        }
        XCTAssertThrowsError(try net(.assign(node: a, CIDR("10.244.1.0/24")!), 3), "no pool yet")
        _ = try net(.configure(pool: CIDR("10.244.0.0/16")!, nodePrefix: 24), 4)
        XCTAssertThrowsError(try net(.configure(pool: CIDR("10.99.0.0/16")!, nodePrefix: 24), 5), "the pool never changes")
        _ = try net(.assign(node: a, CIDR("10.244.1.0/24")!), 6)
        XCTAssertThrowsError(try net(.assign(node: b, CIDR("10.244.1.0/24")!), 7), "taken")
        XCTAssertThrowsError(try net(.assign(node: b, CIDR("10.244.0.0/20")!), 8), "overlaps and wrong size")
        XCTAssertThrowsError(try net(.assign(node: b, CIDR("10.245.0.0/24")!), 9), "outside the pool")
        XCTAssertThrowsError(try net(.assign(node: a, CIDR("10.244.2.0/24")!), 10), "a node's block never changes")
        _ = try net(.assign(node: b, CIDR("10.244.2.0/24")!), 11)
        XCTAssertEqual(s.pods.cidr(of: b), CIDR("10.244.2.0/24"))
        XCTAssertEqual(s.pods.firstFree(), CIDR("10.244.0.0/24"))
    }

    func testSnapshotRestoresTheSameStateAndRefusesDamage() throws {
        var s = ControlState(network: network)
        try admit(&s, 1, index: 1)
        _ = try s.apply(Entry(term: 1, index: 2, data: ControlEntry.kv(KVBatch([.put(key: Array("a".utf8), value: [1], prevKV: false)])).encoded()))
        _ = try s.apply(Entry(term: 1, index: 3, data: ControlEntry.network(.configure(pool: CIDR("10.244.0.0/16")!, nodePrefix: 24)).encoded()))
        _ = try s.apply(Entry(term: 1, index: 4, data: ControlEntry.network(.assign(node: member(1).1.nodeID, CIDR("10.244.0.0/24")!)).encoded()))
        let snap = s.snapshot()
        let restored = try ControlState.restore(snap, network: network)
        XCTAssertEqual(restored, s)
        XCTAssertEqual(restored.snapshot(), snap, "one deterministic snapshot format")
        for i in stride(from: 0, to: snap.count, by: max(1, snap.count / 300)) {
            var bad = snap; bad[i] ^= 0x41
            if let r = try? ControlState.restore(bad, network: network) { XCTAssertEqual(r.snapshot(), bad, "byte \(i) accepted but not canonical") }
        }
        for cut in stride(from: 0, to: snap.count, by: max(1, snap.count / 200)) {
            XCTAssertThrowsError(try ControlState.restore(Array(snap.prefix(cut)), network: network), "cut at \(cut)")
        }
        let other = NetworkIdentity(genesisKey: SigningKey(seed: Array(repeating: 9, count: 32)).publicKey)
        XCTAssertThrowsError(try ControlState.restore(snap, network: other)) { e in
            XCTAssertTrue("\(e)".contains("network"), "\(e)")
        }
    }

    func testPeerMessagesRoundTripAndRefuseTruncation() throws {
        let (key, cert) = member(3)
        let signed = SignedCommand(.admit(cert), author: cert.nodeID, key: key, network: network.id)
        let messages: [PeerMessage] = [
            .join(signed, address: "10.0.0.1:7946"), .propose(signed), .hello(raftID: 42, address: "h:1"),
            .probe(.ping(seq: 1)), .probe(.pingRequest(seq: 2, target: 3)), .probe(.ack(seq: 4, about: 5)),
            .report(target: 9), .clientRequest(id: 1, path: 2, body: Array("{}".utf8)), .clientAnswer(id: 1, status: 200, body: [1, 2]),
        ]
        for m in messages {
            let p = m.payload()
            XCTAssertEqual(try PeerMessage(frameType: m.frameType.rawValue, payload: p), m)
            for cut in 0..<p.count { XCTAssertThrowsError(try PeerMessage(frameType: m.frameType.rawValue, payload: Array(p.prefix(cut))), "\(m.frameType) cut at \(cut)") }
        }
        XCTAssertNil(try PeerMessage(frameType: 99, payload: []), "unknown kinds are ignored, not errors")
    }

    /// The network controller gives every member a distinct block and writes this node's own.
    func testTheNetworkControllerAllocatesAndWritesOnce() throws {
        var s = ControlState(network: network)
        for i: UInt8 in 1...3 { try admit(&s, i, index: UInt64(i)) }
        var leader = PodCIDRController()
        let me = member(1).1.nodeID
        var index: UInt64 = 10
        var written: [PodCIDRAction] = []
        for tick in UInt64(1)...40 {
            let ctx = ControllerContext(node: me, isLeader: true, state: s, tick: tick, ticksPerSecond: 10)
            for e in leader.tick(context: ctx) {
                switch e {
                case .propose(let entry):
                    index += 1
                    for c in (try? s.apply(Entry(term: 1, index: index, data: entry.encoded()))) ?? [] {
                        for f in leader.applied(c, context: ControllerContext(node: me, isLeader: true, state: s, tick: tick, ticksPerSecond: 10)) {
                            if case .act(let a) = f { written.append(a) }
                        }
                    }
                case .act(let a): written.append(a)
                default: break
                }
            }
        }
        let blocks = (1...3).compactMap { s.pods.cidr(of: member(UInt8($0)).1.nodeID) }
        XCTAssertEqual(blocks.count, 3)
        XCTAssertEqual(Set(blocks).count, 3)
        XCTAssertEqual(written.first, .write(nil), "before any block: no file")
        XCTAssertEqual(written.last, .write(s.pods.cidr(of: me)))
        XCTAssertEqual(written.count, 2, "written once at start, once when assigned: \(written)")
    }

    func testThePodCIDRFileIsWhatTheCNIPluginReads() async throws {
        let dir = NSTemporaryDirectory() + "myc-podcidr-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = PodCIDRFile(path: dir + "/node/podcidr")
        try await file.perform(.write(CIDR("10.244.7.0/24")!))
        XCTAssertEqual(try String(contentsOfFile: dir + "/node/podcidr", encoding: .utf8), "10.244.7.0/24\n")
        try await file.perform(.write(nil))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/node/podcidr"))
    }
}
