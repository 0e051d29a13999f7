// Ceph through librados/librbd's C APIs: the storage driver's only door to Ceph (no `rbd`/`ceph`
// subprocesses). A `CephConnection` is one RADOS client (one cluster handle, one client address that
// the cluster can blocklist); it creates, lists and deletes RBD images in pools and opens them as
// `RBDImage`s for I/O, snapshots and the exclusive lock.
//
// Threads: every librados/librbd call blocks (network round trips, up to the timeouts set at connect),
// so each public call runs its C calls on `CephQueue` (a Dispatch queue), never on Swift's cooperative
// pool, and returns through a continuation — like ServiceRuntime's `onWorker`. librados cluster and
// I/O-context handles are thread-safe; an image handle is thread-safe for I/O, but must not be closed
// while a call uses it: `RBDImage` guards its handle with a read-write lock (calls read, close writes).
//
// Timeouts: a cluster that is down must fail in seconds, not librados' default 5 minutes, so connect
// sets client_mount_timeout, rados_mon_op_timeout and rados_osd_op_timeout (`CephClientConfig`).

import CRados
import Dispatch
import Glibc

/// How to reach a cluster as which client.
public struct CephClientConfig: Sendable, Equatable {
    /// The ceph.conf to read (monitor addresses, auth settings).
    public var confFile: String
    /// The client's entity name, e.g. `client.admin`.
    public var clientName: String
    /// The keyring holding the client's key; nil uses the conf file's `keyring` setting.
    public var keyring: String?
    /// Seconds connecting may take before it fails as `.unreachable` (client_mount_timeout).
    public var connectTimeout: Int
    /// Seconds a monitor command may take (rados_mon_op_timeout).
    public var monitorOpTimeout: Int
    /// Seconds an OSD operation (an image read or write) may take (rados_osd_op_timeout); 0 waits
    /// forever. Long enough to ride out an OSD's heartbeat grace (~20 s) so a hung OSD degrades I/O
    /// instead of failing it.
    public var osdOpTimeout: Int
    /// Further client options, set after the conf file is read, e.g. `["rbd_cache": "false"]`
    /// (a benchmark comparing against another librbd client with the same settings).
    public var options: [String: String]

    public init(confFile: String, clientName: String = "client.admin", keyring: String? = nil,
                connectTimeout: Int = 5, monitorOpTimeout: Int = 10, osdOpTimeout: Int = 60, options: [String: String] = [:]) {
        self.confFile = confFile; self.clientName = clientName; self.keyring = keyring
        self.connectTimeout = connectTimeout; self.monitorOpTimeout = monitorOpTimeout; self.osdOpTimeout = osdOpTimeout
        self.options = options
    }
}

/// RBD image features (librbd's `RBD_FEATURE_*` bits).
public struct RBDFeatures: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let layering = RBDFeatures(rawValue: UInt64(RBD_FEATURE_LAYERING))
    public static let exclusiveLock = RBDFeatures(rawValue: UInt64(RBD_FEATURE_EXCLUSIVE_LOCK))
    public static let objectMap = RBDFeatures(rawValue: UInt64(RBD_FEATURE_OBJECT_MAP))
    public static let fastDiff = RBDFeatures(rawValue: UInt64(RBD_FEATURE_FAST_DIFF))
    public static let deepFlatten = RBDFeatures(rawValue: UInt64(RBD_FEATURE_DEEP_FLATTEN))
    /// Ceph's own default set, which includes the exclusive lock that fencing relies on.
    public static let standard: RBDFeatures = [.layering, .exclusiveLock, .objectMap, .fastDiff, .deepFlatten]
}

/// An image's size and layout (rbd_stat).
public struct RBDImageInfo: Sendable, Equatable {
    public let size: UInt64
    public let objectSize: UInt64
    public let objectCount: UInt64
    /// The prefix of its data objects' names (`rbd_data.ID`; object N is `PREFIX.%016x`), to ask the
    /// cluster where an image's data lives (`osd map`).
    public let blockNamePrefix: String
}

/// One snapshot of an image.
public struct RBDSnapshot: Sendable, Equatable {
    public let id: UInt64
    public let name: String
    /// The image's size when the snapshot was taken.
    public let size: UInt64
}

/// A client watching an image (it has the image open).
public struct RBDWatcher: Sendable, Equatable {
    /// The client's address, as `blocklist(address:)` takes it.
    public let address: String
    /// The client's global id (the N of `client.N`).
    public let clientID: Int64
    public let cookie: UInt64
}

