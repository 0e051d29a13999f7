// The bodies of the local API's answers. The JSON key names are the ones the agent has emitted since
// v1 (snake_case, in each type's CodingKeys) so that scripts reading `mycelium status -o json` or
// `curl --unix-socket` keep working. Decoding ignores keys it does not know, so an older client reads
// a newer agent's answers.

import Foundation

/// `GET /v1/status`: the network as the answering agent sees it.
public struct StatusResponse: Codable, Sendable, Equatable {
    /// The network's ID (`net-…`).
    public var network: String
    /// The answering node's ID (`node-…`).
    public var node: String
    /// Its Raft role: `leader`, `follower`, `candidate` or `preCandidate`.
    public var role: String
    /// Its place in the Raft configuration: `voter`, `learner` or `none`.
    public var raftMember: String
    /// The node ID of the Raft leader it knows, or `none`.
    public var leader: String
    /// Its current Raft term.
    public var term: UInt64
    /// The highest Raft log index it knows to be committed.
    public var commitIndex: UInt64
    /// The highest Raft log index it has applied to the control state.
    public var appliedIndex: UInt64
    /// The primary spore's epoch, `TERM.INDEX`.
    public var epoch: String
    /// `bootstrap` (the genesis node alone decides) or `distributed` (Raft among the sclerotia).
    public var phase: String
    /// The node IDs of the sclerotia (the members that hold the control state).
    public var sclerotia: [String]
    /// The node IDs of the Raft voters.
    public var voters: [String]
    /// `ok`, `no leader`, or why the agent runs in a fallback mode.
    public var health: String
    /// Every member of the primary spore, sorted by ID.
    public var members: [MemberInfo]
    /// The vote rounds the primary spore remembers, oldest first.
    public var votes: [VoteRoundInfo]
    /// The agent's most recent events (at most 30), oldest first, each prefixed with its time.
    public var events: [String]
    /// The pod CIDR the network controller gave this node, or `none`.
    public var podCIDR: String
    /// The file the network controller writes this node's pod CIDR to (read by `mycelium-cni`).
    public var podCIDRFile: String
    /// Things an operator should look at (certificates near expiry, clocks that are off), or empty.
    public var warnings: [String]?
    /// The newest sclerotia generation this node knows (0: only the genesis key).
    public var chainGeneration: UInt64?
    /// The answering agent's connection to each other member (nil: an agent older than this field).
    public var peers: [PeerLinkInfo]?

    public init(network: String, node: String, role: String, raftMember: String, leader: String, term: UInt64,
                commitIndex: UInt64, appliedIndex: UInt64, epoch: String, phase: String, sclerotia: [String],
                voters: [String], health: String, members: [MemberInfo], votes: [VoteRoundInfo], events: [String],
                podCIDR: String, podCIDRFile: String, warnings: [String]? = nil, chainGeneration: UInt64? = nil, peers: [PeerLinkInfo]? = nil) {
        self.warnings = warnings; self.chainGeneration = chainGeneration; self.peers = peers
        self.network = network; self.node = node; self.role = role; self.raftMember = raftMember; self.leader = leader
        self.term = term; self.commitIndex = commitIndex; self.appliedIndex = appliedIndex; self.epoch = epoch
        self.phase = phase; self.sclerotia = sclerotia; self.voters = voters; self.health = health
        self.members = members; self.votes = votes; self.events = events; self.podCIDR = podCIDR; self.podCIDRFile = podCIDRFile
    }

    enum CodingKeys: String, CodingKey {
        case network, node, role, leader, term, epoch, phase, sclerotia, voters, health, members, votes, events, warnings, peers
        case chainGeneration = "chain_generation"
        case raftMember = "raft_member"
        case commitIndex = "commit_index"
        case appliedIndex = "applied_index"
        case podCIDR = "pod_cidr"
        case podCIDRFile = "pod_cidr_file"
    }
}

/// `GET /v1/spore`: the primary spore as the answering agent holds it.
public struct SporeResponse: Codable, Sendable, Equatable {
    /// The network's ID (`net-…`).
    public var network: String
    /// The spore's epoch, `TERM.INDEX`.
    public var epoch: String
    /// `bootstrap` or `distributed` (see ``StatusResponse/phase``).
    public var phase: String
    /// Every member, sorted by ID.
    public var members: [MemberInfo]
    /// The node IDs of the sclerotia.
    public var sclerotia: [String]
    /// The network-wide settings (key → value).
    public var settings: [String: String]
    /// The vote rounds the spore remembers, oldest first.
    public var votes: [VoteRoundInfo]
    /// The leases currently held, sorted by name.
    public var leases: [LeaseInfo]

