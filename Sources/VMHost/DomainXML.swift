// The libvirt domain of an endophyte VM, from the network's VMSpec.
//
// Both sides of a replicated VM run the same QEMU command line (a device state loads only into the
// machine that saved it), so one function builds both: the standby differs only by `-incoming defer`
// (QEMU waits for a migration stream instead of booting) and its metadata role. Guest RAM is a shared
// memfd, so this host's engine can read it (replication) and write it (a standby's image).

import MyceliumControl

/// What a host's copy of an endophyte VM is for.
public enum EndophyteRole: String, Sendable, Equatable {
    /// Runs the guest; its RAM is replicated.
    case primary
    /// A QEMU started paused with `-incoming defer`, waiting to be given a RAM image and device state.
    case standby
}

/// The dirty-page preload shim (CSources/CDirtyPages/shim/mdp_preload.c): QEMU registers its guest
/// RAM with userfaultfd itself and writes `pid start length fd` to `report`, so the uffd-remote
/// engine can track it. Both files must be readable by the user QEMU runs as.
public struct DirtyPageShim: Sendable, Equatable {
    public var library: String
    public var report: String
    public init(library: String, report: String) {
        self.library = library
        self.report = report
    }
}

/// The guest's network card: a virtio NIC on a tap libvirt creates (`<interface type='ethernet'>`).
/// What the tap is attached to (a bridge, an address, routes) is the host's business, not the
/// domain's. Both copies of a replicated VM carry the same NIC (the device state names its MAC).
public struct GuestNIC: Sendable, Equatable {
    /// The guest's MAC address; the same on the primary and the standby.
    public var mac: String
    /// Name of the host-side tap (1-15 characters), so the host can find and wire it.
    public var tap: String

    public init(mac: String, tap: String) {
        self.mac = mac
        self.tap = tap
    }

    /// libvirt's id of the NIC's backend (`-netdev …,id=hostnet0` for the first interface): the
    /// netdev output commit's filters attach to.
    public static let netdevID = "hostnet0"

    /// A locally administered unicast MAC derived from `name` (FNV-1a): stable across hosts and
    /// restarts, so the primary and the standby agree without recording it.
    public static func mac(for name: String) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        let bytes = [0x52, 0x54, 0x00, UInt8(truncatingIfNeeded: h >> 16), UInt8(truncatingIfNeeded: h >> 8), UInt8(truncatingIfNeeded: h)]
        return bytes.map { b in let s = String(b, radix: 16); return s.count == 1 ? "0" + s : s }.joined(separator: ":")
    }

    var problem: String? {
        let hex = Set("0123456789abcdefABCDEF")
        let parts = mac.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6, parts.allSatisfy({ $0.count == 2 && $0.allSatisfy(hex.contains) }) else {
            return "MAC '\(mac)' is not six colon-separated hex bytes"
        }
        guard let first = UInt8(parts[0], radix: 16), first & 1 == 0 else { return "MAC '\(mac)' is a multicast address" }
        guard (1...15).contains(tap.utf8.count),
              tap.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || $0.properties.numericType != nil || "._-".unicodeScalars.contains($0)) })
        else { return "tap name '\(tap)' must be 1-15 of [A-Za-z0-9._-]" }
        return nil
    }
}

/// Where a VM's data disk (VMSpec.disk, a volume name) is on this host: what the host's resolver
/// (`EndophyteDriverSettings.diskSource`) answers. The guest sees it as `/dev/vda` (virtio).
public enum VMDiskSource: Sendable, Equatable {
    /// An RBD image, opened by QEMU's own librbd (`<disk type='network'>`, protocol rbd). `cephConf`
    /// names the monitors and, through its `keyring` setting, the key file: QEMU reads both itself,
    /// so no key is ever in the domain XML, a log or the command line. `clientName` is the Ceph
    /// entity (`client.admin`); any other needs a libvirt secret of usage `mycelium-ceph-NAME`
    /// holding its key (the `<auth>` element names it; defining it is the host's job).
    case rbd(pool: String, image: String, cephConf: String, clientName: String)
    /// A raw file on this host (a local volume: it does not follow the VM to another host).
    case file(path: String)

    /// The libvirt secret usage name for a non-admin Ceph client.
    public static func secretUsage(_ clientName: String) -> String { "mycelium-ceph-" + clientName.dropFirst("client.".count) }

