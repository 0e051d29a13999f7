// Endophyte VMs in the control state (issue 16): what the network wants to run, where, and who owns
// it now. Pure, replicated by Raft like the pod-CIDR table.
//
// Each VM has a primary (runs the guest), at most one replica (holds its replicated RAM), and an
// ownership epoch: the fencing token. Every change of owner is a compare-and-swap on the epoch, so a
// command proposed against an older state is refused everywhere, and a node that sees a newer epoch
// than its own knows its copy is stale (destroyed, never resumed). Failover is refused here unless the
// primary is recorded failed in the spore (by the Byzantine-tolerant vote where one can be formed)
// and its ownership lease (`lease(for:)` in the spore's leases) has lapsed, whatever a faulty leader
// proposes: the replica may start only once the old primary has certainly fenced itself.

import MyceliumCore
import MyceliumIdentity
import MyceliumSpores

/// What to run: as much of a libvirt domain as the network needs to agree on.
public struct VMSpec: Sendable, Equatable {
    public var name: String
    public var memoryMiB: UInt32
    public var vcpus: UInt16
    /// Paths on the hosts (the same on every host that may run it).
    public var kernel: String
    public var initrd: String
    public var cmdline: String

    public static let maxPath = 1024
    public static let minMemoryMiB: UInt32 = 16
    public static let maxMemoryMiB: UInt32 = 1 << 20

    public init(name: String, memoryMiB: UInt32, vcpus: UInt16, kernel: String = "", initrd: String = "", cmdline: String = "") {
        self.name = name; self.memoryMiB = memoryMiB; self.vcpus = vcpus
        self.kernel = kernel; self.initrd = initrd; self.cmdline = cmdline
    }

    /// Why this spec cannot be run, or nil. A name is what libvirt and `virsh` show: 1–63 of
    /// [a-z0-9-], starting with a letter.
    public var problem: String? {
        let n = Array(name.utf8)
        if n.isEmpty || n.count > 63 { return "a VM name is 1 to 63 characters (got \(n.count))" }
        if !(UInt8(ascii: "a")...UInt8(ascii: "z")).contains(n[0]) { return "a VM name starts with a lowercase letter ('\(name)')" }
        if !n.allSatisfy({ (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "-") }) {
            return "a VM name has only lowercase letters, digits and '-' ('\(name)')"
        }
        if memoryMiB < Self.minMemoryMiB || memoryMiB > Self.maxMemoryMiB {
            return "memory \(memoryMiB) MiB is outside \(Self.minMemoryMiB) MiB…\(Self.maxMemoryMiB / 1024) GiB"
        }
        if vcpus == 0 || vcpus > 64 { return "vcpus \(vcpus) is outside 1…64" }
        for (what, p) in [("kernel", kernel), ("initrd", initrd), ("cmdline", cmdline)] where p.utf8.count > Self.maxPath {
            return "\(what) is over \(Self.maxPath) bytes"
        }
        return nil
    }

    func encode(into w: inout ByteWriter) {
        w.string(name); w.u32(memoryMiB); w.u16(vcpus); w.string(kernel); w.string(initrd); w.string(cmdline)
    }

    static func decode(_ r: inout ByteReader) throws -> VMSpec {
        VMSpec(name: try r.string("vm name", limit: 63), memoryMiB: try r.u32(), vcpus: try r.u16(),
               kernel: try r.string("kernel", limit: maxPath), initrd: try r.string("initrd", limit: maxPath),
               cmdline: try r.string("cmdline", limit: maxPath))
    }
}

/// One VM as the network records it.
public struct VMRecord: Sendable, Equatable {
    public var spec: VMSpec
    public var primary: MyceliumIdentity.NodeID
    public var replica: MyceliumIdentity.NodeID?
    /// The fencing token: bumped at every change of owner.
    public var epoch: UInt64
    /// Spore time at which the primary's ownership lease ends, as last renewed (0: never held). Kept
    /// here because the spore forgets a lease once it has ended.
    public var leaseUntil: Int64 = 0
    public var name: String { spec.name }
}

