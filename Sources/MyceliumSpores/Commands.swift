import MyceliumCore
import MyceliumIdentity

/// A change to the primary spore. Carried in Raft entries as a `SignedCommand`.
public enum SporeCommand: Sendable, Equatable {
    /// A node enters (or re-enters) the network with a certificate the network issued.
    case admit(MembershipCertificate)
    /// The author says it is present (its lease in the spore is renewed) and what it offers.
    case refresh(Capabilities)
    /// The author connected to `node` at `address`: the address may be published.
    case confirmAddress(node: NodeID, address: String)
    case setStatus(node: NodeID, MemberStatus)
    case setSclerotia([NodeID])
    /// The bootstrap agent hands control to the sclerotia.
    case handoff
    case acquireLease(name: String, ttlSeconds: UInt32)
    /// `acquireLease` stamped with the holder's run token (a random number the holder picks at each
    /// start). The spore treats both alike; the holder trusts a lease only from a renewal carrying
    /// its current token, so a restarted holder replaying its own old renewals from the Raft log never
    /// takes them for fresh ones.
    case renewLease(name: String, ttlSeconds: UInt32, run: UInt64)
    case releaseLease(name: String)
    case setSetting(key: String, value: String)
    case rotateKey(KeyRotation)
    /// Only advances spore time (the leader proposes one when nothing else happens).
    case tick
    /// A governor opens a Byzantine-tolerant round about `node`; deadlines in each voter's ticks.
    case openVote(VoteKind, node: NodeID, commitTicks: UInt32, revealTicks: UInt32)
    /// Any member commits the round's decision certificate (the spore verifies it).
    case decideVote(sequence: UInt64, certificate: [UInt8])
    /// Any member commits proof of a voter's misbehaviour in a round (the spore verifies and slashes).
    case voteEvidence(sequence: UInt64, evidence: [UInt8])
    /// A governor closes a round that failed or stalled.
    case closeVote(sequence: UInt64)
    /// Open the issuance of a certificate (admission by invite, renewal, role change).
    case requestCertificate(CertificateRequest)
    /// A signer of the issuance's generation adds its signature.
    case signCertificate(id: UInt64, QuorumSignature)
    /// A sclerotium of generation g−1 signs the pending link g.
    case signLink(generation: UInt64, QuorumSignature)
    /// The network refuses `node` from now on (an operator's decision).
    case revoke(node: NodeID, reason: String)
    /// A VM's primary hands it over to `to` (a planned migration): it has paused the guest at an
    /// epoch `to` committed. The spore only checks the signature; the VM table decides (MyceliumControl).
    case vmSwitch(name: String, to: NodeID, epoch: UInt64)
    /// A VM's primary gives up its pending planned migration (its guest keeps running there).
    case vmAbortMigration(name: String, epoch: UInt64, reason: String)

