// Every file Mycelium writes goes through here: temp file, write, fsync, rename, fsync of the
// directory. A crash at any point leaves either the old file or the new one, never a mix.
// `ChecksummedFile` adds a header with a magic, a kind, a length and a CRC-32C, so a torn or
// bit-rotted file is reported as such instead of being parsed.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A file-system failure with the path and the operation, ready to show an operator.
public struct FileError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: Equatable, Sendable {
        case system(operation: String, errno: Int32)
        case notFound
        /// The file's permission bits are wider than allowed (e.g. a secret key readable by others).
        case badMode(actual: UInt32, expected: UInt32)
        case wrongLength(actual: Int, expected: Int)
        case corrupt(DecodeError)
        case wrongKind(expected: UInt16, actual: UInt16)
    }

    public let path: String
    public let code: Code

    public init(path: String, _ code: Code) {
        self.path = path
        self.code = code
    }

    public var description: String {
        switch code {
        case let .system(op, e):
            return "\(path): \(op) failed: \(String(cString: strerror(e))) (errno \(e))"
        case .notFound:
            return "\(path): no such file"
        case let .badMode(actual, expected):
            return "\(path): permissions are \(octal(actual)), must be \(octal(expected)) (run: chmod \(octal(expected)) \(path))"
        case let .wrongLength(actual, expected):
            return "\(path): wrong length: \(actual) bytes where \(expected) were expected; the file is truncated or not of this kind"
        case let .corrupt(e):
            return "\(path): corrupt: \(e)"
        case let .wrongKind(expected, actual):
            return "\(path): holds data of kind \(actual), expected kind \(expected); is this the right file?"
        }
    }
}

func octal(_ m: UInt32) -> String { "0" + String(m, radix: 8) }

public enum AtomicFile {
    /// Writes `data` to `path` atomically and durably, with permission bits `mode`. `durable` false
    /// skips the fsyncs: still all or nothing if the process dies, but a power loss may leave the old
    /// file (or none). Only for state that dies with the host anyway (a VM replica's committed epoch,
    /// whose image lives in a QEMU's RAM), written too often to pay a disk flush each time.
    public static func write(_ data: [UInt8], to path: String, mode: UInt32 = 0o644, durable: Bool = true) throws(FileError) {
        let dir = directory(of: path)
        let tmp = path + ".tmp.\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode_t(mode))
        if fd < 0 { throw FileError(path: tmp, .system(operation: "open", errno: errno)) }
        var ok = false
        defer {
            if !ok { unlink(tmp) }
        }
        do {
            defer { close(fd) }
            // The umask may have narrowed or (for 0600) not touched the mode; set it exactly.
            if fchmod(fd, mode_t(mode)) != 0 { throw FileError(path: tmp, .system(operation: "fchmod", errno: errno)) }
            try writeAll(fd: fd, data, path: tmp)
            if durable && fsync(fd) != 0 { throw FileError(path: tmp, .system(operation: "fsync", errno: errno)) }
        }
        if rename(tmp, path) != 0 { throw FileError(path: path, .system(operation: "rename", errno: errno)) }
        ok = true
        if durable { try syncDirectory(dir) }
    }

    public static func read(_ path: String, limit: Int = 64 << 20) throws(FileError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            throw FileError(path: path, e == ENOENT ? .notFound : .system(operation: "open", errno: e))
        }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw FileError(path: path, .system(operation: "read", errno: errno))
            }
            if n == 0 { break }
            if out.count + n > limit { throw FileError(path: path, .wrongLength(actual: out.count + n, expected: limit)) }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }

    /// Permission bits of an existing file.
    public static func mode(of path: String) throws(FileError) -> UInt32 {
        var st = stat()
        if stat(path, &st) != 0 {
            let e = errno
            throw FileError(path: path, e == ENOENT ? .notFound : .system(operation: "stat", errno: e))
        }
        return UInt32(st.st_mode) & 0o7777
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// Removes `path` durably (the directory entry is synced); a missing file is not an error.
    /// `durable` false skips the sync, as for `write`.
    public static func remove(_ path: String, durable: Bool = true) throws(FileError) {
        if unlink(path) != 0 {
            if errno == ENOENT { return }
            throw FileError(path: path, .system(operation: "unlink", errno: errno))
        }
        guard durable else { return }
        let slash = path.lastIndex(of: "/")
        try syncDirectory(slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? ".")
    }

    /// Creates `path` and its parents (mode 0700 by default: agent state is private).
    public static func makeDirectory(_ path: String, mode: UInt32 = 0o700) throws(FileError) {
        var partial = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            partial += "/" + part
            if mkdir(partial, mode_t(mode)) != 0 && errno != EEXIST {
                throw FileError(path: partial, .system(operation: "mkdir", errno: errno))
            }
        }
    }

    public static func syncDirectory(_ dir: String) throws(FileError) {
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd < 0 { throw FileError(path: dir, .system(operation: "open directory", errno: errno)) }
        defer { close(dfd) }
        if fsync(dfd) != 0 { throw FileError(path: dir, .system(operation: "fsync directory", errno: errno)) }
    }

    public static func writeAll(fd: Int32, _ data: [UInt8], path: String) throws(FileError) {
        var written = 0
        while written < data.count {
            let n = data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                throw FileError(path: path, .system(operation: "write", errno: errno))
            }
            written += n
        }
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let d = String(path[..<slash])
        return d.isEmpty ? "/" : d
    }
}

