// The dashboard's shell: polls the local agent through its typed API (MyceliumAPI's AgentClient; the
// dashboard holds no copy of the agent's state, only the page's view of its latest answers and its own
// bounded history), serves one page and its JSON on Hummingbird, and pushes every new view to the page
// as a server-sent event. Read-only: it sends the agent GET requests only and offers no action.
//
//   GET /                  the page (HTML and plain JS, no CDN)
//   GET /api/snapshot      the current view (DashboardSnapshot as JSON)
//   GET /api/events?kind=vote,failure&q=TEXT   the timeline, filtered
//   GET /api/stream        server-sent events: one `snapshot` event per poll
//   GET /login?token=T     with an access token configured: sets the cookie and redirects to / (the
//                          token is never put in the page)

import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import MyceliumAPI
import NIOCore
import NIOSSL

/// Reads the node's datapath counters (the CLI passes one that reads the pinned BPF maps): the rows,
/// or why there are none.
public typealias DatapathReader = @Sendable () -> Result<[DatapathRow], DashboardConfigError>

public struct DashboardOptions: Sendable {
    /// The agent's API socket (`HOME/agent.sock`).
    public var socket: String
    public var security: DashboardSecurity
    /// How often the agent is polled.
    public var pollMilliseconds: Int
    public var datapath: DatapathReader?

    public init(socket: String, security: DashboardSecurity, pollMilliseconds: Int = 1000, datapath: DatapathReader? = nil) {
        self.socket = socket; self.security = security; self.pollMilliseconds = pollMilliseconds; self.datapath = datapath
    }
}

/// One poll's answers from the agent (each panel's answer, or why it has none).
struct AgentReading: Sendable {
    var status: Result<StatusResponse, AgentClientError>
    /// `/v1/events` after the last event number taken (nil: not read, the status failed).
    var events: Result<EventsResponse, AgentClientError>?
    var vms: Result<VMsResponse, AgentClientError>?
    var services: Result<ServicesResponse, AgentClientError>?
    var volumes: Result<VolumesResponse, AgentClientError>?
    var datapath: Result<[DatapathRow], DashboardConfigError>?

    /// Reads the agent (outside the state's actor, so a slow agent never holds up a page).
    static func read(_ client: AgentClient, eventsAfter: UInt64, datapath: DatapathReader?) async -> AgentReading {
        func attempt<T>(_ f: () async throws -> T) async -> Result<T, AgentClientError> {
            do { return .success(try await f()) } catch let e as AgentClientError { return .failure(e) } catch {
                return .failure(AgentClientError(.malformedAnswer, "\(error)"))
            }
        }
        var r = AgentReading(status: await attempt { try await client.status() })
        if case .success = r.status {
            r.events = await attempt { try await client.events(after: eventsAfter) }
            r.vms = await attempt { try await client.vms() }
            r.services = await attempt { try await client.services() }
            r.volumes = await attempt { try await client.volumes() }
        }
        r.datapath = datapath?()
        return r
    }
}

/// The latest view and the history, shared by the poller and the request handlers.
actor DashboardState {
    private var history = DashboardHistory()
    private(set) var snapshot = DashboardSnapshot.empty
    private let started = ContinuousClock.now

    /// Seconds since the dashboard started.
    func now() -> Double {
        let d = ContinuousClock.now - started
        return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    func apply(_ r: AgentReading, socket: String) {
        let t = now()
        var s = snapshot
        s.version += 1
        s.t = t
        switch r.status {
        case .success(let status):
            // The events from /v1/events (every one since the last poll); from an agent older than that
            // endpoint (404), the status's latest 30. Another failure: this poll takes none, the next
            // one reads from the same number.
            var fromStatus = false
            switch r.events {
            case .success(let events)?: history.absorb(events: events)
            case .failure(let e)?: if case .refused(404, _) = e.code { fromStatus = true }
            case nil: fromStatus = true
            }
            history.absorb(status, at: t, lines: fromStatus)
            s.reachable = true; s.error = ""
            s.network = status.network; s.observer = status.node; s.leader = status.leader; s.term = status.term
            s.health = status.health; s.phase = status.phase; s.warnings = status.warnings ?? []
            s.members = DashboardModel.members(status)
            s.links = DashboardModel.links(status)
            s.votes = DashboardModel.votes(status.votes)
            s.events = history.events
            s.trust = history.trust
        case .failure(let e):
            s.reachable = false
            s.error = "the agent at \(socket) does not answer (\(e)); showing its last known view"
        }
        var errors: [String: String] = [:]
        func take<T, U>(_ result: Result<T, AgentClientError>?, _ name: String, _ view: (T) -> U) -> U? {
            switch result {
            case .success(let v): return view(v)
            case .failure(let e): errors[name] = e.description; return nil
            case nil: errors[name] = "the agent does not answer"; return nil
            }
        }
        s.vms = take(r.vms, "vms", DashboardModel.vms)
        s.services = take(r.services, "services", DashboardModel.services)
        s.volumes = take(r.volumes, "volumes", DashboardModel.volumes)
        switch r.datapath {
        case .success(let rows): s.datapath = rows
        case .failure(let e): s.datapath = nil; errors["datapath"] = e.message
        case nil: s.datapath = nil; errors["datapath"] = "not read by this dashboard"
        }
        s.panelErrors = errors
        snapshot = s
    }

    /// The `after` of the next `/v1/events` read.
    func eventCursor() -> UInt64 { history.lastAgentSeq }

    /// The current view if it is newer than `version`.
    func next(after version: Int) -> DashboardSnapshot? { snapshot.version > version ? snapshot : nil }
}

/// JSON with sorted keys (a new encoder per call: the handlers run concurrently).
func dashboardJSON<T: Encodable>(_ value: T) throws -> Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return try encoder.encode(value)
}

