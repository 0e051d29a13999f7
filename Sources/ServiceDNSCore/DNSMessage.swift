// The DNS message codec (RFC 1035 §4, EDNS from RFC 6891, SRV from RFC 2782). Pure: imports
// MyceliumCore only; every read is bounds-checked and every refusal is a DecodeError.

import MyceliumCore

/// Resource record types this module names. Any other type is carried as ``DNSRecordData/other(type:rdata:)``.
public enum DNSType {
    public static let a: UInt16 = 1
    public static let ns: UInt16 = 2
    public static let cname: UInt16 = 5
    public static let soa: UInt16 = 6
    public static let ptr: UInt16 = 12
    public static let mx: UInt16 = 15
    public static let txt: UInt16 = 16
    public static let aaaa: UInt16 = 28
    public static let srv: UInt16 = 33
    public static let opt: UInt16 = 41
    public static let ixfr: UInt16 = 251
    public static let axfr: UInt16 = 252
    public static let any: UInt16 = 255
}

public enum DNSClass {
    public static let internet: UInt16 = 1
    public static let chaos: UInt16 = 3
    public static let any: UInt16 = 255
}

public enum DNSOpcode {
    public static let query: UInt8 = 0
}

/// Response codes; values over 15 are split between the header and the OPT record (RFC 6891 §6.1.3).
public enum DNSRCode {
    public static let noError: UInt16 = 0
    public static let formatError: UInt16 = 1
    public static let serverFailure: UInt16 = 2
    public static let nameError: UInt16 = 3  // NXDOMAIN
    public static let notImplemented: UInt16 = 4
    public static let refused: UInt16 = 5
    public static let badVersion: UInt16 = 16
}

/// The fixed 12-byte header without its four counts (those come from the sections).
/// `flags` is kept whole, so reserved bits survive a round trip.
public struct DNSHeader: Equatable, Sendable {
    public var id: UInt16
    public var flags: UInt16

    public init(id: UInt16, flags: UInt16 = 0) {
        self.id = id
        self.flags = flags
    }

    public var isResponse: Bool {
        get { bit(15) }
        set { set(15, newValue) }
    }
    public var opcode: UInt8 {
        get { UInt8(flags >> 11 & 0xF) }
        set { flags = flags & ~(0xF << 11) | UInt16(newValue & 0xF) << 11 }
    }
    public var authoritative: Bool {
        get { bit(10) }
        set { set(10, newValue) }
    }
    public var truncated: Bool {
        get { bit(9) }
        set { set(9, newValue) }
    }
    public var recursionDesired: Bool {
        get { bit(8) }
        set { set(8, newValue) }
    }
    public var recursionAvailable: Bool {
        get { bit(7) }
        set { set(7, newValue) }
    }
    /// The low four bits of the response code; the rest is in ``EDNS/extendedRCode``.
    public var rcode: UInt8 {
        get { UInt8(flags & 0xF) }
        set { flags = flags & ~0xF | UInt16(newValue & 0xF) }
    }

    private func bit(_ n: UInt16) -> Bool { flags & (1 << n) != 0 }
    private mutating func set(_ n: UInt16, _ v: Bool) { flags = v ? flags | (1 << n) : flags & ~(1 << n) }
}

public struct DNSQuestion: Equatable, Sendable {
    public var name: DNSName
    public var type: UInt16
    public var qclass: UInt16

    public init(name: DNSName, type: UInt16, qclass: UInt16 = DNSClass.internet) {
        self.name = name
        self.type = type
        self.qclass = qclass
    }
}

public struct DNSSOA: Equatable, Sendable {
    public var primary: DNSName
    public var mailbox: DNSName
    public var serial: UInt32
    public var refresh: UInt32
    public var retry: UInt32
    public var expire: UInt32
    /// Since RFC 2308 §4: how long a negative answer may be cached.
    public var minimum: UInt32

    public init(primary: DNSName, mailbox: DNSName, serial: UInt32, refresh: UInt32, retry: UInt32, expire: UInt32, minimum: UInt32) {
        self.primary = primary
        self.mailbox = mailbox
        self.serial = serial
        self.refresh = refresh
        self.retry = retry
        self.expire = expire
        self.minimum = minimum
    }
}

