// The route controller: every node's eBPF datapath learns the other nodes' pod CIDRs, how to reach
// them (natively over the underlay, or in VXLAN) and the network identity of the pods running there,
// from the control state alone, and follows it as members come, go and fail.
//
// Core (pure): the desired datapath table is a function of (control state, this node, this node's
// underlay as its driver found it, settings). The controller recomputes it when something it reads
// changed and asks the driver to make the maps equal to it (`sync`); the driver diffs. No clock, no
// socket, no file: the simulator and the tests run it as is.
//
// Routes. A present member (alive or suspect) with a pod CIDR and an underlay address gets a route;
// a failed, departed or revoked one loses it (its pods are being placed elsewhere). The mode:
//  - native where the underlay allows it: the peer's address is on this node's underlay subnet, so
//    one L2 hop delivers to it and no router has to know pod CIDRs (Cilium's native routing with
//    auto-direct-node-routes; flannel's host-gw);
//  - VXLAN otherwise (the peer is behind a router): the packet is encapsulated to the peer's
//    underlay address and carries the sender's network identity as its VNI.
// `datapath_mode = native | vxlan` forces one for every peer.
//
// Remote identities (Cilium's ipcache, fed from every agent's endpoints through the Raft-committed
// control state). A natively routed packet carries no identity, so the receiving node looks the
// sender's address up. Two sources, both limited to addresses inside the pod CIDR of a routed (present,
// not revoked) node:
//  - every pod a node published (`ServiceCommand.endpoints`), with the identity it published: each
//    agent's driver reads its datapath's endpoint map (what mycelium-cni registered: service
//    instances, K3s's pods, pods made by hand, of any network) every second, and this controller
//    publishes the set when it differs from what the control state records (at most every 2 s while
//    it differs; the table refuses addresses outside the node's own block and over 4096 pods);
//  - every service instance that runs on another node and reported a pod address in its block, with
//    this network's identity (an older agent publishes no endpoints); a published identity wins.
// Anything else arriving from a pod CIDR is dropped by the datapath (the policy check), and a pod of
// another network is recorded with its own identity, so it is dropped too; a stale address gets
// nowhere. A node that fails, leaves or is revoked loses its route and its pods' identities.

import MyceliumControl
import MyceliumIdentity
import MyceliumSpores

public enum RoutingMode: String, Sendable, Equatable, CaseIterable {
    case auto, native, vxlan
}

public struct DatapathSettings: Sendable, Equatable {
    public var mode: RoutingMode
    /// The identity of this network's pods in the datapath (mycelium-cni's networkId of the
    /// network the agent writes, so both agree).
    public var networkId: UInt32
    public init(mode: RoutingMode = .auto, networkId: UInt32) { self.mode = mode; self.networkId = networkId }
}

/// What the driver found of this node's underlay when it set the datapath up.
public struct UnderlayFacts: Sendable, Equatable {
    /// This node's underlay address (host order) and the prefix length of its subnet.
    public var address: UInt32
    public var prefix: UInt8
    /// Whether a VXLAN device is attached (0 ifindex: none could be made).
    public var vxlan: Bool
    public init(address: UInt32, prefix: UInt8, vxlan: Bool) { self.address = address; self.prefix = prefix; self.vxlan = vxlan }

    public func sameSubnet(_ other: UInt32) -> Bool {
        let mask: UInt32 = prefix == 0 ? 0 : ~UInt32(0) << (32 - UInt32(min(prefix, 32)))
        return address & mask == other & mask
    }
}

public struct PodRoute: Sendable, Hashable {
    public var cidr: CIDR
    /// The peer's underlay address (host order).
    public var via: UInt32
    public var vxlan: Bool
    public init(cidr: CIDR, via: UInt32, vxlan: Bool) { self.cidr = cidr; self.via = via; self.vxlan = vxlan }
}

/// Everything the datapath should hold about other nodes.
public struct DatapathTable: Sendable, Equatable {
    public var routes: [CIDR: PodRoute] = [:]
    /// Remote pod address (host order) → its network identity.
    public var remotes: [UInt32: UInt32] = [:]
    public init(routes: [CIDR: PodRoute] = [:], remotes: [UInt32: UInt32] = [:]) { self.routes = routes; self.remotes = remotes }

