import Foundation

/// `mycelium-bench datapath [-r ROUNDS] [-t SECONDS] [-n RR_TRIPS] [-c CPU]`
///
/// Pod-to-pod TCP throughput (iperf3, one stream) and latency (a TCP request/response ping-pong and
/// ping) through (a) our eBPF datapath, (b) Debian's reference CNI bridge plugin and (c) a direct veth
/// pair, the physical limit. Runs are interleaved and both ends pinned to one CPU; medians and the
/// ratios a/c and a/b are printed. The measuring itself is perf/datapath/bench.sh (namespaces, veths,
/// iperf3, the reference plugin), run from here so the benchmark has one entry point. Needs root.
func runDatapathBench(_ args: [String]) async throws {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("perf/datapath/bench.sh").path) && dir.path != "/" {
        dir = dir.deletingLastPathComponent()
    }
    let script = dir.appendingPathComponent("perf/datapath/bench.sh").path
    guard FileManager.default.fileExists(atPath: script) else {
        print("datapath: perf/datapath/bench.sh not found above \(CommandLine.arguments[0]); run from the source tree")
        return
    }
    print("datapath benchmark on \(machineLine())")
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
