// The shell of output commit (Remus network buffering): QEMU hands every packet the guest sends to this process,
// which holds it (Endophyte's `OutputCommitBuffer`) until the checkpoint covering it is committed,
// then hands it back to QEMU, which sends it on the tap.
//
// Wiring (QEMU 7.2 netfilters, the way COLO wires its primary), added at run time over QMP:
//   chardev mycelium-oc-in  (socket on an fd we pass)  ← released packets, written by us
//   chardev mycelium-oc-out (socket on an fd we pass)  → every packet the guest sends, read by us
//   filter-redirector mycelium-oc-rin  netdev=hostnet0 queue=rx indev=mycelium-oc-in
//   filter-redirector mycelium-oc-rout netdev=hostnet0 queue=rx outdev=mycelium-oc-out
// `queue=rx` is the netdev's receive queue: what the NIC (the guest) sends to the tap. Filters on it
// run in reverse order of creation, so the outdev redirector (created last) takes each guest packet
// first, and what we inject through the indev one goes on to the tap without passing it again.
// Probed by hand on this machine: without a reader the outdev drops packets (fail-closed); QEMU
// drops an indev whose peer closed, so every attach removes and re-creates all four objects.
//
// The epoch boundary: QEMU writes a packet into the outdev socket synchronously, in its main loop,
// when the NIC transmits, and a stopped guest transmits nothing (virtio-net's tx waits for the VM to
// run). So once QMP `stop` has returned, every packet of the epoch is in the socket, though perhaps
// not yet read. `sealAtPause` (called right after the pause) drains the socket to EAGAIN under the
// lock the reader also holds while it reads, then seals: a packet read afterwards was sent after the
// resume, in the next epoch.
//
// One thread per gate polls the outdev socket and writes to the indev socket without blocking: QEMU
// blocks its main loop while our outdev socket is full, so we must never stop reading, not even
// while QEMU does not read what we write (that would deadlock the two).

import Endophyte
import MyceliumCore

#if canImport(Glibc)
import Glibc
#endif

/// What `vm show` says about a gate.
public struct OutputCommitStatus: Sendable, Equatable {
    public var mode: OutputCommitBuffer.Mode
    public var heldPackets: Int
    public var heldBytes: Int
    public var dropped: UInt64
    public var released: UInt64
    public var discarded: UInt64
    /// Why the gate no longer carries packets (QEMU closed its end), if it does not.
    public var broken: String?
}

public final class OutputCommitGate: @unchecked Sendable {
    // SAFETY (Sendable): `buffer`, `pending`, `lastSeal`, `broken` and `stopping` are guarded by
    // `lock`; the sockets are closed only after the poll thread has exited.
    public let domainName: String
    let domain: EndophyteDomain
    let netdev: String
    private let lock = PthreadLock()
    private var buffer: OutputCommitBuffer
    private var decoder = RedirectorFrameDecoder()
    /// Receive buffer, reused (guarded by `lock` like the decoder).
    private var chunk = [UInt8](repeating: 0, count: 65536)
    /// Encoded frames for QEMU's indev, not yet written (the socket was full).
    private var pending: [UInt8] = []
    private var pendingHead = 0
    private let maxPendingBytes: Int
    private var pendingDropped: UInt64 = 0
    private var lastSeal: UInt64 = 0
    private var broken: String?
    private var stopping = false
    private var fromGuest: Int32 = -1
    private var toGuestNetwork: Int32 = -1
    /// A pipe that wakes the thread (its read end polled, its write end poked).
    private var wake: Int32 = -1
    private var wakeWriter: Int32 = -1
    private var thread: pthread_t?

    static let chardevIn = "mycelium-oc-in", chardevOut = "mycelium-oc-out"
    static let filterIn = "mycelium-oc-rin", filterOut = "mycelium-oc-rout"

