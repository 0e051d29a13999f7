// The control state: everything the sclerotia's Raft group replicates, behind one type.
//
//   ControlEntry  the typed payload of a normal Raft entry (one enum, one codec: no "first byte"
//                 conventions spread over files);
//   ControlState  the primary spore, the KV, the pod-CIDR, VM and service tables, with a throwing `apply` that
//                 returns what changed (for the governor and the controllers) and one deterministic
//                 snapshot format with a throwing `restore`.
//
// Every replica applies the same committed entries in the same order and reaches the same bytes:
// nothing here reads a clock, a file or a random generator. Time is stamped into each spore entry by
// the leader that proposed it, in milliseconds: the spore counts whole seconds of it (`spore.now`),
// the VM table's ownership leases count milliseconds (`nowMillis`).

import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores

/// The payload of a normal Raft entry. An empty payload is a leader's no-op (Raft §8).
public enum ControlEntry: Sendable, Equatable {
    /// A signed change to the primary spore, with the proposing leader's wall-clock time (Unix
    /// milliseconds). Entries of older agents (tag 1) carry whole seconds and decode as their
    /// start in milliseconds.
    case spore(SignedCommand, millis: Int64)
    /// A batch of KV operations (several clients' writes share one entry: group commit).
    case kv(KVBatch)
    /// A change to the pod-CIDR table, proposed by the leader's network controller.
    case network(NetworkCommand)
    /// A change to the VM table (VMs.swift), proposed by the leader's VM controller.
    case vm(VMCommand)
    /// A change to the service table (Services.swift): an operator's deploy, the leader's placement,
    /// a node's reports; stamped with the proposing leader's wall clock (Unix ms; 0: unstamped) like
    /// a spore entry, so service events carry their time and control time moves with them.
    case service(ServiceCommand, millis: Int64 = 0)
    /// A change to the volume table (Volumes.swift): the leader's tasks and placement decisions, the
    /// nodes' reports; stamped with the proposing leader's wall clock like a service entry.
    case volume(VolumeCommand, millis: Int64 = 0)

    enum Tag: UInt8 { case sporeSeconds = 1, kv = 2, network = 3, vm = 4, spore = 5, service = 6, volume = 7 }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 128)
        switch self {
        case let .spore(command, millis):
            w.u8(Tag.spore.rawValue); w.i64(millis); w.raw(command.encoded())
        case .kv(let batch):
            w.u8(Tag.kv.rawValue); w.raw(batch.encoded())
        case .network(let command):
            w.u8(Tag.network.rawValue); w.raw(command.encoded())
        case .vm(let command):
            w.u8(Tag.vm.rawValue); w.raw(command.encoded())
        case let .service(command, millis):
            w.u8(Tag.service.rawValue); w.i64(millis); w.raw(command.encoded())
        case let .volume(command, millis):
            w.u8(Tag.volume.rawValue); w.i64(millis); w.raw(command.encoded())
        }
        return w.bytes
    }

    /// Decodes an entry's payload; nil for a leader no-op.
    public static func decode(_ bytes: [UInt8]) throws(ControlError) -> ControlEntry? {
        guard let first = bytes.first else { return nil }
        guard let tag = Tag(rawValue: first) else { throw ControlError(.malformedEntry("unknown entry kind \(first)")) }
        let body = Array(bytes.dropFirst())
        switch tag {
        case .spore, .sporeSeconds:
            guard body.count >= 8 else { throw ControlError(.malformedEntry("spore entry of \(bytes.count) bytes")) }
            var r = ByteReader(body)
            var time: Int64
            do { time = try r.i64() } catch { throw ControlError(.malformedEntry("spore entry time: \(error)")) }
            if tag == .sporeSeconds { time = time.saturatingMultiplied(by: 1000) }
            do { return .spore(try SignedCommand(decoding: Array(body[8...])), millis: time) } catch {
                throw ControlError(.malformedEntry("spore command: \(error)"))
            }
        case .kv:
            do { return .kv(try KVBatch(decoding: body)) } catch { throw ControlError(.malformedEntry("kv batch: \(error)")) }
        case .network:
            do { return .network(try NetworkCommand(decoding: body)) } catch { throw ControlError(.malformedEntry("network command: \(error)")) }
        case .vm:
            do { return .vm(try VMCommand(decoding: body)) } catch { throw ControlError(.malformedEntry("vm command: \(error)")) }
        case .service:
            guard body.count >= 8 else { throw ControlError(.malformedEntry("service entry of \(bytes.count) bytes")) }
            var r = ByteReader(body)
            let millis: Int64
            do { millis = try r.i64() } catch { throw ControlError(.malformedEntry("service entry time: \(error)")) }
            do { return .service(try ServiceCommand(decoding: Array(body[8...])), millis: millis) } catch {
                throw ControlError(.malformedEntry("service command: \(error)"))
            }
        case .volume:
            guard body.count >= 8 else { throw ControlError(.malformedEntry("volume entry of \(bytes.count) bytes")) }
            var r = ByteReader(body)
            let millis: Int64
            do { millis = try r.i64() } catch { throw ControlError(.malformedEntry("volume entry time: \(error)")) }
            do { return .volume(try VolumeCommand(decoding: Array(body[8...])), millis: millis) } catch {
                throw ControlError(.malformedEntry("volume command: \(error)"))
            }
        }
    }
}

