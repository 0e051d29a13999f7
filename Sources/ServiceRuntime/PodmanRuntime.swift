// The `podman` workload driver: runs service instances as containers through the agent's private
// podman (PodmanSetup), on the pod network of mycelium-cni, and reports every change the same way
// ProcessRuntime does. It never restarts anything: the controller decides, the runtime reports.
//
// One instance is one container `myc-ID`, labelled `mycelium.instance=ID`:
//   podman run -d --replace --name myc-ID --label mycelium.instance=ID --network mycelium
//              [--cpus C] [--memory M] --env K=V… --rootfs DIR COMMAND…
// then `podman inspect` for conmon's pid, the container's pid and its address on the network.
//
// Exits are watched with a pidfd on the container's conmon (not a `podman wait` per instance):
// conmon is the container's monitor and exits only once the container has ended and podman's
// cleanup (the network's CNI DEL) has run, so its pidfd turning readable is the exact moment, in the
// same poll loop as everything else, at no cost per instance; a `podman wait` would be a Go process of
// tens of MiB per instance, for the same information. The exit code then comes from
// `podman inspect` (128+N, as runc reports a death by signal N, is reported as killed by N), and the
// container is removed.
//
// Output: a `podman logs -f myc-ID` per run writes into the instance's pipe, read by the poll
// thread into the same rotated log as a process's (LogSink), so `mycelium service logs` reads
// both alike. Health: tcp and http checks connect to the container's address; exec checks run
// `podman exec myc-ID COMMAND`. Stop: `podman rm -f -t GRACE` (SIGTERM, SIGKILL after the grace,
// then the CNI DEL and the removal).
//
// Podman commands run with their output in unlinked temporary files, never pipes (CommandRunner).

import CSpawn
import Foundation
import MyceliumCore

public final class PodmanRuntime: Sendable {
    public let settings: PodmanSettings
    public let stateDirectory: String
    let instancesDirectory: String
    let poller: Poller
    let table: InstanceTable<ContainerRun>

    public static let label = "mycelium.instance"
    public static func containerName(_ id: String) -> String { "myc-" + id }
    /// Where the runtime keeps the settings the service reaper reads (the directory may be gone by
    /// the time the reaper needs them).
    public static func settingsPath(_ stateDirectory: String) -> String { stateDirectory + "/settings.json" }

    /// `stateDirectory` (created if missing) holds the instances' logs (`instances/ID/log`) and the
    /// settings for the service reaper.
    public init(settings: PodmanSettings, stateDirectory: String, logMaxBytes: Int = 10 << 20, logKeep: Int = 3,
                onChange: @escaping @Sendable (InstanceStatus) -> Void) throws(RuntimeError) {
        let instances = stateDirectory + "/instances"
        do {
            try AtomicFile.makeDirectory(instances)
            let json = (try? JSONEncoder().encode(settings)).map { Array($0) } ?? []
            try AtomicFile.write(json, to: Self.settingsPath(stateDirectory))
        } catch {
            if case let .system(op, e) = error.code { throw RuntimeError(instance: nil, .stateDirectory(path: error.path, operation: op, errno: e)) }
            throw RuntimeError(instance: nil, .stateDirectory(path: instances, operation: "write", errno: EIO))
        }
        self.settings = settings
        self.stateDirectory = stateDirectory
        self.instancesDirectory = instances
        self.table = InstanceTable(instancesDirectory: instances, logMaxBytes: logMaxBytes, logKeep: logKeep,
                                   queueLabel: "mycelium.podman-runtime.notify", onChange: onChange)
        self.poller = try Poller()
    }

    deinit {
        table.cancelMonitors()
        poller.shutdown()
    }

    // MARK: podman commands

    struct Output: Sendable {
        var status: Int32
        var stdout: String
        var stderr: String
        /// The last line podman printed on stderr (its error), for messages.
        var error: String {
            let lines = stderr.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            return lines.last ?? (status == 0 ? "" : "exit status \(status)")
        }
    }

