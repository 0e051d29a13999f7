// The wire codec of Raft messages: every kind round-trips, and random or truncated input only ever throws.

import MyceliumCore
import MyceliumRaft
import XCTest

final class MessageCodecTests: XCTestCase {
    static let samples: [Message.Kind] = [
        .preVote(lastIndex: 5, lastTerm: 2), .preVoteResponse(granted: true),
        .vote(lastIndex: 9, lastTerm: 3, transfer: true), .voteResponse(granted: false),
        .append(prevIndex: 4, prevTerm: 2, entries: [Entry(term: 3, index: 5, data: [1, 2]),
                                                    Entry(term: 3, index: 6, kind: .confChange, data: RaftCodec.encode(ConfChange([.addVoter(4)])))], commit: 4),
        .appendResponse(success: false, index: 7, hintIndex: 3, hintTerm: 2),
        .heartbeat(commit: 8, readRound: 12), .heartbeatResponse(readRound: 12),
        .snapshotChunk(metadata: SnapshotMetadata(index: 10, term: 3, confState: ConfState(voters: [1, 2, 3], learners: [4])),
                       offset: 16, totalSize: 100, chunk: [9, 9, 9]),
        .snapshotResponse(index: 10, term: 3, receivedBytes: 19), .timeoutNow,
    ]

    func testEveryKindRoundTrips() throws {
        for k in Self.samples {
            let m = Message(from: 1, to: 2, term: 7, kind: k)
            XCTAssertEqual(try RaftCodec.decodeMessage(RaftCodec.encode(m)), m)
        }
    }

    func testTruncatedAndRandomInputOnlyThrows() {
        var rng = SeededRandom(seed: 5)
        for k in Self.samples {
            let bytes = RaftCodec.encode(Message(from: 1, to: 2, term: 7, kind: k))
            for cut in 0..<bytes.count { XCTAssertThrowsError(try RaftCodec.decodeMessage(Array(bytes[..<cut]))) }
            XCTAssertThrowsError(try RaftCodec.decodeMessage(bytes + [0]))
            for _ in 0..<200 {
                var b = bytes
                b[Int.random(in: 0..<b.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng)
                _ = try? RaftCodec.decodeMessage(b) // must not crash
            }
        }
        for _ in 0..<2000 {
            let b = (0..<Int.random(in: 0..<64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            _ = try? RaftCodec.decodeMessage(b)
        }
    }
}
