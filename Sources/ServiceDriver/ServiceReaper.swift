// The service reaper: a small process per agent, started by it, that waits for the agent to die and
// then kills every instance the agent ran (their cgroups) and removes its podman containers (with
// their network attachments: `podman rm -f` on the agent's private podman). Instances never outlive their agent: an
// agent that crashed, was SIGKILLed or lost its host's power leaves nothing running that the network
// would start a second copy of elsewhere, and a restarted agent starts from what the table assigns.
// (A graceful stop stops the instances itself; the VM side has its fencing watchdog for the same
// reason, VMDriver/Watchdog.swift.)
//
// It waits on a pidfd of the agent (no polling), in a session of its own so a signal to the agent's
// process group does not reach it. A restarted agent kills its predecessor's reaper first (its pid is
// in `reaper.pid`), so an old reaper can never kill a new agent's instances.

import CSpawn
import Foundation
import ServiceRuntime

public enum ServiceReaper {
    public static func pidPath(_ dir: String) -> String { dir + "/reaper.pid" }

    /// Runs until `agentPID` exits, then kills what it left in `dir`'s cgroups. Returns the exit code.
    public static func run(stateDirectory dir: String, agentPID: Int32, log: (String) -> Void) -> Int32 {
        // Resolved now, while the agent keeps the directory: after its death the directory may be
        // gone (a test removing its homes), and the reaper must neither need it nor recreate it.
        let leftovers: ProcessRuntime.Leftovers
        do { leftovers = try ProcessRuntime.leftovers(of: dir) } catch {
            log("service reaper: cannot watch \(dir): \(error)")
            return 1
        }
        // The agent's podman (if it runs one): its settings, read now; its containers removed after.
        let containers = PodmanRuntime.leftovers(of: dir + "/podman-instances")
        let fd = cspawn_pidfd_open(agentPID)
        if fd >= 0 {
            _ = cspawn_pidfd_wait(fd, -1)
            close(fd)
        } else {
            // No pidfd (a kernel before 5.3, or the agent already gone): ask every 200 ms.
            while kill(agentPID, 0) == 0 || errno == EPERM { usleep(200_000) }
        }
        leftovers.kill()
        if let containers {
            let removed = containers.remove()
            if !removed.isEmpty { log("service reaper: removed the containers of the dead agent: \(removed.joined(separator: ", "))") }
        }
        return 0
    }

    /// Kills the reaper an earlier agent of `dir` started, if it still runs (only a process that is
    /// one: its command line says so).
    public static func stopPredecessor(_ dir: String) {
        guard let text = try? String(contentsOfFile: pidPath(dir), encoding: .utf8),
              let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0,
              let cmd = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"),
              String(decoding: cmd, as: UTF8.self).contains("--service-reaper") else { return }
        kill(pid, SIGKILL)
        // Its death is what matters; wait for it (it is not our child: poll its /proc entry).
        for _ in 0..<500 where FileManager.default.fileExists(atPath: "/proc/\(pid)") { usleep(2000) }
    }
}
