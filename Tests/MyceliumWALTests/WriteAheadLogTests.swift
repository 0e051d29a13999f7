// The WAL against real files in a temporary directory: round trips, overwritten suffixes, torn tails cut at
// every byte, corruption in the middle, snapshots and segment rotation.

#if canImport(Glibc)
import Glibc
#endif
import MyceliumCore
import MyceliumRaft
import MyceliumWAL
import XCTest

final class WriteAheadLogTests: XCTestCase {
    var dir = ""

    override func setUp() {
        var template = Array("/tmp/mycelium-wal-test-XXXXXX".utf8CString)
        dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    override func tearDown() { removeTree(dir) }

    func entries(_ range: ClosedRange<UInt64>, term: UInt64, size: Int = 10) -> [Entry] {
        range.map { Entry(term: term, index: $0, data: [UInt8](repeating: UInt8(truncatingIfNeeded: $0), count: size)) }
    }

    func testRoundTripAndReopen() throws {
        do {
            let (wal, rec) = try WriteAheadLog.open(directory: dir)
            XCTAssertEqual(rec.state, RaftStorageState())
            try wal.save(hardState: HardState(term: 1, vote: 2, commit: 0), entries: entries(1...3, term: 1))
            try wal.save(hardState: HardState(term: 1, vote: 2, commit: 3), entries: [])
        }
        let (_, rec) = try WriteAheadLog.open(directory: dir)
        XCTAssertEqual(rec.state.hardState, HardState(term: 1, vote: 2, commit: 3))
        XCTAssertEqual(rec.state.entries, entries(1...3, term: 1))
        XCTAssertNil(rec.truncatedTail)
    }

    func testOverwrittenSuffixIsReplayedAsRaftDidIt() throws {
        do {
            let (wal, _) = try WriteAheadLog.open(directory: dir)
            try wal.save(hardState: HardState(term: 1), entries: entries(1...5, term: 1))
            // A new leader of term 2 overwrote entries 3... (Raft §5.3).
            try wal.save(hardState: HardState(term: 2), entries: entries(3...4, term: 2))
        }
        let (_, rec) = try WriteAheadLog.open(directory: dir)
        XCTAssertEqual(rec.state.entries, entries(1...2, term: 1) + entries(3...4, term: 2))
    }

    /// Cuts the last record at every byte: each cut must be detected as a torn tail and truncated, leaving
    /// exactly what was acknowledged before the last save; the log must then accept new writes.
    func testTornTailTruncatedAtEveryByte() throws {
        let before: RaftStorageState
        let segment: String
        let sizeBefore: Int
        let sizeAfter: Int
        do {
            let (wal, _) = try WriteAheadLog.open(directory: dir)
            try wal.save(hardState: HardState(term: 1, vote: 1, commit: 2), entries: entries(1...3, term: 1))
            segment = try XCTUnwrap(listDirectory(dir).first { $0.hasPrefix("wal-") }).map { dir + "/" + $0 }!
            sizeBefore = fileSize(segment)
            before = try WriteAheadLog.open(directory: dir).1.state
            try wal.save(hardState: nil, entries: entries(4...4, term: 1, size: 20))
            sizeAfter = fileSize(segment)
        }
        let full = try AtomicFile.read(segment)
        XCTAssertGreaterThan(sizeAfter, sizeBefore)
        for cut in sizeBefore..<sizeAfter {
            let d = dir + "/cut\(cut)"
            XCTAssertEqual(mkdir(d, 0o700), 0)
            try AtomicFile.write(Array(full[..<cut]), to: d + "/" + lastComponent(segment))
            let (wal, rec) = try WriteAheadLog.open(directory: d)
            XCTAssertEqual(rec.state, before, "cut at \(cut)")
            if cut > sizeBefore {
                XCTAssertEqual(rec.truncatedTail?.offset, sizeBefore, "cut at \(cut)")
                XCTAssertEqual(rec.truncatedTail?.bytes, cut - sizeBefore)
            } else {
                XCTAssertNil(rec.truncatedTail)
            }
            // The repaired log keeps working.
            try wal.save(hardState: nil, entries: entries(4...4, term: 2))
            wal.close()
            let again = try WriteAheadLog.open(directory: d).1
            XCTAssertEqual(again.state.entries.last, entries(4...4, term: 2)[0], "cut at \(cut)")
            XCTAssertNil(again.truncatedTail)
        }
    }

    func testBitFlipInLastRecordIsATornTail() throws {
        let segment: String
        do {
            let (wal, _) = try WriteAheadLog.open(directory: dir)
            try wal.save(hardState: nil, entries: entries(1...2, term: 1))
            try wal.save(hardState: nil, entries: entries(3...3, term: 1))
            segment = dir + "/" + listDirectory(dir).first { $0.hasPrefix("wal-") }!
        }
        var bytes = try AtomicFile.read(segment)
        bytes[bytes.count - 1] ^= 0x40
        try AtomicFile.write(bytes, to: segment)
        let (_, rec) = try WriteAheadLog.open(directory: dir)
        XCTAssertEqual(rec.state.entries, entries(1...2, term: 1))
        XCTAssertNotNil(rec.truncatedTail)
    }

    /// A damaged record with valid data after it is corruption, never a torn write: opening fails and names the
    /// file and the offset.
    func testCorruptionInTheMiddleIsAnErrorNamingFileAndOffset() throws {
        let segment: String
        do {
            let (wal, _) = try WriteAheadLog.open(directory: dir)
            for i in UInt64(1)...5 { try wal.save(hardState: nil, entries: entries(i...i, term: 1)) }
            segment = dir + "/" + listDirectory(dir).first { $0.hasPrefix("wal-") }!
        }
        var bytes = try AtomicFile.read(segment)
        // Header is 16 bytes; the first record's payload starts at 16 + 9. Damage a byte of its data.
        bytes[16 + 9 + 20] ^= 0xFF
        try AtomicFile.write(bytes, to: segment)
        XCTAssertThrowsError(try WriteAheadLog.open(directory: dir)) { error in
            guard let e = error as? WALError else { return XCTFail("unexpected \(error)") }
            XCTAssertEqual(e.path, segment)
            XCTAssertEqual(e.offset, 16)
            guard case .corruptRecord = e.code else { return XCTFail("unexpected code \(e.code)") }
            XCTAssertTrue(e.description.contains(segment) && e.description.contains("byte 16"), e.description)
        }
    }

    func testSnapshotCompactionRotationAndRestart() throws {
        let conf = ConfState(voters: [1, 2, 3])
        let snap = Snapshot(metadata: SnapshotMetadata(index: 30, term: 2, confState: conf), data: Array("state".utf8))
        do {
            let (wal, _) = try WriteAheadLog.open(directory: dir, segmentBytes: 256)
            for i in stride(from: UInt64(1), through: 40, by: 4) {
                try wal.save(hardState: HardState(term: 2, vote: 1, commit: i), entries: entries(i...(i + 3), term: 2))
            }
            XCTAssertGreaterThan(listDirectory(dir).filter { $0.hasPrefix("wal-") }.count, 3)
            try wal.compact(with: snap)
            try wal.save(hardState: HardState(term: 2, vote: 1, commit: 44), entries: entries(41...44, term: 2))
        }
        let files = listDirectory(dir)
        XCTAssertEqual(files.filter { $0.hasSuffix(".snap") }.count, 1)
        let (_, rec) = try WriteAheadLog.open(directory: dir, segmentBytes: 256)
        XCTAssertEqual(rec.state.snapshot, snap)
        XCTAssertEqual(rec.state.entries, entries(31...44, term: 2))
        XCTAssertEqual(rec.state.hardState, HardState(term: 2, vote: 1, commit: 44))
    }

    func testReceivedSnapshotReplacesADivergedLog() throws {
        let snap = Snapshot(metadata: SnapshotMetadata(index: 5, term: 3, confState: ConfState(voters: [1, 2, 3])), data: [1, 2, 3])
        do {
            let (wal, _) = try WriteAheadLog.open(directory: dir)
            try wal.save(hardState: HardState(term: 1), entries: entries(1...8, term: 1))
            var rd = Ready()
            rd.snapshot = snap
            rd.hardState = HardState(term: 3, vote: 0, commit: 5)
            try wal.save(rd)
        }
        let (wal, rec) = try WriteAheadLog.open(directory: dir)
        XCTAssertEqual(rec.state.snapshot, snap)
        XCTAssertEqual(rec.state.entries, [])
        // A newer snapshot replaces the older file.
        let newer = Snapshot(metadata: SnapshotMetadata(index: 9, term: 3, confState: snap.metadata.confState), data: [4])
        var rd = Ready()
        rd.snapshot = newer
        try wal.save(rd)
        XCTAssertEqual(listDirectory(dir).filter { $0.hasSuffix(".snap") }.count, 1)
        XCTAssertEqual(try WriteAheadLog.open(directory: dir).1.state.snapshot, newer)
        XCTAssertEqual(rec.state.hardState.commit, 5)
    }

    func testCorruptSnapshotFileIsNamed() throws {
        let snap = Snapshot(metadata: SnapshotMetadata(index: 2, term: 1, confState: ConfState(voters: [1])), data: [9, 9])
        do {
            let (wal, _) = try WriteAheadLog.open(directory: dir)
            try wal.save(hardState: HardState(term: 1, vote: 1, commit: 2), entries: entries(1...2, term: 1))
            try wal.compact(with: snap)
        }
        let name = listDirectory(dir).first { $0.hasSuffix(".snap") }!
        var bytes = try AtomicFile.read(dir + "/" + name)
        bytes[bytes.count - 1] ^= 1
        try AtomicFile.write(bytes, to: dir + "/" + name)
        XCTAssertThrowsError(try WriteAheadLog.open(directory: dir)) { error in
            XCTAssertTrue("\(error)".contains(name), "\(error)")
        }
    }

    func testRaftRestartsFromTheWAL() throws {
        var rng = SeededRandom(seed: 7)
        do {
            let (wal, rec) = try WriteAheadLog.open(directory: dir)
            var storage = rec.state
            if storage == RaftStorageState() { storage = .bootstrap(voters: [1]) }
            try wal.save(hardState: storage.hardState, entries: storage.entries)
            var r = try Raft(config: RaftConfig(id: 1), storage: storage, random: &rng)
            for _ in 0..<30 { r.tick() }
            for round in 0..<5 {
                if r.role == .leader { _ = try r.propose([UInt8(round)]) }
                while r.hasReady {
                    let rd = r.ready()
                    try wal.save(rd)
                    r.advance(rd)
                }
            }
            XCTAssertEqual(r.role, .leader)
        }
        let (wal, rec) = try WriteAheadLog.open(directory: dir)
        XCTAssertEqual(rec.state.entries.last?.index, 7) // bootstrap entry, leader no-op, five proposals
        var r = try Raft(config: RaftConfig(id: 1), storage: rec.state, random: &rng)
        // A Ready that only moves the commit index is not written (it would cost an fdatasync per
        // commit): the recovered commit index may lag, never lead, and Raft commits again.
        XCTAssertLessThanOrEqual(r.commitIndex, 7)
        for _ in 0..<30 { r.tick() }
        while r.hasReady {
            let rd = r.ready()
            try wal.save(rd)
            r.advance(rd)
        }
        XCTAssertGreaterThanOrEqual(r.commitIndex, 7)
        XCTAssertEqual(r.entry(at: 7)?.data, [4])
    }
}

// MARK: - helpers

func lastComponent(_ path: String) -> String { String(path.split(separator: "/").last ?? "") }

func listDirectory(_ path: String) -> [String] {
    guard let d = opendir(path) else { return [] }
    defer { closedir(d) }
    var out: [String] = []
    while let ent = readdir(d) {
        let name = withUnsafePointer(to: ent.pointee.d_name) {
            $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
        }
        if name != "." && name != ".." { out.append(name) }
    }
    return out.sorted()
}

func fileSize(_ path: String) -> Int {
    var st = stat()
    return stat(path, &st) == 0 ? Int(st.st_size) : -1
}

func removeTree(_ path: String) {
    for name in listDirectory(path) {
        let p = path + "/" + name
        var st = stat()
        if stat(p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR { removeTree(p) } else { unlink(p) }
    }
    rmdir(path)
}
