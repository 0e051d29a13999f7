import Foundation
import MyceliumAPI
@testable import MyceliumAgent
import MyceliumCore
import MyceliumRaft
import MyceliumWAL
import XCTest

/// The disaster drill of docs/BACKUP.md with real agents: five nodes, scheduled backups on every node,
/// every sclerotium killed and its home deleted, the network restored on a surviving member from its
/// newest scheduled backup, and the other survivor rejoining it by itself with the state intact.
final class DisasterDrillProcessTests: XCTestCase {
    let names = ["n1", "n2", "n3", "n4", "n5"]

    /// A node whose own Raft snapshot cannot be read does not know what it holds, so a restore there
    /// could throw away newer state unnoticed: it is refused with what to do, and with --force the
    /// node's Raft position is still read (the restored log must start past it).
    func testARestoreRefusesWhenTheNodesOwnSnapshotCannotBeReadUnlessForced() throws {
        let c = try AgentCluster()
        XCTAssertEqual(try c.cli(["network", "create", "--home", c.home("n1")]).0, 0)
        let paths = AgentPaths(home: c.home("n1"))
        try AtomicFile.makeDirectory(paths.raftDir)
        let (wal, _) = try WriteAheadLog.open(directory: paths.raftDir)
        try wal.save(hardState: HardState(term: 7, commit: 40), entries: [],
                     snapshot: Snapshot(metadata: SnapshotMetadata(index: 40, term: 7, confState: ConfState()), data: [0xDE, 0xAD, 0xBE, 0xEF]))
        wal.close()
        XCTAssertThrowsError(try DisasterRecovery.localState(home: c.home("n1"))) { error in
            XCTAssertTrue("\(error)".contains("cannot be read") && "\(error)".contains("--force"), "\(error)")
        }
        let forced = try XCTUnwrap(DisasterRecovery.localState(home: c.home("n1"), force: true))
        XCTAssertNil(forced.state, "an unreadable state is not passed off as an empty one")
        XCTAssertEqual(forced.lastIndex, 40)
        XCTAssertEqual(forced.term, 7)
    }

    func testAllSclerotiaLostThenRestoredFromABackupAndTheSurvivorsRejoin() async throws {
        let c = try AgentCluster()
        func kvPort(_ n: String) -> Int { c.port("n1") + 10 + (Int(n.dropFirst()) ?? 0) }
        func backups(_ n: String) -> String { c.dir + "/backups-" + n }
        c.extraConfig = { n in
            "client_listen = \"127.0.0.1:\(kvPort(n))\"\nbackup_dir = \"\(backups(n))\"\nbackup_interval_s = 1\nbackup_keep = 2\n"
        }
        try c.createNetwork()
        for n in names.dropFirst() { try c.join(n) }
        try await c.waitUntil("5 nodes formed", nodes: names, AgentCluster.formed(5))
        var ids: [String: String] = [:]
        for n in names { ids[n] = await c.status(n)!.node }
        let sclerotia = await c.status("n1")!.sclerotia
        XCTAssertEqual(sclerotia.count, 3)
        let survivors = names.filter { !sclerotia.contains(ids[$0]!) }
        let lost = names.filter { sclerotia.contains(ids[$0]!) }
        XCTAssertEqual(survivors.count, 2)
        let (restorer, rejoiner) = (survivors[0], survivors[1])

        // A backup taken before the write, through the local API (`mycelium backup create`).
        let early = c.dir + "/early.mbk"
        let (code, out) = try c.cli(["backup", "create", "--home", c.home(restorer), early])
        XCTAssertEqual(code, 0, out)
        let network = await c.status(restorer)!.network
        XCTAssertTrue(out.contains("kv keys") && out.contains(network), out)

        // A write the drill must find again, committed through the leader.
        let key = Data("drill/before".utf8).base64EncodedString(), value = Data("still here".utf8).base64EncodedString()
        let put = try curl(["-X", "POST", "-d", "{\"key\":\"\(key)\",\"value\":\"\(value)\"}", "http://127.0.0.1:\(kvPort(restorer))/v3/kv/put"])
        XCTAssertTrue(put.1.hasSuffix("200"), put.1)

        // Scheduled backups: the restorer's newest holds the write, and only backup_keep files stay.
        var newest = ""
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let files = ((try? FileManager.default.contentsOfDirectory(atPath: backups(restorer))) ?? []).filter { $0.hasSuffix(".mbk") }.sorted()
            if let last = files.last, files.count <= 2 {
                let (vc, vout) = try c.cli(["backup", "verify", "-o", "json", backups(restorer) + "/" + last])
                if vc == 0, vout.contains("\"kv_keys\" : 1") { newest = backups(restorer) + "/" + last; break }
            }
            try await Task.sleep(nanoseconds: 200_000_000)  // polling the directory, bounded by the deadline
        }
        XCTAssertFalse(newest.isEmpty, "a scheduled backup holding the write appeared, with at most 2 kept")
        let kept = try FileManager.default.contentsOfDirectory(atPath: backups(restorer)).filter { $0.hasSuffix(".mbk") }
        XCTAssertLessThanOrEqual(kept.count, 3, "retention keeps backup_keep (one more may be being written): \(kept)")

