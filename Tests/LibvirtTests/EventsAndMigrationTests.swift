import Foundation
import Libvirt
import XCTest

/// Lifecycle events through libvirt's default event loop, and the migration and job-statistics
/// calls' refusals, against `test:///default` (in-process; its events go through the same loop a
/// remote daemon's do). Real migrations between two daemons run in `mycelium-bench vm --sections migration`.
final class EventsAndMigrationTests: XCTestCase {
    func domainXML(_ name: String) -> String {
        "<domain type='test'><name>\(name)</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"
    }

    /// Events of one domain as they arrive.
    final class Received: @unchecked Sendable {
        // SAFETY: `items` is guarded by `lock`.
        private let lock = NSLock()
        private var items: [DomainLifecycleEvent] = []
        func add(_ e: DomainLifecycleEvent) { lock.withLock { items.append(e) } }
        func of(_ domain: String) -> [DomainLifecycleEvent] { lock.withLock { items.filter { $0.domain == domain } } }
    }

    func waitFor(_ what: String, timeout: Double = 10, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            if Date() > deadline { XCTFail("timed out waiting for \(what)"); throw NSError(domain: what, code: 1) }
            usleep(2_000)
        }
    }

    func testLifecycleEventsArriveInOrderStampedOnArrival() throws {
        try LibvirtEventLoop.start()
        try LibvirtEventLoop.start()  // a second start is a no-op
        let c = try LibvirtConnection(uri: "test:///default")
        let got = Received()
        let sub = try c.subscribeToLifecycleEvents { got.add($0) }
        defer { sub.cancel() }
        let before = LibvirtEventLoop.monotonicSeconds()
        let d = try c.define(xml: domainXML("ev-1"))
        try d.start()
        try d.suspend()
        try d.resume()
        try d.destroy()
        try d.undefine()
        try waitFor("six events of ev-1") { got.of("ev-1").count >= 6 }
        let events = got.of("ev-1")
        XCTAssertEqual(events.map(\.kind), [.defined, .started, .suspended, .resumed, .stopped, .undefined], "\(events)")
        let after = LibvirtEventLoop.monotonicSeconds()
        let stamps = events.map(\.receivedAt)
        XCTAssertEqual(stamps, stamps.sorted(), "stamped in arrival order")
        XCTAssertTrue(stamps.allSatisfy { $0 >= before && $0 <= after }, "stamped on the monotonic clock while it ran: \(before) \(stamps) \(after)")
        XCTAssertEqual(events[2].detail, 0, "suspended on request (VIR_DOMAIN_EVENT_SUSPENDED_PAUSED), not for a migration")
        XCTAssertNotEqual(events[2].detail, DomainLifecycleEvent.suspendedMigrated)
    }

    /// Several subscriptions on one connection (libvirt itself takes one callback per connection and
    /// event: the module fans out). A cancelled one gets nothing of an event a live one gets (one
    /// event reaches every handler in the same dispatch); after the last cancel, a new subscription
    /// registers anew and receives.
    func testACancelledSubscriptionReceivesNothingMore() throws {
        try LibvirtEventLoop.start()
        let c = try LibvirtConnection(uri: "test:///default")
        let cancelled = Received(), live = Received()
        let a = try c.subscribeToLifecycleEvents { cancelled.add($0) }
        let b = try c.subscribeToLifecycleEvents { live.add($0) }
        defer { b.cancel() }
        let d = try c.define(xml: domainXML("ev-2"))
        try waitFor("both see the definition") { cancelled.of("ev-2").count == 1 && live.of("ev-2").count == 1 }
        a.cancel()
        a.cancel()  // idempotent
        try d.undefine()
        try waitFor("the live one sees the removal") { live.of("ev-2").count == 2 }
        XCTAssertEqual(cancelled.of("ev-2").map(\.kind), [.defined])
        XCTAssertEqual(live.of("ev-2").map(\.kind), [.defined, .undefined])

        b.cancel()
        let again = Received()
        let c2 = try c.subscribeToLifecycleEvents { again.add($0) }
        defer { c2.cancel() }
        let d3 = try c.define(xml: domainXML("ev-3"))
        try d3.undefine()
        try waitFor("the new subscription sees ev-3") { again.of("ev-3").count == 2 }
        XCTAssertEqual(live.of("ev-3"), [], "nothing after its cancel")
    }

    /// The test driver migrates nothing and keeps no job statistics: both refusals are libvirt's own,
    /// typed, naming what was attempted.
    func testMigrationAndJobStatisticsRefusalsAreLibvirts() throws {
        let c = try LibvirtConnection(uri: "test:///default")
        let d = try c.domain(named: "test")
        XCTAssertThrowsError(try d.migrate(to: "qemu+tcp://192.0.2.1/system", options: [.live, .peerToPeer])) { error in
            let e = error as! LibvirtError
            XCTAssertEqual(e.kind, .noSupport, "\(e)")
            XCTAssertTrue(e.message.contains("p2p"), e.message)
            XCTAssertTrue(e.description.contains("migrate 'test' to qemu+tcp://192.0.2.1/system"), e.description)
        }
        XCTAssertEqual(try d.state(), .running, "the refused migration left the guest running")
        XCTAssertThrowsError(try d.completedJobStatistics()) { error in
            let e = error as! LibvirtError
            XCTAssertEqual(e.kind, .noSupport, "\(e)")
            XCTAssertTrue(e.description.contains("completed job's statistics of 'test'"), e.description)
        }
    }
}
