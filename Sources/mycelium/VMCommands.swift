import ArgumentParser
import Foundation
import MyceliumAPI

/// `mycelium vm ...`: endophyte VMs as the network records them (issue 16).
struct VMCommandGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm",
        abstract: "Create, list, show, migrate and delete endophyte VMs (RAM replicated to a second node).",
        discussion: """
            A VM is recorded in the primary spore (Raft-committed): its spec, the node that runs it \
            (the primary), the node that holds its replicated RAM (the replica) and an ownership epoch, \
            the fencing token bumped at every failover. Any node takes these commands; the leader \
            decides. When the primary's host dies, the replica continues the guest from its last \
            committed state. 'virsh -c URI list' on a host shows the domain under the same name.

            Example:
              mycelium vm create web-1 --memory 256M --kernel /srv/vmlinuz --initrd /srv/initrd.gz
              mycelium vm create --xml web-2.xml     # a libvirt domain definition of your own, adapted
              mycelium vm list
              mycelium vm show web-1 -o json
              mycelium vm migrate web-1              # to its replica (already in sync: fastest)
              mycelium vm migrate web-1 --to NODE    # NODE becomes the replica first, then takes over
              mycelium vm delete web-1
            """,
        subcommands: [Create.self, List.self, Show.self, Migrate.self, Delete.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Record a new VM; it starts on its primary and is replicated to its replica.",
            discussion: """
                The primary is this node unless --on names another. The replica is chosen by the \
                leader's rule (alive, libvirt, room for the memory, most trusted) unless --replica names \
                one; --replica none leaves it unprotected. Kernel and initrd are paths on the hosts (the \
                same on each host that may run it); on this node they are checked, with the domain's \
                definition, before anything is recorded. The command waits until the network has \
                recorded the VM.
                """)
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions
        @Argument(help: "The VM's name, as libvirt and virsh show it: 1-63 of a-z, 0-9 and '-', starting with a letter (with --xml: the file's <name> unless given).")
        var name: String?
        @Option(help: "Guest memory: a number with M or G (256M, 1G); M if no unit.") var memory: String?
        @Option(help: "Virtual CPUs (1-64).") var vcpus: Int?
        @Option(help: "Kernel image path on the hosts.") var kernel: String?
        @Option(help: "Initrd path on the hosts.") var initrd: String?
        @Option(help: "Kernel command line (default console=ttyS0).") var cmdline: String?
        @Option(help: "A libvirt domain definition of your own: its name, memory, vCPUs, kernel, initrd and command line are taken; Mycelium writes the domain itself.")
        var xml: String?
        @Option(help: "A volume (mycelium volume create) the guest sees as its data disk /dev/vda: a Ceph volume follows the VM on failover, its old writer fenced; a local one pins the VM to the volume's node, unprotected.")
        var disk: String?
        @Option(help: "The node to run it on (default: this node).") var on: String?
        @Option(help: "auto, none, or the node ID of the replica.") var replica: String = "auto"
        @Option(help: "Seconds to wait until the network has recorded it.") var wait: Double = 10

        func run() async throws {
            var spec = (name: name ?? "", mib: UInt32(0), vcpus: vcpus ?? 1, kernel: kernel ?? "", initrd: initrd ?? "", cmdline: cmdline ?? "console=ttyS0")
            if let xml {
                let given = [("--memory", memory), ("--vcpus", vcpus.map { "\($0)" }), ("--kernel", kernel), ("--initrd", initrd), ("--cmdline", cmdline)]
                    .filter { $0.1 != nil }.map(\.0)
                if !given.isEmpty {
                    throw ValidationError("--xml takes memory, vCPUs, kernel, initrd and command line from the file; leave out \(given.joined(separator: ", "))")
                }
                let d: ImportedDomain
                do { d = try DomainImport.read(path: xml) } catch { throw ValidationError("--xml \(xml): \(error)") }
                spec = (name ?? d.name, d.memoryMiB, d.vcpus, d.kernel, d.initrd, d.cmdline)
                if !d.ignored.isEmpty {
                    FileHandle.standardError.write(Data("note: ignored from \(xml) (Mycelium writes the domain itself): \(d.ignored.joined(separator: ", "))\n".utf8))
                }
            } else {
                guard let memory else { throw ValidationError("give --memory (e.g. 256M), or --xml FILE with a domain definition") }
                guard let mib = parseMiB(memory) else {
                    throw ValidationError("--memory '\(memory)' is not a size: use a number with M or G, e.g. 256M or 1G")
                }
                spec.mib = mib
            }
            guard !spec.name.isEmpty else { throw ValidationError("give the VM a name (the file has no <name>)") }
            let name = spec.name
            var p: [(String, String)] = [("name", name), ("memory_mib", "\(spec.mib)"), ("vcpus", "\(spec.vcpus)"), ("kernel", spec.kernel),
                                         ("initrd", spec.initrd), ("cmdline", spec.cmdline), ("replica", replica)]
            if let on { p.append(("on", on)) }
            if let disk { p.append(("disk", disk)) }
            let client = agent.client
            let answer = try await client.vm("create", p)
            let deadline = Date().addingTimeInterval(wait)
            let progress = ProgressReporter("creating VM \(name)", json: out.output == .json)
            defer { progress.finish() }
            while Date() < deadline {
                if let vm = try await client.vms().vms.first(where: { $0.name == name }) { progress.finish(); return show(vm, out) }
                progress.update(phase: "waiting for the network to record it")
                try await Task.sleep(nanoseconds: 100_000_000)
            }
            throw ValidationError("\(answer.result), but it was not recorded within \(wait) s: is there a leader with a majority? ('mycelium status')")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the network's VMs.")
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions

        func run() async throws {
            if out.output == .json { print(String(decoding: try await agent.client.send(.vms), as: UTF8.self)); return }
            let vms = try await agent.client.vms().vms
            if vms.isEmpty { print("no VMs; create one with 'mycelium vm create'"); return }
            print("NAME".padding(toLength: 20, withPad: " ", startingAt: 0) + "MEMORY  EPOCH  PRIMARY" + String(repeating: " ", count: 31) + "PROTECTION")
            for v in vms {
                print(v.name.padding(toLength: 20, withPad: " ", startingAt: 0) + "\(v.memoryMiB)M".padding(toLength: 8, withPad: " ", startingAt: 0)
                      + "\(v.epoch)".padding(toLength: 7, withPad: " ", startingAt: 0) + v.primary.padding(toLength: 38, withPad: " ", startingAt: 0)
                      + v.protection)
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one VM: where it runs, its replica, ownership epoch and lease.")
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions
        @Argument(help: "The VM's name.") var name: String

        func run() async throws {
            guard let vm = try await agent.client.vms().vms.first(where: { $0.name == name }) else {
                throw ValidationError("no VM named '\(name)'; see 'mycelium vm list'")
            }
            show(vm, out)
        }
    }

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move a running VM to another node with a short pause (planned migration).",
            discussion: """
                The target (by default the VM's replica) holds the replica during the migration: if it \
                is another node it becomes the replica and receives a full copy first. The primary then \
                copies what the guest dirties while it runs, pauses it, sends the last pages and the \
                device state, and signs the switch; the network records it (the ownership epoch moves \
                on) and the target resumes the guest from exactly that state. The old primary becomes \
                the replica. If anything fails before the switch is recorded, or it is not recorded \
                within a minute, the migration is aborted and the guest keeps running where it was. \
                The command waits for the outcome.
                """)
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions
        @Argument(help: "The VM's name.") var name: String
        @Option(help: "The node ID to move it to (default: its replica).") var to: String?
        @Option(help: "Seconds to wait for the switch or the abort.") var wait: Double = 90

        func run() async throws {
            let client = agent.client
            guard let before = try await client.vms().vms.first(where: { $0.name == name }) else {
                throw ValidationError("no VM named '\(name)'; see 'mycelium vm list'")
            }
            var p: [(String, String)] = [("name", name)]
            if let to { p.append(("to", to)) }
            let answer = try await client.vm("migrate", p)
            if out.output != .json { print(answer.result) }
            let deadline = Date().addingTimeInterval(wait)
            var seenPending = false
            let progress = ProgressReporter("migrating \(name)", json: out.output == .json)
            defer { progress.finish() }
            while Date() < deadline {
                guard let vm = try await client.vms().vms.first(where: { $0.name == name }) else {
                    throw ValidationError("VM '\(name)' was deleted during its migration")
                }
                // The agent reports the migration's phase. While the primary brings a new replica up to
                // date (a target that was not the replica gets a full copy first), its agent also reports
                // the bytes: a bar with rate and ETA. Only the primary's agent knows them (run this there);
                // elsewhere the line shows the phase and the time spent.
                let phase = vm.migration ?? (vm.epoch > before.epoch ? "switched" : "pending")
                if let sync = vm.replication?.syncProgress {
                    progress.update(done: sync.done, total: sync.total, unit: .bytes, phase: "copying memory to the replica; " + phase)
                } else {
                    progress.update(phase: phase)
                }
                if vm.epoch > before.epoch {
                    progress.finish()
                    if out.output == .json { return show(vm, out) }
                    print(vm.lastMigration ?? "VM \(name) now runs on \(vm.primary) (epoch \(vm.epoch))")
                    return
                }
                if vm.migration != nil { seenPending = true }
                if vm.migration == nil && (seenPending || vm.lastMigration != before.lastMigration) {
                    throw ValidationError("VM \(name) stays on \(vm.primary): \(vm.lastMigration ?? "the migration was aborted")")
                }
                try await Task.sleep(nanoseconds: 100_000_000)
            }
            throw ValidationError("VM \(name) did not switch within \(wait) s; 'mycelium vm show \(name)' tells whether it is still migrating")
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a VM: its record leaves the spore and every node destroys its copy.")
        @OptionGroup var agent: AgentOptions
        @Argument(help: "The VM's name.") var name: String

        func run() async throws {
            print(try await agent.client.vm("delete", [("name", name)]).result)
        }
    }
}

