// What the controller asks for (InstanceSpec, HealthCheck) and what the runtime reports back
// (InstanceStatus). Plain values: the controller's pure core can build and compare them.

/// One instance of a service to run as a process.
public struct InstanceSpec: Sendable, Equatable {
    /// `service-slot`, e.g. "web-0": `[a-z0-9-]`, 1…80 characters. Names the working directory and cgroup.
    public var id: String
    /// argv; argv[0] is looked up on PATH (the spec's, else the agent's) unless it contains a "/".
    public var command: [String]
    /// The whole environment of the process, plus PATH (the agent's) when the spec has none.
    public var environment: [String: String]
    /// CPU limit in thousandths of a CPU (1000 = one CPU); 0 = no limit.
    public var cpuMillis: UInt32
    /// Memory limit in MiB; 0 = no limit. Exceeding it gets the process killed by the kernel (SIGKILL).
    public var memoryMiB: UInt32
    /// nil: healthy while running.
    public var health: HealthCheck?
    /// Host directory → path inside a container (`podman -v HOST:PATH`; a process, which runs in the
    /// node's mount namespace, is told the host path in its environment instead).
    public var binds: [String: String] = [:]

    public init(
        id: String, command: [String], environment: [String: String] = [:], cpuMillis: UInt32 = 0,
        memoryMiB: UInt32 = 0, health: HealthCheck? = nil
    ) {
        self.id = id
        self.command = command
        self.environment = environment
        self.cpuMillis = cpuMillis
        self.memoryMiB = memoryMiB
        self.health = health
    }

    public static let maxIDLength = 80

    /// Throws when the spec cannot be run whatever the machine: a bad id, an empty command, bad names.
    public func validate() throws(RuntimeError) {
        if !InstanceSpec.isValidID(id) { throw RuntimeError(instance: id, .invalidID) }
        if command.isEmpty || command[0].isEmpty { throw RuntimeError(instance: id, .emptyCommand) }
        if command.contains(where: { $0.utf8.contains(0) }) || environment.contains(where: { $0.key.utf8.contains(0) || $0.value.utf8.contains(0) }) {
            throw RuntimeError(instance: id, .invalidArgument("a command argument or environment entry contains a NUL byte"))
        }
        if let bad = environment.keys.first(where: { $0.isEmpty || $0.contains("=") }) {
            throw RuntimeError(instance: id, .invalidArgument("environment name \"\(bad)\" is empty or contains \"=\""))
        }
        if let h = health {
            if h.intervalMillis == 0 || h.timeoutMillis == 0 {
                throw RuntimeError(instance: id, .invalidArgument("health check interval and timeout must be above 0 ms"))
            }
            if case let .exec(cmd, _, _, _) = h, cmd.isEmpty || cmd[0].isEmpty {
                throw RuntimeError(instance: id, .invalidArgument("the exec health check has an empty command"))
            }
            if case let .http(_, path, _, _, _) = h, !path.hasPrefix("/") || path.contains(where: { $0 == "\r" || $0 == "\n" || $0 == " " }) {
                throw RuntimeError(instance: id, .invalidArgument("the http health check path \"\(path)\" must start with \"/\" and hold no spaces or line breaks"))
            }
        }
    }

    public static func isValidID(_ id: String) -> Bool {
        let u = Array(id.utf8)
        guard !u.isEmpty, u.count <= maxIDLength else { return false }
        // "." and ".." are impossible by the alphabet; a leading "-" would read as an option to tools.
        guard u[0] != UInt8(ascii: "-") else { return false }
        return u.allSatisfy { (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == UInt8(ascii: "-") }
    }
}

public enum HealthCheck: Sendable, Equatable {
    /// Healthy when a TCP connection to 127.0.0.1:port opens within the timeout.
    case tcp(port: UInt16, intervalMillis: UInt32, timeoutMillis: UInt32, threshold: UInt32)
    /// Healthy when `GET path` on 127.0.0.1:port answers 2xx or 3xx within the timeout.
    case http(port: UInt16, path: String, intervalMillis: UInt32, timeoutMillis: UInt32, threshold: UInt32)
    /// Healthy when the command, run in the instance's cgroup and working directory, exits 0 within the
    /// timeout (it is killed at the timeout).
    case exec(command: [String], intervalMillis: UInt32, timeoutMillis: UInt32, threshold: UInt32)

    public var intervalMillis: UInt32 {
        switch self {
        case let .tcp(_, i, _, _), let .http(_, _, i, _, _), let .exec(_, i, _, _): return i
        }
    }

    public var timeoutMillis: UInt32 {
        switch self {
        case let .tcp(_, _, t, _), let .http(_, _, _, t, _), let .exec(_, _, t, _): return t
        }
    }

    /// Consecutive failures that make the instance unhealthy (0 counts as 1).
    public var threshold: UInt32 {
        switch self {
        case let .tcp(_, _, _, n), let .http(_, _, _, _, n), let .exec(_, _, _, n): return n
        }
    }
}

public enum InstanceState: Sendable, Equatable {
    /// Being set up: directory, cgroup, fork and exec.
    case starting
    case running(pid: Int32)
    /// The main process exited with this status (the rest of its cgroup has been killed).
    case exited(code: Int32)
    /// The main process died of this signal (9 also when the kernel's OOM killer enforced the memory limit).
    case killed(signal: Int32)
    /// It could not be started; the text says why.
    case failed(String)

    public var isRunning: Bool {
        if case .running = self { return true }
        return false
    }
}

public enum Health: Sendable, Equatable {
    /// Not checked yet, or not running.
    case unknown
    case healthy
    case unhealthy(String)
}

public struct InstanceStatus: Sendable, Equatable {
    public var id: String
    public var state: InstanceState
    public var health: Health
    /// CLOCK_MONOTONIC milliseconds of the last successful start (0 before the first).
    public var startedAtMillis: UInt64
    /// How many times a started process of this instance has ended.
    public var exits: Int
    /// Where it answers when it has an address of its own (a container's IPv4 on the pod network);
    /// "" for a process, which answers on its node's address.
    public var address: String

    public init(id: String, state: InstanceState, health: Health, startedAtMillis: UInt64, exits: Int, address: String = "") {
        self.id = id
        self.state = state
        self.health = health
        self.startedAtMillis = startedAtMillis
        self.exits = exits
        self.address = address
    }
}
