// The dashboard's pure core: the local API's answers turned into what the page shows (a whitelist of
// fields, so no key, token, environment or command line reaches a page), the events' kinds and filter,
// the map's layout, and the dashboard's own bounded history (events seen and trust samples). No
// sockets, clocks or files here: the server (DashboardServer) passes the time and the answers in.

import Foundation
import MyceliumAPI

/// One member on the network map.
public struct MemberView: Codable, Sendable, Equatable {
    public var id: String
    /// A short label for the map (`node-` and most of the ID dropped).
    public var label: String
    /// `alive`, `suspect`, `failed` or `left`.
    public var status: String
    public var sclerotium: Bool
    public var leader: Bool
    /// `voter`, `learner` or `none`: its place in the Raft configuration.
    public var raft: String
    /// Trust from 0 to 1.
    public var trust: Double
    public var jailed: Bool
    public var revoked: Bool
    public var addresses: [String]
    public var cpus: Int
    /// Position on the map (in the map's 1000 x 700 view box) and the node's radius there.
    public var x: Double
    public var y: Double
    public var r: Double
}

/// The observing agent's connection to one other member, drawn on the map from the observer to it.
public struct LinkView: Codable, Sendable, Equatable {
    /// The observer (the node whose agent the dashboard reads) and the other member.
    public var from: String
    public var to: String
    /// `up`, `silent`, `down` or `none` (``PeerLinkInfo/state``).
    public var state: String
    /// What the map's tooltip says: channels, last heard, dial time.
    public var detail: String
}

/// What kind of thing an event is, for the timeline's filter.
public enum EventKind: String, Codable, Sendable, CaseIterable {
    case admission, election, failure, vote, slashing, handoff, workload, other
}

/// One line of the timeline.
public struct EventView: Codable, Sendable, Equatable {
    /// Its place in the order the dashboard saw events (increasing).
    public var seq: Int
    /// The agent's time stamp (`+12.345s`: seconds since the observing agent started), or "".
    public var at: String
    public var text: String
    public var kind: EventKind
}

/// One vote round.
public struct VoteView: Codable, Sendable, Equatable {
    public var sequence: Int
    public var kind: String
    public var node: String
    public var voters: Int
    public var tolerates: Int
    public var state: String
    public var open: Bool
    public var latencyMs: Double?
    /// Its voters' short labels (empty: the agent did not say).
    public var voterLabels: [String]
    /// What the round asks about its subject ("has ab12cd34 failed?").
    public var question: String
    /// Misbehaviour proven in the round and slashed (`accused: offence`), empty when none.
    public var evidence: [String]
}

/// A trust sample: seconds since the dashboard started, and trust from 0 to 1.
public struct TrustPoint: Codable, Sendable, Equatable {
    public var t: Double
    public var trust: Double
}

public struct VMView: Codable, Sendable, Equatable {
    public var name: String
    public var primary: String
    public var replica: String
    public var protection: String
    public var rpoMs: Double?
    public var pauseP99Ms: Double?
    public var migration: String
    /// While the replica is brought up to date: "25% of 1.0 GiB" ("": not syncing, or this agent is not
    /// the VM's primary, the only one that knows).
    public var sync: String
}

public struct ServiceView: Codable, Sendable, Equatable {
    public var name: String
    public var driver: String
    public var replicas: Int
    public var serving: Int
    public var pending: String
    /// `id on node: state/health` per instance.
    public var instances: [String]
    public var endpoints: [String]
}

public struct VolumeView: Codable, Sendable, Equatable {
    public var name: String
    public var sizeBytes: UInt64
    public var dataClass: String
    public var state: String
    public var home: String
    public var usedBy: String
}

/// One row of the datapath's counters (an endpoint, or `node` for drops that belong to none).
public struct DatapathRow: Codable, Sendable, Equatable {
    public var endpoint: String
    public var networkID: Int
    public var txPackets: UInt64
    public var txBytes: UInt64
    public var rxPackets: UInt64
    public var rxBytes: UInt64
    /// Drops by reason (policy, no-endpoint, spoofed, malformed, fib).
    public var drops: [String: UInt64]
    public init(endpoint: String, networkID: Int, txPackets: UInt64, txBytes: UInt64, rxPackets: UInt64, rxBytes: UInt64, drops: [String: UInt64]) {
        self.endpoint = endpoint; self.networkID = networkID; self.txPackets = txPackets; self.txBytes = txBytes
        self.rxPackets = rxPackets; self.rxBytes = rxBytes; self.drops = drops
    }
}