/// Record data. Only class IN records of the named types are interpreted; anything else stays raw.
public enum DNSRecordData: Equatable, Sendable {
    /// An IPv4 address, most significant byte first (10.0.0.5 is 0x0A00_0005).
    case a(UInt32)
    /// Exactly 16 bytes.
    case aaaa([UInt8])
    case srv(priority: UInt16, weight: UInt16, port: UInt16, target: DNSName)
    case soa(DNSSOA)
    case other(type: UInt16, rdata: [UInt8])

    public var type: UInt16 {
        switch self {
        case .a: DNSType.a
        case .aaaa: DNSType.aaaa
        case .srv: DNSType.srv
        case .soa: DNSType.soa
        case let .other(type, _): type
        }
    }
}

public struct DNSRecord: Equatable, Sendable {
    public var name: DNSName
    public var rclass: UInt16
    public var ttl: UInt32
    public var data: DNSRecordData

    public init(name: DNSName, rclass: UInt16 = DNSClass.internet, ttl: UInt32, data: DNSRecordData) {
        self.name = name
        self.rclass = rclass
        self.ttl = ttl
        self.data = data
    }

    public var type: UInt16 { data.type }
}

public struct EDNSOption: Equatable, Sendable {
    public var code: UInt16
    public var data: [UInt8]

    public init(code: UInt16, data: [UInt8]) {
        self.code = code
        self.data = data
    }
}

/// The OPT pseudo-record (RFC 6891 §6.1), kept out of the additional section it travels in.
public struct EDNS: Equatable, Sendable {
    /// The largest UDP payload the sender can take.
    public var udpPayloadSize: UInt16
    /// The high eight bits of the response code.
    public var extendedRCode: UInt8
    public var version: UInt8
    /// DO (bit 15, RFC 3225) and the reserved Z bits.
    public var flags: UInt16
    public var options: [EDNSOption]

    public init(udpPayloadSize: UInt16, extendedRCode: UInt8 = 0, version: UInt8 = 0, flags: UInt16 = 0, options: [EDNSOption] = []) {
        self.udpPayloadSize = udpPayloadSize
        self.extendedRCode = extendedRCode
        self.version = version
        self.flags = flags
        self.options = options
    }

    public var dnssecOK: Bool { flags & 0x8000 != 0 }

    /// Bytes the OPT record takes in a message.
    var wireLength: Int { 11 + options.reduce(0) { $0 + 4 + $1.data.count } }
}

/// A whole DNS message.
public struct DNSMessage: Equatable, Sendable {
    /// A message is at most 65535 bytes: TCP's length prefix is 16 bits (RFC 1035 §4.2.2).
    public static let maxLength = 65535

    public var header: DNSHeader
    public var questions: [DNSQuestion]
    public var answers: [DNSRecord]
    public var authority: [DNSRecord]
    /// The additional section without the OPT record, which is ``edns``.
    public var additional: [DNSRecord]
    public var edns: EDNS?

    public init(header: DNSHeader, questions: [DNSQuestion] = [], answers: [DNSRecord] = [], authority: [DNSRecord] = [],
                additional: [DNSRecord] = [], edns: EDNS? = nil) {
        self.header = header
        self.questions = questions
        self.answers = answers
        self.authority = authority
        self.additional = additional
        self.edns = edns
    }

    /// The full response code: the header's four bits and, with EDNS, the OPT record's eight.
    public var rcode: UInt16 { UInt16(edns?.extendedRCode ?? 0) << 4 | UInt16(header.rcode) }

    /// Decodes a whole message; refuses trailing bytes, a second OPT record, an OPT record outside the
    /// additional section or with an owner other than the root, and record data that does not fill
    /// its length exactly.
    public init(decoding bytes: [UInt8]) throws(DecodeError) {
        do {
            try self.init(reading: bytes)
        } catch let e as DecodeError {
            throw e
        } catch {
            throw DecodeError(.invalid(field: "DNS message", reason: "\(error)"), at: 0)
        }
    }

