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
//
// A planned migration is three steps, each a committed entry: the operator's request
// (`requestMigration`, through the leader: the target becomes the replica if it is not already),
// then either the switch, signed by the primary itself once it has paused its guest at an epoch the
// target committed (`SporeCommand.vmSwitch`: a leader cannot forge it), or an abort (the leader's at
// a deadline, or the primary's when its driver gave up). Both are compare-and-swaps on the epoch and
// the pending migration, so Raft's order, not a timer, decides which copy runs: the target starts
// only after the switch applied, the old primary resumes only after the abort applied.

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
    /// The volume the guest sees as its data disk (`/dev/vda`), by name; "" for none. Where the
    /// volume lives (an RBD image, a file) is each host's to resolve (`EndophyteDriverSettings.diskSource`).
    public var disk: String

    public static let maxPath = 1024
    /// The longest volume name a spec may carry (an RBD image name's limit here).
    public static let maxDisk = 90
    public static let minMemoryMiB: UInt32 = 16
    public static let maxMemoryMiB: UInt32 = 1 << 20

    public init(name: String, memoryMiB: UInt32, vcpus: UInt16, kernel: String = "", initrd: String = "", cmdline: String = "", disk: String = "") {
        self.name = name; self.memoryMiB = memoryMiB; self.vcpus = vcpus
        self.kernel = kernel; self.initrd = initrd; self.cmdline = cmdline; self.disk = disk
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
        if !disk.isEmpty {
            let d = Array(disk.utf8)
            if d.count > Self.maxDisk || !d.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: "@") }) {
                return "disk '\(disk)' is not a volume name (1 to \(Self.maxDisk) printable ASCII characters, no '/', '@' or spaces)"
            }
        }
        return nil
    }

    /// Everything but `disk`, which came later: it is appended where each format allows a trailing
    /// field (VMCommand.create's end, the VM table's trailing section), so older bytes still decode.
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
    /// Control time (Unix ms, `ControlState.nowMillis`) at which the primary's ownership lease ends,
    /// as last renewed (0: never held): the renewal's stamp plus its length. Kept here, to the
    /// millisecond, because the spore counts whole seconds and forgets a lease once it has ended.
    public var leaseUntilMillis: Int64 = 0
    /// A planned migration the operator asked for and that neither switched nor aborted yet.
    public var migration: VMMigration?
    /// How the last planned migration ended, for the operator ("" before the first).
    public var migrationOutcome: String = ""
    public var name: String { spec.name }

    public init(spec: VMSpec, primary: MyceliumIdentity.NodeID, replica: MyceliumIdentity.NodeID?, epoch: UInt64,
                leaseUntilMillis: Int64 = 0, migration: VMMigration? = nil, migrationOutcome: String = "") {
        self.spec = spec; self.primary = primary; self.replica = replica; self.epoch = epoch
        self.leaseUntilMillis = leaseUntilMillis; self.migration = migration; self.migrationOutcome = migrationOutcome
    }
}

/// A planned migration in progress: to which node, since when (spore time).
public struct VMMigration: Sendable, Equatable {
    public var to: MyceliumIdentity.NodeID
    public var since: Int64
    public init(to: MyceliumIdentity.NodeID, since: Int64) { self.to = to; self.since = since }
    /// The longest outcome text kept in a record.
    public static let maxOutcome = 200

    /// `text` cut to at most `limit` UTF-8 bytes, at a character boundary.
    public static func clipped(_ text: String, _ limit: Int) -> String {
        if text.utf8.count <= limit { return text }
        var out = "", n = 0
        for c in text {
            let k = c.utf8.count
            if n + k > limit { break }
            out.append(c); n += k
        }
        return out
    }
}

