// The VM tests' XCTest glue over VMHarness (scripts/vmhost hosts, the scripts/vm-guest guest,
// serial logs), which `mycelium-bench vm` shares without XCTest.

@_exported import VMHarness
import Foundation
import XCTest

/// These tests run libvirtd in network namespaces and QEMU guests: not being root, or lacking QEMU or
/// libvirt, is a failure with the reason, never a skip.
public func requireRootAndQEMU(file: StaticString = #filePath, line: UInt = #line) throws {
    if getuid() != 0 {
        XCTFail("VMHostTests must run as root: they create network namespaces and bind mounts and run libvirtd and QEMU", file: file, line: line)
        throw HarnessFailure("not root")
    }
    for tool in ["/usr/bin/qemu-system-x86_64", "/usr/sbin/libvirtd", "/usr/sbin/virtlogd", "/usr/bin/virsh"] where access(tool, X_OK) != 0 {
        XCTFail("VMHostTests need \(tool): run scripts/setup (qemu-system-x86, libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients)",
                file: file, line: line)
        throw HarnessFailure("missing \(tool)")
    }
}

/// Hosts for one test, torn down by `down()` (call it in a defer): whatever is left fails the test.
public final class TestHosts: VMHosts {
    public func down(file: StaticString = #filePath, line: UInt = #line) {
        for problem in tearDown() { XCTFail(problem, file: file, line: line) }
    }
}
