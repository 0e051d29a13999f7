import Foundation
import MyceliumAPI
import XCTest

final class APITypesTests: XCTestCase {
    static let member = MemberInfo(id: "node-0h0687nea3yf5q99xxmqwj0se286y", status: "alive", roles: "[member, sclerotiumEligible]",
                                   addresses: ["127.0.0.1:7946"], sclerotium: true, cpus: 4, key: "ab:cd:ef", expiresInSeconds: -3,
                                   trust: 1_000_000, jailed: false, approvedSclerotium: true)
    static let vote = VoteRoundInfo(sequence: 7, kind: "failure", node: "node-x", voters: 4, tolerates: 1, state: "decided no",
                                    localLatencyMilliseconds: 12.5, localMessagesSent: 9)
    static let lease = LeaseInfo(name: "scheduler", holder: "node-x", expiresInSeconds: 30)
    static let status = StatusResponse(
        network: "net-abc", node: "node-x", role: "leader", raftMember: "voter", leader: "node-x", term: 3, commitIndex: 120,
        appliedIndex: 119, epoch: "3.120", phase: "distributed", sclerotia: ["node-x"], voters: ["node-x"], health: "ok",
        members: [member], votes: [vote], events: ["12:00:00.000 elected"], podCIDR: "10.244.1.0/24", podCIDRFile: "/var/lib/mycelium/podcidr")
    static let spore = SporeResponse(network: "net-abc", epoch: "3.120", phase: "distributed", members: [member], sclerotia: ["node-x"],
                                     settings: ["region": "eu"], votes: [vote], leases: [lease])

    func roundTrip<T: Codable & Equatable>(_ value: T, file: StaticString = #filePath, line: UInt = #line) throws {
        let bytes = try APIJSON.encode(value)
        XCTAssertEqual(try APIJSON.decode(T.self, from: bytes), value, file: file, line: line)
    }

    func testEveryTypeRoundTrips() throws {
        try roundTrip(Self.member)
        try roundTrip(Self.vote)
        try roundTrip(Self.lease)
        try roundTrip(Self.status)
        try roundTrip(Self.spore)
        try roundTrip(ActionResponse(result: "leave proposed; the network removes this node once it commits"))
        try roundTrip(APIErrorResponse(error: "not a member", code: .notAMember))
        try roundTrip(APIErrorResponse(error: "from the future", code: APIErrorCode(rawValue: "some_new_reason")))
    }

    /// The keys are the API's contract with scripts: exactly the snake_case names agents have always sent.
    func testKeysAreTheV1Names() throws {
        func keys<T: Encodable>(_ v: T) throws -> Set<String> {
            Set(try XCTUnwrap(JSONSerialization.jsonObject(with: Data(APIJSON.encode(v))) as? [String: Any]).keys)
        }
        XCTAssertEqual(try keys(Self.status), ["network", "node", "role", "raft_member", "leader", "term", "commit_index", "applied_index",
                                               "epoch", "phase", "sclerotia", "voters", "health", "members", "votes", "events",
                                               "pod_cidr", "pod_cidr_file"])
        XCTAssertEqual(try keys(Self.spore), ["network", "epoch", "phase", "members", "sclerotia", "settings", "votes", "leases"])
        XCTAssertEqual(try keys(Self.member), ["id", "status", "roles", "addresses", "sclerotium", "cpus", "key", "expires_in_s",
                                               "trust", "jailed", "approved_sclerotium"])
        XCTAssertEqual(try keys(Self.vote), ["sequence", "kind", "node", "voters", "tolerates", "state", "local_latency_ms",
                                             "local_messages_sent"])
        XCTAssertEqual(try keys(Self.lease), ["name", "holder", "expires_in_s"])
        XCTAssertEqual(try keys(ActionResponse(result: "x")), ["result"])
        XCTAssertEqual(try keys(APIErrorResponse(error: "x", code: .notFound)), ["error", "code"])
    }

