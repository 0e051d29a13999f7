// rhizomorph-stress: closes rhizomorph sessions while other threads are inside them.
//
// Each round connects a session over two loopback paths, starts threads on one end (the victim)
// that send pages and barriers, receive, flush, wait for connections and read statistics and the
// ID, with the peer sending and receiving too, and then closes the victim: from another thread, or
// from inside a page callback of one of its own receive calls. Every call must succeed, time out
// (only the calls given a timeout), or end with `.closed`; every thread must return within a
// deadline (a hang is a failure); once closed, calls fail at once and the counters read zero. The
// peer's calls must end with `.closed` or a peer-gone error once the victim is gone. Each round is
// followed by one on MessageChannels (the layer the replication transport uses): closed while two
// threads send messages and one receives, with every message checked whole on arrival.
//
// The point is the memory safety of Session.close(): built with AddressSanitizer (scripts/test:
// `swift build --sanitize=address --product rhizomorph-stress`), a close that freed the C session
// while a call is still inside it is reported as a heap-use-after-free. RhizomorphTests runs the
// plain build as well.
//
// Usage: rhizomorph-stress [--rounds N] [--seed S] [--close-from thread|callback|both]
//        exit status 0 when every round passed

import MyceliumIdentity
import Rhizomorph

#if canImport(Glibc)
import Glibc
#endif

// MARK: plumbing (pthreads, so that the sanitizers see every synchronisation)

/// A mutex-guarded value.
final class Guarded<T>: @unchecked Sendable {
    // SAFETY (Sendable): `value` is only touched under `m`.
    private var value: T
    private let m: UnsafeMutablePointer<pthread_mutex_t> = .allocate(capacity: 1)
    init(_ v: T) {
        value = v
        m.initialize(to: pthread_mutex_t())
        pthread_mutex_init(m, nil)
    }
    deinit {
        pthread_mutex_destroy(m)
        m.deallocate()
    }
    func with<R>(_ body: (inout T) -> R) -> R {
        pthread_mutex_lock(m)
        defer { pthread_mutex_unlock(m) }
        return body(&value)
    }
    var get: T { with { $0 } }
}

/// A thread whose end can be awaited with a deadline (a thread stuck in a call is a failure, and
/// cannot be joined).
final class Worker: @unchecked Sendable {
    // SAFETY (Sendable): `finished` is Guarded; `body` is only run by the new thread.
    let name: String
    let finished = Guarded(false)
    private let body: () -> Void
    private var thread = pthread_t()

    init(_ name: String, _ body: @escaping @Sendable () -> Void) {
        self.name = name
        self.body = body
        let ctx = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { ctx in
            // SAFETY: ctx is the retained Worker passed below, released here exactly once.
            let w = Unmanaged<Worker>.fromOpaque(ctx!).takeRetainedValue()
            w.body()
            w.finished.with { $0 = true }
            return nil
        }, ctx)
        precondition(rc == 0, "pthread_create failed: \(rc)")
    }

    /// Joins the thread if it ends within `seconds`; false (and not joined) otherwise.
    func join(within seconds: Double) -> Bool {
        let deadline = now() + seconds
        while !finished.get {
            if now() > deadline { return false }
            usleep(1000)  // polls a flag with a deadline
        }
        pthread_join(thread, nil)
        return true
    }
}

