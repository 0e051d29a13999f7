import MyceliumCore
import MyceliumIdentity
@testable import MyceliumVote
import XCTest

final class CodecTests: XCTestCase {
    /// One of every encodable thing, from a real round.
    func samples() throws -> (spec: RoundSpec, messages: [VoteMessage], evidence: [Evidence], certificate: DecisionCertificate) {
        let e = Electorate(4)
        let spec = try e.spec(verifiable: true)
        var nodes = e.instances()
        var rng = SeededRandom(seed: 2)
        let truth = try VoteResult([1, 2, 3])
        var initial: [(from: Int, effects: [VoteEffect])] = []
        for i in 0..<4 { initial.append((i, try nodes[i].open(spec, vote: i == 3 ? .no : truth, using: &rng))) }
        let all = flood(&nodes, initial)
        let messages = all.flatMap(\.broadcasts)
        // Seeded and deterministic: a round without a decision here is a bug, never a reason to skip.
        guard case let .accepted(_, cert)? = all[0].outcomes.first else {
            XCTFail("seed 2 must decide the round; outcomes: \(all[0].outcomes)")
            throw CodecSampleError()
        }
        let s = [UInt8](repeating: 4, count: 32)
        let c1 = SignedCommit.sign(round: spec.id, voter: e.ids[2], commitment: Commitment.compute(round: spec.id, voter: e.ids[2], result: .yes, salt: s), key: e.keys[2])
        let c2 = SignedCommit.sign(round: spec.id, voter: e.ids[2], commitment: Commitment.compute(round: spec.id, voter: e.ids[2], result: .no, salt: s), key: e.keys[2])
        let bad = SignedReveal.sign(round: spec.id, voter: e.ids[2], result: .no, salt: s, key: e.keys[2])
        let attest = messages.compactMap { m -> SummaryAttestation? in if case let .summary(x) = m { return x.attestation }; return nil }
        let evidence: [Evidence] = [.equivocating(c1, c2), .badReveal(c1, bad), .withholding(c1, attestations: attest)]
            + all[0].evidence
        XCTAssertTrue(messages.contains { if case .summary = $0 { return true }; return false })
        XCTAssertTrue(all[0].evidence.contains { $0.offence == .wrongResult })
        return (spec, messages, evidence, cert)
    }

    func testEverythingRoundTripsToIdenticalBytes() throws {
        let (spec, messages, evidence, cert) = try samples()
        XCTAssertEqual(try RoundSpec(decoding: spec.encoded()).id, spec.id)
        XCTAssertEqual(try RoundSpec(decoding: spec.encoded()).encoded(), spec.encoded())
        for m in messages { XCTAssertEqual(try VoteMessage(decoding: m.encoded()), m) }
        for e in evidence {
            let d = try Evidence(decoding: e.encoded())
            XCTAssertEqual(d, e)
            XCTAssertEqual(d.encoded(), e.encoded())
        }
        XCTAssertEqual(try DecisionCertificate(decoding: cert.encoded()), cert)
    }

    func testEveryTruncationAndAnyTrailingByteIsRefused() throws {
        let (spec, messages, evidence, cert) = try samples()
        var inputs: [(String, [UInt8], ([UInt8]) throws -> Void)] = [
            ("spec", spec.encoded(), { _ = try RoundSpec(decoding: $0) }),
            ("certificate", cert.encoded(), { _ = try DecisionCertificate(decoding: $0) }),
        ]
        for m in messages.prefix(6) { inputs.append(("message", m.encoded(), { _ = try VoteMessage(decoding: $0) })) }
        for e in evidence { inputs.append(("evidence", e.encoded(), { _ = try Evidence(decoding: $0) })) }
        for (what, bytes, decode) in inputs {
            XCTAssertNoThrow(try decode(bytes), what)
            for cut in 0..<bytes.count {
                XCTAssertThrowsError(try decode(Array(bytes.prefix(cut))), "\(what) truncated to \(cut)")
            }
            XCTAssertThrowsError(try decode(bytes + [0]), "\(what) with a trailing byte")
        }
    }

