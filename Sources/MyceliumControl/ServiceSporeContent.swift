// What the leader puts in each service's spore (MyceliumSpores/ServiceSpore.swift), and which
// records a seed location needs rewritten: pure functions of the service table, the spore and what
// that location last received.

import MyceliumCore
import MyceliumIdentity
import MyceliumSpores

extension ServiceSpore.Content {
    /// The record of `r` as the committed state says: every assigned slot with its node, the address
    /// its node reported and whether it serves (running, healthy, current generation, on its assigned
    /// node, which the spore counts alive); for a singleton, its node and that node's lease.
    public init(_ r: ServiceRecord, table: ServiceTable, spore: PrimarySpore) {
        let serving = Set(r.servingSlots)
        let instances = r.assignments.keys.sorted().map { slot -> ServiceSpore.Instance in
            let node = r.assignments[slot]!
            let report = r.instances[slot].flatMap { $0.node == node ? $0 : nil }
            let alive = spore.members[node]?.status == .alive
            return ServiceSpore.Instance(slot: slot, node: node, address: String(decoding: (report?.address ?? "").utf8.prefix(ServiceSpore.maxAddressLength), as: UTF8.self),
                                         generation: report?.generation ?? 0, serving: serving.contains(slot) && alive)
        }
        let owner: ServiceSpore.Owner? = r.spec.replicas == 1 ? r.assignments[0].map {
            ServiceSpore.Owner(node: $0, leaseUntilMillis: table.leaseUntilMillis[$0] ?? 0)
        } : nil
        self.init(name: r.name, generation: r.generation, replicas: r.spec.replicas, driver: r.spec.driver.description,
                  ports: r.spec.ports.prefix(ServiceSpore.maxPorts).map { ServiceSpore.Port(name: $0.name, port: $0.port, proto: $0.proto) },
                  instances: Array(instances.prefix(ServiceSpore.maxInstances)), owner: owner)
    }
}

/// Which records a seed location needs (re)written.
public enum ServiceSporePlan {
    /// A singleton's record is rewritten for its lease alone once the lease it names is this much
    /// older than the current one (a node renews its lease every 500 ms: rewriting each renewal
    /// would rewrite every singleton's file every second).
    public static let leaseRefreshMillis: Int64 = 30_000

    /// The records of every service in the table (a record that breaks the format's bounds, which
    /// a spec the table accepted cannot produce, is left out rather than written).
    public static func contents(_ table: ServiceTable, spore: PrimarySpore) -> [String: ServiceSpore.Content] {
        var out: [String: ServiceSpore.Content] = [:]
        for r in table.services.values where ServiceSpore.nameProblem(r.name) == nil {
            let c = ServiceSpore.Content(r, table: table, spore: spore)
            if c.problem == nil { out[r.name] = c }
        }
        return out
    }

    /// What to write to a location that last received `written`: each current record that differs
    /// from what it holds (a lease counts only once it moved by `leaseRefreshMillis`), and a
    /// tombstone for each service it holds a live record of that the table no longer has. In name
    /// order (deterministic).
    public static func changes(current: [String: ServiceSpore.Content], written: [String: ServiceSpore.Content]) -> [ServiceSpore.Content] {
        var out: [ServiceSpore.Content] = []
        for name in Set(current.keys).union(written.keys).sorted() {
            switch (current[name], written[name]) {
            case let (c?, w?): if differs(c, w) { out.append(c) }
            case let (c?, nil): out.append(c)
            case let (nil, w?): if !w.removed { out.append(.tombstone(name, generation: w.generation)) }
            case (nil, nil): break
            }
        }
        return out
    }

    static func differs(_ c: ServiceSpore.Content, _ w: ServiceSpore.Content) -> Bool {
        var a = c, b = w
        let leaseMoved = (c.owner?.leaseUntilMillis ?? 0).saturatingSubtracting(w.owner?.leaseUntilMillis ?? 0) >= leaseRefreshMillis
        a.owner?.leaseUntilMillis = 0; b.owner?.leaseUntilMillis = 0
        return a != b || leaseMoved
    }
}
