// Seed spores over HTTP(S): the leader PUTs the signed snapshot to each configured URL and a cold
// node GETs it, so any web server or object store that accepts PUT (nginx with dav, S3-style
// buckets behind a presigned or open URL, a simple upload service) can hold one. The body is the
// same checksummed file a seed directory holds, so a truncated or corrupted download is reported as
// such, and the signature inside decides whether it is used at all: the transport is not trusted.

import Foundation
import MyceliumCore
import MyceliumIdentity
import MyceliumSpores
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

public struct HTTPSeedStore: SeedSporeStore {
    public let base: String
    public let network: NetworkID
    let group: EventLoopGroup
    /// At most this much is read from a response.
    static let maxBody = 16 << 20

    /// `base` is a directory-like URL ("http://seeds.example:8080/mycelium/"); the spore lives at
    /// base + NETWORK.seed.
    public init(base: String, network: NetworkID, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.base = base.hasSuffix("/") ? base : base + "/"
        self.network = network
        self.group = group
    }

    public var location: String { base + network.description + ".seed" }

    public func write(_ seed: SeedSpore) async throws {
        let body = ChecksummedFile.encode(kind: FileKind.seedSpore, payload: seed.encoded())
        let (status, answer) = try await HTTPClient.request(method: .PUT, url: location, body: body, group: group)
        guard (200..<300).contains(status) else {
            throw AgentError("PUT \(location) answered \(status): \(String(decoding: answer.prefix(200), as: UTF8.self))")
        }
    }

    public func read() async throws -> [UInt8]? {
        let (status, body) = try await HTTPClient.request(method: .GET, url: location, body: nil, group: group)
        if status == 404 { return nil }
        guard status == 200 else { throw AgentError("GET \(location) answered \(status)") }
        do {
            return try ChecksummedFile.decode(body, kind: FileKind.seedSpore, path: location)
        } catch {
            throw SporeError(.file(error))
        }
    }
}

/// A small HTTP/1.1 client on NIO (one request per connection, a deadline, a size limit): all the
/// seed store needs, without another dependency.
enum HTTPClient {
    struct URLParts { var tls: Bool; var host: String; var port: Int; var path: String }

    static func parse(_ url: String) throws -> URLParts {
        let tls: Bool
        var rest: Substring
        if url.hasPrefix("http://") { tls = false; rest = url.dropFirst(7) }
        else if url.hasPrefix("https://") { tls = true; rest = url.dropFirst(8) }
        else { throw AgentError("seed URL '\(url)' must start with http:// or https://") }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        let path = slash == rest.endIndex ? "/" : String(rest[slash...])
        rest = authority
        var host = String(rest), port = tls ? 443 : 80
        if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {  // [v6]:port
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") { guard let p = Int(after.dropFirst()) else { throw AgentError("bad port in '\(url)'") }; port = p }
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else { throw AgentError("bad port in '\(url)'") }
            port = p
        }
        guard !host.isEmpty else { throw AgentError("no host in '\(url)'") }
        return URLParts(tls: tls, host: host, port: port, path: path)
    }

    static func request(method: HTTPMethod, url: String, body: [UInt8]?, group: EventLoopGroup,
                        timeout: TimeAmount = .seconds(10)) async throws -> (Int, [UInt8]) {
        let u = try parse(url)
        let promise = group.next().makePromise(of: (Int, [UInt8]).self)
        let sslContext: NIOSSLContext?
        do { sslContext = u.tls ? try NIOSSLContext(configuration: .makeClientConfiguration()) : nil } catch {
            promise.fail(error)
            throw error
        }
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        try ch.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: u.host))
                    }
                    try ch.pipeline.syncOperations.addHTTPClientHandlers()
                    try ch.pipeline.syncOperations.addHandler(ResponseCollector(promise: promise))
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.connect(host: u.host, port: u.port).get()
        } catch {
            promise.fail(error)  // every promise is completed, on every path
            throw AgentError("\(method) \(url): cannot connect: \(error)")
        }
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: u.port == (u.tls ? 443 : 80) ? u.host : "\(u.host):\(u.port)")
        headers.add(name: "Connection", value: "close")
        headers.add(name: "User-Agent", value: "myceliumd")
        if let body { headers.add(name: "Content-Length", value: "\(body.count)"); headers.add(name: "Content-Type", value: "application/octet-stream") }
        channel.write(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: method, uri: u.path, headers: headers)), promise: nil)
        if let body {
            var buf = channel.allocator.buffer(capacity: body.count)
            buf.writeBytes(body)
            channel.write(HTTPClientRequestPart.body(.byteBuffer(buf)), promise: nil)
        }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        let deadline = channel.eventLoop.scheduleTask(in: timeout) {
            promise.fail(AgentError("\(method) \(url): no complete answer within \(timeout.nanoseconds / 1_000_000_000) s"))
            channel.close(promise: nil)
        }
        defer { deadline.cancel(); channel.close(promise: nil) }
        return try await promise.futureResult.get()
    }

    final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPClientResponsePart
        let promise: EventLoopPromise<(Int, [UInt8])>
        var status = 0
        var body: [UInt8] = []
        var done = false

        init(promise: EventLoopPromise<(Int, [UInt8])>) { self.promise = promise }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h): status = Int(h.status.code)
            case .body(var b):
                if body.count + b.readableBytes > HTTPSeedStore.maxBody {
                    finish(.failure(AgentError("answer larger than \(HTTPSeedStore.maxBody) bytes")), context)
                    return
                }
                body += b.readBytes(length: b.readableBytes) ?? []
            case .end: finish(.success((status, body)), context)
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) { finish(.failure(error), context) }
        func channelInactive(context: ChannelHandlerContext) {
            finish(.failure(AgentError("connection closed before a complete answer")), context)
        }

        func finish(_ r: Result<(Int, [UInt8]), Error>, _ context: ChannelHandlerContext) {
            guard !done else { return }
            done = true
            promise.completeWith(r)
            context.close(promise: nil)
        }
    }
}
