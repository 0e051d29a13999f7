// Replication over rhizomorph on loopback (two paths, 127.0.0.1 and 127.0.0.2): refusal of the
// wrong peer, the loss of one path in the middle of an epoch, and close() on either side while
// replication runs. The source→replica tests that also run over TCP are in EndophyteTests.swift
// (the `…OverRhizomorph` variants).

import DirtyPages
@testable import Endophyte
import Foundation
import MyceliumCore
import MyceliumIdentity
import Rhizomorph
import XCTest

final class RhizomorphReplicationTests: XCTestCase {
    func testWrongPeerKeyIsRefusedOnBothSides() throws {
        let listener = try Listener(addresses: ["127.0.0.1", "127.0.0.2"])
        let replicaKey = SigningKey(), sourceKey = SigningKey(), stranger = SigningKey()
        let network = NetworkID(genesisKey: SigningKey().publicKey)
        let paths = ["127.0.0.1", "127.0.0.2"].map { Rhizomorph.Path(local: $0, remote: $0, port: listener.port) }
        let accept = { (expected: PublicKey) in
            Background<EndophyteError?> {
                do {
                    let t = try RhizomorphReplicationTransport.accept(from: listener, identity: replicaKey, network: network,
                                                                      peerKey: expected, timeout: 10)
                    t.close()
                    return nil
                } catch { return error as? EndophyteError }
            }
        }

        // The replica expects another source.
        let refusing = accept(stranger.publicKey)
        XCTAssertThrowsError(try RhizomorphReplicationTransport.connect(paths: paths, identity: sourceKey, network: network,
                                                                        peerKey: replicaKey.publicKey)) { e in
            guard case .authenticationFailed = (e as? EndophyteError)?.code else { return XCTFail("source saw \(e)") }
        }
        guard case .authenticationFailed(let reason)? = refusing.join()?.code else { return XCTFail("the replica accepted an unexpected source") }
        XCTAssertTrue(reason.contains("expected"), reason)

        // The source expects another replica.
        let answering = accept(sourceKey.publicKey)
        XCTAssertThrowsError(try RhizomorphReplicationTransport.connect(paths: paths, identity: sourceKey, network: network,
                                                                        peerKey: stranger.publicKey)) { e in
            guard case .authenticationFailed = (e as? EndophyteError)?.code else { return XCTFail("source saw \(e)") }
        }
        XCTAssertNotNil(answering.join(), "the replica's accept must fail when the source walks away")
    }

    /// One replica listener, several sources (a node holding replicas of VMs whose primaries differ):
    /// each allowed source is accepted and named by the key it proved, messages flow, and a source
    /// outside the set is refused on both sides.
    func testOneListenerAcceptsAnyOfSeveralSources() throws {
        let listener = try Listener(addresses: ["127.0.0.1"])
        let replicaKey = SigningKey(), stranger = SigningKey()
        let sources = [SigningKey(), SigningKey(), SigningKey()]
        let network = NetworkID(genesisKey: SigningKey().publicKey)
        let paths = [Rhizomorph.Path(local: "127.0.0.1", remote: "127.0.0.1", port: listener.port)]
        let allowed = sources.map(\.publicKey)
        for source in [sources[2], sources[0]] {
            let accepting = Background<Result<(PublicKey, [UInt8]), EndophyteError>> {
                do {
                    let t = try RhizomorphReplicationTransport.accept(from: listener, identity: replicaKey, network: network,
                                                                      allowedPeers: allowed, timeout: 10)
                    defer { t.close() }
                    let body = try t.receive(timeout: 10) { (_, b) throws(EndophyteError) in Array(b) }
                    return .success((t.peerKey, body))
                } catch { return .failure(error as! EndophyteError) }
            }
            let t = try RhizomorphReplicationTransport.connect(paths: paths, identity: source, network: network,
                                                               peerKey: replicaKey.publicKey)
            try t.send(.ack, header: [1, 2, 3], pages: [])
            let (key, body) = try accepting.join().get()
            t.close()
            XCTAssertEqual(key, source.publicKey)
            XCTAssertEqual(body, [1, 2, 3])
        }

        let refusing = Background<EndophyteError?> {
            do {
                _ = try RhizomorphReplicationTransport.accept(from: listener, identity: replicaKey, network: network,
                                                              allowedPeers: allowed, timeout: 10)
                return nil
            } catch { return error as? EndophyteError }
        }
        XCTAssertThrowsError(try RhizomorphReplicationTransport.connect(paths: paths, identity: stranger, network: network,
                                                                        peerKey: replicaKey.publicKey)) { e in
            guard case .authenticationFailed = (e as? EndophyteError)?.code else { return XCTFail("stranger saw \(e)") }
        }
        guard case .authenticationFailed(let reason)? = refusing.join()?.code else { return XCTFail("the replica accepted a stranger") }
        XCTAssertTrue(reason.contains("not one of the 3 allowed keys"), reason)
    }

