import MyceliumCore
import XCTest

@testable import ServiceDNSCore

func dn(_ s: String) -> DNSName { DNSName(s)! }

/// A message from raw parts: header (id 1, the given counts) followed by `body`.
func rawMessage(qd: UInt16 = 1, an: UInt16 = 0, ns: UInt16 = 0, ar: UInt16 = 0, _ body: [UInt8]) -> [UInt8] {
    var w = DNSWireWriter()
    for v in [1, 0, qd, an, ns, ar] { w.u16(v) }
    w.raw(body)
    return w.bytes
}

final class DNSNameTests: XCTestCase {
    func testPresentationForm() {
        XCTAssertEqual(dn("web.service.mycelium").labels, [Array("web".utf8), Array("service".utf8), Array("mycelium".utf8)])
        XCTAssertEqual(dn("web.service.mycelium."), dn("web.service.mycelium"))
        XCTAssertEqual(dn("."), DNSName.root)
        XCTAssertEqual(dn("web.service.mycelium").description, "web.service.mycelium.")
        XCTAssertEqual(DNSName.root.description, ".")
        XCTAssertEqual(dn("web.service.mycelium").wireLength, 22)
        // Escaped so a hostile label cannot pass for two labels or forge a log line.
        XCTAssertEqual(DNSName(labels: [Array("a.b".utf8), [0x0A, 0x5C]])!.description, "a\\.b.\\010\\\\.")
    }

    func testLimits() {
        XCTAssertNil(DNSName("a..b"), "empty label")
        XCTAssertNil(DNSName(String(repeating: "x", count: 64) + ".mycelium"), "64-byte label")
        XCTAssertNotNil(DNSName(String(repeating: "x", count: 63) + ".mycelium"))
        // 4 labels of 62 bytes: 4 * 63 + 1 = 253 bytes, fits; a fifth label of 1 byte makes 255, fits; 2 bytes make 256.
        let big = Array(repeating: String(repeating: "y", count: 62), count: 4).joined(separator: ".")
        XCTAssertEqual(DNSName(big + ".z")?.wireLength, 255)
        XCTAssertNil(DNSName(big + ".zz"))
    }

    func testCaseInsensitiveComparison() {
        XCTAssertTrue(dn("WeB.Service.MYCELIUM").equalsIgnoringCase(dn("web.service.mycelium")))
        XCTAssertNotEqual(dn("WeB.Service.MYCELIUM"), dn("web.service.mycelium"), "spelling is kept")
        XCTAssertEqual(dn("A.Web.SERVICE.mycelium").labels(under: dn("service.mycelium")).map(Array.init), [Array("A".utf8), Array("Web".utf8)])
        XCTAssertEqual(dn("service.MYCELIUM").labels(under: dn("service.mycelium"))?.count, 0)
        XCTAssertNil(dn("web.example.com").labels(under: dn("service.mycelium")))
        XCTAssertNil(dn("mycelium").labels(under: dn("service.mycelium")))
        // Only ASCII folds (RFC 4343): 0xC9 and 0xE9 are different bytes.
        XCTAssertFalse(DNSName(labels: [[0xC9]])!.equalsIgnoringCase(DNSName(labels: [[0xE9]])!))
    }
}

final class DNSCodecTests: XCTestCase {
    let soa = DNSSOA(primary: DNSName("ns.service.mycelium")!, mailbox: DNSName("hostmaster.service.mycelium")!,
                     serial: 7, refresh: 3600, retry: 600, expire: 86400, minimum: 5)

    func sampleMessage() -> DNSMessage {
        var h = DNSHeader(id: 0xBEEF)
        h.isResponse = true
        h.authoritative = true
        h.recursionDesired = true
        h.opcode = 0
        h.rcode = 3
        h.flags |= 0x0020  // the AD bit: an unknown bit must survive too
        return DNSMessage(
            header: h,
            questions: [DNSQuestion(name: dn("_web._tcp.service.mycelium"), type: DNSType.srv)],
            answers: [
                DNSRecord(name: dn("_web._tcp.service.mycelium"), ttl: 5, data: .srv(priority: 0, weight: 1, port: 8080, target: dn("web-1.web.service.mycelium"))),
                DNSRecord(name: dn("web.service.mycelium"), ttl: 5, data: .a(0x0A00_0005)),
                DNSRecord(name: dn("web.service.mycelium"), ttl: 5, data: .aaaa(Array(0..<16))),
                DNSRecord(name: dn("txt.service.mycelium"), ttl: 60, data: .other(type: DNSType.txt, rdata: [3, 0x61, 0x62, 0x63])),
                DNSRecord(name: dn("chaos.bind"), rclass: DNSClass.chaos, ttl: 0, data: .other(type: DNSType.a, rdata: [1, 2])),
            ],
            authority: [DNSRecord(name: dn("service.mycelium"), ttl: 5, data: .soa(soa))],
            additional: [DNSRecord(name: dn("web-1.web.service.mycelium"), ttl: 5, data: .a(0x0A00_0006))],
            edns: EDNS(udpPayloadSize: 1232, extendedRCode: 1, version: 0, flags: 0x8000, options: [EDNSOption(code: 10, data: Array(1...8))]))
    }

