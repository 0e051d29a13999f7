import MyceliumCore
import MyceliumIdentity
import MyceliumVote
import XCTest
@testable import MyceliumSpores

// Membership issued by the network, driven through the primary spore with signed commands only:
// admission by invite, renewal, who may sign what, sclerotia links, revocation, timeouts and the
// issuance state in the spore's bytes.

extension SporeWorld {
    /// Applies `c`, which must be refused and leave the spore as it was; returns why it was refused.
    mutating func refused(_ c: SporeCommand, by i: Int, file: StaticString = #filePath, line: UInt = #line) -> SporeError.Code? {
        let before = spore
        do {
            try apply(c, by: i)
            XCTFail("accepted: \(c)", file: file, line: line)
            return nil
        } catch let e as SporeError {
            XCTAssertEqual(spore, before, "a refused command changed the spore", file: file, line: line)
            return e.code
        } catch {
            XCTFail("unexpected \(error)", file: file, line: line)
            return nil
        }
    }

    /// A certificate request for a new node with `key`, by `invite`.
    func admission(_ invite: Invite, _ key: SigningKey) -> SporeCommand {
        .requestCertificate(.admission(invite, nodeKey: key.publicKey))
    }
}

/// The identity error of a `.refused` spore error.
private func identity(_ c: SporeError.Code?) -> IdentityError.Code? {
    if case .refused(let e)? = c { return e.code }
    return nil
}

/// The inviter an invite was refused for.
private func refusedInviter(_ c: SporeError.Code?) -> NodeID? {
    if case .inviterNotAllowed(let inviter, _)? = identity(c) { return inviter }
    return nil
}

/// Who was not authorized.
private func unauthorized(_ c: SporeError.Code?) -> NodeID? {
    if case .notAuthorized(let who, _)? = c { return who }
    return nil
}

/// The message of an `.invalid` refusal ("" otherwise, so `contains` assertions fail).
private func invalid(_ c: SporeError.Code?) -> String {
    if case .invalid(let s)? = c { return s }
    return ""
}

private func isBadSignature(_ c: SporeError.Code?) -> Bool {
    if case .badSignature? = c { return true }
    return false
}

final class AdmissionByInviteTests: XCTestCase {
    func testAJoinerIsAdmittedAtAQuorumOfTheSclerotiaAndTheInviteWorksOnce() throws {
        var w = SporeWorld(members: 5)
        try w.handOff(to: [0, 1, 2, 3, 4])  // five sclerotia: a quorum is three
        let joiner = SigningKey(), joinerID = NodeID(publicKey: joiner.publicKey)
        let invite = try w.invite(by: 0, roles: [.member])
        try w.apply(w.admission(invite, joiner), by: 4)  // any member carries the joiner's request
        let iss = try XCTUnwrap(w.spore.issuance(for: joinerID))
        XCTAssertEqual(iss.certificate.generation, 1)
        XCTAssertEqual(iss.certificate.roles, [.member], "the invite's roles")
        XCTAssertEqual(iss.certificate.nodeKey, joiner.publicKey)
        XCTAssertEqual(iss.certificate.expiresAt - iss.certificate.issuedAt, w.spore.lifetime)

        // While it is being signed, the same invite cannot start a second admission.
        let other = SigningKey()
        XCTAssertEqual(identity(w.refused(w.admission(invite, other), by: 3)), .inviteAlreadyUsed)

        try w.signIssuance(iss.id, by: 0)
        try w.signIssuance(iss.id, by: 3)
        XCTAssertNil(w.spore.members[joinerID], "two of five signatures are not a quorum")
        XCTAssertEqual(w.spore.issuances[iss.id]?.signatures.map(\.index), [0, 3].map { try! w.signerIndex(of: $0, generation: 1) }.sorted())
        try w.signIssuance(iss.id, by: 2)

        let m = try XCTUnwrap(w.spore.members[joinerID], "three of five admit")
        XCTAssertEqual(m.status, .alive)
        XCTAssertGreaterThanOrEqual(m.certificate.generation, 1)
        XCTAssertEqual(m.certificate.signatures.count, 3)
        XCTAssertNoThrow(try m.certificate.verify(chain: w.spore.chain, now: w.time, revoked: w.spore.revokedIDs))
        XCTAssertNil(w.spore.issuances[iss.id])
        XCTAssertEqual(w.spore.trust.score(of: joinerID), TrustParameters().initial, "a joiner is not a founder")

        // A node that trusts only the genesis key verifies it through the chain's bytes, and not without them.
        var bytes = ByteWriter()
        w.spore.chain.encode(into: &bytes)
        var r = ByteReader(bytes.bytes)
        let light = try SclerotiaChain(genesisKey: w.genesis.publicKey, from: &r)
        XCTAssertNoThrow(try m.certificate.verify(chain: light, now: w.time))
        XCTAssertThrowsError(try m.certificate.verify(network: w.net.id, now: w.time)) { e in
            guard case .unknownGeneration = (e as! IdentityError).code else { return XCTFail("\(e)") }
        }

        // The invite was honoured once: for anyone, by anyone, it is refused now.
        XCTAssertEqual(identity(w.refused(w.admission(invite, other), by: 1)), .inviteAlreadyUsed)
        XCTAssertEqual(identity(w.refused(w.admission(invite, joiner), by: 0)), .inviteAlreadyUsed)
        // The new member signs its own commands with the key it was admitted with.
        try w.applySigned(SignedCommand(.refresh(Capabilities(cpus: 2)), author: joinerID, key: joiner, network: w.net.id))
        XCTAssertEqual(w.spore.members[joinerID]?.capabilities.cpus, 2)
    }

