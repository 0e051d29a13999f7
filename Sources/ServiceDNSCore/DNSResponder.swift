// The answer to one DNS query about Mycelium services, like Consul's DNS interface: pure (bytes in,
// bytes out, the directory asked once), so every response code is tested without a socket.
//
// Names served, under the zone (default `service.mycelium`), case-insensitively:
//   NAME.zone               A: one per healthy instance's address; SRV: as below
//   _NAME._tcp.zone         SRV: priority 0, weight 1, the instance's port, target INSTANCE.NAME.zone
//   INSTANCE.NAME.zone      A: that instance's address (what an SRV target resolves to; also sent
//                           in the additional section of the SRV answer)
//   zone                    SOA
// A service the directory does not know is NXDOMAIN; one it knows with no healthy instance is
// NOERROR with no answer (NODATA). Both carry the zone's SOA, whose minimum is the TTL, so a negative
// answer is cached no longer than a positive one (RFC 2308 §5). AAAA is always NODATA for now.
// A name outside the zone is REFUSED: this is not a recursive resolver.
//
// Order: records follow the directory's order rotated by the query's ID (ID mod count), so answers
// are deterministic for a given query yet clients, whose IDs are random, spread over the instances.
//
// DNS is unauthenticated and read-only: anyone who can reach the port learns service names,
// addresses and ports, and can spoof answers to others on the path. Bind it to loopback (or a
// trusted interface) and treat what it tells as a hint, never as an identity.

import MyceliumCore

/// One healthy instance of a service, as the DNS interface publishes it.
public struct ServiceEndpoint: Sendable, Equatable {
    /// IPv4 address, most significant byte first (10.0.0.5 is 0x0A00_0005).
    public var address: UInt32
    public var port: UInt16
    /// The instance's name, unique within its service; its DNS label (see ``dnsLabel``).
    public var instance: String
    /// The node that runs it.
    public var node: String

    public init(address: UInt32, port: UInt16, instance: String, node: String) {
        self.address = address
        self.port = port
        self.instance = instance
        self.node = node
    }

    /// Nil unless `ipv4` is a dotted quad such as `10.0.0.5`.
    public init?(ipv4: String, port: UInt16, instance: String, node: String) {
        let parts = ipv4.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var a: UInt32 = 0
        for p in parts {
            guard p.count <= 3, p.allSatisfy(\.isASCII), let b = UInt8(p) else { return nil }
            a = a << 8 | UInt32(b)
        }
        self.init(address: a, port: port, instance: instance, node: node)
    }

    /// The label that names this instance in `INSTANCE.NAME.zone`: the instance name in lower case
    /// if it is a valid label (1...63 bytes, no dot), else `ep-` with the address and port in hex, so
    /// any instance name still gets a stable, resolvable target.
    public var dnsLabel: [UInt8] {
        let name = Array(instance.utf8)
        if (1...DNSName.maxLabelLength).contains(name.count) && !name.contains(UInt8(ascii: ".")) { return name.map(asciiLower) }
        func hex(_ v: UInt32, _ digits: Int) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: max(0, digits - s.count)) + s
        }
        return Array("ep-\(hex(address, 8))-\(hex(UInt32(port), 4))".utf8)
    }
}

/// Where the responder learns a service's healthy instances. Called on the server's event loop
/// for every query: it must answer at once from memory, never block or wait.
public protocol ServiceDirectory: Sendable {
    /// nil: no such service (NXDOMAIN); []: the service exists but has no healthy instance
    /// (NOERROR, no answer). `service` is in lower case, as the query's label was, folded.
    func endpoints(service: String) -> [ServiceEndpoint]?
}

/// A directory backed by a closure (what ``DNSServer`` is given).
public struct ClosureDirectory: ServiceDirectory {
    let lookup: @Sendable (String) -> [ServiceEndpoint]?
    public init(_ lookup: @escaping @Sendable (String) -> [ServiceEndpoint]?) { self.lookup = lookup }
    public func endpoints(service: String) -> [ServiceEndpoint]? { lookup(service) }
}

/// How the answer travels, which decides how large it may be.
public enum DNSTransport: Sendable {
    /// Limited to what the client can take (512 bytes without EDNS) and `maxUDP`; over that, TC is set.
    case udp
    /// Up to 65535 bytes, behind the 2-byte length prefix the caller adds (RFC 1035 §4.2.2).
    case tcp
}

