import Endophyte
import MyceliumCore
import XCTest

/// Output commit's pure core: what may leave when, what is dropped when full, and the framing of
/// QEMU's filter-redirector chardevs.
final class OutputCommitBufferTests: XCTestCase {
    func p(_ n: UInt8, size: Int = 3) -> [UInt8] { [UInt8](repeating: n, count: size) }

    func testAPacketLeavesOnlyOnceTheEpochItWasSentInIsSealedAndCommitted() {
        var b = OutputCommitBuffer()
        XCTAssertEqual(b.accept(p(1)), .held(epoch: 1))
        XCTAssertEqual(b.accept(p(2)), .held(epoch: 1))
        // Nothing sealed yet: a commit number from elsewhere releases nothing of the open epoch.
        XCTAssertEqual(b.release(upTo: 5), [])
        let sealed = b.seal()
        XCTAssertEqual(sealed, 1)
        XCTAssertEqual(b.accept(p(3)), .held(epoch: 2), "sent after the pause: the next epoch")
        XCTAssertEqual(b.heldPackets, 3)
        XCTAssertEqual(b.release(upTo: sealed), [p(1), p(2)], "in the order the guest sent them")
        XCTAssertEqual(b.heldPackets, 1)
        XCTAssertEqual(b.heldBytes, 3)
        XCTAssertEqual(b.release(upTo: sealed), [], "released once")
        XCTAssertEqual(b.release(upTo: 2), [], "epoch 2 is still open")
        XCTAssertEqual(b.released, 2)
    }

    func testACommitAfterAFailedBoundaryReleasesEveryEarlierSealedEpoch() {
        var b = OutputCommitBuffer()
        _ = b.accept(p(1))
        _ = b.seal()  // this boundary's commit never came
        _ = b.accept(p(2))
        let second = b.seal()
        _ = b.accept(p(3))
        XCTAssertEqual(b.release(upTo: second), [p(1), p(2)])
        XCTAssertEqual(b.heldPackets, 1)
    }

    func testWhenFullTheNewestPacketIsDroppedAndCounted() {
        var b = OutputCommitBuffer(limits: OutputCommitLimits(maxPackets: 2, maxBytes: 1000))
        XCTAssertEqual(b.accept(p(1)), .held(epoch: 1))
        XCTAssertEqual(b.accept(p(2)), .held(epoch: 1))
        XCTAssertEqual(b.accept(p(3)), .dropped)
        XCTAssertEqual(b.dropped, 1)
        let s = b.seal()
        XCTAssertEqual(b.release(upTo: s), [p(1), p(2)], "what was held keeps its order")
        XCTAssertEqual(b.accept(p(4)), .held(epoch: 2), "room again after the release")

        var bytes = OutputCommitBuffer(limits: OutputCommitLimits(maxPackets: 100, maxBytes: 10))
        XCTAssertEqual(bytes.accept(p(1, size: 6)), .held(epoch: 1))
        XCTAssertEqual(bytes.accept(p(2, size: 5)), .dropped, "6 + 5 bytes > 10")
        XCTAssertEqual(bytes.accept(p(3, size: 4)), .held(epoch: 1), "exactly 10 fits")
        XCTAssertEqual(bytes.heldBytes, 10)
        XCTAssertEqual(bytes.dropped, 1)
    }

    func testPassingThroughSendsAtOnceAndEnteringItSendsWhatIsHeld() {
        var b = OutputCommitBuffer(mode: .passingThrough)
        XCTAssertEqual(b.accept(p(1)), .sendNow)
        XCTAssertEqual(b.heldPackets, 0)
        XCTAssertEqual(b.setMode(.holding), [])
        _ = b.accept(p(2))
        _ = b.seal()
        _ = b.accept(p(3))
        XCTAssertEqual(b.setMode(.passingThrough), [p(2), p(3)], "unprotected: held output goes, sealed or not, in order")
        XCTAssertEqual(b.heldPackets, 0)
        XCTAssertEqual(b.released, 3)
    }

    func testAFencedCopysHeldPacketsAreDiscardedAndNeverReleased() {
        var b = OutputCommitBuffer()
        _ = b.accept(p(1))
        let s = b.seal()
        _ = b.accept(p(2))
        XCTAssertEqual(b.discardAll(), 2)
        XCTAssertEqual(b.release(upTo: s), [])
        XCTAssertEqual(b.setMode(.passingThrough), [])
        XCTAssertEqual(b.discarded, 2)
        XCTAssertEqual(b.released, 0)
    }

