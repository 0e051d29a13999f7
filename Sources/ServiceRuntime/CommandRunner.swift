// Runs a short command to its end (podman's, `ip`'s), blocking: call it off the cooperative pool.
// The output goes to unlinked temporary files, never pipes: `podman run -d` leaves conmon holding
// podman's stdout for the container's whole life, and a pipe would never end.

import CSpawn
import Foundation

/// How a command ran (see `CommandRunner.run`).
public struct CommandResult: Sendable {
    /// The exit status; 128+N when signal N ended it.
    public var status: Int32
    /// It did not end within the time given and was killed (with its process group).
    public var timedOut: Bool
    /// Non-zero (an errno) when its exit status was lost: another part of the agent reaped it.
    public var waitError: Int32
    /// What it wrote on stdout (at most 1 MiB; with `mergeErrors`, its stderr too, interleaved).
    public var stdout: String
    /// What it wrote on stderr (empty with `mergeErrors`).
    public var stderr: String
}

public enum CommandRunner {
    /// Runs `command` (searched on PATH) with `environment`, in "/", stdin on /dev/null, killed
    /// with its process group after `timeoutMillis`. Throws a RuntimeError (named for `instance`)
    /// when it cannot be started.
    public static func run(_ command: [String], environment: [String: String], timeoutMillis: Int32,
                           mergeErrors: Bool = false, instance: String) throws(RuntimeError) -> CommandResult {
        func temp() throws(RuntimeError) -> Int32 {
            var template = Array("/tmp/mycelium-cmd-XXXXXX".utf8CString)
            let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
            if fd < 0 { throw RuntimeError(instance: instance, .spawn(stage: "temporary file for \(command[0])'s output", errno: errno)) }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
            return fd
        }
        let out = try temp()
        defer { close(out) }
        let err = try mergeErrors ? out : temp()
        defer { if err != out { close(err) } }
        let p = try Spawner.spawn(instance: instance, command: command, environment: environment,
                                  cwd: "/", cgroup: nil, output: out, errorOutput: err)
        defer { close(p.pidfd) }
        var timedOut = false
        if cspawn_pidfd_wait(p.pidfd, timeoutMillis) == ETIMEDOUT {
            timedOut = true
            _ = kill(-p.pid, SIGKILL)
            _ = cspawn_pidfd_kill(p.pidfd, SIGKILL)
        }
        var killed: Int32 = 0, code: Int32 = 0
        let rc = cspawn_reap(p.pidfd, 0, &killed, &code)
        func read(_ fd: Int32) -> String {
            var bytes: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 16384)
            var off: off_t = 0
            while bytes.count < 1 << 20 {
                let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                bytes += buf[0..<n]
                off += off_t(n)
            }
            return String(decoding: bytes, as: UTF8.self)
        }
        return CommandResult(status: killed != 0 ? 128 + code : code, timedOut: timedOut, waitError: rc,
                             stdout: read(out), stderr: mergeErrors ? "" : read(err))
    }
}
