// Unit tests of the simulator's parts: the linearizability checker, the network and the disk.

import MyceliumCore
import MyceliumSim
import XCTest

final class LinearizabilityTests: XCTestCase {
    func op(_ c: UInt32, _ k: RegisterOperation.Kind, _ a: Int64, _ b: Int64?) -> RegisterOperation {
        RegisterOperation(client: c, key: 0, kind: k, invoked: a, returned: b)
    }

    func testSequentialHistory() {
        XCTAssertTrue(Linearizability.isLinearizable(register: [
            op(1, .read(nil), 0, 1), op(1, .write(5), 2, 3), op(2, .read(5), 4, 5),
        ]))
    }

    func testStaleReadAfterWriteCompletedIsNotLinearizable() {
        XCTAssertFalse(Linearizability.isLinearizable(register: [
            op(1, .write(5), 0, 1), op(1, .write(6), 2, 3), op(2, .read(5), 4, 5),
        ]))
    }

    func testConcurrentOperationsMayTakeEitherOrder() {
        XCTAssertTrue(Linearizability.isLinearizable(register: [
            op(1, .write(1), 0, 10), op(2, .write(2), 1, 9), op(3, .read(1), 11, 12), op(3, .read(1), 13, 14),
        ]))
        // But once a read saw 1 after both writes ended, a later read cannot go back to 2.
        XCTAssertFalse(Linearizability.isLinearizable(register: [
            op(1, .write(1), 0, 10), op(2, .write(2), 1, 9), op(3, .read(1), 11, 12), op(3, .read(2), 13, 14),
        ]))
    }

    func testWriteWithoutReplyMayOrMayNotHaveHappened() {
        XCTAssertTrue(Linearizability.isLinearizable(register: [op(1, .write(7), 0, nil), op(2, .read(7), 5, 6)]))
        XCTAssertTrue(Linearizability.isLinearizable(register: [op(1, .write(7), 0, nil), op(2, .read(nil), 5, 6)]))
        // ...but it cannot un-happen.
        XCTAssertFalse(Linearizability.isLinearizable(register: [
            op(1, .write(7), 0, nil), op(2, .read(7), 5, 6), op(2, .read(nil), 7, 8),
        ]))
    }

    func testKeysAreCheckedSeparately() {
        var a = op(1, .write(1), 0, 1); a.key = 1
        var b = op(1, .read(nil), 2, 3); b.key = 2
        var bad = op(1, .read(9), 4, 5); bad.key = 3
        XCTAssertNil(Linearizability.firstViolation([a, b]))
        XCTAssertEqual(Linearizability.firstViolation([a, b, bad]), 3)
    }
}

final class SimNetworkAndDiskTests: XCTestCase {
    func testPartitionsAreDirectionalAndHeal() {
        var net = SimNetwork<Int>(faults: NetworkFaults(minDelay: 1, maxDelay: 1), random: SeededRandom(seed: 1))
        net.block(from: 1, to: 2)
        net.send(from: 1, to: 2, 10, now: 0)
        net.send(from: 2, to: 1, 20, now: 0)
        XCTAssertEqual(net.popDue(now: 1)?.payload, 20)
        XCTAssertNil(net.popDue(now: 1))
        net.heal()
        net.send(from: 1, to: 2, 30, now: 1)
        XCTAssertEqual(net.popDue(now: 2)?.payload, 30)
    }

    func testLossAndDuplication() {
        var net = SimNetwork<Int>(faults: NetworkFaults(lossProbability: 1), random: SeededRandom(seed: 1))
        net.send(from: 1, to: 2, 1, now: 0)
        XCTAssertEqual(net.inFlight, 0)
        net.faults = NetworkFaults(duplicateProbability: 1, minDelay: 1, maxDelay: 1)
        net.send(from: 1, to: 2, 1, now: 0)
        XCTAssertEqual(net.inFlight, 2)
    }

    func testDiskCompletesInOrderAndCrashLosesPendingWrites() {
        var disk = SimDisk<Int>(minLatency: 5, maxLatency: 5, random: SeededRandom(seed: 1))
        disk.submit(1, now: 0)
        disk.submit(2, now: 1)
        XCTAssertNil(disk.popCompleted(now: 4))
        XCTAssertEqual(disk.popCompleted(now: 5), 1)
        disk.crash()
        XCTAssertNil(disk.popCompleted(now: 100))
        XCTAssertEqual(disk.lostWrites, 1)
    }
}