    func testRoundTrip() throws {
        let m = sampleMessage()
        let bytes = m.encoded()
        let back = try DNSMessage(decoding: bytes)
        XCTAssertEqual(back, m)
        XCTAssertEqual(back.rcode, 1 << 4 | 3)
        XCTAssertTrue(back.header.isResponse && back.header.authoritative && back.header.recursionDesired && !back.header.truncated)
        XCTAssertTrue(back.edns!.dnssecOK)
        // Counts: 1 question, 5 answers, 1 authority, 2 additional (the glue and the OPT record).
        XCTAssertEqual(Array(bytes[4..<12]), [0, 1, 0, 5, 0, 1, 0, 2])
        XCTAssertEqual(try DNSMessage(decoding: back.encoded()).encoded(), bytes, "encoding is deterministic")
    }

    func testOwnerNamesAreCompressedAgainstTheQuestion() throws {
        let q = dn("web.service.mycelium")
        let m = DNSMessage(header: DNSHeader(id: 1), questions: [DNSQuestion(name: q, type: DNSType.a)],
                           answers: [DNSRecord(name: q, ttl: 5, data: .a(1)), DNSRecord(name: q, ttl: 5, data: .a(2))])
        let bytes = m.encoded()
        // header 12 + question 22 + 4, then each answer: pointer to byte 12, 10 bytes of fields, 4 of address.
        XCTAssertEqual(bytes.count, 12 + 26 + 2 * 16)
        XCTAssertEqual(Array(bytes[38..<40]), [0xC0, 12])
        XCTAssertEqual(try DNSMessage(decoding: bytes), m)
    }

    func testCompressionKeepsEachNamesSpelling() throws {
        // A pointer to the question would turn WEB into web: the owner must be written out.
        let m = DNSMessage(header: DNSHeader(id: 1), questions: [DNSQuestion(name: dn("web.service.mycelium"), type: DNSType.a)],
                           answers: [DNSRecord(name: dn("WEB.service.mycelium"), ttl: 5, data: .a(1))])
        let back = try DNSMessage(decoding: m.encoded())
        XCTAssertEqual(back.answers[0].name.labels[0], Array("WEB".utf8))
        XCTAssertEqual(back, m)
    }

    func testEveryPrefixOfAMessageIsRefused() {
        let bytes = sampleMessage().encoded()
        for n in 0..<bytes.count {
            XCTAssertThrowsError(try DNSMessage(decoding: Array(bytes.prefix(n))), "prefix of \(n) bytes")
        }
        XCTAssertThrowsError(try DNSMessage(decoding: bytes + [0])) { e in
            XCTAssertEqual((e as? DecodeError)?.code, .trailingBytes(count: 1))
        }
    }

