// IPv4 addresses and prefixes, host-order UInt32 inside; network order only at the C boundary.

public struct IPv4Address: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// Host byte order: 10.0.0.1 is 0x0A000001.
    public let value: UInt32

    public init(_ value: UInt32) { self.value = value }

    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.allSatisfy({ $0.isASCII && $0.isNumber }),
                  !(p.count > 1 && p.hasPrefix("0")), let octet = UInt32(p), octet <= 255
            else { return nil }
            v = v << 8 | octet
        }
        value = v
    }

    /// Network byte order, as the kernel and the BPF maps want it.
    public var networkOrder: UInt32 { value.bigEndian }
    public init(networkOrder: UInt32) { value = UInt32(bigEndian: networkOrder) }

    public var description: String { "\(value >> 24).\(value >> 16 & 0xFF).\(value >> 8 & 0xFF).\(value & 0xFF)" }

    public static func < (a: IPv4Address, b: IPv4Address) -> Bool { a.value < b.value }
}

public struct IPv4CIDR: Hashable, Sendable, CustomStringConvertible {
    public let address: IPv4Address
    public let prefixLength: Int

    public init(address: IPv4Address, prefixLength: Int) {
        self.address = address
        self.prefixLength = prefixLength
    }

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = IPv4Address(String(parts[0])), parts[1].count <= 2,
              parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), let p = Int(parts[1]), (0...32).contains(p)
        else { return nil }
        self.init(address: a, prefixLength: p)
    }

    public var mask: UInt32 { prefixLength == 0 ? 0 : UInt32.max << UInt32(32 - prefixLength) }
    public var network: IPv4Address { IPv4Address(address.value & mask) }
    public var broadcast: IPv4Address { IPv4Address(network.value | ~mask) }
    /// True when `address` is the network address (no host bits set).
    public var isNetworkAligned: Bool { address.value & ~mask == 0 }

    public func contains(_ a: IPv4Address) -> Bool { a.value & mask == network.value }

    public var description: String { "\(address)/\(prefixLength)" }
}

/// A MAC address rendered the way `ip` and the CNI results do: lower-case, colon separated.
public func formatMAC(_ b: [UInt8]) -> String {
    let hex: [Character] = Array("0123456789abcdef")
    var s = ""
    for (i, x) in b.enumerated() {
        if i > 0 { s.append(":") }
        s.append(hex[Int(x >> 4)])
        s.append(hex[Int(x & 0xF)])
    }
    return s
}

public func parseMAC(_ text: String) -> [UInt8]? {
    let parts = text.split(separator: ":", omittingEmptySubsequences: false)
    guard parts.count == 6 else { return nil }
    var out: [UInt8] = []
    for p in parts {
        guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
        out.append(b)
    }
    return out
}
