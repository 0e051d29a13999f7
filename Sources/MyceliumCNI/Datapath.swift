// Swift side of the eBPF datapath's userspace API (CSources/CDatapath/include/myc_datapath.h): load the
// programs once per node (idempotent) and register or remove pod endpoints in the pinned maps.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CDatapath

/// A datapath call that failed, with the library's sentence.
public struct DatapathError: Error, Sendable, CustomStringConvertible {
    public let errno: Int32
    public let message: String
    public var description: String { message }
}

/// One pod endpoint as the datapath stores it.
public struct DatapathEndpoint: Equatable, Sendable {
    public var ip: IPv4Address
    public var hostIfindex: UInt32
    public var networkId: UInt32
    public var podMAC: [UInt8]
    public var hostMAC: [UInt8]

    public init(ip: IPv4Address, hostIfindex: UInt32, networkId: UInt32, podMAC: [UInt8], hostMAC: [UInt8]) {
        self.ip = ip
        self.hostIfindex = hostIfindex
        self.networkId = networkId
        self.podMAC = podMAC
        self.hostMAC = hostMAC
    }
}

public struct DatapathStats: Equatable, Sendable {
    public var txPackets: UInt64, txBytes: UInt64, rxPackets: UInt64, rxBytes: UInt64
    public var drops: [UInt64]
}

/// The pinned datapath of this node under `pinDir`.
public struct Datapath: Sendable {
    public let pinDir: String

    public init(pinDir: String) { self.pinDir = pinDir }

    @inline(__always)
    private func call(_ body: (UnsafeMutablePointer<CChar>, Int) -> Int32) throws(DatapathError) -> Int32 {
        try Self.call(body)
    }

    private static func call(_ body: (UnsafeMutablePointer<CChar>, Int) -> Int32) throws(DatapathError) -> Int32 {
        var buf = [CChar](repeating: 0, count: 512)
        // SAFETY: buf outlives the call and its length is passed alongside.
        let rc = buf.withUnsafeMutableBufferPointer { body($0.baseAddress!, $0.count) }
        if rc < 0 {
            let msg = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            throw DatapathError(errno: -rc, message: msg.isEmpty ? "datapath call failed with errno \(-rc)" : msg)
        }
        return rc
    }

    public var isLoaded: Bool { myc_dp_is_loaded(pinDir) == 1 }

    /// Whether this kernel has tcx links (`myc_dp_probe_tcx`; nothing is attached): nil when it has,
    /// else the errno the kernel refused the tcx link with. Throws when no BPF program can be loaded
    /// (not root, no BPF).
    public static func probeTCX() throws(DatapathError) -> Int32? {
        var linkErrno: Int32 = 0
        let rc = try call { myc_dp_probe_tcx(&linkErrno, $0, $1) }
        return rc == 1 ? nil : linkErrno
    }

    /// Loads (or confirms) the datapath from the compiled object. Cheap when it is already pinned.
    public func load(object: String) throws(DatapathError) {
        _ = try call { myc_dp_load(pinDir, object, $0, $1) }
    }

    public func unload() throws(DatapathError) {
        _ = try call { myc_dp_unload(pinDir, $0, $1) }
    }

    public func add(_ ep: DatapathEndpoint) throws(DatapathError) {
        var c = myc_dp_endpoint()
        c.ipv4 = ep.ip.networkOrder
        c.host_ifindex = ep.hostIfindex
        c.network_id = ep.networkId
        withUnsafeMutableBytes(of: &c.pod_mac) { $0.copyBytes(from: ep.podMAC.prefix(6)) }
        withUnsafeMutableBytes(of: &c.host_mac) { $0.copyBytes(from: ep.hostMAC.prefix(6)) }
        _ = try call { myc_dp_endpoint_add(pinDir, &c, $0, $1) }
    }

    /// Removes an endpoint. Idempotent.
    public func remove(_ ip: IPv4Address) throws(DatapathError) {
        _ = try call { myc_dp_endpoint_del(pinDir, ip.networkOrder, $0, $1) }
    }

    private static func endpoint(_ c: myc_dp_endpoint) -> DatapathEndpoint {
        DatapathEndpoint(ip: IPv4Address(networkOrder: c.ipv4), hostIfindex: c.host_ifindex, networkId: c.network_id,
                         podMAC: withUnsafeBytes(of: c.pod_mac) { Array($0) },
                         hostMAC: withUnsafeBytes(of: c.host_mac) { Array($0) })
    }

    /// nil when the address is not registered.
    public func endpoint(_ ip: IPv4Address) throws(DatapathError) -> DatapathEndpoint? {
        var c = myc_dp_endpoint()
        do {
            _ = try call { myc_dp_endpoint_get(pinDir, ip.networkOrder, &c, $0, $1) }
        } catch {
            if error.errno == ENOENT { return nil }
            throw error
        }
        return Self.endpoint(c)
    }

