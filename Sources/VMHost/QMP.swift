// QMP through libvirt's monitor passthrough, and the plumbing that moves a device state through a
// socket QEMU holds one end of (`getfd` + `fd:NAME`: the only stream a libvirt-managed QEMU can use
// here: `exec:` is killed by its seccomp sandbox and `file:` does not exist in QEMU 7.2).

import Foundation
import Libvirt
import MyceliumCore

#if canImport(Glibc)
import Glibc
#endif

/// The first bytes of every QEMU migration stream (`QEMU_VM_FILE_MAGIC`, "QEVM") and the stream
/// version QEMU writes after it (`QEMU_VM_FILE_VERSION`).
let qemuStreamMagic: [UInt8] = [0x51, 0x45, 0x56, 0x4d]
let qemuStreamVersion: [UInt8] = [0x00, 0x00, 0x00, 0x03]

/// A QMP conversation: libvirt's passthrough (`QMP`) or the domain's direct monitor.
protocol QMPChannel {
    var name: String { get }
    @discardableResult
    func run(_ command: String, _ arguments: [String: Any]?, files: [Int32]) throws(VMHostError) -> Any
}

extension QMPChannel {
    @discardableResult
    func run(_ command: String, _ arguments: [String: Any]? = nil) throws(VMHostError) -> Any { try run(command, arguments, files: []) }

    /// `query-migrate`'s status and, when it failed, QEMU's reason.
    func migrationStatus() throws(VMHostError) -> (status: String, detail: String) {
        let r = try run("query-migrate")
        guard let info = r as? [String: Any] else { throw VMHostError(.qmpReply(command: "query-migrate", reply: "\(r)"), domain: name) }
        return (info["status"] as? String ?? "none", info["error-desc"] as? String ?? "")
    }

    /// Polls `query-migrate` until the migration is over: returns on `completed`, throws on
    /// `failed`/`cancelled` (with QEMU's reason) or when `deadline` passes.
    func waitForMigration(_ operation: String, deadline: Double, timeout: Double) throws(VMHostError) {
        var pollInterval: UInt32 = 200  // µs; grows: the common case ends within a few ms
        while true {
            let (status, detail) = try migrationStatus()
            switch status {
            case "completed": return
            case "failed", "cancelled": throw VMHostError(.migration(operation: operation, status: status, detail: detail), domain: name)
            default: break
            }
            if monotonicNow() > deadline { throw VMHostError(.timeout(operation: "\(operation) (status '\(status)')", seconds: timeout), domain: name) }
            usleep(pollInterval)
            pollInterval = min(pollInterval * 2, 20_000)
        }
    }
}

struct QMP: QMPChannel {
    let domain: LibvirtDomain
    let name: String

    /// Runs `command` and returns QEMU's `return` value (a dictionary, array or scalar).
    @discardableResult
    func run(_ command: String, _ arguments: [String: Any]?, files: [Int32]) throws(VMHostError) -> Any {
        var message: [String: Any] = ["execute": command]
        if let arguments { message["arguments"] = arguments }
        let json: String
        do {
            json = String(decoding: try JSONSerialization.data(withJSONObject: message, options: [.sortedKeys]), as: UTF8.self)
        } catch {
            throw VMHostError(.qmpReply(command: command, reply: "cannot encode the arguments: \(error)"), domain: name)
        }
        let reply: String
        do {
            reply = files.isEmpty ? try domain.qemuMonitorCommand(json) : try domain.qemuMonitorCommand(json, files: files)
        } catch {
            throw VMHostError(.libvirt(error), domain: name)
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any] else {
            throw VMHostError(.qmpReply(command: command, reply: reply), domain: name)
        }
        if let error = object["error"] as? [String: Any] {
            throw VMHostError(.qmp(command: command, errorClass: error["class"] as? String ?? "?", message: error["desc"] as? String ?? reply),
                              domain: name)
        }
        guard let value = object["return"] else { throw VMHostError(.qmpReply(command: command, reply: reply), domain: name) }
        return value
    }
}

func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// A connected pair of stream sockets, close-on-exec from their creation (a process spawned by
/// another thread meanwhile must not inherit an end: it would hold off the end of file), each end
/// closed at most once. QEMU gets one end through `getfd`. A socket rather than a pipe: writes use
/// MSG_NOSIGNAL, so a QEMU that closes its end early gives EPIPE here instead of killing this process
/// with SIGPIPE, and socketpair sets close-on-exec atomically where pipe2 is not importable.
final class FDPair: @unchecked Sendable {
    // SAFETY (Sendable): each end is closed under `lock`; reads and writes happen on one thread each.
    private let lock = PthreadLock()
    private var ends: [Int32] = [-1, -1]

