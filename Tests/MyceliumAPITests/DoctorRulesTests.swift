import Foundation
import MyceliumAPI
import XCTest

/// `mycelium doctor`'s verdicts from measured facts, and the progress line's arithmetic and format.
final class DoctorRulesTests: XCTestCase {
    typealias R = DoctorRules

    func testKernelChecks() {
        XCTAssertEqual(R.bpffs(mounted: true, datapathOff: false).verdict, .ok)
        let off = R.bpffs(mounted: false, datapathOff: false)
        XCTAssertEqual(off.verdict, .fail)
        XCTAssertTrue(off.fix.contains("mount -t bpf bpf /sys/fs/bpf"), off.fix)
        XCTAssertEqual(R.bpffs(mounted: false, datapathOff: true).verdict, .skip)

        XCTAssertEqual(R.tcx(.supported, kernel: "6.18").verdict, .ok)
        XCTAssertEqual(R.tcx(.unsupported(errno: EINVAL), kernel: "6.1").verdict, .warn)
        XCTAssertEqual(R.tcx(.cannotLoad("EPERM"), kernel: "6.1").verdict, .fail)

        XCTAssertEqual(R.userfaultfd(available: true, reason: "x").verdict, .ok)
        XCTAssertEqual(R.userfaultfd(available: false, reason: "no WP_ASYNC").verdict, .warn)

        XCTAssertEqual(R.kvm(devicePresent: true, opens: true, hardwareFlags: true, libvirtConfigured: true).verdict, .ok)
        let pvm = R.kvm(devicePresent: true, opens: true, hardwareFlags: false, libvirtConfigured: true)
        XCTAssertEqual(pvm.verdict, .warn)
        XCTAssertTrue(pvm.detail.contains("TCG"), pvm.detail)
        XCTAssertEqual(R.kvm(devicePresent: false, opens: false, hardwareFlags: false, libvirtConfigured: true).verdict, .warn)
        XCTAssertEqual(R.kvm(devicePresent: false, opens: false, hardwareFlags: false, libvirtConfigured: false).verdict, .skip)

        XCTAssertEqual(R.cgroups(.v2(controllers: ["cpuset", "cpu", "io", "memory", "pids"])).verdict, .ok)
        let noMem = R.cgroups(.v2(controllers: ["cpu"]))
        XCTAssertEqual(noMem.verdict, .fail)
        XCTAssertTrue(noMem.fix.contains("+memory"), noMem.fix)
        XCTAssertEqual(R.cgroups(.v1(memory: true, cpu: true)).verdict, .warn)
        XCTAssertEqual(R.cgroups(.v1(memory: true, cpu: false)).verdict, .fail)
        XCTAssertEqual(R.cgroups(.none).verdict, .fail)
    }

    func testFsyncThresholdsFollowEtcd() {
        XCTAssertEqual(R.p99([0.001, 0.002, 0.003]), 0.003)
        let hundred = (1...100).map { Double($0) / 1000 }
        XCTAssertEqual(R.p99(hundred), 0.099)
        XCTAssertNil(R.p99([]))
        XCTAssertEqual(R.fsync(samples: Array(repeating: 0.001, count: 20), directory: "/h").verdict, .ok)
        // One slow fsync among 20 is the p99 (nearest rank): 20 ms warns as etcd's check perf would.
        let slow = R.fsync(samples: Array(repeating: 0.001, count: 19) + [0.020], directory: "/h")
        XCTAssertEqual(slow.verdict, .warn)
        XCTAssertTrue(slow.detail.contains("p99 20.00 ms"), slow.detail)
        XCTAssertEqual(R.fsync(samples: [0.2, 0.3], directory: "/h").verdict, .fail)
        XCTAssertEqual(R.fsync(samples: [], directory: "/h", error: "EROFS").verdict, .fail)
    }

