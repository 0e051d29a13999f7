import ArgumentParser
import Foundation
import Logging
import MyceliumCore
import MyceliumIdentity
import MyceliumTransport
import NIOPosix

@main
struct Mycelium: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mycelium",
        abstract: "Operate a Mycelium node: identity, networks, invites and certificates.",
        discussion: """
            A node's state lives in one directory (--home, $MYCELIUM_HOME, or /var/lib/mycelium).

            First node of a new network:
              mycelium identity init --home ./a
              mycelium network create --home ./a
              mycelium invite create --home ./a --address 10.0.0.1:7946

            Every other node:
              mycelium identity init --home ./b
              mycelium node join --home ./b myc-invite-...
            """,
        subcommands: [StatusCommand.self, IdentityCommand.self, NetworkCommand.self, InviteCommand.self, CertCommand.self,
                      NodeCommand.self, SporeCommandGroup.self, VoteCommandGroup.self, DatapathCommandGroup.self, ChannelCommand.self])
}

// MARK: identity

struct IdentityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "identity", abstract: "Create or show this node's Ed25519 identity.",
        subcommands: [Init.self, Show.self])

    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create this node's key pair (written with mode 0600).",
            discussion: "Example: mycelium identity init --home /var/lib/mycelium")
        @OptionGroup var home: HomeOption
        @OptionGroup var out: OutputOptions
        @Flag(help: "Replace an existing key. The node gets a new ID and must be admitted again.")
        var force = false

        func run() throws {
            let h = home.resolved
            if AtomicFile.exists(h.nodeKey) && !force {
                throw CLIError("\(h.nodeKey) already exists", hint: "use 'mycelium identity show' to see it, or --force to replace it")
            }
            try AtomicFile.makeDirectory(h.path)
            let key = SigningKey()
            try KeyFile.write(key, to: h.nodeKey)
            out.emit(["node id": NodeID(publicKey: key.publicKey).description, "public key": hexString(key.publicKey.bytes),
                      "key file": h.nodeKey])
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show this node's ID, key and membership.", discussion: "Example: mycelium identity show -o json")
        @OptionGroup var home: HomeOption
        @OptionGroup var out: OutputOptions

        func run() throws {
            let h = home.resolved
            let key = try h.loadKey()
            let cert = try? h.loadCertificate()
            out.emit(["node id": cert?.nodeID.description ?? NodeID(publicKey: key.publicKey).description,
                      "public key": hexString(key.publicKey.bytes), "fingerprint": key.publicKey.fingerprint,
                      "network": cert?.networkID.description ?? "none", "roles": cert?.roles.description ?? "none",
                      "member until": cert.map { iso8601($0.expiresAt) } ?? "-"])
        }
    }
}

// MARK: network

struct NetworkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network", abstract: "Create a network.", subcommands: [Create.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a new network with this node as its genesis node.",
            discussion: """
                Makes the genesis key pair (network.key, mode 0600): the network's ID is a hash of its public key.
                Keep network.key safe: whoever holds it can admit nodes. This node gets a membership certificate
                with every role.
                Example: mycelium network create --home ./a --validity 365d
                """)
        @OptionGroup var home: HomeOption
        @OptionGroup var out: OutputOptions
        @Option(help: "How long this node's membership certificate is valid (e.g. 30d).")
        var validity = "30d"

        func run() throws {
            let h = home.resolved
            if !AtomicFile.exists(h.nodeKey) {
                try AtomicFile.makeDirectory(h.path)
                try KeyFile.write(SigningKey(), to: h.nodeKey)
            }
            if AtomicFile.exists(h.networkKey) {
                throw CLIError("\(h.networkKey) exists: this node already created a network",
                               hint: "a node belongs to one network; use a different --home for another")
            }
            let key = try h.loadKey()
            let genesis = SigningKey()
            try KeyFile.write(genesis, to: h.networkKey, kind: FileKind.networkSecretKey)
            let now = unixNow()
            let cert = MembershipCertificate.issue(
                by: genesis, nodeID: NodeID(publicKey: key.publicKey), nodeKey: key.publicKey,
                roles: [.member, .sclerotiumEligible, .inviter], serial: 1, issuedAt: now, validFor: try parseDuration(validity))
            try h.saveCertificate(cert)
            out.emit(["network id": cert.networkID.description, "genesis key": hexString(genesis.publicKey.bytes),
                      "node id": cert.nodeID.description, "roles": cert.roles.description, "member until": iso8601(cert.expiresAt)])
        }
    }
}

