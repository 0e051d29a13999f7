// The primary spore: the network's authoritative state (members, roles, sclerotia, settings and
// leases), replicated by Raft among the sclerotia. This file is its pure state machine: every
// replica applies the same committed commands in the same order, with the same leader-stamped
// time, and reaches the same bytes.
//
// Three properties the issue asks for, and where they live:
//  - bounded: `SporeLimits`; a command that would exceed a limit is refused, never truncated;
//  - timeframes: members and leases carry an expiry in the spore's own clock (`now`, stamped into
//    each command by the Raft leader), and `expire` drops what was not refreshed;
//  - signed: every command is a `SignedCommand`, verified against its author's key as the spore
//    knows it (or, for admission, against the genesis-issued membership certificate).

import MyceliumCore
import MyceliumIdentity
import MyceliumVote

/// Every kind of entry has a limit, so a spore (and every seed-spore file) has a bounded size.
public struct SporeLimits: Sendable, Equatable {
    public var maxMembers = 1024
    public var maxAddressesPerMember = 8
    public var maxAddressLength = 255
    public var maxLeases = 4096
    public var maxLeaseNameLength = 128
    public var maxSettings = 64
    public var maxSettingLength = 1024
    public var maxSclerotia = 7
    /// Vote rounds kept (open, and finished ones for late evidence).
    public var maxRounds = 64
    /// Trust of the founding members (admitted before the handoff, vouched for by the genesis key).
    /// Later members start at the ledger's initial (low) score and must earn trust.
    public var founderTrust: UInt64 = 600_000
    /// Length of a trust epoch in spore seconds (uptime credit, decay, jail terms).
    public var trustEpochSeconds: Int64 = 60
    /// Seconds a member stays `alive` in the spore without a refresh.
    public var memberTimeframe: Int64 = 120
    /// A member that has been `failed` or `left` for this long is dropped from the spore.
    public var departedRetention: Int64 = 3600

    public init() {}
}

public enum MemberStatus: UInt8, Sendable, Equatable, CustomStringConvertible {
    case alive = 1, suspect = 2, failed = 3, left = 4
    public var description: String { ["", "alive", "suspect", "failed", "left"][Int(rawValue)] }
}

/// What a node can offer; used to choose sclerotia and place workloads.
public struct Capabilities: Sendable, Equatable {
    public var cpus: UInt16
    public var memoryMiB: UInt32
    public var diskGiB: UInt32
    /// What the node can run, as its agent found (fingerprinted) at start.
    public var features: CapabilityFeatures

    public init(cpus: UInt16 = 0, memoryMiB: UInt32 = 0, diskGiB: UInt32 = 0, features: CapabilityFeatures = []) {
        self.cpus = cpus; self.memoryMiB = memoryMiB; self.diskGiB = diskGiB; self.features = features
    }
}

/// Workload drivers a node offers. Unknown bits from a newer agent are kept, and mean nothing here.
public struct CapabilityFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// A libvirt daemon answered: the node can run (and hold replicas of) endophyte VMs.
    public static let libvirt = CapabilityFeatures(rawValue: 1 << 0)

    public var description: String {
        var names: [String] = []
        if contains(.libvirt) { names.append("libvirt") }
        let unknown = rawValue & ~CapabilityFeatures.libvirt.rawValue
        if unknown != 0 { names.append("0x" + String(unknown, radix: 16)) }
        return names.isEmpty ? "none" : names.joined(separator: ",")
    }
}

public struct Member: Sendable, Equatable {
    public var certificate: MembershipCertificate
    public var key: PublicKey
    /// Only addresses some node actually connected to (connection confirmation).
    public var addresses: [String]
    public var capabilities: Capabilities
    public var status: MemberStatus
    /// Spore time until which this member counts as present without a refresh.
    public var expiresAt: Int64
    /// Spore time of the last status change.
    public var since: Int64

    public var id: NodeID { certificate.nodeID }
    public var roles: Roles { certificate.roles }
}

public struct Lease: Sendable, Equatable {
    public var name: String
    public var holder: NodeID
    public var expiresAt: Int64
}

/// The position of a spore in the history of the network: the Raft term and index of the last
/// command applied. Compared lexicographically; a higher epoch is newer.
public struct SporeEpoch: Sendable, Equatable, Hashable, Comparable, CustomStringConvertible {
    public var term: UInt64
    public var index: UInt64
    public init(term: UInt64, index: UInt64) { self.term = term; self.index = index }
    public static let zero = SporeEpoch(term: 0, index: 0)
    public static func < (a: SporeEpoch, b: SporeEpoch) -> Bool { (a.term, a.index) < (b.term, b.index) }
    public var description: String { "\(term).\(index)" }
}

