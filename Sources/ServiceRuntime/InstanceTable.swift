// What ProcessRuntime and PodmanRuntime share: the table of instances with its lock and its ordered
// reports, the steps every run goes through in it (claimed for a start, running, health verdicts,
// claimed for a stop, finished once, ended), the log pipe drained into a LogSink, and the worker for
// blocking calls. How a run starts, is watched and ends stays in each runtime.

import Foundation
import MyceliumCore

/// A run as the table sees it. The mutable fields are only touched under the table's lock.
protocol InstanceRun: AnyObject, Sendable {
    /// Runs the health check, when there is one.
    var monitor: HealthMonitor? { get }
    /// The run's process (or container) is known to be gone: no more health verdicts.
    var hasEnded: Bool { get }
    var stopping: Bool { get set }
    var finishing: Bool { get set }
    var finished: Completion { get }
}

final class RuntimeInstance<Run: InstanceRun>: @unchecked Sendable {
    let id: String
    var status: InstanceStatus
    let log: LogSink
    var run: Run?
    /// Between start()'s checks and the exec (or the container's start): no second start, and stop waits for it.
    var starting = false
    var counter: HealthCounter?

    init(id: String, log: LogSink) {
        self.id = id
        self.log = log
        self.status = InstanceStatus(id: id, state: .starting, health: .unknown, startedAtMillis: 0, exits: 0)
    }
}

final class InstanceTable<Run: InstanceRun>: @unchecked Sendable {
    // SAFETY (Sendable): `instances`, every instance's fields and the mutable fields of every run are
    // only touched under `lock`.
    let lock = NSLock()
    var instances: [String: RuntimeInstance<Run>] = [:]
    /// Holds a directory (with the log) per instance.
    let instancesDirectory: String
    let logMaxBytes: Int
    let logKeep: Int
    let onChange: @Sendable (InstanceStatus) -> Void
    let notifications: DispatchQueue

    init(instancesDirectory: String, logMaxBytes: Int, logKeep: Int, queueLabel: String,
         onChange: @escaping @Sendable (InstanceStatus) -> Void) {
        self.instancesDirectory = instancesDirectory
        self.logMaxBytes = logMaxBytes
        self.logKeep = logKeep
        self.onChange = onChange
        self.notifications = DispatchQueue(label: queueLabel)
    }

    func notifyLocked(_ status: InstanceStatus) {
        // Enqueued under the table lock, so reports arrive in the order the changes were made.
        let callback = onChange
        notifications.async { callback(status) }
    }

    /// Ends every health thread (the runtime is going away).
    func cancelMonitors() {
        lock.withLock { for inst in instances.values { inst.run?.monitor?.cancel() } }
    }

    // MARK: a run's steps

    /// Marks `id` as starting (a new instance, or one whose run has ended) and reports it; nil when it
    /// runs or starts already. `reset` clears more of the status, under the lock, before the report.
    func claimForStart(_ id: String, reset: (RuntimeInstance<Run>) -> Void = { _ in }) -> RuntimeInstance<Run>? {
        lock.withLock {
            let inst: RuntimeInstance<Run>
            if let existing = instances[id] {
                if existing.run != nil || existing.starting { return nil }
                inst = existing
            } else {
                inst = RuntimeInstance(id: id, log: LogSink(directory: instancesDirectory + "/" + id, maxBytes: logMaxBytes, keep: logKeep))
                instances[id] = inst
            }
            inst.starting = true
            inst.status.state = .starting
            inst.status.health = .unknown
            reset(inst)
            notifyLocked(inst.status)
            return inst
        }
    }

    /// The start failed: reports `error`.
    func startFailed(_ inst: RuntimeInstance<Run>, _ error: RuntimeError) {
        lock.withLock {
            inst.starting = false
            inst.status.state = .failed(error.description)
            notifyLocked(inst.status)
        }
    }

    /// The start succeeded: `run` is the instance's and reported running.
    func started(_ inst: RuntimeInstance<Run>, run: Run, pid: Int32, health: HealthCheck?, address: String = "") {
        lock.withLock {
            inst.starting = false
            inst.run = run
            inst.counter = health.map { HealthCounter(threshold: $0.threshold) }
            inst.status.state = .running(pid: pid)
            inst.status.startedAtMillis = monotonicMillis()
            inst.status.health = health == nil ? .healthy : .unknown
            inst.status.address = address
            notifyLocked(inst.status)
        }
    }

