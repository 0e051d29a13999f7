// The replication protocol's messages. Each travels in one frame with the same header as every
// Mycelium channel (MyceliumCore `Frame`: u32 length | u8 version | u8 type | body), but page data is
// gathered straight from the region with writev instead of being copied into a frame first.
//
// Exchange (Remus §3 "checkpoint" with our staging on the replica):
//   source                         replica
//   stream handshake <----------->                     docs/HANDSHAKE.md, raw RHIZ messages before any frame
//   setup(region bytes, epoch,  -->                    replica checks size, answers ready
//         hash seed)
//                               <--  ready(committed epoch, offers hashes)
//                               <--  hashes(first, u64 × n) ...  only when offered (Resync.swift): the
//                                                  source then sends only the pages that differ
//   pages(epoch, idx[], data)   -->  staged            while the source runs (all-zero pages: index only)
//   ...                                                at the boundary, source paused:
//   sync                        -->                    drain: the source still runs while the
//                               <--  synced            replica works off what is in flight
//   pages(epoch, last dirty)    -->  staged
//   commit(epoch, n, device)    -->  applied atomically (all staged pages, then the epoch number)
//                               <--  ack(epoch)        source resumes
//   activate(epoch)             -->  (planned migration only, after the new owner is recorded)
//                               <--  activated(epoch)
//   abort(reason)               -->  staging dropped (migration rollback)

import MyceliumCore

public enum MessageType: UInt8, Sendable {
    // 1 and 2 carried the version-1 handshake; the stream handshake now runs before any frame.
    case hello = 1
    case proof = 2
    case setup = 10
    case ready = 11
    case pages = 12
    case commit = 13
    case ack = 14
    case activate = 15
    case activated = 16
    case abort = 17
    /// Round trip that returns once the replica has staged everything sent before it.
    case sync = 18
    case synced = 19
    /// Before `setup`, on a connection to a node that holds several replicas: which one (a name and
    /// the ownership epoch the source holds it at).
    case attach = 20
    /// After `ready`, from a replica that offers its image as a base: seeded page hashes (Resync.swift).
    case hashes = 21
}

enum Wire {
    static let protocolVersion: UInt16 = 1
    static let magic: [UInt8] = Array("ENDO".utf8)
    /// Pages per `pages` message: 256 × 4 KiB = 1 MiB, large enough to amortise syscalls, small
    /// enough that staging grows in modest steps.
    static let pagesPerMessage = 256
    /// Largest body accepted: one full pages message plus its index table, or a device-state blob.
    static let maxBody = 64 << 20
    static let maxDeviceState = 32 << 20

    static func u64Body(_ v: UInt64) -> [UInt8] {
        var w = ByteWriter(capacity: 8)
        w.u64(v)
        return w.bytes
    }

    static func decodeU64(_ b: UnsafeRawBufferPointer, field: String) throws(DecodeError) -> UInt64 {
        guard b.count == 8 else { throw DecodeError(.invalid(field: field, reason: "\(b.count) bytes, expected 8"), at: 0) }
        return b.loadUnaligned(as: UInt64.self).bigEndian
    }

    static func decodeU64(_ b: [UInt8], field: String) throws(EndophyteError) -> UInt64 {
        guard b.count == 8 else { throw EndophyteError(.decode(DecodeError(.invalid(field: field, reason: "\(b.count) bytes, expected 8"), at: 0))) }
        return b.reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// `pages` header: u64 epoch | u32 count | u32 zero count | count × u32 page index. The first
    /// `count − zero count` indexes are followed by their bytes, in order; the rest are pages that were
    /// all zeros when read, sent without data (QEMU's zero-page elision, migration/ram.c
    /// save_zero_page: fresh guest RAM is mostly zeros).
    static func pagesHeader(epoch: UInt64, dataPages: [Int], zeroPages: [Int]) -> [UInt8] {
        var w = ByteWriter(capacity: 16 + 4 * (dataPages.count + zeroPages.count))
        w.u64(epoch)
        w.u32(UInt32(dataPages.count + zeroPages.count))
        w.u32(UInt32(zeroPages.count))
        for p in dataPages { w.u32(UInt32(p)) }
        for p in zeroPages { w.u32(UInt32(p)) }
        return w.bytes
    }

    static let pagesHeaderFixedBytes = 16

    /// `commit`: u64 epoch | u64 pages sent in this epoch | u32 CRC-32C of the device state | blob.
    static func commitBody(epoch: UInt64, pagesInEpoch: UInt64, deviceState: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: 24 + deviceState.count)
        w.u64(epoch)
        w.u64(pagesInEpoch)
        w.u32(CRC32C.checksum(deviceState))
        w.blob(deviceState)
        return w.bytes
    }

    static func decodeCommit(_ b: [UInt8]) throws(DecodeError) -> (epoch: UInt64, pages: UInt64, deviceState: [UInt8]) {
        do {
            var r = ByteReader(b)
            let epoch = try r.u64(), pages = try r.u64(), crc = try r.u32()
            let state = try r.blob("device state", limit: maxDeviceState)
            try r.finish()
            let actual = CRC32C.checksum(state)
            if actual != crc { throw DecodeError(.checksumMismatch(expected: crc, actual: actual), at: 16) }
            return (epoch, pages, state)
        } catch let e as DecodeError { throw e } catch { throw DecodeError(.invalid(field: "commit", reason: "\(error)"), at: 0) }
    }
}
