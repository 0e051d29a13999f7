// The three health checks, each bounded by its timeout. They return nil when healthy, else the reason.
// A probe runs on its instance's health thread, never on the poll thread or the caller's.

import CSpawn
import Foundation

enum HealthProbe {
    /// `host`: the IPv4 address (host order) tcp and http checks connect to: loopback for a process,
    /// the container's address for a podman instance.
    static func run(_ check: HealthCheck, instance: String, cwd: String, environment: [String: String], cgroup: InstanceCgroup?,
                    host: UInt32 = 0x7F00_0001) -> String? {
        switch check {
        case let .tcp(port, _, timeout, _):
            switch connect(host: host, port: port, timeoutMillis: timeout) {
            case let .success(fd):
                close(fd)
                return nil
            case let .failure(f):
                return f.reason
            }
        case let .http(port, path, _, timeout, _):
            return http(host: host, port: port, path: path, timeoutMillis: timeout)
        case let .exec(command, _, timeout, _):
            return exec(command, instance: instance, cwd: cwd, environment: environment, cgroup: cgroup, timeoutMillis: timeout)
        }
    }

    struct Failure: Error { let reason: String }

    static func dotted(_ a: UInt32) -> String { "\(a >> 24).\((a >> 16) & 0xFF).\((a >> 8) & 0xFF).\(a & 0xFF)" }

    /// A connected non-blocking socket to host:port, within the timeout.
    static func connect(host: UInt32 = 0x7F00_0001, port: UInt16, timeoutMillis: UInt32) -> Result<Int32, Failure> {
        let target = dotted(host)
        let deadline = monotonicMillis() + UInt64(timeoutMillis)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { return .failure(Failure(reason: "tcp \(target):\(port): socket: \(errnoText(errno))")) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = host.bigEndian
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 && errno != EINPROGRESS {
            let e = errno
            close(fd)
            return .failure(Failure(reason: "tcp \(target):\(port): connect: \(errnoText(e))"))
        }
        if rc != 0 {
            guard wait(fd, events: Int16(POLLOUT), deadline: deadline) else {
                close(fd)
                return .failure(Failure(reason: "tcp \(target):\(port): no connection within \(timeoutMillis) ms"))
            }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
            if err != 0 {
                close(fd)
                return .failure(Failure(reason: "tcp \(target):\(port): connect: \(errnoText(err))"))
            }
        }
        return .success(fd)
    }

    static func http(host: UInt32 = 0x7F00_0001, port: UInt16, path: String, timeoutMillis: UInt32) -> String? {
        let deadline = monotonicMillis() + UInt64(timeoutMillis)
        let target = dotted(host)
        let fd: Int32
        switch connect(host: host, port: port, timeoutMillis: timeoutMillis) {
        case let .success(f): fd = f
        case let .failure(f): return "http: " + f.reason
        }
        defer { close(fd) }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: \(target):\(port)\r\nUser-Agent: mycelium-health\r\nConnection: close\r\n\r\n".utf8)
        var sent = 0
        while sent < request.count {
            let n = request.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                sent += n
                continue
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN && wait(fd, events: Int16(POLLOUT), deadline: deadline) { continue }
            return "http \(target):\(port)\(path): sending the request failed: \(n < 0 ? errnoText(errno) : "closed")"
        }
        var head: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 512)
        while true {
            switch HTTPStatusLine.parse(head) {
            case let .status(code):
                return (200..<400).contains(code) ? nil : "http \(target):\(port)\(path): status \(code)"
            case .malformed:
                return "http \(target):\(port)\(path): the answer is not HTTP/1.x"
            case .needMore:
                break
            }
            guard wait(fd, events: Int16(POLLIN), deadline: deadline) else {
                return "http \(target):\(port)\(path): no answer within \(timeoutMillis) ms"
            }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            if n <= 0 { return "http \(target):\(port)\(path): connection closed before a status line" }
            head.append(contentsOf: buf[0..<n])
        }
    }

    /// Runs the command like the service (same cgroup, directory and environment), output discarded.
    static func exec(_ command: [String], instance: String, cwd: String, environment: [String: String], cgroup: InstanceCgroup?, timeoutMillis: UInt32) -> String? {
        let sink = open("/dev/null", O_WRONLY | O_CLOEXEC)
        if sink < 0 { return "exec check: open /dev/null: \(errnoText(errno))" }
        defer { close(sink) }
        let p: SpawnedProcess
        do {
            p = try Spawner.spawn(instance: instance, command: command, environment: environment, cwd: cwd, cgroup: cgroup, output: sink)
        } catch {
            return "exec check: \(error.description)"
        }
        defer { close(p.pidfd) }
        var timedOut = false
        if cspawn_pidfd_wait(p.pidfd, Int32(clamping: timeoutMillis)) == ETIMEDOUT {
            timedOut = true
            // The check runs in its own session; its whole group goes (the service is in another one).
            _ = kill(-p.pid, SIGKILL)
            _ = cspawn_pidfd_kill(p.pidfd, SIGKILL)
        }
        var killed: Int32 = 0, code: Int32 = 0
        let rc = cspawn_reap(p.pidfd, 0, &killed, &code)
        if timedOut { return "exec check \(command[0]): no result within \(timeoutMillis) ms (killed)" }
        if rc != 0 { return "exec check \(command[0]): waiting failed: \(errnoText(rc))" }
        if killed != 0 { return "exec check \(command[0]): killed by signal \(code)" }
        return code == 0 ? nil : "exec check \(command[0]): exit code \(code)"
    }

    /// Waits for `events` on fd until the deadline (CLOCK_MONOTONIC ms); true when they came.
    private static func wait(_ fd: Int32, events: Int16, deadline: UInt64) -> Bool {
        while true {
            let now = monotonicMillis()
            if now >= deadline { return false }
            var p = pollfd(fd: fd, events: events, revents: 0)
            let n = poll(&p, 1, Int32(clamping: deadline - now))
            if n > 0 { return true }
            if n == 0 { return false }
            if errno != EINTR { return false }
        }
    }
}

/// Runs one instance's health check every interval on its own thread until cancelled.
final class HealthMonitor: @unchecked Sendable {
    // SAFETY (Sendable): `cancelled` only under `cond`.
    private let cond = NSCondition()
    private var cancelled = false
    /// Completed when the thread has returned: from then on it starts no check process.
    let exited = Completion()

    func start(intervalMillis: UInt32, name: String, probe: @escaping @Sendable () -> String?, report: @escaping @Sendable (String?) -> Void) {
        let t = Thread { [self] in
            defer { exited.complete() }
            while true {
                // The first check waits one interval too: a service just exec'd rarely listens yet.
                let until = Date().addingTimeInterval(Double(intervalMillis) / 1000)
                cond.lock()
                while !cancelled && cond.wait(until: until) {}
                let stop = cancelled
                cond.unlock()
                if stop { return }
                let result = probe()
                if isCancelled { return }
                report(result)
            }
        }
        t.name = "mycelium-health-" + name
        t.start()
    }

    var isCancelled: Bool {
        cond.lock()
        defer { cond.unlock() }
        return cancelled
    }

    func cancel() {
        cond.lock()
        cancelled = true
        cond.broadcast()
        cond.unlock()
    }
}
