// `mycelium backup restore`: brings a network back on one node after every sclerotium is lost
// (docs/BACKUP.md). The rules (which backups are refused, the Raft state the node starts from) are
// pure (MyceliumControl/Backup.swift, `DisasterRestore`); this file reads the node's home and writes
// its new Raft directory. The agent must be stopped: the restore replaces its Raft log.

import Foundation
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import MyceliumWAL

public enum DisasterRecovery {
    /// What a restore did, for the CLI to print.
    public struct Outcome: Sendable {
        /// What the backup held (nil: restored from a seed spore).
        public var contents: BackupContents?
        public var network: NetworkID
        /// The Raft index the restored state reflects (the backup's, or the seed spore's epoch).
        public var sourceIndex: UInt64
        public var plan: DisasterRestore.Plan
        /// Where the node's previous Raft directory was moved (nil: it had none).
        public var previousRaftDir: String?
    }

    /// Decodes and verifies a backup file's bytes.
    public static func verify(_ bytes: [UInt8]) throws(BackupError) -> (BackupFile, ControlState, BackupContents) {
        let file = try BackupFile(decoding: bytes)
        let state = try file.verify()
        return (file, state, BackupContents(file, state))
    }

    /// The control state and Raft position the node at `home` holds in its own Raft log (nil: no log).
    /// A snapshot of its own that cannot be read is an error: without it nobody can tell whether the
    /// restore would throw away newer state. With `force` (the operator accepts losing it) the state is
    /// nil and the Raft position is still read, so the restored log still starts past every index here.
    public static func localState(home: String, force: Bool = false) throws -> LocalRaftState? {
        let paths = AgentPaths(home: home)
        guard FileManager.default.fileExists(atPath: paths.raftDir),
              let names = try? FileManager.default.contentsOfDirectory(atPath: paths.raftDir), !names.isEmpty else { return nil }
        let (wal, recovery) = try WriteAheadLog.open(directory: paths.raftDir)
        wal.close()
        let storage = recovery.state
        var control: ControlState?
        var lastIndex = storage.snapshot?.metadata.index ?? 0
        var unreadable = false
        if let s = storage.snapshot, !s.data.isEmpty {
            do {
                control = try ControlState.restore(s.data, network: NetworkIdentity(genesisKey: try readCertificate(paths).genesisKey))
            } catch {
                guard force else {
                    throw AgentError("""
                        this node's own Raft snapshot (index \(s.metadata.index) in \(paths.raftDir)) cannot be read: \(error). \
                        Without it the restore cannot tell whether the backup is older than what this node holds; \
                        pass --force to restore anyway (the Raft directory is kept aside as raft.before-restore-TIME)
                        """)
                }
                unreadable = true
            }
        } else if let cert = try? readCertificate(paths) {
            control = ControlState(network: NetworkIdentity(genesisKey: cert.genesisKey))
        }
        for e in storage.entries {
            lastIndex = max(lastIndex, e.index)
            // Every entry in the log, committed or not as far as the disk knows (the WAL does not sync
            // the commit index on its own, so it lags): for the "newer than the backup" check, counting
            // a change that may not have committed only errs towards refusing, which --force overrides.
            // A refused entry changes nothing here, as on every replica (Agent.apply logs and skips it).
            if !unreadable && e.kind == .normal && e.index > (control?.appliedIndex ?? 0) {
                _ = try? control?.apply(e)
            }
        }
        return LocalRaftState(state: unreadable ? nil : control, lastIndex: lastIndex, term: storage.hardState.term)
    }

    static func readCertificate(_ paths: AgentPaths) throws -> MembershipCertificate {
        guard AtomicFile.exists(paths.nodeCert) else {
            throw AgentError("\(paths.nodeCert) is missing: restore on a member of the backup's network (its home holds node.key and node.cert)")
        }
        return try MembershipCertificate(decoding: ChecksummedFile.read(kind: FileKind.membershipCertificate, from: paths.nodeCert))
    }

    /// Restores `bytes` (a backup file) on the stopped node at `home`: checks the backup and the
    /// refusal rules, moves the node's Raft directory aside (HOME/raft.before-restore-MILLIS) and
    /// writes the restored one. Start myceliumd afterwards: the node leads the network alone, and the
    /// members that are alive rejoin it.
    public static func restore(_ bytes: [UInt8], home: String, force: Bool, nowMillis: Int64) throws -> Outcome {
        let paths = AgentPaths(home: home)
        let (file, state, contents) = try verify(bytes)
        let cert = try readCertificate(paths)
        let local = try localState(home: home, force: force)
        let plan = try DisasterRestore.plan(backup: file, state: state, node: cert.nodeID, nodeNetwork: cert.networkID,
                                            local: local, nowMillis: nowMillis, force: force)
        let previous = try install(plan, paths: paths, nowMillis: nowMillis)
        return Outcome(contents: contents, network: file.network.id, sourceIndex: file.index, plan: plan, previousRaftDir: previous)
    }

    /// Restores from a seed spore alone (when no backup survived): the membership comes back (members,
    /// roles, trust, the sclerotia chain), the KV and the VM, service and volume tables start empty.
    /// Accepts the file a leader writes to seed_dirs (checksummed) or `mycelium spore export`'s.
    public static func restore(seedSpore bytes: [UInt8], home: String, force: Bool, nowMillis: Int64) throws -> Outcome {
        let paths = AgentPaths(home: home)
        let cert = try readCertificate(paths)
        let payload = (try? ChecksummedFile.decode(bytes, kind: FileKind.seedSpore, path: "seed spore")) ?? bytes
        let seed = try SeedSpore(verifying: payload, network: cert.networkID, knownEpoch: nil, now: nowMillis / 1000)
        let state = ControlState(seed: seed.spore)
        let local = try localState(home: home, force: force)
        let plan = try DisasterRestore.plan(network: seed.spore.network.id, index: seed.epoch.index, term: seed.epoch.term, state: state,
                                            node: cert.nodeID, nodeNetwork: cert.networkID, local: local, nowMillis: nowMillis, force: force)
        let previous = try install(plan, paths: paths, nowMillis: nowMillis)
        return Outcome(contents: nil, network: seed.spore.network.id, sourceIndex: seed.epoch.index, plan: plan, previousRaftDir: previous)
    }

    /// Moves HOME/raft aside and writes the plan's Raft state in its place.
    static func install(_ plan: DisasterRestore.Plan, paths: AgentPaths, nowMillis: Int64) throws -> String? {
        var previous: String?
        if FileManager.default.fileExists(atPath: paths.raftDir) {
            let aside = paths.raftDir + ".before-restore-\(nowMillis)"
            guard rename(paths.raftDir, aside) == 0 else {
                throw AgentError("cannot move \(paths.raftDir) aside to \(aside): \(String(cString: strerror(errno)))")
            }
            try AtomicFile.syncDirectory(paths.home)
            previous = aside
        }
        try AtomicFile.makeDirectory(paths.raftDir)
        let (wal, _) = try WriteAheadLog.open(directory: paths.raftDir)
        defer { wal.close() }
        try wal.save(hardState: plan.hardState, entries: [], snapshot: plan.snapshot)
        return previous
    }
}
