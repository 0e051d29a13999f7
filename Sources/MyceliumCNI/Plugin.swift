// The CNI commands. `CNIPlugin.run` is the whole plugin: environment and stdin in, stdout text and exit status
// out; main.swift only does the I/O.
//
// The pod's network: a veth pair; the container end (CNI_IFNAME) holds the pod address as a /32, a link-scope
// route to the gateway 169.254.1.1, a default route via it, and a permanent neighbour entry that maps
// 169.254.1.1 to the host end's MAC, so the pod never ARPs and every frame it sends lands on the host veth,
// where the eBPF datapath (tc ingress, attached by myc_dp_endpoint_add) takes it.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum CNIPlugin {
    /// Runs one invocation. Never traps on bad input: every failure becomes the spec's error object.
    public static func run(environment: [String: String], stdin: [UInt8]) -> (stdout: String, exitCode: Int32) {
        var outputVersion = bestEffortVersion(stdin)
        do {
            let env = try CNIEnvironment(environment)
            if env.command == .version { return (versionReport(stdin), 0) }
            let config = try NetworkConfig.parse(stdin, environment: environment)
            outputVersion = config.cniVersion
            switch env.command {
            case .add: return (try add(config, env).json.pretty, 0)
            case .del: try del(config, env)
            case .check: try check(config, env)
            case .gc: try gc(config)
            case .status: try status(config)
            case .version: break
            }
            return ("", 0)
        } catch {
            return (error.json(cniVersion: outputVersion).pretty, 1)
        }
    }

    /// The version to write an early error in: the configuration's, when it is one we speak.
    static func bestEffortVersion(_ stdin: [UInt8]) -> String {
        if let doc = try? JSON.parse(stdin), let v = doc["cniVersion"]?.stringValue, CNIVersion.isSupported(v) { return v }
        return CNIVersion.latest
    }

    /// VERSION: stdin carries only the caller's cniVersion (and may be empty); the answer lists what we speak.
    static func versionReport(_ stdin: [UInt8]) -> String {
        JSON.object([
            ("cniVersion", .string(bestEffortVersion(stdin))),
            ("supportedVersions", .array(CNIVersion.supported.map { .string($0) })),
        ]).pretty
    }

    // MARK: names

    /// The host-side veth: "myc" + 11 hex digits of FNV-1a-64 over "containerID/ifname" (14 characters, inside
    /// IFNAMSIZ). Deterministic, so DEL and GC find it from the attachment alone, without state.
    public static func hostVethName(containerID: String, ifname: String) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in Array(containerID.utf8) + [0x2F] + Array(ifname.utf8) {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01b3
        }
        let hex = String(h, radix: 16)
        let padded = String(repeating: "0", count: 16 - hex.count) + hex
        return "myc" + padded.prefix(11)
    }

    static let gatewayRoute = IPv4CIDR(address: CNIDefaults.gateway, prefixLength: 32)
    static let defaultRoute = IPv4CIDR(address: IPv4Address(0), prefixLength: 0)

    // MARK: ADD

    static func openNetns(_ path: String) throws(CNIError) -> NetnsHandle {
        do {
            let ns = try NetnsHandle(path: path)
            // The plugin's own namespace is the host's: wiring a "pod" there would put a default route and a /32
            // on the node itself.
            var theirs = stat(), ours = stat()
            if fstat(ns.fd, &theirs) == 0, stat("/proc/self/ns/net", &ours) == 0,
               theirs.st_dev == ours.st_dev, theirs.st_ino == ours.st_ino {
                throw CNIError(.invalidEnvironment, "CNI_NETNS \(path) is the host's own network namespace",
                               details: "a pod needs its own network namespace")
            }
            return ns
        } catch let e as CNIError {
            throw e
        } catch let error as NetlinkError {
            switch error.errno {
            case ENOENT: throw CNIError(.unknownContainer, "the container's network namespace \(path) does not exist", details: error.message)
            case EINVAL: throw CNIError(.invalidEnvironment, "CNI_NETNS \(path) is not a network namespace", details: error.message)
            default: throw CNIError(.ioFailure, "cannot open the container's network namespace \(path)", details: error.message)
            }
        } catch {
            throw CNIError(.ioFailure, "cannot open the container's network namespace \(path)", details: "\(error)")
        }
    }

    static func netlinkError(_ what: String, _ e: NetlinkError) -> CNIError {
        CNIError(.netlinkFailure, what, details: e.message)
    }

    static func add(_ config: NetworkConfig, _ env: CNIEnvironment) throws(CNIError) -> CNIResult {
        let containerID = try env.requireContainerID()
        let ifname = try env.requireIfname()
        let nsPath = try env.requireNetns()
        let ns = try openNetns(nsPath)
        var prev: CNIResult?
        if let p = config.prevResult { prev = try CNIResult.parse(p, cniVersion: config.cniVersion) }
        let range = try IPRange.resolve(config.ipam)
        let hostName = hostVethName(containerID: containerID, ifname: ifname)
        let store = IPAMStore(dataDir: config.ipam.dataDir, network: config.name)
        let datapath = Datapath(pinDir: config.pinDir)

        return try store.withLock { (ipam) throws(CNIError) -> CNIResult in
            let (alloc, _) = try ipam.reserve(in: range, containerID: containerID, ifname: ifname)
            var host: Netlink?
            do throws(CNIError) {
                let h: Netlink
                let pod: Netlink
                do throws(NetlinkError) {
                    h = try Netlink()
                    host = h
                    pod = try Netlink(netns: ns)
                } catch { throw netlinkError("cannot open netlink", error) }

                // A veth of this attachment left by an ADD that crashed: it is ours (the name is derived from the
                // attachment), so replace it. Its container end goes with it.
                do throws(NetlinkError) { try h.deleteLink(named: hostName) } catch { throw netlinkError("cannot remove the stale veth \(hostName)", error) }
                let existing: LinkInfo?
                do throws(NetlinkError) { existing = try pod.link(named: ifname) } catch { throw netlinkError("cannot look up \(ifname) in \(nsPath)", error) }
                if existing != nil {
                    throw CNIError(.netlinkFailure, "interface \(ifname) already exists in the container's network namespace \(nsPath)",
                                   details: "CNI_IFNAME must name an interface that this ADD creates")
                }
                do throws(NetlinkError) {
                    try h.createVeth(name: hostName, peerName: ifname, peerNetns: ns, mtu: config.mtu)
                } catch { throw netlinkError("cannot create the veth pair \(hostName)/\(ifname)", error) }

                let podAddress = IPv4CIDR(address: alloc.ip, prefixLength: 32)
                let hostLink: LinkInfo, podLink: LinkInfo
                do {
                    guard let hl = try h.link(named: hostName), hl.mac.count == 6 else {
                        throw CNIError(.netlinkFailure, "the new veth \(hostName) vanished or has no MAC address")
                    }
                    guard let pl = try pod.link(named: ifname), pl.mac.count == 6 else {
                        throw CNIError(.netlinkFailure, "the new interface \(ifname) is not in \(nsPath) or has no MAC address")
                    }
                    hostLink = hl
                    podLink = pl
                    try h.setUp(ifindex: hl.ifindex)
                    try pod.setUp(ifindex: pl.ifindex)
                    try pod.addAddress(ifindex: pl.ifindex, podAddress)
                    try pod.addRoute(ifindex: pl.ifindex, dst: gatewayRoute, via: nil, scopeLink: true)
                    try pod.addRoute(ifindex: pl.ifindex, dst: defaultRoute, via: CNIDefaults.gateway, scopeLink: false)
                    try pod.addPermanentNeighbour(ifindex: pl.ifindex, ip: CNIDefaults.gateway, mac: hl.mac)
                    // So the node itself (health checks, the agent) reaches the pod; pod-to-pod goes through eBPF.
                    // Replace, not add: the address is reserved to us, so a route to it is stale (a veth whose
                    // IPAM record was lost) and must not block the pod.
                    try h.addRoute(ifindex: hl.ifindex, dst: podAddress, via: nil, scopeLink: true, replace: true)
                } catch let e as NetlinkError {
                    throw netlinkError("cannot configure the pod's network", e)
                } catch let e as CNIError {
                    throw e
                } catch {
                    throw CNIError(.netlinkFailure, "cannot configure the pod's network", details: "\(error)")
                }

                do throws(DatapathError) {
                    try datapath.load(object: config.bpfObject)
                    try datapath.add(DatapathEndpoint(ip: alloc.ip, hostIfindex: hostLink.ifindex, networkId: config.networkId,
                                                      podMAC: podLink.mac, hostMAC: hostLink.mac))
                } catch {
                    throw CNIError(.datapathFailure, "cannot register the pod with the eBPF datapath",
                                   details: "\(error.message) (object \(config.bpfObject), pin dir \(config.pinDir))")
                }

                var result = prev ?? CNIResult(cniVersion: config.cniVersion)
                result.cniVersion = config.cniVersion
                let base = result.interfaces.count
                let mtu = Int(hostLink.mtu)
                result.interfaces.append(CNIInterface(name: hostName, mac: formatMAC(hostLink.mac), mtu: mtu))
                result.interfaces.append(CNIInterface(name: ifname, mac: formatMAC(podLink.mac), sandbox: nsPath, mtu: Int(podLink.mtu)))
                result.ips.append(CNIIPConfig(address: podAddress, gateway: CNIDefaults.gateway, interface: base + 1))
                result.routes.append(CNIRoute(dst: defaultRoute, gw: CNIDefaults.gateway))
                result.routes.append(CNIRoute(dst: gatewayRoute, scope: 253))  // spec 1.1 only; dropped for 1.0.0
                if let dns = config.dns { result.dns = dns }
                return result
            } catch {
                // Roll back in reverse: endpoint (any endpoint of this address is ours: the address is reserved to
                // us), veth (its peer goes with it, and with it the address and routes), then the reservation.
                // Failures here are secondary; the original error is what the runtime sees.
                if datapath.isLoaded { try? datapath.remove(alloc.ip) }
                if let host { _ = try? host.deleteLink(named: hostName) }
                try? ipam.release(alloc.ip)
                throw error
            }
        }
    }

    // MARK: DEL

    /// Idempotent: an unknown container, a missing veth or a missing netns are all success.
    static func del(_ config: NetworkConfig, _ env: CNIEnvironment) throws(CNIError) {
        let containerID = try env.requireContainerID()
        let ifname = try env.requireIfname()
        let store = IPAMStore(dataDir: config.ipam.dataDir, network: config.name)
        let datapath = Datapath(pinDir: config.pinDir)
        try store.withLock { (ipam) throws(CNIError) in
            let mine = try ipam.allocations().filter { $0.containerID == containerID && $0.ifname == ifname }
            try release(containerID: containerID, ifname: ifname, ips: mine.map(\.ip), ipam: ipam, datapath: datapath)
        }
    }

    /// Tears one attachment down: veth, endpoints, then addresses (so an address is free only once nothing
    /// points at it any more).
    static func release(containerID: String, ifname: String, ips: [IPv4Address], ipam: LockedIPAM, datapath: Datapath) throws(CNIError) {
        let hostName = hostVethName(containerID: containerID, ifname: ifname)
        do throws(NetlinkError) {
            let h = try Netlink()
            try h.deleteLink(named: hostName)
        } catch {
            throw netlinkError("cannot delete the veth \(hostName) of \(containerID)/\(ifname)", error)
        }
        if datapath.isLoaded {
            for ip in ips {
                do throws(DatapathError) { try datapath.remove(ip) } catch {
                    throw CNIError(.datapathFailure, "cannot remove the datapath endpoint \(ip)", details: error.message)
                }
            }
        }
        for ip in ips { try ipam.release(ip) }
    }

    // MARK: CHECK

    static func check(_ config: NetworkConfig, _ env: CNIEnvironment) throws(CNIError) {
        let containerID = try env.requireContainerID()
        let ifname = try env.requireIfname()
        let nsPath = try env.requireNetns()
        guard let prevDoc = config.prevResult else {
            throw CNIError(.invalidConfig, "CHECK needs prevResult", details: "the runtime must pass the result of the last ADD as prevResult")
        }
        let prev = try CNIResult.parse(prevDoc, cniVersion: config.cniVersion)
        let ns = try openNetns(nsPath)
        let hostName = hostVethName(containerID: containerID, ifname: ifname)
        func failed(_ msg: String, _ details: String = "") -> CNIError { CNIError(.checkFailed, msg, details: details) }

        guard let podIndex = prev.interfaces.firstIndex(where: { $0.name == ifname && $0.sandbox == nsPath }) else {
            throw failed("prevResult has no interface \(ifname) in \(nsPath)")
        }
        guard let ipConf = prev.ips.first(where: { $0.interface == podIndex }) else {
            throw failed("prevResult has no address for \(ifname)")
        }
        let store = IPAMStore(dataDir: config.ipam.dataDir, network: config.name)
        let datapath = Datapath(pinDir: config.pinDir)
        try store.withLock { (ipam) throws(CNIError) in
            guard let alloc = try ipam.find(containerID: containerID, ifname: ifname) else {
                throw failed("no address is allocated to \(containerID)/\(ifname)")
            }
            guard alloc.ip == ipConf.address.address else {
                throw failed("\(containerID)/\(ifname) holds \(alloc.ip), but prevResult says \(ipConf.address.address)")
            }
            do {
                let h = try Netlink()
                let pod = try Netlink(netns: ns)
                guard let hl = try h.link(named: hostName) else { throw failed("the host veth \(hostName) is missing") }
                guard hl.isUp else { throw failed("the host veth \(hostName) is down") }
                guard let pl = try pod.link(named: ifname) else { throw failed("\(ifname) is missing from \(nsPath)") }
                guard pl.isUp else { throw failed("\(ifname) in \(nsPath) is down") }
                let want = prev.interfaces[podIndex].mac
                if !want.isEmpty, want.lowercased() != formatMAC(pl.mac) {
                    throw failed("\(ifname) has MAC \(formatMAC(pl.mac)), prevResult says \(want)")
                }
                let podAddress = IPv4CIDR(address: alloc.ip, prefixLength: 32)
                guard try pod.hasAddress(ifindex: pl.ifindex, podAddress) else { throw failed("\(ifname) lacks the address \(podAddress)") }
                guard try pod.hasRoute(ifindex: pl.ifindex, dst: gatewayRoute, via: nil) else {
                    throw failed("the route to the gateway \(CNIDefaults.gateway) on \(ifname) is missing")
                }
                guard try pod.hasRoute(ifindex: pl.ifindex, dst: defaultRoute, via: CNIDefaults.gateway) else {
                    throw failed("the default route via \(CNIDefaults.gateway) is missing")
                }
                guard let n = try pod.neighbour(ifindex: pl.ifindex, ip: CNIDefaults.gateway), n.permanent, n.mac == hl.mac else {
                    throw failed("the permanent neighbour entry \(CNIDefaults.gateway) -> \(formatMAC(hl.mac)) is missing or wrong")
                }
                guard datapath.isLoaded else { throw failed("the eBPF datapath is not loaded under \(config.pinDir)") }
                let ep: DatapathEndpoint?
                do throws(DatapathError) { ep = try datapath.endpoint(alloc.ip) } catch {
                    throw CNIError(.datapathFailure, "cannot read the datapath endpoint \(alloc.ip)", details: error.message)
                }
                guard let ep else { throw failed("\(alloc.ip) is not registered in the datapath") }
                guard ep.hostIfindex == hl.ifindex, ep.networkId == config.networkId, ep.podMAC == pl.mac, ep.hostMAC == hl.mac else {
                    throw failed("the datapath endpoint of \(alloc.ip) does not match the interfaces",
                                 "ifindex \(ep.hostIfindex) vs \(hl.ifindex), network \(ep.networkId) vs \(config.networkId)")
                }
            } catch let e as CNIError {
                throw e
            } catch let e as NetlinkError {
                throw netlinkError("cannot inspect the pod's network", e)
            } catch {
                throw failed("\(error)")
            }
        }
    }

    // MARK: GC (spec 1.1)

    /// Releases every attachment of this network that the runtime no longer lists, and every datapath endpoint
    /// inside this network's pod CIDR that holds no address. Keeps going past failures and reports them at the end.
    static func gc(_ config: NetworkConfig) throws(CNIError) {
        guard let valid = config.validAttachments else {
            throw CNIError(.invalidConfig, "GC needs cni.dev/valid-attachments",
                           details: "without the list every attachment would look stale; refusing to delete anything")
        }
        let keep = Set(valid)
        let store = IPAMStore(dataDir: config.ipam.dataDir, network: config.name)
        let datapath = Datapath(pinDir: config.pinDir)
        var failures: [String] = []
        try store.withLock { (ipam) throws(CNIError) in
            ipam.removeStaleTempFiles()
            let all = try ipam.allocations()
            var byAttachment: [NetworkConfig.Attachment: [IPv4Address]] = [:]
            for a in all { byAttachment[.init(containerID: a.containerID, ifname: a.ifname), default: []].append(a.ip) }
            for (att, ips) in byAttachment where !keep.contains(att) {
                do throws(CNIError) {
                    try release(containerID: att.containerID, ifname: att.ifname, ips: ips, ipam: ipam, datapath: datapath)
                } catch {
                    failures.append(error.description)
                }
            }
            // Endpoints with no allocation behind them (an ADD that crashed between the datapath and the
            // rollback, or state lost with the data dir).
            if datapath.isLoaded, let range = try? IPRange.resolve(config.ipam) {
                do throws(DatapathError) {
                    for ep in try datapath.endpoints() where range.subnet.contains(ep.ip) && !ipam.isAllocated(ep.ip) {
                        try datapath.remove(ep.ip)
                    }
                } catch {
                    failures.append("datapath: \(error.message)")
                }
            }
        }
        if !failures.isEmpty {
            throw CNIError(.ioFailure, "GC could not release everything", details: failures.joined(separator: "; "))
        }
    }

    // MARK: STATUS (spec 1.1)

    /// Ready when ADD could succeed now: a pod CIDR, writable state, a free address, a datapath to attach to.
    static func status(_ config: NetworkConfig) throws(CNIError) {
        func unavailable(_ msg: String, _ details: String = "") -> CNIError { CNIError(.pluginNotAvailable, msg, details: details) }
        let range: IPRange
        do throws(CNIError) { range = try IPRange.resolve(config.ipam) } catch { throw unavailable(error.msg, error.details) }
        let store = IPAMStore(dataDir: config.ipam.dataDir, network: config.name)
        let used: Int
        do throws(CNIError) {
            used = try store.withLock { (ipam) throws(CNIError) -> Int in
                try ipam.allocations().filter { range.contains($0.ip) }.count
            }
        } catch { throw unavailable("the IPAM state is not usable: \(error.msg)", error.details) }
        if used >= range.count {
            throw unavailable("no free pod address in \(range)", "all \(range.count) addresses are allocated")
        }
        let datapath = Datapath(pinDir: config.pinDir)
        if !datapath.isLoaded && access(config.bpfObject, R_OK) != 0 {
            throw unavailable("the eBPF datapath is not loaded and its object \(config.bpfObject) is not readable",
                              "build it (make -C CSources/bpf) and install it, or set bpfObject")
        }
    }
}