    func testClusterChecks() {
        let v = ["a", "b", "c"]
        XCTAssertEqual(R.quorum(leader: "a", health: "ok", voters: v, alive: ["a", "b", "c"]).verdict, .ok)
        XCTAssertEqual(R.quorum(leader: "a", health: "ok", voters: v, alive: ["a", "b"]).verdict, .warn, "no margin left")
        XCTAssertEqual(R.quorum(leader: "a", health: "ok", voters: v, alive: ["a"]).verdict, .fail)
        XCTAssertEqual(R.quorum(leader: "none", health: "no leader", voters: v, alive: ["a", "b", "c"]).verdict, .fail)
        XCTAssertEqual(R.quorum(leader: "a", health: "ok", voters: ["a"], alive: ["a"]).verdict, .ok, "a one-node network")

        XCTAssertEqual(R.clockSkew(member: "n", skewSeconds: 0, limit: 10).verdict, .ok)
        XCTAssertEqual(R.clockSkew(member: "n", skewSeconds: -4, limit: 10).verdict, .warn)
        XCTAssertEqual(R.clockSkew(member: "n", skewSeconds: 12, limit: 10).verdict, .fail)
        XCTAssertEqual(R.clockSkew(member: "n", skewSeconds: nil, limit: 10).verdict, .skip)

        XCTAssertEqual(R.certificate(member: nil, expiresInSeconds: 20 * 86_400, lifetimeSeconds: 30 * 86_400).verdict, .ok)
        XCTAssertEqual(R.certificate(member: nil, expiresInSeconds: 5 * 86_400, lifetimeSeconds: 30 * 86_400).verdict, .warn)
        XCTAssertEqual(R.certificate(member: nil, expiresInSeconds: -1, lifetimeSeconds: 30 * 86_400).verdict, .fail)

        XCTAssertEqual(R.member("x", status: "alive", revoked: false).verdict, .ok)
        XCTAssertEqual(R.member("x", status: "failed", revoked: false).verdict, .fail)
        XCTAssertEqual(R.member("x", status: "failed", revoked: true).verdict, .skip)

        XCTAssertEqual(R.seedSpore(stores: 0, newest: nil, problems: [], currentEpoch: "1.2", intervalSeconds: 1).verdict, .warn)
        XCTAssertEqual(R.seedSpore(stores: 1, newest: nil, problems: ["dir:/x: no seed spore yet"], currentEpoch: "1.2", intervalSeconds: 1).verdict, .fail)
        XCTAssertEqual(R.seedSpore(stores: 1, newest: ("1.2", 500), problems: [], currentEpoch: "1.2", intervalSeconds: 1).verdict, .ok)
        XCTAssertEqual(R.seedSpore(stores: 1, newest: ("1.1", 5), problems: [], currentEpoch: "1.2", intervalSeconds: 1).verdict, .ok)
        XCTAssertEqual(R.seedSpore(stores: 1, newest: ("1.1", 500), problems: [], currentEpoch: "1.9", intervalSeconds: 1).verdict, .warn)
    }

    func testLeftovers() {
        let pins = R.bpfPins(candidates: ["/sys/fs/bpf/mycelium", "/sys/fs/bpf/myc-old"], owned: ["/sys/fs/bpf/mycelium"])
        XCTAssertEqual(pins.verdict, .fail)
        XCTAssertTrue(pins.detail.contains("/sys/fs/bpf/myc-old") && !pins.detail.contains("mycelium,"), pins.detail)
        XCTAssertEqual(R.bpfPins(candidates: ["/sys/fs/bpf/mycelium"], owned: ["/sys/fs/bpf/mycelium"]).verdict, .ok)
        XCTAssertEqual(R.bpfPins(candidates: [], owned: []).verdict, .ok)

        XCTAssertTrue(R.isOurVeth("myc0123456789a"))
        XCTAssertFalse(R.isOurVeth("myc0123456789"), "13 characters")
        XCTAssertFalse(R.isOurVeth("eth0"))
        let vs = [R.Veth(name: "myc0123456789a", peerInOtherNamespace: true), R.Veth(name: "myc00000000000b", peerInOtherNamespace: false),
                  R.Veth(name: "myc0000000000b", peerInOtherNamespace: false), R.Veth(name: "veth1", peerInOtherNamespace: false)]
        let c = R.veths(vs, allocated: nil)
        XCTAssertEqual(c.verdict, .fail)
        XCTAssertTrue(c.detail.hasSuffix("myc0000000000b"), c.detail)
        XCTAssertEqual(R.veths(vs, allocated: ["myc0000000000b"]).detail.contains("myc0123456789a"), true, "not allocated: orphaned")
        XCTAssertEqual(R.veths([vs[0]], allocated: nil).verdict, .ok)
    }

