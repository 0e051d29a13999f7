import Foundation
@testable import K3sController
@testable import K3sDriver
import MyceliumControl
import NIOSSL
import Synchronization
import XCTest

/// The Kubernetes API over TLS with a kubeconfig shaped like the one K3s writes (inline base64 CA,
/// client certificate and EC key; the admin is authenticated by its certificate), against the
/// stand-in API server (K3s cannot run here) serving https and requiring a client certificate.
/// Certificates are made with the openssl CLI for the test.
final class K3sTLSTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "myc-k3s-tls-\(UUID().uuidString.prefix(8).lowercased())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func sh(_ cmd: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "cd '\(dir)' && " + cmd]
        let e = Pipe()
        p.standardError = e
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let err = e.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        if p.terminationStatus != 0 { throw KubeError("\(cmd): \(String(decoding: err, as: UTF8.self))") }
    }

    func b64(_ file: String) throws -> String { try Data(contentsOf: URL(fileURLWithPath: dir + "/" + file)).base64EncodedString() }

    func testApplyAndListOverTLSWithAClientCertificate() async throws {
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        try sh("openssl req -x509 \(ec) -keyout ca.key -out ca.crt -days 1 -subj /CN=k3s-server-ca 2>/dev/null")
        try sh("printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext")
        try sh("openssl req \(ec) -keyout server.key -out server.csr -subj /CN=k3s 2>/dev/null")
        try sh("openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 1 -extfile san.ext 2>/dev/null")
        try sh("openssl req \(ec) -keyout admin.key -out admin.csr -subj '/O=system:masters/CN=system:admin' 2>/dev/null")
        try sh("openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 1 2>/dev/null")

        var server = TLSConfiguration.makeServerConfiguration(certificateChain: try NIOSSLCertificate.fromPEMFile(dir + "/server.crt").map { .certificate($0) },
                                                              privateKey: .privateKey(try NIOSSLPrivateKey(file: dir + "/server.key", format: .pem)))
        server.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(dir + "/ca.crt"))
        server.certificateVerification = .noHostnameVerification  // a client certificate is required
        let api = StandInAPIServer()
        try api.start(tls: try NIOSSLContext(configuration: server))
        defer { api.stop() }

        func kubeconfig(withClientCertificate: Bool) throws -> String {
            var user = ""
            if withClientCertificate {
                user = "    client-certificate-data: \(try b64("admin.crt"))\n    client-key-data: \(try b64("admin.key"))\n"
            } else {
                user = "    username: nobody\n"
            }
            let text = """
                apiVersion: v1
                clusters:
                - cluster:
                    certificate-authority-data: \(try b64("ca.crt"))
                    server: https://127.0.0.1:\(api.port)
                  name: default
                contexts:
                - context:
                    cluster: default
                    user: default
                  name: default
                current-context: default
                kind: Config
                preferences: {}
                users:
                - name: default
                  user:

                """ + user
            let path = dir + (withClientCertificate ? "/k3s.yaml" : "/anonymous.yaml")
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }

        let reports = Mutex<[K3sReport]>([])
        let driver = try K3sDriver(directory: dir + "/k3s", kubeconfig: try kubeconfig(withClientCertificate: true))
        driver.reportTo { r in reports.withLock { $0.append(r) } }
        let manifest = K3sWorkload.manifest(ServiceRecord(spec: ServiceSpec(name: "web", driver: .k3s, image: "nginx", replicas: 1), generation: 1))
        try await driver.perform(.apply(manifest))
        XCTAssertEqual(reports.withLock { $0.last }, .applied(name: "web", generation: 1))
        try await driver.perform(.sync)
        XCTAssertEqual(reports.withLock { $0.last }, .workloads([K3sObservedWorkload(name: "web", generation: 1, ready: 0)]))
        XCTAssertEqual(api.requests.map(\.method), ["PATCH", "PATCH", "GET"])
        XCTAssertEqual(api.requests.map(\.authorization), ["", "", ""], "authenticated by the certificate, no bearer token")

        // Without a client certificate the server refuses the handshake: said, not hidden.
        let anonymous = try K3sDriver(directory: dir + "/k3s-anon", kubeconfig: try kubeconfig(withClientCertificate: false))
        anonymous.reportTo { r in reports.withLock { $0.append(r) } }
        try await anonymous.perform(.sync)
        guard case .apiUnavailable(let why)? = reports.withLock({ $0.last }) else { return XCTFail("\(reports.withLock { $0 })") }
        XCTAssertTrue(why.contains("GET"), why)
        XCTAssertEqual(api.requests.count, 3, "no request got through without a certificate")
        await driver.stopAll(); await anonymous.stopAll()
    }
}
