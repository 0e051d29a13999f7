// Pod CIDRs in the control state: the network's pod range (set once, like K3s's cluster-cidr) and
// one non-overlapping block per member, assigned by the leader's network controller and refused
// here if it overlaps another node's block, lies outside the pool or names a non-member. Uniqueness
// therefore holds by construction on every replica, whatever a (faulty) leader proposes.

import MyceliumCore
import MyceliumIdentity
import MyceliumSpores

/// An IPv4 prefix such as 10.42.3.0/24 (network address, host bits zero).
public struct CIDR: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let address: UInt32
    public let prefix: UInt8

    public init?(address: UInt32, prefix: UInt8) {
        guard prefix <= 32 else { return nil }
        let mask: UInt32 = prefix == 0 ? 0 : ~UInt32(0) << (32 - UInt32(prefix))
        guard address & ~mask == 0 else { return nil }
        self.address = address; self.prefix = prefix
    }

    /// Parses "a.b.c.d/n"; nil unless it is a canonical network prefix.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let p = UInt8(parts[1]) else { return nil }
        let octets = parts[0].split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4 else { return nil }
        var a: UInt32 = 0
        for o in octets {
            guard let v = UInt8(o), String(v) == o else { return nil }
            a = a << 8 | UInt32(v)
        }
        self.init(address: a, prefix: p)
    }

    public var mask: UInt32 { prefix == 0 ? 0 : ~UInt32(0) << (32 - UInt32(prefix)) }
    public var size: UInt64 { UInt64(1) << (32 - UInt64(prefix)) }
    public func contains(_ other: CIDR) -> Bool { other.prefix >= prefix && other.address & mask == address }
    public func overlaps(_ other: CIDR) -> Bool { contains(other) || other.contains(self) }
    public static func < (a: CIDR, b: CIDR) -> Bool { (a.address, a.prefix) < (b.address, b.prefix) }
    public var description: String {
        "\(address >> 24).\(address >> 16 & 255).\(address >> 8 & 255).\(address & 255)/\(prefix)"
    }
}

/// A change to the pod-CIDR table.
public enum NetworkCommand: Sendable, Equatable {
    /// Sets the pod range and the per-node prefix length; accepted once (changing it would
    /// renumber running pods).
    case configure(pool: CIDR, nodePrefix: UInt8)
    case assign(node: MyceliumIdentity.NodeID, CIDR)
    case release(node: MyceliumIdentity.NodeID)

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 32)
        switch self {
        case let .configure(pool, nodePrefix): w.u8(1); w.u32(pool.address); w.u8(pool.prefix); w.u8(nodePrefix)
        case let .assign(node, cidr): w.u8(2); w.raw(node.bytes); w.u32(cidr.address); w.u8(cidr.prefix)
        case let .release(node): w.u8(3); w.raw(node.bytes)
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(DecodeError) {
        do {
            var r = ByteReader(bytes)
            let tag = try r.u8()
            switch tag {
            case 1:
                let a = try r.u32(), p = try r.u8(), np = try r.u8()
                guard let pool = CIDR(address: a, prefix: p) else { throw DecodeError(.invalid(field: "pool", reason: "not a network prefix"), at: 1) }
                self = .configure(pool: pool, nodePrefix: np)
            case 2:
                let node = try MyceliumIdentity.NodeID(bytes: r.raw(16))
                let a = try r.u32(), p = try r.u8()
                guard let c = CIDR(address: a, prefix: p) else { throw DecodeError(.invalid(field: "cidr", reason: "not a network prefix"), at: 17) }
                self = .assign(node: node, c)
            case 3:
                self = .release(node: try MyceliumIdentity.NodeID(bytes: r.raw(16)))
            default:
                throw DecodeError(.invalid(field: "network command", reason: "unknown tag \(tag)"), at: 0)
            }
            try r.finish()
        } catch let e as DecodeError {
            throw e
        } catch {
            throw DecodeError(.invalid(field: "network command", reason: "\(error)"), at: 0)
        }
    }
}

/// The pod range and each member's block.
public struct PodCIDRTable: Sendable, Equatable {
    public internal(set) var pool: CIDR?
    public internal(set) var nodePrefix: UInt8 = 24
    public internal(set) var assignments: [MyceliumIdentity.NodeID: CIDR] = [:]

    public init() {}

    public func cidr(of node: MyceliumIdentity.NodeID) -> CIDR? { assignments[node] }