        // A damaged copy is refused by verify, with what to do.
        var damaged = try Data(contentsOf: URL(fileURLWithPath: newest))
        damaged[damaged.count / 2] ^= 0x01
        try damaged.write(to: URL(fileURLWithPath: c.dir + "/damaged.mbk"))
        let (dc, dout) = try c.cli(["backup", "verify", c.dir + "/damaged.mbk"])
        XCTAssertNotEqual(dc, 0)
        XCTAssertTrue(dout.contains("checksum"), dout)

        // A node of another network refuses the backup, and says which network it is of.
        XCTAssertEqual(try c.cli(["network", "create", "--home", c.dir + "/elsewhere"]).0, 0)
        let (oc, oout) = try c.cli(["backup", "restore", "--home", c.dir + "/elsewhere", newest])
        XCTAssertNotEqual(oc, 0)
        XCTAssertTrue(oout.contains("the backup is of network \(network)"), oout)

        // The disaster: every sclerotium dies with its disk.
        for n in lost {
            c.kill9(n)
            try FileManager.default.removeItem(atPath: c.home(n))
        }
        // The restore needs the agent stopped, and refuses the backup older than this node's state.
        let (rc0, rout0) = try c.cli(["backup", "restore", "--home", c.home(restorer), newest])
        XCTAssertNotEqual(rc0, 0)
        XCTAssertTrue(rout0.contains("stop myceliumd"), rout0)
        c.terminate(restorer)
        let (rc1, rout1) = try c.cli(["backup", "restore", "--home", c.home(restorer), early])
        XCTAssertNotEqual(rc1, 0)
        XCTAssertTrue(rout1.contains("KV revision") && rout1.contains("--force"), rout1)
        // The restorer leads alone; the other survivor rejoins without being told anything.
        let survivorsAlive: ([StatusResponse]) -> Bool = { vs in
            vs.allSatisfy { $0.leader == ids[restorer]! && $0.sclerotia == [ids[restorer]!] }
                && vs.allSatisfy { v in lost.allSatisfy { l in members(v).contains { $0.id == ids[l]! && $0.status == "failed" } } }
        }
        func keptFiles() -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: c.home(rejoiner))) ?? []).filter { $0.hasPrefix("backup-before-restore-") }
        }

        // Forced, the early backup is restored: the other survivor, which held the write, follows the
        // restored network and keeps what it held as a backup it signed, and says so.
        let (rcf, routf) = try c.cli(["backup", "restore", "--force", "--home", c.home(restorer), early])
        XCTAssertEqual(rcf, 0, routf)
        try c.start(restorer)
        try await c.waitUntil("the early restore leads and the survivor follows it", nodes: survivors, timeout: 60) { vs in
            survivorsAlive(vs) && vs.allSatisfy { $0.appliedIndex > 1 << 32 }
        }
        try await c.waitUntil("the survivor kept its newer state", nodes: [rejoiner]) { vs in
            !keptFiles().isEmpty && vs[0].events.contains { $0.contains("kept it in") }
        }
        let keptFile = c.home(rejoiner) + "/" + keptFiles()[0]
        let (kc, kout) = try c.cli(["backup", "verify", "-o", "json", keptFile])
        XCTAssertEqual(kc, 0, kout)
        XCTAssertTrue(kout.contains("\"kv_keys\" : 1"), "the survivor's own state, with the write: \(kout)")
        let missing = try curl(["-X", "POST", "-d", "{\"key\":\"\(key)\"}", "http://127.0.0.1:\(kvPort(rejoiner))/v3/kv/range"])
        XCTAssertTrue(missing.1.hasSuffix("200") && !missing.1.contains(value), "the early state has no write: \(missing.1)")

        // Restored again, from the newest backup: this node's state (the early one) is not newer.
        c.terminate(restorer)
        let (rc2, rout2) = try c.cli(["backup", "restore", "--home", c.home(restorer), newest])
        XCTAssertEqual(rc2, 0, rout2)
        try c.start(restorer)
        try await c.waitUntil("the restored node leads and the survivor follows it", nodes: survivors, timeout: 60) { vs in
            survivorsAlive(vs) && vs.allSatisfy { $0.appliedIndex > 1 << 33 }
        }
        let rejoined = await c.status(rejoiner)!
        print("drill: \(rejoiner) after the restore: term \(rejoined.term), applied \(rejoined.appliedIndex), epoch \(rejoined.epoch), events \(rejoined.events.suffix(3))")
        // The state from before the disaster: read linearizably through the survivor that rejoined.
        let got = try curl(["-X", "POST", "-d", "{\"key\":\"\(key)\"}", "http://127.0.0.1:\(kvPort(rejoiner))/v3/kv/range"])
        XCTAssertTrue(got.1.contains(value), "the write from before the disaster is there: \(got.1)")
        // And the network takes new writes.
        let after = try curl(["-X", "POST", "-d", "{\"key\":\"\(Data("drill/after".utf8).base64EncodedString())\",\"value\":\"\(value)\"}",
                              "http://127.0.0.1:\(kvPort(rejoiner))/v3/kv/put"])
        XCTAssertTrue(after.1.hasSuffix("200"), after.1)
    }

    func curl(_ args: [String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        p.arguments = ["-s", "-m", "20", "-w", "\n%{http_code}"] + args
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text)
    }
}