    func testReportSummaryExitCodeAndStableJSON() throws {
        let ok = DoctorReport(node: "node-x", scope: "node", checks: [DoctorCheck("a", .ok, "fine"), DoctorCheck("b", .skip, "n/a")])
        XCTAssertEqual(ok.verdict, .ok)
        XCTAssertEqual(ok.exitCode, 0)
        let warn = DoctorReport(node: "node-x", scope: "node", checks: [DoctorCheck("a", .warn, "slow", fix: "f")])
        XCTAssertEqual(warn.exitCode, 0, "warnings do not fail")
        let bad = DoctorReport(node: "node-x", scope: "network", checks: [DoctorCheck("a", .ok, ""), DoctorCheck("b", .fail, "x", fix: "do y", node: "node-y")])
        XCTAssertEqual(bad.exitCode, 1)
        XCTAssertEqual(bad.summary, .init(ok: 1, warn: 0, fail: 1, skip: 0))
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(APIJSON.encode(bad))) as? [String: Any])
        XCTAssertEqual(Set(j.keys), ["node", "scope", "checks", "summary", "verdict"])
        let c = try XCTUnwrap((j["checks"] as? [[String: Any]])?.last)
        XCTAssertEqual(Set(c.keys), ["check", "verdict", "detail", "fix", "node"])
        XCTAssertEqual(c["verdict"] as? String, "fail")
        let text = bad.text()
        XCTAssertTrue(text.contains("FAIL  b (node-y)"), text)
        XCTAssertTrue(text.contains("fix: do y"), text)
    }

    // MARK: progress

    func testProgressMath() {
        let s = ProgressState(label: "copy", done: 256 * 1024 * 1024, total: 1024 * 1024 * 1024, elapsed: 2)
        XCTAssertEqual(ProgressLine.fraction(s), 0.25)
        XCTAssertEqual(ProgressLine.rate(s), 128 * 1024 * 1024)
        XCTAssertEqual(ProgressLine.eta(s), 6)
        XCTAssertNil(ProgressLine.eta(ProgressState(label: "x", done: 0, total: 10, elapsed: 3)), "no rate yet")
        XCTAssertEqual(ProgressLine.eta(ProgressState(label: "x", done: 10, total: 10, elapsed: 3)), 0)
        XCTAssertNil(ProgressLine.eta(ProgressState(label: "x", done: 5, total: nil, elapsed: 3)))
        XCTAssertEqual(ProgressLine.clock(7), "0:07")
        XCTAssertEqual(ProgressLine.clock(3723), "1:02:03")
        XCTAssertEqual(ProgressLine.clock(nil), "--:--")
        XCTAssertEqual(ProgressLine.amount(512, .bytes), "512 B")
        XCTAssertEqual(ProgressLine.amount(1536 * 1024 * 1024, .bytes), "1.5 GiB")
        XCTAssertEqual(ProgressLine.amount(3, .items("replicas")), "3 replicas")
    }

    func testProgressLines() {
        let s = ProgressState(label: "migrating vm1", done: 256 * 1024 * 1024, total: 1024 * 1024 * 1024, elapsed: 2, phase: "copying")
        XCTAssertEqual(ProgressLine.terminal(s, width: 200),
                       "migrating vm1  [#####---------------]   25%  256.0 MiB/1.0 GiB  128.0 MiB/s  ETA 0:06  copying")
        XCTAssertEqual(ProgressLine.plain(s),
                       "progress: migrating vm1: 25% (256.0 MiB of 1.0 GiB), 128.0 MiB/s, ETA 0:06, elapsed 0:02, copying")
        let narrow = ProgressLine.terminal(s, width: 30)
        XCTAssertEqual(narrow.count, 30)
        XCTAssertTrue(narrow.hasSuffix("…"))
        let items = ProgressState(label: "deploying web", done: 1, total: 3, elapsed: 4, unit: .items("replicas"))
        XCTAssertEqual(ProgressLine.plain(items), "progress: deploying web: 33% (1 of 3 replicas), 0.2 replicas/s, ETA 0:08, elapsed 0:04")
        XCTAssertEqual(ProgressLine.terminal(items, width: 120), "deploying web  [######--------------]   33%  1/3 replicas  0.2 replicas/s  ETA 0:08")
        let open = ProgressState(label: "waiting for vm1", done: 0, total: nil, elapsed: 75, phase: "pending")
        XCTAssertEqual(ProgressLine.terminal(open), "waiting for vm1  elapsed 1:15  pending")
        XCTAssertEqual(ProgressLine.plain(open), "progress: waiting for vm1: elapsed 1:15, pending")

        XCTAssertFalse(ProgressLine.shouldPrintPlain(elapsed: 1, lastPrinted: nil, phaseChanged: true), "short waits stay quiet")
        XCTAssertTrue(ProgressLine.shouldPrintPlain(elapsed: 2.5, lastPrinted: nil, phaseChanged: false))
        XCTAssertFalse(ProgressLine.shouldPrintPlain(elapsed: 5, lastPrinted: 2.5, phaseChanged: false))
        XCTAssertTrue(ProgressLine.shouldPrintPlain(elapsed: 5, lastPrinted: 2.5, phaseChanged: true))
        XCTAssertTrue(ProgressLine.shouldPrintPlain(elapsed: 12.5, lastPrinted: 2.5, phaseChanged: false))
    }
}
