// Hosting controllers (MyceliumControl/Controller.swift): the agent hands each controller every
// applied change and every tick, carries out the proposals it asks for, and runs its driver's
// actions one at a time, in order, off the actor (a driver may block on a file or a daemon).

import Logging
import MyceliumControl
import MyceliumSpores

/// What a hosted controller asks of the agent.
enum ControllerRequest: Sendable {
    case propose(ControlEntry)
    case submit(SporeCommand)
    case request(ControlEntry)
    case note(String)
}

protocol HostedController: Sendable {
    var name: String { get }
    mutating func applied(_ change: ControlChange, context: ControllerContext) -> [ControllerRequest]
    mutating func tick(context: ControllerContext) -> [ControllerRequest]
    /// Where the driver's reports go (tagged with this controller's name).
    func attach(_ sink: @escaping @Sendable (String, any Sendable) -> Void)
    mutating func reported(_ report: any Sendable, context: ControllerContext) -> [ControllerRequest]
}

/// A controller and its driver; actions are chained so they run in order.
struct Hosted<C: Controller, D: ControllerDriver>: HostedController where C.Action == D.Action, C.Report == D.Report {
    var core: C
    let driver: D
    let logger: Logger
    var last: Task<Void, Never>?

    var name: String { core.name }

    mutating func applied(_ change: ControlChange, context: ControllerContext) -> [ControllerRequest] {
        carry(core.applied(change, context: context))
    }

    mutating func tick(context: ControllerContext) -> [ControllerRequest] {
        carry(core.tick(context: context))
    }

    func attach(_ sink: @escaping @Sendable (String, any Sendable) -> Void) {
        let name = core.name
        driver.reportTo { sink(name, $0) }
    }

    mutating func reported(_ report: any Sendable, context: ControllerContext) -> [ControllerRequest] {
        guard let r = report as? C.Report else { return [] }
        return carry(core.reported(r, context: context))
    }

    mutating func carry(_ effects: [ControllerEffect<C.Action>]) -> [ControllerRequest] {
        var out: [ControllerRequest] = []
        for e in effects {
            switch e {
            case .propose(let entry): out.append(.propose(entry))
            case .submit(let c): out.append(.submit(c))
            case .request(let entry): out.append(.request(entry))
            case .note(let s): out.append(.note(s))
            case .act(let action):
                let previous = last, driver = self.driver, logger = self.logger, name = core.name
                last = Task {
                    await previous?.value
                    do { try await driver.perform(action) } catch {
                        logger.error("controller action failed", metadata: ["controller": "\(name)", "action": "\(action)", "error": "\(error)"])
                    }
                }
            }
        }
        return out
    }
}

struct ControllerHost: Sendable {
    let logger: Logger
    var controllers: [any HostedController] = []

    init(logger: Logger) { self.logger = logger }

    mutating func host<C: Controller, D: ControllerDriver>(_ core: C, driver: D) where C.Action == D.Action, C.Report == D.Report {
        controllers.append(Hosted(core: core, driver: driver, logger: logger))
    }

    /// Sends every driver's reports to `sink` (once, when the agent starts).
    func attach(_ sink: @escaping @Sendable (String, any Sendable) -> Void) {
        for c in controllers { c.attach(sink) }
    }

    mutating func reported(_ report: any Sendable, by name: String, context: ControllerContext) -> [ControllerRequest] {
        guard let i = controllers.firstIndex(where: { $0.name == name }) else { return [] }
        return controllers[i].reported(report, context: context)
    }

    mutating func applied(_ changes: [ControlChange], context: ControllerContext) -> [ControllerRequest] {
        var out: [ControllerRequest] = []
        for i in controllers.indices { for c in changes { out += controllers[i].applied(c, context: context) } }
        return out
    }

    mutating func tick(context: ControllerContext) -> [ControllerRequest] {
        var out: [ControllerRequest] = []
        for i in controllers.indices { out += controllers[i].tick(context: context) }
        return out
    }
}

extension Agent {
    func carry(_ requests: [ControllerRequest]) {
        for r in requests {
            switch r {
            case .propose(let entry): proposeAsLeader(entry)
            case .submit(let c): submit(c)
            case .request(let entry): requestOfLeader(entry)
            case .note(let s): note(s)
            }
        }
    }
}
