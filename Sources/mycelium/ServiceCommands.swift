import ArgumentParser
import Foundation
import MyceliumAPI

/// `mycelium service ...`: services placed by the network's scheduler (issue 17).
struct ServiceCommandGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "service",
        abstract: "Deploy, list, show, stop and read the logs of services run as processes, podman containers or K3s Deployments.",
        discussion: """
            A service is recorded in the primary spore (Raft-committed) with its spec and a generation; \
            the leader's scheduler places its replicas on the members (constraints, spread, trust, \
            capacity), each node's agent runs what is placed on it and reports its health, and every \
            agent answers DNS for NAME.service.mycelium with the healthy instances. When a node's \
            failure is confirmed, its instances are placed elsewhere at once. Any node takes these \
            commands; the leader decides.

            A spec file (YAML; JSON works too):
              name: web
              command: [python3, -m, http.server, "8080"]
              replicas: 2
              resources: {cpu: 250m, memory: 64Mi}
              ports: [{name: http, port: 8080}]
              health: {type: http, port: 8080, path: /, interval: 1s, timeout: 500ms, threshold: 2}
              restart: {policy: always, delay: 500ms}
              placement: {strategy: spread, spread: zone, max_per_node: 1, constraints: ["zone in (a, b)"]}
              volumes: ["db:/data"]    # replicas 1; local: pinned to the volume's node, ceph: moves, fenced

            Examples:
              mycelium service deploy web.yaml       # waits until every replica serves (--wait 0: don't)
              mycelium service deploy db.yaml --volume data:/data   # mounts volume data
              mycelium service list
              mycelium service show web -o json
              mycelium service logs web --instance 1
              dig @127.0.0.1 -p 8600 web.service.mycelium
              mycelium service drain --node NODE-ID   # nothing new there; its instances move
              mycelium service stop web
              mycelium service find web --network net-... --seed-dir /mnt/seeds   # offline, from service spores
            """,
        subcommands: [Deploy.self, List.self, Show.self, Stop.self, Logs.self, Drain.self, Find.self])

    struct Deploy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Deploy a service from a spec file, or update it (a changed spec replaces its instances).",
            discussion: """
                The spec is checked here (fields, units, policies), then by the leader against the \
                network (is there a node that could ever run it?) before anything is recorded. The \
                command then waits until every replica serves, and says which are missing and why \
                if they do not in time.
                """)
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions
        @Argument(help: "The spec file (YAML or JSON); '-' reads standard input.") var file: String
        @Option(help: "Seconds to wait until every replica serves (0: return once proposed).") var wait: Double = 60
        @Option(name: .customLong("volume"), help: ArgumentHelp("Mount a volume (mycelium volume create) as NAME:/PATH, added to the spec's volumes; repeatable. The service then runs 1 instance; a local volume pins it to the volume's node, a Ceph one lets it move (the old node fenced). A process finds the mount in $MYCELIUM_VOLUME_<NAME>, a podman container at PATH.", valueName: "NAME:/PATH"))
        var volumes: [String] = []

        func run() async throws {
            let text: String
            if file == "-" {
                text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
            } else {
                do { text = try String(contentsOfFile: file, encoding: .utf8) } catch {
                    throw ValidationError("cannot read \(file): \(error.localizedDescription)")
                }
            }
            var doc: ServiceSpecDocument
            do { doc = try ServiceSpecDocument.parse(text, file: file == "-" ? "the spec on standard input" : file) } catch {
                throw ValidationError("\(error)")
            }
            for v in volumes {
                guard let vol = ServiceSpecDocument.Volume(short: v) else { throw ValidationError("--volume '\(v)': write NAME:/PATH, like db:/data") }
                doc.volumes.removeAll { $0.name == vol.name }
                doc.volumes.append(vol)
            }
            let client = agent.client
            let before = try await client.services().services.first { $0.name == doc.name }?.generation ?? 0
            let answer = try await client.deployService(doc)
            if out.output != .json { print(answer.result) }
            guard wait > 0 else { return }
            let deadline = Date().addingTimeInterval(wait)
            var last: ServiceInfo?
            let progress = ProgressReporter("deploying \(doc.name)", json: out.output == .json)
            defer { progress.finish() }
            while Date() < deadline {
                if let s = try await client.services().services.first(where: { $0.name == doc.name }), s.generation > before || before == 0 {
                    last = s
                    // k3s services have no instances on nodes: Kubernetes's ready pods are what serve.
                    let current = s.driver == "k3s" ? s.serving : s.instances.filter { $0.serving && $0.generation == s.generation }.count
                    if current >= s.replicas { progress.finish(); return show(s, out) }
                    progress.update(done: Double(current), total: Double(s.replicas), unit: .items("replicas"), phase: s.pending)
                } else {
                    progress.update(phase: "waiting for the network to record it")
                }
                try await Task.sleep(nanoseconds: 200_000_000)
            }
            progress.finish()
            guard let s = last else {
                throw ValidationError("\(answer.result), but it was not recorded within \(wait) s: is there a leader with a majority? ('mycelium status')")
            }
            show(s, out)
            let missing = s.instances.filter { !$0.serving }.map { "\($0.id): \($0.state)\($0.message.isEmpty ? "" : " (\($0.message))")" }
            throw ValidationError("""
                \(s.serving) of \(s.replicas) replicas of \(s.name) serve after \(wait) s\(s.pending.isEmpty ? "" : "; \(s.pending)")\
                \(missing.isEmpty ? "" : "; " + missing.joined(separator: "; ")). 'mycelium service logs \(s.name) --instance N' shows why
                """)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the network's services and how many replicas serve.")
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions

        func run() async throws {
            if out.output == .json { print(String(decoding: try await agent.client.send(.services), as: UTF8.self)); return }
            let services = try await agent.client.services().services
            if services.isEmpty { print("no services; deploy one with 'mycelium service deploy FILE'"); return }
            print(pad("NAME", 24) + pad("DRIVER", 9) + pad("SERVING", 9) + pad("GEN", 5) + "ENDPOINTS")
            for s in services {
                print(pad(s.name, 24) + pad(s.driver, 9) + pad("\(s.serving)/\(s.replicas)", 9) + pad("\(s.generation)", 5)
                      + (s.endpoints.isEmpty ? (s.pending.isEmpty ? "-" : "pending: " + s.pending) : s.endpoints.joined(separator: " ")))
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one service: each instance's node, state, health, address and restarts, and its last events.")
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions
        @Argument(help: "The service's name.") var name: String

        func run() async throws {
            guard let s = try await agent.client.services().services.first(where: { $0.name == name }) else {
                throw ValidationError("no service named '\(name)'; see 'mycelium service list'")
            }
            show(s, out)
        }
    }

    struct Stop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stop a service: its record leaves the spore and every node stops its instances.")
        @OptionGroup var agent: AgentOptions
        @Argument(help: "The service's name.") var name: String
        @Option(help: "Seconds to wait until the record is gone (0: return once proposed).") var wait: Double = 10

        func run() async throws {
            let client = agent.client
            print(try await client.stopService(name).result)
            let deadline = Date().addingTimeInterval(wait)
            while Date() < deadline {
                if try await client.services().services.first(where: { $0.name == name }) == nil { return }
                try await Task.sleep(nanoseconds: 100_000_000)
            }
            if wait > 0 { throw ValidationError("the stop of \(name) was not recorded within \(wait) s: is there a leader with a majority? ('mycelium status')") }
        }
    }

    struct Drain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Drain a node: it gets no new instance and its instances are placed elsewhere (--undo: take instances again).",
            discussion: """
                The decision is recorded in the primary spore, so it holds across restarts of the node \
                until undone. Instances move as the scheduler finds room for them elsewhere; a \
                singleton moves once the node's lease has ended. Use it before maintenance.

                Examples:
                  mycelium service drain                 # this node
                  mycelium service drain --node NODE-ID  # another member
                  mycelium service drain --undo
                """)
        @OptionGroup var agent: AgentOptions
        @Option(help: "The node to drain (default: the node of this agent).") var node: String?
        @Flag(help: "Take instances again.") var undo = false

        func run() async throws {
            print(try await agent.client.drainNode(node, on: !undo).result)
        }
    }

    struct Logs: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the end of an instance's log (stdout and stderr); any member's agent fetches it from the node that runs it.",
            discussion: "Example: mycelium service logs web --instance 1 --bytes 65536")
        @OptionGroup var agent: AgentOptions
        @OptionGroup var out: OutputOptions
        @Argument(help: "The service's name.") var name: String
        @Option(help: "The instance: its slot (0, 1, ...) or ID (web-1); default the first on this node, else the first placed.") var instance: String?
        @Option(help: "At most this many bytes from the end.") var bytes: Int = 16384

        func run() async throws {
            let r = try await agent.client.serviceLogs(name, instance: instance, bytes: bytes)
            if out.output == .json {
                if let b = try? APIJSON.encode(r) { print(String(decoding: b, as: UTF8.self)) }
                return
            }
            print(r.log, terminator: r.log.hasSuffix("\n") || r.log.isEmpty ? "" : "\n")
        }
    }
}

