// Planned migration in two phases, as a state machine:
//
//   converging ──(remaining small)──► turbo ──(remaining tiny, or rounds used up)──► blackout
//        │  └──────────(remaining tiny)──────────────────────────────────────────────┘   │
//        │                                                                               ▼
//        └──── any failure before the switch ────► rolledBack            switching (owner recorded)
//                                                                                         │
//                                                                                         ▼
//                                                                                     switched
//
// Phase one (converge, turbo) is QEMU's iterative pre-copy (migration/ram.c): rounds over the dirty
// set while the source runs, throttled so the rounds shrink; "turbo" then widens the transport and
// lifts the source's bandwidth share once what is left is small. Phase two is the blackout: pause,
// last pages and device state, commit. The switch is atomic through the caller's owner record (a
// Raft entry, for Mycelium): the destination may only start after the record exists, and the source
// may never resume after it, so exactly one side runs. Any failure before the record rolls back:
// the destination drops its staging and the source resumes.
//
// The state machine is pure (no clock, no I/O): `PlannedMigration` feeds it observations and
// carries out what it decides, so it can be tested and simulated on its own.

import DirtyPages

#if canImport(Glibc)
import Glibc
#endif

public enum MigrationPhase: String, Sendable, Equatable {
    case idle, converging, turbo, blackout, switching, switched, rolledBack
}

public struct MigrationTransition: Sendable, Equatable, CustomStringConvertible {
    public var from: MigrationPhase
    public var to: MigrationPhase
    public var reason: String
    /// Seconds since the migration started (the caller's clock).
    public var at: Double
    public var description: String { "\(from) → \(to) at \(fmtSeconds(at)): \(reason)" }
}

public struct MigrationPolicy: Sendable, Equatable {
    /// Converge rounds before moving to turbo whatever the remaining set.
    public var maxConvergeRounds: Int
    /// Remaining dirty bytes per round at or below which turbo starts.
    public var turboEntryBytes: Int
    /// Remaining dirty bytes at or below which the blackout starts (bounds the downtime).
    public var blackoutEntryBytes: Int
    /// Turbo rounds before the blackout starts whatever the remaining set.
    public var maxTurboRounds: Int
    /// Streams and bandwidth share to ask for in turbo.
    public var turboStreams: Int
    public var turboBandwidthShare: Double
    /// If the set never gets below `blackoutEntryBytes`, roll back instead of forcing a long blackout.
    public var rollbackIfNotConverged: Bool
    /// Throttle curve during convergence rounds (pressure = round's dirty bytes vs. link).
    public var convergeThrottle: ThrottleCurve

    public init(maxConvergeRounds: Int = 30, turboEntryBytes: Int = 64 << 20, blackoutEntryBytes: Int = 1 << 20,
                maxTurboRounds: Int = 10, turboStreams: Int = 4, turboBandwidthShare: Double = 1.0,
                rollbackIfNotConverged: Bool = false, convergeThrottle: ThrottleCurve = .standard) {
        self.maxConvergeRounds = maxConvergeRounds
        self.turboEntryBytes = turboEntryBytes
        self.blackoutEntryBytes = blackoutEntryBytes
        self.maxTurboRounds = maxTurboRounds
        self.turboStreams = turboStreams
        self.turboBandwidthShare = turboBandwidthShare
        self.rollbackIfNotConverged = rollbackIfNotConverged
        self.convergeThrottle = convergeThrottle
    }
}

/// Pure migration state machine.
public struct MigrationStateMachine: Sendable, Equatable {
    public let policy: MigrationPolicy
    public private(set) var phase: MigrationPhase = .idle
    public private(set) var convergeRounds = 0
    public private(set) var turboRounds = 0
    public private(set) var transitions: [MigrationTransition] = []

    public init(policy: MigrationPolicy) { self.policy = policy }

    private mutating func move(to p: MigrationPhase, _ reason: String, at: Double) {
        transitions.append(MigrationTransition(from: phase, to: p, reason: reason, at: at))
        phase = p
    }

    public mutating func start(at: Double) {
        precondition(phase == .idle, "a migration starts once")
        move(to: .converging, "migration started", at: at)
    }

