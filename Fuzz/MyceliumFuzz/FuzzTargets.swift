// Fuzz targets for every decoder that reads bytes from a peer or from disk.
//
// Built two ways from the same file:
//  * with `-sanitize=fuzzer -DFUZZING` (scripts/fuzz): libFuzzer drives `LLVMFuzzerTestOneInput`;
//  * in a normal build: a replay driver that feeds files (a corpus or a crash) through the same code.
// The target is chosen with MYCELIUM_FUZZ_TARGET=frames|invite|certificate|token|rotation|handshake|stream|vote|spore|kvbatch|kvsnapshot|peer|control.
//
// Each target asserts what must hold for *any* input: no crash, no unbounded buffering, and
// anything accepted re-encodes to exactly the bytes that were accepted (no two spellings).

import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import MyceliumVote

#if canImport(Glibc)
import Glibc
#endif

enum FuzzTarget: String {
    case frames, invite, certificate, token, rotation, handshake, stream, vote, spore, kvbatch, kvsnapshot, peer, control

    static let current: FuzzTarget = {
        guard let name = getenv("MYCELIUM_FUZZ_TARGET").map({ String(cString: $0) }) else { return .frames }
        guard let t = FuzzTarget(rawValue: name) else {
            complain("unknown MYCELIUM_FUZZ_TARGET '\(name)'; use frames, invite, certificate, token, rotation, handshake, stream, vote, spore, kvbatch, kvsnapshot, peer or control")
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
                _ = try? i.verify(network: nil, now: 1_800_000_000)
            }
        case .token:
            if let i = try? Invite(token: String(decoding: bytes, as: UTF8.self)) {
                precondition((try? Invite(token: i.token)) == i)
            }
        case .certificate:
            if let c = try? MembershipCertificate(decoding: bytes) {
                precondition(c.encoded() == bytes, "certificate re-encoding differs")
                _ = try? c.verify(network: c.networkID, now: 1_800_000_000)
            }
        case .handshake:
            // The first byte picks the message, the rest is its body.
            guard let kind = bytes.first else { return }
            let body = Array(bytes.dropFirst())
            switch kind % 3 {
            case 0: if let h = try? Hello(decoding: body) { precondition(h.encoded() == body) }
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

/// Valid samples of every format, so the fuzzer starts from inputs that pass the outer checks.
func writeSeeds(to dir: String) {
    let genesis = SigningKey(seed: [UInt8](repeating: 7, count: 32))
    let node = SigningKey(seed: [UInt8](repeating: 9, count: 32))
    let id = NodeID(publicKey: node.publicKey)
    let invite = try! Invite.create(genesis: genesis, inviter: id, addresses: ["127.0.0.1:7946", "[::1]:7946"], roles: [.member],
                                    issuedAt: 1_800_000_000, validFor: 3600, secret: [UInt8](repeating: 1, count: 32))
    let cert = MembershipCertificate.issue(by: genesis, nodeID: id, nodeKey: node.publicKey, roles: [.member], serial: 3,
                                           issuedAt: 1_800_000_000, validFor: 3600)
    let rot = KeyRotation.create(node: id, from: node, to: genesis, sequence: 1, issuedAt: 1_800_000_000)
    let frames = [Frame(type: 1, payload: []), Frame(type: 16, payload: Array("hello".utf8))].flatMap { $0.encoded() }
    let seeds: [(String, [UInt8])] = [
        ("frames", [3] + frames), ("invite", invite.encoded()), ("token", Array(invite.token.utf8)),
        ("certificate", cert.encoded()), ("rotation", rot.encoded()),
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
            _ = try? st.apply(Entry(term: 1, index: 1, data: ControlEntry.spore(admit, time: 1_800_000_000).encoded()))
            _ = try? st.apply(Entry(term: 1, index: 2, data: ControlEntry.network(.configure(pool: CIDR("10.244.0.0/16")!, nodePrefix: 24)).encoded()))
            return st.snapshot()
        }()),
        ("handshake", [0] + Hello(networkID: cert.networkID, nonce: [UInt8](repeating: 2, count: 32), credential: .member(cert)).encoded()),
    ]
    for (target, bytes) in seeds {
        try! AtomicFile.makeDirectory(dir + "/" + target, mode: 0o755)
        try! AtomicFile.write(bytes, to: dir + "/" + target + "/seed")
    }
    print("wrote seeds for \(seeds.count) targets under \(dir)")
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
