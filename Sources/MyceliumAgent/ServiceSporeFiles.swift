// Service spores at the seed locations (docs/SERVICES.md, "Service spores"): the leader writes one
// signed record per service beside the seed spore, in every seed directory and under every seed
// URL, only when a record changed (ServiceSporePlan, pure), at most once per `seed_interval_s`, each
// location in its own sequence (a slow URL never delays a directory, and never gets two rounds at
// once). A removed service's record is replaced by a tombstone.

import Foundation
import Logging
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumSpores

/// The leader's service-spore writer: what each location received during this term.
struct ServiceSporeWriter {
    /// The Raft term the records below were written in (0: not leading).
    var term: UInt64 = 0
    /// Location → service → the record it holds (as far as this leader knows).
    var written: [String: [String: ServiceSpore.Content]] = [:]
    /// Locations with a round of writes in flight.
    var busy: Set<String> = []
    /// Directories already searched this term for records of services the table no longer has.
    var listed: Set<String> = []
    var lastRound = 0.0
}

extension HTTPSeedStore: ServiceSporeStore {
    public func serviceLocation(_ service: String) -> String { base + ServiceSpore.fileName(network: network, service: service) }

    public func writeService(_ spore: ServiceSpore) async throws {
        let url = serviceLocation(spore.name)
        let body = ChecksummedFile.encode(kind: FileKind.serviceSpore, payload: spore.encoded())
        let (status, answer) = try await HTTPClient.request(method: .PUT, url: url, body: body, group: group)
        guard (200..<300).contains(status) else {
            throw AgentError("PUT \(url) answered \(status): \(String(decoding: answer.prefix(200), as: UTF8.self))")
        }
    }

    public func readService(_ service: String) async throws -> [UInt8]? {
        if let p = ServiceSpore.nameProblem(service) { throw SporeError(.invalid(p)) }
        let url = serviceLocation(service)
        let (status, body) = try await HTTPClient.request(method: .GET, url: url, body: nil, group: group)
        if status == 404 { return nil }
        guard status == 200 else { throw AgentError("GET \(url) answered \(status)") }
        do {
            return try ChecksummedFile.decode(body, kind: FileKind.serviceSpore, path: url)
        } catch {
            throw SporeError(.file(error))
        }
    }
}

extension DirectorySeedStore {
    /// The services this directory holds records of (for this network), read without verifying:
    /// the leader uses it only to tombstone what the table no longer has.
    func recordedServices() -> [String: ServiceSpore.Content] {
        let prefix = network.description + ".service-", suffix = ".spore"
        var out: [String: ServiceSpore.Content] = [:]
        for f in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where f.hasPrefix(prefix) && f.hasSuffix(suffix) {
            let name = String(f.dropFirst(prefix.count).dropLast(suffix.count))
            guard ServiceSpore.nameProblem(name) == nil,
                  let bytes = try? ChecksummedFile.read(kind: FileKind.serviceSpore, from: directory + "/" + f),
                  let s = try? ServiceSpore(decoding: bytes), s.name == name else { continue }
            out[name] = s.content
        }
        return out
    }
}

extension Agent {
    var serviceSporeStores: [ServiceSporeStore] {
        config.seedDirs.map { DirectorySeedStore(directory: $0, network: network.id) as ServiceSporeStore }
            + config.seedURLs.map { HTTPSeedStore(base: $0, network: network.id, group: group) as ServiceSporeStore }
    }

    /// Called every second: as the leader, and once the entries of earlier terms are applied (its
    /// own first entry is), starts a round of writes at each location that needs one.
    func writeServiceSpores() {
        guard raft.role == .leader, !(config.seedDirs.isEmpty && config.seedURLs.isEmpty) else {
            serviceSpores = ServiceSporeWriter()
            return
        }
        // A new leader's state is complete only once it applied an entry of its own term.
        guard raft.term(at: control.appliedIndex) == raft.term else { return }
        if serviceSpores.term != raft.term { serviceSpores = ServiceSporeWriter(term: raft.term) }
        let now = Date().timeIntervalSince1970
        guard now - serviceSpores.lastRound >= Double(config.seedIntervalSeconds) else { return }
        serviceSpores.lastRound = now
        let current = ServiceSporePlan.contents(control.services, spore: spore)
        let term = raft.term
        let epoch = SporeEpoch(term: term, index: control.appliedIndex)
        let (netID, cert, key) = (network.id, certificate, self.key)
        let sign: @Sendable (ServiceSpore.Content) -> ServiceSpore = { content in
            ServiceSpore(network: netID, content: content, epoch: epoch, issuedAtMillis: Int64(now * 1000), signer: cert, key: key)
        }
        for store in serviceSporeStores where !serviceSpores.busy.contains(store.location) {
            let location = store.location
            let dir = store as? DirectorySeedStore
            let list = dir != nil && !serviceSpores.listed.contains(location)
            let before = serviceSpores.written[location] ?? [:]
            // Cheap check first: nothing changed and nothing to search for.
            if !list && ServiceSporePlan.changes(current: current, written: before).isEmpty { continue }
            serviceSpores.busy.insert(location)
            // Off the actor: listing a directory and writing files block.
            Task.detached { [logger] in
                var written = before
                var done: [String: ServiceSpore.Content] = [:]
                if list, let dir {
                    // Records a former leader wrote of services since removed get tombstones below
                    // (the table's services are all written again, under this term and signer).
                    for (name, c) in dir.recordedServices() where written[name] == nil && current[name] == nil { written[name] = c; done[name] = c }
                }
                var failure: String?
                for content in ServiceSporePlan.changes(current: current, written: written) {
                    do {
                        try await store.writeService(sign(content))
                        done[content.name] = content
                    } catch {
                        failure = "\(error)"
                        logger.warning("cannot write service spore", metadata: ["location": "\(store.serviceLocation(content.name))", "error": "\(error)"])
                        break  // the rest next round
                    }
                }
                await self.serviceSporesWritten(location: location, term: term, done, listed: list && failure == nil)
            }
        }
    }

    func serviceSporesWritten(location: String, term: UInt64, _ done: [String: ServiceSpore.Content], listed: Bool) {
        guard serviceSpores.term == term else { return }
        serviceSpores.busy.remove(location)
        serviceSpores.written[location, default: [:]].merge(done) { $1 }
        if listed { serviceSpores.listed.insert(location) }
    }
}
