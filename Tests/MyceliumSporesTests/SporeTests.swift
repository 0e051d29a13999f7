import Foundation
import MyceliumCore
import MyceliumIdentity
import XCTest
@testable import MyceliumSpores

/// A network with a few members and a helper to apply signed commands at increasing epochs.
///
/// Founders are admitted with certificates the genesis key issues (generation 0); founder 0 also
/// holds the inviter role, as the genesis node's bootstrap agent does. After `handOff(to:)` new
/// nodes join the way the network admits them: an invite, a request, and a quorum of sclerotia
/// signatures (`join`).
struct SporeWorld {
    let genesis = SigningKey()
    var net: NetworkIdentity { NetworkIdentity(genesisKey: genesis.publicKey) }
    var keys: [SigningKey] = []
    var certs: [MembershipCertificate] = []
    var spore: PrimarySpore
    var index: UInt64 = 0
    var time: Int64 = 1_000
    /// How long the founders' certificates are valid (the first one sets the network's lifetime).
    let validity: Int64

    static let founderRoles: Roles = [.member, .sclerotiumEligible]

    init(members: Int, limits: SporeLimits = SporeLimits(), validity: Int64 = 1_000_000) {
        spore = PrimarySpore(network: NetworkIdentity(genesisKey: genesis.publicKey), limits: limits)
        self.validity = validity
        for i in 0..<members { try! admitNew(roles: i == 0 ? Self.founderRoles.union(.inviter) : Self.founderRoles) }
    }

    var ids: [NodeID] { certs.map(\.nodeID) }

    /// Admits a founder with a certificate signed by the genesis key.
    mutating func admitNew(roles: Roles = SporeWorld.founderRoles) throws {
        let k = SigningKey()
        let c = MembershipCertificate.issue(by: genesis, nodeID: NodeID(publicKey: k.publicKey), nodeKey: k.publicKey,
                                            roles: roles, serial: UInt64(keys.count), issuedAt: time, validFor: validity)
        keys.append(k); certs.append(c)
        try apply(.admit(c), by: keys.count - 1)
    }

    func signed(_ c: SporeCommand, by i: Int) -> SignedCommand {
        SignedCommand(c, author: certs[i].nodeID, key: keys[i], network: net.id)
    }

    mutating func apply(_ c: SporeCommand, by i: Int, advance: Int64 = 1) throws {
        try applySigned(signed(c, by: i), advance: advance)
    }

    mutating func applySigned(_ s: SignedCommand, advance: Int64 = 1) throws {
        index += 1
        time += advance
        // Round-trip through the wire form, as Raft would carry it.
        let wire = try SignedCommand(decoding: s.encoded())
        try spore.apply(wire, epoch: SporeEpoch(term: 1, index: index), time: time)
    }

    /// The pending link, which a test expects to exist.
    func pendingLink(file: StaticString = #filePath, line: UInt = #line) throws -> SclerotiaLink {
        try XCTUnwrap(spore.pendingLink?.link, "no sclerotia link is being signed", file: file, line: line)
    }

    /// The genesis key's signature on link 1, submitted by member `by`.
    mutating func signLinkByGenesis(by i: Int = 0) throws {
        let link = try pendingLink()
        try apply(.signLink(generation: link.generation, QuorumSignature(index: 0, signature: genesis.sign(link.signedBytes))), by: i)
    }

    /// Signer `signer` of the pending link's previous generation signs it (with its own index).
    mutating func signLink(by signer: Int) throws {
        let link = try pendingLink()
        let index = try signerIndex(of: signer, generation: link.generation - 1)
        try apply(.signLink(generation: link.generation, QuorumSignature(index: index, signature: keys[signer].sign(link.signedBytes))), by: signer)
    }

    /// Bootstrap to distributed: choose the sclerotia, the genesis key signs their link, hand off.
    mutating func handOff(to sclerotia: [Int]) throws {
        try apply(.setSclerotia(sclerotia.map { ids[$0] }), by: 0)
        try signLinkByGenesis()
        try apply(.handoff, by: 0)
    }

    /// Where member `i` signs in `generation`'s list.
    func signerIndex(of i: Int, generation: UInt64, file: StaticString = #filePath, line: UInt = #line) throws -> UInt8 {
        let signers = try XCTUnwrap(spore.chain.signers(of: generation), file: file, line: line)
        return UInt8(try XCTUnwrap(signers.firstIndex { $0.id == ids[i] }, "\(ids[i]) does not sign for generation \(generation)",
                                   file: file, line: line))
    }

