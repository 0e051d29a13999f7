// The peer router: the agent's authenticated channels, and typed messages over them.
//
// Inbound channels are served by `serve`; outbound `PeerLink`s dial the addresses the spore (or a
// hint) gives for each Raft id. Every frame is decoded into a `PeerMessage` (MyceliumControl) in
// one place and dispatched: Raft messages to Raft, everything governance to the governor.

import Foundation
import Logging
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import MyceliumTransport

/// The router's state, kept in the agent actor.
struct RouterState {
    var links: [UInt64: PeerLink] = [:]
    /// Addresses we may dial, by raft id: confirmed ones from the spore, then hints (hello, join, latent).
    var addressHints: [UInt64: [String]] = [:]
    var nodeIDs: [UInt64: MyceliumIdentity.NodeID] = [:]
    var contactLinks: [String: PeerLink] = [:]
    var listener: PeerListener?
    /// Inbound channels by peer (closed when the peer is revoked).
    var inbound: [UInt64: PeerChannel] = [:]
    /// Each peer's clock minus ours, measured at its latest handshake (seconds).
    var clockSkew: [UInt64: Int64] = [:]
}

extension Agent {
    func startListener() async throws {
        guard let (host, port) = splitAddress(config.listen) else { throw AgentError("listen '\(config.listen)' is not host:port") }
        let identity = self.identity
        let authority = NetworkJoinAuthority(self)
        joinAuthority = authority
        router.listener = try await PeerListener.start(
            host: host, port: port, credentials: { identity.credentials }, group: group, logger: logger,
            policy: { identity.policy(now: Int64(Date().timeIntervalSince1970)) },
            joinAuthority: authority,
            onPeer: { [weak self] ch in await self?.serve(ch) })
    }

    func stopRouter() async {
        for l in router.links.values { l.stop() }
        for l in router.contactLinks.values { l.stop() }
        await router.listener?.close()
        joinAuthority?.detach()
    }

    // MARK: sending

    func sendPeer(_ to: UInt64, _ message: PeerMessage) {
        guard let link = router.links[to] ?? makeLink(to) else { return }
        link.send(Frame(type: message.frameType.rawValue, payload: message.payload()))
    }

    func send(_ m: Message) { sendPeer(m.to, .raft(m)) }

    /// Sends this node's admission to the leader if we know it, otherwise to everyone we can reach
    /// (they forward it).
    func requestAdmission() {
        let join = PeerMessage.join(SignedCommand(.admit(certificate), author: nodeID, key: key, network: network.id),
                                    address: config.advertisedAddress)
        if raft.leader != .none, router.links[raft.leader] ?? makeLink(raft.leader) != nil {
            sendPeer(raft.leader, join)
        } else {
            let frame = Frame(type: join.frameType.rawValue, payload: join.payload())
            for l in Array(router.contactLinks.values) + Array(router.links.values) { l.send(frame) }
        }
    }

    /// Peers whose link had a connection and lost it (a witness's evidence in a failure vote).
    func lostConnections() -> Set<UInt64> {
        Set(router.links.filter { $0.value.lostConnection }.map(\.key))
    }

    // MARK: receiving

    /// Serves one inbound authenticated channel until it closes.
    func serve(_ ch: PeerChannel) async {
        let peer = ch.peer.nodeID.compact
        router.nodeIDs[peer] = ch.peer.nodeID
        router.clockSkew[peer] = ch.peer.clockSkew
        if ch.peer.joiningWith != nil {
            note("handed joiner \(ch.peer.nodeID) the certificate the network issued")
        }
        router.inbound[peer] = ch
        defer { if router.inbound[peer] === ch { router.inbound[peer] = nil } }
        do {
            while let f = try await ch.receive() { handle(f, from: peer) }
        } catch {
            logger.debug("inbound channel closed", metadata: ["peer": "\(ch.peer.nodeID)", "reason": "\(error)"])
        }
        inboundClosed(peer)
    }

    /// The leader's channel to us closed. If our own link to it is lost too (a process that died
    /// closes both at once), tell Raft, which then campaigns within a few ticks instead of waiting a
    /// whole election timeout. A hint only: pre-vote still needs a quorum that no longer hears it.
    func inboundClosed(_ peer: UInt64) {
        guard !stopped, peer == raft.leader, raft.role == .follower else { return }
        Task { [weak self] in
            try? await Task.sleep(nanoseconds: 20_000_000)  // the outbound link notices the same death
            await self?.confirmLeaderGone(peer)
        }
    }

