// Backups of the control state, and the rules of a restore after every sclerotium is lost.
//
//   BackupFile      the file format (`mycelium backup create/verify/restore`): a header with the
//                   network's genesis key and the Raft index/term the state reflects, the control
//                   state's own snapshot bytes, the taking node's certificate and signature, and a
//                   BLAKE2b checksum of everything before it;
//   BackupContents  what a verified backup holds (printed by `verify`);
//   BackupRetention which files of a backup directory to prune;
//   DisasterRestore whether a restore may go ahead on a node, and the Raft state it starts from.
//
// All pure: no clock (times are parameters), no file, no socket. The agent (taking backups) and the
// CLI (verify, restore) do the I/O. docs/BACKUP.md is the operator's side of this file.

import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores

public struct BackupError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// Not a backup, truncated, or a field out of bounds.
        case malformed(String)
        /// The checksum does not match: the file was damaged (or edited) after it was written.
        case checksum
        /// The signature or the signer's certificate does not verify.
        case signature(String)
        /// A backup of another network than the node's.
        case wrongNetwork(backup: NetworkID, node: NetworkID)
        /// A restore that would lose state a live node holds, or that this node may not do.
        case refused(String)
    }
    public let code: Code
    public init(_ code: Code) { self.code = code }
    public var description: String {
        switch code {
        case .malformed(let s): return "not a readable Mycelium backup: \(s)"
        case .checksum: return "the backup's checksum does not match: the file was damaged or altered after it was written; use another backup"
        case .signature(let s): return "the backup's signature does not verify (\(s)): it was altered or not written by a member of its network; use another backup"
        case let .wrongNetwork(backup, node):
            return "the backup is of network \(backup), this node is in \(node): restore it on a node of \(backup)"
        case .refused(let s): return "restore refused: \(s)"
        }
    }
}

/// A backup file: `MYBK`, format version, the network's genesis key, the Raft index and term the
/// state reflects, when it was taken (Unix ms), the control-state snapshot, the signer's certificate,
/// an Ed25519 signature by the signer's node key over all of that, and a 32-byte BLAKE2b checksum of
/// everything before it.
public struct BackupFile: Sendable, Equatable {
    static let magic: [UInt8] = Array("MYBK".utf8)
    static let version: UInt16 = 1
    static let domain: [UInt8] = Array("mycelium/backup/v1\0".utf8)
    static let checksumDomain = "mycelium/backup-checksum"
    /// The largest snapshot a backup may carry (the control state's KV is bounded well below this).
    public static let maxSnapshotBytes = 1 << 31

    public let network: NetworkIdentity
    public let index: UInt64
    public let term: UInt64
    public let takenAtMillis: Int64
    public let snapshot: [UInt8]
    public let signer: MembershipCertificate
    public let signature: [UInt8]

    /// Signs a snapshot of `network`'s control state taken at Raft `index`/`term`.
    public init(network: NetworkIdentity, index: UInt64, term: UInt64, takenAtMillis: Int64, snapshot: [UInt8],
                signer: MembershipCertificate, key: SigningKey) {
        self.network = network; self.index = index; self.term = term; self.takenAtMillis = takenAtMillis
        self.snapshot = snapshot; self.signer = signer
        self.signature = key.sign(Self.domain + Self.body(network: network, index: index, term: term, at: takenAtMillis,
                                                          snapshot: snapshot, signer: signer.encoded()))
    }