    /// Signer `signer` of issuance `id`'s generation adds its signature (the genesis key's, submitted
    /// by member 0, for generation 0).
    mutating func signIssuance(_ id: UInt64, by signer: Int) throws {
        let iss = try XCTUnwrap(spore.issuances[id], "no issuance \(id)")
        if iss.certificate.generation == 0 {
            try apply(.signCertificate(id: id, QuorumSignature(index: 0, signature: genesis.sign(iss.certificate.signedBytes))), by: signer)
        } else {
            let index = try signerIndex(of: signer, generation: iss.certificate.generation)
            try apply(.signCertificate(id: id, QuorumSignature(index: index, signature: keys[signer].sign(iss.certificate.signedBytes))), by: signer)
        }
    }

    /// Signs issuance `id` by the first quorum of its generation's signers.
    mutating func completeIssuance(_ id: UInt64) throws {
        let iss = try XCTUnwrap(spore.issuances[id], "no issuance \(id)")
        let signers = try XCTUnwrap(spore.chain.signers(of: iss.certificate.generation))
        if iss.certificate.generation == 0 { return try signIssuance(id, by: 0) }
        for s in signers.prefix(quorumSize(of: signers.count)) {
            try signIssuance(id, by: try XCTUnwrap(ids.firstIndex(of: s.id)))
        }
    }

    /// An invite by member `inviter`, valid for an hour from now.
    func invite(by inviter: Int, roles: Roles = SporeWorld.founderRoles, key: SigningKey? = nil) throws -> Invite {
        try Invite.create(genesisKey: genesis.publicKey, inviter: ids[inviter], key: key ?? keys[inviter], addresses: ["192.0.2.1:7946"],
                          roles: roles, issuedAt: time, validFor: 3600)
    }

    /// A new node joins as the network admits it: `inviter` invites it, `requester` asks for its
    /// certificate, a quorum of the current sclerotia signs. Returns its index.
    @discardableResult
    mutating func join(roles: Roles = SporeWorld.founderRoles, inviter: Int = 0, requester: Int = 0) throws -> Int {
        let k = SigningKey()
        try apply(.requestCertificate(.admission(try invite(by: inviter, roles: roles), nodeKey: k.publicKey)), by: requester)
        try completeIssuance(spore.issuanceSequence)
        let cert = try XCTUnwrap(spore.members[NodeID(publicKey: k.publicKey)]?.certificate, "the joiner was not admitted")
        keys.append(k); certs.append(cert)
        return keys.count - 1
    }
}

final class PrimarySporeTests: XCTestCase {
    func testAdmitRefreshAddressesAndDeterministicBytes() throws {
        var w = SporeWorld(members: 3)
        try w.apply(.refresh(Capabilities(cpus: 4, memoryMiB: 8192, diskGiB: 100)), by: 0)
        try w.apply(.refresh(Capabilities(cpus: 2, memoryMiB: 1024, features: .libvirt)), by: 2)
        try w.apply(.confirmAddress(node: w.ids[1], address: "10.0.0.2:7946"), by: 0)
        XCTAssertEqual(w.spore.members[w.ids[1]]?.addresses, ["10.0.0.2:7946"])
        XCTAssertEqual(w.spore.members[w.ids[0]]?.capabilities.cpus, 4)
        XCTAssertEqual(w.spore.presentMembers.count, 3)

        let decoded = try PrimarySpore(decoding: w.spore.encoded())
        XCTAssertEqual(decoded, w.spore)
        XCTAssertEqual(decoded.encoded(), w.spore.encoded(), "same state, same bytes")
        XCTAssertEqual(decoded.members[w.ids[2]]?.capabilities.features, .libvirt)
    }

