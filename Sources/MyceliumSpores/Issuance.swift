// Membership issued by the network, as the primary spore sees it (docs/MEMBERSHIP.md).
//
// Every certificate after the founders' is made here, by committed commands, so it survives leader
// changes and restarts and every replica judges it the same way:
//  - `requestCertificate` (admission by an invite, renewal, role change) checks the request against
//    the spore (the inviter may invite, the invite is unused; the member is alive, not jailed, not
//    revoked) and opens an issuance: the certificate's body, for the current sclerotia generation;
//  - each sclerotium of that generation (the genesis key for generation 0) adds its signature with
//    `signCertificate`; at a quorum the certificate is installed (the member admitted, or its
//    certificate replaced);
//  - when the sclerotia change, a link for the new set is proposed and signed by a quorum of the
//    current set (`signLink`); while it is pending, no new issuance opens;
//  - `revoke` is the network's decision to refuse a member: recorded here, it travels in every seed
//    spore, and every node refuses the member's handshakes once it applies it.
// The signatures are what make a certificate portable: a peer or a cold node that never saw this
// Raft log checks them against the chain from the genesis key.

import MyceliumCore
import MyceliumIdentity
import MyceliumVote

/// Why a certificate is being issued.
public enum CertificateRequest: Sendable, Equatable {
    /// A joiner with an invite; `nodeKey` is the key it proved in the handshake.
    case admission(Invite, nodeKey: PublicKey)
    /// A member's certificate, issued again before it expires.
    case renewal(node: NodeID)
    /// A member's certificate with new roles.
    case roles(node: NodeID, Roles)

    public var label: String {
        switch self {
        case .admission: return "admission"
        case .renewal: return "renewal"
        case .roles: return "role change"
        }
    }

    func encode(into w: inout ByteWriter) {
        switch self {
        case let .admission(invite, key): w.u8(1); w.blob(invite.encoded()); w.raw(key.bytes)
        case let .renewal(node): w.u8(2); w.raw(node.bytes)
        case let .roles(node, roles): w.u8(3); w.raw(node.bytes); w.u32(roles.rawValue)
        }
    }

    static func decode(_ r: inout ByteReader) throws -> CertificateRequest {
        let tag = try r.u8()
        switch tag {
        case 1: return .admission(try Invite(decoding: r.blob("invite", limit: 4096)), nodeKey: try PublicKey(bytes: r.raw(32)))
        case 2: return .renewal(node: try NodeID(bytes: r.raw(16)))
        case 3: return .roles(node: try NodeID(bytes: r.raw(16)), Roles(rawValue: try r.u32()))
        default: throw DecodeError(.invalid(field: "certificate request", reason: "unknown kind \(tag)"), at: r.offset - 1)
        }
    }
}

/// A certificate being signed.
public struct Issuance: Sendable, Equatable {
    public let id: UInt64
    public let purpose: CertificateRequest
    /// The body every signer signs (no signatures).
    public let certificate: MembershipCertificate
    public let requestedAt: Int64
    public internal(set) var signatures: [QuorumSignature]

    func encode(into w: inout ByteWriter) {
        w.u64(id); purpose.encode(into: &w); w.blob(certificate.encoded()); w.i64(requestedAt)
        QuorumSignature.encode(signatures, into: &w)
    }

    static func decode(_ r: inout ByteReader) throws -> Issuance {
        let id = try r.u64()
        let purpose = try CertificateRequest.decode(&r)
        let cert = try MembershipCertificate(decoding: r.blob("certificate", limit: MembershipCertificate.maxEncodedSize))
        let at = try r.i64()
        let sigs = try QuorumSignature.decode(&r, limit: maxLinkMembers)
        return Issuance(id: id, purpose: purpose, certificate: cert, requestedAt: at, signatures: sigs)
    }
}

/// A sclerotia link being signed by the generation before it.
public struct PendingLink: Sendable, Equatable {
    public let link: SclerotiaLink
    public internal(set) var signatures: [QuorumSignature]
}

/// The network's decision to refuse a member.
public struct Revocation: Sendable, Equatable {
    public let node: NodeID
    /// The serial of the certificate the member held when it was revoked.
    public let serial: UInt64
    public let at: Int64
    public let reason: String
    public static let maxReason = 200
}

