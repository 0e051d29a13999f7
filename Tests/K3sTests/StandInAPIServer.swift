import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A stand-in for the Kubernetes API server of a K3s server node (K3s cannot run on the project's
/// machines). It implements just what the K3s driver calls, the way the API server answers them:
/// server-side apply (PATCH with application/apply-patch+yaml) of the namespace and of Deployments,
/// the labelled Deployment list, GET and DELETE; and records every request for the test to check.
final class StandInAPIServer: @unchecked Sendable {
    struct Request: Equatable { var method: String; var uri: String; var contentType: String; var authorization: String; var body: String }

    private let lock = NIOLock()
    private var _requests: [Request] = []
    /// Deployments by name: the applied object (JSON) and the ready count the test sets.
    private var deployments: [String: (object: [String: Any], ready: Int)] = [:]
    /// Answer every apply with this Status (code, message) when set.
    private var failApply: (Int, String)?
    private var channel: Channel?
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private(set) var port = 0

    var requests: [Request] { lock.withLock { _requests } }
    func setReady(_ name: String, _ n: Int) { lock.withLock { deployments[name]?.ready = n } }
    func failApplies(_ f: (Int, String)?) { lock.withLock { failApply = f } }
    var deploymentNames: [String] { lock.withLock { deployments.keys.sorted() } }

    /// `tls`: serve https with this context (as K3s does), else plain http.
    func start(tls: NIOSSLContext? = nil) throws {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    if let tls { try ch.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                    try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                    try ch.pipeline.syncOperations.addHandler(Handler(server: self))
                }
            }
        let ch = try bootstrap.bind(host: "127.0.0.1", port: 0).wait()
        channel = ch
        port = ch.localAddress?.port ?? 0
    }

    func stop() {
        try? channel?.close().wait()
        try? group.syncShutdownGracefully()
    }

    /// A kubeconfig as K3s writes one, pointing at this server (plain http: it is a stand-in).
    func kubeconfig(token: String) -> String {
        """
        apiVersion: v1
        kind: Config
        clusters:
        - name: default
          cluster:
            server: http://127.0.0.1:\(port)
        contexts:
        - name: default
          context:
            cluster: default
            user: default
        current-context: default
        users:
        - name: default
          user:
            token: \(token)

        """
    }

    func answer(_ r: Request) -> (Int, String) {
        lock.withLock {
            _requests.append(r)
            let path = String(r.uri.split(separator: "?", maxSplits: 1)[0])
            let prefix = "/apis/apps/v1/namespaces/mycelium/deployments"
            func status(_ code: Int, _ message: String) -> (Int, String) {
                let body = try! JSONSerialization.data(withJSONObject: ["kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code])
                return (code, String(decoding: body, as: UTF8.self))
            }
            func json(_ o: Any) -> String { String(decoding: try! JSONSerialization.data(withJSONObject: o), as: UTF8.self) }
            func withStatus(_ name: String) -> [String: Any] {
                var o = deployments[name]!.object
                o["status"] = ["replicas": (o["spec"] as? [String: Any])?["replicas"] ?? 0, "readyReplicas": deployments[name]!.ready]
                return o
            }
            switch (r.method, path) {
            case ("PATCH", _):
                guard r.contentType == "application/apply-patch+yaml" else { return status(415, "unsupported media type \(r.contentType)") }
                guard r.uri.contains("fieldManager=mycelium") else { return status(422, "fieldManager is required for apply requests") }
                if let f = failApply { return status(f.0, f.1) }
                guard let o = try? JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any] else { return status(400, "body is not an object") }
                if path == "/api/v1/namespaces/mycelium" { return (201, json(o)) }
                guard path.hasPrefix(prefix + "/") else { return status(404, "no route \(path)") }
                let name = String(path.dropFirst(prefix.count + 1))
                let created = deployments[name] == nil
                deployments[name] = (o, deployments[name]?.ready ?? 0)
                return (created ? 201 : 200, json(withStatus(name)))
            case ("GET", prefix):
                guard r.uri.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dmycelium") else { return status(400, "expected the label selector") }
                return (200, json(["kind": "DeploymentList", "apiVersion": "apps/v1", "items": deployments.keys.sorted().map(withStatus)]))
            case ("DELETE", _) where path.hasPrefix(prefix + "/"):
                let name = String(path.dropFirst(prefix.count + 1))
                guard deployments.removeValue(forKey: name) != nil else { return status(404, "deployments.apps \"\(name)\" not found") }
                return (200, json(["kind": "Status", "status": "Success"]))
            default:
                return status(404, "no route \(r.method) \(path)")
            }
        }
    }

    final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let server: StandInAPIServer
        var head: HTTPRequestHead?
        var body: [UInt8] = []
        init(server: StandInAPIServer) { self.server = server }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h): head = h; body = []
            case .body(var b): body += b.readBytes(length: b.readableBytes) ?? []
            case .end:
                guard let h = head else { return }
                let (code, text) = server.answer(Request(method: h.method.rawValue, uri: h.uri, contentType: h.headers["Content-Type"].first ?? "",
                                                         authorization: h.headers["Authorization"].first ?? "", body: String(decoding: body, as: UTF8.self)))
                var headers = HTTPHeaders()
                headers.add(name: "Content-Type", value: "application/json")
                headers.add(name: "Content-Length", value: "\(text.utf8.count)")
                headers.add(name: "Connection", value: "close")
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: code), headers: headers))), promise: nil)
                var buf = context.channel.allocator.buffer(capacity: text.utf8.count)
                buf.writeString(text)
                context.write(wrapOutboundOut(.body(.byteBuffer(buf))), promise: nil)
                // Connection: close, as the client asks; the channel closes once the answer is out.
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
            }
        }
    }
}
