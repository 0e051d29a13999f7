import MyceliumCore

/// An Ed25519 public key (32 bytes).
public struct PublicKey: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) throws(IdentityError) {
        guard bytes.count == Sodium.publicKeyBytes else {
            throw IdentityError(.malformed(what: "public key", reason: "\(bytes.count) bytes, expected \(Sodium.publicKeyBytes)"))
        }
        self.bytes = bytes
    }

    init(unchecked bytes: [UInt8]) { self.bytes = bytes }

    public func verify(_ signature: [UInt8], for message: [UInt8]) -> Bool {
        Sodium.verify(signature, message: message, publicKey: bytes)
    }

    /// Short fingerprint for logs: the first 8 bytes of the key's hash, in hex.
    public var fingerprint: String { hexString(Sodium.hash(bytes, domain: "mycelium/key-fpr", length: 16).prefix(8)) }
    public var description: String { "ed25519:\(fingerprint)" }
}

/// An Ed25519 signing key held in memory. Its seed is wiped when the last copy goes away.
public final class SigningKey: @unchecked Sendable {
    // SAFETY (Sendable): immutable after init; the buffers are only read, and wiped in deinit.
    private var seedBytes: [UInt8]
    private var secretKey: [UInt8]
    public let publicKey: PublicKey

    /// A fresh key from the OS random generator.
    public convenience init() {
        var seed = Sodium.randomBytes(Sodium.seedBytes)
        self.init(seed: seed)
        Sodium.wipe(&seed)
    }

    /// A key from its 32-byte seed (the form stored in key files and used by TLS libraries).
    public init(seed: [UInt8]) {
        precondition(seed.count == Sodium.seedBytes, "an Ed25519 seed is 32 bytes")
        let (pk, sk) = Sodium.signKeypair(seed: seed)
        self.seedBytes = seed
        self.secretKey = sk
        self.publicKey = PublicKey(unchecked: pk)
    }

    deinit {
        Sodium.wipe(&seedBytes)
        Sodium.wipe(&secretKey)
    }

    public func sign(_ message: [UInt8]) -> [UInt8] { Sodium.sign(message, secretKey: secretKey) }

    /// The raw seed. Only for handing the key to a TLS library or writing the key file.
    public var seed: [UInt8] { seedBytes }
}

/// A 16-byte identifier derived by hashing a public key, printed as `prefix-<base32 + checksum>`.
/// Node and network IDs share the parsing, printing and length checks; each has its own prefix and
/// hash domain, so one can never be read as the other.
public protocol DerivedIdentifier: Hashable, Sendable, CustomStringConvertible {
    static var prefix: String { get }
    static var noun: String { get }
    var bytes: [UInt8] { get }
    init(uncheckedBytes: [UInt8])
}

extension DerivedIdentifier {
    public static var byteCount: Int { 16 }

    public init(bytes: [UInt8]) throws(IdentityError) {
        guard bytes.count == Self.byteCount else {
            throw IdentityError(.malformed(what: Self.noun, reason: "\(bytes.count) bytes, expected \(Self.byteCount)"))
        }
        self.init(uncheckedBytes: bytes)
    }

    /// Parses the printed form, catching typos through its checksum.
    public init(parsing text: String) throws(IdentityError) {
        do {
            self.init(uncheckedBytes: try CheckedID.parse(text, prefix: Self.prefix, count: Self.byteCount))
        } catch {
            throw IdentityError(.badID(text: text, reason: error.description))
        }
    }

    public var description: String { CheckedID.render(prefix: Self.prefix, value: bytes) }
}

/// A node's stable identity: a hash of the node's first public key.
///
/// It stays the same across key rotations (a `KeyRotation` maps it to the current key), so
/// membership, spores and Raft refer to a node by this ID, never by its key.
public struct NodeID: DerivedIdentifier, Comparable {
    public static let prefix = "node"
    public static let noun = "node ID"
    public let bytes: [UInt8]

    public init(uncheckedBytes: [UInt8]) { bytes = uncheckedBytes }

    public init(publicKey: PublicKey) {
        bytes = Sodium.hash(publicKey.bytes, domain: "mycelium/node-id", length: NodeID.byteCount)
    }

    public static func < (a: NodeID, b: NodeID) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }

    /// A 64-bit number for protocols that want a compact integer ID (Raft). Collisions between
    /// members are checked where members are admitted.
    public var compact: UInt64 { bytes.prefix(8).reduce(0) { $0 << 8 | UInt64($1) } }
}

/// A network's identity: a hash of its genesis public key. Networks never talk to each other.
public struct NetworkID: DerivedIdentifier {
    public static let prefix = "net"
    public static let noun = "network ID"
    public let bytes: [UInt8]

    public init(uncheckedBytes: [UInt8]) { bytes = uncheckedBytes }

    public init(genesisKey: PublicKey) {
        bytes = Sodium.hash(genesisKey.bytes, domain: "mycelium/network-id", length: NetworkID.byteCount)
    }
}

/// Secret key files: a checksummed file holding the 32-byte seed, readable by the owner only.
public enum KeyFile {
    static let payloadVersion: UInt8 = 1
    static let payloadSize = 1 + 32 + 32  // version, seed, public key (to catch a corrupted seed)

    public static func write(_ key: SigningKey, to path: String, kind: UInt16 = FileKind.nodeSecretKey) throws(IdentityError) {
        var w = ByteWriter(capacity: payloadSize)
        w.u8(payloadVersion)
        w.raw(key.seed)
        w.raw(key.publicKey.bytes)
        var payload = w.bytes
        defer { Sodium.wipe(&payload) }
        do {
            try ChecksummedFile.write(kind: kind, payload: payload, to: path, mode: 0o600)
        } catch {
            throw IdentityError(.file(error))
        }
    }

    /// Loads a key, refusing a file that others can read, that has the wrong length, a bad
    /// checksum, or a seed that no longer matches its stored public key.
    public static func read(from path: String, kind: UInt16 = FileKind.nodeSecretKey) throws(IdentityError) -> SigningKey {
        do throws(FileError) {
            let mode = try AtomicFile.mode(of: path)
            if mode & 0o077 != 0 { throw FileError(path: path, .badMode(actual: mode, expected: 0o600)) }
            var payload = try ChecksummedFile.read(kind: kind, from: path)
            defer { Sodium.wipe(&payload) }
            if payload.count != payloadSize {
                throw FileError(path: path, .wrongLength(actual: payload.count + ChecksummedFile.headerSize,
                                                         expected: payloadSize + ChecksummedFile.headerSize))
            }
            if payload[0] != payloadVersion {
                throw FileError(path: path, .corrupt(DecodeError(.unknownVersion(field: "key file version", value: UInt64(payload[0])), at: ChecksummedFile.headerSize)))
            }
            let key = SigningKey(seed: Array(payload[1..<33]))
            if key.publicKey.bytes != Array(payload[33..<65]) {
                throw FileError(path: path, .corrupt(DecodeError(.invalid(field: "seed", reason: "does not produce the stored public key"), at: ChecksummedFile.headerSize + 1)))
            }
            return key
        } catch {
            throw IdentityError(.file(error))
        }
    }
}
