// A small client for the local API over its unix socket, returning the typed answers. Blocking
// socket I/O with a 10 s timeout: one short request per call, from a CLI, a test or a benchmark.

import Foundation

/// Why a call to the local agent failed, with what to do about it.
public struct AgentClientError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: Sendable, Equatable {
        /// Nothing listens on the socket (no agent, or another `--home`).
        case unreachable
        /// The agent accepted the connection but did not answer within the timeout.
        case timedOut
        /// The answer is not HTTP, or not the JSON this client expects (a version mismatch).
        case malformedAnswer
        /// The agent refused the request with this HTTP status and reason; `message` is its explanation.
        case refused(status: Int, APIErrorCode)
    }

    /// What went wrong, as a category a program can act on.
    public let code: Code
    /// What went wrong and what to do, for the operator; for `.refused`, the agent's own message.
    public let message: String

    public init(_ code: Code, _ message: String) { self.code = code; self.message = message }

    public var description: String {
        if case .refused(let status, _) = code { return "the agent answered \(status): \(message)" }
        return message
    }
}

/// The local agent's API, typed: `AgentClient(socket: home + "/agent.sock").status()`.
public struct AgentClient: Sendable {
    /// The agent's API socket, normally `HOME/agent.sock`.
    public let socket: String
    /// How long a call waits for the agent to answer.
    public let timeoutSeconds: Int

    public init(socket: String, timeoutSeconds: Int = 10) {
        self.socket = socket
        self.timeoutSeconds = timeoutSeconds
    }

    /// `GET /v1/status`.
    public func status() async throws -> StatusResponse { try await decoded(.status) }

    /// `GET /v1/events?after=SEQ`: the kept events numbered above `after` (0: all it keeps).
    public func events(after: UInt64 = 0) async throws -> EventsResponse { try await decoded(.events(query: "after=\(after)")) }

    /// `GET /v1/spore`.
    public func spore() async throws -> SporeResponse { try await decoded(.spore) }

    /// `GET /v1/spore/export`: a signed seed spore, as bytes to write to a file.
    public func exportSpore() async throws -> [UInt8] { try await send(.sporeExport) }
    /// A signed backup of the control state the agent has applied (`BackupFile`'s bytes).
    public func backup() async throws -> [UInt8] { try await send(.backup) }

    /// `GET /v1/membership`.
    public func membership() async throws -> MembershipResponse { try await decoded(.membership) }

    /// `POST /v1/revoke?node=ID&reason=TEXT`: asks the network to revoke `node`.
    public func revoke(node: String, reason: String) async throws -> ActionResponse {
        try await decoded(.revoke(node: node.addingPercentEncoding(withAllowedCharacters: Self.queryValue) ?? node,
                                  reason: reason.addingPercentEncoding(withAllowedCharacters: Self.queryValue) ?? ""))
    }

    /// `POST /v1/leave`: asks the network to remove this node.
    public func leave() async throws -> ActionResponse { try await decoded(.leave) }

    /// `POST /v1/vote/failure?node=ID`: asks the network whether `node` has failed.
    public func requestFailureVote(node: String) async throws -> ActionResponse {
        try await decoded(.failureVote(node: node.addingPercentEncoding(withAllowedCharacters: Self.queryValue) ?? node))
    }

