// The volume controller's driver (StorageController/VolumeController.swift): carries out the tasks and
// placement decisions the control state gives this node, on local files and on Ceph.
//
//   local  HOME/volumes/NAME.img, a sparse file of the volume's size (created under a temporary
//          name, then renamed, so a crash never leaves a half-made volume under its name);
//          a snapshot is a sparse copy NAME@SNAP.img (holes stay holes);
//   ceph   an RBD image NAME in the class's pool `mycelium-CLASS` (MyceliumRBD, no subprocess);
//          a snapshot is an RBD snapshot; delete removes the snapshots, then the image.
//
// Every step is idempotent: creating what exists with the right size, snapshotting what has the
// snapshot, deleting what is gone all succeed, so a task carried out again after a crash or a retask
// changes nothing twice. Reports go to the controller, which sends them through the leader.

import Foundation
import MyceliumControl
import MyceliumCore
import MyceliumRBD
import StorageController
import Synchronization

public struct VolumeDriverSettings: Sendable {
    /// Where local volumes live (HOME/volumes).
    public var directory: String
    /// The Ceph cluster this node reaches, or nil.
    public var ceph: CephClientConfig?
    public var classes: [DataClass]
    public init(directory: String, ceph: CephClientConfig?, classes: [DataClass] = DataClass.defaults) {
        self.directory = directory; self.ceph = ceph; self.classes = classes
    }
}

public enum VolumeDriverError: Error, Sendable, CustomStringConvertible {
    case file(String)
    case noCeph
    case ceph(String)
    public var description: String {
        switch self {
        case .file(let s): return s
        case .noCeph: return "this node has no Ceph cluster configured (ceph_conf in the agent's configuration)"
        case .ceph(let s): return s
        }
    }
}

public final class VolumeDriver: ControllerDriver, @unchecked Sendable {
    public typealias Action = VolumeAction
    public typealias Report = VolumeReport
    public let settings: VolumeDriverSettings
    let sink = Mutex<(@Sendable (VolumeReport) -> Void)?>(nil)
    let connection = Mutex<CephConnection?>(nil)

    public init(settings: VolumeDriverSettings) throws(VolumeDriverError) {
        self.settings = settings
        do { try AtomicFile.makeDirectory(settings.directory) } catch {
            throw .file("cannot make the volume directory \(settings.directory): \(error)")
        }
    }

    public func reportTo(_ sink: @escaping @Sendable (VolumeReport) -> Void) { self.sink.withLock { $0 = sink } }

    func report(_ r: VolumeReport) { sink.withLock { $0 }?(r) }

    /// The Ceph connection, made on first use and again after it failed.
    public func cephConnection() async throws(VolumeDriverError) -> CephConnection {
        if let c = connection.withLock({ $0 }) { return c }
        guard let config = settings.ceph else { throw .noCeph }
        do {
            let c = try await CephConnection.connect(config)
            connection.withLock { $0 = c }
            return c
        } catch {
            throw .ceph("\(error)")
        }
    }

    /// Drops the connection after an error that may have been its own (blocklisted, unreachable).
    func dropConnection(after error: RBDError) {
        switch error {
        case .blocklisted, .unreachable, .timedOut, .closed: connection.withLock { $0 = nil }
        default: break
        }
    }

    public func perform(_ action: VolumeAction) async throws {
        switch action {
        case .perform(let r):
            guard let t = r.task else { return }
            do {
                let message = try await carryOut(t.operation, r)
                report(.taskDone(name: r.name, task: t.id, ok: true, message: message))
            } catch {
                report(.taskDone(name: r.name, task: t.id, ok: false, message: "\(t.operation) failed: \(error)"))
            }
        case let .place(id, hosts):
            do {
                let c = try await cephConnection()
                let result = try await CephStorageDriver(connection: c).reconcile(hosts: hosts, classes: settings.classes)
                let moved = result.applied.count
                // Hosts left out for a reason other than trust (a CRUSH host that does not exist) are
                // the operator's to fix: say so in the outcome.
                let odd = Set(result.verdicts.flatMap(\.excluded).filter { !$0.reason.hasPrefix("trust ") }.map { "\($0.host): \($0.reason)" })
                let message = (moved == 0 ? "the cluster already matched" : "\(moved) CRUSH/pool changes applied")
                    + (odd.isEmpty ? "" : "; left out: " + odd.sorted().joined(separator: "; "))
                report(.placementDone(id: id, ok: true, message: message))
            } catch {
                if case .ceph(_, let e) = error as? StorageDriverError { dropConnection(after: e) }
                report(.placementDone(id: id, ok: false, message: "\(error)"))
            }
        }
    }