public enum DashboardServer {
    /// Runs the dashboard until cancelled. `onListening` gets the address it bound (for `--listen …:0`).
    public static func run(_ options: DashboardOptions, logger: Logger,
                           onListening: @escaping @Sendable (String) async -> Void) async throws {
        if case .failure(let e) = options.security.validate() { throw e }
        let security = options.security
        let state = DashboardState()
        let client = AgentClient(socket: options.socket, timeoutSeconds: 5)

        let router = Router()
        router.add(middleware: TokenMiddleware<BasicRequestContext>(security: security))
        router.get("/") { _, _ in
            let page = DashboardPage.render(snapshotJSON: String(decoding: try dashboardJSON(await state.snapshot), as: UTF8.self))
            return Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
                            body: .init(byteBuffer: ByteBuffer(string: page)))
        }
        router.get("/api/snapshot") { _, _ in
            let s = await state.snapshot
            return Response(status: .ok, headers: [.contentType: "application/json", .cacheControl: "no-store"],
                            body: .init(byteBuffer: ByteBuffer(bytes: try dashboardJSON(s))))
        }
        router.get("/api/events") { req, _ in
            let kinds: Set<EventKind>
            switch DashboardModel.kinds(req.uri.queryParameters.get("kind") ?? "") {
            case .success(let k): kinds = k
            case .failure(let message):
                return Response(status: .badRequest, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: message.message + "\n")))
            }
            let events = DashboardModel.filter(await state.snapshot.events, kinds: kinds, text: req.uri.queryParameters.get("q") ?? "")
            return Response(status: .ok, headers: [.contentType: "application/json"],
                            body: .init(byteBuffer: ByteBuffer(bytes: try dashboardJSON(["events": events]))))
        }
        let pollInterval = Duration.milliseconds(max(100, options.pollMilliseconds))
        router.get("/api/stream") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-store"],
                     body: .init { writer in
                         var sent = -1
                         while !Task.isCancelled {
                             if let s = await state.next(after: sent) {
                                 sent = s.version
                                 var line = "event: snapshot\ndata: "
                                 line += String(decoding: try dashboardJSON(s), as: UTF8.self)
                                 line += "\n\n"
                                 try await writer.write(ByteBuffer(string: line))
                             }
                             // The stream's cadence (the poller's), not a synchronisation.
                             try await Task.sleep(for: pollInterval / 4)
                         }
                         try await writer.finish(nil)
                     })
        }

        let server: HTTPServerBuilder
        if let cert = security.tlsCertificate, let key = security.tlsKey {
            do {
                let chain = try NIOSSLCertificate.fromPEMFile(cert).map { NIOSSLCertificateSource.certificate($0) }
                let tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
                server = try .tls(.http1(), tlsConfiguration: tls)
            } catch {
                throw DashboardConfigError("cannot use --tls-cert \(cert) and --tls-key \(key): \(error); pass a PEM certificate chain and its PEM private key")
            }
        } else {
            server = .http1()
        }
        let scheme = security.tlsCertificate == nil ? "http" : "https"
        let app = Application(
            router: router, server: server,
            configuration: .init(address: .hostname(security.listen.host, port: security.listen.port), serverName: "mycelium-dashboard"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? security.listen.port
                let host = security.listen.host.contains(":") ? "[\(security.listen.host)]" : security.listen.host
                await onListening("\(scheme)://\(host):\(port)/")
            },
            logger: logger)

        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    let after = await state.eventCursor()
                    await state.apply(await AgentReading.read(client, eventsAfter: after, datapath: options.datapath), socket: options.socket)
                    try await Task.sleep(for: pollInterval)  // the poll cadence
                }
            }
            group.addTask { try await app.runService() }
            try await group.next()
            group.cancelAll()
        }
    }
}

/// Refuses (401) a request without the access token, when one is configured. `/login?token=T` with the
/// right token sets an HttpOnly cookie and redirects to `/`, so the browser never shows the token again.
struct TokenMiddleware<Context: RequestContext>: RouterMiddleware {
    let security: DashboardSecurity

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard security.token != nil else { return try await next(request, context) }
        if request.uri.path == "/login" {
            guard let t = request.uri.queryParameters.get("token"), security.matches(t) else { return unauthorized() }
            let secure = security.tlsCertificate != nil ? "; Secure" : ""
            return Response(status: .seeOther, headers: [
                .location: "/",
                .setCookie: "\(DashboardSecurity.cookieName)=\(t); Path=/; HttpOnly; SameSite=Strict\(secure)",
            ])
        }
        guard security.authorized(authorization: request.headers[.authorization], cookie: request.headers[.cookie]) else {
            return unauthorized()
        }
        return try await next(request, context)
    }

    func unauthorized() -> Response {
        Response(status: .unauthorized, headers: [.contentType: "text/plain", .wwwAuthenticate: "Bearer"],
                 body: .init(byteBuffer: ByteBuffer(string: "the dashboard needs its access token: open /login?token=TOKEN once, or send Authorization: Bearer TOKEN\n")))
    }
}