/// Limits of the issuance state (part of the spore's bounded size).
public enum IssuanceLimits {
    public static let maxIssuances = 256
    public static let maxUsedInvites = 4096
    public static let maxRevocations = 4096
    /// Spore seconds an issuance may wait for its quorum before it is dropped (the leader asks again):
    /// a minute, or a sixth of a short lifetime, so a stuck issuance cannot outlast a renewal window.
    public static func issuanceTimeout(lifetime: Int64) -> Int64 { max(5, min(60, lifetime / 6)) }
    /// The longest an invite may be valid (or the certificate lifetime, if longer).
    public static let maxInviteValidity: Int64 = 7 * 86_400
    /// The certificate lifetime of a network whose founders' lifetime is unknown.
    public static let defaultLifetime: Int64 = 30 * 86_400
}

extension PrimarySpore {
    /// The lifetime of every certificate the network issues (the genesis node's, set at network creation).
    public var lifetime: Int64 { certificateLifetime > 0 ? certificateLifetime : IssuanceLimits.defaultLifetime }

    public var revokedIDs: Set<NodeID> { Set(revoked.keys) }

    /// The pending issuance for `node`, if any.
    public func issuance(for node: NodeID) -> Issuance? {
        issuances.values.first { $0.certificate.nodeID == node }
    }

    /// Why `node` may not be renewed now, or nil if it may (alive, in good standing, not revoked).
    public func renewalRefusal(_ node: NodeID) -> String? {
        guard let m = members[node] else { return "it is not a member" }
        if revoked[node] != nil { return "it was revoked" }
        if m.status != .alive { return "it is \(m.status)" }
        if trust.isJailed(node) { return "it is jailed for misbehaviour" }
        return nil
    }

    /// Members due for renewal at `time` (past two thirds of their certificate's lifetime), in ID order.
    /// `time` defaults to the spore's; a leader passes its estimate of spore time now, since spore time
    /// advances only when a command applies.
    public func dueForRenewal(at time: Int64? = nil) -> [NodeID] {
        let t = max(now, time ?? now)
        return members.values.filter { $0.certificate.renewAt <= t && renewalRefusal($0.id) == nil && issuance(for: $0.id) == nil }
            .map(\.id).sorted()
    }

    /// The sclerotia as a link names them (ID and current key), sorted.
    public func sclerotiaKeys() -> [SclerotiumKey] {
        sclerotia.compactMap { id in members[id].map { SclerotiumKey(id: id, key: $0.key) } }.sorted { $0.id < $1.id }
    }

    /// Proposes the next link when a sclerotium was added or re-keyed (the link becomes the current
    /// sclerotia), or when a member of the newest link was revoked (the link loses exactly the revoked
    /// members). A sclerotium that merely failed stays in the newest link: its share of the quorum
    /// cannot be used by a dead node, and dropping it would shrink the signing set below what the next
    /// failure needs (two of {A, B} after C failed; B dies: nobody can sign again), while the old set
    /// keeps a quorum as long as Raft does. The next addition makes a new link.
    mutating func proposeLinkIfChanged() {
        let keys = sclerotiaKeys()
        let latest = chain.latest?.members ?? []
        let target: [SclerotiumKey]
        if latest.isEmpty || !Set(keys).isSubset(of: Set(latest)) {
            target = keys
        } else if latest.contains(where: { revoked[$0.id] != nil }) {
            target = latest.filter { revoked[$0.id] == nil }
        } else {
            pendingLink = nil
            return
        }
        guard !target.isEmpty else { return }
        if target == latest { pendingLink = nil; return }
        if pendingLink?.link.members == target { return }
        pendingLink = PendingLink(link: .proposal(network: network.id, generation: chain.generation + 1, previous: chain.tipHash,
                                                  members: target, issuedAt: now), signatures: [])
    }

