// The answering agent's own view of its connection to each other member (`peers` in `GET /v1/status`):
// whether its dialled channel and the member's channel to it are up, when it last heard from the
// member, and how long its last dial took. One agent's view: another member may see its links differently.

import Foundation

/// This agent's connection to one other member.
public struct PeerLinkInfo: Codable, Sendable, Equatable {
    /// The member's node ID.
    public var node: String
    /// `up` (a channel is open and a frame arrived within ``silentAfterMilliseconds``), `silent` (a
    /// channel is open but nothing arrived lately), `down` (it had a connection and lost it, or was
    /// heard from and has no channel now) or `none` (never connected: no message needed one yet).
    public var state: String
    /// This agent's dialled channel to it is connected.
    public var outbound: Bool
    /// The member's channel to this agent is open.
    public var inbound: Bool
    /// The address the dialled channel is connected to.
    public var address: String?
    /// Milliseconds since a frame last arrived from it (nil: never), at the agent's tick resolution.
    public var lastHeardMilliseconds: Int64?
    /// How long this agent's latest successful dial took (TCP connect and the authenticated
    /// handshake, a few round trips): an upper bound of the round trip, not a ping (nil: never dialled).
    public var handshakeMilliseconds: Double?

    /// Nothing arriving for this long on an open channel makes a link `silent` (Raft heartbeats and the
    /// failure detector's probes arrive well within it on a healthy link).
    public static let silentAfterMilliseconds: Int64 = 5000

    public init(node: String, state: String, outbound: Bool, inbound: Bool, address: String? = nil,
                lastHeardMilliseconds: Int64? = nil, handshakeMilliseconds: Double? = nil) {
        self.node = node; self.state = state; self.outbound = outbound; self.inbound = inbound; self.address = address
        self.lastHeardMilliseconds = lastHeardMilliseconds; self.handshakeMilliseconds = handshakeMilliseconds
    }

    /// The link's state from what the agent knows of it (see ``state``).
    public static func state(outbound: Bool, inbound: Bool, everConnected: Bool, lastHeardMilliseconds: Int64?) -> String {
        if outbound || inbound {
            if let heard = lastHeardMilliseconds, heard <= silentAfterMilliseconds { return "up" }
            return "silent"
        }
        return everConnected || lastHeardMilliseconds != nil ? "down" : "none"
    }

    enum CodingKeys: String, CodingKey {
        case node, state, outbound, inbound, address
        case lastHeardMilliseconds = "last_heard_ms"
        case handshakeMilliseconds = "handshake_ms"
    }
}
