import Foundation
import XCTest

/// Drives the real `mycelium` binary, as an operator would, and checks output, files and errors.
final class CLITests: XCTestCase {
    var home = ""
    override func setUp() { home = NSTemporaryDirectory() + "myc-cli-\(UUID().uuidString)" }
    override func tearDown() { try? FileManager.default.removeItem(atPath: home) }

    struct Result { var status: Int32; var out: String; var err: String }

    /// The binary sits next to the test bundle in the build directory.
    var binary: String {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("mycelium").path) && dir.path != "/" {
            dir = dir.deletingLastPathComponent()
        }
        return dir.appendingPathComponent("mycelium").path
    }

    @discardableResult
    func cli(_ args: [String], home h: String? = nil) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["MYCELIUM_HOME"] = h ?? home
        p.environment = env
        let o = Pipe(), e = Pipe()
        p.standardOutput = o
        p.standardError = e
        try p.run()
        let out = o.fileHandleForReading.readDataToEndOfFile(), err = e.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, out: String(decoding: out, as: UTF8.self), err: String(decoding: err, as: UTF8.self))
    }

    func json(_ r: Result) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any], r.out)
    }

    func testIdentityLifecycleAndErrors() throws {
        let created = try json(cli(["identity", "init", "-o", "json"]))
        let id = try XCTUnwrap(created["node_id"] as? String)
        XCTAssertTrue(id.hasPrefix("node-"))
        let attrs = try FileManager.default.attributesOfItem(atPath: home + "/node.key")
        XCTAssertEqual((attrs[.posixPermissions] as? NSNumber)?.intValue, 0o600)

        let shown = try json(cli(["identity", "show", "-o", "json"]))
        XCTAssertEqual(shown["node_id"] as? String, id)

        let again = try cli(["identity", "init"])
        XCTAssertNotEqual(again.status, 0)
        XCTAssertTrue(again.err.contains("already exists") && again.err.contains("hint:"), again.err)

        chmod(home + "/node.key", 0o644)
        let loose = try cli(["identity", "show"])
        XCTAssertNotEqual(loose.status, 0)
        XCTAssertTrue(loose.err.contains("chmod 0600"), loose.err)
    }

    func testNetworkInviteAndCertificate() throws {
        let net = try json(cli(["network", "create", "-o", "json"]))
        let netID = try XCTUnwrap(net["network_id"] as? String)

        let noAddress = try cli(["invite", "create"])
        XCTAssertNotEqual(noAddress.status, 0)
        XCTAssertTrue(noAddress.err.contains("--address"), noAddress.err)

        let token = try cli(["invite", "create", "--address", "127.0.0.1:7946", "--ttl", "5m"]).out
            .trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(token.hasPrefix("myc-invite-"))
        let inspected = try json(cli(["invite", "inspect", token, "--network", netID, "-o", "json"]))
        XCTAssertEqual(inspected["status"] as? String, "valid")
        XCTAssertEqual(inspected["addresses"] as? [String], ["127.0.0.1:7946"])

        // A token for another network.
        let other = home + "-other"
        defer { try? FileManager.default.removeItem(atPath: other) }
        let otherNet = try json(cli(["network", "create", "-o", "json"], home: other))["network_id"] as! String
        let wrong = try cli(["invite", "inspect", token, "--network", otherNet])
        XCTAssertEqual(wrong.status, 1)
        XCTAssertTrue(wrong.out.contains("INVALID") && wrong.out.contains("network"), wrong.out)

        // A mistyped network ID is caught by its checksum.
        var typo = Array(netID); typo[8] = typo[8] == "a" ? "b" : "a"
        let mistyped = try cli(["invite", "inspect", token, "--network", String(typo)])
        XCTAssertNotEqual(mistyped.status, 0)
        XCTAssertTrue(mistyped.err.contains("mistyped"), mistyped.err)

        // A tampered token.
        var t = Array(token); let i = t.count - 20; t[i] = t[i] == "A" ? "B" : "A"
        let tampered = try cli(["invite", "inspect", String(t)])
        XCTAssertNotEqual(tampered.status, 0)

        let cert = try json(cli(["cert", "inspect", "-o", "json"]))
        XCTAssertEqual(cert["status"] as? String, "valid")
        XCTAssertEqual(cert["network_id"] as? String, netID)
        XCTAssertEqual(cert["roles"] as? String, "member,sclerotium-eligible,inviter")
    }

    func testHelpTeachesWithExamples() throws {
        for cmd in [["identity", "init"], ["network", "create"], ["invite", "create"], ["invite", "inspect"], ["cert", "inspect"], ["node", "join"]] {
            let r = try cli(cmd + ["--help"])
            XCTAssertEqual(r.status, 0)
            XCTAssertTrue(r.out.contains("Example"), "\(cmd) --help has no example")
        }
    }
}
