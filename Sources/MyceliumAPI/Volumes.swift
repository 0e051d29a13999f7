// The storage part of the local API (issue 18): volumes as the network records them, and the storage
// as the answering node sees it. The records are Raft-committed (MyceliumControl's VolumeTable).

import Foundation

/// One volume.
public struct VolumeInfo: Codable, Sendable, Equatable {
    public var name: String
    public var sizeBytes: UInt64
    public var dataClass: String
    /// "local" or "ceph".
    public var driver: String
    /// "creating", "ready", "failed", "snapshotting", "deleting".
    public var state: String
    /// The node whose disk holds a local volume; for Ceph the node that created it.
    public var home: String
    /// Where the data is: "HOME/volumes/NAME.img on NODE" or "pool mycelium-CLASS, image NAME".
    public var location: String
    public var snapshots: [String]
    /// The pending task, if any: "snapshot s1 by NODE".
    public var task: String?
    /// How the last task ended.
    public var message: String
    /// The VM whose disk it is, if any.
    public var usedBy: String?
    /// Where its replicas are and why (Ceph: the class's qualifying hosts; local: one copy).
    public var placement: String
    /// Ceph: where the cluster maps the volume's first object now (acting OSDs' hosts); only in `show`.
    public var replicas: [String]?

    public init(name: String, sizeBytes: UInt64, dataClass: String, driver: String, state: String, home: String, location: String,
                snapshots: [String], task: String?, message: String, usedBy: String?, placement: String, replicas: [String]? = nil) {
        self.name = name; self.sizeBytes = sizeBytes; self.dataClass = dataClass; self.driver = driver; self.state = state
        self.home = home; self.location = location; self.snapshots = snapshots; self.task = task; self.message = message
        self.usedBy = usedBy; self.placement = placement; self.replicas = replicas
    }

    enum CodingKeys: String, CodingKey {
        case name, driver, state, home, location, snapshots, task, message, placement, replicas
        case sizeBytes = "size_bytes"
        case dataClass = "class"
        case usedBy = "used_by"
    }
}

/// `GET /v1/volumes`.
public struct VolumesResponse: Codable, Sendable, Equatable {
    public var volumes: [VolumeInfo]
    public init(volumes: [VolumeInfo]) { self.volumes = volumes }
}

/// A data class and where it stands.
public struct DataClassInfo: Codable, Sendable, Equatable {
    public var name: String
    public var minTrust: Double
    public var replicas: Int
    /// "healthy", "degraded", "blocked", "unplaceable", or "local".
    public var status: String
    public var hosts: [String]
    public var message: String
    public init(name: String, minTrust: Double, replicas: Int, status: String, hosts: [String], message: String) {
        self.name = name; self.minTrust = minTrust; self.replicas = replicas; self.status = status; self.hosts = hosts; self.message = message
    }
    enum CodingKeys: String, CodingKey {
        case name, replicas, status, hosts, message
        case minTrust = "min_trust"
    }
}

/// A member that holds (or could hold) storage.
public struct StorageNodeEntry: Codable, Sendable, Equatable {
    public var node: String
    public var status: String
    public var trust: Double
    /// The CRUSH host of its OSDs ("" none).
    public var cephHost: String
    public var ceph: Bool
    /// The classes it holds data of, per the last placement decision.
    public var classes: [String]
    public var problem: String
    public init(node: String, status: String, trust: Double, cephHost: String, ceph: Bool, classes: [String], problem: String) {
        self.node = node; self.status = status; self.trust = trust; self.cephHost = cephHost; self.ceph = ceph; self.classes = classes; self.problem = problem
    }
    enum CodingKeys: String, CodingKey {
        case node, status, trust, ceph, classes, problem
        case cephHost = "ceph_host"
    }
}

