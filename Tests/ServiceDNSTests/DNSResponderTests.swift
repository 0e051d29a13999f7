import MyceliumCore
import XCTest

@testable import ServiceDNSCore

/// A fixed directory that records which names it was asked for.
final class TestDirectory: ServiceDirectory, @unchecked Sendable {
    let services: [String: [ServiceEndpoint]]
    private let lock = PthreadLock()
    private var _asked: [String] = []
    var asked: [String] { lock.withLock { _asked } }

    init(_ services: [String: [ServiceEndpoint]]) { self.services = services }

    func endpoints(service: String) -> [ServiceEndpoint]? {
        lock.withLock { _asked.append(service) }
        return services[service]
    }
}

func endpoint(_ ip: String, _ port: UInt16, _ instance: String, node: String = "n1") -> ServiceEndpoint {
    ServiceEndpoint(ipv4: ip, port: port, instance: instance, node: node)!
}

/// A query as a stub resolver sends it: RD set, one question, an OPT record if `edns` is given.
func queryBytes(_ qname: String, _ type: UInt16, id: UInt16 = 0, edns: UInt16? = nil, qclass: UInt16 = DNSClass.internet) -> [UInt8] {
    var h = DNSHeader(id: id)
    h.recursionDesired = true
    return DNSMessage(header: h, questions: [DNSQuestion(name: DNSName(qname)!, type: type, qclass: qclass)],
                      edns: edns.map { EDNS(udpPayloadSize: $0) }).encoded()
}

final class DNSResponderTests: XCTestCase {
    let web = [endpoint("10.0.0.5", 8080, "web-1"), endpoint("10.0.0.6", 8080, "web-2", node: "n2"), endpoint("10.0.0.5", 8081, "web-3")]
    lazy var directory = TestDirectory([
        "web": web,
        "idle": [],
        "many": (0..<200).map { endpoint("10.1.\($0 / 250).\($0 % 250 + 1)", 9000, "m-\($0)") },
        "odd": [endpoint("10.2.0.1", 7000, "has.a.dot")],
    ])

    func ask(_ query: [UInt8], ttl: UInt32 = 5, maxUDP: Int? = nil, transport: DNSTransport = .udp,
             file: StaticString = #filePath, line: UInt = #line) throws -> DNSMessage {
        let bytes = try XCTUnwrap(DNSResponder.answer(query: query, directory: directory, ttl: ttl, maxUDP: maxUDP, transport: transport),
                                  "the query was dropped", file: file, line: line)
        let m = try DNSMessage(decoding: bytes)
        XCTAssertTrue(m.header.isResponse, file: file, line: line)
        XCTAssertEqual(Array(bytes[0..<2]), Array(query[0..<2]), "the ID is echoed", file: file, line: line)
        return m
    }

    func testARecordsOfTheHealthyInstances() throws {
        let r = try ask(queryBytes("web.service.mycelium", DNSType.a, id: 0))
        XCTAssertEqual(r.rcode, DNSRCode.noError)
        XCTAssertTrue(r.header.authoritative)
        XCTAssertTrue(r.header.recursionDesired, "RD is echoed")
        XCTAssertFalse(r.header.recursionAvailable, "not a recursive resolver")
        XCTAssertEqual(r.questions, [DNSQuestion(name: dn("web.service.mycelium"), type: DNSType.a)])
        // Two instances share 10.0.0.5: one A record for it.
        XCTAssertEqual(r.answers, [DNSRecord(name: dn("web.service.mycelium"), ttl: 5, data: .a(0x0A00_0005)),
                                   DNSRecord(name: dn("web.service.mycelium"), ttl: 5, data: .a(0x0A00_0006))])
        XCTAssertEqual(r.authority, [])
        XCTAssertNil(r.edns, "no OPT without one in the query")
        XCTAssertEqual(directory.asked, ["web"])
    }

    func testOrderRotatesWithTheQueryID() throws {
        let addresses = { (id: UInt16) in try self.ask(queryBytes("web.service.mycelium", DNSType.a, id: id)).answers.map(\.data) }
        XCTAssertEqual(try addresses(0), [.a(0x0A00_0005), .a(0x0A00_0006)])
        XCTAssertEqual(try addresses(1), [.a(0x0A00_0006), .a(0x0A00_0005)])
        XCTAssertEqual(try addresses(3), try addresses(0), "ID mod the instance count")
    }

    func testTTLIsConfigurable() throws {
        let r = try ask(queryBytes("web.service.mycelium", DNSType.a), ttl: 30)
        XCTAssertEqual(Set(r.answers.map(\.ttl)), [30])
        let n = try ask(queryBytes("nothere.service.mycelium", DNSType.a), ttl: 30)
        guard case let .soa(soa) = n.authority.first?.data else { return XCTFail("no SOA in \(n)") }
        XCTAssertEqual(soa.minimum, 30, "negative answers are cached as long as positive ones")
        XCTAssertEqual(n.authority.first?.ttl, 30)
    }

