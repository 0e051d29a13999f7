// `mycelium-bench raft-sim`: the Raft engine's ceiling. A 3-node cluster runs in one process with messages
// delivered instantly and a free disk, the leader proposing in batches. It reports committed entries per
// CPU-second and heap allocations per committed entry. The comparison with etcd over a real network belongs to
// the node-agent benchmark.

#if canImport(Glibc)
import Glibc
#endif
import MyceliumCore
import MyceliumRaft
#if canImport(CMallocCounter)
import CMallocCounter
#endif

func runRaftSimBench(arguments: [String]) throws {
    var entries = 1_000_000
    var batch = 256
    var payload = 128
    var i = 0
    while i < arguments.count {
        let a = arguments[i]
        let v = i + 1 < arguments.count ? Int(arguments[i + 1]) : nil
        switch a {
        case "--entries": entries = v ?? entries; i += 1
        case "--batch": batch = v ?? batch; i += 1
        case "--payload": payload = v ?? payload; i += 1
        case "-h", "--help":
            print("""
                usage: mycelium-bench raft-sim [--entries N] [--batch B] [--payload BYTES]
                  3-node Raft cluster in one process (instant network, free disk); the leader proposes B entries
                  of BYTES each per round. Prints committed entries per CPU-second and allocations per entry.
                  Defaults: --entries 1000000 --batch 256 --payload 128. Build with -c release.
                """)
            return
        default: break
        }
        i += 1
    }

    var cluster = try BenchCluster(size: 3)
    cluster.electLeader()
    let data = [UInt8](repeating: 0xAB, count: payload)
    // Warm up (first growth of arrays, inflight windows) before measuring.
    cluster.run(entries: 5_000, batch: batch, data: data)

    let allocations0 = allocationCount()
    let cpu0 = cpuSeconds()
    let committed = cluster.run(entries: entries, batch: batch, data: data)
    let cpu = cpuSeconds() - cpu0
    let allocations = allocationCount().map { $0 - allocations0! }

    print("raft-sim: 3 nodes, batch \(batch), payload \(payload) B, \(committed) entries committed on the leader")
    print("  committed entries per CPU-second: \(Int(Double(committed) / cpu))")
    print("  CPU time: \(format3(cpu)) s (all three nodes and the harness, one thread)")
    if let a = allocations {
        print("  allocations per entry: \(format3(Double(a) / Double(committed)))")
    } else {
        print("  allocations per entry: unavailable (link CMallocCounter into this executable to count them)")
    }
}

private func format3(_ d: Double) -> String {
    let x = (d * 1000).rounded() / 1000
    return "\(x)"
}

private func cpuSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

private func allocationCount() -> UInt64? {
    #if canImport(CMallocCounter)
    return mmc_is_active() != 0 || mmc_allocations() > 0 ? mmc_allocations() : nil
    #else
    return nil
    #endif
}

/// Three Raft nodes wired together with an instant, in-order network and a disk that costs nothing.
private struct BenchCluster {
    var nodes: [Raft]
    var queue: [Message] = []
    var head = 0

    init(size: Int) throws {
        var rng = SeededRandom(seed: 1)
        let ids = (1...UInt64(size)).map { $0 }
        nodes = try ids.map { id in
            var cfg = RaftConfig(id: id)
            cfg.maxInflightMessages = 64
            return try Raft(config: cfg, storage: .bootstrap(voters: ids), random: &rng)
        }
    }

    var leaderIndex: Int? { nodes.firstIndex { $0.role == .leader } }

    mutating func electLeader() {
        while leaderIndex == nil {
            for i in nodes.indices { nodes[i].tick() }
            settle()
        }
    }

    /// Proposes until `entries` more entries are committed and applied on the leader; returns how many were.
    @discardableResult
    mutating func run(entries: Int, batch: Int, data: [UInt8]) -> Int {
        var committed = 0
        var rounds = 0
        while committed < entries {
            guard let l = leaderIndex else { electLeader(); continue }
            for _ in 0..<batch { _ = try? nodes[l].propose(data) }
            committed += settle(countingOn: l)
            rounds += 1
            if rounds % 16 == 0 { for i in nodes.indices { nodes[i].tick() } }
        }
        return committed
    }

    /// Runs Ready/Advance and delivers messages until nothing moves. Returns entries applied on `counting`.
    @discardableResult
    mutating func settle(countingOn counting: Int = -1) -> Int {
        var applied = 0
        var progress = true
        while progress {
            progress = false
            for i in nodes.indices where nodes[i].hasReady {
                let rd = nodes[i].ready()
                // Persist: free. Send: queue. Apply: count.
                queue.append(contentsOf: rd.messages)
                if i == counting { applied += rd.committedEntries.count }
                nodes[i].advance(rd)
                progress = true
            }
            while head < queue.count {
                let m = queue[head]
                head += 1
                nodes[Int(m.to - 1)].step(m)
                progress = true
            }
            queue.removeAll(keepingCapacity: true)
            head = 0
        }
        return applied
    }
}
