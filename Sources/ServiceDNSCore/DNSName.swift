// Domain names as DNS carries them (RFC 1035 §3.1): a sequence of labels of 1...63 arbitrary bytes,
// at most 255 bytes in wire form. Pure: imports MyceliumCore only.

import MyceliumCore

/// A domain name: its labels in order, the root's empty label left implicit.
///
/// Labels keep the bytes they arrived with, so an answer repeats the question's spelling (RFC 4343
/// §4.1); comparisons that decide an answer go through ``lowercased()`` or ``equalsIgnoringCase(_:)``
/// (ASCII only, RFC 4343 §3).
public struct DNSName: Hashable, Sendable, CustomStringConvertible {
    public static let maxWireLength = 255
    public static let maxLabelLength = 63
    public static let root = DNSName(uncheckedLabels: [])

    public let labels: [[UInt8]]

    /// Nil if a label is empty or over 63 bytes, or the name is over 255 bytes in wire form.
    public init?(labels: [[UInt8]]) {
        var wire = 1
        for l in labels {
            guard (1...Self.maxLabelLength).contains(l.count) else { return nil }
            wire += 1 + l.count
        }
        guard wire <= Self.maxWireLength else { return nil }
        self.labels = labels
    }

    /// A name in presentation form, `web.service.mycelium` or with its trailing dot; `.` or `""` is the
    /// root. No escapes: a label cannot contain a dot this way. Nil for an empty label or an overlong name.
    public init?(_ text: String) {
        if text == "." || text.isEmpty {
            self = .root
            return
        }
        var parts = text.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        if parts.last?.isEmpty == true { parts.removeLast() }
        self.init(labels: parts.map { Array($0) })
    }

    init(uncheckedLabels: [[UInt8]]) { labels = uncheckedLabels }

    /// Bytes in uncompressed wire form, the root's zero byte included.
    public var wireLength: Int { labels.reduce(1) { $0 + 1 + $1.count } }

    /// The same name with ASCII letters in lower case: the key every lookup uses.
    public func lowercased() -> DNSName {
        DNSName(uncheckedLabels: labels.map { $0.map(asciiLower) })
    }

    public func equalsIgnoringCase(_ other: DNSName) -> Bool {
        labels.count == other.labels.count && zip(labels, other.labels).allSatisfy { labelsEqualIgnoringCase($0, $1) }
    }

    /// The labels in front of `zone` if this name is `zone` or below it (case-insensitively), else nil.
    public func labels(under zone: DNSName) -> ArraySlice<[UInt8]>? {
        guard labels.count >= zone.labels.count else { return nil }
        let cut = labels.count - zone.labels.count
        for (mine, theirs) in zip(labels[cut...], zone.labels) where !labelsEqualIgnoringCase(mine, theirs) { return nil }
        return labels[..<cut]
    }

    /// `label` prepended; nil if the result would be over the limits.
    public func prepending(_ label: [UInt8]) -> DNSName? { DNSName(labels: [label] + labels) }

    /// Presentation form with a trailing dot; dots, backslashes and unprintable bytes inside a label
    /// are escaped as RFC 1035 §5.1 does (`\.`, `\\`, `\DDD`), so a hostile name cannot forge a log line.
    public var description: String {
        if labels.isEmpty { return "." }
        var s = ""
        for l in labels {
            for b in l {
                switch b {
                case UInt8(ascii: "."), UInt8(ascii: "\\"): s += "\\" + String(UnicodeScalar(b))
                case 0x21...0x7E: s.append(Character(UnicodeScalar(b)))
                default:
                    let d = String(b)
                    s += "\\" + String(repeating: "0", count: 3 - d.count) + d
                }
            }
            s += "."
        }
        return s
    }
}

@inline(__always) func asciiLower(_ b: UInt8) -> UInt8 { (0x41...0x5A).contains(b) ? b | 0x20 : b }

func labelsEqualIgnoringCase(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { asciiLower($0) == asciiLower($1) }
}

extension DNSName {
    /// Reads the name at `start` in `message`, following compression pointers (RFC 1035 §4.1.4).
    /// Returns the name and the offset just past its in-line part (where the next field starts).
    ///
    /// Every pointer must point before the place the previous jump landed (the name's own start for
    /// the first one), so the walk only ever moves backwards and a loop is impossible; it also stops
    /// after 128 pointers (a 255-byte name has at most 127 labels, so more buys nothing but time) and
    /// at 255 bytes of name.
    static func read(from message: [UInt8], at start: Int) throws(DecodeError) -> (DNSName, end: Int) {
        var labels: [[UInt8]] = []
        var pos = start
        var end: Int?
        var wire = 1
        var lowestTarget = start
        var jumps = 0
        while true {
            guard pos < message.count else { throw DecodeError(.truncated(needed: 1, available: 0), at: pos) }
            let len = Int(message[pos])
            switch len & 0xC0 {
            case 0x00:
                if len == 0 { return (DNSName(uncheckedLabels: labels), end ?? pos + 1) }
                guard len < message.count - pos else {
                    throw DecodeError(.truncated(needed: len, available: message.count - pos - 1), at: pos + 1)
                }
                wire += 1 + len
                if wire > maxWireLength {
                    throw DecodeError(.tooLong(field: "domain name", length: wire, limit: maxWireLength), at: pos)
                }
                labels.append(Array(message[pos + 1...pos + len]))
                pos += 1 + len
            case 0xC0:
                guard pos + 1 < message.count else { throw DecodeError(.truncated(needed: 1, available: 0), at: pos + 1) }
                let target = (len & 0x3F) << 8 | Int(message[pos + 1])
                if end == nil { end = pos + 2 }
                guard target < lowestTarget else {
                    throw DecodeError(.invalid(field: "domain name", reason: "compression pointer to byte \(target) does not point backwards (a loop or a forward reference)"), at: pos)
                }
                jumps += 1
                guard jumps <= 128 else {
                    throw DecodeError(.invalid(field: "domain name", reason: "more than 128 compression pointers"), at: pos)
                }
                lowestTarget = target
                pos = target
            default:
                // 0x40 (extended label types, RFC 6891 §5 deprecates them) and 0x80 are not in use.
                throw DecodeError(.invalid(field: "domain name", reason: "label type 0x\(String(len & 0xC0, radix: 16)) is not supported"), at: pos)
            }
        }
    }
}
