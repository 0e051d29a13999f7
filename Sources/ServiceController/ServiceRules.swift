// From the control state's words to the scheduler's: placement rules written as text in a service
// spec ("zone == eu"), and the nodes and services the leader hands its scheduler.
//
// Rules (one per string, case-sensitive values, spaces optional around operators):
//   KEY == VALUE        the node's label KEY is VALUE
//   KEY != VALUE        it is not (a node without the label passes)
//   KEY in (A, B, ...)  it is one of these
//   has KEY             the node has label KEY
//   driver NAME         the node offers this driver (process, podman, k3s); also `capability NAME`

import MyceliumControl
import MyceliumIdentity
import MyceliumSpores
import Scheduler

public enum ServiceRules {
    public struct RuleError: Error, Sendable, CustomStringConvertible {
        public let description: String
    }

    public static func parse(_ text: String) throws(RuleError) -> Constraint {
        let t = text.trimmingCharacters(in: " \t")
        func word(_ s: Substring) -> String? {
            let w = s.trimmingCharacters(in: " \t")
            guard !w.isEmpty, w.utf8.count <= 63, !w.contains(" "), !w.contains("(") else { return nil }
            return w
        }
        for op in ["==", "!="] {
            if let r = t.firstRange(of: op) {
                guard let key = word(t[..<r.lowerBound]), let value = word(t[r.upperBound...]) else { break }
                return op == "==" ? .labelEquals(key, value) : .labelNotEquals(key, value)
            }
        }
        let parts = t.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        if parts.count == 2 {
            switch parts[0] {
            case "has": if let k = word(parts[1]) { return .hasLabel(k) }
            case "driver", "capability": if let k = word(parts[1]) { return .capability(k) }
            default:
                let rest = parts[1].trimmingCharacters(in: " \t")
                if rest.hasPrefix("in ") || rest.hasPrefix("in(") {
                    var list = rest.dropFirst(2).trimmingCharacters(in: " \t")
                    if list.hasPrefix("(") && list.hasSuffix(")") { list = String(list.dropFirst().dropLast()) }
                    let values = list.split(separator: ",").map { $0.trimmingCharacters(in: " \t") }
                    if let key = word(parts[0]), !values.isEmpty, values.allSatisfy({ !$0.isEmpty && !$0.contains(" ") }) {
                        return .labelIn(key, values)
                    }
                }
            }
        }
        throw RuleError(description: """
            cannot read the rule '\(text)'; write one of: 'KEY == VALUE', 'KEY != VALUE', 'KEY in (A, B)', 'has KEY', 'driver NAME'
            """)
    }

    /// Why the spec's rules cannot be read (or its podman image and command cannot work), or nil.
    /// Checked before proposing only: what the table accepts on apply stays as it was.
    public static func problem(_ spec: ServiceSpec) -> String? {
        if spec.driver == .podman {
            if !spec.image.hasPrefix("/") {
                return "a podman service's image is the absolute path of a root filesystem directory on the node (like /srv/web), not '\(spec.image)'"
            }
            if spec.command.isEmpty { return "a podman service needs a command: its root filesystem has no default one" }
        }
        for rule in spec.placement.constraints + spec.placement.preferences.map(\.rule) {
            do { _ = try parse(rule) } catch { return error.description }
        }
        return nil
    }

    /// The scheduler's view of a service (a rule that cannot be read makes it unplaceable, with the reason).
    /// A local volume (`volumes` says where it lives) pins the service to its home node: the data is a
    /// file there and does not follow it. A Ceph volume lets it run anywhere.
    public static func demand(_ r: ServiceRecord, volumes: VolumeTable = VolumeTable()) -> ServiceDemand {
        let s = r.spec
        var constraints: [Constraint] = [.capability(s.driver.description)]
        for v in s.volumes {
            guard let r = volumes.volumes[v.name] else { continue }
            switch r.spec.driver {
            case .local: constraints.append(.node(r.home, because: pinReason(v.name)))
            case .ceph: if !constraints.contains(.capability(cephCapability)) { constraints.append(.capability(cephCapability)) }
            }
        }
        for rule in s.placement.constraints {
            // Unreadable rules were refused before proposing; one that got in anyway (an older build's
            // vocabulary) matches nothing rather than being ignored.
            constraints.append((try? parse(rule)) ?? .capability("unreadable rule: " + rule))
        }
        let preferences = s.placement.preferences.compactMap { p in (try? parse(p.rule)).map { Preference($0, weight: Int(p.weight)) } }
        return ServiceDemand(name: s.name, replicas: Int(s.replicas), resources: Resources(cpuMillis: s.cpuMillis, memoryMiB: s.memoryMiB),
                             strategy: s.placement.strategy == "spread" ? .spread : .binpack, constraints: constraints, preferences: preferences,
                             minTrust: Double(s.placement.minTrustPPM) / 1_000_000,
                             spreadLevel: s.placement.spreadLevel.isEmpty ? nil : s.placement.spreadLevel,
                             maxPerNode: s.placement.maxPerNode == 0 ? nil : Int(s.placement.maxPerNode),
                             antiAffinity: s.placement.antiAffinity)
    }

    /// The node a service must run on because a local volume it mounts lives there, and why; nil when
    /// it may run anywhere (no volume, or only Ceph ones). Two local volumes on different nodes pin
    /// it to the first's home (no node has both: it cannot run, and `service show` says so).
    public static func pinned(_ s: ServiceSpec, volumes: VolumeTable) -> (node: NodeID, why: String)? {
        for v in s.volumes {
            guard let r = volumes.volumes[v.name], r.spec.driver == .local else { continue }
            return (r.home, pinReason(v.name))
        }
        return nil
    }

