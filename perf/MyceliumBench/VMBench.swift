// mycelium-bench vm: checkpoint pauses of a real guest under libvirt (issue 16).
//
// One simulated host (scripts/vmhost: a network namespace with its own libvirtd) runs the test guest
// (scripts/vm-guest, QEMU TCG) with its RAM tracked by uffd through the preload shim (scripts/build-shim),
// exactly as the agent's driver runs a primary. The bench process is the replica, over rhizomorph on
// loopback, as the driver replicates. For each guest size and epoch length it reports the pause the
// guest sees per checkpoint (p50/p99/max) and where it goes, against the floor any libvirt-driven
// checkpoint pays in the same run: QMP stop, the device-state save and QMP cont, with nothing else.
// COLO with multifd reports a 31 ms p99 (cited, not run here: COLO deadlocks under TCG in 7.2).
// `--control direct` (default) gives each domain the agent's direct QMP monitor, as the driver does, so
// stop/cont/device state skip libvirt's passthrough; `--control libvirt` measures the passthrough. Each
// row's header line names the channel actually used (the direct one falls back to libvirt on its own).
//
// Output commit (Remus network buffering): the latency it adds to the guest's network. A 128 MiB guest with a
// virtio NIC (`mycelium.ip=`) answers ping from its host's namespace while it is replicated at
// 25/50/100 ms epochs, with its output behind an OutputCommitGate and without; runs interleaved
// (off, on, off, on), each with its own replication session. Reports RTT medians and p99, and the
// ratio on/off. A reply waits for the end of the epoch it was sent in, then for that checkpoint's
// pause and ack: expect on ≈ off + about half an epoch + the pause.
//
//   swift run -c release mycelium-bench vm [--seconds 8] [--memory 256,1024]      (root)
//       [--sections pause,output-commit,migration,failover] [--pings 200] [--reps 3] [--vm-memory 256]
//       [--control direct|libvirt] [--failover-primary leader,follower]
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
    var seconds = 8.0, memories: [UInt32] = [256, 1024], sections: Set<String> = ["pause", "output-commit"], reps = 3, vmMemory = 256
    var pings = 200
    var control = "direct"
    var primaries = ["leader", "follower"]
    var i = 0
    while i + 1 < args.count {
        switch args[i] {
        case "--seconds": seconds = Double(args[i + 1]) ?? seconds
        case "--memory": memories = args[i + 1].split(separator: ",").compactMap { UInt32($0) }
        case "--sections": sections = Set(args[i + 1].split(separator: ",").map(String.init))
        case "--pings": pings = max(2, Int(args[i + 1]) ?? pings)
        case "--reps": reps = max(1, Int(args[i + 1]) ?? reps)
        case "--vm-memory": vmMemory = Int(args[i + 1]) ?? vmMemory
        case "--failover-primary":
            primaries = args[i + 1].split(separator: ",").map(String.init)
            guard !primaries.isEmpty, primaries.allSatisfy({ ["leader", "follower"].contains($0) }) else {
                throw BenchError("--failover-primary is a list of leader and follower (where the VM runs, in turn), not '\(args[i + 1])'")
            }
        case "--control":
            control = args[i + 1]
            guard ["direct", "libvirt"].contains(control) else { throw BenchError("--control is direct or libvirt, not '\(control)'") }
        default:
            throw BenchError("unknown option \(args[i]); use --seconds N --memory 256,1024 --sections pause,output-commit,migration,failover --pings N --reps N --vm-memory MiB --control direct|libvirt --failover-primary leader,follower")
        }
        i += 2
    }
    if i < args.count { throw BenchError("option \(args[i]) needs a value") }
    let unknown = sections.subtracting(["pause", "output-commit", "migration", "failover"])
    guard unknown.isEmpty else { throw BenchError("unknown section(s) \(unknown.sorted()); the sections are pause, output-commit, migration, failover") }
    if !sections.isDisjoint(with: ["migration", "failover"]) {
        let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        for tool in ["myceliumd", "mycelium"] where !FileManager.default.isExecutableFile(atPath: bin + "/" + tool) {
            throw BenchError("\(bin)/\(tool) not found: build it in the same configuration (swift build -c release --scratch-path .build-release --product \(tool))")
        }
        let guest = try Guest.files.get()
        print("mycelium-bench vm on \(machineLine()); QEMU TCG guest (scripts/vm-guest), 1 vCPU")
        if sections.contains("migration") { try await runMigrationSection(memoryMiB: vmMemory, reps: reps, bin: bin, guest: guest) }
        if sections.contains("failover") { try await runFailoverSection(memoryMiB: vmMemory, reps: reps, bin: bin, guest: guest, primaries: primaries) }
        guard !sections.isDisjoint(with: ["pause", "output-commit"]) else { return }
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

    let sourceKey = SigningKey(seed: (0..<32).map { UInt8($0) }), replicaKey = SigningKey(seed: (0..<32).map { UInt8(100 + $0) })
    let network = NetworkID(genesisKey: SigningKey().publicKey)
    if sections.contains("pause") {
    print("mycelium-bench vm on \(machineLine()); QEMU TCG guest (scripts/vm-guest: counts and writes 256 KiB of random bytes every ~100 ms), RAM tracked through the shim, replica over rhizomorph on loopback; \(Int(seconds)) s per row")
    print("  memory  epoch   epochs  pause p50   pause p99   pause max   floor p50  p50/floor   pause hook  collect  send+commit  ack wait  resume   pages/epoch")
    for mib in memories {
        let spec = VMSpec(name: "bench\(mib)", memoryMiB: mib, vcpus: 1, kernel: String(kernel), initrd: String(initrd),
                          cmdline: "console=ttyS0 quiet panic=-1")
        let serial = work + "/\(spec.name).serial", report = work + "/\(spec.name).shim"
        let d = try host.start(spec, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: serial,
                                                           shim: DirtyPageShim(library: shim, report: report),
                                                           controlSocket: control == "direct" ? work + "/\(spec.name).qmp" : nil))
        defer { try? host.remove(spec.name) }
        let bootDeadline = now() + 180
        while !((try? String(contentsOfFile: serial, encoding: .utf8))?.contains("COUNT") ?? false) {
            if now() > bootDeadline { throw BenchError("the \(mib) MiB guest did not boot within 180 s") }
            usleep(100_000)
        }
        let ram = try d.openGuestRAM()
        let tracking = try d.openDirtyTracker(region: ram, shimReport: report)
        if let why = tracking.fallbackReason { print("  (\(mib) MiB: the hash engine tracks RAM: \(why))") }
        print("  (\(mib) MiB: stop/cont/device state over the \(d.controlChannel()))")
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
            let (t, server) = try loopbackSession(listener: listener, receiver: receiver, sourceKey: sourceKey, replicaKey: replicaKey, network: network)
            let source = try ReplicationSource(region: ram, tracker: tracking.tracker,
                                               config: ReplicationConfig(epochInterval: Double(epochMs) / 1000, rpoBound: 5, ackTimeout: 10),
                                               hooks: d.sourceHooks())
            try source.connect(t)
            var reports: [EpochReport] = []
            let end = now() + seconds
            while now() < end { reports.append(try source.checkpoint()) }
            source.detach()
            while server.isExecuting { usleep(1000) }
            if control == "direct", case .libvirt(let why) = d.controlChannel() { print("  (the direct monitor failed during the run: \(why))") }
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
    print("  floor = QMP stop + device-state save (x-ignore-shared, fd: migration) + QMP cont over the channel named above, nothing else; "
          + "pause = what the guest sees per checkpoint. COLO (multifd) reports 31 ms p99 (cited).")
    }
    if sections.contains("output-commit") {
        try outputCommitLatency(host: host, hostName: hostName, work: work, kernel: String(kernel), initrd: String(initrd), shim: shim,
                                pings: pings, directControl: control == "direct", sourceKey: sourceKey, replicaKey: replicaKey, network: network)
    }
}

