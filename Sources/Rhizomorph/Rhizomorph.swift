// Rhizomorph: a thin Swift face for CRhizomorph, the multi-path bulk transport (RAM replication, VM
// migration, storage traffic). Every C call returns 0 or a negative errno plus a message; here that
// becomes a thrown `RhizomorphError` carrying both. The C library owns its threads; these classes only
// own the C handles. Keys are MyceliumIdentity's: the same `SigningKey`/`PublicKey`/`NetworkID` as
// every other Mycelium handshake (docs/HANDSHAKE.md).

import CRhizomorph
import MyceliumIdentity

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An error from the transport, with the C library's message.
public struct RhizomorphError: Error, CustomStringConvertible, Sendable {
    public enum Code: Equatable, Sendable {
        case wrongNetwork          // -ENONET
        case wrongPeerIdentity     // -EACCES
        case badSignature          // -EKEYREJECTED
        case malformed             // -EPROTO
        case versionMismatch       // -EPROTONOSUPPORT
        case integrity             // -EBADMSG: chunks kept failing authentication
        case refused               // -ECONNREFUSED
        case timedOut              // -ETIMEDOUT
        case allPathsDown          // -ENETDOWN
        case closed                // -ESHUTDOWN: the session was closed locally
        case system(Int32)         // any other errno
    }

    public let code: Code
    /// The negative errno the C call returned.
    public let errno: Int32
    public let message: String

    public var description: String { "Rhizomorph: \(message) (\(code))" }

    init(rc: Int32, error: rz_error) {
        errno = rc
        message = RhizomorphError.text(error, rc: rc)
        switch -rc {
        case ENONET: code = .wrongNetwork
        case EACCES: code = .wrongPeerIdentity
        case 129 /* EKEYREJECTED */: code = .badSignature
        case EPROTO: code = .malformed
        case EPROTONOSUPPORT: code = .versionMismatch
        case EBADMSG: code = .integrity
        case ECONNREFUSED: code = .refused
        case ETIMEDOUT: code = .timedOut
        case ENETDOWN: code = .allPathsDown
        case ESHUTDOWN: code = .closed
        default: code = .system(-rc)
        }
    }

    /// A violation found by the Swift layer (a message that does not add up), as -EPROTO.
    static func malformed(_ message: String) -> RhizomorphError {
        var e = rz_error()
        e.code = -EPROTO
        copyCString(message, into: &e.message)
        return RhizomorphError(rc: -EPROTO, error: e)
    }

    static func timedOut(_ message: String) -> RhizomorphError {
        var e = rz_error()
        e.code = -ETIMEDOUT
        copyCString(message, into: &e.message)
        return RhizomorphError(rc: -ETIMEDOUT, error: e)
    }

    /// The peer ended its direction (rz_send_end): nothing more will arrive.
    static func peerEnded() -> RhizomorphError {
        var e = rz_error()
        e.code = -ECONNRESET
        copyCString("the peer ended the session", into: &e.message)
        return RhizomorphError(rc: -ECONNRESET, error: e)
    }

    static func closed(_ what: String) -> RhizomorphError {
        var e = rz_error()
        e.code = -ESHUTDOWN
        copyCString("\(what): the session is closed", into: &e.message)
        return RhizomorphError(rc: -ESHUTDOWN, error: e)
    }

    private static func text(_ e: rz_error, rc: Int32) -> String {
        var e = e
        let s = withUnsafeBytes(of: &e.message) { raw -> String in
            // SAFETY: rz_fail always NUL-terminates within the 256-byte array; an untouched rz_error is zeroed.
            String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
        }
        return s.isEmpty ? String(cString: rz_strerror(rc)) : s
    }
}

@inline(__always)
private func check(_ body: (UnsafeMutablePointer<rz_error>) -> Int32) throws {
    var e = rz_error()
    let rc = body(&e)
    if rc < 0 { throw RhizomorphError(rc: rc, error: e) }
}

/// One network path: our address and the peer's.
public struct Path: Sendable {
    public var local: String
    public var remote: String
    public var port: UInt16
    public init(local: String, remote: String, port: UInt16) {
        self.local = local
        self.remote = remote
        self.port = port
    }

    fileprivate var raw: rz_path {
        var p = rz_path()
        copyCString(local, into: &p.local_addr)
        copyCString(remote, into: &p.remote_addr)
        p.remote_port = port
        return p
    }
}

