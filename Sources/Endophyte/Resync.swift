// Resync by hashes: how a source and a replica that already holds an image of the region agree on
// the pages that differ, instead of sending the whole region again (an agent restarted on either
// side keeps its half: the primary its running guest, the replica its image file).
//
//   source                                   replica
//   setup(region bytes, page size, epoch,  -->
//         hash seed)
//                                          <--  ready(committed epoch, offers hashes?)
//   arms its tracker, hashes its region         hashes its image with the seed
//                                          <--  hashes(first page, n × u64) ... covering every page, in order
//   pages(epoch E+1, pages whose hash      -->  staged (or written into a base image, below)
//         differs)
//   ... the usual boundary: last dirty set, commit(E+1), ack
//
// Why it is correct. The tracker is armed before the source reads any page. A page not written
// after arming holds, at the boundary, exactly the bytes the source hashed; if its hash equals the
// replica's, the replica holds the same bytes (unless the two collide, below). A page written after
// arming is in some collect's dirty set and is sent in this epoch whatever its hash. So after the
// commit the image equals the region as it was at the boundary's pause, the invariant of every
// epoch. Nothing here depends on *what* the replica's image holds: any bytes at all are a correct
// base, only a slower one the more of them differ. That is what makes restarts safe: an image that
// was half-way through an apply when its agent died, an image left by a session cut mid-copy, or an
// image of an older life of the VM are all repaired page by page.
//
// Collisions. Each page is compared by a 64-bit XXH3 with a seed the source draws per connection
// (the guest cannot know it, so it cannot craft pages that collide). Two different pages hash equal
// with probability 2⁻⁶⁴; then the replica keeps its old bytes for that page, and the image is
// silently wrong in that one page until the guest writes it again (that write is tracked and sent).
// Over a 1 GiB region whose every page differs, that is about 2⁻⁴⁶ per resync.

import DirtyPages
import MyceliumCore

#if canImport(Glibc)
import Glibc
#endif

/// The fields of `setup`, the source's first message after `attach`.
public struct ReplicationSetup: Sendable, Equatable {
    public var regionBytes: UInt64
    public var pageSize: UInt32
    public var sourceEpoch: UInt64
    /// Seed of the page hashes a replica offering a base sends back (drawn per connection).
    public var hashSeed: UInt64

    public init(regionBytes: UInt64, pageSize: UInt32, sourceEpoch: UInt64, hashSeed: UInt64) {
        self.regionBytes = regionBytes; self.pageSize = pageSize; self.sourceEpoch = sourceEpoch; self.hashSeed = hashSeed
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 28)
        w.u64(regionBytes); w.u32(pageSize); w.u64(sourceEpoch); w.u64(hashSeed)
        return w.bytes
    }

    public init(decoding b: [UInt8]) throws(EndophyteError) {
        do {
            var r = ByteReader(b)
            regionBytes = try r.u64(); pageSize = try r.u32(); sourceEpoch = try r.u64(); hashSeed = try r.u64()
            try r.finish()
        } catch let e as DecodeError {
            throw EndophyteError(.decode(e))
        } catch {
            throw EndophyteError(.decode(DecodeError(.invalid(field: "setup", reason: "\(error)"), at: 0)))
        }
    }
}

/// `ready`: the replica's committed epoch, and whether per-page hashes of its image follow.
public struct ResyncOffer: Sendable, Equatable {
    /// The last epoch applied to the image; 0 when none was applied since the replica started
    /// (its image is then at most a base and must not be taken over).
    public var committedEpoch: UInt64
    /// True: `hashes` messages covering every page follow, and the source sends only the pages
    /// that differ. False: the image holds nothing (fresh), and the source sends a full copy.
    public var offersHashes: Bool

    public init(committedEpoch: UInt64, offersHashes: Bool) {
        self.committedEpoch = committedEpoch
        self.offersHashes = offersHashes
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 9)
        w.u64(committedEpoch); w.u8(offersHashes ? 1 : 0)
        return w.bytes
    }

    public init(decoding b: [UInt8]) throws(EndophyteError) {
        do {
            var r = ByteReader(b)
            committedEpoch = try r.u64()
            let flag = try r.u8()
            guard flag <= 1 else { throw DecodeError(.invalid(field: "ready offers hashes", reason: "\(flag), expected 0 or 1"), at: 8) }
            offersHashes = flag == 1
            try r.finish()
        } catch let e as DecodeError {
            throw EndophyteError(.decode(e))
        } catch {
            throw EndophyteError(.decode(DecodeError(.invalid(field: "ready", reason: "\(error)"), at: 0)))
        }
    }
}

/// `hashes`: the seeded page hashes of a run of the replica's image, `firstPage` onwards.
public struct PageHashChunk: Sendable, Equatable {
    /// Hashes per message: 16,384 pages (64 MiB of image, 128 KiB of hashes), so a replica reading
    /// a cold image from disk answers each chunk well within the source's timeout.
    public static let maxHashes = 16_384

    public var firstPage: UInt64
    public var hashes: [UInt64]