    public init(network: String, epoch: String, phase: String, members: [MemberInfo], sclerotia: [String],
                settings: [String: String], votes: [VoteRoundInfo], leases: [LeaseInfo]) {
        self.network = network; self.epoch = epoch; self.phase = phase; self.members = members
        self.sclerotia = sclerotia; self.settings = settings; self.votes = votes; self.leases = leases
    }

    enum CodingKeys: String, CodingKey {
        case network, epoch, phase, members, sclerotia, settings, votes, leases
    }
}

/// One member of the primary spore.
public struct MemberInfo: Codable, Sendable, Equatable {
    /// The member's node ID (`node-…`).
    public var id: String
    /// `alive`, `suspect`, `failed` or `left`.
    public var status: String
    /// Its certified roles, as the spore prints them (e.g. `[member, sclerotiumEligible]`).
    public var roles: String
    /// Where peers reach it (`host:port`).
    public var addresses: [String]
    /// Whether it is a sclerotium now.
    public var sclerotium: Bool
    /// The CPUs it announced.
    public var cpus: Int
    /// Its public key's fingerprint.
    public var key: String
    /// Seconds until its membership lapses unless renewed (negative once lapsed), in spore time.
    public var expiresInSeconds: Int64
    /// Its trust score, in millionths (1 000 000 = full trust).
    public var trust: Int
    /// Whether the vote jailed it (it cannot vote until released).
    public var jailed: Bool
    /// Whether a vote approved it as a sclerotium.
    public var approvedSclerotium: Bool
    /// Its membership certificate: serial, issuing generation (0: the genesis key), and seconds until
    /// it expires and until the network renews it (spore time).
    public var certificate: CertificateInfo?
    /// Its clock minus the answering node's, measured at their latest handshake (nil: not measured).
    public var clockSkewSeconds: Int64?
    /// Whether the network revoked it.
    public var revoked: Bool?
    /// What it can run, as its agent fingerprinted it ("libvirt", or "none").
    public var features: String?

    /// Whether the spore counts it as alive.
    public var isAlive: Bool { status == "alive" }

    public init(id: String, status: String, roles: String, addresses: [String], sclerotium: Bool, cpus: Int, key: String,
                expiresInSeconds: Int64, trust: Int, jailed: Bool, approvedSclerotium: Bool,
                certificate: CertificateInfo? = nil, clockSkewSeconds: Int64? = nil, revoked: Bool? = nil, features: String? = nil) {
        self.id = id; self.status = status; self.roles = roles; self.addresses = addresses; self.sclerotium = sclerotium
        self.cpus = cpus; self.key = key; self.expiresInSeconds = expiresInSeconds; self.trust = trust
        self.jailed = jailed; self.approvedSclerotium = approvedSclerotium
        self.certificate = certificate; self.clockSkewSeconds = clockSkewSeconds; self.revoked = revoked
        self.features = features
    }

    enum CodingKeys: String, CodingKey {
        case id, status, roles, addresses, sclerotium, cpus, key, trust, jailed, certificate, revoked, features
        case expiresInSeconds = "expires_in_s"
        case approvedSclerotium = "approved_sclerotium"
        case clockSkewSeconds = "clock_skew_s"
    }
}

/// A membership certificate as the API shows it.
public struct CertificateInfo: Codable, Sendable, Equatable {
    public var serial: UInt64
    /// 0: issued by the genesis key; g ≥ 1: by a quorum of sclerotia generation g.
    public var generation: UInt64
    /// Node IDs of the signers (the genesis key's fingerprint for generation 0).
    public var signers: [String]
    public var issuedAt: Int64
    public var expiresAt: Int64
    /// Seconds until it expires, in spore time (negative once expired).
    public var expiresInSeconds: Int64
    /// Seconds until the network renews it (negative: due).
    public var renewInSeconds: Int64
    /// Its whole lifetime in seconds.
    public var lifetimeSeconds: Int64

