// Output commit (Remus, NSDI 2008: network buffering): what a replicated guest sends on its network
// leaves the host only once the replica holds a checkpoint taken after it was sent. A failover then
// never contradicts anything the world has seen: every reply a client got comes from a state the
// replica also has.
//
// This file is the pure part: the buffer that holds packets per epoch and decides what may go out,
// and the decoder of the framing QEMU's `filter-redirector` uses on its chardev. The shell that
// reads and writes QEMU's sockets is VMHost's `OutputCommitGate`.
//
// Epochs here are the buffer's own numbers, not the engine's: the shell seals an epoch while the
// guest is paused at a checkpoint boundary (everything read up to then was sent before the pause)
// and releases up to that seal when the engine reports the boundary's commit.

import MyceliumCore

/// Bounds on what an `OutputCommitBuffer` holds. When either is reached a new packet is dropped
/// (the newest, like a full NIC queue: TCP retransmits it, and what is already held keeps its order).
public struct OutputCommitLimits: Sendable, Equatable {
    public var maxPackets: Int
    public var maxBytes: Int
    public init(maxPackets: Int = 8192, maxBytes: Int = 16 << 20) {
        precondition(maxPackets > 0 && maxBytes > 0)
        self.maxPackets = maxPackets
        self.maxBytes = maxBytes
    }
}

/// What happened to one packet the guest sent.
public enum OutputDisposition: Sendable, Equatable {
    /// Send it now: the buffer passes traffic through (the guest is not protected).
    case sendNow
    /// Held until its epoch is committed.
    case held(epoch: UInt64)
    /// Refused: the buffer is full.
    case dropped
}

/// Holds a guest's outgoing packets until the checkpoint that covers them is committed.
public struct OutputCommitBuffer: Sendable, Equatable {
    public enum Mode: Sendable, Equatable {
        /// Packets are held per epoch (a replica is protecting the guest).
        case holding
        /// Packets go out at once: no replica protects the guest, so there is no checkpoint to wait
        /// for. Holding them would only stall the guest's network; the status says it is unprotected.
        case passingThrough
    }

    public let limits: OutputCommitLimits
    public private(set) var mode: Mode
    /// The epoch packets are tagged with now (not yet sealed).
    public private(set) var openEpoch: UInt64 = 1
    /// Held packets in arrival order; each carries its epoch. Epochs never decrease along it.
    private var queue: [(epoch: UInt64, packet: [UInt8])] = []
    private var head = 0
    public private(set) var heldBytes = 0
    /// Packets refused because the buffer was full, since creation.
    public private(set) var dropped: UInt64 = 0
    /// Packets released (or passed through), since creation.
    public private(set) var released: UInt64 = 0
    /// Packets thrown away by `discardAll` (a fence or a failover), since creation.
    public private(set) var discarded: UInt64 = 0

    public init(limits: OutputCommitLimits = OutputCommitLimits(), mode: Mode = .holding) {
        self.limits = limits
        self.mode = mode
    }

    public var heldPackets: Int { queue.count - head }

    public static func == (a: Self, b: Self) -> Bool {
        a.limits == b.limits && a.mode == b.mode && a.openEpoch == b.openEpoch && a.heldBytes == b.heldBytes
            && a.dropped == b.dropped && a.released == b.released && a.discarded == b.discarded
            && a.heldPackets == b.heldPackets
            && zip(a.queue[a.head...], b.queue[b.head...]).allSatisfy { $0.epoch == $1.epoch && $0.packet == $1.packet }
    }

    /// A packet the guest sent, read now. Held (tagged with the open epoch), passed, or dropped.
    public mutating func accept(_ packet: [UInt8]) -> OutputDisposition {
        switch mode {
        case .passingThrough:
            released += 1
            return .sendNow
        case .holding:
            guard heldPackets < limits.maxPackets, heldBytes + packet.count <= limits.maxBytes else {
                dropped += 1
                return .dropped
            }
            queue.append((openEpoch, packet))
            heldBytes += packet.count
            return .held(epoch: openEpoch)
        }
    }

    /// Closes the open epoch: call it while the guest is paused at a checkpoint boundary, once every
    /// packet it sent before the pause has been accepted. Returns the sealed epoch, which the
    /// boundary's commit releases.
    public mutating func seal() -> UInt64 {
        let sealed = openEpoch
        openEpoch += 1
        return sealed
    }

    /// The packets of every epoch up to and including `epoch`, in the order the guest sent them;
    /// they may go out now. An epoch not yet sealed (≥ `openEpoch`) is never released this way.
    public mutating func release(upTo epoch: UInt64) -> [[UInt8]] {
        let limit = min(epoch, openEpoch - 1)
        var out: [[UInt8]] = []
        while head < queue.count, queue[head].epoch <= limit {
            out.append(queue[head].packet)
            heldBytes -= queue[head].packet.count
            head += 1
        }
        compact()
        released += UInt64(out.count)
        return out
    }

