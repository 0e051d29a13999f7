// The service controller's driver for the `process` driver: each instance a process tree in its own
// cgroup with the spec's limits, its own working directory and a rotated log (ServiceRuntime), its
// health checked there. The controller decides what runs; this only starts, stops and reports.
// With podman settings it also runs `podman` services (PodmanRuntime: a container per instance on
// the pod network, its address in every report).
//
// Reports are tagged with the generation the instance was started at, and a report about a process
// that began before the latest start of its instance (the old copy's exit, arriving late) is
// dropped, so a replaced instance's death is never taken for the new one's.

import Foundation
import MyceliumControl
import ServiceController
import ServiceRuntime
import Synchronization

public final class ProcessServiceDriver: ControllerDriver, Sendable {
    public typealias Action = ServiceAction
    public typealias Report = ServiceDriverReport

    public let runtime: ProcessRuntime
    /// The podman runtime, when this node offers the podman driver.
    public let podman: PodmanRuntime?
    /// Why it does not ("" when it does).
    public let podmanUnavailable: String
    struct Started { var generation: UInt64; var notBefore: UInt64 }
    let started = Mutex<[String: Started]>([:])
    let sink = Mutex<(@Sendable (ServiceDriverReport) -> Void)?>(nil)
    /// Service volumes (attached on start, detached on stop), and where each volume is on this node.
    public let volumes: VolumeMounts?
    let volumeSource: @Sendable (String) -> ServiceVolumeSource?
    /// Per instance, the volumes attached for it.
    let attached = Mutex<[String: [String]]>([:])

    /// `directory`: where instances live (HOME/services). Instances left by an earlier run of this
    /// agent are killed first: the controller starts what the table assigns again. `podman`: how to
    /// reach the agent's podman, or why there is none (`.failure`: the reason, for the operator).
    /// `volumes`: how this node mounts service volumes (nil: it cannot; such a service fails here with
    /// the reason); `volumeSource`: where a volume is, as this node reaches it (nil: not here).
    public init(directory: String, podman: Result<PodmanSettings, PodmanSetup.Unavailable>? = nil, volumes: VolumeMounts? = nil,
                volumeSource: @escaping @Sendable (String) -> ServiceVolumeSource? = { _ in nil }) throws {
        self.volumes = volumes
        self.volumeSource = volumeSource
        let ref = DriverRef()
        runtime = try ProcessRuntime(stateDirectory: directory, onChange: { status in ref.get()?.observed(status) })
        var containers: PodmanRuntime?, why = ""
        switch podman {
        case .success(let settings)?:
            do {
                containers = try PodmanRuntime(settings: settings, stateDirectory: directory + "/podman-instances",
                                               onChange: { status in ref.get()?.observed(status) })
            } catch {
                why = "podman: \(error)"
            }
        case .failure(let e)?: why = "podman: \(e)"
        case nil: why = "podman: not configured on this node"
        }
        self.podman = containers
        podmanUnavailable = why
        ref.set(self)
        runtime.cleanupLeftovers()
        self.podman?.cleanupLeftovers()
        // Mounts a previous run left (a crash): its instances are gone, so are their volumes.
        volumes?.cleanup()
    }

    public func reportTo(_ sink: @escaping @Sendable (ServiceDriverReport) -> Void) {
        self.sink.withLock { $0 = sink }
    }

    func send(_ r: ServiceDriverReport) { sink.withLock { $0 }?(r) }

    func observed(_ s: InstanceStatus) {
        guard let st = started.withLock({ $0[s.id] }), s.startedAtMillis >= st.notBefore else { return }
        let state: ObservedState
        switch s.state {
        case .starting: state = .starting
        case .running: state = .running
        case .exited(let code): state = .exited(code: code)
        case .killed(let signal): state = .killed(signal: signal)
        case .failed(let why): state = .failed(why)
        }
        var health = InstanceReport.Health.unknown, message = ""
        switch s.health {
        case .unknown: break
        case .healthy: health = .healthy
        case .unhealthy(let why): health = .unhealthy; message = why
        }
        send(ServiceDriverReport(id: s.id, generation: st.generation, state: state, health: health, message: message, address: s.address))
    }

