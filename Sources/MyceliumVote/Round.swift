import MyceliumCore
import MyceliumIdentity

/// Hard limits on everything a vote message can carry. Decoders check these before allocating.
public enum VoteLimits {
    /// No encoded vote message, evidence or certificate may exceed this; larger inputs are refused unread.
    public static let maxMessageBytes = 256 * 1024
    /// Evidence of withholding carries up to one summary attestation per voter, so it may be larger.
    public static let maxEvidenceBytes = 1024 * 1024
    /// Electorates larger than this are refused (the issue asks for up to 100; sclerotia are 3–7).
    public static let maxVoters = 1024
    public static let maxResultBytes = 64
    public static let maxSubjectBytes = 256
    public static let saltBytes = 32
    public static let hashBytes = 32
    /// Per-voter weights are capped so the total power of `maxVoters` voters, times 3, fits in a UInt64.
    public static let maxWeight: UInt64 = 1 << 40
}

/// How much damage a wrong answer would do. Each criticality has its own quorum policy
/// (eligible voters, minimum count, trust threshold): see `QuorumPolicy`.
public enum Criticality: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Confirming that a node is really dead before its VMs restart elsewhere. A false "dead" runs two
    /// copies of one VM against one disk, so this is the strictest class.
    case failureConfirmation = 1
    /// Admitting a node or a sclerotium. A Sybil admitted here gains future voting power.
    case admission = 2
    /// Routine health and verification verdicts.
    case routineHealth = 3

    public var description: String {
        switch self {
        case .failureConfirmation: return "failure-confirmation"
        case .admission: return "admission"
        case .routineHealth: return "routine-health"
        }
    }
}

/// The value a voter votes for: opaque bytes (at most `VoteLimits.maxResultBytes`) whose meaning
/// the round's subject defines. Compared byte for byte.
public struct VoteResult: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(_ bytes: [UInt8]) throws(VoteError) {
        guard bytes.count <= VoteLimits.maxResultBytes else {
            throw VoteError(.malformed(what: "vote result", DecodeError(.tooLong(field: "result", length: bytes.count,
                                                                                 limit: VoteLimits.maxResultBytes), at: 0)))
        }
        self.bytes = bytes
    }

    init(unchecked bytes: [UInt8]) { self.bytes = bytes }

    /// "Yes": the node has failed / the candidate is admitted / the check passed.
    public static let yes = VoteResult(unchecked: [1])
    /// "No": the node is alive / the candidate is refused / the check failed.
    public static let no = VoteResult(unchecked: [0])

    public static func < (a: VoteResult, b: VoteResult) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }
    public var description: String {
        if self == .yes { return "yes" }
        if self == .no { return "no" }
        return "0x" + hexString(bytes)
    }
}

/// One member of a round's electorate: its stable ID, the key its votes must be signed with, and
/// its voting power (its trust score when the round was opened).
public struct Voter: Hashable, Sendable {
    public let id: NodeID
    public let key: PublicKey
    public let weight: UInt64

    public init(id: NodeID, key: PublicKey, weight: UInt64) {
        self.id = id
        self.key = key
        self.weight = weight
    }
}

/// A round's identity: the hash of its complete specification. Every signed vote names it, so a
/// vote can never be replayed into another round, another electorate or another network.
public struct RoundID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let bytes: [UInt8]
    public init(bytes: [UInt8]) throws(VoteError) {
        guard bytes.count == VoteLimits.hashBytes else {
            throw VoteError(.malformed(what: "round ID", DecodeError(.invalid(field: "round", reason: "\(bytes.count) bytes, expected 32"), at: 0)))
        }
        self.bytes = bytes
    }
    /// For the simulator's forged messages (MyceliumSim.VoteSimulation).
    @_spi(Simulation) public init(unchecked bytes: [UInt8]) { self.bytes = bytes }
    public static func < (a: RoundID, b: RoundID) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }
    public var description: String { "round:" + hexString(bytes.prefix(6)) }
}

/// Everything that defines one vote: the question, the electorate with its weights, and the deadlines.
///
/// A round is opened identically on every node, normally by applying one Raft entry, so every node
/// holds the same specification and derives the same `RoundID`. Deadlines are counted in the node's
/// own ticks from the moment it opened the round; choose them larger than the worst expected one-way
/// delay plus the spread in when nodes open the round (for a WAN, seconds' worth of ticks).
public struct RoundSpec: Hashable, Sendable {
    public let network: NetworkID
    /// Unique per network (for example the Raft index of the entry that opened the round).
    public let sequence: UInt64
    public let criticality: Criticality
    /// What is being decided, encoded by the caller (see `RoundSubject`). At most 256 bytes.
    public let subject: [UInt8]
    /// True when honest voters must all compute the same result (a checksum, a reproducible check).
    /// Only then is revealing a result other than the accepted one evidence of misbehaviour.
    public let verifiableTruth: Bool
    /// The number of Byzantine voters the round is sized to tolerate; the electorate must satisfy n ≥ 3f+1
    /// by count and by weight.
    public let assumedFaults: UInt16
    /// Ticks after opening during which commitments are accepted.
    public let commitTicks: UInt32
    /// Ticks after the commit phase during which reveals are accepted.
    public let revealTicks: UInt32
    /// Sorted by node ID, without duplicates.
    public let voters: [Voter]

