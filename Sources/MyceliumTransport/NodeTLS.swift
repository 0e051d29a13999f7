// TLS 1.3 with each node's own Ed25519 key: a self-signed X.509 certificate, no web PKI.
// Trust comes from the membership handshake (Handshake.swift), which pins the TLS key to the
// membership certificate. Here we only make the certificate, configure BoringSSL, capture the
// peer's key, and derive the RFC 9266 channel binding from the session's exporter secret.

import Crypto
import Foundation
import MyceliumCore
import MyceliumIdentity
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import SwiftASN1
import X509

#if canImport(Glibc)
import Glibc
#endif

enum NodeTLS {
    /// PKCS#8 prefix for an Ed25519 private key (RFC 8410 §7): the 32-byte seed follows.
    static let pkcs8Ed25519Prefix: [UInt8] = [0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]

    /// Certificates already made, per public key: making one costs an Ed25519 signature and DER
    /// work that would otherwise be paid on every outgoing connection.
    private static let cache = NIOLockedValueBox<[PublicKey: (NIOSSLCertificate, NIOSSLPrivateKey)]>([:])

    /// A self-signed certificate for the node key, made once per key and process.
    static func certificate(key: SigningKey, nodeID: NodeID, now: Int64) throws -> (NIOSSLCertificate, NIOSSLPrivateKey) {
        if let hit = cache.withLockedValue({ $0[key.publicKey] }) { return hit }
        let made = try selfSignedCertificate(key: key, nodeID: nodeID, now: now)
        cache.withLockedValue { c in
            if c.count > 64 { c.removeAll() }  // tests and benchmarks make many keys; nodes have one
            c[key.publicKey] = made
        }
        return made
    }