    static func body(network: NetworkIdentity, index: UInt64, term: UInt64, at: Int64, snapshot: [UInt8], signer: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: snapshot.count + signer.count + 96)
        w.raw(magic); w.u16(version); w.raw(network.genesisKey.bytes); w.u64(index); w.u64(term); w.i64(at)
        w.blob(snapshot); w.blob(signer)
        return w.bytes
    }

    public func encoded() -> [UInt8] {
        var bytes = Self.body(network: network, index: index, term: term, at: takenAtMillis, snapshot: snapshot, signer: signer.encoded())
        bytes += signature
        bytes += Sodium.hash(bytes, domain: Self.checksumDomain)
        return bytes
    }

    /// Decodes the format and checks the checksum; `verify()` then checks what the bytes claim.
    public init(decoding bytes: [UInt8]) throws(BackupError) {
        guard bytes.count >= 4 + 2 + 32 + 24 + 8 + 64 + 32 else { throw BackupError(.malformed("\(bytes.count) bytes is too short for a backup")) }
        guard Array(bytes.prefix(4)) == Self.magic else { throw BackupError(.malformed("no MYBK header (is this a backup file?)")) }
        let content = Array(bytes.dropLast(32))
        guard Sodium.hash(content, domain: Self.checksumDomain) == Array(bytes.suffix(32)) else { throw BackupError(.checksum) }
        do {
            var r = ByteReader(content)
            _ = try r.raw(4)
            let v = try r.u16()
            guard v == Self.version else {
                throw BackupError(.malformed("backup format \(v); this build reads \(Self.version): use a newer mycelium"))
            }
            network = NetworkIdentity(genesisKey: try PublicKey(bytes: r.raw(32)))
            index = try r.u64()
            term = try r.u64()
            takenAtMillis = try r.i64()
            snapshot = try r.blob("snapshot", limit: Self.maxSnapshotBytes)
            let signerBytes = try r.blob("signer", limit: MembershipCertificate.maxEncodedSize)
            signature = try r.raw(64)
            try r.finish()
            do { signer = try MembershipCertificate(decoding: signerBytes) } catch {
                throw BackupError(.malformed("signer's certificate: \(error)"))
            }
        } catch let e as BackupError {
            throw e
        } catch {
            throw BackupError(.malformed("\(error)"))
        }
    }

    /// Checks the signature, that the signer was a member of the network the backup holds (its
    /// certificate verified against that state's sclerotia chain at the time the backup was taken),
    /// and that the snapshot restores; returns the state.
    public func verify() throws(BackupError) -> ControlState {
        guard signer.networkID == network.id else {
            throw BackupError(.signature("signed by a member of network \(signer.networkID), not \(network.id)"))
        }
        let signed = Self.domain + Self.body(network: network, index: index, term: term, at: takenAtMillis, snapshot: snapshot, signer: signer.encoded())
        guard signer.nodeKey.verify(signature, for: signed) else { throw BackupError(.signature("signature by \(signer.nodeID)")) }
        let state: ControlState
        do { state = try ControlState.restore(snapshot, network: network) } catch {
            throw BackupError(.malformed("the control state in it: \(error)"))
        }
        guard state.spore.members[signer.nodeID] != nil else {
            throw BackupError(.signature("signer \(signer.nodeID) is not a member of the state it signed"))
        }
        do { try signer.verify(chain: state.spore.chain, now: takenAtMillis / 1000) } catch {
            throw BackupError(.signature("signer's certificate: \(error)"))
        }
        return state
    }
}

/// What a verified backup holds, as `mycelium backup verify` prints it.
public struct BackupContents: Sendable, Equatable {
    public var network: NetworkID
    public var index: UInt64
    public var term: UInt64
    public var takenAtMillis: Int64
    public var signer: MyceliumIdentity.NodeID
    public var members: [(id: MyceliumIdentity.NodeID, status: String, sclerotium: Bool)]
    public var kvKeys: Int
    public var kvRevision: Int64
    public var vms: Int
    public var services: Int
    public var volumes: Int
    public var snapshotBytes: Int

    public init(_ file: BackupFile, _ state: ControlState) {
        network = file.network.id; index = file.index; term = file.term; takenAtMillis = file.takenAtMillis
        signer = file.signer.nodeID
        members = state.spore.members.values.sorted { $0.id < $1.id }
            .map { ($0.id, "\($0.status)", state.spore.sclerotia.contains($0.id)) }
        kvKeys = state.kv.count; kvRevision = state.kv.revision
        vms = state.vms.vms.count; services = state.services.services.count; volumes = state.volumes.volumes.count
        snapshotBytes = file.snapshot.count
    }

    public static func == (a: BackupContents, b: BackupContents) -> Bool {
        a.network == b.network && a.index == b.index && a.term == b.term && a.takenAtMillis == b.takenAtMillis && a.signer == b.signer
            && a.members.map(\.id) == b.members.map(\.id) && a.kvKeys == b.kvKeys && a.kvRevision == b.kvRevision
            && a.vms == b.vms && a.services == b.services && a.volumes == b.volumes && a.snapshotBytes == b.snapshotBytes
    }
}

/// Scheduled backups: names that sort by time, and which to prune (like `k3s etcd-snapshot`).
public enum BackupRetention {
    public static let prefix = "mycelium-backup-"
    public static let suffix = ".mbk"

    /// The file name of a scheduled backup taken at `millis` reflecting `index` (zero-padded, so names sort by time).
    public static func fileName(takenAtMillis millis: Int64, index: UInt64) -> String {
        let t = String(max(0, millis)), i = String(index)
        return prefix + String(repeating: "0", count: max(0, 15 - t.count)) + t + "-" + String(repeating: "0", count: max(0, 20 - i.count)) + i + suffix
    }