    public init(firstPage: UInt64, hashes: [UInt64]) {
        self.firstPage = firstPage
        self.hashes = hashes
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 12 + 8 * hashes.count)
        w.u64(firstPage); w.u32(UInt32(hashes.count))
        for h in hashes { w.u64(h) }
        return w.bytes
    }

    public init(decoding b: [UInt8]) throws(EndophyteError) {
        do {
            var r = ByteReader(b)
            firstPage = try r.u64()
            let n = Int(try r.u32())
            guard n > 0, n <= Self.maxHashes else {
                throw DecodeError(.invalid(field: "hashes count", reason: "\(n), expected 1…\(Self.maxHashes)"), at: 8)
            }
            guard b.count == 12 + 8 * n else {
                throw DecodeError(.invalid(field: "hashes", reason: "\(n) hashes need \(12 + 8 * n) bytes, message has \(b.count)"), at: 12)
            }
            var hs = [UInt64]()
            hs.reserveCapacity(n)
            for _ in 0..<n { hs.append(try r.u64()) }
            hashes = hs
            try r.finish()
        } catch let e as DecodeError {
            throw EndophyteError(.decode(e))
        } catch {
            throw EndophyteError(.decode(DecodeError(.invalid(field: "hashes", reason: "\(error)"), at: 0)))
        }
    }
}

/// How a connection brought the replica up to date.
public struct SyncReport: Sendable, Equatable, CustomStringConvertible {
    public enum Method: String, Sendable {
        case fullCopy = "full copy"
        case hashResync = "resync by hashes"
    }
    public var method: Method
    /// The epoch the sync committed.
    public var epoch: UInt64
    public var regionPages: Int
    /// Resync: pages whose hash differed from the replica's; full copy: every page.
    public var differingPages: Int
    /// Every page sent in the sync epoch: the differing ones plus those written meanwhile (a page
    /// may count twice when it was written again after it was sent).
    public var pagesSent: Int
    /// Bytes the source put on the wire for the sync (pages, indexes, commit).
    public var bytesSent: UInt64
    /// Bytes of hashes the replica sent.
    public var hashBytesReceived: Int
    public var seconds: Double

    public var description: String {
        switch method {
        case .hashResync:
            return "resync by hashes: \(differingPages) of \(regionPages) pages differed, \(formatBytes(bytesSent)) sent"
        case .fullCopy:
            return "full copy: \(formatBytes(UInt64(regionPages * dirtyPageSize))), \(formatBytes(bytesSent)) sent"
        }
    }
}

func formatBytes(_ b: UInt64) -> String {
    let mib = Double(b) / Double(1 << 20)
    if mib >= 1 { return mib >= 100 ? "\(Int(mib.rounded())) MiB" : "\((mib * 10).rounded() / 10) MiB" }
    return "\((Double(b) / 1024 * 10).rounded() / 10) KiB"
}

extension MappedRegion {
    /// The seeded page hashes of `pages`. Holes of the backing file are zeros and get the zero
    /// page's hash without being read (reading would allocate them: guest RAM never written, a
    /// sparse image).
    public func pageHashes(seed: UInt64, pages: Range<Int>) -> [UInt64] {
        precondition(pages.lowerBound >= 0 && pages.upperBound <= pageCount, "pages \(pages) outside 0..<\(pageCount)")
        var zeroHash: UInt64 = 0
        withUnsafeMutablePointer(to: &zeroHash) { hashPages(UnsafeRawBufferPointer(start: zeroPage, count: dirtyPageSize), seed: seed, into: UnsafeMutableBufferPointer(start: $0, count: 1)) }
        var out = [UInt64](repeating: zeroHash, count: pages.count)
        out.withUnsafeMutableBufferPointer { o in
            for run in dataRuns(in: pages) {
                // SAFETY: run lies inside `pages`, which lies inside the mapping (checked above); `o`
                // holds pages.count values, and run is offset into it by pages.lowerBound.
                let bytes = UnsafeRawBufferPointer(start: page(run.lowerBound), count: run.count * dirtyPageSize)
                hashPages(bytes, seed: seed, into: UnsafeMutableBufferPointer(rebasing: o[(run.lowerBound - pages.lowerBound)..<(run.upperBound - pages.lowerBound)]))
            }
        }
        return out
    }

    /// Opens a replica image kept across agent restarts. `reused` is true when the file was already
    /// exactly `length` bytes: its contents are then a base a resync by hashes starts from (never
    /// an epoch that may be taken over: see ReplicaReceiver). A file of another length is another
    /// layout: it is emptied, and the source sends a full copy.
    public static func openImage(path: String, length: Int) throws(EndophyteError) -> (region: MappedRegion, reused: Bool) {
        guard length > 0, length % dirtyPageSize == 0 else {
            throw EndophyteError(.invalidState("region length \(length) must be a positive multiple of \(dirtyPageSize)"))
        }
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        if fd < 0 { throw EndophyteError(.region(operation: "open \(path)", errno: errno)) }
        var st = stat()
        if fstat(fd, &st) != 0 {
            let e = errno
            close(fd)
            throw EndophyteError(.region(operation: "stat \(path)", errno: e))
        }
        let reused = Int(st.st_size) == length
        if !reused && ftruncate(fd, 0) != 0 {
            let e = errno
            close(fd)
            throw EndophyteError(.region(operation: "empty \(path)", errno: e))
        }
        // Sizing a file to the length it already has changes nothing in it: the image is kept.
        return (try MappedRegion(fd: fd, length: length), reused)
    }
}

extension ReplicationTransport {
    /// Replica side: the seeded hashes of the whole image, in chunks, in page order.
    func sendPageHashes(of region: MappedRegion, seed: UInt64) throws(EndophyteError) -> Int {
        var first = 0, bytes = 0
        while first < region.pageCount {
            let end = min(first + PageHashChunk.maxHashes, region.pageCount)
            let body = PageHashChunk(firstPage: UInt64(first), hashes: region.pageHashes(seed: seed, pages: first..<end)).encoded()
            try send(.hashes, body)
            bytes += body.count
            first = end
        }
        return bytes
    }
}
