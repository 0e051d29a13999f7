// Service spores from the command line: `mycelium spore verify` on a service's record, and
// `mycelium service find`, which reads the records at seed locations without a live agent.

import ArgumentParser
import Foundation
import MyceliumAgent
import MyceliumCore
import MyceliumIdentity
import MyceliumSpores

/// A checksummed spore file whose checksum or length does not hold.
struct DamagedSporeFile: Error, CustomStringConvertible { let description: String }

/// The payload of a seed-location file: a checksummed service or seed spore, or a bare one.
enum SporeFileKind {
    case seed([UInt8]), service([UInt8])

    static func read(_ file: String) throws -> SporeFileKind {
        let bytes: [UInt8]
        do { bytes = try AtomicFile.read(file) } catch { throw CLIError("cannot read \(file): \(error)") }
        if bytes.starts(with: ChecksummedFile.magic) && bytes.count >= ChecksummedFile.headerSize {
            let kind = UInt16(bytes[6]) << 8 | UInt16(bytes[7])
            guard kind == FileKind.serviceSpore || kind == FileKind.seedSpore else { throw CLIError("\(file) is not a seed or service spore (file kind \(kind))") }
            do {
                let payload = try ChecksummedFile.decode(bytes, kind: kind, path: file)
                return kind == FileKind.serviceSpore ? .service(payload) : .seed(payload)
            } catch {
                throw DamagedSporeFile(description: "\(file) is damaged (\(error)): copy it again from a seed location")
            }
        }
        if bytes.starts(with: Array("MYSV".utf8)) { return .service(bytes) }
        return .seed(bytes)
    }
}

/// What `spore verify` and `service find` print about a verified service spore.
func describe(_ s: ServiceSpore, seed: SeedSpore, json: Bool, nowMillis: Int64, extra: [(String, Any)] = []) -> [(String, Any)] {
    let c = s.content
    let port = c.ports.first.map { ":\($0.port)" } ?? ""
    let endpoints = c.removed ? [] : c.serving.filter { !$0.address.isEmpty }.map { $0.address + port }
    let instances: Any = json
        ? c.instances.map { ["slot": Int($0.slot), "node": "\($0.node)", "address": $0.address, "generation": Int($0.generation), "serving": $0.serving] as [String: Any] }
        : c.instances.map { "\($0.slot) on \($0.node)" + ($0.address.isEmpty ? "" : " at \($0.address)") + ($0.serving ? " serving" : " not serving") }
    var owner: Any = json ? NSNull() : "-"
    if let o = c.owner {
        let valid = o.leaseUntilMillis > nowMillis
        let lease = iso8601(o.leaseUntilMillis / 1000)
        owner = json ? ["node": "\(o.node)", "lease_until": lease, "lease_valid": valid] as [String: Any]
            : "\(o.node), lease until \(lease)" + (valid ? "" : " (ended: the singleton may have moved since; a newer record or a live agent knows)")
    }
    let fields: [(String, Any)] = [
        ("status", "valid"), ("kind", "service spore"), ("service", c.name), ("removed", c.removed),
        ("generation", Int(c.generation)), ("epoch", "\(s.epoch)"), ("written", iso8601(s.issuedAtMillis / 1000)),
        ("signer", "\(s.signer.nodeID)"), ("driver", c.driver), ("replicas", Int(c.replicas)),
        ("ports", c.ports.map { "\($0.name) \($0.port)/\($0.proto)" }), ("instances", instances), ("endpoints", endpoints),
        ("owner", owner), ("seed epoch", "\(seed.epoch)"),
    ] + extra
    return fields
}