    /// Attaches a gate to `domain`'s NIC backend `netdev` (libvirt's `hostnet0` for the first
    /// interface), replacing one a previous agent left. From here on the guest's packets pass through
    /// this process: held in `mode` `.holding`, sent on at once in `.passingThrough`.
    public init(domain: EndophyteDomain, netdev: String = GuestNIC.netdevID, limits: OutputCommitLimits = OutputCommitLimits(),
                mode: OutputCommitBuffer.Mode) throws(VMHostError) {
        self.domain = domain
        self.domainName = domain.name
        self.netdev = netdev
        buffer = OutputCommitBuffer(limits: limits, mode: mode)
        maxPendingBytes = limits.maxBytes + limits.maxPackets * 8
        Self.removeFilters(domain)
        let outPair = try FDPair.socketPair(domain: domain.name)
        let inPair = try FDPair.socketPair(domain: domain.name)
        var done = false
        // Our ends are taken from the pairs only at the end; until then a failure closes them with
        // the pairs (QEMU's ends are closed either way: QEMU holds its own copies once `getfd` ran).
        defer {
            outPair.closeSecond()
            inPair.closeSecond()
            if !done { Self.removeFilters(domain) }
        }
        let qmp = domain.qmp
        try qmp.run("getfd", ["fdname": Self.chardevOut], files: [outPair.second])
        try qmp.run("getfd", ["fdname": Self.chardevIn], files: [inPair.second])
        for id in [Self.chardevIn, Self.chardevOut] {
            try qmp.run("chardev-add", ["id": id, "backend": ["type": "socket", "data": [
                "addr": ["type": "fd", "data": ["str": id]], "server": false] as [String: Any]] as [String: Any]])
        }
        // The indev redirector first: rx filters run newest first (see the top of this file).
        try qmp.run("object-add", ["qom-type": "filter-redirector", "id": Self.filterIn, "netdev": netdev, "queue": "rx", "indev": Self.chardevIn])
        try qmp.run("object-add", ["qom-type": "filter-redirector", "id": Self.filterOut, "netdev": netdev, "queue": "rx", "outdev": Self.chardevOut])
        fromGuest = outPair.takeFirst()
        toGuestNetwork = inPair.takeFirst()
        _ = fcntl(fromGuest, F_SETFL, fcntl(fromGuest, F_GETFL) | O_NONBLOCK)
        _ = fcntl(toGuestNetwork, F_SETFL, fcntl(toGuestNetwork, F_GETFL) | O_NONBLOCK)
        var pipeFDs: [Int32] = [-1, -1]
        if pipe(&pipeFDs) != 0 {
            throw VMHostError(.system(operation: "pipe for the output commit gate", errno: errno), domain: domainName)
        }
        wake = pipeFDs[0]
        wakeWriter = pipeFDs[1]
        for fd in pipeFDs {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        // SAFETY: the thread takes the retained reference and releases it when it exits.
        let rc = pthread_create(&t, nil, { arg in
            let gate = Unmanaged<OutputCommitGate>.fromOpaque(arg!).takeRetainedValue()
            gate.pollLoop()
            return nil
        }, box.toOpaque())
        if rc != 0 {
            box.release()
            throw VMHostError(.system(operation: "starting the output commit thread", errno: rc), domain: domainName)
        }
        thread = t
        done = true
    }

    deinit {
        for fd in [fromGuest, toGuestNetwork, wake, wakeWriter] where fd >= 0 { close(fd) }
    }

    public var status: OutputCommitStatus {
        lock.withLock {
            OutputCommitStatus(mode: buffer.mode, heldPackets: buffer.heldPackets, heldBytes: buffer.heldBytes,
                               dropped: buffer.dropped + pendingDropped, released: buffer.released, discarded: buffer.discarded, broken: broken)
        }
    }

    // MARK: the engine's boundary

    /// Call right after the guest was paused for a checkpoint: every packet it sent before is read
    /// and assigned to the epoch this closes.
    public func sealAtPause() {
        lock.withLock {
            readAvailable(limit: .max)
            lastSeal = buffer.seal()
        }
    }

    /// The checkpoint of the last pause is committed on the replica: what the guest sent before it
    /// goes out.
    public func releaseCommitted() {
        lock.withLock {
            let out = buffer.release(upTo: lastSeal)
            for p in out { enqueue(p) }
            flushPending()
        }
        poke()
    }

    /// `.passingThrough` sends what is held at once (the guest is unprotected); `.holding` holds from
    /// the next packet on.
    public func setMode(_ m: OutputCommitBuffer.Mode) {
        lock.withLock {
            if buffer.mode == m { return }
            for p in buffer.setMode(m) { enqueue(p) }
            flushPending()
        }
        poke()
    }

    /// Throws away what is held and not yet sent (this copy was fenced or lost its ownership: the
    /// replica's state does not include it). The gate keeps holding.
    @discardableResult
    public func discardHeld() -> Int {
        lock.withLock {
            _ = buffer.setMode(.holding)
            return buffer.discardAll()
        }
    }

    /// Stops the thread and removes the filters: the guest's packets then go to the tap directly.
    /// With `flush`, what is held is sent first (as far as QEMU takes it without blocking);
    /// without, it is thrown away.
    public func detach(flush: Bool) {
        lock.withLock {
            if flush {
                for p in buffer.setMode(.passingThrough) { enqueue(p) }
                flushPending()
            } else {
                buffer.discardAll()
            }
            stopping = true
        }
        poke()
        if let t = thread {
            pthread_join(t, nil)
            thread = nil
        }
        Self.removeFilters(domain)
    }

    // MARK: the thread

    private func pollLoop() {
        while true {
            let (stop, wantWrite) = lock.withLock { (stopping, pendingHead < pending.count) }
            if stop { return }
            var fds = [pollfd(fd: fromGuest, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: toGuestNetwork, events: wantWrite ? Int16(POLLOUT) : 0, revents: 0),
                       pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 3, 500)
            if n < 0 && errno != EINTR {
                lock.withLock { broken = "poll failed: \(String(cString: strerror(errno)))" }
                return
            }
            if fds[2].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                _ = read(wake, &drain, drain.count)
            }
            lock.withLock {
                if fds[0].revents != 0 { readAvailable(limit: 1 << 20) }
                if fds[1].revents != 0 { flushPending() }
            }
            if lock.withLock({ broken != nil }) {
                // QEMU closed its end (it exited, or another agent re-attached): nothing more comes.
                return
            }
        }
    }