    func testInvitesTheNetworkDoesNotHonour() throws {
        var w = SporeWorld(members: 3)
        try w.admitNew(roles: [.member])            // 3: no inviter role
        try w.admitNew(roles: [.member, .inviter])  // 4: invites, is no sclerotium
        try w.admitNew(roles: [.member, .inviter])  // 5: invites, then leaves
        try w.handOff(to: [0, 1, 2])
        let k = SigningKey()

        XCTAssertEqual(refusedInviter(w.refused(w.admission(try w.invite(by: 3, roles: [.member]), k), by: 0)), w.ids[3],
                       "by a member without the inviter role")
        XCTAssertEqual(refusedInviter(w.refused(w.admission(try w.invite(by: 4, roles: [.member, .sclerotiumEligible]), k), by: 0)), w.ids[4],
                       "granting a role the inviter lacks")
        // An invite naming inviter 0 but signed with another key (the invite's own signature is fine).
        let forged = try Invite.create(genesisKey: w.genesis.publicKey, inviter: w.ids[0], key: w.keys[3], addresses: [], roles: [.member],
                                       issuedAt: w.time, validFor: 3600)
        XCTAssertEqual(refusedInviter(w.refused(w.admission(forged, k), by: 0)), w.ids[0])
        // Expired, and from another network.
        let expired = try Invite.create(genesisKey: w.genesis.publicKey, inviter: w.ids[0], key: w.keys[0], addresses: [], roles: [.member],
                                        issuedAt: w.time - 100, validFor: 50)
        guard case .expired? = identity(w.refused(w.admission(expired, k), by: 0)) else { return XCTFail("an expired invite") }
        let foreign = try Invite.create(genesisKey: SigningKey().publicKey, inviter: w.ids[0], key: w.keys[0], addresses: [],
                                        roles: [.member], issuedAt: w.time, validFor: 3600)
        guard case .wrongNetwork? = identity(w.refused(w.admission(foreign, k), by: 0)) else { return XCTFail("another network's invite") }

        // A departed inviter's invite is no longer honoured, nor is a request it carries.
        let byLeaver = try w.invite(by: 5, roles: [.member])
        try w.apply(.setStatus(node: w.ids[5], .left), by: 5)
        XCTAssertEqual(refusedInviter(w.refused(w.admission(byLeaver, k), by: 0)), w.ids[5])
        XCTAssertEqual(w.refused(w.admission(try w.invite(by: 0, roles: [.member]), k), by: 5), .unknownMember(w.ids[5]))

        // An inviter that rotated its key: invites signed with the old key are refused, the new key's are honoured.
        let stale = try w.invite(by: 4, roles: [.member])
        let newKey = SigningKey()
        let rotation = KeyRotation.create(node: w.ids[4], from: w.keys[4], to: newKey, sequence: 1, issuedAt: w.time)
        try w.applySigned(SignedCommand(.rotateKey(rotation), author: w.ids[4], key: newKey, network: w.net.id))
        XCTAssertNil(w.spore.pendingLink, "4 is no sclerotium: the link does not change")
        let code = w.refused(w.admission(stale, k), by: 0)
        XCTAssertEqual(refusedInviter(code), w.ids[4])
        if case .inviterNotAllowed(_, let reason)? = identity(code) { XCTAssertTrue(reason.contains("key"), reason) }
        try w.apply(w.admission(try w.invite(by: 4, roles: [.member], key: newKey), k), by: 0)
        XCTAssertNotNil(w.spore.issuance(for: NodeID(publicKey: k.publicKey)))
    }
}

final class AdmissionLimitTests: XCTestCase {
    func testAnAdmissionBeyondTheMemberLimitIsRefusedWhenAsked() throws {
        var limits = SporeLimits()
        limits.maxMembers = 5
        var w = SporeWorld(members: 4, limits: limits)
        try w.handOff(to: [0, 1, 2])
        let a = SigningKey(), b = SigningKey()
        try w.apply(w.admission(try w.invite(by: 0, roles: [.member]), a), by: 0)
        // One place left, and it is being filled: a second joiner is refused now, not silently after its quorum.
        guard case .beyondLimits? = w.refused(w.admission(try w.invite(by: 0, roles: [.member]), b), by: 0) else {
            return XCTFail("a sixth member was let in line")
        }
        try w.completeIssuance(w.spore.issuanceSequence)
        XCTAssertEqual(w.spore.members.count, 5)
        guard case .beyondLimits? = w.refused(w.admission(try w.invite(by: 0, roles: [.member]), b), by: 0) else {
            return XCTFail("a sixth member")
        }
    }
}

