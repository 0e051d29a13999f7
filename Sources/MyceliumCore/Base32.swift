// Human-facing encodings: IDs that people read aloud or paste, with a checksum that catches typos.
//
// The alphabet is Crockford's base32 in lower case: no i, l, o or u, so 1/l and 0/o cannot be
// confused; decoding folds those look-alikes and ignores hyphens, the way Crockford specifies.

public enum Base32 {
    static let alphabet = Array("0123456789abcdefghjkmnpqrstvwxyz".utf8)

    static let decodeTable: [Int8] = {
        var t = [Int8](repeating: -1, count: 256)
        for (i, c) in alphabet.enumerated() {
            t[Int(c)] = Int8(i)
            if c >= UInt8(ascii: "a") { t[Int(c - 32)] = Int8(i) }  // upper case
        }
        t[Int(UInt8(ascii: "o"))] = 0; t[Int(UInt8(ascii: "O"))] = 0
        t[Int(UInt8(ascii: "i"))] = 1; t[Int(UInt8(ascii: "I"))] = 1
        t[Int(UInt8(ascii: "l"))] = 1; t[Int(UInt8(ascii: "L"))] = 1
        return t
    }()

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 8 + 4) / 5)
        var buffer: UInt32 = 0
        var bits = 0
        for b in bytes {
            buffer = (buffer << 8) | UInt32(b)
            bits += 8
            while bits >= 5 {
                out.append(alphabet[Int((buffer >> UInt32(bits - 5)) & 31)])
                bits -= 5
            }
        }
        if bits > 0 { out.append(alphabet[Int((buffer << UInt32(5 - bits)) & 31)]) }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes exactly `count` bytes, or returns nil on a bad character, a wrong length or
    /// non-zero padding bits (so each value has exactly one spelling).
    public static func decode(_ text: Substring, count: Int) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        var buffer: UInt32 = 0
        var bits = 0
        for c in text.utf8 {
            if c == UInt8(ascii: "-") { continue }
            let v = decodeTable[Int(c)]
            if v < 0 { return nil }
            buffer = (buffer << 5) | UInt32(v)
            bits += 5
            if bits >= 8 {
                if out.count == count { return nil }
                out.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits - 8)))
                bits -= 8
            }
            buffer &= (1 << UInt32(bits)) - 1
        }
        if out.count != count || bits >= 5 || buffer != 0 { return nil }
        return out
    }
}

/// An identifier shown to people as `prefix-<base32 of value and checksum>`.
///
/// The checksum is the first 2 bytes of CRC-32C over the prefix and the value, so a single mistyped
/// character, a swap of two neighbours or an ID of the wrong kind (node vs network) is caught.
public struct CheckedID: Sendable {
    public static func render(prefix: String, value: [UInt8]) -> String {
        prefix + "-" + Base32.encode(value + checksum(prefix: prefix, value: value))
    }

    public enum ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        case wrongPrefix(expected: String, got: String)
        case badCharacters
        case checksumMismatch

        public var description: String {
            switch self {
            case let .wrongPrefix(expected, got):
                return "expected an ID starting with '\(expected)-', got '\(got)'"
            case .badCharacters:
                return "the ID has characters outside the base32 alphabet or the wrong length"
            case .checksumMismatch:
                return "the ID's checksum does not match: it was probably mistyped"
            }
        }
    }

    public static func parse(_ text: String, prefix: String, count: Int) throws(ParseError) -> [UInt8] {
        let trimmed = text.trimmingWhitespace()
        guard trimmed.hasPrefix(prefix + "-") else {
            throw .wrongPrefix(expected: prefix, got: String(trimmed.prefix(prefix.count + 1)))
        }
        let body = trimmed.dropFirst(prefix.count + 1)
        guard let all = Base32.decode(body, count: count + 2) else { throw .badCharacters }
        let value = Array(all[0..<count])
        guard Array(all[count...]) == checksum(prefix: prefix, value: value) else { throw .checksumMismatch }
        return value
    }

    static func checksum(prefix: String, value: [UInt8]) -> [UInt8] {
        let c = CRC32C.checksum(Array(prefix.utf8) + value)
        return [UInt8(truncatingIfNeeded: c >> 24), UInt8(truncatingIfNeeded: c >> 16)]
    }
}

extension String {
    func trimmingWhitespace() -> Substring {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return s
    }
}

/// Lower-case hex, for logs and fingerprints.
public func hexString<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 15)])
    }
    return String(decoding: out, as: UTF8.self)
}

/// URL-safe base64 without padding (RFC 4648 §5), for tokens that people copy and paste.
public enum Base64URL {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    static let decodeTable: [Int8] = {
        var t = [Int8](repeating: -1, count: 256)
        for (i, c) in alphabet.enumerated() { t[Int(c)] = Int8(i) }
        return t
    }()

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var i = 0
        while i + 3 <= bytes.count {
            let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            for s in [18, 12, 6, 0] { out.append(alphabet[Int((v >> UInt32(s)) & 63)]) }
            i += 3
        }
        let rest = bytes.count - i
        if rest == 1 {
            let v = UInt32(bytes[i]) << 16
            out.append(alphabet[Int((v >> 18) & 63)]); out.append(alphabet[Int((v >> 12) & 63)])
        } else if rest == 2 {
            let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
            out.append(alphabet[Int((v >> 18) & 63)]); out.append(alphabet[Int((v >> 12) & 63)])
            out.append(alphabet[Int((v >> 6) & 63)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Nil for characters outside the alphabet, an impossible length or non-zero trailing bits.
    public static func decode<S: StringProtocol>(_ text: S) -> [UInt8]? {
        let chars = Array(text.utf8)
        if chars.count % 4 == 1 { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count * 3 / 4)
        var buffer: UInt32 = 0
        var bits = 0
        for c in chars {
            let v = decodeTable[Int(c)]
            if v < 0 { return nil }
            buffer = (buffer << 6) | UInt32(v)
            bits += 6
            if bits >= 8 {
                out.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits - 8)))
                bits -= 8
                buffer &= (1 << UInt32(bits)) - 1
            }
        }
        if buffer != 0 { return nil }
        return out
    }
}
