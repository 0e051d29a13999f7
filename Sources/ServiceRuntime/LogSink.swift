// An instance's log: what its processes write to stdout and stderr, in `log` with size-based rotation
// (log → log.1 → … → log.N, the oldest dropped). Only the runtime's poll thread writes (from the pipe),
// so a service can never block on a full disk or a slow reader, nor write past the rotation.

import Foundation

final class LogSink: @unchecked Sendable {
    // SAFETY (Sendable): fd and size are only touched under `lock`.
    let directory: String
    let maxBytes: Int
    let keep: Int
    private let lock = NSLock()
    private var fd: Int32 = -1
    private var size = 0
    /// Set when the instance is forgotten: late output of its last run is dropped, not reopened into a
    /// file a new instance of the same id may own by then.
    private var closed = false

    var path: String { directory + "/log" }

    init(directory: String, maxBytes: Int, keep: Int) {
        self.directory = directory
        self.maxBytes = max(maxBytes, 1)
        self.keep = max(keep, 0)
    }

    /// Appends, rotating whenever `log` reaches maxBytes, so no file ever exceeds it. Write errors (a full
    /// disk) drop the output: the service must not stall for its log.
    func append(_ bytes: UnsafeRawBufferPointer) {
        lock.lock()
        defer { lock.unlock() }
        if closed { return }
        var offset = 0
        while offset < bytes.count {
            if fd < 0 && !openLocked() { return }
            if size >= maxBytes { rotateLocked(); continue }
            let n = min(bytes.count - offset, maxBytes - size)
            let w = Glibc.write(fd, bytes.baseAddress! + offset, n)
            if w < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += w
            size += w
        }
    }

    /// A line of the runtime's own (what went wrong around the instance), in its log.
    func note(_ text: String) {
        Array(text.utf8).withUnsafeBytes { append($0) }
    }

    func close() {
        lock.lock()
        defer { lock.unlock() }
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        closed = true
    }

    /// The last `maxBytes` bytes across the rotated files and the current one, oldest first.
    func tail(maxBytes: Int) -> [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        return Self.tail(directory: directory, keep: keep, maxBytes: maxBytes)
    }

    static func tail(directory: String, keep: Int, maxBytes: Int) -> [UInt8] {
        guard maxBytes > 0 else { return [] }
        var chunks: [[UInt8]] = []
        var total = 0
        let files = [directory + "/log"] + (0..<max(keep, 0)).map { directory + "/log.\($0 + 1)" }
        for f in files {
            let want = maxBytes - total
            if want <= 0 { break }
            guard let c = readTail(f, maxBytes: want) else { continue }
            chunks.append(c)
            total += c.count
        }
        return Array(chunks.reversed().joined())
    }

    private static func readTail(_ path: String, maxBytes: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return nil }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        let size = Int(st.st_size)
        let start = max(0, size - maxBytes)
        var out = [UInt8](repeating: 0, count: size - start)
        var got = 0
        while got < out.count {
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + got, $0.count - got, off_t(start + got)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            got += n
        }
        return Array(out[0..<got])
    }

    private func openLocked() -> Bool {
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        if fd < 0 { return false }
        var st = stat()
        size = fstat(fd, &st) == 0 ? Int(st.st_size) : 0
        return true
    }

    private func rotateLocked() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        if keep == 0 {
            unlink(path)
        } else {
            unlink(directory + "/log.\(keep)")
            var i = keep - 1
            while i >= 1 {
                rename(directory + "/log.\(i)", directory + "/log.\(i + 1)")
                i -= 1
            }
            rename(path, directory + "/log.1")
        }
        size = 0
        _ = openLocked()
    }
}
