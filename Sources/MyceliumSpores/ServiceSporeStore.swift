import MyceliumCore
import MyceliumIdentity

/// A seed location that also holds service spores, one file per service beside the seed spore:
/// NETWORK.service-NAME.spore (checksummed like the seed spore).
public protocol ServiceSporeStore: SeedSporeStore {
    /// Where `service`'s record is, for logs and errors.
    func serviceLocation(_ service: String) -> String
    func writeService(_ spore: ServiceSpore) async throws
    /// The checksum-checked bytes of `service`'s record, or nil if there is none.
    func readService(_ service: String) async throws -> [UInt8]?
}

extension DirectorySeedStore: ServiceSporeStore {
    public func servicePath(_ service: String) -> String {
        directory + "/" + ServiceSpore.fileName(network: network, service: service)
    }

    public func serviceLocation(_ service: String) -> String { "dir:" + servicePath(service) }

    public func writeService(_ spore: ServiceSpore) async throws {
        try AtomicFile.makeDirectory(directory)
        try ChecksummedFile.write(kind: FileKind.serviceSpore, payload: spore.encoded(), to: servicePath(spore.name))
    }

    public func readService(_ service: String) async throws -> [UInt8]? {
        if let p = ServiceSpore.nameProblem(service) { throw SporeError(.invalid(p)) }
        let path = servicePath(service)
        guard AtomicFile.exists(path) else { return nil }
        do {
            return try ChecksummedFile.read(kind: FileKind.serviceSpore, from: path)
        } catch {
            throw SporeError(.file(error))
        }
    }
}

/// What an offline reader found for one service.
public struct ServiceLookup: Sendable {
    /// The service's record believed (nil: none verified; see `problems`).
    public var record: ServiceSpore?
    /// Verified records at the chosen one's epoch that say something else (see `ServiceSporeChoice`).
    public var conflicting: [ServiceSpore]
    /// The seed spore the records were verified against.
    public var seed: SeedSpore?
    /// Each location passed over, and why.
    public var problems: [(location: String, problem: String)]

    /// "ADDRESS:PORT" of the serving instances, with the service's first port (just the address
    /// when it declares none).
    public var endpoints: [String] {
        guard let r = record, !r.content.removed else { return [] }
        let port = r.content.ports.first.map { ":\($0.port)" } ?? ""
        return r.content.serving.filter { !$0.address.isEmpty }.map { ($0.address.contains(":") ? "[\($0.address)]" : $0.address) + port }
    }
}

/// Finds `service` without a live agent: reads the seed spore and the service's record at every
/// location, verifies the newest seed spore (network, signature, sclerotium), verifies each record
/// against it and keeps the authoritative one (`ServiceSpore.authoritative`). `now` is the
/// reader's clock (Unix seconds).
public func findService(_ service: String, in stores: [ServiceSporeStore], network: NetworkID, now: Int64,
                        limits: SporeLimits = SporeLimits()) async -> ServiceLookup {
    var lookup = ServiceLookup(record: nil, conflicting: [], seed: nil, problems: [])
    if let p = ServiceSpore.nameProblem(service) {
        lookup.problems.append(("-", p))
        return lookup
    }
    let (seed, seedProblems) = await newestSeedSpore(from: stores, network: network, knownEpoch: nil, now: now, limits: limits)
    lookup.problems += seedProblems.map { ($0.location, "seed spore: " + $0.problem) }
    guard let seed else {
        lookup.problems.append(("-", "no seed spore of \(network) verified, and a service spore is verified against it"))
        return lookup
    }
    lookup.seed = seed
    var verified: [ServiceSpore] = []
    for store in stores {
        do {
            guard let bytes = try await store.readService(service) else {
                lookup.problems.append((store.serviceLocation(service), "no record of '\(service)'"))
                continue
            }
            verified.append(try ServiceSpore(verifying: bytes, network: network, authority: seed.spore, now: now, service: service))
        } catch {
            lookup.problems.append((store.serviceLocation(service), "\(error)"))
        }
    }
    let choice = ServiceSporeChoice(verified)
    lookup.record = choice.chosen
    lookup.conflicting = choice.conflicting
    return lookup
}