private func copyCString<T>(_ s: String, into tuple: inout T) {
    withUnsafeMutableBytes(of: &tuple) { raw in
        raw.initializeMemory(as: UInt8.self, repeating: 0)
        let bytes = Array(s.utf8.prefix(raw.count - 1)) // keep room for the NUL
        raw.copyBytes(from: bytes)
    }
}

/// Session parameters; zero numeric fields take the C defaults.
public struct Configuration: Sendable {
    /// Our node key.
    public var identity: SigningKey
    public var network: NetworkID
    /// The node key we expect on the other side; any other is refused (`.wrongPeerIdentity`).
    public var peer: PublicKey
    public var connectionsPerPath: UInt32 = 2
    public var chunkSize: UInt32 = 65536
    public var windowBytes: UInt32 = 64 << 20
    public var stallTimeoutMilliseconds: UInt32 = 1500
    public var maxAuthenticationFailures: UInt32 = 8

    public init(identity: SigningKey, network: NetworkID, peer: PublicKey) {
        self.identity = identity
        self.network = network
        self.peer = peer
    }

    /// Calls `body` with the C configuration, then wipes the secret key it carried.
    fileprivate func withRaw<T>(_ body: (inout rz_config) throws -> T) rethrows -> T {
        var id = rz_identity()
        var c = rz_config()
        defer {
            withUnsafeMutableBytes(of: &id) { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) }
            withUnsafeMutableBytes(of: &c.identity) { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) }
        }
        // Cannot fail for a 32-byte seed once libsodium is initialised, which MyceliumIdentity has done.
        precondition(rz_identity_from_seed(&id, identity.seed) == 0, "libsodium failed to derive the key")
        rz_config_init(&c, &id, network.bytes, peer.bytes)
        c.conns_per_path = connectionsPerPath
        c.chunk_size = chunkSize
        c.window_bytes = windowBytes
        c.stall_timeout_ms = stallTimeoutMilliseconds
        c.user_timeout_ms = 2 * stallTimeoutMilliseconds
        c.max_auth_failures = maxAuthenticationFailures
        return try body(&c)
    }
}

/// Counters of a session.
public struct Statistics: Sendable {
    public let chunksSent, chunksResent, chunksReinjected, chunksReceived: UInt64
    public let duplicatesDropped, authenticationFailures, connectionsFailed, connectionsJoined: UInt64
    public let bytesSent, bytesReceived: UInt64
    public let liveConnections: UInt32
    /// Bytes written on each path (all transmissions), in the order the paths were given.
    public let bytesPerPath: [UInt64]
}

/// Accepts sessions on one port over several local addresses.
public final class Listener: @unchecked Sendable {
    // SAFETY (Sendable): rz_listener is internally locked; accept may be called from any thread.
    private let handle: OpaquePointer
    public let port: UInt16

    public init(addresses: [String], port: UInt16 = 0) throws {
        var out: OpaquePointer?
        var bound: UInt16 = 0
        var cStrings = addresses.map { strdup($0) }
        defer { cStrings.forEach { free($0) } }
        try cStrings.withUnsafeMutableBufferPointer { buf in
            try buf.withMemoryRebound(to: UnsafePointer<CChar>?.self) { ptrs in
                try check { rz_listener_open(&out, ptrs.baseAddress, UInt32(addresses.count), port, &bound, $0) }
            }
        }
        handle = out!
        self.port = bound
    }

    /// Wait for one peer and authenticate it; a refused handshake throws and the listener keeps going.
    public func accept(_ configuration: Configuration, timeoutMilliseconds: Int32 = -1) throws -> Session {
        var out: OpaquePointer?
        try configuration.withRaw { cfg in try check { rz_accept(handle, &cfg, timeoutMilliseconds, &out, $0) } }
        // The session keeps this listener alive: closing an accepted C session unregisters it from
        // its listener, so the listener must not be freed first (rhizomorph.h: "Close its sessions first").
        return Session(handle: out!, listener: self)
    }

