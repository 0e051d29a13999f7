// Backups of the control state (docs/BACKUP.md): the signed file `GET /v1/backup` answers and
// `mycelium backup create` writes, and the scheduled backups every node with `backup_dir` takes.
// The format and the retention rule are pure (MyceliumControl/Backup.swift); this is the I/O.

import Foundation
import MyceliumControl
import MyceliumCore

extension Agent {
    /// A backup of the state this agent has applied: every entry in it is committed, and the actor
    /// takes the snapshot between two applies, so it is one consistent point of the log.
    func takeBackup() -> BackupFile {
        let index = control.appliedIndex
        let term = raft.term(at: raft.appliedIndex) ?? raft.term
        return BackupFile(network: network, index: index, term: term, takenAtMillis: Self.wallMillis(),
                          snapshot: control.snapshot(), signer: certificate, key: key)
    }

    /// Takes a scheduled backup when one is due, then prunes the oldest beyond `backup_keep`.
    /// Every node with `backup_dir` set takes them (a member holds the committed state as a
    /// sclerotium does), so the operator chooses where copies live by where they set it.
    func scheduledBackup() {
        guard !config.backupDir.isEmpty, spore.members[nodeID] != nil, control.appliedIndex > 0 else { return }
        let dir = config.backupDir, keep = config.backupKeep
        if lastBackupMillis == nil {
            // After a restart, count from the newest backup already there.
            let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
            lastBackupMillis = names.compactMap(BackupRetention.takenAt(fileName:)).max() ?? 0
        }
        let now = Self.wallMillis()
        guard BackupRetention.due(lastMillis: lastBackupMillis, nowMillis: now, intervalMillis: Int64(config.backupIntervalSeconds) * 1000) else { return }
        lastBackupMillis = now
        let backup = takeBackup()
        let bytes = backup.encoded()
        let path = dir + "/" + BackupRetention.fileName(takenAtMillis: backup.takenAtMillis, index: backup.index)
        Task.detached { [logger] in
            do {
                try AtomicFile.makeDirectory(dir)
                try AtomicFile.write(bytes, to: path, mode: 0o600)
                logger.info("scheduled backup written", metadata: ["file": "\(path)", "index": "\(backup.index)"])
                let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
                for old in BackupRetention.prune(names, keep: keep) {
                    try? AtomicFile.remove(dir + "/" + old)
                }
            } catch {
                logger.warning("cannot write a scheduled backup; check backup_dir", metadata: ["file": "\(path)", "error": "\(error)"])
            }
        }
    }

    /// A member that receives a restored state older than its own (the network was restored from an
    /// older backup, with --force or on a node that did not know) keeps what it held as a backup file
    /// it signs itself, and says so: nothing a live member held is lost without a trace.
    func keepStateIfNewer(than restored: ControlState) {
        guard let why = DisasterRestore.heldNewer(local: control, incoming: restored) else { return }
        let backup = takeBackup()
        let path = paths.home + "/backup-before-restore-\(backup.index).mbk"
        do {
            try AtomicFile.write(backup.encoded(), to: path, mode: 0o600)
            logger.warning("""
                the leader's snapshot is older than this node's state (\(why)): the network was restored from an older \
                backup. This node's state is kept in \(path); 'mycelium backup verify \(path)' shows it, and \
                'mycelium backup restore --force' on a stopped member brings it back
                """)
            note("restored state older than this node's (\(why)); kept it in \(path)")
        } catch {
            logger.error("the leader's snapshot is older than this node's state (\(why)) and it cannot be kept", metadata: ["file": "\(path)", "error": "\(error)"])
        }
    }
}
