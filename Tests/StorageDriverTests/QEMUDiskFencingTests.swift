// The nasty case with a real hypervisor: a TCG guest (scripts/vm-guest with `mycelium.disk=1`) whose
// QEMU writes its counter to an RBD image through QEMU's own librbd (Debian's qemu-block-extra), as a
// VM's disk on a host would. Its QEMU is frozen with SIGSTOP (a frozen host), fenced from our
// connection, and we take the image over; when QEMU wakes, its guest keeps counting but every disk
// write is refused (the guest prints `DISK-ERR n`), and the image keeps our data.
//
// QEMU runs directly here, in this network namespace, not under the vmhost libvirt daemons: those
// live in network namespaces that cannot reach the test cluster's monitors on 127.0.0.1 (the test
// bridge carries no address in the root namespace, by design). The libvirt side (the domain XML's
// `<disk type='network'>`) is checked by DomainXMLTests' golden file.

import Foundation
import Glibc
import MyceliumRBD
@testable import StorageDriver
import VMHarness
import XCTest
import CephTestSupport

extension StorageDriverTests {
    func testAFrozenQEMUIsFencedAndItsGuestsDiskWritesAreRefused() async throws {
        let c = try requireCluster()
        guard getuid() == 0, access("/usr/bin/qemu-system-x86_64", X_OK) == 0 else {
            return XCTFail("needs root and QEMU (scripts/setup: qemu-system-x86, qemu-block-extra)")
        }
        guard access("/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so", R_OK) == 0 else {
            return XCTFail("QEMU has no rbd driver: install qemu-block-extra (scripts/setup)")
        }
        let g = try Guest.files.get()
        let conn = try await CephConnection.connect(c.config)
        let pool = "rbd", name = "vmdisk-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try await conn.createImage(pool: pool, name: name, size: 64 << 20)
        addTeardownBlock {
            guard let conn = try? await CephConnection.connect(c.config) else { return }
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline {
                do { try await conn.removeImage(pool: pool, name: name); return } catch { try? await Task.sleep(nanoseconds: 500_000_000) }
            }
        }
        let serial = c.dir + "/\(name).serial"
        addTeardownBlock { unlink(serial) }
        let qemu = try WriterProcess([
            "/usr/bin/qemu-system-x86_64", "-no-user-config", "-nodefaults", "-accel", "tcg", "-m", "128", "-display", "none",
            "-no-reboot", "-kernel", g.kernel, "-initrd", g.initrd, "-append", Guest.cmdline + " mycelium.disk=1",
            "-serial", "file:" + serial, "-monitor", "none",
            "-drive", "file=rbd:\(pool)/\(name):conf=\(c.conf):id=admin:keyring=\(c.keyring),format=raw,if=virtio,cache=none",
        ], outPath: c.dir + "/\(name).qemu.log")
        defer { qemu.stop() }
        addTeardownBlock { qemu.stop() }

        // The guest's tty turns "\n" into "\r\n".
        func serialLines() -> [Substring] {
            ((try? String(contentsOfFile: serial, encoding: .utf8)) ?? "").split(whereSeparator: { $0 == "\n" || $0 == "\r" || $0 == "\r\n" })
        }
        func waitSerial(_ what: String, seconds: Double = 90, _ ok: ([Substring]) -> Bool) async throws -> [Substring] {
            let deadline = Date().addingTimeInterval(seconds)
            while true {
                let l = serialLines()
                if ok(l) { return l }
                if Date() > deadline {
                    throw ChildFailure("timed out after \(seconds) s waiting for \(what); serial:\n\(l.suffix(20).joined(separator: "\n"))\nQEMU:\n\(qemu.output.suffix(2000))")
                }
                try await Task.sleep(nanoseconds: 50_000_000)  // the next poll; the deadline bounds the wait
            }
        }
        func diskRecord() async throws -> String {
            let img = try await conn.openImage(pool: pool, name: name)
            let b = try await img.read(count: 512, at: 0)
            try? await img.close()
            return String(decoding: b.prefix(while: { $0 != 0 && $0 != 10 }), as: UTF8.self)
        }

        // It boots, sees its disk, and counts onto it.
        let booted = try await waitSerial("the guest to write 3 counts to its disk") { l in
            l.contains("DISK-READY") && l.filter { $0.hasPrefix("COUNT ") }.count >= 3
        }
        guard let tag = booted.first(where: { $0.hasPrefix("GUEST-READY ") })?.split(separator: " ").last.map(String.init) else {
            return XCTFail("no GUEST-READY line: \(booted)")
        }
        XCTAssertFalse(booted.contains { $0.hasPrefix("DISK-ERR") }, "disk errors before any fence: \(booted)")
        let first = try await diskRecord()
        XCTAssertTrue(first.hasPrefix("DISK \(tag) "), "the image holds the guest's count: '\(first)'")

        // QEMU's librbd holds the exclusive lock (it took it at the guest's first write).
        let view = try await conn.openImage(pool: pool, name: name)
        let owners = try await view.lockOwners()
        try await view.close()
        XCTAssertEqual(owners.count, 1, "\(owners)")
        let qemuAddress = try XCTUnwrap(owners.first?.address)
        addTeardownBlock { try? await conn.unblocklist(address: qemuAddress) }

        // Freeze the hypervisor, fence it, take over.
        XCTAssertEqual(kill(qemu.pid, SIGSTOP), 0)
        let frozenAt = serialLines().filter { $0.hasPrefix("COUNT ") }.count
        let report = try await VolumeFencing.fenceOthers(connection: conn, pool: pool, image: name)
        print("StorageDriverTests: frozen QEMU: \(report)")
        XCTAssertEqual(report.fenced, [qemuAddress])
        let ours = try await conn.openImage(pool: pool, name: name)
        try await ours.acquireExclusiveLock()
        let marker = Array("DISK new-owner 0\n".utf8) + [UInt8](repeating: 0, count: 512 - 17)
        try await ours.write(marker, at: 0)
        try await ours.flush()

        // Wake it: the guest counts on, but its disk refuses every write.
        XCTAssertEqual(kill(qemu.pid, SIGCONT), 0)
        let woken = try await waitSerial("3 refused disk writes after QEMU wakes") { l in
            l.filter { $0.hasPrefix("DISK-ERR ") }.count >= 3
        }
        XCTAssertGreaterThan(woken.filter { $0.hasPrefix("COUNT ") }.count, frozenAt, "the guest runs on after the wake")
        let got = try await ours.read(count: 512, at: 0)
        XCTAssertEqual(got, marker, "the disk holds the new owner's data, never the woken guest's: '\(String(decoding: got.prefix(40), as: UTF8.self))'")
        print("StorageDriverTests: after the wake the guest printed \(woken.filter { $0.hasPrefix("DISK-ERR ") }.count) DISK-ERR lines; the image kept our record")
        try await ours.close()
        qemu.stop()
    }
}
