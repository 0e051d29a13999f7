// Supervises one k3s process: started in a cgroup of its own through the process runtime (so stopping
// it kills everything it started: containerd, shims, pods), its output in a rotated log
// (HOME/k3s/run/instances/k3s/), restarted when it ends with a delay that doubles from 500 ms to 30 s
// (back to 500 ms after a run of 60 s), stopped for good by `stop()` (the agent stopping, or the
// node no longer running K3s).

import Foundation
import K3sController
import ServiceRuntime
import Synchronization

public final class K3sSupervisor: Sendable {
    public static let instanceID = "k3s"
    public static let firstDelayMillis: UInt64 = 500
    public static let maxDelayMillis: UInt64 = 30_000
    public static let stableMillis: UInt64 = 60_000

    struct State {
        /// What should run (nil: nothing).
        var wanted: [String]?
        var environment: [String: String] = [:]
        /// The runtime's start time of the process this supervisor started last and watches (nil:
        /// none): the exit of a copy being replaced or stopped is not taken for a crash.
        var watched: UInt64?
        /// Bumped by every start and stop: a restart scheduled for an older epoch does nothing.
        var epoch: UInt64 = 0
        var restarts: UInt32 = 0
        var consecutive: UInt32 = 0
        var startedAt: UInt64 = 0
    }
    let state = Mutex(State())
    let runtime: ProcessRuntime
    let report: @Sendable (K3sProcessState) -> Void

    /// `directory`: the runtime's state directory (HOME/k3s/run). A k3s an earlier run of the agent
    /// left is killed first.
    public init(directory: String, report: @escaping @Sendable (K3sProcessState) -> Void) throws {
        let ref = SupervisorRef()
        runtime = try ProcessRuntime(stateDirectory: directory, onChange: { s in ref.get()?.changed(s) })
        self.report = report
        ref.set(self)
        runtime.cleanupLeftovers()
    }

    /// The delay before restart number `consecutive + 1`.
    public static func delay(consecutive: UInt32) -> UInt64 {
        min(maxDelayMillis, firstDelayMillis << UInt64(min(consecutive, 10)))
    }

    /// Runs `argv` (replacing what runs if it differs, or when `restart`).
    public func run(_ argv: [String], environment: [String: String], restart: Bool) async {
        let same = state.withLock { $0.wanted == argv }
        if same && !restart && runtime.status(Self.instanceID)?.state.isRunning == true { return }
        let epoch = state.withLock { s -> UInt64 in
            s.wanted = argv; s.environment = environment; s.epoch += 1; s.consecutive = 0; s.watched = nil; return s.epoch
        }
        await runtime.stop(Self.instanceID, graceMillis: 10_000)
        start(epoch: epoch)
    }

    func start(epoch: UInt64) {
        guard let (argv, environment) = state.withLock({ s in s.epoch == epoch ? s.wanted.map { ($0, s.environment) } : nil }) else { return }
        do {
            state.withLock { $0.startedAt = Self.monotonicMillis() }
            try runtime.start(InstanceSpec(id: Self.instanceID, command: argv, environment: environment))
            let started = runtime.status(Self.instanceID)?.startedAtMillis
            let stillRunning = state.withLock { s -> Bool in
                guard s.epoch == epoch else { return false }
                s.watched = started
                return true
            }
            if stillRunning { report(.running(restarts: state.withLock { $0.restarts })) }
            // It may have ended before it was watched.
            if let s = runtime.status(Self.instanceID), !s.state.isRunning, s.state != .starting { changed(s) }
        } catch {
            report(.failed("\(error)"))
            scheduleRestart(epoch: epoch, exit: "could not start: \(error)")
        }
    }

    func changed(_ s: InstanceStatus) {
        let exit: String
        switch s.state {
        case .exited(let code): exit = "exited with code \(code)"
        case .killed(let signal): exit = "killed by signal \(signal)"
        default: return
        }
        let epoch = state.withLock { st -> UInt64? in
            guard st.wanted != nil, let w = st.watched, w == s.startedAtMillis else { return nil }
            st.watched = nil
            return st.epoch
        }
        guard let epoch else { return }
        scheduleRestart(epoch: epoch, exit: exit)
    }

    func scheduleRestart(epoch: UInt64, exit: String) {
        let wait = state.withLock { s -> UInt64? in
            guard s.epoch == epoch, s.wanted != nil else { return nil }
            if Self.monotonicMillis() >= s.startedAt + Self.stableMillis { s.consecutive = 0 }
            let d = Self.delay(consecutive: s.consecutive)
            s.consecutive += 1; s.restarts += 1
            return d
        }
        guard let wait else { return }
        report(.restarting(lastExit: exit, restarts: state.withLock { $0.restarts }, retryInMillis: wait))
        Task {
            try? await Task.sleep(nanoseconds: wait * 1_000_000)
            self.start(epoch: epoch)
        }
    }

    /// Stops k3s and everything in its cgroup; nothing restarts it until the next `run`.
    public func stop() async {
        state.withLock { $0.wanted = nil; $0.epoch += 1; $0.watched = nil }
        await runtime.stop(Self.instanceID, graceMillis: 10_000)
        report(.stopped)
    }

    public var status: InstanceStatus? { runtime.status(Self.instanceID) }
    public func logs(maxBytes: Int) -> String { runtime.logs(Self.instanceID, maxBytes: maxBytes) }

    static func monotonicMillis() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
    }
}

/// The runtime's callback reaches its supervisor through this (weak: the supervisor owns the runtime).
final class SupervisorRef: @unchecked Sendable {
    private let lock = NSLock()
    private weak var supervisor: K3sSupervisor?
    func set(_ s: K3sSupervisor) { lock.lock(); supervisor = s; lock.unlock() }
    func get() -> K3sSupervisor? { lock.lock(); defer { lock.unlock() }; return supervisor }
}