    /// A pre-copy round finished; `remainingBytes` is what it found dirty (and sent).
    public mutating func roundCompleted(remainingBytes: Int, at: Double) {
        switch phase {
        case .converging:
            convergeRounds += 1
            if remainingBytes <= policy.blackoutEntryBytes {
                move(to: .blackout, "\(remainingBytes) dirty bytes left, at or below the blackout bound \(policy.blackoutEntryBytes)", at: at)
            } else if remainingBytes <= policy.turboEntryBytes {
                move(to: .turbo, "\(remainingBytes) dirty bytes left, at or below the turbo bound \(policy.turboEntryBytes)", at: at)
            } else if convergeRounds >= policy.maxConvergeRounds {
                move(to: .turbo, "\(convergeRounds) converge rounds used, \(remainingBytes) bytes still dirty", at: at)
            }
        case .turbo:
            turboRounds += 1
            if remainingBytes <= policy.blackoutEntryBytes {
                move(to: .blackout, "\(remainingBytes) dirty bytes left, at or below the blackout bound", at: at)
            } else if turboRounds >= policy.maxTurboRounds {
                if policy.rollbackIfNotConverged {
                    move(to: .rolledBack, "did not converge: \(remainingBytes) bytes dirty after \(turboRounds) turbo rounds", at: at)
                } else {
                    move(to: .blackout, "\(turboRounds) turbo rounds used; forcing the blackout with \(remainingBytes) bytes dirty", at: at)
                }
            }
        default:
            preconditionFailure("round completed in phase \(phase)")
        }
    }

    /// The final pages and device state are committed on the destination; the source is paused.
    public mutating func blackoutCommitted(at: Double) {
        precondition(phase == .blackout)
        move(to: .switching, "final epoch committed on the destination", at: at)
    }

    /// The new owner is recorded: from here on only the destination may run.
    public mutating func ownerRecorded(at: Double) {
        precondition(phase == .switching)
        move(to: .switched, "new owner recorded; destination activated", at: at)
    }

    /// A failure. Before the owner record it rolls back (returns true: resume the source); after it
    /// the migration has happened and the source must stay stopped (returns false).
    @discardableResult
    public mutating func failed(_ reason: String, at: Double) -> Bool {
        switch phase {
        case .switched, .rolledBack:
            return false
        case .switching:
            // The owner record may or may not have landed; only the record decides. The caller asks
            // the record; this machine records the attempt as a rollback only if told it did not land.
            move(to: .rolledBack, "failed before the owner was recorded: \(reason)", at: at)
            return true
        default:
            move(to: .rolledBack, reason, at: at)
            return true
        }
    }
}

/// What the caller does at the switch, and how it widens the link in turbo.
public struct MigrationHooks: Sendable {
    /// Durably records the destination as the owner (e.g. a Raft-committed assignment). Throwing
    /// means "not recorded": the migration rolls back.
    public var recordOwner: @Sendable () throws -> Void
    /// Gives replication a larger share of the link (turbo); 0...1.
    public var setBandwidthShare: @Sendable (Double) -> Void
    /// Asked at a rollback: may the source resume? False leaves it paused (the caller knows it no
    /// longer may run it, e.g. its lease lapsed meanwhile) and resumes it later, or never.
    public var mayResume: @Sendable () -> Bool

    public init(recordOwner: @escaping @Sendable () throws -> Void, setBandwidthShare: @escaping @Sendable (Double) -> Void = { _ in },
                mayResume: @escaping @Sendable () -> Bool = { true }) {
        self.recordOwner = recordOwner
        self.setBandwidthShare = setBandwidthShare
        self.mayResume = mayResume
    }
}

public struct MigrationReport: Sendable, Equatable {
    public var outcome: MigrationPhase
    public var totalSeconds: Double
    /// Source paused → destination activated.
    public var blackoutSeconds: Double
    public var convergeRounds: Int
    public var turboRounds: Int
    public var bytesSent: UInt64
    public var transitions: [MigrationTransition]
    /// False when the destination did not confirm `activate` in time. The switch still happened (the
    /// owner record decides); the destination must then start from the record on its own.
    public var activationConfirmed: Bool
}