    /// Path 2 runs through a proxy that is killed while epoch 4 streams: the chunks it held are
    /// resent on path 1, every epoch commits, and the replica ends up equal to the source.
    func testLosingOnePathMidReplicationLosesNoEpoch() throws {
        let pages = 2048
        let src = try MappedRegion(memfdNamed: "endo-src", length: pages * dirtyPageSize)
        let dst = try MappedRegion(memfdNamed: "endo-dst", length: pages * dirtyPageSize)
        let replica = ReplicaReceiver(region: dst)
        let pair = try Pair(.rhizomorph)
        let proxy = try PathProxy(listenOn: "127.0.0.3", forwardTo: "127.0.0.2", port: pair.rzListener!.port)
        defer { proxy.kill() }
        let (t, bg) = try pair.connect(paths: [Rhizomorph.Path(local: "127.0.0.1", remote: "127.0.0.1", port: pair.rzListener!.port),
                                               Rhizomorph.Path(local: "127.0.0.3", remote: "127.0.0.3", port: proxy.port)]) { r in replica.serve(r) }
        let rz = try XCTUnwrap(t as? RhizomorphReplicationTransport)
        XCTAssertTrue(rz.session.waitForConnections(2, timeoutMilliseconds: 5000), "both paths up before the test starts")

        let work = Workload(region: src)
        let killed = LaterJob()
        let onEvent: @Sendable (EndophyteEvent) -> Void = { e in
            // Once epoch 3 is committed the next one starts streaming: cut path 2 a moment into it.
            if case .epochCommitted(let r) = e, r.epoch == 3 { killed.start { usleep(10_000); proxy.kill() } }
        }
        let source = try ReplicationSource(region: src, tracker: try DirtyTracker.uffd(region: src.buffer),
                                           config: ReplicationConfig(epochInterval: 0.05, rpoBound: 30, ackTimeout: 10),
                                           hooks: work.hooks, onEvent: onEvent)
        work.start(seed: 11)
        try source.connect(t)
        var epochs: [UInt64] = []
        for _ in 0..<8 { epochs.append(try source.checkpoint().epoch) }
        XCTAssertTrue(killed.join(), "path 2 was cut during the run")
        let afterKill = rz.session.statistics
        work.finish()
        let last = try source.checkpoint()
        epochs.append(last.epoch)

        XCTAssertEqual(epochs, Array(epochs.first!...epochs.first! + UInt64(epochs.count - 1)), "every epoch committed, none skipped")
        XCTAssertTrue(replica.waitUntilApplied(last.epoch))
        XCTAssertEqual(replica.committedEpoch, last.epoch)
        XCTAssertTrue(src.contentsEqual(dst), "the replica differs from the source after losing a path")
        let st = rz.session.statistics
        XCTAssertGreaterThan(afterKill.bytesPerPath[1], 0, "path 2 carried traffic before it was cut")
        XCTAssertGreaterThanOrEqual(st.connectionsFailed, 1, "the cut connection was noticed")
        XCTAssertGreaterThan(st.bytesPerPath[0], afterKill.bytesPerPath[0], "replication went on over path 1")
        source.detach()
        guard case .sourceGone = bg.join() else { return XCTFail("the replica did not see the source go") }
    }

    /// close() of the source's transport, then of the replica's, while replication runs on other
    /// threads: both sides return within seconds (not at a stall or all-paths-down timeout).
    func testCloseDuringReplicationUnblocksBothSides() throws {
        for closeSide in ["source", "replica"] {
            let src = try MappedRegion(memfdNamed: "endo-src", length: 1024 * dirtyPageSize)
            let dst = try MappedRegion(memfdNamed: "endo-dst", length: 1024 * dirtyPageSize)
            let replica = ReplicaReceiver(region: dst)
            let pair = try Pair(.rhizomorph)
            let replicaTransport = Box<ReplicationTransport>()
            let (t, bg) = try pair.connect { r in
                replicaTransport.set(r)
                return replica.serve(r)
            }
            let work = Workload(region: src)
            let source = try ReplicationSource(region: src, tracker: try DirtyTracker.uffd(region: src.buffer),
                                               config: ReplicationConfig(epochInterval: 0.02, rpoBound: 30, emergencyPolicy: .continueUnprotected,
                                                                         ackTimeout: 30),
                                               hooks: work.hooks)
            work.start(seed: 12, hotPages: 256)
            try source.connect(t)
            let running = Background<EndophyteError?> {
                do { try source.run(); return nil } catch { return error as? EndophyteError }
            }
            XCTAssertTrue(replica.waitUntilApplied(3, timeout: 20), "\(closeSide): replication is running")
            let closedAt = monotonicSeconds()
            if closeSide == "source" { t.close() } else { try XCTUnwrap(replicaTransport.value).close() }

            // The source's run loop ends: unreachable, continuing unprotected (the policy).
            guard let sourceEnd = running.join(within: 10) else {
                return XCTFail("\(closeSide): the source's run() is still blocked 10 s after close")
            }
            XCTAssertNil(sourceEnd, "\(closeSide): run() returns under continueUnprotected")
            guard let replicaEnd = bg.join(within: 10) else {
                return XCTFail("\(closeSide): the replica's serve() is still blocked 10 s after close")
            }
            if case .sourceGone? = replicaEnd {} else { XCTFail("\(closeSide): replica ended with \(String(describing: replicaEnd))") }
            guard case .unprotected = source.status.state else { return XCTFail("\(closeSide): source status \(source.status.state)") }
            // Both noticed in well under the all-paths-down timeout (10 s): CLOSE went out.
            XCTAssertLessThan(monotonicSeconds() - closedAt, 5, "\(closeSide): noticing the close took too long")
            work.finish()
        }
    }
}

