import Foundation
import MyceliumAPI
import XCTest

/// The Byzantine-tolerant vote inside real agents, with one agent that lies in every vote and keeps
/// accusing live members (the test-only `myceliumd-byzantine`, Tests/ByzantineAgent). Six founders, so that both questions can be put to a
/// vote that tolerates one liar: a failure (5 voters besides the dead node) and a sclerotium
/// admission (4 voters besides the candidate, after one of six failed).
final class VoteIntegrationTests: XCTestCase {
    let names = (1...6).map { "n\($0)" }
    let liar = "n6"

    func votes(_ v: StatusResponse) -> [VoteRoundInfo] { v.votes }

    func testOneLyingAgentCannotKillALiveNodeNorBlockAFailureOrAnAdmission() async throws {
        let c = try AgentCluster()
        c.extraConfig = { _ in "handoff_members = 6\nvote_phase_ms = 1500\n" }
        c.daemon = { [liar] n in n == liar ? "myceliumd-byzantine" : "myceliumd" }
        try c.createNetwork()
        for n in names.dropFirst() { try c.join(n) }
        try await c.waitUntil("6 nodes formed", nodes: names, AgentCluster.formed(6))
        let liarID = await c.status(liar)!.node

        // 1. The liar accuses live members; the others check for themselves and vote no.
        try await c.waitUntil("a false accusation voted down", nodes: ["n1"], timeout: 60) { vs in
            self.votes(vs[0]).contains { $0.kind == "failure confirmation" && $0.state == "decided no" }
        }
        let v1 = await c.status("n1")!
        XCTAssertEqual(members(v1).filter { $0.status == "alive" }.count, 6, "nobody was recorded failed on a lie: \(v1.events)")

        // 2. A real failure of a sclerotium is confirmed by the vote despite the liar's "no".
        let leader = v1.leader
        let sclerotia = Set(v1.sclerotia)
        var victim = ""
        for n in names { let id = await c.status(n)!.node; if sclerotia.contains(id) && id != leader && id != liarID { victim = n } }
        XCTAssertFalse(victim.isEmpty, "a sclerotium that is neither the leader nor the liar")
        let victimID = await c.status(victim)!.node
        c.kill9(victim)
        let rest = names.filter { $0 != victim }
        try await c.waitUntil("the failure confirmed by a vote", nodes: rest, timeout: 60) { vs in
            vs.allSatisfy { v in
                members(v).contains { $0.id == victimID && $0.status == "failed" }
                    && self.votes(v).contains { $0.kind == "failure confirmation" && $0.node == victimID && $0.state == "decided yes" }
            }
        }

        // 3. Its replacement is admitted as a sclerotium by a vote, again despite the liar's "no".
        try await c.waitUntil("a replacement sclerotium admitted by a vote", nodes: rest, timeout: 60) { vs in
            vs.allSatisfy { v in
                let scl = v.sclerotia
                return scl.count == 3 && !scl.contains(victimID) && v.voters.count == 3
                    && self.votes(v).contains { $0.kind == "sclerotium admission" && $0.state == "decided yes" }
                    && members(v).contains { scl.contains($0.id) && $0.approvedSclerotium }
            }
        }
        let end = await c.status("n1")!
        XCTAssertEqual(members(end).filter { $0.status == "alive" }.count, 5, "only the killed node failed: \(end.events)")
    }
}