/// A change to the VM table, proposed by a leader's VM controller (or an operator's request).
public enum VMCommand: Sendable, Equatable {
    case create(VMSpec, primary: MyceliumIdentity.NodeID, replica: MyceliumIdentity.NodeID?)
    /// A new replica (nil: none) for the VM at `epoch`; does not change the owner.
    case setReplica(name: String, MyceliumIdentity.NodeID?, epoch: UInt64)
    /// The replica takes over a primary recorded failed whose lease lapsed.
    case failover(name: String, to: MyceliumIdentity.NodeID, epoch: UInt64)
    /// Planned switch to the (synced) replica; the old primary becomes the replica.
    case migrate(name: String, to: MyceliumIdentity.NodeID, epoch: UInt64)
    case delete(name: String)

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 96)
        switch self {
        case let .create(spec, primary, replica):
            w.u8(1); spec.encode(into: &w); w.raw(primary.bytes)
            if let replica { w.bool(true); w.raw(replica.bytes) } else { w.bool(false) }
        case let .setReplica(name, replica, epoch):
            w.u8(2); w.string(name); w.u64(epoch)
            if let replica { w.bool(true); w.raw(replica.bytes) } else { w.bool(false) }
        case let .failover(name, to, epoch): w.u8(3); w.string(name); w.raw(to.bytes); w.u64(epoch)
        case let .migrate(name, to, epoch): w.u8(4); w.string(name); w.raw(to.bytes); w.u64(epoch)
        case let .delete(name): w.u8(5); w.string(name)
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(DecodeError) {
        do {
            var r = ByteReader(bytes)
            let tag = try r.u8()
            switch tag {
            case 1:
                let spec = try VMSpec.decode(&r)
                let primary = try MyceliumIdentity.NodeID(bytes: r.raw(16))
                self = .create(spec, primary: primary, replica: try r.bool("replica") ? MyceliumIdentity.NodeID(bytes: r.raw(16)) : nil)
            case 2:
                let name = try r.string("vm name", limit: 63), epoch = try r.u64()
                self = .setReplica(name: name, try r.bool("replica") ? MyceliumIdentity.NodeID(bytes: r.raw(16)) : nil, epoch: epoch)
            case 3: self = .failover(name: try r.string("vm name", limit: 63), to: try MyceliumIdentity.NodeID(bytes: r.raw(16)), epoch: try r.u64())
            case 4: self = .migrate(name: try r.string("vm name", limit: 63), to: try MyceliumIdentity.NodeID(bytes: r.raw(16)), epoch: try r.u64())
            case 5: self = .delete(name: try r.string("vm name", limit: 63))
            default: throw DecodeError(.invalid(field: "vm command", reason: "unknown tag \(tag)"), at: 0)
            }
            try r.finish()
        } catch let e as DecodeError {
            throw e
        } catch {
            throw DecodeError(.invalid(field: "vm command", reason: "\(error)"), at: 0)
        }
    }
}

/// The VMs the network runs.
public struct VMTable: Sendable, Equatable {
    public internal(set) var vms: [String: VMRecord] = [:]
    public static let maxVMs = 4096

    public init() {}

    /// The spore lease a VM's primary keeps renewed while it runs the guest (its self-fencing clock).
    public static func lease(for name: String) -> String { "vm/" + name }

    /// Seconds of spore time after a lease's end before the replica may take over: room for the
    /// primary's late view of spore time and for leaders' clocks to differ (VMController.swift).
    public static let takeoverSlack: Int64 = 1

