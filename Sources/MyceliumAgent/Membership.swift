// The agent's side of membership issued by the network (docs/MEMBERSHIP.md).
//
// `IdentityView` is what the connection tasks read without entering the actor: the certificate this
// node presents, the sclerotia chain and the revocations it checks peers against, and the members
// that may invite. The actor refreshes it whenever the primary spore changes, so a renewed
// certificate is presented, and a revoked member refused, from the next handshake on; channels
// already open to a revoked member are closed then too (`enforceRevocations`).
//
// `NetworkJoinAuthority` admits a joiner: the handshake has checked the invite's signature, inviter
// and expiry; the agent asks the network (a `requestCertificate` through the leader), and the
// handshake waits until the spore holds the joiner's certificate, signed by a quorum.

import Foundation
import Logging
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumSpores
import MyceliumTransport
import NIOConcurrencyHelpers

final class IdentityView: Sendable {
    struct State: Sendable {
        var certificate: MembershipCertificate
        var chain: SclerotiaChain
        var revoked: Set<NodeID> = []
        var keys = KeyRegistry()
        var inviters: [NodeID: PublicKey] = [:]
        var maxLifetime: Int64?
        var epoch = SporeEpoch.zero
    }

    private let state: NIOLockedValueBox<State>
    let key: SigningKey

    init(key: SigningKey, certificate: MembershipCertificate) {
        self.key = key
        state = NIOLockedValueBox(State(certificate: certificate, chain: SclerotiaChain(genesisKey: certificate.genesisKey)))
    }

    var certificate: MembershipCertificate { state.withLockedValue { $0.certificate } }
    var chain: SclerotiaChain { state.withLockedValue { $0.chain } }

    /// What this node presents: its certificate and the newest links of its chain.
    var credentials: NodeCredentials {
        state.withLockedValue { s in
            NodeCredentials(key: key, network: s.chain.network, credential: .member(s.certificate),
                            links: s.chain.suffix(upTo: s.chain.generation, count: Hello.maxLinks))
        }
    }

    func policy(now: Int64) -> HandshakePolicy {
        state.withLockedValue { s in
            HandshakePolicy(chain: s.chain, now: now, revoked: s.revoked, keys: s.keys, inviters: s.inviters, maxLifetime: s.maxLifetime)
        }
    }

    /// Takes in a newer spore. Returns this node's certificate if the spore holds a newer one.
    @discardableResult
    func update(from spore: PrimarySpore, me: NodeID) -> MembershipCertificate? {
        state.withLockedValue { s in
            guard spore.epoch != s.epoch else { return nil }
            s.epoch = spore.epoch
            // The chain only grows: a spore restored from an older snapshot never shrinks what we trust.
            if spore.chain.generation >= s.chain.generation { s.chain = spore.chain }
            s.revoked = spore.revokedIDs
            s.keys = spore.keys
            s.maxLifetime = spore.certificateLifetime > 0 ? spore.certificateLifetime : nil
            s.inviters = Dictionary(uniqueKeysWithValues: spore.presentMembers.filter { $0.roles.contains(.inviter) }.map { ($0.id, $0.key) })
            if let mine = spore.members[me]?.certificate, mine.nodeKey == key.publicKey, mine.supersedes(s.certificate) {
                s.certificate = mine
                return mine
            }
            return nil
        }
    }
}

/// Admits joiners through the network. Holds the agent weakly: a listener outliving it refuses.
final class NetworkJoinAuthority: JoinAuthority {
    private let agent: NIOLockedValueBox<Agent?>
    init(_ agent: Agent) { self.agent = NIOLockedValueBox(agent) }

    func admit(invite: Invite, nodeKey: PublicKey, now: Int64) async throws(IdentityError) -> MembershipCertificate {
        guard let agent = self.agent.withLockedValue({ $0 }) else {
            throw IdentityError(.inviterNotAllowed(inviter: invite.inviter, reason: "this node is stopping"))
        }
        let result = await agent.admitJoiner(invite: invite, nodeKey: nodeKey)
        return try result.get()
    }

    func detach() { agent.withLockedValue { $0 = nil } }
}

extension Agent {
    /// How long a joiner's handshake waits for the network to issue its certificate (below the
    /// handshake's own timeout).
    static let admissionWait: Double = 8

