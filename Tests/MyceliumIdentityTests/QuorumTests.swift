import MyceliumCore
import XCTest
@testable import MyceliumIdentity

// Membership issued by the network (issue 15): quorum certificates, sclerotia links and chains,
// and the v2 handshake that carries them. Pure: fixed times, keys from fixed seeds.

/// A key from a fixed seed, so a failure reproduces with the same bytes.
func fixedKey(_ tag: UInt8, _ n: Int) -> SigningKey {
    var seed = [UInt8](repeating: 0x5C, count: 32)
    seed[0] = tag; seed[1] = UInt8(truncatingIfNeeded: n); seed[2] = UInt8(truncatingIfNeeded: n >> 8)
    return SigningKey(seed: seed)
}

/// One network: its genesis key, its sclerotia chain, and every private key of every generation,
/// so a test can sign as any signer (or as the wrong one).
struct QuorumWorld {
    let tag: UInt8
    let genesis: SigningKey
    var chain: SclerotiaChain
    private(set) var keys: [PublicKey: SigningKey] = [:]
    private var made = 0

    init(tag: UInt8 = 1) {
        self.tag = tag
        genesis = fixedKey(tag, 0)
        chain = SclerotiaChain(genesisKey: genesis.publicKey)
        keys[genesis.publicKey] = genesis
    }

    var network: NetworkIdentity { NetworkIdentity(genesisKey: genesis.publicKey) }

    /// `n` new keys, remembered so they can sign later.
    mutating func fresh(_ n: Int) -> [SigningKey] {
        (0..<n).map { _ in
            made += 1
            let k = fixedKey(tag, made)
            keys[k.publicKey] = k
            return k
        }
    }

    /// Signatures over `message` by `generation`'s signers at `indices` (default: the first quorum).
    func sign(_ message: [UInt8], generation: UInt64, indices: [Int]? = nil) -> [QuorumSignature] {
        let signers = chain.signers(of: generation)!
        return (indices ?? Array(0..<quorumSize(of: signers.count))).map {
            QuorumSignature(index: UInt8($0), signature: keys[signers[$0].key]!.sign(message))
        }
    }

    /// The next link naming `members`, unsigned.
    func proposal(members: [SigningKey], issuedAt: Int64, previous: [UInt8]? = nil) -> SclerotiaLink {
        SclerotiaLink.proposal(network: chain.network, generation: chain.generation + 1, previous: previous ?? chain.tipHash,
                               members: members.map { SclerotiumKey(id: NodeID(publicKey: $0.publicKey), key: $0.publicKey) },
                               issuedAt: issuedAt)
    }

    /// The next link naming `members`, signed by the current generation's signers at `signers` (default: a quorum).
    func nextLink(members: [SigningKey], issuedAt: Int64, signers: [Int]? = nil) -> SclerotiaLink {
        let p = proposal(members: members, issuedAt: issuedAt)
        return p.withSignatures(sign(p.signedBytes, generation: chain.generation, indices: signers))
    }

    /// Appends a link of `n` fresh sclerotia (or of `members`) and returns their keys.
    @discardableResult
    mutating func extend(_ n: Int = 0, members: [SigningKey]? = nil, issuedAt: Int64) throws -> [SigningKey] {
        let ms = members ?? fresh(n)
        try chain.append(nextLink(members: ms, issuedAt: issuedAt))
        return ms
    }

    func unsigned(for node: SigningKey, generation: UInt64, issuedAt: Int64, validFor: Int64 = 3600) -> MembershipCertificate {
        MembershipCertificate.unsigned(network: network, nodeID: NodeID(publicKey: node.publicKey), nodeKey: node.publicKey,
                                       roles: [.member], serial: 7, issuedAt: issuedAt, expiresAt: issuedAt + validFor,
                                       generation: generation)
    }

    /// A certificate for `node` signed by `generation`'s signers at `indices` (default: a quorum).
    func certificate(for node: SigningKey, generation: UInt64, issuedAt: Int64, validFor: Int64 = 3600,
                     indices: [Int]? = nil) -> MembershipCertificate {
        let body = unsigned(for: node, generation: generation, issuedAt: issuedAt, validFor: validFor)
        return body.withSignatures(sign(body.signedBytes, generation: generation, indices: indices))
    }
}

/// An identity refusal without its free-text parts, so tests compare what matters.
enum Refused: Equatable {
    case tooFew(have: Int, need: Int, of: Int, generation: UInt64)
    case notBySclerotium(index: Int, generation: UInt64, signers: Int)
    case badSignature(signer: NodeID, generation: UInt64)
    case unknownGeneration(generation: UInt64, known: UInt64)
    case malformed
    case decode
    case other(IdentityError.Code)

    init(_ code: IdentityError.Code) {
        switch code {
        case let .tooFewSignatures(_, have, need, of, g): self = .tooFew(have: have, need: need, of: of, generation: g)
        case let .notBySclerotium(_, index, g, n): self = .notBySclerotium(index: index, generation: g, signers: n)
        case let .badQuorumSignature(_, signer, g): self = .badSignature(signer: signer, generation: g)
        case let .unknownGeneration(_, g, known): self = .unknownGeneration(generation: g, known: known)
        case .malformed: self = .malformed
        case .decode: self = .decode
        default: self = .other(code)
        }
    }
}