    private init(reading bytes: [UInt8]) throws {
        if bytes.count > Self.maxLength {
            throw DecodeError(.tooLong(field: "DNS message", length: bytes.count, limit: Self.maxLength), at: 0)
        }
        var r = ByteReader(bytes)
        header = DNSHeader(id: try r.u16(), flags: try r.u16())
        let qd = Int(try r.u16()), an = Int(try r.u16()), ns = Int(try r.u16()), ar = Int(try r.u16())
        // Counts are not trusted for allocation: each entry is read (and bounds-checked) before it is kept.
        questions = []
        for _ in 0..<qd {
            let name = try Self.name(&r)
            questions.append(DNSQuestion(name: name, type: try r.u16(), qclass: try r.u16()))
        }
        answers = []
        authority = []
        additional = []
        edns = nil
        for _ in 0..<an { answers.append(try Self.record(&r, section: "answer").record) }
        for _ in 0..<ns { authority.append(try Self.record(&r, section: "authority").record) }
        for _ in 0..<ar {
            let at = r.offset
            let (rec, opt) = try Self.record(&r, section: "additional")
            if let opt {
                guard edns == nil else { throw DecodeError(.invalid(field: "OPT record", reason: "a second OPT record (RFC 6891 §6.1.1 allows one)"), at: at) }
                edns = opt
            } else {
                additional.append(rec)
            }
        }
        try r.finish()
    }

    private static func name(_ r: inout ByteReader) throws -> DNSName {
        let (name, end) = try DNSName.read(from: r.bytes, at: r.offset)
        _ = try r.raw(end - r.offset)
        return name
    }

    /// One resource record; an OPT record in the additional section comes back as `opt` instead.
    private static func record(_ r: inout ByteReader, section: String) throws -> (record: DNSRecord, opt: EDNS?) {
        let start = r.offset
        let name = try name(&r)
        let type = try r.u16(), rclass = try r.u16(), ttl = try r.u32()
        let length = Int(try r.u16())
        let dataStart = r.offset
        if length > r.remaining { throw DecodeError(.truncated(needed: length, available: r.remaining), at: dataStart) }
        let dataEnd = dataStart + length

        if type == DNSType.opt {
            guard section == "additional" else {
                throw DecodeError(.invalid(field: "OPT record", reason: "in the \(section) section; it belongs in the additional section"), at: start)
            }
            guard name.labels.isEmpty else {
                throw DecodeError(.invalid(field: "OPT record", reason: "owner is \(name), not the root"), at: start)
            }
            var options: [EDNSOption] = []
            while r.offset < dataEnd {
                if dataEnd - r.offset < 4 {
                    throw DecodeError(.invalid(field: "OPT record", reason: "\(dataEnd - r.offset) byte(s) left, too few for an option"), at: r.offset)
                }
                let code = try r.u16()
                let n = Int(try r.u16())
                if n > dataEnd - r.offset {
                    throw DecodeError(.truncated(needed: n, available: dataEnd - r.offset), at: r.offset)
                }
                options.append(EDNSOption(code: code, data: try r.raw(n)))
            }
            let opt = EDNS(udpPayloadSize: rclass, extendedRCode: UInt8(ttl >> 24), version: UInt8(ttl >> 16 & 0xFF),
                           flags: UInt16(ttl & 0xFFFF), options: options)
            return (DNSRecord(name: name, rclass: rclass, ttl: ttl, data: .other(type: type, rdata: [])), opt)
        }

        let data: DNSRecordData
        switch (rclass, type) {
        case (DNSClass.internet, DNSType.a):
            guard length == 4 else { throw badLength("A", length, at: dataStart) }
            data = .a(try r.u32())
        case (DNSClass.internet, DNSType.aaaa):
            guard length == 16 else { throw badLength("AAAA", length, at: dataStart) }
            data = .aaaa(try r.raw(16))
        case (DNSClass.internet, DNSType.srv):
            let priority = try r.u16(), weight = try r.u16(), port = try r.u16()
            data = .srv(priority: priority, weight: weight, port: port, target: try Self.name(&r))
        case (DNSClass.internet, DNSType.soa):
            let primary = try Self.name(&r), mailbox = try Self.name(&r)
            data = .soa(DNSSOA(primary: primary, mailbox: mailbox, serial: try r.u32(), refresh: try r.u32(),
                               retry: try r.u32(), expire: try r.u32(), minimum: try r.u32()))
        default:
            data = .other(type: type, rdata: try r.raw(length))
        }
        // A name inside the data may have run past its declared end.
        guard r.offset == dataEnd else {
            throw DecodeError(.invalid(field: "record data", reason: "type \(type) data is \(r.offset - dataStart) bytes, its length says \(length)"), at: dataStart)
        }
        return (DNSRecord(name: name, rclass: rclass, ttl: ttl, data: data), nil)
    }

    private static func badLength(_ type: String, _ length: Int, at offset: Int) -> DecodeError {
        DecodeError(.invalid(field: "\(type) record", reason: "data is \(length) bytes"), at: offset)
    }