    var problem: String? {
        switch self {
        case let .rbd(pool, image, conf, client):
            for (what, v) in [("pool", pool), ("image", image)] {
                if v.isEmpty || v.utf8.count > 90 || v.contains("/") || v.contains("@") || v.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7f }) {
                    return "RBD \(what) name '\(v)' is not valid (1-90 printable characters, no '/', '@' or spaces)"
                }
            }
            if !conf.hasPrefix("/") { return "the Ceph conf file must be an absolute path (got '\(conf)')" }
            if !client.hasPrefix("client.") || client.count <= 7 || client.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7f }) {
                return "the Ceph client name '\(client)' is not client.NAME"
            }
        case let .file(path):
            if !path.hasPrefix("/") { return "a disk file must be an absolute path (got '\(path)')" }
        }
        return nil
    }
}

/// Everything about a host's domain that is not in the VMSpec.
public struct EndophyteDomainConfig: Sendable, Equatable {
    public var role: EndophyteRole
    /// The VM's ownership epoch (the fencing token in the VM table) this copy runs under.
    public var ownershipEpoch: UInt64
    /// File the guest's first serial port is written to (appended).
    public var serialLog: String
    public var shim: DirtyPageShim?
    /// QEMU machine type. Must name the same machine on both hosts; pin a versioned one
    /// (`pc-i440fx-7.2`) when the hosts' QEMU versions may differ.
    public var machine: String
    /// The guest's NIC (nil: no network card, as before).
    public var nic: GuestNIC?
    /// Unix socket of the domain's second QMP monitor, which the checkpoint's `stop`, `cont` and
    /// device-state save use instead of libvirt's passthrough (nil: none, libvirt only). QEMU
    /// creates it, so its directory must be writable by the user QEMU runs as and allowed by its
    /// AppArmor profile; an absolute path of at most 107 bytes without commas. Give the standby one
    /// too: both copies keep the same command line.
    public var controlSocket: String?
    /// The guest's data disk, resolved from VMSpec.disk (nil: none). Both copies carry the same.
    public var disk: VMDiskSource?

    public init(role: EndophyteRole, ownershipEpoch: UInt64, serialLog: String, shim: DirtyPageShim? = nil, machine: String = "pc",
                nic: GuestNIC? = nil, controlSocket: String? = nil, disk: VMDiskSource? = nil) {
        self.controlSocket = controlSocket
        self.disk = disk
        self.role = role
        self.ownershipEpoch = ownershipEpoch
        self.serialLog = serialLog
        self.shim = shim
        self.machine = machine
        self.nic = nic
    }
}

/// What the metadata element of a Mycelium-managed domain records.
public struct EndophyteMetadata: Sendable, Equatable {
    public var role: EndophyteRole
    public var ownershipEpoch: UInt64
    public init(role: EndophyteRole, ownershipEpoch: UInt64) {
        self.role = role
        self.ownershipEpoch = ownershipEpoch
    }
}

public enum EndophyteDomainXML {
    /// Namespace of the `<metadata>` element that marks a domain as Mycelium's.
    public static let namespaceURI = "http://mycelium.dev/xmlns/endophyte/1"
    public static let namespacePrefix = "mycelium"
    static let qemuNamespace = "http://libvirt.org/schemas/domain/qemu/1.0"
    /// QEMU's id of the direct monitor's chardev.
    static let controlChardev = "mycctl"
    /// sun_path holds 108 bytes with the terminating NUL.
    public static let maxControlSocketPath = 107

    /// Why `path` cannot be a direct monitor socket, or nil.
    public static func controlSocketProblem(_ path: String) -> String? {
        guard path.hasPrefix("/") else { return "the direct monitor socket must be an absolute path (got '\(path)')" }
        guard path.utf8.count <= maxControlSocketPath else {
            return "the direct monitor socket path has \(path.utf8.count) bytes; a Unix socket path holds at most \(maxControlSocketPath)"
        }
        // A comma separates QEMU's option fields (`,,` would escape it; refusing is simpler).
        guard !path.contains(",") else { return "the direct monitor socket path '\(path)' contains a comma" }
        return nil
    }

    /// The direct monitor's socket named by a domain XML (as libvirt returns it), or nil.
    public static func controlSocket(inDomainXML xml: String) -> String? {
        let key = "socket,id=\(controlChardev),path="
        guard let start = xml.firstRange(of: key)?.upperBound else { return nil }
        let rest = xml[start...]
        guard let end = rest.firstRange(of: ",server=on")?.lowerBound else { return nil }
        return unescape(String(rest[..<end]))
    }

