// mycelium-bench storage: volumes on Ceph (issue 18) against their peers, in one run on one cluster.
//
//   swift run -c release --scratch-path .build-release mycelium-bench storage            (root; ~10 min)
//       [--quick] [--rounds 3] [--seconds 4] [--image-mib 1024] [--seq-depth 4] [--reattach-reps 5]
//       [--trust-mib 256] [--rbd-cache off|on] [--sections io,reattach,trust] [--replication ram,vm|ram|vm|none]
//
// It brings up its own cluster (scripts/ceph up, 1 mon, 1 mgr, 4 OSDs each in its own CRUSH host, in a
// temporary directory; down at the end, on failure, and on SIGINT/SIGTERM), then:
//   - io: 4K random write and read at queue depth 1 and 16, 4M sequential write and read at
//     --seq-depth, each through OUR layer (MyceliumRBD's rbd_aio_* API, N tasks each keeping one
//     request in flight), RAW librbd (fio --ioengine=rbd on the same image) and a LOCAL file (fio
//     --ioengine=libaio --direct=1 on a file in the same temporary directory as the OSDs' files).
//     librbd's cache is off for both by default (an acknowledged write is on the OSDs: what a
//     failover may rely on); --rbd-cache on runs both with it, ours flushing once per open handle.
//     Interleaved (each case: ours, raw, local; every case; then the next round), medians of the
//     rounds; prints IOPS and MB/s and the ratios ours/raw (goal ≥ 0.95) and local/raw. The image and
//     the file are written in full first, so reads never hit unallocated space.
//   - reattach: fenced re-attach as issue 18's failover does it. Client A opens an image, takes the
//     exclusive lock and writes; then (the failure confirmed) client B, already connected, opens it,
//     finds the owner, blocklists A's address (expiry 30 days), breaks A's lock, takes it and writes
//     and flushes 4 KiB. Median and max of the total and of each step, over --reattach-reps.
//   - trust: CephStorageDriver + StoragePlanner (as StorageDriverTests) with node0..node3 all trusted
//     for `sensitive` (so a host that drops has somewhere for its replicas to go: real data movement,
//     not a pool shrinking), --trust-mib written into the sensitive pool, then node2's trust drops
//     below 0.5: time until no placement group of the pool maps to node2's OSDs (up and acting) and
//     every PG is active+clean, per GiB of the pool's data and per GiB of replicas node2 held.
//   - replication: after the cluster is down (so Ceph's daemons do not steal the CPU), `ram` and `vm`
//     (RAMBench.swift, VMBench.swift) with sizes that fit the time budget, so one run reports storage
//     and RAM replication side by side.
// --quick: a smoke run (64 MiB image, 1 round of 1 s, 2 re-attaches, 16 MiB moved, `ram` at 64 MiB).

import CephTestSupport
import Foundation
import MyceliumCore
import MyceliumIdentity
import MyceliumRBD
import StorageController
import StorageDriver

/// One I/O pattern of the matrix.
private struct IOCase: Sendable {
    let name: String
    /// fio's rw: randwrite, randread, write, read.
    let rw: String
    let blockSize: Int
    let depth: Int
    var isWrite: Bool { rw.hasSuffix("write") }
    var isRandom: Bool { rw.hasPrefix("rand") }
    /// 4K cases report IOPS, 4M cases MB/s.
    var reportsIOPS: Bool { blockSize <= 64 << 10 }
}

/// One measurement: operations and bytes per second.
private struct IOSample: Sendable {
    let iops: Double
    let bytesPerSecond: Double
}

private enum IOEngine: String, CaseIterable, Sendable {
    case ours = "ours (MyceliumRBD)", raw = "raw librbd (fio rbd)", local = "local file (fio libaio)"
}

/// A class to hang the signal-time cleanup on (BenchHygiene keys cleanups by object identity).
private final class StorageBenchOwner: Sendable {}

