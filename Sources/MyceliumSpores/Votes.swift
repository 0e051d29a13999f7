// The Byzantine-tolerant vote, as the primary spore sees it: rounds are opened, decided and used for
// slashing by committed commands, so every replica holds the same rounds, the same trust and makes the
// same judgement. The vote itself (commit, reveal, tally) runs in each agent's VoteInstance; the spore
// only checks its proofs: a decision certificate, or a piece of evidence, against the round's spec.
//
// The two judgements that must hold even when some nodes lie:
// - a member is recorded failed only with a decision certificate of a failure-confirmation round
//   (`decideVote`), never on a governor's word, whenever such a round can be formed at all;
// - after the handoff, a node becomes a sclerotium only with an accepted admission round.
// "Can be formed" is a deterministic function of the spore (enough trusted, alive voters for n ≥ 3f+1
// with f ≥ 1, the subject excluded). In a network too small for that (fewer than four trusted voters
// besides the subject) there is no Byzantine tolerance to be had, and the crash-fault rules apply: the
// governors record failures and choose sclerotia themselves. `voteUnavailable` says which applies.

import MyceliumCore
import MyceliumIdentity
import MyceliumVote

/// What a spore round decides.
public enum VoteKind: UInt8, Sendable, Equatable, CustomStringConvertible {
    /// "Has this member failed?" (yes: recorded failed, its work may move).
    case failure = 1
    /// "May this member become a sclerotium?" (yes: it may be chosen as a Raft voter).
    case sclerotium = 2
    public var description: String { self == .failure ? "failure confirmation" : "sclerotium admission" }
    var criticality: Criticality { self == .failure ? .failureConfirmation : .admission }
}

/// A vote round held in the spore.
public struct SporeRound: Sendable, Equatable {
    public let sequence: UInt64
    public let kind: VoteKind
    public let node: NodeID
    public let spec: RoundSpec
    /// Spore time when it was opened.
    public let openedAt: Int64
    /// The accepted result once a certificate was committed.
    public internal(set) var decision: VoteResult?
    /// Closed without a decision (failed or stalled); a new round may be opened.
    public internal(set) var closed: Bool = false
    public var isOpen: Bool { decision == nil && !closed }
}

extension PrimarySpore {
    /// The candidates every replica offers the quorum policy: alive members, with their trust.
    func voterCandidates() -> [VoterCandidate] {
        members.values.filter { $0.status == .alive }.sorted { $0.id < $1.id }
            .map { VoterCandidate(id: $0.id, key: $0.key, isSclerotium: sclerotia.contains($0.id)) }
    }

    func votePolicy(_ kind: VoteKind, commitTicks: UInt32, revealTicks: UInt32) -> QuorumPolicy {
        var p = QuorumPolicy.standard(kind.criticality)
        // Admission of a sclerotium is voted by every trusted member, not the sclerotia alone: with
        // three or five sclerotia, one of them failed, the rest can never form 3f+1 with f ≥ 1.
        p.sclerotiaOnly = false
        p.commitTicks = max(1, commitTicks); p.revealTicks = max(1, revealTicks)
        return p
    }

    func roundSpec(_ kind: VoteKind, node: NodeID, sequence: UInt64, commitTicks: UInt32, revealTicks: UInt32) throws(VoteError) -> RoundSpec {
        let policy = votePolicy(kind, commitTicks: commitTicks, revealTicks: revealTicks)
        let subject: [UInt8]
        switch kind {
        case .failure: subject = RoundSubject.failure(of: node, incarnation: UInt64(bitPattern: members[node]?.since ?? 0))
        case .sclerotium: subject = RoundSubject.admission(of: node, key: members[node]?.key ?? network.genesisKey, asSclerotium: true)
        }
        return try policy.makeRound(network: network.id, sequence: sequence, subject: subject, candidates: voterCandidates(),
                                    ledger: trust, excluding: [node])
    }

    /// Why no Byzantine-tolerant round about `node` can be formed now, or nil when one can (and is then required).
    public func voteUnavailable(_ kind: VoteKind, node: NodeID) -> String? {
        do {
            _ = try roundSpec(kind, node: node, sequence: voteSequence + 1, commitTicks: 1, revealTicks: 1)
            return nil
        } catch {
            return error.description
        }
    }

    /// The open round about `node`, if any.
    public func openRound(_ kind: VoteKind, node: NodeID) -> SporeRound? {
        rounds.values.filter { $0.kind == kind && $0.node == node && $0.isOpen }.min { $0.sequence < $1.sequence }
    }