    public init(serial: UInt64, generation: UInt64, signers: [String], issuedAt: Int64, expiresAt: Int64,
                expiresInSeconds: Int64, renewInSeconds: Int64, lifetimeSeconds: Int64) {
        self.serial = serial; self.generation = generation; self.signers = signers; self.issuedAt = issuedAt
        self.expiresAt = expiresAt; self.expiresInSeconds = expiresInSeconds; self.renewInSeconds = renewInSeconds
        self.lifetimeSeconds = lifetimeSeconds
    }

    /// Within the last 20% of its lifetime: renewal is overdue.
    public var nearExpiry: Bool { expiresInSeconds < lifetimeSeconds / 5 }

    enum CodingKeys: String, CodingKey {
        case serial, generation, signers
        case issuedAt = "issued_at"
        case expiresAt = "expires_at"
        case expiresInSeconds = "expires_in_s"
        case renewInSeconds = "renew_in_s"
        case lifetimeSeconds = "lifetime_s"
    }
}

/// `GET /v1/membership`: the sclerotia chain, certificates being issued and revocations.
public struct MembershipResponse: Codable, Sendable, Equatable {
    public var network: String
    /// The genesis key's fingerprint (generation 0).
    public var genesisKey: String
    /// Lifetime of the certificates the network issues, in seconds.
    public var certificateLifetimeSeconds: Int64
    /// The links from the genesis key, oldest first.
    public var chain: [LinkInfo]
    /// The generation of the link being signed, if any.
    public var pendingLink: UInt64?
    /// Certificates being signed.
    public var issuances: [IssuanceInfo]
    public var revoked: [RevocationInfo]
    /// The answering node's own certificate.
    public var certificate: CertificateInfo

    public init(network: String, genesisKey: String, certificateLifetimeSeconds: Int64, chain: [LinkInfo], pendingLink: UInt64?,
                issuances: [IssuanceInfo], revoked: [RevocationInfo], certificate: CertificateInfo) {
        self.network = network; self.genesisKey = genesisKey; self.certificateLifetimeSeconds = certificateLifetimeSeconds
        self.chain = chain; self.pendingLink = pendingLink; self.issuances = issuances; self.revoked = revoked
        self.certificate = certificate
    }

    enum CodingKeys: String, CodingKey {
        case network, chain, issuances, revoked, certificate
        case genesisKey = "genesis_key"
        case certificateLifetimeSeconds = "certificate_lifetime_s"
        case pendingLink = "pending_link"
    }
}

public struct LinkInfo: Codable, Sendable, Equatable {
    public var generation: UInt64
    public var sclerotia: [String]
    /// Node IDs (the genesis key's fingerprint for link 1) that signed it.
    public var signedBy: [String]
    public var issuedAt: Int64
    public init(generation: UInt64, sclerotia: [String], signedBy: [String], issuedAt: Int64) {
        self.generation = generation; self.sclerotia = sclerotia; self.signedBy = signedBy; self.issuedAt = issuedAt
    }
    enum CodingKeys: String, CodingKey {
        case generation, sclerotia
        case signedBy = "signed_by"
        case issuedAt = "issued_at"
    }
}

public struct IssuanceInfo: Codable, Sendable, Equatable {
    public var id: UInt64
    public var node: String
    public var purpose: String
    public var signatures: Int
    public var needed: Int
    public init(id: UInt64, node: String, purpose: String, signatures: Int, needed: Int) {
        self.id = id; self.node = node; self.purpose = purpose; self.signatures = signatures; self.needed = needed
    }
}

public struct RevocationInfo: Codable, Sendable, Equatable {
    public var node: String
    public var serial: UInt64
    public var at: Int64
    public var reason: String
    public init(node: String, serial: UInt64, at: Int64, reason: String) {
        self.node = node; self.serial = serial; self.at = at; self.reason = reason
    }
}

/// One round of the Byzantine-tolerant vote, with what the answering agent measured of it.
public struct VoteRoundInfo: Codable, Sendable, Equatable {
    /// The round's sequence number (unique in the network, increasing).
    public var sequence: Int
    /// What it asks, e.g. `failure`.
    public var kind: String
    /// The node ID the question is about.
    public var node: String
    /// How many members vote in it.
    public var voters: Int
    /// How many lying voters it tolerates.
    public var tolerates: Int
    /// `open`, `closed`, `decided yes` or `decided no`.
    public var state: String
    /// Milliseconds from this agent applying the round's opening to its own decision; -1 until decided here.
    public var localLatencyMilliseconds: Double
    /// Vote frames this agent sent for the round.
    public var localMessagesSent: Int
    /// The node IDs of its voters (nil: an agent older than this field).
    public var voterIDs: [String]?
    /// The misbehaviour proven in it and slashed, one line each: `ACCUSED: OFFENCE` (nil: an agent older
    /// than this field; empty: none).
    public var evidence: [String]?

