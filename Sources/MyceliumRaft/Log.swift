// The in-memory Raft log: everything after the last snapshot. Entries at or after `unstableFrom` have been
// handed to nobody for persistence yet, or have been handed out but not confirmed by `advance`.

struct RaftLog: Sendable {
    /// The last index and term covered by the snapshot the log starts after.
    private(set) var snapshotIndex: UInt64 = 0
    private(set) var snapshotTerm: UInt64 = 0
    /// `entries[i].index == snapshotIndex + 1 + i`.
    private(set) var entries: [Entry] = []
    /// Highest index known to be committed (Raft §5.3).
    private(set) var committed: UInt64 = 0
    /// Highest index handed to the shell for applying (in a `Ready`).
    var applying: UInt64 = 0
    /// Highest index the shell confirmed as applied (through `advance`).
    var applied: UInt64 = 0
    /// First index not yet confirmed durable.
    private(set) var unstableFrom: UInt64 = 1

    init() {}

    init(snapshotIndex: UInt64, snapshotTerm: UInt64, entries: [Entry], committed: UInt64) {
        self.snapshotIndex = snapshotIndex
        self.snapshotTerm = snapshotTerm
        self.entries = entries
        self.committed = committed
        self.applying = snapshotIndex
        self.applied = snapshotIndex
        self.unstableFrom = snapshotIndex + UInt64(entries.count) + 1
    }

    var firstIndex: UInt64 { snapshotIndex + 1 }
    var lastIndex: UInt64 { snapshotIndex + UInt64(entries.count) }
    var lastTerm: UInt64 { entries.last?.term ?? snapshotTerm }
    /// Highest index confirmed durable.
    var stableIndex: UInt64 { unstableFrom - 1 }

    /// The term of the entry at `index`, or nil if it was compacted away or does not exist yet.
    func term(at index: UInt64) -> UInt64? {
        if index == snapshotIndex { return snapshotTerm }
        if index < snapshotIndex || index > lastIndex { return nil }
        return entries[Int(index - snapshotIndex - 1)].term
    }

    func entry(at index: UInt64) -> Entry? {
        if index <= snapshotIndex || index > lastIndex { return nil }
        return entries[Int(index - snapshotIndex - 1)]
    }

    func matchTerm(_ index: UInt64, _ term: UInt64) -> Bool { self.term(at: index) == term }

    /// Raft §5.4.1: a candidate's log is at least as up to date as ours if its last term is higher, or equal
    /// with an index at least as high.
    func isUpToDate(lastIndex: UInt64, lastTerm: UInt64) -> Bool {
        lastTerm > self.lastTerm || (lastTerm == self.lastTerm && lastIndex >= self.lastIndex)
    }

    /// Entries in `[from, lastIndex]` up to `maxBytes` (always at least one if any exist).
    func entries(from: UInt64, maxBytes: Int) -> ArraySlice<Entry> {
        precondition(from > snapshotIndex, "raft log: entries from \(from) were compacted (first index \(firstIndex))")
        if from > lastIndex { return [] }
        let start = Int(from - snapshotIndex - 1)
        var end = start
        var bytes = 0
        while end < entries.count {
            bytes += entries[end].byteSize
            if end > start && bytes > maxBytes { break }
            end += 1
        }
        return entries[start..<end]
    }

    func entries(in range: ClosedRange<UInt64>) -> ArraySlice<Entry> {
        precondition(range.lowerBound > snapshotIndex && range.upperBound <= lastIndex,
                     "raft log: range \(range) outside [\(firstIndex), \(lastIndex)]")
        return entries[Int(range.lowerBound - snapshotIndex - 1)...Int(range.upperBound - snapshotIndex - 1)]
    }

    /// The largest index at or below `index` whose term is at most `term`, used to skip back a whole term when
    /// an append is rejected.
    func indexOfLastEntry(atOrBelow index: UInt64, withTermAtMost term: UInt64) -> UInt64 {
        var i = min(index, lastIndex)
        while i > snapshotIndex {
            if let t = self.term(at: i), t <= term { return i }
            i -= 1
        }
        return snapshotIndex
    }

    /// Appends entries the leader created.
    mutating func appendAsLeader(_ newEntries: some Collection<Entry>) {
        entries.append(contentsOf: newEntries)
    }

    /// Appends entries received after a matching `prevIndex`, truncating at the first conflict (Raft §5.3).
    /// Returns nil if a committed entry would be overwritten, which Raft guarantees cannot happen; otherwise the
    /// index from which the log was truncated, if it was.
    mutating func appendFollowing(prevIndex: UInt64, _ newEntries: [Entry]) -> UInt64?? {
        var truncatedFrom: UInt64?
        var i = 0
        // Skip entries we already hold with the same term (duplicates and reordering are harmless).
        while i < newEntries.count {
            let e = newEntries[i]
            if e.index <= snapshotIndex { i += 1; continue }
            guard let t = term(at: e.index) else { break }
            if t != e.term {
                if e.index <= committed { return nil }
                truncate(after: e.index - 1)
                truncatedFrom = e.index
                break
            }
            i += 1
        }
        if i < newEntries.count {
            precondition(newEntries[i].index == lastIndex + 1,
                         "raft log: appending index \(newEntries[i].index) after last index \(lastIndex)")
            entries.append(contentsOf: newEntries[i...])
        }
        return .some(truncatedFrom)
    }

    private mutating func truncate(after index: UInt64) {
        precondition(index >= committed, "raft log: truncating committed entries (commit \(committed), truncate after \(index))")
        entries.removeSubrange(Int(index - snapshotIndex)...)
        unstableFrom = min(unstableFrom, index + 1)
    }

    mutating func commit(to index: UInt64) {
        guard index > committed else { return }
        precondition(index <= lastIndex, "raft log: commit \(index) beyond last index \(lastIndex)")
        committed = index
    }

    /// Confirms that entries up to `index` (whose term was `term` when handed out) are durable.
    mutating func stable(to index: UInt64, term: UInt64) {
        if matchTerm(index, term) && index >= unstableFrom { unstableFrom = index + 1 }
    }

    /// Replaces the whole log by a snapshot (Raft §7, when the snapshot is not a prefix of our log).
    mutating func restore(_ meta: SnapshotMetadata) {
        snapshotIndex = meta.index
        snapshotTerm = meta.term
        entries.removeAll()
        committed = meta.index
        applying = meta.index
        applied = meta.index
        unstableFrom = meta.index + 1
    }

    /// Discards entries up to and including `index` after the shell took a snapshot there.
    mutating func compact(to index: UInt64) {
        precondition(index > snapshotIndex && index <= applied, "raft log: compaction to \(index) out of range")
        let t = term(at: index)!
        entries.removeSubrange(0..<Int(index - snapshotIndex))
        snapshotIndex = index
        snapshotTerm = t
    }
}
