import MyceliumCore
// The one door to CDirtyPages. No other module imports the C target: everything above this file
// works with Swift types and `DirtyPagesError`, and every C return code is checked here.

import CDirtyPages

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The page size every engine works in. Guest RAM and memfd regions use 4 KiB base pages here;
/// huge-page backed regions are tracked at 4 KiB granularity by the uffd engine (PTE level).
public let dirtyPageSize = Int(MDP_PAGE_SIZE)

/// A way of finding written pages. See `CSources/CDirtyPages/include/mdp.h` for how each works.
public enum DirtyPageEngine: String, Sendable, CaseIterable, CustomStringConvertible {
    /// userfaultfd async write-protect + PAGEMAP_SCAN on this process's memory.
    case uffdAsync = "uffd-async"
    /// The same, on another process's memory that that process registered (e.g. via a preload shim).
    case uffdRemote = "uffd-remote"
    /// The KVM dirty log of a memory slot we control (guest writes only).
    case kvm
    /// Per-page XXH3 compared with the previous epoch; needs nothing from the writer.
    case hash

    public var description: String { rawValue }

    init(_ c: mdp_engine) {
        switch c {
        case MDP_ENGINE_UFFD_ASYNC: self = .uffdAsync
        case MDP_ENGINE_UFFD_REMOTE: self = .uffdRemote
        case MDP_ENGINE_KVM: self = .kvm
        default: self = .hash
        }
    }

    var cIndex: Int {
        switch self {
        case .uffdAsync: return Int(MDP_ENGINE_UFFD_ASYNC.rawValue)
        case .uffdRemote: return Int(MDP_ENGINE_UFFD_REMOTE.rawValue)
        case .kvm: return Int(MDP_ENGINE_KVM.rawValue)
        case .hash: return Int(MDP_ENGINE_HASH.rawValue)
        }
    }
}

/// Whether an engine works on this kernel, and why (or why not).
public struct EngineAvailability: Sendable, Equatable, CustomStringConvertible {
    public let engine: DirtyPageEngine
    public let isAvailable: Bool
    public let reason: String
    public var description: String { "\(engine): \(isAvailable ? "available" : "unavailable") — \(reason)" }
}

/// Every failure of a dirty-page operation, with the engine, the operation and what to do.
public struct DirtyPagesError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: Equatable, Sendable {
        /// The start or the length is not a multiple of the page size.
        case unalignedRange(address: UInt, length: Int)
        /// Part of the range is not mapped in the process.
        case unmappedRange(address: UInt, length: Int)
        /// The target process did not register the range with an async write-protect userfaultfd.
        case unregisteredMemory(pid: Int32)
        case noSuchProcess(pid: Int32)
        /// A file descriptor (VM fd, uffd) that is closed or of the wrong kind.
        case badDescriptor(fd: Int32)
        /// The kernel lacks what the engine needs.
        case unsupported(reason: String)
        /// The caller's bitmap holds fewer pages than the tracker covers.
        case bitmapTooSmall(pages: Int, needed: Int)
        /// The tracker was stopped.
        case stopped
        case invalidArgument(String)
        case system(errno: Int32)
    }

    public let code: Code
    public let engine: DirtyPageEngine?
    public let operation: String

    public init(_ code: Code, engine: DirtyPageEngine?, operation: String) {
        self.code = code
        self.engine = engine
        self.operation = operation
    }

    public var description: String {
        let prefix = "\(engine.map { "\($0) " } ?? "")\(operation)"
        switch code {
        case let .unalignedRange(a, l):
            return "\(prefix): range 0x\(String(a, radix: 16))+\(l) is not aligned to \(dirtyPageSize)-byte pages; align both start and length"
        case let .unmappedRange(a, l):
            return "\(prefix): range 0x\(String(a, radix: 16))+\(l) is not (entirely) mapped"
        case let .unregisteredMemory(pid):
            return "\(prefix): process \(pid) has not registered this range for async write-protect; load the mdp preload shim into it or use the hash engine"
        case let .noSuchProcess(pid): return "\(prefix): no process \(pid)"
        case let .badDescriptor(fd): return "\(prefix): file descriptor \(fd) is closed or not of the right kind"
        case let .unsupported(reason): return "\(prefix): not supported here: \(reason)"
        case let .bitmapTooSmall(p, n): return "\(prefix): bitmap holds \(p) pages, the tracker covers \(n)"
        case .stopped: return "\(prefix): the tracker was stopped"
        case let .invalidArgument(what): return "\(prefix): \(what)"
        case let .system(e): return "\(prefix): \(String(cString: strerror(e))) (errno \(e))"
        }
    }
}