    /// Runs `podman BASE ARGS` to its end (killed after `timeoutMillis`), blocking: call it off the
    /// cooperative pool (`onWorker`).
    static func runPodman(_ settings: PodmanSettings, _ args: [String], timeoutMillis: Int32 = 120_000, instance: String? = nil) throws(RuntimeError) -> Output {
        let r = try CommandRunner.run(settings.base + args, environment: settings.environment, timeoutMillis: timeoutMillis,
                                      instance: instance ?? "podman")
        let what = "podman \(args.prefix(1).joined())"
        if r.timedOut { throw RuntimeError(instance: instance, .podman(what: "\(what) did not finish within \(timeoutMillis / 1000) s (killed)", hint: "check 'podman ps' with the agent's CONTAINERS_CONF; is the machine overloaded?")) }
        if r.waitError != 0 { throw RuntimeError(instance: instance, .podman(what: "\(what): waiting failed: \(errnoText(r.waitError))", hint: "another part of the agent reaped it")) }
        return Output(status: r.status, stdout: r.stdout, stderr: r.stderr)
    }

    func podman(_ args: [String], timeoutMillis: Int32 = 120_000, instance: String? = nil) async throws(RuntimeError) -> Output {
        let settings = self.settings
        let r: Result<Output, RuntimeError> = await onWorker {
            do throws(RuntimeError) { return .success(try Self.runPodman(settings, args, timeoutMillis: timeoutMillis, instance: instance)) } catch { return .failure(error) }
        }
        return try r.get()
    }

    // MARK: starting

    /// The podman arguments that run `spec` from the root filesystem `rootfs`.
    public func runArguments(_ spec: InstanceSpec, rootfs: String) -> [String] {
        var a = ["run", "-d", "--replace", "--name", Self.containerName(spec.id), "--label", "\(Self.label)=\(spec.id)",
                 "--network", settings.network, "--hostname", spec.id]
        if spec.cpuMillis > 0 { a += ["--cpus", String(format: "%.3f", Double(spec.cpuMillis) / 1000)] }
        if spec.memoryMiB > 0 { a += ["--memory", "\(spec.memoryMiB)m"] }
        for (k, v) in spec.environment.sorted(by: { $0.key < $1.key }) { a += ["--env", "\(k)=\(v)"] }
        for (host, path) in spec.binds.sorted(by: { $0.key < $1.key }) { a += ["--volume", "\(host):\(path)"] }
        // With --rootfs the first argument is the root filesystem (absolute, so never read as an
        // option) and everything after it is the command.
        return a + ["--rootfs", rootfs] + spec.command
    }

    /// Starts the container and returns once it runs with an address; throws what failed otherwise
    /// (and the status then says `.failed`). An instance that has ended may be started again.
    public func start(_ spec: InstanceSpec, rootfs: String) async throws(RuntimeError) {
        try spec.validate()
        var isDir: ObjCBool = false
        guard rootfs.hasPrefix("/"), FileManager.default.fileExists(atPath: rootfs, isDirectory: &isDir), isDir.boolValue else {
            throw RuntimeError(instance: spec.id, .invalidArgument("the image \"\(rootfs)\" is not a directory on this node: a podman service's image is the absolute path of a root filesystem (e.g. one made from busybox-static) that must exist on every node that may run it"))
        }
        let id = spec.id
        guard let inst = table.claimForStart(id, reset: { $0.status.address = "" }) else { throw RuntimeError(instance: id, .alreadyRunning) }
        do throws(RuntimeError) {
            try await launch(inst, spec: spec, rootfs: rootfs)
        } catch {
            table.startFailed(inst, error)
            throw error
        }
    }