/// The client holding an image's exclusive lock.
public struct RBDLockOwner: Sendable, Equatable {
    /// The owner as librbd names it (16.2: the client's address), as `breakLock(owner:)` takes it.
    public let owner: String
    /// Its address (`blocklist(address:)`), when Ceph reports it.
    public let address: String?
}

/// Runs blocking librados/librbd calls off the cooperative pool.
enum CephQueue {
    static let queue = DispatchQueue(label: "mycelium.rbd", attributes: .concurrent)

    static func run<T: Sendable>(_ body: @escaping @Sendable () throws(RBDError) -> T) async throws(RBDError) -> T {
        let result: Result<T, RBDError> = await withCheckedContinuation { c in
            queue.async {
                do throws(RBDError) { c.resume(returning: .success(try body())) } catch { c.resume(returning: .failure(error)) }
            }
        }
        return try result.get()
    }
}

/// A read-write lock (pthread), heap-allocated so its address never moves.
final class RWLock: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): the pthread_rwlock_t is only used through pthread calls.
    private let l: UnsafeMutablePointer<pthread_rwlock_t>
    init() { l = .allocate(capacity: 1); pthread_rwlock_init(l, nil) }
    deinit { pthread_rwlock_destroy(l); l.deallocate() }
    func read<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T { pthread_rwlock_rdlock(l); defer { pthread_rwlock_unlock(l) }; return try body() }
    func write<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T { pthread_rwlock_wrlock(l); defer { pthread_rwlock_unlock(l) }; return try body() }
    /// `body` under the read lock, or nil at once when a writer holds it (never blocks the caller).
    func tryRead<T>(_ body: () -> T) -> T? {
        guard pthread_rwlock_tryrdlock(l) == 0 else { return nil }
        defer { pthread_rwlock_unlock(l) }
        return body()
    }
}

