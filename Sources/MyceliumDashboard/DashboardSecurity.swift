// Who may reach the dashboard (pure): where it listens, whether that needs TLS and a token, and whether
// a request carries the token. The token is compared in constant time and never appears in a message.

import Foundation

/// Where and how the dashboard listens.
public struct DashboardListen: Sendable, Equatable {
    public var host: String
    public var port: Int

    /// Parses `HOST:PORT` (`[::1]:8470` for IPv6).
    public static func parse(_ text: String) -> Result<DashboardListen, DashboardConfigError> {
        var host = Substring(text), portText = Substring("")
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return .failure(.init("--listen \(text) has no port; use e.g. [::1]:8470")) }
            portText = rest.dropFirst()
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]; portText = text[text.index(after: colon)...]
        } else {
            return .failure(.init("--listen \(text) has no port; use HOST:PORT, e.g. 127.0.0.1:8470"))
        }
        guard !host.isEmpty, let port = Int(portText), (0...65535).contains(port) else {
            return .failure(.init("--listen \(text) is not HOST:PORT with a port from 0 to 65535; e.g. 127.0.0.1:8470"))
        }
        return .success(DashboardListen(host: String(host), port: port))
    }

    /// Loopback: `127.0.0.0/8`, `::1` or `localhost`. Anything else (including `0.0.0.0`) reaches the network.
    public var isLoopback: Bool {
        if host == "localhost" || host == "::1" { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }
}

/// A configuration the dashboard refuses, with what to pass instead.
public struct DashboardConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// What the dashboard was asked to do, checked by ``validate()``.
public struct DashboardSecurity: Sendable, Equatable {
    public var listen: DashboardListen
    public var tlsCertificate: String?
    public var tlsKey: String?
    /// The access token (read from a file by the caller); nil: none required.
    public var token: String?

    public init(listen: DashboardListen, tlsCertificate: String? = nil, tlsKey: String? = nil, token: String? = nil) {
        self.listen = listen; self.tlsCertificate = tlsCertificate; self.tlsKey = tlsKey; self.token = token
    }

    /// Loopback needs nothing; any other address needs a TLS certificate and key and an access token.
    /// A certificate without its key (or the reverse) and a short token are refused everywhere.
    public func validate() -> Result<Void, DashboardConfigError> {
        if (tlsCertificate == nil) != (tlsKey == nil) {
            return .failure(.init("--tls-cert and --tls-key go together: pass both (PEM files) or neither"))
        }
        if let token, token.count < 16 {
            return .failure(.init("the access token in --token-file is shorter than 16 characters; use e.g. `openssl rand -hex 32 > FILE`"))
        }
        if !listen.isLoopback {
            var missing: [String] = []
            if tlsCertificate == nil { missing.append("--tls-cert FILE --tls-key FILE") }
            if token == nil { missing.append("--token-file FILE") }
            if !missing.isEmpty {
                return .failure(.init("refusing to serve the dashboard on \(listen.host), which is not a loopback address, without TLS and an access token: "
                                      + "pass \(missing.joined(separator: " and ")), or listen on 127.0.0.1"))
            }
        }
        return .success(())
    }

    /// Whether a request may see the dashboard: no token configured, or the request carries it as
    /// `Authorization: Bearer TOKEN` or in the `mycelium_dashboard` cookie.
    public func authorized(authorization: String?, cookie: String?) -> Bool {
        guard let token else { return true }
        if let a = authorization, a.hasPrefix("Bearer "), Self.equal(String(a.dropFirst(7)), token) { return true }
        if let c = cookie {
            for part in c.split(separator: ";") {
                let kv = part.trimmingCharacters(in: .whitespaces)
                if kv.hasPrefix(Self.cookieName + "="), Self.equal(String(kv.dropFirst(Self.cookieName.count + 1)), token) { return true }
            }
        }
        return false
    }

    /// Whether `candidate` is the token (for the one-time `/login?token=` that sets the cookie).
    public func matches(_ candidate: String) -> Bool { token.map { Self.equal(candidate, $0) } ?? false }

    public static let cookieName = "mycelium_dashboard"

    /// Constant-time comparison (its time depends on the lengths only).
    static func equal(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        var diff = UInt8(x.count == y.count ? 0 : 1)
        for i in 0..<max(x.count, y.count) { diff |= (i < x.count ? x[i] : 0) ^ (i < y.count ? y[i] : 0) }
        return diff == 0
    }
}
