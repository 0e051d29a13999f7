// Fuzz targets for every decoder that reads bytes from a peer or from disk.
//
// Built two ways from the same file:
//  * with `-sanitize=fuzzer -DFUZZING` (scripts/fuzz): libFuzzer drives `LLVMFuzzerTestOneInput`;
//  * in a normal build: a replay driver that feeds files (a corpus or a crash) through the same code.
// The target is chosen with MYCELIUM_FUZZ_TARGET=frames|invite|certificate|token|rotation|handshake|stream|vote|spore|kvbatch|kvsnapshot|peer|control|link|chain|rzmessages|attach|resync|redirector|domainxml|qmp|replicajournal|httpstatus|dns|servicespore|backup.
//
// Each target asserts what must hold for *any* input: no crash, no unbounded buffering, and
// anything accepted re-encodes to exactly the bytes that were accepted (no two spellings). A
// refusal is also described, as the node's log line would be: describing it must not crash either.

import Endophyte
import MyceliumAPI
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import MyceliumVote
import Rhizomorph
import ServiceDNSCore
import ServiceRuntime
import VMHost

#if canImport(Glibc)
import Glibc
#endif

enum FuzzTarget: String {
    case frames, invite, certificate, token, rotation, handshake, stream, vote, spore, kvbatch, kvsnapshot, peer, control, link, chain, rzmessages, attach, resync, redirector, domainxml, qmp, replicajournal, httpstatus, dns, servicespore, backup

    static let current: FuzzTarget = {
        guard let name = getenv("MYCELIUM_FUZZ_TARGET").map({ String(cString: $0) }) else { return .frames }
        guard let t = FuzzTarget(rawValue: name) else {
            complain("unknown MYCELIUM_FUZZ_TARGET '\(name)'; use frames, invite, certificate, token, rotation, handshake, stream, vote, spore, kvbatch, kvsnapshot, peer, control, link, chain, rzmessages, attach, resync, redirector, domainxml, qmp, replicajournal, httpstatus, dns, servicespore or backup")
            exit(2)
        }
        return t
    }()