func runStorageBench(_ args: [String]) async throws {
    guard getuid() == 0 else { throw BenchError("mycelium-bench storage needs root (scripts/ceph runs Ceph's daemons)") }
    let quick = args.contains("--quick")
    var rounds = quick ? 1 : 3, seconds = quick ? 1.0 : 4.0, imageMiB = quick ? 64 : 1024, seqDepth = 4
    var reattachReps = quick ? 2 : 5, trustMiB = quick ? 16 : 256
    var sections: Set<String> = ["io", "reattach", "trust"]
    var rbdCache = false
    var replication: Set<String> = quick ? ["ram"] : ["ram", "vm"]
    var i = 0
    let rest = args.filter { $0 != "--quick" }
    while i < rest.count {
        guard i + 1 < rest.count else { throw BenchError("option \(rest[i]) needs a value") }
        let v = rest[i + 1]
        switch rest[i] {
        case "--rounds": rounds = max(1, Int(v) ?? rounds)
        case "--seconds": seconds = max(0.5, Double(v) ?? seconds)
        case "--image-mib": imageMiB = max(16, Int(v) ?? imageMiB)
        case "--seq-depth": seqDepth = max(1, Int(v) ?? seqDepth)
        case "--reattach-reps": reattachReps = max(1, Int(v) ?? reattachReps)
        case "--trust-mib": trustMiB = max(4, Int(v) ?? trustMiB)
        case "--rbd-cache":
            guard v == "on" || v == "off" else { throw BenchError("--rbd-cache is on or off, not '\(v)'") }
            rbdCache = v == "on"
        case "--sections": sections = Set(v.split(separator: ",").map(String.init))
        case "--replication": replication = v == "none" ? [] : Set(v.split(separator: ",").map(String.init))
        default:
            throw BenchError("unknown option \(rest[i]); use --quick --rounds N --seconds S --image-mib N --seq-depth N --reattach-reps N --trust-mib N --rbd-cache off|on --sections io,reattach,trust --replication ram,vm|none")
        }
        i += 2
    }
    let unknown = sections.subtracting(["io", "reattach", "trust"]).union(replication.subtracting(["ram", "vm"]))
    guard unknown.isEmpty else { throw BenchError("unknown section(s) \(unknown.sorted()): sections are io, reattach, trust; replication is ram, vm or none") }
    if sections.contains("io") {
        guard capture(["fio", "--enghelp=rbd"]) != nil else {
            throw BenchError("fio with its rbd engine is needed for the raw-librbd and local-file peers: run scripts/setup (installs fio)")
        }
    }

    print("mycelium-bench storage on \(machineLine())\(quick ? " (--quick: a smoke run, not a measurement)" : "")")
    if !sections.isEmpty {
        let base = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
        let work = "\(base)/mycelium-bench-storage-\(getpid())"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        BenchHygiene.ownDirectory(work)
        defer { try? FileManager.default.removeItem(atPath: work); BenchHygiene.disownDirectory(work) }

        let t0 = now()
        let cluster = try CephTestCluster.up(suite: "mycelium-bench storage", osds: 4).get()
        let owner = StorageBenchOwner()
        // A signal ends the run without running defers: take the cluster down from the handler too.
        BenchHygiene.atSignal(owner) {
            FioChildren.stopAll()
            _ = CephTestCluster.run(["down", cluster.dir])
        }
        defer {
            BenchHygiene.forgetCleanup(owner)
            CephTestCluster.down(cluster, suite: "mycelium-bench storage")
        }
        print("cluster: 1 mon, 1 mgr, 4 bluestore OSDs on sparse files in \(cluster.dir), up in \(fmt(now() - t0, 1)) s")
        let conn = try await CephConnection.connect(cluster.config)

        var summary: [String] = []
        if sections.contains("io") {
            summary += try await ioSection(cluster: cluster, work: work, rounds: rounds, seconds: seconds,
                                           imageMiB: imageMiB, seqDepth: seqDepth, rbdCache: rbdCache)
        }
        if sections.contains("reattach") {
            summary += try await reattachSection(cluster: cluster, reps: reattachReps)
        }
        if sections.contains("trust") {
            summary += try await trustSection(conn: conn, mib: trustMiB)
        }
        print("\nstorage summary")
        for line in summary { print("  " + line) }
    }

    // RAM replication, side by side, on a machine without Ceph's daemons (the cluster is down by now).
    if replication.contains("ram") {
        print("\n== RAM replication: mycelium-bench ram ==")
        let ramArgs = quick ? ["--size-mib", "64", "--seconds", "1", "--sections", "cost,copy,pause"]
                            : ["--size-mib", "256", "--seconds", "2", "--sections", "cost,copy,pause,migration"]
        do { try await runRAMBench(ramArgs) } catch { print("ram: failed: \(error)") }
    }
    if replication.contains("vm") {
        print("\n== RAM replication of a real guest: mycelium-bench vm ==")
        let vmArgs = quick ? ["--memory", "128", "--seconds", "2", "--sections", "pause"]
                           : ["--memory", "256", "--seconds", "5", "--sections", "pause"]
        do { try await runVMBench(vmArgs) } catch { print("vm: failed: \(error)") }
    }
}

