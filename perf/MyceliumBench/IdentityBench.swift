import Foundation
import Logging
import MyceliumCore
import MyceliumIdentity
import MyceliumTransport
import NIOPosix

/// `mycelium-bench identity [--rounds N]`
///
/// Interleaves, per round: libsodium Ed25519 signs/s and verifies/s, `openssl speed ed25519`
/// (the same primitive, OpenSSL's implementation), full mutual handshakes/s on loopback
/// (TCP connect + TLS 1.3 with Ed25519 certificates + the channel-bound membership proof, both
/// ways), and membership issued by the network: the time to issue a quorum certificate with 3, 5
/// and 7 sclerotia, and verifications/s of a quorum certificate and of a 10-link sclerotia chain,
/// each against plain Ed25519 verifications/s of the same round. Reports medians and ratios.
func runIdentityBench(_ args: [String]) async throws {
    var rounds = 3
    if let i = args.firstIndex(of: "--rounds"), i + 1 < args.count, let n = Int(args[i + 1]) { rounds = n }
    print("identity benchmark: \(rounds) interleaved rounds on \(machineLine())")

    let key = SigningKey()
    let message = [UInt8](repeating: 0x5A, count: 64)
    let sig = key.sign(message)
    var sodiumSign: [Double] = [], sodiumVerify: [Double] = [], sslSign: [Double] = [], sslVerify: [Double] = [], hs: [Double] = []
    // Quorum issuance (issues/s by sclerotia count), verification of a generation-10 certificate and of a 10-link chain.
    let issueSizes = [3, 5, 7]
    var issues: [Int: [Double]] = [:], certVerify: [Double] = [], chainVerify: [Double] = []
    let certNow = Int64(Date().timeIntervalSince1970)
    let issuers = issueSizes.map { BenchQuorum(sizes: [$0], madeAt: certNow - 3600) }
    let tenLinks = BenchQuorum(sizes: Array(repeating: 5, count: 10), madeAt: certNow - 3600)
    let holder = SigningKey()
    let tenCert = tenLinks.issue(for: holder.publicKey, serial: 1, now: certNow)
    let encodedChain: [UInt8] = { var w = ByteWriter(); tenLinks.chain.encode(into: &w); return w.bytes }()
    let chainSignatures = tenLinks.chain.links.reduce(0) { $0 + $1.signatures.count }

    // One network, a listener, and a client identity reused for every connection.
    let genesis = SigningKey()
    let net = NetworkID(genesisKey: genesis.publicKey)
    let genesisChain = SclerotiaChain(genesisKey: genesis.publicKey)
    func member() -> NodeCredentials {
        let k = SigningKey()
        let c = MembershipCertificate.issue(by: genesis, nodeID: NodeID(publicKey: k.publicKey), nodeKey: k.publicKey, roles: .member,
                                            serial: 1, issuedAt: Int64(Date().timeIntervalSince1970) - 5, validFor: 3600)
        return NodeCredentials(key: k, network: net, credential: .member(c))
    }
    var logger = Logger(label: "bench")
    logger.logLevel = .critical
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let policy = { @Sendable in HandshakePolicy(chain: genesisChain, now: Int64(Date().timeIntervalSince1970)) }
    let listener = try await PeerListener.start(host: "127.0.0.1", port: 0, credentials: member(), group: group, logger: logger,
                                                policy: policy, onPeer: { p in _ = try? await p.receive() })
    let client = member()

    for r in 1...rounds {
        sodiumSign.append(rate(seconds: 1) { _ = key.sign(message) })
        sodiumVerify.append(rate(seconds: 1) { precondition(key.publicKey.verify(sig, for: message)) })
        if let out = capture(["openssl", "speed", "-seconds", "1", "ed25519"]),
           let line = out.split(separator: "\n").last(where: { $0.contains("Ed25519") }) {
            let nums = line.split(separator: " ").compactMap { Double($0) }
            if nums.count >= 2 { sslSign.append(nums[nums.count - 2]); sslVerify.append(nums[nums.count - 1]) }
        }
        let start = now()
        var n = 0
        while now() - start < 2 {
            let ch = try await PeerChannel.connect(host: "127.0.0.1", port: listener.port, credentials: client,
                                                   group: group, logger: logger, policy: policy())
            await ch.close()
            n += 1
        }
        hs.append(Double(n) / (now() - start))
        var serial: UInt64 = 1
        for (size, q) in zip(issueSizes, issuers) {
            issues[size, default: []].append(rate(seconds: 1, batch: 16) {
                serial += 1
                _ = q.issue(for: holder.publicKey, serial: serial, now: certNow)
            })
        }
        certVerify.append(try rate(seconds: 1) { try tenCert.verify(chain: tenLinks.chain, now: certNow) })
        chainVerify.append(try rate(seconds: 1, batch: 8) {
            var reader = ByteReader(encodedChain)
            let c = try SclerotiaChain(genesisKey: tenLinks.genesis.publicKey, from: &reader)
            precondition(c.generation == 10)
        })
        print("  round \(r): sodium sign \(fmt(sodiumSign.last!))/s verify \(fmt(sodiumVerify.last!))/s | openssl sign \(fmt(sslSign.last ?? .nan))/s verify \(fmt(sslVerify.last ?? .nan))/s | handshakes \(fmt(hs.last!, 1))/s")
        print("           quorum issue " + issueSizes.map { "\($0): \(fmt(1e6 / issues[$0]!.last!, 1)) µs" }.joined(separator: ", ")
              + " | gen-10 certificate verify \(fmt(certVerify.last!))/s | 10-link chain verify \(fmt(chainVerify.last!, 1))/s")
    }
    await listener.close()
    try await group.shutdownGracefully()

    let s = median(sodiumSign), v = median(sodiumVerify), os = median(sslSign), ov = median(sslVerify), h = median(hs)
    print("""

    medians                           per second     ratio
      libsodium Ed25519 sign          \(fmt(s).leftPad(10))     \(fmt(s / os, 2))x openssl
      libsodium Ed25519 verify        \(fmt(v).leftPad(10))     \(fmt(v / ov, 2))x openssl
      openssl speed ed25519 sign      \(fmt(os).leftPad(10))
      openssl speed ed25519 verify    \(fmt(ov).leftPad(10))
      full mutual handshakes (1 conn) \(fmt(h, 1).leftPad(10))     \(fmt(h / v * 100, 2))% of one core's verify rate
    """)

    // A quorum issue is q signatures and one verification of each; its model is that many of this run's signs and verifies.
    // (Signing is spread over q machines in a network; here one core does it all.)
    let signMicros = 1e6 / s, verifyMicros = 1e6 / v
    print("""

    membership issued by the network (medians; model = the quorum's Ed25519 signs + verifies at this run's rates)
      quorum certificate issue        µs per issue   model µs   measured/model
    """)
    for size in issueSizes {
        let q = quorumSize(of: size)
        let measured = 1e6 / median(issues[size]!)
        let model = Double(q) * (signMicros + verifyMicros)
        print("      \(size) sclerotia (quorum \(q))".padding(toLength: 36, withPad: " ", startingAt: 0)
              + "\(fmt(measured, 1).leftPad(10))   \(fmt(model, 1).leftPad(8))   \(fmt(measured / model, 2))x")
    }
    let cv = median(certVerify), chv = median(chainVerify)
    print("""
                                      per second     ratio to Ed25519 verify/s
      generation-10 certificate verify \(fmt(cv).leftPad(9))     \(fmt(cv / v, 3))x (5 sclerotia, quorum 3: 3 signatures; 1/3 = 0.333)
      10-link chain from genesis       \(fmt(chv, 1).leftPad(9))     \(fmt(chv / v, 4))x (\(chainSignatures) signatures; 1/\(chainSignatures) = \(fmt(1 / Double(chainSignatures), 4)))
    """)
    if sslSign.isEmpty { print("note: 'openssl speed' did not run; install openssl (scripts/setup does)") }
}

