// Hosting the VM controller (issue 16): the pure VMController decides, the EndophyteDriver (libvirt
// through VMHost, RAM through Endophyte) carries it out. A node whose libvirt does not answer still
// hosts the controller (its leader duties — failover, replica placement — run wherever the leader
// is) with a driver that refuses to run anything; placement never sends it a VM.

import Foundation
import Logging
import Metrics
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumSpores
import NIOConcurrencyHelpers
import VMController
import VMDriver

/// Where each member takes replication connections, readable off the actor (the driver's threads
/// ask); refreshed from the spore whenever it changes.
final class ReplicationPeerBook: Sendable {
    private let peers = NIOLockedValueBox<[MyceliumIdentity.NodeID: ReplicationPeer]>([:])

    func lookup(_ n: MyceliumIdentity.NodeID) -> ReplicationPeer? { peers.withLockedValue { $0[n] } }

    func update(from spore: PrimarySpore, port: Int) {
        var next: [MyceliumIdentity.NodeID: ReplicationPeer] = [:]
        for m in spore.members.values {
            guard let a = m.addresses.first, let hp = splitAddress(a) else { continue }
            next[m.id] = ReplicationPeer(host: hp.host, port: UInt16(port), key: m.key)
        }
        peers.withLockedValue { $0 = next }
    }
}

/// What the VM driver's threads report (started, protected, took over, fenced, destroyed), kept
/// until the agent's next tick moves it into its events (`mycelium status`).
final class VMEventInbox: Sendable {
    private let lines = NIOLockedValueBox<[(VMTransition, String)]>([])
    func post(_ kind: VMTransition, _ s: String) { lines.withLockedValue { $0.append((kind, s)); if $0.count > 100 { $0.removeFirst($0.count - 100) } } }
    func drain() -> [(VMTransition, String)] { lines.withLockedValue { l in defer { l = [] }; return l } }
}

/// `mycelium_vm_transitions_total{kind="..."}`: one counter per kind of transition.
struct VMInstruments {
    let transitions: [VMTransition: Counter] = Dictionary(uniqueKeysWithValues: VMTransition.allCases.filter { $0 != .notice }.map {
        ($0, Counter(label: "mycelium_vm_transitions_total", dimensions: [("kind", $0.rawValue)]))
    })
}

/// The driver of a node without libvirt: it is never given a VM, and says so if it is.
struct NoVMDriver: ControllerDriver {
    typealias Report = VMDriverReport
    let reason: String
    func perform(_ action: VMAction) async throws {
        switch action {
        case .destroy, .keepAlive: return
        default: break
        }
        throw VMDriverError("this node cannot run VMs: \(reason)")
    }
}

extension Agent {
    /// Starts the fencing watchdog (VMDriver/Watchdog.swift): this executable again, in a session of
    /// its own so it outlives the agent, told the agent's pid. An older watchdog leaves when it sees
    /// the new one's pid in the state directory.
    static func startWatchdog(_ s: EndophyteDriverSettings, logger: Logger) {
        // Only myceliumd knows --vm-watchdog (an agent hosted by another program, a test for one,
        // must not start a copy of that program).
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        guard URL(fileURLWithPath: exe).lastPathComponent == "myceliumd" else {
            logger.warning("no fencing watchdog: this agent does not run as myceliumd", metadata: ["executable": "\(exe)"])
            return
        }
        let argv = ["/proc/self/exe", "--vm-watchdog", s.stateDirectory, "--libvirt-uri", s.libvirtURI,
                    "--qemu-run-dir", s.qemuRunDirectory, "--agent-pid", "\(getpid())"]
        switch spawnDetached(argv) {
        case .success(let pid):
            logger.info("fencing watchdog started", metadata: ["pid": "\(pid)"])
        case .failure(let e):
            logger.error("the fencing watchdog did not start: a guest here is then fenced only while this agent lives",
                         metadata: ["error": "\(e.description)"])
        }
    }

    /// Starts `argv` (this executable, in another mode) in a session of its own with nothing of the
    /// agent's but stdin/out/err: an inherited descriptor (a socket, the pipe a supervisor watches to
    /// see the agent exit) would outlive the agent in the helper.
    static func spawnDetached(_ argv: [String]) -> Result<pid_t, AgentError> {
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        posix_spawnattr_setflags(&attr, Int16(0x80))  // POSIX_SPAWN_SETSID
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // glibc ≥ 2.34 has it, but Swift's Glibc module does not declare it (it is a GNU extension).
        typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        guard let sym = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else {
            return .failure(AgentError("this libc lacks posix_spawn_file_actions_addclosefrom_np (glibc 2.34+)"))
        }
        _ = unsafeBitCast(sym, to: CloseFrom.self)(&actions, 3)
        let cargs = argv.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, "/proc/self/exe", &actions, &attr, cargs, environ)
        return rc == 0 ? .success(pid) : .failure(AgentError(String(cString: strerror(rc))))
    }

    /// Moves what the VM driver reported into the events, and counts the transitions.
    func drainVMEvents() {
        for (kind, line) in vmEvents.drain() {
            note(line, log: false)  // logged when the driver reported it
            vmInstruments.transitions[kind]?.increment()
        }
    }

    /// Connects to libvirt and opens the replication listener: the node then offers VMs. Nil (with
    /// the reason logged) when libvirt does not answer or the listener cannot bind.
    static func makeVMDriver(_ config: AgentConfig, key: SigningKey, network: NetworkID, peers: ReplicationPeerBook,
                             volumes: VolumeBook, inbox: VMEventInbox, logger: Logger) -> (EndophyteDriver?, String) {
        guard !config.libvirtURI.isEmpty else {
            logger.info("libvirt_uri is empty: this node runs no VMs")
            return (nil, "libvirt_uri is empty")
        }
        let host = splitAddress(config.listen)?.host ?? "127.0.0.1"
        let settings = EndophyteDriverSettings(
            libvirtURI: config.libvirtURI, qemuRunDirectory: config.libvirtQEMURunDir, stateDirectory: config.home + "/vms",
            shimLibrary: config.dirtyPageShim.isEmpty ? nil : config.dirtyPageShim,
            listenHost: host, listenPort: UInt16(config.vmReplicationPort), outputCommit: config.vmOutputCommit,
            diskSource: { volumes.source($0) })
        do {
            let d = try EndophyteDriver(settings: settings, identity: key, network: network, peer: { peers.lookup($0) },
                                        report: { kind, line in
                                            var fields = JSONLogLine.subjects(in: line).mapValues { Logger.MetadataValue.string($0) }
                                            fields["transition"] = .string("\(kind)")
                                            logger.notice("\(line)", metadata: fields)
                                            inbox.post(kind, line)
                                        })
            logger.info("libvirt answers: this node offers endophyte VMs",
                        metadata: ["uri": "\(config.libvirtURI)", "replication": "\(host):\(d.port)"])
            startWatchdog(settings, logger: logger)
            return (d, "")
        } catch {
            logger.notice("this node runs no VMs (start libvirtd, or set libvirt_uri = \"\" to say so)",
                          metadata: ["uri": "\(config.libvirtURI)", "error": "\(error)"])
            return (nil, "\(error)")
        }
    }
}
