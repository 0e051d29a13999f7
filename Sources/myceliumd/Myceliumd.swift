import ArgumentParser
import Foundation
import Logging
import Metrics
import MyceliumAgent
import Prometheus
import ServiceLifecycle

@main
struct Myceliumd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "myceliumd",
        abstract: "The Mycelium node agent: one per machine.",
        discussion: """
            Reads its settings from --config (every setting is listed by --print-config), joins its network
            and keeps running until SIGTERM or SIGINT, when it stops gracefully.

            Example:
              mycelium network create --home /var/lib/mycelium
              myceliumd --config /etc/mycelium/myceliumd.conf
            """)

    @Option(help: "Configuration file (see --print-config for every setting).") var config: String?
    @Option(help: "State directory; overrides 'home' in the file.") var home: String?
    @Option(help: "host:port to listen on; overrides 'listen' in the file.") var listen: String?
    @Flag(help: "Print the documented configuration (defaults, or the file's values) and exit.") var printConfig = false

    func run() async throws {
        var cfg = AgentConfig()
        if let config {
            let text: String
            do { text = try String(contentsOfFile: config, encoding: .utf8) } catch {
                throw ValidationError("cannot read \(config): \(error.localizedDescription)")
            }
            do { cfg = try AgentConfig.parse(text, source: config) } catch { throw ValidationError(error.message) }
        }
        if let home { cfg.home = home }
        if let listen { cfg.listen = listen }
        do { try cfg.validate() } catch { throw ValidationError(error.message) }
        if printConfig {
            print(cfg.rendered())
            return
        }
        let level = Logger.Level(rawValue: cfg.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "myceliumd")
        // Before the agent exists: its instruments bind to the factory when they are created.
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: AgentMetrics.registry))
        let agent: Agent
        do { agent = try Agent(config: cfg, logger: logger) } catch {
            logger.critical("cannot start: \(error)")
            throw ExitCode(1)
        }
        // The service group turns SIGTERM/SIGINT into a graceful shutdown of the agent.
        let services = ServiceGroup(services: [agent], gracefulShutdownSignals: [.sigterm, .sigint],
                                    cancellationSignals: [], logger: logger)
        do {
            try await services.run()
        } catch {
            logger.critical("stopped: \(error)")
            throw ExitCode(1)
        }
        // Everything durable is fsynced by now. Leave without running exit handlers: one of the
        // runtime's (a thread pool waiting on a worker) could hang a clean exit.
        _exit(0)
    }
}
