// A linearizability checker for register histories, after Wing & Gong (1993) with Lowe's memoisation, as in
// Porcupine. Histories are partitioned per key (registers are independent), which keeps each search small.

/// One client operation on a register.
public struct RegisterOperation: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case write(UInt64)
        /// A read and the value it returned (nil: the key was absent).
        case read(UInt64?)
    }

    public var client: UInt32
    public var key: UInt8
    public var kind: Kind
    public var invoked: Int64
    /// When the reply arrived; nil if it never did (the write may or may not have happened).
    public var returned: Int64?

    public init(client: UInt32, key: UInt8, kind: Kind, invoked: Int64, returned: Int64?) {
        self.client = client
        self.key = key
        self.kind = kind
        self.invoked = invoked
        self.returned = returned
    }
}

public enum Linearizability {
    /// The first key whose history is not linearizable, or nil if every key's is.
    /// Reads without a reply must be left out of the history (they had no effect).
    public static func firstViolation(_ history: [RegisterOperation]) -> UInt8? {
        var byKey: [UInt8: [RegisterOperation]] = [:]
        for op in history { byKey[op.key, default: []].append(op) }
        for key in byKey.keys.sorted() where !isLinearizable(register: byKey[key]!) { return key }
        return nil
    }

    private struct CacheKey: Hashable {
        var linearized: [UInt64]
        var state: UInt64?
    }

    /// Whether one register's history has a linearization (initial value: absent).
    public static func isLinearizable(register ops: [RegisterOperation]) -> Bool {
        let n = ops.count
        if n == 0 { return true }
        // Events: calls and returns in time order; at equal times calls come first (treated as concurrent).
        // Missing returns go last and mean "may never have taken effect".
        struct Event { var time: Int64; var isCall: Bool; var op: Int }
        var events: [Event] = []
        events.reserveCapacity(2 * n)
        for (i, op) in ops.enumerated() {
            events.append(Event(time: op.invoked, isCall: true, op: i))
            events.append(Event(time: op.returned ?? .max, isCall: false, op: i))
        }
        events.sort { a, b in
            if a.time != b.time { return a.time < b.time }
            if a.isCall != b.isCall { return a.isCall }
            return a.op < b.op
        }
        // Doubly linked list over events, with a sentinel head at index events.count.
        let head = events.count
        var next = [Int](repeating: -1, count: events.count + 1)
        var prev = [Int](repeating: -1, count: events.count + 1)
        var returnOf = [Int](repeating: -1, count: n)
        var callOf = [Int](repeating: -1, count: n)
        var last = head
        for (i, e) in events.enumerated() {
            next[last] = i; prev[i] = last; last = i
            if e.isCall { callOf[e.op] = i } else { returnOf[e.op] = i }
        }
        func lift(_ call: Int) {
            let ret = returnOf[events[call].op]
            for x in [call, ret] {
                let p = prev[x], q = next[x]
                next[p] = q
                if q >= 0 { prev[q] = p }
            }
        }
        func unlift(_ call: Int) {
            let ret = returnOf[events[call].op]
            for x in [ret, call] {
                let p = prev[x], q = next[x]
                next[p] = x
                if q >= 0 { prev[q] = x }
            }
        }
        var linearized = [UInt64](repeating: 0, count: (n + 63) / 64)
        var state: UInt64? = nil
        var cache: Set<CacheKey> = []
        var stack: [(call: Int, state: UInt64?)] = []
        var entry = next[head]
        while entry >= 0 {
            let e = events[entry]
            if e.isCall {
                let op = ops[e.op]
                var ok = true
                var newState = state
                switch op.kind {
                case let .write(v): newState = v
                case let .read(v): ok = v == state
                }
                if ok {
                    linearized[e.op / 64] |= 1 << UInt64(e.op % 64)
                    if cache.insert(CacheKey(linearized: linearized, state: newState)).inserted {
                        stack.append((entry, state))
                        state = newState
                        lift(entry)
                        entry = next[head]
                        continue
                    }
                    linearized[e.op / 64] &= ~(1 << UInt64(e.op % 64))
                }
                entry = next[entry]
            } else {
                // Reaching a return whose call is not linearized: if it never returned, every remaining
                // operation may be dropped, and what we have is a linearization.
                if e.time == .max { return true }
                guard let top = stack.popLast() else { return false }
                state = top.state
                let op = events[top.call].op
                linearized[op / 64] &= ~(1 << UInt64(op % 64))
                unlift(top.call)
                entry = next[top.call]
            }
        }
        return true
    }
}
