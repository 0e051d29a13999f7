// What `myceliumd` does, as a function, so that the daemon and the test-only Byzantine agent
// (Tests/ByzantineAgent, which injects a lying VoterBehaviour) share one startup path. Only this
// function bootstraps logging and metrics (libraries never do).

import Foundation
import Logging
import Metrics
import MyceliumControl
import MyceliumIdentity
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
                           behaviour: any VoterBehaviour = HonestVoter(), logFormat: String? = nil) async throws -> Int32 {
        ExitWithParent.armIfRequested()
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
        if let logFormat { cfg.logFormat = logFormat }
        do { try cfg.validate() } catch { throw UsageError(description: error.message) }
        if printConfig {
            print(cfg.rendered())
            return 0
        }
        let level = Logger.Level(rawValue: cfg.logLevel) ?? .info
        if cfg.logFormat == "json" {
            // Every line says which agent wrote it (the node's ID, from its key; absent before `identity init`).
            let agentID = (try? KeyFile.read(from: cfg.home + "/node.key")).map { NodeID(publicKey: $0.publicKey).description }
            LoggingSystem.bootstrap { label in
                var h = JSONLogHandler(label: label)
                h.logLevel = level
                if let agentID { h.metadata["agent"] = .string(agentID) }
                return h
            }
        } else {
            LoggingSystem.bootstrap { label in
                var h = StreamLogHandler.standardError(label: label)
                h.logLevel = level
                return h
            }
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

/// `MYCELIUM_EXIT_WITH_PARENT=1`: the agent stops when the process that started it dies. Tests,
/// the demo and the benchmarks set it, so an agent they lose track of (a crashed or killed test
/// runner, a benchmark stopped by `timeout`) does not keep running on the machine for hours.
///
/// prctl(PR_SET_PDEATHSIG) fires when the *thread* that spawned us exits, not only the parent
/// process, and test harnesses spawn from pool threads that retire when idle. So the death
/// signal is SIGUSR2, whose handler only turns into SIGTERM (the graceful stop) once getppid()
/// shows the parent process really is gone; a thread polling getppid() once a second catches the
/// cases the death signal misses (it was set too late, or a parent thread's exit re-armed it).
enum ExitWithParent {
    /// The parent at startup; written once before the handler and the poller start.
    nonisolated(unsafe) static var parent: pid_t = 0

    static func armIfRequested() {
        guard ProcessInfo.processInfo.environment["MYCELIUM_EXIT_WITH_PARENT"] == "1" else { return }
        parent = getppid()
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in
            // Only async-signal-safe calls here: getppid() and kill().
            if getppid() != ExitWithParent.parent { kill(getpid(), SIGTERM) }
        }
        sigemptyset(&action.sa_mask)
        sigaction(SIGUSR2, &action, nil)
        // SAFETY: prctl is variadic in C, which Swift cannot call; on Linux's x86_64 and arm64
        // ABIs integer arguments travel in the same registers either way, and PR_SET_PDEATHSIG
        // reads exactly one unsigned long after the option.
        typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
        if let sym = dlsym(nil, "prctl") {  // nil is glibc's RTLD_DEFAULT
            _ = unsafeBitCast(sym, to: Prctl.self)(1 /* PR_SET_PDEATHSIG */, UInt(SIGUSR2), 0, 0, 0)
        }
        // A parent that died before prctl took effect: we were re-parented (to init or a subreaper).
        if parent == 1 || getppid() != parent {
            FileHandle.standardError.write(Data("myceliumd: MYCELIUM_EXIT_WITH_PARENT=1 and the parent process is already gone; exiting\n".utf8))
            _exit(1)
        }
        let watched = parent
        Thread.detachNewThread {
            while getppid() == watched { sleep(1) }
            FileHandle.standardError.write(Data("myceliumd: parent process \(watched) is gone (MYCELIUM_EXIT_WITH_PARENT=1); stopping\n".utf8))
            kill(getpid(), SIGTERM)
            // A graceful stop takes well under this; nobody is left to wait for a slower one.
            sleep(15)
            _exit(1)
        }
    }
}
