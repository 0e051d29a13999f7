import MyceliumCore
import XCTest
@testable import MyceliumMembership

/// N detectors in one process; messages arrive on the next tick unless the link is cut.
struct DetectorWorld {
    var nodes: [Int: FailureDetector<Int>] = [:]
    var inflight: [(from: Int, to: Int, ProbeMessage<Int>)] = []
    var dead: Set<Int> = []
    var cut: Set<[Int]> = []   // [a, b] drops a→b
    var events: [(node: Int, DetectorEffect<Int>)] = []
    var rng = SeededRandom(seed: 1)

    init(n: Int, settings: FailureDetectorSettings = FailureDetectorSettings()) {
        for i in 0..<n { nodes[i] = FailureDetector(me: i, peers: Array(0..<n), settings: settings) }
    }

    mutating func run(ticks: Int) {
        for _ in 0..<ticks {
            let deliver = inflight
            inflight = []
            for (from, to, m) in deliver where !dead.contains(to) && !cut.contains([from, to]) {
                handle(to, nodes[to]!.receive(m, from: from))
            }
            for id in nodes.keys.sorted() where !dead.contains(id) {
                handle(id, nodes[id]!.tick(using: &rng))
            }
        }
    }

    mutating func handle(_ id: Int, _ effects: [DetectorEffect<Int>]) {
        for e in effects {
            if case let .send(to, m) = e { inflight.append((id, to, m)) } else { events.append((id, e)) }
        }
    }

    func candidates(of target: Int) -> Set<Int> {
        Set(events.filter { $0.1 == .confirmFailure(target) }.map(\.node))
    }
}

final class FailureDetectorTests: XCTestCase {
    func testHealthyNetworkRaisesNoSuspicion() {
        var w = DetectorWorld(n: 8)
        w.run(ticks: 500)
        XCTAssertTrue(w.events.isEmpty, "\(w.events)")
    }

    func testDeadNodeBecomesCandidateEverywhereAndNothingElseDoes() {
        var w = DetectorWorld(n: 8)
        w.run(ticks: 20)
        w.dead = [3]
        w.run(ticks: 200)
        XCTAssertEqual(w.candidates(of: 3), Set([0, 1, 2, 4, 5, 6, 7]))
        for other in [0, 1, 2, 4, 5, 6, 7] { XCTAssertTrue(w.candidates(of: other).isEmpty) }
        // Suspicion comes before candidacy for every observer.
        for n in [0, 1, 2] {
            let s = w.events.firstIndex { $0.node == n && $0.1 == .suspect(3) }
            let c = w.events.firstIndex { $0.node == n && $0.1 == .confirmFailure(3) }
            XCTAssertNotNil(s); XCTAssertNotNil(c)
            if let s, let c { XCTAssertLessThan(s, c) }
        }
    }

    func testIndirectProbesMaskABrokenDirectPath() {
        var w = DetectorWorld(n: 6)
        // 0 cannot reach 5 directly in either direction; everyone else can.
        w.cut = [[0, 5], [5, 0]]
        w.run(ticks: 400)
        XCTAssertTrue(w.events.filter { $0.node == 0 }.allSatisfy { $0.1 != .suspect(5) && $0.1 != .confirmFailure(5) },
                      "ping-req through others keeps 5 alive for 0: \(w.events)")
    }

    func testASuspectThatAnswersRecovers() {
        var s = FailureDetectorSettings()
        s.suspicionTimeout = 1000
        var w = DetectorWorld(n: 4, settings: s)
        w.dead = [2]
        w.run(ticks: 60)
        XCTAssertFalse(w.events.filter { $0.1 == .suspect(2) }.isEmpty)
        w.dead = []
        w.run(ticks: 60)
        XCTAssertFalse(w.events.filter { $0.1 == .recovered(2) }.isEmpty)
        for i in [0, 1, 3] { XCTAssertEqual(w.nodes[i]!.health[2], .alive) }
    }

    func testDeterministicForASeed() {
        func trace(_ seed: UInt64) -> String {
            var w = DetectorWorld(n: 5)
            w.rng = SeededRandom(seed: seed)
            w.dead = [1]
            w.run(ticks: 100)
            return "\(w.events.map { "\($0.node):\($0.1)" })"
        }
        XCTAssertEqual(trace(9), trace(9))
    }
}
