// Asynchronous image I/O (librbd's rbd_aio_*): many requests in flight on one image without a thread
// per request, for queue depths > 1 (a VM disk, a volume under load, `mycelium-bench storage`).
//
// How: each call allocates one librbd completion whose C callback (`aioCompleted`, run on librbd's
// finisher thread) reads the result, releases the completion and resumes the caller's continuation.
// Submission does not block: with librbd's default `rbd_non_blocking_aio = true` the request is queued
// to librbd's own work queue, so it is submitted on the caller's thread — no Dispatch hop, no thread
// parked per request. N concurrent callers (e.g. N tasks of a task group) keep N requests in flight.
//
// Lifetimes: the request's box (`AIORequest`) is retained across the C boundary (Unmanaged) and holds
// the `RBDBuffer`, so the memory librbd reads from or writes into stays alive and in place until the
// callback has run, even if the caller drops every reference (e.g. its task is cancelled).
//
// Closing: submission takes the image's read lock without waiting (`tryRead`), so a request races
// `close()` only as "before" (it runs, and rbd_close waits for it, as librbd's close drains in-flight
// I/O) or "after" (it fails as `.closed`); it never reaches a closed handle.

import CRados
import Glibc

/// Memory for asynchronous I/O: page-aligned, owned, never moved; librbd writes from it or reads
/// into it while a request is in flight. Using one buffer in two concurrent requests is allowed by
/// this type but a caller's bug when one of them is a read.
public final class RBDBuffer: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): the memory is allocated once and freed only in deinit; every
    // in-flight request holds a strong reference, so it outlives librbd's use of it. Concurrent access
    // to the bytes themselves is the caller's responsibility (documented above).
    public let count: Int
    let base: UnsafeMutableRawPointer

    /// `count` zero bytes (count ≥ 0).
    public init(count: Int) {
        precondition(count >= 0, "RBDBuffer(count:) needs count >= 0, got \(count)")
        self.count = count
        base = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 4096)
        memset(base, 0, max(count, 1))
    }

    /// A copy of `bytes`.
    public convenience init(_ bytes: [UInt8]) {
        self.init(count: bytes.count)
        bytes.withUnsafeBytes { b in if let p = b.baseAddress { memcpy(base, p, b.count) } }
    }

    deinit { base.deallocate() }

    /// The bytes as an array (a copy).
    public var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: base, count: count)) }

    /// Fills or inspects the buffer in place (never while a request uses it).
    public func withUnsafeMutableBytes<T>(_ body: (UnsafeMutableRawBufferPointer) throws -> T) rethrows -> T {
        try body(UnsafeMutableRawBufferPointer(start: base, count: count))
    }
}

/// One request in flight: the caller's continuation and the buffer librbd uses until the callback.
private final class AIORequest: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): written once before submission; the callback (another thread)
    // only resumes the continuation, exactly once (librbd calls a completion's callback once).
    let continuation: CheckedContinuation<Int, Never>
    let buffer: RBDBuffer?
    init(_ continuation: CheckedContinuation<Int, Never>, _ buffer: RBDBuffer?) { self.continuation = continuation; self.buffer = buffer }
}

/// librbd's completion callback: takes back the request retained at submission, resumes its caller.
/// Runs on librbd's finisher thread; does nothing that blocks.
private let aioCompleted: rbd_callback_t = { completion, arg in
    guard let arg else { return }
    let request = Unmanaged<AIORequest>.fromOpaque(arg).takeRetainedValue()
    let rc = rbd_aio_get_return_value(completion)
    rbd_aio_release(completion)
    request.continuation.resume(returning: rc)
}

/// Submission failed because the image is closed (or closing); distinct from any errno.
private let submitClosed = Int.min

extension RBDImage {
    /// Writes `length` bytes of `buffer` starting at `bufferOffset` to the image at `offset`,
    /// asynchronously: returns when librbd acknowledges the write (durable on the OSDs unless librbd's
    /// writeback cache holds it; `aioFlush()` makes it durable). Many may be in flight at once.
    public func aioWrite(_ buffer: RBDBuffer, bufferOffset: Int = 0, length: Int? = nil, at offset: UInt64) async throws(RBDError) {
        let n = length ?? (buffer.count - bufferOffset)
        let op = "write \(n) bytes at \(offset) to image \(spec) (async)"
        if readOnly { throw .invalidArgument(reason: "this handle is a read-only snapshot", operation: op, errno: EROFS) }
        try Self.checkRange(buffer, bufferOffset, n, offset, op)
        let rc = await submit(buffer) { h, c in
            rbd_aio_write(h, offset, n, (buffer.base + bufferOffset).assumingMemoryBound(to: CChar.self), c)
        }
        if rc == submitClosed { throw .closed(operation: op) }
        if rc < 0 { throw RBDError.from(Int32(truncatingIfNeeded: rc), op, what: "the range", image: spec) }
    }

