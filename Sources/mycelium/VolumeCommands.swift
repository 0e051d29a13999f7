import ArgumentParser
import Foundation
import MyceliumAPI

/// `mycelium volume ...`: volumes as the network records them (issue 18).
struct VolumeCommandGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "volume",
        abstract: "Create, list, show, snapshot and delete volumes (local files, or RBD images on Ceph placed by trust).",
        discussion: """
            A volume is recorded in the control state (Raft-committed) with its size, its data class \
            and the node that carries out each change. Data classes decide where the replicas live:

              local      one copy in a file on one node (HOME/volumes); the default without Ceph
              public     2 replicas on storage hosts with trust >= 0.10
              private    3 replicas on hosts with trust >= 0.30; the default with Ceph
              sensitive  3 replicas on hosts with trust >= 0.50

            When a node's trust falls (slashing) or it fails, the leader decides to move its CRUSH host \
            out of the classes it no longer qualifies for, and Ceph moves the data away. \
            'mycelium storage status' shows the classes, the storage hosts and what to do.

            Example:
              mycelium volume create db --size 10G --class sensitive
              mycelium volume list
              mycelium volume show db -o json
              mycelium volume snapshot db before-upgrade
              mycelium volume delete db
            """,
        subcommands: [Create.self, List.self, Show.self, Snapshot.self, Delete.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a volume and wait until the storage holds it.",
            discussion: """
                A local volume lives on this node unless --on names another. A Ceph volume is an RBD \
                image in its class's pool (mycelium-CLASS), created by a node that reaches the cluster. \
                Nothing is recorded when the request is refused (unknown class, bad size, a class \
                nothing can hold); when the storage itself fails, the volume is shown as failed with \
                the reason and can be deleted.
                """)
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions
        @Argument(help: "The volume's name: 1-63 of a-z, 0-9 and '-', starting with a letter.") var name: String
        @Option(help: "Size with a binary unit: 512M, 10G, 1T (or bytes).") var size: String
        @Option(name: .customLong("class"), help: "local, public, private or sensitive (default: private with Ceph, local without).")
        var dataClass: String?
        @Option(help: "The node that holds a local volume (default: this node).") var on: String?
        @Option(help: "Seconds to wait until the storage holds it.") var wait: Double = 60

        func run() async throws {
            var p: [(String, String)] = [("name", name), ("size", size)]
            if let dataClass { p.append(("class", dataClass)) }
            if let on { p.append(("on", on)) }
            _ = try await agent.client.volume("create", p)
            let v = try await waitForTask(agent.client, name, wait: wait, what: "created", json: out.output == .json)
            show(v, out)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the network's volumes.")
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions

        func run() async throws {
            if out.output == .json { print(String(decoding: try await agent.client.send(.volumes(query: "")), as: UTF8.self)); return }
            let volumes = try await agent.client.volumes().volumes
            if volumes.isEmpty { print("no volumes; create one with 'mycelium volume create NAME --size 10G'"); return }
            print(pad("NAME", 24) + pad("SIZE", 10) + pad("CLASS", 11) + pad("STATE", 14) + pad("SNAPSHOTS", 10) + "USED BY")
            for v in volumes {
                print(pad(v.name, 24) + pad(formatBytes(v.sizeBytes), 10) + pad(v.dataClass, 11) + pad(v.state, 14)
                      + pad("\(v.snapshots.count)", 10) + (v.usedBy ?? "-"))
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one volume: where its data and replicas are, and why.")
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions
        @Argument(help: "The volume's name.") var name: String

        func run() async throws {
            guard let v = try await agent.client.volumes(name: name).volumes.first else {
                throw ValidationError("no volume named '\(name)'; see 'mycelium volume list'")
            }
            show(v, out)
        }
    }

    struct Snapshot: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Take a snapshot of a volume and wait until it exists.",
            discussion: "Ceph: an RBD snapshot (crash-consistent). Local: a sparse copy of the file; stop writers first for a consistent one.")
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions
        @Argument(help: "The volume's name.") var name: String
        @Argument(help: "The snapshot's name (a-z, 0-9, '-').") var snapshot: String
        @Option(help: "Seconds to wait.") var wait: Double = 60

        func run() async throws {
            let client = agent.client
            let before = try await client.volumes().volumes.first { $0.name == name }
            _ = try await client.volume("snapshot", [("name", name), ("snapshot", snapshot)])
            // Done when the snapshot is listed; failed when the task came and went without it (or
            // went before this saw it, leaving a new outcome).
            var seenPending = false
            let deadline = Date().addingTimeInterval(wait)
            let progress = ProgressReporter("snapshot \(snapshot) of \(name)", json: out.output == .json)
            defer { progress.finish() }
            while Date() < deadline {
                guard let v = try await client.volumes().volumes.first(where: { $0.name == name }) else {
                    throw ValidationError("volume \(name) is gone")
                }
                progress.update(phase: v.task ?? v.state)
                if v.snapshots.contains(snapshot) { progress.finish(); return show(v, out) }
                if v.task != nil { seenPending = true }
                if v.task == nil && (seenPending || v.message != before?.message) {
                    throw ValidationError("snapshot \(snapshot) of \(name) failed: \(v.message)")
                }
                try await Task.sleep(nanoseconds: 100_000_000)
            }
            throw ValidationError("snapshot \(snapshot) of \(name) was not taken within \(wait) s; 'mycelium volume show \(name)' says what it waits for")
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a volume with its snapshots, and wait until it is gone.",
            discussion: "Refused while a VM names it as its disk, and (Ceph) while any client has the image open.")
        @OptionGroup var agent: AgentOptions
        @Argument(help: "The volume's name.") var name: String
        @Option(help: "Seconds to wait.") var wait: Double = 60

        func run() async throws {
            let client = agent.client
            _ = try await client.volume("delete", [("name", name)])
            let deadline = Date().addingTimeInterval(wait), started = Date()
            let progress = ProgressReporter("deleting volume \(name)", json: false)
            defer { progress.finish() }
            // This agent may not have applied the accepted delete yet: an idle record counts as a
            // failed delete only once the delete was seen, or after a few seconds.
            var seen = false
            while Date() < deadline {
                guard let v = try await client.volumes().volumes.first(where: { $0.name == name }) else {
                    progress.finish()
                    print("volume \(name) deleted")
                    return
                }
                progress.update(phase: v.task ?? v.state)
                if v.task != nil || v.state == "deleting" { seen = true }
                if v.task == nil && v.state != "deleting" && (seen || Date().timeIntervalSince(started) > 5) {
                    throw ValidationError("volume \(name) was not deleted: \(v.message)")
                }
                try await Task.sleep(nanoseconds: 100_000_000)
            }
            throw ValidationError("volume \(name) was not deleted within \(wait) s; 'mycelium volume show \(name)' says what it waits for")
        }
    }
}

