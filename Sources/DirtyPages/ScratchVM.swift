// Helpers that produce writes the engines can only see from outside this process's own threads:
// a guest vCPU (for the kvm engine) and a forked process (for the remote uffd engine). Tests and
// `mycelium-bench ram` use them; nothing in the replication path does.

import CDirtyPages

#if canImport(Glibc)
import Glibc
#endif

/// A KVM VM with one vCPU whose only memory slot (slot 0) is the caller's region, with dirty
/// logging and manual protect enabled. Its guest is a 16-bit real-mode program that increments the
/// first byte of each listed page, so it reaches pages 1...255 only (page 0 holds the program).
public final class ScratchKVM: @unchecked Sendable {
    // SAFETY (Sendable): `vm` is used from one thread at a time by contract (`writePages` blocks).
    private let vm: OpaquePointer
    public let pageCount: Int
    public static let maxGuestPage = Int(MDP_KVM_GUEST_MAX_PAGE)

    public init(region: UnsafeMutableRawBufferPointer) throws(DirtyPagesError) {
        let a = UInt(bitPattern: region.baseAddress)
        try DirtyTracker.checkAligned(a, region.count, .kvm, "create scratch VM")
        var v: OpaquePointer?
        // SAFETY: the caller keeps `region` mapped for the VM's life; KVM maps it as guest memory.
        let rc = mdp_kvm_vm_create(region.baseAddress, region.count, &v)
        guard rc == 0, let v else { throw dirtyPagesError(rc, engine: .kvm, operation: "create scratch VM") }
        vm = v
        pageCount = region.count / dirtyPageSize
    }

    deinit { mdp_kvm_vm_destroy(vm) }

    public var vmDescriptor: Int32 { mdp_kvm_vm_fd(vm) }

    /// Runs the guest until it has written each page of `pages` (1...255), `repeat` times over.
    public func writePages(_ pages: [Int], repeat count: Int = 1) throws(DirtyPagesError) {
        guard pages.allSatisfy({ $0 >= 1 && $0 <= ScratchKVM.maxGuestPage && $0 < pageCount }), count >= 1, count <= 0xFFFF else {
            throw DirtyPagesError(.invalidArgument("guest pages must be in 1...\(ScratchKVM.maxGuestPage) and below \(pageCount)"),
                                  engine: .kvm, operation: "guest write")
        }
        let list = pages.map { UInt16($0) }
        // SAFETY: `list` outlives the call; the C side copies it into guest page 0 before running.
        let rc = list.withUnsafeBufferPointer { mdp_kvm_vm_write_pages(vm, $0.baseAddress, UInt32($0.count), UInt32(count)) }
        if rc != 0 { throw dirtyPagesError(rc, engine: .kvm, operation: "guest write") }
    }
}

/// A forked child process that maps the caller's shared region (inherited across fork) and writes
/// pages of it on command: the stand-in for QEMU in remote-tracking tests. With `register`, the
/// child registers the range for async write-protect first, as the preload shim would.
public final class ForkedWriter: @unchecked Sendable {
    // SAFETY (Sendable): commands are strictly request/acknowledge; callers use one thread at a time.
    private var child: OpaquePointer?
    public let pid: Int32

    public init(sharedRegion: UnsafeMutableRawBufferPointer, register: Bool) throws(DirtyPagesError) {
        var c: OpaquePointer?
        // SAFETY: the region must be MAP_SHARED so the parent sees the child's writes; the child only
        // writes inside it, at indexes checked against its length.
        let rc = mdp_child_spawn(sharedRegion.baseAddress, sharedRegion.count, register ? 1 : 0, &c)
        guard rc == 0, let c else { throw dirtyPagesError(rc, engine: .uffdRemote, operation: "spawn writer") }
        child = c
        pid = mdp_child_pid(c)
    }

    deinit { stop() }

    /// Has the child increment the first 8 bytes of each page, and waits until it has.
    public func writePages(_ pages: [Int]) throws(DirtyPagesError) {
        guard let c = child else { throw DirtyPagesError(.stopped, engine: .uffdRemote, operation: "child write") }
        let list = pages.map { UInt32($0) }
        // SAFETY: `list` outlives the call; it is copied into a socket.
        let rc = list.withUnsafeBufferPointer { mdp_child_write_pages(c, $0.baseAddress, UInt32($0.count)) }
        if rc != 0 { throw dirtyPagesError(rc, engine: .uffdRemote, operation: "child write") }
    }

    public func stop() {
        if let c = child { mdp_child_stop(c) }
        child = nil
    }
}