/// Who runs the network: the genesis node's bootstrap agent, or the sclerotia's Raft group.
public enum GovernancePhase: UInt8, Sendable, Equatable {
    case bootstrap = 1
    case distributed = 2
}

public struct PrimarySpore: Sendable, Equatable {
    public let network: NetworkIdentity
    public var limits: SporeLimits
    public internal(set) var epoch: SporeEpoch = .zero
    /// Spore time of the last applied command (seconds, stamped by the Raft leader).
    public internal(set) var now: Int64 = 0
    public internal(set) var members: [NodeID: Member] = [:]
    public internal(set) var sclerotia: [NodeID] = []
    public internal(set) var phase: GovernancePhase = .bootstrap
    public internal(set) var settings: [String: String] = [:]
    public internal(set) var leases: [String: Lease] = [:]
    /// Keys the network rotated away from; a command signed by one is refused.
    public internal(set) var keys = KeyRegistry()
    /// Every member's trust, changed only by committed commands (admission, uptime, votes, slashing).
    public internal(set) var trust = TrustLedger()
    public internal(set) var trustEpochStart: Int64 = 0
    /// Vote rounds by sequence.
    public internal(set) var rounds: [UInt64: SporeRound] = [:]
    public internal(set) var voteSequence: UInt64 = 0
    /// Members an accepted admission round approved as sclerotia.
    public internal(set) var approvedSclerotia: Set<NodeID> = []
    /// Lifetime of the certificates the network issues (from the genesis node's certificate).
    public internal(set) var certificateLifetime: Int64 = 0
    /// The sclerotia chain from the genesis key (Issuance.swift).
    public internal(set) var chain: SclerotiaChain
    /// The next link while its signers sign it.
    public internal(set) var pendingLink: PendingLink?
    /// Certificates being signed, by issuance ID.
    public internal(set) var issuances: [UInt64: Issuance] = [:]
    public internal(set) var issuanceSequence: UInt64 = 0
    /// Invites already used (hash of the secret → the invite's expiry).
    public internal(set) var usedInvites: [[UInt8]: Int64] = [:]
    /// Members the network revoked.
    public internal(set) var revoked: [NodeID: Revocation] = [:]

    public init(network: NetworkIdentity, limits: SporeLimits = SporeLimits()) {
        self.network = network
        self.limits = limits
        self.chain = SclerotiaChain(genesisKey: network.genesisKey)
    }

    /// Members that count toward the network now (alive or suspect), in ID order.
    public var presentMembers: [Member] {
        members.values.filter { $0.status == .alive || $0.status == .suspect }.sorted { $0.id < $1.id }
    }

    /// Applies one committed command. `epoch` is the Raft position of its entry; `time` is the
    /// leader-stamped spore time. A refused command changes nothing (not even the epoch: the shell
    /// records the refusal and moves on, and every replica refuses it identically).
    public mutating func apply(_ signed: SignedCommand, epoch: SporeEpoch, time: Int64) throws(SporeError) {
        guard epoch > self.epoch else { throw SporeError(.staleEpoch(have: self.epoch, got: epoch)) }
        var next = self
        next.now = max(now, time)
        try next.verifyAuthor(signed)
        try next.perform(signed.command, author: signed.author)
        next.epoch = epoch
        next.expire()
        self = next
    }

    /// Checks the author's signature with the key this spore knows for it, or, for an admission or
    /// a key rotation, with the keys the command itself proves.
    mutating func verifyAuthor(_ s: SignedCommand) throws(SporeError) {
        // A revoked member's commands are refused: a refresh would record it alive again, and its
        // signature would still count for the sclerotia generation it belonged to.
        if revoked[s.author] != nil { throw SporeError(.refused(IdentityError(.revoked(node: s.author)))) }
        let key: PublicKey
        var checkRegistry = true
        switch s.command {
        case .admit(let cert):
            // The network (genesis key or a sclerotia quorum) vouches for the member; the member signs
            // its own admission request.
            do { try cert.verify(chain: chain, now: now, revoked: revokedIDs) } catch { throw SporeError(.refused(error)) }
            // No certificate outlives the network's lifetime: a genesis key kept after the handoff
            // cannot mint a long-lived, backdated generation-0 certificate (docs/MEMBERSHIP.md).
            if certificateLifetime > 0 && cert.lifetime > certificateLifetime {
                throw SporeError(.invalid("certificate of \(cert.nodeID) is valid for \(cert.lifetime) s, longer than the network's \(certificateLifetime) s"))
            }
            guard s.author == cert.nodeID else { throw SporeError(.notAuthorized(s.author, "admit another node")) }
            key = cert.nodeKey
        case .rotateKey(let r):
            guard let m = members[r.node], m.key == r.oldKey, s.author == r.node else {
                throw SporeError(.notAuthorized(s.author, "rotate a key it does not hold"))
            }
            key = r.newKey
            checkRegistry = false  // the rotation itself moves the registry to `newKey`
        default:
            guard let m = members[s.author] else { throw SporeError(.unknownMember(s.author)) }
            key = m.key
        }
        if checkRegistry {
            do { try keys.check(node: s.author, key: key) } catch { throw SporeError(.refused(error)) }
        }
        guard key.verify(s.signature, for: SignedCommand.signedBytes(network: network.id, author: s.author, command: s.commandBytes)) else {
            throw SporeError(.badSignature("command from \(s.author)"))
        }
    }

