import XCTest
@testable import ServiceRuntime

final class HealthCounterTests: XCTestCase {
    func testThresholdFailuresMakeUnhealthyAndOneSuccessHeals() {
        var c = HealthCounter(threshold: 3)
        XCTAssertEqual(c.health, .unknown)
        XCTAssertNil(c.recordFailure("refused"))
        XCTAssertNil(c.recordFailure("refused"))
        XCTAssertEqual(c.health, .unknown)
        XCTAssertEqual(c.recordFailure("refused"), .unhealthy("refused"))
        XCTAssertNil(c.recordFailure("refused"), "the same verdict is not a change")
        XCTAssertEqual(c.recordFailure("timeout"), .unhealthy("timeout"), "a new reason replaces the old one")
        XCTAssertEqual(c.recordSuccess(), .healthy)
        XCTAssertEqual(c.consecutiveFailures, 0)
        XCTAssertNil(c.recordSuccess())
    }

    func testFailuresBelowThresholdKeepHealthy() {
        var c = HealthCounter(threshold: 2)
        XCTAssertEqual(c.recordSuccess(), .healthy)
        XCTAssertNil(c.recordFailure("x"))
        XCTAssertEqual(c.health, .healthy)
        XCTAssertNil(c.recordSuccess(), "a success resets the count")
        XCTAssertNil(c.recordFailure("x"))
        XCTAssertEqual(c.recordFailure("y"), .unhealthy("y"))
    }

    func testZeroThresholdCountsAsOne() {
        var c = HealthCounter(threshold: 0)
        XCTAssertEqual(c.threshold, 1)
        XCTAssertEqual(c.recordFailure("down"), .unhealthy("down"))
    }

    func testHTTPStatusLine() {
        func p(_ s: String) -> HTTPStatusLine.Parse { HTTPStatusLine.parse(Array(s.utf8)) }
        XCTAssertEqual(p("HTTP/1.1 200 OK\r\n"), .status(200))
        XCTAssertEqual(p("HTTP/1.0 302\r\n"), .status(302))
        XCTAssertEqual(p("HTTP/1.1 503 "), .status(503))
        XCTAssertEqual(p("HTTP/1.1 503"), .needMore, "a longer code could follow")
        XCTAssertEqual(p("HTTP/1.1 20"), .needMore)
        XCTAssertEqual(p("HTT"), .needMore)
        XCTAssertEqual(p(""), .needMore)
        XCTAssertEqual(p("SSH-2.0-OpenSSH\r\n"), .malformed)
        XCTAssertEqual(p("HTTP/1.1 2x0 OK"), .malformed)
        XCTAssertEqual(p("HTTP/1.1 099 OK"), .malformed)
        XCTAssertEqual(p("HTTP/1.1 2000 OK"), .malformed)
        XCTAssertEqual(p("HTTP/2 200 OK\r\n"), .malformed)
    }

    func testIDValidation() {
        XCTAssertTrue(InstanceSpec.isValidID("web-0"))
        XCTAssertTrue(InstanceSpec.isValidID(String(repeating: "a", count: 80)))
        XCTAssertFalse(InstanceSpec.isValidID(String(repeating: "a", count: 81)))
        XCTAssertFalse(InstanceSpec.isValidID(""))
        XCTAssertFalse(InstanceSpec.isValidID("Web-0"))
        XCTAssertFalse(InstanceSpec.isValidID("web_0"))
        XCTAssertFalse(InstanceSpec.isValidID("../x"))
        XCTAssertFalse(InstanceSpec.isValidID("-web"))
    }

    func testPathSearchCandidates() {
        XCTAssertEqual(Spawner.candidates(for: "sleep", path: "/a:/b"), ["/a/sleep", "/b/sleep"])
        XCTAssertEqual(Spawner.candidates(for: "sleep", path: "/a::/b"), ["/a/sleep", "sleep", "/b/sleep"])
        XCTAssertEqual(Spawner.candidates(for: "./run.sh", path: "/a"), ["./run.sh"])
        XCTAssertEqual(Spawner.candidates(for: "/bin/sh", path: "/a"), ["/bin/sh"])
    }
}
