import MyceliumCore

/// What a member may do. Stored as a bit set in certificates and spores.
public struct Roles: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// An ordinary member: runs workloads, answers probes.
    public static let member = Roles(rawValue: 1 << 0)
    /// May be chosen as a sclerotium (a voting member of the primary spore's Raft group).
    public static let sclerotiumEligible = Roles(rawValue: 1 << 1)
    /// May issue invites on the network's behalf.
    public static let inviter = Roles(rawValue: 1 << 2)

    static let names: [(Roles, String)] = [(.member, "member"), (.sclerotiumEligible, "sclerotium-eligible"), (.inviter, "inviter")]

    public var description: String {
        let n = Roles.names.filter { contains($0.0) }.map(\.1)
        return n.isEmpty ? "none" : n.joined(separator: ",")
    }

    public init(parsing text: String) throws(IdentityError) {
        var r: Roles = []
        for part in text.split(separator: ",") where !part.isEmpty {
            guard let (role, _) = Roles.names.first(where: { $0.1 == part }) else {
                throw IdentityError(.malformed(what: "roles", reason: "unknown role '\(part)'; known: \(Roles.names.map(\.1).joined(separator: ", "))"))
            }
            r.insert(role)
        }
        self = r
    }
}

/// The network's root of trust: the genesis public key, and the network ID derived from it.
public struct NetworkIdentity: Hashable, Sendable {
    public let genesisKey: PublicKey
    public let id: NetworkID

    public init(genesisKey: PublicKey) {
        self.genesisKey = genesisKey
        self.id = NetworkID(genesisKey: genesisKey)
    }
}

/// Seconds by which members' clocks may differ. A peer further off is refused at the handshake with
/// a clear error; a certificate is accepted this long before its issue time. With renewal at two
/// thirds of a lifetime, a lifetime of L leaves L/3 − this for a renewal to land (docs/MEMBERSHIP.md).
public let maxClockSkew: Int64 = 10

/// The shortest certificate lifetime a network may choose (see `maxClockSkew`).
public let minimumCertificateLifetime: Int64 = 60

/// A node's signed membership in one network.
///
/// Issued by generation 0 (the genesis key: the founders, before the handoff) or by a quorum of the
/// sclerotia of generation g ≥ 1 (everything after). The genesis key travels in the certificate and
/// must hash to the network ID, so it names its network by itself; a verifier also needs the
/// sclerotia chain (`SclerotiaChain`) to check a generation-g quorum.
public struct MembershipCertificate: Hashable, Sendable {
    static let magic: [UInt8] = Array("MYC2".utf8)
    static let version: UInt8 = 2
    static let domain: [UInt8] = Array("mycelium/membership-certificate/v2\0".utf8)
    /// The largest encoding (a quorum of the largest link).
    public static let maxEncodedSize = 4 + 1 + 16 + 32 + 16 + 32 + 4 + 8 + 8 + 8 + 8 + 1 + maxLinkMembers * 65

    public let networkID: NetworkID
    public let genesisKey: PublicKey
    public let nodeID: NodeID
    public let nodeKey: PublicKey
    public let roles: Roles
    public let serial: UInt64
    public let issuedAt: Int64
    public let expiresAt: Int64
    /// 0: signed by the genesis key; g ≥ 1: by a quorum of sclerotia link g.
    public let generation: UInt64
    public let signatures: [QuorumSignature]

    /// Its lifetime in seconds; saturating, since a peer chooses both times (never traps).
    public var lifetime: Int64 {
        let (d, overflow) = expiresAt.subtractingReportingOverflow(issuedAt)
        return overflow ? (expiresAt > issuedAt ? Int64.max : 0) : max(0, d)
    }
    /// When the network renews it: at two thirds of its lifetime.
    public var renewAt: Int64 {
        let (t, overflow) = issuedAt.addingReportingOverflow(lifetime / 3 * 2)
        return overflow ? Int64.max : t
    }

    /// Whether this certificate, issued by the network for the same node and key, supersedes `held`
    /// (a renewal: later expiry; a role change: other roles). The agent and the membership
    /// controller both take a node's newest certificate by this rule.
    public func supersedes(_ held: MembershipCertificate) -> Bool {
        self != held && nodeID == held.nodeID && nodeKey == held.nodeKey && (expiresAt > held.expiresAt || roles != held.roles)
    }

    /// Issues a certificate signed by the genesis key (generation 0).
    public static func issue(by genesis: SigningKey, nodeID: NodeID, nodeKey: PublicKey, roles: Roles,
                             serial: UInt64, issuedAt: Int64, validFor seconds: Int64) -> MembershipCertificate {
        let c = unsigned(network: NetworkIdentity(genesisKey: genesis.publicKey), nodeID: nodeID, nodeKey: nodeKey, roles: roles,
                         serial: serial, issuedAt: issuedAt, expiresAt: issuedAt + seconds, generation: 0)
        return c.withSignatures([QuorumSignature(index: 0, signature: genesis.sign(c.signedBytes))])
    }

