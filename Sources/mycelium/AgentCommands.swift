import ArgumentParser
import Foundation
import MyceliumAPI
import MyceliumCore
import MyceliumIdentity
import MyceliumSpores

/// The socket of the local agent: --socket, else HOME/agent.sock.
struct AgentOptions: ParsableArguments {
    @OptionGroup var home: HomeOption
    @Option(help: "The agent's API socket (default: HOME/agent.sock).") var socket: String?

    var path: String { socket ?? home.resolved.path + "/agent.sock" }

    var client: AgentClient { AgentClient(socket: path) }
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the network as the local agent sees it: members, roles, leader, term and health.",
        discussion: "Example: mycelium status --home /var/lib/mycelium -o json")
    @OptionGroup var agent: AgentOptions
    @OptionGroup var out: OutputOptions

    func run() async throws {
        // JSON is passed through as the agent sent it, so fields newer than this CLI are not dropped.
        if out.output == .json { print(String(decoding: try await agent.client.send(.status), as: UTF8.self)); return }
        let s = try await agent.client.status()
        print("network   \(s.network)")
        print("node      \(s.node)  (\(s.role), raft \(s.raftMember))")
        print("leader    \(s.leader)  term \(s.term)  commit \(s.commitIndex)  epoch \(s.epoch)")
        print("phase     \(s.phase)   health \(s.health)   sclerotia generation \(s.chainGeneration ?? 0)")
        print("pod cidr  \(s.podCIDR)  (\(s.podCIDRFile))")
        print("members:")
        for m in s.members {
            let scl = m.sclerotium ? "sclerotium" : "member    "
            let addrs = m.addresses.joined(separator: ",")
            let trust = String(format: "trust %.2f", Double(m.trust) / 1e6)
            let cert = m.certificate.map { c in "cert gen \(c.generation) #\(c.serial) expires in \(duration(c.expiresInSeconds))" } ?? ""
            let skew = m.clockSkewSeconds.map { "skew \($0 >= 0 ? "+" : "")\($0)s" } ?? "skew -"
            let status = m.revoked == true ? "revoked" : m.status
            let runs = m.features.map { $0 == "none" ? "" : "runs \($0)  " } ?? ""
            print("  \(m.id)  \(scl)  \(status.padding(toLength: 7, withPad: " ", startingAt: 0))  \(trust)  \(cert)  \(skew)  \(runs)\(addrs)")
        }
        if let w = s.warnings, !w.isEmpty {
            print("warnings:")
            for line in w { print("  ! \(line)") }
        }
        if !s.votes.isEmpty {
            print("votes:")
            for v in s.votes.suffix(8) {
                print("  #\(v.sequence) \(v.kind) of \(v.node): \(v.state) (\(v.voters) voters, tolerates \(v.tolerates) liar)")
            }
        }
        if !s.events.isEmpty {
            print("recent events:")
            for e in s.events.suffix(10) { print("  \(e)") }
        }
    }
}

/// "3d4h", "2h5m", "42s": how operators read a remaining time.
func duration(_ seconds: Int64) -> String {
    if seconds < 0 { return "-" + duration(-seconds) }
    if seconds >= 86_400 { return "\(seconds / 86_400)d\(seconds % 86_400 / 3600)h" }
    if seconds >= 3600 { return "\(seconds / 3600)h\(seconds % 3600 / 60)m" }
    if seconds >= 60 { return "\(seconds / 60)m\(seconds % 60)s" }
    return "\(seconds)s"
}

