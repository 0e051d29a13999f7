// Replication over rhizomorph: encrypted (AEAD per chunk, keys from the same stream handshake),
// striped over several connections on several network paths, surviving the loss of a path.
//
// Every replication message (Wire.swift) is one rhizomorph message (Rhizomorph/Messages.swift):
// its body goes out as page writes inside the message, cut into chunks that the library spreads
// over every connection, then a barrier names the type and length. The receiver gets a message
// only once all of its chunks are in, and only after every earlier message. That is the order the
// protocol needs: an epoch's `commit` (with its device state) is delivered after every `pages`
// message of that epoch, a `synced` after everything sent before the `sync`, an `ack` after the
// commit it answers; and a `pages` message is applied whole or not at all. Meanwhile the bulk
// inside a message is not held behind one slow or dying path: chunks are delivered as they arrive,
// and those of a dead connection are resent on the others.
//
// Why pages+barriers rather than rhizomorph's ordered stream: the stream's receiver writes into a
// file descriptor until the sender ends it (a pipe, a thread and a copy more), and delivers strictly
// in sequence, so a chunk stuck on a failing path stalls all traffic behind it; here only the next
// message waits. A direction carries one mode at a time, so control messages take the same path as
// the pages (they are small: one chunk and a barrier each). Both directions work the same way.
//
// Threads: `send` runs on the caller's thread and returns once the message is queued (it blocks
// only while the session's send window, 64 MiB by default, is full). A thread of the transport's
// own runs rz_recv_pages and assembles messages; `receive` takes them from it. `close()` from any
// thread fails blocked calls on both with `.peerClosed`.

import MyceliumCore
import MyceliumIdentity
import Rhizomorph

#if canImport(Glibc)
import Glibc
#endif

public final class RhizomorphReplicationTransport: ReplicationTransport, @unchecked Sendable {
    // SAFETY (Sendable): all state is in the channel, which is thread-safe (one receiving thread).
    public let peerKey: PublicKey
    public let channel: MessageChannel
    /// The session underneath (statistics: per-path bytes, failed connections, resends).
    public var session: Session { channel.session }

    /// The largest message body either side accepts: one full pages message plus its index table,
    /// or a device-state blob (the same limit as Wire.maxBody).
    public static let maxMessageBytes = 64 << 20

    /// Wraps an authenticated session; `peerKey` must be the key the session's handshake verified
    /// (the `peer` of its Configuration: rhizomorph refuses any other).
    public init(session: Session, peerKey: PublicKey, chunkSize: UInt32 = 65536) {
        self.peerKey = peerKey
        channel = MessageChannel(session: session, maxMessageBytes: Self.maxMessageBytes, chunkSize: Int(chunkSize))
    }

    /// The source's side: connects to the replica over `paths` (each a local and a remote address;
    /// one path per network, or per NIC, to spread and protect the traffic) and proves both
    /// identities. A replica whose key is not `peerKey` is refused (`.authenticationFailed`).
    public static func connect(paths: [Rhizomorph.Path], identity: SigningKey, network: NetworkID, peerKey: PublicKey,
                               configure: (inout Configuration) -> Void = { _ in }) throws(EndophyteError) -> RhizomorphReplicationTransport {
        var config = Configuration(identity: identity, network: network, peer: peerKey)
        configure(&config)
        do {
            let s = try Session.connect(config, paths: paths)
            return RhizomorphReplicationTransport(session: s, peerKey: peerKey, chunkSize: config.chunkSize)
        } catch {
            throw Self.translate(error, "connect to the replica over \(paths.count) path(s)")
        }
    }

    /// The replica's side: waits up to `timeout` seconds for the source `peerKey` on `listener`.
    /// A peer with another key is refused (`.authenticationFailed`), and the listener keeps going.
    public static func accept(from listener: Listener, identity: SigningKey, network: NetworkID, peerKey: PublicKey,
                              timeout: Double = 5,
                              configure: (inout Configuration) -> Void = { _ in }) throws(EndophyteError) -> RhizomorphReplicationTransport {
        var config = Configuration(identity: identity, network: network, peer: peerKey)
        configure(&config)
        do {
            let s = try listener.accept(config, timeoutMilliseconds: Int32(clamping: Int((timeout * 1000).rounded())))
            return RhizomorphReplicationTransport(session: s, peerKey: peerKey, chunkSize: config.chunkSize)
        } catch {
            throw Self.translate(error, "accept a source on port \(listener.port)")
        }
    }

