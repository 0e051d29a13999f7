// Controllers: how a subsystem (pod networking, VMs, services, volumes) plugs into the control plane.
//
// A controller's core is a pure value: it sees every change the control state applies and every
// tick, and returns effects — entries for the leader to propose, spore commands to sign and submit,
// and actions of its own kind for its driver. The driver (in the controller's module) does the I/O;
// the agent only hosts the pair and carries out the effects. The rules of a subsystem are thus
// tested by simulation like the governor's, and a driver is small enough to test against the real
// component.

import MyceliumIdentity
import MyceliumSpores

/// What a controller sees when it is asked to act.
public struct ControllerContext: Sendable {
    /// This node.
    public let node: MyceliumIdentity.NodeID
    /// Whether this node leads the Raft group now (only the leader proposes).
    public let isLeader: Bool
    public let state: ControlState
    /// The agent's tick count (a controller measures time in ticks, never with a clock).
    public let tick: UInt64
    public let ticksPerSecond: UInt64
    /// Milliseconds since this agent started, by a monotonic clock the shell reads (the simulator:
    /// its virtual clock). Ticks lag it when the agent is slow to run them; a deadline that must
    /// not be overrun in real time (a VM's self-fencing) is counted in these.
    public let millis: UInt64

    /// `millis` nil: derived from the ticks (for tests that count only ticks).
    public init(node: MyceliumIdentity.NodeID, isLeader: Bool, state: ControlState, tick: UInt64, ticksPerSecond: UInt64,
                millis: UInt64? = nil) {
        self.node = node; self.isLeader = isLeader; self.state = state; self.tick = tick; self.ticksPerSecond = ticksPerSecond
        self.millis = millis ?? tick.multipliedReportingOverflow(by: 1000).partialValue / max(1, ticksPerSecond)
    }
}

public enum ControllerEffect<Action: Sendable>: Sendable {
    /// The leader proposes this entry (ignored on a follower).
    case propose(ControlEntry)
    /// Sign as this node and submit (forwarded to the leader by a follower).
    case submit(SporeCommand)
    /// Have the leader propose this entry on this node's behalf (a follower forwards it over the
    /// authenticated peer channel; the leader checks that what it says of a node came from that
    /// node). Fire and forget: the controller sees the outcome when (if) it applies.
    case request(ControlEntry)
    /// A line for the operator's event list.
    case note(String)
    /// Something for this controller's driver to do.
    case act(Action)
}

public protocol Controller: Sendable {
    associatedtype Action: Sendable
    /// What the driver tells its controller of its own accord: an outcome only the driver can know
    /// (a VM paused at a committed epoch, ready to be handed over). `Never` for most controllers.
    associatedtype Report: Sendable = Never
    /// A short name for logs and status ("network", "vm", ...).
    var name: String { get }
    /// The control state applied `change`.
    mutating func applied(_ change: ControlChange, context: ControllerContext) -> [ControllerEffect<Action>]
    /// Called on every tick.
    mutating func tick(context: ControllerContext) -> [ControllerEffect<Action>]
    /// The driver reported something (in the order it reported).
    mutating func reported(_ report: Report, context: ControllerContext) -> [ControllerEffect<Action>]
}

extension Controller where Report == Never {
    public mutating func reported(_ report: Never, context: ControllerContext) -> [ControllerEffect<Action>] {}
}

/// The I/O half of a controller. Actions are performed one at a time, in order.
public protocol ControllerDriver: Sendable {
    associatedtype Action: Sendable
    associatedtype Report: Sendable = Never
    func perform(_ action: Action) async throws
    /// The host calls this once, before the first action: where the driver's reports go.
    func reportTo(_ sink: @escaping @Sendable (Report) -> Void)
}

extension ControllerDriver {
    public func reportTo(_ sink: @escaping @Sendable (Report) -> Void) {}
}
