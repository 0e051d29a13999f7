// The network's K3s cluster in the control state (issue 17, the `k3s` driver): which member runs the
// K3s server, the URL the other K3s nodes join, the join token, and what the server last read of each
// k3s service's Deployment. Part of the service table (and of its snapshot blob), replicated by Raft
// to the members only: the seed spores carry the primary spore, never this table, so the token never
// leaves the members.
//
// Who writes what:
//  - `ServiceCommand.k3sServer`: a node claims the server role for itself (the leader proposes it only
//    for the node that sent it). The first claim wins; later claims by others are refused, so two
//    nodes never both run a server of one network. The record is dropped when its node leaves the
//    spore for good, and another node may claim then (a new, empty K3s cluster: see docs/SERVICES.md).
//  - `ServiceCommand.k3sStatus`: the server node's reading of its Deployments (only from that node).
//
// The token is a secret: `K3sToken` prints as "<redacted>" and no refusal or event names it.

import MyceliumCore
import MyceliumIdentity
import MyceliumSpores

/// K3s's join token: every K3s node presents it to the server. Printing it (description, debug
/// description, reflection) shows "<redacted>", so it cannot reach a log, an API answer or an error by
/// string interpolation; only `secret` reveals it, for the driver that writes K3s's config.yaml.
public struct K3sToken: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public let secret: String
    public static let maxBytes = 256
    public init(secret: String) { self.secret = secret }
    public var description: String { "<redacted>" }
    public var debugDescription: String { "<redacted>" }
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }

    /// Why `text` cannot be a token, or nil. K3s reads it from YAML and from its own token format:
    /// printable ASCII without spaces, quotes or backslashes keeps it one plain scalar everywhere.
    public static func problem(_ text: String) -> String? {
        let u = Array(text.utf8)
        if u.count < 16 || u.count > maxBytes { return "a K3s token is 16 to \(maxBytes) bytes" }
        if !u.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "'") && $0 != UInt8(ascii: "\\") }) {
            return "a K3s token is printable ASCII without spaces, quotes or backslashes"
        }
        return nil
    }
}

/// What the K3s server read of one k3s service's Deployment.
public struct K3sWorkloadStatus: Sendable, Equatable {
    public var name: String
    /// The service generation the Deployment was applied at (its `mycelium.io/generation` annotation).
    public var generation: UInt64
    /// Pods ready (`status.readyReplicas`).
    public var ready: UInt16
    /// What the operator should know ("" when all is well): an API error, a failed apply.
    public var message: String
    public init(name: String, generation: UInt64, ready: UInt16, message: String = "") {
        self.name = name; self.generation = generation; self.ready = ready; self.message = VMMigration.clipped(message, 200)
    }

    func encode(into w: inout ByteWriter) { w.string(name); w.u64(generation); w.u16(ready); w.string(message) }
    static func decode(_ r: inout ByteReader) throws -> K3sWorkloadStatus {
        K3sWorkloadStatus(name: try r.string("service name", limit: 63), generation: try r.u64(), ready: try r.u16(),
                          message: try r.string("k3s message", limit: 200))
    }
}

/// The network's K3s cluster.
public struct K3sCluster: Sendable, Equatable {
    /// The member that runs the K3s server.
    public var server: NodeID
    /// Where K3s agents join it ("https://ADDRESS:6443").
    public var url: String
    public var token: K3sToken
    /// Per k3s service, the server's last reading of its Deployment.
    public var workloads: [String: K3sWorkloadStatus] = [:]

    public init(server: NodeID, url: String, token: K3sToken) { self.server = server; self.url = url; self.token = token }

    /// Why `url` cannot be a K3s server URL, or nil.
    public static func urlProblem(_ url: String) -> String? {
        guard url.hasPrefix("https://"), url.utf8.count <= 200, !url.contains(" "), !url.contains("\"") else {
            return "a K3s server URL is https://HOST:PORT (at most 200 bytes)"
        }
        return nil
    }

    func encode(into w: inout ByteWriter) {
        w.raw(server.bytes); w.string(url); w.string(token.secret)
        w.u32(UInt32(workloads.count))
        for (_, s) in workloads.sorted(by: { $0.key < $1.key }) { s.encode(into: &w) }
    }

    static func decode(_ r: inout ByteReader) throws -> K3sCluster {
        var c = K3sCluster(server: try NodeID(bytes: r.raw(16)), url: try r.string("k3s url", limit: 200),
                           token: K3sToken(secret: try r.string("k3s token", limit: K3sToken.maxBytes)))
        let n = Int(try r.u32())
        if n > ServiceTable.maxServices { throw DecodeError(.tooLong(field: "k3s workloads", length: n, limit: ServiceTable.maxServices), at: r.offset) }
        for _ in 0..<n { let s = try K3sWorkloadStatus.decode(&r); c.workloads[s.name] = s }
        return c
    }
}

extension ServiceTable {
    /// Applies a K3s command (ServiceTable.apply hands them here). Refusals never name the token.
    mutating func applyK3s(_ command: ServiceCommand, spore: PrimarySpore) throws(ControlError) -> [ControlChange] {
        func refuse(_ why: String) -> ControlError { ControlError(.serviceRefused(why)) }
        switch command {
        case let .k3sServer(node, url, token):
            guard spore.members[node] != nil else { throw refuse("\(node) is not a member") }
            if let p = K3sCluster.urlProblem(url) ?? K3sToken.problem(token.secret) { throw refuse(p) }
            if let c = k3s {
                if c.server == node && c.url == url && c.token == token { return [] }
                if c.server != node { throw refuse("the K3s server of this network is \(c.server) already") }
                throw refuse("\(node) runs the K3s server already; its URL and token do not change")
            }
            guard nodes[node]?.drivers.contains(.k3s) == true else {
                throw refuse("\(node) does not offer the k3s driver (no k3s binary on its PATH); it cannot be the K3s server")
            }
            k3s = K3sCluster(server: node, url: url, token: token)
            return [.serviceNode(node)]
        case let .k3sStatus(node, statuses):
            guard let c = k3s, c.server == node else { throw refuse("\(node) is not the K3s server; only the server reports Deployments") }
            var next = c
            var changed: [String] = []
            for s in statuses {
                guard let r = services[s.name], r.spec.driver == .k3s else { continue }
                if next.workloads[s.name] != s { next.workloads[s.name] = s; changed.append(s.name) }
            }
            k3s = next
            return changed.sorted().map { .service(name: $0, services[$0]) }
        default:
            return []
        }
    }
}
