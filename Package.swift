// swift-tools-version:6.0
// Mycelium: Swift for the control plane, C for the hot paths.
// Layout: Sources/ (Swift modules and executables), CSources/ (C cores and system-library shims),
// Tests/, perf/ (benchmarks, run with `swift run -c release mycelium-bench ...`).
import PackageDescription

let package = Package(
    name: "Mycelium",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "mycelium", targets: ["mycelium"]),
        .executable(name: "myceliumd", targets: ["myceliumd"]),
        .executable(name: "mycelium-sim", targets: ["mycelium-sim"]),
        .executable(name: "mycelium-bench", targets: ["MyceliumBench"]),
        .executable(name: "mycelium-cni", targets: ["mycelium-cni"]),
        .library(name: "MyceliumIdentity", targets: ["MyceliumIdentity"]),
        .library(name: "MyceliumCore", targets: ["MyceliumCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        // The operator's dashboard (MyceliumDashboard) only.
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
    ],
    targets: [
        // MARK: system libraries (each imported by exactly one Swift module)
        .systemLibrary(
            name: "CSodium", path: "CSources/CSodium", pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]),
        // libvirt's C API; `Libvirt` is its only importer (typed errors that keep libvirt's code and message).
        .systemLibrary(
            name: "CLibvirt", path: "CSources/CLibvirt", pkgConfig: "libvirt",
            providers: [.apt(["libvirt-dev"])]),
        // librados/librbd's C APIs; `MyceliumRBD` is their only importer (typed errors with errno and operation).
        // No pkgConfig: Debian's librados-dev/librbd-dev 16.2 ship no .pc files (headers are in /usr/include).
        .systemLibrary(
            name: "CRados", path: "CSources/CRados",
            providers: [.apt(["librados-dev", "librbd-dev"])]),

        // MARK: pure foundations
        .target(name: "MyceliumCore"),
        .target(name: "MyceliumIdentity", dependencies: ["MyceliumCore", "CSodium"]),

        // MARK: consensus (pure) and its durable storage and simulator
        .target(name: "MyceliumRaft", dependencies: ["MyceliumCore"]),
        .target(name: "MyceliumWAL", dependencies: ["MyceliumCore", "MyceliumRaft"]),
        // The deterministic simulators (Raft, the vote, the governor) and the Byzantine behaviours they
        // inject: simulation code, never linked into a product that runs a network.
        .target(
            name: "MyceliumSim",
            dependencies: ["MyceliumCore", "MyceliumRaft", "MyceliumIdentity", "MyceliumVote", "MyceliumSpores",
                           "MyceliumMembership", "MyceliumControl", "NetworkController", "MembershipController", "VMController"]),
        // Counts heap allocations by interposing malloc; link it into benchmarks only (mycelium-bench raft-sim).
        .target(name: "CMallocCounter", path: "CSources/CMallocCounter"),

        // MARK: spores: the primary spore's state machine, seed and latent spores (pure)
        .target(name: "MyceliumSpores", dependencies: ["MyceliumCore", "MyceliumIdentity", "MyceliumVote"]),

        // MARK: membership: failure detection (pure)
        .target(name: "MyceliumMembership", dependencies: ["MyceliumCore"]),

        // MARK: the service scheduler (pure): placement, constraints, spread, trust floors; and its simulation
        .target(name: "Scheduler", dependencies: ["MyceliumCore", "MyceliumIdentity"]),

        // MARK: Byzantine-tolerant vote (pure)
        .target(name: "MyceliumVote", dependencies: ["MyceliumCore", "MyceliumIdentity"]),

        // MARK: the control plane (pure): one control state replicated by Raft (spore, KV, pod CIDRs),
        // the governor, and the controller protocol. Never touches a socket, clock, file or global RNG.
        .target(
            name: "MyceliumControl",
            dependencies: ["MyceliumCore", "MyceliumIdentity", "MyceliumRaft", "MyceliumSpores", "MyceliumVote", "MyceliumMembership"],
            exclude: ["README.md"]),
        // The membership controller: signing, renewal and this node's certificate (pure core), and the
        // certificate file (driver).
        .target(name: "MembershipController", dependencies: ["MyceliumControl", "MyceliumCore", "MyceliumSpores", "MyceliumIdentity"]),
        // The VM controller's core: failover, replica placement, ownership leases and self-fencing (pure).
        .target(name: "VMController", dependencies: ["MyceliumControl", "MyceliumCore", "MyceliumIdentity", "MyceliumSpores"]),
        // The service controller's core: the leader's placement through the scheduler, each node's
        // reconciler of its instances (pure).
        .target(name: "ServiceController", dependencies: ["MyceliumControl", "MyceliumCore", "MyceliumIdentity", "MyceliumSpores", "Scheduler"]),
        // The service controller's driver: the process driver's instances (ServiceRuntime).
        .target(name: "ServiceDriver", dependencies: ["ServiceController", "ServiceRuntime", "CSpawn", "MyceliumControl"]),
        // One HTTP/1.1 exchange per connection on NIO (deadline, size limit): the seed store's and the Kubernetes API client's.
        .target(name: "MyceliumHTTP", dependencies: [.product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                                                     .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOSSL", package: "swift-nio-ssl")]),
        // The k3s driver: its core (roles, config.yaml and conflist, Deployment manifests; pure) and its
        // driver (files, the supervised k3s process, the Kubernetes API). K3s cannot run on the project's
        // machines: Tests/K3sTests use a stand-in binary and a stand-in API server.
        .target(name: "K3sController", dependencies: ["MyceliumControl", "MyceliumCore", "MyceliumIdentity", "MyceliumSpores"], exclude: ["README.md"]),
        .target(name: "K3sDriver", dependencies: ["K3sController", "MyceliumControl", "MyceliumCore", "MyceliumIdentity", "ServiceRuntime", "MyceliumHTTP",
                                                  .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                                                  .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
                                                  .product(name: "Yams", package: "Yams")],
                exclude: ["README.md"]),
        // libvirt through its C API: connections, domains, the QEMU monitor passthrough (no virsh).
        .target(name: "Libvirt", dependencies: ["CLibvirt"]),
        // Ceph through librados/librbd: connections, pools, RBD images, snapshots, the exclusive lock and
        // blocklisting (no `rbd`/`ceph` subprocesses). The storage driver's only door to Ceph.
        .target(name: "MyceliumRBD", dependencies: ["CRados", "MyceliumCore"]),
        // Storage data classes and trust-aware placement: the planner (pure) and its driver, which
        // carries out the CRUSH and pool changes through MyceliumRBD's monitor commands.
        .target(name: "StorageController", dependencies: ["MyceliumIdentity", "MyceliumControl", "MyceliumSpores"]),
        .target(name: "StorageDriver", dependencies: ["StorageController", "MyceliumRBD", "MyceliumControl", "MyceliumCore"]),
        // The network controller: pod CIDRs in the control state (pure core) and the file mycelium-cni reads (driver).
        .target(name: "NetworkController", dependencies: ["MyceliumControl", "MyceliumCore", "MyceliumSpores", "MyceliumIdentity"],
                exclude: ["README.md"]),
        // The route controller's driver: loads the eBPF datapath and programs other nodes' pod routes and identities.
        .target(name: "NetworkDriver", dependencies: ["NetworkController", "MyceliumControl", "MyceliumCNI", "MyceliumCore", "ServiceRuntime",
                                                      .product(name: "Logging", package: "swift-log")]),

        // MARK: endophyte core: dirty-page tracking in C and the RAM replication engine
        .target(
            name: "CDirtyPages", path: "CSources/CDirtyPages", exclude: ["shim"],
            cSettings: [.unsafeFlags(["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"])],
            linkerSettings: [.linkedLibrary("xxhash"), .linkedLibrary("pthread")]),
        .target(name: "DirtyPages", dependencies: ["CDirtyPages", "MyceliumCore"]),

        // MARK: datapath: the eBPF programs' userspace side (libbpf); the programs themselves are
        // CSources/bpf/datapath.bpf.c, built with clang -target bpf by `make -C CSources/bpf`.
        .target(
            name: "CDatapath", path: "CSources/CDatapath", exclude: ["tests", "README.md"],
            cSettings: [.unsafeFlags(["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"])],
            linkerSettings: [.linkedLibrary("bpf"), .linkedLibrary("elf"), .linkedLibrary("z")]),
        // Replicates over plain authenticated TCP or over rhizomorph (encrypted, multi-path).
        .target(name: "Endophyte", dependencies: ["DirtyPages", "MyceliumCore", "MyceliumIdentity", "Rhizomorph"]),
        // The host-side VM driver: one node's endophyte domains under its own libvirtd (domain XML,
        // QEMU's guest-RAM memfd, checkpoint primitives, standby activation). No Raft or agent logic.
        .target(name: "VMHost", dependencies: ["Libvirt", "MyceliumControl", "Endophyte", "DirtyPages", "MyceliumCore"]),
        // The VM controller's driver: VMHost for the domains, Endophyte for the replicated RAM.
        .target(name: "VMDriver", dependencies: ["VMController", "VMHost", "Endophyte", "DirtyPages", "MyceliumControl", "MyceliumCore", "MyceliumIdentity", "Rhizomorph",
                                                 "StorageDriver", "MyceliumRBD"]),

        // MARK: the CNI plugin: raw rtnetlink in C, the plugin in Swift (no Foundation: it runs per container)
        .target(
            name: "CNetlink", path: "CSources/CNetlink",
            cSettings: [.unsafeFlags(["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"])],
            linkerSettings: [.linkedLibrary("pthread")]),
        .target(name: "MyceliumCNI", dependencies: ["MyceliumCore", "CNetlink", "CDatapath"], exclude: ["README.md"]),

        // MARK: rhizomorph: one stream over many connections and paths (C), and its thin Swift module
        .target(
            name: "CRhizomorph", path: "CSources/CRhizomorph", exclude: ["tests"],
            cSettings: [.unsafeFlags(["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"])],
            linkerSettings: [.linkedLibrary("sodium"), .linkedLibrary("ibverbs"), .linkedLibrary("pthread")]),
        .target(name: "Rhizomorph", dependencies: ["CRhizomorph", "MyceliumIdentity"]),

        // MARK: the `process` workload driver: service instances as real processes in their own cgroups
        // (CSpawn: fork/clone3 into the cgroup, then exec, with only async-signal-safe calls in between).
        .target(name: "CSpawn", path: "CSources/CSpawn", cSettings: [.unsafeFlags(["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"])]),
        .target(name: "ServiceRuntime", dependencies: ["CSpawn", "MyceliumCore"]),
        // MARK: service DNS: `NAME.service.mycelium` answered from the healthy instances. The codec and
        // the responder are pure (MyceliumCore only); DNSServer is the NIO shell (UDP, and TCP for long answers).
        .target(name: "ServiceDNSCore", dependencies: ["MyceliumCore"]),
        .target(name: "ServiceDNS", dependencies: ["ServiceDNSCore", "MyceliumCore", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")]),

        // MARK: the local API's types and client (Foundation only), shared by the agent and its clients
        // Yams reads service spec files (YAML, JSON).
        .target(name: "MyceliumAPI", dependencies: [.product(name: "Yams", package: "Yams")]),

        // The operator's dashboard: a read-only web page over the local API (MyceliumAPI's client only, no
        // state of its own); its view model, event filter and layout are pure (DashboardModel).
        .target(name: "MyceliumDashboard", dependencies: ["MyceliumAPI", .product(name: "Hummingbird", package: "hummingbird"),
                                                          .product(name: "HummingbirdCore", package: "hummingbird"), .product(name: "HummingbirdTLS", package: "hummingbird"),
                                                          .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
                                                          .product(name: "Logging", package: "swift-log")]),

        // MARK: shells
        .target(
            name: "MyceliumTransport",
            dependencies: [
                "MyceliumCore", "MyceliumIdentity",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Logging", package: "swift-log"),
            ]),

        .target(
            name: "MyceliumAgent",
            dependencies: [
                "MyceliumCore", "MyceliumIdentity", "MyceliumRaft", "MyceliumWAL", "MyceliumSpores", "MyceliumMembership",
                "MyceliumTransport", "MyceliumVote", "MyceliumControl", "NetworkController", "MembershipController", "MyceliumAPI",
                "VMController", "VMDriver", "Scheduler", "ServiceController", "ServiceDriver", "ServiceRuntime", "ServiceDNS", "NetworkDriver", "MyceliumCNI",
                "K3sController", "K3sDriver", "MyceliumHTTP", "StorageController", "StorageDriver", "MyceliumRBD",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),

        // MARK: executables (thin @mains)
        .executableTarget(
            name: "myceliumd",
            dependencies: [
                "MyceliumAgent", "MyceliumCore", "VMDriver", "ServiceDriver",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),
        .executableTarget(
            name: "mycelium",
            dependencies: [
                "MyceliumCore", "MyceliumIdentity", "MyceliumTransport", "MyceliumAgent", "MyceliumSpores", "MyceliumCNI", "MyceliumAPI", "K3sDriver", "MyceliumDashboard",
                "MyceliumControl",  // backup verify/restore
                "DirtyPages", "Libvirt", "MyceliumRBD", "ServiceRuntime",  // mycelium doctor's probes and tools
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(
            name: "mycelium-sim",
            dependencies: [
                "MyceliumCore", "MyceliumRaft", "MyceliumSim", "MyceliumVote", "Scheduler",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .executableTarget(
            name: "MyceliumBench",
            dependencies: [
                "MyceliumCore", "MyceliumIdentity", "MyceliumTransport", "MyceliumRaft", "MyceliumSim",
                "DirtyPages", "Endophyte", "Rhizomorph", "CMallocCounter", "MyceliumVote", "MyceliumAgent", "MyceliumAPI", "VMHost", "MyceliumControl",
                "Libvirt", "VMHarness", "Scheduler",
                // mycelium-bench storage: our RBD layer, trust-aware placement, a scripts/ceph cluster
                "MyceliumRBD", "StorageController", "StorageDriver", "CephTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "perf/MyceliumBench"),

        .executableTarget(name: "mycelium-cni", dependencies: ["MyceliumCNI"]),

        // FOR TESTS ONLY: myceliumd with a voter that lies in every vote and accuses live members, to
        // show that one liar changes nothing. Not a product: the real daemon cannot be made to lie.
        .executableTarget(
            name: "myceliumd-byzantine",
            dependencies: ["MyceliumAgent", "MyceliumSim", "MyceliumControl", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Tests/ByzantineAgent"),

        // FOR TESTS ONLY: threads inside a rhizomorph session while it is closed; run by RhizomorphTests
        // and, built with AddressSanitizer in its own scratch path, by scripts/test.
        .executableTarget(
            name: "rhizomorph-stress", dependencies: ["Rhizomorph", "MyceliumIdentity"], path: "Tests/RhizomorphStress"),

        // Fuzz targets: a replay driver in normal builds, libFuzzer with `scripts/fuzz`.
        .executableTarget(
            name: "mycelium-fuzz", dependencies: ["MyceliumCore", "MyceliumIdentity", "MyceliumVote", "MyceliumSpores", "MyceliumControl", "MyceliumRaft", "Rhizomorph", "Endophyte", "MyceliumAPI", "VMHost", "ServiceRuntime", "ServiceDNSCore"], path: "Fuzz/MyceliumFuzz",
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]),

        // MARK: tests
        .testTarget(name: "MyceliumCoreTests", dependencies: ["MyceliumCore"]),
        .testTarget(name: "MyceliumIdentityTests", dependencies: ["MyceliumCore", "MyceliumIdentity"]),
        .testTarget(
            name: "MyceliumTransportTests",
            dependencies: [
                "MyceliumCore", "MyceliumIdentity", "MyceliumTransport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // Drives the built `mycelium` binary; depending on it makes `swift build --build-tests` build it.
        .testTarget(name: "MyceliumCLITests", dependencies: ["mycelium"]),
        .testTarget(name: "MyceliumAPITests", dependencies: ["MyceliumAPI"]),
        // The dashboard's pure parts; its end-to-end test (real agents, headless chromium) is in MyceliumAgentTests.
        .testTarget(name: "MyceliumDashboardTests", dependencies: ["MyceliumDashboard", "MyceliumAPI"]),
        // The codec and responder directly; DNSServer end to end with python3 as an independent client.
        .testTarget(name: "ServiceDNSTests", dependencies: ["ServiceDNS", "ServiceDNSCore", "MyceliumCore", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")]),
        .testTarget(name: "MyceliumSporesTests", dependencies: ["MyceliumCore", "MyceliumIdentity", "MyceliumSpores"]),
        .testTarget(name: "MyceliumMembershipTests", dependencies: ["MyceliumCore", "MyceliumMembership"]),
        .testTarget(name: "SchedulerTests", dependencies: ["Scheduler", "MyceliumCore", "MyceliumIdentity"]),
        .testTarget(name: "MyceliumVoteTests", dependencies: ["MyceliumCore", "MyceliumIdentity", "MyceliumVote", "MyceliumSim"]),
        .testTarget(name: "DirtyPagesTests", dependencies: ["DirtyPages", "CDirtyPages", "MyceliumCore"]),
        .testTarget(name: "EndophyteTests", dependencies: ["Endophyte", "DirtyPages", "MyceliumCore", "MyceliumIdentity", "Rhizomorph"]),
        // Real agent processes; depending on the executables makes the test build build them.
        .testTarget(
            name: "MyceliumAgentTests",
            dependencies: [
                "MyceliumAgent", "myceliumd", "myceliumd-byzantine", "mycelium", "mycelium-cni", "MyceliumSpores", "MyceliumIdentity", "MyceliumCore", "MyceliumAPI",
                "MyceliumSim", "VMTestSupport", "Libvirt", "ServiceRuntime", "MyceliumCNI", "CephTestSupport", "MyceliumRBD",
                "MyceliumRaft", "MyceliumWAL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]),
        .testTarget(name: "RhizomorphTests", dependencies: ["Rhizomorph", "CRhizomorph", "MyceliumIdentity", "MyceliumCore", "Endophyte", "rhizomorph-stress"]),
        // Real namespaces, the built plugin, libcni (a Go driver) and podman; needs root.
        .testTarget(
            name: "MyceliumCNITests", dependencies: ["MyceliumCNI", "MyceliumCore", "CNetlink", "CDatapath", "mycelium-cni", "mycelium", "ServiceRuntime"],
            exclude: ["cnidriver"]),
        // libvirt's built-in test driver (test:///default, in-process) for the wrapper's calls and errors.
        .testTarget(name: "LibvirtTests", dependencies: ["Libvirt"]),
        // A real Ceph cluster (scripts/ceph up/down in a temporary directory) for the RBD wrapper; needs root.
        // A real Ceph cluster per suite (scripts/ceph up/down), shared by the storage test suites.
        .target(name: "CephTestSupport", dependencies: ["MyceliumRBD"], path: "Tests/CephTestSupport"),
        .testTarget(name: "MyceliumRBDTests", dependencies: ["MyceliumRBD", "CephTestSupport"]),
        .testTarget(name: "StorageControllerTests", dependencies: ["StorageController", "MyceliumIdentity", "MyceliumControl", "MyceliumSpores", "MyceliumRaft", "MyceliumCore"]),
        // The planner's decisions carried out on a real 4-OSD Ceph cluster (scripts/ceph); needs root.
        .testTarget(name: "StorageDriverTests", dependencies: ["StorageDriver", "StorageController", "MyceliumRBD", "MyceliumIdentity", "CephTestSupport", "VMHarness",
                                                           "VMDriver", "VMHost", "VMTestSupport", "MyceliumControl", "VMController", "ServiceRuntime"]),
        // Real libvirtd daemons in network namespaces (scripts/vmhost) running the real TCG guest
        // (scripts/vm-guest); needs root and QEMU.
        .testTarget(name: "VMHostTests", dependencies: ["VMHost", "Libvirt", "Endophyte", "DirtyPages", "MyceliumControl", "MyceliumCore", "MyceliumIdentity", "VMTestSupport"]),
        // The VM harness (scripts/vmhost hosts, the scripts/vm-guest guest, serial logs), without XCTest:
        // shared by the tests that run real VMs (through VMTestSupport, their XCTest glue) and by
        // mycelium-bench vm; linked by no shipped product.
        .target(name: "VMHarness", dependencies: ["Endophyte"], path: "Tests/VMHarness"),
        .target(name: "VMTestSupport", dependencies: ["VMHarness"], path: "Tests/VMTestSupport"),
        // The k3s driver: golden config files, the core's decisions, supervision of a stand-in k3s
        // (a script on a temporary PATH) and the API calls against a stand-in API server; needs root.
        .testTarget(name: "K3sTests", dependencies: ["K3sController", "K3sDriver", "MyceliumControl", "MyceliumCore", "MyceliumIdentity",
                                                     "MyceliumSpores", "ServiceController", "Scheduler",
                                                     .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                                                     .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                                                     .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "Yams", package: "Yams")],
                    exclude: ["Golden"]),
        // Real processes and cgroups; needs root.
        .testTarget(name: "ServiceRuntimeTests", dependencies: ["ServiceRuntime", "MyceliumCore"]),
        .testTarget(name: "MyceliumRaftTests", dependencies: ["MyceliumCore", "MyceliumRaft"], exclude: ["testdata"]),
        .testTarget(name: "MyceliumWALTests", dependencies: ["MyceliumCore", "MyceliumRaft", "MyceliumWAL"]),
        .testTarget(name: "MyceliumSimTests", dependencies: ["MyceliumCore", "MyceliumRaft", "MyceliumSim"]),
        .testTarget(
            name: "MyceliumControlTests",
            dependencies: ["MyceliumCore", "MyceliumIdentity", "MyceliumRaft", "MyceliumSpores", "MyceliumVote", "MyceliumControl", "NetworkController",
                           "MembershipController", "VMController", "MyceliumSim", "ServiceController", "Scheduler"]),
    ]
)