    func carryOut(_ op: VolumeOperation, _ r: VolumeRecord) async throws -> String {
        switch r.spec.driver {
        case .local:
            switch op {
            case .create: return try createFile(r.spec)
            case .snapshot(let s): return try snapshotFile(r.name, s)
            case .delete: return try deleteFiles(r.name)
            }
        case .ceph:
            let c = try await cephConnection()
            let pool = "mycelium-" + r.spec.dataClass
            do {
                switch op {
                case .create: return try await createImage(c, pool: pool, r.spec)
                case .snapshot(let s):
                    let img = try await c.openImage(pool: pool, name: r.name)
                    do {
                        let exists = try await img.snapshots().contains(where: { $0.name == s })
                        if !exists { try await img.createSnapshot(s) }
                        try await img.close()
                        return exists ? "snapshot \(s) exists" : "snapshot \(s) of \(pool)/\(r.name) taken"
                    } catch {
                        try? await img.close()
                        throw error
                    }
                case .delete: return try await deleteImage(c, pool: pool, r.name)
                }
            } catch let e as RBDError {
                dropConnection(after: e)
                throw VolumeDriverError.ceph("\(e)")
            }
        }
    }

    // MARK: Ceph

    func createImage(_ c: CephConnection, pool: String, _ spec: VolumeSpec) async throws -> String {
        guard try await c.poolExists(pool) else {
            throw VolumeDriverError.ceph("the pool of class \(spec.dataClass) (\(pool)) does not exist yet: no host qualifies for the class, "
                                         + "or the leader's placement was not carried out; see 'mycelium storage status'")
        }
        do {
            try await c.createImage(pool: pool, name: spec.name, size: spec.sizeBytes)
        } catch .alreadyExists {
            let img = try await c.openImage(pool: pool, name: spec.name)
            let size = try await img.stat().size
            try? await img.close()
            guard size == spec.sizeBytes else {
                throw VolumeDriverError.ceph("an image \(pool)/\(spec.name) of \(size) bytes exists (not made by this volume): remove or rename it")
            }
            return "image \(pool)/\(spec.name) exists with the volume's size"
        }
        return "image \(pool)/\(spec.name) created"
    }

    func deleteImage(_ c: CephConnection, pool: String, _ name: String) async throws -> String {
        guard try await c.poolExists(pool) else { return "pool \(pool) is gone: nothing to delete" }
        do {
            // In use (a VM's QEMU, another client): refused before anything is removed.
            let users = try await c.imageWatchers(pool: pool, name: name)
            if !users.isEmpty {
                throw RBDError.inUse(image: "\(pool)/\(name)", watchers: users.map { "client.\($0.clientID) at \($0.address)" },
                                     operation: "delete image \(pool)/\(name)", errno: EBUSY)
            }
            let img = try await c.openImage(pool: pool, name: name)
            let snaps: [RBDSnapshot]
            do { snaps = try await img.snapshots() } catch { try? await img.close(); throw error }
            for s in snaps {
                do { try await img.removeSnapshot(s.name) } catch { try? await img.close(); throw error }
            }
            try await img.close()
            try await c.removeImage(pool: pool, name: name)
            return "image \(pool)/\(name) and \(snaps.count) snapshot(s) removed"
        } catch let e as RBDError {
            if case .notFound = e { return "image \(pool)/\(name) was already gone" }
            throw e
        }
    }

    // MARK: local files

