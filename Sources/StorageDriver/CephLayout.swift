// The monitors' JSON (Ceph 16.2) and how it becomes the planner's `CrushLayout`. Only the fields the
// driver needs are decoded; anything else the monitors add is ignored.

import StorageController

/// `osd crush dump`.
struct CrushDump: Decodable {
    struct Device: Decodable { let id: Int; let name: String }
    struct Item: Decodable { let id: Int }
    struct Bucket: Decodable {
        let id: Int
        let name: String
        let type_name: String
        let items: [Item]
    }
    struct Step: Decodable {
        let op: String
        let item_name: String?
        let type: String?
    }
    struct Rule: Decodable {
        let rule_id: Int
        let rule_name: String
        let steps: [Step]
    }
    let devices: [Device]
    let buckets: [Bucket]
    let rules: [Rule]
}

/// `osd dump` (pools only).
struct OSDDump: Decodable {
    struct Pool: Decodable {
        let pool_name: String
        let size: Int
        let min_size: Int
        let crush_rule: Int
        let application_metadata: [String: [String: String]]?
    }
    let pools: [Pool]
}

/// `osd map POOL OBJECT`.
struct OSDMap: Decodable {
    let pgid: String
    let up: [Int]
    let acting: [Int]
}

enum CephLayout {
    /// Device-class shadow buckets (`default~hdd`) mirror the real ones: left out.
    static func isShadow(_ name: String) -> Bool { name.contains("~") }

    static func layout(crush: CrushDump, pools: [OSDDump.Pool]) -> CrushLayout {
        var names: [Int: String] = [:]
        for d in crush.devices { names[d.id] = d.name }
        for b in crush.buckets { names[b.id] = b.name }
        var layout = CrushLayout()
        for b in crush.buckets where !isShadow(b.name) {
            layout.bucketTypes[b.name] = b.type_name
            layout.children[b.name] = Set(b.items.map { names[$0.id] ?? ($0.id >= 0 ? "osd.\($0.id)" : "bucket\($0.id)") })
        }
        var ruleNames: [Int: String] = [:]
        for r in crush.rules {
            ruleNames[r.rule_id] = r.rule_name
            let take = r.steps.first { $0.op == "take" }?.item_name
            let choose = r.steps.first { $0.op.hasPrefix("choose") }?.type
            layout.rules[r.rule_name] = CrushRuleState(root: take, failureDomain: choose)
        }
        for p in pools {
            layout.pools[p.pool_name] = PoolState(rule: ruleNames[p.crush_rule], size: p.size, minSize: p.min_size,
                                                  applications: Set((p.application_metadata ?? [:]).keys))
        }
        return layout
    }

    static func osdHosts(_ crush: CrushDump) -> [Int: String] {
        var out: [Int: String] = [:]
        for b in crush.buckets where b.type_name == "host" && !isShadow(b.name) {
            for i in b.items where i.id >= 0 { out[i.id] = b.name }
        }
        return out
    }
}
