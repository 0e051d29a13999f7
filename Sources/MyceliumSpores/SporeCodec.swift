import MyceliumCore
import MyceliumIdentity
import MyceliumVote

// Deterministic bytes for a primary spore: everything sorted, so two replicas with the same state
// produce the same bytes (and the same seed-spore signature input).

extension PrimarySpore {
    /// v4: members' capabilities carry features (MYS3 had none; no network of it exists to read).
    static let magic: [UInt8] = Array("MYS4".utf8)

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 256 + members.count * 200)
        w.raw(Self.magic)
        w.raw(network.genesisKey.bytes)
        w.u64(epoch.term); w.u64(epoch.index); w.i64(now)
        w.u8(phase.rawValue)
        w.u32(UInt32(members.count))
        for m in members.values.sorted(by: { $0.id < $1.id }) {
            w.blob(m.certificate.encoded())
            w.raw(m.key.bytes)
            w.u16(UInt16(m.addresses.count)); for a in m.addresses { w.string(a) }
            w.u16(m.capabilities.cpus); w.u32(m.capabilities.memoryMiB); w.u32(m.capabilities.diskGiB)
            w.u32(m.capabilities.features.rawValue)
            w.u8(m.status.rawValue); w.i64(m.expiresAt); w.i64(m.since)
        }
        w.u16(UInt16(sclerotia.count)); for s in sclerotia { w.raw(s.bytes) }
        w.u32(UInt32(settings.count))
        for (k, v) in settings.sorted(by: { $0.key < $1.key }) { w.string(k); w.string(v) }
        w.u32(UInt32(leases.count))
        for l in leases.values.sorted(by: { $0.name < $1.name }) { w.string(l.name); w.raw(l.holder.bytes); w.i64(l.expiresAt) }
        trust.encode(into: &w)
        w.i64(trustEpochStart); w.u64(voteSequence)
        w.u16(UInt16(approvedSclerotia.count)); for n in approvedSclerotia.sorted() { w.raw(n.bytes) }
        w.u16(UInt16(rounds.count)); for r in rounds.values.sorted(by: { $0.sequence < $1.sequence }) { r.encode(into: &w) }
        encodeIssuance(into: &w)
        return w.bytes
    }

    /// Decodes and checks every limit; a spore that exceeds one is refused as a whole.
    public init(decoding bytes: [UInt8], limits: SporeLimits = SporeLimits()) throws(SporeError) {
        do {
            var r = ByteReader(bytes)
            guard try r.raw(4) == Self.magic else { throw DecodeError(.badMagic, at: 0) }
            self.init(network: NetworkIdentity(genesisKey: try PublicKey(bytes: r.raw(32))), limits: limits)
            epoch = SporeEpoch(term: try r.u64(), index: try r.u64())
            now = try r.i64()
            let p = try r.u8()
            guard let ph = GovernancePhase(rawValue: p) else { throw DecodeError(.invalid(field: "phase", reason: "\(p)"), at: r.offset - 1) }
            phase = ph
            let nm = Int(try r.u32())
            if nm > limits.maxMembers { throw SporeError(.beyondLimits("members: \(nm) > \(limits.maxMembers)")) }
            for _ in 0..<nm {
                let cert = try MembershipCertificate(decoding: r.blob("certificate", limit: MembershipCertificate.maxEncodedSize))
                if cert.networkID != network.id { throw SporeError(.wrongNetwork(expected: network.id, actual: cert.networkID)) }
                let key = try PublicKey(bytes: r.raw(32))
                let na = try r.count("addresses", limit: limits.maxAddressesPerMember)
                var addrs: [String] = []
                for _ in 0..<na { addrs.append(try r.string("address", limit: limits.maxAddressLength)) }
                let cap = Capabilities(cpus: try r.u16(), memoryMiB: try r.u32(), diskGiB: try r.u32(),
                                       features: CapabilityFeatures(rawValue: try r.u32()))
                let s = try r.u8()
                guard let status = MemberStatus(rawValue: s) else { throw DecodeError(.invalid(field: "status", reason: "\(s)"), at: r.offset - 1) }
                let m = Member(certificate: cert, key: key, addresses: addrs, capabilities: cap, status: status,
                               expiresAt: try r.i64(), since: try r.i64())
                if members[m.id] != nil { throw SporeError(.malformed("spore: member \(m.id) listed twice")) }
                members[m.id] = m
                keys.learn(node: m.id, key: m.key)
            }
            let ns = try r.count("sclerotia", limit: limits.maxSclerotia)
            for _ in 0..<ns { sclerotia.append(try NodeID(bytes: r.raw(16))) }
            let nset = Int(try r.u32())
            if nset > limits.maxSettings { throw SporeError(.beyondLimits("settings: \(nset) > \(limits.maxSettings)")) }
            for _ in 0..<nset { settings[try r.string("key", limit: limits.maxSettingLength)] = try r.string("value", limit: limits.maxSettingLength) }
            let nl = Int(try r.u32())
            if nl > limits.maxLeases { throw SporeError(.beyondLimits("leases: \(nl) > \(limits.maxLeases)")) }
            for _ in 0..<nl {
                let l = Lease(name: try r.string("lease", limit: limits.maxLeaseNameLength), holder: try NodeID(bytes: r.raw(16)), expiresAt: try r.i64())
                leases[l.name] = l
            }
            trust = try TrustLedger(from: &r)
            trustEpochStart = try r.i64(); voteSequence = try r.u64()
            let na = try r.count("approved sclerotia", limit: limits.maxMembers)
            for _ in 0..<na { approvedSclerotia.insert(try NodeID(bytes: r.raw(16))) }
            let nr = try r.count("vote rounds", limit: limits.maxRounds)
            for _ in 0..<nr {
                let round = try SporeRound(from: &r)
                if rounds.updateValue(round, forKey: round.sequence) != nil { throw SporeError(.malformed("spore: vote round \(round.sequence) listed twice")) }
            }
            try decodeIssuance(&r)
            try r.finish()
        } catch let e as SporeError {
            throw e
        } catch {
            throw SporeError(.malformed("spore: \(error)"))
        }
    }
}