    /// Seeded random runs against the rule itself: a packet is released only after a seal that
    /// followed it, in sending order; every packet is released, dropped or discarded exactly once.
    func testSeededRunsNeverReleaseEarlyNorReorderNorLose() {
        for seed in UInt64(1)...200 {
            var rng = SplitMix(seed)
            var b = OutputCommitBuffer(limits: OutputCommitLimits(maxPackets: 1 + Int(rng.next() % 20), maxBytes: 1 + Int(rng.next() % 200)))
            var sent: UInt32 = 0
            var epochOf: [UInt32: UInt64] = [:]
            var outcome: [UInt32: String] = [:]
            var lastSeal: UInt64 = 0
            var lastOut: UInt32 = 0
            var holding = true
            func note(_ out: [[UInt8]], _ why: String) {
                for pkt in out {
                    let id = pkt.prefix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                    XCTAssertNil(outcome[id], "seed \(seed): packet \(id) left twice")
                    XCTAssertGreaterThan(id, lastOut, "seed \(seed): reordered")
                    lastOut = id
                    if why == "release" {
                        XCTAssertLessThanOrEqual(epochOf[id] ?? .max, lastSeal, "seed \(seed): packet \(id) released before its epoch was sealed")
                    }
                    outcome[id] = why
                }
            }
            for _ in 0..<300 {
                switch rng.next() % 10 {
                case 0...4:
                    sent += 1
                    let size = 4 + Int(rng.next() % 16)
                    var pkt = withUnsafeBytes(of: sent.bigEndian) { [UInt8]($0) }
                    pkt += [UInt8](repeating: 0, count: size - 4)
                    switch b.accept(pkt) {
                    case .held(let e): epochOf[sent] = e
                    case .dropped: outcome[sent] = "dropped"
                    case .sendNow: XCTAssertFalse(holding); note([pkt], "passed")
                    }
                case 5, 6: lastSeal = b.seal()
                case 7: note(b.release(upTo: lastSeal), "release")
                case 8:
                    holding.toggle()
                    note(b.setMode(holding ? .holding : .passingThrough), "passed")
                default:
                    if rng.next() % 4 == 0 {
                        let before = b.heldPackets
                        XCTAssertEqual(b.discardAll(), before)
                        for id in epochOf.keys where outcome[id] == nil { outcome[id] = "discarded" }
                    }
                }
                XCTAssertLessThanOrEqual(b.heldPackets, b.limits.maxPackets)
                XCTAssertLessThanOrEqual(b.heldBytes, b.limits.maxBytes)
            }
            note(b.setMode(.passingThrough), "passed")
            XCTAssertEqual(outcome.count, Int(sent), "seed \(seed): every packet accounted for")
            XCTAssertEqual(UInt64(outcome.values.filter { $0 == "dropped" }.count), b.dropped)
            XCTAssertEqual(UInt64(outcome.values.filter { $0 == "discarded" }.count), b.discarded)
        }
    }

    // MARK: the redirector framing

    func testFramesRoundTripWhateverTheSplit() throws {
        let frames = [RedirectorFrame(packet: p(1, size: 54)), RedirectorFrame(packet: p(2, size: 1)), RedirectorFrame(packet: p(3, size: 1514))]
        let stream = frames.flatMap { $0.encoded() }
        XCTAssertEqual(Array(frames[0].encoded().prefix(4)), [0, 0, 0, 54], "4-byte big-endian length")
        for cut in 0...stream.count {
            var d = RedirectorFrameDecoder()
            var got: [RedirectorFrame] = []
            d.append(stream[0..<cut])
            while let f = try d.next() { got.append(f) }
            d.append(stream[cut...])
            while let f = try d.next() { got.append(f) }
            XCTAssertEqual(got, frames, "cut at \(cut)")
            XCTAssertEqual(d.bufferedByteCount, 0)
        }
        var v = RedirectorFrameDecoder(vnetHeaderSupport: true)
        let withHeader = RedirectorFrame(packet: p(4, size: 60), vnetHeaderLength: 12)
        XCTAssertEqual(Array(withHeader.encoded().prefix(8)), [0, 0, 0, 60, 0, 0, 0, 12])
        v.append(withHeader.encoded())
        XCTAssertEqual(try v.next(), withHeader)
    }

    func testMalformedFramesAreRefusedBeforeBufferingAndTheStreamStaysRefused() {
        func refused(_ bytes: [UInt8], vnet: Bool = false, _ check: (DecodeError.Code) -> Bool) {
            var d = RedirectorFrameDecoder(vnetHeaderSupport: vnet)
            d.append(bytes)
            XCTAssertThrowsError(try d.next()) { e in XCTAssertTrue(check((e as! DecodeError).code), "\(e)") }
            XCTAssertEqual(d.bufferedByteCount, 0, "a failed decoder keeps nothing")
            d.append(RedirectorFrame(packet: [1]).encoded())
            XCTAssertThrowsError(try d.next(), "after a refusal the framing is lost for good")
        }
        refused([0, 1, 0x10, 0x01]) { if case .tooLong(_, 69_633, 69_632) = $0 { return true }; return false }
        refused([0xff, 0xff, 0xff, 0xff]) { if case .tooLong = $0 { return true }; return false }
        refused([0, 0, 0, 0]) { if case .invalid = $0 { return true }; return false }
        refused([0, 0, 0, 10, 0, 0, 0, 11], vnet: true) { if case .invalid(let f, _) = $0 { return f == "vnet header length" }; return false }
        // A length within bounds waits for its bytes, holding only what came.
        var d = RedirectorFrameDecoder()
        d.append([0, 1, 0x10, 0x00, 9])
        XCTAssertNil(try d.next())
        XCTAssertEqual(d.bufferedByteCount, 5)
    }
}

/// A small deterministic generator (the seeded runs above must reproduce from their seed).
struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
