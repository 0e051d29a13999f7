// Service spores (the roadmap's Service seed spores): one signed record per service of where its
// instances run and answer, written by the Raft leader beside the master seed spore (seed
// directories and URLs), so a cold node or an outside client finds a service without a live agent.
//
// A service spore carries its signer's membership certificate but not the network's state: it is
// verified against a *seed spore* of the same network (normally the NETWORK.seed beside it), the
// same authority that seed spores use. The signer must be a sclerotium of that spore (the bootstrap
// agent before the handoff), its certificate must verify against the spore's sclerotia chain (from
// the genesis key, which the network ID names) at the time it signed, and it must not be revoked.
//
// Which of two records of one service a reader believes is `ServiceSpore.authoritative`: the one
// written under the higher Raft term, then the higher applied index (docs/SERVICES.md, "Service
// spores"). Everything here is pure: time is an argument.

import MyceliumCore
import MyceliumIdentity

public struct ServiceSpore: Sendable, Equatable {
    static let magic: [UInt8] = Array("MYSV".utf8)
    static let version: UInt8 = 1
    static let domain: [UInt8] = Array("mycelium/service-spore/v1\0".utf8)
    /// A hard cap for readers (1,000 instances with long addresses fit well under it).
    public static let maxSize = 512 << 10
    public static let maxInstances = 1000
    public static let maxPorts = 64
    public static let maxNameLength = 63
    public static let maxAddressLength = 64

    public struct Port: Sendable, Equatable {
        public var name: String
        public var port: UInt16
        public var proto: String
        public init(name: String, port: UInt16, proto: String = "tcp") { self.name = name; self.port = port; self.proto = proto }
    }

    /// One assigned slot of the service.
    public struct Instance: Sendable, Equatable {
        public var slot: UInt16
        /// The node it is assigned to.
        public var node: NodeID
        /// Where it answers, as its node reported ("" before it reported an address).
        public var address: String
        /// The spec generation it runs (0: not reported yet).
        public var generation: UInt64
        /// Running, healthy, at the service's current generation, on its assigned node.
        public var serving: Bool
        public init(slot: UInt16, node: NodeID, address: String, generation: UInt64, serving: Bool) {
            self.slot = slot; self.node = node; self.address = address; self.generation = generation; self.serving = serving
        }
    }

    /// The node that runs a singleton (a service of one replica), and until when (control time,
    /// Unix ms) its node lease `svc/NODE` runs: after that the leader may move the singleton.
    public struct Owner: Sendable, Equatable {
        public var node: NodeID
        public var leaseUntilMillis: Int64
        public init(node: NodeID, leaseUntilMillis: Int64) { self.node = node; self.leaseUntilMillis = leaseUntilMillis }
    }

    /// What a record says about its service: everything but when and by whom it was written. The
    /// leader writes a record only when this changed.
    public struct Content: Sendable, Equatable {
        public var name: String
        /// A tombstone: the service was removed (it outranks an older record of it).
        public var removed: Bool
        public var generation: UInt64
        public var replicas: UInt16
        public var driver: String
        public var ports: [Port]
        /// Sorted by slot, one per slot.
        public var instances: [Instance]
        /// Set for a singleton that is placed.
        public var owner: Owner?

        public init(name: String, removed: Bool = false, generation: UInt64, replicas: UInt16, driver: String, ports: [Port] = [],
                    instances: [Instance] = [], owner: Owner? = nil) {
            self.name = name; self.removed = removed; self.generation = generation; self.replicas = replicas; self.driver = driver
            self.ports = ports; self.instances = instances.sorted { $0.slot < $1.slot }; self.owner = owner
        }

        /// A removed service's record.
        public static func tombstone(_ name: String, generation: UInt64 = 0) -> Content {
            Content(name: name, removed: true, generation: generation, replicas: 0, driver: "")
        }

        /// Instances that answer traffic.
        public var serving: [Instance] { instances.filter(\.serving) }

