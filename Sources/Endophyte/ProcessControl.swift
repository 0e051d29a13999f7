// Source hooks for a plain process (the workload driver for processes, and the stand-in for a VM in
// tests): pause = SIGSTOP and wait until the kernel reports the process stopped, resume = SIGCONT,
// throttle = a stop/continue duty cycle. A VM uses QMP stop/cont and cpu-throttle instead.

#if canImport(Glibc)
import Glibc
#endif

public final class ProcessControl: @unchecked Sendable {
    // SAFETY (Sendable): all mutable state is guarded by `lock`; the duty-cycle thread only reads it.
    public let pid: Int32
    private let lock = Lock()
    private var checkpointPaused = false
    private var level = 0.0
    private var dutyRunning = false
    /// Length of one stop/continue cycle. Short enough to look like a slower CPU to the workload,
    /// long enough that two signals per cycle cost nothing measurable.
    public let period: Double

    public init(pid: Int32, period: Double = 0.02) {
        self.pid = pid
        self.period = period
    }

    /// Stops the process and returns once it is stopped (no more writes can happen).
    public func pause() throws(EndophyteError) {
        lock.withLock { checkpointPaused = true }
        if kill(pid, SIGSTOP) != 0 { throw EndophyteError(.hookFailed(hook: "pause", reason: "SIGSTOP \(pid): errno \(errno)")) }
        let deadline = monotonicSeconds() + 5
        while processState() != UInt8(ascii: "T") {
            if monotonicSeconds() > deadline { throw EndophyteError(.hookFailed(hook: "pause", reason: "process \(pid) did not stop")) }
            usleep(20)
        }
    }

    public func resume() throws(EndophyteError) {
        lock.withLock { checkpointPaused = false }
        if kill(pid, SIGCONT) != 0 { throw EndophyteError(.hookFailed(hook: "resume", reason: "SIGCONT \(pid): errno \(errno)")) }
    }

    /// 0 = run freely … 1 = stopped except for a sliver of each period.
    public func setThrottle(_ newLevel: Double) {
        // The duty-cycle thread runs only while the level is positive; it exits (and drops its
        // reference to self) when the level returns to 0.
        let start = lock.withLock { () -> Bool in
            level = max(0, min(0.95, newLevel))
            if dutyRunning || level == 0 { return false }
            dutyRunning = true
            return true
        }
        if start { startDutyCycle() }
    }

    public var throttleLevel: Double { lock.withLock { level } }

    public var hooks: SourceHooks {
        SourceHooks(pause: { [self] in try pause() }, resume: { [self] in try resume() }, throttle: { [self] in setThrottle($0) })
    }

    /// The state letter from /proc/PID/stat ("R", "S", "T", ...), or 0 if unreadable.
    public func processState() -> UInt8 {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        if fd < 0 { return 0 }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 512)
        // SAFETY: read writes at most buf.count bytes into the array's storage.
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return 0 }
        // The command name may contain spaces and parentheses: the state follows the last ')'.
        guard let close = buf[0..<n].lastIndex(of: UInt8(ascii: ")")), close + 2 < n else { return 0 }
        return buf[close + 2]
    }

    private func startDutyCycle() {
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        // SAFETY: the retained reference is released by the thread when it exits.
        let rc = pthread_create(&t, nil, { arg in
            let me = Unmanaged<ProcessControl>.fromOpaque(arg!).takeRetainedValue()
            me.dutyCycle()
            return nil
        }, box.toOpaque())
        if rc == 0 {
            pthread_detach(t)
        } else {
            lock.withLock { dutyRunning = false }
            box.release()
        }
    }

    private func dutyCycle() {
        while true {
            let (lvl, paused) = lock.withLock { () -> (Double, Bool) in
                if level == 0 { dutyRunning = false }
                return (level, checkpointPaused)
            }
            if lvl == 0 { return }
            let off = period * lvl
            if lvl > 0 && !paused {
                kill(pid, SIGSTOP)
                usleep(UInt32(off * 1e6))
                // A checkpoint may have paused the process meanwhile: it owns the resume then.
                if !lock.withLock({ checkpointPaused }) { kill(pid, SIGCONT) }
            }
            usleep(UInt32(max(0.001, period - off) * 1e6))
        }
    }
}

/// Throttles a cgroup's CPU time: the other throttle hook for processes (and for a VM, whose QEMU
/// runs in its own cgroup under libvirt). Level L leaves (1 − L) of `cpus` CPUs per period.
/// Works with cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`).
public struct CgroupCPUThrottle: Sendable {
    public let directory: String
    public let cpus: Double
    public let periodMicroseconds: Int

    public init(directory: String, cpus: Double, periodMicroseconds: Int = 100_000) {
        self.directory = directory
        self.cpus = cpus
        self.periodMicroseconds = periodMicroseconds
    }

    private var isV2: Bool { access(directory + "/cpu.max", F_OK) == 0 }

    /// The quota in microseconds per period that `level` maps to, or nil for "unlimited".
    public func quota(forLevel level: Double) -> Int? {
        let l = max(0, min(0.99, level))
        if l == 0 { return nil }
        // The kernel refuses quotas under 1 ms.
        return max(1000, Int((1 - l) * cpus * Double(periodMicroseconds)))
    }

    public func apply(level: Double) throws(EndophyteError) {
        let q = quota(forLevel: level)
        if isV2 {
            try write("cpu.max", "\(q.map(String.init) ?? "max") \(periodMicroseconds)")
        } else {
            try write("cpu.cfs_period_us", "\(periodMicroseconds)")
            try write("cpu.cfs_quota_us", "\(q ?? -1)")
        }
    }

    /// The hook form; errors are swallowed because a throttle that cannot be applied must not stop
    /// replication (the status still shows the level the engine asked for).
    public var hook: @Sendable (Double) -> Void { { level in try? self.apply(level: level) } }

    private func write(_ file: String, _ value: String) throws(EndophyteError) {
        let path = directory + "/" + file
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        if fd < 0 { throw EndophyteError(.hookFailed(hook: "throttle", reason: "open \(path): errno \(errno)")) }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        // SAFETY: write reads at most bytes.count bytes from the array's storage.
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if n != bytes.count { throw EndophyteError(.hookFailed(hook: "throttle", reason: "write \(value) to \(path): errno \(errno)")) }
    }
}
