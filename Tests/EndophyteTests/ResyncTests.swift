import DirtyPages
@testable import Endophyte
import Foundation
import MyceliumCore
import MyceliumIdentity
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Resync by hashes (Resync.swift): a replica that already holds an image gets only the pages that
/// differ. Real memfd and file regions, real trackers, loopback transports.
final class ResyncTests: XCTestCase {
    let pages = 4096  // 16 MiB

    /// Writes a distinct non-zero value into every page of `range`.
    func fill(_ r: MappedRegion, _ range: Range<Int>, salt: UInt64) {
        for p in range { r.page(p).storeBytes(of: salt &+ UInt64(p) &* 0x9E37_79B9_7F4A_7C15 | 1, toByteOffset: (p % 64) * 8, as: UInt64.self) }
    }

    func copy(_ from: MappedRegion, into to: MappedRegion) { to.base.copyMemory(from: from.base, byteCount: from.length) }

    func hashSource(_ src: MappedRegion, engine: DirtyPageEngine = .hash) throws -> DirtyTracker {
        engine == .hash ? try DirtyTracker.hash(region: UnsafeRawBufferPointer(src.buffer), threads: 2) : try DirtyTracker.uffd(region: src.buffer)
    }

    /// (a) An image identical to the region: nothing is sent but the commit, and the image is an
    /// epoch (takeable) only once that commit lands.
    func testIdenticalImageGetsNoPages() throws {
        let src = try MappedRegion(memfdNamed: "rs-src", length: pages * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "rs-dst", length: pages * dirtyPageSize)
        fill(src, 0..<3000, salt: 1)
        copy(src, into: dst)
        let replica = ReplicaReceiver(region: dst, imageIsBase: true)
        XCTAssertEqual(replica.committedEpoch, 0, "a kept image is a base, not an epoch")
        let pair = try Pair()
        let (t, bg) = try pair.connect { r in replica.serve(r) }
        let log = EventLog()
        let source = try ReplicationSource(region: src, tracker: try hashSource(src), config: ReplicationConfig(), hooks: SourceHooks(pause: {}, resume: {}),
                                           onEvent: log.sink)
        let sync = try source.connect(t)
        XCTAssertEqual(sync.method, .hashResync)
        XCTAssertEqual(sync.differingPages, 0)
        XCTAssertEqual(sync.pagesSent, 0)
        XCTAssertEqual(sync.regionPages, pages)
        XCTAssertEqual(sync.hashBytesReceived, pages * 8 + 12 * ((pages + PageHashChunk.maxHashes - 1) / PageHashChunk.maxHashes))
        XCTAssertLessThan(sync.bytesSent, 4096, "only setup and commit went out: \(sync)")
        XCTAssertTrue(replica.waitUntilApplied(sync.epoch))
        XCTAssertEqual(replica.committedEpoch, 1)
        XCTAssertTrue(src.contentsEqual(dst))
        XCTAssertEqual(source.status.lastSync, sync)
        XCTAssertTrue(log.events.contains(.synced(sync)))
        XCTAssertTrue("\(sync)".hasPrefix("resync by hashes: 0 of 4096 pages differed, "), "\(sync)")
        source.detach()
        XCTAssertEqual(bg.join(), .sourceGone(discardedPages: 0))
    }

    /// (b) K pages differ (written on either side): exactly those are sent, and nothing else.
    func testModifiedPagesAreExactlyThoseSent() throws {
        let src = try MappedRegion(memfdNamed: "rs-src", length: pages * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "rs-dst", length: pages * dirtyPageSize)
        fill(src, 0..<pages, salt: 2)
        copy(src, into: dst)
        let changedOnSource = [3, 64, 65, 1000, 4095], changedOnReplica = [7, 2048, 3001]
        for p in changedOnSource { src.page(p).storeBytes(of: 0xABCD, toByteOffset: 100, as: UInt64.self) }
        for p in changedOnReplica { dst.page(p).storeBytes(of: 0xDCBA, toByteOffset: 200, as: UInt64.self) }
        memset(src.page(500), 0, dirtyPageSize)  // a page that became zeros travels as an index only
        let replica = ReplicaReceiver(region: dst, imageIsBase: true)
        let pair = try Pair()
        let (t, bg) = try pair.connect { r in replica.serve(r) }
        let source = try ReplicationSource(region: src, tracker: try hashSource(src, engine: .uffdAsync), config: ReplicationConfig(),
                                           hooks: SourceHooks(pause: {}, resume: {}))
        let sync = try source.connect(t)
        let k = changedOnSource.count + changedOnReplica.count + 1
        XCTAssertEqual(sync.method, .hashResync)
        XCTAssertEqual(sync.differingPages, k)
        XCTAssertEqual(sync.pagesSent, k)
        XCTAssertEqual(source.status.zeroPagesSent, 1)
        XCTAssertLessThan(sync.bytesSent, UInt64((k + 1) * dirtyPageSize), "\(sync)")
        XCTAssertTrue(replica.waitUntilApplied(sync.epoch))
        XCTAssertTrue(src.contentsEqual(dst), "the resync left the image different from the region")
        source.detach()
        _ = bg.join()
    }

