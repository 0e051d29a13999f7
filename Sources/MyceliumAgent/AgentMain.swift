// What `myceliumd` does, as a function, so that the daemon and the test-only Byzantine agent
// (Tests/ByzantineAgent, which injects a lying VoterBehaviour) share one startup path. Only this
// function bootstraps logging and metrics (libraries never do).

import Foundation
import Logging
import Metrics
import MyceliumControl
import Prometheus
import ServiceLifecycle

public enum AgentMain {
    /// Errors before the agent runs: a bad option or file. The message says what to change.
    public struct UsageError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Loads the configuration (file, then overrides), validates it, and either prints it or runs
    /// the agent until SIGTERM/SIGINT. Returns the process exit code.
    public static func run(configPath: String?, home: String?, listen: String?, printConfig: Bool,
                           behaviour: any VoterBehaviour = HonestVoter()) async throws -> Int32 {
        var cfg = AgentConfig()
        if let configPath {
            let text: String
            do { text = try String(contentsOfFile: configPath, encoding: .utf8) } catch {
                throw UsageError(description: "cannot read \(configPath): \(error.localizedDescription)")
            }
            do { cfg = try AgentConfig.parse(text, source: configPath) } catch { throw UsageError(description: error.message) }
        }
        if let home { cfg.home = home }
        if let listen { cfg.listen = listen }
        do { try cfg.validate() } catch { throw UsageError(description: error.message) }
        if printConfig {
            print(cfg.rendered())
            return 0
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
        do { agent = try Agent(config: cfg, logger: logger, behaviour: behaviour) } catch {
            logger.critical("cannot start: \(error)")
            return 1
        }
        // The service group turns SIGTERM/SIGINT into a graceful shutdown of the agent.
        let services = ServiceGroup(services: [agent], gracefulShutdownSignals: [.sigterm, .sigint],
                                    cancellationSignals: [], logger: logger)
        do {
            try await services.run()
        } catch {
            logger.critical("stopped: \(error)")
            return 1
        }
        return 0
    }
}
