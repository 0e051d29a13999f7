// Dynamic quorums: who may vote on what, recomputed from current membership and trust for every
// round, so the electorate follows nodes as they join, leave, earn trust and get slashed.

import MyceliumCore
import MyceliumIdentity

/// A member the agent offers as a possible voter.
public struct VoterCandidate: Sendable, Hashable {
    public let id: NodeID
    public let key: PublicKey
    public let isSclerotium: Bool
    public init(id: NodeID, key: PublicKey, isSclerotium: Bool) {
        self.id = id; self.key = key; self.isSclerotium = isSclerotium
    }
}

/// The eligibility rules and timing of one criticality.
public struct QuorumPolicy: Sendable, Hashable {
    public var criticality: Criticality
    /// Voters need at least this trust score (and must not be jailed).
    public var minimumTrust: UInt64
    /// Only sclerotia vote (for decisions the Raft group itself must stand behind).
    public var sclerotiaOnly: Bool
    /// The electorate must tolerate at least this many Byzantine voters, so it needs ≥ 3f+1 voters.
    public var minimumFaultsTolerated: Int
    public var commitTicks: UInt32
    public var revealTicks: UInt32
    public var verifiableTruth: Bool

    public init(criticality: Criticality, minimumTrust: UInt64, sclerotiaOnly: Bool, minimumFaultsTolerated: Int,
                commitTicks: UInt32, revealTicks: UInt32, verifiableTruth: Bool) {
        self.criticality = criticality; self.minimumTrust = minimumTrust; self.sclerotiaOnly = sclerotiaOnly
        self.minimumFaultsTolerated = minimumFaultsTolerated; self.commitTicks = commitTicks
        self.revealTicks = revealTicks; self.verifiableTruth = verifiableTruth
    }

    /// The minimum number of voters: 3f+1.
    public var minimumVoters: Int { 3 * minimumFaultsTolerated + 1 }

    /// Defaults, with deadlines in ticks for a given network: pass ticks per expected worst one-way
    /// delay (for example 10-ms ticks: LAN 5, WAN 50).
    public static func standard(_ c: Criticality, ticksPerDelay: UInt32 = 5) -> QuorumPolicy {
        let t = max(ticksPerDelay, 1)
        switch c {
        case .failureConfirmation:
            // A wrong "dead" is the worst outcome we have: trusted voters only, tolerate 2 liars.
            return QuorumPolicy(criticality: c, minimumTrust: 300_000, sclerotiaOnly: false, minimumFaultsTolerated: 1,
                                commitTicks: 4 * t, revealTicks: 4 * t, verifiableTruth: false)
        case .admission:
            // Admission grants future weight: only well-trusted nodes vote (new nodes start at 100_000).
            return QuorumPolicy(criticality: c, minimumTrust: 500_000, sclerotiaOnly: false, minimumFaultsTolerated: 1,
                                commitTicks: 4 * t, revealTicks: 4 * t, verifiableTruth: false)
        case .routineHealth:
            return QuorumPolicy(criticality: c, minimumTrust: 50_000, sclerotiaOnly: false, minimumFaultsTolerated: 1,
                                commitTicks: 3 * t, revealTicks: 3 * t, verifiableTruth: false)
        }
    }

