import MyceliumCore
import XCTest
@testable import MyceliumAgent

final class ConfigTests: XCTestCase {
    func testDefaultsAndRoundTripThroughTheDocumentedFile() throws {
        let c = AgentConfig()
        XCTAssertNoThrow(try c.validate())
        let parsed = try AgentConfig.parse(c.rendered())
        XCTAssertEqual(parsed, c, "the printed config reads back as itself")
        for s in AgentConfig.settings { XCTAssertTrue(c.rendered().contains("# " + s.help), "\(s.key) is documented") }
    }

    func testValuesAndErrorsNameTheLine() throws {
        let c = try AgentConfig.parse("""
            # a comment
            home = "/srv/myc"   # trailing comment
            listen = "0.0.0.0:7946"
            seed_dirs = ["/mnt/a", "/mnt/b"]
            sclerotia = 5
            """, source: "x.conf")
        XCTAssertEqual(c.home, "/srv/myc")
        XCTAssertEqual(c.seedDirs, ["/mnt/a", "/mnt/b"])
        XCTAssertEqual(c.sclerotia, 5)

        func message(_ text: String) -> String {
            do { _ = try AgentConfig.parse(text, source: "x.conf"); return "" } catch { return error.message }
        }
        XCTAssertTrue(message("lisen = \"a:1\"").contains("x.conf:1: unknown setting 'lisen'"))
        XCTAssertTrue(message("\n\nsclerotia = \"three\"").contains("x.conf:3"))
        XCTAssertTrue(message("sclerotia = 9").contains("between 1 and 7"))
        XCTAssertTrue(message("home = \"a\"\nhome = \"b\"").contains("set twice"))
        XCTAssertTrue(message("listen = \"nohost\"").contains("not host:port"))
        XCTAssertTrue(message("heartbeat_ticks = 10\nelection_ticks = 5").contains("less than"))
        XCTAssertTrue(message("just words").contains("expected 'key = value'"))
    }

    /// The KV accepts writes: off loopback it needs TLS with client certificates, and the error says
    /// which settings to add; on loopback plain HTTP stays allowed; half a TLS setup is refused anywhere.
    func testClientListenOffLoopbackRequiresClientCertificates() throws {
        func message(_ text: String) -> String {
            do { _ = try AgentConfig.parse(text, source: "x.conf"); return "" } catch { return error.message }
        }
        for open in ["0.0.0.0:2379", "10.0.0.5:2379", "[::]:2379", "node.example:2379", "128.0.0.1:2379"] {
            let m = message("client_listen = \"\(open)\"")
            XCTAssertTrue(m.contains("not a loopback address") && m.contains("client_cert_file, client_key_file and client_trusted_ca_file"),
                          "\(open): \(m)")
        }
        for loopback in ["127.0.0.1:2379", "127.1.2.3:2379", "[::1]:2379", "localhost:2379"] {
            XCTAssertEqual(message("client_listen = \"\(loopback)\""), "", loopback)
        }
        let tls = "client_cert_file = \"/etc/m/server.pem\"\nclient_key_file = \"/etc/m/server.key\"\nclient_trusted_ca_file = \"/etc/m/ca.pem\"\n"
        let c = try AgentConfig.parse("client_listen = \"0.0.0.0:2379\"\n" + tls)
        XCTAssertTrue(c.clientTLSEnabled)
        XCTAssertEqual(c.clientTrustedCAFile, "/etc/m/ca.pem")
        XCTAssertEqual(try AgentConfig.parse(c.rendered()), c, "the TLS settings read back")
        let half = message("client_listen = \"127.0.0.1:2379\"\nclient_cert_file = \"/etc/m/server.pem\"")
        XCTAssertTrue(half.contains("half configured") && half.contains("client_key_file and client_trusted_ca_file"), half)
        var direct = AgentConfig()
        direct.clientListen = "192.168.1.4:2379"
        XCTAssertThrowsError(try direct.validate(), "validate() itself refuses, not only parse()")
        XCTAssertFalse(isLoopback("127.0.0.256"))
        XCTAssertFalse(isLoopback("127.0.0"))
    }
}