    private func launch(_ inst: ContainerInstance, spec: InstanceSpec, rootfs: String) async throws(RuntimeError) {
        let id = spec.id, name = Self.containerName(id)
        let dir = instancesDirectory + "/" + id
        if mkdir(dir, 0o755) != 0 && errno != EEXIST {
            throw RuntimeError(instance: id, .stateDirectory(path: dir, operation: "mkdir", errno: errno))
        }
        func fail(_ what: String, _ out: Output, hint: String) async -> RuntimeError {
            _ = try? await podman(["rm", "-f", "-t", "0", name], timeoutMillis: 60_000, instance: id)
            return RuntimeError(instance: id, .podman(what: "\(what): \(out.error)", hint: hint))
        }
        let run = try await podman(runArguments(spec, rootfs: rootfs), instance: id)
        if run.status != 0 {
            let hint: String
            switch run.status {
            case 126, 127: hint = "the command \(spec.command[0]) is missing from the root filesystem \(rootfs) or not executable there"
            default: hint = run.stderr.contains("pod CIDR") || run.stderr.contains("podCIDR")
                ? "this node has no pod CIDR yet (the network controller writes it once the leader assigned one); it is retried"
                : "see podman's message"
            }
            throw await fail("podman run failed", run, hint: hint)
        }
        let format = "{{.State.Status}} {{.State.ConmonPid}} {{.State.Pid}} {{(index .NetworkSettings.Networks \"\(settings.network)\").IPAddress}}"
        let inspect = try await podman(["inspect", "--format", format, name], timeoutMillis: 60_000, instance: id)
        let fields = inspect.stdout.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        guard inspect.status == 0, fields.count >= 3, let conmon = Int32(fields[1]), let pid = Int32(fields[2]) else {
            throw await fail("podman inspect of the new container failed", inspect, hint: "see podman's message")
        }
        // A command that ended at once has left the network already: its exit is what to report.
        let endedAlready = fields[0] != "running"
        let address = fields.count >= 4 ? fields[3] : ""
        let addressValue = Self.parseIPv4(address)
        if addressValue == nil && !endedAlready {
            throw await fail("the container has no IPv4 address on network \(settings.network) (inspect: \(inspect.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))",
                             inspect, hint: "check the CNI configuration the agent wrote")
        }
        // The exit watch: a pidfd on conmon (checked to be conmon: the pid could have been reused
        // if the container ended at once). -1 when it is already gone.
        var conmonFd = conmon > 0 && !endedAlready ? cspawn_pidfd_open(conmon) : -1
        if conmonFd >= 0, !(((try? String(contentsOfFile: "/proc/\(conmon)/comm", encoding: .utf8)) ?? "").hasPrefix("conmon")) {
            close(conmonFd)
            conmonFd = -1
        }
        // The log: `podman logs -f` into a pipe the poll thread drains into the LogSink.
        var fds: [Int32] = [-1, -1]
        let pe = cspawn_output_pipe(&fds)
        if pe != 0 {
            if conmonFd >= 0 { close(conmonFd) }
            throw RuntimeError(instance: id, .spawn(stage: "pipe for the log", errno: pe))
        }
        let follower: SpawnedProcess?
        do {
            follower = try Spawner.spawn(instance: id, command: settings.base + ["logs", "-f", name], environment: settings.environment,
                                         cwd: dir, cgroup: nil, output: fds[1])
        } catch {
            follower = nil
            inst.log.note("[mycelium] cannot follow the container's output: \(error)\n")
        }
        close(fds[1])

        let check: HealthCheck? = spec.health.map { h in
            if case let .exec(cmd, i, t, n) = h { return .exec(command: settings.base + ["exec", name] + cmd, intervalMillis: i, timeoutMillis: t, threshold: n) }
            return h
        }
        let run2 = ContainerRun(instance: inst, name: name, conmonPidfd: conmonFd, follower: follower, address: address, check: check)
        table.started(inst, run: run2, pid: pid, health: spec.health, address: addressValue == nil ? "" : address)

        poller.drain(fds[0], into: inst.log, closed: run2.outputClosed)
        if conmonFd >= 0 {
            poller.add(fd: conmonFd) { [weak self] _ in
                .remove(then: { Task { await self?.containerEnded(run2) } })
            }
        } else {
            Task { [self] in await containerEnded(run2) }
        }
        if let check, let monitor = run2.monitor, let addressValue {
            let env = settings.environment
            monitor.start(
                intervalMillis: check.intervalMillis, name: id,
                probe: { HealthProbe.run(check, instance: id, cwd: dir, environment: env, cgroup: nil, host: addressValue) },
                report: { [weak self] result in self?.table.recordHealth(of: run2, in: inst, failure: result) })
        }
    }

