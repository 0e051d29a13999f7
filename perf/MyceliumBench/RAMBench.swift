import DirtyPages
import Endophyte
import Foundation
import MyceliumCore
import MyceliumIdentity
import Rhizomorph
import Synchronization

/// `mycelium-bench ram [--size-mib N] [--seconds S] [--dirty-rate PAGES_PER_S] [--pattern random|sequential|hot10|hot1|hot0.1]
///                     [--engines uffd,remote,kvm,hash] [--hash-threads N] [--transport tcp|rhizomorph] [--qemu]`
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
/// Replication runs over `--transport`: `tcp` (one authenticated TCP stream, the default) or
/// `rhizomorph` (encrypted, striped over two loopback paths, 127.0.0.1 and 127.0.0.2, two
/// connections each); run the bench once with each to compare them on the same machine.
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
    let sections = Set((opt("--sections") ?? "cost,slowdown,copy,pause,rpo,migration").split(separator: ",").map(String.init))
    let transport = opt("--transport") ?? "tcp"
    guard transport == "tcp" || transport == "rhizomorph" else {
        print("ram: unknown --transport '\(transport)'; use tcp or rhizomorph")
        exit(2)
    }
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
    if engines.contains("uffd") && sections.contains("cost") {
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
    if engines.contains("remote") && sections.contains("cost") {
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
    if engines.contains("kvm") && sections.contains("cost") && probeDirtyPageEngines().first(where: { $0.engine == .kvm })!.isAvailable {
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
    if engines.contains("hash") && sections.contains("cost") {
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
    if sections.contains("slowdown") {
        print("\nworkload slowdown (unthrottled writer, 8-byte writes; collector every 50 ms on another thread)")
        for pat in [BenchPattern.random, .sequential, .hot10, .hot1, .hot01] {
            let baseOps = try measureOps(region: region, pattern: pat, seconds: seconds, tracker: nil)
            var line = "  \(pat.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)) none \(fmt(baseOps / 1e6, 2)) M/s"
            for e in ["uffd", "hash"] where engines.contains(e) {
                let t = e == "uffd" ? try DirtyTracker.uffd(region: region.buffer)
                                    : try DirtyTracker.hash(region: UnsafeRawBufferPointer(region.buffer), threads: hashThreads)
                let ops = try measureOps(region: region, pattern: pat, seconds: seconds, tracker: t)
                line += " | \(t.engine.rawValue) \(fmt(ops / 1e6, 2)) M/s (\(fmt((1 - ops / baseOps) * 100, 1))% slower)"
                t.stop()
            }
            print(line)
        }
        print("  (random/sequential over the whole region and hot10 = 10% of it: every page is rewritten each 50 ms, so")
        print("   nearly every write is a first write since the last collect, the uffd worst case; hot1/hot0.1 = 1%/0.1%)")
        if engines.contains("uffd") {
            // The cost model behind those numbers: one async write-protect fault per page per epoch.
            let t = try DirtyTracker.uffd(region: region.buffer)
            let n = min(pages, 65536)
            let t0 = now()
            for p in 0..<n { region.page(p).storeBytes(of: UInt8(truncatingIfNeeded: p), as: UInt8.self) }
            let perFault = (now() - t0) / Double(n)
            t.stop()
            // Unregistering drops shmem PTEs, so the first pass after it takes minor faults: warm up.
            for p in 0..<n { region.page(p).storeBytes(of: UInt8(truncatingIfNeeded: p + 1), as: UInt8.self) }
            let t1 = now()
            for p in 0..<n { region.page(p).storeBytes(of: UInt8(truncatingIfNeeded: p + 2), as: UInt8.self) }
            let perWrite = (now() - t1) / Double(n)
            print("  uffd first write to a protected page: \(fmt(perFault * 1e6, 2)) us (untracked page write \(fmt(perWrite * 1e6, 3)) us);")
            print("    overhead ≈ distinct pages dirtied per second × \(fmt(perFault * 1e6, 2)) us: 5% of one core at \(Int(0.05 / perFault)) pages/s")
        }
    }

    // MARK: replication
    print(transport == "tcp" ? "\nreplication over authenticated loopback TCP (uffd engine unless noted)"
                             : "\nreplication over rhizomorph, 2 loopback paths x 2 connections, AEAD (uffd engine unless noted)")
    let tcpListener = transport == "tcp" ? try ReplicationListener() : nil
    let rzListener = transport == "rhizomorph" ? try Listener(addresses: ["127.0.0.1", "127.0.0.2"]) : nil
    let sourceKey = SigningKey(), replicaKey = SigningKey()
    let network = NetworkID(genesisKey: SigningKey().publicKey)
    /// A source transport to a replica that serves `replica` on its own thread and signals `done` when it ends.
    func link(serving replica: ReplicaReceiver, done: DispatchSemaphore) throws -> ReplicationTransport {
        let rk = replicaKey, sk = sourceKey.publicKey
        if let l = tcpListener {
            Thread {
                if let t = try? l.accept(identity: rk, network: network, authorize: { $0 == sk }) { _ = replica.serve(t) }
                done.signal()
            }.start()
            return try TCPReplicationTransport.connect(host: "127.0.0.1", port: l.port, identity: sourceKey,
                                                       network: network, accept: { $0 == replicaKey.publicKey })
        }
        let l = rzListener!
        Thread {
            if let t = try? RhizomorphReplicationTransport.accept(from: l, identity: rk, network: network, peerKey: sk, timeout: 10) {
                _ = replica.serve(t)
            }
            done.signal()
        }.start()
        return try RhizomorphReplicationTransport.connect(paths: ["127.0.0.1", "127.0.0.2"].map { Path(local: $0, remote: $0, port: l.port) },
                                                          identity: sourceKey, network: network, peerKey: replicaKey.publicKey)
    }
    func session(engine: DirtyPageEngine, config: ReplicationConfig, workload: BenchWorkload,
                 replicaRegion: MappedRegion) throws -> BenchSession {
        let replica = ReplicaReceiver(region: replicaRegion)
        let done = DispatchSemaphore(value: 0)
        let t = try link(serving: replica, done: done)
        let tracker = engine == .hash ? try DirtyTracker.hash(region: UnsafeRawBufferPointer(region.buffer), threads: hashThreads)
                                      : try DirtyTracker.uffd(region: region.buffer)
        let source = try ReplicationSource(region: region, tracker: tracker, config: config, hooks: workload.hooks)
        return BenchSession(source: source, replica: replica, transport: t, done: done)
    }

    // Full copy throughput.
    if sections.contains("copy") {
        let w = BenchWorkload(region: region, pattern: pattern, pagesPerSecond: 0)
        let ss = try session(engine: .uffdAsync, config: ReplicationConfig(), workload: w, replicaRegion: other)
        let (source, done) = (ss.source, ss.done)
        let t0 = now()
        try source.connect(ss.transport)
        let dt = now() - t0
        print("  full copy                   \(gbps(Double(bytes) / dt)) GB/s  (\(fmt(Double(bytes) / dt / tcpBW * 100, 0))% of one plain TCP stream, \(fmt(Double(bytes) / dt / memcpyBW * 100, 0))% of memcpy)")
        source.detach()
        source.tracker.stop()
        done.wait()
    }
    if sections.contains("copy") {
        // A fresh guest's RAM is mostly zeros: those pages travel as an index only.
        let fresh = try MappedRegion(memfdNamed: "bench-fresh", length: bytes)
        let replica = ReplicaReceiver(region: other)
        let done = DispatchSemaphore(value: 0)
        let t = try link(serving: replica, done: done)
        let source = try ReplicationSource(region: fresh, tracker: try DirtyTracker.uffd(region: fresh.buffer),
                                           config: ReplicationConfig(), hooks: SourceHooks(pause: {}, resume: {}))
        let t0 = now()
        try source.connect(t)
        let dt = now() - t0
        print("  full copy, all-zero region  \(fmt(dt * 1000, 0)) ms (\(source.status.zeroPagesSent) zero pages sent as indexes, \(source.status.bytesSent >> 20) MiB on the wire)")
        source.detach()
        source.tracker.stop()
        done.wait()
    }

    // Checkpoint pauses at 25/50/100 ms epochs.
    print("  checkpoint pause, workload at \(dirtyRate) pages/s (\(fmt(Double(dirtyRate * dirtyPageSize) / 1e6, 0)) MB/s dirtied):")
    print("    engine       epoch   epochs  pause p50   pause p99   pause max   pages/epoch  src footprint  replica staging peak")
    for engine in [DirtyPageEngine.uffdAsync, .hash] where engines.contains(engine == .hash ? "hash" : "uffd") && sections.contains("pause") {
        for epochMs in [25, 50, 100] {
            let w = BenchWorkload(region: region, pattern: pattern, pagesPerSecond: dirtyRate)
            let ss = try session(engine: engine, config: ReplicationConfig(epochInterval: Double(epochMs) / 1000, rpoBound: 5),
                                 workload: w, replicaRegion: other)
            let (source, replica, done) = (ss.source, ss.replica, ss.done)
            try source.connect(ss.transport)
            w.start(seed: UInt64(epochMs))
            var reports: [EpochReport] = []
            let t0 = now()
            while now() - t0 < seconds { reports.append(try source.checkpoint()) }
            w.finish()
            let pausesMs = reports.map { $0.pauseSeconds * 1000 }
            let slow = reports.max { $0.pauseSeconds < $1.pauseSeconds }!
            let slowIndex = reports.firstIndex { $0.epoch == slow.epoch }!
            let top = pausesMs.sorted(by: >).prefix(3).map { fmt($0, 1) }.joined(separator: ", ")
            let breakdown = "epoch \(slowIndex + 1) of \(reports.count) (top 3: \(top) ms): hook \(fmt(slow.pauseHookSeconds * 1000, 1)) collect \(fmt(slow.finalCollectSeconds * 1000, 1)) send \(fmt(slow.finalSendSeconds * 1000, 1)) ack \(fmt(slow.ackWaitSeconds * 1000, 1)) resume \(fmt(slow.resumeHookSeconds * 1000, 1)) ms, \(slow.pagesAtPause) pages"
            let perEpoch = reports.map { Double($0.pagesStreamed + $0.pagesAtPause) }
            let fp = source.status.trackingFootprintBytes
            source.detach()
            source.tracker.stop()
            done.wait()
            print("    \(engine.rawValue.padding(toLength: 11, withPad: " ", startingAt: 0))  \(String(epochMs).leftPad(3)) ms  \(String(reports.count).leftPad(6))  \(fmt(percentile(pausesMs, 50), 2).leftPad(6)) ms  \(fmt(percentile(pausesMs, 99), 2).leftPad(7)) ms  \(fmt(pausesMs.max() ?? 0, 2).leftPad(7)) ms  \(fmt(median(perEpoch), 0).leftPad(11))  \(fmt(Double(fp) / Double(bytes) * 100, 3).leftPad(9))%     \(replica.peakStagingBytes >> 20) MiB")
            print("      slowest pause: \(breakdown)")
        }
    }

    // RPO: kill the primary at a random instant during steady replication.
    if sections.contains("rpo") {
        print("  RPO (primary killed at a random instant, 50 ms epochs, \(dirtyRate) pages/s):")
        var lostPages: [Double] = [], lostMs: [Double] = []
        var krng = SeededRandom(seed: 99)
        for _ in 0..<5 {
            let w = BenchWorkload(region: region, pattern: pattern, pagesPerSecond: dirtyRate)
            let ss = try session(engine: .uffdAsync, config: ReplicationConfig(epochInterval: 0.05, rpoBound: 5),
                                 workload: w, replicaRegion: other)
            let (source, replica, done) = (ss.source, ss.replica, ss.done)
            try source.connect(ss.transport)
            w.start(seed: krng.next())
            let killAt = now() + 0.3 + Double(krng.next() % 1000) / 1000 * 0.5
            let stopper = Thread {
                while now() < killAt { usleep(200) }
                // The kill: the workload's memory freezes at this instant and the link dies.
                w.freeze()
                ss.transport.close()
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
    if sections.contains("migration") {
        print("  planned migration (\(dirtyRate) pages/s workload):")
        let w = BenchWorkload(region: region, pattern: pattern, pagesPerSecond: dirtyRate)
        let ss = try session(engine: .uffdAsync, config: ReplicationConfig(epochInterval: 0.05), workload: w, replicaRegion: other)
        let (source, done) = (ss.source, ss.done)
        w.start(seed: 5)
        let t0 = now()
        try source.connect(ss.transport)
        let report = try PlannedMigration.run(source: source, policy: MigrationPolicy(), hooks: MigrationHooks(recordOwner: {}))
        let policy = MigrationPolicy()
        let total = now() - t0
        w.finish()
        done.wait()
        print("    policy: turbo at ≤ \(policy.turboEntryBytes >> 20) MiB left, blackout at ≤ \(policy.blackoutEntryBytes >> 10) KiB left")
        print("    total \(fmt(total * 1000, 0)) ms (full copy + \(report.convergeRounds) converge + \(report.turboRounds) turbo rounds), blackout \(fmt(report.blackoutSeconds * 1000, 2)) ms, outcome \(report.outcome.rawValue)")
        for tr in report.transitions { print("      \(tr)") }
        source.tracker.stop()
    }
    tcpListener?.close()

    print("\nQEMU live-migration peer (TCG guest, \(sizeMiB) MiB, tcp on loopback): ", terminator: "")
    if args.contains("--qemu") {
        print(qemuBaseline(sizeMiB: sizeMiB, kernel: opt("--qemu-kernel"), initrd: opt("--qemu-initrd")))
    } else {
        print("skipped (pass --qemu --qemu-kernel K --qemu-initrd I; needs qemu-system-x86, see docs/ENDOPHYTE.md)")
    }
}

// MARK: helpers

fileprivate enum BenchPattern: String {
    case random, sequential
    /// Random writes within the first 10%, 1%, 0.1% of the pages (a VM's hot working set).
    case hot10, hot1, hot01 = "hot0.1"
    var hotFraction: Double { self == .hot10 ? 0.1 : self == .hot1 ? 0.01 : 0.001 }
}

fileprivate struct BenchSession {
    let source: ReplicationSource
    let replica: ReplicaReceiver
    let transport: ReplicationTransport
    let done: DispatchSemaphore
}

/// The synthetic workload: one thread writing 8 bytes to pages chosen by `pattern`, at up to
/// `pagesPerSecond` page writes per second (0 = as fast as it can), behind a pause gate that acts
/// like a VM stop: `pause` returns once the writer is parked.
fileprivate final class BenchWorkload: @unchecked Sendable {
    // SAFETY (Sendable): shared state is atomic; the region is written by one thread only.
    let region: MappedRegion
    let pattern: BenchPattern
    let pagesPerSecond: Int
    private let pauseRequested = Atomic<Bool>(false)
    private let parked = Atomic<Bool>(false)
    private let stopFlag = Atomic<Bool>(false)
    private let frozen = Atomic<Bool>(false)
    let ops = Atomic<Int>(0)
    private let done = DispatchSemaphore(value: 0)
    private var running = false

    init(region: MappedRegion, pattern: BenchPattern, pagesPerSecond: Int) {
        self.region = region
        self.pattern = pattern
        self.pagesPerSecond = pagesPerSecond
    }

    func start(seed: UInt64) {
        running = true
        Thread { [self] in
            var rng = SeededRandom(seed: seed)
            let pages = region.pageCount
            let hot = max(1, Int(Double(pages) * pattern.hotFraction))
            var seq = 0
            var v: UInt64 = 0
            let t0 = now()
            var written = 0
            while !stopFlag.load(ordering: .acquiring) {
                if pauseRequested.load(ordering: .acquiring) || frozen.load(ordering: .acquiring) {
                    parked.store(true, ordering: .releasing)
                    while (pauseRequested.load(ordering: .acquiring) || frozen.load(ordering: .acquiring)) && !stopFlag.load(ordering: .acquiring) { usleep(20) }
                    parked.store(false, ordering: .releasing)
                    continue
                }
                if pagesPerSecond > 0 {
                    let ahead = Double(written) / Double(pagesPerSecond) - (now() - t0)
                    // Short naps so a pause request is seen within ~0.5 ms, like a vCPU kick.
                    if ahead > 0 { usleep(UInt32(min(ahead, 0.0005) * 1e6)); continue }
                }
                for _ in 0..<256 {
                    let p: Int
                    switch pattern {
                    case .random: p = Int(rng.next() % UInt64(pages))
                    case .sequential: p = seq; seq = (seq + 1) % pages
                    case .hot10, .hot1, .hot01: p = Int(rng.next() % UInt64(hot))
                    }
                    v &+= 1
                    region.base.storeBytes(of: v, toByteOffset: p * dirtyPageSize + Int(v % 512) * 8, as: UInt64.self)
                }
                written += 256
                ops.wrappingAdd(256, ordering: .relaxed)
            }
            done.signal()
        }.start()
    }

    func pause() {
        pauseRequested.store(true, ordering: .releasing)
        guard running else { return }
        while !parked.load(ordering: .acquiring) && !stopFlag.load(ordering: .acquiring) { usleep(10) }
    }

    func resume() { pauseRequested.store(false, ordering: .releasing) }

    /// The primary "dies": memory stops changing and never resumes.
    func freeze() {
        frozen.store(true, ordering: .releasing)
        guard running else { return }
        while !parked.load(ordering: .acquiring) && !stopFlag.load(ordering: .acquiring) { usleep(10) }
    }

    func finish() {
        guard running else { return }
        stopFlag.store(true, ordering: .releasing)
        done.wait()
        running = false
    }

    var hooks: SourceHooks { SourceHooks(pause: { [self] in pause() }, resume: { [self] in resume() }) }
}

/// Unthrottled writer ops/s for `seconds`, with `tracker` (if any) collected every 50 ms on
/// another thread, as the replication loop would.
fileprivate func measureOps(region: MappedRegion, pattern: BenchPattern, seconds: Double, tracker: DirtyTracker?) throws -> Double {
    let w = BenchWorkload(region: region, pattern: pattern, pagesPerSecond: 0)
    let stop = BenchFlag()
    let collectorDone = DispatchSemaphore(value: 0)
    if let tracker {
        let box = stop
        Thread {
            var bm = DirtyBitmap(pageCount: tracker.pageCount)
            while !box.stopped {
                _ = try? tracker.collect(into: &bm)
                usleep(50_000)
            }
            collectorDone.signal()
        }.start()
        // Let the collector arm and take a first pass before measuring.
        usleep(60_000)
    }
    w.start(seed: 1)
    let t0 = now()
    let before = w.ops.load(ordering: .relaxed)
    usleep(UInt32(seconds * 1e6))
    let n = w.ops.load(ordering: .relaxed) - before
    let dt = now() - t0
    w.finish()
    if tracker != nil {
        stop.set()
        collectorDone.wait()
    }
    return Double(n) / dt
}

fileprivate final class BenchFlag: Sendable {
    private let v = Atomic<Bool>(false)
    var stopped: Bool { v.load(ordering: .acquiring) }
    func set() { v.store(true, ordering: .releasing) }
}

/// One plain TCP stream on loopback: 1 MiB sends, no authentication, no framing.
fileprivate func plainTCPStream(bytes: Int) throws -> Double {
    let lfd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(lfd, $0, len) } }
    listen(lfd, 1)
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(lfd, $0, &len) } }
    let done = DispatchSemaphore(value: 0)
    Thread {
        let c = accept(lfd, nil, nil)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        while recv(c, buf, 1 << 20, 0) > 0 {}
        buf.deallocate()
        close(c)
        done.signal()
    }.start()
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, len) } }
    let buf = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    memset(buf, 7, 1 << 20)
    let t0 = now()
    var sent = 0
    while sent < bytes {
        let n = send(fd, buf, 1 << 20, Int32(MSG_NOSIGNAL))
        if n <= 0 { break }
        sent += n
    }
    close(fd)
    done.wait()
    let dt = now() - t0
    buf.deallocate()
    close(lfd)
    return Double(sent) / dt
}

