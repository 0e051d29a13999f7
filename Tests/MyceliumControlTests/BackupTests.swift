import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import XCTest

/// The backup format, its verification, the retention rule and the restore's refusal rules
/// (MyceliumControl/Backup.swift), all pure.
final class BackupTests: XCTestCase {
    let genesis = SigningKey(seed: Array(repeating: 7, count: 32))
    var network: NetworkIdentity { NetworkIdentity(genesisKey: genesis.publicKey) }
    let t0: Int64 = 1_800_000_010_000

    func member(_ i: UInt8, genesis g: SigningKey? = nil) -> (SigningKey, MembershipCertificate) {
        let key = SigningKey(seed: Array(repeating: i, count: 32))
        let cert = MembershipCertificate.issue(by: g ?? genesis, nodeID: NodeID(publicKey: key.publicKey), nodeKey: key.publicKey,
                                               roles: [.member, .sclerotiumEligible, .inviter], serial: UInt64(i),
                                               issuedAt: 1_800_000_000, validFor: 86_400)
        return (key, cert)
    }

    /// Members 1-4 admitted, 1-3 the sclerotia, one KV key: the state the tests back up.
    func sampleState() throws -> ControlState {
        var s = ControlState(network: network)
        var index: UInt64 = 0
        func apply(_ e: ControlEntry) throws { index += 1; _ = try s.apply(Entry(term: 2, index: index, data: e.encoded())) }
        for i: UInt8 in 1...4 {
            let (key, cert) = member(i)
            try apply(.spore(SignedCommand(.admit(cert), author: cert.nodeID, key: key, network: network.id), millis: t0))
        }
        let (k1, c1) = member(1)
        let scl = (1...3).map { member(UInt8($0)).1.nodeID }
        try apply(.spore(SignedCommand(.setSclerotia(scl), author: c1.nodeID, key: k1, network: network.id), millis: t0 + 1000))
        try apply(.kv(KVBatch([.put(key: Array("drill".utf8), value: Array("before".utf8), prevKV: false)])))
        XCTAssertEqual(Set(s.spore.sclerotia), Set(scl))
        return s
    }

    func backup(_ s: ControlState, signer i: UInt8 = 4) -> BackupFile {
        let (key, cert) = member(i)
        return BackupFile(network: network, index: s.appliedIndex, term: 2, takenAtMillis: t0 + 5000, snapshot: s.snapshot(), signer: cert, key: key)
    }

    func testABackupRoundTripsVerifiesAndSaysWhatItHolds() throws {
        let s = try sampleState()
        let b = backup(s)
        let decoded = try BackupFile(decoding: b.encoded())
        XCTAssertEqual(decoded, b)
        XCTAssertEqual(try decoded.verify(), s)
        let c = BackupContents(decoded, s)
        XCTAssertEqual(c.network, network.id)
        XCTAssertEqual(c.index, s.appliedIndex)
        XCTAssertEqual(c.members.count, 4)
        XCTAssertEqual(c.members.filter(\.sclerotium).count, 3)
        XCTAssertEqual(c.kvKeys, 1)
        XCTAssertEqual([c.vms, c.services, c.volumes], [0, 0, 0])
    }

    func testDamagedTruncatedAndAlteredBackupsAreRefused() throws {
        let bytes = backup(try sampleState()).encoded()
        // Any flipped byte: the checksum catches it.
        for at in stride(from: 0, to: bytes.count, by: max(1, bytes.count / 97)) {
            var bad = bytes; bad[at] ^= 0x40
            XCTAssertThrowsError(try BackupFile(decoding: bad)) { e in
                XCTAssertTrue([BackupError.Code.checksum].contains((e as? BackupError)?.code) || at < 4, "byte \(at): \(e)")
            }
        }
        // Every prefix: refused, never a crash.
        for cut in 0..<bytes.count where cut % 7 == 0 || cut > bytes.count - 100 {
            XCTAssertThrowsError(try BackupFile(decoding: Array(bytes.prefix(cut))))
        }
        // Altered on purpose (the checksum recomputed): the signature catches it.
        var altered = Array(bytes.dropLast(32))
        let snapshotAt = 4 + 2 + 32 + 8 + 8 + 8 + 4 + 10
        altered[snapshotAt] ^= 1
        altered += Sodium.hash(altered, domain: "mycelium/backup-checksum")
        let decoded = try BackupFile(decoding: altered)
        XCTAssertThrowsError(try decoded.verify()) { e in
            guard case .signature? = (e as? BackupError)?.code else { return XCTFail("\(e)") }
        }
    }

