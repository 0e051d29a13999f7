import XCTest
import Foundation
@testable import MyceliumCore

final class CodecTests: XCTestCase {
    func testRoundTrip() throws {
        var w = ByteWriter()
        w.u8(7); w.u16(0xBEEF); w.u32(0xDEAD_BEEF); w.u64(42); w.i64(-5); w.bool(true)
        w.blob([1, 2, 3]); w.string("spore")
        var r = ByteReader(w.bytes)
        XCTAssertEqual(try r.u8(), 7)
        XCTAssertEqual(try r.u16(), 0xBEEF)
        XCTAssertEqual(try r.u32(), 0xDEAD_BEEF)
        XCTAssertEqual(try r.u64(), 42)
        XCTAssertEqual(try r.i64(), -5)
        XCTAssertEqual(try r.bool(), true)
        XCTAssertEqual(try r.blob("b", limit: 3), [1, 2, 3])
        XCTAssertEqual(try r.string("s", limit: 10), "spore")
        XCTAssertNoThrow(try r.finish())
    }

    func testHostileLengthIsRefusedBeforeAllocation() {
        var w = ByteWriter()
        w.u32(UInt32.max)
        var r = ByteReader(w.bytes)
        XCTAssertThrowsError(try r.blob("payload", limit: 1024)) { e in
            XCTAssertEqual((e as? DecodeError)?.code, .tooLong(field: "payload", length: Int(UInt32.max), limit: 1024))
        }
    }

    func testTruncationAndTrailingBytes() {
        var r = ByteReader([0, 1])
        XCTAssertThrowsError(try r.u32()) { e in
            XCTAssertEqual((e as? DecodeError)?.code, .truncated(needed: 4, available: 2))
        }
        var r2 = ByteReader([1, 2])
        _ = try? r2.u8()
        XCTAssertThrowsError(try r2.finish())
    }

    func testBadBoolAndUTF8() {
        var r = ByteReader([2])
        XCTAssertThrowsError(try r.bool())
        var w = ByteWriter(); w.u16(2); w.raw([0xFF, 0xFE])
        var r2 = ByteReader(w.bytes)
        XCTAssertThrowsError(try r2.string("s", limit: 10))
    }
}

final class CRCTests: XCTestCase {
    func testKnownVectors() {
        // RFC 3720 appendix B.4 test vectors for CRC-32C.
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        XCTAssertEqual(CRC32C.checksum(Array(0..<32)), 0x46DD_794E)
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
    }

    func testIncrementalEqualsWhole() {
        var rng = SeededRandom(seed: 1)
        let data = (0..<1000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let whole = CRC32C.checksum(data)
        let a = data[0..<333].withUnsafeBytes { CRC32C.update(0, $0) }
        let b = data[333...].withUnsafeBytes { CRC32C.update(a, $0) }
        XCTAssertEqual(whole, b)
    }
}

final class RandomTests: XCTestCase {
    func testSeededIsDeterministic() {
        var a = SeededRandom(seed: 99), b = SeededRandom(seed: 99), c = SeededRandom(seed: 100)
        let xa = (0..<10).map { _ in a.next() }
        XCTAssertEqual(xa, (0..<10).map { _ in b.next() })
        XCTAssertNotEqual(xa, (0..<10).map { _ in c.next() })
    }
}

final class EncodingTests: XCTestCase {
    func testBase32RoundTripAndStrictness() {
        var rng = SeededRandom(seed: 3)
        for n in 0..<40 {
            let v = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let s = Base32.encode(v)
            XCTAssertEqual(Base32.decode(Substring(s), count: n), v)
            XCTAssertEqual(Base32.decode(Substring(s.uppercased()), count: n), v)
        }
        XCTAssertNil(Base32.decode("u", count: 0))
    }

    func testCheckedIDCatchesEverySingleCharacterTypo() throws {
        let value: [UInt8] = Array(0..<16)
        let id = CheckedID.render(prefix: "node", value: value)
        XCTAssertEqual(try CheckedID.parse(id, prefix: "node", count: 16), value)
        XCTAssertThrowsError(try CheckedID.parse(id, prefix: "net", count: 16))
        let alphabet = Array("0123456789abcdefghjkmnpqrstvwxyz")
        var chars = Array(id)
        for i in 5..<chars.count {
            let original = chars[i]
            for c in alphabet where c != original {
                chars[i] = c
                XCTAssertThrowsError(try CheckedID.parse(String(chars), prefix: "node", count: 16), "typo at \(i) -> \(c) accepted")
            }
            chars[i] = original
        }
    }

