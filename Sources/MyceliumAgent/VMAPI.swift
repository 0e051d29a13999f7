// The VM commands of the local API (issue 16): `mycelium vm create|delete|migrate` and `GET /v1/vms`.
//
// Any node takes the request; the names in it are resolved against its spore, and the command goes
// to the leader (forwarded over the peer channel like a KV write), which checks it against the VM
// table and the members' memory before proposing it, so a refused command leaves nothing in the
// spore. The answer means "proposed"; `mycelium vm create` then waits until the record is applied.

import Foundation
import MyceliumAPI
import MyceliumControl
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import NIOHTTP1

extension Agent {
    func vmsResponse() -> VMsResponse {
        var response = vmInfos()
        for i in response.vms.indices {
            let disk = control.vms.vms[response.vms[i].name]?.spec.disk ?? ""
            response.vms[i].disk = disk.isEmpty ? nil : disk
        }
        return response
    }

    func vmInfos() -> VMsResponse {
        let local = vmDriver?.states() ?? [:]
        return VMsResponse(vms: control.vms.vms.values.sorted { $0.name < $1.name }.map { r in
            let replicaProblem: String? = {
                guard let replica = r.replica else { return "no replica assigned (waiting for a node with room)" }
                guard let m = spore.members[replica] else { return "replica \(replica) left the network" }
                return m.status == .alive ? nil : "replica \(replica) is \(m.status)"
            }()
            return VMInfo(name: r.name, memoryMiB: r.spec.memoryMiB, vcpus: r.spec.vcpus, kernel: r.spec.kernel, initrd: r.spec.initrd,
                          cmdline: r.spec.cmdline, primary: "\(r.primary)", replica: r.replica.map { "\($0)" }, epoch: r.epoch,
                          leaseLeftMillis: r.leaseUntilMillis == 0 ? 0 : max(0, r.leaseUntilMillis.saturatingSubtracting(control.nowMillis)),
                          protection: replicaProblem.map { "unprotected: \($0)" } ?? "protected",
                          here: local[r.name].map { s in
                              switch s.role {
                              case .replica: "replica: image at replication epoch \(s.committedEpoch)"
                              case .primary, .fenced: "\(s.role.rawValue): \(s.replication), dirty pages by \(s.engine ?? "?"), output commit: \(s.outputCommit ?? "off")"
                                  + (s.lastSync.map { "; last sync: \($0)" } ?? "")
                              }
                          },
                          migration: r.migration.map { "to \($0.to) (requested \(max(0, spore.now - $0.since)) s ago)" },
                          lastMigration: r.migrationOutcome.isEmpty ? nil : r.migrationOutcome,
                          replication: local[r.name].flatMap { s in
                              guard s.role != .replica else { return nil }
                              var info = VMReplicationInfo(committedEpoch: s.committedEpoch, rpoMilliseconds: s.rpoSeconds.map { ($0 * 1000).rounded() },
                                                       pauseP50Milliseconds: s.recent.map { ($0.pauseP50 * 10_000).rounded() / 10 },
                                                       pauseP99Milliseconds: s.recent.map { ($0.pauseP99 * 10_000).rounded() / 10 },
                                                       epochsLastMinute: s.recent?.epochs ?? 0, bytesPerSecond: s.recent.map { $0.bytesPerSecond.rounded() },
                                                       throttlePercent: s.throttle.map { ($0 * 1000).rounded() / 10 })
                              info.syncBytesDone = s.syncBytesDone
                              info.syncBytesTotal = s.syncBytesTotal
                              return info
                          })
        })
    }

