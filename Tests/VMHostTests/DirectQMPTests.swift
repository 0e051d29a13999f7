import DirtyPages
import Endophyte
import Foundation
import Libvirt
import MyceliumControl
@testable import VMHost
import VMTestSupport
import XCTest

/// What the direct monitor reads from QEMU: bounded lines, and the messages among them.
final class QMPLineTests: XCTestCase {
    func testLinesAreSplitAcrossReadsAndAnUnendingLineIsRefusedAtItsBound() throws {
        var b = QMPLineBuffer(maxLine: 16)
        b.append(Array("{\"a\":1}\r\n{\"b\"".utf8))
        XCTAssertEqual(try b.nextLine(), Array("{\"a\":1}".utf8))
        XCTAssertNil(try b.nextLine())
        b.append(Array(":2}\n\n".utf8))
        XCTAssertEqual(try b.nextLine(), Array("{\"b\":2}".utf8))
        XCTAssertEqual(try b.nextLine(), [])
        XCTAssertNil(try b.nextLine())
        XCTAssertEqual(b.buffered.count, 0)
        b.append([UInt8](repeating: 0x41, count: 17))
        XCTAssertThrowsError(try b.nextLine()) { XCTAssertEqual($0 as? QMPLineBuffer.Failure, .lineTooLong(17)) }
        var c = QMPLineBuffer(maxLine: 4)
        c.append(Array("123456\n".utf8))
        XCTAssertThrowsError(try c.nextLine(), "a complete line longer than the bound is refused too")
    }

