// `mycelium backup create|verify|restore` (docs/BACKUP.md): signed, checksummed backups of the
// control state, and the restore that brings a network back after every sclerotium is lost.

import ArgumentParser
import Foundation
import MyceliumAgent
import MyceliumAPI
import MyceliumControl
import MyceliumCore

struct BackupCommandGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup", abstract: "Back up the control state, check a backup, restore a network from one.",
        discussion: """
            mycelium backup create --home ./a backup.mbk     # like 'etcdctl snapshot save'
            mycelium backup verify backup.mbk
            mycelium backup restore --home ./d backup.mbk    # every sclerotium lost; myceliumd stopped on ./d
            Scheduled backups: backup_dir, backup_interval_s (12 h) and backup_keep (5) in the agent's config.
            """,
        subcommands: [Create.self, Verify.self, Restore.self])

    static func describe(_ c: BackupContents, file: String, out: OutputOptions) {
        let members = c.members.map { "\($0.id) (\($0.status)\($0.sclerotium ? ", sclerotium" : ""))" }
        out.emit(["file": file, "network": c.network.description, "raft index": c.index, "raft term": c.term,
                  "taken at": iso8601(c.takenAtMillis / 1000), "signed by": c.signer.description, "members": members,
                  "kv keys": c.kvKeys, "kv revision": c.kvRevision, "vms": c.vms, "services": c.services, "volumes": c.volumes,
                  "snapshot bytes": c.snapshotBytes])
    }

    static func read(_ file: String) throws -> [UInt8] {
        do { return try AtomicFile.read(file, limit: BackupFile.maxSnapshotBytes + (1 << 20)) } catch {
            throw CLIError("cannot read \(file): \(error)")
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a signed, checksummed backup of the control state the local agent has applied.",
            discussion: "Example: mycelium backup create --home /var/lib/mycelium /mnt/backups/net.mbk")
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions
        @Argument(help: "Output file (written atomically).") var file: String
        func run() async throws {
            let bytes = try await agent.client.backup()
            // Checked before it is written: a backup that does not verify is no backup.
            let (_, _, contents) = try DisasterRecovery.verify(bytes)
            try AtomicFile.write(bytes, to: file, mode: 0o600)
            BackupCommandGroup.describe(contents, file: file, out: out)
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a backup's format, checksum and signature, and show what it holds.",
            discussion: "Exit status 1 when it does not verify. Example: mycelium backup verify net.mbk -o json")
        @OptionGroup var out: OutputOptions
        @Argument(help: "The backup file.") var file: String
        func run() async throws {
            let (_, _, contents) = try DisasterRecovery.verify(BackupCommandGroup.read(file))
            BackupCommandGroup.describe(contents, file: file, out: out)
        }
    }

    struct Restore: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Bring a network back on this node after every sclerotium is lost.",
            discussion: """
                Run it on a member's home with myceliumd stopped, then start myceliumd: the node leads the \
                network alone with the backup's state, the lost sclerotia are recorded failed, and the members \
                that are alive rejoin it by themselves. Refused: a backup of another network, a damaged or \
                altered one, or one older than this node's own state (--force accepts losing that).
                Example: mycelium backup restore --home /var/lib/mycelium /mnt/backups/net.mbk
                """)
        @OptionGroup var home: HomeOption
        @OptionGroup var out: OutputOptions
        @Flag(help: "Restore even though this node holds changes the backup lacks (they are lost).") var force = false
        @Flag(help: "FILE is a seed spore, not a backup (no backup survived): the members come back, the KV and the VM, service and volume tables start empty.")
        var seedSpore = false
        @Argument(help: "The backup file (or, with --seed-spore, a seed spore).") var file: String
        func run() async throws {
            let h = home.resolved
            if (try? await AgentClient(socket: h.path + "/agent.sock").status()) != nil {
                throw CLIError("the agent of \(h.path) is running", hint: "stop myceliumd on this node first: the restore replaces its Raft log")
            }
            let now = Int64((Date().timeIntervalSince1970 * 1000).rounded(.down))
            let bytes = try BackupCommandGroup.read(file)
            let o = seedSpore ? try DisasterRecovery.restore(seedSpore: bytes, home: h.path, force: force, nowMillis: now)
                : try DisasterRecovery.restore(bytes, home: h.path, force: force, nowMillis: now)
            out.emit(["restored": file + (seedSpore ? " (seed spore: members only)" : ""), "network": o.network.description, "backup index": o.sourceIndex,
                      "restored at index": o.plan.snapshot.metadata.index, "raft term": o.plan.hardState.term,
                      "lost sclerotia recorded failed": o.plan.lost.map(\.description),
                      "members to rejoin": o.plan.members.map(\.description),
                      "previous raft dir": o.previousRaftDir ?? "none",
                      "next": "start myceliumd --home \(h.path); members rejoin it; 'mycelium status' shows them"])
        }
    }
}
