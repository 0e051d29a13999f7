// A VM with an RBD disk fails over between two EndophyteDrivers on two libvirt hosts (scripts/vmhost,
// QEMU TCG, the scripts/vm-guest guest with `mycelium.disk=1`), on the suite's real Ceph cluster:
// A runs it and replicates its RAM to B; A's agent goes away (its driver closes: the guest runs on,
// unprotected) and then A's host freezes (SIGSTOP of its QEMU, whose librbd holds the image's lock).
// B takes over: its driver fences the image's other clients, then starts the guest from the last
// committed epoch; B's guest counts on and its counts reach the disk. When A's QEMU wakes, its guest
// runs on but every disk write is refused (DISK-ERR), and the disk never shows A's later counts.
//
// The vmhost hosts live in network namespaces; the cluster listens on 127.0.0.1 in ours, so
// scripts/netns-forward makes each of its ports reachable at the same address inside each host.

import Foundation
import Glibc
import MyceliumControl
import MyceliumIdentity
import MyceliumRBD
@testable import StorageDriver
import VMController
import VMDriver
import VMHost
import VMTestSupport
import XCTest
import CephTestSupport

final class TransitionLog: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func add(_ s: String) { lock.lock(); lines.append(s); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
}

extension StorageDriverTests {
    func testAVMWithAnRBDDiskFailsOverAndTheFrozenOldPrimaryCannotWriteIt() async throws {
        let c = try requireCluster()
        try requireRootAndQEMU()
        guard access("/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so", R_OK) == 0 else {
            return XCTFail("QEMU has no rbd driver: install qemu-block-extra (scripts/setup)")
        }
        let g = try Guest.files.get()
        let conn = try await CephConnection.connect(c.config)
        let pool = "rbd", image = "vmfo-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try await conn.createImage(pool: pool, name: image, size: 64 << 20)
        addTeardownBlock {
            guard let conn = try? await CephConnection.connect(c.config) else { return }
            let deadline = Date().addingTimeInterval(90)
            while Date() < deadline {
                do { try await conn.removeImage(pool: pool, name: image); return } catch { try? await Task.sleep(nanoseconds: 500_000_000) }
            }
            print("StorageDriverTests: could not remove image \(pool)/\(image)")
        }

        let hosts = try TestHosts(["a", "b"])
        defer { hosts.down() }

        // The cluster's ports inside each host's namespace.
        var ports: Set<Int> = []
        for cmd in ["osd dump", "mon dump", "mgr dump"] {
            let out = try await conn.monitorCommand(cmd, ["format": .string("json")]).output
            var rest = Substring(out)
            while let r = rest.range(of: "127.0.0.1:") {
                let digits = rest[r.upperBound...].prefix(while: \.isNumber)
                if let p = Int(digits), p > 0 { ports.insert(p) }
                rest = rest[r.upperBound...]
            }
        }
        XCTAssertGreaterThan(ports.count, 4, "monitor and OSD ports: \(ports)")
        let forward = Repo.root + "/scripts/netns-forward"
        var forwarders: [WriterProcess] = []
        defer { forwarders.forEach { $0.stop() } }
        for h in ["a", "b"] {
            let f = try WriterProcess([forward, "/run/netns/" + hosts.name(h)] + ports.sorted().map(String.init), outPath: hosts.scratch + "/forward-\(h).log")
            forwarders.append(f)
            _ = try await f.waitFor("the forwarder into host \(h)", seconds: 20) { $0.contains("READY") }
        }

        // Two drivers, each on its host's libvirt, replicating over loopback.
        let keyA = SigningKey(seed: Array(repeating: 11, count: 32)), keyB = SigningKey(seed: Array(repeating: 12, count: 32))
        let nodeA = MyceliumIdentity.NodeID(publicKey: keyA.publicKey), nodeB = MyceliumIdentity.NodeID(publicKey: keyB.publicKey)
        let network = NetworkID(genesisKey: keyA.publicKey)
        let book = PeerBook()
        let logA = TransitionLog(), logB = TransitionLog()
        let volume = "vol-disk"
        let source: @Sendable (String) -> VMDiskSource? = { name in
            name == volume ? .rbd(pool: pool, image: image, cephConf: c.conf, clientName: "client.admin") : nil
        }
        func settings(_ h: String) -> EndophyteDriverSettings {
            EndophyteDriverSettings(libvirtURI: hosts.uri(h), qemuRunDirectory: hosts.qemuRunDirectory(h), stateDirectory: hosts.scratch + "/state-\(h)",
                                    listenHost: "127.0.0.1", listenPort: 0, outputCommit: false, diskSource: source)
        }
        let a = try EndophyteDriver(settings: settings("a"), identity: keyA, network: network, peer: { book.lookup($0) },
                                    report: { k, l in logA.add("\(k): \(l)") })
        let b = try EndophyteDriver(settings: settings("b"), identity: keyB, network: network, peer: { book.lookup($0) },
                                    report: { k, l in logB.add("\(k): \(l)") })
        var aClosed = false
        defer { if !aClosed { a.close() }; b.close() }
        book.set(nodeA, ReplicationPeer(host: "127.0.0.1", port: a.port, key: keyA.publicKey))
        book.set(nodeB, ReplicationPeer(host: "127.0.0.1", port: b.port, key: keyB.publicKey))

        let spec = VMSpec(name: "diskvm", memoryMiB: 128, vcpus: 1, kernel: g.kernel, initrd: g.initrd,
                          cmdline: Guest.cmdline + " mycelium.disk=1", disk: volume)
        var unknown = spec
        unknown.disk = "no-such-volume"
        XCTAssertThrowsError(try a.validate(unknown)) { XCTAssertTrue("\($0)".contains("not a volume this node knows"), "\($0)") }
        try a.validate(spec)

        let serialA = hosts.scratch + "/state-a/diskvm.serial", serialB = hosts.scratch + "/state-b/diskvm.serial"
        func lines(_ path: String) -> [Substring] {
            ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(whereSeparator: { $0 == "\n" || $0 == "\r" || $0 == "\r\n" })
        }
        func counts(_ path: String) -> [Int] { lines(path).compactMap { $0.hasPrefix("COUNT ") ? Int($0.split(separator: " ").last ?? "") : nil } }
        func qmpB(_ cmd: String, _ args: String = "{}") -> String {
            (try? runTool(["/usr/bin/virsh", "-c", hosts.uri("b"), "qemu-monitor-command", "diskvm", "{\"execute\":\"\(cmd)\",\"arguments\":\(args)}"], allowFailure: true)) ?? "(virsh failed)"
        }
        func poll(_ what: String, seconds: Double = 120, _ ok: () async throws -> Bool) async throws {
            let deadline = Date().addingTimeInterval(seconds)
            while try await !ok() {
                if Date() > deadline {
                    throw ChildFailure("timed out after \(seconds) s waiting for \(what)\n--- B's QEMU: \(qmpB("query-status"))\n\(qmpB("query-block").prefix(300))\n--- B's disk queue: \(qmpB("x-query-virtio-queue-status", "{\"path\":\"/machine/peripheral/virtio-disk0/virtio-backend\",\"queue\":0}"))\n--- A:\n\(lines(serialA).suffix(8).joined(separator: "\n"))\n--- B:\n\(lines(serialB).prefix(40).joined(separator: "\n"))\n...\n\(lines(serialB).suffix(4).joined(separator: "\n"))\n--- B's QEMU log:\n\(((try? String(contentsOfFile: hosts.qemuLog("b", "diskvm"), encoding: .utf8)) ?? "").suffix(3000))\n--- A's driver:\n\(logA.all.suffix(10).joined(separator: "\n"))\n--- B's driver:\n\(logB.all.suffix(10).joined(separator: "\n"))")
                }
                try await Task.sleep(nanoseconds: 100_000_000)  // the next poll; the deadline bounds the wait
            }
        }
        /// The disk's record (`DISK <tag> <n>`), read through a handle closed again at once (an open
        /// one would be a watcher, which B's fence would blocklist).
        func disk() async throws -> (tag: String, n: Int)? {
            let img = try await conn.openImage(pool: pool, name: image)
            let bytes = try await img.read(count: 512, at: 0)
            try await img.close()
            let f = String(decoding: bytes.prefix(while: { $0 != 0 && $0 != 10 }), as: UTF8.self).split(separator: " ")
            guard f.count == 3, f[0] == "DISK", let n = Int(f[2]) else { return nil }
            return (String(f[1]), n)
        }

        // A runs it, B holds the replica.
        let r1 = VMRecord(spec: spec, primary: nodeA, replica: nodeB, epoch: 1)
        try await b.perform(.hold(r1))
        try await a.perform(.run(r1))
        try await a.perform(.keepAlive(name: "diskvm", seconds: 3600))
        XCTAssertTrue(logB.all.contains { $0.contains("its disk is an RBD image; the standby starts at takeover") }, "\(logB.all)")
        try await poll("A's guest to count onto its disk and B to hold a committed epoch") {
            guard counts(serialA).count >= 5, let d = try await disk(), d.n >= 3 else { return false }
            return (b.states()["diskvm"]?.committedEpoch ?? 0) > 0
        }
        let first = try await disk()
        let tag = try XCTUnwrap(first?.tag)

        // A's agent goes (its guest runs on), then its host freezes.
        a.close()
        aClosed = true
        let pidText = try String(contentsOfFile: hosts.qemuRunDirectory("a") + "/diskvm.pid", encoding: .utf8)
        let qemuA = try XCTUnwrap(pid_t(pidText.trimmingCharacters(in: .whitespacesAndNewlines)))
        XCTAssertEqual(kill(qemuA, SIGSTOP), 0)
        var resumed = false
        defer { if !resumed { kill(qemuA, SIGCONT) } }
        let frozenAt = counts(serialA).last ?? 0
        let atFreeze = try await disk()
        let diskAtFreeze = try XCTUnwrap(atFreeze)
        XCTAssertEqual(diskAtFreeze.tag, tag)

        // B takes over: fence, then start.
        let r2 = VMRecord(spec: spec, primary: nodeB, replica: nil, epoch: 2)
        let t0 = Date()
        try await b.perform(.run(r2))
        print("StorageDriverTests: B took over in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s: \(logB.all.filter { $0.contains("fenced") || $0.contains("took over") })")
        let fenceLine = try XCTUnwrap(logB.all.first { $0.contains("disk fenced \(pool)/\(image)") }, "\(logB.all)")
        XCTAssertTrue(fenceLine.contains("blocklisted 127.0.0.1:"), fenceLine)
        XCTAssertTrue(logB.all.firstIndex { $0.contains("disk fenced") }! < logB.all.firstIndex { $0.contains("took over") } ?? Int.max)

        // B's guest (same boot) counts past where A froze, and its counts reach the disk.
        try await poll("B's guest to count 15 past A's freeze and write it to the disk") {
            guard let last = counts(serialB).last, last >= frozenAt + 15, let d = try await disk() else { return false }
            return d.tag == tag && d.n > frozenAt + 10
        }
        XCTAssertEqual(Set(lines(serialB).filter { $0.hasPrefix("COUNT ") }.map { $0.split(separator: " ")[1] }), [Substring(tag)], "B continues A's boot")
        XCTAssertFalse(lines(serialB).contains { $0.hasPrefix("DISK-ERR") }, "B's disk writes work")
        // B's guest pauses, so the disk's content stays put while A wakes.
        try VMHost(uri: hosts.uri("b"), qemuRunDirectory: hosts.qemuRunDirectory("b")).domain(named: "diskvm").pauseThroughLibvirt()
        try await poll("B's guest to stop writing") {
            let d1 = try await disk()
            try await Task.sleep(nanoseconds: 500_000_000)  // two reads half a second apart must agree
            let d2 = try await disk()
            return d1?.n == d2?.n
        }
        let ofB = try await disk()
        let diskOfB = try XCTUnwrap(ofB)

        // A wakes: its guest runs on, but the disk refuses it.
        XCTAssertEqual(kill(qemuA, SIGCONT), 0)
        resumed = true
        try await poll("A's guest to have 3 disk writes refused after waking") {
            lines(serialA).filter { $0.hasPrefix("DISK-ERR ") }.count >= 3
        }
        XCTAssertGreaterThan(counts(serialA).last ?? 0, frozenAt, "A's guest ran on after waking")
        let last = try await disk()
        let final = try XCTUnwrap(last)
        XCTAssertEqual(final.n, diskOfB.n, "the disk shows B's count \(diskOfB.n), never A's later ones (A woke at \(frozenAt))")
        print("StorageDriverTests: A froze at \(frozenAt); B wrote up to \(diskOfB.n); A's woken guest got \(lines(serialA).filter { $0.hasPrefix("DISK-ERR ") }.count) refused writes")
    }
}

/// Node → where its replication listener is (the agent's ReplicationPeerBook, for two drivers).
final class PeerBook: @unchecked Sendable {
    private let lock = NSLock()
    private var peers: [MyceliumIdentity.NodeID: ReplicationPeer] = [:]
    func set(_ n: MyceliumIdentity.NodeID, _ p: ReplicationPeer) { lock.lock(); peers[n] = p; lock.unlock() }
    func lookup(_ n: MyceliumIdentity.NodeID) -> ReplicationPeer? { lock.lock(); defer { lock.unlock() }; return peers[n] }
}
