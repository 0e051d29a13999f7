import MyceliumCore
import MyceliumIdentity

/// A place seed spores are written to and read from. The leader writes to all configured places;
/// a node starting cold reads them all and keeps the newest one that verifies.
public protocol SeedSporeStore: Sendable {
    /// Where this store is, for logs ("dir:/var/lib/mycelium/seeds", "http://...").
    var location: String { get }
    func write(_ seed: SeedSpore) async throws
    /// The raw bytes last written, or nil if there is none yet.
    func read() async throws -> [UInt8]?
}

/// A seed spore in a directory: a local disk or any mounted share (NFS, SMB, a USB stick).
/// The file is written atomically and checksummed, so a reader never sees half a seed spore and a
/// corrupted copy is reported as such rather than as a bad signature.
public struct DirectorySeedStore: SeedSporeStore {
    public let directory: String
    public let network: NetworkID

    public init(directory: String, network: NetworkID) {
        self.directory = directory
        self.network = network
    }

    public var location: String { "dir:" + directory }
    public var path: String { directory + "/" + network.description + ".seed" }

    public func write(_ seed: SeedSpore) async throws {
        try AtomicFile.makeDirectory(directory)
        try ChecksummedFile.write(kind: FileKind.seedSpore, payload: seed.encoded(), to: path)
    }

    public func read() async throws -> [UInt8]? {
        guard AtomicFile.exists(path) else { return nil }
        do {
            return try ChecksummedFile.read(kind: FileKind.seedSpore, from: path)
        } catch {
            throw SporeError(.file(error))
        }
    }
}

/// Reads every store and returns the newest seed spore that verifies, with the reason each other
/// store was passed over (for the log and `mycelium status`).
public func newestSeedSpore(from stores: [SeedSporeStore], network: NetworkID, knownEpoch: SporeEpoch?, now: Int64,
                            limits: SporeLimits = SporeLimits()) async -> (SeedSpore?, [(location: String, problem: String)]) {
    var best: SeedSpore?
    var problems: [(String, String)] = []
    for store in stores {
        do {
            guard let bytes = try await store.read() else { problems.append((store.location, "no seed spore yet")); continue }
            let seed = try SeedSpore(verifying: bytes, network: network, knownEpoch: knownEpoch, now: now, limits: limits)
            if best == nil || seed.epoch > best!.epoch { best = seed }
        } catch {
            problems.append((store.location, "\(error)"))
        }
    }
    return (best, problems)
}
