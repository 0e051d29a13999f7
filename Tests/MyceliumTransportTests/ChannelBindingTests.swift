import Foundation
import MyceliumCore
import MyceliumIdentity
import NIOCore
import NIOPosix
import NIOSSL
import XCTest
@testable import MyceliumTransport

/// Our channel binding must be the RFC 9266 value every TLS stack computes, not merely a value both
/// of our own ends agree on. OpenSSL's s_client prints it with -keymatexport; compare.
final class ChannelBindingTests: XCTestCase {
    func testBindingMatchesOpenSSLExporter() async throws {
        let dir = NSTemporaryDirectory() + "myc-cb-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", dir + "/k.pem"])
        try run(["openssl", "req", "-x509", "-new", "-key", dir + "/k.pem", "-subj", "/CN=peer", "-days", "1", "-out", dir + "/c.pem"])

        let key = SigningKey()
        let (cert, sslKey) = try NodeTLS.selfSignedCertificate(key: key, nodeID: NodeID(publicKey: key.publicKey),
                                                               now: Int64(Date().timeIntervalSince1970))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let secrets = SessionSecrets()
        let server = try await ServerBootstrap(group: group)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    let ctx = try NIOSSLContext(configuration: NodeTLS.configuration(server: true, certificate: cert, key: sslKey, secrets: secrets))
                    try ch.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: ctx, customVerificationCallback: pinningCallback(secrets)))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = server.localAddress!.port!

        let out = try run(["openssl", "s_client", "-connect", "127.0.0.1:\(port)", "-tls1_3", "-cert", dir + "/c.pem", "-key", dir + "/k.pem",
                           "-sigalgs", "ed25519", "-keymatexport", "EXPORTER-Channel-Binding", "-keymatexportlen", "32"])
        let line = try XCTUnwrap(out.split(separator: "\n").first(where: { $0.contains("Keying material:") }), out)
        let theirs = String(line.split(separator: ":").last!).trimmingCharacters(in: .whitespaces).lowercased()
        let ours = try XCTUnwrap(secrets.binding)
        XCTAssertEqual(hexString(ours), theirs)
        XCTAssertNotNil(secrets.peerKey, "the peer's Ed25519 key was captured")
        try await server.close()
        try await group.shutdownGracefully()
    }

    @discardableResult
    func run(_ argv: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = argv
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw NSError(domain: "exit \(p.terminationStatus): \(argv.joined(separator: " "))", code: 1) }
        return String(decoding: data, as: UTF8.self)
    }
}