    func run(_ bytes: [UInt8]) {
        switch self {
        case .frames:
            // Split the input at a data-chosen point to exercise incremental decoding.
            var d = FrameDecoder(maxFrameSize: 4096)
            let cut = bytes.isEmpty ? 0 : Int(bytes[0]) % (bytes.count + 1)
            var frames: [Frame] = []
            do {
                d.append(bytes[0..<cut])
                while let f = try d.next() { frames.append(f) }
                d.append(bytes[cut...])
                while let f = try d.next() { frames.append(f) }
                precondition(d.bufferedByteCount <= 4096 + 4, "decoder buffered more than one frame")
                let consumed = frames.reduce(0) { $0 + $1.encoded().count }
                precondition(Array(bytes.prefix(consumed)) == frames.flatMap { $0.encoded() }, "frame re-encoding differs")
            } catch {
                precondition(d.bufferedByteCount == 0, "a failed decoder keeps no bytes")
            }
        case .invite:
            if let i = try? Invite(decoding: bytes) {
                precondition(i.encoded() == bytes, "invite re-encoding differs")
                describingRefusal { try i.verify(network: nil, now: 1_800_000_000) }
            }
        case .token:
            if let i = try? Invite(token: String(decoding: bytes, as: UTF8.self)) {
                precondition((try? Invite(token: i.token)) == i)
            }
        case .certificate:
            if let c = try? MembershipCertificate(decoding: bytes) {
                precondition(c.encoded() == bytes, "certificate re-encoding differs")
                describingRefusal { try c.verify(network: c.networkID, now: 1_800_000_000) }
                // A quorum of a real chain: only the seeded, genuinely signed certificates may pass.
                if describingRefusal({ try c.verify(chain: FuzzChain.chain, now: FuzzChain.now) }) {
                    precondition(c.generation <= FuzzChain.chain.generation, "a certificate of an unknown generation verified")
                    precondition(c.signatures.count >= quorumSize(of: FuzzChain.chain.signers(of: c.generation)!.count), "under a quorum verified")
                }
            }
        case .link:
            // A link a peer sent (in a hello, a spore or a seed spore), judged against a fixed chain.
            guard let l = try? SclerotiaLink(decoding: bytes) else { return }
            precondition(l.encoded() == bytes && l.encodedSize == bytes.count, "link re-encoding differs")
            var c = FuzzChain.chain
            if describingRefusal({ try c.append(l) }) {
                precondition(c.generation == FuzzChain.chain.generation + 1 && c.latest == l, "append took a link out of order")
                precondition(l.previous == FuzzChain.chain.tipHash, "append took a link that names another tip")
                precondition(l.signatures.count >= quorumSize(of: FuzzChain.chain.latest!.members.count), "append took under a quorum")
            } else {
                precondition(c == FuzzChain.chain, "a refused link changed the chain")
            }
            // A link of a known generation is either the known one or a fork; it never rewrites the chain.
            var d = FuzzChain.chain
            if l.generation <= d.generation, (try? d.absorb([l])) != nil {
                precondition(d == FuzzChain.chain && d.link(l.generation)!.hash == l.hash, "absorb rewrote a known link")
            }
        case .chain:
            // A whole chain from disk or a spore, verified link by link from the genesis key.
            var r = ByteReader(bytes)
            var decoded: SclerotiaChain?
            describingRefusal { decoded = try SclerotiaChain(genesisKey: FuzzChain.genesis.publicKey, from: &r) }
            guard let c = decoded else { return }
            var w = ByteWriter()
            c.encode(into: &w)
            precondition(w.bytes == Array(bytes.prefix(r.offset)), "chain re-encoding differs")
            var again = SclerotiaChain(genesisKey: FuzzChain.genesis.publicKey)
            for l in c.links {
                precondition(l.networkID == FuzzChain.chain.network, "a link of another network was taken")
                do { try again.append(l) } catch { preconditionFailure("a decoded chain does not verify again: \(error)") }
            }
            precondition(again == c)
            // Adopted only if it extends the fixed chain: same link bodies (signatures may be another quorum's), never shorter.
            var known = FuzzChain.chain
            if (try? known.update(to: c)) != nil {
                precondition(c.generation >= FuzzChain.chain.generation && known.links.map(\.hash) == c.links.map(\.hash),
                             "update adopted a shorter or different chain")
                precondition(Array(known.links.prefix(2)) == FuzzChain.chain.links, "update rewrote a known link")
            }
        case .handshake:
            // The first byte picks the message, the rest is its body.
            guard let kind = bytes.first else { return }
            let body = Array(bytes.dropFirst())
            switch kind % 3 {
            case 0:
                var hello: Hello?
                describingRefusal { hello = try Hello(decoding: body) }
                guard let h = hello else { return }
                precondition(h.encoded() == body, "hello re-encoding differs")
                // Judged as a listener judges it: network, clock, credential, links, proof.
                var peer: VerifiedPeer?
                describingRefusal {
                    peer = try HandshakeVerifier.verify(hello: h, proof: HandshakeFuzz.proof, tlsKey: HandshakeFuzz.key.publicKey,
                                                        binding: HandshakeFuzz.binding, ourNonce: HandshakeFuzz.nonce, peerRole: .client,
                                                        policy: HandshakeFuzz.policy)
                }
                if let peer {
                    precondition(peer.key == HandshakeFuzz.key.publicKey, "accepted a peer under another key than its TLS key")
                    precondition(peer.clockSkew >= -maxClockSkew && peer.clockSkew <= maxClockSkew, "accepted a peer whose clock is off")
                    precondition((peer.certificate == nil) == (peer.joiningWith != nil), "a peer is a member or a joiner")
                }
            case 1: if let p = try? Proof(decoding: body) { precondition(p.encoded() == body) }
            default: if let v = try? Verdict(decoding: body) { precondition(v.encoded() == body) }
            }
        case .stream:
            // The stream handshake (docs/HANDSHAKE.md) as a peer drives it; the first byte picks the step.
            // Random bytes may decode, but must never pass for a REPLY or PROOF signed by a key.
            guard let kind = bytes.first else { return }
            let body = Array(bytes.dropFirst())
            switch kind % 4 {
            case 0:
                if let n = try? StreamHandshake.bodyLength(preamble: body) {
                    precondition(n <= StreamHandshake.maxMessageBytes - StreamHandshake.preambleBytes, "unbounded body length")
                }
            case 1:
                _ = try? StreamHandshakeServer(hello: body, identity: StreamFuzz.key, network: StreamFuzz.network, accepts: { _ in true },
                                               ephemeralSecret: [UInt8](repeating: 1, count: 32), nonce: [UInt8](repeating: 2, count: 32),
                                               sessionID: [UInt8](repeating: 3, count: 16), cipher: 2)
            case 2:
                var client = StreamFuzz.client
                precondition((try? client.receiveReply(body, accepts: { _ in true })) == nil, "a forged REPLY authenticated")
            default:
                precondition((try? StreamFuzz.server.receiveProof(body)) == nil, "a forged PROOF authenticated")
            }
        case .rzmessages:
            fuzzMessageAssembly(bytes)
        case .attach:
            // The first message on a VM replication connection (which replica, at which ownership epoch).
            if let a = try? Attach(decoding: bytes) { precondition(a.encoded() == bytes, "attach re-encoding differs") }
        case .resync:
            // What a VM replication connection reads before any page: `setup` (replica side),
            // `ready` and the replica's page hashes (source side). The first byte picks.
            let body = Array(bytes.dropFirst())
            switch (bytes.first ?? 0) % 3 {
            case 0: if let v = try? ReplicationSetup(decoding: body) { precondition(v.encoded() == body, "setup re-encoding differs") }
            case 1: if let v = try? ResyncOffer(decoding: body) { precondition(v.encoded() == body, "ready re-encoding differs") }
            default:
                if let v = try? PageHashChunk(decoding: body) {
                    precondition(v.encoded() == body, "hashes re-encoding differs")
                    precondition(!v.hashes.isEmpty && v.hashes.count <= PageHashChunk.maxHashes, "unbounded hash chunk")
                }
            }
        case .domainxml:
            // An operator's libvirt domain definition (`vm create --xml`): a result or a clear error.
            if let d = try? DomainImport.parse(String(decoding: bytes, as: UTF8.self)) {
                precondition(d.memoryMiB > 0 || d.kernel.isEmpty == false, "a domain without memory accepted")
            }
        case .replicajournal:
            // A replica's journal file as read back after an agent restart: checksummed header, then the
            // record; a record or a clear error, and what decodes re-encodes to the same bytes.
            if let payload = try? ChecksummedFile.decode(bytes, kind: FileKind.vmReplicaState, path: "fuzz"),
               let r = try? ReplicaJournalRecord(decoding: payload) {
                precondition(r.encoded() == payload, "journal record re-encoding differs")
                precondition(r.deviceState.count <= ReplicaJournalRecord.maxDeviceState, "unbounded device state")
            }
        case .httpstatus:
            // What a service answers the runtime's http health probe, read in growing pieces as the probe
            // does: every prefix gets a verdict, 13 bytes always decide, and a verdict never changes with
            // more bytes (the probe stops reading at the first one).
            var verdict: HTTPStatusLine.Parse?
            for n in Array(0...min(bytes.count, 16)) + [bytes.count] {
                let p = HTTPStatusLine.parse(Array(bytes.prefix(n)))
                if let v = verdict {
                    precondition(p == v, "the verdict changed with more bytes")
                    continue
                }
                switch p {
                case .needMore:
                    precondition(n < 13, "13 bytes must decide")
                case let .status(code):
                    precondition((100...999).contains(code) && Array(bytes.prefix(7)) == Array("HTTP/1.".utf8), "a status from a non-HTTP line")
                    verdict = p
                case .malformed:
                    verdict = p
                }
            }
        case .dns:
            // A datagram or TCP message from anyone who can reach the DNS port.
            fuzzDNS(bytes)
        case .qmp:
            // What QEMU's monitor sends the direct QMP client: lines of JSON, read in two pieces (the first
            // byte picks the split), each line bounded and parsed as greeting, reply or event.
            let body = Array(bytes.dropFirst())
            let cut = body.isEmpty ? 0 : Int(bytes[0]) % (body.count + 1)
            var b = QMPLineBuffer(maxLine: 256)
            do {
                for piece in [body[0..<cut], body[cut...]] {
                    b.append(piece)
                    while let line = try b.nextLine() {
                        precondition(line.count <= 256 && !line.contains(UInt8(ascii: "\n")), "an overlong or unsplit line came out")
                        _ = QMPMessage.parse(line)
                    }
                    precondition(b.buffered.count <= 256, "the reader holds more than one bounded line")
                }
            } catch {
                _ = "\(error)"
            }
        case .redirector:
            // What QEMU's filter-redirector writes to output commit's chardev (the guest's packets). The
            // first byte picks the vnet-header variant and a split point for incremental decoding.
            let body = Array(bytes.dropFirst())
            var d = RedirectorFrameDecoder(vnetHeaderSupport: (bytes.first ?? 0) & 1 == 1)
            let cut = body.isEmpty ? 0 : Int(bytes[0] >> 1) % (body.count + 1)
            var frames: [RedirectorFrame] = []
            do {
                d.append(body[0..<cut])
                while let f = try d.next() { frames.append(f) }
                d.append(body[cut...])
                while let f = try d.next() { frames.append(f) }
                precondition(d.bufferedByteCount <= RedirectorFrame.maxPacketBytes + 8, "decoder buffered more than one frame")
                let encoded = frames.flatMap { $0.encoded() }
                precondition(Array(body.prefix(encoded.count)) == encoded, "redirector frame re-encoding differs")
                // Whatever was accepted goes through the buffer as a guest's packets would.
                var b = OutputCommitBuffer(limits: OutputCommitLimits(maxPackets: 4, maxBytes: 4096))
                for f in frames { _ = b.accept(f.packet) }
                let s = b.seal()
                precondition(b.release(upTo: s).count + Int(b.dropped) == frames.count, "a packet was lost or duplicated")
            } catch {
                precondition(d.bufferedByteCount == 0, "a failed decoder keeps no bytes")
                _ = "\(error)"
            }
        case .vote:
            // Commit/reveal/summary messages, evidence, certificates and round specs; the first byte picks.
            fuzzVoteDecoders(bytes)
        case .spore:
            // The primary spore (snapshots, seed and latent spores carry it) and the commands Raft carries.
            let body = Array(bytes.dropFirst())
            switch bytes.first ?? 0 {
            case 0: if let sp = try? PrimarySpore(decoding: body) { _ = sp.encoded() }
            case 1: if let c = try? SporeCommand(decoding: body) { precondition(c.encoded() == body) }
            default: if let c = try? SignedCommand(decoding: body) { precondition(c.encoded() == body) }
            }
        case .servicespore:
            // A service spore from a seed directory or URL (an outside writer controls these bytes):
            // one spelling, and only the network's one writer's genuine signature verifies.
            guard let s = try? ServiceSpore(decoding: bytes) else { return }
            precondition(s.encoded() == bytes, "service spore re-encoding differs")
            precondition(s.content.problem == nil, "a decoded service spore breaks its own bounds")
            let a = FuzzServiceSpore.authority
            if describingRefusal({ _ = try ServiceSpore(verifying: bytes, network: a.network.id, authority: a, now: FuzzChain.now) }) {
                precondition(s.signer.nodeID == FuzzServiceSpore.writer && s.network == a.network.id, "a service spore by another signer verified")
            }
            precondition(ServiceSporeChoice([s, s]).chosen == s && ServiceSporeChoice([s, s]).conflicting.isEmpty)
            _ = s.owner(atMillis: FuzzChain.now * 1000)
        case .kvbatch:
            // A Raft entry's KV batch: anything accepted re-encodes identically and applies on two
            // replicas (one fresh, one restored from the other's snapshot) with identical results.
            if let batch = try? KVBatch(decoding: bytes) {
                precondition(batch.encoded() == bytes, "kv batch re-encoding differs")
                var a = KVStore(limits: KVLimits(maxKeys: 8))
                var b = a
                precondition(a.apply(batch) == b.apply(batch), "kv replicas disagree on results")
                precondition(a.encodedSnapshot() == b.encodedSnapshot(), "kv replicas disagree on snapshots")
                var c = try! KVStore(snapshot: a.encodedSnapshot(), limits: KVLimits(maxKeys: 8))
                precondition(c.apply(batch) == a.apply(batch) && c == a, "a restored kv replica diverges")
            }
        case .peer:
            // A frame from another agent: the first byte picks the frame type.
            guard let type = bytes.first else { return }
            if let m = try? PeerMessage(frameType: type, payload: Array(bytes.dropFirst())) {
                precondition(m.frameType.rawValue == type, "peer message changed its frame type")
                let again = try? PeerMessage(frameType: type, payload: m.payload())
                precondition(again == m, "peer message does not survive re-encoding")
            }
        case .control:
            // A committed entry's payload (first byte 0) or a control-state snapshot (first byte 1).
            guard let which = bytes.first else { return }
            let rest = Array(bytes.dropFirst())
            let net = NetworkIdentity(genesisKey: SigningKey(seed: [UInt8](repeating: 7, count: 32)).publicKey)
            if which == 0 {
                if case let e?? = try? ControlEntry.decode(rest) { precondition((try? ControlEntry.decode(e.encoded())) == e, "entry re-encoding differs") }
                var state = ControlState(network: net)
                _ = try? state.apply(Entry(term: 1, index: 1, data: rest))  // refusals are fine, crashes are not
            } else if let state = try? ControlState.restore(rest, network: net) {
                precondition((try? ControlState.restore(state.snapshot(), network: net)) == state, "snapshot round trip differs")
            }
        case .backup:
            // A backup file (`mycelium backup verify/restore` reads it from anywhere).
            if let b = try? BackupFile(decoding: bytes) {
                precondition(b.encoded() == bytes, "backup re-encoding differs")
                if let state = try? b.verify() {
                    precondition(state.network.id == b.network.id, "a backup verified with the state of another network")
                    _ = BackupContents(b, state)
                } else {
                    describingRefusal { _ = try b.verify() }
                }
            }
        case .kvsnapshot:
            // The KV section of a snapshot (disk or a leader's InstallSnapshot).
            if let store = try? KVStore(snapshot: bytes) {
                precondition(store.encodedSnapshot() == bytes, "kv snapshot re-encoding differs")
                let all = store.range(key: [0], rangeEnd: [0])
                precondition(all.count == Int64(store.count) && all.kvs.count == store.count, "kv range misses keys")
            }
        case .rotation:
            if let r = try? KeyRotation(decoding: bytes) {
                precondition(r.encoded() == bytes)
                _ = try? r.verifySignatures()
            }
        }
    }
}

