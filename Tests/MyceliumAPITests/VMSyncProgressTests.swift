import MyceliumAPI
import XCTest

/// A VM's sync bytes in the API (optional: an older agent omits them) and what a progress bar makes of them.
final class VMSyncProgressTests: XCTestCase {
    func testSyncBytesRoundTripAndBecomeABarWithRateAndETA() throws {
        var r = VMReplicationInfo(committedEpoch: 0, rpoMilliseconds: nil, pauseP50Milliseconds: nil, pauseP99Milliseconds: nil,
                                  epochsLastMinute: 0, bytesPerSecond: nil, throttlePercent: nil)
        XCTAssertNil(r.syncProgress, "not syncing")
        let old = String(decoding: try APIJSON.encode(r), as: UTF8.self)
        XCTAssertFalse(old.contains("sync_bytes"), old)
        r.syncBytesDone = 256 << 20
        r.syncBytesTotal = 1 << 30
        let text = String(decoding: try APIJSON.encode(r), as: UTF8.self)
        XCTAssertTrue(text.contains("\"sync_bytes_done\"") && text.contains("\"sync_bytes_total\""), text)
        XCTAssertEqual(try APIJSON.decode(VMReplicationInfo.self, from: Array(text.utf8)), r)
        XCTAssertNil(try APIJSON.decode(VMReplicationInfo.self, from: Array(old.utf8)).syncBytesDone, "an older agent's answer decodes")

        let p = try XCTUnwrap(r.syncProgress)
        XCTAssertEqual(p.done, Double(256 << 20))
        XCTAssertEqual(p.total, Double(1 << 30))
        // What `vm migrate` shows after 2 s: a quarter done, 128 MiB/s, 6 s to go.
        let s = ProgressState(label: "migrating vm1", done: p.done, total: p.total, elapsed: 2, unit: .bytes, phase: "copying memory to the replica")
        XCTAssertEqual(ProgressLine.fraction(s), 0.25)
        XCTAssertEqual(ProgressLine.eta(s), 6)
        let line = ProgressLine.terminal(s, width: 120)
        XCTAssertTrue(line.contains("25%") && line.contains("256.0 MiB/1.0 GiB") && line.contains("128.0 MiB/s") && line.contains("ETA 0:06"), line)

        r.syncBytesTotal = 0
        XCTAssertNil(r.syncProgress, "no total: no bar")
    }
}
