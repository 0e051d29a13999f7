// The passive side. Pages of the open epoch are staged, never written into the image; only a
// `commit` whose page count matches what arrived applies them, and the epoch number changes after
// the last page is in place. So whatever happens to the source mid-epoch (crash, cut link, abort),
// the image is exactly the last committed epoch (Remus §3: the backup only ever applies a complete
// checkpoint, "buffered until the checkpoint is complete").
//
// Limit: the apply itself is not crash-atomic on disk. If the *replica* process dies while applying,
// its image is mixed. That is why a receiver started over an existing image (an agent restart) holds
// committed epoch 0 whatever the image was: the image is then only a *base* for a resync by hashes
// (Resync.swift), never an epoch that may be taken over, until the resync commits. The resync is
// exact for any base, a mixed one included (every page whose bytes differ is sent), so nothing needs
// to know whether the last apply finished.

import DirtyPages
import MyceliumCore

#if canImport(Glibc)
import Glibc
#endif

/// How a replica session ended.
public enum ReplicaSessionEnd: Sendable, Equatable {
    /// The source closed or crashed; anything staged was dropped.
    case sourceGone(discardedPages: Int)
    /// A planned migration activated this side: it is now the owner.
    case activated(epoch: UInt64)
    /// The source violated the protocol; the connection was closed.
    case failed(EndophyteError)
}

public final class ReplicaReceiver: @unchecked Sendable {
    // SAFETY (Sendable): the image is written only by `serve` (one session at a time, enforced by
    // `serving`); committed epoch and device state are read and written under `lock`.
    public let region: MappedRegion
    private let lock = Lock()
    private var committed: UInt64 = 0
    private var committedState: [UInt8] = []
    private var serving = false
    /// The image may hold useful bytes (kept from before a restart, or written by a session): offer
    /// its hashes. False only for a fresh image nothing was written to, where hashing is wasted.
    private var imageIsBase: Bool
    private let onEvent: @Sendable (EndophyteEvent) -> Void
    private let journal: (any ReplicaJournal)?

    // Staging: page data in a growable buffer, and where each page of the open epoch sits in it.
    private var staging: UnsafeMutableRawPointer?
    private var stagingCapacity = 0  // pages
    private var slots: [UInt32: Int] = [:]
    private var order: [UInt32] = []
    private var stagedRecords: UInt64 = 0
    private var recentPeakPages = 0
    private var stagingEpoch: UInt64 = 0
    /// Largest staging allocation so far.
    public var peakStagingBytes: Int { lock.withLock { peakShadow } }
    private var peakShadow = 0

    /// `stagingReservePages` are allocated and faulted in up front, so the first epochs do not pay
    /// for page faults inside the source's pause; size it to a typical epoch's dirty set.
    /// `imageIsBase`: `region` already holds an image of this replica (kept across a restart, see
    /// `MappedRegion.openImage`); the source then resyncs it by hashes instead of a full copy. It is
    /// a base only: the committed epoch stays 0, and nothing may take it over, until a sync commits.
    /// `committed`: the image is exactly this epoch, with this device state (as a `journal` recorded
    /// it before a restart): it may be taken over at once, and a source continues from it.
    /// `journal` hears of every change to the image.
    public init(region: MappedRegion, stagingReservePages: Int = 2048, imageIsBase: Bool = false,
                committed: (epoch: UInt64, deviceState: [UInt8])? = nil, journal: (any ReplicaJournal)? = nil,
                onEvent: @escaping @Sendable (EndophyteEvent) -> Void = { _ in }) {
        self.region = region
        self.imageIsBase = imageIsBase || committed != nil
        self.onEvent = onEvent
        self.journal = journal
        if let committed {
            self.committed = committed.epoch
            committedState = committed.deviceState
        }
        let reserve = min(max(0, stagingReservePages), region.pageCount)
        if reserve > 0 {
            growStaging(to: reserve)
            // SAFETY: the buffer holds `stagingCapacity` pages; touching them faults them in now.
            staging!.initializeMemory(as: UInt8.self, repeating: 0, count: stagingCapacity * dirtyPageSize)
            recentPeakPages = reserve
        }
    }

