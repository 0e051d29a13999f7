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

    public init(network: String, node: String, role: String, raftMember: String, leader: String, term: UInt64,
                commitIndex: UInt64, appliedIndex: UInt64, epoch: String, phase: String, sclerotia: [String],
                voters: [String], health: String, members: [MemberInfo], votes: [VoteRoundInfo], events: [String],
                podCIDR: String, podCIDRFile: String) {
        self.network = network; self.node = node; self.role = role; self.raftMember = raftMember; self.leader = leader
        self.term = term; self.commitIndex = commitIndex; self.appliedIndex = appliedIndex; self.epoch = epoch
        self.phase = phase; self.sclerotia = sclerotia; self.voters = voters; self.health = health
        self.members = members; self.votes = votes; self.events = events; self.podCIDR = podCIDR; self.podCIDRFile = podCIDRFile
    }

    enum CodingKeys: String, CodingKey {
        case network, node, role, leader, term, epoch, phase, sclerotia, voters, health, members, votes, events
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

    /// Whether the spore counts it as alive.
    public var isAlive: Bool { status == "alive" }

    public init(id: String, status: String, roles: String, addresses: [String], sclerotium: Bool, cpus: Int, key: String,
                expiresInSeconds: Int64, trust: Int, jailed: Bool, approvedSclerotium: Bool) {
        self.id = id; self.status = status; self.roles = roles; self.addresses = addresses; self.sclerotium = sclerotium
        self.cpus = cpus; self.key = key; self.expiresInSeconds = expiresInSeconds; self.trust = trust
        self.jailed = jailed; self.approvedSclerotium = approvedSclerotium
    }

    enum CodingKeys: String, CodingKey {
        case id, status, roles, addresses, sclerotium, cpus, key, trust, jailed
        case expiresInSeconds = "expires_in_s"
        case approvedSclerotium = "approved_sclerotium"
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

    public init(sequence: Int, kind: String, node: String, voters: Int, tolerates: Int, state: String,
                localLatencyMilliseconds: Double, localMessagesSent: Int) {
        self.sequence = sequence; self.kind = kind; self.node = node; self.voters = voters; self.tolerates = tolerates
        self.state = state; self.localLatencyMilliseconds = localLatencyMilliseconds; self.localMessagesSent = localMessagesSent
    }

    enum CodingKeys: String, CodingKey {
        case sequence, kind, node, voters, tolerates, state
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
    /// 400: the node a request names is not a member of this network.
    public static let unknownNode = APIErrorCode(rawValue: "unknown_node")
    /// 409: the node is already failed or gone; there is nothing to vote on.
    public static let nodeNotLive = APIErrorCode(rawValue: "node_not_live")
    /// 409: no Byzantine-tolerant vote can be formed now (too few voters, a round already open, …).
    public static let voteUnavailable = APIErrorCode(rawValue: "vote_unavailable")
    /// 404: no such endpoint.
    public static let notFound = APIErrorCode(rawValue: "not_found")
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