    func testABackupSignedByAnotherNetworksMemberIsRefused() throws {
        let s = try sampleState()
        let other = SigningKey(seed: Array(repeating: 9, count: 32))
        let (key, cert) = member(4, genesis: other)
        let b = BackupFile(network: network, index: s.appliedIndex, term: 2, takenAtMillis: t0, snapshot: s.snapshot(), signer: cert, key: key)
        XCTAssertThrowsError(try BackupFile(decoding: b.encoded()).verify()) { e in
            guard case .signature? = (e as? BackupError)?.code else { return XCTFail("\(e)") }
        }
    }

    func testARestoreMakesTheNodeTheOnlySclerotiumFarPastEveryIndexItKnows() throws {
        let s = try sampleState()
        let b = backup(s)
        let me = member(4).1.nodeID
        let plan = try DisasterRestore.plan(backup: b, state: s, node: me, nodeNetwork: network.id,
                                            local: LocalRaftState(state: s, lastIndex: s.appliedIndex + 40, term: 7),
                                            seenIndexes: [s.appliedIndex + 90], nowMillis: t0 + 3_600_000, force: false)
        XCTAssertEqual(plan.snapshot.metadata.index, s.appliedIndex + 90 + DisasterRestore.indexGap)
        XCTAssertEqual(plan.snapshot.metadata.term, 7)
        XCTAssertEqual(plan.hardState.commit, plan.snapshot.metadata.index)
        XCTAssertEqual(plan.snapshot.metadata.confState.voters, [me.compact])
        XCTAssertEqual(plan.snapshot.metadata.confState.learners, [], "the other members were the lost sclerotia")
        XCTAssertEqual(Set(plan.lost), Set((1...3).map { member(UInt8($0)).1.nodeID }))
        let restored = try ControlState.restore(plan.snapshot.data, network: network)
        XCTAssertEqual(restored.spore.sclerotia, [me])
        for id in plan.lost { XCTAssertEqual(restored.spore.members[id]?.status, .failed) }
        XCTAssertEqual(restored.spore.members[me]?.status, .alive)
        XCTAssertGreaterThan(restored.spore.members[me]!.expiresAt, (t0 + 3_600_000) / 1000, "a fresh timeframe from the restore")
        XCTAssertEqual(restored.kv.count, 1)
        XCTAssertEqual(restored.appliedIndex, plan.snapshot.metadata.index)
    }

