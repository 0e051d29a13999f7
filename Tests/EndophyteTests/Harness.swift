import DirtyPages
import Endophyte
import Foundation
import MyceliumCore
import MyceliumIdentity
import Rhizomorph
import Synchronization

/// A synthetic workload: one thread writing random pages of a region, with a pause gate that
/// behaves like a VM stop (pause returns only once the writer is parked).
final class Workload: @unchecked Sendable {
    // SAFETY (Sendable): state is in atomics; the region is shared by design.
    let region: MappedRegion
    private let pauseRequested = Atomic<Bool>(false)
    private let parked = Atomic<Bool>(false)
    private let stop = Atomic<Bool>(false)
    let writes = Atomic<Int>(0)
    let pauses = Atomic<Int>(0)
    let resumes = Atomic<Int>(0)
    private let done = DispatchSemaphore(value: 0)
    private var started = false

    init(region: MappedRegion) { self.region = region }

    /// Starts writing `fraction` of the pages over and over (a random subset chosen per pass).
    func start(seed: UInt64, hotPages: Int? = nil) {
        started = true
        let t = Thread { [self] in
            var rng = SeededRandom(seed: seed)
            let n = UInt64(hotPages ?? region.pageCount)
            var v: UInt64 = 0
            while !stop.load(ordering: .acquiring) {
                if pauseRequested.load(ordering: .acquiring) {
                    parked.store(true, ordering: .releasing)
                    while pauseRequested.load(ordering: .acquiring) && !stop.load(ordering: .acquiring) { usleep(50) }  // polls for resume
                    parked.store(false, ordering: .releasing)
                    continue
                }
                for _ in 0..<64 {
                    let p = Int(rng.next() % n)
                    v &+= 1
                    region.base.storeBytes(of: v, toByteOffset: p * dirtyPageSize + Int(rng.next() % 512) * 8, as: UInt64.self)
                }
                writes.wrappingAdd(64, ordering: .relaxed)
                usleep(20)  // paces the workload: a guest dirtying memory, not synchronisation
            }
            done.signal()
        }
        t.start()
    }

    func pause() {
        pauses.wrappingAdd(1, ordering: .relaxed)
        pauseRequested.store(true, ordering: .releasing)
        guard started else { return }
        while !parked.load(ordering: .acquiring) && !stop.load(ordering: .acquiring) { usleep(20) }  // polls until parked
    }

    func resume() {
        resumes.wrappingAdd(1, ordering: .relaxed)
        pauseRequested.store(false, ordering: .releasing)
    }

    var isPaused: Bool { pauseRequested.load(ordering: .acquiring) }

    func finish() {
        guard started else { return }
        stop.store(true, ordering: .releasing)
        done.wait()
        started = false
    }

    var hooks: SourceHooks {
        SourceHooks(pause: { [self] in pause() }, resume: { [self] in resume() })
    }
}

/// Runs `body` on its own thread; `join()` returns its result.
final class Background<T: Sendable>: @unchecked Sendable {
    private let sem = DispatchSemaphore(value: 0)
    private var result: T?
    init(_ body: @escaping @Sendable () -> T) {
        Thread { [self] in
            result = body()
            sem.signal()
        }.start()
    }
    func join() -> T {
        sem.wait()
        return result!
    }
    /// The result if the thread finishes within `seconds`, nil otherwise (and it keeps running).
    func join(within seconds: Double) -> T? {
        guard sem.wait(timeout: .now() + seconds) == .success else { return nil }
        return result!
    }
}

final class EventLog: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [EndophyteEvent] = []
    func append(_ e: EndophyteEvent) { lock.lock(); items.append(e); lock.unlock() }
    var events: [EndophyteEvent] { lock.lock(); defer { lock.unlock() }; return items }
    var sink: @Sendable (EndophyteEvent) -> Void { { [self] e in append(e) } }
}

/// Which transport a test replicates over.
enum Link: Sendable {
    /// One loopback TCP stream, authenticated by the stream handshake.
    case tcp
    /// A rhizomorph session over two loopback paths (127.0.0.1 and 127.0.0.2), one connection each.
    case rhizomorph
}

/// A source and replica connected over loopback with Ed25519-authenticated identities.
struct Pair {
    let sourceKey = SigningKey()
    let replicaKey = SigningKey()
    let network = NetworkID(genesisKey: SigningKey().publicKey)
    let link: Link
    let listener: ReplicationListener?
    let rzListener: Listener?