    /// The round's identity (hash of the encoded specification).
    public let id: RoundID
    /// Sum of all voters' weights.
    public let totalWeight: UInt64
    private let indexByID: [NodeID: Int]

    /// Builds and validates a specification. Voters are sorted by ID here, so callers need not.
    public init(network: NetworkID, sequence: UInt64, criticality: Criticality, subject: [UInt8],
                verifiableTruth: Bool, assumedFaults: Int, commitTicks: UInt32, revealTicks: UInt32,
                voters: [Voter]) throws(VoteError) {
        guard assumedFaults >= 0 && assumedFaults <= Int(UInt16.max) else {
            throw VoteError(.invalidRound(reason: "assumed faults \(assumedFaults) out of range"))
        }
        let sorted = voters.sorted { $0.id < $1.id }
        try self.init(network: network, sequence: sequence, criticality: criticality, subject: subject,
                      verifiableTruth: verifiableTruth, assumedFaults: UInt16(assumedFaults), commitTicks: commitTicks,
                      revealTicks: revealTicks, sortedVoters: sorted)
    }

    init(network: NetworkID, sequence: UInt64, criticality: Criticality, subject: [UInt8], verifiableTruth: Bool,
         assumedFaults: UInt16, commitTicks: UInt32, revealTicks: UInt32, sortedVoters voters: [Voter]) throws(VoteError) {
        guard !voters.isEmpty, voters.count <= VoteLimits.maxVoters else {
            throw VoteError(.invalidRound(reason: "\(voters.count) voters; need 1...\(VoteLimits.maxVoters)"))
        }
        guard subject.count <= VoteLimits.maxSubjectBytes else {
            throw VoteError(.invalidRound(reason: "subject of \(subject.count) bytes is over \(VoteLimits.maxSubjectBytes)"))
        }
        guard commitTicks > 0, revealTicks > 0 else {
            throw VoteError(.invalidRound(reason: "commit and reveal phases must each last at least one tick"))
        }
        var index: [NodeID: Int] = [:]
        var total: UInt64 = 0
        for (i, v) in voters.enumerated() {
            if i > 0 && !(voters[i - 1].id < v.id) {
                throw VoteError(.invalidRound(reason: "voters must be sorted by ID without duplicates (\(v.id) repeats)"))
            }
            guard v.weight > 0 && v.weight <= VoteLimits.maxWeight else {
                throw VoteError(.invalidRound(reason: "voter \(v.id) has weight \(v.weight); need 1...\(VoteLimits.maxWeight)"))
            }
            index[v.id] = i
            total += v.weight
        }
        // n ≥ 3f+1 by count, and by weight: the f heaviest voters together hold less than a third,
        // so *any* f Byzantine voters stay below the one-third bound the safety argument needs.
        let f = Int(assumedFaults)
        guard voters.count >= 3 * f + 1 else {
            throw VoteError(.invalidRound(reason: "\(voters.count) voters cannot tolerate \(f) Byzantine (need n ≥ 3f+1 = \(3 * f + 1))"))
        }
        let heaviest = voters.map(\.weight).sorted(by: >).prefix(f).reduce(0, +)
        guard heaviest * 3 < total else {
            throw VoteError(.invalidRound(reason: "the \(f) heaviest voters hold \(heaviest) of \(total) weight (≥ 1/3); any f voters must hold < 1/3"))
        }
        self.network = network
        self.sequence = sequence
        self.criticality = criticality
        self.subject = subject
        self.verifiableTruth = verifiableTruth
        self.assumedFaults = assumedFaults
        self.commitTicks = commitTicks
        self.revealTicks = revealTicks
        self.voters = voters
        self.totalWeight = total
        self.indexByID = index
        self.id = RoundID(unchecked: Sodium.hash(Self.encodeBody(network, sequence, criticality, subject, verifiableTruth,
                                                                 assumedFaults, commitTicks, revealTicks, voters),
                                                 domain: VoteDomain.roundID, length: VoteLimits.hashBytes))
    }

    /// The voter's position in `voters`, or nil when it is not eligible.
    public func index(of voter: NodeID) -> Int? { indexByID[voter] }

    /// True when `power` is strictly more than two thirds of the round's total weight.
    public func isSupermajority(_ power: UInt64) -> Bool { power * 3 > totalWeight * 2 }
    /// True when `power` is at least one third: enough to block any result.
    public func canBlock(_ power: UInt64) -> Bool { power * 3 >= totalWeight }

    public static func == (a: RoundSpec, b: RoundSpec) -> Bool { a.id == b.id }
    public func hash(into h: inout Hasher) { h.combine(id) }

    static let magic: [UInt8] = Array("MYVR".utf8)
    static let version: UInt8 = 1