    public func path(_ name: String, snapshot: String? = nil) -> String {
        settings.directory + "/" + name + (snapshot.map { "@" + $0 } ?? "") + ".img"
    }

    func createFile(_ spec: VolumeSpec) throws -> String {
        let p = path(spec.name)
        var st = stat()
        if stat(p, &st) == 0 {
            guard UInt64(st.st_size) == spec.sizeBytes else {
                throw VolumeDriverError.file("\(p) exists with \(st.st_size) bytes, not \(spec.sizeBytes): not this volume's; move it away")
            }
            return "file \(p) exists with the volume's size"
        }
        var fs = statvfs()
        if statvfs(settings.directory, &fs) == 0 {
            let total = UInt64(fs.f_blocks) * UInt64(fs.f_frsize)
            if spec.sizeBytes > total {
                throw VolumeDriverError.file("\(spec.sizeBytes >> 20) MiB is more than the whole file system of \(settings.directory) (\(total >> 20) MiB)")
            }
        }
        let tmp = p + ".tmp"
        unlink(tmp)
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VolumeDriverError.file("cannot create \(tmp): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(spec.sizeBytes)) == 0, fsync(fd) == 0 else {
            let e = String(cString: strerror(errno)); unlink(tmp)
            throw VolumeDriverError.file("cannot size \(tmp): \(e)")
        }
        guard rename(tmp, p) == 0 else {
            let e = String(cString: strerror(errno)); unlink(tmp)
            throw VolumeDriverError.file("cannot rename \(tmp): \(e)")
        }
        try? AtomicFile.syncDirectory(settings.directory)
        return "file \(p) created (sparse)"
    }

    func snapshotFile(_ name: String, _ snap: String) throws -> String {
        let src = path(name), dst = path(name, snapshot: snap)
        if AtomicFile.exists(dst) { return "snapshot file \(dst) exists" }
        try Self.sparseCopy(from: src, to: dst)
        try? AtomicFile.syncDirectory(settings.directory)
        return "snapshot \(snap) copied to \(dst)"
    }

    func deleteFiles(_ name: String) throws -> String {
        let prefix = name + "@"
        let snaps = ((try? FileManager.default.contentsOfDirectory(atPath: settings.directory)) ?? [])
            .filter { $0.hasPrefix(prefix) && $0.hasSuffix(".img") }
        for s in snaps { unlink(settings.directory + "/" + s) }
        let p = path(name)
        if unlink(p) != 0 && errno != ENOENT {
            throw VolumeDriverError.file("cannot remove \(p): \(String(cString: strerror(errno)))")
        }
        try? AtomicFile.syncDirectory(settings.directory)
        return "file \(p) and \(snaps.count) snapshot(s) removed"
    }

    /// Copies `src` to `dst` (through a temporary file, then renamed), data extents only: holes stay holes.
    static func sparseCopy(from src: String, to dst: String) throws {
        let i = open(src, O_RDONLY | O_CLOEXEC)
        guard i >= 0 else { throw VolumeDriverError.file("cannot open \(src): \(String(cString: strerror(errno)))") }
        defer { close(i) }
        var st = stat()
        guard fstat(i, &st) == 0 else { throw VolumeDriverError.file("cannot stat \(src)") }
        let tmp = dst + ".tmp"
        unlink(tmp)
        let o = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard o >= 0 else { throw VolumeDriverError.file("cannot create \(tmp): \(String(cString: strerror(errno)))") }
        var ok = false
        defer { close(o); if !ok { unlink(tmp) } }
        guard ftruncate(o, st.st_size) == 0 else { throw VolumeDriverError.file("cannot size \(tmp): \(String(cString: strerror(errno)))") }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        var pos: off_t = 0
        let SEEK_DATA: Int32 = 3, SEEK_HOLE: Int32 = 4
        while pos < st.st_size {
            let data = lseek(i, pos, SEEK_DATA)
            if data < 0 { break }  // ENXIO: only a hole remains
            let hole = lseek(i, data, SEEK_HOLE)
            let end = hole < 0 ? st.st_size : hole
            var off = data
            while off < end {
                let n = pread(i, buffer.baseAddress, min(buffer.count, Int(end - off)), off)
                if n < 0 { throw VolumeDriverError.file("cannot read \(src): \(String(cString: strerror(errno)))") }
                if n == 0 { break }
                var done = 0
                while done < n {
                    let w = pwrite(o, buffer.baseAddress! + done, n - done, off + off_t(done))
                    if w <= 0 { throw VolumeDriverError.file("cannot write \(tmp): \(String(cString: strerror(errno)))") }
                    done += w
                }
                off += off_t(n)
            }
            pos = end
        }
        guard fsync(o) == 0, rename(tmp, dst) == 0 else { throw VolumeDriverError.file("cannot finish \(dst): \(String(cString: strerror(errno)))") }
        ok = true
    }