final class RenewalTests: XCTestCase {
    func testRenewalIsForMembersInGoodStandingAndExtendsTheCertificate() throws {
        var limits = SporeLimits()
        limits.memberTimeframe = 100_000  // nobody turns suspect while time runs to the renewal point
        var w = SporeWorld(members: 7, limits: limits, validity: 600)
        XCTAssertEqual(w.spore.lifetime, 600, "the first founder's certificate sets the network's lifetime")
        try w.apply(.setStatus(node: w.ids[5], .left), by: 5)
        try w.handOff(to: [0, 1, 2])
        try w.apply(.revoke(node: w.ids[6], reason: "test"), by: 1)
        // Jail 3 with a proven lie (a reveal that does not open its commitment) in a round about 4.
        try w.apply(.openVote(.failure, node: w.ids[4], commitTicks: 5, revealTicks: 5), by: 0)
        let spec = try XCTUnwrap(w.spore.rounds[1]).spec
        XCTAssertEqual(Set(spec.voters.map(\.id)), Set(w.ids[0..<4]))
        let salt = [UInt8](repeating: 7, count: 32)
        let commit = SignedCommit.sign(round: spec.id, voter: w.ids[3],
                                       commitment: Commitment.compute(round: spec.id, voter: w.ids[3], result: .yes, salt: salt), key: w.keys[3])
        let reveal = SignedReveal.sign(round: spec.id, voter: w.ids[3], result: .no, salt: salt, key: w.keys[3])
        try w.apply(.voteEvidence(sequence: 1, evidence: Evidence.badReveal(commit, reveal).encoded()), by: 0)
        XCTAssertTrue(w.spore.trust.isJailed(w.ids[3]))
        XCTAssertFalse(w.spore.revokedIDs.contains(w.ids[3]), "a bad reveal jails; only equivocation revokes")
        // With 3 jailed no failure round about 4 can be formed: the governors' word records it.
        XCTAssertNotNil(w.spore.voteUnavailable(.failure, node: w.ids[4]))
        try w.apply(.setStatus(node: w.ids[4], .failed), by: 0)

        try w.apply(.tick, by: 0, advance: 100)
        let joined = try w.join()
        XCTAssertEqual(w.spore.dueForRenewal(), [], "nobody is past two thirds of a lifetime yet")
        let foundersDue = (0..<3).map { w.certs[$0].renewAt }.max()!
        XCTAssertLessThan(foundersDue, w.certs[joined].renewAt)
        try w.apply(.tick, by: 0, advance: foundersDue - w.time)
        XCTAssertEqual(w.spore.dueForRenewal(), Array(w.ids[0..<3]).sorted(),
                       "the founders in good standing; not the jailed, failed, departed or revoked ones, nor the joiner")

        XCTAssertEqual(unauthorized(w.refused(.requestCertificate(.renewal(node: w.ids[0])), by: joined)), w.ids[joined],
                       "only governors ask for renewals")
        for (i, why) in [(3, "jailed"), (4, "failed"), (5, "left"), (6, "revoked")] {
            let message = invalid(w.refused(.requestCertificate(.renewal(node: w.ids[i])), by: 1))
            XCTAssertTrue(message.contains(why), "\(why): \(message)")
        }
        let stranger = NodeID(publicKey: SigningKey().publicKey)
        XCTAssertTrue(invalid(w.refused(.requestCertificate(.renewal(node: stranger)), by: 1)).contains("not a member"))

        let old = w.certs[0]
        try w.apply(.requestCertificate(.renewal(node: w.ids[0])), by: 1)
        let id = w.spore.issuanceSequence
        XCTAssertFalse(w.spore.dueForRenewal().contains(w.ids[0]), "being renewed")
        XCTAssertTrue(invalid(w.refused(.requestCertificate(.renewal(node: w.ids[0])), by: 2)).contains("already being issued"))
        try w.completeIssuance(id)
        let renewed = try XCTUnwrap(w.spore.members[w.ids[0]]).certificate
        XCTAssertGreaterThan(renewed.expiresAt, old.expiresAt)
        XCTAssertEqual(renewed.expiresAt, renewed.issuedAt + 600)
        XCTAssertEqual(renewed.generation, 1)
        XCTAssertEqual(renewed.roles, old.roles)
        XCTAssertEqual(renewed.nodeKey, old.nodeKey)
        XCTAssertNotEqual(renewed.serial, old.serial)
        XCTAssertNoThrow(try renewed.verify(chain: w.spore.chain, now: w.time))
        XCTAssertEqual(w.spore.dueForRenewal(), Array(w.ids[1..<3]).sorted())
        // Valid past the old expiry: the member stays in the network.
        try w.apply(.tick, by: 0, advance: old.expiresAt - w.time + 1)
        XCTAssertThrowsError(try old.verify(chain: w.spore.chain, now: w.time))
        XCTAssertNoThrow(try w.spore.members[w.ids[0]]!.certificate.verify(chain: w.spore.chain, now: w.time))

        // A role change is issued the same way.
        try w.apply(.requestCertificate(.roles(node: w.ids[joined], [.member])), by: 0)
        try w.completeIssuance(w.spore.issuanceSequence)
        XCTAssertEqual(w.spore.members[w.ids[joined]]?.roles, [.member])
    }
}

