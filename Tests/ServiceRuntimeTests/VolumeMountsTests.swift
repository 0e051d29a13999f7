import Foundation
@testable import ServiceRuntime
import XCTest

/// A service volume on a real loop device with a real ext4 (we are root): attach makes the filesystem
/// once, data written through the mount survives a detach and a re-attach (no reformat), and nothing
/// is left behind (no mount, no loop device), also after a "crash" (an attach nobody detached, undone
/// by `cleanup` as the agent does when it starts).
final class VolumeMountsTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        guard getuid() == 0 else { throw XCTSkip("loop devices and mounts need root") }
        for tool in ["losetup", "mkfs.ext4", "blkid", "mount"] where !["/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"].contains(where: { FileManager.default.isExecutableFile(atPath: $0 + tool) }) {
            throw XCTSkip("\(tool) is not installed (scripts/setup installs e2fsprogs and util-linux)")
        }
        dir = NSTemporaryDirectory() + "mycelium-volmount-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() {
        guard !dir.isEmpty else { return }
        // Whatever a failed test left: unmount and detach, then remove the files.
        VolumeMounts(volumeDirectory: dir).cleanup()
        try? FileManager.default.removeItem(atPath: dir)
    }

    func makeImage(_ name: String, mib: Int = 64) throws -> String {
        let path = dir + "/" + name + ".img"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: nil))
        XCTAssertEqual(truncate(path, off_t(mib) << 20), 0)
        return path
    }

    func leftovers(_ m: VolumeMounts, _ name: String, image: String) -> [String] {
        var out: [String] = []
        if VolumeMounts.isMounted(m.mountPoint(name)) { out.append("mounted at \(m.mountPoint(name))") }
        out += m.loops(image).map { "loop \($0) over \(image)" }
        if FileManager.default.fileExists(atPath: m.mountPoint(name)) { out.append("mount point \(m.mountPoint(name)) still there") }
        return out
    }

    func testLocalVolumeKeepsItsDataAcrossDetachAndReattachAndLeavesNothingBehind() async throws {
        let image = try makeImage("data")
        let m = VolumeMounts(volumeDirectory: dir)
        let mp = try await m.attach("data", source: .file(path: image))
        XCTAssertEqual(mp, dir + "/mnt/data")
        XCTAssertTrue(VolumeMounts.isMounted(mp))
        XCTAssertEqual(m.loops(image).count, 1)
        // Attaching again is a no-op (a restarted instance).
        let second = try await m.attach("data", source: .file(path: image))
        XCTAssertEqual(second, mp)
        XCTAssertEqual(m.loops(image).count, 1)
        try Array("hello from the first mount\n".utf8).withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: mp + "/note.txt")) }
        XCTAssertEqual(m.detach("data"), [])
        XCTAssertEqual(leftovers(m, "data", image: image), [])

        // Re-attached: the filesystem is found (not made again) and the file is there.
        let again = try await m.attach("data", source: .file(path: image))
        XCTAssertEqual(try String(contentsOfFile: again + "/note.txt", encoding: .utf8), "hello from the first mount\n")
        let type = try VolumeMounts.run(["blkid", "-o", "value", "-s", "TYPE", m.loops(image)[0]], what: "type").trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(type, "ext4")
        XCTAssertEqual(m.detach("data"), [])
        XCTAssertEqual(leftovers(m, "data", image: image), [])
    }

    func testCleanupUndoesWhatACrashedAgentLeft() async throws {
        let a = try makeImage("a"), b = try makeImage("b")
        let before = VolumeMounts(volumeDirectory: dir)
        _ = try await before.attach("a", source: .file(path: a))
        _ = try await before.attach("b", source: .file(path: b))
        // A new agent: its VolumeMounts knows nothing but the system's state.
        let after = VolumeMounts(volumeDirectory: dir)
        XCTAssertEqual(after.cleanup(keep: ["b"]), [])
        XCTAssertEqual(leftovers(after, "a", image: a), [])
        XCTAssertTrue(VolumeMounts.isMounted(after.mountPoint("b")), "kept")
        XCTAssertEqual(after.cleanup(), [])
        XCTAssertEqual(leftovers(after, "b", image: b), [])
    }

    func testErrorsSayWhatIsWrong() async throws {
        let m = VolumeMounts(volumeDirectory: dir)
        do {
            _ = try await m.attach("gone", source: .file(path: dir + "/gone.img"))
            XCTFail("attached a missing file")
        } catch {
            XCTAssertTrue("\(error)".contains("not on this node"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: m.mountPoint("gone")), "a failed attach leaves nothing")
        do {
            _ = try await m.attach("c", source: .rbd(pool: "p", image: "c", cephConf: "/etc/ceph/ceph.conf", clientName: "client.admin"))
            XCTFail("attached Ceph without a fence")
        } catch {
            XCTAssertTrue("\(error)".contains("cannot fence"), "\(error)")
        }
    }
}