/// A change to the VM table, proposed by a leader's VM controller (or an operator's request).
public enum VMCommand: Sendable, Equatable {
    case create(VMSpec, primary: MyceliumIdentity.NodeID, replica: MyceliumIdentity.NodeID?)
    /// A new replica (nil: none) for the VM at `epoch`; does not change the owner.
    case setReplica(name: String, MyceliumIdentity.NodeID?, epoch: UInt64)
    /// The replica takes over a primary recorded failed whose lease lapsed.
    case failover(name: String, to: MyceliumIdentity.NodeID, epoch: UInt64)
    /// The planned switch to the migration's target; the old primary becomes the replica. Only the
    /// primary may make it (`SporeCommand.vmSwitch`, signed): it has paused the guest at an epoch the
    /// target committed. Refused as a leader's `ControlEntry.vm`.
    case migrate(name: String, to: MyceliumIdentity.NodeID, epoch: UInt64)
    case delete(name: String)
    /// The operator asks for a planned migration to `to` (made the replica if it is not).
    case requestMigration(name: String, to: MyceliumIdentity.NodeID, epoch: UInt64)
    /// The pending migration ends without a switch; the primary keeps (or resumes) the guest.
    case abortMigration(name: String, epoch: UInt64, reason: String)

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 96)
        switch self {
        case let .create(spec, primary, replica):
            w.u8(1); spec.encode(into: &w); w.raw(primary.bytes)
            if let replica { w.bool(true); w.raw(replica.bytes) } else { w.bool(false) }
            // A trailing field, only when there is a disk: a spec without one encodes as before.
            if !spec.disk.isEmpty { w.string(spec.disk) }
        case let .setReplica(name, replica, epoch):
            w.u8(2); w.string(name); w.u64(epoch)
            if let replica { w.bool(true); w.raw(replica.bytes) } else { w.bool(false) }
        case let .failover(name, to, epoch): w.u8(3); w.string(name); w.raw(to.bytes); w.u64(epoch)
        case let .migrate(name, to, epoch): w.u8(4); w.string(name); w.raw(to.bytes); w.u64(epoch)
        case let .delete(name): w.u8(5); w.string(name)
        case let .requestMigration(name, to, epoch): w.u8(6); w.string(name); w.raw(to.bytes); w.u64(epoch)
        case let .abortMigration(name, epoch, reason): w.u8(7); w.string(name); w.u64(epoch); w.string(VMMigration.clipped(reason, VMMigration.maxOutcome))
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(DecodeError) {
        do {
            var r = ByteReader(bytes)
            let tag = try r.u8()
            switch tag {
            case 1:
                var spec = try VMSpec.decode(&r)
                let primary = try MyceliumIdentity.NodeID(bytes: r.raw(16))
                let replica = try r.bool("replica") ? try MyceliumIdentity.NodeID(bytes: r.raw(16)) : nil
                if !r.isAtEnd { spec.disk = try r.string("disk", limit: VMSpec.maxDisk) }
                self = .create(spec, primary: primary, replica: replica)
            case 2:
                let name = try r.string("vm name", limit: 63), epoch = try r.u64()
                self = .setReplica(name: name, try r.bool("replica") ? MyceliumIdentity.NodeID(bytes: r.raw(16)) : nil, epoch: epoch)
            case 3: self = .failover(name: try r.string("vm name", limit: 63), to: try MyceliumIdentity.NodeID(bytes: r.raw(16)), epoch: try r.u64())
            case 4: self = .migrate(name: try r.string("vm name", limit: 63), to: try MyceliumIdentity.NodeID(bytes: r.raw(16)), epoch: try r.u64())
            case 5: self = .delete(name: try r.string("vm name", limit: 63))
            case 6: self = .requestMigration(name: try r.string("vm name", limit: 63), to: try MyceliumIdentity.NodeID(bytes: r.raw(16)), epoch: try r.u64())
            case 7: self = .abortMigration(name: try r.string("vm name", limit: 63), epoch: try r.u64(),
                                           reason: try r.string("reason", limit: VMMigration.maxOutcome))
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
    /// One per ownership epoch: after a planned switch the new primary takes a lease of its own at
    /// once, while the old one's runs out unused (the old primary paused before the switch).
    public static func lease(for record: VMRecord) -> String { "vm/\(record.name)@\(record.epoch)" }

    /// Milliseconds of control time after a lease's end before the replica may take over: with the
    /// primary's fence margin, room for leaders' clocks to differ and for the primary to pause its
    /// guest (the bound is worked out in VMController.swift).
    public static let takeoverSlackMillis: Int64 = 500

    /// Applies `command` against the spore's view of the members and leases, at control time `now`
    /// (Unix ms, `ControlState.nowMillis`). Refusals change nothing and are identical on every
    /// replica. `author` is the node that signed the command (a spore command's author); nil for a
    /// leader's entry.
    public mutating func apply(_ command: VMCommand, spore: PrimarySpore, now: Int64, author: MyceliumIdentity.NodeID? = nil) throws(ControlError) -> [ControlChange] {
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
            if let m = r.migration, m.to != replica {
                r.migration = nil
                r.migrationOutcome = "aborted: the target \(m.to) is no longer the replica"
            }
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
            let free = r.leaseUntilMillis.saturatingAdding(Self.takeoverSlackMillis)
            if free > now {
                throw refuse("the ownership lease of '\(name)' held by \(r.primary) leaves the replica free to start in \(free.saturatingSubtracting(now)) ms (lease end + \(Self.takeoverSlackMillis) ms slack)")
            }
            r.primary = to
            r.replica = nil
            r.epoch += 1
            r.leaseUntilMillis = 0
            if r.migration != nil { r.migration = nil; r.migrationOutcome = VMMigration.clipped("aborted: the primary failed; failed over to \(to)", VMMigration.maxOutcome) }
            vms[name] = r
            return [.vm(name: name, r)]

        case let .migrate(name, to, epoch):
            var r = try record(name, at: epoch)
            guard author == r.primary else { throw refuse("only the primary of '\(name)' switches it (it pauses the guest first)") }
            guard let m = r.migration, m.to == to else { throw refuse("no planned migration of '\(name)' to \(to) is pending") }
            guard r.replica == to else { throw refuse("\(to) is not the replica of '\(name)'") }
            guard live(to) else { throw refuse("the target \(to) is not a live member") }
            (r.primary, r.replica) = (to, r.primary)
            r.epoch += 1
            r.leaseUntilMillis = 0
            r.migration = nil
            r.migrationOutcome = VMMigration.clipped("switched to \(to) at epoch \(r.epoch) (spore time \(spore.now), \(max(0, spore.now - m.since)) s after the request)", VMMigration.maxOutcome)
            vms[name] = r
            return [.vm(name: name, r)]

        case let .requestMigration(name, to, epoch):
            var r = try record(name, at: epoch)
            if let m = r.migration { throw refuse("'\(name)' is already migrating to \(m.to)") }
            if to == r.primary { throw refuse("'\(name)' already runs on \(to)") }
            guard spore.members[to]?.status == .alive else { throw refuse("the target \(to) is not an alive member") }
            guard spore.members[r.primary]?.status == .alive else { throw refuse("the primary \(r.primary) of '\(name)' is not alive: it cannot hand over") }
            // The target holds the replica during the migration: the old replica's copy is dropped.
            r.replica = to
            r.migration = VMMigration(to: to, since: spore.now)
            r.migrationOutcome = ""
            vms[name] = r
            return [.vm(name: name, r)]

        case let .abortMigration(name, epoch, reason):
            var r = try record(name, at: epoch)
            guard r.migration != nil else { throw refuse("no planned migration of '\(name)' is pending") }
            if let author, author != r.primary { throw refuse("only the primary of '\(name)' or the leader aborts its migration") }
            r.migration = nil
            r.migrationOutcome = VMMigration.clipped("aborted: " + reason, VMMigration.maxOutcome)
            vms[name] = r
            return [.vm(name: name, r)]

        case let .delete(name):
            if author != nil { throw refuse("a VM is deleted through the leader") }
            guard vms.removeValue(forKey: name) != nil else { throw refuse("no VM named '\(name)'") }
            return [.vm(name: name, nil)]
        }
    }

    /// The spore applied a lease renewal stamped `now` (control time, ms): a VM's primary renewed its
    /// ownership lease for `ttlSeconds`.
    mutating func noteLease(_ leaseName: String, ttlSeconds: UInt32, now: Int64, spore: PrimarySpore) {
        guard leaseName.hasPrefix("vm/"), let l = spore.leases[leaseName], let at = leaseName.lastIndex(of: "@") else { return }
        let name = String(leaseName[leaseName.index(leaseName.startIndex, offsetBy: 3)..<at])
        guard var r = vms[name], r.primary == l.holder, Self.lease(for: r) == leaseName else { return }
        r.leaseUntilMillis = max(r.leaseUntilMillis, now.saturatingAdding(Int64(ttlSeconds) * 1000))
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
            r.spec.encode(into: &w); w.raw(r.primary.bytes); w.u64(r.epoch); w.i64(r.leaseUntilMillis)
            if let replica = r.replica { w.bool(true); w.raw(replica.bytes) } else { w.bool(false) }
            if let m = r.migration { w.bool(true); w.raw(m.to.bytes); w.i64(m.since) } else { w.bool(false) }
            w.string(r.migrationOutcome)
        }
        // Data disks came later: a trailing section (count, then name and volume per VM with a
        // disk), written only when some VM has one, so a table without disks encodes as before and
        // older snapshots (which end here) still decode with every disk "".
        let disks = vms.values.filter { !$0.spec.disk.isEmpty }.sorted(by: { $0.name < $1.name })
        if !disks.isEmpty {
            w.u32(UInt32(disks.count))
            for r in disks { w.string(r.name); w.string(r.spec.disk) }
        }
        return w.bytes
    }

    /// `version` 2 (snapshot format 2) has no migration fields, 3 has them, 4 keeps lease ends in
    /// milliseconds (before: whole spore seconds).
    public init(decoding bytes: [UInt8], version: UInt16 = 4) throws(DecodeError) {
        do {
            var r = ByteReader(bytes)
            let n = Int(try r.u32())
            if n > Self.maxVMs { throw DecodeError(.tooLong(field: "vms", length: n, limit: Self.maxVMs), at: 0) }
            for _ in 0..<n {
                let spec = try VMSpec.decode(&r)
                let primary = try MyceliumIdentity.NodeID(bytes: r.raw(16))
                let epoch = try r.u64(), leaseEnd = try r.i64()
                let leaseUntil = version >= 4 ? leaseEnd : leaseEnd.saturatingMultiplied(by: 1000)
                let replica = try r.bool("replica") ? try MyceliumIdentity.NodeID(bytes: r.raw(16)) : nil
                var migration: VMMigration?, outcome = ""
                if version >= 3 {
                    if try r.bool("migration") { migration = VMMigration(to: try MyceliumIdentity.NodeID(bytes: r.raw(16)), since: try r.i64()) }
                    outcome = try r.string("migration outcome", limit: VMMigration.maxOutcome)
                }
                if vms.updateValue(VMRecord(spec: spec, primary: primary, replica: replica, epoch: epoch, leaseUntilMillis: leaseUntil,
                                            migration: migration, migrationOutcome: outcome),
                                   forKey: spec.name) != nil {
                    throw DecodeError(.invalid(field: "vm", reason: "'\(spec.name)' listed twice"), at: r.offset)
                }
            }
            if !r.isAtEnd {
                let k = Int(try r.u32())
                if k > n { throw DecodeError(.tooLong(field: "vm disks", length: k, limit: n), at: r.offset) }
                for _ in 0..<k {
                    let name = try r.string("vm name", limit: 63), disk = try r.string("disk", limit: VMSpec.maxDisk)
                    guard !disk.isEmpty, vms[name] != nil, vms[name]!.spec.disk.isEmpty else {
                        throw DecodeError(.invalid(field: "vm disk", reason: "disk of '\(name)': unknown VM, listed twice or empty"), at: r.offset)
                    }
                    vms[name]!.spec.disk = disk
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