    public func endpoints() throws(DatapathError) -> [DatapathEndpoint] {
        var cap = 256
        while true {
            var buf = [myc_dp_endpoint](repeating: myc_dp_endpoint(), count: cap)
            let n = try buf.withUnsafeMutableBufferPointer { (p) throws(DatapathError) -> Int32 in
                try call { myc_dp_endpoint_list(pinDir, p.baseAddress!, p.count, $0, $1) }
            }
            if Int(n) <= cap { return buf.prefix(Int(n)).map(Self.endpoint) }
            cap = Int(n) + 16
        }
    }

    public func stats(_ ip: IPv4Address) throws(DatapathError) -> DatapathStats {
        var s = myc_dp_stats()
        _ = try call { myc_dp_stats_get(pinDir, ip.networkOrder, &s, $0, $1) }
        return DatapathStats(txPackets: s.tx_packets, txBytes: s.tx_bytes, rxPackets: s.rx_packets, rxBytes: s.rx_bytes,
                             drops: withUnsafeBytes(of: s.drops) { Array($0.bindMemory(to: UInt64.self)) })
    }

    // MARK: other nodes (the agent's route controller programs these)

    /// A route to another node's pod block: natively to its underlay address, or in VXLAN.
    public struct Route: Hashable, Sendable {
        public var cidr: IPv4CIDR
        public var node: IPv4Address
        public var vxlan: Bool
        public init(cidr: IPv4CIDR, node: IPv4Address, vxlan: Bool) { self.cidr = cidr; self.node = node; self.vxlan = vxlan }
    }

    public func addRoute(_ r: Route) throws(DatapathError) {
        var c = myc_dp_route()
        c.cidr = r.cidr.address.networkOrder
        c.prefix_len = UInt8(r.cidr.prefixLength)
        c.mode = r.vxlan ? UInt8(MYC_DP_ROUTE_VXLAN.rawValue) : UInt8(MYC_DP_ROUTE_NATIVE.rawValue)
        c.node_ipv4 = r.node.networkOrder
        _ = try call { myc_dp_route_add(pinDir, &c, $0, $1) }
    }

    public func removeRoute(_ cidr: IPv4CIDR) throws(DatapathError) {
        _ = try call { myc_dp_route_del(pinDir, cidr.address.networkOrder, UInt8(cidr.prefixLength), $0, $1) }
    }

    public func routes() throws(DatapathError) -> [Route] {
        let n = Int(try call { myc_dp_route_list(pinDir, nil, 0, $0, $1) })
        var out = [myc_dp_route](repeating: myc_dp_route(), count: n + 16)
        let m = Int(try out.withUnsafeMutableBufferPointer { buf throws(DatapathError) in
            try call { myc_dp_route_list(pinDir, buf.baseAddress, buf.count, $0, $1) }
        })
        return out.prefix(min(m, out.count)).map {
            Route(cidr: IPv4CIDR(address: IPv4Address(networkOrder: $0.cidr), prefixLength: Int($0.prefix_len)),
                  node: IPv4Address(networkOrder: $0.node_ipv4), vxlan: UInt32($0.mode) == MYC_DP_ROUTE_VXLAN.rawValue)
        }
    }

    /// Records the network identity of a pod on another node (natively routed packets carry none).
    public func addRemote(_ ip: IPv4Address, networkId: UInt32) throws(DatapathError) {
        _ = try call { myc_dp_remote_add(pinDir, ip.networkOrder, networkId, $0, $1) }
    }

    public func removeRemote(_ ip: IPv4Address) throws(DatapathError) {
        _ = try call { myc_dp_remote_del(pinDir, ip.networkOrder, $0, $1) }
    }

    public func remotes() throws(DatapathError) -> [IPv4Address: UInt32] {
        let n = Int(try call { myc_dp_remote_list(pinDir, nil, nil, 0, $0, $1) })
        var ips = [UInt32](repeating: 0, count: n + 64), ids = [UInt32](repeating: 0, count: n + 64)
        let cap = ips.count
        let m = Int(try ips.withUnsafeMutableBufferPointer { ib throws(DatapathError) in
            try ids.withUnsafeMutableBufferPointer { db throws(DatapathError) in
                try call { myc_dp_remote_list(pinDir, ib.baseAddress, db.baseAddress, cap, $0, $1) }
            }
        })
        var out: [IPv4Address: UInt32] = [:]
        for i in 0..<min(m, cap) { out[IPv4Address(networkOrder: ips[i])] = ids[i] }
        return out
    }

    /// This node's underlay: its address, the interface toward other nodes, the VXLAN device (0: none).
    public func setUnderlay(node: IPv4Address, underlayIfindex: UInt32, vxlanIfindex: UInt32) throws(DatapathError) {
        _ = try call { myc_dp_set_underlay(pinDir, node.networkOrder, underlayIfindex, vxlanIfindex, $0, $1) }
    }
}
