import Foundation
import MyceliumCore

/// Loopback ports and child processes of one benchmark run, so that runs back to back never share a
/// port and a run stopped by Ctrl-C or `timeout` leaves no agent, etcd or directory behind.
enum BenchHygiene {
    /// Benchmarks take ports from 30000–32767: below the kernel's ephemeral range (32768+, see
    /// /proc/sys/net/ipv4/ip_local_port_range), so no outgoing connection's local port can take
    /// one, and apart from the test clusters (20000–29999) and scripts/demo (10000–19999).
    static let firstPort = 30_000, lastPort = 32_767

    nonisolated(unsafe) private static var taken: [Range<Int>] = []
    nonisolated(unsafe) private static var children: [ObjectIdentifier: Process] = [:]
    nonisolated(unsafe) private static var dirs: Set<String> = []
    nonisolated(unsafe) private static var signalSources: [DispatchSourceSignal] = []
    nonisolated(unsafe) private static var cleanups: [ObjectIdentifier: @Sendable () -> Void] = [:]
    private static let lock = NSLock()

    /// `count` consecutive ports, each free now and not handed out before in this run.
    static func ports(_ count: Int) throws -> Int {
        for _ in 0..<500 {
            let base = Int.random(in: firstPort...(lastPort - count))
            let range = base..<base + count
            let clash = lock.withLock { taken.contains { $0.overlaps(range) } }
            if !clash && range.allSatisfy(isFree) {
                lock.withLock { taken.append(range) }
                return base
            }
        }
        throw BenchError("no \(count) free loopback ports in \(firstPort)-\(lastPort); are old myceliumd or etcd processes running? (pgrep -a myceliumd)")
    }

    static func isFree(_ port: Int) -> Bool { LoopbackPort.isFree(port) }

    /// The environment of a spawned `myceliumd`: it stops when this benchmark dies, however it dies.
    static var agentEnvironment: [String: String] {
        ProcessInfo.processInfo.environment.merging(["MYCELIUM_EXIT_WITH_PARENT": "1"]) { $1 }
    }

    /// Runs `p` and remembers it until `forget`, so an interrupted run can kill it.
    static func run(_ p: Process) throws {
        installSignalHandlers()
        try p.run()
        lock.withLock { children[ObjectIdentifier(p)] = p }
    }

    static func forget(_ p: Process) { _ = lock.withLock { children.removeValue(forKey: ObjectIdentifier(p)) } }

    static func ownDirectory(_ path: String) {
        installSignalHandlers()
        _ = lock.withLock { dirs.insert(path) }
    }

    static func disownDirectory(_ path: String) { _ = lock.withLock { dirs.remove(path) } }

    /// `cleanup` runs if a signal ends the run before `forgetCleanup(owner)` (after the children are
    /// killed, before the directories go): e.g. tearing down VM hosts, which no child kill removes.
    static func atSignal(_ owner: AnyObject, _ cleanup: @escaping @Sendable () -> Void) {
        installSignalHandlers()
        lock.withLock { cleanups[ObjectIdentifier(owner)] = cleanup }
    }

    static func forgetCleanup(_ owner: AnyObject) { _ = lock.withLock { cleanups.removeValue(forKey: ObjectIdentifier(owner)) } }

    /// SIGINT/SIGTERM (Ctrl-C, `timeout`): SIGKILL every child, remove every directory, then die of
    /// the signal. `defer` blocks do not run when a signal ends the process; this does.
    private static func installSignalHandlers() {
        lock.withLock {
            guard signalSources.isEmpty else { return }
            for sig in [SIGINT, SIGTERM] {
                // Ignored so that the dispatch source, not the default action, sees the signal.
                signal(sig, SIG_IGN)
                let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                s.setEventHandler {
                    let (procs, paths, hooks) = lock.withLock { (Array(children.values), Array(dirs), Array(cleanups.values)) }
                    for p in procs where p.isRunning { kill(p.processIdentifier, SIGKILL) }
                    for p in procs { p.waitUntilExit() }
                    for h in hooks { h() }
                    for d in paths { try? FileManager.default.removeItem(atPath: d) }
                    FileHandle.standardError.write(Data("mycelium-bench: stopped by signal \(sig); killed \(procs.count) children, removed \(paths.count) directories\n".utf8))
                    signal(sig, SIG_DFL)
                    kill(getpid(), sig)
                }
                s.resume()
                signalSources.append(s)
            }
        }
    }
}