    /// The lowest free block of the pool, or nil when the pool is full (or not configured).
    public func firstFree(excluding reserved: Set<CIDR> = []) -> CIDR? {
        guard let pool, nodePrefix >= pool.prefix, nodePrefix <= 30 else { return nil }
        let taken = Set(assignments.values.map(\.address)).union(reserved.map(\.address))
        let step = UInt64(1) << (32 - UInt64(nodePrefix))
        var a = UInt64(pool.address)
        let end = UInt64(pool.address) + pool.size
        while a < end {
            if !taken.contains(UInt32(a)) { return CIDR(address: UInt32(a), prefix: nodePrefix) }
            a += step
        }
        return nil
    }

    /// Whether `c` overlaps no assigned block.
    public func isFree(_ c: CIDR) -> Bool { !assignments.values.contains { $0.overlaps(c) } }

    mutating func apply(_ c: NetworkCommand, spore: PrimarySpore) throws(ControlError) -> [ControlChange] {
        switch c {
        case let .configure(p, np):
            if let pool {
                guard pool == p && nodePrefix == np else {
                    throw ControlError(.networkRefused("the pod range is already \(pool) with /\(nodePrefix) per node; it cannot change"))
                }
                return []
            }
            guard np >= p.prefix, np <= 30, p.prefix >= 8 else {
                throw ControlError(.networkRefused("per-node prefix /\(np) does not fit the pod range \(p)"))
            }
            pool = p; nodePrefix = np
            return [.podPool(p, nodePrefix: np)]
        case let .assign(node, cidr):
            guard let pool else { throw ControlError(.networkRefused("no pod range configured")) }
            guard let m = spore.members[node], m.status == .alive || m.status == .suspect else {
                throw ControlError(.networkRefused("\(node) is not a present member"))
            }
            guard cidr.prefix == nodePrefix, pool.contains(cidr) else {
                throw ControlError(.networkRefused("\(cidr) is not a /\(nodePrefix) block of the pod range \(pool)"))
            }
            if let other = assignments.first(where: { $0.key != node && $0.value.overlaps(cidr) }) {
                throw ControlError(.networkRefused("\(cidr) overlaps \(other.value) of \(other.key)"))
            }
            if assignments[node] == cidr { return [] }
            // A node's block never changes while it has one: that would renumber its running pods.
            if let current = assignments[node] {
                throw ControlError(.networkRefused("\(node) already has \(current)"))
            }
            assignments[node] = cidr
            return [.podCIDR(node: node, cidr)]
        case let .release(node):
            guard assignments[node] != nil else { return [] }
            assignments[node] = nil
            return [.podCIDR(node: node, nil)]
        }
    }

    // Snapshot form: pool flag, pool, prefix, then assignments sorted by node.
    func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 32 + assignments.count * 21)
        if let pool { w.u8(1); w.u32(pool.address); w.u8(pool.prefix) } else { w.u8(0) }
        w.u8(nodePrefix)
        w.u16(UInt16(assignments.count))
        for (node, c) in assignments.sorted(by: { $0.key < $1.key }) { w.raw(node.bytes); w.u32(c.address); w.u8(c.prefix) }
        return w.bytes
    }

    init(decoding bytes: [UInt8]) throws {
        var r = ByteReader(bytes)
        let hasPool = try r.u8()
        guard hasPool <= 1 else { throw DecodeError(.invalid(field: "pod pool flag", reason: "\(hasPool)"), at: 0) }
        if hasPool == 1 {
            let a = try r.u32(), p = try r.u8()
            guard let c = CIDR(address: a, prefix: p) else { throw DecodeError(.invalid(field: "pod pool", reason: "not a prefix"), at: 1) }
            pool = c
        }
        nodePrefix = try r.u8()
        let n = try r.count("pod cidrs", limit: Int(UInt16.max))
        var last: MyceliumIdentity.NodeID?
        for _ in 0..<n {
            let node = try MyceliumIdentity.NodeID(bytes: r.raw(16))
            if let last, !(last < node) { throw DecodeError(.invalid(field: "pod cidrs", reason: "not sorted or duplicated"), at: r.offset) }
            last = node
            let a = try r.u32(), p = try r.u8()
            guard let c = CIDR(address: a, prefix: p) else { throw DecodeError(.invalid(field: "pod cidr", reason: "not a prefix"), at: r.offset) }
            assignments[node] = c
        }
        try r.finish()
    }
}