    func testNonCanonicalFormsAreRefused() throws {
        let (_, messages, evidence, _) = try samples()
        // Equivocation with the commitments in the wrong order.
        guard case let .equivocation(a, b) = evidence[0] else { return XCTFail() }
        var w = ByteWriter()
        w.raw(Evidence.magic); w.u8(Evidence.version); w.u8(Offence.equivocation.rawValue)
        b.write(to: &w); a.write(to: &w)
        XCTAssertThrowsError(try Evidence(decoding: w.bytes))
        // A summary bitmap with a padding bit set (4 voters use the low 4 bits).
        guard let summary = messages.first(where: { if case .summary = $0 { return true }; return false }) else { return XCTFail() }
        var bytes = summary.encoded()
        let bitmapOffset = 4 + 32 + 16 + 2
        bytes[bitmapOffset] |= 0x80
        XCTAssertThrowsError(try VoteMessage(decoding: bytes))
        // Unknown message kind and version.
        var k = summary.encoded(); k[3] = 4
        XCTAssertThrowsError(try VoteMessage(decoding: k))
        var v = summary.encoded(); v[2] = 2
        XCTAssertThrowsError(try VoteMessage(decoding: v))
    }

    func testHostileLengthsAreRefusedBeforeAllocating() throws {
        // A certificate claiming 65535 entries in a few bytes.
        var w = ByteWriter()
        w.raw(DecisionCertificate.magic); w.u8(DecisionCertificate.version)
        w.raw([UInt8](repeating: 0, count: 32)); w.u8(1); w.u8(1); w.u16(UInt16.max)
        XCTAssertThrowsError(try DecisionCertificate(decoding: w.bytes)) { e in
            guard case let .malformed(_, d)? = (e as? VoteError)?.code, case .tooLong = d.code else { return XCTFail("\(e)") }
        }
        // A result longer than the limit.
        var r = ByteWriter()
        r.raw(VoteMessage.magic); r.u8(VoteMessage.version); r.u8(2)
        r.raw([UInt8](repeating: 0, count: 48)); r.u8(200)
        XCTAssertThrowsError(try VoteMessage(decoding: r.bytes + [UInt8](repeating: 0, count: 300)))
        XCTAssertThrowsError(try Evidence(decoding: [UInt8](repeating: 0, count: VoteLimits.maxEvidenceBytes + 1))) { e in
            XCTAssertEqual((e as? VoteError)?.code, .oversized(bytes: VoteLimits.maxEvidenceBytes + 1, limit: VoteLimits.maxEvidenceBytes))
        }
    }

    func testFuzzEntryPointSurvivesRandomAndMutatedInputs() throws {
        let (spec, messages, evidence, cert) = try samples()
        var seeds: [[UInt8]] = [[0] + spec.encoded(), [3] + spec.encoded(), [2] + cert.encoded()]
        seeds += messages.map { [0] + $0.encoded() }
        seeds += evidence.map { [1] + $0.encoded() }
        for s in seeds { fuzzVoteDecoders(s) }
        var rng = SeededRandom(seed: 77)
        for i in 0..<3000 {
            var input = seeds[i % seeds.count]
            for _ in 0..<(1 + Int(rng.next() % 4)) {
                let at = Int(rng.next() % UInt64(input.count))
                switch rng.next() % 3 {
                case 0: input[at] = UInt8(truncatingIfNeeded: rng.next())
                case 1: input.remove(at: at)
                default: input.insert(UInt8(truncatingIfNeeded: rng.next()), at: at)
                }
                if input.isEmpty { input = [0] }
            }
            fuzzVoteDecoders(input)
        }
        for _ in 0..<500 {
            fuzzVoteDecoders((0..<Int(rng.next() % 200)).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
        }
    }

    func testCommitmentBindsRoundVoterResultAndSalt() throws {
        let e = Electorate(4)
        let spec = try e.spec(), other = try e.spec(sequence: 2)
        let s = [UInt8](repeating: 3, count: 32)
        let base = Commitment.compute(round: spec.id, voter: e.ids[0], result: .yes, salt: s)
        XCTAssertNotEqual(base, Commitment.compute(round: other.id, voter: e.ids[0], result: .yes, salt: s))
        XCTAssertNotEqual(base, Commitment.compute(round: spec.id, voter: e.ids[1], result: .yes, salt: s))
        XCTAssertNotEqual(base, Commitment.compute(round: spec.id, voter: e.ids[0], result: .no, salt: s))
        XCTAssertNotEqual(base, Commitment.compute(round: spec.id, voter: e.ids[0], result: .yes, salt: [UInt8](repeating: 4, count: 32)))
        // Any check name yields a subject that fits.
        XCTAssertLessThanOrEqual(RoundSubject.health(check: String(repeating: "é", count: 500), target: e.ids[0]).count, VoteLimits.maxSubjectBytes)
        // The round ID covers the electorate and the weights: a different weight is a different round.
        XCTAssertNotEqual(try e.spec(weights: [100, 100, 100, 101]).id, spec.id)
    }
}

struct CodecSampleError: Error {}
