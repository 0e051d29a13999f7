import DirtyPages
import Endophyte
import Foundation
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import VMHost
import VMTestSupport
import XCTest

/// Output commit on the real guest (scripts/vm-guest with `mycelium.ip=`: its kernel answers ICMP
/// echo on a virtio NIC), under a namespaced libvirtd (scripts/vmhost), replicated to a replica in
/// this process. The host side of the guest's tap lives in the host's namespace; pings run there.
///
/// The engine never lets the guest run past a boundary the replica has not acknowledged (it waits for
/// the ack while paused), so "the replica has not acknowledged yet while the guest runs" is the
/// span of an epoch. With 3 s epochs that span is long enough to watch: the guest counts and answers
/// pings, and with output commit on none of its replies leaves until the boundary's commit. Then the
/// replica's acks are held back from the source: no reply leaves until they get through. Then the
/// gate is removed (output commit off): the same ping at the same point of an epoch is answered at once.
final class OutputCommitVMTests: XCTestCase {
    static let guestAddress = "10.78.0.2"
    static let hostAddress = "10.78.0.1/24"
    static let epochSeconds = 3.0

    override class func tearDown() {
        _ = try? runTool([Repo.vmhost, "down-all", Unique.processPrefix], allowFailure: true)
        super.tearDown()
    }

    /// One ping from namespace `ns`; its round-trip time in ms, or nil when no reply came in `timeout` s.
    static func ping(_ ns: String, timeout: Int) throws -> Double? {
        let out = try runTool(["/usr/sbin/ip", "netns", "exec", ns, "/usr/bin/ping", "-n", "-c", "1", "-W", "\(timeout)", Self.guestAddress],
                              allowFailure: true)
        guard out.contains(" 1 received") else { return nil }
        guard let r = out.range(of: "time=") else { throw HarnessFailure("a reply without a time in ping's output:\n\(out)") }
        return Double(out[r.upperBound...].prefix { $0 == "." || $0.isNumber })
    }

    func testRepliesLeaveOnlyAfterTheCommitWithOutputCommitAndAtOnceWithout() throws {
        try requireRootAndQEMU()
        let hosts = try TestHosts(["a"])
        defer { hosts.down() }
        let ns = hosts.name("a")
        let host = try VMHost(uri: hosts.uri("a"), qemuRunDirectory: hosts.qemuRunDirectory("a"))
        let g = try Guest.files.get()
        let spec = VMSpec(name: "endophyte", memoryMiB: 128, vcpus: 1, kernel: g.kernel, initrd: g.initrd,
                          cmdline: Guest.cmdline + " mycelium.ip=\(Self.guestAddress)/24")
        let serial = hosts.scratch + "/a.serial"
        let shim = DirtyPageShim(library: try buildShim(into: hosts.scratch), report: hosts.scratch + "/shim.report")
        let nic = GuestNIC(mac: GuestNIC.mac(for: spec.name), tap: "octap0")
        let d = try host.start(spec, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: serial, shim: shim, nic: nic))
        defer { XCTAssertNoThrow(try host.remove(spec.name)) }
        try waitUntil("the guest's network and its first COUNT", timeout: 120) {
            let log = SerialLog(path: serial)
            return log.otherLines.contains("NET-READY \(Self.guestAddress)") && !log.counts.isEmpty
        }
        try runTool(["/usr/sbin/ip", "-n", ns, "addr", "add", Self.hostAddress, "dev", nic.tap])
        // Before any gate: the guest answers at once.
        XCTAssertNotNil(try Self.ping(ns, timeout: 5), "the guest answers ping before output commit is attached")

        let gates = GateBox(try OutputCommitGate(domain: d, mode: .passingThrough))
        defer { gates.take()?.detach(flush: false) }
        let commits = Timestamps()

