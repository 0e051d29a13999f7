// The replica journal on disk (Endophyte's `ReplicaJournal`): HOME/vms/NAME.replica says which
// replication epoch the replica's image holds and with which device state, so an agent restarted
// while its standby QEMU (or its image file) lived on keeps a committed epoch it can resume, not
// only a base for a resync. The image changes only between `invalidate` (the file goes) and
// `record` (the file comes back): a crash in between leaves no file, and the image counts as a base.
//
// Written atomically and checksummed, without fsync (`durable: false`): the image it describes is
// in a QEMU's RAM or the page cache, so a power loss takes the image too. Ten writes a second of a
// device state (a few hundred KiB at most) cost page-cache copies, not disk flushes.

import Endophyte
import MyceliumCore

final class ReplicaStateFile: ReplicaJournal, @unchecked Sendable {
    // SAFETY (Sendable): `failed` is guarded by `lock`; the rest is immutable.
    let path: String
    /// The VM's ownership epoch this replica holds its image for.
    let ownershipEpoch: UInt64
    let onError: @Sendable (String) -> Void
    private let lock = PthreadLock()
    private var failed = false

    init(path: String, ownershipEpoch: UInt64, onError: @escaping @Sendable (String) -> Void) {
        self.path = path
        self.ownershipEpoch = ownershipEpoch
        self.onError = onError
    }

    func invalidate() {
        do { try AtomicFile.remove(path, durable: false) } catch let removal {
            // The file cannot go: overwrite it with a record nobody accepts (epoch 0).
            do { try write(epoch: 0, deviceState: []) } catch {
                noteFailure("cannot remove \(path) (\(removal)) nor overwrite it: \(error); after an agent restart now, this replica would offer an image it may be changing")
            }
        }
    }

    func record(epoch: UInt64, deviceState: [UInt8]) {
        do { try write(epoch: epoch, deviceState: deviceState) } catch {
            noteFailure("cannot record the replica's committed epoch in \(path): \(error); after an agent restart its image is only a base for a resync")
        }
    }

    private func write(epoch: UInt64, deviceState: [UInt8]) throws(FileError) {
        try ChecksummedFile.write(kind: FileKind.vmReplicaState,
                                  payload: ReplicaJournalRecord(ownershipEpoch: ownershipEpoch, epoch: epoch, deviceState: deviceState).encoded(),
                                  to: path, mode: 0o600, durable: false)
        lock.withLock { failed = false }
    }

    /// Reported once per run of failures, not ten times a second.
    private func noteFailure(_ what: String) {
        let first = lock.withLock { () -> Bool in
            defer { failed = true }
            return !failed
        }
        if first { onError(what) }
    }

    /// The committed epoch the file records for ownership epoch `ownershipEpoch`, or nil (no file, a
    /// damaged one, another ownership epoch, or an invalidated record), with why for the operator.
    static func read(path: String, ownershipEpoch: UInt64) -> (committed: (epoch: UInt64, deviceState: [UInt8])?, why: String) {
        guard AtomicFile.exists(path) else { return (nil, "no committed epoch recorded (none yet, or the agent stopped while applying one)") }
        do {
            let s = try ReplicaJournalRecord(decoding: ChecksummedFile.read(kind: FileKind.vmReplicaState, from: path))
            guard s.ownershipEpoch == ownershipEpoch else { return (nil, "recorded for ownership epoch \(s.ownershipEpoch), not \(ownershipEpoch)") }
            guard s.epoch > 0, !s.deviceState.isEmpty else { return (nil, "the record was invalidated") }
            return ((s.epoch, s.deviceState), "replication epoch \(s.epoch)")
        } catch {
            return (nil, "unreadable: \(error)")
        }
    }
}
