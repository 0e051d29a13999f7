// Volumes in the control state (issue 18): what the network stores, where, what is being done to it,
// and the leader's trust-aware placement decisions. Pure, replicated by Raft like the VM table.
//
// Every change to storage is a task with one executor, decided here and carried out once:
//   - an operator's create, snapshot or delete is proposed by the leader with the node that is to
//     carry it out (a local volume's home; for Ceph a node with the cluster configured, the leader
//     when it has it); that node's storage driver does it and reports the outcome (`taskDone`),
//     which only the executor may report and only for the task it was given;
//   - a placement decision (which CRUSH host belongs in which data class's root, from the members'
//     trust) is proposed by the leader when trust or membership changed what qualifies; its
//     executor moves the hosts and reports `placementDone`.
// A task whose executor failed is handed to another node by the leader (`retask`, a compare-and-swap
// on the task id), and a newer placement supersedes an older one, so nothing waits on a dead node.
// Drivers make every step idempotent (creating what exists with the same size, deleting what is gone),
// so a task carried out again after a crash changes nothing twice.

import MyceliumCore
import MyceliumIdentity
import MyceliumSpores

/// Which storage holds a volume.
public enum VolumeDriverKind: UInt8, Sendable, CustomStringConvertible, CaseIterable {
    /// A file in its home node's HOME/volumes: one copy, on one node (the embedded default).
    case local = 1
    /// An RBD image in its data class's pool on the network's Ceph cluster.
    case ceph = 2
    public var description: String { switch self { case .local: "local"; case .ceph: "ceph" } }
}

/// What the operator asked for.
public struct VolumeSpec: Sendable, Equatable {
    public var name: String
    public var sizeBytes: UInt64
    /// The data class (placement and replicas); `local` for the local driver.
    public var dataClass: String
    public var driver: VolumeDriverKind

    public static let minSize: UInt64 = 1 << 20
    /// 64 TiB: more than a node here could ever hold, and far below librbd's limits.
    public static let maxSize: UInt64 = 64 << 40
    public static let localClass = "local"

    public init(name: String, sizeBytes: UInt64, dataClass: String, driver: VolumeDriverKind) {
        self.name = name; self.sizeBytes = sizeBytes; self.dataClass = dataClass; self.driver = driver
    }

    /// Why this spec cannot be stored, or nil. Names are what `rbd ls` and a file name can show:
    /// 1-63 of [a-z0-9-], starting with a letter.
    public var problem: String? {
        if let p = Self.nameProblem(name, what: "volume") { return p }
        if sizeBytes < Self.minSize { return "a volume is at least 1 MiB (asked: \(sizeBytes) bytes)" }
        if sizeBytes > Self.maxSize { return "a volume is at most 64 TiB (asked: \(sizeBytes) bytes)" }
        if sizeBytes % 512 != 0 { return "a volume's size is a whole number of 512-byte sectors (asked: \(sizeBytes) bytes)" }
        if let p = Self.nameProblem(dataClass, what: "data class", limit: 32) { return p }
        if (driver == .local) != (dataClass == Self.localClass) {
            return driver == .local ? "a local volume has class 'local' (got '\(dataClass)')" : "class 'local' is the local driver's"
        }
        return nil
    }

    /// Lowercase letters, digits and inner '-', starting with a letter, 1...limit bytes.
    public static func nameProblem(_ name: String, what: String, limit: Int = 63) -> String? {
        let n = Array(name.utf8)
        if n.isEmpty || n.count > limit { return "a \(what) name is 1 to \(limit) characters (got \(n.count))" }
        func lower(_ c: UInt8) -> Bool { c >= 0x61 && c <= 0x7A }
        func digit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }
        if !lower(n[0]) { return "a \(what) name starts with a lowercase letter ('\(name)')" }
        if !n.allSatisfy({ lower($0) || digit($0) || $0 == 0x2D }) || n.last == 0x2D {
            return "a \(what) name has only lowercase letters, digits and inner '-' ('\(name)')"
        }
        return nil
    }

    func encode(into w: inout ByteWriter) { w.string(name); w.u64(sizeBytes); w.string(dataClass); w.u8(driver.rawValue) }

    static func decode(_ r: inout ByteReader) throws -> VolumeSpec {
        let name = try r.string("volume name", limit: 63), size = try r.u64(), cls = try r.string("data class", limit: 32)
        let d = try r.u8()
        guard let driver = VolumeDriverKind(rawValue: d) else { throw DecodeError(.invalid(field: "volume driver", reason: "unknown driver \(d)"), at: r.offset) }
        return VolumeSpec(name: name, sizeBytes: size, dataClass: cls, driver: driver)
    }
}