/// Everything the page shows at one moment; sent as JSON (`/api/snapshot`, and each server-sent event).
public struct DashboardSnapshot: Codable, Sendable, Equatable {
    /// Increases with every poll of the agent.
    public var version: Int
    /// Seconds since the dashboard started.
    public var t: Double
    /// The agent answered (false: `error` says why, the rest is the last known view).
    public var reachable: Bool
    public var error: String
    public var network: String
    /// The node whose agent the dashboard reads.
    public var observer: String
    public var leader: String
    public var term: UInt64
    public var health: String
    public var phase: String
    public var warnings: [String]
    public var members: [MemberView]
    /// The observer's links to the other members (nil: an agent older than `peers`; the map then draws
    /// the leader's lines to the members).
    public var links: [LinkView]?
    public var events: [EventView]
    public var votes: [VoteView]
    public var trust: [String: [TrustPoint]]
    /// nil: that panel's subsystem did not answer (its message is in `panelErrors`); empty: none yet.
    public var vms: [VMView]?
    public var services: [ServiceView]?
    public var volumes: [VolumeView]?
    public var datapath: [DatapathRow]?
    public var panelErrors: [String: String]

    public static let empty = DashboardSnapshot(
        version: 0, t: 0, reachable: false, error: "not read yet", network: "", observer: "", leader: "", term: 0, health: "",
        phase: "", warnings: [], members: [], links: nil, events: [], votes: [], trust: [:], vms: nil, services: nil, volumes: nil,
        datapath: nil, panelErrors: [:])
}

public enum DashboardModel {
    /// The map's view box.
    public static let width = 1000.0, height = 700.0

    /// Positions for `count` nodes in a `width` x `height` box and their radius: a circle up to 24
    /// nodes, a grid (rows and columns in the box's proportion) beyond, so 100 members stay readable.
    public static func layout(count: Int, width: Double = width, height: Double = height) -> (points: [(x: Double, y: Double)], radius: Double) {
        guard count > 0 else { return ([], 0) }
        if count == 1 { return ([(width / 2, height / 2)], 40) }
        if count <= 24 {
            let ring = min(width, height) / 2 - 70
            let r = min(40, max(14, ring * Double.pi / Double(count) * 0.45))
            let points = (0..<count).map { i -> (x: Double, y: Double) in
                let a = -Double.pi / 2 + 2 * Double.pi * Double(i) / Double(count)
                return (width / 2 + ring * cos(a), height / 2 + ring * sin(a))
            }
            return (points, r)
        }
        let cols = max(1, Int((Double(count) * width / height).squareRoot().rounded(.up)))
        let rows = (count + cols - 1) / cols
        // The last row's labels (under the nodes) need room too.
        let cw = width / Double(cols), ch = (height - 24) / Double(rows)
        let r = max(5, min(cw, ch) * 0.3)
        let points = (0..<count).map { i -> (x: Double, y: Double) in
            (cw * (Double(i % cols) + 0.5), ch * (Double(i / cols) + 0.5))
        }
        return (points, r)
    }

    /// A short label: `node-ab12cd34ef…` → `ab12cd34`.
    public static func label(_ id: String) -> String {
        let bare = id.hasPrefix("node-") ? String(id.dropFirst(5)) : id
        return String(bare.prefix(8))
    }

    /// The members as the map shows them, sorted by ID, placed by ``layout(count:width:height:)``.
    public static func members(_ s: StatusResponse) -> [MemberView] {
        let sorted = s.members.sorted { $0.id < $1.id }
        let (points, r) = layout(count: sorted.count)
        let voters = Set(s.voters)
        return sorted.enumerated().map { i, m in
            let raft = voters.contains(m.id) ? "voter" : (m.sclerotium || s.sclerotia.contains(m.id) ? "learner" : "none")
            return MemberView(id: m.id, label: label(m.id), status: m.status, sclerotium: m.sclerotium || s.sclerotia.contains(m.id),
                              leader: m.id == s.leader, raft: raft, trust: Double(m.trust) / 1_000_000, jailed: m.jailed,
                              revoked: m.revoked ?? false, addresses: m.addresses, cpus: m.cpus,
                              x: points[i].x, y: points[i].y, r: r)
        }
    }

    /// The observer's links to the other members, as the agent sees them (`peers` in the status),
    /// sorted by member; nil when the agent does not say (older than that field).
    public static func links(_ s: StatusResponse) -> [LinkView]? {
        guard let peers = s.peers else { return nil }
        return peers.sorted { $0.node < $1.node }.map { p in
            var parts: [String] = []
            parts.append(p.outbound ? "dialled channel up" + (p.address.map { " (\($0))" } ?? "") : "no dialled channel")
            parts.append(p.inbound ? "its channel to us up" : "no channel from it")
            parts.append(p.lastHeardMilliseconds.map { "heard \(String(format: "%.1f", Double($0) / 1000)) s ago" } ?? "never heard")
            if let h = p.handshakeMilliseconds { parts.append("last dial \(String(format: "%.1f", h)) ms") }
            return LinkView(from: s.node, to: p.node, state: p.state, detail: "\(label(s.node)) → \(label(p.node)): \(p.state); " + parts.joined(separator: ", "))
        }
    }

