import MyceliumControl
import MyceliumIdentity
import XCTest

/// Where a follower sends a command to be proposed: the leader it hears from, else the sclerotia in turn.
final class ProposalRouteTests: XCTestCase {
    let sclerotia = (1...3).map { MyceliumIdentity.NodeID(publicKey: SigningKey(seed: Array(repeating: UInt8($0), count: 32)).publicKey) }

    func testTheLeaderWhileHeardFromAndTheSclerotiaInTurnOnceItIsSilent() {
        let me = sclerotia[0].compact, leader = sclerotia[1].compact
        XCTAssertEqual(proposalRoute(me: 99, leader: leader, silentTicks: 3, patience: 20, sclerotia: sclerotia, attempt: 1), leader)
        // Silent leader (a learner cut off and removed): every sclerotium but itself, in turn.
        let tried = (0..<12).compactMap { proposalRoute(me: me, leader: leader, silentTicks: 20, patience: 20, sclerotia: sclerotia, attempt: $0) }
        XCTAssertEqual(Set(tried), Set(sclerotia.dropFirst().map(\.compact)))
        XCTAssertFalse(tried.contains(me))
        // Submissions made in a fixed rhythm (every 21st is the refresh that brings a node back)
        // still reach every sclerotium.
        let everyTwentyFirst = (0..<12).compactMap {
            proposalRoute(me: 99, leader: leader, silentTicks: 27 + 100 * $0, patience: 20, sclerotia: sclerotia, attempt: 11 + 21 * $0)
        }
        XCTAssertEqual(Set(everyTwentyFirst), Set(sclerotia.map(\.compact)))
        // No leader known: the sclerotia as well; nobody at all: nowhere.
        XCTAssertNotNil(proposalRoute(me: 99, leader: 0, silentTicks: 0, patience: 20, sclerotia: sclerotia, attempt: 0))
        XCTAssertNil(proposalRoute(me: 99, leader: 0, silentTicks: 50, patience: 20, sclerotia: [], attempt: 0))
        XCTAssertEqual(proposalRoute(me: 99, leader: leader, silentTicks: 50, patience: 20, sclerotia: [], attempt: 0), leader)
    }
}
