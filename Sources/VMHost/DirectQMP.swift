// A QMP client on a second monitor QEMU serves on a Unix socket (DomainXML: `-chardev socket,…` +
// `-mon …,mode=control`), for the checkpoint's hot path. Through libvirt's passthrough each command
// is a libvirt RPC plus libvirt's own event handling (2-3 ms for `stop` or `cont`); here it is one
// write and one read on a local socket (~0.3-0.5 ms, QEMU's own time). QEMU broadcasts STOP/RESUME
// and MIGRATION events to every monitor, so libvirt still sees the state changes made here.
//
// One client at a time: QEMU's socket chardev accepts one connection and leaves the next one in
// the listen backlog, where connect succeeds but no greeting ever comes. So the greeting has a
// short deadline, and whoever gets none falls back to libvirt's channel.

import Foundation
import MyceliumCore

#if canImport(Glibc)
import Glibc
#endif

/// Splits what QEMU's monitor sends into lines (one JSON object each), holding at most `maxLine`
/// bytes of an unfinished line: a monitor that never sends a newline cannot make this grow.
/// Public for the fuzz target (`qmp`).
public struct QMPLineBuffer: Sendable {
    public let maxLine: Int
    public private(set) var buffered: [UInt8] = []
    private var scanned = 0

    public init(maxLine: Int) { self.maxLine = maxLine }

    public enum Failure: Error, Equatable { case lineTooLong(Int) }

    public mutating func append<C: Collection>(_ bytes: C) where C.Element == UInt8 { buffered.append(contentsOf: bytes) }

    /// The next complete line without its terminator (`\n` or `\r\n`), or nil when none is complete.
    public mutating func nextLine() throws(Failure) -> [UInt8]? {
        guard let nl = buffered[scanned...].firstIndex(of: UInt8(ascii: "\n")) else {
            scanned = buffered.count
            if buffered.count > maxLine { throw .lineTooLong(buffered.count) }
            return nil
        }
        guard nl <= maxLine else { throw .lineTooLong(nl) }
        var end = nl
        if end > 0 && buffered[end - 1] == UInt8(ascii: "\r") { end -= 1 }
        let line = Array(buffered[0..<end])
        buffered.removeSubrange(0...nl)
        scanned = 0
        return line
    }
}

/// One message from QEMU's monitor, as far as this client cares. Public for the fuzz target.
public enum QMPMessage {
    case greeting
    /// A command's reply: `return` (any JSON value) or `error` (class, description), with its id.
    case reply(id: String?, result: Result<Any, QMPRefusal>)
    case event(name: String)

    public struct QMPRefusal: Error {
        public let errorClass: String
        public let description: String
    }

    /// nil for a line that is not a JSON object of one of these shapes.
    public static func parse(_ line: [UInt8]) -> QMPMessage? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else { return nil }
        if object["QMP"] != nil { return .greeting }
        if let name = object["event"] as? String { return .event(name: name) }
        let id = object["id"] as? String
        if let error = object["error"] as? [String: Any] {
            return .reply(id: id, result: .failure(QMPRefusal(errorClass: error["class"] as? String ?? "?", description: error["desc"] as? String ?? "")))
        }
        if let value = object["return"] { return .reply(id: id, result: .success(value)) }
        return nil
    }
}

/// A connected, negotiated direct monitor. Not thread-safe by itself: EndophyteDomain serialises
/// its use.
final class DirectQMP {
    let path: String
    let domain: String
    private var fd: Int32
    private var lines = QMPLineBuffer(maxLine: 1 << 20)
    private var serial = 0

    /// Connects to `path`, reads QEMU's greeting within `greetingTimeout` and leaves capability
    /// negotiation mode. Throws `.monitorChannel` when any of it fails.
    init(path: String, domain: String, greetingTimeout: Double, timeout: Double) throws(VMHostError) {
        self.path = path
        self.domain = domain
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else {
            throw VMHostError(.monitorChannel(path: path, problem: "the path is longer than a Unix socket address (\(capacity - 1) bytes)"), domain: domain)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            for (i, b) in bytes.enumerated() { dst[i] = b }
        }
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw VMHostError(.system(operation: "socket", errno: errno), domain: domain) }
        fd = s
        // SAFETY: connect reads a sockaddr_un-sized value from `addr`.
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 {
            let e = errno
            Glibc.close(s)
            fd = -1
            throw VMHostError(.monitorChannel(path: path, problem: "cannot connect: \(String(cString: strerror(e)))"), domain: domain)
        }
        do {
            let greetingDeadline = monotonicNow() + greetingTimeout
            while true {
                guard let m = try readMessage(deadline: greetingDeadline, seconds: greetingTimeout, waitingFor: "QEMU's greeting") else { continue }
                if case .greeting = m { break }
            }
            _ = try run("qmp_capabilities", timeout: timeout)
        } catch {
            close()
            if case .timeout = error.code {
                throw VMHostError(.monitorChannel(path: path, problem: "no greeting within \(greetingTimeout) s (another client holds the monitor, or QEMU is stuck)"),
                                  domain: domain)
            }
            throw error
        }
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Runs `command` and returns QEMU's `return` value; events and stale replies are skipped.
    /// `files` go with the command as SCM_RIGHTS (QEMU's `getfd` takes the last one received).
    @discardableResult
    func run(_ command: String, _ arguments: [String: Any]? = nil, files: [Int32] = [], timeout: Double) throws(VMHostError) -> Any {
        guard fd >= 0 else { throw VMHostError(.monitorChannel(path: path, problem: "closed after an earlier failure"), domain: domain) }
        serial += 1
        let id = "myc-\(serial)"
        var message: [String: Any] = ["execute": command, "id": id]
        if let arguments { message["arguments"] = arguments }
        var json: [UInt8]
        do {
            json = Array(try JSONSerialization.data(withJSONObject: message, options: [.sortedKeys]))
        } catch {
            throw VMHostError(.qmpReply(command: command, reply: "cannot encode the arguments: \(error)"), domain: domain)
        }
        json.append(UInt8(ascii: "\n"))
        let deadline = monotonicNow() + timeout
        do throws(VMHostError) {
            try send(json, files: files, deadline: deadline, seconds: timeout, command: command)
            while true {
                guard let m = try readMessage(deadline: deadline, seconds: timeout, waitingFor: "the reply to '\(command)'") else { continue }
                guard case let .reply(replyID, result) = m, replyID == id else { continue }
                switch result {
                case .success(let value): return value
                case .failure(let r):
                    throw VMHostError(.qmp(command: command, errorClass: r.errorClass, message: r.description), domain: domain)
                }
            }
        } catch {
            // A reply may still be on its way: the conversation can no longer be trusted.
            if case .qmp = error.code {} else { close() }
            throw error
        }
    }

