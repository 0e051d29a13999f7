import DirtyPages
@testable import Endophyte
import Foundation
import MyceliumCore
import MyceliumIdentity
import XCTest

/// The source's status counts a sync's pages as they go out, per message, so a caller (the agent's VM
/// API, a CLI's progress bar) sees the copy advance. Real memfd regions, a real tracker, a loopback
/// transport wrapped to read the status before each page message.
final class SyncProgressTests: XCTestCase {
    /// Forwards to a real transport; before each page message it calls `beforePages` (on the sending thread).
    final class Watching: ReplicationTransport, @unchecked Sendable {
        let inner: any ReplicationTransport
        var beforePages: (() -> Void)?
        init(_ inner: any ReplicationTransport) { self.inner = inner }
        var peerKey: PublicKey { inner.peerKey }
        func send(_ type: MessageType, header: [UInt8], pages: [UnsafeRawBufferPointer]) throws(EndophyteError) {
            if type == .pages { beforePages?() }
            try inner.send(type, header: header, pages: pages)
        }
        func receive<R>(timeout: Double?, _ body: (MessageType, UnsafeRawBufferPointer) throws(EndophyteError) -> R) throws(EndophyteError) -> R {
            try inner.receive(timeout: timeout, body)
        }
        func setStreamCount(_ count: Int) { inner.setStreamCount(count) }
        var bytesSent: UInt64 { inner.bytesSent }
        func close() { inner.close() }
    }

    func testAFullCopyCountsItsPagesPerMessageUpToItsTotal() throws {
        let pages = 4096
        let src = try MappedRegion(memfdNamed: "sp-src", length: pages * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "sp-dst", length: pages * dirtyPageSize)
        for p in 0..<3000 { src.page(p).storeBytes(of: UInt64(p) | 1, toByteOffset: 0, as: UInt64.self) }
        let replica = ReplicaReceiver(region: dst, imageIsBase: false)
        let pair = try Pair()
        let (t, bg) = try pair.connect { r in replica.serve(r) }
        let watching = Watching(t)
        let source = try ReplicationSource(region: src, tracker: try DirtyTracker.hash(region: UnsafeRawBufferPointer(src.buffer), threads: 2),
                                           config: ReplicationConfig(), hooks: SourceHooks(pause: {}, resume: {}))
        XCTAssertNil(source.status.syncPagesTotal, "no sync before the first connection")
        var seen: [(done: Int, total: Int?)] = []
        watching.beforePages = { let s = source.status; seen.append((s.syncPagesDone, s.syncPagesTotal)) }
        let sync = try source.connect(watching)
        XCTAssertEqual(sync.method, .fullCopy)

        // The copy's messages (the boundary's last dirty pages, if any, come after it and are not counted).
        let copy = seen.prefix { $0.total == pages }
        XCTAssertGreaterThan(copy.count, 1, "a 16 MiB copy takes more than one message")
        XCTAssertEqual(copy.first?.done, 0)
        XCTAssertEqual(copy.map(\.done), copy.map(\.done).sorted(), "the count only grows")
        XCTAssertTrue(copy.allSatisfy { $0.done < pages }, "before each message some pages are still to go")
        XCTAssertTrue(zip(copy, copy.dropFirst()).allSatisfy { $1.done - $0.done <= Wire.pagesPerMessage && $1.done > $0.done },
                      "it moves by each message's pages")
        XCTAssertEqual(source.status.syncPagesTotal, pages, "a full copy sends every page (holes as indexes)")
        XCTAssertEqual(source.status.syncPagesDone, pages)
        XCTAssertTrue(replica.waitUntilApplied(sync.epoch))
        XCTAssertTrue(src.contentsEqual(dst))
        source.detach()
        _ = bg.join()
    }
}