/// "256M", "1G", "512" (MiB) → MiB.
func parseMiB(_ text: String) -> UInt32? {
    let t = text.trimmingCharacters(in: .whitespaces).uppercased()
    if let n = UInt32(t) { return n }
    guard let unit = t.last, let n = UInt32(t.dropLast().replacingOccurrences(of: "I", with: "")) else { return nil }
    switch unit {
    case "M": return n
    case "G": return n.multipliedReportingOverflow(by: 1024).overflow ? nil : n * 1024
    default: return nil
    }
}

private func show(_ v: VMInfo, _ out: OutputOptions) {
    if out.output == .json {
        if let b = try? APIJSON.encode(v) { print(String(decoding: b, as: UTF8.self)) }
        return
    }
    out.emit(["name": v.name, "memory": "\(v.memoryMiB) MiB", "vcpus": v.vcpus, "primary": v.primary, "replica": v.replica ?? "none",
              "protection": v.protection, "here": v.here ?? "-", "epoch": v.epoch, "lease": v.leaseLeftMillis > 0 ? "\(v.leaseLeftMillis) ms left" : "not held",
              "migration": v.migration ?? "-", "last migration": v.lastMigration ?? "-",
              "replication": v.replication.map(describe) ?? "- (shown on the node that runs it)",
              "disk": v.disk ?? "-", "kernel": v.kernel.isEmpty ? "-" : v.kernel, "initrd": v.initrd.isEmpty ? "-" : v.initrd, "cmdline": v.cmdline])
}

/// "epoch 812, RPO 80 ms, pause p50 14.2 ms p99 25.1 ms (590 checkpoints in the last minute), 3.1 MB/s, throttle 0%"
func describe(_ r: VMReplicationInfo) -> String {
    var parts = ["committed epoch \(r.committedEpoch)"]
    if let rpo = r.rpoMilliseconds { parts.append("RPO \(Int(rpo)) ms") }
    if let p50 = r.pauseP50Milliseconds, let p99 = r.pauseP99Milliseconds {
        parts.append("pause p50 \(p50) ms p99 \(p99) ms (\(r.epochsLastMinute) checkpoints in the last minute)")
    }
    if let b = r.bytesPerSecond { parts.append(String(format: "%.1f MB/s", b / 1e6)) }
    if let t = r.throttlePercent { parts.append("throttle \(t)%") }
    return parts.joined(separator: ", ")
}