    /// A connected pair of stream sockets.
    static func socketPair(domain: String) throws(VMHostError) -> FDPair {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw VMHostError(.system(operation: "socketpair", errno: errno), domain: domain)
        }
        return FDPair(fds)
    }

    private init(_ fds: [Int32]) { ends = fds }

    var first: Int32 { lock.withLock { ends[0] } }
    var second: Int32 { lock.withLock { ends[1] } }

    func closeFirst() { close(0) }

    /// Hands the first end to the caller, who closes it from now on (this object no longer will).
    func takeFirst() -> Int32 {
        lock.withLock {
            let fd = ends[0]
            ends[0] = -1
            return fd
        }
    }
    func closeSecond() { close(1) }

    private func close(_ i: Int) {
        let fd: Int32 = lock.withLock {
            let fd = ends[i]
            ends[i] = -1
            return fd
        }
        if fd >= 0 { Glibc.close(fd) }
    }

    deinit {
        for fd in ends where fd >= 0 { Glibc.close(fd) }
    }
}

/// The outcome of a helper thread's I/O.
enum IOOutcome: Sendable {
    case done([UInt8])
    case failed(operation: String, errno: Int32)
    case timedOut(bytes: Int)
}

/// One thread doing blocking I/O beside a monitor conversation, joined for its result.
final class IOThread: @unchecked Sendable {
    // SAFETY (Sendable): `outcome` is written by the thread before it exits and read only after
    // pthread_join, which orders the two.
    private var thread = pthread_t()
    private var outcome: IOOutcome = .timedOut(bytes: 0)
    private let body: @Sendable () -> IOOutcome
    private var started = false

    init(_ body: @escaping @Sendable () -> IOOutcome) { self.body = body }

    func start() throws(VMHostError) {
        let box = Unmanaged.passRetained(self)
        // SAFETY: the thread takes the retained reference and releases it when done.
        let rc = pthread_create(&thread, nil, { arg in
            let me = Unmanaged<IOThread>.fromOpaque(arg!).takeRetainedValue()
            me.outcome = me.body()
            return nil
        }, box.toOpaque())
        if rc != 0 {
            box.release()
            throw VMHostError(.system(operation: "pthread_create", errno: rc), domain: "")
        }
        started = true
    }

    /// Waits for the thread (its own deadline bounds how long) and returns what it did.
    func join() -> IOOutcome {
        guard started else { return .failed(operation: "start the I/O thread", errno: EINVAL) }
        pthread_join(thread, nil)
        started = false
        return outcome
    }

    /// Reads `fd` to end of file, giving up at `deadline` (monotonic seconds).
    static func readAll(_ fd: Int32, deadline: Double) -> IOOutcome {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let left = deadline - monotonicNow()
            if left <= 0 { return .timedOut(bytes: out.count) }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32(min(left * 1000, 1000)) + 1)
            if r < 0 {
                if errno == EINTR { continue }
                return .failed(operation: "poll", errno: errno)
            }
            if r == 0 { continue }
            // SAFETY: read writes at most chunk.count bytes into the array's storage.
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 { out += chunk[0..<n]; continue }
            if n == 0 { return .done(out) }
            if errno == EINTR || errno == EAGAIN { continue }
            return .failed(operation: "read", errno: errno)
        }
    }

    /// Writes all of `bytes` to the stream socket `fd`, giving up at `deadline`.
    static func writeAll(_ bytes: [UInt8], to fd: Int32, deadline: Double) -> IOOutcome {
        var off = 0
        while off < bytes.count {
            let left = deadline - monotonicNow()
            if left <= 0 { return .timedOut(bytes: off) }
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let r = poll(&p, 1, Int32(min(left * 1000, 1000)) + 1)
            if r < 0 {
                if errno == EINTR { continue }
                return .failed(operation: "poll", errno: errno)
            }
            if r == 0 { continue }
            // SAFETY: send reads at most bytes.count - off bytes from the array's storage. A socket,
            // never a pipe: MSG_NOSIGNAL turns a closed peer into EPIPE instead of SIGPIPE.
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n > 0 { off += n; continue }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            return .failed(operation: "write", errno: n < 0 ? errno : EPIPE)
        }
        return .done([])
    }
}
