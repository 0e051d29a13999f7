import Foundation
import Libvirt
import MyceliumAPI
@testable import MyceliumAgent
import VMTestSupport
import XCTest

/// Endophyte VMs end to end with real parts: three hosts, each a network namespace with its own
/// libvirtd (scripts/vmhost) and its own myceliumd; the guest is the real TCG guest
/// (scripts/vm-guest) whose init counts in RAM on its serial port. Needs root and QEMU.
final class VMFailoverProcessTests: XCTestCase {
    let hostOf = ["n1": "a", "n2": "b", "n3": "c"]
    let addressOf = ["a": "10.231.0.1", "b": "10.231.0.2", "c": "10.231.0.3"]

    func agents(on hosts: TestHosts) throws -> AgentCluster {
        let c = try AgentCluster()
        c.netns = { [hostOf] n in hosts.name(hostOf[n]!) }
        c.listenHost = { [hostOf, addressOf] n in addressOf[hostOf[n]!]! }
        // Guest RAM tracked by uffd through the preload shim, as a deployment would run it.
        let shim = try buildShim(into: hosts.scratch)
        c.extraConfig = { [hostOf] n in
            let h = hostOf[n]!
            return "libvirt_uri = \"\(hosts.uri(h))\"\nlibvirt_qemu_run_dir = \"\(hosts.qemuRunDirectory(h))\"\ndirty_page_shim = \"\(shim)\"\n"
        }
        return c
    }

    /// Runs `body` with three VM hosts (a, b, c: namespaces with their own libvirtd) and an agent
    /// cluster on them; afterwards the agents stop first, then the hosts go, also on failure.
    func onThreeHosts(_ body: (TestHosts, AgentCluster) async throws -> Void) async throws {
        try requireRootAndQEMU()
        let hosts = try TestHosts(["a", "b", "c"])
        defer { hosts.down() }
        let c = try agents(on: hosts)
        defer { c.shutdown() }  // runs before hosts.down(): agents first, then their hosts
        try await body(hosts, c)
    }

    func vms(_ c: AgentCluster, _ n: String) async -> [VMInfo] {
        (try? await AgentClient(socket: c.home(n) + "/agent.sock").vms().vms) ?? []
    }

    /// Create → protected; the primary's whole host dies (agent, libvirtd, QEMU at once) → the
    /// network records it failed, moves ownership to the replica (epoch 2), and the guest carries on
    /// there from the last committed epoch: same boot, its counter continuing, never restarting.
    /// The three agents formed, each offering VMs, and VM `web` (`mib` MiB) created on n1 with its
    /// replica on n2. Returns the node IDs.
    func createdVM(_ c: AgentCluster, mib: Int = 128) async throws -> [String: String] {
        let guest = try Guest.files.get()
        let names = ["n1", "n2", "n3"]
        try c.createNetwork()
        for n in names.dropFirst() { try c.join(n) }
        try await c.waitUntil("3 nodes formed", nodes: names, AgentCluster.formed(3))
        try await c.waitUntil("every node offers VMs", nodes: names) { vs in vs.allSatisfy { $0.members.allSatisfy { $0.features == "libvirt" } } }
        let ids = Dictionary(uniqueKeysWithValues: await asyncMap(names) { ($0, await c.status($0)!.node) })
        let (code, out) = try c.cli(["vm", "create", "web", "--memory", "\(mib)M", "--kernel", guest.kernel, "--initrd", guest.initrd,
                                     "--cmdline", Guest.cmdline, "--on", ids["n1"]!, "--replica", ids["n2"]!, "--home", c.home("n1")])
        XCTAssertEqual(code, 0, out)
        return ids
    }

    /// `createdVM`, then counting, protected, and n2 holding a committed image.
    func protectedVM(_ c: AgentCluster) async throws -> [String: String] {
        let ids = try await createdVM(c)
        let serialA = c.home("n1") + "/vms/web.serial"
        try await MyceliumAgentTests.waitUntil("the guest counts on n1", timeout: 60) { SerialLog(path: serialA).counts.count >= 3 }
        try await MyceliumAgentTests.waitUntil("web protected", timeout: 60) {
            await self.vms(c, "n1").first?.here?.contains("protected") == true
        }
        // Output commit is on by default: once protected, the guest's packets are held per epoch.
        try await MyceliumAgentTests.waitUntil("n1 holds its guest's output until commits", timeout: 30) {
            await self.vms(c, "n1").first?.here?.contains("output commit: on (") == true
        }
        let here = await vms(c, "n1").first?.here ?? ""
        XCTAssertTrue(here.contains("uffd"), "guest RAM tracked through the shim: \(here)")
        try await MyceliumAgentTests.waitUntil("n2 holds a committed image", timeout: 30) {
            let here = await self.vms(c, "n2").first?.here ?? ""
            return here.hasPrefix("replica: image at replication epoch") && here != "replica: image at replication epoch 0"
        }
        return ids
    }

