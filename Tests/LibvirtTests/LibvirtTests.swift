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