    deinit { staging?.deallocate() }

    public var committedEpoch: UInt64 { lock.withLock { committed } }

    /// Waits until `epoch` is applied to the image. The source's ack means "the replica holds the
    /// whole epoch"; the apply may still be running when the ack arrives.
    @discardableResult
    public func waitUntilApplied(_ epoch: UInt64, timeout: Double = 10) -> Bool {
        let deadline = monotonicSeconds() + timeout
        while committedEpoch < epoch {
            if monotonicSeconds() > deadline { return false }
            usleep(100)
        }
        return true
    }
    public var deviceState: [UInt8] { lock.withLock { committedState } }

    /// Waits until no session serves this image. After its transport is closed a session ends once
    /// the apply in progress, if any, has finished and published its epoch; until then the image and
    /// `committedEpoch` may disagree (a takeover reading them would resume a torn guest). False on
    /// timeout.
    public func waitUntilIdle(timeout: Double = 10) -> Bool {
        let deadline = monotonicSeconds() + timeout
        while lock.withLock({ serving }) {
            if monotonicSeconds() > deadline { return false }
            usleep(200)
        }
        return true
    }

    /// Serves one authenticated source until it goes away, is activated, or breaks the protocol.
    /// `onActivate` runs when a planned migration hands ownership to this side, after the source
    /// recorded the new owner; it starts the workload here.
    public func serve(_ t: ReplicationTransport, ackTimeout: Double = 30,
                      onActivate: (@Sendable (UInt64, [UInt8]) throws -> Void)? = nil) -> ReplicaSessionEnd {
        let busy = lock.withLock { () -> Bool in
            if serving { return true }
            serving = true
            return false
        }
        if busy { return .failed(EndophyteError(.invalidState("this replica already serves a source"))) }
        defer {
            lock.withLock { serving = false }
            t.close()
        }
        do {
            let setup = try ReplicationSetup(decoding: try t.expect(.setup, timeout: ackTimeout))
            guard setup.pageSize == UInt32(dirtyPageSize) else {
                throw EndophyteError(.protocolViolation(reason: "page size \(setup.pageSize), expected \(dirtyPageSize)"))
            }
            guard setup.regionBytes == UInt64(region.length) else {
                throw EndophyteError(.regionMismatch(local: region.length, remote: Int(setup.regionBytes)))
            }
            let epoch = committedEpoch
            // Nothing committed: the first epoch writes straight into the image.
            if epoch == 0 { journal?.invalidate() }
            beginStaging(epoch: epoch + 1)
            let offersHashes = imageIsBase || epoch > 0
            try t.send(.ready, ResyncOffer(committedEpoch: epoch, offersHashes: offersHashes).encoded())
            // The image does not change until the source's pages arrive, which it sends only after
            // the last hash: the hashes describe exactly the image the resync epoch is applied to.
            if offersHashes { _ = try t.sendPageHashes(of: region, seed: setup.hashSeed) }
            while true {
                let outcome = try t.receive(timeout: nil) { (type, body) throws(EndophyteError) -> ReplicaSessionEnd? in
                    try handle(type, body, t, onActivate)
                }
                if let outcome { return outcome }
            }
        } catch let e as EndophyteError {
            if e.isUnreachable { return .sourceGone(discardedPages: discardStaging()) }
            _ = discardStaging()
            return .failed(e)
        } catch {
            _ = discardStaging()
            return .failed(EndophyteError(.invalidState("\(error)")))
        }
    }

