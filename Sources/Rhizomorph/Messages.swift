// Whole messages over pages and barriers: how Endophyte's replication protocol travels on
// rhizomorph (RhizomorphReplicationTransport), and anything else that wants ordered messages whose
// bodies are striped over every path.
//
// A message is a type byte and a body. It is sent as page writes at offsets *within the message*
// (the body's bytes, gathered into chunk-sized writes), then one barrier whose label says what the
// message was: u8 label version | u8 type | u48 body length. The C receive window (rhizomorph.h,
// rxwin.c) delivers the pages of barrier k's epoch only after barrier k−1 has been delivered, and
// barrier k only after every chunk sent before it. So a message arrives whole, after every message
// sent before it and before every message sent after it, while the chunks *inside* it travel over
// every connection of every path at once, are resent on another path when theirs dies, and are
// written into place in whatever order they arrive.
//
// Why not the ordered byte stream (rz_send_bytes / rz_recv_fd): its receiver writes into a file
// descriptor until the sender ends the stream (one more copy through a pipe and a thread), and it
// delivers strictly in sequence, so one chunk stuck behind a dying path holds back everything after
// it; in pages mode only the next message waits for it. A direction can carry one mode at a time,
// so both kinds of message (bulk pages and small control messages) use this one.

import CRhizomorph

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The barrier label that closes a message: u8 version | u8 type | u48 body length.
public enum MessageLabel {
    public static let version: UInt8 = 1
    public static let maxLength = (1 << 48) - 1

    public static func encode(type: UInt8, length: Int) -> UInt64 {
        precondition(length >= 0 && length <= maxLength, "message length \(length) does not fit a label")
        return UInt64(version) << 56 | UInt64(type) << 48 | UInt64(length)
    }

    /// The type and body length a label announces; throws `.malformed` for another label version.
    public static func decode(_ label: UInt64) throws -> (type: UInt8, length: Int) {
        let v = UInt8(truncatingIfNeeded: label >> 56)
        guard v == version else {
            throw RhizomorphError.malformed("message label version \(v), expected \(version): the peer speaks another message layer")
        }
        return (UInt8(truncatingIfNeeded: label >> 48), Int(label & UInt64(maxLength)))
    }
}

/// A growable body buffer, handed from the assembler to the reader and back.
public final class MessageBuffer: @unchecked Sendable {
    // SAFETY (Sendable): owned by one thread at a time: the assembler while a message is built, then
    // the reader until it recycles the buffer (the hand-overs go through a lock).
    private(set) var base: UnsafeMutableRawPointer
    private(set) var capacity: Int
    /// Bytes of the completed message.
    public internal(set) var count = 0

    init(capacity: Int) {
        self.capacity = max(capacity, 1)
        // SAFETY: owned by this object, freed in deinit (or when grown).
        base = .allocate(byteCount: self.capacity, alignment: 4096)
    }

    deinit { base.deallocate() }

    /// Grows to at least `bytes`, keeping what is written (chunks arrive in any order, so all of it).
    func reserve(_ bytes: Int, limit: Int) {
        guard bytes > capacity else { return }
        let n = min(max(bytes, capacity * 2), max(limit, bytes))
        let fresh = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 4096)
        fresh.copyMemory(from: base, byteCount: capacity)
        base.deallocate()
        base = fresh
        capacity = n
    }

    public var body: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }
}

/// Puts delivered chunks back together into messages. Pure bookkeeping over bytes from the peer
/// (fuzzed: mycelium-fuzz target `rzmessages`): every offset and length is checked against the
/// message limit before anything is written or grown, and a barrier is accepted only when exactly
/// the announced number of bytes arrived, all inside the announced length.
public final class MessageAssembler {
    public let maxMessageBytes: Int
    private let initialCapacity: Int
    private var current: MessageBuffer
    private var received = 0
    private var extent = 0

    public init(maxMessageBytes: Int, initialCapacity: Int = (1 << 20) + (64 << 10)) {
        precondition(maxMessageBytes > 0 && maxMessageBytes <= MessageLabel.maxLength)
        self.maxMessageBytes = maxMessageBytes
        self.initialCapacity = min(initialCapacity, maxMessageBytes)
        current = MessageBuffer(capacity: self.initialCapacity)
    }

    /// Bytes of the message being assembled so far.
    public var pendingBytes: Int { received }

    /// Stores one delivered chunk of the open message.
    public func page(offset: UInt64, _ data: UnsafeRawBufferPointer) throws {
        let limit = UInt64(maxMessageBytes)
        guard offset <= limit, UInt64(data.count) <= limit - offset else {
            throw RhizomorphError.malformed("message chunk at \(offset) of \(data.count) bytes exceeds the \(maxMessageBytes)-byte message limit")
        }
        let end = Int(offset) + data.count
        guard received + data.count <= maxMessageBytes else {
            throw RhizomorphError.malformed("message chunks add up to more than the \(maxMessageBytes)-byte message limit")
        }
        current.reserve(end, limit: maxMessageBytes)
        if let src = data.baseAddress, data.count > 0 {
            // SAFETY: end <= capacity (reserved above); src holds data.count bytes during the call.
            (current.base + Int(offset)).copyMemory(from: src, byteCount: data.count)
        }
        received += data.count
        extent = max(extent, end)
    }