    /// Large enough for a decision certificate or evidence of a few hundred voters.
    static let maxEncoded = 96 * 1024

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 64)
        switch self {
        case .admit(let c): w.u8(1); w.blob(c.encoded())
        case .refresh(let cap) where cap.features.isEmpty: w.u8(2); w.u16(cap.cpus); w.u32(cap.memoryMiB); w.u32(cap.diskGiB)
        case .refresh(let cap): w.u8(21); w.u16(cap.cpus); w.u32(cap.memoryMiB); w.u32(cap.diskGiB); w.u32(cap.features.rawValue)
        case let .confirmAddress(node, address): w.u8(3); w.raw(node.bytes); w.string(address)
        case let .setStatus(node, status): w.u8(4); w.raw(node.bytes); w.u8(status.rawValue)
        case .setSclerotia(let ids): w.u8(5); w.u16(UInt16(ids.count)); for i in ids { w.raw(i.bytes) }
        case .handoff: w.u8(6)
        case let .vmSwitch(name, to, epoch): w.u8(22); w.string(name); w.raw(to.bytes); w.u64(epoch)
        case let .vmAbortMigration(name, epoch, reason): w.u8(23); w.string(name); w.u64(epoch); w.string(reason)
        case let .acquireLease(name, ttl): w.u8(7); w.string(name); w.u32(ttl)
        case let .releaseLease(name): w.u8(8); w.string(name)
        case let .setSetting(k, v): w.u8(9); w.string(k); w.string(v)
        case .rotateKey(let r): w.u8(10); w.blob(r.encoded())
        case .tick: w.u8(11)
        case let .openVote(kind, node, ct, rt): w.u8(12); w.u8(kind.rawValue); w.raw(node.bytes); w.u32(ct); w.u32(rt)
        case let .decideVote(seq, cert): w.u8(13); w.u64(seq); w.blob(cert)
        case let .voteEvidence(seq, e): w.u8(14); w.u64(seq); w.blob(e)
        case let .closeVote(seq): w.u8(15); w.u64(seq)
        case .requestCertificate(let r): w.u8(16); r.encode(into: &w)
        case let .signCertificate(id, s): w.u8(17); w.u64(id); w.u8(s.index); w.raw(s.signature)
        case let .signLink(g, s): w.u8(18); w.u64(g); w.u8(s.index); w.raw(s.signature)
        case let .revoke(node, reason): w.u8(19); w.raw(node.bytes); w.string(reason)
        case let .renewLease(name, ttl, run): w.u8(20); w.string(name); w.u32(ttl); w.u64(run)
        }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(SporeError) {
        do {
            var r = ByteReader(bytes)
            let tag = try r.u8()
            switch tag {
            case 1: self = .admit(try MembershipCertificate(decoding: r.blob("certificate", limit: MembershipCertificate.maxEncodedSize)))
            case 2: self = .refresh(Capabilities(cpus: try r.u16(), memoryMiB: try r.u32(), diskGiB: try r.u32()))
            case 3: self = .confirmAddress(node: try NodeID(bytes: r.raw(16)), address: try r.string("address", limit: 255))
            case 4:
                let node = try NodeID(bytes: r.raw(16))
                let s = try r.u8()
                guard let status = MemberStatus(rawValue: s) else { throw DecodeError(.invalid(field: "status", reason: "\(s)"), at: 17) }
                self = .setStatus(node: node, status)
            case 5:
                let n = try r.count("sclerotia", limit: 16)
                var ids: [NodeID] = []
                for _ in 0..<n { ids.append(try NodeID(bytes: r.raw(16))) }
                self = .setSclerotia(ids)
            case 6: self = .handoff
            case 7: self = .acquireLease(name: try r.string("lease", limit: 255), ttlSeconds: try r.u32())
            case 8: self = .releaseLease(name: try r.string("lease", limit: 255))
            case 9: self = .setSetting(key: try r.string("key", limit: 1024), value: try r.string("value", limit: 1024))
            case 10: self = .rotateKey(try KeyRotation(decoding: r.blob("rotation", limit: 512)))
            case 11: self = .tick
            case 12:
                let k = try r.u8()
                guard let kind = VoteKind(rawValue: k) else { throw DecodeError(.invalid(field: "vote kind", reason: "\(k)"), at: 1) }
                self = .openVote(kind, node: try NodeID(bytes: r.raw(16)), commitTicks: try r.u32(), revealTicks: try r.u32())
            case 13: self = .decideVote(sequence: try r.u64(), certificate: try r.blob("certificate", limit: SporeCommand.maxEncoded - 16))
            case 14: self = .voteEvidence(sequence: try r.u64(), evidence: try r.blob("evidence", limit: SporeCommand.maxEncoded - 16))
            case 15: self = .closeVote(sequence: try r.u64())
            case 16: self = .requestCertificate(try CertificateRequest.decode(&r))
            case 17: self = .signCertificate(id: try r.u64(), QuorumSignature(index: try r.u8(), signature: try r.raw(64)))
            case 18: self = .signLink(generation: try r.u64(), QuorumSignature(index: try r.u8(), signature: try r.raw(64)))
            case 19: self = .revoke(node: try NodeID(bytes: r.raw(16)), reason: try r.string("reason", limit: Revocation.maxReason))
            case 21:
                let cap = Capabilities(cpus: try r.u16(), memoryMiB: try r.u32(), diskGiB: try r.u32(),
                                       features: CapabilityFeatures(rawValue: try r.u32()))
                // Tag 2 carries capabilities without features: one encoding per value.
                guard !cap.features.isEmpty else { throw DecodeError(.invalid(field: "features", reason: "empty under tag 21"), at: 15) }
                self = .refresh(cap)
            case 22: self = .vmSwitch(name: try r.string("vm name", limit: 63), to: try NodeID(bytes: r.raw(16)), epoch: try r.u64())
            case 23: self = .vmAbortMigration(name: try r.string("vm name", limit: 63), epoch: try r.u64(), reason: try r.string("reason", limit: 200))
            case 20: self = .renewLease(name: try r.string("lease", limit: 255), ttlSeconds: try r.u32(), run: try r.u64())
            default: throw DecodeError(.invalid(field: "command", reason: "unknown tag \(tag)"), at: 0)
            }
            try r.finish()
        } catch let e as SporeError {
            throw e
        } catch let e as DecodeError {
            throw SporeError(.malformed("command: \(e)"))
        } catch {
            throw SporeError(.malformed("command: \(error)"))
        }
    }
}

