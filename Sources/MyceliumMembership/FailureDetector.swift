// Failure detection in the style of SWIM (Das, Gupta, Motivala 2002), as a pure value.
//
// Each protocol period the detector probes one peer (round-robin over a shuffled list, §4.3, so
// every peer is probed within one pass). No ack within `probeTimeout` ticks: it asks `indirectProbes`
// other peers to probe the target for it (§3.1, ping-req), which tells a dead node from a lossy path.
// Still nothing by the end of the period: the target becomes *suspect* (§4.2). A suspect that stays
// silent for `suspicionTimeout` ticks becomes a *failure candidate*.
//
// The detector never declares a failure by itself: a candidate is handed to the shell
// (`.confirmFailure`), which confirms it through the vote before anything acts on it, as the
// issue requires. An ack from a suspect clears it at once (refutation).
//
// Time is ticks; randomness is the generator the caller passes in. No clocks, no sockets.

import MyceliumCore

public struct FailureDetectorSettings: Sendable, Equatable {
    /// Ticks per protocol period (one probe per period). It must cover the indirect path: the
    /// probe timeout plus two round trips (requester → helper → target and back), SWIM §3.1.
    public var period: Int = 8
    /// Ticks to wait for a direct ack before asking others.
    public var probeTimeout: Int = 2
    /// Peers asked to probe indirectly.
    public var indirectProbes: Int = 3
    /// Ticks a peer stays suspect before it becomes a failure candidate. Short, because a candidate
    /// is only reported: the vote that follows is the confirmation (every voter that does not
    /// suspect the peer itself checks it directly first), in the role Lifeguard gives independent
    /// suspicions (Dadgar et al. 2018).
    public var suspicionTimeout: Int = 5

    public init() {}
}

public enum PeerHealth: Sendable, Equatable, CustomStringConvertible {
    case alive
    case suspect(since: Int)
    /// Suspected long enough; waiting for confirmation from outside.
    case candidate

    public var description: String {
        switch self {
        case .alive: return "alive"
        case .suspect: return "suspect"
        case .candidate: return "failure candidate"
        }
    }
}

public enum ProbeMessage<Peer: Hashable & Sendable>: Sendable, Equatable {
    case ping(seq: UInt64)
    /// Probe `target` for me and tell me.
    case pingRequest(seq: UInt64, target: Peer)
    case ack(seq: UInt64, about: Peer)
}

public enum DetectorEffect<Peer: Hashable & Sendable>: Sendable, Equatable {
    case send(to: Peer, ProbeMessage<Peer>)
    case suspect(Peer)
    case recovered(Peer)
    /// Ask the network to confirm that `peer` failed (the BFT vote once it exists).
    case confirmFailure(Peer)
}

public struct FailureDetector<Peer: Hashable & Comparable & Sendable>: Sendable {
    public let me: Peer
    public var settings: FailureDetectorSettings
    public private(set) var health: [Peer: PeerHealth] = [:]
    private var now = 0
    private var order: [Peer] = []
    private var cursor = 0
    private var seq: UInt64 = 0
    /// The probe in flight this period.
    private var probe: (target: Peer, seq: UInt64, sentAt: Int, indirect: Bool)?
    /// Indirect probes we run for others: our seq → (who asked, their seq, target).
    private var relays: [UInt64: (requester: Peer, seq: UInt64, target: Peer, at: Int)] = [:]

    public init(me: Peer, peers: [Peer], settings: FailureDetectorSettings = FailureDetectorSettings()) {
        self.me = me
        self.settings = settings
        for p in peers where p != me { health[p] = .alive }
    }

    public var peers: [Peer] { health.keys.sorted() }

    public mutating func setPeers(_ peers: [Peer]) {
        let wanted = Set(peers).subtracting([me])
        for p in health.keys where !wanted.contains(p) { health[p] = nil }
        for p in wanted where health[p] == nil { health[p] = .alive }
        order.removeAll { !wanted.contains($0) }
        if let t = probe?.target, !wanted.contains(t) { probe = nil }
    }

    /// Advances time by one tick.
    public mutating func tick(using rng: inout some RandomNumberGenerator) -> [DetectorEffect<Peer>] {
        now += 1
        var out: [DetectorEffect<Peer>] = []
        if let p = probe {
            let waited = now - p.sentAt
            if !p.indirect && waited >= settings.probeTimeout {
                let helpers = peers.filter { $0 != p.target && health[$0] == .alive }.shuffled(using: &rng).prefix(settings.indirectProbes)
                for h in helpers { out.append(.send(to: h, .pingRequest(seq: p.seq, target: p.target))) }
                probe?.indirect = true
            }
            if waited >= settings.period {
                probe = nil
                if health[p.target] == .alive {
                    health[p.target] = .suspect(since: now)
                    out.append(.suspect(p.target))
                }
            }
        }
        for (peer, h) in health {
            if case .suspect(let since) = h, now - since >= settings.suspicionTimeout {
                health[peer] = .candidate
                out.append(.confirmFailure(peer))
            }
        }
        relays = relays.filter { now - $0.value.at < settings.period }
        if probe == nil && now % settings.period == 0, let target = nextTarget(using: &rng) {
            seq += 1
            probe = (target, seq, now, false)
            out.append(.send(to: target, .ping(seq: seq)))
        }
        return out
    }

    public mutating func receive(_ m: ProbeMessage<Peer>, from: Peer) -> [DetectorEffect<Peer>] {
        var out: [DetectorEffect<Peer>] = []
        // Any message from a peer shows it is up.
        out += markAlive(from)
        switch m {
        case .ping(let s):
            out.append(.send(to: from, .ack(seq: s, about: me)))
        case let .pingRequest(s, target):
            seq += 1
            relays[seq] = (from, s, target, now)
            out.append(.send(to: target, .ping(seq: seq)))
        case let .ack(s, about):
            if let p = probe, p.seq == s, p.target == about {
                probe = nil
                out += markAlive(about)
            } else if let r = relays.removeValue(forKey: s), r.target == about {
                out.append(.send(to: r.requester, .ack(seq: r.seq, about: about)))
            }
        }
        return out
    }

    /// Anything else that arrived from `peer` on an authenticated channel (a Raft message, a vote)
    /// shows it is up too. Without this, two nodes that suspected each other during a partition
    /// would stay candidates of each other after it healed.
    public mutating func heard(from peer: Peer) -> [DetectorEffect<Peer>] { markAlive(peer) }

    private mutating func markAlive(_ p: Peer) -> [DetectorEffect<Peer>] {
        guard let h = health[p], h != .alive else { return [] }
        health[p] = .alive
        return [.recovered(p)]
    }

    private mutating func nextTarget(using rng: inout some RandomNumberGenerator) -> Peer? {
        if cursor >= order.count {
            // Candidates are probed too (SWIM keeps probing suspects): a candidate that answers recovers
            // even if it never probes us.
            order = peers.shuffled(using: &rng)
            cursor = 0
        }
        guard cursor < order.count else { return nil }
        defer { cursor += 1 }
        return order[cursor]
    }
}