/// Ping RTT to a replicated guest with and without output commit, at 25/50/100 ms epochs.
func outputCommitLatency(host: VMHost, hostName: String, work: String, kernel: String, initrd: String, shim: String, pings: Int, directControl: Bool,
                         sourceKey: SigningKey, replicaKey: SigningKey, network: NetworkID) throws {
    let guestAddress = "10.79.0.2"
    let spec = VMSpec(name: "benchoc", memoryMiB: 128, vcpus: 1, kernel: kernel, initrd: initrd,
                      cmdline: "console=ttyS0 quiet panic=-1 mycelium.ip=\(guestAddress)/24")
    let serial = work + "/benchoc.serial", report = work + "/benchoc.shim"
    let nic = GuestNIC(mac: GuestNIC.mac(for: spec.name), tap: "benchoc0")
    let d = try host.start(spec, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: serial,
                                                       shim: DirtyPageShim(library: shim, report: report), nic: nic,
                                                       controlSocket: directControl ? work + "/benchoc.qmp" : nil))
    defer { try? host.remove(spec.name) }
    let bootDeadline = now() + 180
    while !((try? String(contentsOfFile: serial, encoding: .utf8))?.contains("NET-READY") ?? false) {
        if now() > bootDeadline { throw BenchError("the guest's network did not come up within 180 s (serial log \(serial))") }
        usleep(100_000)
    }
    guard capture(["ip", "-n", hostName, "addr", "add", "10.79.0.1/24", "dev", nic.tap]) != nil else {
        throw BenchError("cannot put 10.79.0.1/24 on the guest's tap \(nic.tap) in \(hostName)")
    }
    let ram = try d.openGuestRAM()
    let tracking = try d.openDirtyTracker(region: ram, shimReport: report)
    let listener = try Listener(addresses: ["127.0.0.1"], port: 0)
    let image = try MappedRegion(memfdNamed: "bench-oc-replica", length: ram.length)
    let receiver = ReplicaReceiver(region: image)

    /// RTTs (ms) of `count` pings 20 ms apart, and how many got no reply within 2 s.
    func pingGuest(_ count: Int) -> (rtts: [Double], lost: Int) {
        let out = capture(["/bin/sh", "-c", "ip netns exec \(hostName) ping -n -c \(count) -i 0.02 -W 2 \(guestAddress); exit 0"]) ?? ""
        let rtts = out.split(separator: "\n").compactMap { line -> Double? in
            guard let r = line.range(of: "time=") else { return nil }
            return Double(line[r.upperBound...].prefix { $0 == "." || $0.isNumber })
        }
        return (rtts, max(0, count - rtts.count))
    }
    _ = pingGuest(3)  // ARP both ways, before anything is measured

    print("")
    print("output commit: ping RTT to a replicated 128 MiB guest from its host, \(pings) pings per cell (interleaved runs: off, on, off, on)")
    print("  epoch   off p50    off p99     on p50     on p99   on/off p50  on/off p99   lost off/on  held max  dropped")
    for epochMs in [25, 50, 100] {
        var rtts: [Bool: [Double]] = [false: [], true: []], lost: [Bool: Int] = [false: 0, true: 0]
        var heldMax = 0, dropped: UInt64 = 0
        for on in [false, true, false, true] {
            let gate = on ? try OutputCommitGate(domain: d, mode: .passingThrough) : nil
            let (t, server) = try loopbackSession(listener: listener, receiver: receiver, sourceKey: sourceKey, replicaKey: replicaKey, network: network)
            let source = try ReplicationSource(region: ram, tracker: tracking.tracker,
                                               config: ReplicationConfig(epochInterval: Double(epochMs) / 1000, rpoBound: 5, ackTimeout: 10),
                                               hooks: d.sourceHooks(afterPause: { gate?.sealAtPause() }),
                                               onEvent: { e in
                                                   switch e {
                                                   case .connected: gate?.setMode(.holding)
                                                   case .epochCommitted: gate?.releaseCommitted()
                                                   default: break
                                                   }
                                               })
            try source.connect(t)
            let looping = RunningFlag()
            let loop = Thread {
                while looping.isSet { if (try? source.checkpoint()) == nil { break } }
            }
            loop.start()
            let r = pingGuest(pings / 2)
            if let s = gate?.status { heldMax = max(heldMax, s.heldPackets); dropped += s.dropped }
            looping.clear()
            while loop.isExecuting { usleep(1000) }
            source.detach()
            while server.isExecuting { usleep(1000) }
            gate?.detach(flush: true)
            rtts[on]! += r.rtts
            lost[on]! += r.lost
        }
        func p(_ xs: [Double], _ q: Double) -> Double { vmPercentile(xs, q) }
        let off = rtts[false]!, on = rtts[true]!
        print("  \(String(epochMs).leftPad(3)) ms  \(fmt(p(off, 50), 2).leftPad(6)) ms  \(fmt(p(off, 99), 2).leftPad(6)) ms  "
              + "\(fmt(p(on, 50), 2).leftPad(7)) ms  \(fmt(p(on, 99), 2).leftPad(7)) ms  \(fmt(p(on, 50) / p(off, 50), 1).leftPad(9))×  "
              + "\(fmt(p(on, 99) / p(off, 99), 1).leftPad(9))×  \(String(lost[false]!).leftPad(7))/\(lost[true]!)  \(String(heldMax).leftPad(8))  \(String(dropped).leftPad(7))")
    }
    print("  on = replies held until the replica acknowledged the checkpoint after them (OutputCommitGate); off = straight to the tap. "
          + "A reply waits for the end of its epoch and that checkpoint's ack: expect on ≈ off + about half an epoch + the pause.")
}

/// A flag one thread clears and another polls.
fileprivate final class RunningFlag: @unchecked Sendable {
    // SAFETY (Sendable): guarded by `lock`.
    private let lock = NSLock()
    private var value = true
    var isSet: Bool { lock.withLock { value } }
    func clear() { lock.withLock { value = false } }
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

/// A replication session over rhizomorph on loopback: `receiver` serves it on its own thread (the
/// bench process plays the replica; the thread ends with the session), and the source's end.
func loopbackSession(listener: Listener, receiver: ReplicaReceiver, sourceKey: SigningKey, replicaKey: SigningKey,
                     network: NetworkID) throws -> (RhizomorphReplicationTransport, Thread) {
    let server = Thread {
        guard let t = try? RhizomorphReplicationTransport.accept(from: listener, identity: replicaKey, network: network,
                                                                 peerKey: sourceKey.publicKey, timeout: 20) else { return }
        _ = receiver.serve(t)
    }
    server.start()
    let t = try RhizomorphReplicationTransport.connect(paths: [Rhizomorph.Path(local: "127.0.0.1", remote: "127.0.0.1", port: listener.port)],
                                                       identity: sourceKey, network: network, peerKey: replicaKey.publicKey)
    return (t, server)
}