/// One RADOS client connected to a cluster.
public final class CephConnection: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): a rados_t is thread-safe once connected; it is shut down only in
    // deinit, when no image (each holds a strong reference to its connection) can still use it.
    let cluster: rados_t
    public let config: CephClientConfig
    /// The monitors the conf names (for error messages).
    public let monitors: String

    /// Connects; fails within about `config.connectTimeout` seconds when no monitor answers.
    public static func connect(_ config: CephClientConfig) async throws(RBDError) -> CephConnection {
        try await CephQueue.run { () throws(RBDError) in try CephConnection(blocking: config) }
    }

    init(blocking config: CephClientConfig) throws(RBDError) {
        let op = "connect to Ceph as \(config.clientName) with \(config.confFile)"
        guard access(config.confFile, R_OK) == 0 else {
            throw .invalidArgument(reason: "cannot read the conf file \(config.confFile): is the cluster up? (scripts/ceph up DIR prints conf=)", operation: op, errno: Glibc.errno)
        }
        if let k = config.keyring, access(k, R_OK) != 0 {
            throw .invalidArgument(reason: "cannot read the keyring \(k)", operation: op, errno: Glibc.errno)
        }
        for t in [config.connectTimeout, config.monitorOpTimeout] where t <= 0 {
            throw .invalidArgument(reason: "connect and monitor timeouts must be > 0 seconds (got \(t))", operation: op, errno: EINVAL)
        }
        var c: rados_t?
        var rc = rados_create2(&c, "ceph", config.clientName, 0)
        guard rc == 0, let c else { throw .invalidArgument(reason: "bad client name '\(config.clientName)' (want client.NAME)", operation: op, errno: -rc) }
        func set(_ k: String, _ v: String) throws(RBDError) {
            let r = rados_conf_set(c, k, v)
            if r < 0 { rados_shutdown(c); throw .invalidArgument(reason: "cannot set \(k)=\(v)", operation: op, errno: -r) }
        }
        rc = rados_conf_read_file(c, config.confFile)
        if rc < 0 { rados_shutdown(c); throw .invalidArgument(reason: "cannot parse the conf file \(config.confFile)", operation: op, errno: -rc) }
        if let k = config.keyring { try set("keyring", k) }
        try set("client_mount_timeout", String(config.connectTimeout))
        try set("rados_mon_op_timeout", String(config.monitorOpTimeout))
        try set("rados_osd_op_timeout", String(config.osdOpTimeout))
        for (k, v) in config.options.sorted(by: { $0.key < $1.key }) { try set(k, v) }
        var buf = [CChar](repeating: 0, count: 1024)
        let mons = rados_conf_get(c, "mon_host", &buf, buf.count) == 0
            ? buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } : "(no mon_host in \(config.confFile))"
        rc = rados_connect(c)
        if rc < 0 {
            rados_shutdown(c)
            if -rc == EACCES || -rc == EPERM { throw .permissionDenied(operation: op, errno: -rc) }
            throw .unreachable(monitors: mons, operation: op, errno: -rc)
        }
        cluster = c; self.config = config; monitors = mons
    }

    deinit { rados_shutdown(cluster) }

    // MARK: this client

    /// This client's address, as another client would blocklist it (rados_getaddrs, e.g.
    /// `127.0.0.1:0/3710147553`; a v2 address list is reduced to its first address).
    public func address() async throws(RBDError) -> String {
        try await CephQueue.run { [self] () throws(RBDError) in
            var p: UnsafeMutablePointer<CChar>?
            let rc = rados_getaddrs(cluster, &p)
            guard rc == 0, let p else { throw RBDError.from(rc, "get this client's address", monitors: monitors) }
            defer { free(p) }
            return Self.firstAddress(String(cString: p))
        }
    }

    /// This client's global id: the N of `client.N` in lock owners and watchers.
    public var instanceID: UInt64 { rados_get_instance_id(cluster) }

    /// `[v2:127.0.0.1:0/123,v1:...]` or `v2:127.0.0.1:0/123` → `127.0.0.1:0/123`.
    static func firstAddress(_ s: String) -> String {
        var t = Substring(s)
        if t.hasPrefix("[") { t = t.dropFirst() }
        if t.hasSuffix("]") { t = t.dropLast() }
        if let comma = t.firstIndex(of: ",") { t = t[..<comma] }
        for prefix in ["v2:", "v1:", "any:"] where t.hasPrefix(prefix) { t = t.dropFirst(prefix.count) }
        return String(t)
    }

    // MARK: monitor commands

    /// Sends one JSON monitor command; returns its output.
    func monCommand(_ json: String, _ op: String) throws(RBDError) -> String {
        try monCommandReply(json, op).output
    }

    /// Sends one JSON monitor command; returns its output and the monitor's status line.
    func monCommandReply(_ json: String, _ op: String) throws(RBDError) -> MonitorReply {
        var outbuf: UnsafeMutablePointer<CChar>?, outs: UnsafeMutablePointer<CChar>?
        var outbufLen = 0, outsLen = 0
        let rc: Int32 = json.withCString { cmd in
            var cmds: [UnsafePointer<CChar>?] = [cmd]
            return cmds.withUnsafeMutableBufferPointer { b in
                rados_mon_command(cluster, b.baseAddress, 1, nil, 0, &outbuf, &outbufLen, &outs, &outsLen)
            }
        }
        defer { if let outbuf { rados_buffer_free(outbuf) }; if let outs { rados_buffer_free(outs) } }
        if rc < 0 {
            let status = outs.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: outsLen), as: UTF8.self) } ?? ""
            if rc == -EINVAL { throw .invalidArgument(reason: "the monitor refused the command: \(status)", operation: op, errno: EINVAL) }
            throw RBDError.from(rc, status.isEmpty ? op : "\(op) (monitor: \(status))", monitors: monitors)
        }
        let output = outbuf.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: outbufLen), as: UTF8.self) } ?? ""
        let status = outs.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: outsLen), as: UTF8.self) } ?? ""
        return MonitorReply(output: output, status: status)
    }

    /// Fences the client at `address` (as `address()`/watchers/lock owners report it): every OSD
    /// refuses its operations for `expirySeconds`. Ceph's default (1 h) is too short for a zombie that
    /// may wake later, so the caller chooses.
    public func blocklist(address: String, expirySeconds: Int) async throws(RBDError) {
        let op = "blocklist client \(address)"
        let allowed = Set("0123456789abcdefABCDEF.:/[]")
        guard !address.isEmpty, address.count <= 128, address.allSatisfy({ allowed.contains($0) }) else {
            throw .invalidArgument(reason: "'\(address)' is not a client address (e.g. 127.0.0.1:0/3710147553)", operation: op, errno: EINVAL)
        }
        guard expirySeconds > 0 else {
            throw .invalidArgument(reason: "blocklist expiry must be > 0 seconds (got \(expirySeconds))", operation: op, errno: EINVAL)
        }
        let json = #"{"prefix":"osd blocklist","blocklistop":"add","addr":"\#(address)","expire":\#(expirySeconds).0}"#
        _ = try await CephQueue.run { [self] () throws(RBDError) in try monCommand(json, op) }
    }

    /// Waits until this client has the cluster's newest OSD map (rados_wait_for_latest_osdmap). After
    /// a blocklist, this client's next operations carry that map's epoch, so an OSD handles them (and
    /// anything the fenced client sends after them) only once it knows the fenced client is blocklisted.
    public func waitForLatestOSDMap() async throws(RBDError) {
        try await CephQueue.run { [self] () throws(RBDError) in
            let rc = rados_wait_for_latest_osdmap(cluster)
            if rc < 0 { throw RBDError.from(rc, "wait for the latest OSD map", monitors: monitors) }
        }
    }

    /// Lifts a blocklist entry (for tests and an operator's deliberate recovery).
    public func unblocklist(address: String) async throws(RBDError) {
        let op = "remove client \(address) from the blocklist"
        let allowed = Set("0123456789abcdefABCDEF.:/[]")
        guard !address.isEmpty, address.allSatisfy({ allowed.contains($0) }) else {
            throw .invalidArgument(reason: "'\(address)' is not a client address", operation: op, errno: EINVAL)
        }
        let json = #"{"prefix":"osd blocklist","blocklistop":"rm","addr":"\#(address)"}"#
        _ = try await CephQueue.run { [self] () throws(RBDError) in try monCommand(json, op) }
    }

    // MARK: pools

    public func poolExists(_ pool: String) async throws(RBDError) -> Bool {
        try await CephQueue.run { [self] () throws(RBDError) in
            let rc = rados_pool_lookup(cluster, pool)
            if rc >= 0 { return true }
            if rc == -Int64(ENOENT) { return false }
            throw RBDError.from(Int32(rc), "look up pool \(pool)", monitors: monitors)
        }
    }

    /// Creates `pool` (Ceph's default PG count and replica size) and initialises it for RBD.
    public func createPool(_ pool: String) async throws(RBDError) {
        let op = "create pool \(pool)"
        try Self.checkName(pool, kind: "pool", op)
        try await CephQueue.run { [self] () throws(RBDError) in
            let rc = rados_pool_create(cluster, pool)
            if rc < 0 { throw RBDError.from(rc, op, what: "pool \(pool)", monitors: monitors) }
            // Nothing half-created: a pool that cannot be initialised for RBD is deleted again.
            let io: rados_ioctx_t
            do throws(RBDError) { io = try ioctx(pool, op) } catch { _ = rados_pool_delete(cluster, pool); throw error }
            let r = rbd_pool_init(io, false)
            rados_ioctx_destroy(io)
            if r < 0 { _ = rados_pool_delete(cluster, pool); throw RBDError.from(r, "initialise pool \(pool) for RBD") }
        }
    }

    /// Deletes `pool` and everything in it (the monitors must allow it: `mon allow pool delete`).
    public func deletePool(_ pool: String) async throws(RBDError) {
        try await CephQueue.run { [self] () throws(RBDError) in
            let rc = rados_pool_delete(cluster, pool)
            if rc < 0 { throw RBDError.from(rc, "delete pool \(pool)", what: "pool \(pool)", monitors: monitors) }
        }
    }

    func ioctx(_ pool: String, _ op: String) throws(RBDError) -> rados_ioctx_t {
        var io: rados_ioctx_t?
        let rc = rados_ioctx_create(cluster, pool, &io)
        if rc == -ENOENT { throw .poolNotFound(pool: pool, operation: op, errno: ENOENT) }
        guard rc == 0, let io else { throw RBDError.from(rc, op, monitors: monitors) }
        return io
    }

    static func checkName(_ name: String, kind: String, _ op: String) throws(RBDError) {
        guard !name.isEmpty, name.utf8.count <= 90, !name.contains("/"), !name.contains("@"),
              name.allSatisfy({ $0.isASCII && !$0.isWhitespace && $0 != "\0" }) else {
            throw .invalidArgument(reason: "'\(name)' is not a valid \(kind) name (1-90 printable ASCII characters, no '/', '@' or spaces)", operation: op, errno: EINVAL)
        }
    }

    // MARK: images

    /// Creates image `name` of `size` bytes in `pool`.
    public func createImage(pool: String, name: String, size: UInt64, features: RBDFeatures = .standard) async throws(RBDError) {
        let op = "create image \(pool)/\(name)"
        try Self.checkName(name, kind: "image", op)
        guard size > 0 else { throw .invalidArgument(reason: "an image needs a size > 0 bytes", operation: op, errno: EINVAL) }
        if features.contains(.objectMap) && !features.contains(.exclusiveLock) {
            throw .invalidArgument(reason: "the object-map feature needs exclusive-lock", operation: op, errno: EINVAL)
        }
        try await CephQueue.run { [self] () throws(RBDError) in
            let io = try ioctx(pool, op)
            defer { rados_ioctx_destroy(io) }
            var order: Int32 = 0
            let rc = rbd_create2(io, name, size, features.rawValue, &order)
            if rc < 0 { throw RBDError.from(rc, op, what: "image \(pool)/\(name)") }
        }
    }

    /// The images in `pool`, by name.
    public func images(pool: String) async throws(RBDError) -> [String] {
        let op = "list the images of pool \(pool)"
        return try await CephQueue.run { [self] () throws(RBDError) in
            let io = try ioctx(pool, op)
            defer { rados_ioctx_destroy(io) }
            var max = 16
            while true {
                var specs = [rbd_image_spec_t](repeating: rbd_image_spec_t(), count: max)
                let rc = rbd_list2(io, &specs, &max)
                if rc == -ERANGE { continue }
                if rc < 0 { throw RBDError.from(rc, op) }
                defer { rbd_image_spec_list_cleanup(&specs, max) }
                return specs.prefix(max).map { $0.name.map { String(cString: $0) } ?? "" }.sorted()
            }
        }
    }

    /// Deletes image `name`. Refused with `.inUse` while any client has it open (it has watchers),
    /// and with `.failed(ENOTEMPTY)` while it has snapshots.
    public func removeImage(pool: String, name: String) async throws(RBDError) {
        let op = "delete image \(pool)/\(name)"
        try Self.checkName(name, kind: "image", op)
        try await CephQueue.run { [self] () throws(RBDError) in
            let io = try ioctx(pool, op)
            defer { rados_ioctx_destroy(io) }
            // A read-only open does not watch the image, so it sees only the other clients.
            var img: rbd_image_t?
            var rc = rbd_open_read_only(io, name, &img, nil)
            if rc < 0 { throw RBDError.from(rc, op, what: "image \(pool)/\(name)") }
            let watchers = Self.watchers(img!)
            rbd_close(img)
            if case .success(let w) = watchers, !w.isEmpty {
                throw .inUse(image: "\(pool)/\(name)", watchers: w.map { "client.\($0.clientID) at \($0.address)" }, operation: op, errno: EBUSY)
            }
            rc = rbd_remove(io, name)
            if rc == -EBUSY { throw .inUse(image: "\(pool)/\(name)", watchers: [], operation: op, errno: EBUSY) }
            if rc == -ENOTEMPTY {
                throw .invalidArgument(reason: "image \(pool)/\(name) still has snapshots: remove them first", operation: op, errno: ENOTEMPTY)
            }
            if rc < 0 { throw RBDError.from(rc, op, what: "image \(pool)/\(name)") }
        }
    }

    /// The clients that have image `name` open (its watchers), seen through a read-only open that does
    /// not add one: what a caller checks before a change that must not happen under a user.
    public func imageWatchers(pool: String, name: String) async throws(RBDError) -> [RBDWatcher] {
        let op = "list the watchers of image \(pool)/\(name)"
        try Self.checkName(name, kind: "image", op)
        return try await CephQueue.run { [self] () throws(RBDError) in
            let io = try ioctx(pool, op)
            defer { rados_ioctx_destroy(io) }
            var img: rbd_image_t?
            let rc = rbd_open_read_only(io, name, &img, nil)
            if rc < 0 { throw RBDError.from(rc, op, what: "image \(pool)/\(name)") }
            defer { rbd_close(img) }
            return try Self.watchers(img!).get()
        }
    }

    /// Opens image `name` for reading and writing; the handle watches the image until `close()`.
    /// With `snapshot`, opens that snapshot read-only (writes fail with EROFS) and does not watch.
    public func openImage(pool: String, name: String, snapshot: String? = nil) async throws(RBDError) -> RBDImage {
        let op = "open image \(pool)/\(name)" + (snapshot.map { "@\($0)" } ?? "")
        try Self.checkName(name, kind: "image", op)
        if let snapshot { try Self.checkName(snapshot, kind: "snapshot", op) }
        return try await CephQueue.run { [self] () throws(RBDError) in
            let io = try ioctx(pool, op)
            var img: rbd_image_t?
            let rc = snapshot == nil ? rbd_open(io, name, &img, nil) : rbd_open_read_only(io, name, &img, snapshot)
            if rc < 0 {
                rados_ioctx_destroy(io)
                throw RBDError.from(rc, op, what: snapshot == nil ? "image \(pool)/\(name)" : "snapshot \(pool)/\(name)@\(snapshot!)")
            }
            guard let img else { rados_ioctx_destroy(io); throw .failed(operation: op, errno: EIO) }
            return RBDImage(connection: self, io: io, handle: img, pool: pool, name: name, readOnly: snapshot != nil)
        }
    }

    static func watchers(_ img: rbd_image_t) -> Result<[RBDWatcher], RBDError> {
        var max = 8
        while true {
            var ws = [rbd_image_watcher_t](repeating: rbd_image_watcher_t(), count: max)
            let rc = rbd_watchers_list(img, &ws, &max)
            if rc == -ERANGE { continue }
            if rc < 0 { return .failure(RBDError.from(rc, "list the watchers of an image")) }
            defer { rbd_watchers_list_cleanup(&ws, max) }
            return .success(ws.prefix(max).map {
                RBDWatcher(address: $0.addr.map { firstAddress(String(cString: $0)) } ?? "", clientID: $0.id, cookie: $0.cookie)
            })
        }
    }
}

