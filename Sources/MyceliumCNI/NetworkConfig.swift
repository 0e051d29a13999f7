// The plugin's inputs: the network configuration on stdin and the CNI_* environment (CNI spec §2).

import MyceliumCore

/// Where things live when the configuration does not say.
public enum CNIDefaults {
    public static let bpfObject = "/usr/lib/mycelium/datapath.bpf.o"
    public static let pinDir = "/sys/fs/bpf/mycelium"
    /// IPAM state: one directory per network below this.
    public static let dataDir = "/var/lib/mycelium/cni"
    /// The node's pod CIDR as handed down by the agent (from the primary spore). Read only when the
    /// configuration has no `ipam.subnet`; the plugin never needs the agent to be running.
    public static let podCIDRFile = "/var/lib/mycelium/node/podcidr"
    /// The pod's gateway: a link-local address answered by a static neighbour entry (the host veth's MAC),
    /// so no address is spent on the host side and every pod looks the same.
    public static let gateway = IPv4Address(0xA9FE_0101)  // 169.254.1.1
    /// Environment variable that overrides the default BPF object path (not an explicit `bpfObject`).
    public static let bpfObjectEnv = "MYCELIUM_BPF_OBJECT"
}

/// The `ipam` section. Mycelium does its own IPAM (no delegation), so `type` may only name it.
public struct IPAMConfig: Equatable, Sendable {
    /// The pod CIDR; nil means "read `podCIDRFile`".
    public var subnet: IPv4CIDR?
    public var rangeStart: IPv4Address?
    public var rangeEnd: IPv4Address?
    public var dataDir: String = CNIDefaults.dataDir
    public var podCIDRFile: String = CNIDefaults.podCIDRFile
}

/// A parsed plugin configuration (one element of a conflist's `plugins`, with `name` and `cniVersion` filled
/// in by the runtime).
public struct NetworkConfig: Sendable {
    public var cniVersion: String
    public var name: String
    public var type: String
    public var ipam = IPAMConfig()
    /// The isolation identity in the datapath; see `NetworkConfig.networkIdentity(ofNetwork:)`.
    public var networkId: UInt32
    public var bpfObject: String
    public var pinDir: String
    public var mtu: UInt32 = 0
    public var dns: JSON?
    public var prevResult: JSON?
    /// GC only: the attachments the runtime still knows about (spec 1.1 `cni.dev/valid-attachments`).
    public var validAttachments: [Attachment]?
    /// The raw document, for fields we pass through.
    public var raw: JSON

    public struct Attachment: Hashable, Sendable {
        public var containerID: String
        public var ifname: String
        public init(containerID: String, ifname: String) {
            self.containerID = containerID
            self.ifname = ifname
        }
    }

    /// The default network identity: CRC-32C of the network name folded to 24 bits, with 0 (reserved for "no
    /// identity") mapped to 1. Two nodes that use the same network name agree on the identity without talking to
    /// each other; 24 bits because between nodes in VXLAN the identity travels as the VNI (as Cilium's do).
    public static func networkIdentity(ofNetwork name: String) -> UInt32 {
        let c = CRC32C.checksum(Array(name.utf8))
        let folded = (c ^ (c >> 24)) & 0xFF_FFFF
        return folded == 0 ? 1 : folded
    }

