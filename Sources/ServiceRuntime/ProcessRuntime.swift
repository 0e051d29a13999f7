// The `process` workload driver: runs service instances as real processes, each in its own working
// directory and cgroup, captures their output into rotated logs, watches their exits and health, and
// reports every change. It never restarts anything: the controller decides, the runtime only reports.
//
// Threads: the caller's (start/status/logs are synchronous and quick; stop is async), one poll thread
// for all pipes and pidfds (Poller), one health thread per instance with a check, and Dispatch workers
// for the blocking parts of ending a run (killing the rest of a cgroup, removing it). onChange is called
// on a private serial queue, in the order the changes happened.

import CSpawn
import Foundation
import MyceliumCore

public final class ProcessRuntime: Sendable {
    /// The state directory, canonical (symlinks resolved).
    public let stateDirectory: String
    let instancesDirectory: String
    let tree: CgroupTree
    let poller: Poller
    let table: InstanceTable<Run>

    /// Opens the runtime on `stateDirectory` (created if missing) and detects the cgroup layout.
    /// Instances of an earlier run of the same directory are left alone until `cleanupLeftovers()`.
    /// Call `stopAll()` before letting go of the runtime: instances still running then are no longer
    /// watched (as after an agent crash) until another runtime's `cleanupLeftovers()`.
    public convenience init(
        stateDirectory: String, logMaxBytes: Int = 10 << 20, logKeep: Int = 3,
        onChange: @escaping @Sendable (InstanceStatus) -> Void
    ) throws {
        try self.init(stateDirectory: stateDirectory, logMaxBytes: logMaxBytes, logKeep: logKeep,
                      cgroupLayout: CgroupLayout.detect(), onChange: onChange)
    }

    init(
        stateDirectory: String, logMaxBytes: Int, logKeep: Int, cgroupLayout: CgroupLayout,
        onChange: @escaping @Sendable (InstanceStatus) -> Void
    ) throws(RuntimeError) {
        let instances = stateDirectory + "/instances"
        do {
            try AtomicFile.makeDirectory(instances)
        } catch {
            if case let .system(op, e) = error.code { throw RuntimeError(instance: nil, .stateDirectory(path: error.path, operation: op, errno: e)) }
            throw RuntimeError(instance: nil, .stateDirectory(path: instances, operation: "mkdir", errno: EIO))
        }
        guard let real = realpath(stateDirectory, nil) else {
            throw RuntimeError(instance: nil, .stateDirectory(path: stateDirectory, operation: "realpath", errno: errno))
        }
        self.stateDirectory = String(cString: real)
        free(real)
        self.instancesDirectory = self.stateDirectory + "/instances"
        self.table = InstanceTable(instancesDirectory: instancesDirectory, logMaxBytes: logMaxBytes, logKeep: logKeep,
                                   queueLabel: "mycelium.service-runtime.notify", onChange: onChange)
        self.tree = CgroupTree(layout: cgroupLayout, prefix: Self.prefix(for: self.stateDirectory))
        self.poller = try Poller()
    }

    deinit {
        table.cancelMonitors()
        poller.shutdown()
    }

    /// Names this runtime's cgroups: the same directory always gives the same prefix, so a restarted agent
    /// finds its earlier run's cgroups, and runtimes on other directories never touch each other's.
    static func prefix(for canonicalDirectory: String) -> String {
        let h = CRC32C.checksum(Array(canonicalDirectory.utf8))
        let hex = String(h, radix: 16)
        return String(repeating: "0", count: 8 - hex.count) + hex
    }

    /// The cgroup layout in use (for diagnostics).
    public var cgroupDescription: String { tree.layout.description }

    // MARK: starting

    /// Starts the instance: working directory, cgroup with its limits, then the process, which is inside
    /// the cgroup before it executes anything. Returns once the exec has succeeded; throws a RuntimeError
    /// (command not found, cgroup failure, …) otherwise, and the status then says `.failed`. An instance
    /// that has ended may be started again under the same id (its `exits` count carries on).
    public func start(_ spec: InstanceSpec) throws {
        try spec.validate()
        let id = spec.id
        let dir = instancesDirectory + "/" + id
        guard let inst = table.claimForStart(id) else { throw RuntimeError(instance: id, .alreadyRunning) }
        do {
            try launch(inst, spec: spec, directory: dir)
        } catch {
            table.startFailed(inst, error)
            throw error
        }
    }

