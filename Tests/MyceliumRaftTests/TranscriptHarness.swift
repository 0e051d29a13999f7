// Data-driven transcript tests in the style of etcd-io/raft's testdata/*.txt: each file is a script of
// commands, each followed by `----` and the expected output, ending at a blank line. Set
// MYCELIUM_REWRITE_TRANSCRIPTS=1 to rewrite the expected output from the actual one (then review the diff).
//
// Commands:
//   add-nodes N [voters=1,2,3] [learners=4] [prevote=false] [checkquorum=false] [max-msg-bytes=N]
//             [chunk-bytes=N] [mutation=commit-prior-term]     create nodes 1...N (bootstrap with the voters;
//                                                             nodes outside the voters start empty)
//   campaign ID                      tick ID until it campaigns (its election timeout fires)
//   tick ID [COUNT]                  tick a node
//   tick-heartbeat ID                one heartbeat interval
//   propose ID DATA                  propose on ID
//   propose-conf-change ID [v2] OPS  OPS: add-voter=4 add-learner=5 remove=1 (v2: explicit joint)
//   transfer-leadership from=ID to=ID
//   read-index ID CONTEXT
//   compact ID INDEX                 the shell snapshots its state machine at INDEX and compacts
//   process-ready [IDS]              persist, queue messages, apply, advance (default: all)
//   deliver-msgs [IDS]               deliver queued messages to IDS (default: all), print them
//   drop-msgs [from=ID] [to=ID]      drop queued messages
//   stabilize [IDS]                  process-ready + deliver-msgs until nothing moves
//   partition A,B C,D | isolate ID | heal
//   crash ID | restart ID            crash loses what was not persisted
//   status [IDS] | log ID

@_spi(Testing) import MyceliumRaft
import MyceliumCore
import XCTest

struct TranscriptNode {
    var raft: Raft?
    var storage: RaftStorageState
    var config: RaftConfig
    var applied: [String] = []
}

struct TranscriptEnv {
    var nodes: [NodeID: TranscriptNode] = [:]
    var queue: [Message] = []
    var blocked: Set<Link2> = []
    var rng = SeededRandom(seed: 1)
    struct Link2: Hashable { var from: NodeID; var to: NodeID }

    var ids: [NodeID] { nodes.keys.sorted() }