    /// Spec §1: a network name starts with an alphanumeric character, then alphanumerics, `_`, `.`, `-`.
    public static func isValidNetworkName(_ s: String) -> Bool {
        guard let first = s.utf8.first, isAlnum(first), s.utf8.count <= 200 else { return false }
        return s.utf8.allSatisfy { isAlnum($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") }
    }

    /// Parses stdin. Only `cniVersion` is needed for VERSION; `requireName` is false there.
    public static func parse(_ stdin: [UInt8], environment: [String: String] = [:]) throws(CNIError) -> NetworkConfig {
        let doc: JSON
        do {
            doc = try JSON.parse(stdin)
        } catch {
            throw CNIError(.decodeFailure, "the network configuration on stdin is not valid JSON", details: error.description)
        }
        guard doc.isObject else { throw CNIError(.decodeFailure, "the network configuration must be a JSON object") }

        var versions: [String]?
        if let list = doc["cniVersions"] {
            guard let items = list.arrayValue, items.allSatisfy({ $0.stringValue != nil }) else {
                throw CNIError(.invalidConfig, "cniVersions must be a list of version strings")
            }
            versions = items.compactMap(\.stringValue)
        }
        var explicitVersion: String?
        if let v = doc["cniVersion"] {
            guard let s = v.stringValue else { throw CNIError(.invalidConfig, "cniVersion must be a string") }
            explicitVersion = s
        }
        let version = try CNIVersion.negotiate(cniVersion: explicitVersion, cniVersions: versions)

        func string(_ key: String, in obj: JSON = doc) throws(CNIError) -> String? {
            guard let v = obj[key] else { return nil }
            guard let s = v.stringValue else { throw CNIError(.invalidConfig, "\"\(key)\" must be a string") }
            return s
        }

        guard let name = try string("name") else { throw CNIError(.invalidConfig, "the network configuration has no \"name\"") }
        guard isValidNetworkName(name) else {
            throw CNIError(.invalidConfig, "network name \"\(name)\" is not valid",
                           details: "a name starts with a letter or digit, followed by letters, digits, '_', '.' or '-'")
        }
        let type = try string("type") ?? "mycelium-cni"

        var ipam = IPAMConfig()
        if let section = doc["ipam"] {
            guard section.isObject else { throw CNIError(.invalidConfig, "\"ipam\" must be an object") }
            if let t = try string("type", in: section), t != "mycelium", t != "mycelium-cni" {
                throw CNIError(.unsupportedField, "ipam type \"\(t)\" is not supported",
                               details: "mycelium-cni allocates addresses itself; omit ipam.type or set it to \"mycelium\"")
            }
            if let s = try string("subnet", in: section) {
                guard let c = IPv4CIDR(s), c.isNetworkAligned, c.prefixLength <= 30 else {
                    throw CNIError(.invalidConfig, "ipam.subnet \"\(s)\" is not an IPv4 network of prefix length 0 to 30",
                                   details: "write it with host bits zero, e.g. 10.244.1.0/24")
                }
                ipam.subnet = c
            }
            for key in ["rangeStart", "rangeEnd"] {
                if let s = try string(key, in: section) {
                    guard let a = IPv4Address(s) else { throw CNIError(.invalidConfig, "ipam.\(key) \"\(s)\" is not an IPv4 address") }
                    if key == "rangeStart" { ipam.rangeStart = a } else { ipam.rangeEnd = a }
                }
            }
            if let d = try string("dataDir", in: section) {
                guard d.hasPrefix("/") else { throw CNIError(.invalidConfig, "ipam.dataDir must be an absolute path") }
                ipam.dataDir = d
            }
            if let f = try string("podCIDRFile", in: section) { ipam.podCIDRFile = f }
        }

        var networkId = networkIdentity(ofNetwork: name)
        if let v = doc["networkId"] {
            guard let n = v.intValue, n > 0, n <= Int(UInt32.max) else {
                throw CNIError(.invalidConfig, "networkId must be an integer from 1 to \(UInt32.max)")
            }
            networkId = UInt32(n)
        }

        var mtu: UInt32 = 0
        if let v = doc["mtu"] {
            guard let n = v.intValue, (68...65535).contains(n) else { throw CNIError(.invalidConfig, "mtu must be an integer from 68 to 65535") }
            mtu = UInt32(n)
        }

        let bpfObject = try string("bpfObject") ?? environment[CNIDefaults.bpfObjectEnv].flatMap { $0.isEmpty ? nil : $0 }
            ?? CNIDefaults.bpfObject
        let pinDir = try string("pinDir") ?? CNIDefaults.pinDir

        if let d = doc["dns"], !d.isObject { throw CNIError(.invalidConfig, "\"dns\" must be an object") }
        if let p = doc["prevResult"], !p.isObject { throw CNIError(.invalidConfig, "\"prevResult\" must be an object") }

        var valid: [Attachment]?
        if let list = doc["cni.dev/valid-attachments"] {
            guard let items = list.arrayValue else { throw CNIError(.invalidConfig, "cni.dev/valid-attachments must be a list") }
            valid = []
            for item in items {
                guard let c = item["containerID"]?.stringValue, let i = item["ifname"]?.stringValue else {
                    throw CNIError(.invalidConfig, "each cni.dev/valid-attachments entry needs string containerID and ifname")
                }
                valid?.append(Attachment(containerID: c, ifname: i))
            }
        }

        var config = NetworkConfig(cniVersion: version, name: name, type: type, networkId: networkId,
                                   bpfObject: bpfObject, pinDir: pinDir, raw: doc)
        config.ipam = ipam
        config.mtu = mtu
        config.dns = doc["dns"]
        config.prevResult = doc["prevResult"]
        config.validAttachments = valid
        return config
    }

    init(cniVersion: String, name: String, type: String, networkId: UInt32, bpfObject: String, pinDir: String, raw: JSON) {
        self.cniVersion = cniVersion
        self.name = name
        self.type = type
        self.networkId = networkId
        self.bpfObject = bpfObject
        self.pinDir = pinDir
        self.raw = raw
    }
}

@inline(__always) func isAlnum(_ c: UInt8) -> Bool {
    (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
}

/// The CNI_* environment of one invocation.
public struct CNIEnvironment: Sendable {
    public enum Command: String, Sendable, CaseIterable {
        case add = "ADD", del = "DEL", check = "CHECK", version = "VERSION", gc = "GC", status = "STATUS"
    }

    public var command: Command
    public var containerID: String?
    public var netns: String?
    public var ifname: String?
    public var args: String?
    public var path: String?
    /// Everything, for overrides such as MYCELIUM_BPF_OBJECT.
    public var all: [String: String]

    public init(_ env: [String: String]) throws(CNIError) {
        all = env
        guard let c = env["CNI_COMMAND"], !c.isEmpty else {
            throw CNIError(.invalidEnvironment, "CNI_COMMAND is not set",
                           details: "set CNI_COMMAND to one of \(Command.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let cmd = Command(rawValue: c) else {
            throw CNIError(.invalidEnvironment, "unknown CNI_COMMAND \"\(c)\"",
                           details: "expected one of \(Command.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        command = cmd
        func nonEmpty(_ k: String) -> String? { env[k].flatMap { $0.isEmpty ? nil : $0 } }
        containerID = nonEmpty("CNI_CONTAINERID")
        netns = nonEmpty("CNI_NETNS")
        ifname = nonEmpty("CNI_IFNAME")
        args = nonEmpty("CNI_ARGS")
        path = nonEmpty("CNI_PATH")
    }

    /// The container ID, required and checked (spec: alphanumerics, `_`, `.`, `-`; we also allow `:` for runtimes
    /// that prefix IDs).
    public func requireContainerID() throws(CNIError) -> String {
        guard let id = containerID else { throw CNIError(.invalidEnvironment, "CNI_CONTAINERID is not set") }
        guard id.utf8.count <= 1024, id.utf8.allSatisfy({ isAlnum($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".")
            || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ":") })
        else {
            throw CNIError(.invalidEnvironment, "CNI_CONTAINERID \"\(id)\" contains characters other than letters, digits, '_', '.', '-'")
        }
        return id
    }

    /// The interface name, required and checked against the kernel's rules.
    public func requireIfname() throws(CNIError) -> String {
        guard let n = ifname else { throw CNIError(.invalidEnvironment, "CNI_IFNAME is not set") }
        guard Self.isValidIfname(n) else {
            throw CNIError(.invalidEnvironment, "CNI_IFNAME \"\(n)\" is not a valid interface name",
                           details: "1 to 15 bytes, not \".\" or \"..\", without '/', ':' or whitespace")
        }
        return n
    }

    public func requireNetns() throws(CNIError) -> String {
        guard let n = netns else { throw CNIError(.invalidEnvironment, "CNI_NETNS is not set", details: "ADD and CHECK need the container's network namespace path") }
        return n
    }

    public static func isValidIfname(_ n: String) -> Bool {
        let b = Array(n.utf8)
        guard (1...15).contains(b.count), n != ".", n != ".." else { return false }
        return !b.contains { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 == 0x7F }
    }
}
