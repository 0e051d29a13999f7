import ArgumentParser
import Foundation
import Logging
import MyceliumCore
import MyceliumAPI
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

            After the handoff the network issues membership itself: any member with the inviter role
            invites, a quorum of sclerotia signs certificates and renews them, and the genesis key
            (network.key) may be moved offline. 'mycelium cert inspect' shows who issued a certificate.
            """,
        subcommands: [StatusCommand.self, IdentityCommand.self, NetworkCommand.self, InviteCommand.self, CertCommand.self,
                      MemberCommandGroup.self, VMCommandGroup.self, ServiceCommandGroup.self, VolumeCommandGroup.self, StorageCommandGroup.self,
                      NodeCommand.self, SporeCommandGroup.self, VoteCommandGroup.self, DatapathCommandGroup.self, ChannelCommand.self,
                      DoctorCommand.self, BackupCommandGroup.self, DashboardCommand.self])
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
                The genesis key signs the founders' certificates and the first sclerotia link; after the handoff
                the sclerotia issue membership and network.key can be moved offline (losing it loses nothing).
                This node gets a membership certificate with every role.
                --validity is the lifetime of every certificate the network issues; the network renews each
                member's at two thirds of it. It must be at least 60 s (members' clocks may differ by 10 s).
                Example: mycelium network create --home ./a --validity 30d
                """)
        @OptionGroup var home: HomeOption
        @OptionGroup var out: OutputOptions
        @Option(help: "Lifetime of every membership certificate the network issues (e.g. 30d, 1h; at least 60s).")
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
            let lifetime = try parseDuration(validity)
            if lifetime < minimumCertificateLifetime {
                throw CLIError("--validity \(validity) is shorter than \(minimumCertificateLifetime) s",
                               hint: "renewal happens at two thirds of a lifetime and clocks may differ by \(maxClockSkew) s: use 60s or more")
            }
            let key = try h.loadKey()
            let genesis = SigningKey()
            try KeyFile.write(genesis, to: h.networkKey, kind: FileKind.networkSecretKey)
            let now = unixNow()
            let cert = MembershipCertificate.issue(
                by: genesis, nodeID: NodeID(publicKey: key.publicKey), nodeKey: key.publicKey,
                roles: [.member, .sclerotiumEligible, .inviter], serial: 1, issuedAt: now, validFor: lifetime)
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
                Any member with the inviter role can invite. The token holds the network ID, where to reach this
                node, the roles to grant (at most this node's own), a one-time secret and an expiry, signed with
                this node's key. The network honours it once: the primary spore marks it used, and a quorum of
                sclerotia (the genesis key before the handoff) signs the joiner's certificate.
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
            let cert = try h.loadCertificate()
            guard cert.roles.contains(.inviter) else {
                throw CLIError("this node's roles are \(cert.roles): it may not invite",
                               hint: "run 'mycelium invite create' on a member with the inviter role (see 'mycelium status')")
            }
            let grant = try Roles(parsing: roles)
            guard grant.isSubset(of: cert.roles) else {
                throw CLIError("--roles \(grant) includes roles this node does not hold (\(cert.roles))", hint: "grant at most this node's own roles")
            }
            let invite = try Invite.create(genesisKey: cert.genesisKey, inviter: cert.nodeID, key: key, addresses: addresses,
                                           roles: grant, issuedAt: unixNow(), validFor: try parseDuration(ttl))
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
            abstract: "Show and verify a membership certificate (this node's by default): issuer, chain, renewal.",
            discussion: """
                A certificate is issued by the genesis key (generation 0: the founders, before the handoff) or by a
                quorum of the sclerotia of generation g, whose link is signed by the generation before, back to the
                genesis key. With the local agent running, the certificate is verified against its chain and the
                chain is shown; without it, only a generation-0 certificate can be verified.
                Example: mycelium cert inspect --home /var/lib/mycelium -o json
                """)
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions
        @Argument(help: "A certificate file; defaults to the node's own.") var file: String?

        func run() async throws {
            let cert = try file.map(readCertificate) ?? agent.home.resolved.loadCertificate()
            let membership = try? await agent.client.membership()
            var status = "valid"
            var chainLines: [String] = []
            if let m = membership {
                // The agent verified its chain link by link from the genesis key; the certificate is
                // checked against the agent's view of it (generation, expiry, revocation).
                chainLines = m.chain.map { "generation \($0.generation): sclerotia \($0.sclerotia.joined(separator: ", ")); signed by \($0.signedBy.joined(separator: ", ")) at \(iso8601($0.issuedAt))" }
                if cert.generation > UInt64(m.chain.count) {
                    status = "UNKNOWN: signed by generation \(cert.generation); the local agent knows up to \(m.chain.count)"
                } else if cert.expiresAt <= unixNow() {
                    status = "INVALID: expired at \(iso8601(cert.expiresAt))"
                } else if m.revoked.contains(where: { $0.node == cert.nodeID.description }) {
                    status = "INVALID: revoked"
                } else if cert.generation == 0 {
                    do { try cert.verify(network: cert.networkID, now: unixNow()) } catch { status = "INVALID: \(error)" }
                }
            } else {
                do { try cert.verify(network: cert.networkID, now: unixNow()) } catch {
                    status = cert.generation > 0 ? "not verified here (issued by generation \(cert.generation); start the agent to check it against its chain)" : "INVALID: \(error)"
                }
            }
            let issuer = cert.generation == 0 ? "genesis key \(cert.genesisKey.fingerprint)"
                : "quorum of sclerotia generation \(cert.generation): \(cert.signatures.count) signature(s) by #\(cert.signatures.map { "\($0.index)" }.joined(separator: ", #"))"
            var signers: [String] = []
            if let m = membership, cert.generation > 0, let link = m.chain.first(where: { $0.generation == cert.generation }) {
                signers = cert.signatures.map { Int($0.index) < link.sclerotia.count ? link.sclerotia[Int($0.index)] : "#\($0.index)" }
            }
            out.emit(["status": status, "node id": cert.nodeID.description, "node key": hexString(cert.nodeKey.bytes),
                      "network id": cert.networkID.description, "issuer": issuer, "signers": signers,
                      "roles": cert.roles.description, "serial": cert.serial, "generation": cert.generation,
                      "issued": iso8601(cert.issuedAt), "expires": iso8601(cert.expiresAt),
                      "renewal": "\(iso8601(cert.renewAt)) (at two thirds of its lifetime, while the member is alive)",
                      "chain": chainLines.isEmpty ? ["(start the agent to see the chain)"] : chainLines])
            if status.hasPrefix("INVALID") { throw ExitCode(1) }
        }
    }
}

struct MemberCommandGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "member", abstract: "Decisions about members the network takes by consensus.", subcommands: [Revoke.self])

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a member: the network refuses it from then on.",
            discussion: """
                A Raft-committed decision, proposed by the local agent: a sclerotium may revoke anyone, a member
                with the inviter role only members that are not sclerotia. Once it commits, every node closes its channels to the member and refuses its handshakes,
                it is not renewed, it leaves the sclerotia, and the revocation travels in every seed spore.
                Example: mycelium member revoke node-0h0687nea3yf5q99xxmqwj0se286y --reason "stolen laptop"
                """)
        @OptionGroup var agent: AgentOptions
        @Argument(help: "The member's node ID (as 'mycelium status' shows it).") var node: String
        @Option(help: "Why (kept in the spore, at most 200 bytes).") var reason = "revoked by an operator"
        func run() async throws {
            try print(String(decoding: APIJSON.encode(await agent.client.revoke(node: node, reason: reason)), as: UTF8.self))
        }
    }
}