    func confirmLeaderGone(_ peer: UInt64) {
        guard !stopped, peer == raft.leader, raft.role == .follower, router.links[peer]?.lostConnection == true else { return }
        note("the leader's connections closed; campaigning without waiting for the election timeout")
        logger.info("leader unreachable: both connections closed", metadata: ["leader": "\(router.nodeIDs[peer].map { "\($0)" } ?? "\(peer)")"])
        raft.leaderUnreachable(peer)
        processReady()
    }

    func handle(_ f: Frame, from peer: UInt64) {
        guard !stopped else { return }
        carry(governor.heard(from: peer, raft: raft, state: control, lostConnections: lostConnections(), using: &random))
        let message: PeerMessage
        do {
            guard let m = try PeerMessage(frameType: f.type, payload: f.payload) else { return }
            message = m
        } catch {
            logger.warning("refused a malformed message", metadata: ["peer": "\(peer)", "reason": "\(error)"])
            return
        }
        switch message {
        case .raft(let m):
            guard m.from == peer, m.to == me else {
                logger.warning("refused a Raft message that does not come from its channel's peer", metadata: ["peer": "\(peer)"])
                return
            }
            raft.step(m)
        case let .hello(id, address):
            if id == peer { remember(address, for: peer) }
        case let .join(signed, address):
            guard case .admit(let cert) = signed.command, cert.nodeID.compact == peer else { return }
            remember(address, for: peer)
            carry(governor.joinRequested(signed, from: peer, address: address, raft: raft, state: control))
        case .propose(let signed):
            propose(signed)
        case .probe(let p):
            carry(governor.receiveProbe(p, from: peer))
        case .report(let target):
            carry(governor.failureReported(target, by: peer, raft: raft, state: control))
        case .vote(let v):
            carry(governor.receiveVote(v, from: peer, raft: raft, state: control))
        case let .clientRequest(id, path, body):
            serveForwarded(id, path, body, from: peer)
        case let .clientAnswer(id, status, body):
            forwardAnswered(id, status, body)
        }
        processReady()
    }

    func remember(_ address: String, for peer: UInt64) {
        var hints = router.addressHints[peer] ?? []
        if !hints.contains(address) { hints.append(address); router.addressHints[peer] = hints }
        router.links[peer]?.setAddresses(hints)
    }

    // MARK: outbound links

    func makeLink(_ id: UInt64) -> PeerLink? {
        guard id != me, let addrs = router.addressHints[id], !addrs.isEmpty else { return nil }
        let link = PeerLink(raftID: id, addresses: addrs, dialer: dialer())
        router.links[id] = link
        return link
    }

    /// A contact from the join list or a seed spore: dialled to introduce ourselves; its raft id is
    /// learned from the verified channel.
    func addContact(_ address: String) {
        guard router.contactLinks[address] == nil, address != config.advertisedAddress else { return }
        router.contactLinks[address] = PeerLink(raftID: 0, addresses: [address], dialer: dialer())
    }

    nonisolated func dialer() -> PeerLink.Dialer {
        let identity = self.identity
        return PeerLink.Dialer(
            credentials: { identity.credentials }, group: group, logger: logger,
            policy: { identity.policy(now: Int64(Date().timeIntervalSince1970)) },
            onConnected: { [weak self] id, address, peer in await self?.connected(to: peer, at: address) },
            greeting: { [weak self] in await self?.greeting() ?? [] })
    }

    func greeting() -> [Frame] {
        var messages: [PeerMessage] = [.hello(raftID: me, address: config.advertisedAddress)]
        if spore.members[nodeID] == nil {
            messages.append(.join(SignedCommand(.admit(certificate), author: nodeID, key: key, network: network.id),
                                  address: config.advertisedAddress))
        }
        return messages.map { Frame(type: $0.frameType.rawValue, payload: $0.payload()) }
    }

    /// An outgoing dial succeeded: the peer's address is now confirmed (connection confirmation).
    func connected(to peer: VerifiedPeer, at address: String) {
        let id = peer.nodeID.compact
        router.nodeIDs[id] = peer.nodeID
        router.clockSkew[id] = peer.clockSkew
        remember(address, for: id)
        if spore.members[peer.nodeID] != nil, spore.members[peer.nodeID]?.addresses.contains(address) == false,
           confirmed.insert("\(id)@\(address)").inserted {
            submit(.confirmAddress(node: peer.nodeID, address: address))
        }
    }
}
