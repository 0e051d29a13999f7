// Domain lifecycle events (started, suspended, resumed, stopped, ...) from libvirt's default event
// loop, each stamped with this process's monotonic clock when it arrives. The benchmarks time a
// migration's blackout with them: the source's "suspended" to the target's "resumed", measured the
// same way for Mycelium's hand-over and for libvirt's own live migration.

import CLibvirt
import Glibc

/// libvirt's default event loop (`virEventRegisterDefaultImpl`), run by a thread of its own for the
/// life of the process. libvirt dispatches domain events only through a registered loop, and a
/// connection uses the loop it finds when it is opened: start it before opening the connections
/// whose events you want.
public enum LibvirtEventLoop {
    private static let started: Result<Void, LibvirtError> = {
        _ = initialized
        if virEventRegisterDefaultImpl() != 0 { return .failure(LibvirtError.last("register libvirt's default event loop")) }
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { _ in
            // Runs one iteration per call (it blocks until something is due); errors are transient.
            while true { _ = virEventRunDefaultImpl() }
        }, nil)
        if rc != 0 {
            return .failure(LibvirtError(code: -1, domain: -1, message: String(cString: strerror(rc)), operation: "start the event loop thread"))
        }
        pthread_detach(thread)
        return .success(())
    }()

    /// Registers the loop and starts its thread, once per process; later calls return at once.
    public static func start() throws(LibvirtError) { try started.get() }

    /// CLOCK_MONOTONIC in seconds: the clock `DomainLifecycleEvent.receivedAt` is on.
    public static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// One `VIR_DOMAIN_EVENT_ID_LIFECYCLE` event.
public struct DomainLifecycleEvent: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case defined, undefined, started, suspended, resumed, stopped, shutdown, pmSuspended, crashed, other(Int32)

        init(_ raw: Int32) {
            switch UInt32(bitPattern: raw) {
            case VIR_DOMAIN_EVENT_DEFINED.rawValue: self = .defined
            case VIR_DOMAIN_EVENT_UNDEFINED.rawValue: self = .undefined
            case VIR_DOMAIN_EVENT_STARTED.rawValue: self = .started
            case VIR_DOMAIN_EVENT_SUSPENDED.rawValue: self = .suspended
            case VIR_DOMAIN_EVENT_RESUMED.rawValue: self = .resumed
            case VIR_DOMAIN_EVENT_STOPPED.rawValue: self = .stopped
            case VIR_DOMAIN_EVENT_SHUTDOWN.rawValue: self = .shutdown
            case VIR_DOMAIN_EVENT_PMSUSPENDED.rawValue: self = .pmSuspended
            case VIR_DOMAIN_EVENT_CRASHED.rawValue: self = .crashed
            default: self = .other(raw)
            }
        }
    }

    /// The domain's name.
    public let domain: String
    public let kind: Kind
    /// libvirt's detail for `kind` (a `virDomainEvent<Kind>DetailType`, e.g. `suspendedMigrated`).
    public let detail: Int32
    /// `LibvirtEventLoop.monotonicSeconds()` when this process's event loop received it.
    public let receivedAt: Double

    public init(domain: String, kind: Kind, detail: Int32, receivedAt: Double) {
        self.domain = domain; self.kind = kind; self.detail = detail; self.receivedAt = receivedAt
    }

    /// Details that tell a migration's events from the others.
    public static let startedMigrated = Int32(VIR_DOMAIN_EVENT_STARTED_MIGRATED.rawValue)
    public static let suspendedMigrated = Int32(VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED.rawValue)
    public static let resumedMigrated = Int32(VIR_DOMAIN_EVENT_RESUMED_MIGRATED.rawValue)
    public static let stoppedMigrated = Int32(VIR_DOMAIN_EVENT_STOPPED_MIGRATED.rawValue)

    public var description: String { "\(domain) \(kind) (detail \(detail)) at \(receivedAt)" }
}

/// A registration of a lifecycle handler on one connection; `cancel()` (or dropping it) ends it.
public final class LifecycleEventSubscription: Sendable {
    private let connection: LibvirtConnection
    private let token: Int

    init(connection: LibvirtConnection, token: Int) {
        self.connection = connection
        self.token = token
    }

    /// Stops delivery to this handler (an event being dispatched right now may still reach it once).
    /// Idempotent.
    public func cancel() { connection.lifecycleHandlers.remove(token, on: connection) }