final class QuorumSignatureTests: XCTestCase {
    func testOnlyEachGenerationsSignersSignAndTheGenesisKeyOnlyGenerationZero() throws {
        var w = SporeWorld(members: 4)
        // Before the handoff the genesis key issues (generation 0).
        let k = SigningKey(), kID = NodeID(publicKey: k.publicKey)
        try w.apply(w.admission(try w.invite(by: 0, roles: [.member]), k), by: 0)
        let g0 = try XCTUnwrap(w.spore.issuance(for: kID))
        XCTAssertEqual(g0.certificate.generation, 0)
        XCTAssertTrue(isBadSignature(w.refused(.signCertificate(id: g0.id, QuorumSignature(index: 0, signature: w.keys[0].sign(g0.certificate.signedBytes))), by: 0)),
                      "a founder's key in the genesis key's place")
        XCTAssertTrue(invalid(w.refused(.signCertificate(id: g0.id, QuorumSignature(index: 1, signature: w.genesis.sign(g0.certificate.signedBytes))), by: 0))
            .contains("#1"), "generation 0 has one signer")
        try w.signIssuance(g0.id, by: 2)  // the genesis key's signature, carried by any member
        XCTAssertEqual(w.spore.members[kID]?.certificate.generation, 0)

        try w.handOff(to: [0, 1, 2])
        try w.apply(.requestCertificate(.renewal(node: w.ids[3])), by: 0)
        let iss = try XCTUnwrap(w.spore.issuance(for: w.ids[3]))
        XCTAssertEqual(iss.certificate.generation, 1)
        let body = iss.certificate.signedBytes
        let i0 = try w.signerIndex(of: 0, generation: 1), i1 = try w.signerIndex(of: 1, generation: 1)

        func sign(_ index: UInt8, _ key: SigningKey, _ bytes: [UInt8] = body) -> SporeCommand {
            .signCertificate(id: iss.id, QuorumSignature(index: index, signature: key.sign(bytes)))
        }
        XCTAssertEqual(unauthorized(w.refused(sign(i0, w.keys[1]), by: 1)), w.ids[1], "1 signs in 0's place")
        XCTAssertEqual(unauthorized(w.refused(sign(i0, w.keys[0]), by: 1)), w.ids[1], "1 carries 0's signature")
        XCTAssertEqual(unauthorized(w.refused(sign(i0, w.keys[3]), by: 3)), w.ids[3], "3 is no sclerotium")
        XCTAssertTrue(isBadSignature(w.refused(sign(i0, w.genesis), by: 0)), "the genesis key does not sign generation 1")
        XCTAssertEqual(unauthorized(w.refused(sign(i0, w.genesis), by: 3)), w.ids[3])
        XCTAssertTrue(isBadSignature(w.refused(sign(i0, w.keys[0], [1, 2, 3]), by: 0)), "0 signed other bytes")
        XCTAssertTrue(invalid(w.refused(sign(3, w.keys[0]), by: 0)).contains("#3"), "generation 1 has three signers")
        XCTAssertTrue(invalid(w.refused(.signCertificate(id: 99, QuorumSignature(index: i0, signature: w.keys[0].sign(body))), by: 0))
            .contains("99"))
        try w.apply(sign(i0, w.keys[0]), by: 0)
        XCTAssertTrue(invalid(w.refused(sign(i0, w.keys[0]), by: 0)).contains("already"), "one signature per signer")
        XCTAssertEqual(w.spore.issuances[iss.id]?.signatures.count, 1)
        XCTAssertNil(w.spore.issuance(for: w.ids[3])?.certificate.signatures.first, "the body stays unsigned")
        try w.apply(sign(i1, w.keys[1]), by: 1)
        XCTAssertNil(w.spore.issuances[iss.id], "two of three: installed")

        // The genesis key signs link 1 only: link 2 is generation 1's to sign (a revoked sclerotium
        // makes the next link; a network of five would need a vote to seat a new one).
        try w.apply(.revoke(node: w.ids[2], reason: "test"), by: 0)
        let link2 = try w.pendingLink()
        XCTAssertEqual(link2.generation, 2)
        let genesisOn2 = QuorumSignature(index: i0, signature: w.genesis.sign(link2.signedBytes))
        XCTAssertTrue(isBadSignature(w.refused(.signLink(generation: 2, genesisOn2), by: 0)))
        XCTAssertEqual(unauthorized(w.refused(.signLink(generation: 2, genesisOn2), by: 3)), w.ids[3])
        XCTAssertTrue(invalid(w.refused(.signLink(generation: 3, QuorumSignature(index: i0, signature: w.keys[0].sign(link2.signedBytes))), by: 0))
            .contains("3"), "no link 3 is being signed")
        try w.signLink(by: 0)
        XCTAssertTrue(invalid(w.refused(.signLink(generation: 2, QuorumSignature(index: i0, signature: w.keys[0].sign(link2.signedBytes))), by: 0))
            .contains("already"))
        try w.signLink(by: 1)
        XCTAssertEqual(w.spore.chain.generation, 2)
    }
}

final class SclerotiaLinkTests: XCTestCase {
    /// A sclerotium that fails stays in the newest link until the next one is added: {0, 1, 2} with 2
    /// failed keeps signing with two of three, and still can when a replacement joins, whereas a link
    /// {0, 1} would need both and stall for good if one of them died next (simulation seed 42).
    func testAFailedSclerotiumKeepsTheLinkUntilTheNextAddition() throws {
        var w = SporeWorld(members: 4)
        try w.handOff(to: [0, 1, 2])
        try w.apply(.setSclerotia([w.ids[0], w.ids[1]]), by: 0)
        XCTAssertNil(w.spore.pendingLink, "a smaller set makes no link")
        XCTAssertEqual(w.spore.chain.generation, 1)
        try w.apply(.requestCertificate(.renewal(node: w.ids[3])), by: 0)
        try w.completeIssuance(w.spore.issuanceSequence)
        XCTAssertEqual(w.spore.members[w.ids[3]]?.certificate.generation, 1, "generation 1 still issues")
        try w.apply(.setSclerotia([w.ids[0], w.ids[1], w.ids[3]]), by: 0)
        XCTAssertEqual(try w.pendingLink().members.map(\.id), [w.ids[0], w.ids[1], w.ids[3]].sorted(), "an addition makes the next link")
        try w.signLink(by: 0)
        try w.signLink(by: 1)
        XCTAssertEqual(w.spore.chain.generation, 2, "two of generation 1's three sign it, without the failed one")
    }