    /// Reads up to `length` bytes at `offset` into `buffer` from `bufferOffset`, asynchronously;
    /// returns how many were read (fewer only at the end of the image).
    @discardableResult
    public func aioRead(into buffer: RBDBuffer, bufferOffset: Int = 0, length: Int? = nil, at offset: UInt64) async throws(RBDError) -> Int {
        let n = length ?? (buffer.count - bufferOffset)
        let op = "read \(n) bytes at \(offset) from image \(spec) (async)"
        try Self.checkRange(buffer, bufferOffset, n, offset, op)
        let rc = await submit(buffer) { h, c in
            rbd_aio_read(h, offset, n, (buffer.base + bufferOffset).assumingMemoryBound(to: CChar.self), c)
        }
        if rc == submitClosed { throw .closed(operation: op) }
        if rc < 0 { throw RBDError.from(Int32(truncatingIfNeeded: rc), op, what: "the range", image: spec) }
        if rc > n { throw .failed(operation: op + " (librbd reported \(rc) bytes)", errno: EIO) }
        return rc
    }

    /// `aioWrite` of an array (copied once into an `RBDBuffer`).
    public func aioWrite(_ bytes: [UInt8], at offset: UInt64) async throws(RBDError) {
        try await aioWrite(RBDBuffer(bytes), at: offset)
    }

    /// `aioRead` into a new array of at most `count` bytes.
    public func aioRead(count: Int, at offset: UInt64) async throws(RBDError) -> [UInt8] {
        guard count >= 0 else {
            throw .invalidArgument(reason: "negative count \(count)", operation: "read \(count) bytes at \(offset) from image \(spec) (async)", errno: EINVAL)
        }
        let b = RBDBuffer(count: count)
        let n = try await aioRead(into: b, at: offset)
        return Array(UnsafeRawBufferPointer(start: b.base, count: n))
    }

    /// Makes every write acknowledged so far durable on the OSDs, asynchronously (rbd_aio_flush).
    public func aioFlush() async throws(RBDError) {
        let op = "flush image \(spec) (async)"
        let rc = await submit(nil) { h, c in rbd_aio_flush(h, c) }
        if rc == submitClosed { throw .closed(operation: op) }
        if rc < 0 { throw RBDError.from(Int32(truncatingIfNeeded: rc), op, image: spec) }
    }

    /// The buffer range [bufferOffset, bufferOffset+length) lies inside `buffer` and the image range
    /// does not overflow; librbd itself refuses a range past the image's end (`.invalidArgument`).
    static func checkRange(_ buffer: RBDBuffer, _ bufferOffset: Int, _ length: Int, _ offset: UInt64, _ op: String) throws(RBDError) {
        guard bufferOffset >= 0, length >= 0, bufferOffset <= buffer.count, length <= buffer.count - bufferOffset else {
            throw .invalidArgument(reason: "bytes \(bufferOffset)..<\(bufferOffset + length) are outside the \(buffer.count)-byte buffer", operation: op, errno: EINVAL)
        }
        guard offset <= UInt64.max - UInt64(length) else {
            throw .invalidArgument(reason: "offset \(offset) + \(length) bytes overflows", operation: op, errno: EINVAL)
        }
    }

    /// Creates a completion, submits with `start` under the read lock, and waits for the callback.
    /// Returns librbd's result (≥ 0 or -errno), or `submitClosed`.
    private func submit(_ buffer: RBDBuffer?, _ start: @escaping (rbd_image_t, rbd_completion_t) -> Int32) async -> Int {
        await withCheckedContinuation { (c: CheckedContinuation<Int, Never>) in
            let arg = Unmanaged.passRetained(AIORequest(c, buffer)).toOpaque()
            var completion: rbd_completion_t?
            let created = rbd_aio_create_completion(arg, aioCompleted, &completion)
            guard created == 0, let completion else {
                Unmanaged<AIORequest>.fromOpaque(arg).release()
                c.resume(returning: Int(created < 0 ? created : -ENOMEM))
                return
            }
            // Never blocks: a close in progress holds the write lock, and the request fails as closed.
            let submitted: Int32? = lock.tryRead { () -> Int32? in open ? start(handle, completion) : nil } ?? nil
            guard let submitted, submitted >= 0 else {
                // Not submitted: librbd will never call back, so release both here.
                rbd_aio_release(completion)
                Unmanaged<AIORequest>.fromOpaque(arg).release()
                c.resume(returning: submitted.map { Int($0) } ?? submitClosed)
                return
            }
        }
    }
}