    /// Ends the open message with the barrier's label. Returns its type and the buffer holding it;
    /// the next message goes into `fresh` (or a new buffer).
    public func complete(label: UInt64, replacingBufferWith fresh: MessageBuffer? = nil) throws -> (type: UInt8, buffer: MessageBuffer) {
        let (type, length) = try MessageLabel.decode(label)
        // Every chunk is delivered once (the C window deduplicates), so for an honest sender the
        // bytes add up to the length and none lies beyond it.
        guard length <= maxMessageBytes, received == length, extent <= length else {
            throw RhizomorphError.malformed("message of type \(type) announced \(length) bytes, \(received) arrived (reaching byte \(extent))")
        }
        let done = current
        done.count = length
        current = fresh ?? MessageBuffer(capacity: initialCapacity)
        current.count = 0
        received = 0
        extent = 0
        return (type, done)
    }
}

/// A message taken from a `MessageChannel`; give it back with `recycle` once its body is used.
public struct ReceivedMessage: Sendable {
    public let type: UInt8
    let buffer: MessageBuffer
    /// Valid until the message is recycled.
    public var body: UnsafeRawBufferPointer { buffer.body }
}

/// Ordered, whole messages in both directions over one session (see the top of this file). One
/// thread of its own receives; `receive` takes completed messages from it. `send` may be called
/// from any thread (one message at a time), `receive` from one thread at a time.
public final class MessageChannel: @unchecked Sendable {
    // SAFETY (Sendable): the gather buffer is guarded by `sendGate`, `sent` by `counterGate`; the receive side
    // lives in `inbox` (its own lock); the session is thread-safe.
    public let session: Session
    public let maxMessageBytes: Int
    private let inbox: Inbox
    private let sendGate = Gate()
    /// Guards `sent` alone, so reading it never waits for a send blocked on the window.
    private let counterGate = Gate()
    private let chunk: Int
    private let gather: UnsafeMutableRawPointer
    private var sent: UInt64 = 0

    /// Starts receiving at once. `chunkSize` should be the session's (scattered pieces are gathered
    /// into writes of that size); at most `maxQueuedMessages` completed messages wait for `receive`
    /// before the receiving thread stops taking more (and the sender's window fills).
    public init(session: Session, maxMessageBytes: Int, chunkSize: Int = 65536, maxQueuedMessages: Int = 8) {
        self.session = session
        self.maxMessageBytes = maxMessageBytes
        chunk = max(4096, chunkSize)
        // SAFETY: owned by this channel, used under sendGate, freed in deinit.
        gather = .allocate(byteCount: chunk, alignment: 4096)
        inbox = Inbox(assembler: MessageAssembler(maxMessageBytes: maxMessageBytes), maxQueued: max(1, maxQueuedMessages))
        let inbox = self.inbox
        startThread {
            // Holds the session and the inbox, not the channel: dropping the channel closes the
            // session, which ends this call.
            do {
                try session.receivePages(
                    onPage: { offset, data in try inbox.assembler.page(offset: offset, data) },
                    onBarrier: { label in try inbox.deliver(label: label) })
                inbox.finish(.peerEnded())
            } catch let e as RhizomorphError {
                inbox.finish(e)
            } catch {
                inbox.finish(.malformed("\(error)"))
            }
        }
    }

    deinit {
        close()
        gather.deallocate()
    }

    /// Payload bytes of the messages sent so far.
    public var bytesSent: UInt64 { counterGate.withLock { sent } }

    /// Sends one message whose body is the concatenation of `parts`. Returns once it is queued
    /// (blocking only while the session's send window is full).
    public func send(type: UInt8, parts: [UnsafeRawBufferPointer]) throws {
        let total = parts.reduce(0) { $0 + $1.count }
        guard total <= maxMessageBytes else {
            throw RhizomorphError.malformed("a message of \(total) bytes exceeds the \(maxMessageBytes)-byte limit")
        }
        try sendGate.withLock {
            var offset = 0       // body bytes handed to the session so far
            var gathered = 0     // bytes waiting in `gather`, which start at `offset`
            func flush() throws {
                try session.sendPage(offset: UInt64(offset), UnsafeRawBufferPointer(start: gather, count: gathered))
                offset += gathered
                gathered = 0
            }
            for piece in merged(parts) {
                var p = piece.baseAddress!
                var left = piece.count
                while left > 0 {
                    if gathered == 0 && left >= chunk {
                        // A long run (adjacent pages) goes out as it is, cut into chunks by the library.
                        let n = left - left % chunk
                        try session.sendPage(offset: UInt64(offset), UnsafeRawBufferPointer(start: p, count: n))
                        offset += n
                        p += n
                        left -= n
                    } else {
                        let n = min(chunk - gathered, left)
                        // SAFETY: gathered + n <= chunk, the gather buffer's size; p holds `left` bytes.
                        (gather + gathered).copyMemory(from: p, byteCount: n)
                        gathered += n
                        p += n
                        left -= n
                        if gathered == chunk { try flush() }
                    }
                }
            }
            if gathered > 0 { try flush() }
            try session.sendBarrier(epoch: MessageLabel.encode(type: type, length: total))
            counterGate.withLock { sent += UInt64(total) }
        }
    }

