// The Kubernetes API as the K3s driver uses it: four calls (server-side apply, get/list, delete) over
// HTTP/1.1 on NIO (MyceliumHTTP's OneShotHTTP), one request per connection, with a deadline and a
// size limit. Credentials come from the kubeconfig K3s writes (`write-kubeconfig`): the cluster's CA
// and the admin's client certificate and key (or a bearer token). Errors name the call and never the credentials.
//
// K3s cannot run on the project's machines, so the tests point a kubeconfig at a small HTTP server
// of their own (`http://` URLs are accepted for that; K3s itself always serves https).

import Foundation
import MyceliumCore
import MyceliumHTTP
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Yams

public struct KubeError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Where the API is and how to authenticate (from a kubeconfig's current context).
public struct KubeEndpoint: Sendable {
    public var server: String
    /// PEM bytes.
    public var certificateAuthority: [UInt8]?
    public var clientCertificate: [UInt8]?
    public var clientKey: [UInt8]?
    /// A bearer token (secret: never printed).
    var bearer: String?

    /// Reads a kubeconfig (YAML): the current context's cluster and user, `*-data` fields inline
    /// (base64) or as files.
    public static func load(kubeconfig path: String) throws -> KubeEndpoint {
        let text: String
        do { text = String(decoding: try AtomicFile.read(path, limit: 1 << 20), as: UTF8.self) } catch {
            throw KubeError("no kubeconfig at \(path) yet (\(error)); K3s writes it once its server is up")
        }
        guard let doc = try? Yams.load(yaml: text) as? [String: Any] else { throw KubeError("\(path) is not a kubeconfig (YAML mapping expected)") }
        func named(_ key: String, _ name: String?) -> [String: Any]? {
            let list = doc[key] as? [[String: Any]] ?? []
            let entry = name.flatMap { n in list.first { $0["name"] as? String == n } } ?? list.first
            return entry?[String(key.dropLast())] as? [String: Any]
        }
        let current = doc["current-context"] as? String
        let contexts = doc["contexts"] as? [[String: Any]] ?? []
        let context = (current.flatMap { c in contexts.first { $0["name"] as? String == c } } ?? contexts.first)?["context"] as? [String: Any]
        guard let cluster = named("clusters", context?["cluster"] as? String), let server = cluster["server"] as? String else {
            throw KubeError("\(path) names no cluster server")
        }
        let user = named("users", context?["user"] as? String) ?? [:]
        func pem(_ m: [String: Any], _ data: String, _ file: String) throws -> [UInt8]? {
            if let b64 = m[data] as? String {
                guard let d = Data(base64Encoded: b64) else { throw KubeError("\(path): \(data) is not base64") }
                return Array(d)
            }
            if let f = m[file] as? String { return try AtomicFile.read(f, limit: 1 << 20) }
            return nil
        }
        return KubeEndpoint(server: server, certificateAuthority: try pem(cluster, "certificate-authority-data", "certificate-authority"),
                            clientCertificate: try pem(user, "client-certificate-data", "client-certificate"),
                            clientKey: try pem(user, "client-key-data", "client-key"), bearer: user["token"] as? String)
    }
}

public struct KubeClient: Sendable {
    public let endpoint: KubeEndpoint
    let group: EventLoopGroup
    static let maxBody = 16 << 20

    public init(endpoint: KubeEndpoint, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.endpoint = endpoint; self.group = group
    }

    /// Server-side apply (PATCH, application/apply-patch+yaml) of `object` at `path`: creates or
    /// updates it, owning the fields it sets.
    public func apply(path: String, object: String, fieldManager: String) async throws {
        let (status, body) = try await request(.PATCH, path + "?fieldManager=\(fieldManager)&force=true", body: Array(object.utf8),
                                               contentType: "application/apply-patch+yaml")
        guard (200..<300).contains(status) else { throw KubeError("apply \(path): \(Self.explain(status, body))") }
    }

    /// GET a JSON object; nil on 404.
    public func get(_ path: String) async throws -> [String: Any]? {
        let (status, body) = try await request(.GET, path, body: nil, contentType: nil)
        if status == 404 { return nil }
        guard status == 200 else { throw KubeError("GET \(path): \(Self.explain(status, body))") }
        guard let obj = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else { throw KubeError("GET \(path): the answer is not a JSON object") }
        return obj
    }

    /// DELETE; true if it existed.
    @discardableResult
    public func delete(_ path: String) async throws -> Bool {
        let (status, body) = try await request(.DELETE, path, body: nil, contentType: nil)
        if status == 404 { return false }
        guard (200..<300).contains(status) else { throw KubeError("DELETE \(path): \(Self.explain(status, body))") }
        return true
    }

    /// "403 Forbidden: <the API's message>" from a Status object, or the status alone.
    static func explain(_ status: Int, _ body: [UInt8]) -> String {
        let message = (try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])?["message"] as? String
        return "the API answered \(status)" + (message.map { ": " + String($0.prefix(300)) } ?? "")
    }

    func tlsContext() throws -> NIOSSLContext {
        var c = TLSConfiguration.makeClientConfiguration()
        if let ca = endpoint.certificateAuthority {
            c.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(ca))
            // K3s's serving certificate is for its node IPs and names; the pinned cluster CA is what is checked.
            c.certificateVerification = .noHostnameVerification
        }
        if let cert = endpoint.clientCertificate, let key = endpoint.clientKey {
            c.certificateChain = try NIOSSLCertificate.fromPEMBytes(cert).map { .certificate($0) }
            c.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: key, format: .pem))
        }
        return try NIOSSLContext(configuration: c)
    }

    func request(_ method: HTTPMethod, _ path: String, body: [UInt8]?, contentType: String?,
                 timeout: TimeAmount = .seconds(10)) async throws -> (Int, [UInt8]) {
        let (tls, host, port) = try Self.parse(endpoint.server)
        let ssl: NIOSSLContext?
        do { ssl = tls ? try tlsContext() : nil } catch {
            throw KubeError("the kubeconfig's certificates cannot be used: \(error)")
        }
        var headers = HTTPHeaders()
        headers.add(name: "Accept", value: "application/json")
        if let bearer = endpoint.bearer { headers.add(name: "Authorization", value: "Bearer " + bearer) }
        if body != nil, let contentType { headers.add(name: "Content-Type", value: contentType) }
        do {
            let r = try await OneShotHTTP.exchange(method, host: host, port: port, uri: path, hostHeader: "\(host):\(port)", headers: headers,
                                                   body: body, tls: ssl, serverHostname: nil, group: group, timeout: timeout,
                                                   maxBody: Self.maxBody, label: "\(method) \(endpoint.server)\(path)")
            return (r.status, r.body)
        } catch let e as HTTPExchangeError { throw KubeError(e.description) } catch {
            // TLS failures land here: a wrong CA or a refused client certificate.
            throw KubeError("\(method) \(endpoint.server)\(path): \(error) (are the kubeconfig's CA and credentials this cluster's?)")
        }
    }

    static func parse(_ url: String) throws -> (tls: Bool, host: String, port: Int) {
        let tls: Bool
        var rest: Substring
        if url.hasPrefix("https://") { tls = true; rest = url.dropFirst(8) } else if url.hasPrefix("http://") { tls = false; rest = url.dropFirst(7) } else {
            throw KubeError("API server '\(url)' is not an http(s) URL")
        }
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        var host = String(rest), port = tls ? 443 : 80
        if let colon = rest.lastIndex(of: ":"), !rest.hasPrefix("[") {
            host = String(rest[..<colon])
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else { throw KubeError("bad port in '\(url)'") }
            port = p
        }
        guard !host.isEmpty else { throw KubeError("no host in '\(url)'") }
        return (tls, host, port)
    }
}