/// A network whose sclerotia sign for the benchmark: a chain of links of the given sizes (link 1
/// signed by the genesis key, link g by the first quorum of link g−1) and the newest link's keys in
/// link order, so an issue signs with no lookups.
struct BenchQuorum {
    let genesis = SigningKey()
    private(set) var chain: SclerotiaChain
    /// The newest generation's signing keys, in the link's (node ID) order.
    private(set) var signers: [SigningKey] = []

    /// Link g is made at `madeAt` + g − 1 seconds.
    init(sizes: [Int], madeAt: Int64) {
        chain = SclerotiaChain(genesisKey: genesis.publicKey)
        var previous = [genesis]
        for n in sizes {
            let keys = (0..<n).map { _ in SigningKey() }
            let p = SclerotiaLink.proposal(network: chain.network, generation: chain.generation + 1, previous: chain.tipHash,
                                           members: keys.map { SclerotiumKey(id: NodeID(publicKey: $0.publicKey), key: $0.publicKey) },
                                           issuedAt: madeAt + Int64(chain.generation))
            let sigs = previous.prefix(quorumSize(of: previous.count)).enumerated().map {
                QuorumSignature(index: UInt8($0.offset), signature: $0.element.sign(p.signedBytes))
            }
            try! chain.append(p.withSignatures(sigs))
            previous = chain.latest!.members.map { m in keys.first { $0.publicKey == m.key }! }
        }
        signers = previous
    }

    /// Issues a certificate: each of a quorum signs the body, the signatures are assembled, and the
    /// result is verified once. (The primary spore also checks each signature as its command is
    /// applied, on every replica: q more verifications there, and the Raft round trips, not measured.)
    func issue(for nodeKey: PublicKey, serial: UInt64, now: Int64) -> MembershipCertificate {
        let body = MembershipCertificate.unsigned(network: NetworkIdentity(genesisKey: genesis.publicKey), nodeID: NodeID(publicKey: nodeKey),
                                                  nodeKey: nodeKey, roles: .member, serial: serial, issuedAt: now, expiresAt: now + 3600,
                                                  generation: chain.generation)
        let message = body.signedBytes
        let sigs = signers.prefix(quorumSize(of: signers.count)).enumerated().map {
            QuorumSignature(index: UInt8($0.offset), signature: $0.element.sign(message))
        }
        let cert = body.withSignatures(sigs)
        try! cert.verify(chain: chain, now: now)
        return cert
    }
}