    func testGreetingRepliesErrorsAndEventsAreToldApart() {
        guard case .greeting = QMPMessage.parse(Array(#"{"QMP": {"version": {}, "capabilities": ["oob"]}}"#.utf8)) else { return XCTFail("greeting") }
        guard case let .reply(id, .success(v)) = QMPMessage.parse(Array(#"{"return": {"status": "paused"}, "id": "myc-3"}"#.utf8)) else {
            return XCTFail("reply")
        }
        XCTAssertEqual(id, "myc-3")
        XCTAssertEqual((v as? [String: Any])?["status"] as? String, "paused")
        guard case let .reply(eid, .failure(r)) = QMPMessage.parse(Array(#"{"id": "myc-4", "error": {"class": "GenericError", "desc": "no"}}"#.utf8)) else {
            return XCTFail("error")
        }
        XCTAssertEqual(eid, "myc-4")
        XCTAssertEqual(r.errorClass, "GenericError")
        XCTAssertEqual(r.description, "no")
        guard case .event(let name) = QMPMessage.parse(Array(#"{"timestamp": {"seconds": 1}, "event": "STOP"}"#.utf8)) else { return XCTFail("event") }
        XCTAssertEqual(name, "STOP")
        for junk in ["", "[1]", "{\"x\":1}", "{\"return\"", "\u{ff}"] {
            XCTAssertNil(QMPMessage.parse(Array(junk.utf8)), junk)
        }
    }
}

/// The direct QMP monitor against a real libvirtd and QEMU (scripts/vmhost), beside VMHostTests.
extension VMHostTests {
    // (e)
    func testEADirectStopAndContAreLibvirtsStateTooAndADirectCheckpointActivatesAStandbyElsewhere() throws {
        try requireRootAndQEMU()
        let hosts = try TestHosts(["a", "b"])
        defer { hosts.down() }
        let hostA = try VMHost(uri: hosts.uri("a"), qemuRunDirectory: hosts.qemuRunDirectory("a"))
        let hostB = try VMHost(uri: hosts.uri("b"), qemuRunDirectory: hosts.qemuRunDirectory("b"))
        let spec = try spec()
        let serialA = hosts.scratch + "/a.serial", serialB = hosts.scratch + "/b.serial"
        let socketA = hosts.scratch + "/a.qmp", socketB = hosts.scratch + "/b.qmp"

        // The standby carries a direct monitor too: the same command line shape on both copies.
        let standby = try hostB.start(spec, EndophyteDomainConfig(role: .standby, ownershipEpoch: 1, serialLog: serialB, controlSocket: socketB))
        defer { XCTAssertNoThrow(try hostB.remove(spec.name)) }
        XCTAssertTrue(try standby.isWaitingForState())
        XCTAssertEqual(standby.controlChannel(), .direct(path: socketB))
        standby.closeControlChannel()

        let (primary, _) = try bootPrimary(hostA, spec, serial: serialA, qemuLog: hosts.qemuLog("a", spec.name), controlSocket: socketA)
        defer { XCTAssertNoThrow(try hostA.remove(spec.name)) }
        XCTAssertEqual(primary.controlChannel(), .direct(path: socketA))

        // A direct stop is libvirt's state too (QEMU's STOP event reaches libvirt's monitor), and so is cont.
        var t = monotonicSeconds()
        try primary.pause()
        let stopSeconds = monotonicSeconds() - t
        try waitUntil("libvirt to report the directly stopped domain paused", timeout: 5) { try primary.state() == .paused }
        let paused = SerialLog(path: serialA).counts.count
        t = monotonicSeconds()
        try primary.resume()
        let contSeconds = monotonicSeconds() - t
        try waitUntil("libvirt to report the directly continued domain running", timeout: 5) { try primary.state() == .running }
        try waitUntil("the guest to count on after cont", timeout: 10) { SerialLog(path: serialA).counts.count >= paused + 2 }

        // Another client of the monitor gets no greeting while this one holds it, and uses libvirt.
        let other = try hostA.domain(named: spec.name)
        guard case .libvirt(let why) = other.controlChannel() else { return XCTFail("a second client got the direct monitor") }
        XCTAssertTrue(why.contains("no greeting"), why)
        XCTAssertEqual(try other.state(), .running, "the second object still works, through libvirt")

        try waitUntil("A to count to 10", timeout: 15) { (SerialLog(path: serialA).last?.n ?? 0) >= 10 }
        let ram = try primary.openGuestRAM()
        let cp = try checkpoint(primary, ram: ram, epoch: 7, serial: serialA)
        XCTAssertEqual(primary.controlChannel(), .direct(path: socketA), "the checkpoint never fell back to libvirt")
        let atPause = try XCTUnwrap(cp.serialAtPause.last)
        try waitUntil("A to count on after the checkpoint", timeout: 10) { SerialLog(path: serialA).counts.count >= cp.serialAtPause.counts.count + 2 }

        // A fresh object finds the socket in the live domain XML once the first one lets go.
        primary.closeControlChannel()
        XCTAssertEqual(try hostA.domain(named: spec.name).controlChannel(), .direct(path: socketA))

        // A is lost; B takes over from the direct checkpoint.
        try hostA.remove(spec.name)
        XCTAssertFalse(FileManager.default.fileExists(atPath: socketA), "QEMU removed its socket when it exited")
        try standby.activate(image: cp.image, deviceState: cp.deviceState)
        XCTAssertEqual(try standby.state(), .running)
        try waitUntil("B to print five COUNT lines", timeout: 20) { SerialLog(path: serialB).counts.count >= 5 }
        let b = SerialLog(path: serialB)
        XCTAssertEqual(b.bootTags, [], "B resumed the guest; it did not boot it")
        XCTAssertEqual(Set(b.counts.map(\.tag)), [atPause.tag], "the same boot as on A")
        let first = try XCTUnwrap(b.counts.first).n
        let expected = cp.serialAtPause.unfinishedLine.isEmpty ? atPause.n + 1 : atPause.n + 2
        XCTAssertEqual(first, expected, "A stopped at \(atPause.n) (unfinished line '\(cp.serialAtPause.unfinishedLine)'); B went on from \(first)")
        XCTAssertEqual(b.counts.map(\.n), Array(first..<first + b.counts.count), "B counts on without gaps")
        // The activated standby checkpoints over its own direct monitor as well.
        try standby.pause()
        try waitUntil("libvirt to report B paused", timeout: 5) { try standby.state() == .paused }
        try standby.resume()
        try waitUntil("libvirt to report B running", timeout: 5) { try standby.state() == .running }
        XCTAssertEqual(standby.controlChannel(), .direct(path: socketB))

        print(String(format: "VMHOST-DIRECT stop=%.2fms cont=%.2fms checkpoint: pause=%.2fms device-state=%dB/%.1fms resume=%.2fms",
                     stopSeconds * 1e3, contSeconds * 1e3, cp.pauseSeconds * 1e3, cp.deviceState.bytes.count, cp.deviceStateSeconds * 1e3,
                     cp.resumeSeconds * 1e3))
    }

    // (f)
    func testFADomainWhoseDirectMonitorIsMissingOrCannotBeMadeIsCheckpointedThroughLibvirt() throws {
        try requireRootAndQEMU()
        let hosts = try TestHosts(["a"])
        defer { hosts.down() }
        let host = try VMHost(uri: hosts.uri("a"), qemuRunDirectory: hosts.qemuRunDirectory("a"))
        let spec = try spec()
        let serial = hosts.scratch + "/a.serial", socket = hosts.scratch + "/a.qmp"
        let (d, _) = try bootPrimary(host, spec, serial: serial, qemuLog: hosts.qemuLog("a", spec.name), controlSocket: socket)
        defer { XCTAssertNoThrow(try host.remove(spec.name)) }

        // The socket is gone (QEMU still listens, but nobody can reach it by name).
        XCTAssertEqual(unlink(socket), 0)
        guard case .libvirt(let why) = d.controlChannel() else { return XCTFail("the direct monitor was used without its socket") }
        XCTAssertTrue(why.contains(socket) && why.contains("cannot connect"), why)
        let ram = try d.openGuestRAM()
        let cp = try checkpoint(d, ram: ram, epoch: 1, serial: serial)
        XCTAssertEqual(Array(cp.deviceState.bytes.prefix(4)), Array("QEVM".utf8))
        XCTAssertEqual(try d.state(), .running)
        try waitUntil("the guest to count on after the checkpoint", timeout: 10) { SerialLog(path: serial).counts.count >= cp.serialAtPause.counts.count + 2 }
        let log = SerialLog(path: serial)
        XCTAssertEqual(log.counts.map(\.n), Array(1...log.counts.count), "consecutive counts across the checkpoint")

        // A socket QEMU cannot create (no such directory): the domain starts without it.
        var other = spec
        other.name = "endophyte-2"
        let unreachable = hosts.scratch + "/no-such-dir/b.qmp"
        let serial2 = hosts.scratch + "/b.serial"
        let d2 = try host.start(other, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: serial2, controlSocket: unreachable))
        defer { XCTAssertNoThrow(try host.remove(other.name)) }
        XCTAssertEqual(try d2.state(), .running)
        guard case .libvirt(let why2) = d2.controlChannel() else { return XCTFail("a direct monitor without a socket") }
        XCTAssertTrue(why2.contains("no direct monitor"), why2)
        XCTAssertNil(EndophyteDomainXML.controlSocket(inDomainXML: try d2.domain.xml()), "started without the second monitor")
        try waitUntil("the second guest to count", timeout: 60) { SerialLog(path: serial2).counts.count >= 2 }
        try d2.pause()
        XCTAssertEqual(try d2.state(), .paused)
        try d2.resume()
        XCTAssertEqual(try d2.state(), .running)
    }
}
