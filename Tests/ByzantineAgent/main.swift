// FOR TESTS ONLY: `myceliumd` whose voter lies (MyceliumSim.LyingVoter): it answers every vote
// against its own observation and accuses a live member every five seconds. With
// MYCELIUM_BYZANTINE=equivocate it votes honestly but signs conflicting commitments instead
// (MyceliumSim.EquivocatingVoter), so the network slashes it. The agent process
// tests run one of these among honest agents to show the vote holds.

import ArgumentParser
import Foundation
import MyceliumAgent
import MyceliumControl
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
            // MYCELIUM_BYZANTINE=equivocate: vote honestly but sign conflicting commitments (to be slashed),
            // accusing members to open rounds only after MYCELIUM_BYZANTINE_QUIET_S seconds (default 0);
            // otherwise lie in every vote.
            let env = ProcessInfo.processInfo.environment
            let behaviour: any VoterBehaviour = env["MYCELIUM_BYZANTINE"] == "equivocate"
                ? EquivocatingVoter(quietSeconds: UInt64(env["MYCELIUM_BYZANTINE_QUIET_S"] ?? "") ?? 0) as any VoterBehaviour
                : LyingVoter() as any VoterBehaviour
            code = try await AgentMain.run(configPath: config, home: home, listen: listen, printConfig: false, behaviour: behaviour)
        } catch let e as AgentMain.UsageError {
            throw ValidationError(e.description)
        }
        _exit(code)
    }
}