public enum DNSResponder {
    /// The UDP payload size advertised in our OPT record and, by default, the most sent over UDP:
    /// the DNS flag day 2020 value, small enough not to fragment on common paths.
    public static let advertisedUDPSize = 1232

    /// The response to `query`, or nil to drop it: under 12 bytes (no ID to answer to) or itself a
    /// response (answering those could start a loop between two servers).
    ///
    /// - Parameters:
    ///   - zone: the zone served; names outside it are REFUSED (as is everything if it is not a valid name).
    ///   - ttl: TTL of every record, and the SOA minimum (negative caching).
    ///   - maxUDP: the most bytes sent in one UDP answer whatever the client advertises (nil: 1232);
    ///     clamped to 512...65535. Ignored over TCP.
    ///   - transport: `.udp` truncates to the client's limit; `.tcp` answers in full.
    public static func answer(query bytes: [UInt8], zone: String = "service.mycelium", directory: some ServiceDirectory, ttl: UInt32 = 5,
                              maxUDP: Int? = nil, transport: DNSTransport = .udp) -> [UInt8]? {
        guard bytes.count >= 12 else { return nil }
        let queryHeader = DNSHeader(id: UInt16(bytes[0]) << 8 | UInt16(bytes[1]), flags: UInt16(bytes[2]) << 8 | UInt16(bytes[3]))
        guard !queryHeader.isResponse else { return nil }
        // QR, the opcode, RD and CD are echoed (RFC 1035 §4.1.1, RFC 4035 §3.1.6); RA stays clear.
        var header = DNSHeader(id: queryHeader.id, flags: queryHeader.flags & (0x7800 | 0x0100 | 0x0010) | 0x8000)

        let query: DNSMessage
        do {
            query = try DNSMessage(decoding: bytes)
        } catch {
            header.rcode = UInt8(DNSRCode.formatError)
            return DNSMessage(header: header).encoded()
        }

        var response = DNSMessage(header: header)
        if let e = query.edns {
            // DO is echoed (RFC 3225 §3); options such as cookies are not understood, so not echoed.
            response.edns = EDNS(udpPayloadSize: UInt16(advertisedUDPSize), flags: e.flags & 0x8000)
        }
        let limit: Int
        switch transport {
        case .tcp: limit = DNSMessage.maxLength
        case .udp:
            let cap = min(max(maxUDP ?? advertisedUDPSize, 512), DNSMessage.maxLength)
            limit = query.edns.map { min(max(512, Int($0.udpPayloadSize)), cap) } ?? 512
        }
        func reply(_ rcode: UInt16) -> [UInt8] {
            response.header.rcode = UInt8(rcode & 0xF)
            if response.edns != nil { response.edns!.extendedRCode = UInt8(rcode >> 4) }
            return response.encoded(limit: limit)
        }

        guard query.header.opcode == DNSOpcode.query else { return reply(DNSRCode.notImplemented) }
        guard query.edns.map({ $0.version == 0 }) ?? true else { return reply(DNSRCode.badVersion) }
        guard query.questions.count == 1 else { return reply(DNSRCode.formatError) }
        let q = query.questions[0]
        response.questions = [q]
        guard q.type != DNSType.opt else { return reply(DNSRCode.formatError) }
        guard q.qclass == DNSClass.internet || q.qclass == DNSClass.any, let zoneName = DNSName(zone)?.lowercased(),
              let relative = q.name.labels(under: zoneName) else { return reply(DNSRCode.refused) }
        // Zone transfers are not offered: the directory is not a list to hand out.
        guard q.type != DNSType.axfr && q.type != DNSType.ixfr else { return reply(DNSRCode.refused) }

        response.header.authoritative = true
        let lookup = ZoneLookup(zone: zoneName, ttl: ttl, rotation: Int(query.header.id))
        let result = lookup.resolve(Array(relative), type: q.type, owner: q.name, directory: directory)
        switch result {
        case .nxdomain:
            response.authority = [lookup.soaRecord]
            return reply(DNSRCode.nameError)
        case let .records(answers, additional):
            if answers.isEmpty { response.authority = [lookup.soaRecord] }
            response.answers = answers
            response.additional = additional
            return reply(DNSRCode.noError)
        }
    }
}

/// The zone's contents, computed on demand from the directory for one question.
struct ZoneLookup {
    let zone: DNSName
    let ttl: UInt32
    let rotation: Int

