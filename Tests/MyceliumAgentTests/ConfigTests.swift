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
}
