// The agent's metrics, through swift-metrics. `myceliumd` bootstraps the metrics system with a
// Prometheus registry (`AgentMetrics.registry`); the text format is served at GET /metrics on the
// local API socket and, when `metrics_listen` is set, on that TCP address for Prometheus to scrape.
// Names follow Prometheus conventions (mycelium_ prefix, _total for counters, base units).

import Metrics
import MyceliumControl
import MyceliumRaft
import Prometheus

public enum AgentMetrics {
    /// The registry `myceliumd` hands to `MetricsSystem.bootstrap(PrometheusMetricsFactory(registry:))`.
    public static let registry = PrometheusCollectorRegistry()
}

/// The agent's instruments. Created once per agent; updated from the actor.
struct AgentInstruments {
    let term = Gauge(label: "mycelium_raft_term")
    let commitIndex = Gauge(label: "mycelium_raft_commit_index")
    let appliedIndex = Gauge(label: "mycelium_raft_applied_index")
    let isLeader = Gauge(label: "mycelium_raft_is_leader")
    let hasLeader = Gauge(label: "mycelium_raft_has_leader")
    let leaderChanges = Counter(label: "mycelium_raft_leader_changes_total")
    let voters = Gauge(label: "mycelium_raft_voters")
    let learners = Gauge(label: "mycelium_raft_learners")
    let membersAlive = Gauge(label: "mycelium_members", dimensions: [("status", "alive")])
    let membersSuspect = Gauge(label: "mycelium_members", dimensions: [("status", "suspect")])
    let membersFailed = Gauge(label: "mycelium_members", dimensions: [("status", "failed")])
    let linksConnected = Gauge(label: "mycelium_peer_links_connected")
    let fallback = Gauge(label: "mycelium_fallback_active")
    let walSaves = Counter(label: "mycelium_wal_saves_total")
    let failuresRecorded = Counter(label: "mycelium_failures_recorded_total")
    let votesOpened = Counter(label: "mycelium_votes_opened_total")
    let votesDecidedYes = Counter(label: "mycelium_votes_decided_total", dimensions: [("result", "yes")])
    let votesDecidedNo = Counter(label: "mycelium_votes_decided_total", dimensions: [("result", "no")])
    let votesClosed = Counter(label: "mycelium_votes_closed_total")
    let slashings = Counter(label: "mycelium_slashings_total")
    let sporeEpochIndex = Gauge(label: "mycelium_spore_epoch_index")
}

extension AgentInstruments {
    func count(_ m: GovernorMetric) {
        switch m {
        case .votesOpened: votesOpened.increment()
        case .votesDecidedYes: votesDecidedYes.increment()
        case .votesDecidedNo: votesDecidedNo.increment()
        case .votesClosed: votesClosed.increment()
        case .slashings: slashings.increment()
        case .failuresRecorded: failuresRecorded.increment()
        }
    }
}

extension Agent {
    /// Refreshes the gauges (once a second).
    func updateGauges() {
        let m = instruments
        m.term.record(Double(raft.term))
        m.commitIndex.record(Double(raft.commitIndex))
        m.appliedIndex.record(Double(raft.appliedIndex))
        m.isLeader.record(raft.role == .leader ? 1 : 0)
        m.hasLeader.record(raft.leader == .none ? 0 : 1)
        m.voters.record(Double(raft.confState.voters.count))
        m.learners.record(Double(raft.confState.learners.count))
        let statuses = spore.members.values.map(\.status)
        m.membersAlive.record(Double(statuses.filter { $0 == .alive }.count))
        m.membersSuspect.record(Double(statuses.filter { $0 == .suspect }.count))
        m.membersFailed.record(Double(statuses.filter { $0 == .failed }.count))
        m.linksConnected.record(Double(router.links.values.filter { $0.connectedAddress != nil }.count))
        m.fallback.record(fallback == nil ? 0 : 1)
        m.sporeEpochIndex.record(Double(spore.epoch.index))
    }
}

import ServiceLifecycle

/// The agent as a swift-service-lifecycle service: `myceliumd` runs it in a `ServiceGroup` that turns
/// SIGTERM and SIGINT into a graceful shutdown (listeners, links, then the Raft log, in that order).
extension Agent: Service {
    public func run() async throws {
        try await start()
        try? await gracefulShutdown()  // returns on graceful shutdown; throws if cancelled: stop either way
        logger.notice("graceful shutdown requested: stopping")
        await stop()
    }
}
