import Foundation
import Libvirt
import XCTest

/// The wrapper against libvirt's own test driver (`test:///default`: real libvirt, an in-process
/// mock hypervisor with one running domain called "test"). Each `test:///default` connection gets
/// its own fresh state, so the tests share nothing. Real QEMU guests under real daemons are the
/// endophyte tests' business.
final class LibvirtTests: XCTestCase {
    func domainXML(_ name: String) -> String {
        """
        <domain type='test'>
          <name>\(name)</name>
          <memory unit='MiB'>64</memory>
          <vcpu>1</vcpu>
          <os><type arch='x86_64'>hvm</type></os>
        </domain>
        """
    }

    func testTheTestDriversDomainIsListedAndRunning() throws {
        let c = try LibvirtConnection(uri: "test:///default")
        let names = try c.domains().map(\.name)
        XCTAssertEqual(names, ["test"])
        XCTAssertEqual(try c.domain(named: "test").state(), .running)
        XCTAssertFalse(try c.hostname().isEmpty)
        XCTAssertEqual(try c.domain(named: "test").uuid.count, 36)
    }

    func testADomainGoesThroughItsLifeAndIsGone() throws {
        let c = try LibvirtConnection(uri: "test:///default")
        let d = try c.define(xml: domainXML("endophyte-1"))
        XCTAssertEqual(d.name, "endophyte-1")
        XCTAssertEqual(try d.state(), .shutOff, "defined, not started")
        try d.start()
        XCTAssertEqual(try d.state(), .running)
        try d.suspend()
        XCTAssertEqual(try d.state(), .paused)
        try d.resume()
        XCTAssertEqual(try d.state(), .running)
        XCTAssertTrue(try d.xml().contains("<name>endophyte-1</name>"))
        XCTAssertEqual(Set(try c.domains().map(\.name)), ["test", "endophyte-1"])
        try d.destroy()
        XCTAssertEqual(try d.state(), .shutOff)
        try d.undefine()
        XCTAssertThrowsError(try c.domain(named: "endophyte-1")) { error in
            let e = error as! LibvirtError
            XCTAssertEqual(e.kind, .noDomain, "\(e)")
            XCTAssertEqual(e.code, 42, "libvirt's own VIR_ERR_NO_DOMAIN")
            XCTAssertFalse(e.message.isEmpty)
            XCTAssertTrue(e.description.contains("endophyte-1"), e.description)
        }
    }

