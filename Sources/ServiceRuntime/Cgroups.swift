// The instances' cgroups on either layout this project meets:
// - cgroup v1 (hybrid hosts, our CI): the memory and cpu controllers are separate hierarchies, so an
//   instance has two directories, /sys/fs/cgroup/memory/mycelium/NAME and /sys/fs/cgroup/cpu/mycelium/NAME.
// - cgroup v2: one directory /sys/fs/cgroup/mycelium/NAME with cpu.max and memory.max; cgroup.kill.
// NAME is "<runtime prefix>-<instance id>". The prefix is a hash of the state directory, so a restarted
// agent recognises its earlier run's cgroups (cleanupLeftovers) and never touches another runtime's.

import Foundation
import MyceliumCore

enum CgroupLayout: Sendable, Equatable {
    case v1(memory: String, cpu: String)
    /// `controllers` are those the root offers (cgroup.controllers), e.g. ["cpu", "memory"].
    case v2(root: String, controllers: [String])

    /// Pure v2 when `root` itself is a cgroup2 mount (it has cgroup.controllers), else v1 with the cpu
    /// and memory controllers mounted under `root`. A hybrid host's /sys/fs/cgroup/unified (cgroup2 with no
    /// controllers) is not used: it cannot limit anything.
    static func detect(root: String = "/sys/fs/cgroup") throws(RuntimeError) -> CgroupLayout {
        if let controllers = readText(root + "/cgroup.controllers") {
            return .v2(root: root, controllers: controllers.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        }
        let memory = root + "/memory", cpu = root + "/cpu"
        if AtomicFile.exists(memory + "/memory.limit_in_bytes") && AtomicFile.exists(cpu + "/cpu.cfs_quota_us") {
            return .v1(memory: memory, cpu: cpu)
        }
        throw RuntimeError(instance: nil, .noCgroupSupport(
            "\(root) has neither cgroup.controllers (cgroup v2) nor memory/memory.limit_in_bytes and cpu/cpu.cfs_quota_us (cgroup v1)"))
    }

    var description: String {
        switch self {
        case let .v1(memory, cpu): return "cgroup v1 (\(memory), \(cpu))"
        case let .v2(root, controllers): return "cgroup v2 (\(root), controllers: \(controllers.joined(separator: " ")))"
        }
    }
}

/// The `mycelium` parents of one layout and the naming of one runtime's cgroups in them.
struct CgroupTree: Sendable {
    static let parentName = "mycelium"
    /// CFS period used for CPU limits: 100 ms, the kernel's default.
    static let cpuPeriodMicros: UInt64 = 100_000

    let layout: CgroupLayout
    /// Hash of the state directory; every cgroup of this runtime is named "<prefix>-<id>".
    let prefix: String

    var parents: [String] {
        switch layout {
        case let .v1(memory, cpu): return [memory + "/" + Self.parentName, cpu + "/" + Self.parentName]
        case let .v2(root, _): return [root + "/" + Self.parentName]
        }
    }

    func cgroup(for id: String) -> InstanceCgroup {
        let name = prefix + "-" + id
        if case .v2 = layout { return InstanceCgroup(dirs: parents.map { $0 + "/" + name }, isV2: true) }
        return InstanceCgroup(dirs: parents.map { $0 + "/" + name }, isV2: false)
    }

    /// Creates (or reuses) the instance's cgroups and writes its limits (0 = none) into them. On failure
    /// nothing of the instance's is left.
    func create(id: String, cpuMillis: UInt32, memoryMiB: UInt32) throws(RuntimeError) -> InstanceCgroup {
        let cg = cgroup(for: id)
        do {
            try setUp(cg, id: id, cpuMillis: cpuMillis, memoryMiB: memoryMiB)
        } catch {
            cg.remove(deadlineMillis: monotonicMillis())
            throw error
        }
        return cg
    }

    private func setUp(_ cg: InstanceCgroup, id: String, cpuMillis: UInt32, memoryMiB: UInt32) throws(RuntimeError) {
        switch layout {
        case .v1:
            for p in parents { try makeDir(p, id: id) }
            for d in cg.dirs { try makeDir(d, id: id) }
            let memory = cg.dirs[0], cpu = cg.dirs[1]
            try write(cpu + "/cpu.cfs_period_us", "\(Self.cpuPeriodMicros)", id: id)
            try write(cpu + "/cpu.cfs_quota_us", cpuMillis == 0 ? "-1" : "\(Self.quotaMicros(cpuMillis))", id: id)
            // memsw (memory + swap) must stay >= limit_in_bytes at every step: lift it first, then set both.
            // Without swap accounting the file is absent and swap is simply not limited.
            let memsw = memory + "/memory.memsw.limit_in_bytes"
            let hasMemsw = AtomicFile.exists(memsw)
            if hasMemsw { try write(memsw, "-1", id: id) }
            let bytes = memoryMiB == 0 ? "-1" : "\(UInt64(memoryMiB) << 20)"
            try write(memory + "/memory.limit_in_bytes", bytes, id: id)
            if hasMemsw { try write(memsw, bytes, id: id) }
        case let .v2(root, controllers):
            if cpuMillis > 0 && !controllers.contains("cpu") {
                throw RuntimeError(instance: id, .limitUnsupported(controller: "cpu", root: root))
            }
            if memoryMiB > 0 && !controllers.contains("memory") {
                throw RuntimeError(instance: id, .limitUnsupported(controller: "memory", root: root))
            }
            // Delegate every controller we may need from the root down to the instances, once; later
            // instances then find them on.
            let wanted = ["cpu", "memory"].filter { controllers.contains($0) }
            try enable(wanted, in: root, id: id)
            try makeDir(parents[0], id: id)
            try enable(wanted, in: parents[0], id: id)
            let dir = cg.dirs[0]
            try makeDir(dir, id: id)
            if controllers.contains("cpu") {
                let quota = cpuMillis == 0 ? "max" : "\(Self.quotaMicros(cpuMillis))"
                try write(dir + "/cpu.max", "\(quota) \(Self.cpuPeriodMicros)", id: id)
            }
            if controllers.contains("memory") {
                try write(dir + "/memory.max", memoryMiB == 0 ? "max" : "\(UInt64(memoryMiB) << 20)", id: id)
                // A limit that swap could soak up would not be one; and an OOM kills the whole instance,
                // not a random process of it, so the controller sees one clean death.
                if AtomicFile.exists(dir + "/memory.swap.max") {
                    try write(dir + "/memory.swap.max", memoryMiB == 0 ? "max" : "0", id: id)
                }
                if AtomicFile.exists(dir + "/memory.oom.group") { try write(dir + "/memory.oom.group", "1", id: id) }
            }
        }
    }