/// Something a node is to do to a volume.
public enum VolumeOperation: Sendable, Equatable, CustomStringConvertible {
    case create
    case snapshot(String)
    case delete
    public var description: String {
        switch self { case .create: "create"; case .snapshot(let s): "snapshot \(s)"; case .delete: "delete" }
    }
}

/// A volume's pending operation and the one node carrying it out.
public struct VolumeTask: Sendable, Equatable {
    public var id: UInt64
    public var operation: VolumeOperation
    public var executor: NodeID
    /// Control time (Unix ms) it was given to `executor`.
    public var since: Int64
    public init(id: UInt64, operation: VolumeOperation, executor: NodeID, since: Int64) {
        self.id = id; self.operation = operation; self.executor = executor; self.since = since
    }
}

/// One volume as the network records it.
public struct VolumeRecord: Sendable, Equatable {
    public var spec: VolumeSpec
    /// The node whose disk holds a local volume; for Ceph the node that created it.
    public var home: NodeID
    /// Whether the storage holds it (its create task succeeded).
    public var created: Bool
    public var snapshots: [String]
    public var task: VolumeTask?
    /// How the last task ended ("" before the first), for the operator.
    public var message: String
    public var createdMillis: Int64
    public var name: String { spec.name }
    public static let maxSnapshots = 64
    public static let maxMessage = 300
}

/// What a node tells the network about its storage.
public struct StorageNodeInfo: Sendable, Equatable {
    /// Whether this node can reach the Ceph cluster (it may then carry out Ceph tasks).
    public var ceph: Bool
    /// The CRUSH host of this node's OSDs ("": it holds no Ceph data).
    public var cephHost: String
    /// Why this node cannot reach Ceph although it is configured to ("" otherwise).
    public var problem: String
    public init(ceph: Bool, cephHost: String, problem: String = "") { self.ceph = ceph; self.cephHost = cephHost; self.problem = problem }

    func encode(into w: inout ByteWriter) { w.bool(ceph); w.string(cephHost); w.string(problem) }
    static func decode(_ r: inout ByteReader) throws -> StorageNodeInfo {
        StorageNodeInfo(ceph: try r.bool("ceph"), cephHost: try r.string("ceph host", limit: 64), problem: try r.string("problem", limit: VolumeRecord.maxMessage))
    }
}

/// The leader's decision on which CRUSH host belongs in which data class.
public struct StoragePlacement: Sendable, Equatable {
    public var id: UInt64
    /// CRUSH host → the classes it qualifies for (sorted).
    public var hosts: [String: [String]]
    public var executor: NodeID
    /// The id of the last decision carried out successfully (0: none yet).
    public var doneID: UInt64
    /// How the last attempt ended.
    public var message: String
}