    func testChangingTheSclerotiaGrowsTheChainAtAQuorumOfThePreviousSet() throws {
        var w = SporeWorld(members: 4)
        XCTAssertNil(w.spore.pendingLink)
        try w.apply(.setSclerotia([w.ids[2], w.ids[0], w.ids[1]]), by: 0)
        let link1 = try w.pendingLink()
        XCTAssertEqual(link1.generation, 1)
        XCTAssertEqual(link1.previous, [UInt8](repeating: 0, count: 32))
        XCTAssertEqual(link1.members, (0..<3).map { SclerotiumKey(id: w.ids[$0], key: w.keys[$0].publicKey) }.sorted { $0.id < $1.id })
        XCTAssertEqual(link1.issuedAt, w.time)
        XCTAssertEqual(w.spore.chain.generation, 0)
        XCTAssertTrue(invalid(w.refused(.handoff, by: 0)).contains("link"), "handoff before link 1 is signed")
        XCTAssertTrue(invalid(w.refused(.requestCertificate(.renewal(node: w.ids[3])), by: 0)).contains("link"),
                      "nothing is issued while a link is being signed")
        try w.signLinkByGenesis(by: 3)
        XCTAssertEqual(w.spore.chain.generation, 1)
        XCTAssertEqual(w.spore.chain.latest?.members, link1.members)
        XCTAssertNil(w.spore.pendingLink)
        try w.apply(.handoff, by: 0)

        // Generation 1 issues; one signature so far.
        try w.apply(.requestCertificate(.renewal(node: w.ids[3])), by: 0)
        let oldIssuance = w.spore.issuanceSequence
        try w.signIssuance(oldIssuance, by: 0)

        // New sclerotia (a network this small chooses them without a vote): a link for generation 2.
        try w.apply(.setSclerotia([w.ids[0], w.ids[1], w.ids[3]]), by: 1)
        let link2 = try w.pendingLink()
        XCTAssertEqual(link2.generation, 2)
        XCTAssertEqual(link2.previous, w.spore.chain.latest?.hash)
        XCTAssertEqual(link2.members.map(\.id), [w.ids[0], w.ids[1], w.ids[3]].sorted())
        XCTAssertTrue(invalid(w.refused(.requestCertificate(.renewal(node: w.ids[2])), by: 0)).contains("link"))
        // Going back to the chain's set withdraws the proposal; choosing again proposes it afresh.
        try w.apply(.setSclerotia([w.ids[0], w.ids[1], w.ids[2]]), by: 1)
        XCTAssertNil(w.spore.pendingLink)
        try w.apply(.setSclerotia([w.ids[0], w.ids[1], w.ids[3]]), by: 1)
        let proposal = try w.pendingLink()
        XCTAssertEqual(proposal.members, link2.members)

        try w.signLink(by: 0)
        XCTAssertEqual(w.spore.chain.generation, 1, "one of three is not a quorum")
        XCTAssertEqual(w.spore.pendingLink?.signatures.count, 1)
        let free = try w.signerIndex(of: 2, generation: 1)  // an index nobody signed at yet
        XCTAssertEqual(unauthorized(w.refused(.signLink(generation: 2, QuorumSignature(index: free, signature: w.keys[3].sign(proposal.signedBytes))), by: 3)),
                       w.ids[3], "the incoming sclerotium does not sign its own link")
        try w.signLink(by: 2)  // the outgoing one still signs as generation 1
        XCTAssertEqual(w.spore.chain.generation, 2)
        XCTAssertNil(w.spore.pendingLink)
        XCTAssertNil(w.spore.issuances[oldIssuance], "generation 1 no longer issues: its open issuance is dropped")
        XCTAssertTrue(w.spore.issuances.isEmpty)

        // Generation 2 issues: 3 signs, 2 no longer does.
        try w.apply(.requestCertificate(.renewal(node: w.ids[2])), by: 0)
        let next = try XCTUnwrap(w.spore.issuance(for: w.ids[2]))
        XCTAssertEqual(next.certificate.generation, 2)
        XCTAssertEqual(unauthorized(w.refused(.signCertificate(id: next.id, QuorumSignature(index: 2, signature: w.keys[2].sign(next.certificate.signedBytes))), by: 2)),
                       w.ids[2])
        try w.signIssuance(next.id, by: 3)
        try w.signIssuance(next.id, by: 0)
        let cert = try XCTUnwrap(w.spore.members[w.ids[2]]).certificate
        XCTAssertEqual(cert.generation, 2)
        XCTAssertNoThrow(try cert.verify(chain: w.spore.chain, now: w.time))

        // An old quorum cannot keep issuing: generation 1's signatures on a certificate dated after link 2 are refused.
        let made = try XCTUnwrap(w.spore.chain.link(2)).issuedAt
        func byGeneration1(issuedAt: Int64) throws -> MembershipCertificate {
            let body = MembershipCertificate.unsigned(network: w.net, nodeID: w.ids[3], nodeKey: w.keys[3].publicKey, roles: .member,
                                                      serial: 99, issuedAt: issuedAt, expiresAt: issuedAt + 600, generation: 1)
            return body.withSignatures(try [0, 1].map { QuorumSignature(index: try w.signerIndex(of: $0, generation: 1), signature: w.keys[$0].sign(body.signedBytes)) })
        }
        XCTAssertNoThrow(try byGeneration1(issuedAt: made).verify(chain: w.spore.chain, now: w.time))
        XCTAssertThrowsError(try byGeneration1(issuedAt: made + 1).verify(chain: w.spore.chain, now: w.time)) { e in
            guard case .supersededIssuer = (e as! IdentityError).code else { return XCTFail("\(e)") }
        }
    }
}

