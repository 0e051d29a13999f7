import Foundation
import Logging
import MyceliumCore
import MyceliumIdentity
import MyceliumTransport
import NIOPosix

/// `mycelium-bench identity [--rounds N]`
///
/// Interleaves, per round: libsodium Ed25519 signs/s and verifies/s, `openssl speed ed25519`
/// (the same primitive, OpenSSL's implementation), and full mutual handshakes/s on loopback
/// (TCP connect + TLS 1.3 with Ed25519 certificates + the channel-bound membership proof, both
/// ways). Reports medians and ratios.
func runIdentityBench(_ args: [String]) async throws {
    var rounds = 3
    if let i = args.firstIndex(of: "--rounds"), i + 1 < args.count, let n = Int(args[i + 1]) { rounds = n }
    print("identity benchmark: \(rounds) interleaved rounds on \(machineLine())")

    let key = SigningKey()
    let message = [UInt8](repeating: 0x5A, count: 64)
    let sig = key.sign(message)
    var sodiumSign: [Double] = [], sodiumVerify: [Double] = [], sslSign: [Double] = [], sslVerify: [Double] = [], hs: [Double] = []

    // One network, a listener, and a client identity reused for every connection.
    let genesis = SigningKey()
    let net = NetworkID(genesisKey: genesis.publicKey)
    func member() -> NodeCredentials {
        let k = SigningKey()
        let c = MembershipCertificate.issue(by: genesis, nodeID: NodeID(publicKey: k.publicKey), nodeKey: k.publicKey, roles: .member,
                                            serial: 1, issuedAt: Int64(Date().timeIntervalSince1970) - 5, validFor: 3600)
        return NodeCredentials(key: k, network: net, credential: .member(c))
    }
    var logger = Logger(label: "bench")
    logger.logLevel = .critical
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let policy = { @Sendable in HandshakePolicy(network: net, now: Int64(Date().timeIntervalSince1970)) }
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
        print("  round \(r): sodium sign \(fmt(sodiumSign.last!))/s verify \(fmt(sodiumVerify.last!))/s | openssl sign \(fmt(sslSign.last ?? .nan))/s verify \(fmt(sslVerify.last ?? .nan))/s | handshakes \(fmt(hs.last!, 1))/s")
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
    if sslSign.isEmpty { print("note: 'openssl speed' did not run; install openssl (scripts/setup does)") }
}
