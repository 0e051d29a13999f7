// Real runtimes driving the plugin: (a) libcni, through a small Go driver built from Debian's
// golang-github-appc-cni-dev; (b) podman 4 with its CNI backend, running two busybox containers that talk
// through the eBPF datapath. Both use private config, state and pin directories and clean up after themselves.

import Foundation
import XCTest
@testable import MyceliumCNI

final class LibcniDriverTests: XCTestCase {
    func testLibcniAddCheckDelGC() throws {
        try requireRoot()
        let sandbox = try PluginSandbox(network: "libcninet")
        let tmp = NSTemporaryDirectory() + "myc-cnidriver-\(getpid())-\(Unique.next())"
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tmp) }

        // Build the driver offline, GOPATH mode, into the temp dir.
        let build = try runProcess("/usr/bin/go", ["build", "-o", tmp + "/cnidriver", "."],
                                   env: ["GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOCACHE": tmp + "/gocache",
                                         "HOME": tmp, "PATH": "/usr/bin:/bin"],
                                   cwd: Paths.testsDir + "/cnidriver")
        XCTAssertEqual(build.status, 0, "go build failed: \(build.stderr)")
        guard build.status == 0 else { return }

        // Debian's libcni speaks spec 1.0.0, so the list says 1.0.0 and offers 1.1.0 for newer runtimes.
        let plugin = sandbox.config().setting("cniVersion", .null)
        guard case let .object(members) = plugin else { return XCTFail() }
        let conflist: JSON = .object([
            ("cniVersion", .string("1.0.0")),
            ("cniVersions", .array([.string("1.0.0"), .string("1.1.0")])),
            ("name", .string(sandbox.network)),
            ("plugins", .array([.object(members.filter { $0.0 != "cniVersion" && $0.0 != "name" })])),
        ])
        try conflist.pretty.write(toFile: tmp + "/net.conflist", atomically: true, encoding: .utf8)
        let ns = try TestNetns()
        let id = "libcni-\(getpid())"
        func driver(_ op: String, _ extra: [String] = []) throws -> ProcessResult {
            try runProcess(tmp + "/cnidriver", ["-op", op, "-conflist", tmp + "/net.conflist", "-path", Paths.buildDir,
                                                "-cache", tmp + "/cache", "-id", id, "-netns", ns.path, "-ifname", "eth0"] + extra,
                           env: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"])
        }

        let version = try driver("version")
        XCTAssertEqual(version.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "1.0.0 1.1.0", version.stderr)

        let add = try driver("add")
        XCTAssertEqual(add.status, 0, add.stderr)
        let result = try JSON.parse(add.stdout)
        XCTAssertEqual(result["cniVersion"]?.stringValue, "1.0.0")
        XCTAssertEqual(result["interfaces"]?.arrayValue?.count, 2)
        XCTAssertEqual(result["interfaces"]?.arrayValue?[1]["sandbox"]?.stringValue, ns.path)
        let address = try XCTUnwrap(result["ips"]?.arrayValue?.first?["address"]?.stringValue)
        XCTAssertTrue(address.hasSuffix("/32"))
        XCTAssertEqual(sandbox.allocatedIPs(), [String(address.dropLast(3))])

        // libcni passes its cached result as prevResult.
        let check = try driver("check")
        XCTAssertEqual(check.status, 0, check.stderr)
        let status = try driver("status")
        XCTAssertEqual(status.status, 0, status.stderr)

        // GC keeps what is listed, frees what is not.
        var gc = try driver("gc", ["-valid", "\(id)/eth0"])
        XCTAssertEqual(gc.status, 0, gc.stderr)
        XCTAssertEqual(sandbox.allocatedIPs().count, 1)
        gc = try driver("gc", ["-valid", ""])
        XCTAssertEqual(gc.status, 0, gc.stderr)
        XCTAssertEqual(sandbox.allocatedIPs(), [])
        XCTAssertFalse(try PluginSandbox.hostVethExists(containerID: id))

        // DEL after GC, and DEL again: both succeed.
        for _ in 0..<2 {
            let del = try driver("del")
            XCTAssertEqual(del.status, 0, del.stderr)
        }
        // A second lifecycle through libcni.
        XCTAssertEqual(try driver("add").status, 0)
        XCTAssertEqual(sandbox.allocatedIPs().count, 1)
        XCTAssertEqual(try driver("del").status, 0)
        XCTAssertEqual(sandbox.allocatedIPs(), [])
        XCTAssertFalse(try PluginSandbox.hostVethExists(containerID: id))
    }
}

final class PodmanTests: XCTestCase {
    func testTwoBusyboxContainersTalkThroughTheDatapath() throws {
        try requireRoot()
        let sandbox = try PluginSandbox(network: "mycpod\(getpid() % 10000)")
        let tmp = NSTemporaryDirectory() + "myc-podman-\(getpid())-\(Unique.next())"
        let rootfs = tmp + "/rootfs"
        let fm = FileManager.default
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "www"] {
            try fm.createDirectory(atPath: rootfs + "/" + d, withIntermediateDirectories: true)
        }
        try fm.createDirectory(atPath: tmp + "/net.d", withIntermediateDirectories: true)
        try fm.copyItem(atPath: "/bin/busybox", toPath: rootfs + "/bin/busybox")
        for applet in ["sh", "httpd", "wget", "ping", "sleep"] {
            try fm.createSymbolicLink(atPath: rootfs + "/bin/" + applet, withDestinationPath: "busybox")
        }
        try "hello-through-ebpf\n".write(toFile: rootfs + "/www/index.html", atomically: true, encoding: .utf8)

