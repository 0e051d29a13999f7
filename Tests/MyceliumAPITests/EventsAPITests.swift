import MyceliumAPI
import XCTest

/// `GET /v1/events?after=SEQ`: the numbering of the agent's kept events and the query's parsing.
final class EventsAPITests: XCTestCase {
    func testTheWindowNumbersTheKeptEventsAndReturnsThoseAfterSEQ() throws {
        // An agent that had 250 events and keeps its latest 200 (numbers 51...250).
        let kept = (51...250).map { "+\($0).000s event \($0)" }
        let all = EventsResponse.window(kept: kept, latestSeq: 250, after: 0, startedAtMillis: 7)
        XCTAssertEqual(all.events.count, 200)
        XCTAssertEqual(all.events.first, AgentEvent(seq: 51, line: "+51.000s event 51"))
        XCTAssertEqual(all.events.last?.seq, 250)
        XCTAssertEqual(all.oldestSeq, 51)
        XCTAssertEqual(all.latestSeq, 250)
        XCTAssertEqual(all.missed(after: 0), 0, "a first read misses nothing")

        let burst = EventsResponse.window(kept: kept, latestSeq: 250, after: 200, startedAtMillis: 7)
        XCTAssertEqual(burst.events.map(\.seq), Array(201...250), "a burst of 50 since the last read, all of it")
        XCTAssertTrue(burst.events.allSatisfy { $0.line == "+\($0.seq).000s event \($0.seq)" })
        XCTAssertEqual(EventsResponse.window(kept: kept, latestSeq: 250, after: 250, startedAtMillis: 7).events, [])
        XCTAssertEqual(EventsResponse.window(kept: kept, latestSeq: 250, after: 999, startedAtMillis: 7).events, [])

        // A reader that last saw 20: 21...50 are no longer kept.
        let late = EventsResponse.window(kept: kept, latestSeq: 250, after: 20, startedAtMillis: 7)
        XCTAssertEqual(late.events.count, 200)
        XCTAssertEqual(late.missed(after: 20), 30)

        let none = EventsResponse.window(kept: [], latestSeq: 0, after: 0, startedAtMillis: 7)
        XCTAssertEqual(none.events, [])
        XCTAssertEqual(none.oldestSeq, 1)
    }

    func testTheAnswerRoundTripsWithItsStableKeys() throws {
        let r = EventsResponse.window(kept: ["+1.000s a"], latestSeq: 1, after: 0, startedAtMillis: 1234)
        let text = String(decoding: try APIJSON.encode(r), as: UTF8.self)
        for key in ["\"started_at_ms\"", "\"latest_seq\"", "\"oldest_seq\"", "\"seq\"", "\"line\""] { XCTAssertTrue(text.contains(key), text) }
        XCTAssertEqual(try APIJSON.decode(EventsResponse.self, from: APIJSON.encode(r)), r)
    }

    func testTheRouteAndItsQuery() {
        XCTAssertEqual(APIRoute(method: "GET", target: "/v1/events"), .events(query: ""))
        XCTAssertEqual(APIRoute(method: "GET", target: "/v1/events?after=12"), .events(query: "after=12"))
        XCTAssertEqual(APIRoute.events(query: "after=12").path, "/v1/events?after=12")
        XCTAssertEqual(APIRoute.events(query: "").method, "GET")
        XCTAssertNil(APIRoute(method: "POST", target: "/v1/events"))
        XCTAssertEqual(try EventsResponse.after(query: "").get(), 0)
        XCTAssertEqual(try EventsResponse.after(query: "after=42").get(), 42)
        guard case .failure(let bad) = EventsResponse.after(query: "after=-1") else { return XCTFail("a negative number is refused") }
        XCTAssertTrue(bad.error.contains("after=SEQ"), bad.error)
        XCTAssertEqual(bad.code, .badRequest)
        guard case .failure(let unknown) = EventsResponse.after(query: "since=3") else { return XCTFail("an unknown parameter is refused") }
        XCTAssertTrue(unknown.error.contains("since"), unknown.error)
    }
}

/// `peers` in the status: a link's state from what the agent knows of it.
final class PeerLinkInfoTests: XCTestCase {
    func testStateFromChannelsAndLastHeard() throws {
        XCTAssertEqual(PeerLinkInfo.state(outbound: true, inbound: true, everConnected: true, lastHeardMilliseconds: 100), "up")
        XCTAssertEqual(PeerLinkInfo.state(outbound: false, inbound: true, everConnected: false, lastHeardMilliseconds: 5000), "up", "its channel alone, heard lately")
        XCTAssertEqual(PeerLinkInfo.state(outbound: true, inbound: false, everConnected: true, lastHeardMilliseconds: 5100), "silent")
        XCTAssertEqual(PeerLinkInfo.state(outbound: true, inbound: false, everConnected: true, lastHeardMilliseconds: nil), "silent")
        XCTAssertEqual(PeerLinkInfo.state(outbound: false, inbound: false, everConnected: true, lastHeardMilliseconds: nil), "down", "had a connection, lost it")
        XCTAssertEqual(PeerLinkInfo.state(outbound: false, inbound: false, everConnected: false, lastHeardMilliseconds: 800), "down", "heard from, no channel now")
        XCTAssertEqual(PeerLinkInfo.state(outbound: false, inbound: false, everConnected: false, lastHeardMilliseconds: nil), "none")
    }

    func testAnOlderAgentsStatusWithoutPeersStillDecodes() throws {
        let s = StatusResponse(network: "net-x", node: "node-a", role: "leader", raftMember: "voter", leader: "node-a", term: 1,
                               commitIndex: 1, appliedIndex: 1, epoch: "1.1", phase: "distributed", sclerotia: [], voters: [],
                               health: "ok", members: [], votes: [], events: [], podCIDR: "none", podCIDRFile: "")
        let old = String(decoding: try APIJSON.encode(s), as: UTF8.self)
        XCTAssertFalse(old.contains("\"peers\""))
        XCTAssertNil(try APIJSON.decode(StatusResponse.self, from: Array(old.utf8)).peers)
        var new = s
        new.peers = [PeerLinkInfo(node: "node-b", state: "up", outbound: true, inbound: true, address: "127.0.0.1:2", lastHeardMilliseconds: 200, handshakeMilliseconds: 1.5)]
        let text = String(decoding: try APIJSON.encode(new), as: UTF8.self)
        XCTAssertTrue(text.contains("\"last_heard_ms\"") && text.contains("\"handshake_ms\""), text)
        XCTAssertEqual(try APIJSON.decode(StatusResponse.self, from: APIJSON.encode(new)), new)
    }
}