    /// The replica's journal hears `invalidate` before every change to the image and `record` after
    /// it; a receiver restarted with what was recorded is that epoch at once (takeable before any
    /// source connects), and a source continues from it by hashes.
    func testAReplicaRestartedWithItsJournalIsItsLastEpoch() throws {
        let src = try MappedRegion(memfdNamed: "rs-src", length: pages * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "rs-dst", length: pages * dirtyPageSize)
        fill(src, 0..<pages, salt: 5)
        let journal = MemoryJournal()
        let first = ReplicaReceiver(region: dst, journal: journal)
        let pair = try Pair()
        let (t1, bg1) = try pair.connect { r in first.serve(r) }
        let counter = Counter()
        let hooks = SourceHooks(pause: {}, resume: {}, deviceState: { Array("device state \(counter.next())".utf8) })
        let source1 = try ReplicationSource(region: src, tracker: try hashSource(src), config: ReplicationConfig(), hooks: hooks)
        _ = try source1.connect(t1)
        for round in 0..<3 {
            fill(src, (round * 100)..<(round * 100 + 50), salt: 50 + UInt64(round))
            try source1.checkpoint()
        }
        let e = source1.status.committedEpoch
        XCTAssertTrue(first.waitUntilApplied(e))
        source1.detach()
        _ = bg1.join()
        // Before the first (direct) copy, and around every apply: forget, change, record.
        let events = journal.events
        XCTAssertEqual(events.first, .invalidate, "a fresh image is forgotten before the full copy writes into it")
        var expected: [MemoryJournal.Event] = [.invalidate]
        for epoch in 1...e { expected += [.invalidate, .record(epoch)] }
        XCTAssertEqual(events, expected)
        XCTAssertEqual(journal.last?.deviceState, first.deviceState)
        XCTAssertTrue(src.contentsEqual(dst))

        // The agent restarts: the receiver starts from the recorded epoch, no source needed.
        let recorded = try XCTUnwrap(journal.last)
        let second = ReplicaReceiver(region: dst, committed: recorded, journal: journal)
        XCTAssertEqual(second.committedEpoch, e)
        XCTAssertEqual(second.deviceState, first.deviceState)
        fill(src, 2000..<2010, salt: 99)
        let (t2, bg2) = try pair.connect { r in second.serve(r) }
        let source2 = try ReplicationSource(region: src, tracker: try hashSource(src), config: ReplicationConfig(), hooks: hooks)
        let sync = try source2.connect(t2)
        XCTAssertEqual(sync.method, .hashResync)
        XCTAssertEqual(sync.epoch, e + 1, "the source continues from the kept epoch")
        XCTAssertEqual(sync.differingPages, 10)
        XCTAssertTrue(second.waitUntilApplied(e + 1))
        XCTAssertEqual(journal.events.suffix(2), [.invalidate, .record(e + 1)])
        XCTAssertTrue(src.contentsEqual(dst))
        source2.detach()
        _ = bg2.join()
    }

    /// (b, c) The primary's agent restarts while its guest runs on: a new source (new tracker) over
    /// the same region, the replica still at its committed epoch E. The resync is epoch E+1, sends
    /// what changed meanwhile plus what the guest dirties during the resync (a hot set), and the
    /// image equals the region byte for byte at the boundary's pause (hashes taken while paused).
    func testRestartedPrimaryResyncsARunningGuest() throws { try restartedPrimaryResyncs(over: .tcp) }
    func testRestartedPrimaryResyncsARunningGuestOverRhizomorph() throws { try restartedPrimaryResyncs(over: .rhizomorph) }

