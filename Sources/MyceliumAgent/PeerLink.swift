// One outgoing authenticated channel per peer, kept up by its own task: dial, send what is
// queued, and on failure dial again with capped exponential backoff. Raft tolerates loss, so a
// message queued while the peer is down may be dropped; the queue is bounded (newest kept).

import Logging
import MyceliumCore
import MyceliumIdentity
import MyceliumTransport
import NIOConcurrencyHelpers
import NIOCore

final class PeerLink: Sendable {
    let raftID: UInt64
    private let queue: AsyncStream<Frame>.Continuation
    private let state = NIOLockedValueBox<(addresses: [String], connectedTo: String?, everConnected: Bool, task: Task<Void, Never>?, dialSeconds: Double?)>(([], nil, false, nil, nil))

    struct Dialer: Sendable {
        var credentials: @Sendable () -> NodeCredentials
        var group: EventLoopGroup
        var logger: Logger
        var policy: @Sendable () -> HandshakePolicy
        /// Called on the agent after each successful dial: (peer's raft id, address dialled, the verified peer).
        var onConnected: @Sendable (UInt64, String, VerifiedPeer) async -> Void
        /// The frames to send first on every new connection (hello, and a join request while not admitted).
        var greeting: @Sendable () async -> [Frame]
    }

    init(raftID: UInt64, addresses: [String], dialer: Dialer) {
        self.raftID = raftID
        let (stream, continuation) = AsyncStream<Frame>.makeStream(bufferingPolicy: .bufferingNewest(4096))
        self.queue = continuation
        state.withLockedValue { $0.addresses = addresses }
        let task = Task { [state] in
            var backoff: UInt64 = 50_000_000
            var it = stream.makeAsyncIterator()
            while !Task.isCancelled {
                let addrs = state.withLockedValue { $0.addresses }
                var channel: PeerChannel?
                var used = ""
                var dialSeconds = 0.0
                for a in addrs {
                    guard let (host, port) = splitAddress(a) else { continue }
                    do {
                        let started = ContinuousClock.now
                        defer {
                            let d = ContinuousClock.now - started
                            dialSeconds = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
                        }
                        channel = try await PeerChannel.connect(host: host, port: port, credentials: dialer.credentials(),
                                                                group: dialer.group, logger: dialer.logger, policy: dialer.policy())
                        used = a
                        break
                    } catch {
                        dialer.logger.debug("dial failed", metadata: ["peer": "\(raftID)", "address": "\(a)", "reason": "\(error)"])
                    }
                }
                guard let ch = channel else {
                    try? await Task.sleep(nanoseconds: backoff)
                    backoff = min(backoff * 2, 2_000_000_000)
                    continue
                }
                backoff = 50_000_000
                state.withLockedValue { $0.connectedTo = used; $0.everConnected = true; $0.dialSeconds = dialSeconds }
                await dialer.onConnected(raftID, used, ch.peer)
                do {
                    for f in await dialer.greeting() { try await ch.send(type: f.type, payload: f.payload) }
                    // Drain inbound on this channel (the peer answers on its own link), so heartbeats flow.
                    // When it ends the peer closed the connection (or died): say so at once, not at the next send.
                    let drain = Task {
                        while (try? await ch.receive()) != nil {}
                        state.withLockedValue { $0.connectedTo = nil }
                    }
                    defer { drain.cancel() }
                    while let f = await it.next() {
                        guard ch.isActive else { break }
                        try await ch.send(type: f.type, payload: f.payload)
                    }
                } catch {
                    dialer.logger.debug("link lost", metadata: ["peer": "\(raftID)", "reason": "\(error)"])
                }
                state.withLockedValue { $0.connectedTo = nil }
                await ch.close()
                if Task.isCancelled { break }
            }
        }
        state.withLockedValue { $0.task = task }
    }

    func send(_ f: Frame) { queue.yield(f) }

    func setAddresses(_ a: [String]) { state.withLockedValue { $0.addresses = a } }
    var addresses: [String] { state.withLockedValue { $0.addresses } }
    var connectedAddress: String? { state.withLockedValue { $0.connectedTo } }
    /// True when this link had a connection and has lost it (and not yet got it back): the peer
    /// closed it, or is gone. A link that never connected says nothing about the peer.
    var lostConnection: Bool { state.withLockedValue { $0.everConnected && $0.connectedTo == nil } }
    /// Whether this link ever connected, and how long its latest successful dial took (connect and handshake).
    var everConnected: Bool { state.withLockedValue { $0.everConnected } }
    var lastDialSeconds: Double? { state.withLockedValue { $0.dialSeconds } }

    func stop() {
        queue.finish()
        state.withLockedValue { $0.task?.cancel() }
    }
}
