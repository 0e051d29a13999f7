// Swift side of CNetlink: a handle bound to one network namespace, with throwing wrappers.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CNetlink

/// A failed netlink call: what was attempted, the errno, and CNetlink's sentence (with the kernel's ext-ack).
public struct NetlinkError: Error, Sendable, CustomStringConvertible {
    public let errno: Int32
    public let message: String
    public var description: String { message }
}

/// A link as the kernel reports it.
public struct LinkInfo: Sendable, Equatable {
    public var ifindex: UInt32
    public var name: String
    public var mac: [UInt8]
    public var mtu: UInt32
    public var isUp: Bool
}

/// Calls a CNetlink function with an error buffer; throws on a negative return.
@inline(__always)
func nlCall(_ body: (UnsafeMutablePointer<CChar>, Int) -> Int32) throws(NetlinkError) -> Int32 {
    var buf = [CChar](repeating: 0, count: 512)
    // SAFETY: buf outlives the call and its length is passed alongside.
    let rc = buf.withUnsafeMutableBufferPointer { body($0.baseAddress!, $0.count) }
    if rc < 0 {
        let msg = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        throw NetlinkError(errno: -rc, message: msg.isEmpty ? String(cString: strerror(-rc)) : msg)
    }
    return rc
}

/// An open network namespace file (checked to be one).
public final class NetnsHandle {
    public let fd: Int32
    public let path: String

    public init(path: String) throws(NetlinkError) {
        var fd: Int32 = -1
        _ = try nlCall { myc_nl_netns_open(path, &fd, $0, $1) }
        self.fd = fd
        self.path = path
    }

    deinit { close(fd) }
}

/// An rtnetlink socket living in one namespace (the caller's when `netns` is nil).
public final class Netlink {
    private let handle: OpaquePointer

    public init(netns: NetnsHandle? = nil) throws(NetlinkError) {
        var h: OpaquePointer?
        _ = try nlCall { myc_nl_open(netns?.fd ?? -1, &h, $0, $1) }
        handle = h!
    }

    deinit { myc_nl_close(handle) }

    /// nil when there is no such link.
    public func link(named name: String) throws(NetlinkError) -> LinkInfo? {
        var l = myc_nl_link()
        do {
            _ = try nlCall { myc_nl_link_get(handle, name, &l, $0, $1) }
        } catch {
            if error.errno == ENODEV { return nil }
            throw error
        }
        let mac = withUnsafeBytes(of: l.mac) { Array($0) }
        let n = withUnsafeBytes(of: l.name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return LinkInfo(ifindex: l.ifindex, name: n, mac: l.has_mac != 0 ? mac : [], mtu: l.mtu,
                        isUp: (l.flags & UInt32(IFF_UP)) != 0)
    }

    public func createVeth(name: String, peerName: String, peerNetns: NetnsHandle?, mtu: UInt32) throws(NetlinkError) {
        _ = try nlCall { myc_nl_veth_create(handle, name, peerName, peerNetns?.fd ?? -1, mtu, $0, $1) }
    }

    public func rename(ifindex: UInt32, to name: String) throws(NetlinkError) {
        _ = try nlCall { myc_nl_link_rename(handle, ifindex, name, $0, $1) }
    }

    public func setUp(ifindex: UInt32) throws(NetlinkError) {
        _ = try nlCall { myc_nl_link_set_up(handle, ifindex, $0, $1) }
    }

    public func setMAC(ifindex: UInt32, _ mac: [UInt8]) throws(NetlinkError) {
        precondition(mac.count == 6)
        _ = try nlCall { e, n in mac.withUnsafeBufferPointer { myc_nl_link_set_mac(handle, ifindex, $0.baseAddress!, e, n) } }
    }

    /// Deletes the link; returns false when it did not exist.
    @discardableResult
    public func deleteLink(ifindex: UInt32) throws(NetlinkError) -> Bool {
        do {
            _ = try nlCall { myc_nl_link_del(handle, ifindex, $0, $1) }
            return true
        } catch {
            if error.errno == ENODEV { return false }
            throw error
        }
    }

    /// Deletes the link by name; returns false when it did not exist.
    @discardableResult
    public func deleteLink(named name: String) throws(NetlinkError) -> Bool {
        guard let l = try link(named: name) else { return false }
        return try deleteLink(ifindex: l.ifindex)
    }

    public func addAddress(ifindex: UInt32, _ cidr: IPv4CIDR) throws(NetlinkError) {
        _ = try nlCall { myc_nl_addr_add_v4(handle, ifindex, cidr.address.networkOrder, UInt8(cidr.prefixLength), $0, $1) }
    }

    /// Adds a main-table route; `replace` takes over an existing route to the same destination.
    public func addRoute(ifindex: UInt32, dst: IPv4CIDR, via gw: IPv4Address?, scopeLink: Bool, replace: Bool = false) throws(NetlinkError) {
        let scope = UInt8(scopeLink ? MYC_NL_SCOPE_LINK : MYC_NL_SCOPE_UNIVERSE)
        _ = try nlCall {
            myc_nl_route_add_v4(handle, ifindex, dst.network.networkOrder, UInt8(dst.prefixLength), gw?.networkOrder ?? 0, scope,
                                replace ? 1 : 0, $0, $1)
        }
    }

    public func addPermanentNeighbour(ifindex: UInt32, ip: IPv4Address, mac: [UInt8]) throws(NetlinkError) {
        precondition(mac.count == 6)
        _ = try nlCall { e, n in mac.withUnsafeBufferPointer { myc_nl_neigh_add_v4(handle, ifindex, ip.networkOrder, $0.baseAddress!, e, n) } }
    }

    public func hasAddress(ifindex: UInt32, _ cidr: IPv4CIDR) throws(NetlinkError) -> Bool {
        try nlCall { myc_nl_addr_has_v4(handle, ifindex, cidr.address.networkOrder, UInt8(cidr.prefixLength), $0, $1) } == 1
    }

    public func hasRoute(ifindex: UInt32, dst: IPv4CIDR, via gw: IPv4Address?) throws(NetlinkError) -> Bool {
        try nlCall {
            myc_nl_route_has_v4(handle, ifindex, dst.network.networkOrder, UInt8(dst.prefixLength), gw?.networkOrder ?? 0, $0, $1)
        } == 1
    }

    /// The neighbour entry for ip: its MAC and whether it is permanent; nil when there is none.
    public func neighbour(ifindex: UInt32, ip: IPv4Address) throws(NetlinkError) -> (mac: [UInt8], permanent: Bool)? {
        var mac = [UInt8](repeating: 0, count: 6)
        var state: UInt16 = 0
        do {
            _ = try nlCall { e, n in
                mac.withUnsafeMutableBufferPointer { myc_nl_neigh_get_v4(handle, ifindex, ip.networkOrder, $0.baseAddress!, &state, e, n) }
            }
        } catch {
            if error.errno == ENOENT { return nil }
            throw error
        }
        return (mac, (state & UInt16(MYC_NL_NUD_PERMANENT)) != 0)
    }
}