/// A backup a member of a one-node network signed, which verifies (the `backup` target's seed).
enum FuzzBackup {
    static func seed(genesis: SigningKey, node: SigningKey, cert: MembershipCertificate) -> [UInt8] {
        let net = NetworkIdentity(genesisKey: genesis.publicKey)
        var state = ControlState(network: net)
        let admit = ControlEntry.spore(SignedCommand(.admit(cert), author: cert.nodeID, key: node, network: net.id), millis: 1_800_000_010_000)
        _ = try! state.apply(Entry(term: 1, index: 2, data: admit.encoded()))
        _ = try! state.apply(Entry(term: 1, index: 3, data: ControlEntry.kv(KVBatch([.put(key: [1], value: [2], prevKV: false)])).encoded()))
        let b = BackupFile(network: net, index: 3, term: 1, takenAtMillis: 1_800_000_020_000, snapshot: state.snapshot(), signer: cert, key: node)
        _ = try! BackupFile(decoding: b.encoded()).verify()
        return b.encoded()
    }
}

/// Runs `body`; on a refusal, builds its description (what a node logs). True if it was accepted.
@discardableResult
func describingRefusal(_ body: () throws -> Void) -> Bool {
    do {
        try body()
        return true
    } catch {
        _ = "\(error)"
        return false
    }
}

