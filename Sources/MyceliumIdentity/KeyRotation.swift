import MyceliumCore

/// A statement that a node's key changed from `oldKey` to `newKey`, signed by both.
///
/// The old key's signature says the owner wants the change; the new key's signature proves the
/// owner holds the new key (so nobody can rotate a node onto a key it cannot use). The sequence
/// number orders rotations, so an old statement replayed later is refused.
public struct KeyRotation: Hashable, Sendable {
    static let magic: [UInt8] = Array("MYR1".utf8)
    static let domain: [UInt8] = Array("mycelium/key-rotation/v1\0".utf8)

    public let node: NodeID
    public let oldKey: PublicKey
    public let newKey: PublicKey
    public let sequence: UInt64
    public let issuedAt: Int64
    public let oldSignature: [UInt8]
    public let newSignature: [UInt8]

    public static func create(node: NodeID, from old: SigningKey, to new: SigningKey, sequence: UInt64, issuedAt: Int64) -> KeyRotation {
        let body = encodeBody(node, old.publicKey, new.publicKey, sequence, issuedAt)
        return KeyRotation(node: node, oldKey: old.publicKey, newKey: new.publicKey, sequence: sequence, issuedAt: issuedAt,
                           oldSignature: old.sign(domain + body), newSignature: new.sign(domain + body))
    }

    init(node: NodeID, oldKey: PublicKey, newKey: PublicKey, sequence: UInt64, issuedAt: Int64,
         oldSignature: [UInt8], newSignature: [UInt8]) {
        self.node = node; self.oldKey = oldKey; self.newKey = newKey; self.sequence = sequence
        self.issuedAt = issuedAt; self.oldSignature = oldSignature; self.newSignature = newSignature
    }

    static func encodeBody(_ node: NodeID, _ old: PublicKey, _ new: PublicKey, _ seq: UInt64, _ at: Int64) -> [UInt8] {
        var w = ByteWriter(capacity: 100)
        w.raw(magic); w.raw(node.bytes); w.raw(old.bytes); w.raw(new.bytes); w.u64(seq); w.i64(at)
        return w.bytes
    }

    public func encoded() -> [UInt8] {
        Self.encodeBody(node, oldKey, newKey, sequence, issuedAt) + oldSignature + newSignature
    }

    public init(decoding bytes: [UInt8]) throws(IdentityError) {
        do {
            var r = ByteReader(bytes)
            guard try r.raw(4) == Self.magic else { throw DecodeError(.badMagic, at: 0) }
            node = try NodeID(bytes: r.raw(16))
            oldKey = try PublicKey(bytes: r.raw(32))
            newKey = try PublicKey(bytes: r.raw(32))
            sequence = try r.u64()
            issuedAt = try r.i64()
            oldSignature = try r.raw(64)
            newSignature = try r.raw(64)
            try r.finish()
        } catch let e as DecodeError {
            throw IdentityError(.decode(what: "key rotation", e))
        } catch let e as IdentityError {
            throw e
        } catch {
            throw IdentityError(.malformed(what: "key rotation", reason: "\(error)"))
        }
    }

    public func verifySignatures() throws(IdentityError) {
        let msg = Self.domain + Self.encodeBody(node, oldKey, newKey, sequence, issuedAt)
        if !oldKey.verify(oldSignature, for: msg) { throw IdentityError(.badSignature(what: "key rotation (old key)")) }
        if !newKey.verify(newSignature, for: msg) { throw IdentityError(.badSignature(what: "key rotation (new key)")) }
    }
}

/// What a node knows of its peers' current keys. A pure value: feed it rotations, ask it about keys.
public struct KeyRegistry: Sendable, Equatable {
    struct Entry: Sendable, Equatable {
        var current: PublicKey
        var sequence: UInt64
        var retired: Set<PublicKey>
    }

    private var entries: [NodeID: Entry] = [:]

    public init() {}

    /// Learns a node's key from its membership certificate, unless a rotation already moved past it.
    public mutating func learn(node: NodeID, key: PublicKey) {
        if entries[node] == nil { entries[node] = Entry(current: key, sequence: 0, retired: []) }
    }

    /// Applies a rotation. It must be signed by both keys, start from the key we know as current
    /// and be newer than any rotation seen before.
    public mutating func apply(_ rotation: KeyRotation) throws(IdentityError) {
        try rotation.verifySignatures()
        var e = entries[rotation.node] ?? Entry(current: rotation.oldKey, sequence: 0, retired: [])
        if rotation.sequence <= e.sequence {
            throw IdentityError(.staleRotation(node: rotation.node, sequence: rotation.sequence, current: e.sequence))
        }
        if e.current != rotation.oldKey {
            throw IdentityError(.keyMismatch(node: rotation.node))
        }
        e.retired.insert(e.current)
        e.current = rotation.newKey
        e.sequence = rotation.sequence
        entries[rotation.node] = e
    }

    public func currentKey(of node: NodeID) -> PublicKey? { entries[node]?.current }

    /// Accepts `key` for `node` only if it is the current key. A rotated-out key gets its own error.
    public func check(node: NodeID, key: PublicKey) throws(IdentityError) {
        guard let e = entries[node] else { return }
        if e.current == key { return }
        if e.retired.contains(key) { throw IdentityError(.retiredKey(node: node)) }
        throw IdentityError(.keyMismatch(node: node))
    }
}