    /// The replica's side for a node that holds replicas of several sources: waits up to `timeout`
    /// seconds for a source whose key is one of `allowedPeers`; the transport's `peerKey` is the key
    /// that source proved. Any other key is refused (`.authenticationFailed`), and the listener keeps going.
    public static func accept(from listener: Listener, identity: SigningKey, network: NetworkID, allowedPeers: [PublicKey],
                              timeout: Double = 5,
                              configure: (inout Configuration) -> Void = { _ in }) throws(EndophyteError) -> RhizomorphReplicationTransport {
        guard let first = allowedPeers.first else {
            throw EndophyteError(.invalidState("accept a source on port \(listener.port): no allowed source keys"))
        }
        var config = Configuration(identity: identity, network: network, peer: first)
        configure(&config)
        do {
            let (s, key) = try listener.accept(config, allowedPeers: allowedPeers,
                                               timeoutMilliseconds: Int32(clamping: Int((timeout * 1000).rounded())))
            return RhizomorphReplicationTransport(session: s, peerKey: key, chunkSize: config.chunkSize)
        } catch {
            throw Self.translate(error, "accept a source on port \(listener.port)")
        }
    }

    public var bytesSent: UInt64 { channel.bytesSent }

    /// The library stripes every message over all connections already; nothing to add.
    public func setStreamCount(_ count: Int) {}

    /// Receives blocked on other threads return `.peerClosed` at once; what was sent gets up to a
    /// second to be delivered first (MessageChannel.close), then the session closes.
    public func close() { channel.close() }

    public func send(_ type: MessageType, header: [UInt8], pages: [UnsafeRawBufferPointer]) throws(EndophyteError) {
        do {
            try header.withUnsafeBytes { h in try channel.send(type: type.rawValue, parts: [h] + pages) }
        } catch {
            throw Self.translate(error, "send \(type)")
        }
    }

    public func receive<R>(timeout: Double?, _ body: (MessageType, UnsafeRawBufferPointer) throws(EndophyteError) -> R) throws(EndophyteError) -> R {
        let m: ReceivedMessage
        do { m = try channel.receive(timeout: timeout) } catch { throw Self.translate(error, "receive") }
        defer { channel.recycle(m) }
        guard let type = MessageType(rawValue: m.type) else {
            throw EndophyteError(.decode(DecodeError(.unknownVersion(field: "message type", value: UInt64(m.type)), at: 0)))
        }
        return try body(type, m.body)
    }

    /// Rhizomorph's errors in the terms the engine acts on: anything that means "the peer is gone"
    /// (closed here or there, every path down) is `.peerClosed`, which triggers the emergency policy.
    static func translate(_ error: Error, _ operation: String) -> EndophyteError {
        guard let e = error as? RhizomorphError else { return EndophyteError(.invalidState("\(operation): \(error)")) }
        switch e.code {
        case .closed, .allPathsDown, .system(ECONNRESET), .system(ECONNABORTED), .system(ECANCELED):
            return EndophyteError(.peerClosed)
        case .timedOut:
            return EndophyteError(.timeout(operation: "\(operation) (\(e.message))"))
        case .wrongNetwork, .wrongPeerIdentity, .badSignature, .versionMismatch:
            return EndophyteError(.authenticationFailed(reason: e.message))
        case .malformed, .integrity:
            return EndophyteError(.protocolViolation(reason: "\(operation): \(e.message)"))
        case .refused:
            return EndophyteError(.socket(operation: "\(operation): \(e.message)", errno: ECONNREFUSED))
        case .system(let errno):
            return EndophyteError(.socket(operation: "\(operation): \(e.message)", errno: errno))
        }
    }
}
