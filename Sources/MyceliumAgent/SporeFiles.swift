// Spores on disk and at seed locations: the latent spore (what this node last learned, signed by
// it) and seed spores (signed snapshots the leader writes to directories and URLs, which a cold or
// lost node reads to find the network).

import Foundation
import Logging
import MyceliumCore
import MyceliumIdentity
import MyceliumSpores

extension Agent {
    func saveLatentSpore() {
        lastLatentSave = spore.epoch
        let latent = LatentSpore(from: spore, owner: nodeID, savedAt: Int64(Date().timeIntervalSince1970))
        do {
            try ChecksummedFile.write(kind: FileKind.latentSpore, payload: latent.encoded(signedBy: key), to: paths.latentSpore)
        } catch {
            logger.warning("cannot save the latent spore", metadata: ["error": "\(error)"])
        }
    }

    func loadLatentSpore() {
        guard AtomicFile.exists(paths.latentSpore) else { return }
        do {
            let bytes = try ChecksummedFile.read(kind: FileKind.latentSpore, from: paths.latentSpore)
            let latent = try LatentSpore(verifying: bytes, ownerKey: key.publicKey)
            for p in latent.peers where p.id != nodeID {
                router.addressHints[p.id.compact] = p.addresses
                router.nodeIDs[p.id.compact] = p.id
            }
            note("latent spore loaded: \(latent.peers.count) peers at epoch \(latent.epoch)")
            logger.info("reconnecting from the latent spore", metadata: ["peers": "\(latent.peers.count)", "epoch": "\(latent.epoch)"])
        } catch {
            logger.warning("latent spore refused; ignoring it", metadata: ["error": "\(error)"])
        }
    }

    var seedStores: [SeedSporeStore] {
        config.seedDirs.map { DirectorySeedStore(directory: $0, network: network.id) as SeedSporeStore }
            + config.seedURLs.map { HTTPSeedStore(base: $0, network: network.id, group: group) as SeedSporeStore }
    }

    func writeSeedSpores(force: Bool) {
        guard raft.role == .leader, !(config.seedDirs.isEmpty && config.seedURLs.isEmpty), spore.epoch > seedEpochWritten else { return }
        let now = Date().timeIntervalSince1970
        guard force || now - lastSeedWrite >= Double(config.seedIntervalSeconds) else { return }
        lastSeedWrite = now
        seedEpochWritten = spore.epoch
        let seed = SeedSpore(spore: spore, signer: certificate, key: key, writtenAt: Int64(now))
        for store in seedStores {
            Task { [logger] in
                do { try await store.write(seed) } catch {
                    logger.warning("cannot write seed spore", metadata: ["location": "\(store.location)", "error": "\(error)"])
                }
            }
        }
    }

    func readSeedSpores(reason: String) async {
        let (best, problems) = await newestSeedSpore(from: seedStores, network: network.id, knownEpoch: nil,
                                                     now: Int64(Date().timeIntervalSince1970))
        for p in problems { logger.warning("seed spore refused", metadata: ["location": "\(p.location)", "reason": "\(p.problem)"]) }
        guard let best else { return }
        note("\(reason): seed spore at epoch \(best.epoch) names \(best.spore.presentMembers.count) members")
        for m in best.spore.presentMembers where m.id != nodeID {
            router.addressHints[m.id.compact] = m.addresses
            router.nodeIDs[m.id.compact] = m.id
            for a in m.addresses { addContact(a) }
        }
    }
}
