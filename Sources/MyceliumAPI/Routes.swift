// The local API's vocabulary, shared by the agent (which serves it), the CLI, the tests, the
// benchmarks and the dashboard (which read it). Foundation only: no NIO, no agent internals, so a
// client links nothing it does not need.

import Foundation

/// The endpoints of the agent's local API (HTTP/1.1 + JSON over the unix socket `HOME/agent.sock`).
///
/// The paths are part of the contract with scripts that use `curl --unix-socket`; they never change
/// within `v1`.
public enum APIRoute: Sendable, Equatable {
    /// `GET /v1/status`: the network as this agent sees it (``StatusResponse``).
    case status
    /// `GET /v1/spore`: the primary spore as this agent holds it (``SporeResponse``).
    case spore
    /// `GET /v1/spore/export`: a signed seed spore of it (binary, not JSON).
    case sporeExport
    /// `POST /v1/leave`: this node leaves the network (``ActionResponse``).
    case leave
    /// `POST /v1/vote/failure?node=ID`: asks the network whether `node` has failed (``ActionResponse``).
    case failureVote(node: String)
    /// `GET /metrics`: Prometheus text format.
    case metrics
    /// `GET /v1/membership`: the sclerotia chain, issuances and revocations (``MembershipResponse``).
    case membership
    /// `POST /v1/revoke?node=ID&reason=TEXT`: asks the network to revoke a member (``ActionResponse``).
    case revoke(node: String, reason: String)
    /// `GET /v1/vms`: the VM table (``VMsResponse``).
    case vms
    /// `POST /v1/vm/ACTION?QUERY`: create or delete a VM (``ActionResponse``); QUERY is percent-encoded.
    case vm(action: String, query: String)
    /// `GET /v1/services`: the service table (``ServicesResponse``).
    case services
    /// `POST /v1/service/ACTION?QUERY`: `deploy` (the spec as JSON in the body) or `stop?name=`
    /// (``ActionResponse``).
    case service(action: String, query: String)
    /// `GET /v1/service/logs?name=&instance=&bytes=`: the tail of an instance's log (``ServiceLogsResponse``).
    case serviceLogs(query: String)
    /// `GET /v1/volumes[?name=NAME]`: the volume table (``VolumesResponse``); with a name, that volume with where
    /// the cluster maps it now.
    case volumes(query: String)
    /// `POST /v1/volume/ACTION?QUERY`: `create?name=&size=&class=[&on=]`, `snapshot?name=&snapshot=`, `delete?name=` (``ActionResponse``).
    case volume(action: String, query: String)
    /// `GET /v1/storage`: the storage as the answering node sees it (``StorageStatusResponse``).
    case storage
    /// `GET /v1/backup`: a signed backup of the control state this agent has applied (binary, not
    /// JSON; docs/BACKUP.md).
    case backup
    /// `GET /v1/events[?after=SEQ]`: the events the agent keeps numbered above SEQ (``EventsResponse``).
    case events(query: String)

    /// `/v1/status`.
    public static let statusPath = "/v1/status"
    /// `/v1/spore`.
    public static let sporePath = "/v1/spore"
    /// `/v1/spore/export`.
    public static let sporeExportPath = "/v1/spore/export"
    /// `/v1/leave`.
    public static let leavePath = "/v1/leave"
    /// The failure vote's path up to its node ID: `/v1/vote/failure?node=`.
    public static let failureVotePrefix = "/v1/vote/failure?node="
    /// `/metrics`.
    public static let metricsPath = "/metrics"
    /// `/v1/membership`.
    public static let membershipPath = "/v1/membership"
    /// The revocation's path up to its node ID: `/v1/revoke?node=`.
    public static let revokePrefix = "/v1/revoke?node="
    /// `/v1/vms`.
    public static let vmsPath = "/v1/vms"
    /// The VM commands' path up to the action: `/v1/vm/`.
    public static let vmPrefix = "/v1/vm/"
    /// `/v1/services`.
    public static let servicesPath = "/v1/services"
    /// The service commands' path up to the action: `/v1/service/`.
    public static let servicePrefix = "/v1/service/"
    /// `/v1/service/logs`.
    public static let serviceLogsPath = "/v1/service/logs"
    /// `/v1/volumes`.
    public static let volumesPath = "/v1/volumes"
    /// The volume commands' path up to the action: `/v1/volume/`.
    public static let volumePrefix = "/v1/volume/"
    /// `/v1/storage`.
    public static let storagePath = "/v1/storage"
    /// `/v1/backup`.
    public static let backupPath = "/v1/backup"
    /// `/v1/events`.
    public static let eventsPath = "/v1/events"

    /// The HTTP method the route answers to.
    public var method: String {
        switch self {
        case .status, .spore, .sporeExport, .metrics, .membership, .vms, .services, .serviceLogs, .volumes, .storage, .backup, .events: "GET"
        case .leave, .failureVote, .revoke, .vm, .service, .volume: "POST"
        }
    }