        // The replica, in this process over loopback.
        let ram = try d.openGuestRAM()
        let tracking = try d.openDirtyTracker(region: ram, shimReport: shim.report)
        let image = try MappedRegion(memfdNamed: "oc-replica", length: ram.length)
        let receiver = ReplicaReceiver(region: image, stagingReservePages: 256)
        let sourceKey = SigningKey(), replicaKey = SigningKey()
        let network = NetworkID(genesisKey: SigningKey().publicKey)
        let listener = try ReplicationListener(host: "127.0.0.1", port: 0)
        let replicaPublic = replicaKey.publicKey, sourcePublic = sourceKey.publicKey
        let server = Thread {
            guard let t = try? listener.accept(identity: replicaKey, network: network, authorize: { $0 == sourcePublic }) else { return }
            _ = receiver.serve(t)
        }
        server.start()
        let transport = AckStall(try TCPReplicationTransport.connect(host: "127.0.0.1", port: listener.port, identity: sourceKey,
                                                                     network: network, accept: { $0 == replicaPublic }))
        let source = try ReplicationSource(
            region: ram, tracker: tracking.tracker,
            config: ReplicationConfig(epochInterval: Self.epochSeconds, rpoBound: 60, emergencyPolicy: .pauseSource, ackTimeout: 20, streamInterval: 0.25),
            hooks: d.sourceHooks(afterPause: { gates.current?.sealAtPause() }),
            onEvent: { event in
                // As the driver steers its gate (EndophyteDriver.steer).
                switch event {
                case .connected: gates.current?.setMode(.holding)
                case .epochCommitted:
                    // Noted before the release, so a reply can never seem to precede its commit.
                    commits.add()
                    gates.current?.releaseCommitted()
                default: break
                }
            })
        let failure = Timestamps()
        let runner = Thread {
            do {
                try source.connect(transport)
                try source.run()
            } catch {
                failure.note("\(error)")
            }
        }
        runner.start()
        defer {
            transport.resumeAcks()  // a failure mid-stall must not keep the engine waiting
            source.requestStop()
            let deadline = monotonicSeconds() + Self.epochSeconds + 25
            while runner.isExecuting && monotonicSeconds() < deadline { usleep(10_000) }
            XCTAssertFalse(runner.isExecuting, "the replication loop did not stop")
            transport.close()
            listener.close()
        }
        try waitUntil("the full copy to commit", timeout: 60) { commits.count >= 1 || !failure.notes.isEmpty }
        XCTAssertEqual(failure.notes, [])

        // Warm-up: ARP both ways (the guest's ARP reply is output too, held like any other).
        XCTAssertNotNil(try Self.ping(ns, timeout: Int(Self.epochSeconds * 4)), "a reply comes once its epochs commit; gate: \(gates.current!.status)")

        // Just after a commit the next boundary is an epoch away: the guest runs, answers, and the
        // reply is held.
        var c = commits.count
        try waitUntil("a commit", timeout: Self.epochSeconds * 3) { commits.count > c }
        let countBefore = SerialLog(path: serial).last?.n ?? 0
        let heldBefore = gates.current!.status.heldPackets
        let t0 = monotonicSeconds()
        let held = try Self.ping(ns, timeout: 1)
        let t1 = monotonicSeconds()
        XCTAssertNil(held, "a reply left the host before the replica acknowledged its epoch")
        XCTAssertEqual(commits.countBetween(t0...t1), 0, "no commit happened during that ping (it would have released the reply)")
        XCTAssertGreaterThan(SerialLog(path: serial).last?.n ?? 0, countBefore, "the guest kept running meanwhile")
        XCTAssertGreaterThan(gates.current!.status.heldPackets, heldBefore, "the guest's reply sits in the gate")
        XCTAssertEqual(gates.current!.status.mode, .holding)

        // Once the replica acknowledges the epoch, replies flow again: every one comes after a commit
        // that followed its request.
        for _ in 0..<2 {
            let s0 = monotonicSeconds()
            let rtt = try XCTUnwrap(try Self.ping(ns, timeout: Int(Self.epochSeconds * 3)), "no reply even after the commits")
            let s1 = monotonicSeconds()
            XCTAssertGreaterThan(commits.countBetween(s0...s1), 0, "a reply (rtt \(rtt) ms) came without a commit in between")
        }
        XCTAssertEqual(gates.current!.status.dropped, 0)

        // The replica's acks stop reaching the source. The boundary's commit then hangs (and the
        // guest stays paused: the engine never runs past an unacknowledged boundary); the replica
        // even holds the epoch already, but until the source sees the ack nothing is released.
        c = commits.count
        try waitUntil("a commit", timeout: Self.epochSeconds * 3) { commits.count > c }
        transport.stallAcks()
        let pinger = Pinger { try? OutputCommitVMTests.ping(ns, timeout: 20) }
        try waitUntil("the next boundary's ack to arrive and be held back", timeout: Self.epochSeconds * 3) { transport.isHoldingAnAck }
        try? waitUntil("(observing) a reply during the stall", timeout: 1) { pinger.isDone }
        XCTAssertFalse(pinger.isDone, "a reply left the host while the ack of its epoch was held back")
        XCTAssertGreaterThan(gates.current!.status.heldPackets, 0, "the reply sits in the gate during the stall")
        XCTAssertEqual(try d.state(), .paused, "the guest waits for the ack, paused")
        let resumedAt = monotonicSeconds()
        transport.resumeAcks()
        let stalledRTT = pinger.join()
        XCTAssertNotNil(stalledRTT, "the reply leaves once the ack arrives")
        XCTAssertGreaterThan(pinger.finishedAt, resumedAt, "…and not before")