    init(_ link: Link = .tcp) throws {
        self.link = link
        switch link {
        case .tcp:
            listener = try ReplicationListener(host: "127.0.0.1", port: 0)
            rzListener = nil
        case .rhizomorph:
            listener = nil
            rzListener = try Listener(addresses: ["127.0.0.1", "127.0.0.2"])
        }
    }

    /// Both rhizomorph paths, straight to the listener.
    var paths: [Rhizomorph.Path] {
        ["127.0.0.1", "127.0.0.2"].map { Rhizomorph.Path(local: $0, remote: $0, port: rzListener!.port) }
    }

    /// Connects (over `paths`, for rhizomorph: by default both direct ones); the replica side's
    /// transport is handed to `replicaSide` on its own thread.
    func connect<T: Sendable>(paths: [Rhizomorph.Path]? = nil,
                              replicaSide: @escaping @Sendable (ReplicationTransport) -> T) throws -> (ReplicationTransport, Background<T?>) {
        let rk = replicaKey, sk = sourceKey.publicKey, net = network
        switch link {
        case .tcp:
            let l = listener!
            let bg = Background<T?> {
                guard let t = try? l.accept(identity: rk, network: net, authorize: { $0 == sk }) else { return nil }
                return replicaSide(t)
            }
            let t = try TCPReplicationTransport.connect(host: "127.0.0.1", port: l.port, identity: sourceKey,
                                                        network: network, accept: { $0 == replicaKey.publicKey })
            return (t, bg)
        case .rhizomorph:
            let l = rzListener!
            let bg = Background<T?> {
                guard let t = try? RhizomorphReplicationTransport.accept(from: l, identity: rk, network: net, peerKey: sk, timeout: 10,
                                                                         configure: { $0.connectionsPerPath = 1 }) else { return nil }
                return replicaSide(t)
            }
            let t = try RhizomorphReplicationTransport.connect(paths: paths ?? self.paths, identity: sourceKey, network: network,
                                                               peerKey: replicaKey.publicKey, configure: { $0.connectionsPerPath = 1 })
            return (t, bg)
        }
    }
}

/// Wraps a transport and cuts the connection at a chosen point, as a crash of the source would.
final class CrashingTransport: ReplicationTransport, @unchecked Sendable {
    let inner: ReplicationTransport
    private let lock = NSLock()
    private var pagesMessagesInEpoch: [UInt64: Int] = [:]
    let crashEpoch: UInt64
    let afterPagesMessages: Int
    let beforeCommit: Bool
    private(set) var crashed = false

    init(_ inner: ReplicationTransport, crashEpoch: UInt64, afterPagesMessages: Int, beforeCommit: Bool = false) {
        self.inner = inner
        self.crashEpoch = crashEpoch
        self.afterPagesMessages = afterPagesMessages
        self.beforeCommit = beforeCommit
    }

    var peerKey: PublicKey { inner.peerKey }
    var bytesSent: UInt64 { inner.bytesSent }
    func setStreamCount(_ count: Int) { inner.setStreamCount(count) }
    func close() { inner.close() }

    func send(_ type: MessageType, header: [UInt8], pages: [UnsafeRawBufferPointer]) throws(EndophyteError) {
        if crashed { throw EndophyteError(.peerClosed) }
        let epoch = header.count >= 8 ? header.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) } : 0
        if type == .pages && epoch == crashEpoch {
            lock.lock()
            pagesMessagesInEpoch[epoch, default: 0] += 1
            let n = pagesMessagesInEpoch[epoch]!
            lock.unlock()
            if !beforeCommit && n > afterPagesMessages { crash(); throw EndophyteError(.peerClosed) }
        }
        if type == .commit && epoch == crashEpoch && beforeCommit { crash(); throw EndophyteError(.peerClosed) }
        try inner.send(type, header: header, pages: pages)
    }

    func receive<R>(timeout: Double?, _ body: (MessageType, UnsafeRawBufferPointer) throws(EndophyteError) -> R) throws(EndophyteError) -> R {
        try inner.receive(timeout: timeout, body)
    }

    private func crash() {
        crashed = true
        inner.close()
    }
}
