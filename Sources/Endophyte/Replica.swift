// The passive side. Pages of the open epoch are staged, never written into the image; only a
// `commit` whose page count matches what arrived applies them, and the epoch number changes after
// the last page is in place. So whatever happens to the source mid-epoch (crash, cut link, abort),
// the image is exactly the last committed epoch (Remus §3: the backup only ever applies a complete
// checkpoint, "buffered until the checkpoint is complete").
//
// Limit: the apply itself is not crash-atomic on disk. If the *replica* process dies while applying,
// its image is mixed and must be re-synced from scratch (the source does a full copy on every
// connection, so this is automatic).

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
    private let onEvent: @Sendable (EndophyteEvent) -> Void

    // Staging: page data in a growable buffer, and where each page of the open epoch sits in it.
    private var staging: UnsafeMutableRawPointer?
    private var stagingCapacity = 0  // pages
    private var slots: [UInt32: Int] = [:]
    private var order: [UInt32] = []
    private var stagedRecords: UInt64 = 0
    private var stagingEpoch: UInt64 = 0
    /// Largest staging allocation so far (read after `serve` returns).
    public private(set) var peakStagingBytes = 0

    public init(region: MappedRegion, onEvent: @escaping @Sendable (EndophyteEvent) -> Void = { _ in }) {
        self.region = region
        self.onEvent = onEvent
    }

    deinit { staging?.deallocate() }

    public var committedEpoch: UInt64 { lock.withLock { committed } }
    public var deviceState: [UInt8] { lock.withLock { committedState } }

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
            let setup = try Wire.Setup.decode(try t.expect(.setup, timeout: ackTimeout))
            guard setup.pageSize == UInt32(dirtyPageSize) else {
                throw EndophyteError(.protocolViolation(reason: "page size \(setup.pageSize), expected \(dirtyPageSize)"))
            }
            guard setup.regionBytes == UInt64(region.length) else {
                throw EndophyteError(.regionMismatch(local: region.length, remote: Int(setup.regionBytes)))
            }
            let epoch = committedEpoch
            beginStaging(epoch: epoch + 1)
            try t.send(.ready, Wire.u64Body(epoch))
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
            let n = apply(epoch: c.epoch, deviceState: c.deviceState)
            try t.send(.ack, Wire.u64Body(c.epoch))
            onEvent(.replicaCommitted(epoch: c.epoch, pages: n))
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
        guard body.count >= 12 else { throw EndophyteError(.decode(DecodeError(.truncated(needed: 12, available: body.count), at: 0))) }
        let epoch = body.loadUnaligned(as: UInt64.self).bigEndian
        let count = Int(body.loadUnaligned(fromByteOffset: 8, as: UInt32.self).bigEndian)
        guard epoch == stagingEpoch else {
            throw EndophyteError(.protocolViolation(reason: "pages for epoch \(epoch) while epoch \(stagingEpoch) is open"))
        }
        let dataOffset = 12 + 4 * count
        guard count <= Wire.pagesPerMessage * 64, body.count == dataOffset + count * dirtyPageSize else {
            throw EndophyteError(.decode(DecodeError(.invalid(field: "pages", reason: "\(count) pages need \(dataOffset + count * dirtyPageSize) bytes, message has \(body.count)"), at: 8)))
        }
        for i in 0..<count {
            let page = body.loadUnaligned(fromByteOffset: 12 + 4 * i, as: UInt32.self).bigEndian
            guard Int(page) < region.pageCount else {
                throw EndophyteError(.protocolViolation(reason: "page \(page) outside the \(region.pageCount)-page region"))
            }
            let slot: Int
            if let s = slots[page] {
                slot = s  // sent again in the same epoch: the newer copy wins
            } else {
                slot = slots.count
                growStaging(to: slot + 1)
                slots[page] = slot
                order.append(page)
            }
            // SAFETY: slot < stagingCapacity (grown above); the source range is inside `body` (checked).
            (staging! + slot * dirtyPageSize).copyMemory(from: body.baseAddress! + dataOffset + i * dirtyPageSize, byteCount: dirtyPageSize)
        }
        stagedRecords += UInt64(count)
    }

    private func growStaging(to pages: Int) {
        if pages <= stagingCapacity { return }
        let newCap = max(pages, max(256, stagingCapacity * 2))
        let n = UnsafeMutableRawPointer.allocate(byteCount: newCap * dirtyPageSize, alignment: dirtyPageSize)
        if let old = staging {
            n.copyMemory(from: old, byteCount: slots.count * dirtyPageSize)
            old.deallocate()
        }
        staging = n
        stagingCapacity = newCap
        peakStagingBytes = max(peakStagingBytes, newCap * dirtyPageSize)
        publishStagingBytes()
    }

    /// Applies the staged epoch to the image, then publishes the epoch number and device state.
    private func apply(epoch: UInt64, deviceState: [UInt8]) -> Int {
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
        beginStaging(epoch: epoch + 1)
        // Keep at most twice the last epoch's need, so one huge epoch does not pin memory forever.
        if stagingCapacity > 4 * max(n, 256) {
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