    static func parseIPv4(_ s: String) -> UInt32? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            guard let b = UInt8(p) else { return nil }
            v = v << 8 | UInt32(b)
        }
        return v
    }

    /// conmon is gone: the container ended (or was removed by a stop, which drives the rest itself).
    private func containerEnded(_ run: ContainerRun) async {
        let stopping = table.lock.withLock {
            run.conmonGone = true
            // A stop that gave up waiting for conmon has finished the run already: the fd is ours to close.
            if run.recorded && !run.pidfdClosed && run.conmonPidfd >= 0 { close(run.conmonPidfd); run.pidfdClosed = true }
            return run.stopping
        }
        run.ended.complete()
        if stopping { return }
        run.monitor?.cancel()
        let inspect = try? await podman(["inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", run.name], timeoutMillis: 60_000, instance: run.instance.id)
        let fields = inspect?.stdout.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) } ?? []
        let end: ContainerRun.End
        if inspect?.status == 0, let code = fields.first.flatMap({ Int32($0) }) {
            if fields.count > 1 && fields[1] == "true" { end = .killed(SIGKILL) }
            else if code > 128 && code <= 128 + 64 { end = .killed(code - 128) }
            else { end = .exited(code) }
        } else {
            end = .lost("the container is gone and podman does not know how it ended (\(inspect?.error ?? "inspect failed"))")
        }
        table.lock.withLock { if run.end == nil { run.end = end } }
        // Removed before the exit is reported: a restart the report leads to must never find (or
        // lose) this container. Its output is in the instance's log already.
        _ = try? await podman(["rm", "-f", "-t", "0", run.name], timeoutMillis: 60_000, instance: run.instance.id)
        await finish(run)
    }

    /// Ends a run: the health thread, the log follower, the exit recorded and reported. Idempotent.
    private func finish(_ run: ContainerRun) async {
        guard await table.claimFinish(run) else { return }
        if let monitor = run.monitor, let check = run.check {
            monitor.cancel()
            _ = await monitor.exited.wait(timeoutMillis: UInt64(check.timeoutMillis) + 5000)
        }
        // `podman logs -f` ends with the container; one that does not is ended after 2 s.
        if !(await run.outputClosed.wait(timeoutMillis: 2000)), let f = run.follower {
            _ = cspawn_pidfd_kill(f.pidfd, SIGKILL)
            _ = await run.outputClosed.wait(timeoutMillis: 2000)
        }
        if let f = run.follower {
            await onWorker {
                var killed: Int32 = 0, code: Int32 = 0
                if cspawn_pidfd_wait(f.pidfd, 2000) == ETIMEDOUT { _ = cspawn_pidfd_kill(f.pidfd, SIGKILL) }
                _ = cspawn_reap(f.pidfd, 0, &killed, &code)
                close(f.pidfd)
            }
        }
        recordEnd(of: run)
        run.finished.complete()
    }

    private func recordEnd(of run: ContainerRun) {
        table.lock.lock()
        defer { table.lock.unlock() }
        // The poller has let go of conmon's pidfd once it reported the exit; before that it must stay open.
        run.recorded = true
        if run.conmonGone && !run.pidfdClosed && run.conmonPidfd >= 0 { close(run.conmonPidfd); run.pidfdClosed = true }
        let state: InstanceState
        switch run.end ?? .lost("the container was removed") {
        case let .exited(code): state = .exited(code: code)
        case let .killed(sig): state = .killed(signal: sig)
        case let .lost(why): state = .failed(why)
        }
        table.endedLocked(run, of: run.instance, as: state)
    }

    // MARK: stopping

    /// Stops the instance: `podman rm -f -t GRACE` (SIGTERM, SIGKILL after the grace, the network's
    /// CNI DEL, the removal); returns when the container is gone. The instance is then forgotten; its
    /// log stays until cleanupLeftovers.
    public func stop(_ id: String, graceSeconds: UInt32 = 5) async {
        // An instance still starting is between its podman calls: that is waited for, then stopped.
        guard let (inst, maybeRun) = await table.claimForStop(id, pollNanoseconds: 10_000_000) else { return }
        if let run = maybeRun {
            run.monitor?.cancel()
            let rm = try? await podman(["rm", "-f", "-t", "\(graceSeconds)", run.name], timeoutMillis: Int32(graceSeconds) * 1000 + 60_000, instance: id)
            if rm?.status != 0 {
                inst.log.note("[mycelium] podman rm of \(run.name) failed: \(rm?.error ?? "did not run"); its container may be left\n")
            }
            // conmon leaves once the container is removed.
            _ = await run.ended.wait(timeoutMillis: 10_000)
            table.lock.withLock { if run.end == nil { run.end = .killed(SIGTERM) } }
            await finish(run)
        }
        table.forgetIfIdle(id, inst)
    }

    public func stopAll() async {
        await stopEach(table.ids) { await self.stop($0) }
    }

    // MARK: queries

    public func status(_ id: String) -> InstanceStatus? { table.status(id) }

    public func all() -> [InstanceStatus] { table.all() }

    /// The last `maxBytes` of the instance's output (also after stop, while its directory exists).
    public func logs(_ id: String, maxBytes: Int) -> String { table.logs(id, maxBytes: maxBytes) }

    /// Whether the instance's directory (its log) exists: it ran here.
    public func knows(_ id: String) -> Bool {
        InstanceSpec.isValidID(id) && FileManager.default.fileExists(atPath: instancesDirectory + "/" + id)
    }

    // MARK: leftovers

    /// What an earlier run of the agent left (it restarted or died): every container labelled
    /// `mycelium.instance` in this podman's storage that this runtime does not run is removed (with
    /// its network attachment), and the directories of instances it does not know. Blocking; call
    /// it before starting instances. Returns the names removed.
    @discardableResult
    public func cleanupLeftovers() -> [String] {
        let removed = Leftovers(settings: settings).remove(except: Set(table.ids.map(Self.containerName)))
        table.removeUnknownDirectories()
        return removed
    }

    /// This podman's labelled containers, usable after the agent died (the service reaper): it
    /// needs only the settings, read while the agent lived.
    public struct Leftovers: Sendable {
        public let settings: PodmanSettings

        /// Names of the containers labelled `mycelium.instance` (nil: podman could not be asked).
        public func names() -> [String]? {
            guard let out = try? PodmanRuntime.runPodman(settings, ["ps", "-a", "--filter", "label=\(PodmanRuntime.label)", "--format", "{{.Names}}"], timeoutMillis: 60_000),
                  out.status == 0 else { return nil }
            return out.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }

        /// Removes them (all but `except`); the names removed. Does nothing when the storage is
        /// gone (podman would create it again).
        @discardableResult
        public func remove(except: Set<String> = []) -> [String] {
            guard FileManager.default.fileExists(atPath: settings.root) else { return [] }
            let doomed = (names() ?? []).filter { !except.contains($0) }
            guard !doomed.isEmpty else { return [] }
            _ = try? PodmanRuntime.runPodman(settings, ["rm", "-f", "-t", "0"] + doomed, timeoutMillis: 120_000)
            return doomed
        }
    }

    /// The settings a runtime on `stateDirectory` recorded, or nil when none ran there.
    public static func leftovers(of stateDirectory: String) -> Leftovers? {
        guard let data = FileManager.default.contents(atPath: settingsPath(stateDirectory)),
              let s = try? JSONDecoder().decode(PodmanSettings.self, from: data) else { return nil }
        return Leftovers(settings: s)
    }
}