    mutating func perform(_ c: SporeCommand, author: NodeID) throws(SporeError) {
        switch c {
        case .admit(let cert):
            // A present member asking again (its join request reached several nodes, which all
            // forwarded it) changes nothing; re-admission is for failed or departed members.
            if let m = members[cert.nodeID], m.status == .alive || m.status == .suspect, m.certificate == cert {
                throw SporeError(.invalid("\(cert.nodeID) is already a member"))
            }
            if members[cert.nodeID] == nil && members.count >= limits.maxMembers {
                throw SporeError(.beyondLimits("members: \(limits.maxMembers)"))
            }
            // The first member (the genesis node) sets the network's certificate lifetime.
            if certificateLifetime == 0 && cert.generation == 0 { certificateLifetime = cert.lifetime }
            // A member that rejoins with an older certificate than the one the network renewed keeps the newer.
            let newer = members[cert.nodeID].map { $0.certificate.expiresAt > cert.expiresAt && $0.key == cert.nodeKey } ?? false
            // A re-admitted member keeps its record: failing and rejoining never resets trust.
            admitMember(newer ? members[cert.nodeID]!.certificate : cert)

        case let .refresh(capabilities):
            guard var m = members[author], m.status != .left else { throw SporeError(.unknownMember(author)) }
            m.capabilities = capabilities
            m.expiresAt = now.saturatingAdding(limits.memberTimeframe)
            if m.status != .alive { m.status = .alive; m.since = now }
            members[author] = m

        case let .confirmAddress(node, address):
            // `author` connected to `node` at `address`; only such addresses are published.
            guard var m = members[node] else { throw SporeError(.unknownMember(node)) }
            guard address.utf8.count <= limits.maxAddressLength else { throw SporeError(.beyondLimits("address length: \(limits.maxAddressLength)")) }
            if !m.addresses.contains(address) {
                if m.addresses.count >= limits.maxAddressesPerMember { m.addresses.removeFirst() }
                m.addresses.append(address)
            }
            members[node] = m

        case let .setStatus(node, status):
            // Failure and suspicion are recorded only after confirmation (the vote, once it lands);
            // the spore records, it does not judge.
            guard var m = members[node] else { throw SporeError(.unknownMember(node)) }
            if status == .left && node != author { throw SporeError(.notAuthorized(author, "make another node leave")) }
            // Only a member itself says it is alive (and a refresh does that); a revoked member's
            // status is the network's, not anyone's to change.
            if status == .alive && node != author { throw SporeError(.notAuthorized(author, "record another node alive")) }
            if revoked[node] != nil { throw SporeError(.notAuthorized(author, "change the status of revoked \(node)")) }
            // Only the governing nodes record judgements about others (the leader proposes them
            // after confirmation): a sclerotium, or the bootstrap agent before the handoff.
            if status != .left && status != .alive && !mayGovern(author) {
                throw SporeError(.notAuthorized(author, "record another node as \(status)"))
            }
            // Where a Byzantine-tolerant round can be formed, only its certificate records a failure.
            if status == .failed && m.status != .failed && voteUnavailable(.failure, node: node) == nil {
                throw SporeError(.notAuthorized(author, "record \(node) failed without a failure-confirmation vote (one can be formed: open it)"))
            }
            if m.status != status { m.status = status; m.since = now }
            members[node] = m
            if status == .failed || status == .left {
                sclerotia.removeAll { $0 == node }; approvedSclerotia.remove(node)
                issuances = issuances.filter { $0.value.certificate.nodeID != node }
                proposeLinkIfChanged()
            }

        case let .setSclerotia(ids):
            guard mayGovern(author) else { throw SporeError(.notAuthorized(author, "choose sclerotia")) }
            guard ids.count <= limits.maxSclerotia else { throw SporeError(.beyondLimits("sclerotia: \(limits.maxSclerotia)")) }
            guard Set(ids).count == ids.count else { throw SporeError(.invalid("a sclerotium is named twice")) }
            for id in ids {
                guard let m = members[id], m.status == .alive else { throw SporeError(.unknownMember(id)) }
                guard m.roles.contains(.sclerotiumEligible) else { throw SporeError(.notAuthorized(id, "be a sclerotium")) }
                // After the handoff a new sclerotium needs an accepted admission round, where one can be formed.
                if phase == .distributed && !sclerotia.contains(id) && !approvedSclerotia.contains(id)
                    && voteUnavailable(.sclerotium, node: id) == nil {
                    throw SporeError(.notAuthorized(id, "become a sclerotium without an admission vote (one can be formed: open it)"))
                }
            }
            sclerotia = ids.sorted()
            proposeLinkIfChanged()

        case .handoff:
            // The handoff from the bootstrap agent to the sclerotia is itself a committed entry.
            guard mayGovern(author) else { throw SporeError(.notAuthorized(author, "hand off governance")) }
            guard !sclerotia.isEmpty else { throw SporeError(.invalid("handoff needs sclerotia")) }
            // After the handoff the sclerotia issue membership: their link must be signed first.
            guard let link = chain.latest, Set(sclerotia).isSubset(of: Set(link.members.map(\.id))) else {
                throw SporeError(.invalid("handoff needs the sclerotia's link (generation \(chain.generation + 1)) signed by the genesis key first"))
            }
            phase = .distributed

        case let .acquireLease(name, ttl), let .renewLease(name, ttl, _):
            guard name.utf8.count <= limits.maxLeaseNameLength else { throw SporeError(.beyondLimits("lease name: \(limits.maxLeaseNameLength)")) }
            if let l = leases[name], l.holder != author, l.expiresAt > now { throw SporeError(.leaseHeld(name, by: l.holder)) }
            if leases[name] == nil && leases.count >= limits.maxLeases { throw SporeError(.beyondLimits("leases: \(limits.maxLeases)")) }
            leases[name] = Lease(name: name, holder: author, expiresAt: now.saturatingAdding(Int64(ttl)))

        case let .releaseLease(name):
            guard let l = leases[name] else { return }
            guard l.holder == author else { throw SporeError(.leaseHeld(name, by: l.holder)) }
            leases[name] = nil

        case let .setSetting(key, value):
            guard key.utf8.count <= limits.maxSettingLength, value.utf8.count <= limits.maxSettingLength else {
                throw SporeError(.beyondLimits("setting length: \(limits.maxSettingLength)"))
            }
            guard members[author]?.roles.contains(.sclerotiumEligible) == true else { throw SporeError(.notAuthorized(author, "change settings")) }
            if settings[key] == nil && settings.count >= limits.maxSettings { throw SporeError(.beyondLimits("settings: \(limits.maxSettings)")) }
            settings[key] = value

        case let .rotateKey(r):
            do { try keys.apply(r) } catch { throw SporeError(.refused(error)) }
            members[r.node]?.key = r.newKey
            if sclerotia.contains(r.node) { proposeLinkIfChanged() }

        case .tick:
            break  // advances `now` only; expiry happens after every command

        case let .vmSwitch(name, _, _), let .vmAbortMigration(name, _, _):
            // The VM table (MyceliumControl) checks and applies these; here only the author's
            // signature and membership count.
            guard name.utf8.count <= 63 else { throw SporeError(.beyondLimits("vm name: 63")) }

        case .openVote, .decideVote, .voteEvidence, .closeVote:
            try performVote(c, author: author)

        case .requestCertificate, .signCertificate, .signLink, .revoke:
            try performIssuance(c, author: author)
        }
    }

