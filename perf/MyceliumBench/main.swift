// mycelium-bench: every benchmark compares against a peer or a physical limit in the same run and
// prints the ratio. Run in release: swift run -c release mycelium-bench <scenario>.
import Foundation

let scenarios: [(name: String, about: String, run: ([String]) async throws -> Void)] = [
    ("identity", "Ed25519 sign/verify (libsodium vs openssl speed) and full mutual TLS+membership handshakes/s", runIdentityBench),
    ("raft-sim", "the Raft engine's ceiling: committed entries per CPU-second and allocations per entry, in the simulator",
     { try runRaftSimBench(arguments: $0) }),
    ("formation", "time for 3, 10 and 50 real agents on loopback to agree on one primary spore", runFormationBench),
    ("vote", "commit-reveal round latency and messages per round in the simulator", runVoteBench),
    ("ram", "dirty-page tracking cost, replication throughput and checkpoint pauses against memcpy and TCP", runRAMBench),
    ("etcd", "our Raft group next to etcd 3.4: writes/s and p50/p99 at 1/16/64 clients, leader failover, memory", runEtcdBench),
    ("rhizomorph", "striped multi-path transport: aggregate vs the sum of paths, the best path and MPTCP; loopback vs plain TCP", runRhizomorphBench),
    ("vm", "a real guest under libvirt: checkpoint pauses against stop+device state+cont; planned migration against libvirt's live migration; failover phases and RPO (root)", runVMBench),
    ("schedule", "the service scheduler: 10,000 services on 1,000 nodes against the 1 s goal and Nomad's published C2M rate; re-plan after 10% of nodes fail",
     runScheduleBench),
    ("services", "process services on real agents: 1,000 instances to running against spawning as many; failover of a killed node's instance (root)", runServicesBench),
    ("datapath", "pod-to-pod throughput and latency: our eBPF datapath vs the CNI bridge plugin vs a bare veth pair", runDatapathBench),
    ("podnet", "pod to pod across two agents' nodes, native and VXLAN, against host-to-host TCP over the same underlay (root)", runPodNetBench),
    ("storage", "volumes on Ceph: 4K/4M I/O through our RBD layer vs raw librbd (fio) vs a local file; fenced re-attach; data leaving a distrusted host per GiB; ram and vm side by side (root)",
     runStorageBench),
]

let args = Array(CommandLine.arguments.dropFirst())
guard let name = args.first, let scenario = scenarios.first(where: { $0.name == name }) else {
    print("usage: mycelium-bench <scenario> [options]\n\nscenarios:")
    for s in scenarios { print("  \(s.name.padding(toLength: 12, withPad: " ", startingAt: 0)) \(s.about)") }
    print("\nRun in release mode: swift run -c release mycelium-bench identity")
    exit(args.isEmpty || args.first == "--help" || args.first == "-h" ? 0 : 2)
}
do {
    try await scenario.run(Array(args.dropFirst()))
} catch {
    print("mycelium-bench \(name): \(error)")
    exit(1)
}
