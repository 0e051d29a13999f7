// The fencing watchdog: a small process per node that outlives the agent (like Proxmox's watchdog-mux,
// in seconds and without hardware). The agent's driver writes, for every guest it runs as primary,
// the monotonic instant until which its ownership lease allows it to run (each `keepAlive`); the
// watchdog pauses any running Mycelium primary domain whose instant has passed or that it has no
// instant for. While the agent lives, the driver fences first (same deadline, minus nothing); when the
// agent dies alone (its libvirtd and QEMU live on) the watchdog is what keeps a second copy from
// running beside the one the network fails over to.
//
// Files (in the driver's state directory): `deadlines` (NAME MONOTONIC-MS per line, written
// atomically), `watchdog.pid` (the current watchdog; an older one that sees another pid there leaves).

import Foundation
import Libvirt
import VMHost

public enum VMWatchdog {
    public static func deadlinesPath(_ dir: String) -> String { dir + "/deadlines" }
    public static func pidPath(_ dir: String) -> String { dir + "/watchdog.pid" }

    /// Milliseconds on CLOCK_MONOTONIC: the same clock for every process of the host.
    public static func monotonicMilliseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
    }

    /// Writes the deadlines atomically (a reader sees the old file or the new one).
    public static func write(_ deadlines: [String: UInt64], to dir: String) throws {
        let text = deadlines.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)\n" }.joined()
        let tmp = deadlinesPath(dir) + ".tmp"
        try text.write(toFile: tmp, atomically: false, encoding: .utf8)
        guard rename(tmp, deadlinesPath(dir)) == 0 else {
            throw VMDriverError("cannot write \(deadlinesPath(dir)): \(String(cString: strerror(errno)))")
        }
    }

    /// What `write` wrote; malformed lines are ignored (their domains then have no deadline: paused).
    public static func read(_ dir: String) -> [String: UInt64] {
        guard let text = try? String(contentsOfFile: deadlinesPath(dir), encoding: .utf8) else { return [:] }
        var out: [String: UInt64] = [:]
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count == 2, let ms = UInt64(f[1]) { out[String(f[0])] = ms }
        }
        return out
    }

    /// Runs the watchdog until the agent `agentPID` is gone and no Mycelium primary runs here any more,
    /// or a newer watchdog took over. Returns the exit status.
    public static func run(stateDirectory dir: String, libvirtURI: String, qemuRunDirectory: String, agentPID: Int32,
                           say: (String) -> Void) -> Int32 {
        let me = getpid()
        try? "\(me)\n".write(toFile: pidPath(dir), atomically: true, encoding: .utf8)
        var host: VMHost?
        var lastProblem = ""
        while true {
            if let owner = try? String(contentsOfFile: pidPath(dir), encoding: .utf8), Int32(owner.trimmingCharacters(in: .whitespacesAndNewlines)) != me {
                return 0
            }
            let agentAlive = kill(agentPID, 0) == 0 || errno == EPERM
            var running = 0
            do {
                if host == nil { host = try VMHost(uri: libvirtURI, qemuRunDirectory: qemuRunDirectory) }
                let deadlines = read(dir), now = monotonicMilliseconds()
                for (name, meta) in try host!.managedDomains() where meta.role == .primary {
                    let d = try host!.domain(named: name)
                    guard try d.state() == .running else { continue }
                    if let until = deadlines[name], until > now {
                        running += 1
                        continue
                    }
                    try d.pauseThroughLibvirt()  // the agent may hold the direct monitor
                    say("watchdog: paused VM \(name): " + (deadlines[name] == nil ? "its agent gave it no lease deadline"
                                                           : "its ownership lease lapsed \(now - deadlines[name]!) ms ago and its agent did not renew it")
                        + (agentAlive ? "" : " (the agent is gone)"))
                }
                lastProblem = ""
            } catch {
                // libvirt gone too (the host is going down) or a domain vanished meanwhile: try again.
                let text = "\(error)"
                if text != lastProblem { say("watchdog: \(text)") }
                lastProblem = text
                host = nil
                if !agentAlive && kill(agentPID, 0) != 0 && text.contains("connect") { return 0 }
            }
            if !agentAlive && running == 0 && lastProblem.isEmpty { return 0 }
            usleep(50_000)
        }
    }
}
