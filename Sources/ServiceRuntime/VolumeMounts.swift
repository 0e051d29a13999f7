// A service's volumes on the node that runs its instance: the volume becomes a block device, the
// block device an ext4 filesystem mounted under HOME/volumes/mnt/NAME, and the workload gets the
// mount (a process its path in MYCELIUM_VOLUME_<NAME>, a container a bind at the spec's path).
//
//   local  HOME/volumes/NAME.img → `losetup -f --show` → ext4 → mount HOME/volumes/mnt/NAME
//   ceph   the RBD image → qemu-storage-daemon (its own librbd) exporting it through FUSE as the
//          regular file HOME/volumes/mnt/.rbd-NAME → `losetup` → ext4 → mount, as above. The kernel
//          here has no rbd or nbd module; the FUSE export needs neither. Before the daemon opens the
//          image, `fence` cuts every other client of it off (VolumeFencing.fenceOthers, as a VM's
//          takeover does), so an old host that is only frozen can never write again.
//
// A filesystem is made only on a device that has none (`blkid` finds no signature): never reformat.
// Everything is found again from the system, not from memory (the mount table, `losetup -j`, the
// daemon's pid file), so `detach` and `cleanup` also undo what a crashed agent left: the agent calls
// `cleanup` when it starts, before any instance runs.
//
// The tools run as blocking subprocesses (`CommandRunner`), on worker threads when called through
// `attach` and `detachOffPool`; an attach takes tens of milliseconds (a first mkfs and the Ceph fence
// longer).

import Foundation

/// Where a volume's bytes are, as this node reaches them.
public enum ServiceVolumeSource: Sendable, Equatable {
    /// A local volume's image file (on its home node).
    case file(path: String)
    /// An RBD image; `cephConf` names the monitors and the keyring, `clientName` the entity (client.admin).
    case rbd(pool: String, image: String, cephConf: String, clientName: String)
}

public struct VolumeMountError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

public final class VolumeMounts: Sendable {
    /// HOME/volumes (local image files).
    public let volumeDirectory: String
    /// HOME/volumes/mnt (mount points, FUSE export files, daemon pid files).
    public let directory: String
    /// Cuts every other client of `pool/image` off before this node opens it; returns what it did.
    let fence: @Sendable (_ pool: String, _ image: String) async throws -> String

    public init(volumeDirectory: String,
                fence: @escaping @Sendable (_ pool: String, _ image: String) async throws -> String = { _, _ in
                    throw VolumeMountError("this node cannot fence Ceph clients (no Ceph configured)")
                }) {
        self.volumeDirectory = volumeDirectory
        directory = volumeDirectory + "/mnt"
        self.fence = fence
    }

    public func mountPoint(_ name: String) -> String { directory + "/" + name }
    func exportFile(_ name: String) -> String { directory + "/.rbd-" + name }
    func pidFile(_ name: String) -> String { directory + "/.rbd-" + name + ".pid" }
    func imageFile(_ name: String) -> String { volumeDirectory + "/" + name + ".img" }