// MARK: io: ours vs raw librbd vs a local file

private func ioSection(cluster: TestCluster, work: String, rounds: Int, seconds: Double,
                       imageMiB: Int, seqDepth: Int, rbdCache: Bool) async throws -> [String] {
    // Ours and fio's librbd run with the same client settings: the cluster's conf, rbd_cache as asked.
    var config = cluster.config
    config.options["rbd_cache"] = String(rbdCache)
    let conn = try await CephConnection.connect(config)
    let cases = [
        IOCase(name: "4K randwrite QD1", rw: "randwrite", blockSize: 4096, depth: 1),
        IOCase(name: "4K randwrite QD16", rw: "randwrite", blockSize: 4096, depth: 16),
        IOCase(name: "4K randread QD1", rw: "randread", blockSize: 4096, depth: 1),
        IOCase(name: "4K randread QD16", rw: "randread", blockSize: 4096, depth: 16),
        IOCase(name: "4M seqwrite QD\(seqDepth)", rw: "write", blockSize: 4 << 20, depth: seqDepth),
        IOCase(name: "4M seqread QD\(seqDepth)", rw: "read", blockSize: 4 << 20, depth: seqDepth),
    ]
    let image = "bench-\(getpid())"
    let imageBytes = imageMiB << 20
    let localFile = work + "/local.img"
    // Removed at the end; on a failure the whole cluster goes down with it.
    try await conn.createImage(pool: "rbd", name: image, size: UInt64(imageBytes))

    // Written in full first, through our layer (and the file through fio), so that reads never hit
    // space Ceph has not allocated (an absent object reads as zeros without touching a disk).
    var t = now()
    let img = try await conn.openImage(pool: "rbd", name: image)
    let fill = try await runOurs(img, IOCase(name: "fill", rw: "write", blockSize: 4 << 20, depth: 8), seconds: nil, imageBytes: imageBytes)
    try await img.aioFlush()
    try await img.close()
    print("\nio: image rbd/\(image), \(imageMiB) MiB (pool size 3), written in full through our layer in \(fmt(now() - t, 1)) s (\(fmt(fill.bytesPerSecond / 1e6)) MB/s at QD8)")
    t = now()
    _ = try runFio(["--name=fill", "--filename=\(localFile)", "--size=\(imageBytes)", "--rw=write", "--bs=4M", "--iodepth=8",
                    "--ioengine=libaio", "--direct=1"], env: [:])
    print("io: local file \(localFile), \(imageMiB) MiB, written in full in \(fmt(now() - t, 1)) s")
    print("io: librbd's cache \(rbdCache ? "on (writeback after each handle's first flush)" : "off: a write is acknowledged once it is on the OSDs") for ours and fio alike")
    print("io: \(rounds) round(s) of \(fmt(seconds, 1)) s per cell, interleaved (ours, raw, local for each case, every case per round); medians")

    var samples: [String: [IOEngine: [IOSample]]] = [:]
    for round in 1...rounds {
        for c in cases {
            for engine in IOEngine.allCases {
                let s: IOSample
                switch engine {
                case .ours:
                    let h = try await conn.openImage(pool: "rbd", name: image)
                    // librbd's cache starts writethrough until a handle's first flush
                    // (rbd_cache_writethrough_until_flush); fio's handle was seen acknowledging from
                    // the cache without one, so with the cache on ours flushes once, as QEMU does.
                    if rbdCache { try await h.aioFlush() }
                    do { s = try await runOurs(h, c, seconds: seconds, imageBytes: imageBytes) } catch { try? await h.close(); throw error }
                    try await h.close()
                case .raw:
                    // CEPH_ARGS reaches fio's librbd (rados_conf_read_file parses it): the same cache setting as ours.
                    s = try runFio(fioCaseArgs(c, seconds) + ["--ioengine=rbd", "--clientname=admin", "--pool=rbd", "--rbdname=\(image)", "--invalidate=0"],
                                   env: ["CEPH_CONF": cluster.conf, "CEPH_ARGS": "--rbd_cache=\(rbdCache)"], rw: c.rw)
                case .local:
                    s = try runFio(fioCaseArgs(c, seconds) + ["--ioengine=libaio", "--direct=1", "--filename=\(localFile)", "--size=\(imageBytes)"],
                                   env: [:], rw: c.rw)
                }
                samples[c.name, default: [:]][engine, default: []].append(s)
            }
        }
        print("io: round \(round)/\(rounds) done")
    }

    try? await conn.removeImage(pool: "rbd", name: image)
    try? FileManager.default.removeItem(atPath: localFile)

    print("\n  case                  ours (MyceliumRBD)   raw librbd (fio)    local file (fio)   ours/raw  local/raw")
    var summary: [String] = []
    for c in cases {
        func med(_ e: IOEngine) -> Double {
            median((samples[c.name]?[e] ?? []).map { c.reportsIOPS ? $0.iops : $0.bytesPerSecond / 1e6 })
        }
        let unit = c.reportsIOPS ? "IOPS" : "MB/s"
        let o = med(.ours), r = med(.raw), l = med(.local)
        func cell(_ x: Double) -> String { (fmt(x, c.reportsIOPS ? 0 : 1) + " " + unit).leftPad(17) }
        print("  \(c.name.padding(toLength: 20, withPad: " ", startingAt: 0))  \(cell(o))   \(cell(r))   \(cell(l))   \(fmt(o / r, 3).leftPad(7))  \(fmt(l / r, 2).leftPad(9))")
        summary.append("\(c.name): ours/raw \(fmt(o / r, 3))\(o / r >= 0.95 ? "" : " (below the 0.95 goal)"), local/raw \(fmt(l / r, 2))")
    }
    print("  ours = N tasks each keeping one rbd_aio request in flight (RBDImage.aioWrite/aioRead); raw = fio's rbd engine on the same image;")
    print("  local = fio libaio O_DIRECT on a file next to the OSDs' block files. 4K cases in IOPS, 4M cases in MB/s (10^6 B/s).")
    return summary
}

/// fio's arguments for one case, time-based, one job, JSON output.
private func fioCaseArgs(_ c: IOCase, _ seconds: Double) -> [String] {
    ["--name=bench", "--rw=\(c.rw)", "--bs=\(c.blockSize)", "--iodepth=\(c.depth)", "--numjobs=1",
     "--time_based=1", "--runtime=\(max(1, Int(seconds.rounded())))s", "--randrepeat=0", "--norandommap=1"]
}

/// The fio processes running now, so a signal can end them before the directories go (fio would
/// otherwise go on writing, and re-create the local file's directory after it was removed).
private enum FioChildren {
    nonisolated(unsafe) static var pids: Set<pid_t> = []
    nonisolated(unsafe) static var stopping = false
    static let lock = NSLock()

    /// Called from the signal cleanup: no new fio starts; the running ones are killed and reaped.
    static func stopAll() {
        let running = lock.withLock { stopping = true; return pids }
        for p in running { kill(p, SIGKILL) }
    }
}

/// Runs fio with JSON output; returns the `rw` direction's IOPS and bandwidth (nil `rw`: just runs it).
/// Spawned directly (posix_spawn, output through files) so its pid is known to the signal cleanup.
@discardableResult
private func runFio(_ args: [String], env: [String: String], rw: String? = nil) throws -> IOSample {
    let base = NSTemporaryDirectory() + "mycelium-bench-fio-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    let outPath = base + ".out", errPath = base + ".err"
    defer { unlink(outPath); unlink(errPath) }
    let candidates: [String] = ["/usr/bin/fio", "/usr/local/bin/fio"]
    guard let fio = candidates.first(where: { access($0, X_OK) == 0 }) else {
        throw BenchError("fio not found: run scripts/setup")
    }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    let argv = ([fio, "--output-format=json"] + args).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var environment = ProcessInfo.processInfo.environment
    for (k, v) in env { environment[k] = v }
    let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { envp.forEach { free($0) } }
    var pid: pid_t = 0
    let rc: Int32 = FioChildren.lock.withLock {
        if FioChildren.stopping { return ECANCELED }
        let r = posix_spawn(&pid, fio, &actions, nil, argv, envp)
        if r == 0 { FioChildren.pids.insert(pid) }
        return r
    }
    guard rc == 0 else { throw BenchError("cannot run fio: \(String(cString: strerror(rc)))") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    _ = FioChildren.lock.withLock { FioChildren.pids.remove(pid) }
    let text = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
    guard status == 0 else {
        let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        throw BenchError("fio \(args.joined(separator: " ")) failed (wait status \(status)): \(err.suffix(800)) \(text.suffix(400))")
    }
    guard let rw else { return IOSample(iops: 0, bytesPerSecond: 0) }
    // The rbd engine prints a line ("rbd engine: RBD version: ...") before the JSON document.
    guard let start = text.firstIndex(of: "{"),
          let doc = try? JSONSerialization.jsonObject(with: Data(text[start...].utf8)) as? [String: Any],
          let job = (doc["jobs"] as? [[String: Any]])?.first,
          let dir = job[rw.hasSuffix("write") ? "write" : "read"] as? [String: Any],
          let iops = (dir["iops"] as? NSNumber)?.doubleValue,
          let bw = (dir["bw_bytes"] as? NSNumber)?.doubleValue else {
        throw BenchError("fio printed no JSON result for \(rw): \(text.prefix(400))")
    }
    return IOSample(iops: iops, bytesPerSecond: bw)
}

/// Our layer: `c.depth` tasks, each keeping one asynchronous request in flight, for `seconds`
/// (or, with nil, one pass over the image: each task writes its share of the blocks once).
private func runOurs(_ img: RBDImage, _ c: IOCase, seconds: Double?, imageBytes: Int) async throws -> IOSample {
    let blocks = imageBytes / c.blockSize
    // Buffers are made and filled before the clock starts (fio, too, prepares its buffers first).
    let seed = UInt64(now().bitPattern)
    let buffers = (0..<c.depth).map { worker -> RBDBuffer in
        let buf = RBDBuffer(count: c.blockSize)
        var rng = SeededRandom(seed: seed &+ UInt64(worker))
        if c.isWrite { buf.withUnsafeMutableBytes { b in for j in stride(from: 0, to: b.count, by: 8) { b.storeBytes(of: rng.next(), toByteOffset: j, as: UInt64.self) } } }
        return buf
    }
    let start = now()
    let deadline = seconds.map { start + $0 } ?? .infinity
    let ops = try await withThrowingTaskGroup(of: Int.self) { group in
        for worker in 0..<c.depth {
            group.addTask {
                let buf = buffers[worker]
                var rng = SeededRandom(seed: seed &* 31 &+ UInt64(worker))
                var n = 0, next = worker
                while now() < deadline {
                    if seconds == nil && next >= blocks { break }
                    let block = c.isRandom ? Int(rng.next() % UInt64(blocks)) : next % blocks
                    next += c.depth
                    let offset = UInt64(block * c.blockSize)
                    if c.isWrite { try await img.aioWrite(buf, at: offset) } else { try await img.aioRead(into: buf, at: offset) }
                    n += 1
                }
                return n
            }
        }
        var total = 0
        for try await n in group { total += n }
        return total
    }
    let elapsed = now() - start
    return IOSample(iops: Double(ops) / elapsed, bytesPerSecond: Double(ops * c.blockSize) / elapsed)
}

// MARK: reattach: fence the old writer, take the volume over

private func reattachSection(cluster: TestCluster, reps: Int) async throws -> [String] {
    let setup = try await CephConnection.connect(cluster.config)
    let image = "bench-fence-\(getpid())"
    try await setup.createImage(pool: "rbd", name: image, size: 64 << 20)
    let expiry = 30 * 24 * 3600
    // Two variants, interleaved per rep: B as librbd comes (its lock break blocklists A once more, with
    // Ceph's default expiry: a second monitor commit, ~1 s here), and B with
    // rbd_blocklist_on_break_lock=false (A is already fenced by our own, longer blocklist entry).
    let variants: [(name: String, options: [String: String])] = [
        ("default", [:]), ("no re-blocklist", ["rbd_blocklist_on_break_lock": "false"]),
    ]
    var totals: [String: [Double]] = [:], steps: [String: [String: [Double]]] = [:]
    let order = ["open", "find owner", "blocklist", "break lock", "acquire", "write+flush"]
    print("\nreattach: A holds the exclusive lock and writes; B (connected) opens, blocklists A (expiry \(expiry / 86400) d), breaks the lock, acquires, writes 4 KiB and flushes; \(reps) reps of each variant, interleaved")
    for rep in 1...reps {
        for v in variants {
            let a = try await CephConnection.connect(cluster.config)
            var bConfig = cluster.config
            bConfig.options = v.options
            let b = try await CephConnection.connect(bConfig)
            let aAddress = try await a.address()
            let ia = try await a.openImage(pool: "rbd", name: image)
            try await ia.acquireExclusiveLock()
            try await ia.write([UInt8](repeating: 0xA0, count: 4096), at: 0)
            try await ia.flush()

            var mark = now()
            let t0 = mark
            func step(_ name: String) { let t = now(); steps[v.name, default: [:]][name, default: []].append(t - mark); mark = t }
            let ib = try await b.openImage(pool: "rbd", name: image); step("open")
            guard let lockOwner = try await ib.lockOwners().first, let address = lockOwner.address else {
                throw BenchError("reattach: B sees no owner of A's exclusive lock")
            }
            step("find owner")
            try await b.blocklist(address: address, expirySeconds: expiry); step("blocklist")
            try await ib.breakLock(owner: lockOwner.owner); step("break lock")
            try await ib.acquireExclusiveLock(); step("acquire")
            try await ib.write([UInt8](repeating: 0xB0, count: 4096), at: 0)
            try await ib.flush(); step("write+flush")
            let total = now() - t0
            totals[v.name, default: []].append(total)

            // The fence holds: A's next write is refused, and B's data is what the image has.
            var fenced = false
            do { try await ia.write([0xDE, 0xAD], at: 0) } catch { if case .blocklisted = error { fenced = true } }
            let bytes = try await ib.read(count: 2, at: 0)
            if !fenced || bytes != [0xB0, 0xB0] { print("reattach: \(v.name) rep \(rep): THE FENCE FAILED: A's write was not refused as blocklisted, or the image has A's bytes") }
            try? await ia.close()
            try await ib.close()
            try? await b.unblocklist(address: aAddress)
            print("reattach: rep \(rep)/\(reps) \(v.name): \(fmt(total * 1000, 0)) ms\(fenced ? "" : " (NOT fenced)")")
        }
    }
    try? await setup.removeImage(pool: "rbd", name: image)
    print("\n  step          " + variants.map { "\($0.name) median / max".leftPad(30) }.joined())
    for s in order + ["total"] {
        let cells = variants.map { v -> String in
            let xs = s == "total" ? totals[v.name] ?? [] : steps[v.name]?[s] ?? []
            return "\(fmt(median(xs) * 1000, 1)) / \(fmt((xs.max() ?? .nan) * 1000, 1)) ms".leftPad(30)
        }
        print("  \(s.padding(toLength: 12, withPad: " ", startingAt: 0))" + cells.joined())
    }
    print("  goal: < 5 s after the failure is confirmed. 'no re-blocklist' = B's client with rbd_blocklist_on_break_lock=false")
    return variants.map { v in
        let xs = totals[v.name] ?? []
        return "fenced re-attach (\(v.name)): median \(fmt(median(xs), 2)) s, max \(fmt(xs.max() ?? .nan, 2)) s over \(reps) (goal < 5 s)"
    }
}

// MARK: trust: how fast data leaves a host whose trust dropped

private func trustSection(conn: CephConnection, mib: Int) async throws -> [String] {
    let driver = CephStorageDriver(connection: conn)
    let planner = StoragePlanner(pgCount: 16)
    // All four hosts qualify for `sensitive` (≥ 0.5): when node2 drops, its replicas have a host to go to.
    var hosts = [900_000, 800_000, 600_000, 600_000].enumerated().map { i, t -> StorageHost in
        var id = [UInt8](repeating: 0, count: 16)
        id[15] = UInt8(i + 1)
        return StorageHost(crushName: "node\(i)", node: try! NodeID(bytes: id), trust: TrustPPM(t))
    }
    let pool = DataClass.sensitiveData.poolName
    _ = try await driver.reconcile(hosts: hosts, classes: DataClass.defaults, planner: planner)
    try await waitAllClean(conn, deadline: 300, "after creating the class pools")

    let image = "bench-trust-\(getpid())"
    try await conn.createImage(pool: pool, name: image, size: UInt64(mib) << 20)
    let img = try await conn.openImage(pool: pool, name: image)
    let t = now()
    _ = try await runOurs(img, IOCase(name: "fill", rw: "write", blockSize: 4 << 20, depth: 8), seconds: nil, imageBytes: mib << 20)
    try await img.aioFlush()
    try await img.close()
    print("\ntrust: \(mib) MiB written into pool \(pool) (size 3 over node0..node3) in \(fmt(now() - t, 1)) s")
    try await waitAllClean(conn, deadline: 300, "after writing")

    let node2OSDs = Set(try await driver.osdHosts().filter { $0.value == "node2" }.map(\.key))
    guard !node2OSDs.isEmpty else { throw BenchError("trust: no OSD in CRUSH host node2") }
    let pgids = try await poolPGs(conn, pool)
    let before = try await pgMaps(conn, pgids)
    let held = before.filter { !node2OSDs.isDisjoint(with: $0.acting) }.count
    let heldGiB = Double(mib) / 1024 * Double(held) / Double(max(1, pgids.count))
    print("trust: node2 (osd \(node2OSDs.sorted().map(String.init).joined(separator: ","))) holds a replica of \(held) of \(pgids.count) PGs (~\(fmt(heldGiB * 1024, 0)) MiB); its trust drops to 0.4")

    hosts[2].trust = 400_000
    let t0 = now()
    let report = try await driver.reconcile(hosts: hosts, classes: DataClass.defaults, planner: planner)
    let reconciled = now() - t0
    // Done when every PG of the pool, asked directly (its primary OSD's own view, which never lags
    // behind the OSD map as the manager's `status` digest can), is active+clean with node2 in neither
    // its up nor its acting set. `left` = node2 gone from every mapping (acting drops it once backfill
    // has copied its replicas elsewhere).
    var left: Double?
    while true {
        let states = try await pgStates(conn, pgids)
        let gone = states.allSatisfy { node2OSDs.isDisjoint(with: $0.up) && node2OSDs.isDisjoint(with: $0.acting) }
        if gone && left == nil { left = now() - t0 }
        if gone && states.allSatisfy({ $0.state == "active+clean" && $0.up == $0.acting }) { break }
        if now() - t0 > 900 { throw BenchError("trust: after 900 s node2 still holds data of \(pool) or its PGs are not active+clean: \(states.filter { $0.state != "active+clean" }.prefix(4).map { "\($0.state) \($0.acting)" })") }
        try await Task.sleep(nanoseconds: 250_000_000)  // the next poll; the deadline above bounds the wait
    }
    let clean = now() - t0
    let gib = Double(mib) / 1024
    print("trust: reconcile (\(report.applied.map(\.description).joined(separator: ", "))) took \(fmt(reconciled, 2)) s")
    // The reconcile's monitor commits (~1 s each here) are a fixed cost; the rest scales with the data.
    let moving = max(0, clean - reconciled)
    print("\n  data in pool  node2 held  reconcile  out of acting  all active+clean  s/GiB of pool data  s/GiB node2 held  (after the reconcile: s/GiB held)")
    print("  \(fmt(Double(mib), 0).leftPad(8)) MiB  \(fmt(heldGiB * 1024, 0).leftPad(6)) MiB  \(fmt(reconciled, 1).leftPad(7)) s  \(fmt(left ?? clean, 1).leftPad(11)) s  \(fmt(clean, 1).leftPad(14)) s  \(fmt(clean / gib, 1).leftPad(18))  \(fmt(heldGiB > 0 ? clean / heldGiB : .nan, 1).leftPad(16))  \(fmt(heldGiB > 0 ? moving / heldGiB : .nan, 1).leftPad(33))")
    print("  (times from the start of the reconcile, each PG asked directly (pg query); 'out of acting' = no PG of the pool has node2 in up or acting (it serves none of the pool's I/O); 'active+clean' = every replica rebuilt elsewhere; 4 OSDs on this machine's disk;")
    print("   with small --trust-mib the fixed reconcile cost dominates the per-GiB figures)")
    try? await conn.removeImage(pool: pool, name: image)
    return ["trust drop: node2's data of \(pool) gone and all PGs active+clean in \(fmt(clean, 1)) s for \(mib) MiB = \(fmt(clean / gib, 1)) s/GiB of pool data"]
}

private struct PGMap: Decodable { let pgid: String; let up: [Int]; let acting: [Int] }
private struct PGState: Decodable { let state: String; let up: [Int]; let acting: [Int] }

/// Each PG's state, up and acting sets as its primary OSD reports them (`pg query`).
private func pgStates(_ conn: CephConnection, _ pgids: [String]) async throws -> [PGState] {
    var out: [PGState] = []
    for pg in pgids {
        let reply = try await conn.placementGroupCommand(pg, "query", ["format": .string("json")])
        do { out.append(try JSONDecoder().decode(PGState.self, from: Data(reply.output.utf8))) } catch {
            throw BenchError("trust: pg \(pg) query answered without state/up/acting: \(reply.output.prefix(300))")
        }
    }
    return out
}

/// The placement group ids of `pool` (`POOLID.x`, from `osd dump`).
private func poolPGs(_ conn: CephConnection, _ pool: String) async throws -> [String] {
    let reply = try await conn.monitorCommand("osd dump", ["format": .string("json")])
    let dump = try JSONSerialization.jsonObject(with: Data(reply.output.utf8)) as? [String: Any]
    guard let p = (dump?["pools"] as? [[String: Any]])?.first(where: { $0["pool_name"] as? String == pool }),
          let id = (p["pool"] as? NSNumber)?.intValue, let n = (p["pg_num"] as? NSNumber)?.intValue else {
        throw BenchError("trust: pool \(pool) is not in the OSD map")
    }
    return (0..<n).map { "\(id).\(String($0, radix: 16))" }
}

/// The cluster's current mapping of each PG (`pg map`: up and acting OSDs).
private func pgMaps(_ conn: CephConnection, _ pgids: [String]) async throws -> [PGMap] {
    var out: [PGMap] = []
    for pg in pgids {
        let reply = try await conn.monitorCommand("pg map", ["pgid": .string(pg), "format": .string("json")])
        out.append(try JSONDecoder().decode(PGMap.self, from: Data(reply.output.utf8)))
    }
    return out
}

/// Whether every placement group is active+clean (the manager's `status`).
private func allClean(_ conn: CephConnection) async throws -> Bool {
    let reply = try await conn.monitorCommand("status", ["format": .string("json")])
    let status = try JSONSerialization.jsonObject(with: Data(reply.output.utf8)) as? [String: Any]
    let byState = (status?["pgmap"] as? [String: Any])?["pgs_by_state"] as? [[String: Any]] ?? []
    return !byState.isEmpty && byState.allSatisfy { $0["state_name"] as? String == "active+clean" }
}

private func waitAllClean(_ conn: CephConnection, deadline: Double, _ what: String) async throws {
    let t0 = now()
    while try await !allClean(conn) {
        if now() - t0 > deadline { throw BenchError("storage: PGs not all active+clean \(Int(deadline)) s \(what)") }
        try await Task.sleep(nanoseconds: 250_000_000)  // the next poll; the deadline bounds the wait
    }
}