    /// Wait for one peer whose key is any of `allowedPeers` (the configuration's `peer` is ignored) and
    /// authenticate it; returns the session and which key it proved. A key not in the set throws
    /// `.wrongPeerIdentity`, a proof not signed by the presented key `.badSignature`; the listener keeps
    /// going. One listener can so serve every peer a node expects (say, the sources of all its replicas).
    public func accept(_ configuration: Configuration, allowedPeers: [PublicKey],
                       timeoutMilliseconds: Int32 = -1) throws -> (Session, PublicKey) {
        var out: OpaquePointer?
        var index: UInt32 = 0
        let keys = allowedPeers.flatMap(\.bytes)
        try configuration.withRaw { cfg in
            try keys.withUnsafeBufferPointer { k in
                // SAFETY: `k` holds allowedPeers.count keys of 32 bytes back to back (PublicKey checks its
                // length), valid for the whole call; the C side reads count * 32 bytes and keeps no pointer.
                try check {
                    rz_accept_any(handle, &cfg, k.baseAddress, UInt32(clamping: allowedPeers.count), timeoutMilliseconds,
                                  &out, &index, $0)
                }
            }
        }
        return (Session(handle: out!, listener: self), allowedPeers[Int(index)])
    }

    deinit { rz_listener_close(handle) }
}

/// One authenticated multi-path session. Any thread may call anything, including `close()` while
/// other threads are inside calls (and from inside a `receivePages` callback): calls in progress
/// return `.closed` (or the session's failure), and the C session is freed only after the last of
/// them has left it.
public final class Session: @unchecked Sendable {
    // SAFETY (Sendable): `handle`, `holders`, `closing` and `freed` are guarded by `gate`. A call
    // holds the handle only between enter() and leave(); the handle is freed only once `closing` is
    // set and no call holds it, by close() or by the last call to leave, so a pointer is never used
    // after rz_session_close. Sending calls are also serialized by `sendSerial`: rz_send_* update
    // per-direction state (the epoch index, the stream offset) outside the C session's lock, so the
    // C API allows one sending thread at a time.
    private let gate = Gate()
    private let sendSerial = Gate()
    private var handle: OpaquePointer?
    /// One entry per call in progress (a thread appears twice when a callback calls in again).
    private var holders: [pthread_t] = []
    private var closing = false
    private var freed = false
    /// Accepted sessions keep their listener alive (see Listener.accept).
    private let listener: Listener?

    fileprivate init(handle: OpaquePointer, listener: Listener? = nil) {
        self.handle = handle
        self.listener = listener
    }

    public static func connect(_ configuration: Configuration, paths: [Path]) throws -> Session {
        var out: OpaquePointer?
        let raw = paths.map(\.raw)
        try configuration.withRaw { cfg in try check { rz_connect(&cfg, raw, UInt32(raw.count), &out, $0) } }
        return Session(handle: out!)
    }

    private func enter() -> OpaquePointer? {
        gate.withLock {
            guard let h = handle, !closing else { return nil }
            holders.append(pthread_self())
            return h
        }
    }

    /// Drops this thread's newest hold; the last hold to go after close() frees the C session.
    private func leave() {
        let me = pthread_self()
        let last: OpaquePointer? = gate.withLock {
            if let i = holders.lastIndex(where: { pthread_equal($0, me) != 0 }) { holders.remove(at: i) }
            guard closing, holders.isEmpty, let h = handle else { return nil }
            handle = nil
            return h
        }
        if let last { release(last) }
    }

    private func release(_ h: OpaquePointer) {
        rz_session_close(h)
        gate.withLock {
            freed = true
            gate.broadcast()
        }
    }

    /// Runs `body` with the live handle, holding it open against a concurrent close().
    private func using<T>(_ what: String, _ body: (OpaquePointer) throws -> T) throws -> T {
        guard let h = enter() else { throw RhizomorphError.closed(what) }
        defer { leave() }
        return try body(h)
    }

    /// As `using`, one sending call at a time.
    private func sending<T>(_ what: String, _ body: (OpaquePointer) throws -> T) throws -> T {
        try using(what) { h in try sendSerial.withLock { try body(h) } }
    }

    /// Send `length` bytes (nil: until EOF) read from `fd` as an ordered stream; returns when the
    /// peer has written them all.
    public func send(fromFileDescriptor fd: Int32, length: UInt64? = nil) throws {
        try sending("send") { h in try check { rz_send_fd(h, fd, length ?? UInt64.max, $0) } }
    }

