// A simulated network, generic over the message type so the Raft, vote (BFT) and node-agent simulations share it.
// Every random decision comes from the network's own seeded generator, so a run replays exactly.

import MyceliumCore

/// Simulated time in milliseconds since the start of the run.
public typealias SimTime = Int64

/// How badly the network behaves. All probabilities are per message.
public struct NetworkFaults: Sendable, Equatable {
    public var lossProbability: Double
    public var duplicateProbability: Double
    /// Delay is uniform in `minDelay...maxDelay`; independent delays reorder messages.
    public var minDelay: SimTime
    public var maxDelay: SimTime
    /// Probability of an extra long delay (a "spike"), uniform in `0...spikeDelay`.
    public var spikeProbability: Double
    public var spikeDelay: SimTime

    public init(lossProbability: Double = 0, duplicateProbability: Double = 0, minDelay: SimTime = 1,
                maxDelay: SimTime = 5, spikeProbability: Double = 0, spikeDelay: SimTime = 0) {
        self.lossProbability = lossProbability
        self.duplicateProbability = duplicateProbability
        self.minDelay = minDelay
        self.maxDelay = maxDelay
        self.spikeProbability = spikeProbability
        self.spikeDelay = spikeDelay
    }

    /// A healthy LAN: no loss, no duplication, 1–5 ms.
    public static let healthy = NetworkFaults()
}

/// A directed link; partitions may block one direction only (asymmetric partitions).
public struct Link: Hashable, Sendable {
    public var from: UInt64
    public var to: UInt64
    public init(from: UInt64, to: UInt64) { self.from = from; self.to = to }
}

/// Messages in flight between simulated nodes, delivered in time order (ties broken by send order).
public struct SimNetwork<Payload: Sendable>: Sendable {
    public struct Delivery: Sendable {
        public var at: SimTime
        public var seq: UInt64
        public var from: UInt64
        public var to: UInt64
        public var payload: Payload
    }

    public var faults: NetworkFaults
    private var heap: [Delivery] = []
    private var seq: UInt64 = 0
    private var blocked: Set<Link> = []
    private var random: SeededRandom
    public private(set) var sent = 0, lost = 0, duplicated = 0, delivered = 0, blockedDrops = 0

    public init(faults: NetworkFaults = .healthy, random: SeededRandom) {
        self.faults = faults
        self.random = random
    }

    /// Queues a message; it may be lost, duplicated or delayed according to `faults`.
    public mutating func send(from: UInt64, to: UInt64, _ payload: Payload, now: SimTime) {
        sent += 1
        if random.chance(faults.lossProbability) { lost += 1; return }
        let copies = random.chance(faults.duplicateProbability) ? 2 : 1
        if copies == 2 { duplicated += 1 }
        for _ in 0..<copies {
            var delay = SimTime.random(in: faults.minDelay...max(faults.minDelay, faults.maxDelay), using: &random)
            if faults.spikeDelay > 0 && random.chance(faults.spikeProbability) {
                delay += SimTime.random(in: 0...faults.spikeDelay, using: &random)
            }
            push(Delivery(at: now + delay, seq: seq, from: from, to: to, payload: payload))
            seq += 1
        }
    }

    /// When the next message is due, if any.
    public var nextDeliveryTime: SimTime? { heap.first?.at }
    public var inFlight: Int { heap.count }

    /// Removes and returns the next message due at or before `now`. Messages crossing a blocked link are
    /// dropped at delivery time, so a partition also cuts messages already on the wire.
    public mutating func popDue(now: SimTime) -> Delivery? {
        while let first = heap.first, first.at <= now {
            let d = pop()
            if blocked.contains(Link(from: d.from, to: d.to)) { blockedDrops += 1; continue }
            delivered += 1
            return d
        }
        return nil
    }

    public func isBlocked(from: UInt64, to: UInt64) -> Bool { blocked.contains(Link(from: from, to: to)) }
    public var hasPartition: Bool { !blocked.isEmpty }

    /// Blocks one direction only.
    public mutating func block(from: UInt64, to: UInt64) { blocked.insert(Link(from: from, to: to)) }