/// An open RBD image. Close it with `close()`; deinit closes it too.
public final class RBDImage: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): `handle` and `io` are used only under `lock` (read for calls,
    // write for close), so no call runs on a closed handle; librbd allows concurrent calls on an image.
    let connection: CephConnection
    private let io: rados_ioctx_t
    let handle: rbd_image_t  // internal: RBDAsyncIO.swift submits on it under `lock`
    var open = true
    let lock = RWLock()
    public let pool: String
    public let name: String
    /// Opened at a snapshot: reads only.
    public let readOnly: Bool
    var spec: String { "\(pool)/\(name)" }

    init(connection: CephConnection, io: rados_ioctx_t, handle: rbd_image_t, pool: String, name: String, readOnly: Bool) {
        self.connection = connection; self.io = io; self.handle = handle; self.pool = pool; self.name = name; self.readOnly = readOnly
    }

    deinit { if open { rbd_close(handle); rados_ioctx_destroy(io) } }

    /// Runs `body` with the open handle, off the cooperative pool.
    private func call<T: Sendable>(_ op: String, _ body: @escaping @Sendable (rbd_image_t) throws(RBDError) -> T) async throws(RBDError) -> T {
        try await CephQueue.run { [self] () throws(RBDError) in
            try lock.read { () throws(RBDError) -> T in
                guard open else { throw .closed(operation: op) }
                return try body(handle)
            }
        }
    }

    /// Closes the image (releasing its exclusive lock if held). Idempotent.
    public func close() async throws(RBDError) {
        try await CephQueue.run { [self] () throws(RBDError) in
            try lock.write { () throws(RBDError) in
                guard open else { return }
                open = false
                let rc = rbd_close(handle)
                rados_ioctx_destroy(io)
                if rc < 0 { throw RBDError.from(rc, "close image \(spec)", image: spec) }
            }
        }
    }

    /// Writes `bytes` at `offset`; all of them or an error.
    public func write(_ bytes: [UInt8], at offset: UInt64) async throws(RBDError) {
        let op = "write \(bytes.count) bytes at \(offset) to image \(spec)"
        if readOnly { throw .invalidArgument(reason: "this handle is a read-only snapshot", operation: op, errno: EROFS) }
        try await call(op) { [spec] (h) throws(RBDError) in
            let n = bytes.withUnsafeBytes { b in
                rbd_write(h, offset, b.count, b.baseAddress?.assumingMemoryBound(to: CChar.self))
            }
            if n < 0 { throw RBDError.from(Int32(n), op, what: "the range", image: spec) }
            if n != bytes.count { throw .failed(operation: op + " (short write: \(n))", errno: EIO) }
        }
    }

    /// Reads `count` bytes at `offset` (fewer only at the end of the image).
    public func read(count: Int, at offset: UInt64) async throws(RBDError) -> [UInt8] {
        let op = "read \(count) bytes at \(offset) from image \(spec)"
        guard count >= 0 else { throw .invalidArgument(reason: "negative count \(count)", operation: op, errno: EINVAL) }
        return try await call(op) { [spec] (h) throws(RBDError) in
            var out = [UInt8](repeating: 0, count: count)
            let n = out.withUnsafeMutableBytes { b in
                rbd_read(h, offset, b.count, b.baseAddress?.assumingMemoryBound(to: CChar.self))
            }
            if n < 0 { throw RBDError.from(Int32(n), op, what: "the range", image: spec) }
            if n < count { out.removeLast(count - n) }
            return out
        }
    }

    /// Makes every acknowledged write durable on the OSDs (rbd_flush).
    public func flush() async throws(RBDError) {
        let op = "flush image \(spec)"
        try await call(op) { [spec] (h) throws(RBDError) in
            let rc = rbd_flush(h)
            if rc < 0 { throw RBDError.from(rc, op, image: spec) }
        }
    }

    public func stat() async throws(RBDError) -> RBDImageInfo {
        let op = "stat image \(spec)"
        return try await call(op) { [spec] (h) throws(RBDError) in
            var info = rbd_image_info_t()
            let rc = rbd_stat(h, &info, MemoryLayout<rbd_image_info_t>.size)
            if rc < 0 { throw RBDError.from(rc, op, image: spec) }
            // rbd_stat's own block_name_prefix field is deprecated; this call is its replacement.
            var buf = [CChar](repeating: 0, count: 128)
            let prc = rbd_get_block_name_prefix(h, &buf, buf.count)
            if prc < 0 { throw RBDError.from(prc, op, image: spec) }
            let prefix = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            return RBDImageInfo(size: info.size, objectSize: info.obj_size, objectCount: info.num_objs, blockNamePrefix: prefix)
        }
    }

    public func resize(to size: UInt64) async throws(RBDError) {
        let op = "resize image \(spec) to \(size) bytes"
        guard size > 0 else { throw .invalidArgument(reason: "an image needs a size > 0 bytes", operation: op, errno: EINVAL) }
        try await call(op) { [spec] (h) throws(RBDError) in
            let rc = rbd_resize(h, size)
            if rc < 0 { throw RBDError.from(rc, op, image: spec) }
        }
    }

    // MARK: snapshots

    public func createSnapshot(_ snap: String) async throws(RBDError) {
        let op = "snapshot image \(spec) as \(snap)"
        try CephConnection.checkName(snap, kind: "snapshot", op)
        try await call(op) { [spec] (h) throws(RBDError) in
            let rc = rbd_snap_create(h, snap)
            if rc < 0 { throw RBDError.from(rc, op, what: "snapshot \(spec)@\(snap)", image: spec) }
        }
    }

    public func snapshots() async throws(RBDError) -> [RBDSnapshot] {
        let op = "list the snapshots of image \(spec)"
        return try await call(op) { (h) throws(RBDError) in
            var max: Int32 = 8
            while true {
                var snaps = [rbd_snap_info_t](repeating: rbd_snap_info_t(), count: Int(max) + 1)
                let n = rbd_snap_list(h, &snaps, &max)
                if n == -ERANGE { continue }
                if n < 0 { throw RBDError.from(n, op) }
                defer { rbd_snap_list_end(&snaps) }
                return snaps.prefix(Int(n)).map { RBDSnapshot(id: $0.id, name: $0.name.map { String(cString: $0) } ?? "", size: $0.size) }
            }
        }
    }

    public func removeSnapshot(_ snap: String) async throws(RBDError) {
        let op = "remove snapshot \(spec)@\(snap)"
        try CephConnection.checkName(snap, kind: "snapshot", op)
        try await call(op) { [spec] (h) throws(RBDError) in
            let rc = rbd_snap_remove(h, snap)
            if rc < 0 { throw RBDError.from(rc, op, what: "snapshot \(spec)@\(snap)", image: spec) }
        }
    }

    // MARK: watchers and the exclusive lock

    /// The clients that have the image open (this one included).
    public func watchers() async throws(RBDError) -> [RBDWatcher] {
        try await call("list the watchers of image \(spec)") { (h) throws(RBDError) in try CephConnection.watchers(h).get() }
    }

    /// Takes the image's exclusive lock and keeps it: librbd then refuses other clients' requests for
    /// it (they get `.lockedElsewhere`) until this client releases it, closes, or is blocklisted.
    public func acquireExclusiveLock() async throws(RBDError) {
        let op = "acquire the exclusive lock of image \(spec)"
        try await call(op) { [spec] (h) throws(RBDError) in
            let rc = rbd_lock_acquire(h, RBD_LOCK_MODE_EXCLUSIVE)
            if rc < 0 { throw RBDError.from(rc == -EBUSY ? -EROFS : rc, op, image: spec) }
        }
    }

    public func releaseExclusiveLock() async throws(RBDError) {
        let op = "release the exclusive lock of image \(spec)"
        try await call(op) { [spec] (h) throws(RBDError) in
            let rc = rbd_lock_release(h)
            if rc < 0 { throw RBDError.from(rc, op, image: spec) }
        }
    }

    /// Whether this handle holds the exclusive lock.
    public func ownsExclusiveLock() async throws(RBDError) -> Bool {
        let op = "ask who owns the exclusive lock of image \(spec)"
        return try await call(op) { [spec] (h) throws(RBDError) in
            var owner: Int32 = 0
            let rc = rbd_is_exclusive_lock_owner(h, &owner)
            if rc < 0 { throw RBDError.from(rc, op, image: spec) }
            return owner != 0
        }
    }

    /// The clients holding the exclusive lock (none or one), with their addresses.
    public func lockOwners() async throws(RBDError) -> [RBDLockOwner] {
        let op = "list the exclusive lock owners of image \(spec)"
        return try await call(op) { [spec] (h) throws(RBDError) in
            var mode = RBD_LOCK_MODE_EXCLUSIVE
            var max = 4
            var owners = [UnsafeMutablePointer<CChar>?](repeating: nil, count: max)
            let rc = rbd_lock_get_owners(h, &mode, &owners, &max)
            if rc == -ENOENT { return [] }
            if rc < 0 { throw RBDError.from(rc, op, image: spec) }
            let names = owners.prefix(max).map { $0.map { String(cString: $0) } ?? "" }
            rbd_lock_get_owners_cleanup(&owners, max)
            let addrs = Self.lockerAddresses(h)
            // librbd 16.2 names an owner by its address (`127.0.0.1:0/3710147553`); older ones by `client.N`.
            return names.map { RBDLockOwner(owner: $0, address: addrs[$0] ?? ($0.contains("/") ? CephConnection.firstAddress($0) : nil)) }
        }
    }

    /// entity → address of the image header's lockers (the exclusive lock is one of them).
    private static func lockerAddresses(_ h: rbd_image_t) -> [String: String] {
        var exclusive: Int32 = 0
        var tagLen = 0, clientsLen = 0, cookiesLen = 0, addrsLen = 0
        var rc = rbd_list_lockers(h, &exclusive, nil, &tagLen, nil, &clientsLen, nil, &cookiesLen, nil, &addrsLen)
        guard rc == -ERANGE || rc >= 0 else { return [:] }
        var tag = [CChar](repeating: 0, count: tagLen + 1), clients = [CChar](repeating: 0, count: clientsLen + 1)
        var cookies = [CChar](repeating: 0, count: cookiesLen + 1), addrs = [CChar](repeating: 0, count: addrsLen + 1)
        tagLen += 1; clientsLen += 1; cookiesLen += 1; addrsLen += 1
        rc = rbd_list_lockers(h, &exclusive, &tag, &tagLen, &clients, &clientsLen, &cookies, &cookiesLen, &addrs, &addrsLen)
        guard rc > 0 else { return [:] }
        func split(_ b: [CChar], _ len: Int) -> [String] {
            b.prefix(min(len, b.count)).split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        }
        let cs = split(clients, clientsLen), asx = split(addrs, addrsLen)
        var out: [String: String] = [:]
        for (c, a) in zip(cs, asx) { out[c] = CephConnection.firstAddress(a) }
        return out
    }

    /// Breaks `owner`'s exclusive lock (after fencing it: break a live owner's lock and it may write on).
    public func breakLock(owner: String) async throws(RBDError) {
        let op = "break \(owner)'s exclusive lock of image \(spec)"
        try await call(op) { [spec] (h) throws(RBDError) in
            let rc = rbd_lock_break(h, RBD_LOCK_MODE_EXCLUSIVE, owner)
            if rc < 0 { throw RBDError.from(rc, op, what: "\(owner)'s lock", image: spec) }
        }
    }
}
