// What one node does with its own libvirt daemon for endophyte VMs: start a primary or a standby
// from a VMSpec, find a running one again, and remove one completely. No Raft, no agent: the
// caller decides what should run here; this makes libvirt and QEMU do it.

import Libvirt
import MyceliumControl

public final class VMHost: @unchecked Sendable {
    // SAFETY (Sendable): immutable after init; a libvirt connection may be used from any thread.
    public let connection: LibvirtConnection
    /// Where libvirt's QEMU driver writes `<domain>.pid` (its run directory + `/qemu`).
    public let qemuRunDirectory: String
    /// Bound on every wait for QEMU (device state save and load).
    public let timeout: Double

    /// Connects to the daemon at `uri`. `qemuRunDirectory` is `/run/libvirt/qemu` for the system
    /// daemon; a daemon whose /run is elsewhere (scripts/vmhost) says where.
    public init(uri: String, qemuRunDirectory: String = "/run/libvirt/qemu", timeout: Double = 30) throws(VMHostError) {
        do { connection = try LibvirtConnection(uri: uri) } catch { throw VMHostError(.libvirt(error), domain: "") }
        self.qemuRunDirectory = qemuRunDirectory
        self.timeout = timeout
    }

    /// Defines and starts `spec` here. A primary boots; a standby's QEMU starts paused with
    /// `-incoming defer` and waits for `activate`. Refuses a name already defined here. When libvirt
    /// or QEMU refuses the domain, nothing of it is left defined and libvirt's error is thrown.
    /// A direct monitor QEMU cannot create (a directory it may not write, AppArmor) makes QEMU
    /// refuse to start; the domain is then started once more without it, on libvirt's channel.
    @discardableResult
    public func start(_ spec: VMSpec, _ config: EndophyteDomainConfig) throws(VMHostError) -> EndophyteDomain {
        do {
            return try startOnce(spec, config)
        } catch {
            guard let path = config.controlSocket, let lv = error.libvirtError, lv.message.contains(path) else { throw error }
            var without = config
            without.controlSocket = nil
            return try startOnce(spec, without)
        }
    }

    private func startOnce(_ spec: VMSpec, _ config: EndophyteDomainConfig) throws(VMHostError) -> EndophyteDomain {
        let xml = try EndophyteDomainXML.make(spec, config)
        let existing: LibvirtDomain?
        do {
            existing = try connection.domain(named: spec.name)
        } catch where error.kind == .noDomain {
            existing = nil
        } catch {
            throw VMHostError(.libvirt(error), domain: spec.name)
        }
        // libvirt would silently replace the definition of a stopped domain of the same name.
        if existing != nil { throw VMHostError(.domainExists, domain: spec.name) }
        let d: LibvirtDomain
        do { d = try connection.define(xml: xml) } catch { throw VMHostError(.libvirt(error), domain: spec.name) }
        do {
            try d.start(paused: config.role == .standby)
        } catch {
            // Keep libvirt's reason; the definition goes, so a refused VM leaves nothing behind.
            try? d.undefine(.everything)
            throw VMHostError(.libvirt(error), domain: spec.name)
        }
        return EndophyteDomain(domain: d, qemuRunDirectory: qemuRunDirectory, timeout: timeout, controlSocket: .some(config.controlSocket))
    }

    /// The domain called `name` on this host (running or not).
    public func domain(named name: String) throws(VMHostError) -> EndophyteDomain {
        do {
            return EndophyteDomain(domain: try connection.domain(named: name), qemuRunDirectory: qemuRunDirectory, timeout: timeout)
        } catch {
            throw VMHostError(.libvirt(error), domain: name)
        }
    }

    /// Every domain here that carries Mycelium's metadata, with what it records.
    public func managedDomains() throws(VMHostError) -> [(name: String, metadata: EndophyteMetadata)] {
        let all: [LibvirtDomain]
        do { all = try connection.domains() } catch { throw VMHostError(.libvirt(error), domain: "") }
        var out: [(name: String, metadata: EndophyteMetadata)] = []
        for d in all {
            let e = EndophyteDomain(domain: d, qemuRunDirectory: qemuRunDirectory, timeout: timeout)
            if let m = try e.metadata() { out.append((e.name, m)) }
        }
        return out.sorted { $0.name < $1.name }
    }

    /// Stops `name` at once (no guest shutdown) and removes its definition and everything libvirt
    /// keeps for it. Absent already: nothing to do. A stale copy (a newer ownership epoch elsewhere)
    /// goes this way, never resumed.
    public func remove(_ name: String) throws(VMHostError) {
        let d: LibvirtDomain
        do {
            d = try connection.domain(named: name)
        } catch {
            if error.kind == .noDomain { return }
            throw VMHostError(.libvirt(error), domain: name)
        }
        do {
            if try d.isActive() {
                do {
                    try d.destroy()
                } catch where error.kind == .operationInvalid {
                    // It stopped meanwhile (QEMU exited on its own): nothing to destroy.
                }
            }
            if try d.isPersistent() { try d.undefine(.everything) }
        } catch {
            throw VMHostError(.libvirt(error), domain: name)
        }
    }
}
