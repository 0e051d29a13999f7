// The built mycelium-cni binary, run the way a runtime runs it (environment + stdin), against network
// namespaces created by the test. Each test checks the kernel's view (`ip -j` inside the namespace), the IPAM
// state on disk and the datapath's maps.

import Foundation
import XCTest
@testable import MyceliumCNI

final class PluginProcessTests: XCTestCase {
    var sandbox: PluginSandbox!

    override func setUpWithError() throws {
        try requireRoot()
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: Paths.plugin), "plugin binary missing at \(Paths.plugin)")
        sandbox = try PluginSandbox()
    }

    override func tearDown() { sandbox = nil }

    func add(_ id: String, _ ns: TestNetns, config: JSON? = nil, ifname: String = "eth0") throws -> JSON {
        let r = try sandbox.invoke("ADD", config: config ?? sandbox.config(), containerID: id, netns: ns.path, ifname: ifname)
        XCTAssertEqual(r.status, 0, "ADD failed: \(r.result.stdout) \(r.result.stderr)")
        guard let j = r.json else { throw TestFailure("ADD printed no JSON: \(r.result.stdout)") }
        return j
    }

    func hostLink(_ name: String) throws -> JSON? {
        let r = try runProcess("/sbin/ip", ["-j", "link", "show", "dev", name])
        guard r.status == 0 else { return nil }
        return try JSON.parse(r.stdout).arrayValue?.first
    }

    // MARK: lifecycle

    func testAddCheckDelLifecycle() throws {
        let ns = try TestNetns()
        let id = "lifecycle-\(getpid())"
        let result = try add(id, ns)

        // The result, field by field (spec 1.1.0).
        XCTAssertEqual(result["cniVersion"]?.stringValue, "1.1.0")
        let ifs = try XCTUnwrap(result["interfaces"]?.arrayValue)
        XCTAssertEqual(ifs.count, 2)
        let hostName = CNIPlugin.hostVethName(containerID: id, ifname: "eth0")
        XCTAssertEqual(ifs[0]["name"]?.stringValue, hostName)
        XCTAssertNil(ifs[0]["sandbox"], "the host veth has no sandbox")
        XCTAssertEqual(ifs[1]["name"]?.stringValue, "eth0")
        XCTAssertEqual(ifs[1]["sandbox"]?.stringValue, ns.path)
        let ips = try XCTUnwrap(result["ips"]?.arrayValue)
        XCTAssertEqual(ips.count, 1)
        let address = try XCTUnwrap(ips[0]["address"]?.stringValue)
        XCTAssertTrue(address.hasPrefix("10.77.0.") && address.hasSuffix("/32"), address)
        XCTAssertEqual(ips[0]["gateway"]?.stringValue, "169.254.1.1")
        XCTAssertEqual(ips[0]["interface"]?.intValue, 1)
        let routes = try XCTUnwrap(result["routes"]?.arrayValue)
        XCTAssertTrue(routes.contains { $0["dst"]?.stringValue == "0.0.0.0/0" && $0["gw"]?.stringValue == "169.254.1.1" })
        let podIP = String(address.dropLast(3))

        // The host side: up, MAC as reported.
        let host = try XCTUnwrap(try hostLink(hostName), "host veth \(hostName) missing")
        XCTAssertEqual(host["address"]?.stringValue, ifs[0]["mac"]?.stringValue)
        XCTAssertTrue(host["flags"]?.arrayValue?.contains(.string("UP")) ?? false)

        // The container side, seen from inside the namespace.
        let links = try ns.json("link show dev eth0")
        XCTAssertEqual(links.arrayValue?.first?["address"]?.stringValue, ifs[1]["mac"]?.stringValue)
        XCTAssertTrue(links.arrayValue?.first?["flags"]?.arrayValue?.contains(.string("UP")) ?? false)
        let addrs = try ns.json("addr show dev eth0")
        let v4 = addrs.arrayValue?.first?["addr_info"]?.arrayValue?.filter { $0["family"]?.stringValue == "inet" } ?? []
        XCTAssertEqual(v4.count, 1)
        XCTAssertEqual(v4.first?["local"]?.stringValue, podIP)
        XCTAssertEqual(v4.first?["prefixlen"]?.intValue, 32)
        let rts = try ns.json("route show").arrayValue ?? []
        XCTAssertTrue(rts.contains { $0["dst"]?.stringValue == "default" && $0["gateway"]?.stringValue == "169.254.1.1" && $0["dev"]?.stringValue == "eth0" },
                      "no default route via 169.254.1.1: \(rts)")
        XCTAssertTrue(rts.contains { $0["dst"]?.stringValue == "169.254.1.1" && $0["scope"]?.stringValue == "link" && $0["dev"]?.stringValue == "eth0" },
                      "no link-scope route to the gateway: \(rts)")
        let neigh = try ns.json("neigh show dev eth0").arrayValue ?? []
        let gw = neigh.first { $0["dst"]?.stringValue == "169.254.1.1" }
        XCTAssertEqual(gw?["lladdr"]?.stringValue, ifs[0]["mac"]?.stringValue)
        XCTAssertTrue(gw?["state"]?.arrayValue?.contains(.string("PERMANENT")) ?? false, "gateway neighbour not permanent: \(neigh)")

        // IPAM and datapath.
        XCTAssertEqual(sandbox.allocatedIPs(), [podIP])
        let ep = try XCTUnwrap(try Datapath(pinDir: sandbox.pinDir).endpoint(IPv4Address(podIP)!), "endpoint not registered")
        XCTAssertEqual(Int(ep.hostIfindex), host["ifindex"]?.intValue)
        XCTAssertEqual(ep.networkId, NetworkConfig.networkIdentity(ofNetwork: sandbox.network))
        XCTAssertEqual(formatMAC(ep.podMAC), ifs[1]["mac"]?.stringValue)
        XCTAssertEqual(formatMAC(ep.hostMAC), ifs[0]["mac"]?.stringValue)

        // CHECK with the ADD result as prevResult passes; after breaking the neighbour entry it fails.
        let checkConfig = sandbox.config().setting("prevResult", result)
        let ok = try sandbox.invoke("CHECK", config: checkConfig, containerID: id, netns: ns.path)
        XCTAssertEqual(ok.status, 0, ok.result.stdout)
        XCTAssertEqual(ok.result.stdout, "")
        let noPrev = try sandbox.invoke("CHECK", config: sandbox.config(), containerID: id, netns: ns.path)
        XCTAssertEqual(noPrev.errorCode(), 7)
        _ = try ns.exec("ip neigh del 169.254.1.1 dev eth0")
        let broken = try sandbox.invoke("CHECK", config: checkConfig, containerID: id, netns: ns.path)
        XCTAssertEqual(broken.errorCode(), CNIError.Code.checkFailed.rawValue)

        // DEL, then DEL again: both succeed, nothing is left.
        for _ in 0..<2 {
            let del = try sandbox.invoke("DEL", config: sandbox.config(), containerID: id, netns: ns.path)
            XCTAssertEqual(del.status, 0, del.result.stdout)
            XCTAssertEqual(del.result.stdout, "")
        }
        XCTAssertNil(try hostLink(hostName))
        XCTAssertEqual(try ns.exec("ip -o link show", allowFailure: true).contains("eth0"), false)
        XCTAssertEqual(sandbox.allocatedIPs(), [])
        XCTAssertNil(try Datapath(pinDir: sandbox.pinDir).endpoint(IPv4Address(podIP)!))
    }

    func testResultInVersion100() throws {
        let ns = try TestNetns()
        let id = "v100-\(getpid())"
        let r = try add(id, ns, config: sandbox.config(version: "1.0.0"))
        XCTAssertEqual(r["cniVersion"]?.stringValue, "1.0.0")
        XCTAssertNil(r["interfaces"]?.arrayValue?[0]["mtu"], "mtu is not a 1.0.0 field")
        XCTAssertFalse(r["routes"]?.arrayValue?.contains { $0["scope"] != nil } ?? true, "scope is not a 1.0.0 field")
        // A configuration with only cniVersions negotiates the highest common version.
        let ns2 = try TestNetns()
        var cfg = sandbox.config()
        if case var .object(m) = cfg {
            m.removeAll { $0.0 == "cniVersion" }
            m.append(("cniVersions", .array([.string("0.4.0"), .string("1.0.0"), .string("1.1.0")])))
            cfg = .object(m)
        }
        let r2 = try add(id + "b", ns2, config: cfg)
        XCTAssertEqual(r2["cniVersion"]?.stringValue, "1.1.0")
        _ = try sandbox.invoke("DEL", config: sandbox.config(), containerID: id, netns: ns.path)
        _ = try sandbox.invoke("DEL", config: sandbox.config(), containerID: id + "b", netns: ns2.path)
        XCTAssertEqual(sandbox.allocatedIPs(), [])
    }

    func testPrevResultIsCarriedThrough() throws {
        let ns = try TestNetns()
        let id = "chain-\(getpid())"
        let prev = try JSON.parse(#"{"cniVersion":"1.1.0","interfaces":[{"name":"other0","mac":"02:00:00:00:00:01"}],"ips":[{"address":"192.0.2.5/24","interface":0}],"dns":{"nameservers":["192.0.2.53"]}}"#)
        let r = try add(id, ns, config: sandbox.config().setting("prevResult", prev))
        let ifs = r["interfaces"]?.arrayValue ?? []
        XCTAssertEqual(ifs.map { $0["name"]?.stringValue ?? "" }, ["other0", CNIPlugin.hostVethName(containerID: id, ifname: "eth0"), "eth0"])
        let ips = r["ips"]?.arrayValue ?? []
        XCTAssertEqual(ips.count, 2)
        XCTAssertEqual(ips[1]["interface"]?.intValue, 2, "our address points at our container interface")
        XCTAssertEqual(r["dns"]?["nameservers"]?.arrayValue?.first?.stringValue, "192.0.2.53")
        _ = try sandbox.invoke("DEL", config: sandbox.config(), containerID: id, netns: ns.path)
    }

    // MARK: bad input

    func assertNothingLeaked(_ id: String, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertFalse(try PluginSandbox.hostVethExists(containerID: id), "veth of \(id) leaked", file: file, line: line)
        let held = ((try? FileManager.default.contentsOfDirectory(atPath: sandbox.ipamDir)) ?? [])
            .filter { IPv4Address($0) != nil }
            .filter { (try? String(contentsOfFile: sandbox.ipamDir + "/" + $0, encoding: .utf8))?.hasPrefix(id + "\n") ?? false }
        XCTAssertEqual(held, [], "address of \(id) leaked", file: file, line: line)
    }

    func testBadInputsReturnSpecErrorsAndLeakNothing() throws {
        let ns = try TestNetns()
        let id = "bad-\(getpid())"

        // Malformed JSON: decode failure.
        var r = try sandbox.invoke("ADD", config: nil, containerID: id, netns: ns.path, stdin: #"{"cniVersion":"1.1.0","name":"#)
        XCTAssertEqual(r.errorCode(), 6)
        try assertNothingLeaked(id)

        // An unknown cniVersion: incompatible version.
        r = try sandbox.invoke("ADD", config: sandbox.config(version: "0.2.0"), containerID: id, netns: ns.path)
        XCTAssertEqual(r.errorCode(), 1)
        XCTAssertTrue(r.json?["details"]?.stringValue?.contains("1.0.0") ?? false, "details should list supported versions")
        try assertNothingLeaked(id)

        // Missing CNI_NETNS: invalid environment.
        r = try sandbox.invoke("ADD", config: sandbox.config(), containerID: id, netns: nil)
        XCTAssertEqual(r.errorCode(), 4)
        try assertNothingLeaked(id)

        // A namespace that does not exist: unknown container.
        r = try sandbox.invoke("ADD", config: sandbox.config(), containerID: id, netns: "/run/netns/myc-cni-test-does-not-exist")
        XCTAssertEqual(r.errorCode(), 3)
        try assertNothingLeaked(id)

        // A path that is not a network namespace.
        r = try sandbox.invoke("ADD", config: sandbox.config(), containerID: id, netns: "/etc/hostname")
        XCTAssertEqual(r.errorCode(), 4)
        try assertNothingLeaked(id)

        // The host's own namespace.
        r = try sandbox.invoke("ADD", config: sandbox.config(), containerID: id, netns: "/proc/self/ns/net")
        XCTAssertEqual(r.errorCode(), 4)
        try assertNothingLeaked(id)

        // No CNI_COMMAND, unknown command, bad interface name.
        r = try sandbox.invoke("", config: sandbox.config(), containerID: id, netns: ns.path)
        XCTAssertEqual(r.errorCode(), 4)
        r = try sandbox.invoke("FROB", config: sandbox.config(), containerID: id, netns: ns.path)
        XCTAssertEqual(r.errorCode(), 4)
        r = try sandbox.invoke("ADD", config: sandbox.config(), containerID: id, netns: ns.path, ifname: "much-too-long-name")
        XCTAssertEqual(r.errorCode(), 4)
        try assertNothingLeaked(id)

        // An exhausted range: one address, two containers.
        let tiny = sandbox.config(ipamExtra: [("rangeStart", .string("10.77.0.9")), ("rangeEnd", .string("10.77.0.9"))])
        _ = try add(id + "-first", ns, config: tiny)
        let ns2 = try TestNetns()
        r = try sandbox.invoke("ADD", config: tiny, containerID: id + "-second", netns: ns2.path)
        XCTAssertEqual(r.errorCode(), CNIError.Code.addressRangeExhausted.rawValue)
        XCTAssertTrue(r.json?["msg"]?.stringValue?.contains("10.77.0.9") ?? false, r.result.stdout)
        try assertNothingLeaked(id + "-second")
        XCTAssertEqual(try ns2.exec("ip -o link show").contains("eth0"), false, "container interface leaked into the netns")
        XCTAssertEqual(sandbox.allocatedIPs(), ["10.77.0.9"])

        // An interface name already taken inside the container: rolled back, nothing leaked.
        _ = try ns2.exec("ip link add eth0 type veth peer name eth0peer")
        r = try sandbox.invoke("ADD", config: sandbox.config(), containerID: id + "-taken", netns: ns2.path)
        XCTAssertEqual(r.errorCode(), CNIError.Code.netlinkFailure.rawValue)
        try assertNothingLeaked(id + "-taken")

        // DEL of an unknown container: success, idempotent.
        for _ in 0..<2 {
            r = try sandbox.invoke("DEL", config: sandbox.config(), containerID: "never-added-\(getpid())", netns: ns.path)
            XCTAssertEqual(r.status, 0, r.result.stdout)
        }
        // DEL without a netns (the runtime lost it) still cleans up.
        r = try sandbox.invoke("DEL", config: tiny, containerID: id + "-first", netns: nil)
        XCTAssertEqual(r.status, 0, r.result.stdout)
        try assertNothingLeaked(id + "-first")
        XCTAssertEqual(sandbox.allocatedIPs(), [])
    }

    // MARK: crash recovery, concurrency

    /// A previous ADD crashed after reserving and after creating the host veth. The retried ADD reuses the
    /// reservation and replaces the stale veth.
    func testAddAfterCrashReusesReservationAndReplacesStaleVeth() throws {
        let ns = try TestNetns()
        let id = "crash-\(getpid())"
        try FileManager.default.createDirectory(atPath: sandbox.ipamDir, withIntermediateDirectories: true)
        try "\(id)\neth0\n".write(toFile: sandbox.ipamDir + "/10.77.0.200", atomically: true, encoding: .utf8)
        let stale = CNIPlugin.hostVethName(containerID: id, ifname: "eth0")
        try sh("ip link add \(stale) type veth peer name mycstale\(getpid() % 1000)")
        let r = try add(id, ns)
        XCTAssertEqual(r["ips"]?.arrayValue?.first?["address"]?.stringValue, "10.77.0.200/32")
        XCTAssertEqual(sandbox.allocatedIPs(), ["10.77.0.200"])
        XCTAssertFalse(try sh("ip -o link show").contains("mycstale"), "the stale veth was not replaced")
        _ = try sandbox.invoke("DEL", config: sandbox.config(), containerID: id, netns: ns.path)
        XCTAssertEqual(sandbox.allocatedIPs(), [])
    }

    /// ADDs killed with SIGKILL at staggered moments (before, during and after the reservation, the veth and the
    /// datapath registration). Afterwards: no address is shared, a retried ADD of each attachment succeeds with
    /// a working network, and DEL plus GC leave nothing behind (not even temp files).
    func testKilledAddsLeaveRecoverableState() throws {
        let cfgPath = sandbox.dataDir + "-kill.json"
        try FileManager.default.createDirectory(atPath: sandbox.dataDir, withIntermediateDirectories: true)
        try sandbox.config().serialized.write(toFile: cfgPath, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: cfgPath) }
        let namespaces = try (0..<12).map { _ in try TestNetns() }
        let ids = (0..<12).map { "kill-\(getpid())-\($0)" }
        for (i, ns) in namespaces.enumerated() {
            // The behaviour under test, not synchronisation: the plugin is SIGKILLed at a spread of
            // moments through its ADD (0 to 44 ms; an ADD takes 20-50 ms here).
            let delay = String(format: "%.3f", Double(i) * 0.004)
            let script = "CNI_COMMAND=ADD CNI_CONTAINERID=\(ids[i]) CNI_NETNS=\(ns.path) CNI_IFNAME=eth0 '\(Paths.plugin)' "
                + "< '\(cfgPath)' > /dev/null 2>&1 & pid=$!; sleep \(delay); kill -9 $pid 2>/dev/null; wait $pid; true"
            try sh(script)
        }
        let held = sandbox.allocatedIPs()
        XCTAssertEqual(Set(held).count, held.count)
        let veths = try ids.filter { try PluginSandbox.hostVethExists(containerID: $0) }.count
        print("killed ADDs left \(held.count) reservations and \(veths) veths of 12 attachments")
        for (i, ns) in namespaces.enumerated() {
            let r = try add(ids[i], ns)
            let check = try sandbox.invoke("CHECK", config: sandbox.config().setting("prevResult", r), containerID: ids[i], netns: ns.path)
            XCTAssertEqual(check.status, 0, "after a killed ADD, retried ADD of \(ids[i]) is not healthy: \(check.result.stdout)")
        }
        let owners = try locked(IPAMStore(dataDir: sandbox.dataDir, network: sandbox.network)) { try $0.allocations() }
        XCTAssertEqual(owners.count, 12, "each attachment holds exactly one address: \(owners)")
        XCTAssertEqual(Set(owners.map { $0.containerID }).count, 12)
        for (i, ns) in namespaces.enumerated() {
            XCTAssertEqual(try sandbox.invoke("DEL", config: sandbox.config(), containerID: ids[i], netns: ns.path).status, 0)
            XCTAssertFalse(try PluginSandbox.hostVethExists(containerID: ids[i]))
        }
        let gc = try sandbox.invoke("GC", config: sandbox.config().setting("cni.dev/valid-attachments", .array([])), ifname: nil)
        XCTAssertEqual(gc.status, 0, gc.result.stdout)
        let left = try FileManager.default.contentsOfDirectory(atPath: sandbox.ipamDir).sorted()
        XCTAssertEqual(left, ["last_reserved", "lock"], "state left behind")
        XCTAssertEqual(try Datapath(pinDir: sandbox.pinDir).endpoints(), [])
    }

    /// Eight plugin processes at once for six addresses: six distinct addresses, two clean "exhausted" errors.
    func testConcurrentProcessesNeverShareAnAddress() throws {
        let config = sandbox.config(ipamExtra: [("rangeStart", .string("10.77.0.20")), ("rangeEnd", .string("10.77.0.25"))])
        let namespaces = try (0..<8).map { _ in try TestNetns() }
        let lock = NSLock()
        nonisolated(unsafe) var runs: [(Int, PluginRun)] = []
        let sandbox = self.sandbox!
        DispatchQueue.concurrentPerform(iterations: 8) { i in
            let r = try? sandbox.invoke("ADD", config: config, containerID: "conc-\(getpid())-\(i)", netns: namespaces[i].path)
            lock.lock()
            if let r { runs.append((i, r)) }
            lock.unlock()
        }
        XCTAssertEqual(runs.count, 8)
        let ok = runs.filter { $0.1.status == 0 }
        let failed = runs.filter { $0.1.status != 0 }
        XCTAssertEqual(ok.count, 6)
        let addrs = ok.compactMap { $0.1.json?["ips"]?.arrayValue?.first?["address"]?.stringValue }
        XCTAssertEqual(Set(addrs).count, 6, "an address was handed out twice: \(addrs)")
        for (i, f) in failed {
            XCTAssertEqual(f.errorCode(), 100)
            try assertNothingLeaked("conc-\(getpid())-\(i)")
        }
        XCTAssertEqual(sandbox.allocatedIPs().count, 6)
        for (i, _) in ok {
            let d = try sandbox.invoke("DEL", config: config, containerID: "conc-\(getpid())-\(i)", netns: namespaces[i].path)
            XCTAssertEqual(d.status, 0)
        }
        XCTAssertEqual(sandbox.allocatedIPs(), [])
    }

    // MARK: GC and STATUS (spec 1.1)

    func testGCReleasesOnlyStaleAttachments() throws {
        let ids = (0..<3).map { "gc-\(getpid())-\($0)" }
        let namespaces = try ids.map { _ in try TestNetns() }
        var results: [JSON] = []
        for (id, ns) in zip(ids, namespaces) { results.append(try add(id, ns)) }
        XCTAssertEqual(sandbox.allocatedIPs().count, 3)

        let noList = try sandbox.invoke("GC", config: sandbox.config(), ifname: nil)
        XCTAssertEqual(noList.errorCode(), 7, "GC without valid-attachments must refuse")
        XCTAssertEqual(sandbox.allocatedIPs().count, 3)

        let valid = JSON.array([.object([("containerID", .string(ids[0])), ("ifname", .string("eth0"))])])
        let gc = try sandbox.invoke("GC", config: sandbox.config().setting("cni.dev/valid-attachments", valid), ifname: nil)
        XCTAssertEqual(gc.status, 0, gc.result.stdout)
        let keptIP = String(results[0]["ips"]!.arrayValue![0]["address"]!.stringValue!.dropLast(3))
        XCTAssertEqual(sandbox.allocatedIPs(), [keptIP])
        XCTAssertTrue(try PluginSandbox.hostVethExists(containerID: ids[0]))
        for (id, r) in zip(ids.dropFirst(), results.dropFirst()) {
            XCTAssertFalse(try PluginSandbox.hostVethExists(containerID: id), "GC left the veth of \(id)")
            let ip = IPv4Address(String(r["ips"]!.arrayValue![0]["address"]!.stringValue!.dropLast(3)))!
            XCTAssertNil(try Datapath(pinDir: sandbox.pinDir).endpoint(ip), "GC left the endpoint \(ip)")
        }
        // The survivor is intact.
        let check = try sandbox.invoke("CHECK", config: sandbox.config().setting("prevResult", results[0]), containerID: ids[0],
                                       netns: namespaces[0].path)
        XCTAssertEqual(check.status, 0, check.result.stdout)
        _ = try sandbox.invoke("DEL", config: sandbox.config(), containerID: ids[0], netns: namespaces[0].path)
    }

    func testStatus() throws {
        var r = try sandbox.invoke("STATUS", config: sandbox.config(), ifname: nil)
        XCTAssertEqual(r.status, 0, r.result.stdout)
        XCTAssertEqual(r.result.stdout, "")
        // No pod CIDR anywhere: not available.
        let noCIDR: JSON = .object([("cniVersion", .string("1.1.0")), ("name", .string(sandbox.network)),
                                    ("ipam", .object([("dataDir", .string(sandbox.dataDir)),
                                                      ("podCIDRFile", .string(sandbox.dataDir + "/no-such-file"))]))])
        r = try sandbox.invoke("STATUS", config: noCIDR, ifname: nil)
        XCTAssertEqual(r.errorCode(), 50)
        // The agent's pod CIDR file is picked up when the configuration has no subnet.
        try FileManager.default.createDirectory(atPath: sandbox.dataDir, withIntermediateDirectories: true)
        try "10.77.5.0/24\n".write(toFile: sandbox.dataDir + "/podcidr", atomically: true, encoding: .utf8)
        let fromFile = noCIDR.setting("ipam", .object([("dataDir", .string(sandbox.dataDir)),
                                                        ("podCIDRFile", .string(sandbox.dataDir + "/podcidr"))]))
            .setting("bpfObject", .string(sandbox.bpfObject)).setting("pinDir", .string(sandbox.pinDir))
        r = try sandbox.invoke("STATUS", config: fromFile, ifname: nil)
        XCTAssertEqual(r.status, 0, r.result.stdout)
        let ns = try TestNetns()
        let added = try add("podcidr-\(getpid())", ns, config: fromFile)
        XCTAssertTrue(added["ips"]?.arrayValue?.first?["address"]?.stringValue?.hasPrefix("10.77.5.") ?? false)
        _ = try sandbox.invoke("DEL", config: fromFile, containerID: "podcidr-\(getpid())", netns: ns.path)
        // A full range: not available.
        let tiny = sandbox.config(ipamExtra: [("rangeStart", .string("10.77.0.30")), ("rangeEnd", .string("10.77.0.30"))])
        let ns2 = try TestNetns()
        _ = try add("full-\(getpid())", ns2, config: tiny)
        r = try sandbox.invoke("STATUS", config: tiny, ifname: nil)
        XCTAssertEqual(r.errorCode(), 50)
        _ = try sandbox.invoke("DEL", config: tiny, containerID: "full-\(getpid())", netns: ns2.path)
        // No datapath object and nothing loaded: not available.
        let noObject = sandbox.config().setting("bpfObject", .string("/nonexistent/datapath.bpf.o"))
            .setting("pinDir", .string("/sys/fs/bpf/mycelium-cnitest-none-\(getpid())"))
        r = try sandbox.invoke("STATUS", config: noObject, ifname: nil)
        XCTAssertEqual(r.errorCode(), 50)
    }

    func testVersionCommandThroughBinary() throws {
        let r = try sandbox.invoke("VERSION", config: nil, ifname: nil, stdin: #"{"cniVersion":"1.0.0"}"#)
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(r.json?["supportedVersions"]?.arrayValue?.compactMap { $0.stringValue }, ["1.0.0", "1.1.0"])
    }

    // MARK: latency (reported, not asserted)

    /// Times ADD and DEL from a shell loop (bash's $EPOCHREALTIME), so the number is the plugin's own
    /// spawn-to-exit time and not Foundation.Process overhead.
    func testMeasureAddLatency() throws {
        let cfgPath = sandbox.dataDir + "-latency.json"
        try sandbox.config().serialized.write(toFile: cfgPath, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: cfgPath) }
        let prefix = "myc-cni-lat-\(getpid())"
        let script = """
        set -e
        P='\(Paths.plugin)'
        for i in $(seq 0 11); do
          ip netns add \(prefix)-$i
          t0=$EPOCHREALTIME
          CNI_COMMAND=ADD CNI_CONTAINERID=lat-$i CNI_NETNS=/run/netns/\(prefix)-$i CNI_IFNAME=eth0 "$P" < '\(cfgPath)' > /dev/null
          t1=$EPOCHREALTIME
          CNI_COMMAND=DEL CNI_CONTAINERID=lat-$i CNI_NETNS=/run/netns/\(prefix)-$i CNI_IFNAME=eth0 "$P" < '\(cfgPath)' > /dev/null
          t2=$EPOCHREALTIME
          echo "$t0 $t1 $t2"
          ip netns del \(prefix)-$i
        done
        t0=$EPOCHREALTIME; echo '{}' | CNI_COMMAND=VERSION "$P" > /dev/null; t1=$EPOCHREALTIME
        echo "$t0 $t1 $t1"
        """
        let r = try runProcess("/bin/bash", ["-c", script])
        _ = try? sh("for n in $(ip netns list | awk '{print $1}' | grep '^\(prefix)-'); do ip netns del $n; done", allowFailure: true)
        XCTAssertEqual(r.status, 0, r.stderr)
        let rows = r.stdout.split(separator: "\n").map { $0.split(separator: " ").compactMap { Double($0) } }.filter { $0.count == 3 }
        guard rows.count == 13 else { return XCTFail("unexpected timing output: \(r.stdout)") }
        let adds = rows.prefix(12).map { ($0[1] - $0[0]) * 1000 }
        let dels = rows.prefix(12).map { ($0[2] - $0[1]) * 1000 }
        let version = (rows[12][1] - rows[12][0]) * 1000
        func f(_ x: Double) -> String { String(format: "%.1f", x) }
        let warm = adds.dropFirst().sorted()
        print("mycelium-cni latency (ms, \(Paths.buildDir.hasSuffix("release") ? "release" : "debug") build): "
              + "first ADD \(f(adds[0])) (includes datapath load), warm ADD median \(f(warm[warm.count / 2])) "
              + "min \(f(warm.first!)) max \(f(warm.last!)); DEL median \(f(dels.sorted()[6])); VERSION \(f(version))")
        XCTAssertEqual(sandbox.allocatedIPs(), [])
    }
}