    func testCompressionPointerLoopsAreRefused() {
        // A name that points at itself.
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage([0xC0, 12, 0, 1, 0, 1]))) { e in
            guard case .invalid(field: "domain name", _)? = (e as? DecodeError)?.code else { return XCTFail("\(e)") }
        }
        // A label, then a pointer back to that label: a two-step loop.
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage([1, 0x61, 0xC0, 12, 0, 1, 0, 1])))
        // A pointer forward (to a name that would be valid there).
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage([0xC0, 14, 1, 0x61, 0, 0, 1, 0, 1])))
        // A pointer past the end.
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage([0xFF, 0xFF, 0, 1, 0, 1])))
        // Two names pointing at each other: refused at the first, whose pointer goes forward.
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage(qd: 2, [1, 0x61, 0xC0, 22, 0, 1, 0, 1, 1, 0x62, 0xC0, 12, 0, 1, 0, 1])))
    }

    func testChainedPointersAreFollowed() throws {
        // Question "a.b" at 12; a record owned by "c" + pointer to 12; another owned by a pointer to that owner.
        var body: [UInt8] = [1, 0x61, 1, 0x62, 0, 0, 1, 0, 1]  // bytes 12..<21
        body += [1, 0x63, 0xC0, 12] + [0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]  // owner at 21
        body += [0xC0, 21] + [0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 2]
        let m = try DNSMessage(decoding: rawMessage(an: 2, body))
        XCTAssertEqual(m.questions[0].name, dn("a.b"))
        XCTAssertEqual(m.answers.map(\.name), [dn("c.a.b"), dn("c.a.b")])
        XCTAssertEqual(m.answers.map(\.data), [.a(0x0A00_0001), .a(0x0A00_0002)])
    }

    func testNamesOver255BytesAreRefused() {
        let label63 = [63] + [UInt8](repeating: 0x78, count: 63)
        // Written out: four labels of 63 bytes are 257 bytes in wire form.
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage(label63 + label63 + label63 + label63 + [0, 0, 1, 0, 1]))) { e in
            XCTAssertEqual((e as? DecodeError)?.code, .tooLong(field: "domain name", length: 257, limit: 255))
        }
        // Through a pointer: three labels (193 bytes) then a second name of one label and a pointer to them.
        let first = label63 + label63 + label63 + [0, 0, 1, 0, 1]
        XCTAssertNoThrow(try DNSMessage(decoding: rawMessage(first)))
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage(qd: 2, first + label63 + [0xC0, 12, 0, 1, 0, 1])))
    }

    func testReservedLabelTypesAreRefused() {
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage([0x41, 0, 0, 1, 0, 1])))
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage([0x80, 0, 0, 1, 0, 1])))
    }

    func testBadRecordsAreRefused() {
        let question: [UInt8] = [0, 0, 1, 0, 1]  // root, A, IN
        // A record whose data is 3 bytes.
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage(an: 1, question + [0, 0, 1, 0, 1, 0, 0, 0, 5, 0, 3, 1, 2, 3])))
        // SRV whose length claims one byte more than its data.
        let srv: [UInt8] = [0, 0, 33, 0, 1, 0, 0, 0, 5, 0, 10, 0, 0, 0, 1, 0x1F, 0x90, 1, 0x61, 0, 0]
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage(an: 1, question + srv)))
        // An OPT record in the answer section, a second OPT, an OPT owned by a non-root name.
        let opt: [UInt8] = [0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage(an: 1, question + opt)))
        XCTAssertNoThrow(try DNSMessage(decoding: rawMessage(ar: 1, question + opt)))
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage(ar: 2, question + opt + opt)))
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage(ar: 1, question + [1, 0x61] + opt)))
        // An OPT option running past the record's data.
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage(ar: 1, question + [0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 5, 0, 10, 0, 4, 1])))
        // Counts that promise more than the message holds.
        XCTAssertThrowsError(try DNSMessage(decoding: rawMessage(qd: 0xFFFF, question)))
    }

    func testTruncationCutsAnswersAndSetsTC() throws {
        let q = dn("many.service.mycelium")
        var m = DNSMessage(header: DNSHeader(id: 9), questions: [DNSQuestion(name: q, type: DNSType.a)],
                           answers: (0..<100).map { DNSRecord(name: q, ttl: 5, data: .a(UInt32($0))) },
                           authority: [DNSRecord(name: dn("service.mycelium"), ttl: 5, data: .soa(soa))])
        m.edns = EDNS(udpPayloadSize: 1232)
        let bytes = m.encoded(limit: 512)
        XCTAssertLessThanOrEqual(bytes.count, 512)
        let back = try DNSMessage(decoding: bytes)
        XCTAssertTrue(back.header.truncated)
        // 12 + question 27 + OPT 11 leaves 462 bytes: 28 answers of 16 bytes.
        XCTAssertEqual(back.answers, Array(m.answers.prefix(28)))
        XCTAssertEqual(back.authority, [], "nothing after the first record that did not fit")
        XCTAssertEqual(back.edns, m.edns, "the OPT record is always kept")
        XCTAssertFalse(try DNSMessage(decoding: m.encoded()).header.truncated)
    }

    func testAdditionalRecordsThatDoNotFitAreDroppedWithoutTC() throws {
        let q = dn("web.service.mycelium")
        let m = DNSMessage(header: DNSHeader(id: 9), questions: [DNSQuestion(name: q, type: DNSType.a)],
                           answers: (0..<20).map { DNSRecord(name: q, ttl: 5, data: .a(UInt32($0))) },
                           additional: (0..<20).map { DNSRecord(name: q, ttl: 5, data: .a(UInt32($0))) })
        let back = try DNSMessage(decoding: m.encoded(limit: 512))
        XCTAssertFalse(back.header.truncated)
        XCTAssertEqual(back.answers.count, 20)
        // 12 + 26 + 20 * 16 = 358; 154 bytes left: 9 more records.
        XCTAssertEqual(back.additional.count, 9)
    }
}
