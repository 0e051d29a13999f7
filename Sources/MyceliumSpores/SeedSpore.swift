import MyceliumCore
import MyceliumIdentity

/// A signed snapshot of the primary spore, written by the Raft leader to external places (a
/// directory, a mounted share, an HTTP endpoint) so a node starting cold, or cut off, can find the
/// network. The signer must be a sclerotium *of the spore it signs* and hold a valid certificate.
public struct SeedSpore: Sendable, Equatable {
    static let magic: [UInt8] = Array("MYSS".utf8)
    static let domain: [UInt8] = Array("mycelium/seed-spore/v1\0".utf8)
    /// A seed spore's size is bounded by the spore's limits; this is a hard cap for readers.
    public static let maxSize = 4 << 20

    public let spore: PrimarySpore
    public let sporeBytes: [UInt8]
    public let signer: MembershipCertificate
    public let writtenAt: Int64
    public let signature: [UInt8]

    public var epoch: SporeEpoch { spore.epoch }

    public init(spore: PrimarySpore, signer: MembershipCertificate, key: SigningKey, writtenAt: Int64) {
        self.spore = spore
        self.sporeBytes = spore.encoded()
        self.signer = signer
        self.writtenAt = writtenAt
        self.signature = key.sign(Self.signedBytes(sporeBytes, signer.encoded(), writtenAt))
    }

    static func signedBytes(_ spore: [UInt8], _ signer: [UInt8], _ at: Int64) -> [UInt8] {
        var w = ByteWriter(capacity: spore.count + signer.count + 64)
        w.raw(domain); w.blob(spore); w.blob(signer); w.i64(at)
        return w.bytes
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: sporeBytes.count + 300)
        w.raw(Self.magic); w.blob(sporeBytes); w.blob(signer.encoded()); w.i64(writtenAt); w.raw(signature)
        return w.bytes
    }

    /// Decodes and verifies. Each refusal has its own error: a malformed or oversized file, entries
    /// beyond the limits, the wrong network, a bad signature, a signer that is not a sclerotium, or
    /// an epoch older than `knownEpoch` (a replayed old seed spore).
    public init(verifying bytes: [UInt8], network: NetworkID, knownEpoch: SporeEpoch?, now: Int64,
                limits: SporeLimits = SporeLimits()) throws(SporeError) {
        if bytes.count > Self.maxSize { throw SporeError(.beyondLimits("seed spore size: \(bytes.count) > \(Self.maxSize) bytes")) }
        let sporeBytes: [UInt8], signerBytes: [UInt8], at: Int64, sig: [UInt8]
        do {
            var r = ByteReader(bytes)
            guard try r.raw(4) == Self.magic else { throw DecodeError(.badMagic, at: 0) }
            sporeBytes = try r.blob("spore", limit: Self.maxSize)
            signerBytes = try r.blob("signer", limit: MembershipCertificate.maxEncodedSize)
            at = try r.i64()
            sig = try r.raw(64)
            try r.finish()
        } catch {
            throw SporeError(.malformed("seed spore: \(error)"))
        }
        let signer = try SporeError.wrap { () throws(IdentityError) in try MembershipCertificate(decoding: signerBytes) }
        if signer.networkID != network { throw SporeError(.wrongNetwork(expected: network, actual: signer.networkID)) }
        guard signer.nodeKey.verify(sig, for: Self.signedBytes(sporeBytes, signerBytes, at)) else {
            throw SporeError(.badSignature("seed spore"))
        }
        // The spore's chain was verified link by link from its genesis key while decoding: the signer's
        // certificate is checked against it, as a light client would (docs/MEMBERSHIP.md).
        let spore = try PrimarySpore(decoding: sporeBytes, limits: limits)
        if spore.network.id != network { throw SporeError(.wrongNetwork(expected: network, actual: spore.network.id)) }
        try SporeError.wrap { () throws(IdentityError) in try signer.verify(chain: spore.chain, now: now) }
        // Distributed: a sclerotium signs. Bootstrap: the bootstrap agent (a member that may invite).
        let signerMayWrite = spore.phase == .distributed
            ? spore.sclerotia.contains(signer.nodeID)
            : spore.members[signer.nodeID]?.roles.contains(.inviter) == true
        guard signerMayWrite else {
            throw SporeError(.notASclerotium(signer.nodeID))
        }
        // Equal is the same state read again (fine); older is a replay or a stale copy.
        if let knownEpoch, spore.epoch < knownEpoch { throw SporeError(.staleEpoch(have: knownEpoch, got: spore.epoch)) }
        self.spore = spore
        self.sporeBytes = sporeBytes
        self.signer = signer
        self.writtenAt = at
        self.signature = sig
    }
}