    func testAVMKeepsRunningWhenItsHostDies() async throws {
        try await onThreeHosts { hosts, c in
            let ids = try await protectedVM(c)
            let serialA = c.home("n1") + "/vms/web.serial", serialB = c.home("n2") + "/vms/web.serial"
            let tag = try XCTUnwrap(SerialLog(path: serialA).last?.tag)

            // Host a dies. Whatever its guest printed last is the newest state anyone saw.
            try hosts.kill("a")
            let lastOnA = try XCTUnwrap(SerialLog(path: serialA).last)
            XCTAssertEqual(lastOnA.tag, tag)

            try await MyceliumAgentTests.waitUntil("the record moves web to n2 at epoch 2", timeout: 90) {
                let v = await self.vms(c, "n2").first
                return v?.primary == ids["n2"] && v?.epoch == 2
            }
            try await MyceliumAgentTests.waitUntil("the guest counts on n2", timeout: 60) {
                SerialLog(path: serialB).counts.count >= 3
            }
            let onB = SerialLog(path: serialB)
            XCTAssertEqual(onB.bootTags, [], "the guest on n2 did not boot: it continued (\(onB.otherLines.suffix(5)))")
            XCTAssertTrue(onB.counts.allSatisfy { $0.tag == tag }, "the same boot, never another: \(onB.counts.prefix(5))")
            let first = try XCTUnwrap(onB.counts.first).n
            // At most what host a printed (+1: one line may have been cut off by the kill), and not from
            // further back than a few epochs (100 ms each; the counter prints about every 100 ms).
            XCTAssertLessThanOrEqual(first, lastOnA.n + 1, "continued from a state host a never reached")
            XCTAssertGreaterThanOrEqual(first, lastOnA.n - 10, "continued from too far back (last on a: \(lastOnA.n))")
            XCTAssertTrue(zip(onB.counts, onB.counts.dropFirst()).allSatisfy { $1.n == $0.n + 1 }, "counting on, in order")
            print("VM-FAILOVER last-on-a=\(lastOnA.n) first-on-b=\(first) tag=\(tag)")
            // The transition is an event in n2's status and a metric on its /metrics.
            try await MyceliumAgentTests.waitUntil("n2 reports the takeover", timeout: 10) {
                let (_, body) = try await AgentClient(socket: c.home("n2") + "/agent.sock").request(method: "GET", path: "/metrics")
                let events = await c.status("n2")?.events ?? []
                return String(decoding: body, as: UTF8.self).contains("mycelium_vm_transitions_total{kind=\"took_over\"} 1")
                    && events.contains { $0.contains("VM web: took over at ownership epoch 2") }
            }

            // Protected again without an operator: n3 becomes the replica and receives a full image.
            try await MyceliumAgentTests.waitUntil("a new replica", timeout: 60) {
                let v = await self.vms(c, "n2").first
                return v?.replica == ids["n3"] && v?.here?.contains("protected") == true
            }
            // The guest that took over is behind output commit too (the gate is attached after the resume).
            try await MyceliumAgentTests.waitUntil("n2 holds its guest's output until commits", timeout: 30) {
                await self.vms(c, "n2").first?.here?.contains("output commit: on (") == true
            }
        }
    }

    /// A primary that is merely cut off (its link down; its agent, libvirtd and QEMU run on) pauses its
    /// guest when it can no longer renew its lease, before the replica may start; after healing,
    /// exactly one copy runs and the stale one never resumes. Both hosts' libvirt are polled all along:
    /// never are both domains running.
    func testACutOffPrimaryFencesItselfAndExactlyOneCopyRunsAfterHealing() async throws {
        try await onThreeHosts { hosts, c in
            let ids = try await protectedVM(c)
            try await ownershipMovesSafely(c, hosts, ids, what: "VM-FENCE") { try hosts.cut("a") }
        }
    }

    /// Only the primary's agent dies (SIGKILL); its libvirtd and QEMU live on, and nothing of the
    /// agent is left to fence the guest: its watchdog pauses it when the lease runs out, before the
    /// replica may start; both hosts' libvirt are polled all along: never both running.
    func testWhenOnlyThePrimarysAgentDiesItsWatchdogFencesTheGuest() async throws {
        try await onThreeHosts { hosts, c in
            let ids = try await protectedVM(c)
            try await ownershipMovesSafely(c, hosts, ids, what: "VM-WATCHDOG", healAfter: false) { c.kill9("n1") }
        }
    }

