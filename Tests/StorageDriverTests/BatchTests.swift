import StorageController
@testable import StorageDriver
import XCTest

/// How a plan's actions are batched for the monitor (pure: no cluster).
final class BatchTests: XCTestCase {
    func testBatchesKeepThePlannersOrderAndChainActionsOnOneObject() throws {
        let a: [StorageAction] = [
            .createRoot(root: "r1"), .createRoot(root: "r2"),
            .link(host: "h1", root: "r1"), .link(host: "h2", root: "r1"), .link(host: "h1", root: "r2"),
            .createRule(rule: "r1", root: "r1"),
            .createPool(pool: "p1", rule: "r1", pgCount: 32, size: 3), .setPoolMinSize(pool: "p1", minSize: 2),
            .enableApplication(pool: "p1", application: "rbd"), .setPoolSize(pool: "p2", size: 3),
            .unlink(host: "h3", root: "r1"),
            .setPoolMinSize(pool: "p1", minSize: 1), .setPoolSize(pool: "p1", size: 2),
        ]
        let b = CephStorageDriver.batches(a)
        XCTAssertEqual(b.count, 6, "roots, links, the rule, pool changes, the unlink, the shrink")
        XCTAssertEqual(b[0].count, 2)
        XCTAssertEqual(b[1].count, 3, "three independent links go together")
        XCTAssertEqual(b[3], [[.createPool(pool: "p1", rule: "r1", pgCount: 32, size: 3), .setPoolMinSize(pool: "p1", minSize: 2),
                               .enableApplication(pool: "p1", application: "rbd")], [.setPoolSize(pool: "p2", size: 3)]],
                       "one pool's steps stay in order in one chain")
        XCTAssertEqual(b[5], [[.setPoolMinSize(pool: "p1", minSize: 1), .setPoolSize(pool: "p1", size: 2)]], "a shrink comes after the unlink, min_size first")
        XCTAssertEqual(b.flatMap { $0.flatMap { $0 } }.count, a.count, "nothing lost or added")
        XCTAssertEqual(CephStorageDriver.batches([]).count, 0)
    }
}