/// What one applied entry changed; the governor and the controllers react to these.
public enum ControlChange: Sendable {
    /// A spore command was applied.
    case spore(SignedCommand)
    /// KV operations were applied; results in operation order.
    case kv(index: UInt64, [KVResult])
    /// A node's pod CIDR was assigned (or released, nil).
    case podCIDR(node: MyceliumIdentity.NodeID, CIDR?)
    /// The pod-CIDR pool was configured.
    case podPool(CIDR, nodePrefix: UInt8)
    /// A VM's record changed (nil: deleted).
    case vm(name: String, VMRecord?)
    /// A service's record changed (nil: removed).
    case service(name: String, ServiceRecord?)
    /// A node's placement facts (labels, drivers, draining) changed.
    case serviceNode(MyceliumIdentity.NodeID)
    /// The pods a node published (`ServiceCommand.endpoints`) changed, or went with the node.
    case podEndpoints(MyceliumIdentity.NodeID)
    /// A volume's record changed (nil: deleted).
    case volume(name: String, VolumeRecord?)
    /// A node's storage facts changed (or went with the node).
    case storageNode(MyceliumIdentity.NodeID)
    /// A placement decision was made (or its outcome reported).
    case storagePlacement(UInt64)
    /// The whole state was replaced by a snapshot.
    case restored
}

public struct ControlError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable {
        /// A committed entry that no replica can decode (refused identically everywhere).
        case malformedEntry(String)
        /// A well-formed command that the state machine refuses (identically everywhere).
        case refused(SporeError)
        case networkRefused(String)
        case vmRefused(String)
        case serviceRefused(String)
        case volumeRefused(String)
        /// A snapshot that cannot be restored: the node cannot continue safely.
        case badSnapshot(String)
    }
    public let code: Code
    public init(_ code: Code) { self.code = code }
    public var description: String {
        switch code {
        case .malformedEntry(let s): return "malformed committed entry: \(s)"
        case .refused(let e): return "refused: \(e)"
        case .networkRefused(let s): return "network command refused: \(s)"
        case .vmRefused(let s): return "vm command refused: \(s)"
        case .serviceRefused(let s): return "service command refused: \(s)"
        case .volumeRefused(let s): return "volume command refused: \(s)"
        case .badSnapshot(let s): return "snapshot cannot be restored: \(s)"
        }
    }
}

/// What the sclerotia replicate.
public struct ControlState: Sendable, Equatable {
    public internal(set) var spore: PrimarySpore
    public internal(set) var kv: KVStore
    public internal(set) var pods: PodCIDRTable
    public internal(set) var vms: VMTable
    public internal(set) var services: ServiceTable
    public internal(set) var volumes: VolumeTable
    /// The Raft index of the last entry applied (or of the snapshot restored).
    public internal(set) var appliedIndex: UInt64 = 0
    /// Control time: the latest leader-stamped time of an applied spore or service entry, in Unix
    /// milliseconds (`spore.now` is the whole seconds of the spore entries'). Never moves backwards.
    public internal(set) var nowMillis: Int64 = 0

    public init(network: NetworkIdentity) {
        spore = PrimarySpore(network: network)
        kv = KVStore()
        pods = PodCIDRTable()
        vms = VMTable()
        services = ServiceTable()
        volumes = VolumeTable()
    }

    public var network: NetworkIdentity { spore.network }