    private func launch(_ inst: Instance, spec: InstanceSpec, directory dir: String) throws(RuntimeError) {
        if mkdir(dir, 0o755) != 0 && errno != EEXIST {
            throw RuntimeError(instance: spec.id, .stateDirectory(path: dir, operation: "mkdir", errno: errno))
        }
        let cgroup = try tree.create(id: spec.id, cpuMillis: spec.cpuMillis, memoryMiB: spec.memoryMiB)
        var fds: [Int32] = [-1, -1]
        let pe = cspawn_output_pipe(&fds)
        if pe != 0 {
            cgroup.remove(deadlineMillis: monotonicMillis())
            throw RuntimeError(instance: spec.id, .spawn(stage: "pipe for the log", errno: pe))
        }
        let process: SpawnedProcess
        do {
            process = try Spawner.spawn(instance: spec.id, command: spec.command, environment: spec.environment,
                                        cwd: dir, cgroup: cgroup, output: fds[1])
        } catch {
            close(fds[0])
            close(fds[1])
            cgroup.remove(deadlineMillis: monotonicMillis() + 1000)
            throw error
        }
        close(fds[1])

        let run = Run(instance: inst, pid: process.pid, pidfd: process.pidfd, cgroup: cgroup,
                      check: spec.health)
        table.started(inst, run: run, pid: process.pid, health: spec.health)

        poller.drain(fds[0], into: inst.log, closed: run.outputClosed)
        watchExit(of: run)
        if let check = spec.health, let monitor = run.monitor {
            let (id, env) = (spec.id, spec.environment)
            monitor.start(
                intervalMillis: check.intervalMillis, name: id,
                probe: { HealthProbe.run(check, instance: id, cwd: dir, environment: env, cgroup: cgroup) },
                report: { [weak self] result in self?.table.recordHealth(of: run, in: inst, failure: result) })
        }
    }

    private func watchExit(of run: Run) {
        poller.add(fd: run.pidfd) { [weak self] _ in
            var killed: Int32 = 0, code: Int32 = 0
            let rc = cspawn_reap(run.pidfd, 1, &killed, &code)
            if rc == EAGAIN { return .keep }
            let end: Run.End = rc != 0 ? .lost(rc) : killed != 0 ? .killed(code) : .exited(code)
            return .remove(then: {
                Task { await self?.processEnded(run, end) }
            })
        }
    }

    /// The main process has been reaped. Unless a stop is under way (stop drives the rest itself, with
    /// its grace period), whatever it left in its cgroup is killed now, so a restart starts clean.
    private func processEnded(_ run: Run, _ end: Run.End) async {
        let stopping = table.lock.withLock {
            run.end = end
            return run.stopping
        }
        run.reaped.complete()
        if stopping { return }
        run.monitor?.cancel()
        await onWorker { run.cgroup.killAll(deadlineMillis: monotonicMillis() + 30_000) }
        await finish(run)
    }

    /// Ends a run once its main process is reaped and its cgroup empty: removes the cgroup, records the
    /// exit and reports it. Idempotent; every caller returns once it is done.
    private func finish(_ run: Run) async {
        guard await table.claimFinish(run) else { return }
        let started = monotonicMillis()

        if let monitor = run.monitor, let check = run.check {
            // An exec check may have been spawned into the cgroup after it was emptied. Once the health
            // thread is gone no new one can come; killing the cgroup meanwhile ends one in flight at once
            // (a tcp or http probe ends by its own timeout).
            monitor.cancel()
            while !monitor.exited.isDone {
                await onWorker { run.cgroup.killAll(deadlineMillis: monotonicMillis() + 30_000) }
                _ = await monitor.exited.wait(timeoutMillis: 50)
                if monotonicMillis() > started + UInt64(check.timeoutMillis) + 5000 { break }
            }
            await onWorker { run.cgroup.killAll(deadlineMillis: monotonicMillis() + 30_000) }
        }
        // The log is complete when the pipe's last writer is gone; a process that passed its stdout on
        // outside the cgroup cannot hold the report back for long.
        _ = await run.outputClosed.wait(timeoutMillis: 2000)
        await onWorker { run.cgroup.remove(deadlineMillis: monotonicMillis() + 2000) }

        recordEnd(of: run)
        run.finished.complete()
    }

    private func recordEnd(of run: Run) {
        table.lock.lock()
        defer { table.lock.unlock() }
        close(run.pidfd)
        run.pidfdClosed = true
        let state: InstanceState
        switch run.end ?? .lost(0) {
        case let .exited(code): state = .exited(code: code)
        case let .killed(sig): state = .killed(signal: sig)
        case let .lost(e): state = .failed("the exit status was lost (\(errnoText(e))): another part of the agent reaped the process")
        }
        table.endedLocked(run, of: run.instance, as: state)
    }

    // MARK: stopping

    /// Stops the instance: SIGTERM to every process in its cgroup (and its process group), SIGKILL to
    /// whatever is left after `graceMillis`; returns when all are gone and the cgroup is removed. The
    /// instance is then forgotten (status nil); its directory and log stay until cleanupLeftovers.
    public func stop(_ id: String, graceMillis: UInt32 = 5000) async {
        // An instance still starting is between its checks and the exec (milliseconds): that is waited for, then stopped.
        guard let (inst, maybeRun) = await table.claimForStop(id, pollNanoseconds: 2_000_000), let run = maybeRun else { return }
        run.monitor?.cancel()  // no health verdicts, and no new exec check, while the instance goes

        let deadline = monotonicMillis() + UInt64(graceMillis)
        signalMainAndGroup(run, SIGTERM)
        run.cgroup.signalAll(SIGTERM)
        var gone = await run.reaped.wait(timeoutMillis: UInt64(graceMillis))
        if gone { gone = await waitEmpty(run.cgroup, untilMillis: deadline) }
        if !gone {
            signalMainAndGroup(run, SIGKILL)
            await onWorker { run.cgroup.killAll(deadlineMillis: monotonicMillis() + 30_000) }
            // A SIGKILLed process is reaped as soon as the kernel has torn it down.
            _ = await run.reaped.wait()
        }
        await finish(run)
        table.forgetIfIdle(id, inst)
    }