final class RevocationTests: XCTestCase {
    func testASclerotiumRevokesAMemberAndTheRevocationTravels() throws {
        var w = SporeWorld(members: 4)
        try w.handOff(to: [0, 1, 2])
        try w.apply(.requestCertificate(.renewal(node: w.ids[2])), by: 0)
        XCTAssertNotNil(w.spore.issuance(for: w.ids[2]))

        XCTAssertEqual(unauthorized(w.refused(.revoke(node: w.ids[2], reason: "no"), by: 3)), w.ids[3], "an ordinary member may not revoke")
        try w.apply(.revoke(node: w.ids[2], reason: "key leaked"), by: 1)
        let m = try XCTUnwrap(w.spore.members[w.ids[2]])
        XCTAssertEqual(m.status, .failed)
        XCTAssertFalse(w.spore.sclerotia.contains(w.ids[2]))
        XCTAssertNil(w.spore.issuance(for: w.ids[2]), "its pending renewal is dropped")
        XCTAssertEqual(w.spore.revokedIDs, [w.ids[2]])
        XCTAssertEqual(w.spore.revoked[w.ids[2]], Revocation(node: w.ids[2], serial: w.certs[2].serial, at: w.time, reason: "key leaked"))
        XCTAssertEqual(try w.pendingLink().members.map(\.id), [w.ids[0], w.ids[1]].sorted(), "it loses its seat in the next link")
        XCTAssertTrue(invalid(w.refused(.revoke(node: w.ids[2], reason: "again"), by: 0)).contains("already"))
        let stranger = NodeID(publicKey: SigningKey().publicKey)
        XCTAssertEqual(w.refused(.revoke(node: stranger, reason: "?"), by: 0), .unknownMember(stranger))
        // The revoked member's own commands are refused: a refresh does not bring it back, and it no
        // longer signs as a sclerotium of generation 1.
        XCTAssertEqual(identity(w.refused(.refresh(Capabilities()), by: 2)), .revoked(node: w.ids[2]))
        let link2 = try w.pendingLink()
        let byRevoked = QuorumSignature(index: try w.signerIndex(of: 2, generation: 1), signature: w.keys[2].sign(link2.signedBytes))
        XCTAssertEqual(identity(w.refused(.signLink(generation: 2, byRevoked), by: 2)), .revoked(node: w.ids[2]))
        XCTAssertEqual(w.spore.members[w.ids[2]]?.status, .failed)

        // Its certificate no longer admits it.
        XCTAssertEqual(identity(w.refused(.admit(w.certs[2]), by: 2)), .revoked(node: w.ids[2]))
        try w.signLink(by: 0)
        try w.signLink(by: 1)
        XCTAssertEqual(w.spore.chain.generation, 2)
        // Nor does a new invite for its key.
        XCTAssertEqual(identity(w.refused(w.admission(try w.invite(by: 0), w.keys[2]), by: 0)), .revoked(node: w.ids[2]))

        // The revocation is in the spore's bytes and in a seed spore.
        let decoded = try PrimarySpore(decoding: w.spore.encoded())
        XCTAssertEqual(decoded, w.spore)
        XCTAssertEqual(decoded.revoked, w.spore.revoked)
        let seed = SeedSpore(spore: w.spore, signer: w.certs[0], key: w.keys[0], writtenAt: w.time)
        let read = try SeedSpore(verifying: seed.encoded(), network: w.net.id, knownEpoch: nil, now: w.time)
        XCTAssertEqual(read.spore.revokedIDs, [w.ids[2]])
        XCTAssertEqual(read.spore.revoked[w.ids[2]]?.reason, "key leaked")
    }
}

final class IssuanceTimeoutTests: XCTestCase {
    func testAnIssuanceWithoutAQuorumInTimeIsDropped() throws {
        var w = SporeWorld(members: 3)
        try w.handOff(to: [0, 1, 2])
        try w.apply(.requestCertificate(.renewal(node: w.ids[2])), by: 0)
        let iss = try XCTUnwrap(w.spore.issuance(for: w.ids[2]))
        try w.signIssuance(iss.id, by: 0)
        try w.apply(.tick, by: 0, advance: iss.requestedAt + IssuanceLimits.issuanceTimeout(lifetime: w.spore.lifetime) - 1 - w.time)
        XCTAssertNotNil(w.spore.issuances[iss.id], "still within its time")
        try w.apply(.tick, by: 0)
        XCTAssertEqual(w.time, iss.requestedAt + IssuanceLimits.issuanceTimeout(lifetime: w.spore.lifetime))
        XCTAssertNil(w.spore.issuances[iss.id], "\(IssuanceLimits.issuanceTimeout(lifetime: w.spore.lifetime)) s without a quorum: dropped")
        let late = QuorumSignature(index: try w.signerIndex(of: 1, generation: 1), signature: w.keys[1].sign(iss.certificate.signedBytes))
        XCTAssertTrue(invalid(w.refused(.signCertificate(id: iss.id, late), by: 1)).contains("no certificate"))
        XCTAssertEqual(w.spore.members[w.ids[2]]?.certificate, w.certs[2], "the certificate is unchanged")
        // The renewal is asked for again.
        try w.apply(.requestCertificate(.renewal(node: w.ids[2])), by: 0)
        XCTAssertNotNil(w.spore.issuance(for: w.ids[2]))
    }