    func testSignaturesAreCheckedAgainstTheSporesKeys() throws {
        var w = SporeWorld(members: 2)
        // Member 1's command signed with member 0's key.
        let forged = SignedCommand(.refresh(Capabilities()), author: w.ids[1], key: w.keys[0], network: w.net.id)
        XCTAssertThrowsError(try w.applySigned(forged)) { e in
            guard case .badSignature = (e as! SporeError).code else { return XCTFail("\(e)") }
        }
        // A command signed for another network cannot be replayed here.
        let other = NetworkID(genesisKey: SigningKey().publicKey)
        let replayed = SignedCommand(.refresh(Capabilities()), author: w.ids[0], key: w.keys[0], network: other)
        XCTAssertThrowsError(try w.applySigned(replayed))
        // A stranger is not a member.
        let stranger = SigningKey()
        XCTAssertThrowsError(try w.applySigned(SignedCommand(.tick, author: NodeID(publicKey: stranger.publicKey), key: stranger, network: w.net.id))) { e in
            guard case .unknownMember = (e as! SporeError).code else { return XCTFail("\(e)") }
        }
        // A certificate from another network is refused at admission.
        let foreignGenesis = SigningKey(), k = SigningKey()
        let foreign = MembershipCertificate.issue(by: foreignGenesis, nodeID: NodeID(publicKey: k.publicKey), nodeKey: k.publicKey,
                                                  roles: .member, serial: 1, issuedAt: 0, validFor: 1_000_000)
        XCTAssertThrowsError(try w.applySigned(SignedCommand(.admit(foreign), author: foreign.nodeID, key: k, network: w.net.id)))
    }

    func testRefusedCommandChangesNothingAndEpochsOnlyGrow() throws {
        var w = SporeWorld(members: 2)
        let before = w.spore
        XCTAssertThrowsError(try w.apply(.setStatus(node: w.ids[1], .left), by: 0), "only a node itself may leave")
        XCTAssertEqual(w.spore, before)
        XCTAssertThrowsError(try w.spore.apply(w.signed(.tick, by: 0), epoch: w.spore.epoch, time: w.time)) { e in
            guard case .staleEpoch = (e as! SporeError).code else { return XCTFail("\(e)") }
        }
    }

    func testLimitsAreEnforced() throws {
        var limits = SporeLimits()
        limits.maxMembers = 3
        limits.maxLeases = 1
        var w = SporeWorld(members: 3, limits: limits)
        XCTAssertThrowsError(try w.admitNew()) { e in
            guard case .beyondLimits = (e as! SporeError).code else { return XCTFail("\(e)") }
        }
        try w.apply(.acquireLease(name: "a", ttlSeconds: 60), by: 0)
        XCTAssertThrowsError(try w.apply(.acquireLease(name: "b", ttlSeconds: 60), by: 0))
        // A spore over the reader's limits is refused whole.
        let big = SporeWorld(members: 5).spore.encoded()
        XCTAssertThrowsError(try PrimarySpore(decoding: big, limits: limits)) { e in
            guard case .beyondLimits = (e as! SporeError).code else { return XCTFail("\(e)") }
        }
    }

    func testTimeframesExpireMembersAndLeases() throws {
        var limits = SporeLimits()
        limits.memberTimeframe = 100
        limits.departedRetention = 50
        var w = SporeWorld(members: 3, limits: limits)
        try w.apply(.acquireLease(name: "vm/db", ttlSeconds: 30), by: 1)
        XCTAssertThrowsError(try w.apply(.acquireLease(name: "vm/db", ttlSeconds: 30), by: 2)) { e in
            XCTAssertEqual((e as! SporeError).code, .leaseHeld("vm/db", by: w.ids[1]))
        }
        // A renewal stamped with a run nonce is the same lease to the spore: held, extended, refused to others.
        try w.apply(.renewLease(name: "vm/db", ttlSeconds: 40, run: 0xfeed), by: 1)
        XCTAssertEqual(w.spore.leases["vm/db"]?.expiresAt, w.spore.now + 40)
        XCTAssertThrowsError(try w.apply(.renewLease(name: "vm/db", ttlSeconds: 30, run: 1), by: 2)) { e in
            XCTAssertEqual((e as! SporeError).code, .leaseHeld("vm/db", by: w.ids[1]))
        }
        try w.apply(.acquireLease(name: "vm/db", ttlSeconds: 30), by: 1)
        try w.apply(.refresh(Capabilities()), by: 0, advance: 60)  // 0 refreshed; lease expired
        XCTAssertNil(w.spore.leases["vm/db"])
        try w.apply(.refresh(Capabilities()), by: 0, advance: 60)
        XCTAssertEqual(w.spore.members[w.ids[0]]?.status, .alive)
        XCTAssertEqual(w.spore.members[w.ids[1]]?.status, .suspect, "not refreshed: suspect, never failed without confirmation")
        try w.apply(.setStatus(node: w.ids[2], .failed), by: 0)
        try w.apply(.tick, by: 0, advance: 60)
        XCTAssertNil(w.spore.members[w.ids[2]], "a failed member is dropped after its retention")
        try w.apply(.refresh(Capabilities()), by: 1)
        XCTAssertEqual(w.spore.members[w.ids[1]]?.status, .alive, "a refresh brings a suspect back")
    }