    /// What a node that reaches the Ceph cluster offers the scheduler (a Ceph volume's service needs it).
    public static let cephCapability = "ceph"

    static func pinReason(_ volume: String) -> String {
        "its local volume '\(volume)' is a file on that node: the service cannot move; a Ceph volume would let it"
    }

    /// The scheduler's view of the members: alive → ready (or draining), suspect → keeps what it has,
    /// failed, left or revoked → down (but suspect while its singleton lease runs); a member that
    /// never told its placement facts gets nothing.
    public static func nodes(_ state: ControlState) -> [SchedulerNode] {
        let spore = state.spore
        return spore.members.values.sorted { $0.id < $1.id }.map { m in
            let info = state.services.nodes[m.id]
            var condition: NodeCondition
            switch m.status {
            case .alive: condition = info?.draining == true ? .draining : .ready
            case .suspect: condition = .suspect
            default: condition = .down
            }
            if spore.revoked[m.id] != nil || info == nil { condition = .down }
            // A node whose singleton lease has not ended may still run its singletons (it stops them
            // itself when the lease lapses): it keeps its instances until then.
            if condition == .down && spore.revoked[m.id] == nil && state.services.mayStillRunSingletons(m.id, now: state.nowMillis) {
                condition = .suspect
            }
            let reservedMiB = UInt32(clamping: state.vms.committedMiB(on: m.id))
            return SchedulerNode(id: m.id, capacity: Resources(cpuMillis: UInt32(m.capabilities.cpus) * 1000, memoryMiB: m.capabilities.memoryMiB),
                                 labels: info?.labels ?? [:],
                                 capabilities: Set((info?.drivers ?? []).map(\.description) + (state.volumes.nodes[m.id]?.ceph == true ? [cephCapability] : [])),
                                 trust: Double(spore.trust.score(of: m.id)) / 1_000_000, condition: condition,
                                 reserved: Resources(cpuMillis: 0, memoryMiB: reservedMiB))
        }
    }

    /// The current assignments as the scheduler's.
    public static func current(_ table: ServiceTable) -> [Assignment] {
        table.services.values.flatMap { r in r.assignments.map { Assignment(service: r.name, slot: Int($0.key), node: $0.value) } }
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

extension ServiceRules {
    /// Why no member could run even one instance of `spec` on an empty node, or nil when one could:
    /// a spec that can never be placed is refused at deploy, not left pending for ever.
    public static func impossible(_ spec: ServiceSpec, state: ControlState) -> String? {
        guard spec.replicas > 0 else { return nil }
        if spec.driver == .k3s { return k3sOffered(state) ? nil : noK3s }
        let d = demand(ServiceRecord(spec: spec, generation: 1), volumes: state.volumes)
        // A member that has not announced its capacity yet (its first refresh is on its way) may fit.
        let nodes = Self.nodes(state).filter { $0.condition != .down }
        if nodes.contains(where: { $0.capacity == .zero }) { return nil }
        if nodes.isEmpty { return "no live member offers services yet; wait until 'mycelium status' shows the nodes alive" }
        var reasons: [String: Int] = [:]
        for var n in nodes {
            n.condition = .ready  // a suspect or draining node may run it later: only what never changes counts
            guard let why = Scheduler.explain(service: d, node: n) else { return nil }
            reasons[why, default: 0] += 1
        }
        let text = reasons.sorted { ($0.value, $1.key) > ($1.value, $0.key) }.prefix(3).map { "\($0.key)" + ($0.value > 1 ? " (\($0.value) nodes)" : "") }
        return "no member can run an instance of '\(spec.name)' (\(spec.cpuMillis)m CPU, \(spec.memoryMiB) MiB) on any of the \(nodes.count) live nodes: "
            + text.joined(separator: "; ") + driverNotes(spec, state: state) + ". Change the spec, or add a node that fits"
    }

    /// What live nodes that do not offer the spec's driver say about why (their `unavailable`), as
    /// "; node X: podman: runc is not installed …", or "" when none says anything.
    public static func driverNotes(_ spec: ServiceSpec, state: ControlState) -> String {
        let prefix = "\(spec.driver):"
        var notes: [String] = []
        for (node, info) in state.services.nodes.sorted(by: { $0.key < $1.key }) where !info.drivers.contains(spec.driver) {
            guard state.spore.members[node]?.status == .alive else { continue }
            let mine = info.unavailable.split(separator: "\n").map(String.init).filter { $0.hasPrefix(prefix) }
            if let first = mine.first { notes.append("node \(node) offers no \(spec.driver) driver: " + first.dropFirst(prefix.count).trimmingCharacters(in: " ")) }
            if notes.count >= 3 { break }
        }
        return notes.isEmpty ? "" : "; " + notes.joined(separator: "; ")
    }
}

extension ServiceRules {
    /// What an operator reads when no member can run k3s services.
    public static let noK3s = "no member offers the k3s driver: no node found a `k3s` binary on its PATH (K3s is not installed). "
        + "Install K3s on a node and restart its agent ('mycelium doctor' on a node says what it offers), or use the process driver"

    /// Whether an alive member offers the k3s driver.
    static func k3sOffered(_ state: ControlState) -> Bool {
        state.spore.members.values.contains { m in m.status == .alive && state.services.nodes[m.id]?.drivers.contains(.k3s) == true }
    }

    /// Why the k3s services cannot run yet ("" when the K3s cluster is there: Kubernetes places their
    /// pods, and the server reports them).
    public static func k3sPending(_ state: ControlState) -> String {
        if state.services.k3s != nil { return "" }
        if !k3sOffered(state) { return noK3s }
        return "waiting for a node to start the K3s server"
    }
}