    func testSRVUnderBothNames() throws {
        for qname in ["_web._tcp.service.mycelium", "web.service.mycelium"] {
            let r = try ask(queryBytes(qname, DNSType.srv))
            XCTAssertEqual(r.rcode, DNSRCode.noError)
            XCTAssertEqual(r.answers, [
                DNSRecord(name: dn(qname), ttl: 5, data: .srv(priority: 0, weight: 1, port: 8080, target: dn("web-1.web.service.mycelium"))),
                DNSRecord(name: dn(qname), ttl: 5, data: .srv(priority: 0, weight: 1, port: 8080, target: dn("web-2.web.service.mycelium"))),
                DNSRecord(name: dn(qname), ttl: 5, data: .srv(priority: 0, weight: 1, port: 8081, target: dn("web-3.web.service.mycelium"))),
            ], qname)
            // Each target's address comes along, so the client needs no second query.
            XCTAssertEqual(r.additional, [
                DNSRecord(name: dn("web-1.web.service.mycelium"), ttl: 5, data: .a(0x0A00_0005)),
                DNSRecord(name: dn("web-2.web.service.mycelium"), ttl: 5, data: .a(0x0A00_0006)),
                DNSRecord(name: dn("web-3.web.service.mycelium"), ttl: 5, data: .a(0x0A00_0005)),
            ], qname)
        }
    }

    func testSRVTargetsResolve() throws {
        let r = try ask(queryBytes("web-2.web.service.mycelium", DNSType.a))
        XCTAssertEqual(r.answers, [DNSRecord(name: dn("web-2.web.service.mycelium"), ttl: 5, data: .a(0x0A00_0006))])
        XCTAssertEqual(try ask(queryBytes("web-9.web.service.mycelium", DNSType.a)).rcode, DNSRCode.nameError)
        XCTAssertEqual(try ask(queryBytes("web-1.nothere.service.mycelium", DNSType.a)).rcode, DNSRCode.nameError)
        // An instance name that is not a label gets one made from its address and port.
        let odd = try ask(queryBytes("_odd._tcp.service.mycelium", DNSType.srv))
        XCTAssertEqual(odd.answers.map(\.data), [.srv(priority: 0, weight: 1, port: 7000, target: dn("ep-0a020001-1b58.odd.service.mycelium"))])
        XCTAssertEqual(try ask(queryBytes("ep-0a020001-1b58.odd.service.mycelium", DNSType.a)).answers.map(\.data), [.a(0x0A02_0001)])
    }

    func testUnknownServiceIsNXDOMAINWithTheSOA() throws {
        for qname in ["nothere.service.mycelium", "_nothere._tcp.service.mycelium", "a.b.c.service.mycelium", "_web._udp.service.mycelium"] {
            let r = try ask(queryBytes(qname, DNSType.a))
            XCTAssertEqual(r.rcode, DNSRCode.nameError, qname)
            XCTAssertTrue(r.header.authoritative, qname)
            XCTAssertEqual(r.answers, [], qname)
            XCTAssertEqual(r.authority, [DNSRecord(name: dn("service.mycelium"), ttl: 5, data: .soa(DNSSOA(
                primary: dn("ns.service.mycelium"), mailbox: dn("hostmaster.service.mycelium"),
                serial: 1, refresh: 3600, retry: 600, expire: 86400, minimum: 5)))], qname)
        }
    }

    func testNoDataCases() throws {
        // No healthy instance, AAAA (none published yet), a type with nothing, the _tcp parent.
        for (qname, type) in [("idle.service.mycelium", DNSType.a), ("idle.service.mycelium", DNSType.srv), ("web.service.mycelium", DNSType.aaaa),
                              ("web.service.mycelium", DNSType.txt), ("_web._tcp.service.mycelium", DNSType.a), ("_tcp.service.mycelium", DNSType.srv),
                              ("service.mycelium", DNSType.a)] {
            let r = try ask(queryBytes(qname, type))
            XCTAssertEqual(r.rcode, DNSRCode.noError, "\(qname) \(type)")
            XCTAssertEqual(r.answers, [], "\(qname) \(type)")
            XCTAssertEqual(r.authority.map(\.type), [DNSType.soa], "\(qname) \(type)")
        }
    }

    func testZoneApexAnswersItsSOA() throws {
        let r = try ask(queryBytes("service.mycelium", DNSType.soa))
        XCTAssertEqual(r.answers.map(\.type), [DNSType.soa])
        XCTAssertEqual(r.authority, [])
    }

