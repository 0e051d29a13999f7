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
        ExitWithParent.armIfRequested()
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