    public init(sequence: Int, kind: String, node: String, voters: Int, tolerates: Int, state: String,
                localLatencyMilliseconds: Double, localMessagesSent: Int, voterIDs: [String]? = nil, evidence: [String]? = nil) {
        self.evidence = evidence
        self.sequence = sequence; self.kind = kind; self.node = node; self.voters = voters; self.tolerates = tolerates
        self.state = state; self.localLatencyMilliseconds = localLatencyMilliseconds; self.localMessagesSent = localMessagesSent
        self.voterIDs = voterIDs
    }

    enum CodingKeys: String, CodingKey {
        case sequence, kind, node, voters, tolerates, state, evidence
        case voterIDs = "voter_ids"
        case localLatencyMilliseconds = "local_latency_ms"
        case localMessagesSent = "local_messages_sent"
    }
}

/// A lease in the primary spore: a named lock held by one member until it expires.
public struct LeaseInfo: Codable, Sendable, Equatable {
    /// The lease's name.
    public var name: String
    /// The node ID holding it.
    public var holder: String
    /// Seconds until it expires unless renewed, in spore time.
    public var expiresInSeconds: Int64

    public init(name: String, holder: String, expiresInSeconds: Int64) {
        self.name = name; self.holder = holder; self.expiresInSeconds = expiresInSeconds
    }

    enum CodingKeys: String, CodingKey {
        case name, holder
        case expiresInSeconds = "expires_in_s"
    }
}

/// The answer to an accepted `POST` (202): what the agent did and what to watch next.
public struct ActionResponse: Codable, Sendable, Equatable {
    /// A sentence for the operator, e.g. `leave proposed; the network removes this node once it commits`.
    public var result: String

    public init(result: String) { self.result = result }
}

/// A stable, machine-readable reason for a refused request. Unknown codes from a newer agent decode
/// as themselves, so a client compares against the constants it knows and shows the message otherwise.
public struct APIErrorCode: RawRepresentable, Codable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }

    public init(from decoder: any Decoder) throws { rawValue = try decoder.singleValueContainer().decode(String.self) }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(rawValue)
    }

    /// 409: this node is not (or no longer) a member, so it cannot leave.
    public static let notAMember = APIErrorCode(rawValue: "not_a_member")
    /// The service table refused the request.
    public static let serviceRefused = APIErrorCode(rawValue: "service_refused")
    /// The volume table or the storage refused the request.
    public static let volumeRefused = APIErrorCode(rawValue: "volume_refused")
    /// 400: the node a request names is not a member of this network.
    public static let unknownNode = APIErrorCode(rawValue: "unknown_node")
    /// 409: the node is already failed or gone; there is nothing to vote on.
    public static let nodeNotLive = APIErrorCode(rawValue: "node_not_live")
    /// 409: no Byzantine-tolerant vote can be formed now (too few voters, a round already open, …).
    public static let voteUnavailable = APIErrorCode(rawValue: "vote_unavailable")
    /// 404: no such endpoint.
    public static let notFound = APIErrorCode(rawValue: "not_found")
    /// Only a sclerotium may do this (sign a seed spore).
    public static let notASclerotium = APIErrorCode(rawValue: "not_a_sclerotium")
    /// This node's roles do not allow it.
    public static let notAuthorized = APIErrorCode(rawValue: "not_authorized")
    /// The answer carried no code (an agent older than the codes).
    public static let unspecified = APIErrorCode(rawValue: "unspecified")
}

/// The body of every refused request (4xx).
public struct APIErrorResponse: Codable, Sendable, Equatable, Error {
    /// What is wrong and what to do, for the operator.
    public var error: String
    /// The stable reason, for programs.
    public var code: APIErrorCode

    public init(error: String, code: APIErrorCode) { self.error = error; self.code = code }

    enum CodingKeys: String, CodingKey { case error, code }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        error = try c.decode(String.self, forKey: .error)
        code = try c.decodeIfPresent(APIErrorCode.self, forKey: .code) ?? .unspecified
    }
}