typealias ContainerInstance = RuntimeInstance<ContainerRun>

/// One container of an instance, from `podman run` to its removal.
final class ContainerRun: InstanceRun, @unchecked Sendable {
    enum End: Sendable {
        case exited(Int32)
        case killed(Int32)
        case lost(String)
    }

    let instance: ContainerInstance
    let name: String
    /// conmon's pidfd (-1: conmon was gone before it could be opened).
    let conmonPidfd: Int32
    /// `podman logs -f`, our child.
    let follower: SpawnedProcess?
    let address: String
    let check: HealthCheck?
    let monitor: HealthMonitor?
    let ended = Completion()
    let outputClosed = Completion()
    let finished = Completion()
    // Under the table lock:
    var end: End?
    var conmonGone = false
    var recorded = false
    var pidfdClosed = false
    var stopping = false
    var finishing = false
    var hasEnded: Bool { conmonGone }

    init(instance: ContainerInstance, name: String, conmonPidfd: Int32, follower: SpawnedProcess?, address: String, check: HealthCheck?) {
        self.instance = instance
        self.name = name
        self.conmonPidfd = conmonPidfd
        self.follower = follower
        self.address = address
        self.check = check
        self.monitor = check == nil ? nil : HealthMonitor()
        if follower == nil { outputClosed.complete() }
    }
}
