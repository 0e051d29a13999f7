import Foundation
import XCTest

/// Nobody unauthenticated writes the KV: with client_cert_file, client_key_file and
/// client_trusted_ca_file the agent serves it over TLS to clients holding a certificate from the
/// trusted CA only (etcd's --client-cert-auth), and off loopback it does not start without them.
/// Real myceliumd processes, certificates made by the openssl CLI, requests made by curl.
final class KVTLSTests: XCTestCase {
    /// Runs a program to completion; its stdout and stderr together.
    @discardableResult
    func run(_ program: String, _ args: [String], in dir: String? = nil) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: program)
        p.arguments = args
        if let dir { p.currentDirectoryURL = URL(fileURLWithPath: dir) }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text)
    }

    /// A CA and a certificate it signs for `name` (a server's with 127.0.0.1 as its address, or a client's).
    func makeCA(_ name: String, in dir: String) throws {
        let (code, out) = try run("/usr/bin/openssl", [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "\(name).key", "-out", "\(name).pem", "-days", "2", "-subj", "/CN=\(name)",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"], in: dir)
        XCTAssertEqual(code, 0, out)
    }

    func makeCertificate(_ name: String, ca: String, server: Bool, in dir: String) throws {
        let ext = server ? "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" : "extendedKeyUsage=clientAuth\n"
        try ext.write(toFile: dir + "/\(name).ext", atomically: true, encoding: .utf8)
        var (code, out) = try run("/usr/bin/openssl", [
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "\(name).key", "-out", "\(name).csr", "-subj", "/CN=\(name)"], in: dir)
        XCTAssertEqual(code, 0, out)
        (code, out) = try run("/usr/bin/openssl", [
            "x509", "-req", "-in", "\(name).csr", "-CA", "\(ca).pem", "-CAkey", "\(ca).key", "-set_serial", "\(UInt32.random(in: 1...UInt32.max))",
            "-days", "2", "-out", "\(name).pem", "-extfile", "\(name).ext"], in: dir)
        XCTAssertEqual(code, 0, out)
    }

    func testTheKVOverTLSServesOnlyClientsWithACertificateFromTheTrustedCA() async throws {
        let pki = NSTemporaryDirectory() + "myc-kvtls-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: pki, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: pki) }
        try makeCA("ca", in: pki)
        try makeCertificate("server", ca: "ca", server: true, in: pki)
        try makeCertificate("client", ca: "ca", server: false, in: pki)
        // A client certificate that is perfectly valid, but from a CA the agent does not trust.
        try makeCA("otherca", in: pki)
        try makeCertificate("stranger", ca: "otherca", server: false, in: pki)

        let c = try AgentCluster()
        defer { c.shutdown() }
        let port = c.port("n1") + 10
        c.extraConfig = { _ in
            """
            client_listen = "127.0.0.1:\(port)"
            client_cert_file = "\(pki)/server.pem"
            client_key_file = "\(pki)/server.key"
            client_trusted_ca_file = "\(pki)/ca.pem"

            """
        }
        try c.createNetwork()

        let key = Data("service/db".utf8).base64EncodedString()
        func curl(_ path: String, _ body: String, _ auth: [String]) throws -> (code: Int32, http: String, body: String) {
            let (code, out) = try run("/usr/bin/curl", ["-s", "-m", "10", "-w", "\n%{http_code}", "--cacert", pki + "/ca.pem"] + auth
                                      + ["-X", "POST", "-d", body, "https://127.0.0.1:\(port)\(path)"])
            let lines = out.split(separator: "\n", omittingEmptySubsequences: false)
            return (code, String(lines.last ?? ""), lines.dropLast().joined(separator: "\n"))
        }
        let trusted = ["--cert", pki + "/client.pem", "--key", pki + "/client.key"]
        func put(_ value: String, _ auth: [String]) throws -> (code: Int32, http: String, body: String) {
            try curl("/v3/kv/put", "{\"key\":\"\(key)\",\"value\":\"\(Data(value.utf8).base64EncodedString())\"}", auth)
        }

        // The single-node network elects itself; the KV answers once it leads.
        var first = (code: Int32(0), http: "", body: "")
        try await waitUntil("the KV answers a client with a trusted certificate", timeout: 45, poll: 0.2) {
            first = try put("10.0.0.7:5432", trusted)
            return first.http == "200"
        }
        XCTAssertTrue(first.body.contains("revision"), first.body)
        let got = try curl("/v3/kv/range", "{\"key\":\"\(key)\"}", trusted)
        XCTAssertEqual(got.http, "200", got.body)
        XCTAssertTrue(got.body.contains(Data("10.0.0.7:5432".utf8).base64EncodedString()), got.body)

        // No client certificate: the handshake fails, nothing is written.
        let anonymous = try put("6.6.6.6:1", [])
        XCTAssertNotEqual(anonymous.code, 0, "curl without a client certificate must fail: \(anonymous)")
        XCTAssertEqual(anonymous.http, "000", "no HTTP answer without a client certificate: \(anonymous)")
        // A certificate from another CA: refused the same way.
        let stranger = try put("6.6.6.6:2", ["--cert", pki + "/stranger.pem", "--key", pki + "/stranger.key"])
        XCTAssertNotEqual(stranger.code, 0, "a client certificate from an untrusted CA must be refused: \(stranger)")
        XCTAssertEqual(stranger.http, "000", "\(stranger)")
        // Plain HTTP on the TLS port gets no KV answer either.
        let (_, plain) = try run("/usr/bin/curl", ["-s", "-m", "10", "-w", "\n%{http_code}", "-X", "POST", "-d", "{\"key\":\"\(key)\"}",
                                                  "http://127.0.0.1:\(port)/v3/kv/range"])
        XCTAssertFalse(plain.hasSuffix("200"), plain)

        let after = try curl("/v3/kv/range", "{\"key\":\"\(key)\"}", trusted)
        XCTAssertEqual(after.http, "200", after.body)
        XCTAssertTrue(after.body.contains(Data("10.0.0.7:5432".utf8).base64EncodedString()), "the refused clients wrote nothing: \(after.body)")
        XCTAssertFalse(after.body.contains(Data("6.6.6.6".utf8).base64EncodedString().prefix(8)), after.body)
    }

    /// client_listen on every address without TLS: myceliumd refuses to start and names the settings to add.
    func testAnOpenClientListenWithoutTLSKeepsTheAgentFromStarting() async throws {
        let c = try AgentCluster()
        defer { c.shutdown() }
        try c.writeConfig("n1", extra: "client_listen = \"0.0.0.0:\(c.port("n1") + 10)\"\n")
        try c.start("n1")
        let p = try XCTUnwrap(c.processes["n1"])
        try await waitUntil("myceliumd refuses the configuration", timeout: 30) { !p.isRunning }
        XCTAssertNotEqual(p.terminationStatus, 0)
        let log = (try? String(contentsOfFile: c.home("n1") + ".log", encoding: .utf8)) ?? ""
        XCTAssertTrue(log.contains("not a loopback address") && log.contains("client_cert_file, client_key_file and client_trusted_ca_file"), log)
        c.processes["n1"] = nil
    }
}