    private func restartedPrimaryResyncs(over link: Link) throws {
        let src = try MappedRegion(memfdNamed: "rs-src", length: pages * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "rs-dst", length: pages * dirtyPageSize)
        fill(src, 0..<pages, salt: 3)
        let replica = ReplicaReceiver(region: dst)
        let pair = try Pair(link)
        let hot = 64
        let work = Workload(region: src)
        work.start(seed: 11, hotPages: hot)
        defer { work.finish() }

        // First life of the primary's agent: a full copy (fresh image) and a few epochs.
        let (t1, bg1) = try pair.connect { r in replica.serve(r) }
        let tracker1 = try hashSource(src, engine: .uffdAsync)
        let first = try ReplicationSource(region: src, tracker: tracker1, config: ReplicationConfig(epochInterval: 0.02, rpoBound: 10), hooks: work.hooks)
        let full = try first.connect(t1)
        XCTAssertEqual(full.method, .fullCopy)
        XCTAssertEqual(full.differingPages, pages)
        XCTAssertGreaterThanOrEqual(full.pagesSent, pages)
        for _ in 0..<3 { try first.checkpoint() }
        let committed = first.status.committedEpoch
        XCTAssertTrue(replica.waitUntilApplied(committed))
        // The agent dies: its connection and tracker go, the guest runs on and changes pages.
        first.detach()
        tracker1.stop()
        _ = bg1.join()
        let changed = Array(stride(from: 1000, to: 4000, by: 100))
        for p in changed { src.page(p).storeBytes(of: 0x5EED, toByteOffset: 8, as: UInt64.self) }

        // The restarted agent: a new source; the guest keeps running throughout.
        let (t2, bg2) = try pair.connect { r in replica.serve(r) }
        let atPause = LockedBox<[UInt64]>([])
        var hooks = work.hooks
        hooks.deviceState = { atPause.set(src.pageHashes(seed: 0, pages: 0..<src.pageCount)); return [] }
        let second = try ReplicationSource(region: src, tracker: try hashSource(src, engine: .uffdAsync),
                                           config: ReplicationConfig(epochInterval: 0.02, rpoBound: 10), hooks: hooks)
        let sync = try second.connect(t2)
        XCTAssertEqual(sync.method, .hashResync)
        XCTAssertEqual(sync.epoch, committed + 1, "the resync continues the replica's epochs")
        XCTAssertGreaterThanOrEqual(sync.differingPages, changed.count)
        XCTAssertLessThanOrEqual(sync.differingPages, changed.count + hot, "only the changed pages and the guest's hot set may differ: \(sync)")
        XCTAssertLessThanOrEqual(sync.pagesSent, sync.differingPages + hot, "differing pages plus what was dirtied meanwhile: \(sync)")
        XCTAssertTrue(replica.waitUntilApplied(sync.epoch))
        XCTAssertEqual(dst.pageHashes(seed: 0, pages: 0..<dst.pageCount), atPause.value, "the image is not the region as it was at the pause")
        XCTAssertGreaterThan(work.writes.load(ordering: .relaxed), 0)
        for _ in 0..<2 { try second.checkpoint() }
        second.detach()
        _ = bg2.join()
    }

    /// A replica whose first copy was cut half-way (its image written in place, never committed) is
    /// still a correct base: the next connection resyncs it by hashes and the image is exact.
    func testHalfWrittenImageIsRepairedByTheResync() throws {
        let src = try MappedRegion(memfdNamed: "rs-src", length: pages * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "rs-dst", length: pages * dirtyPageSize)
        fill(src, 0..<pages, salt: 4)
        let replica = ReplicaReceiver(region: dst)
        let pair = try Pair()
        let (tcp, bg1) = try pair.connect { r in replica.serve(r) }
        let cut = CrashingTransport(tcp, crashEpoch: 1, afterPagesMessages: 3)
        let first = try ReplicationSource(region: src, tracker: try hashSource(src), config: ReplicationConfig(emergencyPolicy: .continueUnprotected),
                                          hooks: SourceHooks(pause: {}, resume: {}))
        XCTAssertThrowsError(try first.connect(cut))
        guard case .sourceGone = bg1.join() else { return XCTFail("the replica session should end with the source gone") }
        XCTAssertEqual(replica.committedEpoch, 0, "nothing committed: not an image anyone may take over")
        XCTAssertFalse(src.contentsEqual(dst))

        let (t, bg2) = try pair.connect { r in replica.serve(r) }
        let second = try ReplicationSource(region: src, tracker: try hashSource(src), config: ReplicationConfig(), hooks: SourceHooks(pause: {}, resume: {}))
        let sync = try second.connect(t)
        XCTAssertEqual(sync.method, .hashResync, "what the cut copy wrote is kept as a base")
        XCTAssertEqual(sync.differingPages, pages - 3 * Wire.pagesPerMessage, "the three messages that arrived are not sent again")
        XCTAssertTrue(replica.waitUntilApplied(sync.epoch))
        XCTAssertTrue(src.contentsEqual(dst))
        second.detach()
        _ = bg2.join()
    }

