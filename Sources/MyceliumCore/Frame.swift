// The frame: the unit every Mycelium channel carries.
//
// Layout: `u32 length | u8 version | u8 type | payload`, where `length` counts the version, type and
// payload bytes. The length is checked against the channel's maximum before a single payload byte
// is buffered, so a peer cannot make us allocate more than that maximum, whatever it sends.

public struct Frame: Equatable, Sendable {
    public static let version: UInt8 = 1
    public static let headerSize = 6
    /// Default maximum for control-plane channels. Bulk data (RAM pages, migration streams)
    /// travels over rhizomorph, not over these frames.
    public static let defaultMaxSize = 4 << 20

    public var type: UInt8
    public var payload: [UInt8]

    public init(type: UInt8, payload: [UInt8]) {
        self.type = type
        self.payload = payload
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: Frame.headerSize + payload.count)
        w.u32(UInt32(2 + payload.count))
        w.u8(Frame.version)
        w.u8(type)
        w.raw(payload)
        return w.bytes
    }
}

/// Incremental, allocation-bounded frame decoder. Feed it bytes as they arrive; take frames out.
///
/// After it throws, the stream is unusable (framing is lost) and the caller must close the
/// connection; further calls keep throwing the same error.
public struct FrameDecoder: Sendable {
    public let maxFrameSize: Int
    private var buffer: [UInt8] = []
    private var start = 0
    private var failed: DecodeError?
    /// Bytes consumed so far, for error offsets.
    private var consumed = 0

    public init(maxFrameSize: Int = Frame.defaultMaxSize) {
        precondition(maxFrameSize >= 2)
        self.maxFrameSize = maxFrameSize
    }

    /// Bytes held waiting for the rest of a frame.
    public var bufferedByteCount: Int { buffer.count - start }

    public mutating func append<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete frame, or nil if more bytes are needed.
    public mutating func next() throws(DecodeError) -> Frame? {
        if let failed { throw failed }
        let avail = buffer.count - start
        if avail < 4 { return nil }
        let length = Int(buffer[start]) << 24 | Int(buffer[start + 1]) << 16 | Int(buffer[start + 2]) << 8 | Int(buffer[start + 3])
        if length > maxFrameSize {
            return try fail(.tooLong(field: "frame", length: length, limit: maxFrameSize))
        }
        if length < 2 {
            return try fail(.invalid(field: "frame length", reason: "\(length) is shorter than the 2-byte frame header"))
        }
        if avail < 4 { return nil }
        // Check the version as soon as it arrives, so garbage is refused without waiting for `length` bytes.
        if avail >= 5 && buffer[start + 4] != Frame.version {
            return try fail(.unknownVersion(field: "frame version", value: UInt64(buffer[start + 4])))
        }
        if avail < 4 + length { return nil }
        let type = buffer[start + 5]
        let payload = Array(buffer[(start + 6)..<(start + 4 + length)])
        start += 4 + length
        consumed += 4 + length
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.capacity <= 1 << 16)
            start = 0
        }
        return Frame(type: type, payload: payload)
    }

    /// Call at end of stream: a partial frame left in the buffer is a truncation error.
    public func finish() throws(DecodeError) {
        if let failed { throw failed }
        let avail = buffer.count - start
        if avail > 0 {
            throw DecodeError(.truncated(needed: expectedLength() - avail, available: avail), at: consumed)
        }
    }

    private func expectedLength() -> Int {
        let avail = buffer.count - start
        if avail < 4 { return 4 }
        return 4 + (Int(buffer[start]) << 24 | Int(buffer[start + 1]) << 16 | Int(buffer[start + 2]) << 8 | Int(buffer[start + 3]))
    }

    private mutating func fail(_ code: DecodeError.Code) throws(DecodeError) -> Frame? {
        let e = DecodeError(code, at: consumed)
        failed = e
        buffer = []
        start = 0
        throw e
    }
}