    /// Send bytes as part of an ordered stream; `end` finishes the stream and waits for delivery.
    public func send(_ bytes: [UInt8], end: Bool) throws {
        try bytes.withUnsafeBufferPointer { b in
            try sending("send") { h in try check { rz_send_bytes(h, b.baseAddress, UInt64(b.count), end ? 1 : 0, $0) } }
        }
    }

    /// Receive an ordered stream into `fd` until the sender ends it; returns the byte count.
    @discardableResult
    public func receive(intoFileDescriptor fd: Int32) throws -> UInt64 {
        var got: UInt64 = 0
        try using("receive") { h in try check { rz_recv_fd(h, fd, &got, $0) } }
        return got
    }

    /// Queue an idempotent write of `data` at `offset` (copied; blocks only while the send window is full).
    public func sendPage(offset: UInt64, _ data: UnsafeRawBufferPointer) throws {
        try sending("sendPage") { h in
            try check { rz_send_page(h, offset, data.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt32(data.count), $0) }
        }
    }

    public func sendPage(offset: UInt64, _ data: [UInt8]) throws {
        try data.withUnsafeBytes { try sendPage(offset: offset, $0) }
    }

    /// Close epoch `epoch`: the peer sees it only after every page sent before it.
    public func sendBarrier(epoch: UInt64) throws {
        try sending("sendBarrier") { h in try check { rz_send_barrier(h, epoch, $0) } }
    }

    /// Wait until the peer delivered everything queued so far.
    public func flush(timeoutMilliseconds: Int32 = -1) throws {
        try using("flush") { h in try check { rz_flush(h, timeoutMilliseconds, $0) } }
    }

    /// Finish this direction and wait for the peer to deliver everything.
    public func end(timeoutMilliseconds: Int32 = -1) throws {
        try sending("end") { h in try check { rz_send_end(h, timeoutMilliseconds, $0) } }
    }

    /// Deliver pages and barriers to the closures on this thread until the sender ends the direction.
    /// Throws `.timedOut` if nothing deliverable arrives within the timeout (call again to continue).
    /// A closure that throws fails the whole session (the C library has no other way to stop), and
    /// its error is rethrown here.
    public func receivePages(
        timeoutMilliseconds: Int32 = -1,
        onPage: (UInt64, UnsafeRawBufferPointer) throws -> Void,
        onBarrier: (UInt64) throws -> Void
    ) throws {
        try withoutActuallyEscaping(onPage) { page in
            try withoutActuallyEscaping(onBarrier) { barrier in
                let box = CallbackBox(page: page, barrier: barrier)
                // SAFETY: the box outlives the call; C invokes the callbacks only inside rz_recv_pages.
                let ctx = Unmanaged.passUnretained(box).toOpaque()
                var e = rz_error()
                let rc = try using("receivePages") { h in rz_recv_pages(h, rzPageTrampoline, rzBarrierTrampoline, ctx, timeoutMilliseconds, &e) }
                withExtendedLifetime(box) {}
                if let thrown = box.thrown { throw thrown }
                if rc < 0 { throw RhizomorphError(rc: rc, error: e) }
            }
        }
    }

    /// Counters; all zero once the session is closed.
    public var statistics: Statistics {
        var s = rz_stats()
        _ = try? using("statistics") { h in rz_session_stats(h, &s) }
        return Statistics(
            chunksSent: s.chunks_sent, chunksResent: s.chunks_resent, chunksReinjected: s.chunks_reinjected,
            chunksReceived: s.chunks_received, duplicatesDropped: s.duplicates_dropped,
            authenticationFailures: s.auth_failures, connectionsFailed: s.conns_failed,
            connectionsJoined: s.conns_joined, bytesSent: s.bytes_sent, bytesReceived: s.bytes_received,
            liveConnections: s.conns_live,
            bytesPerPath: withUnsafeBytes(of: s.per_path_bytes) { Array($0.bindMemory(to: UInt64.self)) })
    }

    /// The 16-byte session ID, the same at both ends (all zero once the session is closed).
    public var id: [UInt8] {
        var out = [UInt8](repeating: 0, count: 16)
        _ = try? using("id") { h in rz_session_id(h, &out) }
        return out
    }

    /// Wait until `count` connections are up.
    public func waitForConnections(_ count: UInt32, timeoutMilliseconds: Int32) -> Bool {
        (try? using("waitForConnections") { h in rz_session_wait_conns(h, count, timeoutMilliseconds) == 0 }) ?? false
    }