    /// When a scheduled backup's file was taken (Unix ms), or nil for another name.
    public static func takenAt(fileName name: String) -> Int64? {
        guard name.hasPrefix(prefix), name.hasSuffix(suffix) else { return nil }
        let stem = name.dropFirst(prefix.count).dropLast(suffix.count)
        guard let dash = stem.firstIndex(of: "-") else { return nil }
        return Int64(stem[..<dash])
    }

    /// Of the names in a backup directory, the scheduled backups to delete so `keep` newest remain.
    /// Other files (an operator's own copies, temporaries) are never chosen.
    public static func prune(_ names: [String], keep: Int) -> [String] {
        let ours = names.filter { $0.hasPrefix(prefix) && $0.hasSuffix(suffix) && !$0.contains("/") }.sorted()
        return Array(ours.dropLast(max(0, keep)))
    }

    /// Whether a scheduled backup is due: never taken, or `intervalMillis` since the last.
    public static func due(lastMillis: Int64?, nowMillis: Int64, intervalMillis: Int64) -> Bool {
        guard let last = lastMillis else { return true }
        return nowMillis >= last.saturatingAdding(max(1, intervalMillis)) || nowMillis < last
    }
}

/// What a node holds when a restore is asked of it: its control state rebuilt from its own Raft log,
/// and the highest index and term that log reached.
public struct LocalRaftState: Sendable {
    public var state: ControlState?
    public var lastIndex: UInt64
    public var term: UInt64
    public init(state: ControlState?, lastIndex: UInt64, term: UInt64) { self.state = state; self.lastIndex = lastIndex; self.term = term }
}

/// The rules of a restore after every sclerotium is lost.
///
/// The restoring node becomes the network's single sclerotium and Raft leader with the backup's
/// state. The members that are still alive keep their Raft logs, which may reach past the backup's
/// index (every member refreshes itself in the spore every few seconds). So the restored log starts
/// far beyond any index the lost network can have reached (`indexGap` past the highest the node knows
/// of): the leader has no entry to match with theirs, and each member installs the restored
/// snapshot instead of keeping a log that no longer agrees with the leader's.
public enum DisasterRestore {
    /// 2^32 entries: at etcd's pace on these machines (~3,600 writes/s) over 13 days of writes the lost
    /// network could have made after the highest index the restoring node knows of.
    public static let indexGap: UInt64 = 1 << 32

    public struct Plan: Sendable {
        /// The Raft snapshot the node starts from (its data is the rewritten control state).
        public var snapshot: Snapshot
        public var hardState: HardState
        /// The sclerotia of the backup that the restore records as failed.
        public var lost: [MyceliumIdentity.NodeID]
        /// Members that will rejoin the restored node (learners of its Raft group).
        public var members: [MyceliumIdentity.NodeID]
    }

    /// Why `local` holds changes `backup` lacks (nil: it does not). Spore refreshes, trust and
    /// heartbeats move on all the time and are not counted; KV writes and the VM, service and volume
    /// tables are.
    public static func newerChanges(local: ControlState, backup: ControlState) -> String? {
        var lost: [String] = []
        if local.kv.revision > backup.kv.revision {
            lost.append("KV revision \(local.kv.revision) > the backup's \(backup.kv.revision)")
        }
        func diff(_ what: String, _ l: Set<String>, _ b: Set<String>) {
            let added = l.subtracting(b).sorted(), removed = b.subtracting(l).sorted()
            if !added.isEmpty { lost.append("\(what) \(added.joined(separator: ", ")) not in the backup") }
            if !removed.isEmpty { lost.append("\(what) \(removed.joined(separator: ", ")) deleted since the backup") }
        }
        diff("VMs", Set(local.vms.vms.keys), Set(backup.vms.vms.keys))
        diff("services", Set(local.services.services.keys), Set(backup.services.services.keys))
        diff("volumes", Set(local.volumes.volumes.keys), Set(backup.volumes.volumes.keys))
        return lost.isEmpty ? nil : lost.joined(separator: "; ")
    }

    /// Why a member's state is newer than a snapshot its leader sent (nil: it is not). In one Raft
    /// history a snapshot never goes back, so only a restore from an older backup can make the KV
    /// revision fall; the tables cannot tell direction by their names, so only the KV is compared.
    public static func heldNewer(local: ControlState, incoming: ControlState) -> String? {
        local.kv.revision > incoming.kv.revision
            ? "this node held KV revision \(local.kv.revision), the restored state has \(incoming.kv.revision)" : nil
    }