    private func send(_ bytes: [UInt8], files: [Int32], deadline: Double, seconds: Double, command: String) throws(VMHostError) {
        var off = 0
        var pendingFiles = files
        while off < bytes.count {
            try waitFor(Int16(POLLOUT), deadline: deadline, seconds: seconds, what: "sending '\(command)'")
            let n: Int = bytes.withUnsafeBytes { buf in
                var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: buf.baseAddress! + off), iov_len: buf.count - off)
                var msg = msghdr()
                // SAFETY: the iovec and the control buffer outlive sendmsg, which only reads them.
                return withUnsafeMutablePointer(to: &iov) { iovp in
                    msg.msg_iov = iovp
                    msg.msg_iovlen = 1
                    if pendingFiles.isEmpty { return sendmsg(fd, &msg, Int32(MSG_NOSIGNAL)) }
                    let dataLength = pendingFiles.count * MemoryLayout<Int32>.size
                    let space = Self.cmsgSpace(dataLength)
                    var control = [UInt8](repeating: 0, count: space)
                    return control.withUnsafeMutableBytes { c in
                        let header = c.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
                        header.pointee.cmsg_level = SOL_SOCKET
                        header.pointee.cmsg_type = Int32(SCM_RIGHTS)
                        header.pointee.cmsg_len = Self.cmsgLength(dataLength)
                        let data = c.baseAddress! + Self.cmsgAlign(MemoryLayout<cmsghdr>.size)
                        for (i, f) in pendingFiles.enumerated() { data.storeBytes(of: f, toByteOffset: i * 4, as: Int32.self) }
                        msg.msg_control = c.baseAddress
                        msg.msg_controllen = space
                        return sendmsg(fd, &msg, Int32(MSG_NOSIGNAL))
                    }
                }
            }
            if n > 0 {
                off += n
                pendingFiles = []  // the kernel delivered them with the first byte
                continue
            }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            throw VMHostError(.monitorChannel(path: path, problem: "sending '\(command)' failed: \(String(cString: strerror(n < 0 ? errno : EPIPE)))"),
                              domain: domain)
        }
    }

    /// The next message, or nil for a line that is no message this client knows (skipped).
    private func readMessage(deadline: Double, seconds: Double, waitingFor what: String) throws(VMHostError) -> QMPMessage? {
        while true {
            let line: [UInt8]?
            do { line = try lines.nextLine() } catch {
                throw VMHostError(.monitorChannel(path: path, problem: "QEMU sent a line longer than \(lines.maxLine) bytes"), domain: domain)
            }
            if let line {
                if line.isEmpty { continue }
                return QMPMessage.parse(line)
            }
            try waitFor(Int16(POLLIN), deadline: deadline, seconds: seconds, what: what)
            var chunk = [UInt8](repeating: 0, count: 16 << 10)
            // SAFETY: read writes at most chunk.count bytes into the array's storage.
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 { lines.append(chunk[0..<n]); continue }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            throw VMHostError(.monitorChannel(path: path, problem: n == 0 ? "QEMU closed the monitor while \(what) was awaited (it exited?)"
                                              : "reading failed: \(String(cString: strerror(errno)))"), domain: domain)
        }
    }

    private func waitFor(_ events: Int16, deadline: Double, seconds: Double, what: String) throws(VMHostError) {
        while true {
            let left = deadline - monotonicNow()
            if left <= 0 { throw VMHostError(.timeout(operation: "\(what) on the direct monitor \(path)", seconds: seconds), domain: domain) }
            var p = pollfd(fd: fd, events: events, revents: 0)
            let r = poll(&p, 1, Int32(min(left * 1000, 1000)) + 1)
            if r > 0 { return }
            if r < 0 && errno != EINTR {
                throw VMHostError(.monitorChannel(path: path, problem: "poll failed: \(String(cString: strerror(errno)))"), domain: domain)
            }
        }
    }

    private static func cmsgAlign(_ n: Int) -> Int { (n + MemoryLayout<Int>.size - 1) & ~(MemoryLayout<Int>.size - 1) }
    private static func cmsgSpace(_ n: Int) -> Int { cmsgAlign(MemoryLayout<cmsghdr>.size) + cmsgAlign(n) }
    private static func cmsgLength(_ n: Int) -> Int { cmsgAlign(MemoryLayout<cmsghdr>.size) + n }
}