    /// Checks that `author` may add `sig` for `generation` (its own index; any member for the genesis key).
    func checkSigner(_ author: NodeID, _ sig: QuorumSignature, generation: UInt64, over message: [UInt8], what: String) throws(SporeError) -> [SclerotiumKey] {
        guard let signers = chain.signers(of: generation) else { throw SporeError(.invalid("\(what): unknown generation \(generation)")) }
        guard Int(sig.index) < signers.count else { throw SporeError(.invalid("\(what): signer #\(sig.index) of \(signers.count)")) }
        if generation > 0 && signers[Int(sig.index)].id != author {
            throw SporeError(.notAuthorized(author, "sign \(what) as signer #\(sig.index) of generation \(generation)"))
        }
        guard signers[Int(sig.index)].key.verify(sig.signature, for: message) else {
            throw SporeError(.badSignature("\(what) by signer #\(sig.index) of generation \(generation)"))
        }
        return signers
    }

    mutating func performIssuance(_ c: SporeCommand, author: NodeID) throws(SporeError) {
        switch c {
        case .requestCertificate(let request):
            guard pendingLink == nil else {
                throw SporeError(.invalid("a new sclerotia link (generation \(chain.generation + 1)) is being signed; certificates are issued once it is"))
            }
            guard issuances.count < IssuanceLimits.maxIssuances else { throw SporeError(.beyondLimits("issuances: \(IssuanceLimits.maxIssuances)")) }
            let network = self.network
            let body: MembershipCertificate
            switch request {
            case let .admission(invite, nodeKey):
                guard let a = members[author], a.status == .alive || a.status == .suspect else { throw SporeError(.unknownMember(author)) }
                do { try invite.verify(network: network.id, now: now) } catch { throw SporeError(.refused(error)) }
                guard let inviter = members[invite.inviter], inviter.status == .alive || inviter.status == .suspect,
                      inviter.roles.contains(.inviter), revoked[invite.inviter] == nil else {
                    throw SporeError(.refused(IdentityError(.inviterNotAllowed(inviter: invite.inviter, reason: "it is not a present member with the inviter role"))))
                }
                guard inviter.key == invite.inviterKey else {
                    throw SporeError(.refused(IdentityError(.inviterNotAllowed(inviter: invite.inviter, reason: "it signed with a key it no longer holds"))))
                }
                guard invite.roles.isSubset(of: inviter.roles) else {
                    throw SporeError(.refused(IdentityError(.inviterNotAllowed(inviter: invite.inviter, reason: "it may not grant roles it does not hold (\(invite.roles))"))))
                }
                guard usedInvites[invite.ledgerKey] == nil else { throw SporeError(.refused(IdentityError(.inviteAlreadyUsed))) }
                // A used invite is remembered until it expires: one valid for years would hold its
                // slot for years (4096 such would block every admission).
                let longest = max(lifetime, IssuanceLimits.maxInviteValidity)
                guard invite.expiresAt <= now.saturatingAdding(longest) else {
                    throw SporeError(.invalid("the invite is valid until \(invite.expiresAt), longer than the \(longest) s an invite may live; ask for a new one"))
                }
                guard usedInvites.count < IssuanceLimits.maxUsedInvites else { throw SporeError(.beyondLimits("used invites: \(IssuanceLimits.maxUsedInvites)")) }
                let node = NodeID(publicKey: nodeKey)
                if revoked[node] != nil { throw SporeError(.refused(IdentityError(.revoked(node: node)))) }
                if let m = members[node], m.status == .alive || m.status == .suspect { throw SporeError(.invalid("\(node) is already a member")) }
                if issuance(for: node) != nil { throw SporeError(.invalid("a certificate for \(node) is already being issued")) }
                // The member limit is checked when asked, counting admissions being signed: at the quorum,
                // `admitMember` would drop a joiner over the limit without a word, its invite used.
                let joining = issuances.values.filter { iss in
                    if case .admission = iss.purpose { return members[iss.certificate.nodeID] == nil }
                    return false
                }.count
                if members[node] == nil && members.count + joining >= limits.maxMembers {
                    throw SporeError(.beyondLimits("members: \(limits.maxMembers), \(joining) of them being admitted"))
                }
                usedInvites[invite.ledgerKey] = invite.expiresAt
                body = .unsigned(network: network, nodeID: node, nodeKey: nodeKey, roles: invite.roles, serial: issuanceSequence + 1,
                                 issuedAt: now, expiresAt: now.saturatingAdding(lifetime), generation: chain.generation)
            case .renewal(let node), .roles(let node, _):
                guard mayGovern(author) else { throw SporeError(.notAuthorized(author, "ask for a \(request.label)")) }
                if let why = renewalRefusal(node) { throw SporeError(.invalid("\(node) is not renewed: \(why)")) }
                if issuance(for: node) != nil { throw SporeError(.invalid("a certificate for \(node) is already being issued")) }
                let m = members[node]!
                var roles = m.roles
                if case .roles(_, let r) = request { roles = r }
                body = .unsigned(network: network, nodeID: node, nodeKey: m.key, roles: roles, serial: issuanceSequence + 1,
                                 issuedAt: now, expiresAt: now.saturatingAdding(lifetime), generation: chain.generation)
            }
            issuanceSequence += 1
            issuances[issuanceSequence] = Issuance(id: issuanceSequence, purpose: request, certificate: body, requestedAt: now, signatures: [])

        case let .signCertificate(id, sig):
            guard var iss = issuances[id] else { throw SporeError(.invalid("no certificate \(id) is being issued")) }
            guard !iss.signatures.contains(where: { $0.index == sig.index }) else { throw SporeError(.invalid("certificate \(id) already has signer #\(sig.index)")) }
            let signers = try checkSigner(author, sig, generation: iss.certificate.generation, over: iss.certificate.signedBytes,
                                          what: "certificate \(id)")
            iss.signatures.append(sig)
            iss.signatures.sort { $0.index < $1.index }
            issuances[id] = iss
            if iss.signatures.count >= quorumSize(of: signers.count) { try install(iss) }

        case let .signLink(generation, sig):
            guard var p = pendingLink, p.link.generation == generation else { throw SporeError(.invalid("no sclerotia link \(generation) is being signed")) }
            guard !p.signatures.contains(where: { $0.index == sig.index }) else { throw SporeError(.invalid("link \(generation) already has signer #\(sig.index)")) }
            let signers = try checkSigner(author, sig, generation: generation - 1, over: p.link.signedBytes, what: "sclerotia link \(generation)")
            p.signatures.append(sig)
            p.signatures.sort { $0.index < $1.index }
            pendingLink = p
            if p.signatures.count >= quorumSize(of: signers.count) {
                do { try chain.append(p.link.withSignatures(p.signatures)) } catch { throw SporeError(.refused(error)) }
                pendingLink = nil
                // Signatures of the old generation can no longer make a certificate with a later time.
                issuances = issuances.filter { $0.value.certificate.generation == chain.generation }
            }

        case let .revoke(node, reason):
            // A sclerotium may revoke anyone; a member with the inviter role only members that are not
            // sclerotia (one inviter cannot take the governing set apart on its own).
            guard let m = members[node] else { throw SporeError(.unknownMember(node)) }
            let governs = mayGovern(author)
            guard governs || (members[author]?.roles.contains(.inviter) == true && !sclerotia.contains(node)) else {
                throw SporeError(.notAuthorized(author, sclerotia.contains(node)
                    ? "revoke a sclerotium (only a sclerotium may)" : "revoke a member (a sclerotium or a member with the inviter role may)"))
            }
            guard revoked[node] == nil else { throw SporeError(.invalid("\(node) is already revoked")) }
            guard revoked.count < IssuanceLimits.maxRevocations else { throw SporeError(.beyondLimits("revocations: \(IssuanceLimits.maxRevocations)")) }
            revokeMember(m, reason: String(reason.utf8.prefix(Revocation.maxReason)) ?? "revoked")

        default:
            break
        }
    }