    /// Applies `command` against the spore's view of the members and leases. Refusals change nothing
    /// and are identical on every replica.
    public mutating func apply(_ command: VMCommand, spore: PrimarySpore) throws(ControlError) -> [ControlChange] {
        func refuse(_ why: String) -> ControlError { ControlError(.vmRefused(why)) }
        /// The VM's record, if the command was proposed against its current ownership epoch.
        func record(_ name: String, at epoch: UInt64) throws(ControlError) -> VMRecord {
            guard let r = vms[name] else { throw refuse("no VM named '\(name)'") }
            if epoch != r.epoch { throw refuse("'\(name)' is at ownership epoch \(r.epoch), not \(epoch)") }
            return r
        }
        func live(_ n: MyceliumIdentity.NodeID) -> Bool {
            guard let m = spore.members[n] else { return false }
            return m.status == .alive || m.status == .suspect
        }
        switch command {
        case let .create(spec, primary, replica):
            if let p = spec.problem { throw refuse(p) }
            if vms[spec.name] != nil { throw refuse("a VM named '\(spec.name)' exists") }
            if vms.count >= Self.maxVMs { throw refuse("the network runs \(Self.maxVMs) VMs, the most it records") }
            guard live(primary) else { throw refuse("primary \(primary) is not a live member") }
            if let replica {
                guard live(replica) else { throw refuse("replica \(replica) is not a live member") }
                if replica == primary { throw refuse("the replica must be another node than the primary") }
            }
            vms[spec.name] = VMRecord(spec: spec, primary: primary, replica: replica, epoch: 1)
            return [.vm(name: spec.name, vms[spec.name])]

        case let .setReplica(name, replica, epoch):
            var r = try record(name, at: epoch)
            if let replica {
                guard live(replica) else { throw refuse("replica \(replica) is not a live member") }
                if replica == r.primary { throw refuse("the replica must be another node than the primary") }
            }
            r.replica = replica
            vms[name] = r
            return [.vm(name: name, r)]

        case let .failover(name, to, epoch):
            var r = try record(name, at: epoch)
            guard r.replica == to else { throw refuse("\(to) is not the replica of '\(name)'") }
            guard live(to) else { throw refuse("\(to) is not a live member") }
            // Only a primary the network recorded failed, and only once its lease has lapsed: it has
            // paused its guest by then (self-fencing), so two copies never run at once.
            guard spore.members[r.primary].map({ $0.status == .failed || $0.status == .left }) ?? true else {
                throw refuse("primary \(r.primary) of '\(name)' is not recorded failed")
            }
            if r.leaseUntil.saturatingAdding(Self.takeoverSlack) > spore.now {
                throw refuse("the ownership lease of '\(name)' is held by \(r.primary) until \(r.leaseUntil) (+\(Self.takeoverSlack) s; spore time \(spore.now))")
            }
            r.primary = to
            r.replica = nil
            r.epoch += 1
            r.leaseUntil = 0
            vms[name] = r
            return [.vm(name: name, r)]

        case let .migrate(name, to, epoch):
            var r = try record(name, at: epoch)
            guard r.replica == to else { throw refuse("\(to) is not the replica of '\(name)': migrate to the synced replica") }
            guard live(to), live(r.primary) else { throw refuse("both ends of a planned migration must be live members") }
            // Planned: the old primary hands over (it stops before the switch is proposed).
            (r.primary, r.replica) = (to, r.primary)
            r.epoch += 1
            r.leaseUntil = 0
            vms[name] = r
            return [.vm(name: name, r)]

        case let .delete(name):
            guard vms.removeValue(forKey: name) != nil else { throw refuse("no VM named '\(name)'") }
            return [.vm(name: name, nil)]
        }
    }

    /// The spore applied a lease renewal: a VM's primary renewed its ownership lease.
    mutating func noteLease(_ leaseName: String, spore: PrimarySpore) {
        guard leaseName.hasPrefix("vm/"), let l = spore.leases[leaseName] else { return }
        let name = String(leaseName.dropFirst(3))
        guard var r = vms[name], r.primary == l.holder else { return }
        r.leaseUntil = max(r.leaseUntil, l.expiresAt)
        vms[name] = r
    }