    /// Reads what QEMU has written (up to `limit` bytes), under `lock`.
    private func readAvailable(limit: Int) {
        guard broken == nil else { return }
        var total = 0
        while total < limit {
            // SAFETY: recv writes at most chunk.count bytes into the array's storage.
            let n = chunk.withUnsafeMutableBytes { recv(fromGuest, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { return }
                broken = "reading the guest's packets failed: \(String(cString: strerror(errno)))"
                return
            }
            if n == 0 {
                broken = "QEMU closed the guest's packet stream"
                return
            }
            total += n
            decoder.append(chunk[0..<n])
            do {
                while let f = try decoder.next() {
                    if case .sendNow = buffer.accept(f.packet) { enqueue(f.packet) }
                }
            } catch {
                broken = "the guest's packet stream lost its framing: \(error)"
                return
            }
        }
    }

    private func enqueue(_ packet: [UInt8]) {
        let frame = RedirectorFrame(packet: packet).encoded()
        if pending.count - pendingHead + frame.count > maxPendingBytes {
            pendingDropped += 1
            return
        }
        pending += frame
    }

    /// Writes what is pending without blocking, under `lock`.
    private func flushPending() {
        while pendingHead < pending.count {
            // SAFETY: the pointer and count stay inside `pending`'s storage.
            let n = pending.withUnsafeBytes { send(toGuestNetwork, $0.baseAddress! + pendingHead, $0.count - pendingHead, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { break }
                broken = "sending released packets to QEMU failed: \(String(cString: strerror(errno)))"
                pending = []
                pendingHead = 0
                return
            }
            pendingHead += n
        }
        if pendingHead == pending.count {
            pending.removeAll(keepingCapacity: pending.capacity <= 1 << 20)
            pendingHead = 0
        } else if pendingHead > 1 << 20 {
            pending.removeFirst(pendingHead)
            pendingHead = 0
        }
    }

    private func poke() {
        var one: UInt8 = 1
        _ = write(wakeWriter, &one, 1)
    }

    /// Removes the gate's filters and chardevs if present (errors: there was nothing to remove).
    static func removeFilters(_ domain: EndophyteDomain) {
        let qmp = domain.qmp
        for id in [filterOut, filterIn] { _ = try? qmp.run("object-del", ["id": id]) }
        for id in [chardevOut, chardevIn] { _ = try? qmp.run("chardev-remove", ["id": id]) }
        for id in [chardevOut, chardevIn] { _ = try? qmp.run("closefd", ["fdname": id]) }
    }
}