    /// `POST /v1/vm/ACTION?QUERY`.
    func answerVM(action: String, query: String) async -> (HTTPResponseStatus, [UInt8]) {
        let q = APIQuery.parse(Substring(query))
        func bad(_ m: String) -> (HTTPResponseStatus, [UInt8]) { (.badRequest, json(APIErrorResponse(error: m, code: .badRequest))) }
        func member(_ text: String, _ what: String) -> Result<MyceliumIdentity.NodeID, APIErrorResponse> {
            guard let id = try? MyceliumIdentity.NodeID(parsing: text), spore.members[id] != nil else {
                return .failure(APIErrorResponse(error: "\(what) '\(text)' is not a member of this network; see 'mycelium status'", code: .unknownNode))
            }
            return .success(id)
        }
        let command: VMCommand
        switch action {
        case "create":
            guard let name = q["name"], !name.isEmpty else { return bad("create needs name=NAME") }
            guard let memory = q["memory_mib"].flatMap(UInt32.init) else { return bad("create needs memory_mib=MiB (a whole number)") }
            let vcpus = q["vcpus"].map { UInt16($0) } ?? 1
            guard let vcpus else { return bad("vcpus must be a whole number from 1 to 64") }
            let spec = VMSpec(name: name, memoryMiB: memory, vcpus: vcpus, kernel: q["kernel"] ?? "", initrd: q["initrd"] ?? "",
                              cmdline: q["cmdline"] ?? "", disk: q["disk"] ?? "")
            if let p = spec.problem { return bad(p) }
            if let p = control.diskProblem(spec.disk, vm: spec.name) { return (.conflict, json(APIErrorResponse(error: p, code: .vmRefused))) }
            var primary = nodeID
            if let on = q["on"], !on.isEmpty {
                switch member(on, "node") { case .success(let id): primary = id; case .failure(let e): return (.badRequest, json(e)) }
            }
            var replica: MyceliumIdentity.NodeID?
            // A local volume is a file on its home node: the VM runs there, and nothing can take it over.
            if let v = control.volumes.volumes[spec.disk], v.spec.driver == .local {
                if q["on"].map({ !$0.isEmpty }) == true, primary != v.home {
                    return (.conflict, json(APIErrorResponse(error: "volume '\(v.name)' is a local file on \(v.home); a VM using it runs there (leave out --on, or use a Ceph volume)", code: .vmRefused)))
                }
                primary = v.home
                if (q["replica"] ?? "auto") != "none" && q["replica"] != nil {
                    return (.conflict, json(APIErrorResponse(error: "volume '\(v.name)' is a local file on \(v.home): no other node can take the VM over with it; use --replica none, or a Ceph volume (--class private)", code: .vmRefused)))
                }
            }
            let localDisk = control.volumes.volumes[spec.disk]?.spec.driver == .local
            switch localDisk ? "none" : q["replica"] ?? "auto" {
            case "auto": replica = control.vms.candidates(for: spec, spore: spore, excluding: [primary]).first
            case "none": replica = nil
            case let text:
                switch member(text, "replica") { case .success(let id): replica = id; case .failure(let e): return (.badRequest, json(e)) }
            }
            // Checked here when this node is to run it (the default): a kernel that is not there or a
            // domain libvirt refuses is an error now, not a record that can never start.
            if primary == nodeID, let vmDriver {
                do { try vmDriver.validate(spec) } catch { return (.badRequest, json(APIErrorResponse(error: "\(error)", code: .vmRefused))) }
            }
            command = .create(spec, primary: primary, replica: replica)
        case "delete":
            guard let name = q["name"], !name.isEmpty else { return bad("delete needs name=NAME") }
            command = .delete(name: name)
        case "migrate":
            guard let name = q["name"], !name.isEmpty else { return bad("migrate needs name=NAME") }
            guard let r = control.vms.vms[name] else {
                return (.conflict, json(APIErrorResponse(error: "no VM named '\(name)'; see 'mycelium vm list'", code: .vmRefused)))
            }
            var to: MyceliumIdentity.NodeID
            if let text = q["to"], !text.isEmpty {
                switch member(text, "target") { case .success(let id): to = id; case .failure(let e): return (.badRequest, json(e)) }
            } else {
                guard let replica = r.replica else {
                    return (.conflict, json(APIErrorResponse(error: "'\(name)' has no replica to migrate to; name a node with to=NODE", code: .vmRefused)))
                }
                to = replica
            }
            command = .requestMigration(name: name, to: to, epoch: r.epoch)
        default:
            return (.notFound, json(APIErrorResponse(error: "no VM action '\(action)'; there are create, delete and migrate", code: .notFound)))
        }
        if raft.role == .leader {
            let a = proposeVM(command)
            return (a.status, a.body)
        }
        do {
            let a = try await forward(.vm, command.encoded(), forwarded: false)
            return (a.status, a.body)
        } catch {
            return (.serviceUnavailable, json(APIErrorResponse(error: "\(error)", code: .noLeader)))
        }
    }

    /// A follower forwarded a VM command.
    func serveForwardedVM(_ body: [UInt8]) -> KVAnswer {
        guard let command = try? VMCommand(decoding: body) else {
            return KVAnswer(status: .badRequest, body: json(APIErrorResponse(error: "malformed forwarded VM command", code: .badRequest)))
        }
        guard raft.role == .leader else {
            return KVAnswer(status: .serviceUnavailable, body: json(APIErrorResponse(error: "not the leader any more; retry", code: .noLeader)))
        }
        return proposeVM(command)
    }

    /// The leader: refuse what the table would refuse (or what does not fit), else propose it.
    func proposeVM(_ command: VMCommand) -> KVAnswer {
        func refuse(_ m: String) -> KVAnswer { KVAnswer(status: .conflict, body: json(APIErrorResponse(error: m, code: .vmRefused))) }
        if case let .create(spec, primary, replica) = command {
            for node in [primary] + (replica.map { [$0] } ?? []) {
                if let p = control.vms.placementProblem(for: spec, on: node, spore: spore) { return refuse(p) }
            }
        }
        // A target that is not the replica yet becomes it: it needs libvirt and room.
        if case let .requestMigration(name, to, _) = command, let r = control.vms.vms[name], r.replica != to, to != r.primary,
           let p = control.vms.placementProblem(for: r.spec, on: to, spore: spore) {
            return refuse(p)
        }
        var trial = control.vms
        do { _ = try trial.apply(command, spore: spore, now: control.nowMillis) } catch { return refuse("\(error)") }
        do { _ = try raft.propose(ControlEntry.vm(command).encoded()) } catch {
            return KVAnswer(status: .serviceUnavailable, body: json(APIErrorResponse(error: "proposal refused: \(error); retry", code: .noLeader)))
        }
        processReady()
        let what: String
        switch command {
        case let .create(spec, primary, replica):
            what = "VM \(spec.name) proposed: primary \(primary), " + (replica.map { "replica \($0)" } ?? "no replica (unprotected until a node has room)")
        case .delete(let name): what = "deletion of VM \(name) proposed"
        case let .requestMigration(name, to, _): what = "planned migration of VM \(name) to \(to) proposed"
        default: what = "VM command proposed"
        }
        return KVAnswer(status: .accepted, body: json(ActionResponse(result: what + "; watch 'mycelium vm list'")))
    }
}
