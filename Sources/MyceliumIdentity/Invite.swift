import MyceliumCore

/// A one-time, signed, expiring invitation to join a network, as a token people can paste.
///
/// Any member with the inviter role makes one, signed with its own node key. It carries the
/// genesis key (so the joiner knows the network ID without any prior knowledge), the inviter and
/// its key, where to reach it, a 32-byte one-time secret and an expiry. The network honours it
/// through the primary spore: the inviter must be a present member with the inviter role and the
/// key it signed with, and the spore marks the token used, so it works once anywhere.
public struct Invite: Hashable, Sendable {
    static let magic: [UInt8] = Array("MYI2".utf8)
    static let version: UInt8 = 2
    static let domain: [UInt8] = Array("mycelium/invite/v2\0".utf8)
    public static let tokenPrefix = "myc-invite-"
    public static let maxAddresses = 8
    public static let maxAddressLength = 255

    public let networkID: NetworkID
    public let genesisKey: PublicKey
    public let inviter: NodeID
    public let inviterKey: PublicKey
    public let addresses: [String]
    public let roles: Roles
    public let secret: [UInt8]
    public let issuedAt: Int64
    public let expiresAt: Int64
    public let signature: [UInt8]

    public static func create(genesisKey: PublicKey, inviter: NodeID, key: SigningKey, addresses: [String], roles: Roles,
                              issuedAt: Int64, validFor seconds: Int64,
                              secret: [UInt8] = Sodium.randomBytes(32)) throws(IdentityError) -> Invite {
        if addresses.count > maxAddresses {
            throw IdentityError(.malformed(what: "invite", reason: "at most \(maxAddresses) addresses"))
        }
        if let long = addresses.first(where: { $0.utf8.count > maxAddressLength }) {
            throw IdentityError(.malformed(what: "invite", reason: "address '\(long.prefix(40))…' is over \(maxAddressLength) bytes"))
        }
        let net = NetworkID(genesisKey: genesisKey)
        let body = encodeBody(net, genesisKey, inviter, key.publicKey, addresses, roles, secret, issuedAt, issuedAt + seconds)
        return Invite(networkID: net, genesisKey: genesisKey, inviter: inviter, inviterKey: key.publicKey, addresses: addresses,
                      roles: roles, secret: secret, issuedAt: issuedAt, expiresAt: issuedAt + seconds, signature: key.sign(domain + body))
    }

    init(networkID: NetworkID, genesisKey: PublicKey, inviter: NodeID, inviterKey: PublicKey, addresses: [String], roles: Roles,
         secret: [UInt8], issuedAt: Int64, expiresAt: Int64, signature: [UInt8]) {
        self.networkID = networkID; self.genesisKey = genesisKey; self.inviter = inviter; self.inviterKey = inviterKey
        self.addresses = addresses
        self.roles = roles; self.secret = secret; self.issuedAt = issuedAt; self.expiresAt = expiresAt
        self.signature = signature
    }

    static func encodeBody(_ net: NetworkID, _ genesis: PublicKey, _ inviter: NodeID, _ inviterKey: PublicKey, _ addresses: [String],
                           _ roles: Roles, _ secret: [UInt8], _ issuedAt: Int64, _ expiresAt: Int64) -> [UInt8] {
        var w = ByteWriter(capacity: 240)
        w.raw(magic); w.u8(version)
        w.raw(net.bytes); w.raw(genesis.bytes); w.raw(inviter.bytes); w.raw(inviterKey.bytes)
        w.u16(UInt16(addresses.count))
        for a in addresses { w.string(a) }
        w.u32(roles.rawValue)
        w.raw(secret)
        w.i64(issuedAt); w.i64(expiresAt)
        return w.bytes
    }

    public func encoded() -> [UInt8] {
        Self.encodeBody(networkID, genesisKey, inviter, inviterKey, addresses, roles, secret, issuedAt, expiresAt) + signature
    }

    public var token: String { Self.tokenPrefix + Base64URL.encode(encoded()) }

    /// The identifier the spore keeps for a used invite: a hash of the secret, so it holds no usable secret.
    public var ledgerKey: [UInt8] { Sodium.hash(secret, domain: "mycelium/invite-ledger", length: 16) }

    public init(decoding bytes: [UInt8]) throws(IdentityError) {
        do {
            var r = ByteReader(bytes)
            guard try r.raw(4) == Self.magic else { throw DecodeError(.badMagic, at: 0) }
            let v = try r.u8()
            if v != Self.version { throw DecodeError(.unknownVersion(field: "invite version", value: UInt64(v)), at: 4) }
            networkID = try NetworkID(bytes: r.raw(16))
            genesisKey = try PublicKey(bytes: r.raw(32))
            inviter = try NodeID(bytes: r.raw(16))
            inviterKey = try PublicKey(bytes: r.raw(32))
            let n = try r.count("addresses", limit: Self.maxAddresses)
            var addrs: [String] = []
            for _ in 0..<n { addrs.append(try r.string("address", limit: Self.maxAddressLength)) }
            addresses = addrs
            roles = Roles(rawValue: try r.u32())
            secret = try r.raw(32)
            issuedAt = try r.i64()
            expiresAt = try r.i64()
            signature = try r.raw(64)
            try r.finish()
        } catch let e as DecodeError {
            throw IdentityError(.decode(what: "invite", e))
        } catch let e as IdentityError {
            throw e
        } catch {
            throw IdentityError(.malformed(what: "invite", reason: "\(error)"))
        }
    }

    /// Parses a pasted token (surrounding whitespace is ignored).
    public init(token: String) throws(IdentityError) {
        let t = token.trimmingWhitespaceAndNewlines()
        guard t.hasPrefix(Self.tokenPrefix) else {
            throw IdentityError(.malformed(what: "invite token", reason: "it must start with '\(Self.tokenPrefix)'"))
        }
        guard let bytes = Base64URL.decode(t.dropFirst(Self.tokenPrefix.count)) else {
            throw IdentityError(.malformed(what: "invite token", reason: "it is not valid base64url; was it cut when copied?"))
        }
        try self.init(decoding: bytes)
    }

    /// Checks the signature (by the key the invite names), the network and the expiry. Whether the
    /// inviter may invite, with that key, and whether the token was used, is the primary spore's call.
    public func verify(network: NetworkID?, now: Int64) throws(IdentityError) {
        if NetworkID(genesisKey: genesisKey) != networkID { throw IdentityError(.notIssuedByGenesis(what: "invite")) }
        let body = Self.encodeBody(networkID, genesisKey, inviter, inviterKey, addresses, roles, secret, issuedAt, expiresAt)
        if !inviterKey.verify(signature, for: Self.domain + body) { throw IdentityError(.badSignature(what: "invite")) }
        if let network, network != networkID { throw IdentityError(.wrongNetwork(expected: network, actual: networkID)) }
        if now + maxClockSkew < issuedAt { throw IdentityError(.notYetValid(what: "invite", validFrom: issuedAt, now: now)) }
        if now >= expiresAt { throw IdentityError(.expired(what: "invite", expiredAt: expiresAt, now: now)) }
    }
}

extension String {
    func trimmingWhitespaceAndNewlines() -> Substring {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace || f.isNewline { s.removeFirst() }
        while let l = s.last, l.isWhitespace || l.isNewline { s.removeLast() }
        return s
    }
}