    deinit { cancel() }
}

/// Every lifecycle handler of one connection behind one libvirt registration: libvirt refuses the
/// same C callback twice on a connection for the same event ("event callback already tracked"), so
/// the first subscriber registers and the last one's cancel deregisters.
final class LifecycleFanout: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): every field is guarded by `lock`, a mutex on the heap (a mutex
    // must not move; a stored property's address is not stable in Swift).
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var handlers: [Int: @Sendable (DomainLifecycleEvent) -> Void] = [:]
    private var nextToken = 0
    private var callbackID: Int32?

    init() { pthread_mutex_init(lock, nil) }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    private func locked<T>(_ body: () throws(LibvirtError) -> T) throws(LibvirtError) -> T {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return try body()
    }

    func add(_ handler: @escaping @Sendable (DomainLifecycleEvent) -> Void, on connection: LibvirtConnection) throws(LibvirtError) -> Int {
        try locked { () throws(LibvirtError) -> Int in
            if callbackID == nil {
                // Retained for libvirt, released by its free callback once the loop has let go of it
                // (a dispatch may still be running when a deregister returns).
                let opaque = Unmanaged.passRetained(self).toOpaque()
                // SAFETY: libvirt calls a lifecycle callback with the lifecycle signature; the generic
                // type is only how the C API takes every kind of callback (VIR_DOMAIN_EVENT_CALLBACK).
                let generic = unsafeBitCast(lifecycleCallback, to: virConnectDomainEventGenericCallback.self)
                let id = virConnectDomainEventRegisterAny(connection.handle, nil, Int32(VIR_DOMAIN_EVENT_ID_LIFECYCLE.rawValue), generic, opaque) { p in
                    if let p { Unmanaged<LifecycleFanout>.fromOpaque(p).release() }
                }
                if id < 0 {
                    let e = LibvirtError.last("subscribe to the domain lifecycle events of \(connection.uri)")
                    Unmanaged<LifecycleFanout>.fromOpaque(opaque).release()
                    throw e
                }
                callbackID = id
            }
            nextToken += 1
            handlers[nextToken] = handler
            return nextToken
        }
    }

    func remove(_ token: Int, on connection: LibvirtConnection) {
        let id: Int32? = (try? locked { () -> Int32? in
            guard handlers.removeValue(forKey: token) != nil, handlers.isEmpty, let id = callbackID else { return nil }
            callbackID = nil
            return id
        }) ?? nil
        if let id { _ = virConnectDomainEventDeregisterAny(connection.handle, id) }
    }

    func deliver(_ event: DomainLifecycleEvent) {
        let current = (try? locked { handlers.sorted { $0.key < $1.key }.map(\.value) }) ?? []
        for h in current { h(event) }
    }
}

private let lifecycleCallback: @convention(c) (virConnectPtr?, virDomainPtr?, Int32, Int32, UnsafeMutableRawPointer?) -> Int32 = {
    _, dom, event, detail, opaque in
    let at = LibvirtEventLoop.monotonicSeconds()
    guard let opaque else { return 0 }
    // SAFETY: `opaque` is the fan-out retained at registration; libvirt calls the free callback,
    // which releases it, only after the last delivery.
    let fanout = Unmanaged<LifecycleFanout>.fromOpaque(opaque).takeUnretainedValue()
    let name = dom.flatMap { virDomainGetName($0) }.map { String(cString: $0) } ?? "?"
    fanout.deliver(DomainLifecycleEvent(domain: name, kind: .init(event), detail: detail, receivedAt: at))
    return 0
}

extension LibvirtConnection {
    /// Calls `handler` on the event loop's thread for every lifecycle event of every domain on this
    /// connection, until the returned subscription is cancelled or dropped. Needs
    /// `LibvirtEventLoop.start()` before this connection was opened (else nothing is delivered).
    /// Keep `handler` short: it holds up every other event of the process.
    public func subscribeToLifecycleEvents(_ handler: @escaping @Sendable (DomainLifecycleEvent) -> Void)
        throws(LibvirtError) -> LifecycleEventSubscription {
        try LibvirtEventLoop.start()
        let token = try lifecycleHandlers.add(handler, on: self)
        return LifecycleEventSubscription(connection: self, token: token)
    }
}