    /// Splits an agent event (`+12.345s text`) into its time stamp and text.
    public static func split(_ line: String) -> (at: String, text: String) {
        guard line.hasPrefix("+"), let space = line.firstIndex(of: " ") else { return ("", line) }
        let stamp = line[..<space]
        guard stamp.hasSuffix("s"), Double(stamp.dropFirst().dropLast()) != nil else { return ("", line) }
        return (String(stamp), String(line[line.index(after: space)...]))
    }

    /// The kind of an event, from the agent's wording (see the `note(...)` calls in MyceliumAgent and
    /// the controllers). The first rule that matches wins: a failure confirmed by a vote is a failure.
    public static func kind(of text: String) -> EventKind {
        let t = text.lowercased()
        func any(_ words: String...) -> Bool { words.contains { t.contains($0) } }
        if any("slashed", "evidence:") { return .slashing }
        if any("recorded failure", "failure of", "failure candidate", "suspect ", "recovered ", "remove failed") && !t.hasPrefix("vote ") { return .failure }
        if t.hasPrefix("vote ") || any(" vote ", "byzantine-tolerant vote") { return .vote }
        if any("admitted", "join request", "joiner", "issued", "certificate") { return .admission }
        if any("handoff", "handing", "hand-over", "switched to", "failing vm", "migration") { return .handoff }
        if any("leader", "campaign", "election", "configuration now", "quorum") { return .election }
        if any("vm ", "service", "volume", "k3s", "pod") { return .workload }
        return .other
    }

    /// The events that match the filter: any of `kinds` (empty: every kind) and containing `text`
    /// (case-insensitive; empty: any), in their order.
    public static func filter(_ events: [EventView], kinds: Set<EventKind>, text: String) -> [EventView] {
        let needle = text.lowercased()
        return events.filter { e in
            (kinds.isEmpty || kinds.contains(e.kind)) && (needle.isEmpty || e.text.lowercased().contains(needle))
        }
    }

    /// Parses the `kind` query parameter (`vote,failure`); unknown names are refused, with the known ones.
    public static func kinds(_ query: String) -> Result<Set<EventKind>, DashboardConfigError> {
        var out: Set<EventKind> = []
        for part in query.split(separator: ",") where !part.isEmpty {
            guard let k = EventKind(rawValue: String(part)) else {
                return .failure(DashboardConfigError("unknown event kind '\(part)'; use \(EventKind.allCases.map(\.rawValue).joined(separator: ", "))"))
            }
            out.insert(k)
        }
        return .success(out)
    }

    public static func votes(_ rounds: [VoteRoundInfo]) -> [VoteView] {
        rounds.sorted { $0.sequence > $1.sequence }.map {
            VoteView(sequence: $0.sequence, kind: $0.kind, node: $0.node, voters: $0.voters, tolerates: $0.tolerates, state: $0.state,
                     open: $0.state == "open", latencyMs: $0.localLatencyMilliseconds >= 0 ? $0.localLatencyMilliseconds : nil,
                     voterLabels: ($0.voterIDs ?? []).map(label), question: question($0.kind, node: $0.node),
                     evidence: ($0.evidence ?? []).map { line in
                         // `node-…: offence` with the node shortened like everywhere on the page.
                         guard let colon = line.range(of: ": ") else { return line }
                         return label(String(line[..<colon.lowerBound])) + line[colon.lowerBound...]
                     })
        }
    }

    /// What a round of `kind` (the spore's wording) asks about `node`.
    public static func question(_ kind: String, node: String) -> String {
        switch kind {
        case "failure confirmation", "failure": return "has \(label(node)) failed?"
        case "sclerotium admission", "sclerotium": return "may \(label(node)) become a sclerotium?"
        default: return "\(kind) of \(label(node))"
        }
    }

    /// VMs without their kernel, initrd or command line (which may carry secrets).
    public static func vms(_ r: VMsResponse) -> [VMView] {
        r.vms.sorted { $0.name < $1.name }.map {
            VMView(name: $0.name, primary: $0.primary, replica: $0.replica ?? "none", protection: $0.protection,
                   rpoMs: $0.replication?.rpoMilliseconds, pauseP99Ms: $0.replication?.pauseP99Milliseconds, migration: $0.migration ?? "",
                   sync: $0.replication?.syncProgress.map { "\(Int((100 * $0.done / $0.total).rounded(.down)))% of \(ProgressLine.amount($0.total, .bytes))" } ?? "")
        }
    }

