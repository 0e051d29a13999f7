import MyceliumCore
import MyceliumIdentity
@testable import MyceliumVote
import XCTest

/// A small deterministic electorate: keys from fixed seeds, equal weights unless given.
struct Electorate {
    let keys: [SigningKey]
    let ids: [NodeID]
    let network: NetworkID

    init(_ n: Int, seed: UInt8 = 1) {
        keys = (0..<n).map { i in SigningKey(seed: [UInt8](repeating: seed, count: 31) + [UInt8(i)]) }
        ids = keys.map { NodeID(publicKey: $0.publicKey) }
        network = NetworkID(genesisKey: keys[0].publicKey)
    }

    func spec(sequence: UInt64 = 1, weights: [UInt64]? = nil, f: Int = -1, verifiable: Bool = false,
              commitTicks: UInt32 = 10, revealTicks: UInt32 = 10, criticality: Criticality = .failureConfirmation) throws -> RoundSpec {
        let voters = keys.indices.map { Voter(id: ids[$0], key: keys[$0].publicKey, weight: weights?[$0] ?? 100) }
        return try RoundSpec(network: network, sequence: sequence, criticality: criticality,
                             subject: RoundSubject.failure(of: ids[0], incarnation: 1), verifiableTruth: verifiable,
                             assumedFaults: f >= 0 ? f : (keys.count - 1) / 3, commitTicks: commitTicks, revealTicks: revealTicks,
                             voters: voters)
    }

    func instances() -> [VoteInstance] { keys.map { VoteInstance(key: $0, retentionTicks: 50) } }
}

extension Array where Element == VoteEffect {
    var broadcasts: [VoteMessage] { compactMap { if case let .broadcast(m) = $0 { return m }; return nil } }
    var evidence: [Evidence] { compactMap { if case let .evidence(e) = $0 { return e }; return nil } }
    var outcomes: [RoundOutcome] { compactMap { if case let .decided(_, o) = $0 { return o }; return nil } }
}

/// Delivers every broadcast to every other instance (and every `.send` to its target), breadth-first,
/// until quiet. Returns all effects per node.
@discardableResult
func flood(_ nodes: inout [VoteInstance], _ initial: [(from: Int, effects: [VoteEffect])],
           drop: (Int, Int, VoteMessage) -> Bool = { _, _, _ in false }) -> [[VoteEffect]] {
    var all = Array(repeating: [VoteEffect](), count: nodes.count)
    var queue: [(from: Int, to: Int?, VoteMessage)] = []
    func enqueue(_ from: Int, _ effects: [VoteEffect]) {
        for e in effects {
            switch e {
            case let .broadcast(m): queue.append((from, nil, m))
            case let .send(id, m): queue.append((from, nodes.firstIndex { $0.id == id }, m))
            default: break
            }
        }
    }
    for (from, effects) in initial {
        all[from] += effects
        enqueue(from, effects)
    }
    var i = 0
    while i < queue.count {
        let (from, target, m) = queue[i]; i += 1
        for to in nodes.indices where to != from && (target == nil || target == to) && !drop(from, to, m) {
            if let effects = try? nodes[to].step(m) {
                all[to] += effects
                enqueue(to, effects)
            }
        }
    }
    return all
}

func XCTAssertVoteError(_ expression: @autoclosure () throws -> Any, _ matches: (VoteError.Code) -> Bool,
                        file: StaticString = #filePath, line: UInt = #line) {
    do {
        _ = try expression()
        XCTFail("expected a VoteError", file: file, line: line)
    } catch let e as VoteError {
        XCTAssertTrue(matches(e.code), "unexpected error: \(e)", file: file, line: line)
    } catch {
        XCTFail("unexpected error type: \(error)", file: file, line: line)
    }
}

/// Ticks every node `count` times, flooding what each tick emits. Appends effects to `all`.
func tickAndFlood(_ nodes: inout [VoteInstance], _ count: Int, into all: inout [[VoteEffect]],
                  only: Set<Int>? = nil, drop: (Int, Int, VoteMessage) -> Bool = { _, _, _ in false }) {
    for _ in 0..<count {
        var round: [(from: Int, effects: [VoteEffect])] = []
        for i in nodes.indices where only?.contains(i) ?? true { round.append((i, nodes[i].tick())) }
        let r = flood(&nodes, round, drop: drop)
        for i in nodes.indices { all[i] += r[i] }
    }
}
