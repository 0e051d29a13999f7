import Foundation
import XCTest
import MyceliumCore
@testable import MyceliumIdentity

final class KeyTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = NSTemporaryDirectory() + "myc-id-\(UUID().uuidString)"; try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func testSignVerify() {
        let k = SigningKey()
        let sig = k.sign([1, 2, 3])
        XCTAssertTrue(k.publicKey.verify(sig, for: [1, 2, 3]))
        XCTAssertFalse(k.publicKey.verify(sig, for: [1, 2, 4]))
        XCTAssertFalse(SigningKey().publicKey.verify(sig, for: [1, 2, 3]))
        XCTAssertEqual(SigningKey(seed: k.seed).publicKey, k.publicKey, "the seed determines the key")
    }

    func testNodeIDPrintsAndParsesWithChecksum() throws {
        let id = NodeID(publicKey: SigningKey().publicKey)
        let text = id.description
        XCTAssertTrue(text.hasPrefix("node-"))
        XCTAssertEqual(try NodeID(parsing: text), id)
        XCTAssertEqual(try NodeID(parsing: "  " + text.uppercased().replacingOccurrences(of: "NODE-", with: "node-") + "\n"), id)
        var typo = Array(text); typo[10] = typo[10] == "a" ? "b" : "a"
        XCTAssertThrowsError(try NodeID(parsing: String(typo))) { e in
            XCTAssertTrue("\(e)".contains("mistyped"), "\(e)")
        }
        let net = NetworkID(genesisKey: SigningKey().publicKey)
        XCTAssertThrowsError(try NodeID(parsing: net.description), "a network ID is not a node ID")
    }

    func testKeyFileRoundTripAndRefusals() throws {
        let k = SigningKey()
        let path = dir + "/node.key"
        try KeyFile.write(k, to: path)
        XCTAssertEqual(try AtomicFile.mode(of: path), 0o600)
        XCTAssertEqual(try KeyFile.read(from: path).publicKey, k.publicKey)

        chmod(path, 0o644)
        XCTAssertThrowsError(try KeyFile.read(from: path)) { e in
            guard case .file(let f) = (e as! IdentityError).code, case .badMode(0o644, 0o600) = f.code else { return XCTFail("\(e)") }
            XCTAssertTrue("\(e)".contains("chmod 0600"))
        }
        chmod(path, 0o600)

        let good = try AtomicFile.read(path)
        try AtomicFile.write(Array(good.dropLast(3)), to: path, mode: 0o600)
        XCTAssertThrowsError(try KeyFile.read(from: path)) { e in
            guard case .file(let f) = (e as! IdentityError).code, case .wrongLength = f.code else { return XCTFail("\(e)") }
        }
        var flipped = good; flipped[20] ^= 0x40
        try AtomicFile.write(flipped, to: path, mode: 0o600)
        XCTAssertThrowsError(try KeyFile.read(from: path)) { e in
            guard case .file(let f) = (e as! IdentityError).code, case .corrupt(let d) = f.code, case .checksumMismatch = d.code else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try KeyFile.read(from: path, kind: FileKind.networkSecretKey))
    }
}

final class CertificateTests: XCTestCase {
    let genesis = SigningKey()
    let node = SigningKey()
    let now: Int64 = 1_800_000_000
    var net: NetworkID { NetworkID(genesisKey: genesis.publicKey) }

    func cert(validFor: Int64 = 3600, issuedAt: Int64? = nil) -> MembershipCertificate {
        MembershipCertificate.issue(by: genesis, nodeID: NodeID(publicKey: node.publicKey), nodeKey: node.publicKey,
                                    roles: [.member, .sclerotiumEligible], serial: 1, issuedAt: issuedAt ?? now, validFor: validFor)
    }

    func testRoundTripAndVerify() throws {
        let c = cert()
        let d = try MembershipCertificate(decoding: c.encoded())
        XCTAssertEqual(d, c)
        XCTAssertEqual(d.generation, 0)
        XCTAssertEqual(d.signatures.map(\.index), [0], "generation 0 is the genesis key alone, at index 0")
        // The fixed body, a count byte and one (index, signature) pair.
        XCTAssertEqual(c.encoded().count, 137 + 1 + 65)
        XCTAssertLessThanOrEqual(c.encoded().count, MembershipCertificate.maxEncodedSize)
        XCTAssertNoThrow(try d.verify(network: net, now: now + 10))
        XCTAssertNoThrow(try d.verify(chain: SclerotiaChain(genesisKey: genesis.publicKey), now: now + 10))
    }

