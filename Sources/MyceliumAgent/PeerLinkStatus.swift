// This agent's view of its connection to each other member, for `peers` in `GET /v1/status` (the
// dashboard draws it on the map): the dialled link (PeerLink), the member's inbound channel, and when
// the governor last heard a frame from it.

import MyceliumAPI

extension Agent {
    func peerLinkInfos() -> [PeerLinkInfo] {
        let tickMs = Int64(config.tickMilliseconds)
        return spore.members.values.sorted { $0.id < $1.id }.compactMap { m -> PeerLinkInfo? in
            let id = m.id.compact
            guard id != me else { return nil }
            let link = router.links[id]
            let outbound = link?.connectedAddress != nil
            let inbound = router.inbound[id] != nil
            let heard = governor.lastHeard[id].map { Int64(governor.ticks &- $0) * tickMs }
            return PeerLinkInfo(
                node: "\(m.id)",
                state: PeerLinkInfo.state(outbound: outbound, inbound: inbound, everConnected: link?.everConnected ?? false, lastHeardMilliseconds: heard),
                outbound: outbound, inbound: inbound, address: link?.connectedAddress, lastHeardMilliseconds: heard,
                handshakeMilliseconds: link?.lastDialSeconds.map { $0 * 1000 })
        }
    }
}