    /// A certificate without signatures: the body a quorum signs.
    public static func unsigned(network: NetworkIdentity, nodeID: NodeID, nodeKey: PublicKey, roles: Roles, serial: UInt64,
                                issuedAt: Int64, expiresAt: Int64, generation: UInt64) -> MembershipCertificate {
        MembershipCertificate(networkID: network.id, genesisKey: network.genesisKey, nodeID: nodeID, nodeKey: nodeKey, roles: roles,
                              serial: serial, issuedAt: issuedAt, expiresAt: expiresAt, generation: generation, signatures: [])
    }

    init(networkID: NetworkID, genesisKey: PublicKey, nodeID: NodeID, nodeKey: PublicKey, roles: Roles,
         serial: UInt64, issuedAt: Int64, expiresAt: Int64, generation: UInt64, signatures: [QuorumSignature]) {
        self.networkID = networkID; self.genesisKey = genesisKey; self.nodeID = nodeID; self.nodeKey = nodeKey
        self.roles = roles; self.serial = serial; self.issuedAt = issuedAt; self.expiresAt = expiresAt
        self.generation = generation; self.signatures = signatures
    }

    public func withSignatures(_ sigs: [QuorumSignature]) -> MembershipCertificate {
        MembershipCertificate(networkID: networkID, genesisKey: genesisKey, nodeID: nodeID, nodeKey: nodeKey, roles: roles,
                              serial: serial, issuedAt: issuedAt, expiresAt: expiresAt, generation: generation,
                              signatures: sigs.sorted { $0.index < $1.index })
    }

    /// The same certificate without its signatures.
    public var body: MembershipCertificate { withSignatures([]) }

    func encodeBody(into w: inout ByteWriter) {
        w.raw(Self.magic); w.u8(Self.version)
        w.raw(networkID.bytes); w.raw(genesisKey.bytes); w.raw(nodeID.bytes); w.raw(nodeKey.bytes)
        w.u32(roles.rawValue); w.u64(serial); w.i64(issuedAt); w.i64(expiresAt); w.u64(generation)
    }

    /// What each signer signs.
    public var signedBytes: [UInt8] {
        var w = ByteWriter(capacity: 160)
        w.raw(Self.domain)
        encodeBody(into: &w)
        return w.bytes
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 140 + signatures.count * 65)
        encodeBody(into: &w)
        QuorumSignature.encode(signatures, into: &w)
        return w.bytes
    }

    /// Decodes the bytes only; call `verify` before trusting anything in it.
    public init(decoding bytes: [UInt8]) throws(IdentityError) {
        do {
            var r = ByteReader(bytes)
            guard try r.raw(4) == Self.magic else { throw DecodeError(.badMagic, at: 0) }
            let v = try r.u8()
            if v != Self.version { throw DecodeError(.unknownVersion(field: "certificate version", value: UInt64(v)), at: 4) }
            networkID = try NetworkID(bytes: r.raw(16))
            genesisKey = try PublicKey(bytes: r.raw(32))
            nodeID = try NodeID(bytes: r.raw(16))
            nodeKey = try PublicKey(bytes: r.raw(32))
            roles = Roles(rawValue: try r.u32())
            serial = try r.u64()
            issuedAt = try r.i64()
            expiresAt = try r.i64()
            generation = try r.u64()
            signatures = try QuorumSignature.decode(&r, limit: maxLinkMembers)
            try r.finish()
        } catch {
            throw IdentityError.decoding("membership certificate", error)
        }
    }

    /// Checks, in order: the network, the genesis key, the issuer (generation known, still in office
    /// at the issue time, a quorum of valid signatures), the validity window and revocation. Each
    /// failure has its own error code, so the log says exactly why a peer was refused.
    public func verify(chain: SclerotiaChain, now: Int64, revoked: Set<NodeID> = []) throws(IdentityError) {
        if networkID != chain.network { throw IdentityError(.wrongNetwork(expected: chain.network, actual: networkID)) }
        if genesisKey != chain.genesisKey || NetworkID(genesisKey: genesisKey) != networkID {
            throw IdentityError(.notIssuedByGenesis(what: "membership certificate"))
        }
        if let end = chain.supersededAt(generation), issuedAt > end {
            throw IdentityError(.supersededIssuer(generation: generation, supersededAt: end, issuedAt: issuedAt))
        }
        try chain.verifyQuorum(signatures, over: signedBytes, generation: generation, what: "membership certificate of \(nodeID)")
        if expiresAt <= issuedAt { throw IdentityError(.malformed(what: "membership certificate", reason: "expires before it is issued")) }
        if now + maxClockSkew < issuedAt { throw IdentityError(.notYetValid(what: "membership certificate", validFrom: issuedAt, now: now)) }
        if now >= expiresAt { throw IdentityError(.expired(what: "membership certificate", expiredAt: expiresAt, now: now)) }
        if revoked.contains(nodeID) { throw IdentityError(.revoked(node: nodeID)) }
    }

    /// Verifies against the genesis key alone (generation 0 only): for tools that hold no chain.
    public func verify(network: NetworkID, now: Int64, revoked: Set<NodeID> = []) throws(IdentityError) {
        if networkID != network { throw IdentityError(.wrongNetwork(expected: network, actual: networkID)) }
        try verify(chain: SclerotiaChain(genesisKey: genesisKey), now: now, revoked: revoked)
    }
}
