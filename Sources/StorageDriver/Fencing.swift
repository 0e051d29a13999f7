// Fencing: before a volume is attached on a new node, every other client that may still write it is
// cut off by the cluster. A failed node may not be dead: a host frozen (SIGSTOP, a hung hypervisor, a
// long GC or network partition) still believes it holds the image's exclusive lock and writes as soon
// as it wakes. Breaking its lock is not enough (librbd would happily write on); the cluster must refuse
// it. So: blocklist every client that holds the lock and every other client watching the image (the
// OSDs then refuse all of their operations with EBLOCKLISTED), make sure our own connection has the OSD
// map that says so, and only then break their locks, so the caller can take the lock and write.
//
// This connection's own address is never fenced (the caller attaches through it, or through a client
// it starts only after this returns, e.g. QEMU's librbd on the new node).

import Foundation
import MyceliumRBD

/// What `VolumeFencing.fenceOthers` did.
public struct FenceReport: Sendable, Equatable, CustomStringConvertible {
    /// `pool/image`.
    public let image: String
    /// The client addresses blocklisted (lock owners and watchers other than us), sorted.
    public let fenced: [String]
    /// The exclusive-lock owners whose lock was broken.
    public let locksBroken: [String]
    /// How long the cluster refuses the fenced clients.
    public let expirySeconds: Double
    /// Wall time the whole fence took.
    public let milliseconds: Double

    public var description: String {
        let f = fenced.isEmpty ? "no other client" : fenced.joined(separator: ", ")
        return "fenced \(image): blocklisted \(f) for \(Int(expirySeconds)) s, broke \(locksBroken.count) lock(s) in \(String(format: "%.0f", milliseconds)) ms"
    }
}

public enum VolumeFencing {
    /// One year. Ceph's default blocklist expiry (1 h, `mon_osd_blocklist_default_expire`) is not
    /// enough: a host frozen for more than an hour (SIGSTOP, a suspended VM, a partition that heals
    /// late) would then wake with its librbd still believing it owns the volume and write over the
    /// new owner's data. A zombie must never write again; its address (IP, port and a random nonce per
    /// client instance) is never reused by a fresh client, so a long entry costs nothing but an OSD map
    /// line. An operator lifts it by hand (`ceph osd blocklist rm ADDR`) if needed.
    public static let defaultExpirySeconds: Double = 365 * 24 * 3600

    /// Blocklists every client holding `pool/image`'s exclusive lock and every other client watching
    /// it (never `connection`'s own address) for `expirySeconds`, waits until `connection` has the OSD
    /// map with those entries, then breaks their locks. When it returns, none of the fenced clients
    /// can write the image again (for `expirySeconds`), and `connection` (or a client started after
    /// this) can take the lock.
    ///
    /// Errors: `StorageDriverError.ceph(step:error:)` naming the step; `.invalidArgument` for a bad
    /// expiry is checked before anything is sent.
    public static func fenceOthers(connection: CephConnection, pool: String, image: String,
                                   expirySeconds: Double = defaultExpirySeconds) async throws -> FenceReport {
        let spec = "\(pool)/\(image)"
        guard expirySeconds.isFinite, expirySeconds >= 1, expirySeconds <= 100 * 365 * 24 * 3600 else {
            throw StorageDriverError.ceph(step: "fence \(spec)", error: .invalidArgument(
                reason: "blocklist expiry must be 1 s to 100 years (got \(expirySeconds)); the default is one year",
                operation: "fence \(spec)", errno: EINVAL))
        }
        let expiry = Int(expirySeconds.rounded(.up))
        let t0 = ContinuousClock.now
        func step<T>(_ what: String, _ body: () async throws(RBDError) -> T) async throws -> T {
            do { return try await body() } catch { throw StorageDriverError.ceph(step: "fence \(spec): \(what)", error: error) }
        }

        let me = try await step("get this client's address") { () throws(RBDError) in try await connection.address() }
        let img = try await step("open the image") { () throws(RBDError) in try await connection.openImage(pool: pool, name: image) }
        var fenced: Set<String> = []
        var broken: [String] = []
        do {
            // A client that grabs the lock while we fence (one we have not seen yet) is fenced in the
            // next round; three rounds without settling means something keeps taking it.
            for round in 1...3 {
                let owners = try await step("list the lock owners") { () throws(RBDError) in try await img.lockOwners() }
                let watchers = try await step("list the watchers") { () throws(RBDError) in try await img.watchers() }
                var targets: Set<String> = []
                var toBreak: [RBDLockOwner] = []
                for o in owners {
                    guard let a = o.address else {
                        throw StorageDriverError.ceph(step: "fence \(spec)", error: .failed(
                            operation: "find the address of lock owner \(o.owner) (Ceph did not report one, so it cannot be blocklisted)", errno: ENOENT))
                    }
                    if a != me { targets.insert(a); toBreak.append(o) }
                }
                for w in watchers where !w.address.isEmpty && w.address != me { targets.insert(w.address) }
                let fresh = targets.subtracting(fenced)
                if fresh.isEmpty && toBreak.isEmpty { break }
                if round == 3 && !fresh.isEmpty {
                    throw StorageDriverError.ceph(step: "fence \(spec)", error: .lockedElsewhere(
                        image: spec, operation: "fence the image's clients (new clients kept taking it: \(fresh.sorted().joined(separator: ", ")))", errno: EBUSY))
                }
                for a in targets.sorted() {
                    try await step("blocklist \(a)") { () throws(RBDError) in try await connection.blocklist(address: a, expirySeconds: expiry) }
                    fenced.insert(a)
                }
                // Our next operations carry this epoch: an OSD handles them, and whatever a fenced
                // client sends after them, only once it knows the blocklist.
                try await step("wait for the OSD map with the blocklist") { () throws(RBDError) in try await connection.waitForLatestOSDMap() }
                for o in toBreak {
                    do {
                        try await img.breakLock(owner: o.owner)
                        broken.append(o.owner)
                    } catch .notFound {
                        // Released or already broken meanwhile: nothing to break.
                    } catch {
                        throw StorageDriverError.ceph(step: "fence \(spec): break \(o.owner)'s lock", error: error)
                    }
                    // librbd's break-lock may blocklist the owner itself with ITS expiry
                    // (rbd_blocklist_on_break_lock, rbd_blocklist_expire_seconds: default Ceph's
                    // 1 h), and a blocklist add overwrites an entry's expiry. 16.2 was seen to leave
                    // our entry alone; set ours again anyway so the year holds whatever librbd does.
                    try await step("blocklist \(o.address!) again") { () throws(RBDError) in
                        try await connection.blocklist(address: o.address!, expirySeconds: expiry)
                    }
                }
            }
        } catch {
            try? await img.close()
            throw error
        }
        try? await img.close()
        let d = ContinuousClock.now - t0
        let ms = Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
        return FenceReport(image: spec, fenced: fenced.sorted(), locksBroken: broken, expirySeconds: Double(expiry), milliseconds: ms)
    }
}