    /// What to change to turn `old` into `self`: deletions first, then additions (a changed route is
    /// re-added: the LPM trie's update replaces it).
    public func changes(from old: DatapathTable) -> DatapathDiff {
        var d = DatapathDiff()
        for (cidr, _) in old.routes where routes[cidr] == nil { d.removeRoutes.append(cidr) }
        for (cidr, r) in routes where old.routes[cidr] != r { d.addRoutes.append(r) }
        for (ip, _) in old.remotes where remotes[ip] == nil { d.removeRemotes.append(ip) }
        for (ip, id) in remotes where old.remotes[ip] != id { d.addRemotes.append((ip, id)) }
        d.removeRoutes.sort(); d.addRoutes.sort { $0.cidr < $1.cidr }
        d.removeRemotes.sort(); d.addRemotes.sort { $0.ip < $1.ip }
        return d
    }
}

public struct DatapathDiff: Sendable {
    public var removeRoutes: [CIDR] = []
    public var addRoutes: [PodRoute] = []
    public var removeRemotes: [UInt32] = []
    public var addRemotes: [(ip: UInt32, networkId: UInt32)] = []
    public var isEmpty: Bool { removeRoutes.isEmpty && addRoutes.isEmpty && removeRemotes.isEmpty && addRemotes.isEmpty }
}

public enum DatapathAction: Sendable, Equatable {
    /// Make the datapath's routes and remote identities equal to this table.
    case sync(DatapathTable)
    /// Read this node's endpoints from the datapath and report them (`DatapathReport.endpoints`).
    case observeEndpoints
}

public enum DatapathReport: Sendable, Equatable {
    /// The datapath is loaded and attached to this underlay.
    case ready(UnderlayFacts)
    /// It could not be set up; the node routes nothing to other nodes' pods (the reason is logged).
    case unavailable(String)
    /// This node's pods as the datapath's endpoint map holds them: address (host order) → identity.
    case endpoints([UInt32: UInt32])
}

/// Parses a dotted quad into host order (the control state's CIDR parser, as a /32).
public func parseIPv4(_ s: String) -> UInt32? { CIDR(s + "/32")?.address }

public func formatIPv4(_ v: UInt32) -> String { "\(v >> 24).\(v >> 16 & 255).\(v >> 8 & 255).\(v & 255)" }

public struct RouteController: Controller {
    public typealias Action = DatapathAction
    public typealias Report = DatapathReport
    public let settings: DatapathSettings
    public var name: String { "datapath" }
    /// The driver's view of this node's underlay (nil until it reported ready).
    public private(set) var underlay: UnderlayFacts?
    /// What the driver was last asked to hold.
    public private(set) var synced: DatapathTable?
    var dirty = true
    /// Peers left without a route for a reason the operator should know, as last noted.
    var unroutable: [NodeID: String] = [:]
    /// This node's endpoints as the driver last read them (nil: not read since the datapath was ready).
    public private(set) var observed: [UInt32: UInt32]?
    /// When (`context.millis`) the driver was last asked to read them, and they were last published.
    var lastObserve: UInt64?
    var lastPublish: UInt64?
    /// How many of this node's pods were last left out (outside its block, or over the bound), as noted.
    var leftOut = 0
    public static let observeEveryMillis: UInt64 = 1000
    /// A publication that has not applied yet is sent again after this long.
    public static let republishMillis: UInt64 = 2000

    public init(settings: DatapathSettings) { self.settings = settings }

    public mutating func applied(_ change: ControlChange, context: ControllerContext) -> [ControllerEffect<DatapathAction>] {
        switch change {
        case .podCIDR, .podPool, .spore, .serviceNode, .restored, .service, .podEndpoints: dirty = true
        case .kv, .vm, .volume, .storageNode, .storagePlacement: break
        }
        return []
    }

    public mutating func tick(context: ControllerContext) -> [ControllerEffect<DatapathAction>] {
        var out: [ControllerEffect<DatapathAction>] = []
        if underlay != nil, lastObserve.map({ context.millis >= $0 + Self.observeEveryMillis }) ?? true {
            lastObserve = context.millis
            out.append(.act(.observeEndpoints))
        }
        out += publication(context)
        guard dirty, let underlay else { return out }
        dirty = false
        let (table, problems) = Self.desired(state: context.state, me: context.node, underlay: underlay, settings: settings)
        for (node, why) in problems.sorted(by: { $0.key < $1.key }) where unroutable[node] != why {
            out.append(.note("no route to the pods of \(node): \(why)"))
        }
        unroutable = problems
        if table != synced {
            synced = table
            out.append(.act(.sync(table)))
        }
        return out
    }