    func testRestoreRefusesAnotherNetworkANonMemberAndAnOlderBackupUnlessForced() throws {
        let s = try sampleState()
        let b = backup(s)
        let me = member(4).1.nodeID
        let otherNet = NetworkIdentity(genesisKey: SigningKey(seed: Array(repeating: 9, count: 32)).publicKey).id
        XCTAssertThrowsError(try DisasterRestore.plan(backup: b, state: s, node: me, nodeNetwork: otherNet, local: nil, nowMillis: t0, force: true)) { e in
            guard case .wrongNetwork? = (e as? BackupError)?.code else { return XCTFail("\(e)") }
        }
        let stranger = member(5).1.nodeID
        XCTAssertThrowsError(try DisasterRestore.plan(backup: b, state: s, node: stranger, nodeNetwork: network.id, local: nil, nowMillis: t0, force: true)) { e in
            XCTAssertTrue("\(e)".contains("not a member in the backup"), "\(e)")
        }
        // The node holds a KV write the backup lacks: refused, and the message says what to do.
        var newer = s
        _ = try newer.apply(Entry(term: 3, index: s.appliedIndex + 1, data: ControlEntry.kv(KVBatch([.put(key: [1], value: [2], prevKV: false)])).encoded()))
        let local = LocalRaftState(state: newer, lastIndex: newer.appliedIndex, term: 3)
        XCTAssertThrowsError(try DisasterRestore.plan(backup: b, state: s, node: me, nodeNetwork: network.id, local: local, nowMillis: t0, force: false)) { e in
            XCTAssertTrue("\(e)".contains("KV revision"), "\(e)")
            XCTAssertTrue("\(e)".contains("--force"), "\(e)")
        }
        XCTAssertNoThrow(try DisasterRestore.plan(backup: b, state: s, node: me, nodeNetwork: network.id, local: local, nowMillis: t0, force: true))
        // Only refreshes since the backup (the spore moved on, nothing else): not newer.
        XCTAssertNil(DisasterRestore.newerChanges(local: s, backup: s))
        // A member sent an older state than its own (a forced restore of an older backup) notices.
        XCTAssertNotNil(DisasterRestore.heldNewer(local: newer, incoming: s))
        XCTAssertNil(DisasterRestore.heldNewer(local: s, incoming: newer), "a lagging member catching up is not a restore")
    }

    func testASeedSporeAloneRestoresTheMembersWithEmptyTables() throws {
        let s = try sampleState()
        let seed = ControlState(seed: s.spore)
        XCTAssertEqual(seed.kv.count, 0)
        XCTAssertEqual(seed.spore, s.spore)
        let me = member(4).1.nodeID
        // This node held a KV write: restoring membership only would lose it, so it needs --force.
        XCTAssertThrowsError(try DisasterRestore.plan(network: network.id, index: s.spore.epoch.index, term: s.spore.epoch.term, state: seed,
                                                      node: me, nodeNetwork: network.id, local: LocalRaftState(state: s, lastIndex: s.appliedIndex, term: 2),
                                                      nowMillis: t0, force: false))
        let plan = try DisasterRestore.plan(network: network.id, index: s.spore.epoch.index, term: s.spore.epoch.term, state: seed,
                                            node: me, nodeNetwork: network.id, local: nil, nowMillis: t0, force: false)
        let restored = try ControlState.restore(plan.snapshot.data, network: network)
        XCTAssertEqual(restored.spore.sclerotia, [me])
        XCTAssertEqual(restored.spore.members.count, 4)
    }

    func testRetentionPrunesTheOldestScheduledBackupsOnly() {
        let names = (1...7).map { BackupRetention.fileName(takenAtMillis: t0 + Int64($0) * 43_200_000, index: UInt64(100 * $0)) }
        XCTAssertEqual(names, names.sorted(), "names sort by time")
        XCTAssertEqual(BackupRetention.takenAt(fileName: names[2]), t0 + 3 * 43_200_000)
        XCTAssertNil(BackupRetention.takenAt(fileName: "notes.txt"))
        let dir = names.shuffled() + ["manual.mbk", "notes.txt", ".tmp-x"]
        XCTAssertEqual(BackupRetention.prune(dir, keep: 5), Array(names.prefix(2)))
        XCTAssertEqual(BackupRetention.prune(dir, keep: 10), [])
        XCTAssertEqual(BackupRetention.prune(dir, keep: 0), names)
        XCTAssertTrue(BackupRetention.due(lastMillis: nil, nowMillis: t0, intervalMillis: 1000))
        XCTAssertFalse(BackupRetention.due(lastMillis: t0, nowMillis: t0 + 999, intervalMillis: 1000))
        XCTAssertTrue(BackupRetention.due(lastMillis: t0, nowMillis: t0 + 1000, intervalMillis: 1000))
        XCTAssertTrue(BackupRetention.due(lastMillis: t0, nowMillis: t0 - 5, intervalMillis: 1000), "a clock set back does not stop backups")
    }
}