    /// Switches mode. Entering `.passingThrough` returns everything held, to be sent now in order:
    /// the guest runs unprotected, and holding its past output would only lose it.
    public mutating func setMode(_ m: Mode) -> [[UInt8]] {
        mode = m
        guard m == .passingThrough, heldPackets > 0 else { return [] }
        let out = queue[head...].map(\.packet)
        queue.removeAll()
        head = 0
        heldBytes = 0
        released += UInt64(out.count)
        return out
    }

    /// Throws everything held away: the guest's copy here was fenced or lost its ownership, so what
    /// it sent since the last commit must never leave (the replica's state does not include it).
    /// Returns how many packets were discarded.
    @discardableResult
    public mutating func discardAll() -> Int {
        let n = heldPackets
        queue.removeAll()
        head = 0
        heldBytes = 0
        discarded += UInt64(n)
        return n
    }

    private mutating func compact() {
        if head == queue.count {
            queue.removeAll(keepingCapacity: queue.capacity <= 4096)
            head = 0
        } else if head >= 1024 && head >= queue.count / 2 {
            queue.removeFirst(head)
            head = 0
        }
    }
}

/// The framing of QEMU's `filter-redirector` chardevs (net/filter-mirror.c, QEMU 7.2): a 4-byte
/// big-endian packet length, then (only with `vnet_hdr_support=on`) a 4-byte big-endian length of the
/// virtio-net header that begins the packet, then the packet. Without `vnet_hdr_support` the packet
/// still starts with the NIC's virtio-net header when the tap has one; the gate never looks inside.
public struct RedirectorFrame: Sendable, Equatable {
    /// QEMU's NET_BUFSIZE (4096 + 65536): no packet through a netdev is longer.
    public static let maxPacketBytes = 69_632

    /// The virtio-net header length QEMU announced (nil without `vnet_hdr_support`).
    public var vnetHeaderLength: UInt32?
    public var packet: [UInt8]

    public init(packet: [UInt8], vnetHeaderLength: UInt32? = nil) {
        self.packet = packet
        self.vnetHeaderLength = vnetHeaderLength
    }

    /// The frame as QEMU reads it from an `indev`.
    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: packet.count + 8)
        w.u32(UInt32(packet.count))
        if let v = vnetHeaderLength { w.u32(v) }
        w.raw(packet)
        return w.bytes
    }
}

/// Incremental decoder of a redirector chardev's byte stream. Refuses a frame longer than
/// `RedirectorFrame.maxPacketBytes` (or a vnet header longer than its packet) before buffering it;
/// after a refusal it keeps no bytes and refuses everything (the stream has lost its framing).
public struct RedirectorFrameDecoder: Sendable {
    public let vnetHeaderSupport: Bool
    private var buffer: [UInt8] = []
    private var start = 0
    private var failed: DecodeError?
    private var consumed = 0

    public init(vnetHeaderSupport: Bool = false) {
        self.vnetHeaderSupport = vnetHeaderSupport
    }

    /// Bytes held waiting for the rest of a frame.
    public var bufferedByteCount: Int { buffer.count - start }

    public mutating func append<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if failed != nil { return }
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    private var headerBytes: Int { vnetHeaderSupport ? 8 : 4 }

    /// The next complete frame, or nil when more bytes are needed.
    public mutating func next() throws(DecodeError) -> RedirectorFrame? {
        if let failed { throw failed }
        let avail = buffer.count - start
        if avail < 4 { return nil }
        var r = ByteReader(Array(buffer[start..<(start + min(avail, headerBytes))]))
        let length: Int
        do { length = Int(try r.u32()) } catch { return nil }
        if length > RedirectorFrame.maxPacketBytes {
            return try fail(.tooLong(field: "redirector packet", length: length, limit: RedirectorFrame.maxPacketBytes))
        }
        if length == 0 { return try fail(.invalid(field: "redirector packet length", reason: "0: QEMU never sends an empty packet")) }
        var vnet: UInt32?
        if vnetHeaderSupport {
            guard avail >= 8 else { return nil }
            let v: UInt32
            do { v = try r.u32() } catch { return nil }
            if Int(v) > length {
                return try fail(.invalid(field: "vnet header length", reason: "\(v) is longer than its \(length)-byte packet"))
            }
            vnet = v
        }
        guard avail >= headerBytes + length else { return nil }
        let body = Array(buffer[(start + headerBytes)..<(start + headerBytes + length)])
        start += headerBytes + length
        consumed += headerBytes + length
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.capacity <= 1 << 17)
            start = 0
        }
        return RedirectorFrame(packet: body, vnetHeaderLength: vnet)
    }

    private mutating func fail(_ code: DecodeError.Code) throws(DecodeError) -> RedirectorFrame? {
        let e = DecodeError(code, at: consumed)
        failed = e
        buffer = []
        start = 0
        throw e
    }
}