    func testNamesOutsideTheZoneAreRefused() throws {
        for qname in ["example.com", "mycelium", "node.mycelium", "."] {
            let r = try ask(queryBytes(qname, DNSType.a))
            XCTAssertEqual(r.rcode, DNSRCode.refused, qname)
            XCTAssertFalse(r.header.authoritative, qname)
            XCTAssertEqual(r.answers + r.authority + r.additional, [], qname)
            XCTAssertEqual(r.questions.first?.name, dn(qname), "the question is echoed")
        }
        XCTAssertEqual(directory.asked, [], "the directory is not consulted")
        // Another class (CHAOS, as in version.bind) and zone transfers are refused too.
        XCTAssertEqual(try ask(queryBytes("web.service.mycelium", DNSType.txt, qclass: DNSClass.chaos)).rcode, DNSRCode.refused)
        XCTAssertEqual(try ask(queryBytes("service.mycelium", DNSType.axfr)).rcode, DNSRCode.refused)
        // An invalid zone serves nothing rather than crash.
        let none = try XCTUnwrap(DNSResponder.answer(query: queryBytes("web.service.mycelium", DNSType.a), zone: "a..b", directory: directory))
        XCTAssertEqual(try DNSMessage(decoding: none).rcode, DNSRCode.refused)
    }

    func testNamesAreCaseInsensitive() throws {
        let r = try ask(queryBytes("WeB.SERVICE.Mycelium", DNSType.a))
        XCTAssertEqual(r.rcode, DNSRCode.noError)
        XCTAssertEqual(r.answers.map(\.data), [.a(0x0A00_0005), .a(0x0A00_0006)])
        // The answer repeats the question's spelling (RFC 4343 §4.1).
        XCTAssertEqual(r.answers.first?.name.labels.first, Array("WeB".utf8))
        XCTAssertEqual(try ask(queryBytes("_WEB._TCP.service.mycelium", DNSType.srv)).answers.count, 3)
        XCTAssertEqual(try ask(queryBytes("WEB-2.web.service.MYCELIUM", DNSType.a)).answers.map(\.data), [.a(0x0A00_0006)])
        XCTAssertEqual(directory.asked, ["web", "web", "web"], "the directory sees lower case")
        let other = try XCTUnwrap(DNSResponder.answer(query: queryBytes("web.Service.Example", DNSType.a), zone: "SERVICE.example.", directory: directory))
        XCTAssertEqual(try DNSMessage(decoding: other).answers.count, 2, "the zone is compared case-insensitively too")
    }

    func testAnyGetsTheAddresses() throws {
        XCTAssertEqual(try ask(queryBytes("web.service.mycelium", DNSType.any)).answers.map(\.type), [DNSType.a, DNSType.a])
    }

    func testMalformedQueriesGetFORMERR() throws {
        var cut = queryBytes("web.service.mycelium", DNSType.a, id: 0x4242)
        cut.removeLast(3)
        let r = try ask(cut)
        XCTAssertEqual(r.rcode, DNSRCode.formatError)
        XCTAssertEqual(r.questions, [], "nothing is echoed from a message that did not parse")
        // Two questions, no question, a compression loop, an OPT type as the question.
        var two = try DNSMessage(decoding: queryBytes("web.service.mycelium", DNSType.a))
        two.questions.append(two.questions[0])
        XCTAssertEqual(try ask(two.encoded()).rcode, DNSRCode.formatError)
        two.questions = []
        XCTAssertEqual(try ask(two.encoded()).rcode, DNSRCode.formatError)
        XCTAssertEqual(try ask(rawMessage([0xC0, 12, 0, 1, 0, 1])).rcode, DNSRCode.formatError)
        XCTAssertEqual(try ask(queryBytes("web.service.mycelium", DNSType.opt)).rcode, DNSRCode.formatError)
    }

    func testOtherOpcodesGetNOTIMP() throws {
        var m = try DNSMessage(decoding: queryBytes("web.service.mycelium", DNSType.a))
        for opcode: UInt8 in [1, 2, 4, 5] {  // IQUERY, STATUS, NOTIFY, UPDATE
            m.header.opcode = opcode
            let r = try ask(m.encoded())
            XCTAssertEqual(r.rcode, DNSRCode.notImplemented, "opcode \(opcode)")
            XCTAssertEqual(r.header.opcode, opcode, "the opcode is echoed")
            XCTAssertEqual(r.answers, [])
        }
        XCTAssertEqual(directory.asked, [])
    }