    /// A health verdict on `run`, counted while it is the instance's live run and not going.
    func recordHealth(of run: Run, in inst: RuntimeInstance<Run>, failure: String?) {
        lock.withLock {
            guard inst.run === run, !run.hasEnded, !run.stopping, !run.finishing, var counter = inst.counter else { return }
            let change = failure.map { counter.recordFailure($0) } ?? counter.recordSuccess()
            inst.counter = counter
            if let h = change {
                inst.status.health = h
                notifyLocked(inst.status)
            }
        }
    }

    /// True for the one caller that is to finish `run`; any other waits until that one is done and
    /// gets false.
    func claimFinish(_ run: Run) async -> Bool {
        let already = lock.withLock {
            defer { run.finishing = true }
            return run.finishing
        }
        if already { _ = await run.finished.wait() }
        return !already
    }

    /// Under the lock: `run` has ended as `state`; reported when it is still the instance's run.
    func endedLocked(_ run: Run, of inst: RuntimeInstance<Run>, as state: InstanceState) {
        guard inst.run === run else { return }
        inst.run = nil
        inst.counter = nil
        inst.status.exits += 1
        inst.status.state = state
        inst.status.health = .unknown
        inst.status.address = ""
        notifyLocked(inst.status)
    }

    /// Marks the instance's run as stopping (or forgets an instance that has none) and returns both;
    /// nil when unknown. An instance still starting is waited for (checked every `pollNanoseconds`).
    func claimForStop(_ id: String, pollNanoseconds: UInt64) async -> (RuntimeInstance<Run>, Run?)? {
        while true {
            let claimed: (RuntimeInstance<Run>, Run?)?? = lock.withLock {
                guard let inst = instances[id] else { return .some(nil) }
                if inst.starting { return nil }
                if let r = inst.run { r.stopping = true } else { forgetLocked(inst) }
                return .some((inst, inst.run))
            }
            if let claimed { return claimed }
            try? await Task.sleep(nanoseconds: pollNanoseconds)
        }
    }

    /// After a stop: forgets the instance unless it was started again meanwhile.
    func forgetIfIdle(_ id: String, _ inst: RuntimeInstance<Run>) {
        lock.withLock {
            if instances[id] === inst && inst.run == nil && !inst.starting { forgetLocked(inst) }
        }
    }

    private func forgetLocked(_ inst: RuntimeInstance<Run>) {
        instances[inst.id] = nil
        inst.log.close()
    }

    // MARK: queries

    var ids: Set<String> { lock.withLock { Set(instances.keys) } }

    func status(_ id: String) -> InstanceStatus? {
        lock.withLock { instances[id]?.status }
    }

    func all() -> [InstanceStatus] {
        lock.withLock { instances.values.map(\.status).sorted { $0.id < $1.id } }
    }

    func logs(_ id: String, maxBytes: Int) -> String {
        guard InstanceSpec.isValidID(id) else { return "" }
        let sink = lock.withLock { instances[id]?.log }
        let bytes = sink?.tail(maxBytes: maxBytes)
            ?? LogSink.tail(directory: instancesDirectory + "/" + id, keep: logKeep, maxBytes: maxBytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Removes the directories of instances this table does not know.
    func removeUnknownDirectories() {
        let known = ids
        let names = (try? FileManager.default.contentsOfDirectory(atPath: instancesDirectory)) ?? []
        for name in names where !known.contains(name) {
            try? FileManager.default.removeItem(atPath: instancesDirectory + "/" + name)
        }
    }
}

extension Poller {
    /// Reads the log pipe `fd` into `log` on the poll thread until its end, then closes it and
    /// completes `closed`.
    func drain(_ fd: Int32, into log: LogSink, closed: Completion) {
        // SAFETY: only the poll thread uses the buffer (the handler runs there), and it is freed in the
        // removal step, after which the poller never calls this handler again.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 16)
        add(fd: fd) { _ in
            let n = read(fd, buffer.baseAddress, buffer.count)
            if n > 0 {
                log.append(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                return .keep
            }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { return .keep }
            // End of file: every process holding the pipe is gone.
            return .remove(then: {
                close(fd)
                buffer.deallocate()
                closed.complete()
            })
        }
    }
}

/// Runs `body` on a Dispatch worker: blocking loops (kill until empty, rmdir retries, podman
/// commands) stay off the cooperative pool.
@discardableResult
func onWorker<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { c in DispatchQueue.global().async { c.resume(returning: body()) } }
}

/// Runs `stop` for every id, in parallel.
func stopEach(_ ids: Set<String>, _ stop: @escaping @Sendable (String) async -> Void) async {
    await withTaskGroup(of: Void.self) { group in
        for id in ids { group.addTask { await stop(id) } }
    }
}
