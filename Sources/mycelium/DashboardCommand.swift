import ArgumentParser
import Foundation
import Logging
import MyceliumCNI
import MyceliumDashboard

/// `mycelium dashboard`: the operator's read-only web page over the local agent's API (MyceliumDashboard).
struct DashboardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dashboard", abstract: "Serve a live, read-only web dashboard of the network as the local agent sees it.",
        discussion: """
            Reads the local agent through its API socket (HOME/agent.sock) every second and serves one page: the \
            network map (members, sclerotia, leader, learners, health, trust; a failed member turns red and crossed), \
            the timeline of events (filterable by kind and text), trust over time and the vote rounds, workloads (VMs, \
            services, volumes) and this node's datapath counters. Live updates are server-sent events. Read-only: it \
            offers no action (vote, drain, migrate) in this version.
            It listens on loopback by default. Listening on any other address needs TLS (--tls-cert and --tls-key, \
            PEM) and an access token (--token-file; the file holds the token, at least 16 characters); without them it \
            refuses to start. With a token, open https://HOST:PORT/login?token=TOKEN once (it sets an HttpOnly \
            cookie), or send `Authorization: Bearer TOKEN`; other requests get 401. The token is never printed.
            Example: mycelium dashboard --home /var/lib/mycelium --listen 127.0.0.1:8470
            """)
    @OptionGroup var agent: AgentOptions
    @Option(help: "HOST:PORT to serve on (port 0: any free port; the URL is printed).") var listen = "127.0.0.1:8470"
    @Option(help: "PEM certificate chain for HTTPS (with --tls-cert, --tls-key).") var tlsCert: String?
    @Option(help: "PEM private key for HTTPS.") var tlsKey: String?
    @Option(help: "A file holding the access token every request must carry.") var tokenFile: String?
    @Option(help: "Where the datapath is pinned (its counters are read from there).") var pinDir = "/sys/fs/bpf/mycelium"

    func run() async throws {
        let address: DashboardListen
        switch DashboardListen.parse(listen) {
        case .success(let a): address = a
        case .failure(let e): throw CLIError(e.message)
        }
        var token: String?
        if let tokenFile {
            guard let text = try? String(contentsOfFile: tokenFile, encoding: .utf8) else {
                throw CLIError("cannot read the access token file \(tokenFile)", hint: "create it with e.g. `openssl rand -hex 32 > \(tokenFile)`")
            }
            token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let security = DashboardSecurity(listen: address, tlsCertificate: tlsCert, tlsKey: tlsKey, token: token)
        if case .failure(let e) = security.validate() { throw CLIError(e.message) }
        var logger = Logger(label: "mycelium.dashboard")
        logger.logLevel = .notice
        let pinDir = self.pinDir
        let options = DashboardOptions(socket: agent.path, security: security, datapath: { Self.readDatapath(pinDir) })
        do {
            let note = token == nil ? "read-only" : "read-only; access token required"
            try await DashboardServer.run(options, logger: logger) { url in
                // Unbuffered: a script (or a test) waits for this line to know where to connect.
                FileHandle.standardOutput.write(Data("dashboard serving on \(url) (\(note))\n".utf8))
            }
        } catch let e as DashboardConfigError {
            throw CLIError(e.message)
        }
    }

    static let reasons = ["policy", "no-endpoint", "spoofed", "malformed", "fib"]

    /// The datapath's per-endpoint counters, read from the pinned BPF maps as `mycelium datapath stats` does.
    static func readDatapath(_ pinDir: String) -> Result<[DatapathRow], DashboardConfigError> {
        let dp = Datapath(pinDir: pinDir)
        guard dp.isLoaded else {
            return .failure(DashboardConfigError("no datapath is loaded on this node (\(pinDir)); the first pod's CNI ADD loads it"))
        }
        do {
            var rows: [DatapathRow] = []
            func row(_ name: String, _ net: UInt32, _ s: MyceliumCNI.DatapathStats) -> DatapathRow {
                var drops: [String: UInt64] = [:]
                for (i, r) in reasons.enumerated() where i < s.drops.count { drops[r] = s.drops[i] }
                return DatapathRow(endpoint: name, networkID: Int(net), txPackets: s.txPackets, txBytes: s.txBytes,
                                   rxPackets: s.rxPackets, rxBytes: s.rxBytes, drops: drops)
            }
            for ep in try dp.endpoints().sorted(by: { $0.ip < $1.ip }) { rows.append(row("\(ep.ip)", ep.networkId, try dp.stats(ep.ip))) }
            rows.append(row("node", 0, try dp.stats(IPv4Address(0))))
            return .success(rows)
        } catch {
            return .failure(DashboardConfigError("cannot read the datapath's maps under \(pinDir): \(error)"))
        }
    }
}
