// VolumeFencing against a SEPARATE writer process frozen with SIGSTOP (the nasty case): the writer
// (scripts/rbd-writer, librbd through Debian's python3-rbd) holds the image's exclusive lock and writes
// a counter every ~10 ms. We freeze it, fence it from our own connection, take the lock and write our
// marker; when the writer wakes, the cluster refuses it (EBLOCKLISTED = ESHUTDOWN, 108) and the data
// stays ours. Runs on the suite's real cluster (StorageDriverTests' class setUp).

import Foundation
import Glibc
import MyceliumRBD
@testable import StorageDriver
import XCTest
import CephTestSupport

struct ChildFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A child process whose stdout and stderr go to a file (never a pipe: a frozen reader must not
/// block it), killed and reaped by `stop()`.
final class WriterProcess: @unchecked Sendable {
    let pid: pid_t
    let outPath: String
    private var reaped = false

    init(_ argv: [String], outPath: String) throws {
        self.outPath = outPath
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let cargv = argv.map { strdup($0) } + [nil]
        defer { cargv.forEach { free($0) } }
        var p: pid_t = 0
        let rc = posix_spawn(&p, argv[0], &actions, nil, cargv, environ)
        guard rc == 0 else { throw ChildFailure("cannot start \(argv[0]): \(String(cString: strerror(rc)))") }
        pid = p
    }

    var output: String { (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "" }
    var lines: [Substring] { output.split(separator: "\n") }

    /// Kills (SIGCONT first, so a frozen process dies at once) and reaps; idempotent.
    func stop() {
        guard !reaped else { return }
        reaped = true
        kill(pid, SIGCONT)
        kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }

    /// Polls `condition` on the output until it holds or `seconds` pass; returns the output.
    func waitFor(_ what: String, seconds: Double = 60, _ condition: ([Substring]) -> Bool) async throws -> [Substring] {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let l = lines
            if condition(l) { return l }
            var status: Int32 = 0
            if !reaped && waitpid(pid, &status, WNOHANG) == pid {
                reaped = true
                throw ChildFailure("the writer exited (status \(status)) before \(what):\n\(output.suffix(2000))")
            }
            if Date() > deadline { throw ChildFailure("timed out after \(seconds) s waiting for \(what):\n\(output.suffix(2000))") }
            try await Task.sleep(nanoseconds: 20_000_000)  // the next poll; the deadline bounds the wait
        }
    }
}

extension StorageDriverTests {
    func testFenceOthersStopsAFrozenWriterProcessForGood() async throws {
        let c = try requireCluster()
        let conn = try await CephConnection.connect(c.config)
        let pool = "rbd", name = "fence-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let offset: UInt64 = 1 << 20
        try await conn.createImage(pool: pool, name: name, size: 8 << 20)
        addTeardownBlock {
            // The writer's watch lingers until the OSDs time it out (~30 s); retry until the delete is accepted.
            guard let conn = try? await CephConnection.connect(c.config) else { return }
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline {
                do { try await conn.removeImage(pool: pool, name: name); return } catch { try? await Task.sleep(nanoseconds: 500_000_000) }
            }
        }

        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/rbd-writer").path
        let writer = try WriterProcess([script, c.conf, c.keyring, pool, name, String(offset)], outPath: c.dir + "/\(name).writer.log")
        defer { writer.stop() }
        addTeardownBlock { writer.stop() }

        // The writer holds the lock and has written.
        let started = try await writer.waitFor("the writer's first writes") { $0.filter { $0.hasPrefix("WROTE ") }.count >= 3 }
        guard let addrLine = started.first(where: { $0.hasPrefix("ADDR ") }) else { return XCTFail("no ADDR line: \(started)") }
        let writerAddress = CephConnection.firstAddressForTests(String(addrLine.dropFirst(5)))
        let me = try await conn.address()
        XCTAssertNotEqual(writerAddress, me)
        addTeardownBlock { try? await conn.unblocklist(address: writerAddress) }

        // Freeze it (the nasty case: alive, holding the lock, and it will wake up).
        XCTAssertEqual(kill(writer.pid, SIGSTOP), 0)
        let lastBefore = writer.lines.last(where: { $0.hasPrefix("WROTE ") }).map(String.init) ?? ""

        // We cannot write while it holds the lock.
        let ours = try await conn.openImage(pool: pool, name: name)
        let owners = try await ours.lockOwners()
        XCTAssertEqual(owners.map(\.address), [writerAddress], "the frozen writer owns the lock")

        let report = try await VolumeFencing.fenceOthers(connection: conn, pool: pool, image: name)
        print("StorageDriverTests: \(report)")
        XCTAssertEqual(report.fenced, [writerAddress], "fenced exactly the writer, never ourselves (\(me))")
        XCTAssertEqual(report.locksBroken, owners.map(\.owner))
        XCTAssertEqual(report.expirySeconds, VolumeFencing.defaultExpirySeconds)
        XCTAssertFalse(report.fenced.contains(me))

        // The blocklist entry lasts a year, not the 1 h librbd's break-lock would have set.
        let ls = try await conn.monitorCommand("osd blocklist ls", ["format": .string("json")])
        XCTAssertTrue(ls.output.contains(writerAddress), "blocklist: \(ls.output)")
        if let until = Self.blocklistUntil(ls.output, writerAddress) {
            XCTAssertGreaterThan(until.timeIntervalSinceNow, 300 * 24 * 3600, "the fence expires at \(until), too soon")
        } else {
            XCTFail("cannot read the writer's expiry from \(ls.output)")
        }

        // Take over: the lock and our marker.
        try await ours.acquireExclusiveLock()
        let weOwn = try await ours.ownsExclusiveLock()
        XCTAssertTrue(weOwn)
        let marker = Array("fenced by the new owner, pid \(getpid())".utf8).prefix(32)
        let markerBytes = Array(marker) + [UInt8](repeating: 0x20, count: 32 - marker.count)
        try await ours.write(markerBytes, at: offset)
        try await ours.flush()

        // Wake the zombie: the cluster refuses it.
        XCTAssertEqual(kill(writer.pid, SIGCONT), 0)
        let after = try await writer.waitFor("the writer to be refused as blocklisted (ERR 108)") { l in
            l.contains { $0.hasPrefix("ERR \(ESHUTDOWN) ") }
        }
        let wroteAfterWake = after.drop(while: { String($0) != lastBefore }).dropFirst().filter { $0.hasPrefix("WROTE ") }
        // At most the write it was inside when frozen (applied before the fence, reported after waking).
        XCTAssertLessThanOrEqual(wroteAfterWake.count, 1, "the writer completed writes after it was fenced:\n\(after.suffix(20).joined(separator: "\n"))")
        print("StorageDriverTests: the woken writer got: \(after.first { $0.hasPrefix("ERR ") } ?? "")")
        let data = try await ours.read(count: 32, at: offset)
        XCTAssertEqual(data, markerBytes, "the data is ours, not the writer's: \(String(decoding: data, as: UTF8.self))")
        let stillOurs = try await ours.ownsExclusiveLock()
        XCTAssertTrue(stillOurs)
        writer.stop()
        try await ours.close()
    }

    /// The `until` of `addr`'s entry in `osd blocklist ls -f json` ([{"addr":..., "until":"2027-12-07T14:00:00.123456+0000"}]).
    static func blocklistUntil(_ json: String, _ addr: String) -> Date? {
        // Pacific prints the address blocklist and then the range blocklist: `[...][]`; the first array.
        guard let end = json.firstIndex(of: "]"),
              let entries = try? JSONSerialization.jsonObject(with: Data(json[...end].utf8)) as? [[String: Any]] else { return nil }
        for e in entries where (e["addr"] as? String).map(CephConnection.firstAddressForTests) == addr {
            guard let until = e["until"] as? String else { return nil }
            let f = DateFormatter()
            f.locale = Locale(identifier: "en_US_POSIX")
            for format in ["yyyy-MM-dd'T'HH:mm:ss.SSSSSSZ", "yyyy-MM-dd'T'HH:mm:ssZ", "yyyy-MM-dd HH:mm:ss.SSSSSS"] {
                f.dateFormat = format
                if let d = f.date(from: until) { return d }
            }
            return nil
        }
        return nil
    }
}

extension CephConnection {
    /// `[v2:127.0.0.1:0/123,v1:...]` → `127.0.0.1:0/123`, as `address()` and watchers report it.
    static func firstAddressForTests(_ s: String) -> String {
        var t = Substring(s.trimmingCharacters(in: .whitespaces))
        if t.hasPrefix("[") { t = t.dropFirst() }
        if t.hasSuffix("]") { t = t.dropLast() }
        if let comma = t.firstIndex(of: ",") { t = t[..<comma] }
        for prefix in ["v2:", "v1:", "any:"] where t.hasPrefix(prefix) { t = t.dropFirst(prefix.count) }
        return String(t)
    }
}