    public mutating func reported(_ report: DatapathReport, context: ControllerContext) -> [ControllerEffect<DatapathAction>] {
        switch report {
        case .ready(let facts):
            underlay = facts
            dirty = true
            synced = nil  // a (re)started datapath holds whatever it held: sync it in full
            return [.note("datapath ready on underlay \(formatIPv4(facts.address))/\(facts.prefix)\(facts.vxlan ? " with VXLAN" : " (no VXLAN device)")")]
        case .unavailable(let why):
            underlay = nil
            observed = nil  // what was published stays until a datapath is read again
            return [.note("datapath unavailable: \(why); pods on this node reach no other node")]
        case .endpoints(let eps):
            observed = eps
            return publication(context)
        }
    }

    /// The endpoints this node publishes, if the control state records others and none was sent
    /// in the last `republishMillis`.
    mutating func publication(_ context: ControllerContext) -> [ControllerEffect<DatapathAction>] {
        let state = context.state, me = context.node
        guard let observed, state.spore.members[me] != nil, state.spore.revoked[me] == nil else { return [] }
        let (want, left) = Self.publishable(observed, cidr: state.pods.cidr(of: me))
        var out: [ControllerEffect<DatapathAction>] = []
        if left != leftOut {
            leftOut = left
            if left > 0 {
                out.append(.note("\(left) of this node's \(observed.count) pods are not published to other nodes (outside its pod CIDR \(state.pods.cidr(of: me).map { "\($0)" } ?? "(none yet)"), or over \(PodEndpoints.maxPerNode)): natively routed traffic from them is dropped elsewhere"))
            }
        }
        guard want != (state.services.podEndpoints[me] ?? [:]) else { return out }
        if let last = lastPublish, context.millis < last + Self.republishMillis { return out }
        lastPublish = context.millis
        out.append(.request(.service(.endpoints(node: me, want))))
        return out
    }

    /// What of `observed` a node with block `cidr` may publish: the addresses inside it, the lowest
    /// `PodEndpoints.maxPerNode`; and how many are left out.
    public static func publishable(_ observed: [UInt32: UInt32], cidr: CIDR?) -> ([UInt32: UInt32], leftOut: Int) {
        guard let cidr else { return ([:], observed.count) }
        var inside = observed.filter { $0.key & cidr.mask == cidr.address }
        if inside.count > PodEndpoints.maxPerNode {
            inside = Dictionary(uniqueKeysWithValues: inside.sorted { $0.key < $1.key }.prefix(PodEndpoints.maxPerNode).map { ($0.key, $0.value) })
        }
        return (inside, observed.count - inside.count)
    }

    /// The table this node's datapath should hold, and why some peers get no route.
    public static func desired(state: ControlState, me: NodeID, underlay: UnderlayFacts, settings: DatapathSettings)
        -> (DatapathTable, [NodeID: String])
    {
        var table = DatapathTable()
        var problems: [NodeID: String] = [:]
        let own = state.pods.cidr(of: me)
        var routed: [NodeID: CIDR] = [:]
        for (node, cidr) in state.pods.assignments where node != me {
            guard let m = state.spore.members[node], m.status == .alive || m.status == .suspect,
                  state.spore.revoked[node] == nil else { continue }
            guard let text = state.services.nodes[node]?.address, !text.isEmpty else {
                problems[node] = "it has not told the network its underlay address yet"; continue
            }
            guard let via = parseIPv4(text) else { problems[node] = "its address '\(text)' is not IPv4"; continue }
            if let own, own.overlaps(cidr) { problems[node] = "its pod CIDR \(cidr) overlaps this node's \(own)"; continue }
            var vxlan: Bool
            switch settings.mode {
            case .native: vxlan = false
            case .vxlan: vxlan = true
            case .auto: vxlan = !underlay.sameSubnet(via)
            }
            if vxlan && !underlay.vxlan {
                if settings.mode == .vxlan { problems[node] = "datapath_mode is vxlan but this node has no VXLAN device"; continue }
                problems[node] = "it is not on this node's underlay subnet and this node has no VXLAN device"; continue
            }
            table.routes[cidr] = PodRoute(cidr: cidr, via: via, vxlan: vxlan)
            routed[node] = cidr
        }
        for (_, record) in state.services.services {
            for (_, report) in record.instances {
                guard let cidr = routed[report.node], let ip = parseIPv4(report.address),
                      cidr.address == ip & cidr.mask else { continue }
                table.remotes[ip] = settings.networkId
            }
        }
        // After the instances: what a node published of its pods is its datapath's own word.
        for (node, eps) in state.services.podEndpoints {
            guard let cidr = routed[node] else { continue }
            for (ip, id) in eps where cidr.address == ip & cidr.mask { table.remotes[ip] = id }
        }
        return (table, problems)
    }
}
