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

    /// `directory`: where instances live (HOME/services). Instances left by an earlier run of this
    /// agent are killed first: the controller starts what the table assigns again. `podman`: how to
    /// reach the agent's podman, or why there is none (`.failure`: the reason, for the operator).
    public init(directory: String, podman: Result<PodmanSettings, PodmanSetup.Unavailable>? = nil) throws {
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

    func performNow(_ action: ServiceAction) async {
        switch action {
        case .start(let plan):
            // The copy of another generation goes first, whichever driver ran it.
            if runtime.status(plan.id) != nil { await runtime.stop(plan.id, graceMillis: 5000) }
            if let podman, podman.status(plan.id) != nil { await podman.stop(plan.id) }
            switch plan.spec.driver {
            case .process:
                started.withLock { $0[plan.id] = Started(generation: plan.generation, notBefore: ProcessServiceDriver.monotonicMillis()) }
                do {
                    try runtime.start(Self.instance(plan))
                } catch {
                    send(ServiceDriverReport(id: plan.id, generation: plan.generation, state: .failed("\(error)")))
                }
            case .podman where podman != nil:
                started.withLock { $0[plan.id] = Started(generation: plan.generation, notBefore: ProcessServiceDriver.monotonicMillis()) }
                do throws(RuntimeError) {
                    try await podman!.start(Self.instance(plan), rootfs: plan.spec.image)
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
    }

    static func instance(_ plan: InstancePlan) -> InstanceSpec {
        let s = plan.spec
        var env = s.environment
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
        return InstanceSpec(id: plan.id, command: s.command, environment: env, cpuMillis: s.cpuMillis, memoryMiB: s.memoryMiB, health: health)
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