/// Waits until `name` has no pending task; throws with the storage's message when the task failed.
private func waitForTask(_ client: AgentClient, _ name: String, wait: Double, what: String, json: Bool) async throws -> VolumeInfo {
    let deadline = Date().addingTimeInterval(wait)
    var last: VolumeInfo?
    let progress = ProgressReporter("volume \(name)", json: json)
    defer { progress.finish() }
    while Date() < deadline {
        if let v = try await client.volumes().volumes.first(where: { $0.name == name }) {
            last = v
            progress.update(phase: v.task ?? v.state)
            if v.task == nil {
                progress.finish()
                if v.state == "failed" { throw ValidationError("volume \(name) was not \(what): \(v.message)") }
                return v
            }
        }
        try await Task.sleep(nanoseconds: 100_000_000)
    }
    throw ValidationError("volume \(name) was not \(what) within \(wait) s" + (last?.task.map { " (still: \($0))" } ?? "")
                          + "; is there a leader with a majority, and does the node carrying it out answer? ('mycelium status')")
}

/// `mycelium storage ...`.
struct StorageCommandGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage", abstract: "The network's storage: Ceph's health, the data classes and the hosts that hold them.",
        subcommands: [Status.self])

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Cluster health and capacity, which nodes hold storage at what trust, degraded placement groups, and what to do.")
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions

        func run() async throws {
            if out.output == .json { print(String(decoding: try await agent.client.send(.storage), as: UTF8.self)); return }
            let s = try await agent.client.storage()
            print("this node:   \(s.node)")
            if let c = s.ceph {
                print("ceph:        \(c.health), \(c.osdsUp)/\(c.osds) OSDs up (\(c.osdsIn) in), \(c.pgs) placement groups (\(c.pgsNotClean) not active+clean)")
                print("capacity:    \(formatBytes(c.bytesUsed)) used of \(formatBytes(c.bytesTotal)), \(formatBytes(c.bytesAvailable)) available")
                for check in c.checks { print("             \(check)") }
            } else if let e = s.cephError {
                print("ceph:        unreadable: \(e)")
            }
            print("placement:   \(s.placement)")
            print("volumes:     \(s.volumes)")
            print("\nCLASS      STATUS       REPLICAS  MIN TRUST  HOSTS")
            for c in s.classes {
                print(pad(c.name, 11) + pad(c.status, 13) + pad("\(c.replicas)", 10) + pad(String(format: "%.2f", c.minTrust), 11)
                      + (c.hosts.isEmpty ? "-" : c.hosts.joined(separator: ", ")))
            }
            if !s.nodes.isEmpty {
                print("\nNODE" + String(repeating: " ", count: 36) + "STATUS     TRUST  CEPH HOST  CLASSES")
                for n in s.nodes {
                    print(pad(n.node, 40) + pad(n.status, 11) + pad(String(format: "%.2f", n.trust), 7) + pad(n.cephHost.isEmpty ? "-" : n.cephHost, 11)
                          + (n.classes.isEmpty ? "-" : n.classes.joined(separator: ",")) + (n.problem.isEmpty ? "" : "  (\(n.problem))"))
                }
            }
            print(s.advice.isEmpty ? "\nnothing to do" : "\nwhat to do:\n" + s.advice.map { "  - " + $0 }.joined(separator: "\n"))
        }
    }
}

private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s.padding(toLength: n, withPad: " ", startingAt: 0) }

/// 10737418240 → "10G", 1536 MiB → "1.5G".
func formatBytes(_ b: UInt64) -> String {
    let units = ["B", "K", "M", "G", "T", "P"]
    var v = Double(b), i = 0
    while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
    return v == v.rounded() ? "\(Int(v))\(units[i])" : String(format: "%.1f%@", v, units[i])
}

private func show(_ v: VolumeInfo, _ out: OutputOptions) {
    if out.output == .json {
        if let b = try? APIJSON.encode(v) { print(String(decoding: b, as: UTF8.self)) }
        return
    }
    out.emit(["name": v.name, "size": "\(formatBytes(v.sizeBytes)) (\(v.sizeBytes) bytes)", "class": v.dataClass, "driver": v.driver,
              "state": v.state, "location": v.location, "placement": v.placement,
              "replicas now": v.replicas.map { $0.joined(separator: ", ") } ?? "-", "snapshots": v.snapshots.isEmpty ? "-" : v.snapshots.joined(separator: ", "),
              "task": v.task ?? "-", "last outcome": v.message.isEmpty ? "-" : v.message, "used by": v.usedBy ?? "-", "home": v.home])
}