        /// Why this content cannot be written (nil: it can), checked by the writer and the reader alike.
        public var problem: String? {
            if let p = ServiceSpore.nameProblem(name) { return p }
            if driver.utf8.count > 16 { return "driver name longer than 16 bytes" }
            if ports.count > ServiceSpore.maxPorts { return "\(ports.count) ports, over \(ServiceSpore.maxPorts)" }
            for p in ports where p.name.utf8.count > ServiceSpore.maxNameLength || p.proto.utf8.count > 8 { return "port '\(p.name)' has a name or protocol too long" }
            if instances.count > ServiceSpore.maxInstances { return "\(instances.count) instances, over \(ServiceSpore.maxInstances)" }
            for (a, b) in zip(instances, instances.dropFirst()) where a.slot >= b.slot { return "slot \(b.slot) listed twice or out of order" }
            for i in instances where i.address.utf8.count > ServiceSpore.maxAddressLength { return "the address of slot \(i.slot) is too long" }
            if removed && (!instances.isEmpty || owner != nil) { return "a removed service has no instances" }
            return nil
        }

        func encode(into w: inout ByteWriter) {
            w.string(name)
            w.u8((removed ? 1 : 0) | (owner != nil ? 2 : 0))
            w.u64(generation); w.u16(replicas); w.string(driver)
            w.u16(UInt16(ports.count)); for p in ports { w.string(p.name); w.u16(p.port); w.string(p.proto) }
            w.u16(UInt16(instances.count))
            for i in instances { w.u16(i.slot); w.raw(i.node.bytes); w.string(i.address); w.u64(i.generation); w.bool(i.serving) }
            if let owner { w.raw(owner.node.bytes); w.i64(owner.leaseUntilMillis) }
        }

        static func decode(_ r: inout ByteReader) throws -> Content {
            let name = try r.string("service name", limit: ServiceSpore.maxNameLength)
            let flagsAt = r.offset
            let flags = try r.u8()
            guard flags & ~3 == 0 else { throw DecodeError(.invalid(field: "flags", reason: "unknown bits 0x\(String(flags, radix: 16))"), at: flagsAt) }
            let generation = try r.u64(), replicas = try r.u16()
            let driver = try r.string("driver", limit: 16)
            var ports: [Port] = []
            for _ in 0..<(try r.count("ports", limit: ServiceSpore.maxPorts)) {
                ports.append(Port(name: try r.string("port name", limit: ServiceSpore.maxNameLength), port: try r.u16(), proto: try r.string("protocol", limit: 8)))
            }
            var instances: [Instance] = []
            for _ in 0..<(try r.count("instances", limit: ServiceSpore.maxInstances)) {
                let at = r.offset
                let i = Instance(slot: try r.u16(), node: try NodeID(bytes: r.raw(16)), address: try r.string("address", limit: ServiceSpore.maxAddressLength),
                                 generation: try r.u64(), serving: try r.bool("serving"))
                // One spelling per record: slots strictly increasing.
                if let last = instances.last, last.slot >= i.slot {
                    throw DecodeError(.invalid(field: "instances", reason: "slot \(i.slot) after slot \(last.slot)"), at: at)
                }
                instances.append(i)
            }
            let owner = flags & 2 != 0 ? Owner(node: try NodeID(bytes: r.raw(16)), leaseUntilMillis: try r.i64()) : nil
            var c = Content(name: name, removed: flags & 1 != 0, generation: generation, replicas: replicas, driver: driver, ports: ports,
                            instances: [], owner: owner)
            c.instances = instances
            if let p = c.problem { throw DecodeError(.invalid(field: "service spore", reason: p), at: 0) }
            return c
        }
    }

    public let network: NetworkID
    public let content: Content
    /// The writer's Raft term and the index of the last entry it had applied.
    public let epoch: SporeEpoch
    /// When the leader wrote it (its wall clock, Unix ms).
    public let issuedAtMillis: Int64
    public let signer: MembershipCertificate
    public let signature: [UInt8]

