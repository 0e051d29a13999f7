// Builders shared by the scheduler's tests: readable node and service literals.

import MyceliumIdentity
@testable import Scheduler
import XCTest

/// Node IDs whose order follows `n` (big-endian in the last bytes), so tests can name nodes by number.
func nodeID(_ n: Int) -> NodeID {
    var bytes = [UInt8](repeating: 0, count: 16)
    bytes[14] = UInt8(n >> 8)
    bytes[15] = UInt8(n & 0xFF)
    return try! NodeID(bytes: bytes)
}

func node(_ n: Int, cpu: UInt32 = 4000, mem: UInt32 = 8192, labels: [String: String] = [:], caps: Set<String> = [],
          trust: Double = 1, condition: NodeCondition = .ready, reserved: Resources = .zero) -> SchedulerNode {
    SchedulerNode(id: nodeID(n), capacity: Resources(cpuMillis: cpu, memoryMiB: mem), labels: labels, capabilities: caps,
                  trust: trust, condition: condition, reserved: reserved)
}

func service(_ name: String, _ replicas: Int = 1, cpu: UInt32 = 500, mem: UInt32 = 512, strategy: Strategy = .binpack,
             constraints: [Constraint] = [], preferences: [Preference] = [], minTrust: Double = 0, spread: String? = nil,
             maxPerNode: Int? = nil, antiAffinity: [String] = [], priority: Int = 0) -> ServiceDemand {
    ServiceDemand(name: name, replicas: replicas, resources: Resources(cpuMillis: cpu, memoryMiB: mem), strategy: strategy,
                  constraints: constraints, preferences: preferences, minTrust: minTrust, spreadLevel: spread,
                  maxPerNode: maxPerNode, antiAffinity: antiAffinity, priority: priority)
}

func at(_ service: String, _ slot: Int, _ n: Int) -> Assignment { Assignment(service: service, slot: slot, node: nodeID(n)) }

extension Plan {
    /// Node numbers (as in `nodeID`) of a service's instances, by slot.
    func nodes(of service: String) -> [Int] {
        assignments.filter { $0.service == service }.map { Int($0.node.bytes[14]) << 8 | Int($0.node.bytes[15]) }
    }
}
