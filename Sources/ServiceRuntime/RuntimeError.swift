#if canImport(Glibc)
import Glibc
#endif

/// Why the process runtime could not do what it was asked, with what to do about it.
public struct RuntimeError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: Equatable, Sendable {
        /// The id is not `[a-z0-9-]`, 1…80 characters, not starting with "-".
        case invalidID
        case emptyCommand
        case invalidArgument(String)
        /// argv[0] was found in none of these PATH directories.
        case commandNotFound(command: String, searched: String)
        case permissionDenied(command: String)
        case execFailed(command: String, errno: Int32)
        /// start of an instance whose process is still running (or being stopped).
        case alreadyRunning
        /// No usable cgroup hierarchy was found; the text says what was looked for.
        case noCgroupSupport(String)
        /// A limit was asked for but the cgroup v2 hierarchy at `root` does not offer the controller.
        case limitUnsupported(controller: String, root: String)
        case cgroup(path: String, operation: String, errno: Int32)
        case stateDirectory(path: String, operation: String, errno: Int32)
        /// fork/clone3 or another setup step of the child failed.
        case spawn(stage: String, errno: Int32)
        /// A podman command failed; `what` says which and what it printed, `hint` what to do.
        case podman(what: String, hint: String)
    }

    /// The instance id, when the error concerns one.
    public let instance: String?
    public let code: Code

    public init(instance: String?, _ code: Code) {
        self.instance = instance
        self.code = code
    }

    public var description: String {
        let who = instance.map { "instance \($0): " } ?? ""
        return who + detail
    }

    private var detail: String {
        switch code {
        case .invalidID:
            return "invalid id: use 1 to \(InstanceSpec.maxIDLength) characters of a-z, 0-9 and \"-\", not starting with \"-\" (e.g. web-0)"
        case .emptyCommand:
            return "the command is empty: give at least the program to run"
        case let .invalidArgument(what):
            return "\(what); fix the service definition"
        case let .commandNotFound(command, searched):
            return "command not found: \(command) (searched PATH \(searched)); install it, give an absolute path, or set PATH in the service's environment"
        case let .permissionDenied(command):
            return "permission denied executing \(command): make it executable (chmod +x) and check that its filesystem is not mounted noexec"
        case let .execFailed(command, e):
            return "cannot execute \(command): \(errnoText(e)); check that it is a program for this machine"
        case .alreadyRunning:
            return "already running: stop it first (the runtime never runs two processes for one id)"
        case let .noCgroupSupport(what):
            return "no usable cgroups: \(what); mount cgroup2 at /sys/fs/cgroup, or the cgroup v1 cpu and memory controllers at /sys/fs/cgroup/cpu and /sys/fs/cgroup/memory"
        case let .limitUnsupported(controller, root):
            return "a \(controller) limit was asked for but the cgroup v2 hierarchy at \(root) has no \(controller) controller; enable it (cgroup.subtree_control) or drop the limit"
        case let .cgroup(path, operation, e):
            var hint = "the agent must run as root with cgroups mounted read-write"
            if e == EBUSY { hint = "the cgroup still holds processes; run cleanupLeftovers or kill them" }
            if e == ENOSPC { hint = "the kernel refused the cgroup (too many cgroups, or a v2 parent with processes in it)" }
            return "cgroup \(path): \(operation) failed: \(errnoText(e)); \(hint)"
        case let .stateDirectory(path, operation, e):
            return "\(path): \(operation) failed: \(errnoText(e)); check that the state directory is writable by the agent and the disk is not full"
        case let .spawn(stage, e):
            let hint = e == EAGAIN ? "too many processes: raise the limits or stop some services" : "see the error"
            return "starting the process failed at \(stage): \(errnoText(e)); \(hint)"
        case let .podman(what, hint):
            return "\(what); \(hint)"
        }
    }
}

func errnoText(_ e: Int32) -> String { "\(String(cString: strerror(e))) (errno \(e))" }