extension SporeError {
    static func wrap<T>(_ body: () throws(IdentityError) -> T) throws(SporeError) -> T {
        do { return try body() } catch { throw SporeError(.refused(error)) }
    }
}

/// What a node last learned, cached on its own disk and signed by the node itself, so after a
/// restart it can reconnect before anything else answers.
public struct LatentSpore: Sendable, Equatable {
    static let magic: [UInt8] = Array("MYL1".utf8)
    static let domain: [UInt8] = Array("mycelium/latent-spore/v1\0".utf8)

    public struct Peer: Sendable, Equatable {
        public var id: NodeID
        public var key: PublicKey
        public var addresses: [String]
        public var isSclerotium: Bool
    }

    public let network: NetworkID
    public let owner: NodeID
    public let epoch: SporeEpoch
    public let savedAt: Int64
    public let peers: [Peer]

    public init(from spore: PrimarySpore, owner: NodeID, savedAt: Int64) {
        network = spore.network.id
        self.owner = owner
        epoch = spore.epoch
        self.savedAt = savedAt
        peers = spore.presentMembers.map { Peer(id: $0.id, key: $0.key, addresses: $0.addresses, isSclerotium: spore.sclerotia.contains($0.id)) }
    }

    init(network: NetworkID, owner: NodeID, epoch: SporeEpoch, savedAt: Int64, peers: [Peer]) {
        self.network = network; self.owner = owner; self.epoch = epoch; self.savedAt = savedAt; self.peers = peers
    }

    func body() -> [UInt8] {
        var w = ByteWriter(capacity: 64 + peers.count * 100)
        w.raw(Self.magic); w.raw(network.bytes); w.raw(owner.bytes); w.u64(epoch.term); w.u64(epoch.index); w.i64(savedAt)
        w.u16(UInt16(peers.count))
        for p in peers {
            w.raw(p.id.bytes); w.raw(p.key.bytes); w.bool(p.isSclerotium)
            w.u16(UInt16(p.addresses.count)); for a in p.addresses { w.string(a) }
        }
        return w.bytes
    }

    public func encoded(signedBy key: SigningKey) -> [UInt8] {
        let b = body()
        return b + key.sign(Self.domain + b)
    }

    public init(verifying bytes: [UInt8], ownerKey: PublicKey, limits: SporeLimits = SporeLimits()) throws(SporeError) {
        guard bytes.count > 64 else { throw SporeError(.malformed("latent spore: \(bytes.count) bytes")) }
        let body = Array(bytes.dropLast(64)), sig = Array(bytes.suffix(64))
        guard ownerKey.verify(sig, for: Self.domain + body) else { throw SporeError(.badSignature("latent spore")) }
        do {
            var r = ByteReader(body)
            guard try r.raw(4) == Self.magic else { throw DecodeError(.badMagic, at: 0) }
            network = try NetworkID(bytes: r.raw(16))
            owner = try NodeID(bytes: r.raw(16))
            epoch = SporeEpoch(term: try r.u64(), index: try r.u64())
            savedAt = try r.i64()
            let n = try r.count("peers", limit: limits.maxMembers)
            var ps: [Peer] = []
            for _ in 0..<n {
                let id = try NodeID(bytes: r.raw(16)), key = try PublicKey(bytes: r.raw(32)), scl = try r.bool()
                let na = try r.count("addresses", limit: limits.maxAddressesPerMember)
                var addrs: [String] = []
                for _ in 0..<na { addrs.append(try r.string("address", limit: limits.maxAddressLength)) }
                ps.append(Peer(id: id, key: key, addresses: addrs, isSclerotium: scl))
            }
            peers = ps
            try r.finish()
        } catch {
            throw SporeError(.malformed("latent spore: \(error)"))
        }
    }
}

/// Which view of the network wins: Primary > Seed > Latent; within a level, the higher epoch.
public struct SporeAuthority: Sendable, Comparable, CustomStringConvertible {
    public enum Level: Int, Sendable, Comparable, CustomStringConvertible {
        case latent = 0, seed = 1, primary = 2
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
        public var description: String { ["latent", "seed", "primary"][rawValue] }
    }

    public var level: Level
    public var epoch: SporeEpoch

    public init(_ level: Level, _ epoch: SporeEpoch) { self.level = level; self.epoch = epoch }

    public static func < (a: SporeAuthority, b: SporeAuthority) -> Bool {
        a.level != b.level ? a.level < b.level : a.epoch < b.epoch
    }

    public var description: String { "\(level)@\(epoch)" }
}