    /// The request target (path and query).
    public var path: String {
        switch self {
        case .status: Self.statusPath
        case .spore: Self.sporePath
        case .sporeExport: Self.sporeExportPath
        case .leave: Self.leavePath
        case .failureVote(let node): Self.failureVotePrefix + node
        case .metrics: Self.metricsPath
        case .membership: Self.membershipPath
        case let .revoke(node, reason): Self.revokePrefix + node + "&reason=" + reason
        case .vms: Self.vmsPath
        case let .vm(action, query): Self.vmPrefix + action + (query.isEmpty ? "" : "?" + query)
        case .services: Self.servicesPath
        case let .service(action, query): Self.servicePrefix + action + (query.isEmpty ? "" : "?" + query)
        case let .serviceLogs(query): Self.serviceLogsPath + (query.isEmpty ? "" : "?" + query)
        case let .volumes(query): Self.volumesPath + (query.isEmpty ? "" : "?" + query)
        case let .volume(action, query): Self.volumePrefix + action + (query.isEmpty ? "" : "?" + query)
        case .storage: Self.storagePath
        case .backup: Self.backupPath
        case let .events(query): Self.eventsPath + (query.isEmpty ? "" : "?" + query)
        }
    }

    /// The route a request names, or nil for an unknown method or target.
    public init?(method: String, target: String) {
        switch (method, target) {
        case ("GET", Self.statusPath): self = .status
        case ("GET", Self.sporePath): self = .spore
        case ("GET", Self.sporeExportPath): self = .sporeExport
        case ("GET", Self.metricsPath): self = .metrics
        case ("GET", Self.membershipPath): self = .membership
        case ("GET", Self.vmsPath): self = .vms
        case ("GET", Self.servicesPath): self = .services
        case ("GET", _) where target == Self.serviceLogsPath || target.hasPrefix(Self.serviceLogsPath + "?"):
            self = .serviceLogs(query: String(target.dropFirst(Self.serviceLogsPath.count + 1)))
        case ("GET", Self.storagePath): self = .storage
        case ("GET", Self.backupPath): self = .backup
        case ("GET", _) where target == Self.eventsPath || target.hasPrefix(Self.eventsPath + "?"):
            self = .events(query: String(target.dropFirst(Self.eventsPath.count + 1)))
        case ("GET", _) where target == Self.volumesPath || target.hasPrefix(Self.volumesPath + "?"):
            self = .volumes(query: String(target.dropFirst(Self.volumesPath.count + 1)))
        case ("POST", _) where target.hasPrefix(Self.volumePrefix):
            let rest = target.dropFirst(Self.volumePrefix.count)
            let action = rest.prefix { $0 != "?" }
            guard !action.isEmpty, action.allSatisfy({ $0.isLetter }) else { return nil }
            self = .volume(action: String(action), query: String(rest.dropFirst(action.count + 1)))
        case ("POST", _) where target.hasPrefix(Self.servicePrefix):
            let rest = target.dropFirst(Self.servicePrefix.count)
            let action = rest.prefix { $0 != "?" }
            guard !action.isEmpty, action.allSatisfy({ $0.isLetter }) else { return nil }
            self = .service(action: String(action), query: String(rest.dropFirst(action.count + 1)))
        case ("POST", _) where target.hasPrefix(Self.vmPrefix):
            let rest = target.dropFirst(Self.vmPrefix.count)
            let action = rest.prefix { $0 != "?" }
            guard !action.isEmpty, action.allSatisfy({ $0.isLetter }) else { return nil }
            self = .vm(action: String(action), query: String(rest.dropFirst(action.count + 1)))
        case ("POST", _) where target.hasPrefix(Self.revokePrefix):
            let rest = target.dropFirst(Self.revokePrefix.count)
            if let amp = rest.firstIndex(of: "&"), rest[amp...].hasPrefix("&reason=") {
                self = .revoke(node: String(rest[..<amp]), reason: String(rest[amp...].dropFirst("&reason=".count)))
            } else {
                self = .revoke(node: String(rest), reason: "")
            }
        case ("POST", Self.leavePath): self = .leave
        case ("POST", _) where target.hasPrefix(Self.failureVotePrefix):
            self = .failureVote(node: String(target.dropFirst(Self.failureVotePrefix.count)))
        default: return nil
        }
    }
}

/// The JSON coders of the API: snake_case keys (spelled out in each type's `CodingKeys`), sorted and
/// pretty printed, as the agent has always answered, so diffs of saved outputs stay meaningful.
public enum APIJSON {
    /// Encodes an API value exactly as the agent sends it.
    public static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        return Array(try encoder.encode(value))
    }

    /// Decodes an API value; fields this version does not know are ignored (forward compatibility).
    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try JSONDecoder().decode(type, from: Data(bytes))
    }
}