// MARK: invites

struct InviteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "invite", abstract: "Create and inspect one-time invites.", subcommands: [Create.self, Inspect.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a one-time invite token for a new node.",
            discussion: """
                The token holds the network ID, where to reach this node, a one-time secret and an expiry, signed
                by the genesis key. This node records it and accepts it exactly once.
                Example: mycelium invite create --address 192.168.1.10:7946 --ttl 1h
                """)
        @OptionGroup var home: HomeOption
        @OptionGroup var out: OutputOptions
        @Option(name: .customLong("address"), help: "host:port where the joiner reaches this node (repeatable, up to 8).")
        var addresses: [String] = []
        @Option(help: "How long the invite stays valid (e.g. 15m, 1h, 2d).")
        var ttl = "1h"
        @Option(help: "Roles to grant: member, sclerotium-eligible, inviter (comma separated).")
        var roles = "member,sclerotium-eligible"

        func run() throws {
            let h = home.resolved
            if addresses.isEmpty { throw CLIError("no --address given", hint: "say where the joiner can reach this node, e.g. --address 10.0.0.1:7946") }
            let key = try h.loadKey()
            let genesis = try h.loadNetworkKey()
            let now = unixNow()
            let invite = try Invite.create(genesis: genesis, inviter: NodeID(publicKey: key.publicKey), addresses: addresses,
                                           roles: try Roles(parsing: roles), issuedAt: now, validFor: try parseDuration(ttl))
            var ledger = try InviteLedger(path: h.inviteLedger)
            try ledger.record(invite, now: now)
            switch out.output {
            case .text: print(invite.token)
            case .json: out.emit(["token": invite.token, "network id": invite.networkID.description, "expires": iso8601(invite.expiresAt)])
            }
        }
    }

    struct Inspect: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Decode an invite token and check its signature and expiry.",
            discussion: "Example: mycelium invite inspect myc-invite-AbC... --network net-...")
        @OptionGroup var out: OutputOptions
        @Argument(help: "The invite token.") var token: String
        @Option(help: "Also require the invite to be for this network ID.") var network: String?

        func run() throws {
            let invite = try Invite(token: token)
            let expected = try network.map { try NetworkID(parsing: $0) }
            var status = "valid"
            do { try invite.verify(network: expected, now: unixNow()) } catch { status = "INVALID: \(error)" }
            out.emit(["status": status, "network id": invite.networkID.description, "inviter": invite.inviter.description,
                      "addresses": invite.addresses, "roles": invite.roles.description,
                      "issued": iso8601(invite.issuedAt), "expires": iso8601(invite.expiresAt)])
            if status != "valid" { throw ExitCode(1) }
        }
    }
}

// MARK: certificates

struct CertCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cert", abstract: "Inspect membership certificates.", subcommands: [Inspect.self])

    struct Inspect: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show and verify a membership certificate (this node's by default).",
            discussion: "Example: mycelium cert inspect /var/lib/mycelium/node.cert -o json")
        @OptionGroup var home: HomeOption
        @OptionGroup var out: OutputOptions
        @Argument(help: "A certificate file; defaults to the node's own.") var file: String?

        func run() throws {
            let cert = try file.map(readCertificate) ?? home.resolved.loadCertificate()
            var status = "valid"
            do { try cert.verify(network: cert.networkID, now: unixNow()) } catch { status = "INVALID: \(error)" }
            out.emit(["status": status, "node id": cert.nodeID.description, "node key": hexString(cert.nodeKey.bytes),
                      "network id": cert.networkID.description, "issuer": cert.issuerKey.description,
                      "roles": cert.roles.description, "serial": cert.serial,
                      "issued": iso8601(cert.issuedAt), "expires": iso8601(cert.expiresAt)])
            if status != "valid" { throw ExitCode(1) }
        }
    }
}