/// Unbuffered, so each round's line is out before a sanitizer report aborts the run.
func say(_ s: String) {
    var line = s + "\n"
    line.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: outcomes

/// What the calls of one end did.
struct Tally {
    var ok = 0, timedOut = 0, closed = 0, peerGone = 0
    var problems: [String] = []
    var calls: Int { ok + timedOut + closed + peerGone }
}

enum Side { case victim, peer }

/// Runs one call and files its outcome; returns false when the caller should stop (the session is over).
func attempt(_ what: String, _ side: Side, timed: Bool, _ tally: Guarded<Tally>, _ body: () throws -> Void) -> Bool {
    do {
        try body()
        tally.with { $0.ok += 1 }
        return true
    } catch let e as RhizomorphError {
        switch e.code {
        case .timedOut where timed:
            tally.with { $0.timedOut += 1 }
            return true
        case .closed:
            tally.with { $0.closed += 1 }
            return false
        case .system(ECONNRESET) where side == .peer, .system(ECONNABORTED) where side == .peer, .allPathsDown where side == .peer:
            tally.with { $0.peerGone += 1 }
            return false
        default:
            tally.with { $0.problems.append("\(what): \(e)") }
            return false
        }
    } catch {
        tally.with { $0.problems.append("\(what): \(error)") }
        return false
    }
}

// MARK: one round

enum Closers: String { case thread, callback, both }

let network = NetworkID(genesisKey: SigningKey(seed: [UInt8](repeating: 0x5E, count: 32)).publicKey)
let serverKey = SigningKey(seed: [UInt8](repeating: 0x51, count: 32))
let clientKey = SigningKey(seed: [UInt8](repeating: 0xC1, count: 32))

/// A session over two loopback paths: (client, server).
func connectedPair() throws -> (Session, Session) {
    let listener = try Listener(addresses: ["127.0.0.1", "127.0.0.2"])
    let accepted = Guarded<Result<Session, Error>?>(nil)
    let serverConfig = Configuration(identity: serverKey, network: network, peer: clientKey.publicKey)
    let acceptor = Worker("accept") {
        let s = Result { try listener.accept(serverConfig, timeoutMilliseconds: 10_000) }
        accepted.with { $0 = s }
    }
    var config = Configuration(identity: clientKey, network: network, peer: serverKey.publicKey)
    config.connectionsPerPath = 1
    config.chunkSize = 4096
    let client = try Session.connect(config, paths: [Path(local: "127.0.0.1", remote: "127.0.0.1", port: listener.port),
                                                     Path(local: "127.0.0.2", remote: "127.0.0.2", port: listener.port)])
    guard acceptor.join(within: 15), let result = accepted.get else { throw RhizomorphStressError("accept did not return") }
    return (client, try result.get())
}

struct RhizomorphStressError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// One round on MessageChannels (Messages.swift) over a fresh session: two threads send messages
/// of many sizes and one receives on the victim while the peer does the same, then the victim's
/// channel is closed. Every message that arrives must be whole and intact.
func channelRound(_ r: Int, rng: inout SplitMix) throws -> [String] {
    let (client, server) = try connectedPair()
    let victim = MessageChannel(session: r % 2 == 0 ? client : server, maxMessageBytes: 1 << 20, chunkSize: 4096)
    let peer = MessageChannel(session: r % 2 == 0 ? server : client, maxMessageBytes: 1 << 20, chunkSize: 4096)
    let vt = Guarded(Tally()), pt = Guarded(Tally())
    let sizes = [0, 1, 100, 4096, 5000, 65536, 300_000]
    func sender(_ name: String, _ ch: MessageChannel, _ side: Side, _ tally: Guarded<Tally>, fill: UInt8, seed: UInt64) -> Worker {
        Worker(name) {
            var rng = SplitMix(state: seed)
            let body = [UInt8](repeating: fill, count: 300_000)
            while attempt(name, side, timed: false, tally, {
                let n = sizes[Int(rng.next() % UInt64(sizes.count))]
                let cut = n / 3
                try body.withUnsafeBytes { b in
                    try ch.send(type: fill, parts: [UnsafeRawBufferPointer(rebasing: b[0..<cut]), UnsafeRawBufferPointer(rebasing: b[cut..<n])])
                }
            }) {}
        }
    }
    func receiver(_ name: String, _ ch: MessageChannel, _ side: Side, _ tally: Guarded<Tally>, expect: UInt8) -> Worker {
        Worker(name) {
            while attempt(name, side, timed: true, tally, {
                let m = try ch.receive(timeout: 0.005)
                defer { ch.recycle(m) }
                if m.type != expect || !sizes.contains(m.body.count) || m.body.contains(where: { $0 != expect }) {
                    tally.with { $0.problems.append("\(name): a message of type \(m.type) and \(m.body.count) bytes is not what was sent") }
                }
            }) {}
        }
    }
    let workers = [
        sender("victim send 1", victim, .victim, vt, fill: 7, seed: rng.next()),
        sender("victim send 2", victim, .victim, vt, fill: 7, seed: rng.next()),
        receiver("victim receive", victim, .victim, vt, expect: 9),
        sender("peer send", peer, .peer, pt, fill: 9, seed: rng.next()),
        receiver("peer receive", peer, .peer, pt, expect: 7),
    ]
    let closeAfterCalls = 10 + Int(rng.next() % 100)
    let deadline = now() + 10
    while vt.get.calls < closeAfterCalls && now() < deadline { usleep(100) }  // polls with a deadline
    var problems: [String] = []
    if vt.get.calls < closeAfterCalls { problems.append("channel round \(r): only \(vt.get.calls) victim calls in 10 s") }
    victim.close(linger: rng.next() % 2 == 0 ? 0 : 0.05)
    for w in workers where !w.join(within: 10) { problems.append("channel round \(r): '\(w.name)' did not return within 10 s of the close") }
    peer.close(linger: 0)
    let v = vt.get, p = pt.get
    problems += v.problems.map { "channel round \(r) victim: \($0)" } + p.problems.map { "channel round \(r) peer: \($0)" }
    say("channel round \(r): closed the \(r % 2 == 0 ? "client" : "server") after \(v.calls) calls (ok \(v.ok), timed out \(v.timedOut), "
        + "closed \(v.closed)); peer ok \(p.ok), gone \(p.peerGone), closed \(p.closed)")
    return problems
}

/// Returns the problems found (empty: the round passed).
func round(_ r: Int, closers: Closers, rng: inout SplitMix) throws -> [String] {
    let (client, server) = try connectedPair()

    // Alternate which end is closed under load, and how.
    let victim = r % 2 == 0 ? client : server
    let peer = r % 2 == 0 ? server : client
    let closeFromCallback = closers == .callback || closers == .both && r % 3 == 2
    let closeAfterCalls = 20 + Int(rng.next() % 400)
    let vt = Guarded(Tally()), pt = Guarded(Tally())
    let closeNow = Guarded(false)
    let closedInCallback = Guarded(false)
    let inSlowCallback = Guarded(0)

    var workers: [Worker] = []
    // The victim's receivers: pages from the peer arrive in their callbacks, which call back into
    // the session (nested calls) and, in some rounds, close it from there.
    for i in 0..<2 {
        workers.append(Worker("victim receive \(i)") {
            while attempt("receivePages", .victim, timed: true, vt, {
                try victim.receivePages(timeoutMilliseconds: 3, onPage: { _, data in
                    precondition(data.count <= 4096)
                    inSlowCallback.with { $0 += i == 1 ? 1 : 0 }
                    defer { inSlowCallback.with { $0 -= i == 1 ? 1 : 0 } }
                    _ = victim.statistics.chunksReceived
                    // A slow consumer (a replica staging pages, or waiting for room): the close
                    // then lands while this thread is inside rz_recv_pages with its lock dropped.
                    if i == 1 { usleep(20_000) }
                    if closeFromCallback && i == 0 && closeNow.get {
                        victim.close()
                        // Nested: returned without waiting for this very call; the session is closed.
                        precondition(victim.id == [UInt8](repeating: 0, count: 16), "id after close")
                        closedInCallback.with { $0 = true }
                    }
                }, onBarrier: { _ in _ = victim.id })
            }) {}
        })
    }
    // The victim's senders: pages and barriers from two threads (the wrapper serializes them).
    workers.append(Worker("victim sendPage") {
        var n: UInt64 = 0
        let page = [UInt8](repeating: 0xAB, count: 4096)
        while attempt("sendPage", .victim, timed: false, vt, { try victim.sendPage(offset: (n % 64) * 4096, page) }) { n += 1 }
    })
    workers.append(Worker("victim sendBarrier") {
        var e: UInt64 = 0
        while attempt("sendBarrier", .victim, timed: false, vt, { try victim.sendBarrier(epoch: e) }) {
            e += 1
            usleep(200)  // paces barriers between pages, not synchronisation
        }
    })
    workers.append(Worker("victim flush") {
        while attempt("flush", .victim, timed: true, vt, { try victim.flush(timeoutMilliseconds: 5) }) {}
    })
    workers.append(Worker("victim counters") {
        while attempt("counters", .victim, timed: true, vt, {
            _ = victim.statistics
            _ = victim.id
            _ = victim.waitForConnections(2, timeoutMilliseconds: 1)  // says only yes or no
            try victim.flush(timeoutMilliseconds: 1)  // and this ends the loop once closed
        }) {}
    })
    // The peer keeps traffic flowing both ways.
    workers.append(Worker("peer receive") {
        while attempt("peer receivePages", .peer, timed: true, pt, {
            try peer.receivePages(timeoutMilliseconds: 5, onPage: { _, _ in }, onBarrier: { _ in })
        }) {}
    })
    workers.append(Worker("peer send") {
        var n: UInt64 = 0
        let page = [UInt8](repeating: 0xCD, count: 4096)
        while attempt("peer send", .peer, timed: false, pt, {
            try peer.sendPage(offset: (n % 64) * 4096, page)
            if n % 8 == 7 { try peer.sendBarrier(epoch: n / 8) }
        }) { n += 1 }
    })

    // Close once the victim's threads are busy inside the session, one of them (most rounds)
    // inside a slow page callback: the moment a close that does not wait would free the session
    // under a thread that is about to use it again.
    let deadline = now() + 10
    let wantCallback = r % 4 != 3
    while (vt.get.calls < closeAfterCalls || wantCallback && inSlowCallback.get == 0) && now() < deadline { usleep(50) }  // polls with a deadline
    var problems: [String] = []
    if vt.get.calls < closeAfterCalls { problems.append("round \(r): only \(vt.get.calls) victim calls in 10 s") }
    if wantCallback && inSlowCallback.get == 0 { problems.append("round \(r): no page callback ran in 10 s") }
    if closeFromCallback {
        closeNow.with { $0 = true }
        // Pages keep coming from the peer, so a callback runs soon; the close happens there.
        let d = now() + 10
        while !closedInCallback.get && now() < d { usleep(100) }  // polls with a deadline
        if !closedInCallback.get { problems.append("round \(r): no page callback closed the session within 10 s") }
        victim.close()  // idempotent; waits until the nested close's session is freed
    } else {
        victim.close()
    }

    // After close() returned: everything fails at once, the counters read zero.
    let after = now()
    do {
        try victim.sendPage(offset: 0, [1])
        problems.append("round \(r): sendPage after close succeeded")
    } catch let e as RhizomorphError where e.code == .closed {} catch { problems.append("round \(r): sendPage after close: \(error)") }
    if now() - after > 0.5 { problems.append("round \(r): a call after close took \(now() - after) s") }
    let s = victim.statistics
    if s.bytesSent != 0 || s.liveConnections != 0 { problems.append("round \(r): statistics after close are not zero") }
    if victim.id != [UInt8](repeating: 0, count: 16) { problems.append("round \(r): id after close is not zero") }

    // The victim's threads must all return; so must the peer's once it notices (or is closed).
    for w in workers.prefix(6) where !w.join(within: 10) { problems.append("round \(r): '\(w.name)' still inside the session 10 s after close") }
    for w in workers.suffix(2) where !w.join(within: 10) { problems.append("round \(r): '\(w.name)' did not notice the close within 10 s") }
    peer.close()

    let v = vt.get, p = pt.get
    problems += v.problems.map { "round \(r) victim: \($0)" } + p.problems.map { "round \(r) peer: \($0)" }
    if v.closed == 0 { problems.append("round \(r): no victim call ended with .closed (the close raced nothing)") }
    say("round \(r): closed \(r % 2 == 0 ? "client" : "server")\(closeFromCallback ? " from a callback" : "") after \(v.calls) calls "
          + "(ok \(v.ok), timed out \(v.timedOut), closed \(v.closed)); peer ok \(p.ok), gone \(p.peerGone), closed \(p.closed)")
    return problems
}

// MARK: main

var rounds = 12
var seed: UInt64 = 1
/// Who closes the victim: another thread, one of its own page callbacks, or both in turn.
var closers = Closers.both
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    switch a {
    case "--rounds": rounds = Int(args.popFirst() ?? "") ?? rounds
    case "--seed": seed = UInt64(args.popFirst() ?? "") ?? seed
    case "--close-from": closers = Closers(rawValue: args.popFirst() ?? "") ?? closers
    default:
        say("usage: rhizomorph-stress [--rounds N] [--seed S] [--close-from thread|callback|both]")
        exit(2)
    }
}
var rng = SplitMix(state: seed)
var failures: [String] = []
for r in 0..<rounds {
    do { failures += try round(r, closers: closers, rng: &rng) } catch { failures.append("round \(r): setup failed: \(error)") }
    do { failures += try channelRound(r, rng: &rng) } catch { failures.append("channel round \(r): setup failed: \(error)") }
}
if failures.isEmpty {
    say("rhizomorph-stress: \(rounds) rounds passed (seed \(seed))")
    exit(0)
}
for f in failures { say("FAIL \(f)") }
say("rhizomorph-stress: \(failures.count) problems in \(rounds) rounds (seed \(seed))")
exit(1)
