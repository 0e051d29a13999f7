import Foundation
import MyceliumAPI
import XCTest

/// `GET /v1/events?after=SEQ` and `peers` in `GET /v1/status` on real agents (the numbering and the
/// dashboard's use of them are unit-tested in MyceliumAPITests and MyceliumDashboardTests).
final class EventsAPIProcessTests: XCTestCase {
    func testEventsAreNumberedReadAfterASeqAndRestartWithTheAgent() async throws {
        let c = try AgentCluster()
        defer { c.shutdown() }
        try c.createNetwork()
        try await c.waitUntil("n1 leads", nodes: ["n1"]) { $0[0].leader == $0[0].node }
        let client = AgentClient(socket: c.home("n1") + "/agent.sock")

        let status = try await client.status()
        let all = try await client.events(after: 0)
        XCTAssertFalse(all.events.isEmpty)
        XCTAssertEqual(all.events.map(\.seq), Array(all.oldestSeq...all.latestSeq), "numbered without gaps, oldest first")
        XCTAssertEqual(all.oldestSeq, 1, "a young agent still keeps its first event")
        let lines = Set(all.events.map(\.line))
        XCTAssertTrue(status.events.allSatisfy(lines.contains), "the status's latest 30 are among the kept events")

        let newer = try await client.events(after: all.latestSeq)
        XCTAssertTrue(newer.events.allSatisfy { $0.seq > all.latestSeq })
        let last = try await client.events(after: all.latestSeq - 1)
        XCTAssertEqual(last.events.first, all.events.last, "after=N starts at N+1")

        // A bad query is refused with what to pass.
        let (code, body) = try await client.request(method: "GET", path: "/v1/events?after=soon")
        XCTAssertEqual(code, 400)
        XCTAssertTrue(String(decoding: body, as: UTF8.self).contains("after=SEQ"), String(decoding: body, as: UTF8.self))

        // A one-member network has no peers.
        XCTAssertEqual(status.peers, [])

        // The agent restarts: its numbers start again, and its start time says so.
        c.kill9("n1")
        try c.start("n1")
        try await c.waitUntil("n1 leads again", nodes: ["n1"]) { $0[0].leader == $0[0].node }
        let again = try await client.events(after: 0)
        XCTAssertNotEqual(again.startedAtMillis, all.startedAtMillis)
        XCTAssertEqual(again.oldestSeq, 1)
    }
}
