// Trust scores: bounded integers (parts per million), changed only by deterministic operations
// applied in Raft log order, so every node holds bit-identical scores. No floating point anywhere.

import MyceliumCore
import MyceliumIdentity

/// The knobs of the trust model. All arithmetic is integer; divisors express fractions.
public struct TrustParameters: Sendable, Hashable {
    /// Scores live in 0...maximum (1_000_000 = full trust).
    public var maximum: UInt64 = 1_000_000
    /// A new node's score. Low, so a Sybil flood starts with little weight and below every
    /// threshold except routine health.
    public var initial: UInt64 = 100_000
    /// A correct vote (the node is in a round's decision certificate) closes 1/divisor of the gap to the maximum.
    public var participationGainDivisor: UInt64 = 64
    /// An epoch of uptime closes 1/divisor of the gap to the maximum.
    public var uptimeGainDivisor: UInt64 = 256
    /// Each epoch, scores above `initial` lose 1/divisor of the excess: trust must keep being earned.
    public var decayDivisor: UInt64 = 512
    /// Jail (ineligible to vote) after a provable double-sign-class offence, doubled per prior offence.
    public var baseJailEpochs: UInt64 = 16
    public var maxJailEpochs: UInt64 = 1024

    public init() {}

    /// The fraction of the score kept after an offence, as (numerator, denominator).
    public func kept(after offence: Offence) -> (UInt64, UInt64) {
        switch offence {
        case .equivocation, .badReveal: return (1, 4)  // deliberate lies: cut 75%
        case .wrongResult: return (1, 2)               // a wrong verifiable answer: cut 50%
        case .withheldReveal: return (7, 8)            // may be a partition: cut 12.5%, no jail
        }
    }

    func jails(_ offence: Offence) -> Bool { offence != .withheldReveal }
}

/// One node's standing.
public struct TrustRecord: Sendable, Hashable {
    public internal(set) var score: UInt64
    public internal(set) var admittedAtEpoch: UInt64
    /// Ineligible to vote while `epoch < jailedUntil`.
    public internal(set) var jailedUntil: UInt64 = 0
    public internal(set) var offences: UInt64 = 0
}

/// A slashing that was applied.
public struct SlashRecord: Sendable, Hashable {
    public let key: OffenceKey
    public let scoreBefore: UInt64
    public let scoreAfter: UInt64
    public let jailedUntil: UInt64
}

/// Every node's trust, as replicated in the primary spore.
///
/// Rises slowly (each correct vote closes 1/64 of the gap to the maximum), falls sharply (an
/// equivocation keeps a quarter), decays above the new-node level, and recovers along a defined path:
/// a jailed node sits out `baseJailEpochs·2^(offences-1)` epochs, then starts voting again in
/// routine-health rounds, whose correct votes raise it back over the admission and
/// failure-confirmation thresholds. Every operation is a pure function of the ledger and its
/// arguments, applied in Raft order.
public struct TrustLedger: Sendable, Hashable {
    public let parameters: TrustParameters
    public internal(set) var epoch: UInt64 = 0
    public internal(set) var records: [NodeID: TrustRecord] = [:]
    /// Offences already slashed: a second proof of the same offence changes nothing.
    public internal(set) var slashed: Set<OffenceKey> = []
    /// Rounds whose participation was already credited.
    public internal(set) var credited: Set<RoundID> = []

    public init(parameters: TrustParameters = TrustParameters()) { self.parameters = parameters }

    public func score(of node: NodeID) -> UInt64 { records[node]?.score ?? 0 }
    public func isJailed(_ node: NodeID) -> Bool { (records[node]?.jailedUntil ?? 0) > epoch }

    /// Adds a node at the initial score (or `score`, for the founding members of a new network).
    public mutating func admit(_ node: NodeID, score: UInt64? = nil) {
        guard records[node] == nil else { return }
        records[node] = TrustRecord(score: min(score ?? parameters.initial, parameters.maximum), admittedAtEpoch: epoch)
    }

    public mutating func remove(_ node: NodeID) { records[node] = nil }

    /// Credits every signer of a verified decision certificate, once per round.
    public mutating func creditCorrectVotes(_ certificate: DecisionCertificate, spec: RoundSpec) throws(VoteError) {
        guard !credited.contains(spec.id) else { return }
        try certificate.verify(spec: spec)
        credited.insert(spec.id)
        for e in certificate.entries {
            let id = spec.voters[Int(e.voterIndex)].id
            guard var r = records[id], r.jailedUntil <= epoch else { continue }
            r.score += (parameters.maximum - r.score) / parameters.participationGainDivisor
            records[id] = r
        }
    }

    /// Credits an epoch of uptime to `nodes` (as observed by the health protocol and committed through Raft).
    public mutating func creditUptime(_ nodes: [NodeID]) {
        for id in nodes {
            guard var r = records[id], r.jailedUntil <= epoch else { continue }
            r.score += (parameters.maximum - r.score) / parameters.uptimeGainDivisor
            records[id] = r
        }
    }

    /// Ends an epoch: scores above the initial level decay toward it.
    public mutating func advanceEpoch() {
        epoch += 1
        for id in records.keys {
            var r = records[id]!
            if r.score > parameters.initial {
                r.score -= (r.score - parameters.initial) / parameters.decayDivisor
                records[id] = r
            }
        }
    }

    /// Verifies `evidence` against the round it names and slashes the accused, once per offence.
    /// Returns nil, without verifying, when this offence was already slashed (every honest voter
    /// reports the same offence, and a withholding proof costs one verification per attester), and
    /// nil when the accused is no longer a member.
    @discardableResult
    public mutating func slash(_ evidence: Evidence, spec: RoundSpec) throws(VoteError) -> SlashRecord? {
        let key = evidence.key
        guard !slashed.contains(key), var r = records[key.accused] else { return nil }
        try evidence.verify(spec: spec)
        slashed.insert(key)
        let before = r.score
        let (num, den) = parameters.kept(after: key.offence)
        r.score = r.score * num / den
        if parameters.jails(key.offence) {
            r.offences += 1
            let shift = min(r.offences - 1, 20)
            let jail = min(parameters.baseJailEpochs << shift, parameters.maxJailEpochs)
            r.jailedUntil = max(r.jailedUntil, epoch + jail)
        }
        records[key.accused] = r
        return SlashRecord(key: key, scoreBefore: before, scoreAfter: r.score, jailedUntil: r.jailedUntil)
    }
}