    // MARK: placement

    /// Memory the table already places on `node` (as primary or replica: a replica holds the RAM too).
    public func committedMiB(on node: MyceliumIdentity.NodeID) -> UInt64 {
        vms.values.reduce(0) { $0 + (($1.primary == node || $1.replica == node) ? UInt64($1.spec.memoryMiB) : 0) }
    }

    /// Why a copy of `spec` cannot go on `node` (no libvirt, not enough memory), or nil.
    public func placementProblem(for spec: VMSpec, on node: MyceliumIdentity.NodeID, spore: PrimarySpore) -> String? {
        guard let m = spore.members[node] else { return "\(node) is not a member" }
        guard m.capabilities.features.contains(.libvirt) else {
            return "\(node) has no libvirt (its agent found no libvirt daemon at libvirt_uri; start libvirtd there, or choose another node)"
        }
        let free = Int64(m.capabilities.memoryMiB) - Int64(committedMiB(on: node))
        if free >= Int64(spec.memoryMiB) { return nil }
        return "\(node) has \(max(0, free)) MiB left for VMs (\(m.capabilities.memoryMiB) MiB announced, \(committedMiB(on: node)) MiB placed); '\(spec.name)' needs \(spec.memoryMiB) MiB"
    }

    /// Where a copy of `spec` may go: alive members other than `excluding`, with room for its memory
    /// (what they announced minus what the table already places there), most trusted first, then
    /// most free memory, then node ID (deterministic: every leader chooses alike).
    public func candidates(for spec: VMSpec, spore: PrimarySpore, excluding: Set<MyceliumIdentity.NodeID>) -> [MyceliumIdentity.NodeID] {
        spore.members.values
            .filter { $0.status == .alive && !excluding.contains($0.id) && spore.revoked[$0.id] == nil && $0.capabilities.features.contains(.libvirt) }
            .map { m in (m, Int64(m.capabilities.memoryMiB) - Int64(committedMiB(on: m.id))) }
            .filter { $0.1 >= Int64(spec.memoryMiB) }
            .sorted { a, b in
                let ta = spore.trust.score(of: a.0.id), tb = spore.trust.score(of: b.0.id)
                return (ta, a.1, b.0.id) > (tb, b.1, a.0.id)
            }
            .map(\.0.id)
    }

    // MARK: encoding (part of the control-state snapshot)

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 64 + vms.count * 96)
        w.u32(UInt32(vms.count))
        for r in vms.values.sorted(by: { $0.name < $1.name }) {
            r.spec.encode(into: &w); w.raw(r.primary.bytes); w.u64(r.epoch); w.i64(r.leaseUntil)
            if let replica = r.replica { w.bool(true); w.raw(replica.bytes) } else { w.bool(false) }
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(DecodeError) {
        do {
            var r = ByteReader(bytes)
            let n = Int(try r.u32())
            if n > Self.maxVMs { throw DecodeError(.tooLong(field: "vms", length: n, limit: Self.maxVMs), at: 0) }
            for _ in 0..<n {
                let spec = try VMSpec.decode(&r)
                let primary = try MyceliumIdentity.NodeID(bytes: r.raw(16))
                let epoch = try r.u64(), leaseUntil = try r.i64()
                let replica = try r.bool("replica") ? try MyceliumIdentity.NodeID(bytes: r.raw(16)) : nil
                if vms.updateValue(VMRecord(spec: spec, primary: primary, replica: replica, epoch: epoch, leaseUntil: leaseUntil),
                                   forKey: spec.name) != nil {
                    throw DecodeError(.invalid(field: "vm", reason: "'\(spec.name)' listed twice"), at: r.offset)
                }
            }
            try r.finish()
        } catch let e as DecodeError {
            throw e
        } catch {
            throw DecodeError(.invalid(field: "vm table", reason: "\(error)"), at: 0)
        }
    }
}
