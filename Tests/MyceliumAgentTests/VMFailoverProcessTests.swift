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
        // The primary shows its checkpoints: RPO, pause percentiles over the last minute, traffic.
        try await MyceliumAgentTests.waitUntil("checkpoints shown on n1", timeout: 20) {
            (await self.vms(c, "n1").first?.replication?.epochsLastMinute ?? 0) > 3
        }
        let shownOnN1 = await vms(c, "n1").first?.replication
        let rep = try XCTUnwrap(shownOnN1)
        XCTAssertNotNil(rep.rpoMilliseconds)
        XCTAssertGreaterThan(try XCTUnwrap(rep.pauseP99Milliseconds), 0)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(rep.pauseP99Milliseconds), try XCTUnwrap(rep.pauseP50Milliseconds))
        XCTAssertGreaterThan(rep.committedEpoch, 0)
        let (sc, shown) = try c.cli(["vm", "show", "web", "--home", c.home("n1")])
        XCTAssertEqual(sc, 0, shown)
        XCTAssertTrue(shown.contains("pause p50"), shown)
        let shownOnN2 = await vms(c, "n2").first?.replication
        XCTAssertNil(shownOnN2, "only the primary reports its replication")
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

    /// A planned migration of the busy guest to a third node (`mycelium vm migrate --to`, asked on
    /// the replica's node): the target becomes the replica and gets a full copy, the old replica's
    /// copy goes, then the switch is recorded (epoch 2, the old primary now the replica) and the
    /// guest continues on the target from the exact state it was paused in, never running on two
    /// hosts, and is protected again by a resync. Then a migration whose target is frozen before
    /// anything reaches it: aborted, and the guest keeps running where it was.
    func testAPlannedMigrationMovesTheBusyGuestAndAFailedOneLeavesItWhereItWas() async throws {
        try await onThreeHosts { hosts, c in
            let ids = try await protectedVM(c)
            let serialA = c.home("n1") + "/vms/web.serial", serialC = c.home("n3") + "/vms/web.serial"
            let tag = try XCTUnwrap(SerialLog(path: serialA).last?.tag)
            let watch = try BothHostsWatch(a: hosts.uri("a"), b: hosts.uri("c"))
            defer { watch.stop() }
            let lb = try LibvirtConnection(uri: hosts.uri("b"))
            let (code, out) = try c.cli(["vm", "migrate", "web", "--to", ids["n3"]!, "--home", c.home("n2")])
            XCTAssertEqual(code, 0, out)
            XCTAssertTrue(out.contains("switched to \(ids["n3"]!)"), out)
            let v = await vms(c, "n3").first
            XCTAssertEqual(v?.primary, ids["n3"])
            XCTAssertEqual(v?.replica, ids["n1"], "the old primary holds the replica now")
            XCTAssertEqual(v?.epoch, 2)
            try await MyceliumAgentTests.waitUntil("the guest counts on n3", timeout: 30) { SerialLog(path: serialC).counts.count >= 3 }
            try await MyceliumAgentTests.waitUntil("the old replica's copy on n2 gone", timeout: 30) { (try? lb.domain(named: "web")) == nil }
            // The old primary reports the hand-over as a migration (event and metric), not a rollback.
            try await MyceliumAgentTests.waitUntil("n1 reports the migration", timeout: 10) {
                let (_, body) = try await AgentClient(socket: c.home("n1") + "/agent.sock").request(method: "GET", path: "/metrics")
                let metrics = String(decoding: body, as: UTF8.self)
                return metrics.contains("mycelium_vm_transitions_total{kind=\"migrated\"} 1")
                    && metrics.contains("mycelium_vm_transitions_total{kind=\"rolled_back\"} 0")
            }
            let lastOnA = try XCTUnwrap(SerialLog(path: serialA).counts.last)
            let onC = SerialLog(path: serialC)
            XCTAssertEqual(onC.bootTags, [], "continued, not booted: \(onC.otherLines.suffix(5))")
            XCTAssertTrue(onC.counts.allSatisfy { $0.tag == tag }, "the same boot: \(onC.counts.prefix(3))")
            let first = try XCTUnwrap(onC.counts.first).n
            // From exactly where n1 paused: the next count (or the line being printed at the pause again).
            XCTAssertTrue((lastOnA.n...lastOnA.n + 1).contains(first), "n1 printed up to \(lastOnA.n); n3 began at \(first)")
            let m = watch.summary()
            XCTAssertEqual(m.both, 0, "both copies ran at once in \(m.both) samples")
            print("VM-MIGRATE last-on-a=\(lastOnA.n) first-on-c=\(first) blackout=\(String(format: "%.3f", m.longestNeither))s (both hosts polled every 5 ms, \(m.samples) samples)")
            try await MyceliumAgentTests.waitUntil("protected again, n1 the replica", timeout: 60) {
                await self.vms(c, "n3").first?.here?.contains("protected") == true
            }
            try await MyceliumAgentTests.waitUntil("n1 holds a committed image", timeout: 30) {
                let here = await self.vms(c, "n1").first?.here ?? ""
                return here.hasPrefix("replica: image at replication epoch") && here != "replica: image at replication epoch 0"
            }
            // n1 kept its paused guest's RAM as the base of its image: re-protecting it took a
            // resync by hashes of what changed since the switch, not a full copy.
            let resync = try await XCTUnwrapAsync(await resyncCounts(c, "n3"), "n3's last sync: \(await vms(c, "n3").first?.here ?? "-")")
            XCTAssertLessThan(resync.differed, resync.of / 4, "re-protected by a resync of what changed")
            print("VM-MIGRATE-REPROTECT differed=\(resync.differed) of=\(resync.of)")

            // Then a migration that cannot finish: its target's agent is frozen (SIGSTOP: its
            // host up, its agent silent) before anything reaches it. The target never gets a
            // synced copy, the leader aborts once the target is no longer alive, and the guest runs
            // on n3 throughout.
            let leader = await c.status("n3")?.leader
            let target = leader == ids["n2"] ? "n1" : "n2"
            c.signal(target, SIGSTOP)
            defer { c.signal(target, SIGCONT) }
            let countsBefore = SerialLog(path: serialC).counts.count
            var back: (Int32, String) = (0, "")
            for _ in 0..<50 {
                back = try c.cli(["vm", "migrate", "web", "--to", ids[target]!, "--home", c.home("n3")])
                if !back.1.contains("retry") { break }  // no leader for a moment: the operator retries
            }
            XCTAssertNotEqual(back.0, 0, back.1)
            XCTAssertTrue(back.1.contains("stays on \(ids["n3"]!)"), back.1)
            c.signal(target, SIGCONT)
            let after = await vms(c, "n3").first
            XCTAssertEqual(after?.epoch, 2, "nothing switched")
            XCTAssertEqual(after?.primary, ids["n3"])
            XCTAssertTrue(after?.lastMigration?.hasPrefix("aborted") == true, "\(after?.lastMigration ?? "-")")
            try await MyceliumAgentTests.waitUntil("the guest counts on n3", timeout: 30) { SerialLog(path: serialC).counts.count >= countsBefore + 5 }
            let counts = SerialLog(path: serialC).counts
            XCTAssertTrue(zip(counts, counts.dropFirst()).allSatisfy { $1.n == $0.n + 1 }, "counting on, in order, on n3")
            let end = watch.summary()
            XCTAssertEqual(end.both, 0, "both copies ran at once in \(end.both) samples")
            XCTAssertEqual(end.aRunsAfterSwitch, 0, "the copy on n1 never ran after the switch")
            print("VM-MIGRATE-ABORT \(after?.lastMigration ?? "-") samples=\(end.samples)")
        }
    }

    /// The primary's sync as `vm show` reports it on `n`: (pages that differed, pages of the region)
    /// of a resync by hashes, nil while another kind of sync (or none) is shown.
    func resyncCounts(_ c: AgentCluster, _ n: String) async -> (differed: Int, of: Int)? {
        guard let here = await vms(c, n).first?.here, let r = here.range(of: "last sync: resync by hashes: ") else { return nil }
        let words = here[r.upperBound...].split(separator: " ")
        guard words.count >= 3, words[1] == "of", let d = Int(words[0]), let total = Int(words[2]) else { return nil }
        return (d, total)
    }

    /// Only the primary's agent dies (SIGKILL; libvirtd and QEMU live on) and is restarted within
    /// the lease: it adopts its running guest (same boot, counting on) and protection comes back by
    /// a resync by hashes that sends a small part of the region, not a full copy.
    func testARestartedPrimaryAgentAdoptsItsGuestAndResyncsByHashes() async throws {
        try await onThreeHosts { hosts, c in
            let ids = try await protectedVM(c)
            let serialA = c.home("n1") + "/vms/web.serial"
            let tag = try XCTUnwrap(SerialLog(path: serialA).last?.tag)
            let here = await vms(c, "n1").first?.here ?? ""
            XCTAssertTrue(here.contains("last sync: full copy"), "the first sync is a full copy: \(here)")
            c.kill9("n1")
            try c.start("n1")
            try await MyceliumAgentTests.waitUntil("n1 adopts web and resyncs it by hashes", timeout: 60) {
                await self.resyncCounts(c, "n1") != nil
            }
            let counts = await resyncCounts(c, "n1")
            let (differed, total) = try XCTUnwrap(counts)
            XCTAssertEqual(total, 128 << 8, "128 MiB of 4 KiB pages")
            XCTAssertLessThan(differed * 4, total, "a resync sends a small part of the region (\(differed) of \(total) pages differed)")
            let events = await c.status("n1")?.events ?? []
            XCTAssertTrue(events.contains { $0.contains("VM web: found here at epoch 1; adopting it") }, "\(events)")
            XCTAssertFalse(events.contains { $0.contains("VM web: started") }, "the guest was adopted, not started again: \(events)")
            let v = await vms(c, "n1").first
            XCTAssertEqual(v?.primary, ids["n1"])
            XCTAssertEqual(v?.epoch, 1, "no failover happened")
            let before = SerialLog(path: serialA).counts.count
            try await MyceliumAgentTests.waitUntil("the guest counts on after the restart", timeout: 30) { SerialLog(path: serialA).counts.count >= before + 3 }
            let log = SerialLog(path: serialA)
            XCTAssertEqual(log.bootTags.count, 1, "one boot only")
            XCTAssertTrue(log.counts.allSatisfy { $0.tag == tag }, "the same boot all along")
            print("VM-RESYNC-PRIMARY differed=\(differed) of=\(total)")
        }
    }

    /// Only the replica's agent dies (SIGKILL) and is restarted: it keeps its image file as a base,
    /// which is not an epoch (image at replication epoch 0) until the primary, reconnecting, has
    /// resynced it by hashes (a small part of the region sent) and committed.
    func testARestartedReplicaAgentKeepsItsImageAndIsResyncedByHashes() async throws {
        try await onThreeHosts { hosts, c in
            let ids = try await protectedVM(c)
            c.kill9("n2")
            try c.start("n2")
            try await MyceliumAgentTests.waitUntil("n1 resyncs n2 by hashes", timeout: 60) {
                await self.resyncCounts(c, "n1") != nil
            }
            let counts = await resyncCounts(c, "n1")
            let (differed, total) = try XCTUnwrap(counts)
            XCTAssertEqual(total, 128 << 8)
            XCTAssertLessThan(differed * 4, total, "a resync sends a small part of the region (\(differed) of \(total) pages differed)")
            try await MyceliumAgentTests.waitUntil("n2 holds a committed image again", timeout: 30) {
                let here = await self.vms(c, "n2").first?.here ?? ""
                return here.hasPrefix("replica: image at replication epoch") && here != "replica: image at replication epoch 0"
            }
            let events = await c.status("n2")?.events ?? []
            XCTAssertTrue(events.contains { $0.contains("VM web: keeping the image found here as a base for a resync by hashes") }, "\(events)")
            let v = await vms(c, "n1").first
            XCTAssertEqual(v?.replica, ids["n2"], "the replica stayed n2")
            XCTAssertEqual(v?.epoch, 1)
            print("VM-RESYNC-REPLICA differed=\(differed) of=\(total)")
        }
    }

    /// The replica's agent dies (SIGKILL; its standby QEMU lives on), then the primary's whole host
    /// dies while it is down. Restarted, the replica's agent finds in its journal that the image its
    /// standby holds is a committed epoch of this ownership epoch (no primary is left to resync it),
    /// and the guest continues from it: the same boot, counting on.
    func testARestartedReplicaAgentTakesOverFromItsKeptEpochWhenThePrimaryDiedMeanwhile() async throws {
        try await onThreeHosts { hosts, c in
            let ids = try await protectedVM(c)
            let serialA = c.home("n1") + "/vms/web.serial", serialB = c.home("n2") + "/vms/web.serial"
            let tag = try XCTUnwrap(SerialLog(path: serialA).last?.tag)
            // Both at once, before the others could record n2 failed and place another replica.
            c.kill9("n2")
            try hosts.kill("a")
            let lastOnA = try XCTUnwrap(SerialLog(path: serialA).last)
            try c.start("n2")
            try await MyceliumAgentTests.waitUntil("the record moves web to n2 at epoch 2", timeout: 120) {
                let v = await self.vms(c, "n2").first
                return v?.primary == ids["n2"] && v?.epoch == 2
            }
            try await MyceliumAgentTests.waitUntil("the guest counts on n2", timeout: 60) {
                SerialLog(path: serialB).counts.count >= 3
            }
            let events = await c.status("n2")?.events ?? []
            XCTAssertTrue(events.contains { $0.contains("VM web: the image kept here is committed replication epoch") }, "\(events)")
            XCTAssertTrue(events.contains { $0.contains("VM web: took over at ownership epoch 2") }, "\(events)")
            let onB = SerialLog(path: serialB)
            XCTAssertEqual(onB.bootTags, [], "the guest on n2 did not boot: it continued (\(onB.otherLines.suffix(5)))")
            XCTAssertTrue(onB.counts.allSatisfy { $0.tag == tag }, "the same boot, never another: \(onB.counts.prefix(5))")
            let first = try XCTUnwrap(onB.counts.first).n
            // From the last epoch n2 committed before its agent died: behind what a printed since,
            // never ahead of it.
            XCTAssertLessThanOrEqual(first, lastOnA.n + 1, "continued from a state host a never reached")
            XCTAssertTrue(zip(onB.counts, onB.counts.dropFirst()).allSatisfy { $1.n == $0.n + 1 }, "counting on, in order")
            print("VM-KEPT-EPOCH last-on-a=\(lastOnA.n) first-on-b=\(first)")
        }
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

/// Polls the domain "web" on two hosts' libvirt every 5 ms on its own thread (sampling, for the
/// assertions and the printed blackout; never a synchronisation).
final class BothHostsWatch: @unchecked Sendable {
    // SAFETY (Sendable): the samples and the stop flag are guarded by `lock`.
    let a: LibvirtConnection, b: LibvirtConnection
    let lock = NSLock()
    var samples: [(at: Double, a: Bool, b: Bool)] = []
    var stopped = false
    var thread: Thread?

    init(a: String, b: String) throws {
        self.a = try LibvirtConnection(uri: a)
        self.b = try LibvirtConnection(uri: b)
        let t = Thread { [weak self] in self?.loop() }
        thread = t
        t.start()
    }

    func loop() {
        func running(_ l: LibvirtConnection) -> Bool { (try? l.domain(named: "web").state()) == .running }
        while !lock.withLock({ stopped }) {
            let s = (Date().timeIntervalSince1970, running(a), running(b))
            lock.withLock { samples.append(s) }
            usleep(5000)
        }
    }

    func stop() {
        lock.withLock { stopped = true }
        while thread?.isExecuting == true { usleep(1000) }
    }

    /// Samples with both running; the longest stretch with neither running between a's last
    /// running sample before b first ran (the blackout as seen from outside); samples of a running
    /// after b first ran.
    func summary() -> (both: Int, longestNeither: Double, aRunsAfterSwitch: Int, samples: String) {
        let s = lock.withLock { samples }
        let both = s.filter { $0.a && $0.b }.count
        let text = "\(s.count) (a running \(s.filter(\.a).count), b running \(s.filter(\.b).count))"
        guard let firstB = s.firstIndex(where: { $0.b }) else { return (both, .nan, 0, text) }
        let lastA = s[..<firstB].lastIndex(where: { $0.a }).map { s[$0].at } ?? s[0].at
        return (both, s[firstB].at - lastA, s[firstB...].filter { $0.a }.count, text)
    }
}

func XCTUnwrapAsync<T>(_ value: T?, _ message: @autoclosure () async -> String) async throws -> T {
    if let value { return value }
    let m = await message()
    XCTFail(m)
    throw AgentTestError(m)
}