    /// Does `fault` to host a (n1, the primary of web) and checks, polling both hosts' libvirt every
    /// 20 ms, that the guest moves to n2 (epoch 2) without ever running on both, and that afterwards
    /// (after `heal`, when given) it runs on n2 and never again on n1.
    func ownershipMovesSafely(_ c: AgentCluster, _ hosts: TestHosts, _ ids: [String: String], what: String, healAfter: Bool = true,
                              fault: () throws -> Void) async throws {
        let la = try LibvirtConnection(uri: hosts.uri("a")), lb = try LibvirtConnection(uri: hosts.uri("b"))
        func running(_ l: LibvirtConnection) -> Bool { (try? l.domain(named: "web").state()) == .running }
        var both = 0, aLastRunning: Date?, bStarted: Date?
        /// One look at both hosts. (The primary's guest also pauses briefly at every checkpoint, so
        /// what counts is when it was last seen running.)
        func look() {
            let (ra, rb) = (running(la), running(lb))
            if ra && rb { both += 1 }
            if ra { aLastRunning = Date() }
            if rb && bStarted == nil { bStarted = Date() }
        }
        try await MyceliumAgentTests.waitUntil("n1's guest seen running", timeout: 10, poll: 0.005) { look(); return aLastRunning != nil }
        let faultAt = Date()
        try fault()
        try await MyceliumAgentTests.waitUntil("the replica runs the guest", timeout: 120, poll: 0.02) {
            look()
            return bStarted != nil
        }
        try await MyceliumAgentTests.waitUntil("n2 owns web at epoch 2", timeout: 30, poll: 0.02) {
            look()
            let v = await self.vms(c, "n2").first
            return v?.primary == ids["n2"] && v?.epoch == 2
        }
        let stopped = try XCTUnwrap(aLastRunning)
        let started = try XCTUnwrap(bStarted)
        XCTAssertLessThan(stopped, started, "the primary was last seen running before the replica started")
        print("\(what) primary-last-running=\(String(format: "%.2f", stopped.timeIntervalSince(faultAt)))s replica-started=\(String(format: "%.2f", started.timeIntervalSince(faultAt)))s gap=\(String(format: "%.2f", started.timeIntervalSince(stopped)))s")
        if healAfter {
            try hosts.heal("a")
            // Healed: n1 learns the newer epoch and its copy goes (or becomes a paused standby if the
            // leader makes n1 the new replica); it never runs again.
            try await MyceliumAgentTests.waitUntil("n1's stale copy gone", timeout: 90, poll: 0.02) {
                look()
                let meta = try? la.domain(named: "web").xml()
                return meta == nil || meta?.contains("role='standby'") == true || meta?.contains("role=\"standby\"") == true
            }
        }
        // Keep watching a second (sampling, not synchronisation). The guest pauses briefly at every
        // checkpoint, so "runs" means seen running in most samples, "never runs" in none.
        var aRuns = 0, bRuns = 0
        for _ in 0..<50 {
            look()
            if running(la) { aRuns += 1 }
            if running(lb) { bRuns += 1 }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        XCTAssertEqual(both, 0, "both copies ran at once in \(both) samples")
        XCTAssertGreaterThan(bRuns, 25, "the guest runs on n2")
        XCTAssertEqual(aRuns, 0, "the copy on n1 never runs again")
    }

    /// A VM deleted while its first full copy is still in flight: the record goes, both copies go
    /// (nothing left defined in either libvirt), and the replica's image file is removed.
    func testDeletingAVMMidSyncLeavesNothingBehind() async throws {
        try await onThreeHosts { hosts, c in
            _ = try await createdVM(c, mib: 256)
            let names = ["n1", "n2", "n3"]
            let la = try LibvirtConnection(uri: hosts.uri("a")), lb = try LibvirtConnection(uri: hosts.uri("b"))
            func defined(_ l: LibvirtConnection) -> Bool { (try? l.domain(named: "web")) != nil }
            // Both copies exist (the primary booting, the replica's standby waiting): delete now, mid-sync.
            try await MyceliumAgentTests.waitUntil("the domain on both hosts", timeout: 60, poll: 0.02) { defined(la) && defined(lb) }
            let (dc, deleted) = try c.cli(["vm", "delete", "web", "--home", c.home("n3")])
            XCTAssertEqual(dc, 0, deleted)
            try await MyceliumAgentTests.waitUntil("both copies gone", timeout: 60) { !defined(la) && !defined(lb) }
            for n in names { let v = await vms(c, n); XCTAssertEqual(v, [], "\(n) still records \(v)") }
            XCTAssertFalse(FileManager.default.fileExists(atPath: c.home("n2") + "/vms/web.ram"), "the replica's image is removed")
            XCTAssertEqual((try? la.domains())?.count, 0, "nothing else defined on host a")
            XCTAssertEqual((try? lb.domains())?.count, 0, "nothing else defined on host b")
        }
    }
}
