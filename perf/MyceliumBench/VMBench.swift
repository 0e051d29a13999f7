// mycelium-bench vm: checkpoint pauses of a real guest under libvirt (issue 16).
//
// One simulated host (scripts/vmhost: a network namespace with its own libvirtd) runs the test guest
// (scripts/vm-guest, QEMU TCG) with its RAM tracked by uffd through the preload shim (scripts/build-shim),
// exactly as the agent's driver runs a primary. The bench process is the replica, over rhizomorph on
// loopback, as the driver replicates. For each guest size and epoch length it reports the pause the
// guest sees per checkpoint (p50/p99/max) and where it goes, against the floor any libvirt-driven
// checkpoint pays in the same run: QMP stop, the device-state save and QMP cont, with nothing else.
// COLO with multifd reports a 31 ms p99 (cited, not run here: COLO deadlocks under TCG in 7.2).
//
//   swift run -c release mycelium-bench vm [--seconds 8] [--memory 256,1024]      (root)
//       [--sections pause,migration,failover] [--reps 3] [--vm-memory 256]
// The migration and failover sections are in VMMigrationBench.swift; they need the release
// `myceliumd` and `mycelium` next to the benchmark.

import Endophyte
import Foundation
import MyceliumControl
import MyceliumIdentity
import Rhizomorph
import VMHarness
import VMHost