    /// The message in wire form, at most `limit` bytes (clamped to 12...65535) if it can be made to fit.
    ///
    /// Owner names and the names in SOA data are compressed against earlier names (RFC 1035
    /// §4.1.4); SRV targets are not (RFC 2782). When a record of the answer or authority section does
    /// not fit, it and every later record are left out and TC is set (RFC 2181 §9); records of the
    /// additional section that do not fit are left out without TC, since they are only a courtesy.
    /// The OPT record is always kept (RFC 6891 §7), and the header and the questions always go out.
    public func encoded(limit: Int = DNSMessage.maxLength) -> [UInt8] {
        let limit = min(max(limit, 12), Self.maxLength)
        precondition(questions.count <= Int(UInt16.max), "a DNS message holds at most 65535 questions")
        var w = DNSWireWriter()
        w.u16(header.id)
        w.u16(header.flags)
        w.u16(UInt16(questions.count))
        w.u16(0); w.u16(0); w.u16(0)  // patched below
        for q in questions {
            w.name(q.name, compress: true)
            w.u16(q.type)
            w.u16(q.qclass)
        }
        let room = limit - (edns?.wireLength ?? 0)
        var counts = [0, 0, 0]
        var truncated = false
        for (i, section) in [answers, authority, additional].enumerated() {
            if truncated { break }
            for rec in section {
                let saved = w
                w.record(rec)
                if w.bytes.count > room {
                    w = saved
                    truncated = i < 2
                    break
                }
                counts[i] += 1
            }
        }
        if let edns {
            w.name(.root, compress: false)
            w.u16(DNSType.opt)
            w.u16(edns.udpPayloadSize)
            w.u32(UInt32(edns.extendedRCode) << 24 | UInt32(edns.version) << 16 | UInt32(edns.flags))
            w.u16(UInt16(edns.wireLength - 11))
            for o in edns.options {
                w.u16(o.code)
                w.u16(UInt16(o.data.count))
                w.raw(o.data)
            }
            counts[2] += 1
        }
        if truncated { w.patch16(header.flags | 1 << 9, at: 2) }
        for (i, c) in counts.enumerated() { w.patch16(UInt16(c), at: 6 + 2 * i) }
        return w.bytes
    }
}

/// A byte writer that can patch a u16 and remembers where names were written, for compression.
/// (MyceliumCore's ByteWriter has neither; a value type, so a record that overflows is undone by
/// restoring a copy.)
struct DNSWireWriter {
    private(set) var bytes: [UInt8] = []
    /// Where each name suffix (exact bytes: a pointer must not change a name's spelling) was first written.
    private var suffixes: [ArraySlice<[UInt8]>: Int] = [:]

    init() { bytes.reserveCapacity(512) }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { bytes.append(UInt8(v >> 8)); bytes.append(UInt8(v & 0xFF)) }
    mutating func u32(_ v: UInt32) { u16(UInt16(v >> 16)); u16(UInt16(v & 0xFFFF)) }
    mutating func raw(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    mutating func patch16(_ v: UInt16, at offset: Int) {
        bytes[offset] = UInt8(v >> 8)
        bytes[offset + 1] = UInt8(v & 0xFF)
    }

    mutating func name(_ name: DNSName, compress: Bool) {
        for i in name.labels.indices {
            let suffix = name.labels[i...]
            if compress, let at = suffixes[suffix] {
                u16(0xC000 | UInt16(at))
                return
            }
            // A pointer has 14 bits of offset.
            if bytes.count <= 0x3FFF, suffixes[suffix] == nil { suffixes[suffix] = bytes.count }
            u8(UInt8(name.labels[i].count))
            raw(name.labels[i])
        }
        u8(0)
    }

    mutating func record(_ r: DNSRecord) {
        name(r.name, compress: true)
        u16(r.type)
        u16(r.rclass)
        u32(r.ttl)
        let lengthAt = bytes.count
        u16(0)
        switch r.data {
        case let .a(address): u32(address)
        case let .aaaa(address): raw(address)
        case let .srv(priority, weight, port, target):
            u16(priority); u16(weight); u16(port)
            name(target, compress: false)
        case let .soa(soa):
            name(soa.primary, compress: true)
            name(soa.mailbox, compress: true)
            for v in [soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum] { u32(v) }
        case let .other(_, rdata): raw(rdata)
        }
        patch16(UInt16(bytes.count - lengthAt - 2), at: lengthAt)
    }
}
