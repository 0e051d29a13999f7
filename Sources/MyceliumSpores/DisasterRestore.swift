// The spore's side of a restore after every sclerotium is lost (MyceliumControl/Backup.swift).
//
// A restore is not a command any member signs: the lost sclerotia cannot sign, and the operator's
// act (restoring a verified, signed backup on a member's home) is the authority. So it rewrites the
// spore directly, before the restored node's Raft log begins, and every member that rejoins
// receives the rewritten state in the restored node's snapshot.

import MyceliumCore
import MyceliumIdentity

extension PrimarySpore {
    /// Makes `node` the only sclerotium: every other sclerotium is recorded failed (it was lost with
    /// its home), the present members get a fresh timeframe from `now` (the backup may be old, and
    /// they must have time to refresh before `expire` suspects them), and the epoch moves to `epoch`.
    /// Returns the sclerotia recorded failed.
    public mutating func restoreAfterLosingSclerotia(keeping node: NodeID, now: Int64, epoch: SporeEpoch) -> [NodeID] {
        self.now = max(self.now, now)
        let lost = sclerotia.filter { $0 != node }
        for id in lost {
            guard var m = members[id] else { continue }
            m.status = .failed
            m.since = self.now
            members[id] = m
        }
        for (id, m) in members where m.status == .alive || m.status == .suspect {
            members[id]!.status = .alive
            members[id]!.expiresAt = self.now.saturatingAdding(limits.memberTimeframe)
        }
        sclerotia = [node]
        approvedSclerotia = approvedSclerotia.filter { $0 == node }
        pendingLink = nil
        proposeLinkIfChanged()
        if epoch > self.epoch { self.epoch = epoch }
        return lost
    }
}
