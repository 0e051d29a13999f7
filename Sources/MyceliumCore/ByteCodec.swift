// The versioned binary codec every Mycelium wire and disk format is built from.
//
// Big-endian fixed-width integers and length-prefixed byte strings. Every read is bounds-checked
// and every variable-length field carries a caller-chosen maximum, so a hostile length prefix can
// never make the decoder allocate more than the caller allowed.

/// Why a decoder refused its input. `offset` is the byte position where decoding stopped.
public struct DecodeError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: Equatable, Sendable {
        /// The input ended before the field did.
        case truncated(needed: Int, available: Int)
        /// A length prefix exceeds the field's limit.
        case tooLong(field: String, length: Int, limit: Int)
        /// Bytes were left over after a complete value.
        case trailingBytes(count: Int)
        /// A magic number, version or tag that this build does not know.
        case unknownVersion(field: String, value: UInt64)
        case badMagic
        /// A field holds a value that cannot be valid (bad enum tag, invalid UTF-8, ...).
        case invalid(field: String, reason: String)
        /// A checksum did not match.
        case checksumMismatch(expected: UInt32, actual: UInt32)
    }

    public let code: Code
    public let offset: Int

    public init(_ code: Code, at offset: Int) {
        self.code = code
        self.offset = offset
    }

    public var description: String {
        switch code {
        case let .truncated(needed, available):
            return "input truncated at byte \(offset): needed \(needed) more byte(s), \(available) left"
        case let .tooLong(field, length, limit):
            return "field '\(field)' at byte \(offset) is \(length) bytes, over its limit of \(limit)"
        case let .trailingBytes(count):
            return "\(count) unexpected byte(s) after the value at byte \(offset)"
        case let .unknownVersion(field, value):
            return "unknown \(field) \(value) at byte \(offset); this build does not understand it"
        case .badMagic:
            return "wrong magic number at byte \(offset): this is not the expected kind of data"
        case let .invalid(field, reason):
            return "field '\(field)' at byte \(offset) is invalid: \(reason)"
        case let .checksumMismatch(expected, actual):
            return "checksum mismatch at byte \(offset): stored \(hex32(expected)), computed \(hex32(actual))"
        }
    }
}

@inline(__always) func hex32(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: 8 - s.count) + s
}

/// Appends encoded values to a byte array.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    public mutating func u16(_ v: UInt16) { appendBE(v) }
    public mutating func u32(_ v: UInt32) { appendBE(v) }
    public mutating func u64(_ v: UInt64) { appendBE(v) }
    public mutating func i64(_ v: Int64) { appendBE(UInt64(bitPattern: v)) }

    /// Raw bytes with no length prefix (for fixed-size fields such as keys).
    public mutating func raw<C: Collection>(_ b: C) where C.Element == UInt8 { bytes.append(contentsOf: b) }

    /// Bytes prefixed by a u32 length.
    public mutating func blob<C: Collection>(_ b: C) where C.Element == UInt8 {
        precondition(b.count <= UInt32.max, "blob too large to encode")
        u32(UInt32(b.count))
        bytes.append(contentsOf: b)
    }

    /// UTF-8 string prefixed by a u16 length.
    public mutating func string(_ s: String) {
        let u = Array(s.utf8)
        precondition(u.count <= UInt16.max, "string too long to encode")
        u16(UInt16(u.count))
        bytes.append(contentsOf: u)
    }

    /// Overwrites a previously written u32 at `offset` (for length or checksum fields written last).
    public mutating func patchU32(_ v: UInt32, at offset: Int) {
        for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (24 - 8 * UInt32(i))) }
    }

    @inline(__always) private mutating func appendBE<T: FixedWidthInteger>(_ v: T) {
        var be = v.bigEndian
        withUnsafeBytes(of: &be) { bytes.append(contentsOf: $0) }
    }
}

/// Reads encoded values from a byte buffer, refusing anything that runs past its end.
public struct ByteReader: Sendable {
    public let bytes: [UInt8]
    public private(set) var offset: Int
    public let end: Int

    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
        self.offset = 0
        self.end = bytes.count
    }

    public var remaining: Int { end - offset }
    public var isAtEnd: Bool { offset == end }

    @inline(__always) private mutating func need(_ n: Int) throws {
        if n < 0 || n > end - offset {
            throw DecodeError(.truncated(needed: n, available: end - offset), at: offset)
        }
    }

    public mutating func u8() throws -> UInt8 {
        try need(1)
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func bool(_ field: String = "bool") throws -> Bool {
        let at = offset
        switch try u8() {
        case 0: return false
        case 1: return true
        case let v: throw DecodeError(.invalid(field: field, reason: "boolean byte is \(v), not 0 or 1"), at: at)
        }
    }

    public mutating func u16() throws -> UInt16 { try readBE() }
    public mutating func u32() throws -> UInt32 { try readBE() }
    public mutating func u64() throws -> UInt64 { try readBE() }
    public mutating func i64() throws -> Int64 { Int64(bitPattern: try readBE()) }

    public mutating func raw(_ n: Int) throws -> [UInt8] {
        try need(n)
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }

    /// A u32-length-prefixed blob; lengths over `limit` are refused before anything is allocated.
    public mutating func blob(_ field: String, limit: Int) throws -> [UInt8] {
        let at = offset
        let n = Int(try u32())
        if n > limit { throw DecodeError(.tooLong(field: field, length: n, limit: limit), at: at) }
        return try raw(n)
    }

    public mutating func string(_ field: String, limit: Int) throws -> String {
        let at = offset
        let n = Int(try u16())
        if n > limit { throw DecodeError(.tooLong(field: field, length: n, limit: limit), at: at) }
        let b = try raw(n)
        guard let s = String(validating: b, as: UTF8.self) else {
            throw DecodeError(.invalid(field: field, reason: "not valid UTF-8"), at: at)
        }
        return s
    }

    /// A u16 element count, checked against `limit` before any element is decoded.
    public mutating func count(_ field: String, limit: Int) throws -> Int {
        let at = offset
        let n = Int(try u16())
        if n > limit { throw DecodeError(.tooLong(field: field, length: n, limit: limit), at: at) }
        return n
    }

    /// Throws unless every byte has been consumed.
    public func finish() throws {
        if offset != end { throw DecodeError(.trailingBytes(count: end - offset), at: offset) }
    }

    @inline(__always) private mutating func readBE<T: FixedWidthInteger>() throws -> T {
        let n = MemoryLayout<T>.size
        try need(n)
        var v: T = 0
        for i in 0..<n { v = (v << 8) | T(bytes[offset + i]) }
        offset += n
        return v
    }
}

extension Int64 {
    /// `self + other`, clamped to Int64's range: for times and durations a peer chooses.
    public func saturatingAdding(_ other: Int64) -> Int64 {
        let (r, o) = addingReportingOverflow(other)
        return o ? (other > 0 ? .max : .min) : r
    }

    /// `self - other`, clamped to Int64's range.
    public func saturatingSubtracting(_ other: Int64) -> Int64 {
        let (r, o) = subtractingReportingOverflow(other)
        return o ? (other < 0 ? .max : .min) : r
    }

    /// `self * other`, clamped to Int64's range.
    public func saturatingMultiplied(by other: Int64) -> Int64 {
        let (r, o) = multipliedReportingOverflow(by: other)
        return o ? ((self < 0) != (other < 0) ? .min : .max) : r
    }
}
