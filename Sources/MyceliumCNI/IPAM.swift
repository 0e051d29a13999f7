// Pod address management for one network on one node.
//
// State: a directory per network (`<dataDir>/<network>/`), holding
//   - `lock`: flock()ed exclusively for the whole of every ADD, DEL, CHECK and GC, so concurrent plugin
//     processes serialise (the kernel drops the lock when a process dies, so a crash never wedges it);
//   - one file per allocated address, named by the address (`10.244.1.7`), holding "containerID\nifname\n";
//   - `last_reserved`: the last address handed out, so allocation walks the range round-robin and a freed
//     address is not reused at once (a late packet for the old pod must not reach the new one).
// Every file is written temp + fsync + rename + fsync(dir) (MyceliumCore.AtomicFile): after a crash an
// address file either exists whole or not at all. An address is reserved (durably) before any interface is
// made; a crash after that leaves a reservation that the runtime's DEL, or a later GC, releases. An address
// file is only created when no file of that name exists, under the lock, so no address is ever given twice.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import MyceliumCore

/// One reserved address and who holds it.
public struct IPAllocation: Equatable, Sendable {
    public var ip: IPv4Address
    public var containerID: String
    public var ifname: String
}

/// The usable part of a pod CIDR.
public struct IPRange: Equatable, Sendable, CustomStringConvertible {
    public let subnet: IPv4CIDR
    public let first: IPv4Address
    public let last: IPv4Address

    /// The default range skips the network and broadcast addresses. `start`/`end` narrow it.
    public init(subnet: IPv4CIDR, start: IPv4Address? = nil, end: IPv4Address? = nil) throws(CNIError) {
        self.subnet = subnet
        let lo = IPv4Address(subnet.network.value + 1)
        let hi = IPv4Address(subnet.broadcast.value - 1)
        let f = start ?? lo
        let l = end ?? hi
        guard f >= lo, l <= hi, f <= l else {
            throw CNIError(.invalidConfig, "the address range \(f)-\(l) is not inside the usable part \(lo)-\(hi) of \(subnet)")
        }
        first = f
        last = l
    }

    public var count: Int { Int(last.value - first.value) + 1 }
    public func contains(_ a: IPv4Address) -> Bool { a >= first && a <= last }
    public var description: String { "\(first)-\(last) of \(subnet)" }

    /// The pod CIDR from the configuration, or else from the node's pod CIDR file (written by the agent from
    /// the primary spore's assignment). The file holds one CIDR, e.g. "10.244.3.0/24\n".
    public static func resolve(_ ipam: IPAMConfig) throws(CNIError) -> IPRange {
        if let s = ipam.subnet { return try IPRange(subnet: s, start: ipam.rangeStart, end: ipam.rangeEnd) }
        let bytes: [UInt8]
        do {
            bytes = try AtomicFile.read(ipam.podCIDRFile, limit: 256)
        } catch {
            if error.code == .notFound {
                throw CNIError(.noPodCIDR, "this node has no pod CIDR yet",
                               details: "set ipam.subnet in the network configuration, or let the node agent write \(ipam.podCIDRFile)")
            }
            throw CNIError(.ioFailure, "cannot read the node's pod CIDR", details: error.description)
        }
        let text = String(decoding: bytes, as: UTF8.self).trimmingWhitespace
        guard let c = IPv4CIDR(text), c.isNetworkAligned, c.prefixLength <= 30 else {
            throw CNIError(.invalidConfig, "\(ipam.podCIDRFile) holds \"\(text)\", not an IPv4 network such as 10.244.1.0/24")
        }
        return try IPRange(subnet: c, start: ipam.rangeStart, end: ipam.rangeEnd)
    }
}

extension String {
    var trimmingWhitespace: String {
        let u = Array(utf8)
        var a = 0, b = u.count
        while a < b, u[a] <= 0x20 { a += 1 }
        while b > a, u[b - 1] <= 0x20 { b -= 1 }
        return String(decoding: u[a..<b], as: UTF8.self)
    }
}

/// The on-disk allocation state of one network. Use it only inside `withLock`.
public struct IPAMStore: Sendable {
    public let directory: String

    public init(dataDir: String, network: String) {
        directory = dataDir.hasSuffix("/") ? dataDir + network : dataDir + "/" + network
    }

    /// Runs body holding the network's exclusive lock (blocking until other plugin processes are done).
    public func withLock<T>(_ body: (LockedIPAM) throws(CNIError) -> T) throws(CNIError) -> T {
        do {
            try AtomicFile.makeDirectory(directory, mode: 0o700)
        } catch {
            throw CNIError(.ioFailure, "cannot create the IPAM state directory", details: error.description)
        }
        let path = directory + "/lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        if fd < 0 {
            throw CNIError(.ioFailure, "cannot open the IPAM lock file", details: "\(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }  // closing drops the flock
        while flock(fd, LOCK_EX) != 0 {
            if errno == EINTR { continue }
            throw CNIError(.ioFailure, "cannot lock the IPAM state", details: "\(path): \(String(cString: strerror(errno)))")
        }
        return try body(LockedIPAM(directory: directory))
    }
}

/// IPAM operations, valid while the lock is held.
public struct LockedIPAM: Sendable {
    public let directory: String

