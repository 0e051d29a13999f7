import Foundation
import MyceliumAPI
@testable import MyceliumDashboard
import XCTest

/// The dashboard reads the agent's events with `/v1/events?after=` from the last number it took, so a
/// burst between two polls is all seen (the status carries only the latest 30).
final class DashboardEventsTests: XCTestCase {
    /// An agent's event keeping as MyceliumAgent does it: its latest 200 lines and a counter.
    struct AgentEvents {
        var kept: [String] = []
        var seq: UInt64 = 0
        let started: Int64
        mutating func note(_ text: String) {
            seq += 1
            kept.append("+\(seq).000s \(text)")
            if kept.count > 200 { kept.removeFirst(kept.count - 200) }
        }
        func read(after: UInt64) -> EventsResponse {
            EventsResponse.window(kept: kept, latestSeq: seq, after: after, startedAtMillis: started)
        }
    }

    func testABurstOfMoreThanThirtyEventsBetweenTwoPollsIsAllSeen() {
        var agent = AgentEvents(started: 1000)
        var h = DashboardHistory()
        for i in 1...5 { agent.note("admitted node-\(i)") }
        h.absorb(events: agent.read(after: h.lastAgentSeq))
        XCTAssertEqual(h.events.count, 5)
        // 80 events within one poll: more than the status's 30.
        for i in 1...80 { agent.note("vote \(i) decided yes: failure of node-x") }
        h.absorb(events: agent.read(after: h.lastAgentSeq))
        XCTAssertEqual(h.events.count, 85)
        XCTAssertEqual(h.events.suffix(80).map(\.text), (1...80).map { "vote \($0) decided yes: failure of node-x" })
        XCTAssertEqual(h.events.map(\.seq), Array(1...85), "in order, once each")
        XCTAssertEqual(h.lastAgentSeq, 85)
        XCTAssertEqual(h.missedEvents, 0)
        // A poll with nothing new adds nothing.
        h.absorb(events: agent.read(after: h.lastAgentSeq))
        XCTAssertEqual(h.events.count, 85)
        // The status-only path (an agent without /v1/events) would have seen only 30 of that burst;
        // with lines: false the status adds no event.
        let status = StatusResponse(network: "net-x", node: "node-a", role: "leader", raftMember: "voter", leader: "node-a", term: 1,
                                    commitIndex: 1, appliedIndex: 1, epoch: "1.1", phase: "distributed", sclerotia: [], voters: [],
                                    health: "ok", members: [], votes: [], events: Array(agent.kept.suffix(30)), podCIDR: "none", podCIDRFile: "")
        h.absorb(status, at: 1, lines: false)
        XCTAssertEqual(h.events.count, 85)
    }

    func testMoreThanTheAgentKeepsIsSaidAndARestartStartsAgainFromItsFirstEvent() {
        var agent = AgentEvents(started: 1000)
        var h = DashboardHistory(maxEvents: 1000)
        agent.note("started")
        h.absorb(events: agent.read(after: h.lastAgentSeq))
        for i in 1...250 { agent.note("e\(i)") }  // 250 > 200 kept: 50 are gone before the next poll
        h.absorb(events: agent.read(after: h.lastAgentSeq))
        XCTAssertEqual(h.missedEvents, 50)
        XCTAssertTrue(h.events.contains { $0.text.contains("missed 50 events") })
        XCTAssertEqual(h.events.last?.text, "e250")
        XCTAssertEqual(h.events.filter { $0.text.hasPrefix("e") }.count, 200)

        // The agent restarts: its numbers start again at 1 with another start time.
        var again = AgentEvents(started: 2000)
        again.note("started again"); again.note("admitted node-b")
        let before = h.events.count
        h.absorb(events: again.read(after: h.lastAgentSeq))  // read with the old cursor (251): returns nothing useful
        XCTAssertEqual(h.lastAgentSeq, 0, "the next read starts from the restarted agent's first event")
        XCTAssertTrue(h.events.last?.text.contains("restarted") == true)
        h.absorb(events: again.read(after: h.lastAgentSeq))
        XCTAssertEqual(h.events.suffix(2).map(\.text), ["started again", "admitted node-b"])
        XCTAssertEqual(h.events.count, before + 3)
    }
}

/// The map's links: the observer's own connections, from `peers` in its status.
final class DashboardLinksTests: XCTestCase {
    func status(peers: [PeerLinkInfo]?) -> StatusResponse {
        let m = { (id: String) in MemberInfo(id: id, status: "alive", roles: "[member]", addresses: [], sclerotium: true, cpus: 1, key: "K",
                                             expiresInSeconds: 1, trust: 1_000_000, jailed: false, approvedSclerotium: false) }
        return StatusResponse(network: "net-x", node: "node-aaaaaaaaaa", role: "follower", raftMember: "voter", leader: "node-bbbbbbbbbb", term: 1,
                              commitIndex: 1, appliedIndex: 1, epoch: "1.1", phase: "distributed", sclerotia: [], voters: [],
                              health: "ok", members: [m("node-aaaaaaaaaa"), m("node-bbbbbbbbbb"), m("node-cccccccccc"), m("node-dddddddddd")],
                              votes: [], events: [], podCIDR: "none", podCIDRFile: "", peers: peers)
    }

