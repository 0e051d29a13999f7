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

/// Seconds of clock skew tolerated between nodes when checking "issued at" times.
public let allowedClockSkew: Int64 = 300

/// A node's signed membership in one network.
///
/// Self-certifying: the issuer's key travels in the certificate and must hash to the network ID,
/// so a verifier needs only the network ID it belongs to. For now the genesis key issues every
/// certificate; admission by the primary spore comes with the node agent.
public struct MembershipCertificate: Hashable, Sendable {
    static let magic: [UInt8] = Array("MYC1".utf8)
    static let version: UInt8 = 1
    static let domain: [UInt8] = Array("mycelium/membership-certificate/v1\0".utf8)
    public static let encodedSize = 4 + 1 + 16 + 32 + 16 + 32 + 4 + 8 + 8 + 8 + 64

    public let networkID: NetworkID
    public let issuerKey: PublicKey
    public let nodeID: NodeID
    public let nodeKey: PublicKey
    public let roles: Roles
    public let serial: UInt64
    public let issuedAt: Int64
    public let expiresAt: Int64
    public let signature: [UInt8]

    /// Issues a certificate signed by `genesis`.
    public static func issue(by genesis: SigningKey, nodeID: NodeID, nodeKey: PublicKey, roles: Roles,
                             serial: UInt64, issuedAt: Int64, validFor seconds: Int64) -> MembershipCertificate {
        let net = NetworkID(genesisKey: genesis.publicKey)
        let body = encodeBody(net, genesis.publicKey, nodeID, nodeKey, roles, serial, issuedAt, issuedAt + seconds)
        return MembershipCertificate(networkID: net, issuerKey: genesis.publicKey, nodeID: nodeID, nodeKey: nodeKey,
                                     roles: roles, serial: serial, issuedAt: issuedAt, expiresAt: issuedAt + seconds,
                                     signature: genesis.sign(domain + body))
    }

    init(networkID: NetworkID, issuerKey: PublicKey, nodeID: NodeID, nodeKey: PublicKey, roles: Roles,
         serial: UInt64, issuedAt: Int64, expiresAt: Int64, signature: [UInt8]) {
        self.networkID = networkID; self.issuerKey = issuerKey; self.nodeID = nodeID; self.nodeKey = nodeKey
        self.roles = roles; self.serial = serial; self.issuedAt = issuedAt; self.expiresAt = expiresAt
        self.signature = signature
    }

    static func encodeBody(_ net: NetworkID, _ issuer: PublicKey, _ node: NodeID, _ key: PublicKey, _ roles: Roles,
                           _ serial: UInt64, _ issuedAt: Int64, _ expiresAt: Int64) -> [UInt8] {
        var w = ByteWriter(capacity: encodedSize)
        w.raw(magic); w.u8(version)
        w.raw(net.bytes); w.raw(issuer.bytes); w.raw(node.bytes); w.raw(key.bytes)
        w.u32(roles.rawValue); w.u64(serial); w.i64(issuedAt); w.i64(expiresAt)
        return w.bytes
    }

    public func encoded() -> [UInt8] {
        Self.encodeBody(networkID, issuerKey, nodeID, nodeKey, roles, serial, issuedAt, expiresAt) + signature
    }

    /// Decodes the bytes only; call `verify` before trusting anything in it.
    public init(decoding bytes: [UInt8]) throws(IdentityError) {
        do {
            var r = ByteReader(bytes)
            guard try r.raw(4) == Self.magic else { throw DecodeError(.badMagic, at: 0) }
            let v = try r.u8()
            if v != Self.version { throw DecodeError(.unknownVersion(field: "certificate version", value: UInt64(v)), at: 4) }
            networkID = try NetworkID(bytes: r.raw(16))
            issuerKey = try PublicKey(bytes: r.raw(32))
            nodeID = try NodeID(bytes: r.raw(16))
            nodeKey = try PublicKey(bytes: r.raw(32))
            roles = Roles(rawValue: try r.u32())
            serial = try r.u64()
            issuedAt = try r.i64()
            expiresAt = try r.i64()
            signature = try r.raw(64)
            try r.finish()
        } catch let e as DecodeError {
            throw IdentityError(.decode(what: "membership certificate", e))
        } catch let e as IdentityError {
            throw e
        } catch {
            throw IdentityError(.malformed(what: "membership certificate", reason: "\(error)"))
        }
    }

    /// Checks, in order: the network, the issuer, the signature, the validity window and revocation.
    /// Each failure has its own error code, so the log says exactly why a peer was refused.
    public func verify(network: NetworkID, now: Int64, revoked: Set<NodeID> = []) throws(IdentityError) {
        if networkID != network { throw IdentityError(.wrongNetwork(expected: network, actual: networkID)) }
        if NetworkID(genesisKey: issuerKey) != networkID { throw IdentityError(.notIssuedByGenesis(what: "membership certificate")) }
        let body = Self.encodeBody(networkID, issuerKey, nodeID, nodeKey, roles, serial, issuedAt, expiresAt)
        if !issuerKey.verify(signature, for: Self.domain + body) {
            throw IdentityError(.badSignature(what: "membership certificate"))
        }
        if now + allowedClockSkew < issuedAt { throw IdentityError(.notYetValid(what: "membership certificate", validFrom: issuedAt, now: now)) }
        if now >= expiresAt { throw IdentityError(.expired(what: "membership certificate", expiredAt: expiresAt, now: now)) }
        if revoked.contains(nodeID) { throw IdentityError(.revoked(node: nodeID)) }
    }
}