    mutating func performVote(_ c: SporeCommand, author: NodeID) throws(SporeError) {
        switch c {
        case let .openVote(kind, node, commitTicks, revealTicks):
            guard mayGovern(author) else { throw SporeError(.notAuthorized(author, "open a vote")) }
            guard let m = members[node], m.status == .alive || m.status == .suspect else { throw SporeError(.unknownMember(node)) }
            if openRound(kind, node: node) != nil { throw SporeError(.invalid("a \(kind) round about \(node) is already open")) }
            if kind == .sclerotium && approvedSclerotia.contains(node) { throw SporeError(.invalid("\(node) is already approved as a sclerotium")) }
            let spec: RoundSpec
            do { spec = try roundSpec(kind, node: node, sequence: voteSequence + 1, commitTicks: commitTicks, revealTicks: revealTicks) }
            catch { throw SporeError(.invalid("no \(kind) round about \(node) can be formed: \(error)")) }
            voteSequence += 1
            rounds[voteSequence] = SporeRound(sequence: voteSequence, kind: kind, node: node, spec: spec, openedAt: now)
            pruneRounds()

        case let .decideVote(sequence, certificate):
            guard members[author] != nil else { throw SporeError(.unknownMember(author)) }
            guard var round = rounds[sequence] else { throw SporeError(.invalid("no vote round \(sequence)")) }
            guard round.isOpen else { throw SporeError(.invalid("vote round \(sequence) is already \(round.closed ? "closed" : "decided")")) }
            let cert: DecisionCertificate
            do {
                cert = try DecisionCertificate(decoding: certificate)
                try trust.creditCorrectVotes(cert, spec: round.spec)  // verifies the certificate first
            } catch { throw SporeError(.invalid("decision certificate for round \(sequence) refused: \(error)")) }
            round.decision = cert.result
            rounds[sequence] = round
            guard cert.result == .yes else { return }
            switch round.kind {
            case .failure:
                if var m = members[round.node], m.status != .failed {
                    m.status = .failed; m.since = now
                    members[round.node] = m
                    sclerotia.removeAll { $0 == round.node }
                    approvedSclerotia.remove(round.node)
                    proposeLinkIfChanged()
                }
            case .sclerotium:
                approvedSclerotia.insert(round.node)
            }

        case let .voteEvidence(sequence, bytes):
            guard members[author] != nil else { throw SporeError(.unknownMember(author)) }
            guard let round = rounds[sequence] else { throw SporeError(.invalid("no vote round \(sequence)")) }
            do {
                let evidence = try Evidence(decoding: bytes)
                guard evidence.round == round.spec.id else { throw SporeError(.invalid("evidence names another round")) }
                guard let record = try trust.slash(evidence, spec: round.spec) else {
                    throw SporeError(.invalid("\(evidence) was already slashed"))
                }
                // Proven equivocation (two signed, contradicting votes) is deliberate: the network
                // revokes the member as well (docs/MEMBERSHIP.md). Lesser offences only jail, and a
                // jailed member is not renewed while it sits out.
                if record.key.offence == .equivocation, let m = members[record.key.accused], revoked[m.id] == nil,
                   revoked.count < IssuanceLimits.maxRevocations {
                    revokeMember(m, reason: "slashed for equivocation in vote round \(sequence)")
                }
            } catch let e as SporeError { throw e } catch { throw SporeError(.invalid("evidence for round \(sequence) refused: \(error)")) }

        case let .closeVote(sequence):
            guard mayGovern(author) else { throw SporeError(.notAuthorized(author, "close a vote")) }
            guard var round = rounds[sequence], round.isOpen else { throw SporeError(.invalid("no open vote round \(sequence)")) }
            round.closed = true
            rounds[sequence] = round

        default:
            break
        }
    }

    /// Keeps at most `limits.maxRounds` rounds, dropping the oldest finished ones first, and lets the
    /// trust ledger forget what it no longer needs.
    mutating func pruneRounds() {
        while rounds.count > limits.maxRounds {
            let finished = rounds.values.filter { !$0.isOpen }.map(\.sequence).min()
            rounds[finished ?? rounds.keys.min()!] = nil
        }
        trust.forgetRounds(except: Set(rounds.values.map(\.spec.id)))
    }

    /// Trust epochs follow spore time: each one credits uptime to alive members, then decays.
    mutating func advanceTrust() {
        guard limits.trustEpochSeconds > 0 else { return }
        if trustEpochStart == 0 { trustEpochStart = now; return }
        var steps = 0
        while now >= trustEpochStart + limits.trustEpochSeconds {
            trust.creditUptime(members.values.filter { $0.status == .alive }.map(\.id).sorted())
            trust.advanceEpoch()
            trustEpochStart += limits.trustEpochSeconds
            steps += 1
            if steps >= 64 { trustEpochStart = now; break }  // a long silence is not years of uptime
        }
    }
}

extension SporeRound {
    func encode(into w: inout ByteWriter) {
        w.u64(sequence); w.u8(kind.rawValue); w.raw(node.bytes); w.blob(spec.encoded()); w.i64(openedAt)
        w.bool(decision != nil); if let d = decision { w.blob(d.bytes) }
        w.bool(closed)
    }

    init(from r: inout ByteReader) throws {
        sequence = try r.u64()
        let at = r.offset
        guard let k = VoteKind(rawValue: try r.u8()) else { throw DecodeError(.invalid(field: "vote kind", reason: "unknown"), at: at) }
        kind = k
        node = try NodeID(bytes: r.raw(NodeID.byteCount))
        spec = try RoundSpec(decoding: r.blob("round spec", limit: VoteLimits.maxMessageBytes))
        openedAt = try r.i64()
        decision = try r.bool("decided") ? try VoteResult(r.blob("result", limit: VoteLimits.maxResultBytes)) : nil
        closed = try r.bool("closed")
    }
}