private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s.padding(toLength: n, withPad: " ", startingAt: 0) }

private func show(_ s: ServiceInfo, _ out: OutputOptions) {
    if out.output == .json {
        if let b = try? APIJSON.encode(s) { print(String(decoding: b, as: UTF8.self)) }
        return
    }
    print("service     \(s.name) (\(s.driver), generation \(s.generation))")
    let kubernetes = s.driver == "k3s" && s.pending.hasPrefix("Kubernetes:")
    if !s.spec.volumes.isEmpty { print("volumes     " + s.spec.volumes.map { "\($0.name) at \($0.path)" }.joined(separator: ", ")) }
    if let p = s.pinned { print("placement   runs only on \(p)") }
    print("serving     \(s.serving) of \(s.replicas)" + (s.pending.isEmpty ? "" : kubernetes ? "; \(s.pending)" : "; pending: \(s.pending)"))
    if s.driver == "k3s" {
        // Kubernetes places a k3s service's pods: no instances on nodes here, no NAME.service.mycelium.
        print("instances   pods placed by Kubernetes ('k3s kubectl -n mycelium get pods -l mycelium.io/service=\(s.name)' on the K3s server)")
    } else {
        print("endpoints   \(s.endpoints.isEmpty ? "none" : s.endpoints.joined(separator: " "))   (DNS: \(s.name).service.mycelium)")
        print("instances")
        for i in s.instances {
            print("  " + pad(i.id, 20) + pad(i.node.isEmpty ? "-" : String(i.node.prefix(16)), 18) + pad(i.state, 10) + pad(i.health, 10)
                  + pad(i.address.isEmpty ? "-" : i.address, 16) + "restarts \(i.restarts)" + (i.message.isEmpty ? "" : "  \(i.message)"))
        }
    }
    if !s.events.isEmpty {
        print("events")
        let f = DateFormatter()
        f.dateFormat = "HH:mm:ss.SSS"
        f.timeZone = TimeZone(identifier: "UTC")
        for e in s.events.suffix(10) { print("  " + f.string(from: Date(timeIntervalSince1970: Double(e.at) / 1000)) + "  " + e.text) }
    }
}