    func testWhatIsNotAQueryIsDropped() {
        XCTAssertNil(DNSResponder.answer(query: [], directory: directory))
        XCTAssertNil(DNSResponder.answer(query: Array(queryBytes("web.service.mycelium", DNSType.a).prefix(11)), directory: directory))
        var response = queryBytes("web.service.mycelium", DNSType.a)
        response[2] |= 0x80
        XCTAssertNil(DNSResponder.answer(query: response, directory: directory), "a response is never answered")
    }

    func testEDNSIsAnsweredWithOurSize() throws {
        let r = try ask(queryBytes("web.service.mycelium", DNSType.a, edns: 4096))
        XCTAssertEqual(r.edns, EDNS(udpPayloadSize: 1232))
        // DO is echoed.
        var q = try DNSMessage(decoding: queryBytes("web.service.mycelium", DNSType.a, edns: 4096))
        q.edns!.flags = 0x8000
        q.edns!.options = [EDNSOption(code: 10, data: Array(1...8))]  // a client cookie: not understood, not echoed
        XCTAssertEqual(try ask(q.encoded()).edns, EDNS(udpPayloadSize: 1232, flags: 0x8000))
        // An OPT in a NXDOMAIN, REFUSED and NOTIMP answer too.
        XCTAssertNotNil(try ask(queryBytes("nothere.service.mycelium", DNSType.a, edns: 1232)).edns)
        XCTAssertNotNil(try ask(queryBytes("example.com", DNSType.a, edns: 1232)).edns)
    }

    func testUnknownEDNSVersionGetsBADVERS() throws {
        var q = try DNSMessage(decoding: queryBytes("web.service.mycelium", DNSType.a, edns: 1232))
        q.edns!.version = 1
        let r = try ask(q.encoded())
        XCTAssertEqual(r.rcode, DNSRCode.badVersion)
        XCTAssertEqual(r.header.rcode, 0, "16 is 1 in the OPT's extended code and 0 in the header")
        XCTAssertEqual(r.edns?.extendedRCode, 1)
        XCTAssertEqual(r.edns?.version, 0, "the version we speak")
        XCTAssertEqual(r.answers, [])
    }

    func testUDPAnswersAreTruncatedToTheClientsLimit() throws {
        // 200 distinct addresses: 3200 bytes of A records.
        let plain = try XCTUnwrap(DNSResponder.answer(query: queryBytes("many.service.mycelium", DNSType.a), directory: directory))
        XCTAssertLessThanOrEqual(plain.count, 512, "512 bytes without EDNS")
        let r = try DNSMessage(decoding: plain)
        XCTAssertTrue(r.header.truncated)
        XCTAssertEqual(r.rcode, DNSRCode.noError)
        XCTAssertEqual(r.answers.count, (512 - 12 - 27) / 16)
        XCTAssertEqual(r.answers.map(\.data), directory.services["many"]!.prefix(r.answers.count).map { .a($0.address) })

        let big = try XCTUnwrap(DNSResponder.answer(query: queryBytes("many.service.mycelium", DNSType.a, edns: 4096), directory: directory))
        XCTAssertLessThanOrEqual(big.count, 1232, "the client's 4096, capped at the 1232 we advertise")
        XCTAssertGreaterThan(big.count, 1200)
        XCTAssertTrue(try DNSMessage(decoding: big).header.truncated)

        let small = try XCTUnwrap(DNSResponder.answer(query: queryBytes("many.service.mycelium", DNSType.a, edns: 4096), directory: directory, maxUDP: 700))
        XCTAssertLessThanOrEqual(small.count, 700)
        XCTAssertGreaterThan(small.count, 680)
        let tiny = try XCTUnwrap(DNSResponder.answer(query: queryBytes("many.service.mycelium", DNSType.a, edns: 100), directory: directory))
        XCTAssertEqual(try DNSMessage(decoding: tiny).answers.count, (512 - 12 - 27 - 11) / 16, "below 512 counts as 512")

        let tcp = try ask(queryBytes("many.service.mycelium", DNSType.a), transport: .tcp)
        XCTAssertFalse(tcp.header.truncated)
        XCTAssertEqual(tcp.answers.count, 200)
    }

    func testSRVDropsAddressesBeforeTargets() throws {
        // Ten SRV records (44 bytes of header and question, 46 bytes each) fill 504 of 512 bytes:
        // the glue is left out, and TC stays clear since every answer is there.
        let ten = TestDirectory(["web": (1...10).map { endpoint("10.0.0.\($0)", 80, "web-\($0 - 1)") }])
        let r = try DNSMessage(decoding: XCTUnwrap(DNSResponder.answer(query: queryBytes("_web._tcp.service.mycelium", DNSType.srv), directory: ten)))
        XCTAssertFalse(r.header.truncated)
        XCTAssertEqual(r.answers.count, 10)
        XCTAssertEqual(r.additional, [])
    }
}