    private func path(_ ip: IPv4Address) -> String { directory + "/" + ip.description }

    /// All allocations, by address. Files that are not addresses (lock, temp files) are skipped.
    public func allocations() throws(CNIError) -> [IPAllocation] {
        guard let dir = opendir(directory) else {
            throw CNIError(.ioFailure, "cannot list the IPAM state", details: "\(directory): \(String(cString: strerror(errno)))")
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if IPv4Address(name) != nil { names.append(name) }
        }
        var out: [IPAllocation] = []
        for name in names {
            let ip = IPv4Address(name)!
            out.append(try read(ip))
        }
        return out.sorted { $0.ip < $1.ip }
    }

    func read(_ ip: IPv4Address) throws(CNIError) -> IPAllocation {
        let bytes: [UInt8]
        do {
            bytes = try AtomicFile.read(path(ip), limit: 4096)
        } catch {
            throw CNIError(.ioFailure, "cannot read the allocation of \(ip)", details: error.description)
        }
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        // A file that does not parse still holds its address: it is never handed out, and GC can free it.
        let id = lines.count >= 2 ? String(lines[0]) : ""
        let ifname = lines.count >= 2 ? String(lines[1]) : ""
        return IPAllocation(ip: ip, containerID: id, ifname: ifname)
    }

    public func find(containerID: String, ifname: String) throws(CNIError) -> IPAllocation? {
        try allocations().first { $0.containerID == containerID && $0.ifname == ifname }
    }

    public func isAllocated(_ ip: IPv4Address) -> Bool { AtomicFile.exists(path(ip)) }

    /// Reserves an address for the attachment, durably, and returns it. An attachment that already holds one
    /// (an ADD retried after a crash) gets the same address back.
    public func reserve(in range: IPRange, containerID: String, ifname: String) throws(CNIError) -> (IPAllocation, reused: Bool) {
        if let existing = try find(containerID: containerID, ifname: ifname) {
            guard range.subnet.contains(existing.ip) else {
                throw CNIError(.invalidConfig, "\(containerID)/\(ifname) already holds \(existing.ip), outside the configured subnet \(range.subnet)",
                               details: "DEL the container before changing the network's subnet")
            }
            return (existing, true)
        }
        let last = lastReserved()
        let n = range.count
        // Start right after the last address handed out, wrap around, stop after one full lap.
        var start = 0
        if let last, range.contains(last) { start = Int(last.value - range.first.value) + 1 }
        for step in 0..<n {
            let candidate = IPv4Address(range.first.value + UInt32((start + step) % n))
            if isAllocated(candidate) { continue }
            let alloc = IPAllocation(ip: candidate, containerID: containerID, ifname: ifname)
            do {
                try AtomicFile.write(Array("\(containerID)\n\(ifname)\n".utf8), to: path(candidate), mode: 0o600)
            } catch {
                throw CNIError(.ioFailure, "cannot record the allocation of \(candidate)", details: error.description)
            }
            // Only a hint for the next allocation: replaced atomically (never torn) but not fsynced, since losing
            // it in a crash costs nothing but round-robin order, and an fsync is a few milliseconds of every ADD.
            writeHint(candidate.description, to: directory + "/last_reserved")
            return (alloc, false)
        }
        throw CNIError(.addressRangeExhausted, "no free pod address: all \(n) addresses of \(range) are allocated",
                       details: "delete unused pods, run CNI GC to free leaked addresses, or give the network a larger ipam.subnet")
    }

    private func writeHint(_ text: String, to path: String) {
        let tmp = path + ".tmp.\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let bytes = Array(text.utf8)
        let ok = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count
        close(fd)
        if !ok || rename(tmp, path) != 0 { unlink(tmp) }
    }

    func lastReserved() -> IPv4Address? {
        guard let b = try? AtomicFile.read(directory + "/last_reserved", limit: 64) else { return nil }
        return IPv4Address(String(decoding: b, as: UTF8.self).trimmingWhitespace)
    }

    /// Frees an address. Idempotent.
    public func release(_ ip: IPv4Address) throws(CNIError) {
        if unlink(path(ip)) != 0 && errno != ENOENT {
            throw CNIError(.ioFailure, "cannot release \(ip)", details: "\(path(ip)): \(String(cString: strerror(errno)))")
        }
        do {
            try AtomicFile.syncDirectory(directory)
        } catch {
            throw CNIError(.ioFailure, "cannot persist the release of \(ip)", details: error.description)
        }
    }

    /// Removes temp files left by a crash in the middle of an atomic write (`<name>.tmp.<pid>`) whose writer is gone.
    public func removeStaleTempFiles() {
        guard let dir = opendir(directory) else { return }
        var stale: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            guard let r = name.firstRange(of: ".tmp."), let pid = Int32(name[r.upperBound...]) else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { stale.append(name) }
        }
        closedir(dir)
        for name in stale { unlink(directory + "/" + name) }
    }
}