    // MARK: status

    /// The cluster as `ceph status` reports it (health, OSDs, placement groups, capacity).
    public func clusterStatus() async throws(VolumeDriverError) -> CephClusterStatus {
        let c = try await cephConnection()
        do {
            let reply = try await c.monitorCommand("status", ["format": .string("json")])
            return try CephClusterStatus(json: reply.output)
        } catch let e as RBDError {
            dropConnection(after: e)
            throw .ceph("\(e)")
        } catch {
            throw .ceph("cannot read 'ceph status': \(error)")
        }
    }

    /// Where the cluster maps a volume's first object (`rbd_id.NAME`), with the acting hosts.
    public func placement(of r: VolumeRecord) async throws(VolumeDriverError) -> ObjectPlacement {
        let c = try await cephConnection()
        do { return try await CephStorageDriver(connection: c).placement(pool: "mycelium-" + r.spec.dataClass, object: "rbd_id." + r.name) } catch {
            throw .ceph("\(error)")
        }
    }
}

/// What `ceph status` says, as much as an operator needs.
public struct CephClusterStatus: Sendable, Equatable {
    public var health: String
    /// Each health check's summary ("1 osds down").
    public var checks: [String]
    public var osds: Int, osdsUp: Int, osdsIn: Int
    public var pgs: Int
    /// PG state → count ("active+clean": 33).
    public var pgStates: [String: Int]
    public var bytesTotal: UInt64, bytesUsed: UInt64, bytesAvailable: UInt64

    struct Raw: Decodable {
        struct Health: Decodable {
            struct Check: Decodable { struct Summary: Decodable { let message: String }; let severity: String; let summary: Summary }
            let status: String
            let checks: [String: Check]?
        }
        struct OSDMap: Decodable { let num_osds: Int; let num_up_osds: Int; let num_in_osds: Int }
        struct PGMap: Decodable {
            struct State: Decodable { let state_name: String; let count: Int }
            let pgs_by_state: [State]?
            let num_pgs: Int
            let bytes_total: UInt64?
            let bytes_used: UInt64?
            let bytes_avail: UInt64?
        }
        let health: Health
        let osdmap: OSDMap
        let pgmap: PGMap
    }

    public init(json: String) throws {
        let raw = try JSONDecoder().decode(Raw.self, from: Data(json.utf8))
        health = raw.health.status
        checks = (raw.health.checks ?? [:]).sorted { $0.key < $1.key }.map { "\($0.value.severity): \($0.value.summary.message)" }
        osds = raw.osdmap.num_osds; osdsUp = raw.osdmap.num_up_osds; osdsIn = raw.osdmap.num_in_osds
        pgs = raw.pgmap.num_pgs
        pgStates = Dictionary((raw.pgmap.pgs_by_state ?? []).map { ($0.state_name, $0.count) }, uniquingKeysWith: +)
        bytesTotal = raw.pgmap.bytes_total ?? 0; bytesUsed = raw.pgmap.bytes_used ?? 0; bytesAvailable = raw.pgmap.bytes_avail ?? 0
    }

    /// Placement groups not active+clean.
    public var unhealthyPGs: Int { pgs - (pgStates["active+clean"] ?? 0) }
}
