// Membership issued by the network: quorum signatures, sclerotia links and the chain back to genesis.
//
// The scheme (docs/MEMBERSHIP.md has the reasoning and the numbers):
//  - generation 0 is the genesis key alone; it signs the first link and, before the handoff, the
//    founders' certificates;
//  - link g (g ≥ 1) names the sclerotia of generation g (node ID and key each) and is signed by a
//    quorum (⌊n/2⌋+1 of n) of generation g−1, so a verifier that trusts only the genesis key walks
//    the chain forward like a light client;
//  - a certificate carries its generation and the signatures of a quorum of that generation's
//    sclerotia (Ed25519 multi-signature: one 64-byte signature per signer, with its index in the link);
//  - a generation's authority ends when the next link is made: a certificate that claims generation g
//    but an issue time after link g+1 was made is refused (a removed sclerotium, or an old quorum,
//    cannot keep issuing).
//
// Everything here is pure and bounded, and every decoder is fuzzed.

import MyceliumCore

/// One signer's signature in a quorum, by its position in the signing generation's list.
public struct QuorumSignature: Hashable, Sendable {
    public let index: UInt8
    public let signature: [UInt8]

    public init(index: UInt8, signature: [UInt8]) { self.index = index; self.signature = signature }

    /// Signatures are written in strictly increasing index order, so a set has one encoding.
    public static func encode(_ sigs: [QuorumSignature], into w: inout ByteWriter) {
        w.u8(UInt8(sigs.count))
        for s in sigs { w.u8(s.index); w.raw(s.signature) }
    }

    public static func decode(_ r: inout ByteReader, limit: Int) throws -> [QuorumSignature] {
        let n = Int(try r.u8())
        if n > limit { throw DecodeError(.tooLong(field: "signatures", length: n, limit: limit), at: r.offset - 1) }
        var out: [QuorumSignature] = []
        out.reserveCapacity(n)
        for _ in 0..<n {
            let at = r.offset
            let s = QuorumSignature(index: try r.u8(), signature: try r.raw(64))
            if let last = out.last, s.index <= last.index {
                throw DecodeError(.invalid(field: "signature index", reason: "\(s.index) after \(last.index): indices must increase"), at: at)
            }
            out.append(s)
        }
        return out
    }
}

/// A sclerotium as a link names it.
public struct SclerotiumKey: Hashable, Sendable {
    public let id: NodeID
    public let key: PublicKey
    public init(id: NodeID, key: PublicKey) { self.id = id; self.key = key }
}

/// How many of `n` signers make a quorum: a majority.
public func quorumSize(of n: Int) -> Int { n / 2 + 1 }

/// The most sclerotia a link may name (the spore keeps at most 7; room to grow without a new format).
public let maxLinkMembers = 16

/// Generation g's sclerotia, signed by a quorum of generation g−1 (the genesis key for g = 1).
public struct SclerotiaLink: Hashable, Sendable {
    static let magic: [UInt8] = Array("MYK1".utf8)
    static let domain: [UInt8] = Array("mycelium/sclerotia-link/v1\0".utf8)

    public let networkID: NetworkID
    public let generation: UInt64
    /// Hash of the previous link's body (zeros for generation 1).
    public let previous: [UInt8]
    /// Sorted by node ID, no duplicates, 1…`maxLinkMembers`.
    public let members: [SclerotiumKey]
    /// Spore time at which the link was proposed; generation g−1 stops issuing from here on.
    public let issuedAt: Int64
    public let signatures: [QuorumSignature]

    /// An unsigned link (signatures are added as the previous generation signs).
    public static func proposal(network: NetworkID, generation: UInt64, previous: [UInt8], members: [SclerotiumKey],
                                issuedAt: Int64) -> SclerotiaLink {
        SclerotiaLink(networkID: network, generation: generation, previous: previous,
                      members: members.sorted { $0.id < $1.id }, issuedAt: issuedAt, signatures: [])
    }

    init(networkID: NetworkID, generation: UInt64, previous: [UInt8], members: [SclerotiumKey], issuedAt: Int64,
         signatures: [QuorumSignature]) {
        self.networkID = networkID; self.generation = generation; self.previous = previous
        self.members = members; self.issuedAt = issuedAt; self.signatures = signatures
    }

    public func withSignatures(_ sigs: [QuorumSignature]) -> SclerotiaLink {
        SclerotiaLink(networkID: networkID, generation: generation, previous: previous, members: members,
                      issuedAt: issuedAt, signatures: sigs.sorted { $0.index < $1.index })
    }

    func body() -> [UInt8] {
        var w = ByteWriter(capacity: 64 + members.count * 48)
        w.raw(Self.magic); w.raw(networkID.bytes); w.u64(generation); w.raw(previous)
        w.u8(UInt8(members.count))
        for m in members { w.raw(m.id.bytes); w.raw(m.key.bytes) }
        w.i64(issuedAt)
        return w.bytes
    }

