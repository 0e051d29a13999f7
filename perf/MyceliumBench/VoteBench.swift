import Foundation
import MyceliumAgent
import MyceliumAPI
import MyceliumCore
import MyceliumSim
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
/// `--agents N` (default 10; 0 skips) then runs the same question through N real agents on loopback:
/// see `runLoopbackVoteBench`.
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
    let agents = option("--agents").flatMap(Int.init) ?? 10
    if agents > 0 { try await runLoopbackVoteBench(agents: agents, rounds: max(rounds, 10)) }
}

/// N real agents (all founders, so every one of them votes) on loopback. Each round asks the network
/// whether a live member has failed (`POST /v1/vote/failure`); every voter checks the member with a
/// direct probe over its authenticated channel and the round is decided "no". Latency is measured
/// on each node from applying the round's opening Raft entry to its own decision (the Raft commit of
/// the opening is not included: that is Raft's latency, measured by `formation`); messages are
/// the vote frames all nodes sent for the round. The peer for comparison is the simulator's LAN row
/// above (same state machine, no sockets, no TLS, no scheduling).
func runLoopbackVoteBench(agents n: Int, rounds: Int) async throws {
    let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
    guard FileManager.default.isExecutableFile(atPath: bin + "/myceliumd") else {
        print("vote (loopback): \(bin)/myceliumd not found; run 'swift build -c release' first")
        return
    }
    print("vote over loopback: \(n) real agents (TLS 1.3 channels, 100-ms ticks), \(rounds) failure questions about live members")
    let net = try LoopbackNetwork(n: n, bin: bin, extraConfig: "handoff_members = \(n)\nvote_phase_ms = 1000\n")
    defer { net.stop() }
    try net.startAll()
    try await net.waitFormed(timeout: 180)
    var latencies: [Double] = [], messages: [Double] = [], outcomes: [String] = []
    var lastAsked: [String: Double] = [:]
    for r in 1...rounds {
        guard let v = await net.status(1) else { throw AgentError("agent 1 has no status") }
        let leader = v.leader
        let candidates = v.members.map(\.id).filter { $0 != leader }
        let target = candidates[r % candidates.count]
        // The leader opens at most one round per member every 3 s (a flood of reports must not open a
        // flood of rounds); with n − 1 candidates, round n asks about round 1's member again — pace it.
        if let last = lastAsked[target], now() - last < 3.5 { try await Task.sleep(nanoseconds: UInt64((3.5 - (now() - last)) * 1e9)) }
        lastAsked[target] = now()
        let before = Set(v.votes.map(\.sequence))
        do { _ = try await net.client(1 + r % n).requestFailureVote(node: target) } catch {
            throw AgentError("vote request refused: \(error)")
        }
        // Wait until every voter has decided the new round locally.
        let start = now()
        var done = false
        while !done && now() - start < 30 {
            try await Task.sleep(nanoseconds: 50_000_000)
            var lat: [Double] = [], sent = 0, states: Set<String> = [], seen = 0
            for i in 1...n {
                guard let s = await net.status(i),
                      let round = s.votes.first(where: { !before.contains($0.sequence) && $0.node == target })
                else { continue }
                seen += 1
                states.insert(round.state)
                if round.localLatencyMilliseconds >= 0 { lat.append(round.localLatencyMilliseconds) }
                sent += round.localMessagesSent
            }
            // Every voter (all but the subject) decided, and the decision is committed everywhere.
            if seen == n && lat.count >= n - 1 && states.count == 1 && !states.contains("open") {
                latencies.append(median(lat)); messages.append(Double(sent)); outcomes.append(states.first!)
                done = true
            }
        }
        if !done { print("  round \(r): not decided everywhere within 30 s") }
    }
    guard !latencies.isEmpty else { return }
    print("  rounds decided: \(latencies.count)/\(rounds), outcomes: \(Dictionary(grouping: outcomes, by: { $0 }).mapValues(\.count))")
    print("  latency, open → decision on each voter: median \(fmt(median(latencies), 1)) ms, worst round \(fmt(latencies.max()!, 1)) ms")
    print("  vote frames per round (all nodes): median \(fmt(median(messages)))  (3 phases × n × (n−1) = \(3 * n * (n - 1)) at most)")
    print("  goal: < 50 ms for 10 voters at LAN latency → \(fmt(median(latencies) / 50, 2))× the goal")
}
