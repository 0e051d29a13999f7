// The rtnetlink decoder against hostile input: truncated messages, lying lengths and seeded random mutations
// must end in -EBADMSG (or a decoded link), never a read past the buffer or a crash.

import XCTest
import CNetlink
import MyceliumCore

final class NetlinkDecoderTests: XCTestCase {
    /// A valid RTM_NEWLINK: ifindex 7, name "eth0", MAC 02:00:00:00:00:07, MTU 1450.
    func validMessage() -> [UInt8] {
        var body: [UInt8] = []
        func le16(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF)] }
        func le32(_ v: Int) -> [UInt8] { le16(v & 0xFFFF) + le16(v >> 16 & 0xFFFF) }
        func attr(_ type: Int, _ payload: [UInt8]) -> [UInt8] {
            var a = le16(4 + payload.count) + le16(type) + payload
            while a.count % 4 != 0 { a.append(0) }
            return a
        }
        // struct ifinfomsg: family, pad, type(u16), index(i32), flags(u32), change(u32)
        body += [0, 0] + le16(1) + le32(7) + le32(0x1003) + le32(0)
        body += attr(3, Array("eth0".utf8) + [0])          // IFLA_IFNAME
        body += attr(1, [0x02, 0, 0, 0, 0, 0x07])           // IFLA_ADDRESS
        body += attr(4, le32(1450))                         // IFLA_MTU
        // struct nlmsghdr: len(u32), type(u16) = RTM_NEWLINK (16), flags(u16), seq(u32), pid(u32)
        return le32(16 + body.count) + le16(16) + le16(0) + le32(1) + le32(0) + body
    }

    func decode(_ bytes: [UInt8]) -> (Int32, myc_nl_link) {
        var link = myc_nl_link()
        let rc = bytes.withUnsafeBytes { myc_nl_decode_link($0.baseAddress, $0.count, &link) }
        return (rc, link)
    }

    func testDecodesAValidLink() {
        let (rc, link) = decode(validMessage())
        XCTAssertEqual(rc, 0)
        XCTAssertEqual(link.ifindex, 7)
        XCTAssertEqual(link.mtu, 1450)
        XCTAssertEqual(link.has_mac, 1)
        XCTAssertEqual(withUnsafeBytes(of: link.mac) { Array($0) }, [0x02, 0, 0, 0, 0, 0x07])
        XCTAssertEqual(withUnsafeBytes(of: link.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }, "eth0")
    }

    func testRejectsTruncationAndLyingLengths() {
        let msg = validMessage()
        // Every truncation: the header claims more than there is.
        for n in 0..<msg.count {
            XCTAssertEqual(decode(Array(msg.prefix(n))).0, -EBADMSG, "prefix \(n) not rejected")
        }
        // An attribute longer than the message.
        var lying = msg
        lying[32] = 0xFF
        XCTAssertEqual(decode(lying).0, -EBADMSG)
        // An attribute shorter than its own header.
        var tiny = msg
        tiny[32] = 2
        tiny[33] = 0
        XCTAssertEqual(decode(tiny).0, -EBADMSG)
        // A header shorter than the ifinfomsg it must carry.
        var short = msg
        short[0] = 20
        XCTAssertEqual(decode(short).0, -EBADMSG)
        // Not a link message.
        var other = msg
        other[4] = 20
        XCTAssertEqual(decode(other).0, -EINVAL)
    }

    func testSeededMutationsNeverCrash() {
        var rng = SeededRandom(seed: 0x6d79_635f_6e6c)
        let base = validMessage()
        var decoded = 0
        for _ in 0..<20_000 {
            var m = base
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                m[Int.random(in: 0..<m.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            if Bool.random(using: &rng) { m = Array(m.prefix(Int.random(in: 0...m.count, using: &rng))) }
            let (rc, link) = decode(m)
            XCTAssertTrue(rc == 0 || rc == -EBADMSG || rc == -EINVAL, "unexpected \(rc)")
            if rc == 0 {
                decoded += 1
                XCTAssertLessThan(withUnsafeBytes(of: link.name) { $0.prefix { $0 != 0 }.count }, 16)
            }
        }
        XCTAssertGreaterThan(decoded, 0, "mutations never produced a decodable message; the test is not exercising the decoder")
    }
}