/// The Ceph cluster as the answering node reads it.
public struct CephStatusInfo: Codable, Sendable, Equatable {
    public var health: String
    public var checks: [String]
    public var osds: Int
    public var osdsUp: Int
    public var osdsIn: Int
    public var pgs: Int
    public var pgsNotClean: Int
    public var pgStates: [String: Int]
    public var bytesTotal: UInt64
    public var bytesUsed: UInt64
    public var bytesAvailable: UInt64
    public init(health: String, checks: [String], osds: Int, osdsUp: Int, osdsIn: Int, pgs: Int, pgsNotClean: Int, pgStates: [String: Int],
                bytesTotal: UInt64, bytesUsed: UInt64, bytesAvailable: UInt64) {
        self.health = health; self.checks = checks; self.osds = osds; self.osdsUp = osdsUp; self.osdsIn = osdsIn; self.pgs = pgs
        self.pgsNotClean = pgsNotClean; self.pgStates = pgStates; self.bytesTotal = bytesTotal; self.bytesUsed = bytesUsed; self.bytesAvailable = bytesAvailable
    }
    enum CodingKeys: String, CodingKey {
        case health, checks, osds, pgs
        case osdsUp = "osds_up"
        case osdsIn = "osds_in"
        case pgsNotClean = "pgs_not_clean"
        case pgStates = "pg_states"
        case bytesTotal = "bytes_total"
        case bytesUsed = "bytes_used"
        case bytesAvailable = "bytes_available"
    }
}

/// `GET /v1/storage`.
public struct StorageStatusResponse: Codable, Sendable, Equatable {
    /// The answering node's storage: "local only", "ceph (client.admin via /etc/ceph/ceph.conf)".
    public var node: String
    public var ceph: CephStatusInfo?
    /// Why the cluster could not be read, if it could not.
    public var cephError: String?
    public var classes: [DataClassInfo]
    public var nodes: [StorageNodeEntry]
    /// The last placement decision: "3: carried out (2 CRUSH/pool changes applied)".
    public var placement: String
    public var volumes: Int
    /// What the operator should do, most urgent first (empty: nothing).
    public var advice: [String]
    public init(node: String, ceph: CephStatusInfo?, cephError: String?, classes: [DataClassInfo], nodes: [StorageNodeEntry],
                placement: String, volumes: Int, advice: [String]) {
        self.node = node; self.ceph = ceph; self.cephError = cephError; self.classes = classes; self.nodes = nodes
        self.placement = placement; self.volumes = volumes; self.advice = advice
    }
    enum CodingKeys: String, CodingKey {
        case node, ceph, classes, nodes, placement, volumes, advice
        case cephError = "ceph_error"
    }
}

extension AgentClient {
    /// `GET /v1/volumes` (with a name: that volume only, with where the cluster maps it now).
    public func volumes(name: String? = nil) async throws -> VolumesResponse {
        let body = try await send(.volumes(query: name.map { APIQuery.encode([("name", $0)]) } ?? ""))
        do { return try APIJSON.decode(VolumesResponse.self, from: body) } catch {
            throw AgentClientError(.malformedAnswer, "the agent answered /v1/volumes with JSON this client cannot read (\(error))")
        }
    }

    /// `POST /v1/volume/ACTION?QUERY`: create, snapshot or delete.
    public func volume(_ action: String, _ parameters: [(String, String)]) async throws -> ActionResponse {
        let body = try await send(.volume(action: action, query: APIQuery.encode(parameters)))
        do { return try APIJSON.decode(ActionResponse.self, from: body) } catch {
            throw AgentClientError(.malformedAnswer, "the agent answered /v1/volume/\(action) with JSON this client cannot read (\(error))")
        }
    }

    /// `GET /v1/storage`.
    public func storage() async throws -> StorageStatusResponse {
        let body = try await send(.storage)
        do { return try APIJSON.decode(StorageStatusResponse.self, from: body) } catch {
            throw AgentClientError(.malformedAnswer, "the agent answered /v1/storage with JSON this client cannot read (\(error))")
        }
    }
}