/// A change to the volume table.
public enum VolumeCommand: Sendable, Equatable {
    /// The leader's: a new volume, created by `executor`.
    case create(VolumeSpec, home: NodeID, executor: NodeID)
    case snapshot(name: String, snapshot: String, executor: NodeID)
    case delete(name: String, executor: NodeID)
    /// The executor's report on task `task` of volume `name`.
    case taskDone(name: String, task: UInt64, node: NodeID, ok: Bool, message: String)
    /// The leader hands a task whose executor failed to another node.
    case retask(name: String, task: UInt64, executor: NodeID)
    /// A node's storage facts (only that node may report them).
    case storageNode(node: NodeID, StorageNodeInfo)
    /// The leader's placement decision (supersedes any earlier one).
    case placement(hosts: [String: [String]], executor: NodeID)
    case placementDone(id: UInt64, node: NodeID, ok: Bool, message: String)

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 96)
        switch self {
        case let .create(spec, home, executor): w.u8(1); spec.encode(into: &w); w.raw(home.bytes); w.raw(executor.bytes)
        case let .snapshot(name, snap, executor): w.u8(2); w.string(name); w.string(snap); w.raw(executor.bytes)
        case let .delete(name, executor): w.u8(3); w.string(name); w.raw(executor.bytes)
        case let .taskDone(name, task, node, ok, message):
            w.u8(4); w.string(name); w.u64(task); w.raw(node.bytes); w.bool(ok); w.string(VMMigration.clipped(message, VolumeRecord.maxMessage))
        case let .retask(name, task, executor): w.u8(5); w.string(name); w.u64(task); w.raw(executor.bytes)
        case let .storageNode(node, info): w.u8(6); w.raw(node.bytes); info.encode(into: &w)
        case let .placement(hosts, executor): w.u8(7); Self.encodeHosts(hosts, into: &w); w.raw(executor.bytes)
        case let .placementDone(id, node, ok, message):
            w.u8(8); w.u64(id); w.raw(node.bytes); w.bool(ok); w.string(VMMigration.clipped(message, VolumeRecord.maxMessage))
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(DecodeError) {
        do {
            var r = ByteReader(bytes)
            let tag = try r.u8()
            func node() throws -> NodeID { try NodeID(bytes: r.raw(16)) }
            func name() throws -> String { try r.string("volume name", limit: 63) }
            switch tag {
            case 1: self = .create(try VolumeSpec.decode(&r), home: try node(), executor: try node())
            case 2: self = .snapshot(name: try name(), snapshot: try r.string("snapshot name", limit: 63), executor: try node())
            case 3: self = .delete(name: try name(), executor: try node())
            case 4: self = .taskDone(name: try name(), task: try r.u64(), node: try node(), ok: try r.bool("ok"),
                                     message: try r.string("message", limit: VolumeRecord.maxMessage))
            case 5: self = .retask(name: try name(), task: try r.u64(), executor: try node())
            case 6: self = .storageNode(node: try node(), try StorageNodeInfo.decode(&r))
            case 7: self = .placement(hosts: try Self.decodeHosts(&r), executor: try node())
            case 8: self = .placementDone(id: try r.u64(), node: try node(), ok: try r.bool("ok"), message: try r.string("message", limit: VolumeRecord.maxMessage))
            default: throw DecodeError(.invalid(field: "volume command", reason: "unknown tag \(tag)"), at: 0)
            }
            try r.finish()
        } catch let e as DecodeError {
            throw e
        } catch {
            throw DecodeError(.invalid(field: "volume command", reason: "\(error)"), at: 0)
        }
    }

    static let maxHosts = 4096
    static let maxClasses = 16

    static func encodeHosts(_ hosts: [String: [String]], into w: inout ByteWriter) {
        w.u32(UInt32(hosts.count))
        for (h, classes) in hosts.sorted(by: { $0.key < $1.key }) {
            w.string(h); w.u8(UInt8(classes.count)); for c in classes.sorted() { w.string(c) }
        }
    }

    static func decodeHosts(_ r: inout ByteReader) throws -> [String: [String]] {
        let n = try count32(&r, "placement hosts", limit: maxHosts)
        var out: [String: [String]] = [:]
        for _ in 0..<n {
            let h = try r.string("ceph host", limit: 64)
            let k = Int(try r.u8())
            if k > maxClasses { throw DecodeError(.tooLong(field: "classes", length: k, limit: maxClasses), at: r.offset) }
            var classes: [String] = []
            for _ in 0..<k {
                let c = try r.string("data class", limit: 32)
                // One encoding per decision: classes strictly ascending (sorted, no repeats), as encoded.
                if let last = classes.last, c <= last {
                    throw DecodeError(.invalid(field: "placement", reason: "host \(h)'s classes are not sorted and unique"), at: r.offset)
                }
                classes.append(c)
            }
            if out.updateValue(classes, forKey: h) != nil { throw DecodeError(.invalid(field: "placement", reason: "host \(h) listed twice"), at: r.offset) }
        }
        return out
    }
}