    func testBase64URL() {
        var rng = SeededRandom(seed: 5)
        for n in 0..<50 {
            let v = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            XCTAssertEqual(Base64URL.decode(Base64URL.encode(v)), v)
        }
        XCTAssertNil(Base64URL.decode("a"))
        XCTAssertNil(Base64URL.decode("ab+c"))
    }
}

final class FrameTests: XCTestCase {
    func testFramesSurviveArbitrarySplits() throws {
        let frames = (0..<50).map { Frame(type: UInt8($0 % 7), payload: [UInt8](repeating: UInt8($0), count: $0 * 13)) }
        let wire = frames.flatMap { $0.encoded() }
        var rng = SeededRandom(seed: 11)
        var d = FrameDecoder(maxFrameSize: 4096)
        var out: [Frame] = []
        var i = 0
        while i < wire.count {
            let n = Int.random(in: 1...37, using: &rng)
            d.append(wire[i..<min(wire.count, i + n)])
            i += n
            while let f = try d.next() { out.append(f) }
        }
        XCTAssertEqual(out, frames)
        XCTAssertNoThrow(try d.finish())
    }

    func testOversizedFrameRefusedFromHeaderAlone() {
        var d = FrameDecoder(maxFrameSize: 1024)
        d.append([0x00, 0x10, 0x00, 0x00])  // claims 1 MiB
        XCTAssertThrowsError(try d.next()) { e in
            XCTAssertEqual((e as? DecodeError)?.code, .tooLong(field: "frame", length: 1 << 20, limit: 1024))
        }
        XCTAssertEqual(d.bufferedByteCount, 0, "nothing is kept after a refusal")
        XCTAssertThrowsError(try d.next(), "the decoder stays failed")
    }

    func testTruncatedFrameAtEndOfStream() throws {
        var d = FrameDecoder()
        d.append(Frame(type: 1, payload: [1, 2, 3, 4]).encoded().dropLast())
        XCTAssertNil(try d.next())
        XCTAssertThrowsError(try d.finish())
    }

    func testBadVersionAndShortLength() {
        var d = FrameDecoder()
        d.append([0, 0, 0, 5, 9])
        XCTAssertThrowsError(try d.next())
        var d2 = FrameDecoder()
        d2.append([0, 0, 0, 1, 1])
        XCTAssertThrowsError(try d2.next())
    }

    func testRandomGarbageNeverCrashes() {
        var rng = SeededRandom(seed: 12)
        for _ in 0..<2000 {
            var d = FrameDecoder(maxFrameSize: 256)
            let n = Int.random(in: 0...300, using: &rng)
            d.append((0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) })
            do { while try d.next() != nil {} ; try d.finish() } catch {}
            XCTAssertLessThanOrEqual(d.bufferedByteCount, 300)
        }
    }
}

final class AtomicFileTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = NSTemporaryDirectory() + "myc-core-\(UUID().uuidString)"; try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func testChecksummedRoundTripAndDetection() throws {
        let path = dir + "/f"
        try ChecksummedFile.write(kind: 9, payload: Array("hello".utf8), to: path, mode: 0o600)
        XCTAssertEqual(try ChecksummedFile.read(kind: 9, from: path), Array("hello".utf8))
        XCTAssertEqual(try AtomicFile.mode(of: path), 0o600)
        XCTAssertThrowsError(try ChecksummedFile.read(kind: 8, from: path)) { e in
            XCTAssertEqual((e as? FileError)?.code, .wrongKind(expected: 8, actual: 9))
        }
        var bytes = try AtomicFile.read(path)
        bytes[bytes.count - 1] ^= 1
        try AtomicFile.write(bytes, to: path)
        XCTAssertThrowsError(try ChecksummedFile.read(kind: 9, from: path)) { e in
            guard case .corrupt(let d)? = (e as? FileError)?.code, case .checksumMismatch = d.code else { return XCTFail("\(e)") }
        }
        try AtomicFile.write(Array(bytes.dropLast()), to: path)
        XCTAssertThrowsError(try ChecksummedFile.read(kind: 9, from: path)) { e in
            guard case .wrongLength? = (e as? FileError)?.code else { return XCTFail("\(e)") }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path + ".tmp.\(getpid())"), "no temp file left behind")
    }

    func testMissingFile() {
        XCTAssertThrowsError(try AtomicFile.read(dir + "/nope")) { e in XCTAssertEqual((e as? FileError)?.code, .notFound) }
    }
}