    func testExpiryWrongNetworkAndRevocation() {
        let c = cert(validFor: 100)
        XCTAssertThrowsError(try c.verify(network: net, now: now + 100)) { e in
            guard case .expired = (e as! IdentityError).code else { return XCTFail("\(e)") }
        }
        let c2 = cert(issuedAt: now + 10_000)
        XCTAssertThrowsError(try c2.verify(network: net, now: now)) { e in
            guard case .notYetValid = (e as! IdentityError).code else { return XCTFail("\(e)") }
        }
        let other = NetworkID(genesisKey: SigningKey().publicKey)
        XCTAssertThrowsError(try c.verify(network: other, now: now)) { e in
            guard case .wrongNetwork = (e as! IdentityError).code else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try c.verify(network: net, now: now, revoked: [c.nodeID])) { e in
            guard case .revoked = (e as! IdentityError).code else { return XCTFail("\(e)") }
        }
    }

    func testForgedIssuerIsRefused() throws {
        let chain = SclerotiaChain(genesisKey: genesis.publicKey)
        // A certificate claiming this network but signed by some other key, which it carries as its genesis key.
        let mallory = SigningKey()
        let forged = MembershipCertificate.issue(by: mallory, nodeID: NodeID(publicKey: node.publicKey), nodeKey: node.publicKey,
                                                 roles: .member, serial: 1, issuedAt: now, validFor: 3600)
        var bytes = forged.encoded()
        bytes.replaceSubrange(5..<21, with: net.bytes)
        let relabelled = try MembershipCertificate(decoding: bytes)
        XCTAssertThrowsError(try relabelled.verify(chain: chain, now: now)) { e in
            guard case .notIssuedByGenesis = (e as! IdentityError).code else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try relabelled.verify(network: net, now: now), "a chain-less verifier refuses it too")
        // The same, also naming the real genesis key: now only the signature gives it away.
        bytes.replaceSubrange(21..<53, with: genesis.publicKey.bytes)
        XCTAssertThrowsError(try MembershipCertificate(decoding: bytes).verify(chain: chain, now: now)) { e in
            guard case .badQuorumSignature(_, let signer, 0) = (e as! IdentityError).code else { return XCTFail("\(e)") }
            XCTAssertEqual(signer, NodeID(publicKey: self.genesis.publicKey))
        }
    }

    /// Every single-byte flip of a certificate is refused, by the decoder or by verification.
    func testEverySingleByteFlipIsRefused() {
        let good = cert().encoded()
        for i in 0..<good.count {
            for bit in [0x01, 0x80] as [UInt8] {
                var b = good; b[i] ^= bit
                let accepted = (try? MembershipCertificate(decoding: b).verify(network: net, now: now + 1)) != nil
                if accepted {
                    // A flip in the roles/serial/time fields changes the signed body, so it can't pass.
                    XCTFail("flip of byte \(i) bit \(bit) was accepted")
                }
            }
        }
        XCTAssertThrowsError(try MembershipCertificate(decoding: good + [0]))
        XCTAssertThrowsError(try MembershipCertificate(decoding: Array(good.dropLast())))
    }
}

final class InviteTests: XCTestCase {
    let genesis = SigningKey()
    let inviterKey = SigningKey()
    let now: Int64 = 1_800_000_000
    var net: NetworkID { NetworkID(genesisKey: genesis.publicKey) }
    var inviter: NodeID { NodeID(publicKey: inviterKey.publicKey) }

    func invite(validFor: Int64 = 600, issuedAt: Int64? = nil) throws -> Invite {
        try Invite.create(genesisKey: genesis.publicKey, inviter: inviter, key: inviterKey, addresses: ["127.0.0.1:7946", "[::1]:7946"],
                          roles: .member, issuedAt: issuedAt ?? now, validFor: validFor)
    }

    func testTokenRoundTrip() throws {
        let i = try invite()
        XCTAssertTrue(i.token.hasPrefix("myc-invite-"))
        XCTAssertLessThan(i.token.count, 380, "compact enough to paste")
        let d = try Invite(token: "\n  " + i.token + "  \n")
        XCTAssertEqual(d, i)
        XCTAssertEqual(d.inviterKey, inviterKey.publicKey)
        XCTAssertEqual(d.networkID, net, "the joiner learns the network from the token alone")
        XCTAssertNoThrow(try d.verify(network: net, now: now + 1))
        XCTAssertNoThrow(try d.verify(network: nil, now: now + 1))
        XCTAssertNotEqual(try invite().ledgerKey, i.ledgerKey, "each invite has its own one-time secret")
    }