    private func handle(_ type: MessageType, _ body: UnsafeRawBufferPointer, _ t: ReplicationTransport,
                        _ onActivate: (@Sendable (UInt64, [UInt8]) throws -> Void)?) throws(EndophyteError) -> ReplicaSessionEnd? {
        switch type {
        case .pages:
            try stage(body)
            return nil
        case .commit:
            let c: (epoch: UInt64, pages: UInt64, deviceState: [UInt8])
            do { c = try Wire.decodeCommit([UInt8](body)) } catch { throw EndophyteError(.decode(error)) }
            guard c.epoch == stagingEpoch else {
                throw EndophyteError(.protocolViolation(reason: "commit of epoch \(c.epoch) while epoch \(stagingEpoch) is open"))
            }
            guard c.pages == stagedRecords else {
                throw EndophyteError(.protocolViolation(reason: "commit of epoch \(c.epoch) announces \(c.pages) pages, \(stagedRecords) arrived"))
            }
            // Ack as soon as the whole epoch is here, then apply (Remus §3: the backup acknowledges a
            // checkpoint once it is fully received in memory). The source resumes one apply earlier;
            // nothing is weakened, because from this point the epoch is applied whatever the source
            // does, and the next message is not read before the apply ends.
            let ackError: EndophyteError?
            do { try t.send(.ack, Wire.u64Body(c.epoch)); ackError = nil } catch { ackError = error }
            let n = apply(epoch: c.epoch, deviceState: c.deviceState)
            onEvent(.replicaCommitted(epoch: c.epoch, pages: n))
            if let ackError { throw ackError }
            return nil
        case .activate:
            let epoch: UInt64
            do { epoch = try Wire.decodeU64(body, field: "activate epoch") } catch { throw EndophyteError(.decode(error)) }
            guard epoch == committedEpoch, stagedRecords == 0 else {
                throw EndophyteError(.protocolViolation(reason: "activate for epoch \(epoch), but epoch \(committedEpoch) is committed and \(stagedRecords) pages are staged"))
            }
            do { try onActivate?(epoch, deviceState) } catch {
                throw EndophyteError(.hookFailed(hook: "activate", reason: "\(error)"))
            }
            try t.send(.activated, Wire.u64Body(epoch))
            onEvent(.activated(epoch: epoch))
            return .activated(epoch: epoch)
        case .sync:
            // Messages are handled in order, so answering now means everything before is staged.
            try t.send(.synced, [UInt8](body))
            return nil
        case .abort:
            _ = discardStaging()
            beginStaging(epoch: committedEpoch + 1)
            return nil
        default:
            throw EndophyteError(.protocolViolation(reason: "unexpected \(type) from the source"))
        }
    }

    private func beginStaging(epoch: UInt64) {
        slots.removeAll(keepingCapacity: true)
        order.removeAll(keepingCapacity: true)
        stagedRecords = 0
        stagingEpoch = epoch
    }

    /// Drops the open epoch; returns how many distinct pages were staged.
    private func discardStaging() -> Int {
        let n = slots.count
        if n > 0 || stagedRecords > 0 { onEvent(.stagingDiscarded(epoch: stagingEpoch, pages: n)) }
        beginStaging(epoch: committedEpoch + 1)
        return n
    }

