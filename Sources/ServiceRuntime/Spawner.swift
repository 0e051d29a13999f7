// The Swift side of CSpawn: everything the child needs is allocated here, before the fork.

import CSpawn
import Foundation

struct SpawnedProcess: Sendable {
    let pid: Int32
    /// Owned by the caller: watch it, signal through it, reap through it, then close it.
    let pidfd: Int32
}

enum Spawner {
    static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// The environment the process gets: the spec's, plus the agent's PATH when the spec has none (a
    /// service should not depend on what else the agent's environment holds).
    static func environment(_ env: [String: String]) -> [String: String] {
        var e = env
        if e["PATH"] == nil { e["PATH"] = ProcessInfo.processInfo.environment["PATH"] ?? defaultPath }
        return e
    }

    /// What execve is tried on, in order: execvp's search, done here because the child may not allocate.
    static func candidates(for program: String, path: String) -> [String] {
        if program.contains("/") { return [program] }
        return path.split(separator: ":", omittingEmptySubsequences: false).map { dir in
            dir.isEmpty ? program : String(dir) + "/" + program  // an empty PATH entry means the current directory
        }
    }

    /// Starts `command` in `cwd` with stdout on `output`, stderr on `errorOutput` (default: `output`) and stdin on /dev/null, inside `cgroup`
    /// from before its first instruction. Throws a RuntimeError naming what failed.
    static func spawn(
        instance: String, command: [String], environment env: [String: String], cwd: String,
        cgroup: InstanceCgroup?, output: Int32, errorOutput: Int32? = nil
    ) throws(RuntimeError) -> SpawnedProcess {
        let env = environment(env)
        let searched = env["PATH"] ?? defaultPath
        let cands = candidates(for: command[0], path: searched)

        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        if devNull < 0 { throw RuntimeError(instance: instance, .spawn(stage: "open /dev/null", errno: errno)) }
        defer { close(devNull) }
        var cgroupFd: Int32 = -1
        if let cg = cgroup, cg.isV2 {
            cgroupFd = open(cg.dirs[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if cgroupFd < 0 { throw RuntimeError(instance: instance, .cgroup(path: cg.dirs[0], operation: "open", errno: errno)) }
        }
        defer { if cgroupFd >= 0 { close(cgroupFd) } }

        // SAFETY: strdup'd C strings live until the deferred free, after cspawn_spawn has returned (the
        // child has exec'd or died by then; it only ever reads them).
        let argv = command.map { strdup($0) } + [nil]
        let envp = env.sorted(by: { $0.key < $1.key }).map { strdup("\($0.key)=\($0.value)") } + [nil]
        let candv = cands.map { UnsafePointer(strdup($0)) } + [nil]
        let procs = (cgroup?.procsFiles ?? []).map { UnsafePointer(strdup($0)) } + [nil]
        let cwdC = strdup(cwd)
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
            candv.forEach { free(UnsafeMutablePointer(mutating: $0)) }
            procs.forEach { free(UnsafeMutablePointer(mutating: $0)) }
            free(cwdC)
        }

        var result = cspawn_result()
        let rc: Int32 = argv.withUnsafeBufferPointer { a in
            envp.withUnsafeBufferPointer { e in
                candv.withUnsafeBufferPointer { c in
                    procs.withUnsafeBufferPointer { p in
                        var req = cspawn_request(
                            candidates: c.baseAddress, argv: a.baseAddress, envp: e.baseAddress, cwd: UnsafePointer(cwdC),
                            cgroup_procs: cgroup == nil ? nil : p.baseAddress, cgroup_fd: cgroupFd,
                            stdin_fd: devNull, stdout_fd: output, stderr_fd: errorOutput ?? output)
                        return cspawn_spawn(&req, &result)
                    }
                }
            }
        }
        if rc == 0 { return SpawnedProcess(pid: result.pid, pidfd: result.pidfd) }

        let e = result.error
        switch Int32(result.stage) {
        case Int32(CSPAWN_STAGE_EXEC.rawValue):
            if e == ENOENT || e == ENOTDIR { throw RuntimeError(instance: instance, .commandNotFound(command: command[0], searched: command[0].contains("/") ? "(not searched: the path is explicit)" : searched)) }
            if e == EACCES { throw RuntimeError(instance: instance, .permissionDenied(command: command[0])) }
            throw RuntimeError(instance: instance, .execFailed(command: command[0], errno: e))
        case Int32(CSPAWN_STAGE_CGROUP.rawValue):
            throw RuntimeError(instance: instance, .cgroup(path: cgroup?.dirs.joined(separator: ", ") ?? "?", operation: "join (write pid to cgroup.procs)", errno: e))
        case Int32(CSPAWN_STAGE_CHDIR.rawValue):
            throw RuntimeError(instance: instance, .stateDirectory(path: cwd, operation: "chdir", errno: e))
        case Int32(CSPAWN_STAGE_FORK.rawValue):
            throw RuntimeError(instance: instance, .spawn(stage: cgroupFd >= 0 ? "clone3 into the cgroup" : "fork", errno: e))
        default:
            let names = [1: "pipe", 3: "pidfd_open", 4: "setsid", 7: "stdio setup"]
            throw RuntimeError(instance: instance, .spawn(stage: names[Int(result.stage)] ?? "stage \(result.stage)", errno: e))
        }
    }
}