/// A listener's fixed side for the `handshake` target: the seeds' node (key seed 9) proved this
/// connection, so a seeded hello can pass every check; the node may invite.
enum HandshakeFuzz {
    static let key = SigningKey(seed: [UInt8](repeating: 9, count: 32))
    static let binding = [UInt8](repeating: 0xB1, count: 32)
    static let nonce = [UInt8](repeating: 0x0C, count: 32)
    static let proof = Proof.make(role: .client, network: FuzzChain.chain.network, binding: binding, peerNonce: nonce, key: key)
    static let policy = HandshakePolicy(chain: FuzzChain.chain, now: FuzzChain.now,
                                        inviters: [NodeID(publicKey: key.publicKey): key.publicKey])
}

func complain(_ s: String) {
    let line = Array((s + "\n").utf8)
    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

/// Fixed handshake states for the `stream` target: a client that sent its HELLO, a server that answered it.
enum StreamFuzz {
    static let key = SigningKey(seed: [UInt8](repeating: 7, count: 32))
    static let network = NetworkID(genesisKey: key.publicKey)
    static let client = StreamHandshakeClient(identity: SigningKey(seed: [UInt8](repeating: 8, count: 32)), network: network,
                                              ephemeralSecret: [UInt8](repeating: 4, count: 32), nonce: [UInt8](repeating: 5, count: 32))
    static let server = try! StreamHandshakeServer(hello: client.hello, identity: key, network: network, accepts: { _ in true },
                                                   ephemeralSecret: [UInt8](repeating: 1, count: 32), nonce: [UInt8](repeating: 2, count: 32),
                                                   sessionID: [UInt8](repeating: 3, count: 16), cipher: 2)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    FuzzTarget.current.run(bytes)
    return 0
}

/// A fixed sclerotia chain from the seeds' genesis key: generation 1 (three sclerotia, signed by
/// the genesis key) and generation 2 (five, signed by two of generation 1), and what extends it.
enum FuzzChain {
    static let genesis = SigningKey(seed: [UInt8](repeating: 7, count: 32))
    static let now: Int64 = 1_800_000_300
    static let first = (11...13).map { SigningKey(seed: [UInt8](repeating: UInt8($0), count: 32)) }
    static let second = (21...25).map { SigningKey(seed: [UInt8](repeating: UInt8($0), count: 32)) }
    static let third = (31...33).map { SigningKey(seed: [UInt8](repeating: UInt8($0), count: 32)) }

    static let chain: SclerotiaChain = {
        var c = SclerotiaChain(genesisKey: genesis.publicKey)
        try! c.append(link(after: c, members: first, issuedAt: 1_800_000_000))
        try! c.append(link(after: c, members: second, issuedAt: 1_800_000_100))
        return c
    }()

    /// Generation 3, signed by a quorum of generation 2: the link seed that appends.
    static let next = link(after: chain, members: third, issuedAt: 1_800_000_200)

    /// The next link after `c` naming `members`, signed by the first quorum of `c`'s newest generation.
    static func link(after c: SclerotiaChain, members: [SigningKey], issuedAt: Int64) -> SclerotiaLink {
        let p = SclerotiaLink.proposal(network: c.network, generation: c.generation + 1, previous: c.tipHash,
                                       members: members.map { SclerotiumKey(id: NodeID(publicKey: $0.publicKey), key: $0.publicKey) },
                                       issuedAt: issuedAt)
        return p.withSignatures(signatures(over: p.signedBytes, generation: c.generation, in: c))
    }

    /// Signatures of the first quorum of `generation` of `c`.
    static func signatures(over message: [UInt8], generation: UInt64, in c: SclerotiaChain) -> [QuorumSignature] {
        let signers = c.signers(of: generation)!
        let all = [genesis] + first + second + third
        return (0..<quorumSize(of: signers.count)).map { i in
            QuorumSignature(index: UInt8(i), signature: all.first { $0.publicKey == signers[i].key }!.sign(message))
        }
    }

    /// A certificate for `node` issued by a quorum of generation 2.
    static func certificate(for node: SigningKey) -> MembershipCertificate {
        let body = MembershipCertificate.unsigned(network: NetworkIdentity(genesisKey: genesis.publicKey), nodeID: NodeID(publicKey: node.publicKey),
                                                  nodeKey: node.publicKey, roles: [.member, .inviter], serial: 4,
                                                  issuedAt: 1_800_000_150, expiresAt: 1_800_003_750, generation: 2)
        return body.withSignatures(signatures(over: body.signedBytes, generation: 2, in: chain))
    }
}

/// The `servicespore` target's authority: a bootstrap-phase primary spore whose one inviter (key
/// seed 9, certified by the genesis key) may write service spores.
enum FuzzServiceSpore {
    static let key = SigningKey(seed: [UInt8](repeating: 9, count: 32))
    static let writer = NodeID(publicKey: key.publicKey)
    static let certificate = MembershipCertificate.issue(by: FuzzChain.genesis, nodeID: writer, nodeKey: key.publicKey, roles: [.member, .inviter],
                                                         serial: 5, issuedAt: 1_800_000_000, validFor: 3600)
    static let authority: PrimarySpore = {
        var sp = PrimarySpore(network: NetworkIdentity(genesisKey: FuzzChain.genesis.publicKey))
        try! sp.apply(SignedCommand(.admit(certificate), author: writer, key: key, network: certificate.networkID), epoch: SporeEpoch(term: 1, index: 1), time: 1_800_000_000)
        return sp
    }()

    static func record(_ content: ServiceSpore.Content) -> ServiceSpore {
        ServiceSpore(network: certificate.networkID, content: content, epoch: SporeEpoch(term: 3, index: 120), issuedAtMillis: 1_800_000_100_000,
                     signer: certificate, key: key)
    }
}

/// Rhizomorph's message layer (what RhizomorphReplicationTransport receives) as a peer drives it:
/// a sequence of delivered chunks and barriers, each `0 | u32 offset | u16 length | bytes` or
/// `1 | u64 label`. Whatever arrives, nothing is written past the message limit, and a message is
/// accepted only with exactly the bytes its label announced.
func fuzzMessageAssembly(_ bytes: [UInt8]) {
    let limit = 1 << 16
    let assembler = MessageAssembler(maxMessageBytes: limit, initialCapacity: 512)
    var r = bytes[...]
    func take(_ n: Int) -> [UInt8]? {
        guard r.count >= n else { return nil }
        defer { r = r.dropFirst(n) }
        return Array(r.prefix(n))
    }
    var sum = 0
    var written: [Int: UInt8] = [:]  // the last byte written at each offset of the open message
    while let op = take(1)?[0] {
        if op % 2 == 0 {
            guard let h = take(6) else { return }
            let offset = UInt64(h[0]) << 24 | UInt64(h[1]) << 16 | UInt64(h[2]) << 8 | UInt64(h[3])
            let len = min(Int(h[4]) << 8 | Int(h[5]), r.count)
            let data = take(len)!
            do {
                try data.withUnsafeBytes { try assembler.page(offset: offset, $0) }
                sum += len
                for (i, b) in data.enumerated() { written[Int(offset) + i] = b }
            } catch {
                precondition(offset + UInt64(len) > UInt64(limit) || sum + len > limit, "a chunk inside the limit was refused")
                return
            }
        } else {
            guard let l = take(8) else { return }
            let label = l.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            guard let (_, buffer) = try? assembler.complete(label: label) else { return }
            precondition(buffer.count == sum && buffer.count <= limit, "a message was accepted with \(sum) bytes for \(buffer.count) announced")
            for (offset, b) in written { precondition(buffer.body[offset] == b, "message byte \(offset) is not what arrived") }
            sum = 0
            written = [:]
        }
    }
}

/// The `dns` target: the codec takes back what it writes, and the responder, whatever arrives,
/// answers within the size limit with a message that parses, echoes the ID, or drops only what
/// cannot be a query.
func fuzzDNS(_ bytes: [UInt8]) {
    if let m = try? DNSMessage(decoding: bytes) {
        // Compression and the OPT record's place allow other spellings, so the check is on values.
        let again = m.encoded()
        if again.count <= DNSMessage.maxLength, let back = try? DNSMessage(decoding: again) {
            if back.header.truncated && !m.header.truncated {
                // Written out in full (fewer pointers) it no longer fit in 65535 bytes: a prefix survives.
                precondition(m.answers.starts(with: back.answers) && back.edns == m.edns, "truncation kept something else")
            } else {
                precondition(back == m, "DNS message re-encoding differs")
            }
        } else {
            precondition(again.count > DNSMessage.maxLength, "an encoded DNS message does not parse")
        }
    }
    for (transport, maxUDP, limit) in [(DNSTransport.udp, nil, 1232), (.udp, 512, 512), (.udp, 4000, 4000), (.tcp, nil, DNSMessage.maxLength)] {
        guard let out = DNSResponder.answer(query: bytes, directory: FuzzDNS.directory, maxUDP: maxUDP, transport: transport) else {
            precondition(bytes.count < 12 || bytes[2] & 0x80 != 0, "a query was dropped")
            continue
        }
        precondition(out.count <= limit, "a DNS answer of \(out.count) bytes over its limit of \(limit)")
        guard let r = try? DNSMessage(decoding: out) else { preconditionFailure("a DNS answer does not parse") }
        precondition(r.header.isResponse && r.header.id == UInt16(bytes[0]) << 8 | UInt16(bytes[1]), "a DNS answer to another query")
        precondition(r.questions.count <= 1, "a DNS answer with several questions")
    }
}

/// A fixed directory for the `dns` target: enough instances of `many` to need truncation.
enum FuzzDNS {
    struct Directory: ServiceDirectory {
        func endpoints(service: String) -> [ServiceEndpoint]? {
            switch service {
            case "web": [ServiceEndpoint(address: 0x0A00_0005, port: 8080, instance: "web-1", node: "n1"),
                         ServiceEndpoint(address: 0x0A00_0006, port: 8080, instance: "web.2", node: "n2")]
            case "idle": []
            case "many": (0..<300).map { ServiceEndpoint(address: 0x0A01_0000 + UInt32($0), port: 9000, instance: "m-\($0)", node: "n1") }
            default: nil
            }
        }
    }
    static let directory = Directory()

    /// Queries a stub resolver sends, with and without EDNS.
    static func query(_ name: String, _ type: UInt16, id: UInt16, edns: UInt16?) -> [UInt8] {
        var h = DNSHeader(id: id)
        h.recursionDesired = true
        return DNSMessage(header: h, questions: [DNSQuestion(name: DNSName(name)!, type: type)], edns: edns.map { EDNS(udpPayloadSize: $0) }).encoded()
    }
}

/// Valid samples of every format, so the fuzzer starts from inputs that pass the outer checks.
func writeSeeds(to dir: String) {
    let genesis = FuzzChain.genesis
    let node = SigningKey(seed: [UInt8](repeating: 9, count: 32))
    let id = NodeID(publicKey: node.publicKey)
    let invite = try! Invite.create(genesisKey: genesis.publicKey, inviter: id, key: node, addresses: ["127.0.0.1:7946", "[::1]:7946"],
                                    roles: [.member], issuedAt: 1_800_000_000, validFor: 3600, secret: [UInt8](repeating: 1, count: 32))
    let cert = MembershipCertificate.issue(by: genesis, nodeID: id, nodeKey: node.publicKey, roles: [.member], serial: 3,
                                           issuedAt: 1_800_000_000, validFor: 3600)
    let quorumCert = FuzzChain.certificate(for: node)
    // Seeds must pass the checks they are meant to get past, or the fuzzer starts from refusals only.
    try! quorumCert.verify(chain: FuzzChain.chain, now: FuzzChain.now)
    // Hellos the `handshake` target's listener accepts: a founder, a member of generation 2 with the links, a joiner.
    let hellos = [
        Hello(networkID: cert.networkID, nonce: [UInt8](repeating: 2, count: 32), time: FuzzChain.now, credential: .member(cert)),
        Hello(networkID: cert.networkID, nonce: [UInt8](repeating: 2, count: 32), time: FuzzChain.now - 3, credential: .member(quorumCert),
              links: FuzzChain.chain.suffix(upTo: 2, count: 2)),
        Hello(networkID: cert.networkID, nonce: [UInt8](repeating: 3, count: 32), time: FuzzChain.now + 3, credential: .invite(invite)),
    ]
    for h in hellos {
        _ = try! HandshakeVerifier.verify(hello: h, proof: HandshakeFuzz.proof, tlsKey: HandshakeFuzz.key.publicKey, binding: HandshakeFuzz.binding,
                                          ourNonce: HandshakeFuzz.nonce, peerRole: .client, policy: HandshakeFuzz.policy)
    }
    let encodedChain: [UInt8] = {
        var c = FuzzChain.chain
        try! c.append(FuzzChain.next)
        var w = ByteWriter()
        c.encode(into: &w)
        return w.bytes
    }()
    // The service spore seeds verify against the target's authority.
    _ = try! ServiceSpore(verifying: FuzzServiceSpore.record(.tombstone("old", generation: 4)).encoded(), network: FuzzServiceSpore.certificate.networkID,
                          authority: FuzzServiceSpore.authority, now: FuzzChain.now)
    let rot = KeyRotation.create(node: id, from: node, to: genesis, sequence: 1, issuedAt: 1_800_000_000)
    let frames = [Frame(type: 1, payload: []), Frame(type: 16, payload: Array("hello".utf8))].flatMap { $0.encoded() }
    let seeds: [(String, [UInt8])] = [
        ("frames", [3] + frames), ("invite", invite.encoded()), ("token", Array(invite.token.utf8)),
        ("certificate", cert.encoded()), ("certificate", quorumCert.encoded()), ("rotation", rot.encoded()),
        ("link", FuzzChain.next.encoded()), ("link", FuzzChain.chain.link(2)!.encoded()), ("chain", encodedChain),
        ("vote", [0]),
        ("kvbatch", KVBatch([.put(key: Array("foo".utf8), value: Array("bar".utf8), prevKV: true),
                             .deleteRange(key: Array("a".utf8), rangeEnd: [0], prevKV: false),
                             .put(key: Array("foo".utf8), value: [], prevKV: false)]).encoded()),
        ("kvsnapshot", {
            var kv = KVStore()
            _ = kv.apply(KVBatch([.put(key: Array("a".utf8), value: [1], prevKV: false), .put(key: Array("b".utf8), value: [2, 3], prevKV: false),
                                  .put(key: Array("a".utf8), value: [4], prevKV: false)]))
            return kv.encodedSnapshot()
        }()),
        ("stream", [1] + StreamFuzz.client.hello),
        ("attach", Attach(name: "web-1", ownershipEpoch: 7).encoded()),
        ("resync", [0] + ReplicationSetup(regionBytes: 256 << 20, pageSize: 4096, sourceEpoch: 3, hashSeed: 0x1234_5678_9abc_def0).encoded()),
        ("resync", [1] + ResyncOffer(committedEpoch: 41, offersHashes: true).encoded()),
        ("resync", [2] + PageHashChunk(firstPage: 16_384, hashes: [1, 2, 0xffff_ffff_ffff_ffff]).encoded()),
        // An ARP request as QEMU 7.2 redirected it here (12-byte virtio-net header, zeros), then a short packet.
        ("redirector", [6] + RedirectorFrame(packet: [UInt8](repeating: 0, count: 12) + [UInt8](repeating: 0xff, count: 6) + [UInt8](repeating: 1, count: 36)).encoded()
            + RedirectorFrame(packet: [1, 2, 3]).encoded()),
        ("redirector", [1] + RedirectorFrame(packet: [UInt8](repeating: 7, count: 60), vnetHeaderLength: 12).encoded()),
        ("domainxml", Array("<domain type='kvm'><name>web</name><memory unit='MiB'>256</memory><vcpu>2</vcpu><os><kernel>/k</kernel><initrd>/i</initrd></os><devices><graphics/></devices></domain>".utf8)),
        ("replicajournal", ChecksummedFile.encode(kind: FileKind.vmReplicaState,
                                                  payload: ReplicaJournalRecord(ownershipEpoch: 3, epoch: 1207, deviceState: Array("QEVM device state".utf8)).encoded())),
        // QEMU 7.2's greeting, a reply and an event as its monitor sends them, split inside the reply.
        ("qmp", [150] + Array(("{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n"
            + "{\"return\": {}, \"id\": \"myc-1\"}\r\n{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\r\n"
            + "{\"id\": \"myc-2\", \"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\r\n").utf8)),
        // Two chunks of a 6-byte message of type 12 (pages), then its barrier; then an empty message.
        ("rzmessages", [0, 0, 0, 0, 0, 0, 4, 3, 3, 3, 3] + [0, 0, 0, 0, 4, 0, 2, 9, 9] + [1, 1, 12, 0, 0, 0, 0, 0, 6] + [1, 1, 14, 0, 0, 0, 0, 0, 0]),
        ("spore", [0] + {
            var sp = PrimarySpore(network: NetworkIdentity(genesisKey: genesis.publicKey))
            let admit = SignedCommand(.admit(cert), author: id, key: node, network: cert.networkID)
            try? sp.apply(admit, epoch: SporeEpoch(term: 1, index: 1), time: 1_800_000_000)
            return sp.encoded()
        }()),
        ("peer", [PeerMessage.FrameType.join.rawValue] + PeerMessage.join(SignedCommand(.admit(cert), author: id, key: node, network: cert.networkID),
                                                                          address: "127.0.0.1:7946").payload()),
        ("control", [1] + {
            var st = ControlState(network: NetworkIdentity(genesisKey: genesis.publicKey))
            let admit = SignedCommand(.admit(cert), author: id, key: node, network: cert.networkID)
            _ = try? st.apply(Entry(term: 1, index: 1, data: ControlEntry.spore(admit, millis: 1_800_000_000_000).encoded()))
            _ = try? st.apply(Entry(term: 1, index: 2, data: ControlEntry.network(.configure(pool: CIDR("10.244.0.0/16")!, nodePrefix: 24)).encoded()))
            _ = try? st.apply(Entry(term: 1, index: 3, data: ControlEntry.vm(.create(VMSpec(name: "web-1", memoryMiB: 256, vcpus: 1,
                                                                                            kernel: "/boot/vmlinuz"), primary: id, replica: nil)).encoded()))
            _ = try? st.apply(Entry(term: 1, index: 4, data: ControlEntry.service(.deploy(ServiceSpec(name: "web", command: ["/bin/true"], replicas: 2,
                health: ServiceHealthSpec(kind: .http(port: 80, path: "/")), dependsOn: ["db"]))).encoded()))
            _ = try? st.apply(Entry(term: 1, index: 5, data: ControlEntry.service(.assign(name: "web", generation: 1, [0: id], pending: "1 short")).encoded()))
            _ = try? st.apply(Entry(term: 1, index: 6, data: ControlEntry.service(.nodeInfo(node: id, ServiceNodeInfo(labels: ["zone": "a"]))).encoded()))
            _ = try? st.apply(Entry(term: 1, index: 7, data: ControlEntry.network(.assign(node: id, CIDR("10.244.1.0/24")!)).encoded()))
            _ = try? st.apply(Entry(term: 1, index: 8, data: ControlEntry.service(.endpoints(node: id, [0x0AF4_0105: 7, 0x0AF4_0106: 0xBEEF])).encoded()))
            _ = try? st.apply(Entry(term: 1, index: 9, data: ControlEntry.volume(.storageNode(node: id, StorageNodeInfo(ceph: true, cephHost: "node1"))).encoded()))
            _ = try? st.apply(Entry(term: 1, index: 10, data: ControlEntry.volume(.create(VolumeSpec(name: "db", sizeBytes: 1 << 30, dataClass: "private", driver: .ceph),
                                                                                         home: id, executor: id)).encoded()))
            _ = try? st.apply(Entry(term: 1, index: 11, data: ControlEntry.volume(.placement(hosts: ["node1": ["private", "public"]], executor: id)).encoded()))
            // A service mounting that volume (the table's trailing volume section).
            _ = try? st.apply(Entry(term: 1, index: 12, data: ControlEntry.volume(.taskDone(name: "db", task: 1, node: id, ok: true, message: "")).encoded()))
            _ = try? st.apply(Entry(term: 1, index: 13, data: ControlEntry.service(.deploy(ServiceSpec(name: "store", command: ["/bin/true"],
                volumes: [ServiceVolume(name: "db", path: "/data")]))).encoded()))
            return st.snapshot()
        }()),
        ("control", [0] + ControlEntry.vm(.failover(name: "web-1", to: id, epoch: 3)).encoded()),
        ("control", [0] + ControlEntry.service(.deploy(ServiceSpec(name: "store", driver: .podman, command: ["/bin/sh"], image: "/srv/rootfs",
            volumes: [ServiceVolume(name: "db", path: "/data"), ServiceVolume(name: "logs", path: "/var/log")]))).encoded()),
        ("control", [0] + ControlEntry.service(.endpoints(node: id, [0x0AF4_0105: 7, 0x0AF4_0207: 9])).encoded()),
        ("control", [0] + ControlEntry.volume(.taskDone(name: "db", task: 3, node: id, ok: false, message: "in use")).encoded()),
        ("control", [0] + ControlEntry.volume(.snapshot(name: "db", snapshot: "s1", executor: id)).encoded()),
        ("httpstatus", Array("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".utf8)),
        ("httpstatus", Array("HTTP/1.0 503\r\n".utf8)),
        ("dns", FuzzDNS.query("web.service.mycelium", DNSType.a, id: 1, edns: 1232)),
        ("dns", FuzzDNS.query("_web._tcp.service.mycelium", DNSType.srv, id: 2, edns: nil)),
        ("dns", FuzzDNS.query("many.service.mycelium", DNSType.a, id: 3, edns: nil)),
        // An answer with every record kind the codec interprets, and compressed names.
        ("dns", DNSResponder.answer(query: FuzzDNS.query("nothere.service.mycelium", DNSType.a, id: 4, edns: 1232), directory: FuzzDNS.directory)!),
        ("dns", DNSResponder.answer(query: FuzzDNS.query("web.service.mycelium", DNSType.srv, id: 5, edns: 1232), directory: FuzzDNS.directory)!),
        ("control", [0] + ControlEntry.service(.report(node: id, [("web", 0, InstanceReport(node: id, generation: 1, state: .running, health: .healthy,
                                                                                            address: "10.0.0.1"))])).encoded()),
        ("servicespore", FuzzServiceSpore.record(ServiceSpore.Content(
            name: "web", generation: 2, replicas: 2, driver: "process", ports: [ServiceSpore.Port(name: "http", port: 8080)],
            instances: [ServiceSpore.Instance(slot: 0, node: id, address: "10.0.0.1", generation: 2, serving: true),
                        ServiceSpore.Instance(slot: 1, node: FuzzServiceSpore.writer, address: "", generation: 0, serving: false)])).encoded()),
        ("servicespore", FuzzServiceSpore.record(ServiceSpore.Content(
            name: "db", generation: 1, replicas: 1, driver: "process",
            instances: [ServiceSpore.Instance(slot: 0, node: id, address: "10.0.0.1", generation: 1, serving: true)],
            owner: ServiceSpore.Owner(node: id, leaseUntilMillis: 1_800_000_102_000))).encoded()),
        ("servicespore", FuzzServiceSpore.record(.tombstone("old", generation: 4)).encoded()),
        ("backup", FuzzBackup.seed(genesis: genesis, node: node, cert: cert)),
    ] + hellos.map { ("handshake", [0] + $0.encoded()) }
    // One directory per target; a target's first seed is `seed`, the next ones `seed-2`, `seed-3`, ….
    var written: [String: Int] = [:]
    for (target, bytes) in seeds {
        let n = written[target, default: 0] + 1
        written[target] = n
        if n == 1 { try! AtomicFile.makeDirectory(dir + "/" + target, mode: 0o755) }
        try! AtomicFile.write(bytes, to: dir + "/" + target + (n == 1 ? "/seed" : "/seed-\(n)"))
    }
    print("wrote \(seeds.count) seeds for \(written.count) targets under \(dir)")
}

#if FUZZING
// SwiftPM links executables with `main` aliased to `<product>_main`; hand control to libFuzzer there.
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

@_cdecl("mycelium_fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var c = argc
    var v = argv
    return runFuzzerDriver(&c, &v) { data, size in fuzzOne(data, size) }
}
#else
/// Replay driver: `MYCELIUM_FUZZ_TARGET=invite mycelium-fuzz FILE...` runs each file through the target.
@main
struct Replay {
    static func main() {
        if CommandLine.arguments.count == 3 && CommandLine.arguments[1] == "--write-seeds" {
            writeSeeds(to: CommandLine.arguments[2])
            return
        }
        var n = 0
        for path in CommandLine.arguments.dropFirst() {
            guard let bytes = try? AtomicFile.read(path) else { complain("cannot read \(path)"); exit(1) }
            FuzzTarget.current.run(bytes)
            n += 1
        }
        print("replayed \(n) input(s) through \(FuzzTarget.current.rawValue): no failure")
    }
}
#endif
