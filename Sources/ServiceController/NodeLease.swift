// The lease that lets a node run singleton instances (services with one replica): renewed through
// Raft while the node runs one, trusted only from renewals this run of the agent sent, counted from
// when each was sent (the VM controller's rule, VMController.swift, for the same reason: a restarted
// agent re-applying its old renewals must not take them for fresh ones).
//
// A node cut off from the leader stops renewing successfully; once `ttl − margin` has passed since
// its last renewal that applied, its reconciler stops its singleton instances. The leader moves a
// singleton off a node only after the node's lease ended in control time plus `slackMillis`
// (ServiceRules.nodes), so the old copy has stopped before the new one starts: the two are apart by
// at least margin + slack − the clock errors, as for VMs.

import MyceliumControl
import MyceliumIdentity
import MyceliumSpores

public struct NodeLease: Sendable, Equatable {
    public static func name(_ node: NodeID) -> String { ServiceTable.leasePrefix + "\(node)" }

    public var ttlSeconds: UInt32 = 2
    public var renewEveryMillis: UInt64 = 500
    public var marginMillis: Int64 = 500
    /// This run's token: renewals carry `run + n`.
    let run: UInt64
    var sent: UInt64 = 0
    var pending: [UInt64: UInt64] = [:]
    var lastRenewal: UInt64?
    /// Until when (`ControllerContext.millis`) the lease is certainly this node's.
    public private(set) var trustedUntil: UInt64 = 0

    public init(run: UInt64) { self.run = run }

    public func valid(at now: UInt64) -> Bool { now < trustedUntil }

    /// A renewal if one is due.
    public mutating func renewal(node: NodeID, now: UInt64) -> SporeCommand? {
        if let last = lastRenewal, now < last + renewEveryMillis { return nil }
        lastRenewal = now
        pending = pending.filter { now < $0.value + UInt64(ttlSeconds) * 1000 }
        sent += 1
        let nonce = run &+ sent
        pending[nonce] = now
        return .renewLease(name: Self.name(node), ttlSeconds: ttlSeconds, run: nonce)
    }

    /// A spore command applied: one of this run's renewals extends the trust.
    public mutating func applied(_ s: SignedCommand, node: NodeID, spore: PrimarySpore) {
        guard case .renewLease(let lease, let ttl, let nonce) = s.command, s.author == node, lease == Self.name(node),
              let sentAt = pending.removeValue(forKey: nonce), spore.leases[lease]?.holder == node else { return }
        let left = Int64(ttl) * 1000 - marginMillis
        if left > 0 { trustedUntil = max(trustedUntil, sentAt + UInt64(left)) }
    }
}
