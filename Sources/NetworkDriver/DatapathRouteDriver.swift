// The route controller's driver: loads this node's eBPF datapath (CSources/bpf, pinned under
// datapath_pin_dir), attaches it to the underlay interface that holds the node's address and to a
// VXLAN device in collect-metadata mode, reports what it found, and then makes the datapath's
// routes and remote identities equal to each table the controller sends (a diff against what the
// maps hold, so an agent restarted over a living datapath removes what no longer belongs).
//
// The pods' own endpoints are not this driver's to write: mycelium-cni registers them when a runtime
// adds a pod. It reads them (`observeEndpoints`) and reports them to the controller, which publishes
// them to the other nodes. Unloading is not this driver's either: pods keep their network while the
// agent restarts.

import Foundation
import Logging
import MyceliumCNI
import MyceliumControl
import NetworkController
import ServiceRuntime
import Synchronization

public final class DatapathRouteDriver: ControllerDriver, Sendable {
    public typealias Action = DatapathAction
    public typealias Report = DatapathReport

    public struct Settings: Sendable {
        /// Where the maps and programs are pinned (mycelium-cni's pinDir must be the same).
        public var pinDir: String
        /// The compiled BPF object (datapath.bpf.o).
        public var object: String
        /// This node's underlay address: the interface that holds it leads to the other nodes.
        public var nodeAddress: String
        /// The VXLAN device to create (or reuse); "" for none.
        public var vxlanDevice: String
        public var vxlanPort: UInt16
        public init(pinDir: String, object: String, nodeAddress: String, vxlanDevice: String = "myc-vxlan", vxlanPort: UInt16 = 4789) {
            self.pinDir = pinDir; self.object = object; self.nodeAddress = nodeAddress
            self.vxlanDevice = vxlanDevice; self.vxlanPort = vxlanPort
        }
    }

    let settings: Settings
    let logger: Logger
    let datapath: Datapath
    let sink = Mutex<(@Sendable (DatapathReport) -> Void)?>(nil)

    public init(settings: Settings, logger: Logger) {
        self.settings = settings
        self.logger = logger
        self.datapath = Datapath(pinDir: settings.pinDir)
    }

    public func reportTo(_ sink: @escaping @Sendable (DatapathReport) -> Void) {
        self.sink.withLock { $0 = sink }
        Task.detached { [self] in self.send(self.setUp()) }
    }

    func send(_ r: DatapathReport) { sink.withLock { $0 }?(r) }

    /// Loads and attaches the datapath; what the controller needs to know of the underlay.
    func setUp() -> DatapathReport {
        guard let ip = IPv4Address(settings.nodeAddress) else {
            return .unavailable("this node's address '\(settings.nodeAddress)' is not IPv4 (set advertise or listen to this node's IPv4 address)")
        }
        guard let (ifname, ifindex, prefix) = Self.interface(holding: ip) else {
            return .unavailable("no interface holds this node's address \(ip); set advertise to the address other nodes reach it at")
        }
        do {
            try datapath.load(object: settings.object)
        } catch {
            return .unavailable("cannot load the eBPF datapath from \(settings.object): \(error)")
        }
        var vxlanIndex: UInt32 = 0
        if !settings.vxlanDevice.isEmpty {
            switch Self.ensureVXLAN(settings.vxlanDevice, port: settings.vxlanPort) {
            case .success(let idx): vxlanIndex = idx
            case .failure(let why):
                logger.warning("no VXLAN device: only nodes on this node's subnet are reachable natively", metadata: ["error": "\(why)"])
            }
        }
        do {
            try datapath.setUnderlay(node: ip, underlayIfindex: ifindex, vxlanIfindex: vxlanIndex)
        } catch {
            return .unavailable("cannot attach the datapath to \(ifname): \(error)")
        }
        logger.info("datapath attached", metadata: ["underlay": "\(ifname)", "address": "\(ip)/\(prefix)",
                                                    "vxlan": "\(vxlanIndex == 0 ? "none" : settings.vxlanDevice)", "pins": "\(settings.pinDir)"])
        return .ready(UnderlayFacts(address: ip.value, prefix: prefix, vxlan: vxlanIndex != 0))
    }