    func testADroppedAdmissionAdmitsNobodyAndItsInviteStaysUsed() throws {
        var w = SporeWorld(members: 4)
        try w.handOff(to: [0, 1, 2])
        let joiner = SigningKey(), joinerID = NodeID(publicKey: joiner.publicKey)
        let invite = try w.invite(by: 0, roles: [.member])
        try w.apply(w.admission(invite, joiner), by: 0)
        let first = try XCTUnwrap(w.spore.issuance(for: joinerID))
        let bytes = w.spore.encoded()
        XCTAssertTrue((0...(bytes.count - 32)).contains { Array(bytes[$0..<$0 + 32]) == invite.secret },
                      "the pending admission holds the invite's secret in the spore's bytes")
        try w.signIssuance(first.id, by: 0)
        try w.apply(.tick, by: 0, advance: IssuanceLimits.issuanceTimeout(lifetime: w.spore.lifetime))
        XCTAssertNil(w.spore.issuances[first.id], "timed out")
        XCTAssertNil(w.spore.members[joinerID])
        // The pending issuance carried the whole invite, secret included, in the spore and its seed
        // spores: the invite stays used, so a copy read from there admits nobody. The joiner needs a new one.
        XCTAssertEqual(identity(w.refused(w.admission(invite, joiner), by: 1)), .inviteAlreadyUsed)
        try w.apply(w.admission(try w.invite(by: 0, roles: [.member]), joiner), by: 1)
        let second = try XCTUnwrap(w.spore.issuance(for: joinerID))
        // The sclerotia change before it is signed: generation 1's issuance is dropped with its generation.
        try w.apply(.setSclerotia([w.ids[0], w.ids[1], w.ids[3]]), by: 0)
        try w.signLink(by: 0)
        try w.signLink(by: 1)
        XCTAssertNil(w.spore.issuances[second.id])
        XCTAssertNil(w.spore.members[joinerID])
        try w.apply(w.admission(try w.invite(by: 0, roles: [.member]), joiner), by: 1)
        try w.completeIssuance(w.spore.issuanceSequence)
        XCTAssertEqual(w.spore.members[joinerID]?.certificate.generation, 2, "admitted by the new generation")
    }
}

final class IssuanceEncodingTests: XCTestCase {
    /// A spore in the middle of everything: a link being signed, issuances open, invites used, a member revoked.
    func busyWorld() throws -> SporeWorld {
        var w = SporeWorld(members: 4)
        try w.handOff(to: [0, 1, 2])
        try w.join(roles: [.member])  // 4
        try w.apply(.requestCertificate(.renewal(node: w.ids[3])), by: 0)
        try w.signIssuance(w.spore.issuanceSequence, by: 1)
        try w.apply(w.admission(try w.invite(by: 0, roles: [.member]), SigningKey()), by: 3)
        try w.apply(.revoke(node: w.ids[4], reason: "lost laptop"), by: 0)
        try w.apply(.setSclerotia([w.ids[0], w.ids[1], w.ids[3]]), by: 0)
        try w.signLink(by: 1)
        return w
    }

    func testTheIssuanceStateRoundTripsInTheSporesBytes() throws {
        var w = try busyWorld()
        XCTAssertEqual(w.spore.pendingLink?.signatures.count, 1)
        XCTAssertEqual(w.spore.issuances.count, 2)
        XCTAssertEqual(w.spore.issuances.values.map(\.signatures.count).sorted(), [0, 1])
        XCTAssertFalse(w.spore.usedInvites.isEmpty)
        XCTAssertEqual(w.spore.revokedIDs, [w.ids[4]])

        let bytes = w.spore.encoded()
        var back = try PrimarySpore(decoding: bytes)
        XCTAssertEqual(back, w.spore)
        XCTAssertEqual(back.encoded(), bytes, "same state, same bytes")
        // The decoded spore goes on exactly as the original: the next signature completes link 2 in both.
        let link = try w.pendingLink()
        let next = w.signed(.signLink(generation: 2, QuorumSignature(index: try w.signerIndex(of: 0, generation: 1),
                                                                     signature: w.keys[0].sign(link.signedBytes))), by: 0)
        let epoch = SporeEpoch(term: 1, index: w.index + 1)
        try w.spore.apply(next, epoch: epoch, time: w.time + 1)
        try back.apply(next, epoch: epoch, time: w.time + 1)
        XCTAssertEqual(w.spore.chain.generation, 2)
        XCTAssertEqual(back, w.spore)
    }