    /// What each signer of the previous generation signs.
    public var signedBytes: [UInt8] { Self.domain + body() }

    /// The hash the next link names as `previous`.
    public var hash: [UInt8] { Sodium.hash(body(), domain: "mycelium/sclerotia-link-hash", length: 32) }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: encodedSize)
        w.raw(body())
        QuorumSignature.encode(signatures, into: &w)
        return w.bytes
    }

    public var encodedSize: Int { 4 + 16 + 8 + 32 + 1 + members.count * 48 + 8 + 1 + signatures.count * 65 }

    public init(decoding bytes: [UInt8]) throws(IdentityError) {
        var r = ByteReader(bytes)
        try self.init(from: &r)
        do { try r.finish() } catch { throw IdentityError.decoding("sclerotia link", error) }
    }

    public init(from r: inout ByteReader) throws(IdentityError) {
        do {
            guard try r.raw(4) == Self.magic else { throw DecodeError(.badMagic, at: r.offset - 4) }
            networkID = try NetworkID(bytes: r.raw(16))
            generation = try r.u64()
            if generation == 0 { throw DecodeError(.invalid(field: "generation", reason: "0 is the genesis key, not a link"), at: r.offset - 8) }
            previous = try r.raw(32)
            let n = Int(try r.u8())
            if n == 0 || n > maxLinkMembers {
                throw DecodeError(.invalid(field: "link members", reason: "\(n), expected 1…\(maxLinkMembers)"), at: r.offset - 1)
            }
            var ms: [SclerotiumKey] = []
            for _ in 0..<n {
                let at = r.offset
                let m = SclerotiumKey(id: try NodeID(bytes: r.raw(16)), key: try PublicKey(bytes: r.raw(32)))
                if let last = ms.last, !(last.id < m.id) {
                    throw DecodeError(.invalid(field: "link member", reason: "members must be sorted by ID without duplicates"), at: at)
                }
                ms.append(m)
            }
            members = ms
            issuedAt = try r.i64()
            signatures = try QuorumSignature.decode(&r, limit: maxLinkMembers)
        } catch let e as DecodeError {
            throw IdentityError(.decode(what: "sclerotia link", e))
        } catch let e as IdentityError {
            throw e
        } catch {
            throw IdentityError(.malformed(what: "sclerotia link", reason: "\(error)"))
        }
    }
}

/// The chain of sclerotia links from the genesis key: what a node trusts, as a value.
public struct SclerotiaChain: Hashable, Sendable {
    public let genesisKey: PublicKey
    public let network: NetworkID
    /// `links[i]` is generation i+1.
    public private(set) var links: [SclerotiaLink] = []
    /// A bound on the chain (a link is made only when the sclerotia change; see docs/MEMBERSHIP.md).
    public static let maxLinks = 4096

    public init(genesisKey: PublicKey) {
        self.genesisKey = genesisKey
        self.network = NetworkID(genesisKey: genesisKey)
    }

    /// The newest generation known (0: only the genesis key).
    public var generation: UInt64 { UInt64(links.count) }
    public var latest: SclerotiaLink? { links.last }

    public func link(_ generation: UInt64) -> SclerotiaLink? {
        generation >= 1 && generation <= self.generation ? links[Int(generation - 1)] : nil
    }

    /// The keys that sign for `generation` (the genesis key alone for 0), with node IDs where known.
    public func signers(of generation: UInt64) -> [SclerotiumKey]? {
        if generation == 0 { return [SclerotiumKey(id: NodeID(publicKey: genesisKey), key: genesisKey)] }
        return link(generation)?.members
    }

    /// When `generation` stopped issuing (the next link's time), or nil while it is the newest.
    /// (Compared before adding: a certificate's generation is the peer's choice, up to UInt64.max.)
    public func supersededAt(_ generation: UInt64) -> Int64? {
        generation < self.generation ? link(generation + 1)?.issuedAt : nil
    }

    /// The hash the next link must name.
    public var tipHash: [UInt8] { latest?.hash ?? [UInt8](repeating: 0, count: 32) }

