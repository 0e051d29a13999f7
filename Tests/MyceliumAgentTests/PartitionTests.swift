import Foundation
import MyceliumAPI
import XCTest

/// Agents in separate network namespaces, joined by a bridge in a hub namespace. Cutting a node's
/// link partitions it. Needs root (CI is root); fails loudly without it.
final class PartitionTests: XCTestCase {
    func sh(_ cmd: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", cmd]
        let err = Pipe()
        p.standardError = err
        try p.run()
        p.waitUntilExit()
        if p.terminationStatus != 0 {
            throw NSError(domain: "'\(cmd)' failed: " + String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self), code: 1)
        }
    }

    func testMinorityCannotCommitAndHealsToOneSpore() async throws {
        XCTAssertEqual(getuid(), 0, "network namespaces need root (CI runs as root)")
        let tag = String(UUID().uuidString.prefix(6)).lowercased()
        let hub = "myc\(tag)h"
        let names = ["n1", "n2", "n3", "n4", "n5"]
        func ns(_ n: String) -> String { "myc\(tag)\(n)" }
        func ip(_ n: String) -> String { "10.231.\(Int(tag.utf8.reduce(0) { ($0 + Int($1)) % 200 })).\(Int(n.dropFirst())! + 10)" }
        let c = try AgentCluster()
        // The agents first: a namespace whose name is deleted lives on while a process runs in it.
        // Deleting the hub namespace removes the veth pairs with it.
        defer {
            c.shutdown()
            for n in names { try? sh("ip netns del \(ns(n))") }
            try? sh("ip netns del \(hub)")
        }
        try sh("ip netns add \(hub) && ip -n \(hub) link add br0 type bridge && ip -n \(hub) link set br0 up && ip -n \(hub) link set lo up")
        for n in names {
            try sh("ip netns add \(ns(n)) && ip -n \(ns(n)) link set lo up")
            try sh("ip link add v\(tag)\(n) netns \(hub) type veth peer name eth0 netns \(ns(n))")
            try sh("ip -n \(hub) link set v\(tag)\(n) master br0 up && ip -n \(ns(n)) addr add \(ip(n))/24 dev eth0 && ip -n \(ns(n)) link set eth0 up")
        }

        c.listenHost = { ip($0) }
        c.netns = { ns($0) }
        try c.createNetwork()
        for n in names.dropFirst() { try c.join(n) }
        try await c.waitUntil("5 nodes formed", nodes: names, AgentCluster.formed(5))

        // Cut off the leader and one plain member: the leader must step down (check-quorum), the
        // other side holds 2 of the 3 voters and must elect a leader and keep committing, and the
        // cut-off side must not commit anything.
        let view = await c.status("n1")!
        let leader = view.leader, sclerotia = Set(view.sclerotia)
        var byID: [String: String] = [:]
        for n in names { byID[await c.status(n)?.node ?? ""] = n }
        let leaderNode = try XCTUnwrap(byID[leader])
        let plain = try XCTUnwrap(names.first { !sclerotia.contains(key(byID, $0)) })
        let minority = [leaderNode, plain], majority = names.filter { !minority.contains($0) }
        for n in minority { try sh("ip -n \(hub) link set v\(tag)\(n) down") }
        // Whatever was already acknowledged before the cut may still be applied: measure the cut-off
        // side once its epochs have held still for a second (polled, bounded by the deadline).
        var before: [Int] = [], stillSince = Date()
        try await waitUntil("the cut-off side settles", timeout: 20, poll: 0.1) {
            let now = await asyncMap(minority) { await c.status($0).map(epochIndex) ?? 0 }
            if now != before { before = now; stillSince = Date() }
            return Date().timeIntervalSince(stillSince) >= 1
        }
        try await c.waitUntil("the majority elects a new leader and commits", nodes: majority) { vs in
            Set(vs.map { $0.leader }).count == 1 && vs.allSatisfy { $0.leader != leader && $0.leader != "none" }
                && vs.allSatisfy { epochIndex($0) > (before.max() ?? 0) + 2 }
        }
        try await c.waitUntil("the old leader steps down", nodes: [leaderNode]) { vs in vs[0].role != "leader" }
        let during = await asyncMap(minority) { await c.status($0).map(epochIndex) ?? 0 }
        XCTAssertEqual(during, before, "the cut-off side applied nothing new while partitioned")
        let majorityEpoch = await c.status(majority[0]).map(epochIndex) ?? 0

        // Heal: everyone converges on one primary spore, the majority's.
        for n in minority { try sh("ip -n \(hub) link set v\(tag)\(n) up") }
        try await c.waitUntil("one authoritative spore after healing", nodes: names, timeout: 60) { vs in
            Set(vs.map { $0.epoch }).count == 1 && Set(vs.map { $0.leader }).count == 1
                && vs.allSatisfy { epochIndex($0) >= majorityEpoch }
        }
        for n in names { c.terminate(n) }
    }
}

func key(_ byID: [String: String], _ name: String) -> String { byID.first { $0.value == name }?.key ?? "" }

func asyncMap<T, U>(_ xs: [T], _ f: (T) async -> U) async -> [U] {
    var out: [U] = []
    for x in xs { out.append(await f(x)) }
    return out
}
