import ArgumentParser
import Foundation
import MyceliumAgent
import ServiceDriver
import VMDriver

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
    @Option(help: "Log format: text or json (JSON lines with stable fields); overrides 'log_format' in the file.") var logFormat: String?
    @Flag(help: "Print the documented configuration (defaults, or the file's values) and exit.") var printConfig = false
    // The fencing watchdog the agent starts for itself (VMDriver/Watchdog.swift); not for operators.
    @Option(help: .hidden) var vmWatchdog: String?
    @Option(help: .hidden) var libvirtUri: String?
    @Option(help: .hidden) var qemuRunDir: String?
    @Option(help: .hidden) var agentPid: Int32?
    // The service reaper the agent starts for itself (ServiceDriver/ServiceReaper.swift).
    @Option(help: .hidden) var serviceReaper: String?

    func run() async throws {
        if let dir = vmWatchdog, let uri = libvirtUri, let run = qemuRunDir, let pid = agentPid {
            let code = VMWatchdog.run(stateDirectory: dir, libvirtURI: uri, qemuRunDirectory: run, agentPID: pid) {
                FileHandle.standardError.write(Data("\($0)\n".utf8))
            }
            _exit(code)
        }
        if let dir = serviceReaper, let pid = agentPid {
            _exit(ServiceReaper.run(stateDirectory: dir, agentPID: pid) { FileHandle.standardError.write(Data("\($0)\n".utf8)) })
        }
        let code: Int32
        do {
            code = try await AgentMain.run(configPath: config, home: home, listen: listen, printConfig: printConfig, logFormat: logFormat)
        } catch let e as AgentMain.UsageError {
            throw ValidationError(e.description)
        }
        if printConfig { return }
        // Everything durable is fsynced by now. Leave without running exit handlers: one of the
        // runtime's (a thread pool waiting on a worker) could hang a clean exit.
        _exit(code)
    }
}