extension OutputOptions {
    /// `emit` for fields built at run time (KeyValuePairs has only a literal initialiser).
    func emit(ordered fields: [(String, Any)]) {
        switch output {
        case .text:
            let width = fields.map(\.0.count).max() ?? 0
            for (k, v) in fields {
                let value: String
                if let a = v as? [String] { value = a.isEmpty ? "-" : a.joined(separator: "\n" + String(repeating: " ", count: width + 2)) } else { value = "\(v)" }
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

/// The seed spore a service spore is judged against does not verify itself.
struct SeedRefused: Error, CustomStringConvertible {
    let path: String
    let error: SporeError
    var description: String { "the seed spore \(path) it is verified against does not verify: \(error)" }
}

/// Verifies a service spore file against the seed spore `seedFile` (default: NETWORK.seed beside it).
func verifyServiceSporeFile(_ payload: [UInt8], file: String, network: NetworkID, seedFile: String?, now: Int64) throws -> (ServiceSpore, SeedSpore) {
    let seedPath = seedFile ?? (URL(fileURLWithPath: file).deletingLastPathComponent().path + "/" + network.description + ".seed")
    guard AtomicFile.exists(seedPath) else {
        throw CLIError("a service spore is verified against a seed spore of its network, and there is none at \(seedPath)",
                       hint: "pass --seed FILE: the \(network).seed the leader wrote beside it, or one from 'mycelium spore export'")
    }
    guard case .seed(let seedBytes) = try SporeFileKind.read(seedPath) else { throw CLIError("\(seedPath) is a service spore, not a seed spore") }
    let seed: SeedSpore
    do { seed = try SeedSpore(verifying: seedBytes, network: network, knownEpoch: nil, now: now) } catch {
        throw SeedRefused(path: seedPath, error: error)
    }
    let s = try ServiceSpore(verifying: payload, network: network, authority: seed.spore, now: now)
    return (s, seed)
}

extension ServiceCommandGroup {
    struct Find: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Find a service's endpoints from its service spores at seed locations, without a live agent.",
            discussion: """
                Reads NETWORK.seed and NETWORK.service-NAME.spore at each seed directory and URL (what the \
                leader writes there: seed_dirs, seed_urls), verifies the newest seed spore against the \
                network ID, each service spore against that seed spore's sclerotia, and prints the record \
                written under the highest Raft term and index: a partition's stale leader loses to the \
                leader elected after it. Exits 1 when no record verifies, or the service was removed.
                Example: mycelium service find web --network net-... --seed-dir /mnt/seeds --seed-url http://10.0.0.9:8080/seeds/
                """)
        @OptionGroup var out: OutputOptions
        @Argument(help: "The service's name.") var name: String
        @Option(help: "The network it belongs to (the trust anchor: its ID names the genesis key).") var network: String
        @Option(help: "A seed directory (repeatable).") var seedDir: [String] = []
        @Option(help: "A seed URL, directory-like (repeatable).") var seedURL: [String] = []

        func run() async throws {
            let net: NetworkID
            do { net = try NetworkID(parsing: network) } catch { throw ValidationError("--network: \(error)") }
            if let p = ServiceSpore.nameProblem(name) { throw ValidationError(p) }
            guard !(seedDir.isEmpty && seedURL.isEmpty) else { throw ValidationError("give at least one --seed-dir or --seed-url") }
            for u in seedURL where !(u.hasPrefix("http://") || u.hasPrefix("https://")) {
                throw ValidationError("--seed-url '\(u)' must start with http:// or https://")
            }
            let stores = seedDir.map { DirectorySeedStore(directory: $0, network: net) as ServiceSporeStore }
                + seedURL.map { HTTPSeedStore(base: $0, network: net) as ServiceSporeStore }
            let now = Date().timeIntervalSince1970
            let found = await findService(name, in: stores, network: net, now: Int64(now))
            let json = out.output == .json
            let problems = found.problems.map { "\($0.location): \($0.problem)" }
            guard let record = found.record, let seed = found.seed else {
                out.emit(ordered: [("status", "NOT FOUND: no verified service spore of '\(name)'"), ("problems", problems)])
                throw ExitCode(1)
            }
            var extra: [(String, Any)] = [("passed over", problems)]
            if !found.conflicting.isEmpty {
                extra.append(("conflicting", found.conflicting.map { "signed by \($0.signer.nodeID) at \($0.epoch) says otherwise: a sclerotium equivocated" }))
            }
            var fields = describe(record, seed: seed, json: json, nowMillis: Int64(now * 1000), extra: extra)
            if record.content.removed { fields[0].1 = "REMOVED: the service was stopped (a verified tombstone)" }
            out.emit(ordered: fields)
            if record.content.removed { throw ExitCode(1) }
        }
    }
}