    func testLinksGoFromTheObserverToEachPeerWithTheirState() throws {
        let peers = [
            PeerLinkInfo(node: "node-dddddddddd", state: "none", outbound: false, inbound: false),
            PeerLinkInfo(node: "node-cccccccccc", state: "down", outbound: false, inbound: false, lastHeardMilliseconds: 9000, handshakeMilliseconds: 2.25),
            PeerLinkInfo(node: "node-bbbbbbbbbb", state: "up", outbound: true, inbound: true, address: "127.0.0.1:7001",
                         lastHeardMilliseconds: 100, handshakeMilliseconds: 1.5),
        ]
        let links = try XCTUnwrap(DashboardModel.links(status(peers: peers)))
        XCTAssertEqual(links.map(\.to), ["node-bbbbbbbbbb", "node-cccccccccc", "node-dddddddddd"])
        XCTAssertTrue(links.allSatisfy { $0.from == "node-aaaaaaaaaa" }, "every link starts at the observer")
        XCTAssertEqual(links.map(\.state), ["up", "down", "none"])
        XCTAssertEqual(links[0].detail, "aaaaaaaa → bbbbbbbb: up; dialled channel up (127.0.0.1:7001), its channel to us up, heard 0.1 s ago, last dial 1.5 ms")
        XCTAssertTrue(links[1].detail.contains("heard 9.0 s ago") && links[1].detail.contains("no dialled channel"), links[1].detail)
        XCTAssertTrue(links[2].detail.contains("never heard"), links[2].detail)
        // An agent older than `peers`: no links, the page draws the leader's lines instead.
        XCTAssertNil(DashboardModel.links(status(peers: nil)))
        XCTAssertEqual(DashboardModel.links(status(peers: [])), [])
    }

    func testThePageDrawsTheObserversLinksAndSaysItIsOneAgentsView() {
        let page = DashboardPage.html
        XCTAssertTrue(page.contains("s.links && observer"))
        XCTAssertTrue(page.contains("\"data-link\": l.to"))
        XCTAssertTrue(page.contains("the agent this dashboard reads; others may see theirs differently"))
    }
}

/// The votes panel: what each round asks and the misbehaviour proven in it.
final class DashboardVoteEvidenceTests: XCTestCase {
    func testEachRoundSaysItsQuestionAndItsEvidence() {
        let rounds = [
            VoteRoundInfo(sequence: 3, kind: "failure confirmation", node: "node-cccccccccccc", voters: 4, tolerates: 1, state: "decided yes",
                          localLatencyMilliseconds: 20, localMessagesSent: 4, voterIDs: ["node-aaaaaaaaaaaa"],
                          evidence: ["node-dddddddddddd: equivocation", "node-eeeeeeeeeeee: withheld reveal"]),
            VoteRoundInfo(sequence: 4, kind: "sclerotium admission", node: "node-bbbbbbbbbbbb", voters: 4, tolerates: 1, state: "open",
                          localLatencyMilliseconds: -1, localMessagesSent: 0, evidence: []),
            VoteRoundInfo(sequence: 5, kind: "failure confirmation", node: "node-cccccccccccc", voters: 4, tolerates: 1, state: "closed",
                          localLatencyMilliseconds: -1, localMessagesSent: 0),  // an agent older than `evidence`
        ]
        let v = DashboardModel.votes(rounds)
        XCTAssertEqual(v.map(\.sequence), [5, 4, 3])
        XCTAssertEqual(v.map(\.question), ["has cccccccc failed?", "may bbbbbbbb become a sclerotium?", "has cccccccc failed?"])
        XCTAssertEqual(v[2].evidence, ["dddddddd: equivocation", "eeeeeeee: withheld reveal"])
        XCTAssertEqual(v[1].evidence, [])
        XCTAssertEqual(v[0].evidence, [])
        XCTAssertEqual(DashboardModel.question("routine health", node: "node-ffffffffffff"), "routine health of ffffffff")
    }

    func testTheRoundsEvidenceRoundTripsAndAnOlderAnswerDecodes() throws {
        let r = VoteRoundInfo(sequence: 1, kind: "failure confirmation", node: "node-c", voters: 4, tolerates: 1, state: "decided yes",
                              localLatencyMilliseconds: 1, localMessagesSent: 1, voterIDs: [], evidence: ["node-d: equivocation"])
        XCTAssertEqual(try APIJSON.decode(VoteRoundInfo.self, from: APIJSON.encode(r)), r)
        var old = r
        old.evidence = nil
        XCTAssertFalse(String(decoding: try APIJSON.encode(old), as: UTF8.self).contains("evidence"))
    }
}

/// The VMs panel says how far a replica's sync is, from the primary's agent.
final class DashboardVMSyncTests: XCTestCase {
    func testASyncingVMShowsItsProgressAndOthersNothing() {
        var repl = VMReplicationInfo(committedEpoch: 0, rpoMilliseconds: nil, pauseP50Milliseconds: nil, pauseP99Milliseconds: nil,
                                     epochsLastMinute: 0, bytesPerSecond: nil, throttlePercent: nil)
        repl.syncBytesDone = 384 << 20
        repl.syncBytesTotal = 1 << 30
        let syncing = VMInfo(name: "a", memoryMiB: 1024, vcpus: 1, kernel: "", initrd: "", cmdline: "", primary: "node-a", replica: "node-b",
                             epoch: 1, leaseLeftMillis: 0, protection: "protected", replication: repl)
        let elsewhere = VMInfo(name: "b", memoryMiB: 1024, vcpus: 1, kernel: "", initrd: "", cmdline: "", primary: "node-c", replica: "node-b",
                               epoch: 1, leaseLeftMillis: 0, protection: "protected")
        let v = DashboardModel.vms(VMsResponse(vms: [elsewhere, syncing]))
        XCTAssertEqual(v.map(\.name), ["a", "b"])
        XCTAssertEqual(v[0].sync, "37% of 1.0 GiB")
        XCTAssertEqual(v[1].sync, "")
        XCTAssertTrue(DashboardPage.html.contains("\"data-sync\": v.sync"))
    }
}
