import Foundation

// Benchmarks whose measuring is a script next to the code it measures (namespaces, veths, shaping,
// iperf3, the peers), run from here so every benchmark has one entry point. Both need root.

/// `mycelium-bench datapath [-r ROUNDS] [-t SECONDS] [-n RR_TRIPS] [-c CPU]`
///
/// Pod-to-pod TCP throughput (iperf3, one stream) and latency (a TCP request/response ping-pong and
/// ping) through (a) our eBPF datapath, (b) Debian's reference CNI bridge plugin and (c) a direct veth
/// pair, the physical limit. Runs are interleaved and both ends pinned to one CPU; medians and the
/// ratios a/c and a/b are printed (perf/datapath/bench.sh).
func runDatapathBench(_ args: [String]) async throws {
    try runScript("perf/datapath/bench.sh", args)
}

/// `mycelium-bench podnet [-r ROUNDS] [-t SECONDS]` (root)
///
/// Pod to pod across two nodes (namespaces with their own release myceliumd, joined by a veth
/// underlay) through the routes the agents programmed, natively and in VXLAN, against host-to-host
/// TCP over the same underlay in the same run (perf/datapath/crossnode.sh).
func runPodNetBench(_ args: [String]) async throws {
    let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
    try runScript("perf/datapath/crossnode.sh", ["-b", bin] + args)
}

/// `mycelium-bench rhizomorph [ROUNDS]` (env SKIP_SHAPED=1, SKIP_ZC=1)
///
/// Over three paths shaped 200/400/800 Mbit/s between two namespaces: Rhizomorph's aggregate against
/// the sum of each path's single-TCP throughput, the best single path, and Linux MPTCP over the same
/// paths; on loopback, one path, against one plain TCP stream (the CPU cost of chunking and
/// AEAD); and MSG_ZEROCOPY against copying. Interleaved rounds, medians, ratios
/// (CSources/CRhizomorph/tests/bench.sh).
func runRhizomorphBench(_ args: [String]) async throws {
    try runScript("CSources/CRhizomorph/tests/bench.sh", args)
}

func runScript(_ relative: String, _ args: [String]) throws {
    let script = try repositoryRoot(containing: relative) + "/" + relative
    print("\(relative) on \(machineLine())")
    // The script prints its own table as it goes; pass it through unchanged.
    let quoted = ([script] + args).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
    guard let f = popen(quoted + " 2>&1 </dev/null", "r") else { throw BenchError("cannot run \(script)") }
    var line = [CChar](repeating: 0, count: 4096)
    while fgets(&line, Int32(line.count), f) != nil { print(String(cString: line), terminator: "") }
    let status = pclose(f)
    if status != 0 { throw BenchError("\(script) failed (status \(status))") }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