    func testEncodingIsSortedAndPrettyPrinted() throws {
        let text = String(decoding: try APIJSON.encode(ActionResponse(result: "ok")), as: UTF8.self)
        XCTAssertEqual(text, "{\n  \"result\" : \"ok\"\n}")
        let error = String(decoding: try APIJSON.encode(APIErrorResponse(error: "e", code: .notFound)), as: UTF8.self)
        XCTAssertLessThan(try XCTUnwrap(error.range(of: "\"code\"")).lowerBound, try XCTUnwrap(error.range(of: "\"error\"")).lowerBound)
    }

    /// A status exactly as agents before the typed API emitted it (JSONSerialization, sorted, pretty),
    /// including an undecided round's integral -1 latency.
    func testDecodesTheStatusAgentsEmit() throws {
        let sample = #"""
            {
              "applied_index" : 41,
              "commit_index" : 41,
              "epoch" : "2.41",
              "events" : [
                "10:41:02.113 genesis: network net-5q0e0 created",
                "10:41:02.560 n2 joined"
              ],
              "health" : "ok",
              "leader" : "node-0h0687nea3yf5q99xxmqwj0se286y",
              "members" : [
                {
                  "addresses" : [
                    "127.0.0.1:47001"
                  ],
                  "approved_sclerotium" : false,
                  "cpus" : 2,
                  "expires_in_s" : 3599,
                  "id" : "node-0h0687nea3yf5q99xxmqwj0se286y",
                  "jailed" : false,
                  "key" : "5f2a:91c0:77de:0b14",
                  "roles" : "[member, sclerotiumEligible, inviter]",
                  "sclerotium" : true,
                  "status" : "alive",
                  "trust" : 1000000
                },
                {
                  "addresses" : [

                  ],
                  "approved_sclerotium" : false,
                  "cpus" : 0,
                  "expires_in_s" : -12,
                  "id" : "node-1k2m3n4p5q6r7s8t9v0w1x2y3z4a5",
                  "jailed" : true,
                  "key" : "0c1d:2e3f:4a5b:6c7d",
                  "roles" : "[member]",
                  "sclerotium" : false,
                  "status" : "suspect",
                  "trust" : 250000
                }
              ],
              "network" : "net-5q0e0m2d4tz8k1w7b3x9c6v0a",
              "node" : "node-0h0687nea3yf5q99xxmqwj0se286y",
              "phase" : "distributed",
              "pod_cidr" : "10.244.0.0\/24",
              "pod_cidr_file" : "\/tmp\/myc\/n1\/podcidr",
              "raft_member" : "voter",
              "role" : "leader",
              "sclerotia" : [
                "node-0h0687nea3yf5q99xxmqwj0se286y"
              ],
              "term" : 2,
              "voters" : [
                "node-0h0687nea3yf5q99xxmqwj0se286y"
              ],
              "votes" : [
                {
                  "kind" : "failure",
                  "local_latency_ms" : -1,
                  "local_messages_sent" : 0,
                  "node" : "node-1k2m3n4p5q6r7s8t9v0w1x2y3z4a5",
                  "sequence" : 1,
                  "state" : "open",
                  "tolerates" : 0,
                  "voters" : 1
                },
                {
                  "kind" : "failure",
                  "local_latency_ms" : 17.25,
                  "local_messages_sent" : 6,
                  "node" : "node-1k2m3n4p5q6r7s8t9v0w1x2y3z4a5",
                  "sequence" : 2,
                  "state" : "decided yes",
                  "tolerates" : 0,
                  "voters" : 1
                }
              ]
            }
            """#
        let s = try APIJSON.decode(StatusResponse.self, from: Array(sample.utf8))
        XCTAssertEqual(s.network, "net-5q0e0m2d4tz8k1w7b3x9c6v0a")
        XCTAssertEqual(s.node, "node-0h0687nea3yf5q99xxmqwj0se286y")
        XCTAssertEqual(s.role, "leader")
        XCTAssertEqual(s.raftMember, "voter")
        XCTAssertEqual(s.leader, s.node)
        XCTAssertEqual(s.term, 2)
        XCTAssertEqual(s.commitIndex, 41)
        XCTAssertEqual(s.appliedIndex, 41)
        XCTAssertEqual(s.epoch, "2.41")
        XCTAssertEqual(s.phase, "distributed")
        XCTAssertEqual(s.sclerotia, [s.node])
        XCTAssertEqual(s.voters, [s.node])
        XCTAssertEqual(s.health, "ok")
        XCTAssertEqual(s.events.count, 2)
        XCTAssertEqual(s.podCIDR, "10.244.0.0/24")
        XCTAssertEqual(s.podCIDRFile, "/tmp/myc/n1/podcidr")
        XCTAssertEqual(s.members.map(\.isAlive), [true, false])
        XCTAssertEqual(s.members[1], MemberInfo(id: "node-1k2m3n4p5q6r7s8t9v0w1x2y3z4a5", status: "suspect", roles: "[member]",
                                                addresses: [], sclerotium: false, cpus: 0, key: "0c1d:2e3f:4a5b:6c7d",
                                                expiresInSeconds: -12, trust: 250_000, jailed: true, approvedSclerotium: false))
        XCTAssertEqual(s.votes.map(\.localLatencyMilliseconds), [-1, 17.25])
        XCTAssertEqual(s.votes.map(\.state), ["open", "decided yes"])
        XCTAssertEqual(s.votes[1].localMessagesSent, 6)
    }

    func testUnknownFieldsAreIgnored() throws {
        var object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(APIJSON.encode(Self.status))) as? [String: Any])
        object["dashboard_hint"] = ["nested": [1, 2, 3]]
        var members = try XCTUnwrap(object["members"] as? [[String: Any]])
        members[0]["gpu"] = "none"
        object["members"] = members
        let bytes = Array(try JSONSerialization.data(withJSONObject: object))
        XCTAssertEqual(try APIJSON.decode(StatusResponse.self, from: bytes), Self.status)
        XCTAssertEqual(try APIJSON.decode(ActionResponse.self, from: Array(#"{"result":"ok","took_ms":3}"#.utf8)), ActionResponse(result: "ok"))
    }

    func testAnErrorWithoutACodeDecodes() throws {
        let e = try APIJSON.decode(APIErrorResponse.self, from: Array(#"{"error" : "not a member"}"#.utf8))
        XCTAssertEqual(e, APIErrorResponse(error: "not a member", code: .unspecified))
    }

    func testMissingRequiredFieldIsAnError() {
        XCTAssertThrowsError(try APIJSON.decode(StatusResponse.self, from: Array(#"{"network":"net-a"}"#.utf8)))
    }

    func testRoutes() {
        let all: [APIRoute] = [.status, .spore, .sporeExport, .leave, .failureVote(node: "node-x"), .metrics, .backup]
        for r in all { XCTAssertEqual(APIRoute(method: r.method, target: r.path), r) }
        XCTAssertEqual(APIRoute.failureVote(node: "node-x").path, "/v1/vote/failure?node=node-x")
        XCTAssertEqual(APIRoute.leave.method, "POST")
        XCTAssertNil(APIRoute(method: "GET", target: "/v1/leave"))
        XCTAssertNil(APIRoute(method: "GET", target: "/v1/nothing"))
    }

    func testClientSaysWhenNoAgentAnswers() async throws {
        let socket = NSTemporaryDirectory() + "myc-api-\(UUID().uuidString.prefix(8)).sock"
        do {
            _ = try await AgentClient(socket: socket).status()
            XCTFail("a status from a socket nobody listens on")
        } catch let e as AgentClientError {
            XCTAssertEqual(e.code, .unreachable)
            XCTAssertTrue(e.description.contains("no agent answers at \(socket)"), e.description)
        }
    }
}
