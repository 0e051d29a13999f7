// The storage driver: carries out the storage planner's decisions on a real Ceph cluster. It reads
// the CRUSH map and the pools from the monitors (`osd crush dump`, `osd dump`), turns each
// `StorageAction` into one monitor command through MyceliumRBD (no `ceph` subprocess), and asks the
// cluster where an object's replicas are (`osd map`) so callers can check placement with the
// cluster's own mapping.
//
// Idempotent: every action it sends is a no-op when it already holds (Ceph answers "already
// exists" / "no need to move" with success), and `reconcile` re-reads the cluster afterwards and
// fails unless a fresh plan has nothing left to do.
//
// Not here yet (docs/STORAGE.md): the leader's Raft-committed decision and the agent hosting this
// as a controller; this driver is what that controller will call.

import Foundation
import MyceliumRBD
import StorageController

/// The driver's one error type.
public enum StorageDriverError: Error, Sendable, CustomStringConvertible {
    /// The planner refused the input (bad class or host): nothing was sent to Ceph.
    case plan(StoragePlanError)
    /// Ceph refused or failed a command; `step` says which.
    case ceph(step: String, error: RBDError)
    /// A monitor's answer could not be read (a Ceph version this driver does not know?).
    case unexpectedOutput(command: String, reason: String)
    /// After applying, the cluster still differs from the plan (another writer changed it at the
    /// same time, or Ceph ignored a command).
    case notConverged(applied: [StorageAction], remaining: [StorageAction])

    public var description: String {
        switch self {
        case .plan(let e): return "storage: \(e) (nothing was changed)"
        case .ceph(let step, let e): return "storage: \(step): \(e)"
        case .unexpectedOutput(let c, let r):
            return "storage: cannot read the monitor's answer to '\(c)': \(r); is this Ceph 16.2 (Pacific)?"
        case .notConverged(let applied, let remaining):
            return "storage: applied \(applied.count) changes but the cluster still needs: "
                + remaining.map(\.description).joined(separator: "; ")
                + "; something else changed the CRUSH map or pools at the same time: run again, and check 'ceph osd tree'"
        }
    }
}

/// Where the cluster puts one object's replicas.
public struct ObjectPlacement: Sendable, Equatable, CustomStringConvertible {
    public let pool: String
    public let object: String
    public let pg: String
    /// The OSDs CRUSH maps the placement group to now.
    public let up: [Int]
    /// The OSDs serving it now (differs from `up` while data is still moving).
    public let acting: [Int]
    /// The CRUSH hosts of `acting`, in the same order ("?" for an OSD in no host).
    public let actingHosts: [String]

    public var description: String {
        "\(pool)/\(object) → pg \(pg), up \(up), acting \(acting) on \(actingHosts.joined(separator: ","))"
    }
}

/// What `reconcile` did.
public struct StorageReconcileReport: Sendable, Equatable {
    /// The actions sent, in order (empty when the cluster already matched).
    public let applied: [StorageAction]
    /// Each class's standing in the cluster as it is now.
    public let verdicts: [ClassVerdict]
    /// The layout read back after applying.
    public let layout: CrushLayout

    public func verdict(for className: String) -> ClassVerdict? { verdicts.first { $0.className == className } }
}

public struct CephStorageDriver: Sendable {
    public let connection: CephConnection

    public init(connection: CephConnection) { self.connection = connection }

    // MARK: observing

    /// The CRUSH buckets, links and rules, and the pools, as the monitors report them now.
    public func observe() async throws(StorageDriverError) -> CrushLayout {
        let crush = try await crushDump()
        let pools: OSDDump = try await json("osd dump", OSDDump.self)
        return CephLayout.layout(crush: crush, pools: pools.pools)
    }

    /// OSD id → the CRUSH host it is in.
    public func osdHosts() async throws(StorageDriverError) -> [Int: String] {
        CephLayout.osdHosts(try await crushDump())
    }

    /// Where the cluster maps `object` in `pool` (`osd map`), with the acting OSDs' hosts.
    public func placement(pool: String, object: String) async throws(StorageDriverError) -> ObjectPlacement {
        let m: OSDMap = try await json("osd map", OSDMap.self, ["pool": .string(pool), "object": .string(object)])
        let hosts = try await osdHosts()
        return ObjectPlacement(pool: pool, object: object, pg: m.pgid, up: m.up, acting: m.acting,
                               actingHosts: m.acting.map { hosts[$0] ?? "?" })
    }

    // MARK: acting

    /// Observes, plans, applies the plan's actions in order, then reads the cluster back and checks
    /// that a fresh plan has nothing left to do. Invalid input fails before anything is sent.
    public func reconcile(hosts: [StorageHost], classes: [DataClass],
                          planner: StoragePlanner = StoragePlanner()) async throws(StorageDriverError) -> StorageReconcileReport {
        let before = try await observe()
        let plan: StoragePlan
        do { plan = try planner.plan(hosts: hosts, classes: classes, observed: before) } catch { throw .plan(error) }
        try await applyBatched(plan.actions)
        let after = plan.actions.isEmpty ? before : try await observe()
        let check: StoragePlan
        do { check = try planner.plan(hosts: hosts, classes: classes, observed: after) } catch { throw .plan(error) }
        guard check.actions.isEmpty else { throw .notConverged(applied: plan.actions, remaining: check.actions) }
        return StorageReconcileReport(applied: plan.actions, verdicts: check.verdicts, layout: after)
    }