    /// (d) The image file of a restarted replica: one of the right length is kept as it is (its
    /// bytes are not touched by opening it) and resynced by hashes; one of another length is
    /// emptied and gets a full copy.
    func testImageFileKeptOnlyAtTheSameLength() throws {
        let dir = NSTemporaryDirectory() + "rs-image-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let src = try MappedRegion(memfdNamed: "rs-src", length: pages * dirtyPageSize)
        fill(src, 0..<pages, salt: 5)

        let same = dir + "/same.ram"
        do {
            let (img, reused) = try MappedRegion.openImage(path: same, length: src.length)
            XCTAssertFalse(reused, "a new file is no base")
            copy(src, into: img)
        }
        let (kept, reusedSame) = try MappedRegion.openImage(path: same, length: src.length)
        XCTAssertTrue(reusedSame)
        XCTAssertTrue(src.contentsEqual(kept), "opening the image again changed its bytes")
        src.page(9).storeBytes(of: 0xFEED, toByteOffset: 0, as: UInt64.self)
        try syncOnce(src, into: kept, imageIsBase: reusedSame) { sync in
            XCTAssertEqual(sync.method, .hashResync)
            XCTAssertEqual(sync.differingPages, 1)
        }

        let other = dir + "/other.ram"
        do {
            let (img, _) = try MappedRegion.openImage(path: other, length: src.length / 2)
            fill(img, 0..<img.pageCount, salt: 6)
        }
        let (fresh, reusedOther) = try MappedRegion.openImage(path: other, length: src.length)
        XCTAssertFalse(reusedOther)
        XCTAssertTrue(fresh.dataRuns(in: 0..<fresh.pageCount).isEmpty, "an image of another length is emptied, not reinterpreted")
        try syncOnce(src, into: fresh, imageIsBase: reusedOther) { sync in
            XCTAssertEqual(sync.method, .fullCopy)
            XCTAssertEqual(sync.differingPages, self.pages)
        }
    }

    private func syncOnce(_ src: MappedRegion, into dst: MappedRegion, imageIsBase: Bool, check: (SyncReport) -> Void) throws {
        let replica = ReplicaReceiver(region: dst, imageIsBase: imageIsBase)
        let pair = try Pair()
        let (t, bg) = try pair.connect { r in replica.serve(r) }
        let source = try ReplicationSource(region: src, tracker: try hashSource(src), config: ReplicationConfig(), hooks: SourceHooks(pause: {}, resume: {}))
        let sync = try source.connect(t)
        check(sync)
        XCTAssertTrue(replica.waitUntilApplied(sync.epoch))
        XCTAssertTrue(src.contentsEqual(dst))
        source.detach()
        _ = bg.join()
    }