/// Drives a planned migration over a connected `ReplicationSource` (whose replica is the
/// destination). The source's workload keeps running through phase one.
public enum PlannedMigration {
    public static func run(source: ReplicationSource, policy: MigrationPolicy, hooks: MigrationHooks) throws(EndophyteError) -> MigrationReport {
        guard let t = source.transport else { throw EndophyteError(.invalidState("migration needs a connected destination")) }
        var sm = MigrationStateMachine(policy: policy)
        let t0 = monotonicSeconds()
        let sentAtStart = t.bytesSent
        var blackoutStart = 0.0
        var logged = 0
        func publish() {
            while logged < sm.transitions.count {
                source.onEvent(.migration(sm.transitions[logged]))
                logged += 1
            }
        }
        var throttle = ThrottleController(curve: policy.convergeThrottle)
        sm.start(at: 0)
        publish()
        do throws(EndophyteError) {
            // Phase one: rounds inside one open epoch. Pages stream while the source runs; nothing is
            // committed until the blackout, so a rollback leaves the destination on its last epoch.
            let epochStart = monotonicSeconds()
            var streamed = 0
            var sendSeconds = 0.0
            while sm.phase == .converging || sm.phase == .turbo {
                let roundStart = monotonicSeconds()
                var roundSend = 0.0
                let n = try source.streamDirty(sendSeconds: &roundSend)
                sendSeconds += roundSend
                streamed += n
                let bytes = n * dirtyPageSize
                if sm.phase == .converging {
                    let level = throttle.observe(bytes: bytes, sendSeconds: roundSend, interval: max(source.config.streamInterval, monotonicSeconds() - roundStart))
                    source.hooks.throttle(level)
                }
                let before = sm.phase
                sm.roundCompleted(remainingBytes: bytes, at: monotonicSeconds() - t0)
                publish()
                if before == .converging && sm.phase == .turbo {
                    t.setStreamCount(policy.turboStreams)
                    hooks.setBandwidthShare(policy.turboBandwidthShare)
                    source.hooks.throttle(0)
                }
                if sm.phase == .rolledBack { throw EndophyteError(.migrationRolledBack(reason: sm.transitions.last!.reason)) }
                // Let the workload dirty a little between rounds rather than spinning on an empty set.
                if n == 0 { usleep(UInt32(source.config.streamInterval * 1e6)) }
            }
            // Phase two: blackout. Drain what is in flight first, while the source still runs; then
            // the boundary pauses the source and does not resume it.
            try source.drain()
            blackoutStart = monotonicSeconds()
            _ = try source.boundary(epochStart: epochStart, streamed: streamed, streamedSendSeconds: sendSeconds, resumeAfter: false)
            sm.blackoutCommitted(at: monotonicSeconds() - t0)
            publish()
            // The atomic switch.
            do { try hooks.recordOwner() } catch {
                throw EndophyteError(.hookFailed(hook: "record owner", reason: "\(error)"))
            }
        } catch {
            // Rollback: the destination drops anything staged; the source resumes as the owner.
            sm.failed("\(error)", at: monotonicSeconds() - t0)
            publish()
            try? t.send(.abort, Array("migration rolled back: \(error)".utf8))
            source.hooks.throttle(0)
            hooks.setBandwidthShare(0)
            t.setStreamCount(1)
            if hooks.mayResume() { try source.resumeSource() }
            if case .migrationRolledBack = error.code { throw error }
            throw EndophyteError(.migrationRolledBack(reason: "\(error)"))
        }
        sm.ownerRecorded(at: monotonicSeconds() - t0)
        publish()
        // From here the destination is the owner whatever happens: the source stays paused. If the
        // activate message is lost, the destination starts from the owner record on its own.
        var activateError: EndophyteError?
        do {
            try t.send(.activate, Wire.u64Body(source.nextEpoch - 1))
            _ = try t.expect(.activated, timeout: source.config.ackTimeout)
        } catch {
            activateError = error
        }
        let end = monotonicSeconds()
        source.detach()
        let report = MigrationReport(outcome: sm.phase, totalSeconds: end - t0, blackoutSeconds: end - blackoutStart,
                                     convergeRounds: sm.convergeRounds, turboRounds: sm.turboRounds,
                                     bytesSent: t.bytesSent - sentAtStart, transitions: sm.transitions,
                                     activationConfirmed: activateError == nil)
        return report
    }
}
