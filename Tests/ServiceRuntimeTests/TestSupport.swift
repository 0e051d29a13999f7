// A runtime on a throwaway state directory that records every reported change, and the checks every
// test ends with: no process and no cgroup of the runtime left behind.

import Foundation
import XCTest
@testable import ServiceRuntime

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// These tests create cgroups and kill processes: they need root. Not being root is a failure, never a skip.
func requireRoot(file: StaticString = #filePath, line: UInt = #line) throws {
    if getuid() != 0 {
        XCTFail("ServiceRuntimeTests must run as root (they create cgroups)", file: file, line: line)
        throw TestFailure("not root")
    }
}

final class EventLog: @unchecked Sendable {
    private let lock = NSLock()
    private var events: [InstanceStatus] = []

    func record(_ s: InstanceStatus) { lock.withLock { events.append(s) } }
    var all: [InstanceStatus] { lock.withLock { events } }
    func states(_ id: String) -> [InstanceState] { all.filter { $0.id == id }.map(\.state) }
    func healths(_ id: String) -> [Health] { all.filter { $0.id == id }.map(\.health) }
    /// Every pid that was ever reported running.
    var pids: Set<Int32> {
        Set(all.compactMap { if case let .running(pid) = $0.state { return pid } else { return nil } })
    }
}

/// Polls `condition` until it holds or the timeout passes (then fails with `what`).
func waitUntil(_ what: String, timeout: TimeInterval = 15, file: StaticString = #filePath, line: UInt = #line,
               _ condition: () throws -> Bool) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    while try !condition() {
        if Date() > deadline {
            XCTFail("timed out after \(timeout) s waiting for: \(what)", file: file, line: line)
            throw TestFailure("timeout: \(what)")
        }
        try await Task.sleep(nanoseconds: 10_000_000)
    }
}

/// True when the process no longer exists (or is a zombie, i.e. dead and waiting for its parent).
func isDead(_ pid: Int32) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return true }
    guard let close = stat.lastIndex(of: ")") else { return true }
    let rest = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces)
    return rest.hasPrefix("Z") || rest.hasPrefix("X")
}

func makeTempDirectory(_ tag: String) throws -> String {
    var template = Array("/tmp/svcrt-\(tag)-XXXXXX".utf8CString)
    guard let p = mkdtemp(&template) else { throw TestFailure("mkdtemp: \(String(cString: strerror(errno)))") }
    return String(cString: p)
}

/// One runtime under test and what it must leave behind: nothing.
final class Harness: @unchecked Sendable {
    let directory: String
    let events = EventLog()
    let runtime: ProcessRuntime

    init(_ tag: String, logMaxBytes: Int = 10 << 20, logKeep: Int = 3, layout: CgroupLayout? = nil, directory: String? = nil) throws {
        self.directory = try directory ?? makeTempDirectory(tag)
        let events = self.events
        runtime = try ProcessRuntime(
            stateDirectory: self.directory, logMaxBytes: logMaxBytes, logKeep: logKeep,
            cgroupLayout: layout ?? CgroupLayout.detect(), onChange: { events.record($0) })
    }

    var tree: CgroupTree { runtime.tree }

    func cgroupDirs(_ id: String) -> [String] { tree.cgroup(for: id).dirs }

    /// Cgroups of this runtime still present, in any hierarchy.
    func leftoverCgroups() -> [String] {
        tree.parents.flatMap { p in
            ((try? FileManager.default.contentsOfDirectory(atPath: p)) ?? []).filter { $0.hasPrefix(tree.prefix + "-") }.map { p + "/" + $0 }
        }
    }

    func state(_ id: String) -> InstanceState? { runtime.status(id)?.state }

    func runningPid(_ id: String) -> Int32? {
        if case let .running(pid) = state(id) { return pid }
        return nil
    }

    /// Stops everything, then checks that no process this runtime started and no cgroup of it remains.
    func finish(removeDirectory: Bool = true, file: StaticString = #filePath, line: UInt = #line) async {
        await runtime.stopAll()
        XCTAssertEqual(runtime.all(), [], "stopAll forgets every instance", file: file, line: line)
        XCTAssertEqual(leftoverCgroups(), [], "cgroups left behind", file: file, line: line)
        for pid in events.pids { XCTAssertTrue(isDead(pid), "process \(pid) left running", file: file, line: line) }
        for p in tree.parents { rmdir(p) }  // the shared parent goes too when no one else uses it
        if removeDirectory { try? FileManager.default.removeItem(atPath: directory) }
    }
}

/// A real python3 binary (not a version manager's shell shim, which would also work but slowly).
func python3() throws -> String {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] where access(p, X_OK) == 0 { return p }
    throw TestFailure("python3 is needed (apt-get install python3)")
}

/// A TCP listener on 127.0.0.1, port chosen by the kernel. With `http`, a thread answers every request
/// with the current `status` and remembers the last request head.
final class TestServer: @unchecked Sendable {
    let fd: Int32
    let port: UInt16
    private let lock = NSLock()
    private var _status = 200
    private var _lastRequest = ""
    private var closed = false
    private let done = DispatchSemaphore(value: 0)
    private let serving: Bool

    var status: Int {
        get { lock.withLock { _status } }
        set { lock.withLock { _status = newValue } }
    }
    var lastRequest: String { lock.withLock { _lastRequest } }

    init(http: Bool) throws {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw TestFailure("socket: \(errno)") }
        var one: Int32 = 1
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0, listen(s, 128) == 0 else { Glibc.close(s); throw TestFailure("bind/listen: \(errno)") }
        var bound = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &len) } }
        fd = s
        port = UInt16(bigEndian: bound.sin_port)
        serving = http
        if http {
            let t = Thread { [self] in serve() }
            t.start()
        }
    }

    private func serve() {
        defer { done.signal() }
        while true {
            let c = accept(fd, nil, nil)
            if c < 0 {
                if errno == EINTR { continue }
                return  // shut down
            }
            var head: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 1024)
            while !String(decoding: head, as: UTF8.self).contains("\r\n\r\n") {
                let n = buf.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
                if n <= 0 { break }
                head.append(contentsOf: buf[0..<n])
            }
            let code = status
            lock.withLock { _lastRequest = String(decoding: head, as: UTF8.self) }
            let answer = Array("HTTP/1.1 \(code) X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8)
            _ = answer.withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            Glibc.close(c)
        }
    }

    /// Stops listening: new connections are refused from now on.
    func close() {
        guard lock.withLock({ let was = closed; closed = true; return !was }) else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        if serving { done.wait() }
        Glibc.close(fd)
    }

    deinit { close() }
}