    /// Records `m` as revoked: it fails, leaves the sclerotia and nothing is issued to it again.
    mutating func revokeMember(_ m: Member, reason: String) {
        revoked[m.id] = Revocation(node: m.id, serial: m.certificate.serial, at: now, reason: reason)
        if m.status != .failed && m.status != .left { members[m.id]!.status = .failed; members[m.id]!.since = now }
        sclerotia.removeAll { $0 == m.id }
        approvedSclerotia.remove(m.id)
        issuances = issuances.filter { $0.value.certificate.nodeID != m.id }
        proposeLinkIfChanged()
    }

    /// A quorum signed: the certificate becomes the member's (admitting it for an admission).
    mutating func install(_ iss: Issuance) throws(SporeError) {
        let cert = iss.certificate.withSignatures(iss.signatures)
        do { try cert.verify(chain: chain, now: now, revoked: revokedIDs) } catch { throw SporeError(.refused(error)) }
        issuances[iss.id] = nil
        if case .admission = iss.purpose {
            admitMember(cert)
        } else {
            guard var m = members[cert.nodeID] else { return }
            m.certificate = cert
            members[cert.nodeID] = m
        }
    }

    /// Enters `cert`'s node as an alive member (or re-admits a departed one, keeping its trust).
    mutating func admitMember(_ cert: MembershipCertificate) {
        if members[cert.nodeID] == nil && members.count >= limits.maxMembers { return }
        members[cert.nodeID] = Member(certificate: cert, key: cert.nodeKey, addresses: members[cert.nodeID]?.addresses ?? [],
                                      capabilities: members[cert.nodeID]?.capabilities ?? Capabilities(),
                                      status: .alive, expiresAt: now.saturatingAdding(limits.memberTimeframe), since: now)
        keys.learn(node: cert.nodeID, key: cert.nodeKey)
        trust.admit(cert.nodeID, score: phase == .bootstrap ? limits.founderTrust : nil)
    }

