// The one door to libsodium. No other module imports CSodium; everything above this file works
// with Swift types and typed errors.

import CSodium

public enum Sodium {
    /// sodium_init() is idempotent and thread-safe; it returns 1 when already initialised.
    private static let initialized: Bool = sodium_init() >= 0

    @inline(__always) static func ensure() {
        precondition(initialized, "libsodium failed to initialise (sodium_init < 0)")
    }

    public static let publicKeyBytes = Int(crypto_sign_PUBLICKEYBYTES)   // 32
    public static let seedBytes = Int(crypto_sign_SEEDBYTES)             // 32
    public static let secretKeyBytes = Int(crypto_sign_SECRETKEYBYTES)   // 64 (seed ‖ public key)
    public static let signatureBytes = Int(crypto_sign_BYTES)            // 64

    /// Cryptographically secure random bytes (the OS generator, through libsodium).
    public static func randomBytes(_ count: Int) -> [UInt8] {
        ensure()
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, $0.count) }
        return out
    }

    /// Ed25519 key pair from a 32-byte seed: returns (public key, 64-byte secret key).
    static func signKeypair(seed: [UInt8]) -> (publicKey: [UInt8], secretKey: [UInt8]) {
        ensure()
        precondition(seed.count == seedBytes)
        var pk = [UInt8](repeating: 0, count: publicKeyBytes)
        var sk = [UInt8](repeating: 0, count: secretKeyBytes)
        let rc = crypto_sign_seed_keypair(&pk, &sk, seed)
        precondition(rc == 0, "crypto_sign_seed_keypair cannot fail for a 32-byte seed")
        return (pk, sk)
    }

    static func sign(_ message: [UInt8], secretKey: [UInt8]) -> [UInt8] {
        ensure()
        var sig = [UInt8](repeating: 0, count: signatureBytes)
        let rc = crypto_sign_detached(&sig, nil, message, UInt64(message.count), secretKey)
        precondition(rc == 0, "crypto_sign_detached cannot fail with a valid secret key")
        return sig
    }

    /// Verifies a detached Ed25519 signature. libsodium rejects non-canonical and small-order keys.
    static func verify(_ signature: [UInt8], message: [UInt8], publicKey: [UInt8]) -> Bool {
        ensure()
        guard signature.count == signatureBytes, publicKey.count == publicKeyBytes else { return false }
        return crypto_sign_verify_detached(signature, message, UInt64(message.count), publicKey) == 0
    }

    /// The X25519 public key of a 32-byte secret (the ephemeral keys of the stream handshake).
    static func x25519PublicKey(secret: [UInt8]) -> [UInt8] {
        ensure()
        precondition(secret.count == 32, "an X25519 secret is 32 bytes")
        var pk = [UInt8](repeating: 0, count: 32)
        let rc = crypto_scalarmult_base(&pk, secret)
        precondition(rc == 0, "crypto_scalarmult_base cannot fail")
        return pk
    }

    /// X25519; nil when the peer's point gives the all-zero secret (a low-order point).
    static func x25519(secret: [UInt8], peer: [UInt8]) -> [UInt8]? {
        ensure()
        guard secret.count == 32, peer.count == 32 else { return nil }
        var out = [UInt8](repeating: 0, count: 32)
        return crypto_scalarmult(&out, secret, peer) == 0 ? out : nil
    }

    /// BLAKE2b with a domain key, so a hash made for one purpose can never stand in for another.
    public static func hash(_ message: [UInt8], domain: String, length: Int = 32) -> [UInt8] {
        ensure()
        precondition(length >= Int(crypto_generichash_BYTES_MIN) && length <= Int(crypto_generichash_BYTES_MAX))
        let key = Array(domain.utf8)
        precondition(key.count <= Int(crypto_generichash_KEYBYTES_MAX))
        var out = [UInt8](repeating: 0, count: length)
        let rc = crypto_generichash(&out, length, message, UInt64(message.count), key, key.count)
        precondition(rc == 0)
        return out
    }

    /// Constant-time equality, for secrets and MACs.
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        ensure()
        guard a.count == b.count else { return false }
        if a.isEmpty { return true }
        return sodium_memcmp(a, b, a.count) == 0
    }

    /// Overwrites secret material in place.
    static func wipe(_ bytes: inout [UInt8]) {
        bytes.withUnsafeMutableBytes { if let p = $0.baseAddress { sodium_memzero(p, $0.count) } }
    }
}
