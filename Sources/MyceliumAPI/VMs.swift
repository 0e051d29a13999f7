// The VM part of the local API (issue 16): the VM table as the agent holds it, and the operator's
// commands on it. The records are Raft-committed (MyceliumControl's VMTable); these are their views.

import Foundation

/// One endophyte VM as the network records it.
public struct VMInfo: Codable, Sendable, Equatable {
    public var name: String
    public var memoryMiB: UInt32
    public var vcpus: UInt16
    public var kernel: String
    public var initrd: String
    public var cmdline: String
    /// The node that runs it (owns it at `epoch`).
    public var primary: String
    /// The node that holds its replicated image, if any.
    public var replica: String?
    /// The ownership epoch: the fencing token, bumped at every failover and migration.
    public var epoch: UInt64
    /// Milliseconds of control time left on the primary's ownership lease (0: lapsed or never held).
    public var leaseLeftMillis: Int64
    /// "protected" (a replica is assigned) or "unprotected: REASON".
    public var protection: String
    /// What the answering node does with it, if anything: "primary: protected (engine hash ...)",
    /// "replica: image at epoch 812", "fenced: ...".
    public var here: String?
    /// A planned migration in progress: "to NODE (requested N s ago)".
    public var migration: String?
    /// How the last planned migration ended ("switched to ...", "aborted: ..."), if there was one.
    public var lastMigration: String?
    /// Replication as the primary sees it; only on the node that runs the VM (ask its agent).
    public var replication: VMReplicationInfo?
    /// The volume it has as its data disk, if any.
    public var disk: String?

    public init(name: String, memoryMiB: UInt32, vcpus: UInt16, kernel: String, initrd: String, cmdline: String,
                primary: String, replica: String?, epoch: UInt64, leaseLeftMillis: Int64, protection: String, here: String? = nil,
                migration: String? = nil, lastMigration: String? = nil, replication: VMReplicationInfo? = nil) {
        self.name = name; self.memoryMiB = memoryMiB; self.vcpus = vcpus; self.kernel = kernel; self.initrd = initrd
        self.cmdline = cmdline; self.primary = primary; self.replica = replica; self.epoch = epoch
        self.leaseLeftMillis = leaseLeftMillis; self.protection = protection; self.here = here
        self.migration = migration; self.lastMigration = lastMigration; self.replication = replication
    }

    enum CodingKeys: String, CodingKey {
        case name, vcpus, kernel, initrd, cmdline, primary, replica, epoch, protection, here, migration, replication, disk
        case memoryMiB = "memory_mib"
        case leaseLeftMillis = "lease_left_ms"
        case lastMigration = "last_migration"
    }
}

/// A primary's replication of one VM: what `vm show` reports on the node that runs it.
public struct VMReplicationInfo: Codable, Sendable, Equatable {
    /// The replica's last committed checkpoint (the engine's epoch).
    public var committedEpoch: UInt64
    /// Milliseconds since that checkpoint: what a crash of this host would lose now (the RPO).
    public var rpoMilliseconds: Double?
    /// Checkpoint pauses over the last minute (milliseconds), and how many.
    public var pauseP50Milliseconds: Double?
    public var pauseP99Milliseconds: Double?
    public var epochsLastMinute: Int
    /// Replication traffic over the last minute.
    public var bytesPerSecond: Double?
    /// 0…100: how much the guest is slowed so the replica keeps up.
    public var throttlePercent: Double?
    /// While the replica is being brought up to date (the first full copy, a resync, or the new replica
    /// of a migration): bytes of guest memory sent so far and in all (nil: not syncing now).
    public var syncBytesDone: UInt64?
    public var syncBytesTotal: UInt64?

    public init(committedEpoch: UInt64, rpoMilliseconds: Double?, pauseP50Milliseconds: Double?, pauseP99Milliseconds: Double?,
                epochsLastMinute: Int, bytesPerSecond: Double?, throttlePercent: Double?) {
        self.committedEpoch = committedEpoch; self.rpoMilliseconds = rpoMilliseconds
        self.pauseP50Milliseconds = pauseP50Milliseconds; self.pauseP99Milliseconds = pauseP99Milliseconds
        self.epochsLastMinute = epochsLastMinute; self.bytesPerSecond = bytesPerSecond; self.throttlePercent = throttlePercent
    }

    enum CodingKeys: String, CodingKey {
        case committedEpoch = "committed_epoch", rpoMilliseconds = "rpo_ms", pauseP50Milliseconds = "pause_p50_ms"
        case pauseP99Milliseconds = "pause_p99_ms", epochsLastMinute = "epochs_last_minute", bytesPerSecond = "bytes_per_s"
        case throttlePercent = "throttle_pct", syncBytesDone = "sync_bytes_done", syncBytesTotal = "sync_bytes_total"
    }
}

extension VMReplicationInfo {
    /// The sync's bytes sent and in all, for a progress bar (nil: not syncing, or an agent older than them).
    public var syncProgress: (done: Double, total: Double)? {
        guard let done = syncBytesDone, let total = syncBytesTotal, total > 0 else { return nil }
        return (Double(min(done, total)), Double(total))
    }
}

/// `GET /v1/vms`.
public struct VMsResponse: Codable, Sendable, Equatable {
    public var vms: [VMInfo]
    public init(vms: [VMInfo]) { self.vms = vms }
}

extension APIErrorCode {
    /// 409: the network refused the VM command (the message says why: a name taken, a node not live,
    /// not enough memory, a stale epoch).
    public static let vmRefused = APIErrorCode(rawValue: "vm_refused")
    /// 400: the request is malformed (a missing or unreadable parameter).
    public static let badRequest = APIErrorCode(rawValue: "bad_request")
    /// 503: no leader is reachable to propose it; retry once the network has one.
    public static let noLeader = APIErrorCode(rawValue: "no_leader")
}

/// Query strings of the API: `a=1&b=x%20y` → ["a": "1", "b": "x y"]. A repeated key keeps its last value.
public enum APIQuery {
    public static func parse(_ query: Substring) -> [String: String] {
        var out: [String: String] = [:]
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(kv[0]).removingPercentEncoding ?? String(kv[0])
            let value = kv.count > 1 ? (String(kv[1]).removingPercentEncoding ?? String(kv[1])) : ""
            out[key] = value
        }
        return out
    }

    /// `[("a", "1"), ("b", "x y")]` → `a=1&b=x%20y`, every value percent-encoded.
    public static func encode(_ pairs: [(String, String)]) -> String {
        pairs.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: unreserved) ?? "")" }.joined(separator: "&")
    }

    static let unreserved = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
}

extension AgentClient {
    /// `GET /v1/vms`.
    public func vms() async throws -> VMsResponse {
        let body = try await send(.vms)
        do { return try APIJSON.decode(VMsResponse.self, from: body) } catch {
            throw AgentClientError(.malformedAnswer, "the agent answered /v1/vms with JSON this client cannot read (\(error))")
        }
    }

    /// `POST /v1/vm/ACTION?PARAMETERS` (create, delete): the network's answer, or the refusal as an error.
    public func vm(_ action: String, _ parameters: [(String, String)]) async throws -> ActionResponse {
        let body = try await send(.vm(action: action, query: APIQuery.encode(parameters)))
        do { return try APIJSON.decode(ActionResponse.self, from: body) } catch {
            throw AgentClientError(.malformedAnswer, "the agent answered /v1/vm/\(action) with JSON this client cannot read (\(error))")
        }
    }
}