    /// A self-signed certificate for the node key. Its validity is wide on purpose: what limits a
    /// node's admission is its membership certificate, not this one.
    static func selfSignedCertificate(key: SigningKey, nodeID: NodeID, now: Int64) throws -> (NIOSSLCertificate, NIOSSLPrivateKey) {
        let ck = try Curve25519.Signing.PrivateKey(rawRepresentation: key.seed)
        let privateKey = Certificate.PrivateKey(ck)
        let name = try DistinguishedName { CommonName(nodeID.description) }
        let notBefore = Date(timeIntervalSince1970: Double(now - 86_400))
        let notAfter = Date(timeIntervalSince1970: Double(now + 10 * 365 * 86_400))
        let cert = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: privateKey.publicKey,
            notValidBefore: notBefore, notValidAfter: notAfter, issuer: name, subject: name,
            signatureAlgorithm: .ed25519, extensions: Certificate.Extensions {}, issuerPrivateKey: privateKey)
        var ser = DER.Serializer()
        try ser.serialize(cert)
        let sslCert = try NIOSSLCertificate(bytes: ser.serializedBytes, format: .der)
        var pkcs8 = pkcs8Ed25519Prefix + key.seed
        defer { pkcs8.withUnsafeMutableBytes { p in for i in p.indices { p[i] = 0 } } }
        let sslKey = try NIOSSLPrivateKey(bytes: pkcs8, format: .der)
        return (sslCert, sslKey)
    }

    /// The Ed25519 key inside a peer's leaf certificate, or nil if it is not an Ed25519 certificate.
    static func ed25519Key(of certificate: NIOSSLCertificate) -> PublicKey? {
        guard let der = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: der) else { return nil }
        guard let key = Curve25519.Signing.PublicKey(parsed.publicKey) else { return nil }
        return try? PublicKey(bytes: Array(key.rawRepresentation))
    }

    /// One configuration per connection: the key-log callback must deliver *this* connection's
    /// exporter secret into *this* connection's box.
    static func configuration(server: Bool, certificate: NIOSSLCertificate, key: NIOSSLPrivateKey,
                              secrets: SessionSecrets) -> TLSConfiguration {
        var c = server
            ? TLSConfiguration.makeServerConfiguration(certificateChain: [.certificate(certificate)], privateKey: .privateKey(key))
            : TLSConfiguration.makeClientConfiguration()
        if !server {
            c.certificateChain = [.certificate(certificate)]
            c.privateKey = .privateKey(key)
        }
        c.minimumTLSVersion = .tlsv13
        c.maximumTLSVersion = .tlsv13
        // Asks the client for its certificate; the verification itself is our pinning callback.
        c.certificateVerification = .noHostnameVerification
        // Required for Ed25519 certificates: otherwise BoringSSL offers no Ed25519 scheme.
        c.verifySignatureAlgorithms = [.ed25519]
        c.signingSignatureAlgorithms = [.ed25519]
        c.renegotiationSupport = .none
        c.keyLogCallback = { line in secrets.record(line) }
        return c
    }

    /// RFC 8446 §7.5 exporter with RFC 9266's label and an empty context:
    /// HKDF-Expand-Label(Derive-Secret(secret, label, ""), "exporter", Hash(""), 32).
    static func channelBinding(exporterSecret: [UInt8]) -> [UInt8] {
        // The secret's length tells the suite's hash: 32 bytes for SHA-256 suites, 48 for SHA-384.
        if exporterSecret.count == 48 {
            return exporter(SHA384.self, secret: exporterSecret)
        }
        return exporter(SHA256.self, secret: exporterSecret)
    }

    private static func exporter<H: HashFunction>(_: H.Type, secret: [UInt8]) -> [UInt8] {
        let emptyHash = Array(H.hash(data: [UInt8]()))
        let derived = expandLabel(H.self, secret: secret, label: "EXPORTER-Channel-Binding", context: emptyHash, length: H.Digest.byteCount)
        return expandLabel(H.self, secret: derived, label: "exporter", context: emptyHash, length: 32)
    }

    private static func expandLabel<H: HashFunction>(_: H.Type, secret: [UInt8], label: String, context: [UInt8], length: Int) -> [UInt8] {
        let full = Array("tls13 \(label)".utf8)
        var info: [UInt8] = [UInt8(length >> 8), UInt8(length & 0xFF), UInt8(full.count)]
        info += full
        info.append(UInt8(context.count))
        info += context
        let okm = HKDF<H>.expand(pseudoRandomKey: SymmetricKey(data: secret), info: info, outputByteCount: length)
        return okm.withUnsafeBytes { Array($0) }
    }
}

/// Per-connection sink for what BoringSSL tells us during the handshake.
final class SessionSecrets: Sendable {
    private let state = NIOLockedValueBox<(exporter: [UInt8]?, peerKey: PublicKey?)>((nil, nil))

    /// Parses an NSS key-log line; keeps only EXPORTER_SECRET (no traffic secret is stored).
    func record(_ line: ByteBuffer) {
        guard let text = line.getString(at: line.readerIndex, length: line.readableBytes) else { return }
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\r" })
        guard parts.count == 3, parts[0] == "EXPORTER_SECRET", let secret = hexDecode(parts[2]) else { return }
        state.withLockedValue { $0.exporter = secret }
    }

    func setPeerKey(_ k: PublicKey) { state.withLockedValue { $0.peerKey = k } }

    var binding: [UInt8]? { state.withLockedValue { $0.exporter.map(NodeTLS.channelBinding(exporterSecret:)) } }
    var peerKey: PublicKey? { state.withLockedValue { $0.peerKey } }
}

func hexDecode<S: StringProtocol>(_ s: S) -> [UInt8]? {
    let u = Array(s.utf8)
    guard u.count % 2 == 0 else { return nil }
    func nib(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 97...102: return c - 87
        case 65...70: return c - 55
        default: return nil
        }
    }
    var out: [UInt8] = []
    out.reserveCapacity(u.count / 2)
    var i = 0
    while i < u.count {
        guard let h = nib(u[i]), let l = nib(u[i + 1]) else { return nil }
        out.append(h << 4 | l)
        i += 2
    }
    return out
}
