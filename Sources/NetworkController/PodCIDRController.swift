// The network controller: every member gets a pod CIDR in the control state, and each node writes
// its own to the file mycelium-cni's IPAM reads (`ipam.podCIDRFile`).
//
// Core (pure): on the leader, configure the pod range once and give each present member without a
// block the lowest free one; on every node, ask the driver to write this node's block whenever it
// changes (and once at start). Blocks are released by the control state when a member leaves the
// spore for good; a failed member keeps its block while it may still come back.

import MyceliumControl
import MyceliumIdentity
import MyceliumSpores

public struct PodNetworkSettings: Sendable, Equatable {
    /// The network's pod range (K3s's cluster-cidr); applied once, by the first leader that sees none.
    public var pool: CIDR
    /// Prefix length of each node's block (K3s's node-cidr-mask-size).
    public var nodePrefix: UInt8

    public static let defaultPool = CIDR("10.244.0.0/16")!
    public init(pool: CIDR = PodNetworkSettings.defaultPool, nodePrefix: UInt8 = 24) {
        self.pool = pool; self.nodePrefix = nodePrefix
    }
}

public enum PodCIDRAction: Sendable, Equatable {
    /// Write this node's pod CIDR (nil: remove the file: this node has none).
    case write(CIDR?)
}

public struct PodCIDRController: Controller {
    public let settings: PodNetworkSettings
    public var name: String { "network" }
    /// What the driver was last asked to write (nil before the first write).
    var written: CIDR??
    /// Blocks this leader proposed and has not seen applied, with the tick of the proposal.
    var proposed: [MyceliumIdentity.NodeID: (block: CIDR, at: UInt64)] = [:]
    var configureProposedAt: UInt64?

    public init(settings: PodNetworkSettings = PodNetworkSettings()) { self.settings = settings }

    public mutating func applied(_ change: ControlChange, context: ControllerContext) -> [ControllerEffect<PodCIDRAction>] {
        switch change {
        case let .podCIDR(node, _):
            proposed[node] = nil
            return node == context.node ? writeIfChanged(context) : []
        case .restored:
            return writeIfChanged(context)
        case .spore(let s):
            if case .admit = s.command, context.isLeader { return allocate(context) }
            return []
        default:
            return []
        }
    }

    public mutating func tick(context: ControllerContext) -> [ControllerEffect<PodCIDRAction>] {
        var out = written == nil ? writeIfChanged(context) : []
        if context.isLeader && context.tick % max(1, context.ticksPerSecond) == 0 { out += allocate(context) }
        return out
    }

    mutating func writeIfChanged(_ context: ControllerContext) -> [ControllerEffect<PodCIDRAction>] {
        let mine = context.state.pods.cidr(of: context.node)
        if let w = written, w == mine { return [] }
        written = .some(mine)
        return [.act(.write(mine)), .note(mine.map { "pod CIDR of this node: \($0)" } ?? "this node has no pod CIDR")]
    }

    /// Leader: configure the range if none, then give every present member without a block one.
    /// Blocks proposed together are distinct; a proposal not applied within two seconds is retried.
    mutating func allocate(_ context: ControllerContext) -> [ControllerEffect<PodCIDRAction>] {
        let table = context.state.pods
        guard let pool = table.pool else {
            if let at = configureProposedAt, context.tick < at + 2 * context.ticksPerSecond { return [] }
            configureProposedAt = context.tick
            return [.propose(.network(.configure(pool: settings.pool, nodePrefix: settings.nodePrefix))),
                    .note("configuring the pod range \(settings.pool) with a /\(settings.nodePrefix) per node")]
        }
        var out: [ControllerEffect<PodCIDRAction>] = []
        var reserved = Set(proposed.values.map(\.block))
        for m in context.state.spore.presentMembers where table.cidr(of: m.id) == nil {
            if let p = proposed[m.id], context.tick < p.at + 2 * context.ticksPerSecond { continue }
            // A retry proposes the same block again while it is still free, so a late commit of
            // the first proposal and the retry agree.
            let block: CIDR
            if let previous = proposed[m.id]?.block, table.isFree(previous) {
                block = previous
            } else if let free = table.firstFree(excluding: reserved) {
                block = free
            } else {
                out.append(.note("the pod range \(pool) is full: \(m.id) gets no pod CIDR"))
                break
            }
            reserved.insert(block)
            proposed[m.id] = (block, context.tick)
            out.append(.propose(.network(.assign(node: m.id, block))))
        }
        return out
    }
}
