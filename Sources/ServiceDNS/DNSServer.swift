// The I/O shell around DNSResponder: UDP, and TCP on the same port for answers that did not fit
// (RFC 7766), with SwiftNIO.
//
// DNS is unauthenticated and read-only: anyone who can send to the port can read every service's
// instances, and nothing here can change state. Over UDP a forged source address turns a 40-byte
// query into an answer of up to 1232 bytes sent to a victim, and TCP connections are not capped in
// number: which address to bind (loopback unless the operator says otherwise) is the caller's
// decision, and it should never be one the internet reaches.

@_exported import ServiceDNSCore
import NIOCore
import NIOPosix

/// What went wrong starting the DNS server, and what to do about it.
public struct ServiceDNSError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Answers `NAME.service.mycelium` queries over UDP and TCP on one port.
public final class DNSServer: Sendable {
    private let udp: Channel
    private let tcp: Channel?

    /// The UDP socket's address (TCP listens on the same port): with port 0, where it landed.
    public var localAddress: SocketAddress? { udp.localAddress }

    /// A TCP connection that sends nothing for this long is closed (RFC 7766 §6.2.3).
    public static let tcpIdleTimeout: TimeAmount = .seconds(10)

    private init(udp: Channel, tcp: Channel?) {
        self.udp = udp
        self.tcp = tcp
    }

    /// Binds UDP on `host:port` and, with `tcp`, TCP on the same port; `port` 0 picks a free one.
    ///
    /// `directory` is called on an event loop for every query: it must answer from memory at once.
    /// - Throws: ``ServiceDNSError`` if `zone` is not a domain name or a socket cannot be bound.
    /// `allow`: which clients get answers (nil: all); a datagram from another is dropped unanswered
    /// and a TCP connection from one is closed at once.
    public static func start(host: String, port: Int, zone: String = "service.mycelium", ttl: UInt32 = 5, maxUDP: Int? = nil,
                             tcp: Bool = true, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                             allow: (@Sendable (SocketAddress) -> Bool)? = nil,
                             directory: @escaping @Sendable (String) -> [ServiceEndpoint]?) async throws -> DNSServer {
        guard DNSName(zone) != nil else {
            throw ServiceDNSError("DNS zone '\(zone)' is not a domain name: use dot-separated labels of 1 to 63 bytes, 255 bytes in all")
        }
        let dir = ClosureDirectory(directory)
        let respond: @Sendable ([UInt8], DNSTransport) -> [UInt8]? = { query, transport in
            DNSResponder.answer(query: query, zone: zone, directory: dir, ttl: ttl, maxUDP: maxUDP, transport: transport)
        }
        // With port 0 the kernel picks the UDP port, which may be taken for TCP: try a few.
        let attempts = port == 0 && tcp ? 8 : 1
        for attempt in 1...attempts {
            let udp: Channel
            do {
                udp = try await DatagramBootstrap(group: group)
                    .channelInitializer { ch in
                        ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(DNSDatagramHandler(respond: respond, allow: allow)) }
                    }
                    .bind(host: host, port: port).get()
            } catch {
                throw ServiceDNSError("cannot bind the DNS server to UDP \(host):\(port): \(error); is the port in use, or the address not this host's?")
            }
            guard tcp else { return DNSServer(udp: udp, tcp: nil) }
            let bound = udp.localAddress?.port ?? port
            do {
                let listener = try await ServerBootstrap(group: group)
                    .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
                    .childChannelInitializer { ch in
                        ch.eventLoop.makeCompletedFuture {
                            if let allow, let peer = ch.remoteAddress, !allow(peer) {
                                ch.close(promise: nil)
                                return
                            }
                            try ch.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: tcpIdleTimeout))
                            try ch.pipeline.syncOperations.addHandler(DNSStreamHandler(respond: respond))
                        }
                    }
                    .bind(host: host, port: bound).get()
                return DNSServer(udp: udp, tcp: listener)
            } catch {
                try? await udp.close().get()
                if attempt < attempts { continue }
                throw ServiceDNSError("cannot bind the DNS server to TCP \(host):\(bound): \(error); is the port in use? (start with tcp: false to serve UDP only)")
            }
        }
        preconditionFailure("unreachable: the last attempt returns or throws")
    }

    /// Stops answering and releases both sockets.
    public func close() async {
        try? await udp.close().get()
        if let tcp { try? await tcp.close().get() }
    }
}

/// One datagram in, at most one out, to the address it came from.
final class DNSDatagramHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    private let respond: @Sendable ([UInt8], DNSTransport) -> [UInt8]?
    private let allow: (@Sendable (SocketAddress) -> Bool)?

    init(respond: @escaping @Sendable ([UInt8], DNSTransport) -> [UInt8]?, allow: (@Sendable (SocketAddress) -> Bool)?) {
        self.respond = respond
        self.allow = allow
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // A datagram larger than the receive buffer (NIO's default, 2048 bytes, over the 1232 we
        // advertise) arrives cut short, fails to parse, and gets FORMERR.
        let envelope = unwrapInboundIn(data)
        if let allow, !allow(envelope.remoteAddress) { return }
        guard let answer = respond(Array(envelope.data.readableBytesView), .udp) else { return }
        let buffer = context.channel.allocator.buffer(bytes: answer)
        context.writeAndFlush(wrapOutboundOut(AddressedEnvelope(remoteAddress: envelope.remoteAddress, data: buffer)), promise: nil)
    }

    /// An ICMP error for one client's datagram must not stop the server answering the others.
    func errorCaught(context: ChannelHandlerContext, error: Error) {}
}

/// Queries behind a 2-byte length (RFC 1035 §4.2.2), answered in order; at most one partial query
/// (65537 bytes) is buffered, and reading pauses while the client does not read its answers.
final class DNSStreamHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let respond: @Sendable ([UInt8], DNSTransport) -> [UInt8]?
    private var pending: ByteBuffer?

    init(respond: @escaping @Sendable ([UInt8], DNSTransport) -> [UInt8]?) { self.respond = respond }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if pending == nil { pending = incoming } else { pending!.writeBuffer(&incoming) }
        var wrote = false
        while let length = pending!.getInteger(at: pending!.readerIndex, as: UInt16.self),
              pending!.readableBytes >= 2 + Int(length) {
            pending!.moveReaderIndex(forwardBy: 2)
            let query = pending!.readBytes(length: Int(length))!
            guard let answer = respond(query, .tcp) else {
                // Not a query (too short, or a response): nothing sensible can follow on this stream.
                context.close(promise: nil)
                return
            }
            var out = context.channel.allocator.buffer(capacity: 2 + answer.count)
            out.writeInteger(UInt16(answer.count))
            out.writeBytes(answer)
            context.write(wrapOutboundOut(out), promise: nil)
            wrote = true
        }
        pending!.discardReadBytes()
        if wrote { context.flush() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent { context.close(promise: nil) } else { context.fireUserInboundEventTriggered(event) }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}