    enum Result {
        case nxdomain
        /// NOERROR; no answers is NODATA.
        case records(answers: [DNSRecord], additional: [DNSRecord])
    }

    static let tcpLabel = Array("_tcp".utf8)

    var soaRecord: DNSRecord {
        let soa = DNSSOA(primary: zone.prepending(Array("ns".utf8)) ?? zone, mailbox: zone.prepending(Array("hostmaster".utf8)) ?? zone,
                         serial: 1, refresh: 3600, retry: 600, expire: 86400, minimum: ttl)
        return DNSRecord(name: zone, ttl: ttl, data: .soa(soa))
    }

    /// `relative`: the question's labels in front of the zone; `owner`: the question's name as spelt.
    func resolve(_ relative: [[UInt8]], type: UInt16, owner: DNSName, directory: some ServiceDirectory) -> Result {
        let wantsA = type == DNSType.a || type == DNSType.any
        let wantsSRV = type == DNSType.srv || type == DNSType.any
        switch relative.count {
        case 0:
            return .records(answers: type == DNSType.soa || type == DNSType.any ? [soaRecord] : [], additional: [])
        case 1 where labelsEqualIgnoringCase(relative[0], Self.tcpLabel):
            // The parent of every _NAME._tcp name: it exists, with nothing of its own (an NXDOMAIN
            // here would deny every name below it to a resolver that follows RFC 8020).
            return .records(answers: [], additional: [])
        case 1:
            guard let (service, endpoints) = lookUp(relative[0], directory) else { return .nxdomain }
            if type == DNSType.srv { return srv(service, endpoints, owner: owner) }
            return .records(answers: wantsA ? aRecords(endpoints, owner: owner) : [], additional: [])
        case 2 where labelsEqualIgnoringCase(relative[1], Self.tcpLabel):
            guard relative[0].first == UInt8(ascii: "_"), relative[0].count > 1,
                  let (service, endpoints) = lookUp(Array(relative[0].dropFirst()), directory) else { return .nxdomain }
            return wantsSRV ? srv(service, endpoints, owner: owner) : .records(answers: [], additional: [])
        case 2:
            guard let (_, endpoints) = lookUp(relative[1], directory) else { return .nxdomain }
            let matching = endpoints.filter { labelsEqualIgnoringCase($0.dnsLabel, relative[0]) }
            if matching.isEmpty { return .nxdomain }
            return .records(answers: wantsA ? aRecords(matching, owner: owner) : [], additional: [])
        default:
            return .nxdomain
        }
    }

    /// The service's lower-case label and its endpoints in answer order; nil if there is no such service.
    private func lookUp(_ label: [UInt8], _ directory: some ServiceDirectory) -> ([UInt8], [ServiceEndpoint])? {
        let folded = label.map(asciiLower)
        guard let name = String(validating: folded, as: UTF8.self), let endpoints = directory.endpoints(service: name) else { return nil }
        guard !endpoints.isEmpty else { return (folded, []) }
        let k = rotation % endpoints.count
        return (folded, Array(endpoints[k...] + endpoints[..<k]))
    }

    /// One A record per distinct address (an RRset holds no duplicates, RFC 2181 §5).
    private func aRecords(_ endpoints: [ServiceEndpoint], owner: DNSName) -> [DNSRecord] {
        var seen = Set<UInt32>()
        return endpoints.compactMap { seen.insert($0.address).inserted ? DNSRecord(name: owner, ttl: ttl, data: .a($0.address)) : nil }
    }

    private func srv(_ service: [UInt8], _ endpoints: [ServiceEndpoint], owner: DNSName) -> Result {
        var answers: [DNSRecord] = []
        var additional: [DNSRecord] = []
        struct Glue: Hashable { let name: DNSName; let address: UInt32 }
        var glued = Set<Glue>()
        for e in endpoints {
            // A target that would be over 255 bytes cannot be named; its instance is left out.
            guard let target = DNSName(labels: [e.dnsLabel, service] + zone.labels) else { continue }
            answers.append(DNSRecord(name: owner, ttl: ttl, data: .srv(priority: 0, weight: 1, port: e.port, target: target)))
            if glued.insert(Glue(name: target, address: e.address)).inserted {
                additional.append(DNSRecord(name: target, ttl: ttl, data: .a(e.address)))
            }
        }
        return .records(answers: answers, additional: additional)
    }
}