    /// Applies one committed normal entry. A refused or undecodable entry changes nothing but the
    /// applied index and throws: every replica refuses it identically, so the caller logs it and
    /// moves on (Raft already committed it; skipping it is the deterministic outcome).
    public mutating func apply(_ entry: Entry) throws(ControlError) -> [ControlChange] {
        precondition(entry.kind == .normal, "configuration entries are Raft's, not the control state's")
        appliedIndex = max(appliedIndex, entry.index)
        guard let decoded = try ControlEntry.decode(entry.data) else { return [] }
        switch decoded {
        case let .spore(signed, stamped):
            let millis = max(nowMillis, stamped)
            // A VM's planned switch or abort, signed by its primary: the VM table must accept it, or
            // the whole entry is refused (nothing changes).
            var vmsNext = vms, vmChanges: [ControlChange] = []
            switch signed.command {
            case let .vmSwitch(name, to, epoch):
                vmChanges = try vmsNext.apply(.migrate(name: name, to: to, epoch: epoch), spore: spore, now: millis, author: signed.author)
            case let .vmAbortMigration(name, epoch, reason):
                vmChanges = try vmsNext.apply(.abortMigration(name: name, epoch: epoch, reason: reason), spore: spore, now: millis, author: signed.author)
            default: break
            }
            do {
                try spore.apply(signed, epoch: SporeEpoch(term: entry.term, index: entry.index), time: Self.seconds(millis))
            } catch {
                throw ControlError(.refused(error))
            }
            nowMillis = millis
            vms = vmsNext
            switch signed.command {
            case .acquireLease(let name, let ttl), .renewLease(let name, let ttl, _):
                vms.noteLease(name, ttlSeconds: ttl, now: millis, spore: spore)
                services.noteLease(name, ttlSeconds: ttl, now: millis, spore: spore)
            default: break
            }
            var changes: [ControlChange] = [.spore(signed)] + vmChanges
            // A member that left the spore for good gives its pod CIDR back.
            for node in pods.assignments.keys where spore.members[node] == nil {
                pods.assignments[node] = nil
                changes.append(.podCIDR(node: node, nil))
            }
            for node in services.nodes.keys where spore.members[node] == nil { changes += services.forget(node) }
            for node in services.podEndpoints.keys where spore.members[node] == nil { changes += services.forget(node) }
            for node in volumes.nodes.keys where spore.members[node] == nil { changes += volumes.forget(node) }
            return changes
        case .kv(let batch):
            return [.kv(index: entry.index, kv.apply(batch))]
        case .network(let command):
            return try pods.apply(command, spore: spore)
        case .vm(let command):
            if case .migrate = command {
                throw ControlError(.vmRefused("a planned switch is signed by the VM's primary (SporeCommand.vmSwitch), never a leader's entry"))
            }
            if case let .create(spec, _, _) = command, let p = diskProblem(spec.disk, vm: spec.name) { throw ControlError(.vmRefused(p)) }
            return try vms.apply(command, spore: spore, now: nowMillis)
        case let .service(command, stamped):
            if case .deploy(let spec) = command, let p = serviceVolumeProblem(spec) { throw ControlError(.serviceRefused(p)) }
            let millis = max(nowMillis, stamped)
            let changes = try services.apply(command, spore: spore, pods: pods, now: millis)
            nowMillis = millis
            return changes
        case let .volume(command, stamped):
            let millis = max(nowMillis, stamped)
            // Only a delete asks who uses the volume (asked here: the table is being changed meanwhile).
            var use: String?
            if case .delete(let name, _) = command { use = volumeConsumer(name)?.refusal }
            let changes = try volumes.apply(command, spore: spore, now: millis, user: { _ in use })
            nowMillis = millis
            return changes
        }
    }

    /// Who uses a volume: one consumer at a time, a VM (its disk) or a service (a mount).
    public enum VolumeConsumer: Sendable, Equatable, CustomStringConvertible {
        case vm(String)
        case service(String)
        /// "vm NAME" / "service NAME" (what `volume show` prints as "used by").
        public var description: String {
            switch self { case .vm(let n): "vm \(n)"; case .service(let n): "service \(n)" }
        }
        /// The end of "volume 'X' is ...", with what to do.
        public var refusal: String {
            switch self {
            case .vm(let n): "the disk of VM '\(n)'; delete the VM first"
            case .service(let n): "mounted by service '\(n)'; stop the service first ('mycelium service stop \(n)')"
            }
        }
    }

    /// The VM whose disk `volume` is, if any.
    public func volumeUser(_ volume: String) -> String? {
        vms.vms.values.filter { $0.spec.disk == volume }.map(\.name).min()
    }

    /// The VM or service that uses `volume`, if any (a VM first: the table never lets both).
    public func volumeConsumer(_ volume: String) -> VolumeConsumer? {
        if let vm = volumeUser(volume) { return .vm(vm) }
        return services.services.values.filter { $0.spec.volumes.contains { $0.name == volume } }.map(\.name).min().map { .service($0) }
    }

    /// Why `volume` cannot be used by a new consumer, or nil: it must exist, be created, not be
    /// going away, and be no other consumer's (`except` is the one asking, which may keep it).
    func volumeFreeProblem(_ volume: String, except: VolumeConsumer) -> String? {
        guard let v = volumes.volumes[volume] else { return "no volume named '\(volume)'; create it with 'mycelium volume create \(volume) --size SIZE'" }
        if !v.created { return "volume '\(volume)' is not created (\(v.task.map { "\($0.operation) pending" } ?? v.message)); wait for its create, or delete and create it again" }
        if v.task?.operation == .delete { return "volume '\(volume)' is being deleted" }
        if let other = volumeConsumer(volume), other != except {
            switch other {
            case .vm(let n): return "volume '\(volume)' is already the disk of VM '\(n)'; one consumer at a time: delete that VM or use another volume"
            case .service(let n): return "volume '\(volume)' is already mounted by service '\(n)'; one consumer at a time: stop that service or use another volume"
            }
        }
        return nil
    }