/// A file with a self-describing, checksummed header:
/// `"MYCF" | u16 format version | u16 kind | u32 payload length | u32 CRC-32C(payload) | payload`.
public enum ChecksummedFile {
    public static let magic: [UInt8] = Array("MYCF".utf8)
    public static let formatVersion: UInt16 = 1
    public static let headerSize = 16

    public static func encode(kind: UInt16, payload: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: headerSize + payload.count)
        w.raw(magic)
        w.u16(formatVersion)
        w.u16(kind)
        w.u32(UInt32(payload.count))
        w.u32(CRC32C.checksum(payload))
        w.raw(payload)
        return w.bytes
    }

    /// Checks the header and checksum; returns the payload.
    public static func decode(_ bytes: [UInt8], kind: UInt16, path: String) throws(FileError) -> [UInt8] {
        do {
            var r = ByteReader(bytes)
            if bytes.count < headerSize {
                throw FileError(path: path, .wrongLength(actual: bytes.count, expected: headerSize))
            }
            guard try r.raw(4) == magic else { throw FileError(path: path, .corrupt(DecodeError(.badMagic, at: 0))) }
            let version = try r.u16()
            if version != formatVersion {
                throw FileError(path: path, .corrupt(DecodeError(.unknownVersion(field: "file format", value: UInt64(version)), at: 4)))
            }
            let k = try r.u16()
            if k != kind { throw FileError(path: path, .wrongKind(expected: kind, actual: k)) }
            let length = Int(try r.u32())
            if length != bytes.count - headerSize {
                throw FileError(path: path, .wrongLength(actual: bytes.count, expected: headerSize + length))
            }
            let stored = try r.u32()
            let payload = try r.raw(length)
            let actual = CRC32C.checksum(payload)
            if actual != stored {
                throw FileError(path: path, .corrupt(DecodeError(.checksumMismatch(expected: stored, actual: actual), at: 12)))
            }
            return payload
        } catch let e as FileError {
            throw e
        } catch let e as DecodeError {
            throw FileError(path: path, .corrupt(e))
        } catch {
            throw FileError(path: path, .system(operation: "decode", errno: 0))
        }
    }

    public static func write(kind: UInt16, payload: [UInt8], to path: String, mode: UInt32 = 0o644, durable: Bool = true) throws(FileError) {
        try AtomicFile.write(encode(kind: kind, payload: payload), to: path, mode: mode, durable: durable)
    }

    public static func read(kind: UInt16, from path: String) throws(FileError) -> [UInt8] {
        try decode(AtomicFile.read(path), kind: kind, path: path)
    }
}

/// Kinds of checksummed files, so one kind can never be loaded as another.
public enum FileKind {
    public static let nodeSecretKey: UInt16 = 1
    public static let networkSecretKey: UInt16 = 2
    public static let membershipCertificate: UInt16 = 3
    public static let inviteLedger: UInt16 = 4
    public static let seedSpore: UInt16 = 5
    public static let latentSpore: UInt16 = 6
    public static let ownVote: UInt16 = 7
    public static let raftSnapshot: UInt16 = 10
    public static let raftHardState: UInt16 = 11
    /// A VM replica's last committed epoch and its device state (VMDriver's replica journal).
    public static let vmReplicaState: UInt16 = 12
    /// A service spore: a service's signed record beside the seed spore (MyceliumSpores/ServiceSpore.swift).
    public static let serviceSpore: UInt16 = 13
}