/// The drill with no backup at all: the seed spore the leader wrote to seed_dirs brings the
/// membership back (the KV and the workload tables start empty), and the survivors rejoin.
final class SeedSporeDrillProcessTests: XCTestCase {
    func testAllSclerotiaLostThenRestoredFromASeedSporeAlone() async throws {
        let names = ["n1", "n2", "n3", "n4", "n5"]
        let c = try AgentCluster()
        let seeds = c.dir + "/seeds"
        try FileManager.default.createDirectory(atPath: seeds, withIntermediateDirectories: true)
        c.seedDirs = [seeds]
        try c.createNetwork()
        for n in names.dropFirst() { try c.join(n) }
        try await c.waitUntil("5 nodes formed", nodes: names, AgentCluster.formed(5))
        var ids: [String: String] = [:]
        for n in names { ids[n] = await c.status(n)!.node }
        let sclerotia = await c.status("n1")!.sclerotia
        let network = await c.status("n1")!.network
        let survivors = names.filter { !sclerotia.contains(ids[$0]!) }, lost = names.filter { sclerotia.contains(ids[$0]!) }
        XCTAssertEqual(survivors.count, 2)
        // A copy of the seed spore of the formed network: the leader rewrites it (at most once a
        // second) as the spore changes, so the copy is taken once it names all five and the sclerotia.
        let seedPath = seeds + "/" + network + ".seed"
        let copy = c.dir + "/kept.seed"
        try await c.waitUntil("a seed spore naming the formed network", nodes: ["n1"]) { _ in
            try? FileManager.default.removeItem(atPath: copy)
            guard (try? FileManager.default.copyItem(atPath: seedPath, toPath: copy)) != nil,
                  let (code, out) = try? c.cli(["spore", "verify", copy, "--network", network, "-o", "json"]), code == 0 else { return false }
            return out.contains("\"members\" : 5") && sclerotia.allSatisfy { out.contains($0) }
        }

        for n in lost {
            c.kill9(n)
            try FileManager.default.removeItem(atPath: c.home(n))
        }
        let restorer = survivors[0]
        c.terminate(restorer)
        // Not a backup: refused as one, accepted as a seed spore.
        let (bc, bout) = try c.cli(["backup", "restore", "--home", c.home(restorer), copy])
        XCTAssertNotEqual(bc, 0)
        XCTAssertTrue(bout.contains("MYBK"), bout)
        let (rc, rout) = try c.cli(["backup", "restore", "--seed-spore", "--home", c.home(restorer), copy])
        XCTAssertEqual(rc, 0, rout)
        try c.start(restorer)
        try await c.waitUntil("the restored node leads and the survivor follows it", nodes: survivors, timeout: 60) { vs in
            vs.allSatisfy { $0.leader == ids[restorer]! && $0.sclerotia == [ids[restorer]!] && $0.appliedIndex > 1 << 32 }
                && vs.allSatisfy { v in lost.allSatisfy { l in members(v).contains { $0.id == ids[l]! && $0.status == "failed" } } }
                && vs.allSatisfy { v in survivors.allSatisfy { s in members(v).contains { $0.id == ids[s]! && $0.isAlive } } }
        }
    }
}
