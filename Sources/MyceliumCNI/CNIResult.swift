// The ADD result (CNI spec §Result, versions 1.0.0 and 1.1.0), and reading one back from `prevResult`.

public struct CNIInterface: Equatable, Sendable {
    public var name: String
    public var mac: String
    /// The netns path for the container's interface; nil for the host's.
    public var sandbox: String?
    /// Emitted only for spec 1.1.0, which introduced it.
    public var mtu: Int?

    public init(name: String, mac: String, sandbox: String? = nil, mtu: Int? = nil) {
        self.name = name
        self.mac = mac
        self.sandbox = sandbox
        self.mtu = mtu
    }
}

public struct CNIIPConfig: Equatable, Sendable {
    public var address: IPv4CIDR
    public var gateway: IPv4Address?
    /// Index into `interfaces`.
    public var interface: Int?

    public init(address: IPv4CIDR, gateway: IPv4Address?, interface: Int?) {
        self.address = address
        self.gateway = gateway
        self.interface = interface
    }
}

public struct CNIRoute: Equatable, Sendable {
    public var dst: IPv4CIDR
    public var gw: IPv4Address?
    /// Spec 1.1.0 only.
    public var scope: Int?

    public init(dst: IPv4CIDR, gw: IPv4Address? = nil, scope: Int? = nil) {
        self.dst = dst
        self.gw = gw
        self.scope = scope
    }
}

public struct CNIResult: Equatable, Sendable {
    public var cniVersion: String
    public var interfaces: [CNIInterface] = []
    public var ips: [CNIIPConfig] = []
    public var routes: [CNIRoute] = []
    public var dns: JSON?

    public init(cniVersion: String) { self.cniVersion = cniVersion }

    /// Fields that a version does not define are left out, so a 1.0.0 runtime sees a strict 1.0.0 document.
    public var json: JSON {
        let v11 = (SemVer(cniVersion) ?? SemVer(1, 0, 0)) >= SemVer(1, 1, 0)
        var members: [(String, JSON)] = [("cniVersion", .string(cniVersion))]
        members.append(("interfaces", .array(interfaces.map { i in
            var m: [(String, JSON)] = [("name", .string(i.name)), ("mac", .string(i.mac))]
            if v11, let mtu = i.mtu { m.append(("mtu", .number(Double(mtu)))) }
            if let s = i.sandbox { m.append(("sandbox", .string(s))) }
            return .object(m)
        })))
        members.append(("ips", .array(ips.map { ip in
            var m: [(String, JSON)] = [("address", .string(ip.address.description))]
            if let g = ip.gateway { m.append(("gateway", .string(g.description))) }
            if let i = ip.interface { m.append(("interface", .number(Double(i)))) }
            return .object(m)
        })))
        let shownRoutes = routes.filter { v11 || $0.scope == nil }
        if !shownRoutes.isEmpty {
            members.append(("routes", .array(shownRoutes.map { r in
                var m: [(String, JSON)] = [("dst", .string(r.dst.description))]
                if let g = r.gw { m.append(("gw", .string(g.description))) }
                if let s = r.scope { m.append(("scope", .number(Double(s)))) }
                return .object(m)
            })))
        }
        if let dns, dns != .object([]) { members.append(("dns", dns)) }
        return .object(members)
    }

    /// Reads a result (a `prevResult`). IPv6 entries and unknown fields are skipped, not rejected: they belong
    /// to other plugins in the chain.
    public static func parse(_ doc: JSON, cniVersion: String) throws(CNIError) -> CNIResult {
        guard doc.isObject else { throw CNIError(.decodeFailure, "prevResult must be an object") }
        var r = CNIResult(cniVersion: cniVersion)
        for item in doc["interfaces"]?.arrayValue ?? [] {
            guard let name = item["name"]?.stringValue else { throw CNIError(.decodeFailure, "prevResult interface without a name") }
            r.interfaces.append(CNIInterface(name: name, mac: item["mac"]?.stringValue ?? "", sandbox: item["sandbox"]?.stringValue,
                                             mtu: item["mtu"]?.intValue))
        }
        for item in doc["ips"]?.arrayValue ?? [] {
            guard let a = item["address"]?.stringValue else { throw CNIError(.decodeFailure, "prevResult ip without an address") }
            if a.contains(":") { continue }
            guard let cidr = IPv4CIDR(a) else { throw CNIError(.decodeFailure, "prevResult address \"\(a)\" is not an IPv4 CIDR") }
            var gw: IPv4Address?
            if let g = item["gateway"]?.stringValue, !g.contains(":") {
                guard let x = IPv4Address(g) else { throw CNIError(.decodeFailure, "prevResult gateway \"\(g)\" is not an IPv4 address") }
                gw = x
            }
            r.ips.append(CNIIPConfig(address: cidr, gateway: gw, interface: item["interface"]?.intValue))
        }
        for item in doc["routes"]?.arrayValue ?? [] {
            guard let d = item["dst"]?.stringValue else { throw CNIError(.decodeFailure, "prevResult route without dst") }
            if d.contains(":") { continue }
            guard let dst = IPv4CIDR(d) else { throw CNIError(.decodeFailure, "prevResult route dst \"\(d)\" is not an IPv4 CIDR") }
            r.routes.append(CNIRoute(dst: dst, gw: item["gw"]?.stringValue.flatMap(IPv4Address.init), scope: item["scope"]?.intValue))
        }
        r.dns = doc["dns"]
        return r
    }
}
