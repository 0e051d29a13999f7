// A 3-node Raft cluster persisting through real WALs, with crashes that leave torn garbage at the tail.

#if canImport(Glibc)
import Glibc
#endif
import MyceliumCore
import MyceliumRaft
import MyceliumWAL
import XCTest

final class RaftOnWALTests: XCTestCase {
    func testClusterSurvivesCrashesWithTornTails() throws {
        var template = Array("/tmp/mycelium-raftwal-XXXXXX".utf8CString)
        let root = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { removeTree(root) }
        let ids: [NodeID] = [1, 2, 3]
        var rng = SeededRandom(seed: 11)
        var wals: [NodeID: WriteAheadLog] = [:]
        var nodes: [NodeID: Raft] = [:]
        var durableCommit: [NodeID: UInt64] = [:]
        var tornTailsRepaired = 0

        func start(_ id: NodeID) throws {
            let (wal, rec) = try WriteAheadLog.open(directory: "\(root)/n\(id)", segmentBytes: 4096)
            var state = rec.state
            if rec.truncatedTail != nil { tornTailsRepaired += 1 }
            if state == RaftStorageState() {
                state = .bootstrap(voters: ids)
                try wal.save(hardState: state.hardState, entries: state.entries)
            }
            XCTAssertGreaterThanOrEqual(state.hardState.commit, durableCommit[id] ?? 0, "commit went backwards on \(id)")
            wals[id] = wal
            nodes[id] = try Raft(config: RaftConfig(id: id), storage: state, random: &rng)
        }
        for id in ids { try start(id) }

        var queue: [Message] = []
        for round in 0..<400 {
            for id in ids where nodes[id] != nil { nodes[id]!.tick() }
            if let l = ids.first(where: { nodes[$0]?.role == .leader }) {
                _ = try? nodes[l]!.propose(Array("r\(round)".utf8))
            }
            // Persist (fsync), then send, then apply.
            for id in ids where nodes[id]?.hasReady == true {
                let rd = nodes[id]!.ready()
                try wals[id]!.save(rd)
                if let hs = rd.hardState { durableCommit[id] = max(durableCommit[id] ?? 0, hs.commit) }
                queue.append(contentsOf: rd.messages)
                nodes[id]!.advance(rd)
            }
            let batch = queue
            queue = []
            for m in batch where nodes[m.to] != nil { nodes[m.to]!.step(m) }
            // Every 50 rounds a node dies in the middle of a write: garbage at its tail, never acknowledged.
            if round % 50 == 25 {
                let victim = ids[(round / 50) % 3]
                wals[victim]!.close()
                wals[victim] = nil
                nodes[victim] = nil
                let dir = "\(root)/n\(victim)"
                let seg = dir + "/" + listDirectory(dir).filter { $0.hasPrefix("wal-") }.last!
                let fd = open(seg, O_WRONLY | O_APPEND)
                _ = [UInt8](repeating: 0xEE, count: 13).withUnsafeBytes { write(fd, $0.baseAddress, 13) }
                close(fd)
            }
            if round % 50 == 35, let down = ids.first(where: { nodes[$0] == nil }) { try start(down) }
        }
        // Let the cluster settle without proposals, then compare.
        for _ in 0..<60 {
            for id in ids where nodes[id] != nil { nodes[id]!.tick() }
            for id in ids where nodes[id]?.hasReady == true {
                let rd = nodes[id]!.ready()
                try wals[id]!.save(rd)
                queue.append(contentsOf: rd.messages)
                nodes[id]!.advance(rd)
            }
            let batch = queue
            queue = []
            for m in batch where nodes[m.to] != nil { nodes[m.to]!.step(m) }
        }
        let commit = nodes[1]!.commitIndex
        XCTAssertGreaterThan(commit, 100)
        XCTAssertGreaterThanOrEqual(tornTailsRepaired, 5)
        for id in ids {
            XCTAssertEqual(nodes[id]!.commitIndex, commit)
            for i in 1...commit { XCTAssertEqual(nodes[id]!.entry(at: i), nodes[1]!.entry(at: i)) }
        }
        // And a cold restart of everyone reads back the same committed log.
        for id in ids { wals[id]!.close() }
        for id in ids {
            let (_, rec) = try WriteAheadLog.open(directory: "\(root)/n\(id)", segmentBytes: 4096)
            XCTAssertGreaterThanOrEqual(rec.state.hardState.commit, durableCommit[id]!)
            XCTAssertEqual(rec.state.entries.first { $0.index == commit }, nodes[1]!.entry(at: commit))
        }
    }
}