    static func encodeBody(_ network: NetworkID, _ sequence: UInt64, _ criticality: Criticality, _ subject: [UInt8],
                           _ verifiable: Bool, _ f: UInt16, _ commitTicks: UInt32, _ revealTicks: UInt32,
                           _ voters: [Voter]) -> [UInt8] {
        var w = ByteWriter(capacity: 64 + subject.count + voters.count * 56)
        w.raw(magic); w.u8(version)
        w.raw(network.bytes); w.u64(sequence); w.u8(criticality.rawValue)
        w.blob(subject); w.bool(verifiable); w.u16(f); w.u32(commitTicks); w.u32(revealTicks)
        w.u16(UInt16(voters.count))
        for v in voters { w.raw(v.id.bytes); w.raw(v.key.bytes); w.u64(v.weight) }
        return w.bytes
    }

    /// Deterministic bytes; `RoundSpec(decoding:)` of these yields an equal spec.
    public func encoded() -> [UInt8] {
        Self.encodeBody(network, sequence, criticality, subject, verifiableTruth, assumedFaults, commitTicks, revealTicks, voters)
    }

    /// Decodes and validates a specification (bounds-checked; refuses anything `init` would refuse).
    public init(decoding bytes: [UInt8]) throws(VoteError) {
        guard bytes.count <= VoteLimits.maxMessageBytes else {
            throw VoteError(.oversized(bytes: bytes.count, limit: VoteLimits.maxMessageBytes))
        }
        do {
            var r = ByteReader(bytes)
            guard try r.raw(4) == Self.magic else { throw DecodeError(.badMagic, at: 0) }
            let v = try r.u8()
            if v != Self.version { throw DecodeError(.unknownVersion(field: "round spec version", value: UInt64(v)), at: 4) }
            let network = try NetworkID(bytes: r.raw(NetworkID.byteCount))
            let sequence = try r.u64()
            let at = r.offset
            guard let criticality = Criticality(rawValue: try r.u8()) else {
                throw DecodeError(.invalid(field: "criticality", reason: "unknown tag"), at: at)
            }
            let subject = try r.blob("subject", limit: VoteLimits.maxSubjectBytes)
            let verifiable = try r.bool("verifiable truth")
            let f = try r.u16()
            let ct = try r.u32(), rt = try r.u32()
            let n = try r.count("voters", limit: VoteLimits.maxVoters)
            var voters: [Voter] = []
            voters.reserveCapacity(n)
            for _ in 0..<n {
                let id = try NodeID(bytes: r.raw(NodeID.byteCount))
                let key = try PublicKey(bytes: r.raw(Sodium.publicKeyBytes))
                voters.append(Voter(id: id, key: key, weight: try r.u64()))
            }
            try r.finish()
            try self.init(network: network, sequence: sequence, criticality: criticality, subject: subject,
                          verifiableTruth: verifiable, assumedFaults: f, commitTicks: ct, revealTicks: rt, sortedVoters: voters)
        } catch let e as DecodeError {
            throw VoteError(.malformed(what: "round spec", e))
        } catch let e as VoteError {
            throw e
        } catch {
            throw VoteError(.malformed(what: "round spec", DecodeError(.invalid(field: "spec", reason: "\(error)"), at: 0)))
        }
    }
}

/// Standard subject encodings for the two questions the node agent asks.
public enum RoundSubject {
    /// "Has `node` failed?" Vote `.yes` to confirm the failure.
    public static func failure(of node: NodeID, incarnation: UInt64) -> [UInt8] {
        var w = ByteWriter(); w.u8(1); w.raw(node.bytes); w.u64(incarnation); return w.bytes
    }
    /// "Admit `node` (as a sclerotium when `asSclerotium`)?" Vote `.yes` to admit.
    public static func admission(of node: NodeID, key: PublicKey, asSclerotium: Bool) -> [UInt8] {
        var w = ByteWriter(); w.u8(2); w.raw(node.bytes); w.raw(key.bytes); w.bool(asSclerotium); return w.bytes
    }
    /// A health or verification check, named by the caller (names longer than 200 UTF-8 bytes are
    /// cut at a character boundary, so the subject always fits `VoteLimits.maxSubjectBytes`).
    public static func health(check: String, target: NodeID) -> [UInt8] {
        var name = ""
        for ch in check {
            if name.utf8.count + ch.utf8.count > 200 { break }
            name.append(ch)
        }
        var w = ByteWriter(); w.u8(3); w.raw(target.bytes); w.string(name); return w.bytes
    }
}

/// Signature and hash domains. A signature or hash made for one purpose can never stand in for another.
enum VoteDomain {
    static let roundID = "mycelium/vote/round"
    static let commitment = "mycelium/vote/commitment"
    static let commitSig: [UInt8] = Array("mycelium/vote/commit/v1\0".utf8)
    static let revealSig: [UInt8] = Array("mycelium/vote/reveal/v1\0".utf8)
    static let summarySig: [UInt8] = Array("mycelium/vote/summary/v1\0".utf8)
    static let summaryDigest = "mycelium/vote/summary-commits"
}
