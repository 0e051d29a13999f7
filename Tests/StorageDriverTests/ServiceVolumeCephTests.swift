// A service's Ceph volume on the suite's real cluster (StorageDriverTests' class setUp): node A
// attaches it (qemu-storage-daemon's FUSE export → loop → ext4) and writes through the mount; A
// freezes (its daemon stopped, still holding the image's lock); the instance moves to node B, whose
// attach fences A first (VolumeFencing, as a VM takeover does) and finds A's data; A, woken, can no
// longer change the image. Two VolumeMounts with their own directories stand for the two nodes.

import Foundation
import Glibc
import MyceliumRBD
@testable import ServiceRuntime
@testable import StorageDriver
import Synchronization
import XCTest

extension StorageDriverTests {
    func testAServiceVolumeOnCephIsWrittenThroughItsMountAndTheFrozenOldNodeIsFencedOnAMove() async throws {
        let c = try requireCluster()
        let conn = try await CephConnection.connect(c.config)
        let pool = "rbd", name = "svcvol-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try await conn.createImage(pool: pool, name: name, size: 64 << 20)
        let root = NSTemporaryDirectory() + name
        let reports = Mutex<[FenceReport]>([])
        let fence: @Sendable (String, String) async throws -> String = { pool, image in
            let fc = try await CephConnection.connect(c.config)
            let r = try await VolumeFencing.fenceOthers(connection: fc, pool: pool, image: image)
            reports.withLock { $0.append(r) }
            return "\(r)"
        }
        let a = VolumeMounts(volumeDirectory: root + "/a", fence: fence), b = VolumeMounts(volumeDirectory: root + "/b", fence: fence)
        let frozen = Mutex<Int32>(0)
        addTeardownBlock {
            let f = frozen.withLock { $0 }
            if f > 0 { kill(f, SIGCONT) }
            a.cleanup(); b.cleanup()
            try? FileManager.default.removeItem(atPath: root)
            guard let conn = try? await CephConnection.connect(c.config) else { return }
            // Lift the fences this test set (its own daemons' addresses), then remove the image.
            for address in reports.withLock({ $0.flatMap(\.fenced) }) { try? await conn.unblocklist(address: address) }
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline {
                do { try await conn.removeImage(pool: pool, name: name); return } catch { try? await Task.sleep(nanoseconds: 500_000_000) }
            }
        }
        let source = ServiceVolumeSource.rbd(pool: pool, image: name, cephConf: c.conf, clientName: "client.admin")

        // Node A: a fresh image gets ext4; the workload writes through the mount.
        let mpA = try await a.attach(name, source: source)
        try "written by A\n".write(toFile: mpA + "/note", atomically: false, encoding: .utf8)
        XCTAssertEqual(try VolumeMounts.run(["sync", "-f", mpA + "/note"], what: "sync"), "")
        let pidText = try String(contentsOfFile: a.pidFile(name), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let pidA = try XCTUnwrap(Int32(pidText))
        XCTAssertTrue(VolumeMounts.isStorageDaemon(pidA))

        // A freezes while holding the image's lock; the instance moves to B.
        XCTAssertEqual(kill(pidA, SIGSTOP), 0)
        frozen.withLock { $0 = pidA }
        let mpB = try await b.attach(name, source: source)
        let fenced = reports.withLock { $0 }
        XCTAssertEqual(fenced.count, 2, "each attach fenced first: \(fenced)")
        XCTAssertEqual(fenced.first?.fenced, [], "nothing to fence on the first attach: \(fenced)")
        XCTAssertEqual(fenced.last?.fenced.count, 1, "B's attach fenced A's daemon (its one client): \(fenced)")
        XCTAssertEqual(fenced.last?.locksBroken.count, 1, "and broke its lock: \(fenced)")
        XCTAssertEqual(try String(contentsOfFile: mpB + "/note", encoding: .utf8), "written by A\n", "B sees A's data")
        try "written by B\n".write(toFile: mpB + "/note-b", atomically: false, encoding: .utf8)
        _ = try VolumeMounts.run(["sync", "-f", mpB + "/note-b"], what: "sync")

        // A wakes and tries to write: the cluster refuses its daemon (an I/O error, or nothing lands).
        XCTAssertEqual(kill(pidA, SIGCONT), 0)
        frozen.withLock { $0 = 0 }
        let zombie = try? VolumeMounts.run(["timeout", "20", "sh", "-c", "echo zombie > '\(mpA)/zombie' && sync -f '\(mpA)/zombie'"],
                                          what: "write on the fenced node", timeoutMillis: 30_000)
        print("StorageDriverTests: the fenced node's write \(zombie == nil ? "failed" : "returned") (its daemon: \(VolumeMounts.isStorageDaemon(pidA) ? "alive" : "gone"))")
        a.detach(name)
        XCTAssertFalse(VolumeMounts.isMounted(mpA))
        XCTAssertTrue(a.loops(a.exportFile(name)).isEmpty)
        XCTAssertFalse(VolumeMounts.isStorageDaemon(pidA), "A's daemon is stopped")

        // B, attached afresh, has its own and A's data and never A's late write.
        b.detach(name)
        XCTAssertFalse(VolumeMounts.isMounted(mpB))
        let again = try await b.attach(name, source: source)
        XCTAssertEqual(try String(contentsOfFile: again + "/note-b", encoding: .utf8), "written by B\n")
        XCTAssertEqual(try String(contentsOfFile: again + "/note", encoding: .utf8), "written by A\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: again + "/zombie"), "the fenced node's late write never reached the image")
        b.detach(name)
        XCTAssertEqual(b.cleanup(), [])
        XCTAssertTrue(VolumeMounts.allLoops().filter { $0.backing.hasPrefix(root) }.isEmpty, "no loop device left")
    }
}