/// QEMU's own live migration of a TCG guest with the same RAM size, over tcp on loopback, driven
/// through QMP by a small Python program (python3 is on every machine here). The guest's init keeps
/// rewriting a 32 MiB tmpfs file, so some RAM is dirtied during the migration. max-bandwidth is lifted
/// to 10 GiB/s (QEMU 7.2 defaults to 128 MiB/s) and downtime-limit is 300 ms, QEMU's default.
fileprivate func qemuBaseline(sizeMiB: Int, kernel: String?, initrd: String?) -> String {
    guard let qemu = capture(["which", "qemu-system-x86_64"])?.trimmingCharacters(in: .whitespacesAndNewlines), !qemu.isEmpty else {
        return "skipped: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    }
    guard let kernel, let initrd else {
        return "skipped: pass --qemu-kernel VMLINUZ --qemu-initrd INITRAMFS (docs/ENDOPHYTE.md says how to make them)"
    }
    guard let out = capture(["python3", "-c", qemuMigrateScript, kernel, initrd, String(sizeMiB)]) else {
        return "failed: the QEMU migration driver exited with an error"
    }
    return out.trimmingCharacters(in: .whitespacesAndNewlines)
}

private let qemuMigrateScript = #"""
import json, os, socket, subprocess, sys, time, tempfile
kernel, initrd, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = tempfile.mkdtemp(prefix="qmig")
def qemu(name, extra):
    return subprocess.Popen(["qemu-system-x86_64", "-accel", "tcg", "-m", str(mib), "-kernel", kernel, "-initrd", initrd,
        "-append", "console=ttyS0 quiet", "-display", "none", "-serial", "file:%s/%s.log" % (d, name),
        "-qmp", "unix:%s/%s.qmp,server=on,wait=off" % (d, name), "-no-reboot"] + extra,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
class QMP:
    def __init__(self, path):
        for _ in range(200):
            try:
                self.s = socket.socket(socket.AF_UNIX); self.s.connect(path); break
            except OSError: time.sleep(0.05)
        self.f = self.s.makefile("rw"); self.f.readline(); self.cmd("qmp_capabilities")
    def cmd(self, c, **a):
        self.f.write(json.dumps({"execute": c, "arguments": a}) + "\n"); self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r or "error" in r: return r
def free_port():
    # Below the ephemeral range (32768+), in the benchmarks' 30000-32767, and free right now.
    import random
    for _ in range(500):
        p = random.randrange(30000, 32768)
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", p)); return p
        except OSError: pass
        finally: s.close()
    raise SystemExit("no free loopback port in 30000-32767")
port = free_port()
dst = qemu("dst", ["-incoming", "tcp:127.0.0.1:%d" % port])
src = qemu("src", [])
try:
    t0 = time.time()
    def log():
        try: return open("%s/src.log" % d, "rb").read()
        except OSError: return b""
    while b"GUEST-READY" not in log():
        if time.time() - t0 > 120: raise SystemExit("guest did not boot")
        time.sleep(0.2)
    boot = time.time() - t0
    time.sleep(2)  # the workload under test: the guest's dirtying loop runs before migration
    q = QMP("%s/src.qmp" % d); QMP("%s/dst.qmp" % d)
    q.cmd("migrate-set-parameters", **{"max-bandwidth": 10 << 30, "downtime-limit": 300})
    q.cmd("migrate", uri="tcp:127.0.0.1:%d" % port)
    while True:
        r = q.cmd("query-migrate")["return"]
        if r.get("status") in ("completed", "failed", "cancelled"): break
        time.sleep(0.05)
    ram = r.get("ram", {})
    print(json.dumps({"status": r.get("status"), "total_ms": r.get("total-time"), "downtime_ms": r.get("downtime"),
                      "setup_ms": r.get("setup-time"), "transferred": ram.get("transferred"), "dirty_sync": ram.get("dirty-sync-count"),
                      "mbps": ram.get("mbps"), "boot_s": round(boot, 1)}))
finally:
    for p in (src, dst): p.kill()
    for p in (src, dst): p.wait()
    import shutil; shutil.rmtree(d, ignore_errors=True)
"""#

fileprivate func percentile(_ xs: [Double], _ p: Double) -> Double {
    let s = xs.sorted()
    guard !s.isEmpty else { return .nan }
    let i = min(s.count - 1, Int((p / 100 * Double(s.count - 1)).rounded(.up)))
    return s[i]
}

fileprivate func gbps(_ bytesPerSecond: Double) -> String { fmt(bytesPerSecond / 1e9, 2) }

fileprivate func timed<T>(_ body: () throws -> T) rethrows -> (T, Double) {
    let t0 = now()
    let r = try body()
    return (r, now() - t0)
}
