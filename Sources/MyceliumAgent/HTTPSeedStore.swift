// Seed spores over HTTP(S): the leader PUTs the signed snapshot to each configured URL and a cold
// node GETs it, so any web server or object store that accepts PUT (nginx with dav, S3-style
// buckets behind a presigned or open URL, a simple upload service) can hold one. The body is the
// same checksummed file a seed directory holds, so a truncated or corrupted download is reported as
// such, and the signature inside decides whether it is used at all: the transport is not trusted.

import Foundation
import MyceliumCore
import MyceliumHTTP
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

/// The seed store's URLs over MyceliumHTTP's OneShotHTTP (one request per connection, a deadline, a
/// size limit): all the seed store needs, without another dependency.
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
        let sslContext = u.tls ? try NIOSSLContext(configuration: .makeClientConfiguration()) : nil
        var headers = HTTPHeaders()
        if body != nil { headers.add(name: "Content-Type", value: "application/octet-stream") }
        do {
            let r = try await OneShotHTTP.exchange(method, host: u.host, port: u.port, uri: u.path,
                                                   hostHeader: u.port == (u.tls ? 443 : 80) ? u.host : "\(u.host):\(u.port)", headers: headers,
                                                   body: body, tls: sslContext, serverHostname: u.host, group: group, timeout: timeout,
                                                   maxBody: HTTPSeedStore.maxBody, label: "\(method) \(url)")
            return (r.status, r.body)
        } catch let e as HTTPExchangeError { throw AgentError(e.description) }
    }
}
