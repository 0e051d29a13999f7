// What the leader knows about each follower's log, and the flow control that keeps it from flooding one
// (etcd's Progress/Inflights design: probe while unsure, pipeline once matched, snapshot when compacted away).

/// Sliding window of in-flight append messages to one follower, bounded by count and by bytes.
struct Inflights: Sendable {
    private var lastIndexes: [UInt64] = []
    private var sizes: [Int] = []
    private var head = 0
    private(set) var count = 0
    private(set) var bytes = 0
    let maxCount: Int
    let maxBytes: Int

    init(maxCount: Int, maxBytes: Int) {
        self.maxCount = maxCount
        self.maxBytes = maxBytes
    }

    var isFull: Bool { count >= maxCount || bytes >= maxBytes }

    mutating func add(lastIndex: UInt64, bytes b: Int) {
        precondition(!isFull, "inflights: adding to a full window")
        if lastIndexes.isEmpty {
            // Allocated on first use so idle followers cost nothing.
            lastIndexes = [UInt64](repeating: 0, count: maxCount)
            sizes = [Int](repeating: 0, count: maxCount)
        }
        let slot = (head + count) % lastIndexes.count
        lastIndexes[slot] = lastIndex
        sizes[slot] = b
        count += 1
        bytes += b
    }

    /// Frees every message whose last index is at or below `index` (acknowledged).
    mutating func free(upTo index: UInt64) {
        while count > 0 && lastIndexes[head] <= index {
            bytes -= sizes[head]
            head = (head + 1) % lastIndexes.count
            count -= 1
        }
        if count == 0 { head = 0 }
    }

    /// Frees the oldest message, whatever its index (it was probably lost).
    mutating func freeFirst() {
        guard count > 0 else { return }
        free(upTo: lastIndexes[head])
    }

    mutating func reset() {
        head = 0; count = 0; bytes = 0
    }
}

/// The leader's view of one follower.
struct Progress: Sendable {
    enum State: String, Sendable { case probe, replicate, snapshot }

    /// Highest index known to be replicated on the follower.
    var match: UInt64 = 0
    /// Next index to send.
    var next: UInt64
    var state: State = .probe
    /// In probe state, one append is outstanding; wait for its answer or the next heartbeat.
    var probeSent = false
    /// In snapshot state: the snapshot being sent and how many bytes the follower has acknowledged.
    var pendingSnapshot: SnapshotMetadata?
    var snapshotAcked: UInt64 = 0
    /// Set whenever the follower answers; check-quorum clears it every election timeout (thesis §6.2).
    var recentActive = false
    var inflights: Inflights
    /// Latest ReadIndex round the follower acknowledged (thesis §6.4).
    var readAck: UInt64 = 0

    init(next: UInt64, maxInflight: Int, maxInflightBytes: Int) {
        self.next = next
        self.inflights = Inflights(maxCount: maxInflight, maxBytes: maxInflightBytes)
    }

    var isPaused: Bool {
        switch state {
        case .probe: return probeSent
        case .replicate: return inflights.isFull
        case .snapshot: return true
        }
    }

    mutating func becomeProbe() {
        // After a snapshot, resume right after it; otherwise right after what is known to match.
        if state == .snapshot, let s = pendingSnapshot {
            next = max(match + 1, s.index + 1)
        } else {
            next = match + 1
        }
        state = .probe
        probeSent = false
        pendingSnapshot = nil
        inflights.reset()
    }

    mutating func becomeReplicate() {
        state = .replicate
        next = match + 1
        probeSent = false
        pendingSnapshot = nil
        inflights.reset()
    }

    mutating func becomeSnapshot(_ meta: SnapshotMetadata) {
        state = .snapshot
        pendingSnapshot = meta
        snapshotAcked = 0
        probeSent = false
        inflights.reset()
    }

    /// A successful append response. Returns false if it told us nothing new (stale or duplicated).
    mutating func maybeUpdate(_ index: UInt64) -> Bool {
        var updated = false
        if index > match {
            match = index
            updated = true
            probeSent = false
        }
        next = max(next, index + 1)
        return updated
    }

    /// A rejected append for `prevIndex == rejected`; `hint` is the highest index that may match.
    /// Returns false if the rejection is stale.
    mutating func maybeDecrease(rejected: UInt64, hint: UInt64) -> Bool {
        if state == .replicate {
            // Pipelined appends beyond `match` may be rejected in bulk; only react to the first.
            if rejected <= match { return false }
            next = match + 1
            return true
        }
        if next == 0 || next - 1 != rejected { return false }
        next = max(min(rejected, hint + 1), match + 1)
        probeSent = false
        return true
    }
}