    static func nameOK(_ name: String) -> Bool {
        let u = Array(name.utf8)
        return !u.isEmpty && u.count <= 63 && u[0] >= 0x61 && u[0] <= 0x7A
            && u.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }
    }

    /// Attaches and mounts volume `name` from `source`; returns the mount point. Idempotent: a volume
    /// mounted already is left as it is; a half-made attach (a crash between steps) is undone first.
    public func attach(_ name: String, source: ServiceVolumeSource) async throws -> String {
        guard Self.nameOK(name) else { throw VolumeMountError("'\(name)' is not a volume name") }
        let mp = mountPoint(name)
        if Self.isMounted(mp) { return mp }
        detach(name)
        do {
            return try await mount(name, source: source, at: mp)
        } catch {
            detach(name)  // nothing half-made stays
            throw error
        }
    }

    func mount(_ name: String, source: ServiceVolumeSource, at mp: String) async throws -> String {
        do { try FileManager.default.createDirectory(atPath: mp, withIntermediateDirectories: true) } catch {
            throw VolumeMountError("volume \(name): cannot make its mount point \(mp): \(error)")
        }
        let backing: String
        switch source {
        case .file(let path):
            guard FileManager.default.fileExists(atPath: path) else {
                throw VolumeMountError("volume \(name): its image file \(path) is not on this node (a local volume lives on its home node only)")
            }
            backing = path
        case let .rbd(pool, image, conf, client):
            do { _ = try await fence(pool, image) } catch {
                throw VolumeMountError("volume \(name): cannot fence the other clients of \(pool)/\(image) before attaching it: \(error)")
            }
            backing = try await onWorker { Result { try self.startExport(name, pool: pool, image: image, conf: conf, client: client) } }.get()
        }
        // The tools block (a first mkfs of a big volume for long): on a worker thread, not the pool.
        return try await onWorker { Result { try self.format(name, backing: backing, at: mp) } }.get()
    }

    /// Loop device, filesystem (only where there is none), mount.
    func format(_ name: String, backing: String, at mp: String) throws -> String {
        let loop = try loopDevice(backing, name: name)
        let type = try Self.run(["blkid", "-p", "-o", "value", "-s", "TYPE", loop], allow: [0, 2], what: "volume \(name): read the filesystem type of \(loop)")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        if type.isEmpty {
            // No signature at all: a fresh volume. Anything found is kept as it is.
            _ = try Self.run(["mkfs.ext4", "-q", "-F", "-L", String(name.prefix(16)), "-E", "lazy_itable_init=1,lazy_journal_init=1", loop],
                             what: "volume \(name): make an ext4 filesystem on \(loop)", timeoutMillis: 300_000)
        }
        _ = try Self.run(["mount", loop, mp], what: "volume \(name): mount \(loop) (\(type.isEmpty ? "ext4" : type)) on \(mp)", timeoutMillis: 120_000)
        return mp
    }

    /// Unmounts volume `name`, detaches its loop devices, stops its export daemon and removes the
    /// mount point. Does what it can, also for what a crash left half done; never throws.
    @discardableResult
    public func detach(_ name: String) -> [String] {
        guard Self.nameOK(name) else { return [] }
        var problems: [String] = []
        let mp = mountPoint(name)
        if Self.isMounted(mp) {
            if (try? Self.run(["umount", mp], what: "unmount \(mp)", timeoutMillis: 60_000)) == nil {
                // Busy (a process still in it): detach it from the tree now, the kernel finishes when freed.
                do { _ = try Self.run(["umount", "-l", mp], what: "unmount \(mp) lazily") } catch { problems.append("\(error)") }
            }
        }
        for backing in [imageFile(name), exportFile(name)] {
            for loop in loops(backing) {
                do { _ = try Self.run(["losetup", "-d", loop], what: "detach \(loop)") } catch { problems.append("\(error)") }
            }
        }
        stopExport(name)
        rmdir(mp)
        return problems
    }

    /// `detach` on a worker thread (it waits for unmounts and the export daemon).
    @discardableResult
    public func detachOffPool(_ name: String) async -> [String] { await onWorker { self.detach(name) } }

    /// Undoes every attach but those of `keep` (the agent at start: nothing runs yet, so all of them).
    /// Finds them by mount point, export pid file and loop devices over this node's volume files.
    @discardableResult
    public func cleanup(keep: Set<String> = []) -> [String] {
        var names = Set<String>()
        for e in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            if e.hasPrefix(".rbd-") {
                var n = String(e.dropFirst(5))
                if n.hasSuffix(".pid") { n = String(n.dropLast(4)) }
                names.insert(n)
            } else if !e.hasPrefix(".") {
                names.insert(e)
            }
        }
        for (_, backing) in Self.allLoops() {
            if backing.hasPrefix(volumeDirectory + "/"), backing.hasSuffix(".img") {
                let n = String(backing.dropFirst(volumeDirectory.count + 1).dropLast(4))
                if !n.contains("/") && !n.contains("@") { names.insert(n) }
            } else if backing.hasPrefix(directory + "/.rbd-") {
                names.insert(String(backing.dropFirst(directory.count + 6)))
            }
        }
        var problems: [String] = []
        for n in names.subtracting(keep).sorted() where Self.nameOK(n) { problems += detach(n) }
        return problems
    }

    // MARK: Ceph through qemu-storage-daemon

    func startExport(_ name: String, pool: String, image: String, conf: String, client: String) throws -> String {
        let file = exportFile(name)
        // QEMU's option syntax: a ',' in a value would need doubling; none of ours may hold one.
        for (what, v) in [("pool", pool), ("image", image), ("ceph_conf", conf), ("client", client), ("export file", file)] where v.contains(",") || v.isEmpty {
            throw VolumeMountError("volume \(name): the \(what) '\(v)' is empty or holds a ',' (qemu-storage-daemon cannot take it)")
        }
        let user = client.hasPrefix("client.") ? String(client.dropFirst(7)) : client
        // The FUSE export's mount point must be an existing regular file.
        guard FileManager.default.createFile(atPath: file, contents: nil) else {
            throw VolumeMountError("volume \(name): cannot make the export file \(file)")
        }
        _ = try Self.run(["qemu-storage-daemon",
                          "--blockdev", "driver=rbd,node-name=rbd0,pool=\(pool),image=\(image),conf=\(conf),user=\(user),cache.direct=on",
                          "--blockdev", "driver=raw,node-name=r,file=rbd0",
                          "--export", "type=fuse,id=e,node-name=r,mountpoint=\(file),writable=on",
                          "--pidfile", pidFile(name), "--daemonize"],
                         what: "volume \(name): export \(pool)/\(image) with qemu-storage-daemon (is qemu-system-common with qemu-block-extra installed? scripts/setup)",
                         timeoutMillis: 60_000)
        return file
    }

    func stopExport(_ name: String) {
        let pf = pidFile(name), file = exportFile(name)
        if let text = try? String(contentsOfFile: pf, encoding: .utf8), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1,
           Self.isStorageDaemon(pid) {
            kill(pid, SIGTERM)
            let deadline = Date().addingTimeInterval(10)
            while Self.isStorageDaemon(pid) && Date() < deadline { usleep(20_000) }
            if Self.isStorageDaemon(pid) {
                kill(pid, SIGKILL)
                let hard = Date().addingTimeInterval(5)
                while Self.isStorageDaemon(pid) && Date() < hard { usleep(20_000) }
            }
        }
        // A daemon killed hard leaves its FUSE mount behind ("transport endpoint is not connected").
        if Self.isMounted(file) { _ = try? Self.run(["umount", "-l", file], what: "unmount the export \(file)") }
        unlink(pf)
        unlink(file)
    }

    static func isStorageDaemon(_ pid: Int32) -> Bool {
        guard let comm = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8) else { return false }
        if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
           let close = stat.lastIndex(of: ")"), stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z") {
            return false
        }
        return comm.hasPrefix("qemu-storage")
    }

    // MARK: loop devices and the mount table

    func loopDevice(_ backing: String, name: String) throws -> String {
        if let existing = loops(backing).first { return existing }
        let dev = try Self.run(["losetup", "-f", "--show", backing], what: "volume \(name): attach \(backing) to a loop device")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        guard dev.hasPrefix("/dev/loop") else { throw VolumeMountError("volume \(name): losetup named no loop device for \(backing) ('\(dev)')") }
        return dev
    }

    /// The loop devices over `backing`.
    public func loops(_ backing: String) -> [String] {
        Self.allLoops().filter { $0.backing == backing }.map(\.device)
    }

    /// Every loop device and its backing file (`losetup -l -J`).
    static func allLoops() -> [(device: String, backing: String)] {
        struct Listing: Decodable {
            struct Device: Decodable {
                let name: String
                let backFile: String?
                enum CodingKeys: String, CodingKey { case name, backFile = "back-file" }
            }
            let loopdevices: [Device]
        }
        guard let out = try? run(["losetup", "-l", "-J", "-O", "NAME,BACK-FILE"], what: "list loop devices"), !out.isEmpty,
              let listing = try? JSONDecoder().decode(Listing.self, from: Data(out.utf8)) else { return [] }
        return listing.loopdevices.compactMap { d in
            guard var back = d.backFile else { return nil }
            if back.hasSuffix(" (deleted)") { back = String(back.dropLast(10)) }
            return (d.name, back)
        }
    }

    /// Whether `path` is a mount point (this process's mount table).
    public static func isMounted(_ path: String) -> Bool {
        guard let table = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return false }
        return table.split(separator: "\n").contains { line in
            let f = line.split(separator: " ", omittingEmptySubsequences: false)
            return f.count > 4 && unescape(String(f[4])) == path
        }
    }

    /// The kernel's octal escapes (`\040` for a space) undone.
    static func unescape(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = [], b = Array(s.utf8), i = 0
        while i < b.count {
            if b[i] == 0x5C, i + 3 < b.count,
               let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v); i += 4
            } else {
                out.append(b[i]); i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Runs a tool; its stdout, or a VolumeMountError with what it printed.
    @discardableResult
    static func run(_ argv: [String], allow: Set<Int32> = [0], what: String, timeoutMillis: Int32 = 30_000) throws -> String {
        var env = ProcessInfo.processInfo.environment
        env["PATH"] = (env["PATH"] ?? "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
        let r: CommandResult
        do { r = try CommandRunner.run(argv, environment: env, timeoutMillis: timeoutMillis, instance: "volume") } catch {
            throw VolumeMountError("\(what): cannot run \(argv[0]): \(error)")
        }
        if r.timedOut { throw VolumeMountError("\(what): \(argv[0]) did not finish within \(timeoutMillis / 1000) s") }
        guard allow.contains(r.status) else {
            let said = (r.stderr + r.stdout).trimmingCharacters(in: .whitespacesAndNewlines)
            throw VolumeMountError("\(what): \(argv[0]) exited with \(r.status)" + (said.isEmpty ? "" : ": " + String(said.prefix(400))))
        }
        return r.stdout
    }
}
