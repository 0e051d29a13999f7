// The membership controller: the network issues, renews and re-signs membership (docs/MEMBERSHIP.md).
//
// Core (pure): the primary spore holds the issuances and the pending sclerotia link; this
// controller is each node's part in them.
//  - every signer (a sclerotium of the issuing generation; the genesis node, while it holds the
//    genesis key, for generation 0) signs each issuance and link it has not signed yet: at once when
//    the request applies, and again every few seconds while its signature is missing (a forwarded
//    command can be lost with a leader);
//  - the leader asks for the renewal of every member past two thirds of its certificate's lifetime
//    (the spore refuses failed, left, jailed and revoked members), again if the issuance timed out;
//  - every node hands its driver its own certificate whenever the network issued it a newer one,
//    so the node presents it at once and finds it after a restart.
// Signatures are deterministic Ed25519 over bytes every replica agrees on; no clock, file or socket.

import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumSpores

public enum MembershipAction: Sendable, Equatable {
    /// Store this node's new certificate (atomically) and present it from now on.
    case store(MembershipCertificate)
}

public struct MembershipController: Controller {
    public var name: String { "membership" }
    let key: SigningKey
    /// The genesis key, on the genesis node while it still holds `network.key` (generation 0 only).
    let genesis: SigningKey?
    /// The certificate the driver last stored (or the one the node started with).
    public private(set) var current: MembershipCertificate
    /// Tick of the last signature sent per item ("c<id>" or "l<generation>").
    var signedAt: [String: UInt64] = [:]
    /// Tick of the last renewal request per member (leader).
    var requestedAt: [MyceliumIdentity.NodeID: UInt64] = [:]
    /// Spore time advances only when a command applies (a refresh every ten seconds when idle): the
    /// spore time last seen and the tick it was seen at give an estimate of spore time now.
    var sporeTimeSeen: (time: Int64, tick: UInt64) = (0, 0)
    /// Renewal requests proposed in one tick at most (the rest wait a second).
    public static let renewalsPerTick = 8

    public init(key: SigningKey, certificate: MembershipCertificate, genesis: SigningKey? = nil) {
        self.key = key
        self.current = certificate
        self.genesis = genesis
    }

    public mutating func applied(_ change: ControlChange, context: ControllerContext) -> [ControllerEffect<MembershipAction>] {
        switch change {
        case .restored:
            return adopt(context) + sign(context, retryAfter: 0)
        case .spore(let s):
            switch s.command {
            case .requestCertificate, .signCertificate, .signLink, .setSclerotia, .rotateKey, .revoke, .admit, .setStatus, .decideVote:
                return adopt(context) + sign(context, retryAfter: 3 * context.ticksPerSecond)
            default:
                return []
            }
        default:
            return []
        }
    }

    public mutating func tick(context: ControllerContext) -> [ControllerEffect<MembershipAction>] {
        if context.state.spore.now != sporeTimeSeen.time { sporeTimeSeen = (context.state.spore.now, context.tick) }
        guard context.tick % max(1, context.ticksPerSecond) == 0 else { return [] }
        var out = adopt(context) + sign(context, retryAfter: 3 * context.ticksPerSecond)
        if context.isLeader { out += renew(context) }
        return out
    }

    /// The network issued this node a newer certificate: store it.
    mutating func adopt(_ context: ControllerContext) -> [ControllerEffect<MembershipAction>] {
        guard let m = context.state.spore.members[context.node], m.certificate.nodeKey == key.publicKey,
              m.certificate.supersedes(current) else { return [] }
        current = m.certificate
        let issuer = current.generation == 0 ? "the genesis key" : "a quorum of sclerotia generation \(current.generation)"
        return [.act(.store(current)), .note("certificate #\(current.serial) issued by \(issuer), valid until \(current.expiresAt)")]
    }

    /// This node's index among `generation`'s signers, with the key to sign with.
    func signer(of generation: UInt64, _ spore: PrimarySpore, me: MyceliumIdentity.NodeID) -> (UInt8, SigningKey)? {
        if generation == 0 {
            guard let genesis, spore.chain.genesisKey == genesis.publicKey else { return nil }
            return (0, genesis)
        }
        guard let signers = spore.chain.signers(of: generation),
              let i = signers.firstIndex(where: { $0.id == me && $0.key == key.publicKey }) else { return nil }
        return (UInt8(i), key)
    }

    /// Signs every issuance and the pending link this node is a signer of and has not signed, at most
    /// once per `retryAfter` ticks per item.
    mutating func sign(_ context: ControllerContext, retryAfter: UInt64) -> [ControllerEffect<MembershipAction>] {
        let spore = context.state.spore
        var out: [ControllerEffect<MembershipAction>] = []
        func due(_ item: String) -> Bool {
            if let at = signedAt[item], retryAfter > 0, context.tick < at + retryAfter { return false }
            if let at = signedAt[item], retryAfter == 0, at == context.tick { return false }
            signedAt[item] = context.tick
            return true
        }
        for iss in spore.issuances.values.sorted(by: { $0.id < $1.id }) {
            guard let (index, k) = signer(of: iss.certificate.generation, spore, me: context.node),
                  !iss.signatures.contains(where: { $0.index == index }), due("c\(iss.id)") else { continue }
            out.append(.submit(.signCertificate(id: iss.id, QuorumSignature(index: index, signature: k.sign(iss.certificate.signedBytes)))))
        }
        if let p = spore.pendingLink, let (index, k) = signer(of: p.link.generation - 1, spore, me: context.node),
           !p.signatures.contains(where: { $0.index == index }), due("l\(p.link.generation)") {
            out.append(.submit(.signLink(generation: p.link.generation, QuorumSignature(index: index, signature: k.sign(p.link.signedBytes)))))
            if p.link.generation == 1 && index == 0 && genesis != nil {
                out.append(.note("signed the first sclerotia link with the genesis key; after the handoff the key may be kept offline"))
            }
        }
        // Forget items that are done.
        let live = Set(spore.issuances.keys.map { "c\($0)" } + (spore.pendingLink.map { ["l\($0.link.generation)"] } ?? []))
        signedAt = signedAt.filter { live.contains($0.key) }
        return out
    }

    /// Leader: ask for the renewal of members past two thirds of their lifetime.
    mutating func renew(_ context: ControllerContext) -> [ControllerEffect<MembershipAction>] {
        let spore = context.state.spore
        guard spore.pendingLink == nil else { return [] }
        var out: [ControllerEffect<MembershipAction>] = []
        // Asked again after the issuance could have timed out (it may have been lost with a leader).
        let retry = UInt64(IssuanceLimits.issuanceTimeout(lifetime: spore.lifetime) + 1) * context.ticksPerSecond
        let now = sporeTimeSeen.time + Int64((context.tick - min(context.tick, sporeTimeSeen.tick)) / max(1, context.ticksPerSecond))
        for node in spore.dueForRenewal(at: now) {
            if let at = requestedAt[node], context.tick < at + retry { continue }
            requestedAt[node] = context.tick
            out.append(.submit(.requestCertificate(.renewal(node: node))))
            if out.count >= Self.renewalsPerTick { break }
        }
        requestedAt = requestedAt.filter { spore.members[$0.key] != nil }
        return out
    }
}
