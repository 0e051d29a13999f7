// How replication bytes travel. `ReplicationTransport` is the seam the rhizomorph work replaces
// with striped multi-path streams; `TCPReplicationTransport` is one plain POSIX TCP stream,
// authenticated at connection start with the nodes' Ed25519 identity keys by the stream handshake
// (docs/HANDSHAKE.md), byte for byte the one rhizomorph speaks.
//
// Why not SwiftNIO: the replication loop is a single blocking thread per region that mostly does
// writev of page-sized buffers straight out of guest RAM; an event loop adds copies and hops.

import MyceliumCore
import MyceliumIdentity

#if canImport(Glibc)
import Glibc
#endif

/// A message-oriented, authenticated, ordered byte channel between a source and its replica.
public protocol ReplicationTransport: AnyObject, Sendable {
    /// The peer's node key, proven by the handshake.
    var peerKey: PublicKey { get }
    /// Sends one message: `header`, then the bytes of each page buffer, without copying them.
    func send(_ type: MessageType, header: [UInt8], pages: [UnsafeRawBufferPointer]) throws(EndophyteError)
    /// Receives one message and hands its body to `body`; the buffer is valid only during the call.
    /// `timeout` (seconds) bounds the wait for the message to start; nil waits forever.
    func receive<R>(timeout: Double?, _ body: (MessageType, UnsafeRawBufferPointer) throws(EndophyteError) -> R) throws(EndophyteError) -> R
    /// Turbo catch-up hint: how many parallel streams to use. A single TCP stream ignores it.
    func setStreamCount(_ count: Int)
    /// Total payload bytes sent so far.
    var bytesSent: UInt64 { get }
    /// Shuts the channel down; blocked calls on other threads return `.peerClosed`.
    func close()
}

extension ReplicationTransport {
    public func send(_ type: MessageType, _ body: [UInt8] = []) throws(EndophyteError) {
        try send(type, header: body, pages: [])
    }

    /// Receives one message and copies its body out.
    public func receiveMessage(timeout: Double?) throws(EndophyteError) -> (MessageType, [UInt8]) {
        try receive(timeout: timeout) { (t, b) throws(EndophyteError) in (t, [UInt8](b)) }
    }

    /// Receives a message that must be of type `expected`.
    func expect(_ expected: MessageType, timeout: Double?) throws(EndophyteError) -> [UInt8] {
        let (t, b) = try receiveMessage(timeout: timeout)
        if t == .abort {
            throw EndophyteError(.protocolViolation(reason: "peer aborted: \(String(decoding: b, as: UTF8.self))"))
        }
        guard t == expected else { throw EndophyteError(.protocolViolation(reason: "expected \(expected), got \(t)")) }
        return b
    }
}

/// Which end of a replication connection this node is.
public enum ReplicationRole: UInt8, Sendable {
    case source = 1
    case replica = 2
}

public final class TCPReplicationTransport: ReplicationTransport, @unchecked Sendable {
    // SAFETY (Sendable): `send` and `receive` may run on two different threads (one each); each owns
    // its own buffer. `closed` and `bytesSent` are guarded by `lock`; the fd is closed only in deinit.
    private let fd: Int32
    private let lock = Lock()
    private var closed = false
    private var sent: UInt64 = 0
    private var rbuf: UnsafeMutableRawPointer
    private var rcap: Int
    private var currentTimeout: Double? = -1
    public private(set) var peerKey: PublicKey
    public let maxMessageBytes: Int