    /// Chooses the electorate from `candidates` under this policy and the ledger's current trust.
    ///
    /// Eligible: a ledger member, not jailed, trust ≥ `minimumTrust`, a sclerotium if required, and
    /// not in `excluding` (the node whose failure or admission is in question never votes on it).
    /// Weight is the trust score, capped at the largest value for which any `minimumFaultsTolerated`
    /// voters together hold less than a third of the weight (found by integer binary search, so every
    /// node computes the same cap). High trust buys weight, but never enough for f voters to break the
    /// bound. Returns the voters and the largest f they tolerate (n ≥ 3f+1 by count, and the f heaviest
    /// hold < 1/3 of the weight). Throws when f would fall below `minimumFaultsTolerated`.
    public func electorate(from candidates: [VoterCandidate], ledger: TrustLedger,
                           excluding: Set<NodeID> = []) throws(VoteError) -> (voters: [Voter], faultsTolerated: Int) {
        var eligible: [(VoterCandidate, UInt64)] = []
        var seen: Set<NodeID> = []
        for c in candidates where !excluding.contains(c.id) && seen.insert(c.id).inserted {
            guard ledger.records[c.id] != nil, !ledger.isJailed(c.id) else { continue }
            let s = ledger.score(of: c.id)
            guard s >= minimumTrust, s > 0, !sclerotiaOnly || c.isSclerotium else { continue }
            eligible.append((c, s))
        }
        guard eligible.count >= minimumVoters else {
            throw VoteError(.noQuorum(criticality: criticality,
                                      reason: "\(eligible.count) eligible voters (trust ≥ \(minimumTrust)\(sclerotiaOnly ? ", sclerotia" : "")); need at least \(minimumVoters)"))
        }
        let scores = eligible.map { min($0.1, VoteLimits.maxWeight) }.sorted(by: >)
        let fMin = minimumFaultsTolerated
        // Capping lowers the heaviest weights first, so the share of the f heaviest falls as the cap
        // falls; at the smallest score all weights are equal and the share is f/n < 1/3 (n ≥ 3f+1).
        func safe(_ cap: UInt64) -> Bool {
            var top: UInt64 = 0, total: UInt64 = 0
            for (i, s) in scores.enumerated() {
                let w = min(s, cap)
                total += w
                if i < fMin { top += w }
            }
            return top * 3 < total
        }
        var lo = scores.last!, hi = scores.first!
        if !safe(hi) {
            while lo < hi {  // largest safe cap in [lo, hi]
                let mid = lo + (hi - lo + 1) / 2
                if safe(mid) { lo = mid } else { hi = mid - 1 }
            }
        }
        let cap = hi
        let voters = eligible.map { Voter(id: $0.0.id, key: $0.0.key, weight: min($0.1, cap)) }
            .sorted { $0.id < $1.id }
        let total = voters.reduce(0) { $0 + $1.weight }
        let heaviestFirst = voters.map(\.weight).sorted(by: >)
        var f = (voters.count - 1) / 3
        while f > 0 && heaviestFirst.prefix(f).reduce(0, +) * 3 >= total { f -= 1 }
        guard f >= minimumFaultsTolerated else {
            throw VoteError(.noQuorum(criticality: criticality,
                                      reason: "weight too concentrated: the electorate tolerates only \(f) Byzantine voter(s), policy needs \(minimumFaultsTolerated)"))
        }
        return (voters, f)
    }

    /// Builds the specification of a round under this policy, ready for `VoteInstance.open`.
    /// Every node computing this from the same Raft state gets the same `RoundID`.
    public func makeRound(network: NetworkID, sequence: UInt64, subject: [UInt8], candidates: [VoterCandidate],
                          ledger: TrustLedger, excluding: Set<NodeID> = []) throws(VoteError) -> RoundSpec {
        let (voters, f) = try electorate(from: candidates, ledger: ledger, excluding: excluding)
        return try RoundSpec(network: network, sequence: sequence, criticality: criticality, subject: subject,
                             verifiableTruth: verifiableTruth, assumedFaults: f, commitTicks: commitTicks,
                             revealTicks: revealTicks, voters: voters)
    }
}

extension QuorumPolicy {
    /// A round asking "has `node` failed?" (vote `.yes` to confirm). The node itself is excluded.
    public static func failureConfirmationRound(of node: NodeID, incarnation: UInt64, network: NetworkID, sequence: UInt64,
                                                candidates: [VoterCandidate], ledger: TrustLedger,
                                                policy: QuorumPolicy = .standard(.failureConfirmation)) throws(VoteError) -> RoundSpec {
        try policy.makeRound(network: network, sequence: sequence, subject: RoundSubject.failure(of: node, incarnation: incarnation),
                             candidates: candidates, ledger: ledger, excluding: [node])
    }

    /// A round asking "admit `node` (as a sclerotium)?" (vote `.yes` to admit). The candidate is excluded.
    public static func admissionRound(of node: NodeID, key: PublicKey, asSclerotium: Bool, network: NetworkID, sequence: UInt64,
                                      candidates: [VoterCandidate], ledger: TrustLedger,
                                      policy: QuorumPolicy = .standard(.admission)) throws(VoteError) -> RoundSpec {
        var p = policy
        // A new sclerotium joins the Raft group: the existing sclerotia must stand behind it.
        if asSclerotium { p.sclerotiaOnly = true }
        return try p.makeRound(network: network, sequence: sequence,
                               subject: RoundSubject.admission(of: node, key: key, asSclerotium: asSclerotium),
                               candidates: candidates, ledger: ledger, excluding: [node])
    }
}