/// One bit per page: bit `i % 64` of word `i / 64` is page `i`.
public struct DirtyBitmap: Sendable, Equatable {
    public let pageCount: Int
    public internal(set) var words: [UInt64]

    public init(pageCount: Int) {
        precondition(pageCount >= 0)
        self.pageCount = pageCount
        words = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
    }

    public init(pageCount: Int, pages: some Sequence<Int>) {
        self.init(pageCount: pageCount)
        for p in pages { insert(p) }
    }

    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }
    public var isEmpty: Bool { words.allSatisfy { $0 == 0 } }

    public func contains(_ page: Int) -> Bool { words[page >> 6] & (1 << UInt64(page & 63)) != 0 }
    public mutating func insert(_ page: Int) {
        precondition(page >= 0 && page < pageCount, "page \(page) outside 0..<\(pageCount)")
        words[page >> 6] |= 1 << UInt64(page & 63)
    }
    public mutating func removeAll() {
        for i in words.indices { words[i] = 0 }
    }
    public mutating func formUnion(_ other: DirtyBitmap) {
        precondition(other.pageCount == pageCount, "bitmaps of different sizes")
        for i in words.indices { words[i] |= other.words[i] }
    }

    /// The set pages in ascending order (the page-list form of the dirty set).
    public var pages: [Int] {
        var out: [Int] = []
        out.reserveCapacity(count)
        forEachPage { out.append($0) }
        return out
    }

    @inlinable public func forEachPage(_ body: (Int) throws -> Void) rethrows {
        for (w, word) in words.enumerated() {
            var x = word
            while x != 0 {
                let bit = x.trailingZeroBitCount
                x &= x - 1
                try body(w << 6 | bit)
            }
        }
    }

    /// Bytes this bitmap occupies.
    public var footprintBytes: Int { words.count * 8 }
}

/// The available engines on this machine, each with its reason. Probes for real (creates a
/// userfaultfd and scans a scratch page, opens /dev/kvm).
public func probeDirtyPageEngines() -> [EngineAvailability] {
    var raw = [mdp_support](repeating: mdp_support(), count: Int(MDP_ENGINE_COUNT.rawValue))
    // SAFETY: `raw` holds exactly MDP_ENGINE_COUNT elements, the array size mdp_probe writes.
    raw.withUnsafeMutableBufferPointer { mdp_probe($0.baseAddress!) }
    return DirtyPageEngine.allCases.map { e in
        var s = raw[e.cIndex]
        // SAFETY: `reason` is a fixed char array that mdp_probe always NUL-terminates (snprintf/memset).
        let reason = withUnsafeBytes(of: &s.reason) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        return EngineAvailability(engine: e, isAvailable: s.available != 0, reason: reason)
    }
}

/// Maps a negative errno from CDirtyPages to a typed error.
func dirtyPagesError(_ rc: Int32, engine: DirtyPageEngine?, operation: String, address: UInt = 0, length: Int = 0,
                     pid: Int32 = 0, fd: Int32 = -1) -> DirtyPagesError {
    let e = -rc
    let code: DirtyPagesError.Code
    switch e {
    case EINVAL: code = .invalidArgument("the kernel refused the range or arguments (EINVAL)")
    case ENOMEM where length > 0: code = .unmappedRange(address: address, length: length)
    case EPERM where pid > 0: code = .unregisteredMemory(pid: pid)
    case ESRCH: code = .noSuchProcess(pid: pid)
    case EBADF: code = .badDescriptor(fd: fd)
    case EOPNOTSUPP: code = .unsupported(reason: "kernel lacks UFFD_FEATURE_WP_ASYNC or PAGEMAP_SCAN (Linux >= 6.7)")
    case ENOSPC: code = .bitmapTooSmall(pages: 0, needed: 0)
    default: code = .system(errno: e)
    }
    return DirtyPagesError(code, engine: engine, operation: operation)
}

typealias PageLock = PthreadLock  // shared with the other C-backed modules, in MyceliumCore

/// A running dirty-page tracker. Writers to the tracked memory may run concurrently with
/// `collect`; calls on the tracker itself are serialised by an internal lock.
public final class DirtyTracker: @unchecked Sendable {
    // SAFETY (Sendable): `handle` is only used under `lock`, and set to nil (stopped) under it.
    private var handle: OpaquePointer?
    private let lock = PageLock()
    public let engine: DirtyPageEngine
    public let pageCount: Int
    /// The tracked process for `.uffdRemote`, else nil.
    public let targetPID: Int32?