    public var name: String { content.name }

    /// Signs `content` as `signer` (a sclerotium's certificate and key). The content must have no `problem`.
    public init(network: NetworkID, content: Content, epoch: SporeEpoch, issuedAtMillis: Int64, signer: MembershipCertificate, key: SigningKey) {
        precondition(content.problem == nil, "service spore content: \(content.problem!)")
        self.network = network; self.content = content; self.epoch = epoch; self.issuedAtMillis = issuedAtMillis; self.signer = signer
        self.signature = key.sign(Self.domain + Self.body(network, content, epoch, issuedAtMillis, signer.encoded()))
    }

    static func body(_ network: NetworkID, _ content: Content, _ epoch: SporeEpoch, _ at: Int64, _ signer: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: 256 + content.instances.count * 64 + signer.count)
        w.raw(magic); w.u8(version); w.raw(network.bytes); w.u64(epoch.term); w.u64(epoch.index); w.i64(at)
        content.encode(into: &w)
        w.blob(signer)
        return w.bytes
    }

    public func encoded() -> [UInt8] {
        Self.body(network, content, epoch, issuedAtMillis, signer.encoded()) + signature
    }

    /// Reads the record *without* judging it (for the fuzzer, and for a writer deciding whether a
    /// file already says the same). Use `init(verifying:…)` for anything a decision rests on.
    public init(decoding bytes: [UInt8]) throws(SporeError) {
        if bytes.count > Self.maxSize { throw SporeError(.beyondLimits("service spore size: \(bytes.count) > \(Self.maxSize) bytes")) }
        do {
            var r = ByteReader(bytes)
            guard try r.raw(4) == Self.magic else { throw DecodeError(.badMagic, at: 0) }
            let v = try r.u8()
            guard v == Self.version else {
                throw DecodeError(.unknownVersion(field: "service spore (this build reads version \(Self.version): upgrade it)", value: UInt64(v)), at: 4)
            }
            network = try NetworkID(bytes: r.raw(16))
            epoch = SporeEpoch(term: try r.u64(), index: try r.u64())
            issuedAtMillis = try r.i64()
            content = try Content.decode(&r)
            signer = try MembershipCertificate(decoding: r.blob("signer", limit: MembershipCertificate.maxEncodedSize))
            signature = try r.raw(64)
            try r.finish()
        } catch let e as SporeError {
            throw e
        } catch {
            throw SporeError(.malformed("service spore: \(error)"))
        }
    }

    /// Decodes and verifies against `authority`, the primary spore of a verified seed spore of
    /// `network`. Each refusal has its own error: malformed or truncated, another network, a bad
    /// signature, a signer that is not a sclerotium of that spore, a certificate that was not valid
    /// when it signed, a record from the future, or (with `service`) a record of another service.
    public init(verifying bytes: [UInt8], network: NetworkID, authority: PrimarySpore, now: Int64, service: String? = nil) throws(SporeError) {
        let s = try ServiceSpore(decoding: bytes)
        if s.network != network { throw SporeError(.wrongNetwork(expected: network, actual: s.network)) }
        if s.signer.networkID != network { throw SporeError(.wrongNetwork(expected: network, actual: s.signer.networkID)) }
        guard s.signer.nodeKey.verify(s.signature, for: Self.domain + Array(bytes.dropLast(64))) else {
            throw SporeError(.badSignature("service spore '\(s.name)'"))
        }
        if authority.network.id != network { throw SporeError(.wrongNetwork(expected: network, actual: authority.network.id)) }
        let signedAt = ControlTime.seconds(s.issuedAtMillis)
        if signedAt > now.saturatingAdding(maxClockSkew) {
            throw SporeError(.invalid("service spore '\(s.name)' says it was written at \(signedAt), after now (\(now)): the writer's clock or this one is wrong"))
        }
        // The certificate was valid when it signed (a stable service's record is not rewritten
        // when the certificate is renewed), and the signer governs the network the seed spore shows.
        try SporeError.wrap { () throws(IdentityError) in
            try s.signer.verify(chain: authority.chain, now: signedAt, revoked: Set(authority.revoked.keys))
        }
        let mayWrite = authority.phase == .distributed
            ? authority.sclerotia.contains(s.signer.nodeID)
            : authority.members[s.signer.nodeID]?.roles.contains(.inviter) == true
        guard mayWrite else { throw SporeError(.notASclerotium(s.signer.nodeID)) }
        if let service, service != s.name {
            throw SporeError(.invalid("the file holds the service spore of '\(s.name)', not of '\(service)'"))
        }
        self = s
    }

    /// Why `name` cannot be a service's name (and a file name): nil when it can.
    public static func nameProblem(_ name: String) -> String? {
        let b = Array(name.utf8)
        if b.isEmpty || b.count > maxNameLength { return "a service name has 1 to \(maxNameLength) characters ('\(name)')" }
        let ok = b.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d }
        if !ok || b.first == 0x2d || b.last == 0x2d {
            return "a service name has only lowercase letters, digits and inner '-' ('\(name)')"
        }
        return nil
    }

    /// The file name of `service`'s record in a seed directory or under a seed URL.
    public static func fileName(network: NetworkID, service: String) -> String {
        network.description + ".service-" + service + ".spore"
    }
}

