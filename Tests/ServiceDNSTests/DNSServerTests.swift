import Foundation
import NIOCore
import NIOPosix
import XCTest

@testable import ServiceDNS
@testable import ServiceDNSCore

/// A DNS client written independently of ServiceDNS: python3's
/// standard library only. Each argument `PROTO,NAME,QTYPE,EDNS_SIZE` (EDNS_SIZE 0: no OPT) is one
/// query; PROTO is udp, tcp, or tcpsplit (the same query twice on one connection, the first split
/// after its first byte and the second sent with its rest in one write). One JSON line per query.
private let pythonClient = #"""
import json, socket, struct, sys

host, port = sys.argv[1], int(sys.argv[2])

def build(name, qtype, qid, edns):
    q = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    for label in name.rstrip('.').split('.'):
        q += bytes([len(label)]) + label.encode()
    q += b'\0' + struct.pack('>HH', qtype, 1)
    if edns:
        q += b'\0' + struct.pack('>HHIH', 41, edns, 0, 0)
    return q

def read_name(m, i):
    labels, end, hops = [], None, 0
    while True:
        n = m[i]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = i + 2
            i = ((n & 0x3F) << 8) | m[i + 1]
            hops += 1
            assert hops < 64, 'pointer loop'
        elif n == 0:
            return '.'.join(labels) + '.', (end if end is not None else i + 1)
        else:
            labels.append(m[i + 1:i + 1 + n].decode())
            i += 1 + n

def parse(m, qid):
    rid, flags, qd, an, ns, ar = struct.unpack('>HHHHHH', m[:12])
    assert rid == qid, 'id %d for %d' % (rid, qid)
    i = 12
    for _ in range(qd):
        _, i = read_name(m, i)
        i += 4
    sections = []
    for count in (an, ns, ar):
        recs = []
        for _ in range(count):
            owner, i = read_name(m, i)
            t, c, ttl, l = struct.unpack('>HHIH', m[i:i + 10])
            i += 10
            d = m[i:i + l]
            rec = {'name': owner, 'type': t, 'ttl': ttl}
            if t == 1:
                rec['address'] = socket.inet_ntoa(d)
            elif t == 33:
                p, w, prt = struct.unpack('>HHH', d[:6])
                rec.update(priority=p, weight=w, port=prt, target=read_name(m, i + 6)[0])
            elif t == 6:
                rec['target'] = read_name(m, i)[0]
            elif t == 41:
                rec['port'] = c
            i += l
            recs.append(rec)
        sections.append(recs)
    assert i == len(m), 'trailing bytes'
    return {'rcode': flags & 0xF, 'tc': bool(flags & 0x200), 'aa': bool(flags & 0x400), 'qr': bool(flags & 0x8000),
            'size': len(m), 'answer': sections[0], 'authority': sections[1], 'additional': sections[2]}

def udp(q):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        for attempt in range(5):  # loopback does not lose datagrams, but a resolver retries anyway
            s.sendto(q, (host, port))
            try:
                return s.recvfrom(65535)[0]
            except socket.timeout:
                continue
        raise SystemExit('no UDP answer from %s:%d' % (host, port))
    finally:
        s.close()

def recv_exact(s, n):
    buf = b''
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, 'connection closed'
        buf += chunk
    return buf

def tcp(q, split):
    s = socket.create_connection((host, port), timeout=10)
    try:
        framed = struct.pack('>H', len(q)) + q
        if split:
            s.sendall(framed[:1])
            s.sendall(framed[1:] + framed)
            first = recv_exact(s, struct.unpack('>H', recv_exact(s, 2))[0])
        else:
            s.sendall(framed)
        m = recv_exact(s, struct.unpack('>H', recv_exact(s, 2))[0])
        assert not split or m == first, 'two answers to one query differ'
        return m
    finally:
        s.close()

for n, spec in enumerate(sys.argv[3:]):
    proto, name, qtype, edns = spec.split(',')
    qid = 0x1200 + n
    q = build(name, int(qtype), qid, int(edns))
    m = udp(q) if proto == 'udp' else tcp(q, proto == 'tcpsplit')
    print(json.dumps(parse(m, qid)))
