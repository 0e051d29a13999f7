// A small HTTP/1.1 client on NIO, shared by the seed store (MyceliumAgent) and the Kubernetes API
// client (K3sDriver): one request per connection, a deadline, a size limit, and every promise
// completed on every path. Callers parse their URLs, make their TLS context and add their own
// headers (authentication, content type); this is the exchange alone.

import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// The exchange itself failed: no connection, no complete answer in time, an answer too large, or the
/// connection closed before the answer was complete. TLS failures arrive as NIOSSL's own errors.
public struct HTTPExchangeError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}

public enum OneShotHTTP {
    /// Sends `method uri` to `host:port` (through `tls` when given, checking `serverHostname` when
    /// given) with Host: `hostHeader`, Connection: close, User-Agent: myceliumd, then `headers`, and
    /// Content-Length when there is a `body`. Returns the status and at most `maxBody` bytes of body.
    /// `label` ("GET http://host/path") starts the messages of the errors it throws.
    public static func exchange(
        _ method: HTTPMethod, host: String, port: Int, uri: String, hostHeader: String, headers extra: HTTPHeaders = [:],
        body: [UInt8]?, tls: NIOSSLContext?, serverHostname: String?, group: EventLoopGroup,
        timeout: TimeAmount, maxBody: Int, label: String
    ) async throws -> (status: Int, body: [UInt8]) {
        let promise = group.next().makePromise(of: (Int, [UInt8]).self)
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    if let tls { try ch.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: serverHostname)) }
                    try ch.pipeline.syncOperations.addHTTPClientHandlers()
                    try ch.pipeline.syncOperations.addHandler(ResponseCollector(promise: promise, maxBody: maxBody))
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            promise.fail(error)  // every promise is completed, on every path
            throw HTTPExchangeError("\(label): cannot connect: \(error)")
        }
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: hostHeader)
        headers.add(name: "Connection", value: "close")
        headers.add(name: "User-Agent", value: "myceliumd")
        headers.add(contentsOf: extra)
        if let body { headers.add(name: "Content-Length", value: "\(body.count)") }
        channel.write(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers)), promise: nil)
        if let body {
            var buf = channel.allocator.buffer(capacity: body.count)
            buf.writeBytes(body)
            channel.write(HTTPClientRequestPart.body(.byteBuffer(buf)), promise: nil)
        }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        let deadline = channel.eventLoop.scheduleTask(in: timeout) {
            promise.fail(HTTPExchangeError("\(label): no complete answer within \(timeout.nanoseconds / 1_000_000_000) s"))
            channel.close(promise: nil)
        }
        defer { deadline.cancel(); channel.close(promise: nil) }
        let (status, answer) = try await promise.futureResult.get()
        return (status, answer)
    }

    final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPClientResponsePart
        // SAFETY (Sendable): the fields are only touched on the channel's event loop.
        let promise: EventLoopPromise<(Int, [UInt8])>
        let maxBody: Int
        var status = 0
        var body: [UInt8] = []
        var done = false

        init(promise: EventLoopPromise<(Int, [UInt8])>, maxBody: Int) {
            self.promise = promise
            self.maxBody = maxBody
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h): status = Int(h.status.code)
            case .body(var b):
                if body.count + b.readableBytes > maxBody {
                    finish(.failure(HTTPExchangeError("answer larger than \(maxBody) bytes")), context)
                    return
                }
                body += b.readBytes(length: b.readableBytes) ?? []
            case .end: finish(.success((status, body)), context)
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) { finish(.failure(error), context) }
        func channelInactive(context: ChannelHandlerContext) {
            finish(.failure(HTTPExchangeError("connection closed before a complete answer")), context)
        }

        func finish(_ r: Result<(Int, [UInt8]), Error>, _ context: ChannelHandlerContext) {
            guard !done else { return }
            done = true
            promise.completeWith(r)
            context.close(promise: nil)
        }
    }
}