    /// Whether `node` governs now: a sclerotium once distributed; before the handoff, the bootstrap
    /// agent (a member that may invite) or, when no sclerotia exist yet, any eligible member.
    func mayGovern(_ node: NodeID) -> Bool {
        guard let m = members[node], m.status == .alive || m.status == .suspect else { return false }
        // Distributed: the sclerotia govern. Should every sclerotium have been recorded failed or
        // gone, an eligible member may govern (it still commits only through Raft's quorum);
        // otherwise the group could never name sclerotia again.
        if phase == .distributed { return sclerotia.contains(node) || (sclerotia.isEmpty && m.roles.contains(.sclerotiumEligible)) }
        return m.roles.contains(.inviter) || m.roles.contains(.sclerotiumEligible)
    }

    /// Timeframes: members not refreshed become `suspect` (never `failed`: that needs confirmation),
    /// departed members are dropped after their retention, and leases end.
    mutating func expire() {
        for (id, m) in members {
            if m.status == .alive && m.expiresAt <= now {
                members[id]!.status = .suspect
                members[id]!.since = now
            } else if (m.status == .failed || m.status == .left) && m.since.saturatingAdding(limits.departedRetention) <= now {
                members[id] = nil
                sclerotia.removeAll { $0 == id }
                approvedSclerotia.remove(id)
                trust.remove(id)
            }
        }
        advanceTrust()
        leases = leases.filter { $0.value.expiresAt > now }
        expireIssuance()
    }
}