    private func stage(_ body: UnsafeRawBufferPointer) throws(EndophyteError) {
        let fixed = Wire.pagesHeaderFixedBytes
        guard body.count >= fixed else { throw EndophyteError(.decode(DecodeError(.truncated(needed: fixed, available: body.count), at: 0))) }
        let epoch = body.loadUnaligned(as: UInt64.self).bigEndian
        let count = Int(body.loadUnaligned(fromByteOffset: 8, as: UInt32.self).bigEndian)
        let zeroCount = Int(body.loadUnaligned(fromByteOffset: 12, as: UInt32.self).bigEndian)
        guard epoch == stagingEpoch else {
            throw EndophyteError(.protocolViolation(reason: "pages for epoch \(epoch) while epoch \(stagingEpoch) is open"))
        }
        let dataCount = count - zeroCount
        let dataOffset = fixed + 4 * count
        guard count <= Wire.pagesPerMessage * 64, zeroCount <= count, body.count == dataOffset + dataCount * dirtyPageSize else {
            throw EndophyteError(.decode(DecodeError(.invalid(field: "pages", reason: "\(count) pages (\(zeroCount) zero) need \(dataOffset + max(0, dataCount) * dirtyPageSize) bytes, message has \(body.count)"), at: 8)))
        }
        // Before the first commit the image holds no epoch at all, so there is nothing to protect:
        // the first full copy goes straight into the image instead of doubling memory in staging.
        // (Until it commits, `committedEpoch` stays 0 and the image means nothing.) The same holds
        // for a base kept across a restart: it is never taken over, and a resync cut half-way leaves
        // a base that is still correct to resync from (any bytes are, Resync.swift), just closer.
        let direct = stagingEpoch == 1 && committedEpoch == 0
        if direct && count > 0 { imageIsBase = true }
        for i in 0..<count {
            let page = body.loadUnaligned(fromByteOffset: fixed + 4 * i, as: UInt32.self).bigEndian
            guard Int(page) < region.pageCount else {
                throw EndophyteError(.protocolViolation(reason: "page \(page) outside the \(region.pageCount)-page region"))
            }
            let isZero = i >= dataCount
            let dst: UnsafeMutableRawPointer
            if direct {
                dst = region.page(Int(page))
            } else {
                let slot: Int
                if let s = slots[page] {
                    slot = s  // sent again in the same epoch: the newer copy wins
                } else {
                    slot = slots.count
                    growStaging(to: slot + 1)
                    slots[page] = slot
                    order.append(page)
                }
                // SAFETY: slot < stagingCapacity (grown above).
                dst = staging! + slot * dirtyPageSize
            }
            if isZero {
                // SAFETY: dst is one page inside the image or the staging buffer.
                dst.initializeMemory(as: UInt8.self, repeating: 0, count: dirtyPageSize)
            } else {
                // SAFETY: page < region.pageCount (checked); the source range is inside `body` (checked).
                dst.copyMemory(from: body.baseAddress! + dataOffset + i * dirtyPageSize, byteCount: dirtyPageSize)
            }
        }
        stagedRecords += UInt64(count)
    }

    private func growStaging(to pages: Int) {
        if pages <= stagingCapacity { return }
        let newCap = max(pages, max(256, stagingCapacity * 2))
        // SAFETY: a fresh block of newCap pages; the old one holds slots.count valid pages, all copied.
        let n = UnsafeMutableRawPointer.allocate(byteCount: newCap * dirtyPageSize, alignment: dirtyPageSize)
        if let old = staging {
            n.copyMemory(from: old, byteCount: slots.count * dirtyPageSize)
            old.deallocate()
        }
        staging = n
        stagingCapacity = newCap
        let b = newCap * dirtyPageSize
        lock.withLock { peakShadow = max(peakShadow, b) }
        publishStagingBytes()
    }

    /// Applies the staged epoch to the image, then publishes the epoch number and device state.
    private func apply(epoch: UInt64, deviceState: [UInt8]) -> Int {
        journal?.invalidate()
        for page in order {
            let slot = slots[page]!
            // SAFETY: page < region.pageCount (checked when staged); slot < stagingCapacity.
            region.page(Int(page)).copyMemory(from: staging! + slot * dirtyPageSize, byteCount: dirtyPageSize)
        }
        let n = order.count
        lock.withLock {
            committed = epoch
            committedState = deviceState
        }
        journal?.record(epoch: epoch, deviceState: deviceState)
        beginStaging(epoch: epoch + 1)
        // Keep the buffer across epochs (regrowing it means fresh page faults inside the next epoch),
        // but let one huge epoch (a resync) go once recent epochs are much smaller.
        recentPeakPages = max(n, recentPeakPages * 15 / 16)
        if stagingCapacity > 4 * max(recentPeakPages, 256) {
            staging?.deallocate()
            staging = nil
            stagingCapacity = 0
            publishStagingBytes()
        }
        return n
    }

    /// Bytes of staging allocated right now (the replica's "one epoch's dirty set"), any thread.
    public var stagingFootprintBytes: Int { lock.withLock { stagingBytesShadow } }
    private var stagingBytesShadow = 0
    private func publishStagingBytes() {
        let b = stagingCapacity * (dirtyPageSize + 20)  // page data + slot map + order entry
        lock.withLock { stagingBytesShadow = b }
    }
}