    func testATruncatedOrAlteredSporeIsRefused() throws {
        let w = try busyWorld()
        let bytes = w.spore.encoded()
        for n in 0..<bytes.count {
            XCTAssertThrowsError(try PrimarySpore(decoding: Array(bytes.prefix(n))), "cut at \(n) of \(bytes.count) accepted")
        }
        XCTAssertThrowsError(try PrimarySpore(decoding: bytes + [0]), "a trailing byte")
        // The primary spore carries no signature of its own (Raft and the seed spore's signature protect
        // it), but its chain is verified from the genesis key while decoding: any bit flipped in a link is refused.
        let link = try XCTUnwrap(w.spore.chain.link(1)).encoded()
        let at = try XCTUnwrap((0...(bytes.count - link.count)).first { Array(bytes[$0..<$0 + link.count]) == link })
        for i in at..<at + link.count {
            for bit in [0, 5] {
                var b = bytes; b[i] ^= UInt8(1 << bit)
                XCTAssertThrowsError(try PrimarySpore(decoding: b), "bit \(bit) of link byte \(i - at) flipped, accepted")
            }
        }
        // Written as a seed spore, every flipped bit anywhere is refused.
        let seed = SeedSpore(spore: w.spore, signer: w.certs[0], key: w.keys[0], writtenAt: w.time).encoded()
        XCTAssertEqual(try SeedSpore(verifying: seed, network: w.net.id, knownEpoch: nil, now: w.time).spore, w.spore)
        for i in 0..<seed.count {
            var b = seed; b[i] ^= UInt8(1 << (i % 8))
            XCTAssertThrowsError(try SeedSpore(verifying: b, network: w.net.id, knownEpoch: nil, now: w.time), "flip at \(i) accepted")
        }
    }

    func testIssuanceCommandsRoundTripAndRefuseTruncation() throws {
        let w = try busyWorld()
        let invite = try w.invite(by: 0, roles: [.member])
        let sig = QuorumSignature(index: 2, signature: w.keys[0].sign([1, 2, 3]))
        let commands: [SporeCommand] = [
            .requestCertificate(.admission(invite, nodeKey: SigningKey().publicKey)),
            .requestCertificate(.renewal(node: w.ids[1])),
            .requestCertificate(.roles(node: w.ids[1], [.member, .inviter])),
            .signCertificate(id: 7, sig),
            .signLink(generation: 3, sig),
            .revoke(node: w.ids[2], reason: "because"),
        ]
        for c in commands {
            let b = c.encoded()
            XCTAssertEqual(try SporeCommand(decoding: b), c)
            for n in 0..<b.count { XCTAssertThrowsError(try SporeCommand(decoding: Array(b.prefix(n))), "\(c) cut at \(n)") }
        }
        XCTAssertThrowsError(try SporeCommand(decoding: [16, 9]), "an unknown request kind")
        XCTAssertEqual(try SporeCommand(decoding: [19] + w.ids[0].bytes + [0, 200] + [UInt8](repeating: 65, count: 200)),
                       .revoke(node: w.ids[0], reason: String(repeating: "A", count: 200)))
        XCTAssertThrowsError(try SporeCommand(decoding: [19] + w.ids[0].bytes + [0, 201] + [UInt8](repeating: 65, count: 201)),
                             "a reason over \(Revocation.maxReason) bytes")
    }
}

/// Findings of the review of issue 15, each pinned.
final class IssuanceReviewTests: XCTestCase {
    func testASclerotiumNamedTwiceIsRefused() throws {
        var w = SporeWorld(members: 4)
        try w.handOff(to: [0, 1, 2])
        XCTAssertTrue(invalid(w.refused(.setSclerotia([w.ids[0], w.ids[0], w.ids[3]]), by: 0)).contains("twice"))
    }

    func testOnlyAMemberItselfSaysItIsAliveAndARevokedMembersStatusIsTheNetworks() throws {
        var w = SporeWorld(members: 4)
        try w.handOff(to: [0, 1, 2])
        XCTAssertEqual(unauthorized(w.refused(.setStatus(node: w.ids[2], .alive), by: 3)), w.ids[3])
        try w.apply(.revoke(node: w.ids[3], reason: "test"), by: 0)
        XCTAssertNotNil(unauthorized(w.refused(.setStatus(node: w.ids[3], .alive), by: 0)), "nobody brings a revoked member back")
        XCTAssertEqual(w.spore.members[w.ids[3]]?.status, .failed)
    }

    func testAnInviteValidForYearsIsRefused() throws {
        var w = SporeWorld(members: 4)
        try w.handOff(to: [0, 1, 2])
        let forever = try Invite.create(genesisKey: w.genesis.publicKey, inviter: w.ids[0], key: w.keys[0], addresses: [], roles: [.member],
                                        issuedAt: w.time, validFor: 10 * 365 * 86_400)
        XCTAssertTrue(invalid(w.refused(w.admission(forever, SigningKey()), by: 0)).contains("longer"))
    }

    func testARevocationRemovesExactlyTheRevokedFromTheLinkAndKeepsTheFailed() throws {
        var w = SporeWorld(members: 5)
        try w.handOff(to: [0, 1, 2])
        // 2 fails: it stays in the link. A plain member (4) is revoked: the link does not change.
        try w.apply(.setSclerotia([w.ids[0], w.ids[1]]), by: 0)
        try w.apply(.revoke(node: w.ids[4], reason: "test"), by: 0)
        XCTAssertNil(w.spore.pendingLink, "a revoked non-sclerotium changes no link")
        // Sclerotium 1 is revoked: the next link is the newest minus exactly 1 (2, failed, stays).
        try w.apply(.revoke(node: w.ids[1], reason: "test"), by: 0)
        XCTAssertEqual(try w.pendingLink().members.map(\.id), [w.ids[0], w.ids[2]].sorted())
    }
}