    /// Services without their spec (its environment may carry secrets).
    public static func services(_ r: ServicesResponse) -> [ServiceView] {
        r.services.sorted { $0.name < $1.name }.map { s in
            ServiceView(name: s.name, driver: s.driver, replicas: s.replicas, serving: s.serving, pending: s.pending,
                        instances: s.instances.map { "\($0.id) on \(label($0.node)): \($0.state)/\($0.health)" }, endpoints: s.endpoints)
        }
    }

    public static func volumes(_ r: VolumesResponse) -> [VolumeView] {
        r.volumes.sorted { $0.name < $1.name }.map {
            VolumeView(name: $0.name, sizeBytes: $0.sizeBytes, dataClass: $0.dataClass, state: $0.state, home: $0.home, usedBy: $0.usedBy ?? "")
        }
    }
}

/// What the dashboard remembers between polls: the events it has seen (read with `GET /v1/events?after=`
/// from the last number it saw, so a burst between polls is not missed; from an older agent without
/// that endpoint, the status's latest 30) and each member's trust over time. Bounded: at most `maxEvents` events and
/// `maxSamples` samples per member, oldest dropped first.
public struct DashboardHistory: Sendable, Equatable {
    public let maxEvents: Int
    public let maxSamples: Int
    public private(set) var events: [EventView] = []
    public private(set) var trust: [String: [TrustPoint]] = [:]
    private var seen: Set<String> = []
    private var seenOrder: [String] = []
    private var nextSeq = 1
    /// The number of the agent's latest event taken from `/v1/events` (the next read's `after`).
    public private(set) var lastAgentSeq: UInt64 = 0
    /// When the agent whose numbers those are started (its numbers restart with it).
    public private(set) var agentStartedAtMillis: Int64?
    /// Events the agent no longer kept when the dashboard asked (more than 200 between two polls).
    public private(set) var missedEvents: UInt64 = 0

    public init(maxEvents: Int = 500, maxSamples: Int = 240) {
        self.maxEvents = maxEvents; self.maxSamples = maxSamples
    }

    private mutating func append(_ line: String) {
        let (at, text) = DashboardModel.split(line)
        events.append(EventView(seq: nextSeq, at: at, text: text, kind: DashboardModel.kind(of: text)))
        nextSeq += 1
    }

    private mutating func trim() {
        if events.count > maxEvents { events.removeFirst(events.count - maxEvents) }
    }

    /// Adds the events of a `/v1/events?after=lastAgentSeq` answer: every event numbered above the last
    /// one taken. If the agent restarted (its start time changed, or its numbers went back), nothing
    /// is taken and the next read starts from 0, so its new events are taken once, in order. Events
    /// the agent no longer kept are counted and said in the timeline.
    public mutating func absorb(events r: EventsResponse) {
        if let started = agentStartedAtMillis, started != r.startedAtMillis || r.latestSeq < lastAgentSeq {
            agentStartedAtMillis = r.startedAtMillis
            lastAgentSeq = 0
            append("(the agent restarted; its events are read again from its first)")
            trim()
            return
        }
        agentStartedAtMillis = r.startedAtMillis
        let missed = r.missed(after: lastAgentSeq)
        if missed > 0 {
            missedEvents += missed
            append("(the dashboard missed \(missed) events: more than the agent keeps happened between two polls)")
        }
        for e in r.events where e.seq > lastAgentSeq {
            append(e.line)
            lastAgentSeq = e.seq
        }
        lastAgentSeq = max(lastAgentSeq, r.latestSeq)
        trim()
    }

    /// Adds a trust sample per member when its trust changed or 5 s passed, and, with `lines` (an
    /// agent without `/v1/events`), the status's events not seen before (each line carries its time stamp).
    public mutating func absorb(_ s: StatusResponse, at t: Double, lines: Bool = true) {
        for line in s.events where lines && !seen.contains(line) {
            seen.insert(line); seenOrder.append(line)
            append(line)
        }
        trim()
        // Remember more lines than events shown, so a line that scrolled out is not taken for new.
        if seenOrder.count > maxEvents * 2 {
            for old in seenOrder.prefix(seenOrder.count - maxEvents * 2) { seen.remove(old) }
            seenOrder.removeFirst(seenOrder.count - maxEvents * 2)
        }
        for m in s.members {
            let v = Double(m.trust) / 1_000_000
            var points = trust[m.id, default: []]
            if let last = points.last, last.trust == v, t - last.t < 5 { continue }
            points.append(TrustPoint(t: t, trust: v))
            if points.count > maxSamples { points.removeFirst(points.count - maxSamples) }
            trust[m.id] = points
        }
    }
}