    public func perform(_ action: DatapathAction) async throws {
        let table: DatapathTable
        switch action {
        case .sync(let t): table = t
        case .observeEndpoints:
            send(.endpoints(try localEndpoints()))
            return
        }
        // What the maps hold now (they outlive agents), as a table, so the diff removes leftovers.
        var held = DatapathTable()
        for r in try datapath.routes() {
            guard let c = CIDR(address: r.cidr.address.value, prefix: UInt8(r.cidr.prefixLength)) else { continue }
            held.routes[c] = PodRoute(cidr: c, via: r.node.value, vxlan: r.vxlan)
        }
        for (ip, id) in try datapath.remotes() { held.remotes[ip.value] = id }
        let diff = table.changes(from: held)
        if diff.isEmpty { return }
        for c in diff.removeRoutes {
            try datapath.removeRoute(IPv4CIDR(address: IPv4Address(c.address), prefixLength: Int(c.prefix)))
        }
        for r in diff.addRoutes {
            try datapath.addRoute(.init(cidr: IPv4CIDR(address: IPv4Address(r.cidr.address), prefixLength: Int(r.cidr.prefix)),
                                        node: IPv4Address(r.via), vxlan: r.vxlan))
        }
        for ip in diff.removeRemotes { try datapath.removeRemote(IPv4Address(ip)) }
        for (ip, id) in diff.addRemotes { try datapath.addRemote(IPv4Address(ip), networkId: id) }
        logger.info("datapath routes updated", metadata: [
            "routes": "\(table.routes.values.sorted { $0.cidr < $1.cidr }.map { "\($0.cidr) via \(formatIPv4($0.via))\($0.vxlan ? " (vxlan)" : "")" })",
            "remote_pods": "\(table.remotes.count)", "added": "\(diff.addRoutes.count + diff.addRemotes.count)",
            "removed": "\(diff.removeRoutes.count + diff.removeRemotes.count)"])
    }

    /// This node's pods as the datapath's endpoint map holds them: address (host order) → identity.
    func localEndpoints() throws -> [UInt32: UInt32] {
        var out: [UInt32: UInt32] = [:]
        for e in try datapath.endpoints() { out[e.ip.value] = e.networkId }
        return out
    }

    /// The interface that holds `ip`, its index and the prefix length of the address.
    static func interface(holding ip: IPv4Address) -> (String, UInt32, UInt8)? {
        var head: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&head) == 0, let first = head else { return nil }
        defer { freeifaddrs(head) }
        var cur: UnsafeMutablePointer<ifaddrs>? = first
        while let p = cur {
            defer { cur = p.pointee.ifa_next }
            guard let a = p.pointee.ifa_addr, a.pointee.sa_family == sa_family_t(AF_INET) else { continue }
            let addr = a.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr.s_addr }
            guard IPv4Address(networkOrder: addr) == ip else { continue }
            var prefix: UInt8 = 32
            if let m = p.pointee.ifa_netmask {
                let mask = m.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
                prefix = UInt8(mask.nonzeroBitCount)
            }
            let name = String(cString: p.pointee.ifa_name)
            let index = if_nametoindex(p.pointee.ifa_name)
            guard index != 0 else { return nil }
            return (name, index, prefix)
        }
        return nil
    }

    /// The MTU of the interface that holds `address` (nil: none does).
    public static func mtu(ofInterfaceHolding address: String) -> Int? {
        // Through netlink (ip), not /sys/class/net: an agent that entered a network namespace with
        // nsenter still sees the sysfs of the namespace it came from.
        guard let ip = IPv4Address(address), let (name, _, _) = interface(holding: ip) else { return nil }
        let r = run(["/usr/sbin/ip", "-o", "link", "show", "dev", name])
        guard r.status == 0, let at = r.output.range(of: " mtu ") else { return nil }
        return Int(r.output[at.upperBound...].prefix { $0.isNumber })
    }

    /// Creates (or reuses) a VXLAN device in collect-metadata mode on `port`; its ifindex.
    static func ensureVXLAN(_ name: String, port: UInt16) -> Result<UInt32, DriverFailure> {
        if if_nametoindex(name) == 0 {
            let r = run(["/usr/sbin/ip", "link", "add", name, "type", "vxlan", "external", "dstport", "\(port)"])
            if r.status != 0 && if_nametoindex(name) == 0 {
                return .failure(DriverFailure("ip link add \(name) type vxlan external: \(r.output)"))
            }
        }
        let up = run(["/usr/sbin/ip", "link", "set", name, "up"])
        if up.status != 0 { return .failure(DriverFailure("ip link set \(name) up: \(up.output)")) }
        let idx = if_nametoindex(name)
        return idx == 0 ? .failure(DriverFailure("\(name) vanished")) : .success(idx)
    }

    /// Runs `argv` (an `ip` command) to its end, blocking: its status (-1 when it could not run or did
    /// not end within 30 s) and its output, stdout and stderr together.
    static func run(_ argv: [String]) -> (status: Int32, output: String) {
        let r: CommandResult
        do { r = try CommandRunner.run(argv, environment: ProcessInfo.processInfo.environment, timeoutMillis: 30_000, mergeErrors: true, instance: "ip") } catch {
            return (-1, "\(error)")
        }
        let output = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        if r.timedOut { return (-1, "did not finish within 30 s (killed)" + (output.isEmpty ? "" : ": " + output)) }
        if r.waitError != 0 { return (-1, "its exit status was lost: another part of the agent reaped it") }
        return (r.status, output)
    }
}

public struct DriverFailure: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ s: String) { description = s }
}