    /// Cuts every link between the two groups, both ways.
    public mutating func partition(_ a: [UInt64], _ b: [UInt64]) {
        for x in a { for y in b { block(from: x, to: y); block(from: y, to: x) } }
    }

    public mutating func heal() { blocked.removeAll() }

    /// Drops every message in flight to `node` (e.g. when it crashes, its socket buffers vanish).
    public mutating func dropAll(to node: UInt64) {
        let before = heap.count
        heap.removeAll { $0.to == node }
        lost += before - heap.count
        heapify()
    }

    // MARK: binary heap ordered by (at, seq)

    private static func less(_ a: Delivery, _ b: Delivery) -> Bool { a.at < b.at || (a.at == b.at && a.seq < b.seq) }

    private mutating func push(_ d: Delivery) {
        heap.append(d)
        var i = heap.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if Self.less(heap[i], heap[p]) { heap.swapAt(i, p); i = p } else { break }
        }
    }

    private mutating func pop() -> Delivery {
        let top = heap[0]
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            siftDown(0)
        }
        return top
    }

    private mutating func siftDown(_ start: Int) {
        var i = start
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < heap.count && Self.less(heap[l], heap[m]) { m = l }
            if r < heap.count && Self.less(heap[r], heap[m]) { m = r }
            if m == i { return }
            heap.swapAt(i, m)
            i = m
        }
    }

    private mutating func heapify() {
        if heap.count < 2 { return }
        for i in stride(from: heap.count / 2 - 1, through: 0, by: -1) { siftDown(i) }
    }
}

/// A simulated disk: writes complete in order after a random latency, and a crash loses every write that has
/// not completed (nothing is acknowledged before its fsync). Generic over what a write is.
public struct SimDisk<Write: Sendable>: Sendable {
    /// When the oldest pending write completes (a stored copy, cheap to poll every step).
    public private(set) var nextCompletionTime: SimTime?
    public var minLatency: SimTime
    public var maxLatency: SimTime
    /// Probability that a write stalls for up to `stallLatency` more (a slow or overloaded disk).
    public var stallProbability: Double
    public var stallLatency: SimTime
    private var pending: [(at: SimTime, write: Write)] = []
    private var random: SeededRandom
    public private(set) var completedWrites = 0, lostWrites = 0

    public init(minLatency: SimTime = 0, maxLatency: SimTime = 1, stallProbability: Double = 0,
                stallLatency: SimTime = 0, random: SeededRandom) {
        self.minLatency = minLatency
        self.maxLatency = maxLatency
        self.stallProbability = stallProbability
        self.stallLatency = stallLatency
        self.random = random
    }

    /// Starts a write; returns when it will be durable. Writes complete in submission order.
    @discardableResult
    public mutating func submit(_ w: Write, now: SimTime) -> SimTime {
        var latency = SimTime.random(in: minLatency...max(minLatency, maxLatency), using: &random)
        if stallLatency > 0 && random.chance(stallProbability) {
            latency += SimTime.random(in: 0...stallLatency, using: &random)
        }
        let at = max(now + latency, pending.last?.at ?? now)
        pending.append((at, w))
        if nextCompletionTime == nil { nextCompletionTime = at }
        return at
    }

    public var isIdle: Bool { pending.isEmpty }

    /// The next write that is durable by `now`, in order.
    public mutating func popCompleted(now: SimTime) -> Write? {
        guard let t = nextCompletionTime, t <= now else { return nil }
        let first = pending.removeFirst()
        nextCompletionTime = pending.first?.at
        completedWrites += 1
        return first.write
    }

    /// Power loss: unsynced writes vanish.
    public mutating func crash() {
        lostWrites += pending.count
        pending.removeAll()
        nextCompletionTime = nil
    }
}

/// A node's clock: it ticks every `period` ms, so nodes with different periods drift apart.
public struct SimClock: Sendable {
    public var period: SimTime
    public var nextTick: SimTime

    public init(period: SimTime, phase: SimTime) {
        precondition(period > 0, "clock period must be positive")
        self.period = period
        self.nextTick = phase
    }

    public mutating func advance() { nextTick += period }
}