func runVMBench(_ args: [String]) async throws {
    guard getuid() == 0 else { throw BenchError("mycelium-bench vm needs root (network namespaces, libvirtd, QEMU)") }
    var seconds = 8.0, memories: [UInt32] = [256, 1024], sections: Set<String> = ["pause"], reps = 3, vmMemory = 256
    var i = 0
    while i + 1 < args.count {
        switch args[i] {
        case "--seconds": seconds = Double(args[i + 1]) ?? seconds
        case "--memory": memories = args[i + 1].split(separator: ",").compactMap { UInt32($0) }
        case "--sections": sections = Set(args[i + 1].split(separator: ",").map(String.init))
        case "--reps": reps = max(1, Int(args[i + 1]) ?? reps)
        case "--vm-memory": vmMemory = Int(args[i + 1]) ?? vmMemory
        default: throw BenchError("unknown option \(args[i]); use --seconds N --memory 256,1024 --sections pause,migration,failover --reps N --vm-memory MiB")
        }
        i += 2
    }
    if i < args.count { throw BenchError("option \(args[i]) needs a value") }
    let unknown = sections.subtracting(["pause", "migration", "failover"])
    guard unknown.isEmpty else { throw BenchError("unknown section(s) \(unknown.sorted()); the sections are pause, migration, failover") }
    if !sections.isDisjoint(with: ["migration", "failover"]) {
        let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        for tool in ["myceliumd", "mycelium"] where !FileManager.default.isExecutableFile(atPath: bin + "/" + tool) {
            throw BenchError("\(bin)/\(tool) not found: build it in the same configuration (swift build -c release --scratch-path .build-release --product \(tool))")
        }
        let guest = try Guest.files.get()
        print("mycelium-bench vm on \(machineLine()); QEMU TCG guest (scripts/vm-guest), 1 vCPU")
        if sections.contains("migration") { try await runMigrationSection(memoryMiB: vmMemory, reps: reps, bin: bin, guest: guest) }
        if sections.contains("failover") { try await runFailoverSection(memoryMiB: vmMemory, reps: reps, bin: bin, guest: guest) }
        guard sections.contains("pause") else { return }
    }
    let root = try repositoryRoot(containing: "scripts/vmhost")
    let work = "/tmp/mycelium-bench-vm-\(getpid())"
    try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: work) }
    guard let guestOut = capture([root + "/scripts/vm-guest"]),
          let kernel = guestOut.split(separator: "\n").first(where: { $0.hasPrefix("KERNEL=") })?.dropFirst(7),
          let initrd = guestOut.split(separator: "\n").first(where: { $0.hasPrefix("INITRD=") })?.dropFirst(7) else {
        throw BenchError("scripts/vm-guest failed; run scripts/setup")
    }
    let shim = work + "/libmdp_preload.so"
    guard capture([root + "/scripts/build-shim", shim]) != nil else { throw BenchError("scripts/build-shim failed") }
    let hostName = "benchvm\(getpid() % 1_000_000)"
    guard capture([root + "/scripts/vmhost", "up", hostName, "10.233.0.1/24", "benchbr\(getpid() % 100_000)"]) != nil else {
        throw BenchError("scripts/vmhost up failed")
    }
    defer { _ = capture([root + "/scripts/vmhost", "down", hostName]) }
    let state = capture([root + "/scripts/vmhost", "state", hostName])!.trimmingCharacters(in: .whitespacesAndNewlines)
    let uri = capture([root + "/scripts/vmhost", "uri", hostName])!.trimmingCharacters(in: .whitespacesAndNewlines)
    let host = try VMHost(uri: uri, qemuRunDirectory: state + "/run/libvirt/qemu")

    print("mycelium-bench vm on \(machineLine()); QEMU TCG guest (scripts/vm-guest: counts and writes 256 KiB of random bytes every ~100 ms), RAM tracked through the shim, replica over rhizomorph on loopback; \(Int(seconds)) s per row")
    print("  memory  epoch   epochs  pause p50   pause p99   pause max   floor p50  p50/floor   pause hook  collect  send+commit  ack wait  resume   pages/epoch")
    let sourceKey = SigningKey(seed: (0..<32).map { UInt8($0) }), replicaKey = SigningKey(seed: (0..<32).map { UInt8(100 + $0) })
    let network = NetworkID(genesisKey: SigningKey().publicKey)
    for mib in memories {
        let spec = VMSpec(name: "bench\(mib)", memoryMiB: mib, vcpus: 1, kernel: String(kernel), initrd: String(initrd),
                          cmdline: "console=ttyS0 quiet panic=-1")
        let serial = work + "/\(spec.name).serial", report = work + "/\(spec.name).shim"
        let d = try host.start(spec, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: serial,
                                                           shim: DirtyPageShim(library: shim, report: report)))
        defer { try? host.remove(spec.name) }
        let bootDeadline = now() + 180
        while !((try? String(contentsOfFile: serial, encoding: .utf8))?.contains("COUNT") ?? false) {
            if now() > bootDeadline { throw BenchError("the \(mib) MiB guest did not boot within 180 s") }
            usleep(100_000)
        }
        let ram = try d.openGuestRAM()
        let tracking = try d.openDirtyTracker(region: ram, shimReport: report)
        if let why = tracking.fallbackReason { print("  (\(mib) MiB: the hash engine tracks RAM: \(why))") }
        // The floor: what the hooks alone cost.
        var floor: [Double] = []
        for _ in 0..<20 {
            let t0 = now()
            try d.pause(); _ = try d.deviceState(epoch: 0); try d.resume()
            floor.append(now() - t0)
            usleep(50_000)
        }
        let listener = try Listener(addresses: ["127.0.0.1"], port: 0)
        let image = try MappedRegion(memfdNamed: "bench-replica", length: ram.length)
        let receiver = ReplicaReceiver(region: image)
        for epochMs in [25, 50, 100] {
            let server = Thread {
                guard let t = try? RhizomorphReplicationTransport.accept(from: listener, identity: replicaKey, network: network,
                                                                         peerKey: sourceKey.publicKey, timeout: 20) else { return }
                _ = receiver.serve(t)
            }
            server.start()
            let t = try RhizomorphReplicationTransport.connect(paths: [Rhizomorph.Path(local: "127.0.0.1", remote: "127.0.0.1", port: listener.port)],
                                                               identity: sourceKey, network: network, peerKey: replicaKey.publicKey)
            let source = try ReplicationSource(region: ram, tracker: tracking.tracker,
                                               config: ReplicationConfig(epochInterval: Double(epochMs) / 1000, rpoBound: 5, ackTimeout: 10),
                                               hooks: d.sourceHooks())
            try source.connect(t)
            var reports: [EpochReport] = []
            let end = now() + seconds
            while now() < end { reports.append(try source.checkpoint()) }
            source.detach()
            while server.isExecuting { usleep(1000) }
            let pauses = reports.map { $0.pauseSeconds * 1000 }
            func med(_ f: (EpochReport) -> Double) -> String { fmt(median(reports.map { f($0) * 1000 }), 2).leftPad(6) + " ms" }
            let fp50 = median(floor) * 1000
            print("  \(String(mib).leftPad(4)) MiB  \(String(epochMs).leftPad(3)) ms  \(String(reports.count).leftPad(6))  "
                  + "\(fmt(vmPercentile(pauses, 50), 2).leftPad(6)) ms  \(fmt(vmPercentile(pauses, 99), 2).leftPad(7)) ms  \(fmt(pauses.max() ?? 0, 2).leftPad(7)) ms  "
                  + "\(fmt(fp50, 2).leftPad(6)) ms  \(fmt(median(pauses) / fp50, 2).leftPad(8))×  "
                  + "\(med { $0.pauseHookSeconds })  \(med { $0.finalCollectSeconds })  \(med { $0.finalSendSeconds })  \(med { $0.ackWaitSeconds })  \(med { $0.resumeHookSeconds })  "
                  + fmt(median(reports.map { Double($0.pagesStreamed + $0.pagesAtPause) }), 0).leftPad(11))
        }
    }
    print("  floor = QMP stop + device-state save (x-ignore-shared, fd: migration) + QMP cont through libvirt, nothing else; "
          + "pause = what the guest sees per checkpoint. COLO (multifd) reports 31 ms p99 (cited).")
}

func repositoryRoot(containing relative: String) throws -> String {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    while !FileManager.default.fileExists(atPath: dir.appendingPathComponent(relative).path) && dir.path != "/" {
        dir = dir.deletingLastPathComponent()
    }
    guard FileManager.default.fileExists(atPath: dir.appendingPathComponent(relative).path) else {
        throw BenchError("\(relative) not found above \(CommandLine.arguments[0]); run from the source tree")
    }
    return dir.path
}

private func vmPercentile(_ xs: [Double], _ p: Double) -> Double {
    let s = xs.sorted()
    guard !s.isEmpty else { return .nan }
    return s[min(s.count - 1, Int((p / 100 * Double(s.count)).rounded(.up)) - 1 < 0 ? 0 : Int((p / 100 * Double(s.count)).rounded(.up)) - 1)]
}