/// The volumes of the network, the nodes' storage facts and the placement decision.
public struct VolumeTable: Sendable, Equatable {
    public internal(set) var volumes: [String: VolumeRecord] = [:]
    public internal(set) var nodes: [NodeID: StorageNodeInfo] = [:]
    public internal(set) var placement: StoragePlacement?
    /// The next task id (ids are never reused, so a late report of an old task is refused).
    public internal(set) var nextTask: UInt64 = 1
    public static let maxVolumes = 10_000

    public init() {}

    /// Whether `node` is a live member (may be given a task).
    public static func live(_ node: NodeID, _ spore: PrimarySpore) -> Bool {
        guard let m = spore.members[node] else { return false }
        return m.status == .alive || m.status == .suspect
    }

    /// The VM (name) that names `volume` as its disk, if any (deleting it is then refused).
    public typealias VolumeUser = @Sendable (String) -> String?

    /// Applies `command` at control time `now`. `user` says who uses a volume, as the end of "volume
    /// 'X' is ..." with what to do (ControlState.VolumeConsumer.refusal). Refusals change
    /// nothing and are identical on every replica.
    public mutating func apply(_ command: VolumeCommand, spore: PrimarySpore, now: Int64, user: (String) -> String? = { _ in nil }) throws(ControlError) -> [ControlChange] {
        func refuse(_ why: String) -> ControlError { ControlError(.volumeRefused(why)) }
        func record(_ name: String) throws(ControlError) -> VolumeRecord {
            guard let r = volumes[name] else { throw refuse("no volume named '\(name)'") }
            return r
        }
        func idle(_ r: VolumeRecord) throws(ControlError) {
            if let t = r.task { throw refuse("volume '\(r.name)' is busy: \(t.operation) by \(t.executor) is not done yet; retry when it is") }
            if !r.created { throw refuse("volume '\(r.name)' was never created (\(r.message)); delete it and create it again") }
        }
        func executorFit(_ executor: NodeID, _ spec: VolumeSpec, home: NodeID) throws(ControlError) {
            guard Self.live(executor, spore) else { throw refuse("\(executor) is not a live member") }
            switch spec.driver {
            case .local:
                if executor != home { throw refuse("a local volume is created by its home node \(home), not \(executor)") }
            case .ceph:
                guard nodes[executor]?.ceph == true else { throw refuse("\(executor) has no Ceph cluster configured") }
            }
        }
        func newTask(_ op: VolumeOperation, _ executor: NodeID) -> VolumeTask {
            defer { nextTask += 1 }
            return VolumeTask(id: nextTask, operation: op, executor: executor, since: now)
        }
        switch command {
        case let .create(spec, home, executor):
            if let p = spec.problem { throw refuse(p) }
            if volumes[spec.name] != nil { throw refuse("a volume named '\(spec.name)' exists") }
            if volumes.count >= Self.maxVolumes { throw refuse("the network holds \(Self.maxVolumes) volumes, the most it records") }
            guard Self.live(home, spore) else { throw refuse("home \(home) is not a live member") }
            try executorFit(executor, spec, home: home)
            let r = VolumeRecord(spec: spec, home: home, created: false, snapshots: [], task: newTask(.create, executor), message: "", createdMillis: now)
            volumes[spec.name] = r
            return [.volume(name: spec.name, r)]

        case let .snapshot(name, snap, executor):
            var r = try record(name)
            try idle(r)
            if let p = VolumeSpec.nameProblem(snap, what: "snapshot") { throw refuse(p) }
            if r.snapshots.contains(snap) { throw refuse("volume '\(name)' has a snapshot '\(snap)'") }
            if r.snapshots.count >= VolumeRecord.maxSnapshots { throw refuse("volume '\(name)' has \(VolumeRecord.maxSnapshots) snapshots, the most it keeps") }
            try executorFit(executor, r.spec, home: r.home)
            r.task = newTask(.snapshot(snap), executor)
            volumes[name] = r
            return [.volume(name: name, r)]

        case let .delete(name, executor):
            var r = try record(name)
            if let t = r.task, t.operation != .create || r.created {
                throw refuse("volume '\(r.name)' is busy: \(t.operation) by \(t.executor) is not done yet; retry when it is")
            }
            if let use = user(name) { throw refuse("volume '\(name)' is \(use)") }
            try executorFit(executor, r.spec, home: r.home)
            r.task = newTask(.delete, executor)
            volumes[name] = r
            return [.volume(name: name, r)]

        case let .taskDone(name, task, node, ok, message):
            var r = try record(name)
            guard let t = r.task, t.id == task else { throw refuse("volume '\(name)' has no task \(task) (a late or repeated report)") }
            guard t.executor == node else { throw refuse("task \(task) of '\(name)' is \(t.executor)'s, not \(node)'s") }
            r.task = nil
            r.message = VMMigration.clipped(message, VolumeRecord.maxMessage)
            switch (t.operation, ok) {
            case (.create, true): r.created = true
            case (.create, false): break  // stays uncreated, with the reason; the operator deletes it
            case (.snapshot(let s), true): r.snapshots.append(s)
            case (.snapshot, false): break
            case (.delete, true):
                volumes[name] = nil
                return [.volume(name: name, nil)]
            case (.delete, false): break
            }
            volumes[name] = r
            return [.volume(name: name, r)]

        case let .retask(name, task, executor):
            var r = try record(name)
            guard var t = r.task, t.id == task else { throw refuse("volume '\(name)' has no task \(task)") }
            if t.executor == executor { throw refuse("task \(task) of '\(name)' is already \(executor)'s") }
            if Self.live(t.executor, spore) { throw refuse("task \(task) of '\(name)' stays with \(t.executor), a live member") }
            try executorFit(executor, r.spec, home: r.home)
            t.executor = executor; t.since = now
            r.task = t
            volumes[name] = r
            return [.volume(name: name, r)]

        case let .storageNode(node, info):
            guard spore.members[node] != nil else { throw refuse("\(node) is not a member") }
            if !info.cephHost.isEmpty, let p = Self.crushNameProblem(info.cephHost) { throw refuse("ceph_host '\(info.cephHost)': \(p)") }
            if !info.cephHost.isEmpty, let other = nodes.first(where: { $0.key != node && $0.value.cephHost == info.cephHost })?.key {
                throw refuse("CRUSH host \(info.cephHost) is \(other)'s; each node names its own")
            }
            if nodes[node] == info { return [] }
            nodes[node] = info
            return [.storageNode(node)]

        case let .placement(hosts, executor):
            guard Self.live(executor, spore), nodes[executor]?.ceph == true else { throw refuse("\(executor) is not a live member with Ceph configured") }
            for (h, classes) in hosts {
                if let p = Self.crushNameProblem(h) { throw refuse("CRUSH host '\(h)': \(p)") }
                for c in classes { if let p = VolumeSpec.nameProblem(c, what: "data class", limit: 32) { throw refuse(p) } }
            }
            let id = (placement?.id ?? 0) + 1
            placement = StoragePlacement(id: id, hosts: hosts.mapValues { $0.sorted() }, executor: executor, doneID: placement?.doneID ?? 0, message: "")
            return [.storagePlacement(id)]

        case let .placementDone(id, node, ok, message):
            guard var p = placement, p.id == id else { throw refuse("placement \(id) is not the current decision (a late report)") }
            guard p.executor == node else { throw refuse("placement \(id) is \(p.executor)'s to carry out, not \(node)'s") }
            if p.doneID == id { throw refuse("placement \(id) is carried out already") }
            if ok { p.doneID = id }
            p.message = VMMigration.clipped(message, VolumeRecord.maxMessage)
            placement = p
            return [.storagePlacement(id)]
        }
    }