struct SporeCommandGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spore", abstract: "Show, export and verify spores.", subcommands: [Show.self, Export.self, Verify.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the primary spore as the local agent holds it (JSON).",
                                                        discussion: "Example: mycelium spore show --home ./a")
        @OptionGroup var agent: AgentOptions
        func run() async throws { print(String(decoding: try await agent.client.send(.spore), as: UTF8.self)) }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a signed seed spore of the current primary spore to a file.",
            discussion: "Put it on a share or a USB stick: a cold node reads it to find the network.\nExample: mycelium spore export --home ./a seed.spore")
        @OptionGroup var agent: AgentOptions
        @Argument(help: "Output file.") var file: String
        func run() async throws {
            let bytes = try await agent.client.exportSpore()
            try AtomicFile.write(bytes, to: file)
            print("wrote \(bytes.count) bytes to \(file)")
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a seed or service spore file: signature, network, signer, limits, and (with --newer-than) its epoch.",
            discussion: """
                A service spore (NETWORK.service-NAME.spore) is verified against a seed spore of its \
                network: --seed, or the NETWORK.seed beside it.
                Examples: mycelium spore verify seed.spore --network net-...
                          mycelium spore verify /mnt/seeds/net-....service-web.spore --network net-... -o json
                """)
        @OptionGroup var out: OutputOptions
        @Argument(help: "A seed spore file (from 'spore export' or a seed directory), or a service spore.") var file: String
        @Option(help: "The network it must belong to.") var network: String
        @Option(help: "Refuse it if older than this epoch (TERM.INDEX).") var newerThan: String?
        @Option(help: "For a service spore: the seed spore to verify it against (default: NETWORK.seed beside it).") var seed: String?

        func run() throws {
            var known: SporeEpoch?
            if let n = newerThan {
                guard let e = parseEpoch(n) else { throw CLIError("--newer-than takes TERM.INDEX, like 3.120") }
                known = e
            }
            let bytes: [UInt8], kind: SporeFileKind
            do { kind = try SporeFileKind.read(file) } catch let e as DamagedSporeFile {
                out.emit(["status": "INVALID: \(e)"])
                throw ExitCode(1)
            }
            switch kind {
            case .seed(let b): bytes = b
            case .service(let b):
                let net: NetworkID
                do { net = try NetworkID(parsing: network) } catch { throw ValidationError("--network: \(error)") }
                do {
                    let (s, seedSpore) = try verifyServiceSporeFile(b, file: file, network: net, seedFile: seed, now: unixNow())
                    if let known, s.epoch < known {
                        throw SporeError(.staleEpoch(have: known, got: s.epoch))
                    }
                    out.emit(ordered: describe(s, seed: seedSpore, json: out.output == .json, nowMillis: Int64(Date().timeIntervalSince1970 * 1000)))
                } catch let e as CLIError {
                    throw e
                } catch {
                    out.emit(["status": "INVALID: \(error)"])
                    throw ExitCode(1)
                }
                return
            }
            do {
                let seed = try SeedSpore(verifying: bytes, network: try NetworkID(parsing: network), knownEpoch: known, now: unixNow())
                out.emit(["status": "valid", "epoch": "\(seed.epoch)", "signer": "\(seed.signer.nodeID)",
                          "members": seed.spore.presentMembers.count, "sclerotia": seed.spore.sclerotia.map { "\($0)" },
                          "written": iso8601(seed.writtenAt)])
            } catch {
                out.emit(["status": "INVALID: \(error)"])
                throw ExitCode(1)
            }
        }
    }
}

/// "3.120" → term 3, index 120.
func parseEpoch(_ text: String) -> SporeEpoch? {
    let p = text.split(separator: ".", omittingEmptySubsequences: false).map { UInt64($0) }
    guard p.count == 2, let t = p[0], let i = p[1] else { return nil }
    return SporeEpoch(term: t, index: i)
}

struct LeaveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "leave", abstract: "Ask the network to remove this node (the local agent proposes it).",
        discussion: "Example: mycelium node leave --home /var/lib/mycelium")
    @OptionGroup var agent: AgentOptions
    func run() async throws { try print(String(decoding: APIJSON.encode(await agent.client.leave()), as: UTF8.self)) }
}

struct VoteCommandGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vote", abstract: "Put a question to the network's Byzantine-tolerant vote.", subcommands: [Failure.self])

    struct Failure: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "failure", abstract: "Ask the network whether a member has failed.",
            discussion: """
                The leader opens a failure-confirmation round; every trusted member checks the node for itself \
                and votes. A "yes" accepted by more than two thirds of the trust records the node as failed; \
                otherwise nothing changes. Follow it with 'mycelium status' (votes).
                Example: mycelium vote failure node-0h0687nea3yf5q99xxmqwj0se286y --home /var/lib/mycelium
                """)
        @OptionGroup var agent: AgentOptions
        @Argument(help: "The member's node ID (as 'mycelium status' shows it).") var node: String
        func run() async throws {
            try print(String(decoding: APIJSON.encode(await agent.client.requestFailureVote(node: node)), as: UTF8.self))
        }
    }
}