    /// The kernel's minimum CFS quota is 1 ms.
    static func quotaMicros(_ cpuMillis: UInt32) -> UInt64 {
        max(UInt64(cpuMillis) * cpuPeriodMicros / 1000, 1000)
    }

    /// Instance ids of this runtime that have a cgroup in any hierarchy.
    func existingIDs() -> Set<String> {
        var ids = Set<String>()
        let head = prefix + "-"
        for p in parents {
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: p) else { continue }
            for n in names where n.hasPrefix(head) {
                let id = String(n.dropFirst(head.count))
                var isDir: ObjCBool = false
                if InstanceSpec.isValidID(id), FileManager.default.fileExists(atPath: p + "/" + n, isDirectory: &isDir), isDir.boolValue {
                    ids.insert(id)
                }
            }
        }
        return ids
    }

    private func enable(_ controllers: [String], in dir: String, id: String) throws(RuntimeError) {
        let current = (readText(dir + "/cgroup.subtree_control") ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
        let missing = controllers.filter { !current.contains($0) }
        if missing.isEmpty { return }
        try write(dir + "/cgroup.subtree_control", missing.map { "+" + $0 }.joined(separator: " "), id: id)
    }

    private func makeDir(_ path: String, id: String) throws(RuntimeError) {
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            throw RuntimeError(instance: id, .cgroup(path: path, operation: "mkdir", errno: errno))
        }
    }

    private func write(_ path: String, _ text: String, id: String) throws(RuntimeError) {
        let e = writeText(path, text)
        if e != 0 { throw RuntimeError(instance: id, .cgroup(path: path, operation: "write \"\(text)\"", errno: e)) }
    }
}

/// One instance's cgroup directories (two on v1, one on v2). Every process of the instance is in them.
struct InstanceCgroup: Sendable, Equatable {
    let dirs: [String]
    let isV2: Bool

    var procsFiles: [String] { dirs.map { $0 + "/cgroup.procs" } }

    /// Every process in the instance's cgroups (a missing cgroup holds none).
    func pids() -> [Int32] {
        var all = Set<Int32>()
        for f in procsFiles {
            guard let text = readText(f) else { continue }
            for line in text.split(separator: "\n") {
                if let p = Int32(line), p > 0 { all.insert(p) }
            }
        }
        return all.sorted()
    }

    var isEmpty: Bool { pids().isEmpty }

    /// Sends `signal` to every process in the cgroups once. Processes forked meanwhile are missed: callers
    /// that must empty the cgroup use `killAll`.
    func signalAll(_ signal: Int32) {
        for p in pids() { _ = kill(p, signal) }
    }

    /// SIGKILLs every process until the cgroups are empty or the deadline (CLOCK_MONOTONIC ms) passes;
    /// true when empty. v2's cgroup.kill takes the whole tree at once; on v1 the list is re-read and killed
    /// until nothing is left, which wins against a forking process because a killed process cannot fork.
    @discardableResult
    func killAll(deadlineMillis: UInt64) -> Bool {
        var usedCgroupKill = false
        while true {
            let pids = pids()
            if pids.isEmpty { return true }
            if monotonicMillis() >= deadlineMillis { return false }
            if isV2 && !usedCgroupKill {
                usedCgroupKill = dirs.allSatisfy { writeText($0 + "/cgroup.kill", "1") == 0 }
            }
            if !usedCgroupKill {
                for p in pids { _ = kill(p, SIGKILL) }
            }
            // Dying processes leave the list within microseconds to milliseconds (memory teardown).
            usleep(1000)
        }
    }

    /// Removes the cgroup directories; a missing one is fine. A cgroup that still holds a process
    /// (stuck in the kernel) is retried until the deadline and then left for cleanupLeftovers.
    @discardableResult
    func remove(deadlineMillis: UInt64) -> Int32 {
        var firstError: Int32 = 0
        for d in dirs {
            while rmdir(d) != 0 {
                let e = errno
                if e == ENOENT { break }
                if e == EBUSY && monotonicMillis() < deadlineMillis {
                    usleep(2000)
                    continue
                }
                if firstError == 0 { firstError = e }
                break
            }
        }
        return firstError
    }
}

// MARK: small file helpers (cgroup files are tiny and must be written in one write(2))

func readText(_ path: String, limit: Int = 1 << 20) -> String? {
    guard let bytes = try? AtomicFile.read(path, limit: limit) else { return nil }
    return String(decoding: bytes, as: UTF8.self)
}

/// Writes `text` with a single write(2), as cgroup files require; returns 0 or the errno.
func writeText(_ path: String, _ text: String) -> Int32 {
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    if fd < 0 { return errno }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    while true {
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if n >= 0 { return n == bytes.count ? 0 : EIO }
        if errno != EINTR { return errno }
    }
}

func monotonicMillis() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
}
