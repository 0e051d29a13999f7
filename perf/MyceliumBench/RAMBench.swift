import DirtyPages
import Endophyte
import Foundation
import MyceliumCore
import MyceliumIdentity
import Synchronization

/// `mycelium-bench ram [--size-mib N] [--seconds S] [--dirty-rate PAGES_PER_S] [--pattern random|sequential|hot]
///                     [--engines uffd,remote,kvm,hash] [--hash-threads N] [--qemu]`
///
/// Reports, for one region size, in one run:
///   - baselines: memcpy bandwidth (the physical limit) and one plain TCP stream on loopback;
///   - tracking cost per GiB for each engine: arm, collect (clean, 10%, all dirty), re-arm;
///   - workload slowdown: write ops/s with and without each engine collecting every 50 ms;
///   - replication throughput (the full copy) against the TCP baseline;
///   - checkpoint pause p50/p99 at 25, 50 and 100 ms epochs (uffd and hash);
///   - RPO: pages and time lost when the primary is killed at a random instant;
///   - planned migration: total time and blackout;
///   - the engine's own memory (tracker, bitmaps, replica staging) against the region.
/// QEMU's own live migration is the peer for migration when `--qemu` is given and
/// qemu-system-x86_64 plus a kernel are installed; otherwise the report says it was skipped.
func runRAMBench(_ args: [String]) async throws {
    func opt(_ name: String) -> String? {
        guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
        return args[i + 1]
    }
    let sizeMiB = Int(opt("--size-mib") ?? "256") ?? 256
    let seconds = Double(opt("--seconds") ?? "3") ?? 3
    let dirtyRate = Int(opt("--dirty-rate") ?? "20000") ?? 20000
    let pattern = BenchPattern(rawValue: opt("--pattern") ?? "random") ?? .random
    let engines = Set((opt("--engines") ?? "uffd,remote,kvm,hash").split(separator: ",").map(String.init))
    let hashThreads = Int(opt("--hash-threads") ?? "2") ?? 2
    let bytes = sizeMiB << 20
    let pages = bytes / dirtyPageSize
    let gib = Double(bytes) / Double(1 << 30)

    print("ram benchmark: \(sizeMiB) MiB region (\(pages) pages), workload \(pattern.rawValue) at \(dirtyRate) pages/s, \(machineLine())")
    print("engines available here:")
    for a in probeDirtyPageEngines() { print("  \(a)") }

    // MARK: baselines
    let region = try MappedRegion(memfdNamed: "bench-src", length: bytes)
    let other = try MappedRegion(memfdNamed: "bench-dst", length: bytes)
    memset(region.base, 1, bytes)
    memset(other.base, 2, bytes)
    var memcpyRates: [Double] = []
    for _ in 0..<3 {
        let t0 = now()
        memcpy(other.base, region.base, bytes)
        memcpyRates.append(Double(bytes) / (now() - t0))
    }
    let memcpyBW = median(memcpyRates)
    let tcpBW = try plainTCPStream(bytes: max(bytes, 512 << 20))
    print("\nbaselines")
    print("  memcpy                      \(gbps(memcpyBW)) GB/s")
    print("  one plain TCP stream (lo)   \(gbps(tcpBW)) GB/s")

    // MARK: tracking cost per GiB
    print("\ntracking cost (per GiB of region; collect includes re-protecting what it reports)")
    print("  engine        arm ms/GiB  collect-clean  collect-10%   collect-all   re-arm   footprint")
    func costRow(_ name: String, arm: Double, clean: Double, ten: Double, all: Double, rearm: Double, footprint: Int) {
        print("  \(name.padding(toLength: 12, withPad: " ", startingAt: 0))  \(fmt(arm / gib * 1000, 2).leftPad(10))  \(fmt(clean / gib * 1000, 2).leftPad(13))  \(fmt(ten / gib * 1000, 2).leftPad(12))  \(fmt(all / gib * 1000, 2).leftPad(12))  \(fmt(rearm / gib * 1000, 2).leftPad(7))   \(footprint) B (\(fmt(Double(footprint) / Double(bytes) * 100, 3))%)")
    }
    var rng = SeededRandom(seed: 42)
    let tenPercent = (0..<pages).filter { _ in rng.chance(0.1) }
    func touch(_ ps: [Int]) { for p in ps { region.page(p).storeBytes(of: UInt8.random(in: 0...255), as: UInt8.self) } }
    if engines.contains("uffd") {
        let (t, arm) = try timed { try DirtyTracker.uffd(region: region.buffer) }
        var bm = DirtyBitmap(pageCount: pages)
        let (_, clean) = try timed { try t.collect(into: &bm) }
        touch(tenPercent)
        let (_, ten) = try timed { try t.collect(into: &bm) }
        touch(Array(0..<pages))
        let (_, all) = try timed { try t.collect(into: &bm) }
        let (_, re) = try timed { try t.rearm() }
        costRow("uffd-async", arm: arm, clean: clean, ten: ten, all: all, rearm: re, footprint: t.footprintBytes + bm.footprintBytes)
        t.stop()
    }
    if engines.contains("remote") {
        let child = try ForkedWriter(sharedRegion: region.buffer, register: true)
        let (t, arm) = try timed { try DirtyTracker.uffdRemote(pid: child.pid, address: UInt64(UInt(bitPattern: region.base)), length: bytes) }
        var bm = DirtyBitmap(pageCount: pages)
        let (_, clean) = try timed { try t.collect(into: &bm) }
        try child.writePages(tenPercent)
        let (_, ten) = try timed { try t.collect(into: &bm) }
        try child.writePages(Array(0..<pages))
        let (_, all) = try timed { try t.collect(into: &bm) }
        let (_, re) = try timed { try t.rearm() }
        costRow("uffd-remote", arm: arm, clean: clean, ten: ten, all: all, rearm: re, footprint: t.footprintBytes + bm.footprintBytes)
        t.stop()
        child.stop()
    }
    if engines.contains("kvm") && probeDirtyPageEngines().first(where: { $0.engine == .kvm })!.isAvailable {
        // The slot spans the whole region; the real-mode guest can dirty only pages 1...255, so the
        // "10%" and "all" columns measure the log walk with those 255 pages set.
        let vm = try ScratchKVM(region: region.buffer)
        let (t, arm) = try timed { try DirtyTracker.kvm(vmDescriptor: vm.vmDescriptor, slot: 0, pageCount: pages) }
        var bm = DirtyBitmap(pageCount: pages)
        let (_, clean) = try timed { try t.collect(into: &bm) }
        try vm.writePages(Array(1...ScratchKVM.maxGuestPage))
        let (_, some) = try timed { try t.collect(into: &bm) }
        let (_, re) = try timed { try t.rearm() }
        costRow("kvm*", arm: arm, clean: clean, ten: some, all: some, rearm: re, footprint: t.footprintBytes + bm.footprintBytes)
        print("    * kvm: guest-written pages only (255 here); the log walk cost is what scales with the region")
    }
    if engines.contains("hash") {
        let (t, arm) = try timed { try DirtyTracker.hash(region: UnsafeRawBufferPointer(region.buffer), threads: hashThreads) }
        var bm = DirtyBitmap(pageCount: pages)
        let (_, clean) = try timed { try t.collect(into: &bm) }
        touch(tenPercent)
        let (_, ten) = try timed { try t.collect(into: &bm) }
        touch(Array(0..<pages))
        let (_, all) = try timed { try t.collect(into: &bm) }
        let (_, re) = try timed { try t.rearm() }
        costRow("hash x\(hashThreads)", arm: arm, clean: clean, ten: ten, all: all, rearm: re, footprint: t.footprintBytes + bm.footprintBytes)
    }

    // MARK: workload slowdown
    print("\nworkload slowdown (unthrottled writer, 8-byte writes to \(pattern.rawValue) pages; collector every 50 ms)")
    let baseOps = try measureOps(region: region, pattern: pattern, seconds: seconds, tracker: nil)
    print("  no tracking                 \(fmt(baseOps / 1e6, 2)) M writes/s")
    for e in ["uffd", "hash"] where engines.contains(e) {
        let t = e == "uffd" ? try DirtyTracker.uffd(region: region.buffer)
                            : try DirtyTracker.hash(region: UnsafeRawBufferPointer(region.buffer), threads: hashThreads)
        let ops = try measureOps(region: region, pattern: pattern, seconds: seconds, tracker: t)
        print("  \(t.engine.rawValue.padding(toLength: 26, withPad: " ", startingAt: 0))  \(fmt(ops / 1e6, 2)) M writes/s  (slowdown \(fmt((1 - ops / baseOps) * 100, 1))%)")
        t.stop()
    }

    // MARK: replication
    print("\nreplication over authenticated loopback TCP (uffd engine unless noted)")
    let listener = try ReplicationListener()
    let sourceKey = SigningKey(), replicaKey = SigningKey()
    func session(engine: DirtyPageEngine, config: ReplicationConfig, workload: BenchWorkload,
                 replicaRegion: MappedRegion) throws -> (ReplicationSource, ReplicaReceiver, Thread, DispatchSemaphore) {
        let replica = ReplicaReceiver(region: replicaRegion)
        let done = DispatchSemaphore(value: 0)
        let l = listener, rk = replicaKey, sk = sourceKey.publicKey
        let th = Thread {
            if let t = try? l.accept(identity: rk, authorize: { $0 == sk }) { _ = replica.serve(t) }
            done.signal()
        }
        th.start()
        let t = try TCPReplicationTransport.connect(host: "127.0.0.1", port: listener.port, identity: sourceKey,
                                                    accept: { $0 == replicaKey.publicKey })
        let tracker = engine == .hash ? try DirtyTracker.hash(region: UnsafeRawBufferPointer(region.buffer), threads: hashThreads)
                                      : try DirtyTracker.uffd(region: region.buffer)
        let source = try ReplicationSource(region: region, tracker: tracker, config: config, hooks: workload.hooks)
        _ = t
        return (source, replica, th, done).withTransport(t)
    }

    // Full copy throughput.
    do {
        let w = BenchWorkload(region: region, pattern: pattern, pagesPerSecond: 0)
        let (source, _, _, done) = try session(engine: .uffdAsync, config: ReplicationConfig(), workload: w, replicaRegion: other)
        let t0 = now()
        try source.connect(pendingTransport!)
        let dt = now() - t0
        print("  full copy                   \(gbps(Double(bytes) / dt)) GB/s  (\(fmt(Double(bytes) / dt / tcpBW * 100, 0))% of one plain TCP stream, \(fmt(Double(bytes) / dt / memcpyBW * 100, 0))% of memcpy)")
        source.detach()
        source.tracker.stop()
        done.wait()
    }

    // Checkpoint pauses at 25/50/100 ms epochs.
    print("  checkpoint pause, workload at \(dirtyRate) pages/s (\(fmt(Double(dirtyRate * dirtyPageSize) / 1e6, 0)) MB/s dirtied):")
    print("    engine       epoch   epochs  pause p50   pause p99   pause max   pages/epoch  src footprint  replica staging peak")
    for engine in [DirtyPageEngine.uffdAsync, .hash] where engines.contains(engine == .hash ? "hash" : "uffd") {
        for epochMs in [25, 50, 100] {
            let w = BenchWorkload(region: region, pattern: pattern, pagesPerSecond: dirtyRate)
            let (source, replica, _, done) = try session(engine: engine, config: ReplicationConfig(epochInterval: Double(epochMs) / 1000, rpoBound: 5),
                                                         workload: w, replicaRegion: other)
            try source.connect(pendingTransport!)
            w.start(seed: UInt64(epochMs))
            var reports: [EpochReport] = []
            let t0 = now()
            while now() - t0 < seconds { reports.append(try source.checkpoint()) }
            w.finish()
            let pausesMs = reports.map { $0.pauseSeconds * 1000 }
            let perEpoch = reports.map { Double($0.pagesStreamed + $0.pagesAtPause) }
            let fp = source.status.trackingFootprintBytes
            source.detach()
            source.tracker.stop()
            done.wait()
            print("    \(engine.rawValue.padding(toLength: 11, withPad: " ", startingAt: 0))  \(String(epochMs).leftPad(3)) ms  \(String(reports.count).leftPad(6))  \(fmt(percentile(pausesMs, 50), 2).leftPad(6)) ms  \(fmt(percentile(pausesMs, 99), 2).leftPad(7)) ms  \(fmt(pausesMs.max() ?? 0, 2).leftPad(7)) ms  \(fmt(median(perEpoch), 0).leftPad(11))  \(fmt(Double(fp) / Double(bytes) * 100, 3).leftPad(9))%     \(replica.peakStagingBytes >> 20) MiB")
        }
    }

    // RPO: kill the primary at a random instant during steady replication.
    do {
        print("  RPO (primary killed at a random instant, 50 ms epochs, \(dirtyRate) pages/s):")
        var lostPages: [Double] = [], lostMs: [Double] = []
        var krng = SeededRandom(seed: 99)
        for _ in 0..<5 {
            let w = BenchWorkload(region: region, pattern: pattern, pagesPerSecond: dirtyRate)
            let (source, replica, _, done) = try session(engine: .uffdAsync, config: ReplicationConfig(epochInterval: 0.05, rpoBound: 5),
                                                         workload: w, replicaRegion: other)
            try source.connect(pendingTransport!)
            w.start(seed: krng.next())
            let killAt = now() + 0.3 + Double(krng.next() % 1000) / 1000 * 0.5
            let stopper = Thread {
                while now() < killAt { usleep(200) }
                // The kill: the workload's memory freezes at this instant and the link dies.
                w.freeze()
                source.transportForBench?.close()
            }
            stopper.start()
            while true {
                do { try source.checkpoint() } catch { break }
            }
            let sinceCommit = source.status.secondsSinceCommit
            var differing = 0
            for p in 0..<pages where memcmp(region.page(p), replica.region.page(p), dirtyPageSize) != 0 { differing += 1 }
            lostPages.append(Double(differing))
            lostMs.append(min(sinceCommit, 10) * 1000)
            w.finish()
            source.tracker.stop()
            done.wait()
        }
        print("    pages lost p50 \(fmt(median(lostPages), 0)), max \(fmt(lostPages.max() ?? 0, 0)); time since last committed checkpoint p50 \(fmt(median(lostMs), 1)) ms, max \(fmt(lostMs.max() ?? 0, 1)) ms")
    }

    // Planned migration.
    do {
        print("  planned migration (\(dirtyRate) pages/s workload):")
        let w = BenchWorkload(region: region, pattern: pattern, pagesPerSecond: dirtyRate)
        let (source, _, _, done) = try session(engine: .uffdAsync, config: ReplicationConfig(epochInterval: 0.05), workload: w, replicaRegion: other)
        w.start(seed: 5)
        let t0 = now()
        try source.connect(pendingTransport!)
        let report = try PlannedMigration.run(source: source, policy: MigrationPolicy(), hooks: MigrationHooks(recordOwner: {}))
        let total = now() - t0
        w.finish()
        done.wait()
        print("    total \(fmt(total * 1000, 0)) ms (full copy + \(report.convergeRounds) converge + \(report.turboRounds) turbo rounds), blackout \(fmt(report.blackoutSeconds * 1000, 2)) ms, outcome \(report.outcome.rawValue)")
        for tr in report.transitions { print("      \(tr)") }
        source.tracker.stop()
    }
    listener.close()

    print("\nQEMU live-migration peer: ", terminator: "")
    if args.contains("--qemu") {
        print(qemuBaseline(sizeMiB: sizeMiB))
    } else {
        print("skipped (pass --qemu; needs qemu-system-x86 and a guest kernel, see docs/ENDOPHYTE.md)")
    }
}

// MARK: helpers

enum BenchPattern: String { case random, sequential, hot }

nonisolated(unsafe) private var pendingTransport: TCPReplicationTransport?

private extension Tuple4 {}
private struct Tuple4 {}

extension (ReplicationSource, ReplicaReceiver, Thread, DispatchSemaphore) {
}

func percentile(_ xs: [Double], _ p: Double) -> Double {
    let s = xs.sorted()
    guard !s.isEmpty else { return .nan }
    let i = min(s.count - 1, Int((p / 100 * Double(s.count - 1)).rounded(.up)))
    return s[i]
}

func gbps(_ bytesPerSecond: Double) -> String { fmt(bytesPerSecond / 1e9, 2) }

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}

func timed<T>(_ body: () throws -> T) rethrows -> (T, Double) {
    let t0 = now()
    let r = try body()
    return (r, now() - t0)
}