    /// Podman's work per instance, in order. A podman command takes hundreds of milliseconds (a stop
    /// up to its grace period), and the controller host performs actions one after another: the
    /// actions of a podman instance are chained here instead, so other instances, processes
    /// especially, never wait for them, while one instance's start and stop keep their order.
    let chains = Mutex<(next: UInt64, tasks: [String: (token: UInt64, task: Task<Void, Never>)])>((0, [:]))

    func enqueue(_ id: String, _ body: @escaping @Sendable () async -> Void) {
        chains.withLock { c in
            let previous = c.tasks[id]?.task, token = c.next
            c.next += 1
            let task = Task {
                await previous?.value
                await body()
                self.chains.withLock { if $0.tasks[id]?.token == token { $0.tasks[id] = nil } }
            }
            c.tasks[id] = (token, task)
        }
    }

    func chained(_ id: String) -> Bool { chains.withLock { $0.tasks[id] != nil } }

    public func perform(_ action: ServiceAction) async throws {
        switch action {
        case .start(let plan) where plan.spec.driver == .podman || chained(plan.id) || podman?.status(plan.id) != nil:
            enqueue(plan.id) { await self.performNow(action) }
        case .stop(let id, _) where chained(id) || podman?.status(id) != nil:
            enqueue(id) { await self.performNow(action) }
        default:
            await performNow(action)
        }
    }

    /// Attaches the plan's volumes (detaching those an earlier generation had and this one does not);
    /// their mount points by volume name, or why they cannot be mounted here.
    func attachVolumes(_ plan: InstancePlan) async -> Result<[String: String], VolumeMountError> {
        let wanted = plan.spec.volumes.map(\.name)
        let before = attached.withLock { $0[plan.id] ?? [] }
        for old in before where !wanted.contains(old) { await volumes?.detachOffPool(old) }
        attached.withLock { $0[plan.id] = before.filter(wanted.contains) }
        guard !wanted.isEmpty else { attached.withLock { $0[plan.id] = nil }; return .success([:]) }
        guard let volumes else { return .failure(VolumeMountError("this node cannot mount service volumes (HOME/volumes is not usable; see the agent's log)")) }
        var mounts: [String: String] = [:]
        for name in wanted {
            guard let source = volumeSource(name) else {
                return .failure(VolumeMountError("volume \(name) is not reachable from this node (a local volume lives on its home node only; a Ceph one needs ceph_conf here)"))
            }
            do { mounts[name] = try await volumes.attach(name, source: source) } catch {
                return .failure(error as? VolumeMountError ?? VolumeMountError("\(error)"))
            }
            attached.withLock { $0[plan.id, default: []].append(name) }
        }
        return .success(mounts)
    }

    /// Detaches what was attached for instance `id` (after it stopped).
    func detachVolumes(_ id: String) async {
        for name in attached.withLock({ $0.removeValue(forKey: id) ?? [] }) { await volumes?.detachOffPool(name) }
    }

    func performNow(_ action: ServiceAction) async {
        switch action {
        case .start(let plan):
            // The copy of another generation goes first, whichever driver ran it.
            if runtime.status(plan.id) != nil { await runtime.stop(plan.id, graceMillis: 5000) }
            if let podman, podman.status(plan.id) != nil { await podman.stop(plan.id) }
            var mounts: [String: String] = [:]
            if plan.spec.driver != .k3s {
                switch await attachVolumes(plan) {
                case .success(let m): mounts = m
                case .failure(let e):
                    started.withLock { $0[plan.id] = Started(generation: plan.generation, notBefore: ProcessServiceDriver.monotonicMillis()) }
                    send(ServiceDriverReport(id: plan.id, generation: plan.generation, state: .failed("\(e)")))
                    return
                }
            }
            switch plan.spec.driver {
            case .process:
                started.withLock { $0[plan.id] = Started(generation: plan.generation, notBefore: ProcessServiceDriver.monotonicMillis()) }
                do {
                    try runtime.start(Self.instance(plan, mounts: mounts))
                } catch {
                    send(ServiceDriverReport(id: plan.id, generation: plan.generation, state: .failed("\(error)")))
                }
            case .podman where podman != nil:
                started.withLock { $0[plan.id] = Started(generation: plan.generation, notBefore: ProcessServiceDriver.monotonicMillis()) }
                do throws(RuntimeError) {
                    try await podman!.start(Self.instance(plan, mounts: mounts), rootfs: plan.spec.image)
                } catch {
                    send(ServiceDriverReport(id: plan.id, generation: plan.generation, state: .failed("\(error)")))
                }
            default:
                let why = plan.spec.driver == .podman ? " (\(podmanUnavailable))" : ""
                send(ServiceDriverReport(id: plan.id, generation: plan.generation,
                                         state: .failed("this node runs \(plan.spec.driver) services through its \(plan.spec.driver) driver, which it does not offer\(why)")))
            }
        case .stop(let id, _):
            started.withLock { $0[id] = nil }
            if let podman, podman.status(id) != nil { await podman.stop(id) }
            await runtime.stop(id, graceMillis: 5000)
            await detachVolumes(id)
        }
    }

