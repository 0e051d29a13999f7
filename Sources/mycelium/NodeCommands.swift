import ArgumentParser
import Foundation
import Logging
import MyceliumAgent
import MyceliumCore
import MyceliumIdentity
import MyceliumTransport
import NIOConcurrencyHelpers
import NIOPosix

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node", abstract: "Join or leave a network.", subcommands: [Join.self, LeaveCommand.self])

    struct Join: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Join a network with an invite token.",
            discussion: """
                Connects to the inviter over TLS 1.3, proves this node's key and presents the invite; the network
                marks the invite used and a quorum of sclerotia issues the certificate, which is stored (node.cert).
                A node whose certificate expired while it was away rejoins the same way, with its key and ID.
                Example: mycelium node join --home ./b myc-invite-AbC...
                """)
        @OptionGroup var home: HomeOption
        @OptionGroup var out: OutputOptions
        @Argument(help: "The invite token from 'mycelium invite create'.") var token: String

        func run() async throws {
            let h = home.resolved
            if !AtomicFile.exists(h.nodeKey) {
                try AtomicFile.makeDirectory(h.path)
                try KeyFile.write(SigningKey(), to: h.nodeKey)
            }
            let key = try h.loadKey()
            let invite = try Invite(token: token)
            try invite.verify(network: nil, now: unixNow())
            let group = MultiThreadedEventLoopGroup.singleton
            var failures: [String] = []
            for address in invite.addresses {
                guard let (host, port) = splitAddress(address) else { failures.append("\(address): not host:port"); continue }
                do {
                    let ch = try await PeerChannel.connect(
                        host: host, port: port, credentials: NodeCredentials(key: key, network: invite.networkID, credential: .invite(invite)),
                        group: group, logger: cliLogger(),
                        policy: HandshakePolicy(chain: SclerotiaChain(genesisKey: invite.genesisKey), now: unixNow()))
                    guard let cert = ch.issuedCertificate else { throw CLIError("the inviter accepted us but issued no certificate") }
                    await ch.close()
                    try h.saveCertificate(cert)
                    // The agent dials these first, until it has a latent spore of its own.
                    try AtomicFile.write(Array(invite.addresses.joined(separator: "\n").utf8), to: h.path + "/join.peers")
                    out.emit(["joined": cert.networkID.description, "node id": cert.nodeID.description, "via": address,
                              "inviter": ch.peer.nodeID.description, "roles": cert.roles.description, "member until": iso8601(cert.expiresAt)])
                    return
                } catch {
                    failures.append("\(address): \(error)")
                }
            }
            throw CLIError("could not join through any of the invite's addresses:\n  " + failures.joined(separator: "\n  "),
                           hint: "check that the inviter's node is running and reachable, and that the invite is unused")
        }
    }
}