    /// A member that left for good: its storage facts go (its volumes stay, for the operator).
    mutating func forget(_ node: NodeID) -> [ControlChange] {
        guard nodes.removeValue(forKey: node) != nil else { return [] }
        return [.storageNode(node)]
    }

    /// CRUSH names: 1-64 of [A-Za-z0-9-_.].
    public static func crushNameProblem(_ name: String) -> String? {
        let c = Array(name.utf8)
        guard !c.isEmpty, c.count <= 64 else { return "a CRUSH host name has 1-64 characters (got \(c.count))" }
        let ok = c.allSatisfy { ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E }
        return ok ? nil : "a CRUSH host name is letters, digits, '-', '_' and '.'"
    }

    // MARK: encoding (the control-state snapshot's volume section)

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 64 + volumes.count * 96)
        w.u64(nextTask)
        w.u32(UInt32(volumes.count))
        for r in volumes.values.sorted(by: { $0.name < $1.name }) {
            r.spec.encode(into: &w); w.raw(r.home.bytes); w.bool(r.created)
            w.u8(UInt8(r.snapshots.count)); for s in r.snapshots { w.string(s) }
            if let t = r.task {
                w.bool(true); w.u64(t.id); Self.encodeOperation(t.operation, into: &w); w.raw(t.executor.bytes); w.i64(t.since)
            } else { w.bool(false) }
            w.string(r.message); w.i64(r.createdMillis)
        }
        w.u32(UInt32(nodes.count))
        for (n, info) in nodes.sorted(by: { $0.key < $1.key }) { w.raw(n.bytes); info.encode(into: &w) }
        if let p = placement {
            w.bool(true); w.u64(p.id); VolumeCommand.encodeHosts(p.hosts, into: &w); w.raw(p.executor.bytes); w.u64(p.doneID); w.string(p.message)
        } else { w.bool(false) }
        return w.bytes
    }

    static func encodeOperation(_ op: VolumeOperation, into w: inout ByteWriter) {
        switch op {
        case .create: w.u8(1)
        case .snapshot(let s): w.u8(2); w.string(s)
        case .delete: w.u8(3)
        }
    }

    public init(decoding bytes: [UInt8]) throws(DecodeError) {
        do {
            var r = ByteReader(bytes)
            nextTask = try r.u64()
            let n = try count32(&r, "volumes", limit: Self.maxVolumes)
            for _ in 0..<n {
                let spec = try VolumeSpec.decode(&r)
                let home = try NodeID(bytes: r.raw(16)), created = try r.bool("created")
                let k = Int(try r.u8())
                if k > VolumeRecord.maxSnapshots { throw DecodeError(.tooLong(field: "snapshots", length: k, limit: VolumeRecord.maxSnapshots), at: r.offset) }
                var snaps: [String] = []
                for _ in 0..<k { snaps.append(try r.string("snapshot name", limit: 63)) }
                var task: VolumeTask?
                if try r.bool("task") {
                    let id = try r.u64()
                    let op: VolumeOperation
                    switch try r.u8() {
                    case 1: op = .create
                    case 2: op = .snapshot(try r.string("snapshot name", limit: 63))
                    case 3: op = .delete
                    case let t: throw DecodeError(.invalid(field: "volume task", reason: "unknown operation \(t)"), at: r.offset)
                    }
                    task = VolumeTask(id: id, operation: op, executor: try NodeID(bytes: r.raw(16)), since: try r.i64())
                }
                let rec = VolumeRecord(spec: spec, home: home, created: created, snapshots: snaps, task: task,
                                       message: try r.string("message", limit: VolumeRecord.maxMessage), createdMillis: try r.i64())
                if volumes.updateValue(rec, forKey: spec.name) != nil {
                    throw DecodeError(.invalid(field: "volume", reason: "'\(spec.name)' listed twice"), at: r.offset)
                }
            }
            let m = try count32(&r, "storage nodes", limit: 1 << 20)
            for _ in 0..<m { let node = try NodeID(bytes: r.raw(16)); nodes[node] = try StorageNodeInfo.decode(&r) }
            if try r.bool("placement") {
                placement = StoragePlacement(id: try r.u64(), hosts: try VolumeCommand.decodeHosts(&r), executor: try NodeID(bytes: r.raw(16)),
                                             doneID: try r.u64(), message: try r.string("message", limit: VolumeRecord.maxMessage))
            }
            try r.finish()
        } catch let e as DecodeError {
            throw e
        } catch {
            throw DecodeError(.invalid(field: "volume table", reason: "\(error)"), at: 0)
        }
    }
}

/// A u32 count, refused above `limit` before anything is allocated for it.
func count32(_ r: inout ByteReader, _ field: String, limit: Int) throws -> Int {
    let at = r.offset
    let n = Int(try r.u32())
    if n > limit { throw DecodeError(.tooLong(field: field, length: n, limit: limit), at: at) }
    return n
}