    mutating func run(_ command: String, _ args: [String]) throws -> [String] {
        var out: [String] = []
        func kv(_ key: String) -> String? {
            args.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
        }
        func idList(_ s: String) -> [NodeID] { s.split(separator: ",").compactMap { NodeID($0) } }
        func positionalIDs() -> [NodeID] { args.filter { !$0.contains("=") }.compactMap { NodeID($0) } }
        switch command {
        case "add-nodes":
            let n = UInt64(args[0])!
            let voters = kv("voters").map(idList) ?? Array(1...n)
            let learners = kv("learners").map(idList) ?? []
            var boot = RaftStorageState.bootstrap(voters: voters)
            if !learners.isEmpty {
                var cs = ConfChange(voters.map { .addVoter($0) } + learners.map { .addLearner($0) })
                cs.transition = .auto
                boot.entries[0].data = RaftCodec.encode(cs)
            }
            for id in 1...n {
                var cfg = RaftConfig(id: id)
                if kv("prevote") == "false" { cfg.preVote = false }
                if kv("checkquorum") == "false" { cfg.checkQuorum = false }
                if let b = kv("max-msg-bytes") { cfg.maxBytesPerMessage = Int(b)! }
                if let b = kv("chunk-bytes") { cfg.snapshotChunkBytes = Int(b)! }
                if kv("mutation") == "commit-prior-term" { cfg.mutation = .commitPriorTermByCounting }
                let storage = voters.contains(id) || learners.contains(id) ? boot : RaftStorageState()
                nodes[id] = TranscriptNode(raft: try Raft(config: cfg, storage: storage, random: &rng), storage: storage, config: cfg)
            }
            out.append(contentsOf: ids.map { describe($0) })
        case "campaign":
            let id = NodeID(args[0])!
            // Tick until the election timeout fires: the role or the term changes.
            var ticks = 0
            let (role, term) = (nodes[id]!.raft!.role, nodes[id]!.raft!.term)
            while nodes[id]!.raft!.role == role && nodes[id]!.raft!.term == term && ticks < 1000 {
                nodes[id]!.raft!.tick()
                ticks += 1
            }
            out.append(describe(id))
        case "tick":
            let id = NodeID(args[0])!
            for _ in 0..<(args.count > 1 ? Int(args[1])! : 1) { nodes[id]!.raft!.tick() }
            out.append(describe(id))
        case "tick-heartbeat":
            let id = NodeID(args[0])!
            for _ in 0..<nodes[id]!.config.heartbeatTicks { nodes[id]!.raft!.tick() }
            out.append(describe(id))
        case "propose":
            let id = NodeID(args[0])!
            do { out.append("index \(try nodes[id]!.raft!.propose(Array(args[1].utf8)))") } catch { out.append("error: \(error)") }
        case "propose-conf-change":
            let id = NodeID(args[0])!
            var ops: [ConfChange.Operation] = []
            for a in args.dropFirst() {
                if let v = a.split(separator: "=").last.flatMap({ NodeID($0) }) {
                    if a.hasPrefix("add-voter=") { ops.append(.addVoter(v)) }
                    if a.hasPrefix("add-learner=") { ops.append(.addLearner(v)) }
                    if a.hasPrefix("remove=") { ops.append(.removeNode(v)) }
                }
            }
            let cc = ConfChange(ops, transition: args.contains("v2") ? .explicitJoint : .auto)
            do { out.append("index \(try nodes[id]!.raft!.proposeConfChange(cc))") } catch { out.append("error: \(error)") }
        case "transfer-leadership":
            let from = NodeID(kv("from")!)!, to = NodeID(kv("to")!)!
            do { try nodes[from]!.raft!.transferLeadership(to: to); out.append("ok") } catch { out.append("error: \(error)") }
        case "read-index":
            let id = NodeID(args[0])!
            do { try nodes[id]!.raft!.readIndex(context: UInt64(args[1])!); out.append("ok") } catch { out.append("error: \(error)") }
        case "compact":
            let id = NodeID(args[0])!
            let index = UInt64(args[1])!
            let data = Array(nodes[id]!.applied.prefix(Int(index)).joined(separator: ",").utf8)
            do {
                try nodes[id]!.raft!.compact(upTo: index, snapshotData: data)
                nodes[id]!.storage.compact(with: nodes[id]!.raft!.latestSnapshot!)
                out.append(describe(id))
            } catch { out.append("error: \(error)") }
        case "process-ready":
            for id in positionalIDs().isEmpty ? upIDs() : positionalIDs() { out.append(contentsOf: processReady(id)) }
        case "deliver-msgs":
            out.append(contentsOf: deliver(Set(positionalIDs().isEmpty ? ids : positionalIDs())))
        case "drop-msgs":
            let from = kv("from").flatMap { NodeID($0) }, to = kv("to").flatMap { NodeID($0) }
            let before = queue.count
            queue.removeAll { (from == nil || $0.from == from) && (to == nil || $0.to == to) }
            out.append("dropped \(before - queue.count)")
        case "stabilize":
            let set = positionalIDs().isEmpty ? ids : positionalIDs()
            var rounds = 0
            while rounds < 100 {
                rounds += 1
                var lines: [String] = []
                for id in set where nodes[id]?.raft != nil { lines.append(contentsOf: processReady(id)) }
                lines.append(contentsOf: deliver(Set(set)))
                if lines.isEmpty { break }
                out.append(contentsOf: lines)
            }
        case "partition":
            let groups = args.map(idList)
            for (i, g) in groups.enumerated() {
                for h in groups[(i + 1)...] { for a in g { for b in h { blocked.insert(Link2(from: a, to: b)); blocked.insert(Link2(from: b, to: a)) } } }
            }
            out.append("ok")
        case "isolate":
            let id = NodeID(args[0])!
            for o in ids where o != id { blocked.insert(Link2(from: id, to: o)); blocked.insert(Link2(from: o, to: id)) }
            out.append("ok")
        case "heal":
            blocked.removeAll()
            out.append("ok")
        case "crash":
            let id = NodeID(args[0])!
            nodes[id]!.raft = nil
            queue.removeAll { $0.to == id }
            out.append("node \(id) crashed")
        case "restart":
            let id = NodeID(args[0])!
            nodes[id]!.raft = try Raft(config: nodes[id]!.config, storage: nodes[id]!.storage, random: &rng)
            nodes[id]!.applied = []
            out.append(describe(id))
        case "status":
            for id in positionalIDs().isEmpty ? ids : positionalIDs() { out.append(describe(id)) }
        case "log":
            let id = NodeID(args[0])!
            let r = nodes[id]!.raft!
            if r.firstIndex > 1 { out.append("(compacted up to \(r.firstIndex - 1))") }
            if r.lastIndex >= r.firstIndex {
                for i in r.firstIndex...r.lastIndex { out.append(describeEntry(r.entry(at: i)!)) }
            }
        default:
            throw TranscriptError(message: "unknown command '\(command)'")
        }
        return out
    }

    func upIDs() -> [NodeID] { ids.filter { nodes[$0]!.raft != nil } }