    func testSclerotiaHandoffAndKeyRotation() throws {
        var w = SporeWorld(members: 4)
        try w.admitNew(roles: .member)
        XCTAssertThrowsError(try w.apply(.setSclerotia([w.ids[0], w.ids[4]]), by: 0), "not eligible")
        XCTAssertThrowsError(try w.apply(.handoff, by: 0), "handoff needs sclerotia")
        try w.apply(.setSclerotia(Array(w.ids[0..<3])), by: 0)
        XCTAssertThrowsError(try w.apply(.handoff, by: 0), "handoff needs the sclerotia's link signed by the genesis key")
        XCTAssertEqual(w.spore.phase, .bootstrap)
        try w.signLinkByGenesis(by: 3)  // any member may carry the genesis key's signature
        try w.apply(.handoff, by: 0)
        XCTAssertEqual(w.spore.phase, .distributed)
        // After the handoff only sclerotia record judgements about others.
        XCTAssertThrowsError(try w.apply(.setStatus(node: w.ids[0], .failed), by: 3)) { e in
            guard case .notAuthorized = (e as! SporeError).code else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try w.apply(.setSclerotia([w.ids[3]]), by: 4))
        XCTAssertNoThrow(try w.apply(.setStatus(node: w.ids[4], .suspect), by: 1))

        let newKey = SigningKey()
        let r = KeyRotation.create(node: w.ids[1], from: w.keys[1], to: newKey, sequence: 1, issuedAt: w.time)
        try w.applySigned(SignedCommand(.rotateKey(r), author: w.ids[1], key: newKey, network: w.net.id))
        XCTAssertThrowsError(try w.apply(.refresh(Capabilities()), by: 1), "the old key no longer signs for node 1")
        try w.applySigned(SignedCommand(.refresh(Capabilities()), author: w.ids[1], key: newKey, network: w.net.id))
    }
}

final class SeedSporeTests: XCTestCase {
    func world() throws -> SporeWorld {
        var w = SporeWorld(members: 3)
        try w.handOff(to: [0, 1, 2])
        return w
    }

    func testRoundTripAndEachRefusal() throws {
        let w = try world()
        let seed = SeedSpore(spore: w.spore, signer: w.certs[0], key: w.keys[0], writtenAt: w.time)
        let bytes = seed.encoded()
        let ok = try SeedSpore(verifying: bytes, network: w.net.id, knownEpoch: nil, now: w.time)
        XCTAssertEqual(ok.spore, w.spore)
        XCTAssertNoThrow(try SeedSpore(verifying: bytes, network: w.net.id, knownEpoch: w.spore.epoch, now: w.time), "same epoch again is fine")

        func code(_ b: [UInt8], network: NetworkID? = nil, known: SporeEpoch? = nil) -> SporeError.Code? {
            do { _ = try SeedSpore(verifying: b, network: network ?? w.net.id, knownEpoch: known, now: w.time); return nil } catch {
                return error.code
            }
        }
        // Wrong network.
        guard case .wrongNetwork? = code(bytes, network: NetworkID(genesisKey: SigningKey().publicKey)) else { return XCTFail() }
        // Replayed old.
        guard case .staleEpoch? = code(bytes, known: SporeEpoch(term: 2, index: 0)) else { return XCTFail() }
        // Tampered: every single-byte flip is refused.
        for i in stride(from: 0, to: bytes.count, by: 7) {
            var b = bytes; b[i] ^= 0x20
            XCTAssertNotNil(code(b), "flip at \(i) accepted")
        }
        // Signed by a member that is not a sclerotium of that spore.
        var w2 = try world()
        try w2.join()
        XCTAssertEqual(w2.certs[3].generation, 1, "admitted after the handoff: certified by the sclerotia")
        let byNonSclerotium = SeedSpore(spore: w2.spore, signer: w2.certs[3], key: w2.keys[3], writtenAt: w2.time).encoded()
        XCTAssertEqual(code(byNonSclerotium, network: w2.net.id), .notASclerotium(w2.ids[3]))
        // Beyond limits.
        var small = SporeLimits(); small.maxMembers = 2
        XCTAssertThrowsError(try SeedSpore(verifying: bytes, network: w.net.id, knownEpoch: nil, now: w.time, limits: small)) { e in
            guard case .beyondLimits = (e as! SporeError).code else { return XCTFail("\(e)") }
        }
    }