        // Private podman: its own config, network dir, storage and run dirs; the machine's config is untouched.
        try """
        [containers]
        default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
        [engine]
        runtime = "runc"
        cgroup_manager = "cgroupfs"
        events_logger = "file"
        tmp_dir = "\(tmp)/libpod-tmp"
        [network]
        network_backend = "cni"
        cni_plugin_dirs = ["\(Paths.buildDir)", "/usr/lib/cni"]
        network_config_dir = "\(tmp)/net.d"
        """.write(toFile: tmp + "/containers.conf", atomically: true, encoding: .utf8)
        let plugin = sandbox.config(subnet: "10.79.0.0/24")
        guard case let .object(members) = plugin else { return XCTFail() }
        let conflist: JSON = .object([
            ("cniVersion", .string("1.0.0")), ("name", .string(sandbox.network)),
            ("plugins", .array([.object(members.filter { $0.0 != "cniVersion" && $0.0 != "name" })])),
        ])
        try conflist.pretty.write(toFile: tmp + "/net.d/\(sandbox.network).conflist", atomically: true, encoding: .utf8)

        let env = ["CONTAINERS_CONF": tmp + "/containers.conf", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": tmp]
        // podman refuses a runroot longer than 50 characters, and TMPDIR may be deep (scripts/test
        // runs the suites in a directory of their own): the runroot lives directly under /tmp.
        let runroot = "/tmp/myc-run-\(getpid())-\(Unique.next())"
        defer { try? FileManager.default.removeItem(atPath: runroot) }
        let base = ["--root", tmp + "/storage", "--runroot", runroot]
        // Output goes to files, not pipes: `run -d` leaves conmon holding podman's stdout for the container's
        // whole life, and a pipe would never reach end-of-file.
        @discardableResult
        func podman(_ args: [String]) throws -> ProcessResult {
            let out = tmp + "/podman.out", err = tmp + "/podman.err"
            let quoted = (["/usr/bin/timeout", "120", "/usr/bin/podman"] + base + args).map { "'" + $0 + "'" }.joined(separator: " ")
            let r = try runProcess("/bin/sh", ["-c", "\(quoted) >'\(out)' 2>'\(err)' </dev/null"], env: env)
            return ProcessResult(status: r.status, stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                                 stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
        }
        let server = "mycA-\(getpid())"
        let saved = try sh("sysctl -n net.ipv4.ip_forward").trimmingCharacters(in: .whitespacesAndNewlines)
        try sh("sysctl -q -w net.ipv4.ip_forward=0")
        defer {
            _ = try? podman(["rm", "-f", "-t", "0", "--all"])
            _ = try? sh("sysctl -q -w net.ipv4.ip_forward=\(saved)")
            _ = try? sh("rm -rf '\(tmp)'", allowFailure: true)
        }

        let run = try podman(["run", "-d", "--name", server, "--network", sandbox.network, "--rootfs", rootfs,
                              "/bin/httpd", "-f", "-p", "8080", "-h", "/www"])
        XCTAssertEqual(run.status, 0, "podman run failed: \(run.stderr)")
        guard run.status == 0 else { return }
        let inspect = try podman(["inspect", server, "--format", "{{(index .NetworkSettings.Networks \"\(sandbox.network)\").IPAddress}}"])
        let serverIP = inspect.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertNotNil(IPv4Address(serverIP), "no address for the server container: \(inspect.stdout) \(inspect.stderr)")
        guard let ip = IPv4Address(serverIP) else { return }
        let dp = Datapath(pinDir: sandbox.pinDir)
        let before = try dp.stats(ip)

        let client = try podman(["run", "--rm", "--network", sandbox.network, "--rootfs", rootfs,
                                 "/bin/sh", "-c", "ping -c 2 -W 2 \(serverIP) && wget -qO- http://\(serverIP):8080/index.html"])
        XCTAssertEqual(client.status, 0, "client container failed: \(client.stdout) \(client.stderr)")
        XCTAssertTrue(client.stdout.contains("hello-through-ebpf"), client.stdout)
        let after = try dp.stats(ip)
        XCTAssertGreaterThan(after.rxPackets, before.rxPackets, "no packets counted into the server: \(after)")
        XCTAssertGreaterThan(after.txPackets, before.txPackets, "no packets counted out of the server: \(after)")
        XCTAssertEqual(sandbox.allocatedIPs(), [serverIP], "the client's address was not released by podman's DEL")

        try podman(["rm", "-f", "-t", "0", server])
        XCTAssertEqual(sandbox.allocatedIPs(), [], "podman rm did not release the server's address")
        // Podman passes the container ID as CNI_CONTAINERID: the server's host veth must be gone.
        let serverID = run.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertFalse(try PluginSandbox.hostVethExists(containerID: serverID), "the server's veth survived podman rm")
        XCTAssertNil(try dp.endpoint(ip))
    }
}
