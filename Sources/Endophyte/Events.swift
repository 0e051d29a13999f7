// What the engine tells its caller: status, events and counters. Every state change is an event
// (for the log) and a counter (for metrics), so an operator can see why the source was paused.

/// What the engine does when the replica falls further behind than the RPO bound or cannot be
/// reached. Explicit in the configuration and repeated in the status, never implied.
public enum EmergencyPolicy: String, Sendable, Equatable {
    /// Pause the source: no write is lost beyond the bound, at the cost of availability.
    case pauseSource = "pause-source"
    /// Keep the source running without protection and say so in the status.
    case continueUnprotected = "continue-unprotected"
}

public enum ProtectionState: Sendable, Equatable, CustomStringConvertible {
    /// Not yet connected, or the first full copy is in progress.
    case syncing
    /// The replica holds a committed epoch within the RPO bound.
    case protected
    /// The emergency policy paused the source; `reason` says why.
    case emergencyPaused(reason: String)
    /// The emergency policy let the source run without an up-to-date replica.
    case unprotected(reason: String)
    /// Replication was stopped (end of a migration, or by the caller).
    case stopped

    public var description: String {
        switch self {
        case .syncing: return "syncing"
        case .protected: return "protected"
        case let .emergencyPaused(r): return "emergency-paused (\(r))"
        case let .unprotected(r): return "unprotected (\(r))"
        case .stopped: return "stopped"
        }
    }
}

/// One committed checkpoint.
public struct EpochReport: Sendable, Equatable {
    public var epoch: UInt64
    /// Pages sent while the source ran.
    public var pagesStreamed: Int
    /// Pages sent while the source was paused (the last dirty set).
    public var pagesAtPause: Int
    /// Source paused → resumed (or → committed, for a migration's blackout), seconds.
    public var pauseSeconds: Double
    /// Start of the epoch → ack, seconds.
    public var epochSeconds: Double
    public var bytesSent: Int
    public var deviceStateBytes: Int
    /// Where the pause went: the pause hook, the last collect, sending the last pages and the
    /// commit, waiting for the ack (the replica applying the epoch), the resume hook. Seconds.
    public var pauseHookSeconds: Double = 0
    public var finalCollectSeconds: Double = 0
    public var finalSendSeconds: Double = 0
    public var ackWaitSeconds: Double = 0
    public var resumeHookSeconds: Double = 0
}

public enum EndophyteEvent: Sendable, Equatable {
    case connected(replicaEpoch: UInt64)
    /// A connection brought the replica up to date (a full copy or a resync by hashes).
    case synced(SyncReport)
    case epochCommitted(EpochReport)
    case throttleChanged(level: Double, pressure: Double)
    case emergency(reason: String, policy: EmergencyPolicy)
    case protectionRestored(epoch: UInt64)
    case migration(MigrationTransition)
    /// Replica side: an epoch was discarded because its source went away before committing it.
    case stagingDiscarded(epoch: UInt64, pages: Int)
    case replicaCommitted(epoch: UInt64, pages: Int)
    case activated(epoch: UInt64)
}

public struct ReplicationStatus: Sendable, Equatable {
    public var state: ProtectionState = .syncing
    public var policy: EmergencyPolicy
    public var rpoBound: Double
    public var committedEpoch: UInt64 = 0
    /// Seconds since the last committed checkpoint was taken: the data a crash would lose now.
    public var secondsSinceCommit: Double = .infinity
    public var throttleLevel: Double = 0
    public var pressure: Double = 0
    public var bandwidthBytesPerSecond: Double?
    public var epochs: Int = 0
    public var pagesSent: Int = 0
    /// Of `pagesSent`, pages that were all zeros and travelled as an index only.
    public var zeroPagesSent: Int = 0
    public var bytesSent: UInt64 = 0
    public var emergencies: Int = 0
    public var lastPauseSeconds: Double = 0
    /// Bytes the tracker holds (hashes, vectors) plus the engine's bitmaps.
    public var trackingFootprintBytes: Int = 0
    /// How the last connection synced the replica.
    public var lastSync: SyncReport?
    /// The current (or last) connection's sync while it streams: the pages it sends (a full copy: every
    /// page; a resync: those whose hash differed; nil before the first connection computed it) and
    /// those sent so far, updated per message, so a caller can show a bar with a rate and an ETA.
    /// Pages written during the sync go out at its boundary and are not counted here.
    public var syncPagesTotal: Int?
    public var syncPagesDone: Int = 0
}