    /// Carries out `actions` in the plan's order, but sends what does not depend on each other at
    /// once: each run of one kind (roots, links, rules, pool changes, unlinks) is one batch, and within
    /// a batch the actions on one object (one pool's create, min_size and application) stay in order
    /// while different objects' go together. The monitor folds concurrent changes into one OSD map
    /// commit, so a first placement takes a commit per batch instead of one per action. The first
    /// error fails the whole call after the batch's other commands have returned.
    public func applyBatched(_ actions: [StorageAction]) async throws(StorageDriverError) {
        for batch in Self.batches(actions) {
            let errors: [StorageDriverError] = await withTaskGroup(of: StorageDriverError?.self) { group in
                for chain in batch {
                    group.addTask {
                        for a in chain {
                            do throws(StorageDriverError) { try await self.apply(a) } catch { return error }
                        }
                        return nil
                    }
                }
                var out: [StorageDriverError] = []
                for await e in group { if let e { out.append(e) } }
                return out
            }
            if let e = errors.first { throw e }
        }
    }

    /// Batches (in order) of chains (concurrent) of actions (in order); see `applyBatched`.
    static func batches(_ actions: [StorageAction]) -> [[[StorageAction]]] {
        func phase(_ a: StorageAction) -> Int {
            switch a {
            case .createRoot: 0
            case .link: 1
            case .createRule: 2
            case .createPool, .setPoolSize, .setPoolMinSize, .enableApplication: 3
            case .unlink: 4
            }
        }
        func key(_ a: StorageAction) -> String {
            switch a {
            case .createRoot(let r): "root \(r)"
            case .link(let h, let r), .unlink(let h, let r): "host \(h) in \(r)"
            case .createRule(let rule, _): "rule \(rule)"
            case .createPool(let p, _, _, _), .setPoolSize(let p, _), .setPoolMinSize(let p, _), .enableApplication(let p, _): "pool \(p)"
            }
        }
        var out: [[[StorageAction]]] = []
        var current: [(String, [StorageAction])] = []
        var currentPhase = -1
        for a in actions {
            if phase(a) != currentPhase, !current.isEmpty {
                out.append(current.map(\.1)); current = []
            }
            currentPhase = phase(a)
            if let i = current.firstIndex(where: { $0.0 == key(a) }) { current[i].1.append(a) } else { current.append((key(a), [a])) }
        }
        if !current.isEmpty { out.append(current.map(\.1)) }
        return out
    }

    /// Carries out one action as one monitor command; a no-op when it already holds.
    public func apply(_ action: StorageAction) async throws(StorageDriverError) {
        let (prefix, args) = Self.command(for: action)
        do {
            _ = try await connection.monitorCommand(prefix, args, operation: action.description)
        } catch {
            // Unlinking what is not linked there is done already.
            if case .unlink = action, case .notFound = error { return }
            throw .ceph(step: action.description, error: error)
        }
    }

    /// The monitor command of an action (names as in Ceph 16.2's MonCommands.h).
    static func command(for action: StorageAction) -> (String, [String: MonitorArgument]) {
        switch action {
        case .createRoot(let root):
            return ("osd crush add-bucket", ["name": .string(root), "type": .string("root")])
        case .link(let host, let root):
            return ("osd crush link", ["name": .string(host), "args": .strings(["root=\(root)"])])
        case .unlink(let host, let root):
            return ("osd crush unlink", ["name": .string(host), "ancestor": .string(root)])
        case .createRule(let rule, let root):
            return ("osd crush rule create-replicated",
                    ["name": .string(rule), "root": .string(root), "type": .string(StoragePlanner.failureDomain)])
        case .createPool(let pool, let rule, let pgs, let size):
            return ("osd pool create", ["pool": .string(pool), "pg_num": .int(pgs), "pgp_num": .int(pgs),
                                        "pool_type": .string("replicated"), "rule": .string(rule), "size": .int(size)])
        case .setPoolSize(let pool, let size):
            return ("osd pool set", ["pool": .string(pool), "var": .string("size"), "val": .string(String(size))])
        case .setPoolMinSize(let pool, let minSize):
            return ("osd pool set", ["pool": .string(pool), "var": .string("min_size"), "val": .string(String(minSize))])
        case .enableApplication(let pool, let app):
            return ("osd pool application enable", ["pool": .string(pool), "app": .string(app)])
        }
    }

    // MARK: monitor JSON

    func crushDump() async throws(StorageDriverError) -> CrushDump { try await json("osd crush dump", CrushDump.self) }

    func json<T: Decodable>(_ prefix: String, _ type: T.Type, _ args: [String: MonitorArgument] = [:]) async throws(StorageDriverError) -> T {
        var a = args
        a["format"] = .string("json")
        let reply: MonitorReply
        do { reply = try await connection.monitorCommand(prefix, a) } catch { throw .ceph(step: "read '\(prefix)'", error: error) }
        do {
            return try JSONDecoder().decode(T.self, from: Data(reply.output.utf8))
        } catch {
            throw .unexpectedOutput(command: prefix, reason: "\(error) in \(reply.output.prefix(200))")
        }
    }
}
