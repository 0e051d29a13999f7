import MyceliumCore

/// A one-time, signed, expiring invitation to join a network, as a token people can paste.
///
/// It carries the genesis key (so the joiner can check the signature and the network ID without
/// any prior knowledge), where to reach the inviter, a 32-byte one-time secret and an expiry.
/// The inviter keeps an `InviteLedger`, so a token works once.
public struct Invite: Hashable, Sendable {
    static let magic: [UInt8] = Array("MYI1".utf8)
    static let version: UInt8 = 1
    static let domain: [UInt8] = Array("mycelium/invite/v1\0".utf8)
    public static let tokenPrefix = "myc-invite-"
    public static let maxAddresses = 8
    public static let maxAddressLength = 255

    public let networkID: NetworkID
    public let genesisKey: PublicKey
    public let inviter: NodeID
    public let addresses: [String]
    public let roles: Roles
    public let secret: [UInt8]
    public let issuedAt: Int64
    public let expiresAt: Int64
    public let signature: [UInt8]

    public static func create(genesis: SigningKey, inviter: NodeID, addresses: [String], roles: Roles,
                              issuedAt: Int64, validFor seconds: Int64,
                              secret: [UInt8] = Sodium.randomBytes(32)) throws(IdentityError) -> Invite {
        if addresses.count > maxAddresses {
            throw IdentityError(.malformed(what: "invite", reason: "at most \(maxAddresses) addresses"))
        }
        if let long = addresses.first(where: { $0.utf8.count > maxAddressLength }) {
            throw IdentityError(.malformed(what: "invite", reason: "address '\(long.prefix(40))…' is over \(maxAddressLength) bytes"))
        }
        let net = NetworkID(genesisKey: genesis.publicKey)
        let body = encodeBody(net, genesis.publicKey, inviter, addresses, roles, secret, issuedAt, issuedAt + seconds)
        return Invite(networkID: net, genesisKey: genesis.publicKey, inviter: inviter, addresses: addresses, roles: roles,
                      secret: secret, issuedAt: issuedAt, expiresAt: issuedAt + seconds, signature: genesis.sign(domain + body))
    }

    init(networkID: NetworkID, genesisKey: PublicKey, inviter: NodeID, addresses: [String], roles: Roles,
         secret: [UInt8], issuedAt: Int64, expiresAt: Int64, signature: [UInt8]) {
        self.networkID = networkID; self.genesisKey = genesisKey; self.inviter = inviter; self.addresses = addresses
        self.roles = roles; self.secret = secret; self.issuedAt = issuedAt; self.expiresAt = expiresAt
        self.signature = signature
    }

    static func encodeBody(_ net: NetworkID, _ genesis: PublicKey, _ inviter: NodeID, _ addresses: [String],
                           _ roles: Roles, _ secret: [UInt8], _ issuedAt: Int64, _ expiresAt: Int64) -> [UInt8] {
        var w = ByteWriter(capacity: 200)
        w.raw(magic); w.u8(version)
        w.raw(net.bytes); w.raw(genesis.bytes); w.raw(inviter.bytes)
        w.u16(UInt16(addresses.count))
        for a in addresses { w.string(a) }
        w.u32(roles.rawValue)
        w.raw(secret)
        w.i64(issuedAt); w.i64(expiresAt)
        return w.bytes
    }

    public func encoded() -> [UInt8] {
        Self.encodeBody(networkID, genesisKey, inviter, addresses, roles, secret, issuedAt, expiresAt) + signature
    }

    public var token: String { Self.tokenPrefix + Base64URL.encode(encoded()) }

    /// The identifier the ledger keeps: a hash of the secret, so the ledger holds no usable secret.
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

    /// Checks the signature, the network and the expiry. Whether it was already used is the
    /// inviter's `InviteLedger`'s call.
    public func verify(network: NetworkID?, now: Int64) throws(IdentityError) {
        if NetworkID(genesisKey: genesisKey) != networkID { throw IdentityError(.notIssuedByGenesis(what: "invite")) }
        let body = Self.encodeBody(networkID, genesisKey, inviter, addresses, roles, secret, issuedAt, expiresAt)
        if !genesisKey.verify(signature, for: Self.domain + body) { throw IdentityError(.badSignature(what: "invite")) }
        if let network, network != networkID { throw IdentityError(.wrongNetwork(expected: network, actual: networkID)) }
        if now + allowedClockSkew < issuedAt { throw IdentityError(.notYetValid(what: "invite", validFrom: issuedAt, now: now)) }
        if now >= expiresAt { throw IdentityError(.expired(what: "invite", expiredAt: expiresAt, now: now)) }
    }
}

/// The inviter's record of the invites it issued and which were used, kept on disk.
///
/// `redeem` writes the "used" mark durably before it returns, so a crash right after a join cannot
/// let the same token in twice.
public struct InviteLedger: Sendable {
    public struct Record: Hashable, Sendable {
        public var expiresAt: Int64
        public var used: Bool
    }

    public private(set) var records: [[UInt8]: Record] = [:]
    public let path: String?
    public static let maxRecords = 10_000

    /// A ledger persisted at `path` (loaded if it exists), or in memory only when `path` is nil.
    public init(path: String?) throws(IdentityError) {
        self.path = path
        guard let path, AtomicFile.exists(path) else { return }
        do {
            let payload = try ChecksummedFile.read(kind: FileKind.inviteLedger, from: path)
            var r = ByteReader(payload)
            let n = Int(try r.u32())
            if n > Self.maxRecords { throw DecodeError(.tooLong(field: "invite records", length: n, limit: Self.maxRecords), at: 0) }
            for _ in 0..<n {
                let key = try r.raw(16)
                let exp = try r.i64()
                let used = try r.bool("used")
                records[key] = Record(expiresAt: exp, used: used)
            }
            try r.finish()
        } catch let e as FileError {
            throw IdentityError(.file(e))
        } catch let e as DecodeError {
            throw IdentityError(.file(FileError(path: path, .corrupt(e))))
        } catch {
            throw IdentityError(.malformed(what: "invite ledger", reason: "\(error)"))
        }
    }

    public mutating func record(_ invite: Invite, now: Int64) throws(IdentityError) {
        prune(now: now)
        records[invite.ledgerKey] = Record(expiresAt: invite.expiresAt, used: false)
        try save()
    }

    /// Verifies `invite` for `network` and marks it used. Refuses, each with its own error, a
    /// tampered, wrong-network, expired, unknown or already-used invite.
    public mutating func redeem(_ invite: Invite, network: NetworkID, now: Int64) throws(IdentityError) {
        try invite.verify(network: network, now: now)
        guard let rec = records[invite.ledgerKey] else { throw IdentityError(.inviteUnknown) }
        if rec.used { throw IdentityError(.inviteAlreadyUsed) }
        records[invite.ledgerKey]?.used = true
        do {
            try save()
        } catch {
            records[invite.ledgerKey]?.used = false
            throw error
        }
    }

    /// Drops records that expired more than a day ago; a used mark is only needed while the
    /// token could still pass its expiry check.
    mutating func prune(now: Int64) {
        records = records.filter { $0.value.expiresAt + 86_400 > now }
    }

    func save() throws(IdentityError) {
        guard let path else { return }
        var w = ByteWriter()
        w.u32(UInt32(records.count))
        for (k, v) in records.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            w.raw(k); w.i64(v.expiresAt); w.bool(v.used)
        }
        do { try ChecksummedFile.write(kind: FileKind.inviteLedger, payload: w.bytes, to: path, mode: 0o600) } catch {
            throw IdentityError(.file(error))
        }
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