    /// Checks that `node` of `nodeNetwork` may restore `backup` (whose verified state is `state`)
    /// and computes the Raft state it starts from. `local` is what the node's own Raft log holds;
    /// `seenIndexes` are the Raft indexes of other evidence of the lost network (seed spores).
    /// `force` accepts losing changes the node holds that the backup lacks.
    public static func plan(backup: BackupFile, state: ControlState, node: MyceliumIdentity.NodeID, nodeNetwork: NetworkID,
                            local: LocalRaftState?, seenIndexes: [UInt64] = [], nowMillis: Int64, force: Bool) throws(BackupError) -> Plan {
        try plan(network: backup.network.id, index: backup.index, term: backup.term, state: state, node: node, nodeNetwork: nodeNetwork,
                 local: local, seenIndexes: seenIndexes, nowMillis: nowMillis, force: force)
    }

    /// The same for a state from another source (a seed spore alone: `ControlState(seed:)`), which
    /// reflects Raft `index` and `term` of `network`.
    public static func plan(network: NetworkID, index backupIndex: UInt64, term backupTerm: UInt64, state: ControlState,
                            node: MyceliumIdentity.NodeID, nodeNetwork: NetworkID,
                            local: LocalRaftState?, seenIndexes: [UInt64] = [], nowMillis: Int64, force: Bool) throws(BackupError) -> Plan {
        guard network == nodeNetwork else { throw BackupError(.wrongNetwork(backup: network, node: nodeNetwork)) }
        guard let me = state.spore.members[node] else {
            let eligible = state.spore.members.values.filter { $0.roles.contains(.sclerotiumEligible) }.map { "\($0.id)" }.sorted()
            throw BackupError(.refused("this node (\(node)) is not a member in the backup; restore it on one of its sclerotium-eligible members: \(eligible.joined(separator: ", "))"))
        }
        guard me.roles.contains(.sclerotiumEligible) else {
            throw BackupError(.refused("this node (\(node)) may not be a sclerotium (its certificate lacks the role); restore on a sclerotium-eligible member"))
        }
        if me.status == .failed || me.status == .left || state.spore.revoked[node] != nil {
            throw BackupError(.refused("this node (\(node)) is \(state.spore.revoked[node] != nil ? "revoked" : "\(me.status)") in the backup; restore on a present member"))
        }
        if let local, let held = local.state, !force, let newer = newerChanges(local: held, backup: state) {
            throw BackupError(.refused("""
                this node's own state (Raft index \(local.lastIndex)) is newer than the backup (index \(backupIndex)): \(newer). \
                Restore a newer backup (take one with 'mycelium backup create' while a member still runs, or use the newest in backup_dir), \
                or pass --force to restore this one and lose those changes
                """))
        }
        let highest = ([backupIndex, state.appliedIndex, local?.lastIndex ?? 0] + seenIndexes).max() ?? 0
        let (index, overflow) = highest.addingReportingOverflow(indexGap)
        guard !overflow else { throw BackupError(.refused("Raft index \(highest) leaves no room for a restore")) }
        let term = max(backupTerm, local?.term ?? 0, 1)

        var restored = state
        let lost = restored.loseSclerotia(keeping: node, nowMillis: nowMillis, index: index, term: term)
        let members = restored.spore.presentMembers.map(\.id.compact).filter { $0 != node.compact }.sorted()
        let conf = ConfState(voters: [node.compact], learners: members)
        let snapshot = Snapshot(metadata: SnapshotMetadata(index: index, term: term, confState: conf), data: restored.snapshot())
        return Plan(snapshot: snapshot, hardState: HardState(term: term, vote: .none, commit: index), lost: lost,
                    members: restored.spore.presentMembers.map(\.id).filter { $0 != node })
    }
}

extension ControlState {
    /// The state a seed spore alone gives (no backup survived): its spore — the members, their roles
    /// and trust, the sclerotia chain — and an empty KV, VM, service, volume and pod-CIDR table.
    public init(seed spore: PrimarySpore) {
        self.init(network: spore.network)
        self.spore = spore
        appliedIndex = spore.epoch.index
        nowMillis = spore.now.saturatingMultiplied(by: 1000)
    }

    /// The state a restore starts from: `node` the only sclerotium, every other sclerotium failed,
    /// present members given a fresh timeframe (the backup may be hours old), at the restored index.
    mutating func loseSclerotia(keeping node: MyceliumIdentity.NodeID, nowMillis: Int64, index: UInt64, term: UInt64) -> [MyceliumIdentity.NodeID] {
        let lost = spore.restoreAfterLosingSclerotia(keeping: node, now: Self.seconds(nowMillis), epoch: SporeEpoch(term: term, index: index))
        appliedIndex = index
        self.nowMillis = max(self.nowMillis, nowMillis)
        return lost
    }
}