struct ChannelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "channel",
        abstract: "Test authenticated channels between nodes (listen, ping).",
        discussion: "These exercise the transport directly; the node agent uses the same channels.",
        subcommands: [Listen.self, Ping.self])

    struct Listen: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Accept authenticated channels and echo what members send; admit joiners if this node holds the genesis key.",
            discussion: "Example: mycelium channel listen --home ./a --port 7946")
        @OptionGroup var home: HomeOption
        @Option(help: "Address to listen on.") var host = "127.0.0.1"
        @Option(help: "Port to listen on (0 picks one and prints it).") var port = 7946
        @Option(help: "Exit after this many channels have closed (0: run until interrupted).") var exitAfter = 0

        func run() async throws {
            let h = home.resolved
            let key = try h.loadKey()
            let cert = try h.loadCertificate()
            let authority = (try? h.loadNetworkKey()).map { GenesisIssuer(genesis: $0) }
            let group = MultiThreadedEventLoopGroup.singleton
            let logger = cliLogger()
            let done = AsyncStream<Void>.makeStream()
            let listener = try await PeerListener.start(
                host: host, port: port, credentials: NodeCredentials(key: key, network: cert.networkID, credential: .member(cert)),
                group: group, logger: logger,
                policy: { HandshakePolicy(chain: SclerotiaChain(genesisKey: cert.genesisKey), now: unixNow(), inviters: [cert.nodeID: key.publicKey]) },
                joinAuthority: authority,
                onPeer: { peer in
                    let who = peer.peer.joiningWith != nil ? "joiner (certificate issued)" : "member"
                    say("[\(host)] authenticated \(who) \(peer.peer.nodeID) from \(peer.remoteAddress)")
                    do {
                        while let f = try await peer.receive() {
                            say("[\(host)] \(peer.peer.nodeID) says: \(String(decoding: f.payload, as: UTF8.self))")
                            try await peer.send(type: f.type, payload: Array("echo: ".utf8) + f.payload)
                        }
                    } catch {
                        say("[\(host)] channel with \(peer.peer.nodeID) failed: \(error)")
                    }
                    done.continuation.yield()
                })
            print("listening on \(host):\(listener.port) as \(cert.nodeID) in \(cert.networkID)\(authority != nil ? " (admits joiners)" : "")")
            fflush(nil)
            var closed = 0
            for await _ in done.stream {
                closed += 1
                if exitAfter > 0 && closed >= exitAfter { break }
            }
            await listener.close()
        }
    }

    struct Ping: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Open an authenticated channel to a member and exchange messages, printing round-trip times.",
            discussion: "Example: mycelium channel ping --home ./b 127.0.0.1:7946 --count 3")
        @OptionGroup var home: HomeOption
        @Argument(help: "host:port of the peer.") var address: String
        @Option(help: "Messages to send.") var count = 3

        func run() async throws {
            let h = home.resolved
            let key = try h.loadKey()
            let cert = try h.loadCertificate()
            guard let (host, port) = splitAddress(address) else { throw CLIError("'\(address)' is not host:port") }
            let group = MultiThreadedEventLoopGroup.singleton
            let t0 = DispatchTime.now().uptimeNanoseconds
            let ch = try await PeerChannel.connect(
                host: host, port: port, credentials: NodeCredentials(key: key, network: cert.networkID, credential: .member(cert)),
                group: group, logger: cliLogger(), policy: HandshakePolicy(chain: SclerotiaChain(genesisKey: cert.genesisKey), now: unixNow()))
            let t1 = DispatchTime.now().uptimeNanoseconds
            print("channel to \(ch.peer.nodeID) at \(address): TLS 1.3 + membership handshake in \(String(format: "%.1f", Double(t1 - t0) / 1e6)) ms")
            for i in 1...max(1, count) {
                let s = DispatchTime.now().uptimeNanoseconds
                try await ch.send(type: 16, payload: Array("hello \(i) from \(cert.nodeID)".utf8))
                guard let reply = try await ch.receive() else { throw CLIError("peer closed the channel") }
                let e = DispatchTime.now().uptimeNanoseconds
                print("  \(String(decoding: reply.payload, as: UTF8.self))  (\(String(format: "%.2f", Double(e - s) / 1e6)) ms)")
            }
            await ch.close()
        }
    }
}

/// `channel listen`'s admission, for testing channels without an agent: the genesis key issues the
/// joiner's certificate directly, each invite once per process. (The agent admits through the network.)
final class GenesisIssuer: JoinAuthority {
    let genesis: SigningKey
    let used = NIOLockedValueBox<Set<[UInt8]>>([])
    init(genesis: SigningKey) { self.genesis = genesis }

    func admit(invite: Invite, nodeKey: PublicKey, now: Int64) async throws(IdentityError) -> MembershipCertificate {
        guard used.withLockedValue({ $0.insert(invite.ledgerKey).inserted }) else { throw IdentityError(.inviteAlreadyUsed) }
        return MembershipCertificate.issue(by: genesis, nodeID: NodeID(publicKey: nodeKey), nodeKey: nodeKey, roles: invite.roles,
                                           serial: UInt64.random(in: 1...UInt64.max), issuedAt: now, validFor: 30 * 86_400)
    }
}

/// Prints and flushes at once, so a log file shows progress even if the process is killed.
func say(_ s: String) {
    print(s)
    fflush(nil)
}


func cliLogger() -> Logger {
    var l = Logger(label: "mycelium")
    l.logLevel = ProcessInfo.processInfo.environment["MYCELIUM_LOG"].flatMap { Logger.Level(rawValue: $0) } ?? .warning
    return l
}