    /// Drops what timed out: issuances that never reached a quorum, used-invite marks past the
    /// invite's expiry, revocations older than any certificate the member could still hold.
    mutating func expireIssuance() {
        let timeout = IssuanceLimits.issuanceTimeout(lifetime: lifetime)
        issuances = issuances.filter { $0.value.requestedAt.saturatingAdding(timeout) > now }
        usedInvites = usedInvites.filter { $0.value.saturatingAdding(maxClockSkew) > now }
        // Kept while the member's record exists, and until every certificate it could hold has expired.
        revoked = revoked.filter { members[$0.key] != nil || $0.value.at.saturatingAdding(lifetime).saturatingAdding(maxClockSkew) > now }
    }

    // MARK: encoding (part of the spore's bytes)

    func encodeIssuance(into w: inout ByteWriter) {
        w.i64(certificateLifetime)
        chain.encode(into: &w)
        if let p = pendingLink {
            w.bool(true); w.blob(p.link.encoded())
            QuorumSignature.encode(p.signatures.sorted { $0.index < $1.index }, into: &w)
        } else {
            w.bool(false)
        }
        w.u64(issuanceSequence)
        w.u16(UInt16(issuances.count)); for i in issuances.values.sorted(by: { $0.id < $1.id }) { i.encode(into: &w) }
        w.u16(UInt16(usedInvites.count))
        for (k, v) in usedInvites.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) { w.raw(k); w.i64(v) }
        w.u16(UInt16(revoked.count))
        for r in revoked.values.sorted(by: { $0.node < $1.node }) { w.raw(r.node.bytes); w.u64(r.serial); w.i64(r.at); w.string(r.reason) }
    }

    mutating func decodeIssuance(_ r: inout ByteReader) throws {
        certificateLifetime = try r.i64()
        chain = try SclerotiaChain(genesisKey: network.genesisKey, from: &r)
        if try r.bool("pending link") {
            let link = try SclerotiaLink(decoding: r.blob("pending link", limit: 4096))
            pendingLink = PendingLink(link: link, signatures: try QuorumSignature.decode(&r, limit: maxLinkMembers))
        }
        issuanceSequence = try r.u64()
        let ni = try r.count("issuances", limit: IssuanceLimits.maxIssuances)
        for _ in 0..<ni {
            let i = try Issuance.decode(&r)
            if issuances.updateValue(i, forKey: i.id) != nil { throw DecodeError(.invalid(field: "issuance", reason: "\(i.id) listed twice"), at: r.offset) }
        }
        let nu = try r.count("used invites", limit: IssuanceLimits.maxUsedInvites)
        for _ in 0..<nu { usedInvites[try r.raw(16)] = try r.i64() }
        let nr = try r.count("revocations", limit: IssuanceLimits.maxRevocations)
        for _ in 0..<nr {
            let rv = Revocation(node: try NodeID(bytes: r.raw(16)), serial: try r.u64(), at: try r.i64(),
                                reason: try r.string("revocation reason", limit: Revocation.maxReason))
            revoked[rv.node] = rv
        }
    }
}