    func testExpiredNotYetValidAndWrongNetwork() throws {
        let i = try invite(validFor: 60)
        XCTAssertThrowsError(try i.verify(network: net, now: now + 60)) { e in
            guard case .expired = (e as! IdentityError).code else { return XCTFail("\(e)") }
        }
        XCTAssertNoThrow(try i.verify(network: net, now: now - maxClockSkew), "a clock this far behind is tolerated")
        XCTAssertThrowsError(try i.verify(network: net, now: now - maxClockSkew - 1)) { e in
            guard case .notYetValid = (e as! IdentityError).code else { return XCTFail("\(e)") }
        }
        let other = NetworkID(genesisKey: SigningKey().publicKey)
        XCTAssertThrowsError(try i.verify(network: other, now: now)) { e in
            guard case .wrongNetwork = (e as! IdentityError).code else { return XCTFail("\(e)") }
        }
    }

    /// The invite must be signed by the key it names: a member cannot pass off an invite as another's.
    func testSignedByAnotherKeyIsRefused() throws {
        let mallory = SigningKey()
        let forged = try Invite.create(genesisKey: genesis.publicKey, inviter: inviter, key: mallory, addresses: [], roles: .member,
                                       issuedAt: now, validFor: 600)
        var bytes = forged.encoded()
        // Name the real inviter's key, keep mallory's signature.
        bytes.replaceSubrange(69..<101, with: inviterKey.publicKey.bytes)
        let d = try Invite(decoding: bytes)
        XCTAssertEqual(d.inviterKey, inviterKey.publicKey)
        XCTAssertThrowsError(try d.verify(network: net, now: now)) { e in
            XCTAssertEqual((e as! IdentityError).code, .badSignature(what: "invite"))
        }
    }

    /// Every single-byte flip of an invite is refused, by the decoder or by verification.
    func testEverySingleByteFlipIsRefused() throws {
        let i = try invite()
        let good = i.encoded()
        XCTAssertNoThrow(try Invite(decoding: good).verify(network: net, now: now + 1))
        for idx in 0..<good.count {
            for bit in [0x01, 0x80] as [UInt8] {
                var b = good; b[idx] ^= bit
                do {
                    try Invite(decoding: b).verify(network: net, now: now + 1)
                    XCTFail("flip of byte \(idx) bit \(bit) was accepted")
                } catch {
                    // Refused (the decoder and verify throw IdentityError only): what this test asks.
                }
            }
        }
        XCTAssertThrowsError(try Invite(token: "myc-invite-" + String(i.token.dropFirst(11).dropLast(5)))) // cut when copied
        XCTAssertThrowsError(try Invite(token: "hello"))
    }
}

final class RotationTests: XCTestCase {
    func testRotationAcceptsNewRefusesOld() throws {
        let k1 = SigningKey(), k2 = SigningKey(), k3 = SigningKey()
        let id = NodeID(publicKey: k1.publicKey)
        var reg = KeyRegistry()
        reg.learn(node: id, key: k1.publicKey)
        XCTAssertNoThrow(try reg.check(node: id, key: k1.publicKey))

        let r1 = KeyRotation.create(node: id, from: k1, to: k2, sequence: 1, issuedAt: 0)
        let decoded = try KeyRotation(decoding: r1.encoded())
        try reg.apply(decoded)
        XCTAssertNoThrow(try reg.check(node: id, key: k2.publicKey))
        XCTAssertThrowsError(try reg.check(node: id, key: k1.publicKey)) { e in
            XCTAssertEqual((e as! IdentityError).code, .retiredKey(node: id))
        }
        XCTAssertThrowsError(try reg.apply(r1), "a replayed rotation is stale")
        // Rotation signed only by the new key (old key not involved) is refused.
        let forged = KeyRotation.create(node: id, from: k3, to: k3, sequence: 5, issuedAt: 0)
        XCTAssertThrowsError(try reg.apply(forged)) { e in XCTAssertEqual((e as! IdentityError).code, .keyMismatch(node: id)) }
        var tampered = r1.encoded(); tampered[60] ^= 1
        XCTAssertThrowsError(try KeyRotation(decoding: tampered).verifySignatures())
    }
}