/// A value set on one thread and read on another.
final class Box<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var v: T?
    func set(_ x: T) { lock.lock(); v = x; lock.unlock() }
    var value: T? { lock.lock(); defer { lock.unlock() }; return v }
}

/// A background job started later (at most once) by `start`; `join()` waits for it.
final class LaterJob: @unchecked Sendable {
    private let lock = NSLock()
    private var job: Background<Void>?
    func start(_ body: @escaping @Sendable () -> Void) {
        lock.lock(); defer { lock.unlock() }
        if job == nil { job = Background { body() } }
    }
    /// Waits for the job if it was started (within 30 s).
    func join() -> Bool {
        lock.lock(); let j = job; lock.unlock()
        return j?.join(within: 30) != nil
    }
}

/// A TCP forwarder standing in for one network path: `kill()` cuts every connection through it
/// (both ends see the connection close) and refuses new ones, as a dead link or NIC would.
final class PathProxy: @unchecked Sendable {
    // SAFETY (Sendable): `open` and `dead` are guarded by `lock`; each splice's fds are closed by
    // the last of its two pump threads, after kill() can no longer touch them (removed under `lock`).
    let port: UInt16
    private let listenFD: Int32
    private let lock = NSLock()
    private var open: [ObjectIdentifier: Splice] = [:]
    private var dead = false

    private final class Splice: @unchecked Sendable {
        let a: Int32, b: Int32
        private let lock = NSLock()
        private var pumps = 2
        init(_ a: Int32, _ b: Int32) { self.a = a; self.b = b }
        /// True for the second pump to finish: it closes both ends.
        func pumpDone() -> Bool { lock.lock(); defer { lock.unlock() }; pumps -= 1; return pumps == 0 }
    }

    init(listenOn host: String, forwardTo target: String, port targetPort: UInt16) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr(host)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && listen(fd, 16) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard ok else { close(fd); throw POSIXError(.EADDRINUSE) }
        listenFD = fd
        port = UInt16(bigEndian: addr.sin_port)
        startAccepting(target: target, port: targetPort)
    }

    private func startAccepting(target: String, port targetPort: UInt16) {
        Thread.detachNewThread { [self] in
            while true {
                let c = accept(listenFD, nil, nil)
                if c < 0 { if errno == EINTR { continue }; break }
                let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                var to = sockaddr_in()
                to.sin_family = sa_family_t(AF_INET)
                to.sin_addr.s_addr = inet_addr(target)
                to.sin_port = targetPort.bigEndian
                let rc = withUnsafePointer(to: &to) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
                let splice = Splice(c, s)
                lock.lock()
                let refuse = dead || rc != 0
                if !refuse { open[ObjectIdentifier(splice)] = splice }
                lock.unlock()
                if refuse { close(c); close(s); continue }
                for (from, to) in [(c, s), (s, c)] {
                    Thread.detachNewThread { [self] in
                        var buf = [UInt8](repeating: 0, count: 65536)
                        while true {
                            let n = read(from, &buf, buf.count)
                            if n <= 0 { break }
                            var off = 0
                            while off < n {
                                let w = buf[off..<n].withUnsafeBytes { send(to, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                                if w <= 0 { break }
                                off += w
                            }
                            if off < n { break }
                        }
                        shutdown(from, Int32(SHUT_RDWR))
                        shutdown(to, Int32(SHUT_RDWR))
                        if splice.pumpDone() {
                            lock.lock(); open[ObjectIdentifier(splice)] = nil; lock.unlock()
                            close(splice.a)
                            close(splice.b)
                        }
                    }
                }
            }
            close(listenFD)
        }
    }

    /// Cuts every connection and stops accepting. Idempotent.
    func kill() {
        lock.lock()
        let wasDead = dead
        dead = true
        let splices = Array(open.values)
        // Shut down under the lock: a splice's fds are closed only after it left `open`, under it.
        for s in splices {
            shutdown(s.a, Int32(SHUT_RDWR))
            shutdown(s.b, Int32(SHUT_RDWR))
        }
        if !wasDead { shutdown(listenFD, Int32(SHUT_RDWR)) }
        lock.unlock()
    }
}