    /// Checks that `sigs` are a quorum of `generation`'s signers over `message`. Distinct indices are
    /// guaranteed by the decoders (strictly increasing), and checked again here for values built in memory.
    public func verifyQuorum(_ sigs: [QuorumSignature], over message: [UInt8], generation: UInt64,
                             what: String) throws(IdentityError) {
        guard let signers = signers(of: generation) else {
            throw IdentityError(.unknownGeneration(what: what, generation: generation, known: self.generation))
        }
        let need = quorumSize(of: signers.count)
        var last = -1
        for s in sigs {
            let i = Int(s.index)
            if i <= last { throw IdentityError(.malformed(what: what, reason: "signature indices must increase")) }
            last = i
            guard i < signers.count else {
                throw IdentityError(.notBySclerotium(what: what, index: i, generation: generation, signers: signers.count))
            }
        }
        if sigs.count < need {
            throw IdentityError(.tooFewSignatures(what: what, have: sigs.count, need: need, of: signers.count, generation: generation))
        }
        for s in sigs where !signers[Int(s.index)].key.verify(s.signature, for: message) {
            throw IdentityError(.badQuorumSignature(what: what, signer: signers[Int(s.index)].id, generation: generation))
        }
    }

    /// Verifies `link` as the next generation and appends it.
    public mutating func append(_ link: SclerotiaLink) throws(IdentityError) {
        if link.networkID != network { throw IdentityError(.wrongNetwork(expected: network, actual: link.networkID)) }
        if link.generation <= generation {
            throw IdentityError(.staleChain(have: generation, got: link.generation))
        }
        if link.generation != generation + 1 {
            throw IdentityError(.unknownGeneration(what: "sclerotia link \(link.generation)", generation: link.generation - 1, known: generation))
        }
        if links.count >= Self.maxLinks { throw IdentityError(.malformed(what: "sclerotia chain", reason: "over \(Self.maxLinks) links")) }
        if link.previous != tipHash { throw IdentityError(.forkedChain(generation: link.generation)) }
        // The decoder enforces this; a link built in memory must hold to it too (a member named twice
        // would count twice towards every quorum).
        let sortedUnique = zip(link.members, link.members.dropFirst()).allSatisfy { $0.id < $1.id }
        if link.members.isEmpty || link.members.count > maxLinkMembers || !sortedUnique || Set(link.members.map(\.key)).count != link.members.count {
            throw IdentityError(.malformed(what: "sclerotia link \(link.generation)", reason: "members must be 1…\(maxLinkMembers), sorted, each ID and key once"))
        }
        if let prev = latest, link.issuedAt < prev.issuedAt {
            throw IdentityError(.malformed(what: "sclerotia link \(link.generation)", reason: "made before the link it follows"))
        }
        try verifyQuorum(link.signatures, over: link.signedBytes, generation: link.generation - 1, what: "sclerotia link \(link.generation)")
        links.append(link)
    }

    /// Takes in links a peer sent: those already known must be the same (else a forged or forked
    /// link), the rest must extend the chain in order. Links older than the known tip are fine here:
    /// a peer whose certificate is older sends fewer links.
    public mutating func absorb(_ incoming: [SclerotiaLink]) throws(IdentityError) {
        for l in incoming.sorted(by: { $0.generation < $1.generation }) {
            if let known = link(l.generation) {
                if known.body() != l.body() { throw IdentityError(.forkedChain(generation: l.generation)) }
                continue
            }
            try append(l)
        }
    }

    /// Replaces this chain by `other` only if `other` extends it: a shorter chain is a replay of an
    /// old state and a different one is a fork, each refused with its own error.
    public mutating func update(to other: SclerotiaChain) throws(IdentityError) {
        if other.network != network { throw IdentityError(.wrongNetwork(expected: network, actual: other.network)) }
        if other.generation < generation { throw IdentityError(.staleChain(have: generation, got: other.generation)) }
        var next = self
        try next.absorb(other.links)
        self = next
    }

    /// The suffix a node sends with its certificate so a peer that is a few links behind can verify it.
    public func suffix(upTo generation: UInt64, count: Int) -> [SclerotiaLink] {
        let end = Int(min(generation, self.generation))
        return Array(links[max(0, end - count)..<end])
    }

    /// Encodes the whole chain (for the spore and for files).
    public func encode(into w: inout ByteWriter) {
        w.u32(UInt32(links.count))
        for l in links { w.blob(l.encoded()) }
    }

    /// Decodes and verifies every link from the genesis key.
    public init(genesisKey: PublicKey, from r: inout ByteReader) throws(IdentityError) {
        self.init(genesisKey: genesisKey)
        let n: Int
        do { n = Int(try r.u32()) } catch { throw IdentityError.decoding("sclerotia chain", error) }
        if n > Self.maxLinks { throw IdentityError(.malformed(what: "sclerotia chain", reason: "\(n) links, at most \(Self.maxLinks)")) }
        for _ in 0..<n {
            let b: [UInt8]
            do { b = try r.blob("sclerotia link", limit: 4 + 16 + 8 + 32 + 1 + maxLinkMembers * 113 + 9) } catch {
                throw IdentityError.decoding("sclerotia chain", error)
            }
            try append(SclerotiaLink(decoding: b))
        }
    }
}
