// The memory being replicated: a shared mapping of a memfd or a file, the form QEMU keeps guest RAM
// in (`-object memory-backend-memfd,share=on` or `memory-backend-file,share=on`), so the same code
// later replicates real guest RAM unchanged.

import DirtyPages

#if canImport(Glibc)
import Glibc
#endif

// <unistd.h> defines these only under _GNU_SOURCE, which Swift's Glibc module does not see.
private let seekData: Int32 = 3  // SEEK_DATA
private let seekHole: Int32 = 4  // SEEK_HOLE

public final class MappedRegion: @unchecked Sendable {
    // SAFETY (Sendable): the mapping is fixed for the object's life; synchronising access to its
    // bytes is the caller's contract (writers pause at epoch boundaries).
    public let base: UnsafeMutableRawPointer
    public let length: Int
    /// The backing fd (memfd or file); kept open so the region can be handed to another process.
    public let descriptor: Int32

    /// An anonymous memfd of `length` bytes (a multiple of the page size), shared-mapped.
    public convenience init(memfdNamed name: String, length: Int) throws(EndophyteError) {
        guard length > 0, length % dirtyPageSize == 0 else {
            throw EndophyteError(.invalidState("region length \(length) must be a positive multiple of \(dirtyPageSize)"))
        }
        let fd: Int32
        do { fd = try createMemfd(name: name) } catch { throw EndophyteError(.dirtyPages(error)) }
        try self.init(fd: fd, length: length)
    }

    /// A file of `length` bytes, created if missing, shared-mapped (replica images that must
    /// outlive the process).
    public convenience init(path: String, length: Int) throws(EndophyteError) {
        guard length > 0, length % dirtyPageSize == 0 else {
            throw EndophyteError(.invalidState("region length \(length) must be a positive multiple of \(dirtyPageSize)"))
        }
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        if fd < 0 { throw EndophyteError(.region(operation: "open \(path)", errno: errno)) }
        try self.init(fd: fd, length: length)
    }

    /// Maps `fd` (sized to `length` here) shared; takes ownership of the fd.
    public init(fd: Int32, length: Int) throws(EndophyteError) {
        if ftruncate(fd, off_t(length)) != 0 {
            let e = errno
            close(fd)
            throw EndophyteError(.region(operation: "ftruncate", errno: e))
        }
        guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            let e = errno
            close(fd)
            throw EndophyteError(.region(operation: "mmap", errno: e))
        }
        base = p
        self.length = length
        descriptor = fd
    }

    deinit {
        munmap(base, length)
        close(descriptor)
    }

    public var pageCount: Int { length / dirtyPageSize }
    public var buffer: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: length) }
    public func page(_ i: Int) -> UnsafeMutableRawPointer { base + i * dirtyPageSize }

    /// Splits the pages into those backed by data and those in holes of the backing file
    /// (SEEK_DATA/SEEK_HOLE; shmem/memfd and most file systems support it, and count swapped-out
    /// pages as data). Without hole support everything is data.
    public func dataAndHolePages() -> (data: [Int], holes: [Int]) {
        var data: [Int] = [], holes: [Int] = []
        data.reserveCapacity(pageCount)
        var next = 0
        for run in dataRuns(in: 0..<pageCount) {
            holes.append(contentsOf: next..<run.lowerBound)
            data.append(contentsOf: run)
            next = run.upperBound
        }
        holes.append(contentsOf: next..<pageCount)
        return (data, holes)
    }

    /// The runs of `pages` backed by data (ascending, disjoint); the pages between them are holes.
    public func dataRuns(in pages: Range<Int>) -> [Range<Int>] {
        var runs: [Range<Int>] = []
        var offset = off_t(pages.lowerBound * dirtyPageSize)
        let end = off_t(pages.upperBound * dirtyPageSize)
        while offset < end {
            let d = lseek(descriptor, offset, seekData)
            let e = errno
            if d < 0 && e != ENXIO {  // no hole support: treat the rest as data
                runs.append(Int(offset) / dirtyPageSize..<pages.upperBound)
                return runs
            }
            let dataStart = d < 0 ? end : min(d, end)  // ENXIO: only a hole remains
            if dataStart >= end { break }
            let h = lseek(descriptor, dataStart, seekHole)
            let dataEnd = h < 0 ? end : min(h, end)
            // Round outwards: a partly-data page is data.
            let first = Int(dataStart) / dirtyPageSize
            let last = min((Int(dataEnd) + dirtyPageSize - 1) / dirtyPageSize, pages.upperBound)
            if let prev = runs.last, prev.upperBound >= first {
                runs[runs.count - 1] = prev.lowerBound..<max(prev.upperBound, last)
            } else {
                runs.append(first..<last)
            }
            offset = off_t(last * dirtyPageSize)
        }
        return runs
    }

    /// True when both regions hold the same bytes.
    public func contentsEqual(_ other: MappedRegion) -> Bool {
        length == other.length && memcmp(base, other.base, length) == 0
    }
}
