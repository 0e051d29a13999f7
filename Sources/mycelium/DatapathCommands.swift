import ArgumentParser
import Foundation
import MyceliumCNI

struct DatapathCommandGroup: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "datapath", abstract: "Inspect this node's eBPF datapath (pinned under /sys/fs/bpf/mycelium).",
        subcommands: [Stats.self])

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "stats", abstract: "Per-endpoint packets, bytes and drops by reason.",
            discussion: """
                tx is from the pod, rx is to the pod. Drops: policy (different network identities and no policy \
                allows the pair), no-endpoint (from an interface that is not a registered endpoint), spoofed (a \
                source address that is not the pod's), malformed, fib (a remote destination with no route). \
                The "node" row counts drops that belong to no endpoint. Needs root (it reads pinned BPF maps).
                Example: mycelium datapath stats -o json
                """)
        @Option(help: "Where the datapath is pinned.") var pinDir = "/sys/fs/bpf/mycelium"
        @OptionGroup var out: OutputOptions

        static let reasons = ["policy", "no-endpoint", "spoofed", "malformed", "fib"]

        func run() throws {
            let dp = Datapath(pinDir: pinDir)
            guard dp.isLoaded else {
                throw CLIError("no datapath is loaded under \(pinDir); it is loaded by the first pod's CNI ADD (mycelium-cni)")
            }
            var rows: [(String, UInt32, MyceliumCNI.DatapathStats)] = []
            do {
                for ep in try dp.endpoints().sorted(by: { $0.ip < $1.ip }) { rows.append(("\(ep.ip)", ep.networkId, try dp.stats(ep.ip))) }
                rows.append(("node", 0, try dp.stats(IPv4Address(0))))
            } catch {
                throw CLIError("cannot read the datapath's maps: \(error)")
            }
            if out.output == .json {
                let list: [[String: Any]] = rows.map { r in
                    var drops: [String: UInt64] = [:]
                    for (i, name) in Self.reasons.enumerated() where i < r.2.drops.count { drops[name] = r.2.drops[i] }
                    return ["endpoint": r.0, "network_id": Int(r.1), "tx_packets": r.2.txPackets, "tx_bytes": r.2.txBytes,
                            "rx_packets": r.2.rxPackets, "rx_bytes": r.2.rxBytes, "drops": drops]
                }
                let data = try JSONSerialization.data(withJSONObject: ["endpoints": list], options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
                return
            }
            func col(_ s: String, _ w: Int) -> String { String(repeating: " ", count: max(0, w - s.count)) + s }
            print("endpoint         net     tx pkts     tx bytes     rx pkts     rx bytes  " + Self.reasons.map { col($0, 11) }.joined(separator: " "))
            for (name, net, s) in rows {
                let drops = Self.reasons.indices.map { col(String($0 < s.drops.count ? s.drops[$0] : 0), 11) }.joined(separator: " ")
                print(name.padding(toLength: 15, withPad: " ", startingAt: 0) + col(net == 0 ? "-" : String(net), 5)
                      + col(String(s.txPackets), 12) + col(String(s.txBytes), 13) + col(String(s.rxPackets), 12) + col(String(s.rxBytes), 13)
                      + "  " + drops)
            }
        }
    }
}