    /// Sends `route` and returns the body of a 2xx answer; anything else throws ``AgentClientError``
    /// carrying the agent's error message.
    public func send(_ route: APIRoute, body requestBody: [UInt8] = []) async throws -> [UInt8] {
        let (status, body) = try await request(method: route.method, path: route.path, body: requestBody)
        guard (200..<300).contains(status) else {
            if let e = try? APIJSON.decode(APIErrorResponse.self, from: body) {
                throw AgentClientError(.refused(status: status, e.code), e.error)
            }
            let text = String(decoding: body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw AgentClientError(.refused(status: status, .unspecified), text)
        }
        return body
    }

    /// One raw request: the HTTP status and body, whatever they are (for `/metrics` and for tests of
    /// refusals). Throws only when no well-formed answer arrives.
    public func request(method: String, path: String, body requestBody: [UInt8] = []) async throws -> (status: Int, body: [UInt8]) {
        let fd = Foundation.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw AgentClientError(.unreachable, "cannot create a unix socket (\(String(cString: strerror(errno))))") }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socket.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw AgentClientError(.unreachable, "socket path too long: \(socket); use a shorter --home or --socket")
        }
        // SAFETY: bytes.count + 1 <= sizeof(sun_path), checked above.
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b }; p[bytes.count] = 0 }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard rc == 0 else {
            throw AgentClientError(.unreachable,
                                   "no agent answers at \(socket) (\(String(cString: strerror(errno)))); is myceliumd running with this --home?")
        }
        // An agent that is stopping or wedged must not hang the CLI (or a test) forever.
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let req = Array("\(method) \(path) HTTP/1.1\r\nHost: agent\r\nConnection: close\r\nContent-Length: \(requestBody.count)\r\n\r\n".utf8) + requestBody
        var sent = 0
        while sent < req.count {
            let n = req[sent...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n <= 0 { throw AgentClientError(.unreachable, "cannot send to the agent at \(socket) (\(String(cString: strerror(errno))))") }
            sent += n
        }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                throw AgentClientError(.timedOut, "the agent at \(socket) did not answer within \(timeoutSeconds) s")
            }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        guard let sep = out.firstRange(of: Array("\r\n\r\n".utf8)) else {
            throw AgentClientError(.malformedAnswer, "malformed answer from the agent at \(socket) (\(out.count) bytes, no HTTP header)")
        }
        let head = String(decoding: out[..<sep.lowerBound], as: UTF8.self)
        let code = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
        return (code, Array(out[sep.upperBound...]))
    }

    /// `GET /v1/services`.
    public func services() async throws -> ServicesResponse { try await decoded(.services) }

    /// `POST /v1/service/deploy` with the spec.
    public func deployService(_ spec: ServiceSpecDocument) async throws -> ActionResponse {
        try await decoded(.service(action: "deploy", query: ""), body: APIJSON.encode(spec))
    }

    /// `POST /v1/service/stop?name=NAME`.
    public func stopService(_ name: String) async throws -> ActionResponse {
        try await decoded(.service(action: "stop", query: "name=" + (name.addingPercentEncoding(withAllowedCharacters: Self.queryValue) ?? name)))
    }

    /// `POST /v1/service/drain?node=ID` (or `undrain`; no node: the answering agent's own).
    public func drainNode(_ node: String?, on: Bool) async throws -> ActionResponse {
        try await decoded(.service(action: on ? "drain" : "undrain",
                                   query: node.map { "node=" + ($0.addingPercentEncoding(withAllowedCharacters: Self.queryValue) ?? $0) } ?? ""))
    }

    /// `GET /v1/service/logs?name=&instance=&bytes=`.
    public func serviceLogs(_ name: String, instance: String?, bytes: Int) async throws -> ServiceLogsResponse {
        let q = "name=" + (name.addingPercentEncoding(withAllowedCharacters: Self.queryValue) ?? name)
            + (instance.map { "&instance=" + ($0.addingPercentEncoding(withAllowedCharacters: Self.queryValue) ?? $0) } ?? "") + "&bytes=\(bytes)"
        return try await decoded(.serviceLogs(query: q))
    }

    private func decoded<T: Decodable>(_ route: APIRoute, body requestBody: [UInt8] = []) async throws -> T {
        let body = try await send(route, body: requestBody)
        do {
            return try APIJSON.decode(T.self, from: body)
        } catch {
            throw AgentClientError(.malformedAnswer,
                                   "the agent at \(socket) answered \(route.path) with JSON this client cannot read (\(error)); "
                                   + "are mycelium and myceliumd the same version?")
        }
    }

    /// A query value: unreserved characters only, so `&`, `=` and spaces in a node argument stay inside it.
    private static let queryValue: CharacterSet = {
        CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    }()
}