"""#

struct PyRecord: Decodable, Equatable {
    var name: String
    var type: UInt16
    var ttl: UInt32
    var address: String?
    var priority: UInt16?
    var weight: UInt16?
    var port: Int?
    var target: String?
}

struct PyAnswer: Decodable {
    var rcode: Int
    var tc: Bool
    var aa: Bool
    var qr: Bool
    var size: Int
    var answer: [PyRecord]
    var authority: [PyRecord]
    var additional: [PyRecord]
}

final class DNSServerTests: XCTestCase {
    /// Runs the python client against `port`; fails the test with its stderr if it fails.
    func query(port: Int, _ specs: [String], file: StaticString = #filePath, line: UInt = #line) throws -> [PyAnswer] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", pythonClient, "127.0.0.1", String(port)] + specs
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        // Read before waiting: a full pipe would otherwise block the client forever.
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            XCTFail("python3 client exited \(p.terminationStatus): \(String(decoding: stderr, as: UTF8.self))", file: file, line: line)
            throw CocoaError(.executableLoad)
        }
        let lines = String(decoding: stdout, as: UTF8.self).split(separator: "\n")
        XCTAssertEqual(lines.count, specs.count, file: file, line: line)
        return try lines.map { try JSONDecoder().decode(PyAnswer.self, from: Data($0.utf8)) }
    }

    /// The allow filter (pod DNS answers only pods): a refused client's datagram gets nothing back and
    /// its TCP connection is closed before any answer; an allowed one is answered.
    func testClientsTheFilterRefusesGetNoAnswer() async throws {
        let probe = #"""
        import socket, struct, sys
        q = struct.pack('>HHHHHH', 7, 0x0100, 1, 0, 0, 0) + b'\x03web\x07service\x08mycelium\x00' + struct.pack('>HH', 1, 1)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(1)
        u.sendto(q, ('127.0.0.1', int(sys.argv[1])))
        try: print('udp', len(u.recv(2048)))
        except socket.timeout: print('udp none')
        t = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)
        t.sendall(struct.pack('>H', len(q)) + q)
        try:
            n = len(t.recv(2048))
            print('tcp closed' if n == 0 else 'tcp %d' % n)
        except ConnectionResetError: print('tcp closed')  # closed with the query unread: a reset
        except socket.timeout: print('tcp none')
        """#
        for (allowed, expected) in [(true, false), (false, true)] {
            let server = try await DNSServer.start(host: "127.0.0.1", port: 0, allow: { peer in (peer.ipAddress == "127.0.0.1") == allowed }) { _ in
                [endpoint("10.0.0.5", 8080, "web-1")]
            }
            let port = try XCTUnwrap(server.localAddress?.port)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["python3", "-c", probe, String(port)]
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            await server.close()
            let lines = text.split(separator: "\n").map(String.init)
            XCTAssertEqual(lines.count, 2, text)
            if expected {
                XCTAssertEqual(lines, ["udp none", "tcp closed"], "refused: no datagram back, the connection closed (or reset) unanswered")
            } else {
                XCTAssertTrue(lines.allSatisfy { !$0.hasSuffix(" none") && !$0.hasSuffix(" closed") }, "allowed: answered on both: \(lines)")
            }
        }
    }

    func testServesARecordsSRVAndNXDOMAINOverUDPAndTCP() async throws {
        let big = (0..<200).map { endpoint("10.1.\($0 / 250).\($0 % 250 + 1)", 9000, "m-\($0)") }
        let server = try await DNSServer.start(host: "127.0.0.1", port: 0) { service in
            switch service {
            case "web": [endpoint("10.0.0.5", 8080, "web-1"), endpoint("10.0.0.6", 8081, "web-2")]
            case "big": big
            default: nil
            }
        }
        do {
            let port = try XCTUnwrap(server.localAddress?.port)
            XCTAssertNotEqual(port, 0)
            let r = try query(port: port, [
                "udp,web.service.mycelium,1,0",
                "udp,_web._tcp.service.mycelium,33,1232",
                "udp,nothere.service.mycelium,1,0",
                "udp,example.com,1,0",
                "udp,big.service.mycelium,1,0",
                "tcp,big.service.mycelium,1,0",
                "tcpsplit,WEB.service.mycelium,1,0",
            ])
            guard r.count == 7 else { return await server.close() }

            XCTAssertEqual(r[0].rcode, 0)
            XCTAssertTrue(r[0].qr && r[0].aa && !r[0].tc)
            // Query ID 0x1200: rotation by 0x1200 mod 2 = 0 keeps the directory's order.
            XCTAssertEqual(r[0].answer.map(\.address), ["10.0.0.5", "10.0.0.6"])
            XCTAssertEqual(r[0].answer.map(\.ttl), [5, 5])

            XCTAssertEqual(r[1].rcode, 0)
            XCTAssertEqual(r[1].answer.map { "\($0.priority!) \($0.weight!) \($0.port!) \($0.target!)" },
                           ["0 1 8081 web-2.web.service.mycelium.", "0 1 8080 web-1.web.service.mycelium."], "ID 0x1201 rotates by one")
            XCTAssertEqual(r[1].additional.map { "\($0.name) \($0.address ?? "OPT \($0.port!)")" },
                           ["web-2.web.service.mycelium. 10.0.0.6", "web-1.web.service.mycelium. 10.0.0.5", ". OPT 1232"])

            XCTAssertEqual(r[2].rcode, 3)
            XCTAssertEqual(r[2].answer, [])
            XCTAssertEqual(r[2].authority.map { "\($0.name) \($0.type) \($0.target!)" }, ["service.mycelium. 6 ns.service.mycelium."])

            XCTAssertEqual(r[3].rcode, 5)
            XCTAssertFalse(r[3].aa)

            XCTAssertTrue(r[4].tc)
            XCTAssertLessThanOrEqual(r[4].size, 512)
            XCTAssertEqual(r[4].answer.count, 29)

            XCTAssertFalse(r[5].tc)
            XCTAssertEqual(r[5].answer.count, 200, "TCP carries what UDP could not")
            XCTAssertEqual(Set(r[5].answer.compactMap(\.address)).count, 200)

            XCTAssertEqual(r[6].answer.map(\.name), ["WEB.service.mycelium.", "WEB.service.mycelium."])
        } catch {
            await server.close()
            throw error
        }
        await server.close()
    }

    func testStartRefusesABadZoneAndATakenPort() async throws {
        do {
            let s = try await DNSServer.start(host: "127.0.0.1", port: 0, zone: "a..b") { _ in nil }
            await s.close()
            XCTFail("started with an invalid zone")
        } catch let e as ServiceDNSError {
            XCTAssertTrue(e.description.contains("'a..b' is not a domain name"), e.description)
        }
        let first = try await DNSServer.start(host: "127.0.0.1", port: 0) { _ in nil }
        let port = try XCTUnwrap(first.localAddress?.port)
        do {
            let second = try await DNSServer.start(host: "127.0.0.1", port: port) { _ in nil }
            await second.close()
            XCTFail("bound a port already in use")
        } catch let e as ServiceDNSError {
            XCTAssertTrue(e.description.contains("127.0.0.1:\(port)"), e.description)
        } catch {
            XCTFail("unexpected error \(error)")
        }
        await first.close()
    }
}