    init(fd: Int32, maxMessageBytes: Int = Wire.maxBody) {
        self.fd = fd
        self.maxMessageBytes = maxMessageBytes
        rcap = 1 << 20
        // SAFETY: owned by this transport, only used by the (single) receiving thread, freed in deinit.
        rbuf = .allocate(byteCount: rcap, alignment: 4096)
        // Placeholder until the handshake proves the real key; never exposed before that.
        peerKey = try! PublicKey(bytes: [UInt8](repeating: 0, count: 32))
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit {
        Glibc.close(fd)
        rbuf.deallocate()
    }

    public var bytesSent: UInt64 { lock.withLock { sent } }
    public func setStreamCount(_ count: Int) {}

    public func close() {
        lock.withLock {
            if !closed { shutdown(fd, Int32(SHUT_RDWR)) }
            closed = true
        }
    }

    private var isClosed: Bool { lock.withLock { closed } }

    // MARK: connect / accept

    /// Connects to a replica at `host` (numeric IPv4 or IPv6) and `port`, and runs the handshake.
    /// `accept` decides whether the peer's key is the node we meant to reach; it is asked before the
    /// peer's proof is checked, and the key is only returned as `peerKey` once that proof verified.
    public static func connect(host: String, port: UInt16, identity: SigningKey, network: NetworkID, timeout: Double = 5,
                               accept: (PublicKey) -> Bool) throws(EndophyteError) -> TCPReplicationTransport {
        var storage = sockaddr_storage()
        let len = try fillAddress(host: host, port: port, into: &storage)
        let fd = socket(Int32(storage.ss_family), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw EndophyteError(.socket(operation: "socket", errno: errno)) }
        let t = TCPReplicationTransport(fd: fd)
        t.setSendTimeout(timeout)  // Linux applies SO_SNDTIMEO to connect(2) as well
        let rc = withUnsafePointer(to: &storage) {
            // SAFETY: sockaddr_storage is large enough for any sockaddr; `len` is the filled size.
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, len) }
        }
        if rc != 0 {
            let e = errno
            throw EndophyteError(e == EINPROGRESS || e == EAGAIN ? .timeout(operation: "connect to \(host):\(port)") : .socket(operation: "connect to \(host):\(port)", errno: e))
        }
        try t.handshake(role: .source, identity: identity, network: network, timeout: timeout, accept: accept)
        t.setSendTimeout(0)
        return t
    }

    static func fillAddress(host: String, port: UInt16, into storage: inout sockaddr_storage) throws(EndophyteError) -> socklen_t {
        var ok = false
        var len: socklen_t = 0
        withUnsafeMutablePointer(to: &storage) { sp in
            // SAFETY: sockaddr_in/in6 both fit in sockaddr_storage, which we own.
            sp.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                var a = in_addr()
                if inet_pton(AF_INET, host, &a) == 1 {
                    sin.pointee = sockaddr_in()
                    sin.pointee.sin_family = sa_family_t(AF_INET)
                    sin.pointee.sin_port = port.bigEndian
                    sin.pointee.sin_addr = a
                    len = socklen_t(MemoryLayout<sockaddr_in>.size)
                    ok = true
                }
            }
            if ok { return }
            sp.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                var a = in6_addr()
                if inet_pton(AF_INET6, host, &a) == 1 {
                    sin6.pointee = sockaddr_in6()
                    sin6.pointee.sin6_family = sa_family_t(AF_INET6)
                    sin6.pointee.sin6_port = port.bigEndian
                    sin6.pointee.sin6_addr = a
                    len = socklen_t(MemoryLayout<sockaddr_in6>.size)
                    ok = true
                }
            }
        }
        if !ok { throw EndophyteError(.socket(operation: "parse address '\(host)' (numeric IPv4/IPv6 only)", errno: EINVAL)) }
        return len
    }

    private func setSendTimeout(_ seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    private func setReceiveTimeout(_ seconds: Double?) {
        if currentTimeout == seconds { return }
        currentTimeout = seconds
        let s = seconds ?? 0
        var tv = timeval(tv_sec: Int(s), tv_usec: Int((s - Double(Int(s))) * 1e6))
        if seconds != nil && tv.tv_sec == 0 && tv.tv_usec == 0 { tv.tv_usec = 1 }
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    // MARK: handshake

    /// The stream handshake (docs/HANDSHAKE.md; MyceliumIdentity's `StreamHandshakeClient`/`Server`):
    /// the source is the client, the replica the server. Both proofs sign a binding of both
    /// ephemeral keys and both nonces, so a proof can be neither replayed on another connection nor
    /// reflected back. Runs before any frame, on the raw stream, exactly as rhizomorph does.
    ///
    /// Limits: this authenticates the start of the stream only; bytes after it are not MAC'd or
    /// encrypted (the X25519 secret is not used yet). Run it on a trusted link or inside the VPN
    /// until this transport is replaced by rhizomorph's, which encrypts with keys from the same handshake.
    func handshake(role: ReplicationRole, identity: SigningKey, network: NetworkID, timeout: Double,
                   accept: (PublicKey) -> Bool) throws(EndophyteError) {
        var ephemeral = Sodium.randomBytes(32)
        defer { for i in ephemeral.indices { ephemeral[i] = 0 } }
        switch role {
        case .source:
            var client = StreamHandshakeClient(identity: identity, network: network, ephemeralSecret: ephemeral,
                                               nonce: Sodium.randomBytes(32))
            try sendRaw(client.hello)
            let reply = try receiveHandshakeMessage(timeout: timeout)
            let proof: [UInt8]
            do { proof = try client.receiveReply(reply, accepts: accept) } catch { throw refuse(error) }
            try sendRaw(proof)
            let verdict = try receiveHandshakeMessage(timeout: timeout)
            do { try client.receiveVerdict(verdict) } catch { throw refuse(error) }
            peerKey = client.peer!
        case .replica:
            let hello = try receiveHandshakeMessage(timeout: timeout)
            let server: StreamHandshakeServer
            do {
                // The cipher field is for rhizomorph (2: XChaCha20-Poly1305); this transport does not encrypt yet.
                server = try StreamHandshakeServer(hello: hello, identity: identity, network: network, accepts: accept,
                                                   ephemeralSecret: ephemeral, nonce: Sodium.randomBytes(32),
                                                   sessionID: Sodium.randomBytes(16), cipher: 2)
            } catch { throw refuse(error) }
            try sendRaw(server.reply)
            let proof = try receiveHandshakeMessage(timeout: timeout)
            let verdict: [UInt8]
            do { verdict = try server.receiveProof(proof) } catch { throw refuse(error) }
            try sendRaw(verdict)
            peerKey = server.peer
        }
    }

    /// Tells the peer why we refuse it (its operator reads the reason in its log), and turns the
    /// refusal into our error.
    private func refuse(_ error: StreamHandshakeError) -> EndophyteError {
        if let reject = error.reject { try? sendRaw(reject) }
        return EndophyteError(.authenticationFailed(reason: error.description))
    }

    private func sendRaw(_ bytes: [UInt8]) throws(EndophyteError) {
        // SAFETY: a buffer we own for the duration of the write; handshake messages are small.
        let buf = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 8)
        defer { buf.deallocate() }
        bytes.withUnsafeBytes { if let b = $0.baseAddress { buf.copyMemory(from: b, byteCount: $0.count) } }
        var iov = [iovec(iov_base: buf, iov_len: bytes.count)]
        try writeAll(&iov)
    }

    /// One handshake message: the preamble, then the body it announces. A peer that has proven
    /// nothing yet can make us read at most `StreamHandshake.maxMessageBytes`.
    private func receiveHandshakeMessage(timeout: Double) throws(EndophyteError) -> [UInt8] {
        setReceiveTimeout(timeout)
        // SAFETY: a buffer we own, large enough for any handshake message, freed on return.
        let buf = UnsafeMutableRawPointer.allocate(byteCount: StreamHandshake.maxMessageBytes, alignment: 8)
        defer { buf.deallocate() }
        let pre = StreamHandshake.preambleBytes
        try readExact(buf, pre)
        let preamble = [UInt8](UnsafeRawBufferPointer(start: buf, count: pre))
        let n: Int
        do { n = try StreamHandshake.bodyLength(preamble: preamble) } catch { throw refuse(error) }
        try readExact(buf + pre, n)
        return [UInt8](UnsafeRawBufferPointer(start: buf, count: pre + n))
    }

    // MARK: I/O

    public func send(_ type: MessageType, header: [UInt8], pages: [UnsafeRawBufferPointer]) throws(EndophyteError) {
        if isClosed { throw EndophyteError(.peerClosed) }
        var total = header.count
        for p in pages { total += p.count }
        guard total + 2 <= maxMessageBytes else {
            throw EndophyteError(.invalidState("message of \(total) bytes exceeds the \(maxMessageBytes)-byte limit"))
        }
        // Frame prefix and message header go into one small buffer we own; page data is gathered
        // from the region as is.
        let headBytes = Frame.headerSize + header.count
        let head = UnsafeMutableRawPointer.allocate(byteCount: headBytes, alignment: 8)
        defer { head.deallocate() }
        let length = UInt32(2 + total)
        head.storeBytes(of: length.bigEndian, as: UInt32.self)
        head.storeBytes(of: Frame.version, toByteOffset: 4, as: UInt8.self)
        head.storeBytes(of: type.rawValue, toByteOffset: 5, as: UInt8.self)
        // SAFETY: `head` has room for the 6-byte prefix plus header.count bytes.
        header.withUnsafeBytes { if let b = $0.baseAddress { (head + Frame.headerSize).copyMemory(from: b, byteCount: $0.count) } }
        var iov: [iovec] = []
        iov.reserveCapacity(1 + pages.count)
        // SAFETY: every iovec points into memory that outlives this call: `head` (freed on return) and
        // the caller's page buffers (mapped region memory).
        iov.append(iovec(iov_base: head, iov_len: headBytes))
        for p in pages where p.count > 0 {
            let base = UnsafeMutableRawPointer(mutating: p.baseAddress!)
            // Adjacent pages become one iovec: fewer segments for the kernel to walk.
            if iov.count > 1, let last = iov.last, last.iov_base! + last.iov_len == base {
                iov[iov.count - 1].iov_len += p.count
            } else {
                iov.append(iovec(iov_base: base, iov_len: p.count))
            }
        }
        try writeAll(&iov)
        lock.withLock { sent += UInt64(total + Frame.headerSize) }
    }

    private func writeAll(_ iov: inout [iovec]) throws(EndophyteError) {
        var first = 0
        let maxIov = 1024
        while first < iov.count {
            let n = iov.withUnsafeMutableBufferPointer { b in
                // SAFETY: [first, first+count) is within the array, which outlives the call.
                var msg = msghdr()
                msg.msg_iov = b.baseAddress! + first
                msg.msg_iovlen = min(maxIov, b.count - first)
                // sendmsg rather than writev for MSG_NOSIGNAL: a vanished peer must be an error
                // (EPIPE → .peerClosed), not a SIGPIPE that kills the agent.
                return sendmsg(fd, &msg, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                if e == EAGAIN || e == EWOULDBLOCK { throw EndophyteError(.timeout(operation: "send")) }
                if e == EPIPE || e == ECONNRESET || isClosed { throw EndophyteError(.peerClosed) }
                throw EndophyteError(.socket(operation: "writev", errno: e))
            }
            var left = n
            while left > 0 && first < iov.count {
                if left >= iov[first].iov_len {
                    left -= iov[first].iov_len
                    first += 1
                } else {
                    iov[first].iov_base! += left
                    iov[first].iov_len -= left
                    left = 0
                }
            }
        }
    }

    private func readExact(_ dst: UnsafeMutableRawPointer, _ count: Int) throws(EndophyteError) {
        var got = 0
        while got < count {
            // SAFETY: callers pass a buffer of at least `count` bytes; we write only [got, count).
            let n = Glibc.recv(fd, dst + got, count - got, Int32(MSG_NOSIGNAL))
            if n > 0 { got += n; continue }
            if n == 0 { throw EndophyteError(.peerClosed) }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { throw EndophyteError(.timeout(operation: "receive")) }
            if e == ECONNRESET || isClosed { throw EndophyteError(.peerClosed) }
            throw EndophyteError(.socket(operation: "recv", errno: e))
        }
    }

    public func receive<R>(timeout: Double?, _ body: (MessageType, UnsafeRawBufferPointer) throws(EndophyteError) -> R) throws(EndophyteError) -> R {
        if isClosed { throw EndophyteError(.peerClosed) }
        setReceiveTimeout(timeout)
        var head = (UInt8(0), UInt8(0), UInt8(0), UInt8(0), UInt8(0), UInt8(0))
        // SAFETY: the tuple is 6 contiguous bytes, exactly what readExact fills.
        try withUnsafeMutableBytes(of: &head) { (h) throws(EndophyteError) in try readExact(h.baseAddress!, 6) }
        let length = Int(head.0) << 24 | Int(head.1) << 16 | Int(head.2) << 8 | Int(head.3)
        let limit = maxMessageBytes
        guard length >= 2, length <= limit else {
            throw EndophyteError(.decode(DecodeError(.tooLong(field: "frame", length: length, limit: limit), at: 0)))
        }
        guard head.4 == Frame.version else {
            throw EndophyteError(.decode(DecodeError(.unknownVersion(field: "frame version", value: UInt64(head.4)), at: 4)))
        }
        guard let type = MessageType(rawValue: head.5) else {
            throw EndophyteError(.decode(DecodeError(.unknownVersion(field: "message type", value: UInt64(head.5)), at: 5)))
        }
        let n = length - 2
        if n > rcap {
            // SAFETY: no body view outlives a receive call, so the old buffer has no users left.
            rbuf.deallocate()
            rcap = max(n, rcap * 2)
            rbuf = .allocate(byteCount: rcap, alignment: 4096)
        }
        // Once a message has started, the rest of it must follow promptly whatever the caller's
        // wait for the start was.
        setReceiveTimeout(max(timeout ?? 30, 30))
        try readExact(rbuf, n)
        // SAFETY: rbuf holds n initialised bytes until the next receive on this (single) reader.
        return try body(type, UnsafeRawBufferPointer(start: rbuf, count: n))
    }
}

/// Accepts replication connections on a TCP port and authenticates each one.
public final class ReplicationListener: @unchecked Sendable {
    // SAFETY (Sendable): the fd is immutable; `accept` may be called from one thread at a time.
    private let fd: Int32
    public let port: UInt16

    public init(host: String = "127.0.0.1", port: UInt16 = 0) throws(EndophyteError) {
        var storage = sockaddr_storage()
        let len = try TCPReplicationTransport.fillAddress(host: host, port: port, into: &storage)
        let fd = socket(Int32(storage.ss_family), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw EndophyteError(.socket(operation: "socket", errno: errno)) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc = withUnsafePointer(to: &storage) {
            // SAFETY: see TCPReplicationTransport.connect.
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
        }
        if rc != 0 || listen(fd, 16) != 0 {
            let e = errno
            Glibc.close(fd)
            throw EndophyteError(.socket(operation: "bind/listen \(host):\(port)", errno: e))
        }
        var bound = sockaddr_storage()
        var blen = socklen_t(MemoryLayout<sockaddr_storage>.size)
        // SAFETY: getsockname writes at most `blen` bytes, the size of the storage we own.
        _ = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &blen) }
        }
        let p = withUnsafePointer(to: &bound) {
            // SAFETY: sin_port and sin6_port sit at the same offset (2) in both families.
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_port }
        }
        self.fd = fd
        self.port = UInt16(bigEndian: p)
    }

    deinit { Glibc.close(fd) }

    /// Stops accepting: a blocked `accept` returns an error.
    public func close() { shutdown(fd, Int32(SHUT_RDWR)) }

    /// Waits for a source to connect and prove its identity.
    public func accept(identity: SigningKey, network: NetworkID, timeout: Double = 5,
                       authorize: (PublicKey) -> Bool) throws(EndophyteError) -> TCPReplicationTransport {
        var c: Int32
        repeat {
            c = Glibc.accept(fd, nil, nil)
        } while c < 0 && errno == EINTR
        if c < 0 { throw EndophyteError(.socket(operation: "accept", errno: errno)) }
        _ = fcntl(c, F_SETFD, FD_CLOEXEC)
        let t = TCPReplicationTransport(fd: c)
        try t.handshake(role: .replica, identity: identity, network: network, timeout: timeout, accept: authorize)
        return t
    }
}