    func testLibvirtsRefusalsKeepTheirCodeAndMessage() throws {
        let c = try LibvirtConnection(uri: "test:///default")
        // Not XML at all.
        XCTAssertThrowsError(try c.define(xml: "<domain")) { error in
            let e = error as! LibvirtError
            XCTAssertEqual(e.kind, .invalidXML, "\(e)")
            XCTAssertFalse(e.message.isEmpty)
            XCTAssertTrue(e.description.contains("define a domain"), e.description)
        }
        // A state change the domain is not in.
        let d = try c.define(xml: domainXML("idle"))
        XCTAssertThrowsError(try d.resume()) { error in
            // The test driver says "internal error" (code 1) where QEMU's says operation invalid: what
            // matters is that libvirt's own code and words come through.
            let e = error as! LibvirtError
            XCTAssertEqual(e.code, 1, "\(e)")
            XCTAssertTrue(e.message.contains("not paused"), e.message)
        }
        XCTAssertThrowsError(try d.destroy()) { error in
            XCTAssertEqual((error as! LibvirtError).kind, .operationInvalid, "\(error)")
        }
        // The QEMU monitor exists only under the QEMU driver.
        XCTAssertThrowsError(try c.domain(named: "test").qemuMonitorCommand(#"{"execute":"query-status"}"#)) { error in
            let e = error as! LibvirtError
            XCTAssertNotEqual(e.kind, .other, "a refusal libvirt names: \(e)")
        }
        try d.undefine()
    }

    func testStateReasonsUndefineWithFlagsAndMetadataRoundTrip() throws {
        let c = try LibvirtConnection(uri: "test:///default")
        let d = try c.define(xml: domainXML("standby-1"))
        XCTAssertTrue(try d.isPersistent())
        XCTAssertFalse(try d.isActive())
        let ns = "https://example.org/xmlns/probe/1"
        XCTAssertNil(try d.metadata(namespaceURI: ns, live: false), "no such element yet")
        try d.setMetadata("<probe epoch='7'/>", key: "probe", namespaceURI: ns)
        let stored = try XCTUnwrap(try d.metadata(namespaceURI: ns, live: false))
        XCTAssertTrue(stored.contains("epoch=\"7\"") || stored.contains("epoch='7'"), stored)

        // The test driver has no paused start (the QEMU one does: VMHostTests' standbys); its
        // refusal comes through as libvirt's.
        XCTAssertThrowsError(try d.start(paused: true)) { error in
            let e = error as! LibvirtError
            XCTAssertEqual(e.code, 8, "libvirt's VIR_ERR_INVALID_ARG: \(e)")
            XCTAssertTrue(e.message.contains("unsupported flags"), e.message)
        }
        try d.start(paused: false)
        XCTAssertTrue(try d.isActive())
        try d.suspend()
        let (state, reason) = try d.stateAndReason()
        XCTAssertEqual(state, .paused)
        XCTAssertEqual(reason, LibvirtDomain.pausedUser)
        try d.setMetadata("<probe epoch='8'/>", key: "probe", namespaceURI: ns)
        XCTAssertTrue(try XCTUnwrap(try d.metadata(namespaceURI: ns)).contains("8"), "the running domain's copy changed")
        try d.resume()
        XCTAssertEqual(try d.state(), .running)
        try d.destroy()
        // The test driver knows these two of the flags (the QEMU driver all of `.everything`).
        try d.undefine([.managedSave, .snapshotsMetadata])
        XCTAssertEqual(try c.domains().map(\.name), ["test"], "nothing of standby-1 is left defined")
    }

    func testMonitorCommandsWithFilesNeedTheQEMUDriver() throws {
        let c = try LibvirtConnection(uri: "test:///default")
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fds), 0)
        defer { close(fds[0]); close(fds[1]) }
        XCTAssertThrowsError(try c.domain(named: "test").qemuMonitorCommand(#"{"execute":"getfd","arguments":{"fdname":"x"}}"#, files: [fds[1]])) { error in
            let e = error as! LibvirtError
            XCTAssertEqual(e.kind, .noSupport, "\(e)")
            XCTAssertTrue(e.description.contains("1 file(s)"), e.description)
        }
    }

    func testAnUnknownDriverIsAConnectionError() {
        XCTAssertThrowsError(try LibvirtConnection(uri: "nosuchdriver:///nowhere")) { error in
            let e = error as! LibvirtError
            XCTAssertTrue(e.description.contains("open nosuchdriver:///nowhere"), e.description)
            XCTAssertGreaterThan(e.code, 0, "\(e)")
        }
    }

    func testConnectionsAreUsableFromManyThreads() throws {
        let c = try LibvirtConnection(uri: "test:///default")
        let xmls = (0..<8).map { t in (0..<20).map { i in domainXML("t\(t)-\(i)") } }
        let errors = ErrorList()
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            do {
                for xml in xmls[t] {
                    let d = try c.define(xml: xml)
                    try d.start()
                    try d.destroy()
                    try d.undefine()
                }
            } catch {
                errors.append("\(error)")
            }
        }
        XCTAssertEqual(errors.all, [])
        XCTAssertEqual(try c.domains().map(\.name), ["test"], "every domain a thread made is gone")
    }
}

final class ErrorList: @unchecked Sendable {
    // SAFETY: `items` is guarded by `lock`.
    private let lock = NSLock()
    private var items: [String] = []
    func append(_ s: String) { lock.withLock { items.append(s) } }
    var all: [String] { lock.withLock { items } }
}