    /// (e) A corrupted or out-of-order hashes message is refused with an error that says what is
    /// wrong, and nothing is committed.
    func testCorruptHashesAreAClearError() throws {
        let cases: [(String, @Sendable ([UInt8]) -> (MessageType, [UInt8]), (EndophyteError) -> Bool)] = [
            ("count beyond the body", { b in var b = b; b[11] &+= 1; return (.hashes, b) }, { if case .decode = $0.code { return true }; return false }),
            ("truncated", { b in (.hashes, Array(b.dropLast(3))) }, { if case .decode = $0.code { return true }; return false }),
            ("wrong first page", { b in var b = b; b[7] = 1; return (.hashes, b) }, { e in "\(e)".contains("expected page 0") }),
            ("another message", { b in (.synced, b) }, { e in "\(e)".contains("expected hashes, got synced") }),
        ]
        for (what, tamper, expected) in cases {
            let src = try MappedRegion(memfdNamed: "rs-src", length: pages * dirtyPageSize)
            let dst = try MappedRegion(memfdNamed: "rs-dst", length: pages * dirtyPageSize)
            let replica = ReplicaReceiver(region: dst, imageIsBase: true)
            let pair = try Pair()
            let (t, bg) = try pair.connect { r in replica.serve(Tampering(r, tamper: tamper)) }
            let source = try ReplicationSource(region: src, tracker: try hashSource(src), config: ReplicationConfig(), hooks: SourceHooks(pause: {}, resume: {}))
            do {
                try source.connect(t)
                XCTFail("\(what): accepted")
            } catch {
                XCTAssertTrue(expected(error), "\(what): \(error)")
                XCTAssertFalse("\(error)".isEmpty)
            }
            t.close()
            _ = bg.join()
            XCTAssertEqual(replica.committedEpoch, 0, "\(what): nothing committed")
        }
    }

    func testDecodersRefuseMalformedBodies() {
        XCTAssertThrowsError(try ResyncOffer(decoding: [0, 0, 0, 0, 0, 0, 0, 1, 2]))  // flag 2
        XCTAssertThrowsError(try ResyncOffer(decoding: [0, 0, 0, 0, 0, 0, 0, 1]))     // no flag
        XCTAssertThrowsError(try PageHashChunk(decoding: PageHashChunk(firstPage: 0, hashes: []).encoded()))
        var huge = ByteWriter()
        huge.u64(0); huge.u32(UInt32(PageHashChunk.maxHashes + 1))
        XCTAssertThrowsError(try PageHashChunk(decoding: huge.bytes))
        let ok = PageHashChunk(firstPage: 5, hashes: [1, 2, 3])
        XCTAssertEqual(try PageHashChunk(decoding: ok.encoded()), ok)
        let setup = ReplicationSetup(regionBytes: 1 << 30, pageSize: 4096, sourceEpoch: 9, hashSeed: 42)
        XCTAssertEqual(try ReplicationSetup(decoding: setup.encoded()), setup)
        XCTAssertThrowsError(try ReplicationSetup(decoding: Array(setup.encoded().dropLast())))
    }
}

/// A replica-side transport that rewrites the first message of the tampered type it sends.
final class Tampering: ReplicationTransport, @unchecked Sendable {
    let inner: ReplicationTransport
    let tamper: @Sendable ([UInt8]) -> (MessageType, [UInt8])
    private var done = false
    init(_ inner: ReplicationTransport, tamper: @escaping @Sendable ([UInt8]) -> (MessageType, [UInt8])) {
        self.inner = inner
        self.tamper = tamper
    }
    var peerKey: PublicKey { inner.peerKey }
    var bytesSent: UInt64 { inner.bytesSent }
    func setStreamCount(_ count: Int) {}
    func close() { inner.close() }
    func send(_ type: MessageType, header: [UInt8], pages: [UnsafeRawBufferPointer]) throws(EndophyteError) {
        if type == .hashes && !done {
            done = true
            let (t, b) = tamper(header)
            return try inner.send(t, header: b, pages: pages)
        }
        try inner.send(type, header: header, pages: pages)
    }
    func receive<R>(timeout: Double?, _ body: (MessageType, UnsafeRawBufferPointer) throws(EndophyteError) -> R) throws(EndophyteError) -> R {
        try inner.receive(timeout: timeout, body)
    }
}

final class LockedBox<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var v: T
    init(_ v: T) { self.v = v }
    func set(_ n: T) { lock.lock(); v = n; lock.unlock() }
    var value: T { lock.lock(); defer { lock.unlock() }; return v }
}

/// A replica journal in memory: what it was told, in order.
final class MemoryJournal: ReplicaJournal, @unchecked Sendable {
    enum Event: Equatable { case invalidate, record(UInt64) }
    private let lock = NSLock()
    private var log: [Event] = []
    private var recorded: (epoch: UInt64, deviceState: [UInt8])?
    var events: [Event] { lock.withLock { log } }
    var last: (epoch: UInt64, deviceState: [UInt8])? { lock.withLock { recorded } }
    func invalidate() { lock.withLock { log.append(.invalidate); recorded = nil } }
    func record(epoch: UInt64, deviceState: [UInt8]) { lock.withLock { log.append(.record(epoch)); recorded = (epoch, deviceState) } }
}