    mutating func processReady(_ id: NodeID) -> [String] {
        guard var node = nodes[id], node.raft != nil, node.raft!.hasReady else { return [] }
        let rd = node.raft!.ready()
        var out = ["> \(id) handling Ready"]
        if let hs = rd.hardState { out.append("  persist HardState term=\(hs.term) vote=\(hs.vote) commit=\(hs.commit)") }
        if let s = rd.snapshot { out.append("  persist+apply Snapshot \(s.metadata.index)/\(s.metadata.term) \(describeConf(s.metadata.confState)) data='\(String(decoding: s.data, as: UTF8.self))'") }
        if !rd.entries.isEmpty { out.append("  persist Entries " + rd.entries.map(describeEntry).joined(separator: ", ")) }
        node.storage.persist(rd)
        for m in rd.messages { out.append("  send " + describeMessage(m)) }
        queue.append(contentsOf: rd.messages)
        if let s = rd.snapshot { node.applied = String(decoding: s.data, as: UTF8.self).split(separator: ",").map(String.init) }
        if !rd.committedEntries.isEmpty { out.append("  apply " + rd.committedEntries.map(describeEntry).joined(separator: ", ")) }
        for e in rd.committedEntries {
            node.applied.append(e.kind == .normal ? String(decoding: e.data, as: UTF8.self) : "cc")
        }
        for rs in rd.readStates { out.append("  read-state context=\(rs.context) index=\(rs.index)") }
        node.raft!.advance(rd)
        nodes[id] = node
        return out
    }

    mutating func deliver(_ to: Set<NodeID>) -> [String] {
        var out: [String] = []
        let batch = queue.filter { to.contains($0.to) }
        queue.removeAll { to.contains($0.to) }
        for m in batch {
            if blocked.contains(Link2(from: m.from, to: m.to)) {
                out.append("dropped (partition) " + describeMessage(m))
                continue
            }
            guard nodes[m.to]?.raft != nil else { out.append("dropped (down) " + describeMessage(m)); continue }
            out.append(describeMessage(m))
            let before = describe(m.to)
            nodes[m.to]!.raft!.step(m)
            let after = describe(m.to)
            if before != after { out.append("  " + after) }
        }
        return out
    }

    func describe(_ id: NodeID) -> String {
        guard let r = nodes[id]?.raft else { return "\(id): down" }
        var s = "\(id): \(r.role.rawValue) term=\(r.term)"
        if r.leader != .none { s += " leader=\(r.leader)" }
        s += " commit=\(r.commitIndex) last=\(r.lastIndex)/\(r.lastTerm) \(describeConf(r.confState))"
        return s
    }
}

struct TranscriptError: Error { var message: String }

func describeConf(_ c: ConfState) -> String { c.description }

func describeEntry(_ e: Entry) -> String { e.description }

func describeMessage(_ m: Message) -> String { m.description }

/// Runs one transcript file; fails the test with the first mismatch (or rewrites it).
func runTranscript(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
    let dir = String(describing: file).split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
    let path = dir + "/testdata/" + name + ".txt"
    let text = String(decoding: try AtomicFile.read(path), as: UTF8.self)
    let rewrite = getenvString("MYCELIUM_REWRITE_TRANSCRIPTS") == "1"
    var env = TranscriptEnv()
    var output: [String] = []
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    var i = 0
    while i < lines.count {
        let l = lines[i]
        if l.hasPrefix("#") || l.allSatisfy({ $0 == " " }) {
            output.append(l)
            i += 1
            continue
        }
        let cmdLine = i + 1
        var parts = l.split(separator: " ").map(String.init)
        let command = parts.removeFirst()
        output.append(l)
        i += 1
        guard i < lines.count, lines[i] == "----" else {
            throw TranscriptError(message: "\(path):\(cmdLine): expected ---- after '\(l)'")
        }
        output.append("----")
        i += 1
        var expected: [String] = []
        while i < lines.count && !lines[i].isEmpty { expected.append(lines[i]); i += 1 }
        let actual = try env.run(command, parts)
        output.append(contentsOf: actual.isEmpty ? ["ok"] : actual)
        if !rewrite && expected != (actual.isEmpty ? ["ok"] : actual) {
            XCTFail("\(path):\(cmdLine): '\(l)'\n--- expected\n\(expected.joined(separator: "\n"))\n--- actual\n\(actual.joined(separator: "\n"))", file: file, line: line)
            return
        }
    }
    if rewrite {
        while output.last == "" { output.removeLast() }
        let s = output.joined(separator: "\n") + "\n"
        try AtomicFile.write(Array(s.utf8), to: path)
    }
}

func getenvString(_ name: String) -> String? {
    guard let p = getenv(name) else { return nil }
    return String(cString: p)
}