    /// Stops every instance, in parallel.
    public func stopAll() async {
        await stopEach(table.ids) { await self.stop($0) }
    }

    private func signalMainAndGroup(_ run: Run, _ signal: Int32) {
        // Under the lock: the pidfd is closed under it too, and after the reap the pid (and so the process
        // group id) could be reused, so neither is used then (the cgroup still reaches everything).
        table.lock.lock()
        defer { table.lock.unlock() }
        guard !run.pidfdClosed, run.end == nil else { return }
        _ = cspawn_pidfd_kill(run.pidfd, signal)
        _ = kill(-run.pid, signal)
    }

    private func waitEmpty(_ cgroup: InstanceCgroup, untilMillis deadline: UInt64) async -> Bool {
        // cgroup v1 has no "became empty" event; poll at a pace that keeps stop() prompt.
        while true {
            if cgroup.isEmpty { return true }
            if monotonicMillis() >= deadline { return false }
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
    }

    // MARK: queries

    public func status(_ id: String) -> InstanceStatus? { table.status(id) }

    /// Every known instance, by id.
    public func all() -> [InstanceStatus] { table.all() }

    /// The last `maxBytes` of the instance's output across `log` and its rotated files (also after stop,
    /// while the directory exists). Invalid UTF-8 shows as U+FFFD.
    public func logs(_ id: String, maxBytes: Int) -> String { table.logs(id, maxBytes: maxBytes) }

    /// Path of the instance's working directory (holds `log`).
    public func directory(of id: String) -> String { instancesDirectory + "/" + id }

    // MARK: leftovers

    /// Kills and removes what an earlier run on this state directory left behind (the agent restarted):
    /// every cgroup named for this directory, with all its processes, and every instance directory, except
    /// those of instances this runtime knows. Call it before starting instances.
    public func cleanupLeftovers() {
        killLeftovers()
        table.removeUnknownDirectories()
    }

    /// A handle on the cgroups of the runtime of `stateDirectory` that touches nothing in that
    /// directory: taken while the directory exists, used after its agent died (the service reaper),
    /// when the directory may already be gone.
    public struct Leftovers: Sendable {
        let tree: CgroupTree
        /// Kills every process in those cgroups and removes them.
        public func kill() {
            for id in tree.existingIDs() {
                let cg = tree.cgroup(for: id)
                cg.killAll(deadlineMillis: monotonicMillis() + 30_000)
                _ = cg.remove(deadlineMillis: monotonicMillis() + 2000)
            }
        }
    }

    public static func leftovers(of stateDirectory: String) throws(RuntimeError) -> Leftovers {
        guard let real = realpath(stateDirectory, nil) else {
            throw RuntimeError(instance: nil, .stateDirectory(path: stateDirectory, operation: "realpath", errno: errno))
        }
        defer { free(real) }
        return Leftovers(tree: CgroupTree(layout: try CgroupLayout.detect(), prefix: prefix(for: String(cString: real))))
    }

    /// Kills every process of this state directory's cgroups that this runtime does not run, and
    /// removes those cgroups; their logs stay.
    public func killLeftovers() {
        for id in tree.existingIDs().subtracting(table.ids) {
            let cg = tree.cgroup(for: id)
            cg.killAll(deadlineMillis: monotonicMillis() + 30_000)
            cg.remove(deadlineMillis: monotonicMillis() + 2000)
        }
    }
}

typealias Instance = RuntimeInstance<Run>

/// One started process of an instance, from exec to the removal of its cgroup.
final class Run: InstanceRun, @unchecked Sendable {
    enum End: Sendable {
        case exited(Int32)
        case killed(Int32)
        case lost(Int32)
    }

    let instance: Instance
    let pid: Int32
    let pidfd: Int32
    let cgroup: InstanceCgroup
    let check: HealthCheck?
    /// Runs `check`, when there is one.
    let monitor: HealthMonitor?
    let reaped = Completion()
    let outputClosed = Completion()
    let finished = Completion()
    // Under the table lock:
    var end: End?
    var stopping = false
    var finishing = false
    var pidfdClosed = false
    var hasEnded: Bool { end != nil }

    init(instance: Instance, pid: Int32, pidfd: Int32, cgroup: InstanceCgroup, check: HealthCheck?) {
        self.instance = instance
        self.pid = pid
        self.pidfd = pidfd
        self.cgroup = cgroup
        self.check = check
        self.monitor = check == nil ? nil : HealthMonitor()
    }
}