    private init(handle: OpaquePointer, engine: DirtyPageEngine, targetPID: Int32? = nil) {
        self.handle = handle
        self.engine = engine
        self.targetPID = targetPID
        self.pageCount = Int(mdp_tracker_pages(handle))
    }

    deinit { if let handle { mdp_close(handle) } }

    static func checkAligned(_ address: UInt, _ length: Int, _ engine: DirtyPageEngine, _ op: String) throws(DirtyPagesError) {
        if length <= 0 {
            throw DirtyPagesError(.invalidArgument("empty range"), engine: engine, operation: op)
        }
        if address % UInt(dirtyPageSize) != 0 || length % dirtyPageSize != 0 {
            throw DirtyPagesError(.unalignedRange(address: address, length: length), engine: engine, operation: op)
        }
    }

    /// Tracks writes to `region` of this process with userfaultfd async write-protect.
    /// Armed on return: the first `collect` reports writes made after this call.
    public static func uffd(region: UnsafeMutableRawBufferPointer) throws(DirtyPagesError) -> DirtyTracker {
        let op = "start"
        let a = UInt(bitPattern: region.baseAddress)
        try checkAligned(a, region.count, .uffdAsync, op)
        var t: OpaquePointer?
        // SAFETY: the caller guarantees `region` stays mapped while the tracker lives; the kernel only
        // changes page-table bits of it, never its contents.
        let rc = mdp_uffd_open(region.baseAddress, region.count, &t)
        guard rc == 0, let t else {
            throw dirtyPagesError(rc, engine: .uffdAsync, operation: op, address: a, length: region.count)
        }
        return DirtyTracker(handle: t, engine: .uffdAsync)
    }

    /// Tracks writes to `[address, address+length)` in process `pid`, which registered that range
    /// itself (see `TrackedRegistration` and docs/ENDOPHYTE.md for the QEMU preload shim).
    public static func uffdRemote(pid: Int32, address: UInt64, length: Int) throws(DirtyPagesError) -> DirtyTracker {
        let op = "start"
        try checkAligned(UInt(address), length, .uffdRemote, op)
        var t: OpaquePointer?
        let rc = mdp_uffd_open_remote(pid, address, UInt64(length), &t)
        guard rc == 0, let t else {
            throw dirtyPagesError(rc, engine: .uffdRemote, operation: op, address: UInt(address), length: length, pid: pid)
        }
        return DirtyTracker(handle: t, engine: .uffdRemote, targetPID: pid)
    }

    /// Tracks memory slot `slot` (`pageCount` pages) of the KVM VM `vmDescriptor`. The slot must have
    /// been created with dirty logging and the VM must have manual dirty-log protect enabled.
    public static func kvm(vmDescriptor: Int32, slot: UInt32, pageCount: Int) throws(DirtyPagesError) -> DirtyTracker {
        let op = "start"
        guard pageCount > 0 else { throw DirtyPagesError(.invalidArgument("empty slot"), engine: .kvm, operation: op) }
        var t: OpaquePointer?
        let rc = mdp_kvm_open(vmDescriptor, slot, UInt64(pageCount), &t)
        guard rc == 0, let t else { throw dirtyPagesError(rc, engine: .kvm, operation: op, fd: vmDescriptor) }
        return DirtyTracker(handle: t, engine: .kvm)
    }

    /// Tracks `region` by hashing every page each epoch on `threads` threads. Works on any memory,
    /// including guest RAM in a shared file written by an unmodified QEMU.
    public static func hash(region: UnsafeRawBufferPointer, threads: Int = 2) throws(DirtyPagesError) -> DirtyTracker {
        let op = "start"
        let a = UInt(bitPattern: region.baseAddress)
        try checkAligned(a, region.count, .hash, op)
        var t: OpaquePointer?
        // SAFETY: the caller guarantees `region` stays mapped while the tracker lives; it is only read.
        let rc = mdp_hash_open(region.baseAddress, region.count, UInt32(max(1, min(threads, 64))), &t)
        guard rc == 0, let t else {
            throw dirtyPagesError(rc, engine: .hash, operation: op, address: a, length: region.count)
        }
        return DirtyTracker(handle: t, engine: .hash)
    }