/// Runs `body` and returns why it was refused; fails the test if it was accepted.
func refusal(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> Refused? {
    do {
        try body()
    } catch let e as IdentityError {
        return Refused(e.code)
    } catch {
        XCTFail("refused with \(type(of: error)) \(error), expected an IdentityError", file: file, line: line)
        return nil
    }
    XCTFail("accepted, expected a refusal", file: file, line: line)
    return nil
}

final class QuorumTests: XCTestCase {
    let t0: Int64 = 1_800_000_000

    func testQuorumSizes() {
        XCTAssertEqual((1...7).map { quorumSize(of: $0) }, [1, 2, 2, 3, 3, 4, 4])
    }

    /// For 1…7 sclerotia, exactly the sets of at least a quorum issue a certificate and the next
    /// link: every subset is tried, so no position (first, last) is special.
    func testEverySubsetOfAtLeastAQuorumIssuesAndNoSmallerOne() throws {
        for n in 1...7 {
            var w = QuorumWorld(tag: UInt8(n))
            try w.extend(n, issuedAt: t0)
            let node = w.fresh(1)[0]
            let nextMembers = w.fresh(3)
            let q = quorumSize(of: n)
            for mask in 1..<(1 << n) {
                let indices = (0..<n).filter { mask & (1 << $0) != 0 }
                let cert = w.certificate(for: node, generation: 1, issuedAt: t0 + 1, indices: indices)
                var chain = w.chain
                let link = w.nextLink(members: nextMembers, issuedAt: t0 + 2, signers: indices)
                if indices.count >= q {
                    XCTAssertNoThrow(try cert.verify(chain: w.chain, now: t0 + 1), "n \(n) signers \(indices)")
                    XCTAssertNoThrow(try chain.append(link), "n \(n) signers \(indices)")
                } else {
                    XCTAssertEqual(refusal { try cert.verify(chain: w.chain, now: t0 + 1) },
                                   .tooFew(have: indices.count, need: q, of: n, generation: 1), "n \(n) signers \(indices)")
                    XCTAssertEqual(refusal { try chain.append(link) },
                                   .tooFew(have: indices.count, need: q, of: n, generation: 1), "n \(n) signers \(indices)")
                    XCTAssertEqual(chain.generation, 1, "a refused link is not appended")
                }
            }
            // No signature at all.
            XCTAssertEqual(refusal { try w.unsigned(for: node, generation: 1, issuedAt: t0 + 1).verify(chain: w.chain, now: t0 + 1) },
                           .tooFew(have: 0, need: q, of: n, generation: 1))
        }
    }

    func testCertificateWithTooFewSignaturesSurvivesEncodingAndIsRefused() throws {
        var w = QuorumWorld()
        try w.extend(5, issuedAt: t0)
        let cert = w.certificate(for: w.fresh(1)[0], generation: 1, issuedAt: t0, indices: [1, 4])
        let decoded = try MembershipCertificate(decoding: cert.encoded())
        XCTAssertEqual(decoded, cert)
        XCTAssertEqual(refusal { try decoded.verify(chain: w.chain, now: t0) }, .tooFew(have: 2, need: 3, of: 5, generation: 1))
    }

    /// A signature in a sclerotium's name that another key made, and an index past the link's end.
    func testSignatureByANonSclerotiumIsRefused() throws {
        var w = QuorumWorld()
        try w.extend(5, issuedAt: t0)
        let members = w.chain.link(1)!.members
        let mallory = w.fresh(1)[0]
        let node = w.fresh(1)[0]
        let body = w.unsigned(for: node, generation: 1, issuedAt: t0)
        let good = w.sign(body.signedBytes, generation: 1, indices: [0, 1, 2, 3, 4])

        // Mallory signs at index 2, next to two genuine signatures: a quorum by count, not by keys.
        let atTwo = body.withSignatures([good[0], good[1], QuorumSignature(index: 2, signature: mallory.sign(body.signedBytes))])
        XCTAssertEqual(refusal { try atTwo.verify(chain: w.chain, now: t0) }, .badSignature(signer: members[2].id, generation: 1))
        // The genesis key has no say in generation 1.
        let byGenesis = body.withSignatures([QuorumSignature(index: 0, signature: w.genesis.sign(body.signedBytes)), good[1], good[2]])
        XCTAssertEqual(refusal { try byGenesis.verify(chain: w.chain, now: t0) }, .badSignature(signer: members[0].id, generation: 1))
        // A genuine signature moved to another sclerotium's index.
        let moved = body.withSignatures([good[0], good[1], QuorumSignature(index: 2, signature: good[3].signature)])
        XCTAssertEqual(refusal { try moved.verify(chain: w.chain, now: t0) }, .badSignature(signer: members[2].id, generation: 1))

        // Index 5 of a 5-member link: refused even next to a valid quorum.
        for index in [5, 6, 255] as [UInt8] {
            let beyond = body.withSignatures([good[0], good[1], good[2], QuorumSignature(index: index, signature: mallory.sign(body.signedBytes))])
            XCTAssertEqual(refusal { try beyond.verify(chain: w.chain, now: t0) },
                           .notBySclerotium(index: Int(index), generation: 1, signers: 5))
            XCTAssertEqual(refusal { try MembershipCertificate(decoding: beyond.encoded()).verify(chain: w.chain, now: t0) },
                           .notBySclerotium(index: Int(index), generation: 1, signers: 5), "the same after encoding")
        }
        // The same for a link.
        let p = w.proposal(members: w.fresh(3), issuedAt: t0 + 1)
        let linkSigs = w.sign(p.signedBytes, generation: 1, indices: [0, 1])
        var chain = w.chain
        XCTAssertEqual(refusal { try chain.append(p.withSignatures(linkSigs + [QuorumSignature(index: 2, signature: mallory.sign(p.signedBytes))])) },
                       .badSignature(signer: members[2].id, generation: 1))
        XCTAssertEqual(refusal { try chain.append(p.withSignatures(linkSigs + [QuorumSignature(index: 9, signature: mallory.sign(p.signedBytes))])) },
                       .notBySclerotium(index: 9, generation: 1, signers: 5))
        XCTAssertEqual(chain, w.chain)
    }

    /// One sclerotium signing twice does not make two votes of a quorum.
    func testDuplicateSignerIsRefused() throws {
        var w = QuorumWorld()
        try w.extend(3, issuedAt: t0)
        let body = w.unsigned(for: w.fresh(1)[0], generation: 1, issuedAt: t0)
        let one = w.sign(body.signedBytes, generation: 1, indices: [1])[0]
        let twice = body.withSignatures([one, one])
        XCTAssertEqual(refusal { try twice.verify(chain: w.chain, now: t0) }, .malformed)
        XCTAssertEqual(refusal { _ = try MembershipCertificate(decoding: twice.encoded()) }, .decode, "the decoder refuses it first")
    }

    /// A generation's authority ends when the next link is made: a removed sclerotium, an old
    /// quorum or the genesis key after the handoff cannot issue any more.
    func testIssuerSupersededByTheNextLinkIsRefused() throws {
        var w = QuorumWorld()
        let node = w.fresh(1)[0]
        let before = w.certificate(for: node, generation: 0, issuedAt: t0 - 10)
        let old = try w.extend(3, issuedAt: t0)
        // Generation 2 drops old[0]: keep the two others, add one.
        let kept = Array(old.dropFirst())
        try w.extend(members: kept + w.fresh(1), issuedAt: t0 + 100)

        XCTAssertNoThrow(try before.verify(chain: w.chain, now: t0), "the founders' certificates stay valid")
        let genesisLate = w.certificate(for: node, generation: 0, issuedAt: t0 + 1)
        XCTAssertEqual(refusal { try genesisLate.verify(chain: w.chain, now: t0 + 1) },
                       .other(.supersededIssuer(generation: 0, supersededAt: t0, issuedAt: t0 + 1)))
        XCTAssertNoThrow(try genesisLate.verify(network: w.chain.network, now: t0 + 1),
                         "a chain-less tool cannot know; that is why members verify with the chain")

        let inOffice = w.certificate(for: node, generation: 1, issuedAt: t0 + 50)
        XCTAssertNoThrow(try inOffice.verify(chain: w.chain, now: t0 + 150))
        // The old quorum, the removed sclerotium among it, keeps issuing as generation 1.
        let removedIndex = w.chain.link(1)!.members.firstIndex { $0.key == old[0].publicKey }!
        let otherIndex = (0..<3).first { $0 != removedIndex }!
        let late = w.certificate(for: node, generation: 1, issuedAt: t0 + 150, indices: [removedIndex, otherIndex].sorted())
        XCTAssertEqual(refusal { try late.verify(chain: w.chain, now: t0 + 150) },
                       .other(.supersededIssuer(generation: 1, supersededAt: t0 + 100, issuedAt: t0 + 150)))
        XCTAssertNoThrow(try late.verify(chain: SclerotiaChain(genesisKey: w.genesis.publicKey).extended(by: w.chain.link(1)!), now: t0 + 150),
                         "to a node that has not seen link 2 yet it is still valid; it learns link 2 from any current member")

        // The removed sclerotium, in the name of a generation-2 member, next to one genuine signature.
        let body = w.unsigned(for: node, generation: 2, issuedAt: t0 + 150)
        let members2 = w.chain.link(2)!.members
        let genuine = w.sign(body.signedBytes, generation: 2, indices: [1])[0]
        let forged = body.withSignatures([QuorumSignature(index: 0, signature: old[0].sign(body.signedBytes)), genuine])
        XCTAssertEqual(refusal { try forged.verify(chain: w.chain, now: t0 + 150) }, .badSignature(signer: members2[0].id, generation: 2))
        XCTAssertNoThrow(try w.certificate(for: node, generation: 2, issuedAt: t0 + 150).verify(chain: w.chain, now: t0 + 150))
    }

    /// A link that differs from a known one is a fork or a forgery, and a link must be signed by
    /// the generation before it, linked by hash, in the same network.
    func testForgedOrForkedLinksAreRefused() throws {
        var w = QuorumWorld()
        try w.extend(3, issuedAt: t0)
        var atOne = w.chain
        try w.extend(3, issuedAt: t0 + 100)

        // Mallory's own generation 2, signed by her keys.
        let mallory = w.fresh(3)
        let mp = atOne.nextProposal(members: mallory, issuedAt: t0 + 100)
        let forged = mp.withSignatures([0, 1].map { QuorumSignature(index: UInt8($0), signature: mallory[$0].sign(mp.signedBytes)) })
        var c = w.chain
        XCTAssertEqual(refusal { try c.absorb([forged]) }, .other(.forkedChain(generation: 2)))
        XCTAssertEqual(c, w.chain)
        // To a node that knows only generation 1, the same link is not signed by generation 1.
        let members1 = atOne.link(1)!.members
        XCTAssertEqual(refusal { try atOne.absorb([forged]) }, .badSignature(signer: members1[0].id, generation: 1))
        // Signed by the new members themselves, or by the genesis key plus one genuine signer.
        var one = atOne
        let newMembers = w.fresh(3)
        let p = one.nextProposal(members: newMembers, issuedAt: t0 + 100)
        let bySelf = p.withSignatures(newMembers.sortedByNodeID().prefix(2).enumerated().map {
            QuorumSignature(index: UInt8($0.offset), signature: $0.element.sign(p.signedBytes))
        })
        XCTAssertEqual(refusal { try one.append(bySelf) }, .badSignature(signer: members1[0].id, generation: 1))
        let genuine1 = w.sign(p.signedBytes, generation: 1, indices: [1])[0]
        let byGenesis = p.withSignatures([QuorumSignature(index: 0, signature: w.genesis.sign(p.signedBytes)), genuine1])
        XCTAssertEqual(refusal { try one.append(byGenesis) }, .badSignature(signer: members1[0].id, generation: 1))
        XCTAssertEqual(one, atOne, "nothing refused was appended")

        // Equivocation: generation 1's quorum signs a second, different generation 2.
        let other = one.nextProposal(members: w.fresh(2), issuedAt: t0 + 100)
        let twin = other.withSignatures(w.sign(other.signedBytes, generation: 1))
        XCTAssertNoThrow(try one.append(twin), "alone, it is a valid link")
        c = w.chain
        XCTAssertEqual(refusal { try c.absorb([twin]) }, .other(.forkedChain(generation: 2)))

        // The genuine link 2 with another quorum's signatures is the same link, not a fork.
        let genuine2 = w.chain.link(2)!
        c = w.chain
        XCTAssertNoThrow(try c.absorb([genuine2.withSignatures(w.sign(genuine2.signedBytes, generation: 1, indices: [1, 2]))]))
        XCTAssertEqual(c, w.chain)

        // Linked to the wrong previous link, from another network, made before the link it follows.
        let current = w.chain
        c = current
        let wrongPrev = w.proposal(members: w.fresh(2), issuedAt: t0 + 200, previous: [UInt8](repeating: 1, count: 32))
        XCTAssertEqual(refusal { try c.append(wrongPrev.withSignatures(w.sign(wrongPrev.signedBytes, generation: 2))) },
                       .other(.forkedChain(generation: 3)))
        let elsewhere = QuorumWorld(tag: 99)
        let foreign = elsewhere.nextLink(members: [w.genesis], issuedAt: t0)
        XCTAssertEqual(refusal { try c.append(foreign) }, .other(.wrongNetwork(expected: current.network, actual: elsewhere.chain.network)))
        let early = w.nextLink(members: w.fresh(2), issuedAt: t0 + 99)
        XCTAssertEqual(refusal { try c.append(early) }, .malformed)
        XCTAssertEqual(c, current)
    }

    /// A chain older than the known one is a replay: `update(to:)` refuses it, as it refuses a fork.
    func testReplayedOldChainIsRefused() throws {
        var w = QuorumWorld()
        try w.extend(3, issuedAt: t0)
        try w.extend(3, issuedAt: t0 + 100)
        let atTwo = w.chain
        try w.extend(5, issuedAt: t0 + 200)
        let atThree = w.chain

        var current = atThree
        XCTAssertEqual(refusal { try current.update(to: atTwo) }, .other(.staleChain(have: 3, got: 2)))
        XCTAssertEqual(refusal { try current.update(to: SclerotiaChain(genesisKey: w.genesis.publicKey)) }, .other(.staleChain(have: 3, got: 0)))
        XCTAssertEqual(refusal { try current.append(atThree.link(1)!) }, .other(.staleChain(have: 3, got: 1)))
        XCTAssertEqual(refusal { try current.append(atThree.link(3)!) }, .other(.staleChain(have: 3, got: 3)))
        XCTAssertEqual(current, atThree)
        XCTAssertNoThrow(try current.update(to: atThree), "the same chain again is no change")

        // A fork of generation 3 (generation 2's quorum signed two links) is refused, not adopted.
        var fork = atTwo
        try fork.append(fork.nextProposal(members: w.fresh(1), issuedAt: t0 + 200).signed(by: w, generation: 2))
        XCTAssertEqual(refusal { try current.update(to: fork) }, .other(.forkedChain(generation: 3)))
        XCTAssertEqual(current, atThree)
        // Another network's chain.
        let foreign = QuorumWorld(tag: 42).chain
        XCTAssertEqual(refusal { try current.update(to: foreign) },
                       .other(.wrongNetwork(expected: atThree.network, actual: foreign.network)))

        // Moving forward is fine.
        var behind = atTwo
        XCTAssertNoThrow(try behind.update(to: atThree))
        XCTAssertEqual(behind, atThree)
    }

    func testUnknownGenerationIsRefusedUntilTheLinksAreLearned() throws {
        var w = QuorumWorld()
        try w.extend(3, issuedAt: t0)
        let atOne = w.chain
        try w.extend(3, issuedAt: t0 + 100)
        try w.extend(4, issuedAt: t0 + 200)
        let node = w.fresh(1)[0]
        let cert = w.certificate(for: node, generation: 3, issuedAt: t0 + 300)

        var behind = atOne
        XCTAssertEqual(refusal { try cert.verify(chain: behind, now: t0 + 300) }, .unknownGeneration(generation: 3, known: 1))
        XCTAssertEqual(refusal { try behind.append(w.chain.link(3)!) }, .unknownGeneration(generation: 2, known: 1), "a gap")
        XCTAssertEqual(refusal { try w.certificate(for: node, generation: 0, issuedAt: t0 - 1).withGeneration(9).verify(chain: w.chain, now: t0) },
                       .unknownGeneration(generation: 9, known: 3))
        try behind.absorb(w.chain.suffix(upTo: 3, count: 2))
        XCTAssertEqual(behind, w.chain)
        XCTAssertNoThrow(try cert.verify(chain: behind, now: t0 + 300))
    }

    /// Every single-byte change of an encoded quorum certificate is refused, by the decoder or by
    /// verification; so is every truncation and an extra byte.
    func testEveryByteFlipOfAQuorumCertificateIsRefused() throws {
        var w = QuorumWorld()
        try w.extend(3, issuedAt: t0)
        try w.extend(5, issuedAt: t0 + 100)
        let cert = w.certificate(for: w.fresh(1)[0], generation: 2, issuedAt: t0 + 200, indices: [0, 2, 4])
        let good = cert.encoded()
        XCTAssertNoThrow(try MembershipCertificate(decoding: good).verify(chain: w.chain, now: t0 + 200))
        for i in 0..<good.count {
            for mask in [1, 2, 4, 8, 16, 32, 64, 128, 255] as [UInt8] {
                var b = good; b[i] ^= mask
                XCTAssertNotNil(refusal { try MembershipCertificate(decoding: b).verify(chain: w.chain, now: t0 + 200) },
                                "byte \(i) ^ \(mask) of \(good.count)")
            }
        }
        for n in 0..<good.count {
            XCTAssertEqual(refusal { _ = try MembershipCertificate(decoding: Array(good.prefix(n))) }, .decode, "cut at \(n)")
        }
        XCTAssertEqual(refusal { _ = try MembershipCertificate(decoding: good + [0]) }, .decode)
    }

    /// The same for an encoded link, appended to the chain it extends.
    func testEveryByteFlipOfALinkIsRefused() throws {
        var w = QuorumWorld()
        try w.extend(3, issuedAt: t0)
        let link = w.nextLink(members: w.fresh(5), issuedAt: t0 + 100)
        let good = link.encoded()
        XCTAssertEqual(good.count, link.encodedSize)
        var check = w.chain
        XCTAssertNoThrow(try check.append(SclerotiaLink(decoding: good)))
        for i in 0..<good.count {
            for mask in [1, 2, 4, 8, 16, 32, 64, 128, 255] as [UInt8] {
                var b = good; b[i] ^= mask
                var c = w.chain
                XCTAssertNotNil(refusal { try c.append(SclerotiaLink(decoding: b)) }, "byte \(i) ^ \(mask) of \(good.count)")
                XCTAssertEqual(c.generation, 1)
            }
        }
        for n in 0..<good.count {
            XCTAssertEqual(refusal { _ = try SclerotiaLink(decoding: Array(good.prefix(n))) }, .decode, "cut at \(n)")
        }
        XCTAssertEqual(refusal { _ = try SclerotiaLink(decoding: good + [0]) }, .decode)
    }

    /// Ten links from genesis, of every size from 1 to 7: the chain verifies, survives its
    /// encoding, and a node that knows only the genesis key can follow it to the newest quorum.
    func testChainOfTenLinksVerifiesAndRoundTrips() throws {
        var w = QuorumWorld()
        let sizes = [1, 3, 5, 7, 4, 2, 6, 3, 5, 7]
        for (g, n) in sizes.enumerated() { try w.extend(n, issuedAt: t0 + Int64(g) * 100) }
        XCTAssertEqual(w.chain.generation, 10)
        XCTAssertEqual(w.chain.links.map(\.members.count), sizes)
        for g in 2...10 { XCTAssertEqual(w.chain.link(UInt64(g))!.previous, w.chain.link(UInt64(g - 1))!.hash) }
        XCTAssertEqual(w.chain.link(1)!.previous, [UInt8](repeating: 0, count: 32))

        var out = ByteWriter()
        w.chain.encode(into: &out)
        var r = ByteReader(out.bytes)
        let decoded = try SclerotiaChain(genesisKey: w.genesis.publicKey, from: &r)
        XCTAssertTrue(r.isAtEnd)
        XCTAssertEqual(decoded, w.chain)
        XCTAssertEqual(decoded.tipHash, w.chain.tipHash)
        let cert = w.certificate(for: w.fresh(1)[0], generation: 10, issuedAt: t0 + 1000)
        XCTAssertNoThrow(try cert.verify(chain: decoded, now: t0 + 1000))

        // Another genesis key does not start this chain.
        let stranger = SigningKey(seed: [UInt8](repeating: 3, count: 32)).publicKey
        var r2 = ByteReader(out.bytes)
        XCTAssertEqual(refusal { _ = try SclerotiaChain(genesisKey: stranger, from: &r2) },
                       .other(.wrongNetwork(expected: NetworkID(genesisKey: stranger), actual: w.chain.network)))
        // Links out of order (3 and 4 swapped).
        var swapped = ByteWriter()
        swapped.u32(10)
        for g in [1, 2, 4, 3, 5, 6, 7, 8, 9, 10] { swapped.blob(w.chain.link(UInt64(g))!.encoded()) }
        var r3 = ByteReader(swapped.bytes)
        XCTAssertEqual(refusal { _ = try SclerotiaChain(genesisKey: w.genesis.publicKey, from: &r3) }, .unknownGeneration(generation: 3, known: 2))
        // Cut short, and a count past the bound.
        var r4 = ByteReader(Array(out.bytes.dropLast(1)))
        XCTAssertEqual(refusal { _ = try SclerotiaChain(genesisKey: w.genesis.publicKey, from: &r4) }, .decode)
        var huge = ByteWriter(); huge.u32(UInt32(SclerotiaChain.maxLinks + 1))
        var r5 = ByteReader(huge.bytes)
        XCTAssertEqual(refusal { _ = try SclerotiaChain(genesisKey: w.genesis.publicKey, from: &r5) }, .malformed)

        // A light client: from the genesis key alone, the links in a peer's hello bring it to the tip.
        var fresh = SclerotiaChain(genesisKey: w.genesis.publicKey)
        try fresh.absorb(w.chain.suffix(upTo: 10, count: 10))
        XCTAssertEqual(fresh, w.chain)
        XCTAssertEqual(w.chain.suffix(upTo: 10, count: 3).map(\.generation), [8, 9, 10])
        XCTAssertEqual(w.chain.suffix(upTo: 4, count: 3).map(\.generation), [2, 3, 4])
        XCTAssertEqual(w.chain.suffix(upTo: 2, count: 5).map(\.generation), [1, 2])
        var five = SclerotiaChain(genesisKey: w.genesis.publicKey)
        try five.absorb(w.chain.suffix(upTo: 5, count: 5))
        XCTAssertEqual(refusal { try five.absorb(w.chain.suffix(upTo: 10, count: 3)) }, .unknownGeneration(generation: 7, known: 5),
                       "too far behind for three links: it needs a seed spore")
    }
}

// MARK: - the v2 handshake: links, clock skew, invites

final class HandshakeV2Tests: XCTestCase {
    let t0: Int64 = 1_800_000_000
    let binding = [UInt8](repeating: 0xB1, count: 32)
    let ourNonce = [UInt8](repeating: 0x0C, count: 32)

    /// Judges `hello` as the server would, with a proof `key` made for this connection.
    func judge(_ hello: Hello, key: SigningKey, policy: HandshakePolicy, role: HandshakeRole = .client) throws(HandshakeError) -> VerifiedPeer {
        let proof = Proof.make(role: role, network: policy.network, binding: binding, peerNonce: ourNonce, key: key)
        return try HandshakeVerifier.verify(hello: hello, proof: proof, tlsKey: key.publicKey, binding: binding, ourNonce: ourNonce,
                                            peerRole: role, policy: policy)
    }

    func handshakeRefusal(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> HandshakeError.Code? {
        do {
            try body()
        } catch let e as HandshakeError {
            return e.code
        } catch {
            XCTFail("refused with \(type(of: error)) \(error), expected a HandshakeError", file: file, line: line)
            return nil
        }
        XCTFail("accepted, expected a refusal", file: file, line: line)
        return nil
    }

    /// A world at generation 3 and a member certified by generation 3.
    func world() throws -> (QuorumWorld, SigningKey, MembershipCertificate) {
        var w = QuorumWorld()
        try w.extend(3, issuedAt: t0 - 1000)
        try w.extend(5, issuedAt: t0 - 900)
        try w.extend(3, issuedAt: t0 - 800)
        let key = w.fresh(1)[0]
        return (w, key, w.certificate(for: key, generation: 3, issuedAt: t0 - 500))
    }

    func testHelloRoundTripWithLinks() throws {
        let (w, _, cert) = try world()
        let hello = Hello(networkID: w.chain.network, nonce: [UInt8](repeating: 2, count: 32), time: t0 - 7,
                          credential: .member(cert), links: w.chain.suffix(upTo: 3, count: 3))
        let decoded = try Hello(decoding: hello.encoded())
        XCTAssertEqual(decoded, hello)
        XCTAssertEqual(decoded.time, t0 - 7)
        XCTAssertEqual(decoded.links.map(\.generation), [1, 2, 3])
        let bare = Hello(networkID: w.chain.network, nonce: [UInt8](repeating: 3, count: 32), time: -1, credential: .member(cert))
        XCTAssertEqual(try Hello(decoding: bare.encoded()), bare)

        // More links than a hello may carry.
        let tooMany = Hello(networkID: w.chain.network, nonce: [UInt8](repeating: 2, count: 32), time: t0, credential: .member(cert),
                            links: Array(repeating: w.chain.link(1)!, count: Hello.maxLinks + 1))
        XCTAssertThrowsError(try Hello(decoding: tooMany.encoded())) { e in
            guard case .malformed(let m) = (e as! HandshakeError).code, m.contains("links") else { return XCTFail("\(e)") }
        }
        // A v1 peer is told to upgrade.
        var v1 = hello.encoded(); v1[5] = 1
        XCTAssertThrowsError(try Hello(decoding: v1)) { e in
            guard case .malformed(let m) = (e as! HandshakeError).code, m.contains("upgrade") else { return XCTFail("\(e)") }
        }
    }

    /// A verifier a few links behind learns them from the hello; one that knows a different link is not fooled.
    func testLinksInTheHelloLetAPeerBehindVerify() throws {
        let (w, key, cert) = try world()
        var atOne = SclerotiaChain(genesisKey: w.genesis.publicKey)
        try atOne.append(w.chain.link(1)!)
        let policy = HandshakePolicy(chain: atOne, now: t0)
        let with = Hello(networkID: w.chain.network, nonce: [UInt8](repeating: 2, count: 32), time: t0, credential: .member(cert),
                         links: w.chain.suffix(upTo: 3, count: 2))
        let peer = try judge(with, key: key, policy: policy)
        XCTAssertEqual(peer.nodeID, cert.nodeID)
        XCTAssertEqual(peer.certificate, cert)

        var without = with; without.links = []
        XCTAssertEqual(handshakeRefusal { _ = try judge(without, key: key, policy: policy) }.flatMap(refusedAsNonMember), .unknownGeneration(generation: 3, known: 1))

        // A hello whose link 2 differs from the one this node knows.
        var other = w
        var fork = SclerotiaChain(genesisKey: w.genesis.publicKey)
        try fork.append(w.chain.link(1)!)
        other.chain = fork
        try other.extend(2, issuedAt: t0 - 900)
        var forged = with; forged.links = [other.chain.link(2)!]
        XCTAssertEqual(handshakeRefusal { _ = try judge(forged, key: key, policy: HandshakePolicy(chain: w.chain, now: t0)) }.flatMap(refusedAsNonMember),
                       .other(.forkedChain(generation: 2)))
    }

    func testClockSkewOverTheBoundIsRefused() throws {
        let (w, key, cert) = try world()
        let policy = HandshakePolicy(chain: w.chain, now: t0)
        XCTAssertEqual(maxClockSkew, 10)
        for skew in [-11, 11, -1000, 1000] as [Int64] {
            let hello = Hello(networkID: w.chain.network, nonce: [UInt8](repeating: 2, count: 32), time: t0 + skew, credential: .member(cert))
            XCTAssertEqual(handshakeRefusal { _ = try judge(hello, key: key, policy: policy) },
                           .clockSkew(IdentityError(.clockSkew(peerTime: t0 + skew, now: t0, allowed: 10))), "skew \(skew)")
        }
        for skew in [-9, 0, 9] as [Int64] {
            let hello = Hello(networkID: w.chain.network, nonce: [UInt8](repeating: 2, count: 32), time: t0 + skew, credential: .member(cert))
            let peer = try judge(hello, key: key, policy: policy)
            XCTAssertEqual(peer.clockSkew, skew)
        }
    }

    /// An invite is honoured only if its inviter is in `policy.inviters`, with the key that signed it.
    func testInviteRefusals() throws {
        var (w, _, _) = try world()
        let inviterKey = w.fresh(1)[0]
        let inviter = NodeID(publicKey: inviterKey.publicKey)
        let joiner = SigningKey()
        let invite = try Invite.create(genesisKey: w.genesis.publicKey, inviter: inviter, key: inviterKey, addresses: ["127.0.0.1:7946"],
                                       roles: [.member], issuedAt: t0 - 5, validFor: 600)
        let hello = Hello(networkID: w.chain.network, nonce: [UInt8](repeating: 2, count: 32), time: t0, credential: .invite(invite))
        func policy(_ inviters: [NodeID: PublicKey]?) -> HandshakePolicy { HandshakePolicy(chain: w.chain, now: t0, inviters: inviters) }
        func inviterRefusal(_ inviters: [NodeID: PublicKey]?, file: StaticString = #filePath, line: UInt = #line) -> (NodeID, String)? {
            let code = handshakeRefusal({ _ = try judge(hello, key: joiner, policy: policy(inviters)) }, file: file, line: line)
            guard case .inviteRefused(let e)? = code, case let .inviterNotAllowed(who, reason) = e.code else {
                XCTFail("\(String(describing: code))", file: file, line: line)
                return nil
            }
            return (who, reason) as (NodeID, String)
        }

        let peer = try judge(hello, key: joiner, policy: policy([inviter: inviterKey.publicKey]))
        XCTAssertEqual(peer.joiningWith, invite)
        XCTAssertEqual(peer.nodeID, NodeID(publicKey: joiner.publicKey))
        XCTAssertNil(peer.certificate)

        let someoneElse = SigningKey().publicKey
        XCTAssertEqual(inviterRefusal(nil)?.0, inviter)
        XCTAssertTrue(inviterRefusal(nil)?.1.contains("does not admit joiners") ?? false)
        XCTAssertEqual(inviterRefusal([NodeID(publicKey: someoneElse): someoneElse])?.0, inviter)
        XCTAssertTrue(inviterRefusal([NodeID(publicKey: someoneElse): someoneElse])?.1.contains("inviter role") ?? false)
        // The inviter rotated its key (or lost the role and got it back with another key).
        XCTAssertEqual(inviterRefusal([inviter: someoneElse])?.0, inviter)
        XCTAssertTrue(inviterRefusal([inviter: someoneElse])?.1.contains("key the inviter no longer holds") ?? false)

        // Checked before the inviter: an expired invite, and one a server presents.
        let expired = try Invite.create(genesisKey: w.genesis.publicKey, inviter: inviter, key: inviterKey, addresses: [],
                                        roles: [.member], issuedAt: t0 - 700, validFor: 600)
        var old = hello; old.credential = .invite(expired)
        guard case .inviteRefused(let e)? = handshakeRefusal({ _ = try judge(old, key: joiner, policy: policy([inviter: inviterKey.publicKey])) }),
              case .expired = e.code else { return XCTFail("an expired invite was not refused as expired") }
        guard case .protocolViolation? = handshakeRefusal({ _ = try judge(hello, key: joiner, policy: policy([inviter: inviterKey.publicKey]), role: .server) })
        else { return XCTFail("a server's invite was not refused") }
    }
}

/// The identity refusal inside a handshake's "not a member".
func refusedAsNonMember(_ code: HandshakeError.Code) -> Refused? {
    guard case .notAMember(let e) = code else { return nil }
    return Refused(e.code)
}

// MARK: - small helpers

extension SclerotiaChain {
    /// This chain with `link` appended (test shorthand; traps on refusal).
    func extended(by link: SclerotiaLink) -> SclerotiaChain {
        var c = self
        try! c.append(link)
        return c
    }

    /// The next link naming `members`, unsigned.
    func nextProposal(members: [SigningKey], issuedAt: Int64) -> SclerotiaLink {
        SclerotiaLink.proposal(network: network, generation: generation + 1, previous: tipHash,
                               members: members.map { SclerotiumKey(id: NodeID(publicKey: $0.publicKey), key: $0.publicKey) },
                               issuedAt: issuedAt)
    }
}

extension SclerotiaLink {
    /// Signed by a quorum of `generation` of `world`'s chain.
    func signed(by world: QuorumWorld, generation: UInt64) -> SclerotiaLink {
        withSignatures(world.sign(signedBytes, generation: generation))
    }
}

extension MembershipCertificate {
    /// The same body claiming another generation (unsigned for it: only the generation check matters).
    func withGeneration(_ g: UInt64) -> MembershipCertificate {
        MembershipCertificate(networkID: networkID, genesisKey: genesisKey, nodeID: nodeID, nodeKey: nodeKey, roles: roles, serial: serial,
                              issuedAt: issuedAt, expiresAt: expiresAt, generation: g, signatures: signatures)
    }
}

extension Array where Element == SigningKey {
    func sortedByNodeID() -> [SigningKey] { sorted { NodeID(publicKey: $0.publicKey) < NodeID(publicKey: $1.publicKey) } }
}

// MARK: - hostile numbers from a peer

/// Values a peer chooses freely (a generation, its clock, an invite's times it signs itself) must
/// be refused, and the refusal described for the log, without arithmetic overflow: a trap there is
/// a remote crash of the node.
final class HostileNumberTests: XCTestCase {
    let t0: Int64 = 1_800_000_000

    func testCertificateOfTheLastGenerationIsRefused() throws {
        var w = QuorumWorld()
        try w.extend(3, issuedAt: t0)
        let node = w.fresh(1)[0]
        for g in [UInt64.max, UInt64.max - 1, 2] {
            let c = w.certificate(for: node, generation: 1, issuedAt: t0).withGeneration(g)
            XCTAssertEqual(refusal { try MembershipCertificate(decoding: c.encoded()).verify(chain: w.chain, now: t0) },
                           .unknownGeneration(generation: g, known: 1))
        }
        XCTAssertNil(w.chain.supersededAt(.max))
        XCTAssertNil(w.chain.supersededAt(1))
        XCTAssertEqual(w.chain.supersededAt(0), t0)
    }

    func testHelloTimeAtTheEndsOfTheRangeIsRefusedAsClockSkew() throws {
        var w = QuorumWorld()
        let key = w.fresh(1)[0]
        let cert = w.certificate(for: key, generation: 0, issuedAt: t0)
        let binding = [UInt8](repeating: 0xB1, count: 32), nonce = [UInt8](repeating: 0x0C, count: 32)
        let proof = Proof.make(role: .client, network: w.chain.network, binding: binding, peerNonce: nonce, key: key)
        for now in [t0, -t0, 0] {
            for time in [Int64.min, Int64.min + 1, Int64.min &+ now, Int64.max, Int64.max - 1, now &+ Int64.max] {
                let hello = Hello(networkID: w.chain.network, nonce: nonce, time: time, credential: .member(cert))
                XCTAssertThrowsError(try HandshakeVerifier.verify(hello: try Hello(decoding: hello.encoded()), proof: proof, tlsKey: key.publicKey,
                                                                  binding: binding, ourNonce: nonce, peerRole: .client,
                                                                  policy: HandshakePolicy(chain: w.chain, now: now))) { e in
                    XCTAssertEqual((e as! HandshakeError).code,
                                   .clockSkew(IdentityError(.clockSkew(peerTime: time, now: now, allowed: maxClockSkew))), "time \(time) now \(now)")
                    XCTAssertTrue("\(e)".contains("fix the clock"), "\(e)")
                }
            }
        }
    }

    /// An invite is signed by a key its author picks, so its times are the author's choice.
    func testInviteWithExtremeTimesIsRefusedAndDescribed() throws {
        let w = QuorumWorld()
        let mallory = SigningKey()
        let inviter = NodeID(publicKey: mallory.publicKey)
        let joiner = SigningKey()
        let binding = [UInt8](repeating: 0xB1, count: 32), nonce = [UInt8](repeating: 0x0C, count: 32)
        let proof = Proof.make(role: .client, network: w.chain.network, binding: binding, peerNonce: nonce, key: joiner)
        for (issued, validFor) in [(Int64.min, Int64(0)), (Int64.min, Int64(1)), (Int64.max, Int64(0)), (Int64.max - 1, Int64(1))] {
            let invite = try Invite.create(genesisKey: w.genesis.publicKey, inviter: inviter, key: mallory, addresses: [], roles: [.member],
                                           issuedAt: issued, validFor: validFor)
            let hello = Hello(networkID: w.chain.network, nonce: nonce, time: t0, credential: .invite(invite))
            XCTAssertThrowsError(try HandshakeVerifier.verify(hello: hello, proof: proof, tlsKey: joiner.publicKey, binding: binding, ourNonce: nonce,
                                                              peerRole: .client, policy: HandshakePolicy(chain: w.chain, now: t0,
                                                                                                         inviters: [inviter: mallory.publicKey]))) { e in
                guard case .inviteRefused(let ie) = (e as! HandshakeError).code else { return XCTFail("\(e)") }
                switch ie.code {
                case .expired, .notYetValid: break
                default: XCTFail("\(ie)")
                }
                XCTAssertFalse("\(e)".isEmpty)
            }
        }
    }
}
