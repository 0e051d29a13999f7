import Foundation
import XCTest

/// `mycelium doctor` tells an operator which service drivers this machine offers and why one is
/// missing: with no `k3s` on PATH (as on the project's machines, where K3s cannot be installed) it
/// says exactly that. The checks against a running agent are in MyceliumAgentTests/OperatorProcessTests.
extension CLITests {
    func doctor(path: String, _ args: [String] = []) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["doctor"] + args
        var env = ProcessInfo.processInfo.environment
        env["PATH"] = path
        p.environment = env
        let o = Pipe(), e = Pipe()
        p.standardOutput = o
        p.standardError = e
        try p.run()
        let out = o.fileHandleForReading.readDataToEndOfFile(), err = e.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, out: String(decoding: out, as: UTF8.self), err: String(decoding: err, as: UTF8.self))
    }

    func testDoctorSaysWhyTheK3sDriverIsMissing() throws {
        let bin = home + "/bin"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        // A home with no membership: the network checks are skipped, not failed.
        let r = try doctor(path: bin, ["--home", home])
        let lines = r.out.split(separator: "\n").map(String.init)
        XCTAssertTrue(lines.contains { $0.hasPrefix("OK    driver.process") }, r.out)
        XCTAssertTrue(lines.contains { $0.hasPrefix("SKIP  driver.k3s") && $0.contains("missing: no `k3s` binary on PATH (\(bin)): K3s is not installed on this machine, so this node does not offer the k3s driver") }, r.out)
        XCTAssertTrue(lines.contains { $0.hasPrefix("SKIP  agent.api") }, r.out)
        XCTAssertTrue(lines.last?.contains("failure(s)") == true, r.out)

        // A k3s on PATH (a stand-in script) is found, as the agent would find it.
        try "#!/bin/sh\nexit 0\n".write(toFile: bin + "/k3s", atomically: true, encoding: .utf8)
        chmod(bin + "/k3s", 0o755)
        let out = try doctor(path: bin, ["--home", home, "-o", "json"]).out
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out[try XCTUnwrap(out.firstIndex(of: "{"))...].utf8)) as? [String: Any])
        let k3s = try XCTUnwrap((j["checks"] as? [[String: Any]])?.first { $0["check"] as? String == "driver.k3s" })
        XCTAssertEqual(k3s["verdict"] as? String, "ok")
        XCTAssertTrue((k3s["detail"] as? String)?.contains(bin + "/k3s") == true)
    }

    func testDoctorHelpTeaches() throws {
        let r = try doctor(path: "/usr/bin:/bin", ["--help"])
        XCTAssertEqual(r.status, 0)
        for s in ["--all", "-o", "disk.fsync", "etcdctl check perf", "leftover.*", "code is 1 if any check failed"] { XCTAssertTrue(r.out.contains(s), "help mentions \(s):\n\(r.out)") }
    }
}