    /// Adjacent buffers (consecutive pages of one region) become one piece; empty ones are dropped.
    private func merged(_ parts: [UnsafeRawBufferPointer]) -> [UnsafeRawBufferPointer] {
        var out: [UnsafeRawBufferPointer] = []
        out.reserveCapacity(parts.count)
        for p in parts where p.count > 0 {
            if let last = out.last, last.baseAddress! + last.count == p.baseAddress! {
                out[out.count - 1] = UnsafeRawBufferPointer(start: last.baseAddress, count: last.count + p.count)
            } else {
                out.append(p)
            }
        }
        return out
    }

    /// The next message, waiting up to `timeout` seconds (nil: forever). Throws `.timedOut`, `.closed`
    /// once this channel is closed, or why receiving ended (the peer closed, every path is down, the
    /// peer sent something malformed) once every message that arrived before that was taken.
    public func receive(timeout: Double?) throws -> ReceivedMessage {
        try inbox.take(timeout: timeout)
    }

    /// Gives a message's buffer back for a later message.
    public func recycle(_ message: ReceivedMessage) { inbox.recycle(message.buffer) }

    /// Closes the session: `receive` calls blocked on other threads return `.closed` at once. What
    /// was sent is first given up to `linger` seconds to be delivered, as TCP delivers its send
    /// buffer after a close: rhizomorph's CLOSE is a control frame that may overtake data chunks, so
    /// a last message (an ack, an `activated`) would otherwise race it. Sends blocked on a full
    /// window return within the linger.
    public func close(linger: Double = 1) {
        inbox.close()
        if linger > 0 { try? session.flush(timeoutMilliseconds: Int32(linger * 1000)) }
        session.close()
    }
}

/// The receiving thread's side of a channel: the assembler (that thread only) and the queue of
/// completed messages (under `gate`).
private final class Inbox: @unchecked Sendable {
    // SAFETY (Sendable): `assembler` is used only by the receiving thread (inside rz_recv_pages
    // callbacks); everything else is guarded by `gate`.
    let assembler: MessageAssembler
    private let gate = Gate()
    private let maxQueued: Int
    private var ready: [(type: UInt8, buffer: MessageBuffer)] = []
    private var spares: [MessageBuffer] = []
    private var end: RhizomorphError?
    private var closed = false

    init(assembler: MessageAssembler, maxQueued: Int) {
        self.assembler = assembler
        self.maxQueued = maxQueued
    }

    /// On the receiving thread, from a barrier: the message is complete; queue it (waiting for room).
    /// Once the channel is closed, messages are dropped rather than refused: throwing here would
    /// fail the session (the C library's only way to stop a receive), and the senders and the
    /// closing linger would see that failure instead of an orderly close.
    func deliver(label: UInt64) throws {
        let fresh = gate.withLock { spares.popLast() }
        let message = try assembler.complete(label: label, replacingBufferWith: fresh)
        gate.withLock {
            while ready.count >= maxQueued && !closed { gate.wait() }
            if closed { return }
            ready.append(message)
            gate.broadcast()
        }
    }

    func finish(_ why: RhizomorphError) {
        gate.withLock {
            if end == nil { end = why }
            gate.broadcast()
        }
    }

    func close() {
        gate.withLock {
            closed = true
            gate.broadcast()
        }
    }

    func take(timeout: Double?) throws -> ReceivedMessage {
        let deadline = timeout.map { monotonicNow() + max(0, $0) }
        return try gate.withLock {
            while true {
                if closed { throw RhizomorphError.closed("receive") }
                if !ready.isEmpty {
                    let m = ready.removeFirst()
                    gate.broadcast()  // room for the receiving thread
                    return ReceivedMessage(type: m.type, buffer: m.buffer)
                }
                if let end { throw end }
                if let deadline {
                    if !gate.wait(until: deadline) && ready.isEmpty && end == nil && !closed {
                        throw RhizomorphError.timedOut("no message within \(timeout!) s")
                    }
                } else {
                    gate.wait()
                }
            }
        }
    }

    func recycle(_ buffer: MessageBuffer) {
        gate.withLock { if spares.count < 2 { spares.append(buffer) } }
    }
}

/// Runs `body` on a new detached thread.
private func startThread(_ body: @escaping @Sendable () -> Void) {
    final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    var t = pthread_t()
    let ctx = Unmanaged.passRetained(Box(body)).toOpaque()
    let rc = pthread_create(&t, nil, { ctx in
        // SAFETY: ctx is the Box retained below, released here exactly once.
        Unmanaged<Box>.fromOpaque(ctx!).takeRetainedValue().body()
        return nil
    }, ctx)
    precondition(rc == 0, "cannot start the message receiving thread: pthread_create returned \(rc)")
    pthread_detach(t)
}
