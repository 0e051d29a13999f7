// `mycelium doctor`: what this machine offers the agent, and why something is missing. For now the
// service drivers: `process` (needs nothing installed) and `k3s` (a `k3s` binary on PATH, found the way
// the agent finds it at start: K3sDriver's K3sBinary).

import ArgumentParser
import Foundation
import K3sDriver

struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check what this machine offers the agent: the service drivers, and why one is missing.",
        discussion: """
            Checks this machine as the agent does at start (run it where myceliumd runs, with its PATH).
            Example: mycelium doctor
            """)
    @Option(help: "The k3s executable, as the agent's k3s_binary setting (looked up on PATH unless it holds a '/').")
    var k3sBinary = "k3s"
    @OptionGroup var out: OutputOptions

    struct Line: Encodable { var driver: String; var offered: Bool; var detail: String }

    func run() throws {
        let (k3s, missing) = K3sBinary.locate(k3sBinary, path: ProcessInfo.processInfo.environment["PATH"])
        let lines = [
            Line(driver: "process", offered: true, detail: "runs commands in cgroups of their own; needs nothing installed"),
            Line(driver: "k3s", offered: k3s != nil, detail: k3s.map { "k3s at \($0): the agent writes its config.yaml and supervises it" } ?? missing),
        ]
        switch out.output {
        case .json:
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try enc.encode(["drivers": lines]), as: UTF8.self))
        case .text:
            for l in lines { print(l.driver.padding(toLength: 9, withPad: " ", startingAt: 0) + (l.offered ? "offered   " : "missing   ") + l.detail) }
        }
    }
}
