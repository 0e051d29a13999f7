import MyceliumCore
import MyceliumRaft
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

    func testRaftWireRoundTripsAndRefusesGarbage() throws {
        let msgs: [Message] = [
            Message(from: 1, to: 2, term: 3, kind: .preVote(lastIndex: 4, lastTerm: 5)),
            Message(from: 1, to: 2, term: 3, kind: .append(prevIndex: 9, prevTerm: 2, entries: [Entry(term: 3, index: 10, data: [1, 2])], commit: 8)),
            Message(from: 1, to: 2, term: 3, kind: .appendResponse(success: false, index: 9, hintIndex: 5, hintTerm: 1)),
            Message(from: 1, to: 2, term: 3, kind: .heartbeat(commit: 8, readRound: 2)),
            Message(from: 1, to: 2, term: 3, kind: .timeoutNow),
        ]
        for m in msgs { XCTAssertEqual(try RaftWire.decode(RaftWire.encode(m)), m) }
        var rng = SeededRandom(seed: 8)
        for _ in 0..<2000 {
            let b = (0..<Int.random(in: 0...60, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if let m = try? RaftWire.decode(b) { XCTAssertEqual(RaftWire.encode(m), b) }
        }
    }
}