    /// Fills `bitmap` with the pages written since the last collect or re-arm and returns their count.
    /// With `rearm` (the default) those pages are re-protected in the same step, so a write racing the
    /// collection is reported now or next time, never lost.
    @discardableResult
    public func collect(into bitmap: inout DirtyBitmap, rearm: Bool = true) throws(DirtyPagesError) -> Int {
        let engine = self.engine, targetPID = self.targetPID
        guard bitmap.pageCount >= pageCount else {
            throw DirtyPagesError(.bitmapTooSmall(pages: bitmap.pageCount, needed: pageCount), engine: engine, operation: "collect")
        }
        return try lock.withLock { () throws(DirtyPagesError) -> Int in
            guard let h = handle else { throw DirtyPagesError(.stopped, engine: engine, operation: "collect") }
            var n: UInt64 = 0
            // SAFETY: `words` holds at least (pageCount+63)/64 words (checked above); mdp_collect writes
            // only that many and does not keep the pointer.
            let rc = bitmap.words.withUnsafeMutableBufferPointer { mdp_collect(h, $0.baseAddress, $0.count, rearm ? 1 : 0, &n) }
            if rc != 0 { throw dirtyPagesError(rc, engine: engine, operation: "collect", pid: targetPID ?? 0) }
            return Int(n)
        }
    }

    /// A fresh bitmap of the pages written since the last collect or re-arm.
    public func collect(rearm: Bool = true) throws(DirtyPagesError) -> DirtyBitmap {
        var b = DirtyBitmap(pageCount: pageCount)
        try collect(into: &b, rearm: rearm)
        return b
    }

    /// Forgets every write so far.
    public func rearm() throws(DirtyPagesError) {
        let engine = self.engine, targetPID = self.targetPID
        try lock.withLock { () throws(DirtyPagesError) in
            guard let h = handle else { throw DirtyPagesError(.stopped, engine: engine, operation: "re-arm") }
            let rc = mdp_rearm(h)
            if rc != 0 { throw dirtyPagesError(rc, engine: engine, operation: "re-arm", pid: targetPID ?? 0) }
        }
    }

    /// Stops tracking (unregisters the range). Idempotent; later calls throw `.stopped`.
    public func stop() {
        lock.withLock {
            if let h = handle { mdp_close(h) }
            handle = nil
        }
    }

    /// Bytes the tracker itself holds (hashes, scan vectors, scratch bitmaps), not counting the
    /// caller's bitmaps.
    public var footprintBytes: Int {
        lock.withLock { handle.map { Int(mdp_tracker_footprint($0)) } ?? 0 }
    }
}

/// The target side of remote tracking, in this process: registers a range with an async
/// write-protect userfaultfd so another process can track it through /proc/PID/pagemap. This is
/// what a preload shim inside QEMU does for guest RAM.
public final class TrackedRegistration: @unchecked Sendable {
    // SAFETY (Sendable): the fd is immutable and closed once, in deinit.
    public let descriptor: Int32

    public init(region: UnsafeMutableRawBufferPointer) throws(DirtyPagesError) {
        let a = UInt(bitPattern: region.baseAddress)
        try DirtyTracker.checkAligned(a, region.count, .uffdRemote, "register")
        var fd: Int32 = -1
        // SAFETY: the caller keeps `region` mapped while registered; the kernel only changes PTE bits.
        let rc = mdp_target_register(region.baseAddress, region.count, &fd)
        if rc != 0 { throw dirtyPagesError(rc, engine: .uffdRemote, operation: "register", address: a, length: region.count) }
        descriptor = fd
    }

    deinit { close(descriptor) }
}

/// Creates a memfd (close-on-exec), the backing QEMU's memory-backend-memfd uses for guest RAM.
public func createMemfd(name: String) throws(DirtyPagesError) -> Int32 {
    let fd = mdp_memfd_create(name)
    if fd < 0 { throw dirtyPagesError(fd, engine: nil, operation: "memfd_create") }
    return fd
}

/// The seeded XXH3-64 of each page of `pages` (a whole number of pages), written to `into` (one
/// value per page). The hash engine's page hash with a seed: a resync compares a replica's image
/// with the source by these values, and a seed chosen per resync keeps pages from being crafted to
/// collide. With seed 0 it equals the hash engine's value.
public func hashPages(_ pages: UnsafeRawBufferPointer, seed: UInt64, into out: UnsafeMutableBufferPointer<UInt64>) {
    let n = pages.count / dirtyPageSize
    precondition(pages.count % dirtyPageSize == 0 && out.count >= n, "hashPages: \(pages.count) bytes into \(out.count) values")
    guard n > 0 else { return }
    // SAFETY: `pages` holds n whole pages and `out` at least n values (checked); the C side reads and
    // writes exactly that and keeps no pointer.
    mdp_hash_pages(pages.baseAddress!, UInt64(n), seed, out.baseAddress!)
}