    /// The instance's log tail ("" when it does not run here).
    public func logs(_ id: String, maxBytes: Int) -> String {
        if let podman, podman.status(id) != nil || podman.knows(id) { return podman.logs(id, maxBytes: maxBytes) }
        return runtime.logs(id, maxBytes: maxBytes)
    }

    public func stopAll() async {
        // What is chained finishes first: a start still queued must not run after the stop.
        let pending = chains.withLock { $0.tasks.values.map(\.task) }
        for t in pending { await t.value }
        async let a: Void = runtime.stopAll()
        async let b: Void? = podman?.stopAll()
        _ = await (a, b)
        for id in attached.withLock({ Array($0.keys) }) { await detachVolumes(id) }
    }

    /// `mounts`: each volume's mount point on this node: a process finds it in MYCELIUM_VOLUME_<NAME>,
    /// a container at the spec's path (and the variable names that path).
    static func instance(_ plan: InstancePlan, mounts: [String: String] = [:]) -> InstanceSpec {
        let s = plan.spec
        var env = s.environment
        var binds: [String: String] = [:]
        for v in s.volumes {
            guard let m = mounts[v.name] else { continue }
            env[ServiceVolume.environmentName(v.name)] = s.driver == .podman ? v.path : m
            binds[m] = v.path
        }
        env["MYCELIUM_SERVICE"] = s.name
        env["MYCELIUM_INSTANCE"] = plan.id
        env["MYCELIUM_SLOT"] = "\(plan.slot)"
        for p in s.ports { env["MYCELIUM_PORT_" + p.name.uppercased().replacingOccurrences(of: "-", with: "_")] = "\(p.port)" }
        let health: HealthCheck? = s.health.map { h in
            switch h.kind {
            case .tcp(let port): .tcp(port: port, intervalMillis: h.intervalMillis, timeoutMillis: h.timeoutMillis, threshold: h.threshold)
            case .http(let port, let path): .http(port: port, path: path, intervalMillis: h.intervalMillis, timeoutMillis: h.timeoutMillis, threshold: h.threshold)
            case .exec(let c): .exec(command: c, intervalMillis: h.intervalMillis, timeoutMillis: h.timeoutMillis, threshold: h.threshold)
            }
        }
        var spec = InstanceSpec(id: plan.id, command: s.command, environment: env, cpuMillis: s.cpuMillis, memoryMiB: s.memoryMiB, health: health)
        spec.binds = binds
        return spec
    }

    static func monotonicMillis() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
    }
}

/// The driver of a node that cannot run services (its state directory could not be set up): every
/// start is reported failed with the reason, so `mycelium service show` says why.
public final class NoServiceDriver: ControllerDriver, Sendable {
    public typealias Action = ServiceAction
    public typealias Report = ServiceDriverReport
    let reason: String
    let sink = Mutex<(@Sendable (ServiceDriverReport) -> Void)?>(nil)
    public init(reason: String) { self.reason = reason }
    public func reportTo(_ sink: @escaping @Sendable (ServiceDriverReport) -> Void) { self.sink.withLock { $0 = sink } }
    public func perform(_ action: ServiceAction) async throws {
        if case .start(let plan) = action {
            sink.withLock { $0 }?(ServiceDriverReport(id: plan.id, generation: plan.generation, state: .failed("this node cannot run services: \(reason)")))
        }
    }
}

/// The runtime's callback reaches its driver through this (weak: the driver owns the runtime).
final class DriverRef: @unchecked Sendable {
    private let lock = NSLock()
    private weak var driver: ProcessServiceDriver?
    func set(_ d: ProcessServiceDriver) { lock.lock(); driver = d; lock.unlock() }
    func get() -> ProcessServiceDriver? { lock.lock(); defer { lock.unlock() }; return driver }
}
