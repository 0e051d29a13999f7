import DirtyPages
import Endophyte
import Foundation
import Libvirt
import MyceliumControl
import VMHost
import VMTestSupport
import XCTest

/// The host-side VM driver against real libvirtd daemons (one per network namespace, scripts/vmhost)
/// running the real TCG guest (scripts/vm-guest): a busybox init that counts in RAM and prints
/// `COUNT <boottag> <n>` on its serial port about every 100 ms.
final class VMHostTests: XCTestCase {
    static let memoryMiB: UInt32 = 128

    override class func tearDown() {
        // Safety net for a test that died between `up` and its defer.
        _ = try? runTool([Repo.vmhost, "down-all", Unique.processPrefix], allowFailure: true)
        super.tearDown()
    }

    func spec(kernel: String? = nil) throws -> VMSpec {
        let g = try Guest.files.get()
        return VMSpec(name: "endophyte", memoryMiB: Self.memoryMiB, vcpus: 1, kernel: kernel ?? g.kernel, initrd: g.initrd, cmdline: Guest.cmdline)
    }

    /// Boots `spec` as the primary on `host` and waits until it counts.
    func bootPrimary(_ host: VMHost, _ spec: VMSpec, serial: String, qemuLog: String, shim: DirtyPageShim? = nil,
                     controlSocket: String? = nil) throws -> (EndophyteDomain, Double) {
        let t0 = monotonicSeconds()
        let d = try host.start(spec, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: serial, shim: shim, controlSocket: controlSocket))
        do {
            try waitUntil("the guest to boot and count to 3", timeout: 60) { SerialLog(path: serial).counts.count >= 3 }
        } catch {
            let tail = { (p: String) in String(((try? String(contentsOfFile: p, encoding: .utf8)) ?? "(unreadable)").suffix(1500)) }
            throw HarnessFailure("\(error)\n--- serial \(serial):\n\(tail(serial))\n--- QEMU log \(qemuLog):\n\(tail(qemuLog))")
        }
        return (d, monotonicSeconds() - t0)
    }

    struct Checkpoint {
        let image: RAMImage
        let deviceState: DeviceState
        /// The primary's serial log while it was paused.
        let serialAtPause: SerialLog
        let pauseSeconds: Double
        let copySeconds: Double
        let deviceStateSeconds: Double
        let resumeSeconds: Double
    }

    /// Pause, copy the guest's RAM, take its device state, resume: one epoch's checkpoint.
    func checkpoint(_ d: EndophyteDomain, ram: MappedRegion, epoch: UInt64, serial: String) throws -> Checkpoint {
        var t = monotonicSeconds()
        try d.pause()
        let pauseSeconds = monotonicSeconds() - t
        // Through the direct monitor libvirt learns of the pause from QEMU's STOP event, a moment later.
        try waitUntil("libvirt to see QEMU's STOP", timeout: 5) { try d.state() == .paused }
        let atPause = SerialLog(path: serial)
        t = monotonicSeconds()
        let image = try MappedRegion(memfdNamed: "checkpoint-\(epoch)", length: ram.length)
        memcpy(image.base, ram.base, ram.length)
        let copySeconds = monotonicSeconds() - t
        t = monotonicSeconds()
        let ds = try d.deviceState(epoch: epoch)
        let deviceStateSeconds = monotonicSeconds() - t
        let afterSave = SerialLog(path: serial)
        XCTAssertEqual(afterSave.counts.count, atPause.counts.count, "the guest printed nothing while paused for its checkpoint")
        XCTAssertEqual(afterSave.unfinishedLine, atPause.unfinishedLine)
        t = monotonicSeconds()
        try d.resume()
        let resumeSeconds = monotonicSeconds() - t
        return Checkpoint(image: RAMImage(epoch: epoch, region: image), deviceState: ds, serialAtPause: atPause,
                          pauseSeconds: pauseSeconds, copySeconds: copySeconds, deviceStateSeconds: deviceStateSeconds, resumeSeconds: resumeSeconds)
    }

    // (a)
    func testACheckpointedGuestKeepsCountingAndItsRAMIsTrackedThroughTheShim() throws {
        try requireRootAndQEMU()
        let hosts = try TestHosts(["a"])
        defer { hosts.down() }
        let host = try VMHost(uri: hosts.uri("a"), qemuRunDirectory: hosts.qemuRunDirectory("a"))
        let spec = try spec()
        let serial = hosts.scratch + "/a.serial"
        let shim = DirtyPageShim(library: try buildShim(into: hosts.scratch), report: hosts.scratch + "/shim.report")
        let (d, bootSeconds) = try bootPrimary(host, spec, serial: serial, qemuLog: hosts.qemuLog("a", spec.name), shim: shim)
        defer { XCTAssertNoThrow(try host.remove(spec.name)) }

        // A libvirt client sees it under its own name, marked as Mycelium's at ownership epoch 1.
        XCTAssertEqual(try host.connection.domains().map(\.name), ["endophyte"])
        XCTAssertEqual(try d.metadata(), EndophyteMetadata(role: .primary, ownershipEpoch: 1))
        XCTAssertEqual(try host.managedDomains().map(\.name), ["endophyte"])

        let ram = try d.openGuestRAM()
        XCTAssertEqual(ram.length, Int(Self.memoryMiB) << 20)
        // The shim registered guest RAM inside QEMU: its writes are tracked with uffd-remote.
        let tracking = try d.openDirtyTracker(region: ram, shimReport: shim.report)
        XCTAssertEqual(tracking.tracker.engine, .uffdRemote, tracking.fallbackReason ?? "")
        XCTAssertNil(tracking.fallbackReason)
        var bitmap = DirtyBitmap(pageCount: ram.pageCount)
        _ = try tracking.tracker.collect(into: &bitmap)
        let before = SerialLog(path: serial).counts.count
        try waitUntil("two more COUNT lines", timeout: 10) { SerialLog(path: serial).counts.count >= before + 2 }
        let dirtied = try tracking.tracker.collect(into: &bitmap)
        XCTAssertGreaterThan(dirtied, 64, "the guest rewrites 256 KiB per line; uffd-remote saw \(dirtied) pages")

        let cp = try checkpoint(d, ram: ram, epoch: 1, serial: serial)
        let atPause = try XCTUnwrap(cp.serialAtPause.last)
        XCTAssertEqual(cp.image.region.length, ram.length)
        XCTAssertGreaterThan(cp.deviceState.bytes.count, 4096)
        XCTAssertEqual(Array(cp.deviceState.bytes.prefix(4)), Array("QEVM".utf8))

        // It runs on from where it was: same boot, the next counts, nothing skipped or repeated.
        try waitUntil("five more COUNT lines after the resume", timeout: 15) { SerialLog(path: serial).counts.count >= cp.serialAtPause.counts.count + 5 }
        let log = SerialLog(path: serial)
        XCTAssertEqual(log.bootTags.count, 1, "one boot: \(log.bootTags)")
        XCTAssertEqual(Set(log.counts.map(\.tag)), [atPause.tag])
        XCTAssertEqual(log.counts.map(\.n), Array(1...log.counts.count), "consecutive counts across the checkpoint")
        XCTAssertEqual(try d.state(), .running)
        // A second checkpoint works the same (capabilities already set, a fresh fd name).
        let cp2 = try checkpoint(d, ram: ram, epoch: 2, serial: serial)
        XCTAssertGreaterThan(try XCTUnwrap(cp2.serialAtPause.last).n, atPause.n)
        XCTAssertEqual(try d.state(), .running)

        print(String(format: "VMHOST-TIMING boot=%.2fs pause=%.2fms copy(%dMiB)=%.1fms device-state=%dB/%.1fms resume=%.2fms; 2nd: pause=%.2fms device-state=%dB/%.1fms resume=%.2fms",
                     bootSeconds, cp.pauseSeconds * 1e3, Int(Self.memoryMiB), cp.copySeconds * 1e3, cp.deviceState.bytes.count,
                     cp.deviceStateSeconds * 1e3, cp.resumeSeconds * 1e3, cp2.pauseSeconds * 1e3, cp2.deviceState.bytes.count,
                     cp2.deviceStateSeconds * 1e3, cp2.resumeSeconds * 1e3))
    }

    // (b)
    func testBAStandbyOnAnotherHostResumesTheGuestAtItsCheckpointCount() throws {
        try requireRootAndQEMU()
        let hosts = try TestHosts(["a", "b"])
        defer { hosts.down() }
        let hostA = try VMHost(uri: hosts.uri("a"), qemuRunDirectory: hosts.qemuRunDirectory("a"))
        let hostB = try VMHost(uri: hosts.uri("b"), qemuRunDirectory: hosts.qemuRunDirectory("b"))
        let spec = try spec()
        let serialA = hosts.scratch + "/a.serial", serialB = hosts.scratch + "/b.serial"

        // The standby waits first, as a replica does: QEMU up, paused, `-incoming defer`, not booting.
        var t = monotonicSeconds()
        let standby = try hostB.start(spec, EndophyteDomainConfig(role: .standby, ownershipEpoch: 1, serialLog: serialB))
        let standbyStartSeconds = monotonicSeconds() - t
        defer { XCTAssertNoThrow(try hostB.remove(spec.name)) }
        XCTAssertEqual(try standby.state(), .paused)
        XCTAssertTrue(try standby.isWaitingForState(), "QEMU waits in 'inmigrate'")
        XCTAssertEqual(try standby.metadata(), EndophyteMetadata(role: .standby, ownershipEpoch: 1))

        let (primary, _) = try bootPrimary(hostA, spec, serial: serialA, qemuLog: hosts.qemuLog("a", spec.name))
        defer { XCTAssertNoThrow(try hostA.remove(spec.name)) }
        let ram = try primary.openGuestRAM()
        try waitUntil("A to count to 10", timeout: 15) { (SerialLog(path: serialA).last?.n ?? 0) >= 10 }
        let cp = try checkpoint(primary, ram: ram, epoch: 7, serial: serialA)
        let atPause = try XCTUnwrap(cp.serialAtPause.last)

        // Host A is lost; B takes over from the checkpoint.
        try hostA.remove(spec.name)
        XCTAssertEqual(try hostA.connection.domains().map(\.name), [], "nothing left defined on A")
        XCTAssertEqual(SerialLog(path: serialB).counts.count, 0, "the standby never ran on its own")
        XCTAssertEqual(SerialLog(path: serialB).bootTags, [], "the standby never booted")
        t = monotonicSeconds()
        let phases = try standby.activate(image: cp.image, deviceState: cp.deviceState)
        let activateSeconds = monotonicSeconds() - t
        XCTAssertEqual(try standby.state(), .running)
        XCTAssertFalse(try standby.isWaitingForState())
        try standby.setOwnership(EndophyteMetadata(role: .primary, ownershipEpoch: 2))
        XCTAssertEqual(try standby.metadata(), EndophyteMetadata(role: .primary, ownershipEpoch: 2))

        try waitUntil("B to print five COUNT lines", timeout: 20) { SerialLog(path: serialB).counts.count >= 5 }
        let b = SerialLog(path: serialB)
        XCTAssertEqual(b.bootTags, [], "B resumed the guest; it did not boot it")
        XCTAssertEqual(Set(b.counts.map(\.tag)), [atPause.tag], "the same boot as on A")
        // The line A was printing when paused (if any) is finished on B, so B's first complete line is
        // the count after the checkpoint's, or one later when A had begun printing that one.
        let first = try XCTUnwrap(b.counts.first).n
        let expected = cp.serialAtPause.unfinishedLine.isEmpty ? atPause.n + 1 : atPause.n + 2
        XCTAssertEqual(first, expected, "A stopped at \(atPause.n) (unfinished line '\(cp.serialAtPause.unfinishedLine)'); B went on from \(first)")
        XCTAssertEqual(b.counts.map(\.n), Array(first..<first + b.counts.count), "B counts on without gaps")
        XCTAssertTrue(b.otherLines.count <= 1, "at most the rest of A's unfinished line: \(b.otherLines)")

        print(String(format: "VMHOST-TIMING standby-start=%.2fs activate(%dMiB image, %dB device state)=%.1fms [check+copy %.1f, load %.1f, resume %.1f] checkpoint-count=%d first-on-B=%d",
                     standbyStartSeconds, Int(Self.memoryMiB), cp.deviceState.bytes.count, activateSeconds * 1e3, phases.checkAndCopy * 1e3,
                     phases.loadDeviceState * 1e3, phases.resume * 1e3, atPause.n, first))
    }

    // (c)
    func testCARAMImageAndDeviceStateOfDifferentEpochsAreRefusedAndTheStandbyIsUntouched() throws {
        try requireRootAndQEMU()
        let hosts = try TestHosts(["b"])
        defer { hosts.down() }
        let host = try VMHost(uri: hosts.uri("b"), qemuRunDirectory: hosts.qemuRunDirectory("b"))
        let spec = try spec()
        let standby = try host.start(spec, EndophyteDomainConfig(role: .standby, ownershipEpoch: 3, serialLog: hosts.scratch + "/b.serial"))
        defer { XCTAssertNoThrow(try host.remove(spec.name)) }
        let ram = try standby.openGuestRAM()
        let before = MappedRegionCopy(ram)

        let image = try MappedRegion(memfdNamed: "image", length: ram.length)
        memset(image.base, 0x5a, image.length)
        // Looks like a QEMU stream, so only the epochs can be what is refused.
        let stream = Array("QEVM".utf8) + [0, 0, 0, 3] + [UInt8](repeating: 0, count: 64)

        XCTAssertThrowsError(try standby.activate(image: RAMImage(epoch: 41, region: image), deviceState: DeviceState(epoch: 42, bytes: stream))) { error in
            guard let e = error as? VMHostError, case let .epochMismatch(r, s) = e.code else { return XCTFail("\(error)") }
            XCTAssertEqual(r, 41)
            XCTAssertEqual(s, 42)
            XCTAssertTrue(e.description.contains("epoch 41") && e.description.contains("epoch 42") && e.description.contains("one committed epoch"), e.description)
        }
        // Same epoch, but not a QEMU stream: refused before QEMU (which would exit on it) sees it.
        XCTAssertThrowsError(try standby.activate(image: RAMImage(epoch: 42, region: image), deviceState: DeviceState(epoch: 42, bytes: Array("not a stream".utf8)))) { error in
            guard let e = error as? VMHostError, case .invalidDeviceState = e.code else { return XCTFail("\(error)") }
        }
        // Same epoch, a RAM image of another size: refused.
        let small = try MappedRegion(memfdNamed: "small", length: ram.length / 2)
        XCTAssertThrowsError(try standby.activate(image: RAMImage(epoch: 42, region: small), deviceState: DeviceState(epoch: 42, bytes: stream))) { error in
            guard let e = error as? VMHostError, case let .sizeMismatch(i, g) = e.code else { return XCTFail("\(error)") }
            XCTAssertEqual(i, ram.length / 2)
            XCTAssertEqual(g, ram.length)
        }
        // The standby still waits, its RAM as it was.
        XCTAssertTrue(try standby.isWaitingForState())
        XCTAssertTrue(before.equals(ram), "the standby's RAM was not written")
        XCTAssertEqual(try standby.metadata(), EndophyteMetadata(role: .standby, ownershipEpoch: 3))
    }

    // (d)
    func testDASpecLibvirtRejectsIsLibvirtsErrorAndLeavesNothingDefined() throws {
        try requireRootAndQEMU()
        let hosts = try TestHosts(["a"])
        defer { hosts.down() }
        let host = try VMHost(uri: hosts.uri("a"), qemuRunDirectory: hosts.qemuRunDirectory("a"))
        let missing = hosts.scratch + "/no-such-kernel"
        let bad = try spec(kernel: missing)
        XCTAssertThrowsError(try host.start(bad, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: hosts.scratch + "/d.serial"))) { error in
            guard let e = error as? VMHostError, let lv = e.libvirtError else { return XCTFail("not libvirt's error: \(error)") }
            XCTAssertFalse(lv.message.isEmpty)
            XCTAssertTrue(lv.message.contains(missing), "libvirt's message names the kernel: \(lv.message)")
            XCTAssertTrue(e.description.contains(lv.message), e.description)
            XCTAssertEqual(e.domain, "endophyte")
            print("VMHOST-REJECTED \(e)")
        }
        XCTAssertEqual(try host.connection.domains().map(\.name), [], "nothing left defined")

        // Refused before libvirt: a spec the network would not record either.
        var invalid = try spec()
        invalid.name = "Not-A-Name"
        XCTAssertThrowsError(try host.start(invalid, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: hosts.scratch + "/d.serial"))) { error in
            guard let e = error as? VMHostError, case .invalidSpec = e.code else { return XCTFail("\(error)") }
        }
        // A name already defined here is refused, and the existing domain is left alone.
        let standby = try host.start(try spec(), EndophyteDomainConfig(role: .standby, ownershipEpoch: 1, serialLog: hosts.scratch + "/d.serial"))
        XCTAssertThrowsError(try host.start(try spec(), EndophyteDomainConfig(role: .primary, ownershipEpoch: 2, serialLog: hosts.scratch + "/d2.serial"))) { error in
            guard let e = error as? VMHostError, case .domainExists = e.code else { return XCTFail("\(error)") }
        }
        XCTAssertEqual(try standby.metadata(), EndophyteMetadata(role: .standby, ownershipEpoch: 1))
        try host.remove("endophyte")
        try host.remove("endophyte")  // already gone: nothing to do
        XCTAssertEqual(try host.connection.domains().map(\.name), [], "nothing left defined")
    }
}

/// A copy of a region's bytes, to show later that nothing wrote it.
struct MappedRegionCopy {
    let bytes: [UInt8]
    init(_ r: MappedRegion) { bytes = Array(UnsafeRawBufferPointer(start: r.base, count: r.length)) }
    func equals(_ r: MappedRegion) -> Bool {
        bytes.count == r.length && bytes.withUnsafeBytes { memcmp($0.baseAddress!, r.base, r.length) == 0 }
    }
}