// MARK: - Authority

extension ServiceSpore {
    /// Of two verified records of the same service, the one a reader believes: written under the
    /// higher Raft term (a leader elected after a partition outranks the old one, whatever either
    /// applied), then at the higher applied index; for the same position, the later written, then
    /// the larger signature (only so that every reader picks the same one).
    ///
    /// Within one term there is one leader and its records only move forward, so the rule orders
    /// honest records exactly; two different contents at one epoch can only come from a sclerotium
    /// that signed what the network did not commit (`conflicts`).
    public static func authoritative(_ a: ServiceSpore, _ b: ServiceSpore) -> ServiceSpore {
        if a.epoch != b.epoch { return a.epoch > b.epoch ? a : b }
        if a.issuedAtMillis != b.issuedAtMillis { return a.issuedAtMillis > b.issuedAtMillis ? a : b }
        return a.signature.lexicographicallyPrecedes(b.signature) ? b : a
    }

    /// Whether `a` and `b` disagree about what the network committed at one position.
    public static func conflicts(_ a: ServiceSpore, _ b: ServiceSpore) -> Bool {
        a.name == b.name && a.epoch == b.epoch && a.content != b.content
    }

    /// The singleton's owner a reader should use at `nowMillis`: the record's owner, and whether its
    /// node lease still ran then (once it ended, the network may have moved the singleton: look for
    /// a newer record, or ask a live agent).
    public func owner(atMillis nowMillis: Int64) -> (node: NodeID, leaseValid: Bool)? {
        guard let o = content.owner else { return nil }
        return (o.node, o.leaseUntilMillis > nowMillis)
    }
}

/// The outcome of choosing among the records of one service read from several places.
public struct ServiceSporeChoice: Sendable {
    /// The record believed (nil: none verified).
    public var chosen: ServiceSpore?
    /// Records at the chosen one's epoch that say something else (a sclerotium equivocated):
    /// the choice is deterministic but the operator should look.
    public var conflicting: [ServiceSpore]

    /// Applies `ServiceSpore.authoritative` over `records` (all of one service; order does not matter).
    public init(_ records: [ServiceSpore]) {
        chosen = records.reduce(nil as ServiceSpore?) { best, r in best.map { ServiceSpore.authoritative($0, r) } ?? r }
        conflicting = chosen.map { c in records.filter { ServiceSpore.conflicts($0, c) } } ?? []
    }
}

/// Unix milliseconds to whole seconds, rounding down (also before 1970).
enum ControlTime {
    static func seconds(_ millis: Int64) -> Int64 { millis >= 0 ? millis / 1000 : -((-(millis + 1)) / 1000) - 1 }
}
