import ArgumentParser
import Foundation
import MyceliumCore
import MyceliumIdentity

/// Where a node keeps its identity. One directory per node; everything in it is written atomically.
struct Home {
    let path: String
    var nodeKey: String { path + "/node.key" }
    var nodeCert: String { path + "/node.cert" }
    var networkKey: String { path + "/network.key" }

    static func resolve(_ option: String?) -> Home {
        if let option { return Home(path: option) }
        if let env = ProcessInfo.processInfo.environment["MYCELIUM_HOME"], !env.isEmpty { return Home(path: env) }
        return Home(path: "/var/lib/mycelium")
    }

    func loadKey() throws -> SigningKey {
        guard AtomicFile.exists(nodeKey) else {
            throw CLIError("no node identity in \(path)", hint: "create one with: mycelium identity init --home \(path)")
        }
        return try KeyFile.read(from: nodeKey)
    }

    func loadNetworkKey() throws -> SigningKey {
        guard AtomicFile.exists(networkKey) else {
            throw CLIError("this node does not hold a network's genesis key (\(networkKey))",
                           hint: "invites are issued by the node that ran 'mycelium network create'")
        }
        return try KeyFile.read(from: networkKey, kind: FileKind.networkSecretKey)
    }

    func loadCertificate() throws -> MembershipCertificate {
        guard AtomicFile.exists(nodeCert) else {
            throw CLIError("this node is not a member of any network yet (\(nodeCert) is missing)",
                           hint: "create a network with 'mycelium network create' or join one with 'mycelium node join INVITE'")
        }
        return try readCertificate(nodeCert)
    }

    func saveCertificate(_ c: MembershipCertificate) throws {
        try ChecksummedFile.write(kind: FileKind.membershipCertificate, payload: c.encoded(), to: nodeCert)
    }
}

func readCertificate(_ path: String) throws -> MembershipCertificate {
    try MembershipCertificate(decoding: ChecksummedFile.read(kind: FileKind.membershipCertificate, from: path))
}

/// An error for the operator: what went wrong, and what to do.
struct CLIError: Error, CustomStringConvertible {
    let message: String
    let hint: String?
    init(_ message: String, hint: String? = nil) { self.message = message; self.hint = hint }
    var description: String { hint.map { "\(message)\nhint: \($0)" } ?? message }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

struct OutputOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "Output format: text or json.")
    var output: OutputFormat = .text

    /// Prints `fields` as aligned text or as one JSON object.
    func emit(_ fields: KeyValuePairs<String, Any>) {
        switch output {
        case .text:
            let width = fields.map(\.key.count).max() ?? 0
            for (k, v) in fields {
                let value: String
                if let a = v as? [String] { value = a.joined(separator: ", ") } else { value = "\(v)" }
                print(k.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + value)
            }
        case .json:
            var dict: [String: Any] = [:]
            for (k, v) in fields { dict[k.replacingOccurrences(of: " ", with: "_")] = v }
            let data = try! JSONSerialization.data(withJSONObject: dict, options: [.sortedKeys, .prettyPrinted])
            print(String(decoding: data, as: UTF8.self))
        }
    }
}

struct HomeOption: ParsableArguments {
    @Option(help: ArgumentHelp("The node's state directory.", discussion: "Defaults to $MYCELIUM_HOME, else /var/lib/mycelium."))
    var home: String?

    var resolved: Home { Home.resolve(home) }
}

func unixNow() -> Int64 { Int64(Date().timeIntervalSince1970) }

func iso8601(_ t: Int64) -> String {
    let f = ISO8601DateFormatter()
    return f.string(from: Date(timeIntervalSince1970: TimeInterval(t)))
}

/// Parses durations like 90s, 15m, 2h, 7d.
func parseDuration(_ text: String) throws -> Int64 {
    let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
    guard let last = text.last, let unit = units[last], let n = Int64(text.dropLast()), n > 0 else {
        throw CLIError("'\(text)' is not a duration", hint: "use a number and a unit: 90s, 15m, 2h or 7d")
    }
    return n * unit
}