    /// Tell the peer, free everything. Idempotent, from any thread. Calls in progress on other
    /// threads are failed with `.closed` first (rz_session_shutdown) and waited for. Called from
    /// inside a `receivePages` callback, it cannot wait for its own call: it returns at once, the
    /// call then ends with `.closed`, and the session is freed as that call leaves.
    public func close() {
        let me = pthread_self()
        let (h, busy, nested): (OpaquePointer?, Bool, Bool) = gate.withLock {
            let nested = holders.contains { pthread_equal($0, me) != 0 }
            guard !closing, let h = handle else { return (nil, false, nested) }
            closing = true
            if holders.isEmpty {
                handle = nil
                return (h, false, nested)
            }
            holders.append(me)  // held like a call, so the handle outlives rz_session_shutdown below
            return (h, true, nested)
        }
        if let h {
            if busy {
                // Outside `gate`, so that no C lock is ever taken while `gate` is held (one lock
                // order); the hold taken above keeps the handle valid until leave().
                rz_session_shutdown(h)
                leave()
            } else {
                release(h)
            }
        }
        if nested { return }
        gate.withLock { while !freed { gate.wait() } }
    }

    deinit { close() }
}

/// A mutex with one condition (on the monotonic clock): waiting until in-flight calls have left a
/// session, or for a message to arrive.
final class Gate: @unchecked Sendable {
    // SAFETY (Sendable): only touched through pthread calls; heap cells that never move, freed in deinit.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t> = .allocate(capacity: 1)
    private let cond: UnsafeMutablePointer<pthread_cond_t> = .allocate(capacity: 1)

    init() {
        mutex.initialize(to: pthread_mutex_t())
        cond.initialize(to: pthread_cond_t())
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Only inside withLock.
    func wait() { pthread_cond_wait(cond, mutex) }
    /// Only inside withLock. Returns false once the monotonic clock passed `deadline` (seconds).
    func wait(until deadline: Double) -> Bool {
        var ts = timespec()
        ts.tv_sec = Int(deadline)
        ts.tv_nsec = Int((deadline - Double(Int(deadline))) * 1e9)
        return pthread_cond_timedwait(cond, mutex, &ts) != ETIMEDOUT
    }
    /// Only inside withLock.
    func broadcast() { pthread_cond_broadcast(cond) }
}

/// Monotonic seconds, the clock `Gate.wait(until:)` uses.
func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

private final class CallbackBox {
    let page: (UInt64, UnsafeRawBufferPointer) throws -> Void
    let barrier: (UInt64) throws -> Void
    var thrown: Error?
    init(page: @escaping (UInt64, UnsafeRawBufferPointer) throws -> Void, barrier: @escaping (UInt64) throws -> Void) {
        self.page = page
        self.barrier = barrier
    }
}

private func rzPageTrampoline(_ ctx: UnsafeMutableRawPointer?, _ offset: UInt64, _ data: UnsafePointer<UInt8>?,
                              _ length: UInt32) -> Int32 {
    // SAFETY: ctx is the CallbackBox passed by receivePages, alive for the whole rz_recv_pages call.
    let box = Unmanaged<CallbackBox>.fromOpaque(ctx!).takeUnretainedValue()
    do {
        try box.page(offset, UnsafeRawBufferPointer(start: data, count: Int(length)))
        return 0
    } catch {
        box.thrown = error
        return -ECANCELED
    }
}

private func rzBarrierTrampoline(_ ctx: UnsafeMutableRawPointer?, _ epoch: UInt64) -> Int32 {
    // SAFETY: as above.
    let box = Unmanaged<CallbackBox>.fromOpaque(ctx!).takeUnretainedValue()
    do {
        try box.barrier(epoch)
        return 0
    } catch {
        box.thrown = error
        return -ECANCELED
    }
}

/// Count of RDMA devices (0 on machines without one; the TCP backend is used then).
public func rdmaDeviceCount() throws -> Int {
    var info = [rz_rdma_device_info](repeating: rz_rdma_device_info(), count: 8)
    var e = rz_error()
    let n = rz_rdma_probe(&info, 8, &e)
    if n < 0 { throw RhizomorphError(rc: n, error: e) }
    return Int(n)
}