    func testDirectoryStorePicksNewestGoodSeed() async throws {
        var w = try world()
        let dirA = NSTemporaryDirectory() + "myc-seed-a-\(UUID().uuidString)", dirB = dirA + "-b"
        defer { try? FileManager.default.removeItem(atPath: dirA); try? FileManager.default.removeItem(atPath: dirB) }
        let a = DirectorySeedStore(directory: dirA, network: w.net.id), b = DirectorySeedStore(directory: dirB, network: w.net.id)
        try await a.write(SeedSpore(spore: w.spore, signer: w.certs[0], key: w.keys[0], writtenAt: w.time))
        try w.apply(.tick, by: 0)
        try await b.write(SeedSpore(spore: w.spore, signer: w.certs[0], key: w.keys[0], writtenAt: w.time))
        let (best, problems) = await newestSeedSpore(from: [a, b], network: w.net.id, knownEpoch: nil, now: w.time)
        XCTAssertEqual(best?.epoch, w.spore.epoch)
        XCTAssertTrue(problems.isEmpty)
        // Corrupt B on disk: A is used and B's problem is reported.
        var raw = try AtomicFile.read(b.path); raw[raw.count - 3] ^= 1
        try AtomicFile.write(raw, to: b.path)
        let (fallback, p2) = await newestSeedSpore(from: [a, b], network: w.net.id, knownEpoch: nil, now: w.time)
        XCTAssertEqual(fallback?.epoch.index, w.spore.epoch.index - 1)
        XCTAssertEqual(p2.count, 1)
        XCTAssertTrue(p2[0].problem.contains("checksum"), p2[0].problem)
    }
}

final class LatentAndAuthorityTests: XCTestCase {
    func testLatentSporeIsSignedByItsOwner() throws {
        var w = SporeWorld(members: 3)
        try w.apply(.confirmAddress(node: w.ids[2], address: "127.0.0.1:9000"), by: 0)
        let latent = LatentSpore(from: w.spore, owner: w.ids[0], savedAt: w.time)
        let bytes = latent.encoded(signedBy: w.keys[0])
        let back = try LatentSpore(verifying: bytes, ownerKey: w.keys[0].publicKey)
        XCTAssertEqual(back, latent)
        XCTAssertEqual(back.peers.first(where: { $0.id == w.ids[2] })?.addresses, ["127.0.0.1:9000"])
        XCTAssertThrowsError(try LatentSpore(verifying: bytes, ownerKey: w.keys[1].publicKey))
        var t = bytes; t[30] ^= 1
        XCTAssertThrowsError(try LatentSpore(verifying: t, ownerKey: w.keys[0].publicKey))
    }

    func testAuthorityOrder() {
        let e1 = SporeEpoch(term: 1, index: 9), e2 = SporeEpoch(term: 2, index: 1)
        XCTAssertLessThan(SporeAuthority(.latent, e2), SporeAuthority(.seed, e1), "a seed beats any latent spore")
        XCTAssertLessThan(SporeAuthority(.seed, e2), SporeAuthority(.primary, e1), "the primary beats any seed")
        XCTAssertLessThan(SporeAuthority(.seed, e1), SporeAuthority(.seed, e2), "within a level the higher epoch wins")
        XCTAssertLessThan(e1, e2, "term first, then index")
    }

    func testCommandDecoderRefusesGarbage() {
        var rng = SeededRandom(seed: 4)
        for _ in 0..<3000 {
            let n = Int.random(in: 0...80, using: &rng)
            let b = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if let c = try? SporeCommand(decoding: b) { XCTAssertEqual(c.encoded(), b) }
            _ = try? SignedCommand(decoding: b)
            _ = try? PrimarySpore(decoding: b)
        }
    }
}
