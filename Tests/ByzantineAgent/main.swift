// FOR TESTS ONLY: `myceliumd` whose voter lies (MyceliumSim.LyingVoter): it answers every vote
// against its own observation and accuses a live member every five seconds. The agent process
// tests run one of these among honest agents to show the vote holds.

import ArgumentParser
import Foundation
import MyceliumAgent
import MyceliumSim

@main
struct ByzantineAgent: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "myceliumd-byzantine",
        abstract: "FOR TESTS ONLY: a node agent that lies in every vote. Never run it in a real network.")

    @Option(help: "Configuration file (as myceliumd).") var config: String?
    @Option(help: "State directory; overrides 'home' in the file.") var home: String?
    @Option(help: "host:port to listen on; overrides 'listen' in the file.") var listen: String?

    func run() async throws {
        let code: Int32
        do {
            code = try await AgentMain.run(configPath: config, home: home, listen: listen, printConfig: false, behaviour: LyingVoter())
        } catch let e as AgentMain.UsageError {
            throw ValidationError(e.description)
        }
        _exit(code)
    }
}