        // Output commit off (the driver then attaches no gate): the same guest, the same epochs,
        // the replica still acknowledging only at boundaries, and replies leave at once.
        gates.take()?.detach(flush: true)
        c = commits.count
        try waitUntil("a commit", timeout: Self.epochSeconds * 3) { commits.count > c }
        let u0 = monotonicSeconds()
        let rtt = try Self.ping(ns, timeout: 1)
        let u1 = monotonicSeconds()
        XCTAssertNotNil(rtt, "without output commit the reply leaves at once")
        XCTAssertEqual(commits.countBetween(u0...u1), 0, "…without waiting for a commit")
        XCTAssertEqual(failure.notes, [], "replication ran throughout")
        print("OUTPUT-COMMIT-VM epochs=\(commits.count) rtt-off=\(rtt.map { "\($0)" } ?? "-") ms")
    }
}

/// A replication transport whose acks can be held back (the replica "stops acknowledging" as far
/// as the source can tell), and let through again.
final class AckStall: ReplicationTransport, @unchecked Sendable {
    // SAFETY (Sendable): `stalled` and `holding` are guarded by `condition`; `inner` is used as the
    // engine uses any transport (one thread receives).
    let inner: ReplicationTransport
    private let condition = NSCondition()
    private var stalled = false
    private var holding = false
    init(_ t: ReplicationTransport) { inner = t }

    var peerKey: PublicKey { inner.peerKey }
    var bytesSent: UInt64 { inner.bytesSent }
    func setStreamCount(_ count: Int) { inner.setStreamCount(count) }
    func close() {
        resumeAcks()
        inner.close()
    }
    func send(_ type: MessageType, header: [UInt8], pages: [UnsafeRawBufferPointer]) throws(EndophyteError) {
        try inner.send(type, header: header, pages: pages)
    }
    func receive<R>(timeout: Double?, _ body: (MessageType, UnsafeRawBufferPointer) throws(EndophyteError) -> R) throws(EndophyteError) -> R {
        try inner.receive(timeout: timeout) { (type, bytes) throws(EndophyteError) -> R in
            if type == .ack {
                condition.lock()
                while stalled {
                    holding = true
                    condition.wait()
                }
                holding = false
                condition.unlock()
            }
            return try body(type, bytes)
        }
    }

    func stallAcks() { condition.withLock { stalled = true } }
    func resumeAcks() {
        condition.withLock {
            stalled = false
            condition.broadcast()
        }
    }
    /// True while an ack has arrived and is being held back.
    var isHoldingAnAck: Bool { condition.withLock { holding } }
}

/// One ping on its own thread, so the test can watch whether it has finished.
final class Pinger: @unchecked Sendable {
    // SAFETY (Sendable): `result` and `finished` are guarded by `lock`.
    private let lock = NSLock()
    private var result: Double??
    private var finished = 0.0
    private let thread: Thread
    init(_ body: @escaping @Sendable () -> Double?) {
        let box = PingerBox()
        thread = Thread { box.pinger?.finish(body()) }
        box.pinger = self
        thread.start()
    }
    private func finish(_ r: Double?) { lock.withLock { result = .some(r); finished = monotonicSeconds() } }
    var isDone: Bool { lock.withLock { result != nil } }
    /// When the ping returned (monotonic seconds).
    var finishedAt: Double { lock.withLock { finished } }
    /// Waits for the ping (it ends by its own timeout) and returns its RTT, if a reply came.
    func join() -> Double? {
        while !isDone { usleep(10_000) }
        return lock.withLock { result ?? nil }
    }
}

private final class PingerBox: @unchecked Sendable {
    // SAFETY (Sendable): set once before the thread starts, read by it afterwards.
    weak var pinger: Pinger?
}

/// The gate the engine's hooks reach, replaceable (nil: output commit off) while the engine runs.
final class GateBox: @unchecked Sendable {
    // SAFETY (Sendable): `gate` is read and replaced under `lock`.
    private let lock = NSLock()
    private var gate: OutputCommitGate?
    init(_ g: OutputCommitGate) { gate = g }
    var current: OutputCommitGate? { lock.withLock { gate } }
    func take() -> OutputCommitGate? {
        lock.withLock {
            defer { gate = nil }
            return gate
        }
    }
}

/// Monotonic times of events (commits), and notes (failures), from any thread.
final class Timestamps: @unchecked Sendable {
    // SAFETY (Sendable): guarded by `lock`.
    private let lock = NSLock()
    private var times: [Double] = []
    private var texts: [String] = []
    func add() { lock.withLock { times.append(monotonicSeconds()) } }
    func note(_ s: String) { lock.withLock { texts.append(s) } }
    var count: Int { lock.withLock { times.count } }
    var notes: [String] { lock.withLock { texts } }
    func countBetween(_ r: ClosedRange<Double>) -> Int { lock.withLock { times.filter { r.contains($0) }.count } }
}