    /// Asks the network to admit a joiner and waits for its certificate.
    func admitJoiner(invite: Invite, nodeKey: PublicKey) async -> Result<MembershipCertificate, IdentityError> {
        let node = NodeID(publicKey: nodeKey)
        if spore.usedInvites[invite.ledgerKey] != nil && spore.issuance(for: node) == nil {
            return .failure(IdentityError(.inviteAlreadyUsed))
        }
        if spore.revoked[node] != nil { return .failure(IdentityError(.revoked(node: node))) }
        let before = spore.members[node]?.certificate.serial
        note("join request from \(node) with an invite by \(invite.inviter): asking the network for its certificate")
        logger.info("admitting a joiner", metadata: ["node": "\(node)", "inviter": "\(invite.inviter)"])
        let deadline = Date().addingTimeInterval(Self.admissionWait)
        var lastAsk = Date.distantPast
        while Date() < deadline && !stopped {
            if let m = spore.members[node], m.certificate.nodeKey == nodeKey, m.certificate.serial != before, m.status == .alive {
                note("the network issued \(node) its certificate (generation \(m.certificate.generation))")
                return .success(m.certificate)
            }
            // Ask (again, if the request was lost with a leader) until the spore has taken the invite.
            if spore.usedInvites[invite.ledgerKey] == nil && Date().timeIntervalSince(lastAsk) > 2 {
                lastAsk = Date()
                submit(.requestCertificate(.admission(invite, nodeKey: nodeKey)))
                processReady()
            }
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        let why = raft.leader == .none ? "there is no leader now (see 'mycelium status')" : "the sclerotia did not sign in time"
        logger.warning("joiner not admitted", metadata: ["node": "\(node)", "reason": "\(why)"])
        return .failure(IdentityError(.inviterNotAllowed(inviter: invite.inviter,
                                                         reason: "the network did not issue a certificate within \(Int(Self.admissionWait)) s: \(why); try joining again")))
    }

    /// After the spore changed: present a renewed certificate, and close channels to revoked members.
    func identityChanged() {
        vmPeers.update(from: spore, port: config.vmReplicationPort)
        if let mine = identity.update(from: spore, me: nodeID) {
            governor.present(mine)
            logger.info("presenting a renewed certificate", metadata: ["serial": "\(mine.serial)", "generation": "\(mine.generation)",
                                                                      "expires": "\(mine.expiresAt)"])
        }
        enforceRevocations()
    }

    /// Says, once a minute, when this node's own certificate is in the last fifth of its lifetime (the
    /// network has not renewed it: no leader, no quorum of sclerotia, or this node is not in good
    /// standing) or has expired (peers refuse this node; it must rejoin with an invite).
    func checkOwnCertificate() {
        let c = certificate, now = Int64(Date().timeIntervalSince1970)
        let left = c.expiresAt.saturatingSubtracting(now)
        guard left < c.lifetime / 5, ticks % (60 * ticksPerSecond) < ticksPerSecond else { return }
        if c.expiresAt <= now {
            logger.error("this node's membership certificate has expired: peers refuse it. Rejoin with an invite ('mycelium node join')",
                         metadata: ["expired_at": "\(c.expiresAt)"])
            note("certificate expired: rejoin with an invite")
        } else {
            let why = spore.renewalRefusal(nodeID).map { "the network does not renew it: \($0)" }
                ?? (raft.leader == .none ? "there is no leader to renew it" : "its renewal has not landed yet")
            logger.warning("this node's membership certificate expires soon", metadata: ["in_s": "\(left)", "reason": "\(why)"])
            note("certificate expires in \(left) s: \(why)")
        }
    }

    /// Every channel to a revoked member is closed; the handshake policy refuses it from now on.
    func enforceRevocations() {
        for (node, r) in spore.revoked {
            let id = node.compact
            if let link = router.links.removeValue(forKey: id) {
                link.stop()
                note("closed the channel to \(node): revoked (\(r.reason))")
            }
            if let ch = router.inbound.removeValue(forKey: id) {
                Task { await ch.close() }
            }
        }
    }

    /// Refuses to start on a certificate that expired: the network renews only live members, and one
    /// that was away past its expiry rejoins with an invite (same key, same node ID).
    static func checkNotExpired(_ cert: MembershipCertificate, paths: AgentPaths, now: Int64) throws {
        guard cert.expiresAt <= now else { return }
        throw AgentError("""
            this node's membership certificate expired \(now - cert.expiresAt) s ago (at unix time \(cert.expiresAt)): \
            the network renews a member's certificate only while the member is alive, and this node was away past its expiry. \
            Rejoin with an invite: on any member with the inviter role run 'mycelium invite create --home <its home>', \
            then here 'mycelium node join --home \(paths.home) <invite>' (the node keeps its key and ID), and start the agent again.
            """)
    }
}
