import Foundation
import MyceliumCore
import MyceliumVote

/// `mycelium-bench vote [--rounds N] [--sizes 4,10,31,100] [--seed S]`
///
/// Round latency and messages per round of the commit-reveal vote, in the deterministic simulator,
/// for LAN-like (0.2–1 ms one-way) and WAN-like (10–150 ms, 5% spikes) delays. Each size runs with
/// no Byzantine voters and with f = ⌊(n−1)/3⌋ drawn from all attack behaviours. Honest voters run
/// the real state machine with real Ed25519, so the CPU column is the true signing/verification
/// cost of a round (all n voters in one process, divided by n).
///
/// Latency is simulated time from opening the round to acceptance on an on-time honest voter.
/// The "floor" is two mean one-way delays (commit, then reveal): what any two-phase protocol needs.
/// The fast path waits for the *slowest* commitment, so the ratio to the floor grows with n. The goal from ARCHITECTURE.md is < 50 ms at LAN latency for 10 voters;
/// CometBFT's ~4 s p50 at 175 validators is quoted, not re-measured (no CometBFT on this machine).
/// Loopback with real agents comes with the node agent.
func runVoteBench(_ args: [String]) async throws {
    func option(_ name: String) -> String? {
        guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
        return args[i + 1]
    }
    let rounds = option("--rounds").flatMap(Int.init) ?? 5
    let seed = option("--seed").flatMap(UInt64.init) ?? 1
    let sizes = option("--sizes").map { $0.split(separator: ",").compactMap { Int($0) } } ?? [4, 10, 31, 100]
    print("vote benchmark: \(rounds) rounds per cell, seed \(seed), on \(machineLine())")
    print("latency = simulated ms from open to acceptance (median over rounds of the per-round median on on-time honest voters)")
    print(String(repeating: "-", count: 118))
    print("profile  n    byz  latency p50   max      floor   ratio  msgs/round  KiB/round  accepted  slashed  CPU/node/round  wall")
    var lan10: Double?
    for profile in VoteNetworkProfile.allCases {
        let tick = Double(VoteNetworkProfile.microsecondsPerTick) / 1000
        let floor = 2 * profile.meanDelayMilliseconds
        for n in sizes {
            for byzantine in [0, (n - 1) / 3] {
                // One fresh world per round, so slashed attackers are back in every round measured.
                var reports: [VoteSimReport] = []
                let start = now()
                for k in 0..<rounds {
                    var o = VoteSimOptions(seed: seed &+ UInt64(n * 1000 + k), voters: n, byzantine: byzantine, slowHonest: 0,
                                           rounds: 1, profile: profile)
                    o.honestDisagreement = false
                    reports.append(runVoteSimulation(o))
                }
                let wall = now() - start
                let rs = reports.flatMap(\.rounds)
                let lat = rs.compactMap(\.medianLatencyTicks).map { Double($0) * tick }
                let maxLat = rs.compactMap(\.maxLatencyTicks).map { Double($0) * tick }.max() ?? .nan
                let p50 = median(lat)
                let msgs = Double(rs.reduce(0) { $0 + $1.messages }) / Double(max(rs.count, 1))
                let kib = Double(rs.reduce(0) { $0 + $1.bytes }) / Double(max(rs.count, 1)) / 1024
                let acc = rs.reduce(0) { $0 + $1.honestAccepted }
                let honest = rs.reduce(0) { $0 + $1.electorate } - byzantine * rs.count
                let slashed = reports.reduce(0) { $0 + $1.slashed.count }
                let cpuPerNode = wall / Double(max(rs.count, 1)) / Double(n) * 1000
                if profile == .lan && n == 10 && byzantine == 0 { lan10 = p50 }
                let cols: [String] = [
                    profile.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0),
                    String(n).padding(toLength: 4, withPad: " ", startingAt: 0),
                    String(byzantine).padding(toLength: 4, withPad: " ", startingAt: 0),
                    (fmt(p50, 1) + " ms").padding(toLength: 13, withPad: " ", startingAt: 0),
                    (fmt(maxLat, 1) + " ms").padding(toLength: 9, withPad: " ", startingAt: 0),
                    (fmt(floor, 1) + " ms").padding(toLength: 8, withPad: " ", startingAt: 0),
                    (fmt(p50 / floor, 1) + "×").padding(toLength: 7, withPad: " ", startingAt: 0),
                    fmt(msgs).padding(toLength: 12, withPad: " ", startingAt: 0),
                    fmt(kib, 1).padding(toLength: 11, withPad: " ", startingAt: 0),
                    "\(acc)/\(honest)".padding(toLength: 10, withPad: " ", startingAt: 0),
                    String(slashed).padding(toLength: 9, withPad: " ", startingAt: 0),
                    (fmt(cpuPerNode, 2) + " ms").padding(toLength: 16, withPad: " ", startingAt: 0),
                    fmt(wall, 1) + " s",
                ]
                print(cols.joined(separator: " "))
                for r in reports where !r.passed { print("  SAFETY CHECK FAILED: \(r.summary)\n  replay: \(r.replayCommand) --trace") }
            }
        }
    }
    if let l = lan10 {
        print("goal: < 50 ms at LAN latency for 10 voters → \(fmt(l, 1)) ms (\(fmt(50 / l, 1))× under the goal); CometBFT quoted ~4 s p50 at 175 validators")
    }
}