    /// The domain XML for `spec` on this host. Every value from the spec or config is escaped;
    /// values XML cannot carry (control characters) and invalid specs are refused.
    public static func make(_ spec: VMSpec, _ config: EndophyteDomainConfig) throws(VMHostError) -> String {
        if let p = spec.problem { throw VMHostError(.invalidSpec(p), domain: spec.name) }
        guard !spec.kernel.isEmpty else {
            throw VMHostError(.invalidSpec("no kernel: an endophyte boots its kernel directly (VMSpec.kernel)"), domain: spec.name)
        }
        let fields: [(String, String)] = [
            ("kernel", spec.kernel), ("initrd", spec.initrd), ("cmdline", spec.cmdline), ("serial log", config.serialLog),
            ("machine", config.machine), ("shim library", config.shim?.library ?? ""), ("shim report", config.shim?.report ?? ""),
            ("direct monitor socket", config.controlSocket ?? ""),
        ]
        var diskFields: [(String, String)] = []
        switch config.disk {
        case let .rbd(pool, image, conf, client)?: diskFields = [("disk pool", pool), ("disk image", image), ("Ceph conf", conf), ("Ceph client", client)]
        case let .file(path)?: diskFields = [("disk file", path)]
        case nil: break
        }
        for (what, value) in diskFields where value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
            throw VMHostError(.invalidSpec("\(what) contains a control character, which a domain XML cannot carry"), domain: spec.name)
        }
        if !spec.disk.isEmpty && config.disk == nil {
            throw VMHostError(.invalidSpec("the VM names disk '\(spec.disk)' but this host did not resolve it to an RBD image or a file"), domain: spec.name)
        }
        if let why = config.disk?.problem { throw VMHostError(.invalidSpec("disk '\(spec.disk)': \(why)"), domain: spec.name) }
        for (what, value) in fields where value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
            throw VMHostError(.invalidSpec("\(what) contains a control character, which a domain XML cannot carry"), domain: spec.name)
        }
        guard !config.serialLog.isEmpty, config.serialLog.hasPrefix("/") else {
            throw VMHostError(.invalidSpec("the serial log must be an absolute path (got '\(config.serialLog)')"), domain: spec.name)
        }
        guard !config.machine.isEmpty else { throw VMHostError(.invalidSpec("empty machine type"), domain: spec.name) }
        if let why = config.nic?.problem { throw VMHostError(.invalidSpec(why), domain: spec.name) }
        if let why = config.controlSocket.flatMap(controlSocketProblem) { throw VMHostError(.invalidSpec(why), domain: spec.name) }

        var x = "<domain type='qemu' xmlns:qemu='\(qemuNamespace)'>\n"
        x += "  <name>\(escape(spec.name))</name>\n"
        x += "  <metadata>\n    \(metadataElement(EndophyteMetadata(role: config.role, ownershipEpoch: config.ownershipEpoch)))\n  </metadata>\n"
        x += "  <memory unit='MiB'>\(spec.memoryMiB)</memory>\n"
        x += "  <vcpu>\(spec.vcpus)</vcpu>\n"
        // Shared memfd RAM: QEMU maps it MAP_SHARED, so this host can open it through /proc/PID/fd.
        x += "  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>\n"
        x += "  <os>\n    <type arch='x86_64' machine='\(escape(config.machine))'>hvm</type>\n"
        x += "    <kernel>\(escape(spec.kernel))</kernel>\n"
        if !spec.initrd.isEmpty { x += "    <initrd>\(escape(spec.initrd))</initrd>\n" }
        if !spec.cmdline.isEmpty { x += "    <cmdline>\(escape(spec.cmdline))</cmdline>\n" }
        x += "  </os>\n"
        // Without <acpi/> libvirt adds -no-acpi; spelled out so both sides surely agree.
        x += "  <features><acpi/></features>\n"
        x += "  <clock offset='utc'/>\n"
        x += "  <devices>\n"
        x += "    <serial type='file'><source path='\(escape(config.serialLog))' append='on'/><target port='0'/></serial>\n"
        if let nic = config.nic {
            // Output commit's filters are added at run time over QMP (OutputCommitGate), not here:
            // the command line stays the same on both copies, and an agent that restarts can
            // attach them again.
            x += "    <interface type='ethernet'><mac address='\(escape(nic.mac))'/><target dev='\(escape(nic.tap))' managed='yes'/><model type='virtio'/></interface>\n"
        }
        switch config.disk {
        case let .rbd(pool, image, conf, client)?:
            // QEMU's librbd reads the monitors and the keyring from the conf file; no <host> (the
            // conf's mon_host, msgr2 included, is used as is). cache='none': librbd's cache off, so a
            // guest's flush is the only buffering and a takeover finds every acknowledged write.
            x += "    <disk type='network' device='disk'>\n"
            x += "      <driver name='qemu' type='raw' cache='none'/>\n"
            if client != "client.admin" {
                x += "      <auth username='\(escape(String(client.dropFirst("client.".count))))'><secret type='ceph' usage='\(escape(VMDiskSource.secretUsage(client)))'/></auth>\n"
            }
            x += "      <source protocol='rbd' name='\(escape(pool))/\(escape(image))'>\n"
            x += "        <config file='\(escape(conf))'/>\n"
            x += "      </source>\n"
            x += "      <target dev='vda' bus='virtio'/>\n"
            x += "    </disk>\n"
        case let .file(path)?:
            x += "    <disk type='file' device='disk'>\n"
            x += "      <driver name='qemu' type='raw'/>\n"
            x += "      <source file='\(escape(path))'/>\n"
            x += "      <target dev='vda' bus='virtio'/>\n"
            x += "    </disk>\n"
        case nil: break
        }
        // Devices libvirt would add by default and the guest does not need: less device state to carry.
        x += "    <controller type='usb' model='none'/>\n"
        x += "    <memballoon model='none'/>\n"
        x += "  </devices>\n"
        var qemu: [String] = []
        if config.role == .standby {
            qemu += ["    <qemu:arg value='-incoming'/>", "    <qemu:arg value='defer'/>"]
        }
        if let path = config.controlSocket {
            // A second QMP monitor, the agent's own (libvirt keeps its monitor). server=on,wait=off:
            // QEMU listens from the start and does not wait for a client; it replaces a stale
            // socket file and removes the socket when it exits.
            qemu += ["    <qemu:arg value='-chardev'/>",
                     "    <qemu:arg value='socket,id=\(controlChardev),path=\(escape(path)),server=on,wait=off'/>",
                     "    <qemu:arg value='-mon'/>", "    <qemu:arg value='chardev=\(controlChardev),mode=control'/>"]
        }
        if let shim = config.shim {
            qemu += ["    <qemu:env name='LD_PRELOAD' value='\(escape(shim.library))'/>",
                     "    <qemu:env name='MDP_SHIM_REPORT' value='\(escape(shim.report))'/>"]
        }
        if !qemu.isEmpty { x += "  <qemu:commandline>\n" + qemu.joined(separator: "\n") + "\n  </qemu:commandline>\n" }
        x += "</domain>\n"
        return x
    }

    /// The metadata element as it appears in the domain XML, with its namespace.
    public static func metadataElement(_ m: EndophyteMetadata) -> String {
        "<\(namespacePrefix):endophyte xmlns:\(namespacePrefix)='\(namespaceURI)' \(metadataAttributes(m))/>"
    }

    /// The element as `virDomainSetMetadata` takes it: unqualified (libvirt puts it in the namespace
    /// itself and refuses a second declaration of it).
    static func metadataForSet(_ m: EndophyteMetadata) -> String { "<endophyte \(metadataAttributes(m))/>" }

    private static func metadataAttributes(_ m: EndophyteMetadata) -> String {
        "managed-by='mycelium' role='\(m.role.rawValue)' ownership-epoch='\(m.ownershipEpoch)'"
    }

    /// Reads the metadata element back, as libvirt returns it (its own quoting and prefixes), or nil
    /// when `xml` is not a Mycelium endophyte element.
    public static func parseMetadata(_ xml: String) -> EndophyteMetadata? {
        guard attribute("managed-by", in: xml) == "mycelium",
              let role = attribute("role", in: xml).flatMap(EndophyteRole.init(rawValue:)),
              let epoch = attribute("ownership-epoch", in: xml).flatMap({ UInt64($0) })
        else { return nil }
        return EndophyteMetadata(role: role, ownershipEpoch: epoch)
    }

    /// The value of attribute `name` in the first element of `xml` (either quote style), unescaped.
    static func attribute(_ name: String, in xml: String) -> String? {
        let s = Array(xml.utf8)
        let key = Array(" \(name)=".utf8)
        guard s.count > key.count else { return nil }
        var i = 0
        while i + key.count < s.count {
            if s[i] == UInt8(ascii: ">") { return nil }  // past the first tag
            if Array(s[i..<i + key.count]) == key {
                let q = s[i + key.count]
                guard q == UInt8(ascii: "'") || q == UInt8(ascii: "\"") else { return nil }
                let start = i + key.count + 1
                guard let end = s[start...].firstIndex(of: q) else { return nil }
                return unescape(String(decoding: s[start..<end], as: UTF8.self))
            }
            i += 1
        }
        return nil
    }

    /// XML text and attribute escaping (both quote characters, so any attribute quoting is safe).
    public static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "'": out += "&apos;"
            case "\"": out += "&quot;"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    static func unescape(_ s: String) -> String {
        guard s.contains("&") else { return s }
        return s.replacingOccurrences("&lt;", "<").replacingOccurrences("&gt;", ">").replacingOccurrences("&apos;", "'")
            .replacingOccurrences("&quot;", "\"").replacingOccurrences("&amp;", "&")
    }
}

extension String {
    /// Foundation-free replace (this file needs nothing else of Foundation).
    fileprivate func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