    /// Why a new VM may not have `disk` as its data disk, or nil: the volume must exist, be created,
    /// and be no other VM's or service's (one writer at a time; the fencing on failover relies on it).
    public func diskProblem(_ disk: String, vm: String) -> String? {
        guard !disk.isEmpty else { return nil }
        return volumeFreeProblem(disk, except: .vm(vm))
    }

    /// Why `spec` may not mount its volumes, or nil: each must exist, be created and be no VM's or
    /// other service's. Checked by every replica when a deploy applies, so nothing is recorded.
    public func serviceVolumeProblem(_ spec: ServiceSpec) -> String? {
        for v in spec.volumes {
            if let p = volumeFreeProblem(v.name, except: .service(spec.name)) { return p }
        }
        return nil
    }

    /// Whole seconds of a control time (rounded down, also before 1970).
    static func seconds(_ millis: Int64) -> Int64 {
        millis >= 0 ? millis / 1000 : -((-(millis + 1)) / 1000) - 1
    }

    // MARK: snapshot

    static let snapshotMagic: [UInt8] = Array("MYCS".utf8)
    /// 2 adds the VM table, 3 its planned migrations, 4 control time in milliseconds (and VM lease
    /// ends in milliseconds), 5 the service table, 6 the volume table; 1 to 5 are still read.
    static let snapshotVersion: UInt16 = 6

    /// One deterministic snapshot: magic, version, applied index, then each part as a blob.
    public func snapshot() -> [UInt8] {
        let s = spore.encoded(), k = kv.encodedSnapshot(), p = pods.encoded(), v = vms.encoded(), sv = services.encoded()
        let vol = volumes.encoded()
        var w = ByteWriter(capacity: s.count + k.count + p.count + v.count + sv.count + vol.count + 48)
        w.raw(Self.snapshotMagic); w.u16(Self.snapshotVersion); w.u64(appliedIndex); w.i64(nowMillis)
        w.blob(s); w.blob(k); w.blob(p); w.blob(v); w.blob(sv); w.blob(vol)
        return w.bytes
    }

    /// Restores a snapshot taken by `snapshot()` (of this network). Throws on anything else: a node
    /// that cannot restore its state must stop, not run on without it.
    public static func restore(_ data: [UInt8], network: NetworkIdentity) throws(ControlError) -> ControlState {
        do {
            var r = ByteReader(data)
            guard try r.raw(4) == snapshotMagic else { throw ControlError(.badSnapshot("not a control-state snapshot (bad magic)")) }
            let version = try r.u16()
            guard (1...snapshotVersion).contains(version) else {
                throw ControlError(.badSnapshot("snapshot format \(version); this build reads \(snapshotVersion): upgrade this node"))
            }
            var state = ControlState(network: network)
            state.appliedIndex = try r.u64()
            let millis: Int64? = version >= 4 ? try r.i64() : nil
            let sporeBytes = try r.blob("spore", limit: 64 << 20)
            let kvBytes = try r.blob("kv", limit: 1 << 40)
            let podBytes = try r.blob("pods", limit: 16 << 20)
            let vmBytes = version >= 2 ? try r.blob("vms", limit: 16 << 20) : [0, 0, 0, 0]
            let serviceBytes = version >= 5 ? try r.blob("services", limit: 256 << 20) : [UInt8](repeating: 0, count: 12)
            let volumeBytes = version >= 6 ? try r.blob("volumes", limit: 64 << 20) : VolumeTable().encoded()
            try r.finish()
            state.spore = try PrimarySpore(decoding: sporeBytes)
            guard state.spore.network.id == network.id else {
                throw ControlError(.badSnapshot("snapshot of network \(state.spore.network.id), this node is in \(network.id)"))
            }
            state.kv = try KVStore(snapshot: kvBytes)
            state.pods = try PodCIDRTable(decoding: podBytes)
            state.vms = try VMTable(decoding: vmBytes, version: version)
            state.services = try ServiceTable(decoding: serviceBytes)
            state.volumes = try VolumeTable(decoding: volumeBytes)
            // Before format 4 control time was the spore's whole seconds.
            state.nowMillis = millis ?? state.spore.now.saturatingMultiplied(by: 1000)
            return state
        } catch let e as ControlError {
            throw e
        } catch {
            throw ControlError(.badSnapshot("\(error)"))
        }
    }
}