/// A command with its author and the author's signature. The signature covers the network ID,
/// so a command can never be replayed into another network.
public struct SignedCommand: Sendable, Equatable {
    static let domain: [UInt8] = Array("mycelium/spore-command/v1\0".utf8)

    public let author: NodeID
    public let commandBytes: [UInt8]
    public let command: SporeCommand
    public let signature: [UInt8]

    public init(_ command: SporeCommand, author: NodeID, key: SigningKey, network: NetworkID) {
        self.author = author
        self.command = command
        self.commandBytes = command.encoded()
        self.signature = key.sign(Self.signedBytes(network: network, author: author, command: commandBytes))
    }

    static func signedBytes(network: NetworkID, author: NodeID, command: [UInt8]) -> [UInt8] {
        domain + network.bytes + author.bytes + command
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: commandBytes.count + 90)
        w.raw(author.bytes); w.blob(commandBytes); w.raw(signature)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(SporeError) {
        do {
            var r = ByteReader(bytes)
            author = try NodeID(bytes: r.raw(16))
            commandBytes = try r.blob("command", limit: SporeCommand.maxEncoded)
            signature = try r.raw(64)
            try r.finish()
        } catch {
            throw SporeError(.malformed("signed command: \(error)"))
        }
        command = try SporeCommand(decoding: commandBytes)
    }
}

/// Why a spore, a seed spore or a command was refused.
public struct SporeError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: Equatable, Sendable {
        case malformed(String)
        case badSignature(String)
        case wrongNetwork(expected: NetworkID, actual: NetworkID)
        case staleEpoch(have: SporeEpoch, got: SporeEpoch)
        case beyondLimits(String)
        case unknownMember(NodeID)
        case notAuthorized(NodeID, String)
        case leaseHeld(String, by: NodeID)
        case invalid(String)
        case refused(IdentityError)
        case notASclerotium(NodeID)
        case file(FileError)
    }

    public let code: Code
    public init(_ code: Code) { self.code = code }

    public var description: String {
        switch code {
        case let .malformed(s): return "malformed \(s)"
        case let .badSignature(s): return "bad signature on \(s): it was altered or signed by another key"
        case let .wrongNetwork(e, a): return "the spore belongs to network \(a), not to the expected network \(e)"
        case let .staleEpoch(have, got): return "epoch \(got) is older than the known epoch \(have) (an old or replayed spore, or a command applied twice)"
        case let .beyondLimits(s): return "beyond the spore's limits (\(s))"
        case let .unknownMember(n): return "\(n) is not a member of the spore"
        case let .notAuthorized(n, what): return "\(n) may not \(what)"
        case let .leaseHeld(name, holder): return "lease '\(name)' is held by \(holder)"
        case let .invalid(s): return s
        case let .refused(e): return e.description
        case let .notASclerotium(n): return "signed by \(n), which is not a sclerotium of that spore"
        case let .file(e): return e.description
        }
    }
}
