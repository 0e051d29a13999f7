// libvirt through its C API: the only importer of CLibvirt in the product.
//
// Mycelium is a libvirt client, not a replacement: a VM it runs is a libvirt domain under its own
// name, visible to `virsh`. This module gives the agent what it needs of libvirt — connections,
// domains (define, start, pause, resume, destroy, undefine, state, XML) and the QEMU monitor
// passthrough that checkpoints use — and the benchmarks what they compare against (libvirt's own
// live migration and its job statistics, domain lifecycle events: Migration.swift, Events.swift),
// with one error type that keeps libvirt's own error code,
// domain and message, so a log line says exactly what libvirt said.
//
// Threads: libvirt connections and domain handles may be used from any thread (libvirt ≥ 0.6).
// libvirt's last error is per thread, so every call reads it on the thread that failed, at once,
// before anything else can run there (no `await` between the call and the read).

import CLibvirt
import Glibc

/// A libvirt failure: libvirt's error number, the part of libvirt it came from, and its message.
public struct LibvirtError: Error, Equatable, Sendable, CustomStringConvertible {
    /// libvirt's `virErrorNumber` (e.g. 42, `VIR_ERR_NO_DOMAIN`).
    public let code: Int32
    /// libvirt's `virErrorDomain` (which driver or subsystem raised it).
    public let domain: Int32
    /// libvirt's message, as libvirt wrote it.
    public let message: String
    /// What this module was doing ("define domain", "open qemu:///system", ...).
    public let operation: String

    public init(code: Int32, domain: Int32, message: String, operation: String) {
        self.code = code; self.domain = domain; self.message = message; self.operation = operation
    }

    /// The failures the agent treats differently; everything else is `.other`.
    public enum Kind: Sendable, Equatable {
        case noDomain, operationInvalid, invalidXML, noSupport, connectionFailed, alreadyExists, other
    }

    public var kind: Kind {
        switch UInt32(bitPattern: code) {
        case VIR_ERR_NO_DOMAIN.rawValue: return .noDomain
        case VIR_ERR_OPERATION_INVALID.rawValue: return .operationInvalid
        case VIR_ERR_XML_ERROR.rawValue, VIR_ERR_XML_DETAIL.rawValue, VIR_ERR_XML_INVALID_SCHEMA.rawValue: return .invalidXML
        case VIR_ERR_NO_SUPPORT.rawValue, VIR_ERR_OPERATION_UNSUPPORTED.rawValue, VIR_ERR_ARGUMENT_UNSUPPORTED.rawValue: return .noSupport
        case VIR_ERR_NO_CONNECT.rawValue, VIR_ERR_SYSTEM_ERROR.rawValue, VIR_ERR_RPC.rawValue, VIR_ERR_AUTH_FAILED.rawValue: return .connectionFailed
        case VIR_ERR_DOM_EXIST.rawValue: return .alreadyExists
        default: return .other
        }
    }

    public var description: String { "libvirt: \(operation) failed: \(message) (libvirt error \(code), domain \(domain))" }

    /// libvirt's last error on this thread, for `operation`. The error is read before `operation` is
    /// evaluated: every libvirt call (even `virDomainGetName` for the message) resets it.
    static func last(_ operation: @autoclosure () -> String) -> LibvirtError {
        guard let e = virGetLastError() else {
            return LibvirtError(code: -1, domain: -1, message: "libvirt reported no error", operation: operation())
        }
        let code = e.pointee.code, domain = e.pointee.domain
        let message = e.pointee.message.map { String(cString: $0) } ?? "no message"
        virResetLastError()
        return LibvirtError(code: code, domain: domain, message: message, operation: operation())
    }
}

/// libvirt's process-wide setup, once: initialise, and keep libvirt from printing every error to
/// stderr (each is returned as a `LibvirtError` instead).
let initialized: Bool = {
    virInitialize()
    virSetErrorFunc(nil) { _, _ in }
    return true
}()

/// A connection to one libvirt daemon (or an in-process driver such as `test:///default`).
public final class LibvirtConnection: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): a virConnectPtr may be used from any thread (libvirt ≥ 0.6);
    // the pointer itself never changes after init and is closed once, in deinit.
    let handle: virConnectPtr
    public let uri: String
    /// The lifecycle handlers subscribed on this connection (Events.swift).
    let lifecycleHandlers = LifecycleFanout()

    /// Opens `uri` (e.g. `qemu:///system`, `qemu+unix:///system?socket=PATH`, `test:///default`).
    public init(uri: String) throws(LibvirtError) {
        _ = initialized
        guard let c = virConnectOpen(uri) else { throw LibvirtError.last("open \(uri)") }
        handle = c
        self.uri = uri
    }

    deinit { virConnectClose(handle) }

    /// The host name libvirt reports for this connection's host.
    public func hostname() throws(LibvirtError) -> String {
        guard let p = virConnectGetHostname(handle) else { throw LibvirtError.last("get the host name of \(uri)") }
        defer { free(p) }
        return String(cString: p)
    }

    /// Defines (persistently) the domain `xml` describes; it is not started.
    public func define(xml: String) throws(LibvirtError) -> LibvirtDomain {
        guard let d = virDomainDefineXML(handle, xml) else { throw LibvirtError.last("define a domain on \(uri)") }
        return LibvirtDomain(d, connection: self)
    }

    /// The domain called `name`; `.noDomain` if there is none.
    public func domain(named name: String) throws(LibvirtError) -> LibvirtDomain {
        guard let d = virDomainLookupByName(handle, name) else { throw LibvirtError.last("look up domain '\(name)' on \(uri)") }
        return LibvirtDomain(d, connection: self)
    }

    /// Every domain, defined or running.
    public func domains() throws(LibvirtError) -> [LibvirtDomain] {
        var list: UnsafeMutablePointer<virDomainPtr?>?
        let n = virConnectListAllDomains(handle, &list, 0)
        if n < 0 { throw LibvirtError.last("list the domains on \(uri)") }
        guard let list else { return [] }
        defer { free(list) }
        return (0..<Int(n)).compactMap { list[$0].map { LibvirtDomain($0, connection: self) } }
    }
}

/// A domain's run state, as libvirt reports it.
public enum DomainState: Sendable, Equatable, CustomStringConvertible {
    case running, paused, shutOff, crashed, blocked, shuttingDown, suspended, other(Int32)

    init(_ raw: Int32) {
        switch UInt32(bitPattern: raw) {
        case VIR_DOMAIN_RUNNING.rawValue: self = .running
        case VIR_DOMAIN_PAUSED.rawValue: self = .paused
        case VIR_DOMAIN_SHUTOFF.rawValue: self = .shutOff
        case VIR_DOMAIN_CRASHED.rawValue: self = .crashed
        case VIR_DOMAIN_BLOCKED.rawValue: self = .blocked
        case VIR_DOMAIN_SHUTDOWN.rawValue: self = .shuttingDown
        case VIR_DOMAIN_PMSUSPENDED.rawValue: self = .suspended
        default: self = .other(raw)
        }
    }

    public var description: String {
        switch self {
        case .running: return "running"
        case .paused: return "paused"
        case .shutOff: return "shut off"
        case .crashed: return "crashed"
        case .blocked: return "blocked"
        case .shuttingDown: return "shutting down"
        case .suspended: return "suspended (power management)"
        case .other(let r): return "state \(r)"
        }
    }
}

/// One libvirt domain. Holds its connection open while it lives.
public final class LibvirtDomain: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): a virDomainPtr may be used from any thread; freed once, in deinit.
    let handle: virDomainPtr
    public let connection: LibvirtConnection

    init(_ handle: virDomainPtr, connection: LibvirtConnection) {
        self.handle = handle
        self.connection = connection
    }

    deinit { virDomainFree(handle) }

    public var name: String { virDomainGetName(handle).map { String(cString: $0) } ?? "?" }

    public var uuid: String {
        var buf = [CChar](repeating: 0, count: Int(VIR_UUID_STRING_BUFLEN))
        guard virDomainGetUUIDString(handle, &buf) == 0 else { return "?" }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public func state() throws(LibvirtError) -> DomainState {
        var state: Int32 = 0, reason: Int32 = 0
        guard virDomainGetState(handle, &state, &reason, 0) == 0 else { throw LibvirtError.last("read the state of '\(name)'") }
        return DomainState(state)
    }

    /// The domain's XML as libvirt holds it now.
    public func xml() throws(LibvirtError) -> String {
        guard let p = virDomainGetXMLDesc(handle, 0) else { throw LibvirtError.last("read the XML of '\(name)'") }
        defer { free(p) }
        return String(cString: p)
    }

    /// Starts a defined domain.
    public func start() throws(LibvirtError) { try check(virDomainCreate(handle), "start '\(name)'") }
    /// Starts a defined domain; with `paused`, its vCPUs wait for `resume` (libvirt's
    /// `VIR_DOMAIN_START_PAUSED`: QEMU is started with `-S` and never told `cont`).
    public func start(paused: Bool) throws(LibvirtError) {
        let flags = paused ? UInt32(VIR_DOMAIN_START_PAUSED.rawValue) : 0
        try check(virDomainCreateWithFlags(handle, flags), "start '\(name)'\(paused ? " paused" : "")")
    }
    /// Pauses its vCPUs (the guest's memory stays as it is).
    public func suspend() throws(LibvirtError) { try check(virDomainSuspend(handle), "pause '\(name)'") }
    public func resume() throws(LibvirtError) { try check(virDomainResume(handle), "resume '\(name)'") }
    /// Stops it at once (power off, no guest shutdown).
    public func destroy() throws(LibvirtError) { try check(virDomainDestroy(handle), "destroy '\(name)'") }
    /// Removes its definition (a running domain becomes transient and goes when it stops).
    public func undefine() throws(LibvirtError) { try check(virDomainUndefine(handle), "undefine '\(name)'") }

    /// What `undefine(_:)` removes besides the definition.
    public struct UndefineOptions: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let managedSave = UndefineOptions(rawValue: UInt32(VIR_DOMAIN_UNDEFINE_MANAGED_SAVE.rawValue))
        public static let snapshotsMetadata = UndefineOptions(rawValue: UInt32(VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA.rawValue))
        public static let checkpointsMetadata = UndefineOptions(rawValue: UInt32(VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA.rawValue))
        public static let nvram = UndefineOptions(rawValue: UInt32(VIR_DOMAIN_UNDEFINE_NVRAM.rawValue))
        public static let tpm = UndefineOptions(rawValue: UInt32(VIR_DOMAIN_UNDEFINE_TPM.rawValue))
        /// Everything libvirt keeps for a domain: nothing of it is left behind.
        public static let everything: UndefineOptions = [.managedSave, .snapshotsMetadata, .checkpointsMetadata, .nvram, .tpm]
    }

    /// Removes its definition and what `options` names (`virDomainUndefineFlags`).
    public func undefine(_ options: UndefineOptions) throws(LibvirtError) {
        try check(virDomainUndefineFlags(handle, options.rawValue), "undefine '\(name)'")
    }

    /// True while the domain runs (running or paused: a QEMU process exists).
    public func isActive() throws(LibvirtError) -> Bool {
        let r = virDomainIsActive(handle)
        if r < 0 { throw LibvirtError.last("ask whether '\(name)' is active") }
        return r == 1
    }

    /// True when libvirt keeps a definition of the domain (it survives a stop).
    public func isPersistent() throws(LibvirtError) -> Bool {
        let r = virDomainIsPersistent(handle)
        if r < 0 { throw LibvirtError.last("ask whether '\(name)' is persistent") }
        return r == 1
    }

    /// The state and libvirt's reason for it (a `virDomain<State>Reason` value, e.g. `pausedUser`
    /// after `suspend` or a paused start).
    public func stateAndReason() throws(LibvirtError) -> (state: DomainState, reason: Int32) {
        var state: Int32 = 0, reason: Int32 = 0
        guard virDomainGetState(handle, &state, &reason, 0) == 0 else { throw LibvirtError.last("read the state of '\(name)'") }
        return (DomainState(state), reason)
    }

    /// `VIR_DOMAIN_PAUSED_USER`: paused on request (`suspend`, a paused start, QMP `stop`).
    public static let pausedUser = Int32(VIR_DOMAIN_PAUSED_USER.rawValue)

    /// The domain's custom metadata element in namespace `namespaceURI`, as XML, or nil when it has
    /// none. `live`: of the running domain; otherwise of its persistent definition.
    public func metadata(namespaceURI: String, live: Bool = true) throws(LibvirtError) -> String? {
        let flags = UInt32(live ? VIR_DOMAIN_AFFECT_LIVE.rawValue : VIR_DOMAIN_AFFECT_CONFIG.rawValue)
        guard let p = virDomainGetMetadata(handle, Int32(VIR_DOMAIN_METADATA_ELEMENT.rawValue), namespaceURI, flags) else {
            let e = LibvirtError.last("read the metadata \(namespaceURI) of '\(name)'")
            if UInt32(bitPattern: e.code) == VIR_ERR_NO_DOMAIN_METADATA.rawValue { return nil }
            throw e
        }
        defer { free(p) }
        return String(cString: p)
    }

    /// Replaces the custom metadata element in namespace `namespaceURI` (prefix `key`) with `xml`
    /// (nil removes it), on the running domain and, when it has one, its persistent definition.
    public func setMetadata(_ xml: String?, key: String, namespaceURI: String) throws(LibvirtError) {
        var flags = UInt32(VIR_DOMAIN_AFFECT_LIVE.rawValue)
        if try isPersistent() { flags |= UInt32(VIR_DOMAIN_AFFECT_CONFIG.rawValue) }
        if try !isActive() { flags = UInt32(VIR_DOMAIN_AFFECT_CONFIG.rawValue) }
        try check(virDomainSetMetadata(handle, Int32(VIR_DOMAIN_METADATA_ELEMENT.rawValue), xml, key, namespaceURI, flags),
                  "set the metadata \(namespaceURI) of '\(name)'")
    }

    /// Sends a QMP command (JSON) to the domain's QEMU monitor and returns QEMU's JSON reply. libvirt
    /// marks the domain tainted (it cannot vouch for what the command did); checkpoints need it.
    public func qemuMonitorCommand(_ json: String) throws(LibvirtError) -> String {
        var reply: UnsafeMutablePointer<CChar>?
        let r = virDomainQemuMonitorCommand(handle, json, &reply, UInt32(VIR_DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT.rawValue))
        if r != 0 { throw LibvirtError.last("send a monitor command to '\(name)'") }
        guard let reply else { return "" }
        defer { free(reply) }
        return String(cString: reply)
    }

    /// Sends a QMP command together with open file descriptors (`virDomainQemuMonitorCommandWithFiles`,
    /// libvirt ≥ 8.2; Unix-socket connections only): QEMU receives them as with SCM_RIGHTS, so a
    /// `getfd` names one for a later `migrate` to `fd:NAME`. libvirt passes one descriptor per
    /// command. The caller keeps (and closes) its own copies.
    public func qemuMonitorCommand(_ json: String, files: [Int32]) throws(LibvirtError) -> String {
        var reply: UnsafeMutablePointer<CChar>?
        var fds = files
        // SAFETY: libvirt reads `fds.count` ints from the array during the call only.
        let r = fds.withUnsafeMutableBufferPointer { buf in
            virDomainQemuMonitorCommandWithFiles(handle, json, UInt32(buf.count), buf.baseAddress, nil, nil, &reply,
                                                 UInt32(VIR_DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT.rawValue))
        }
        if r != 0 { throw LibvirtError.last("send a monitor command with \(files.count) file(s) to '\(name)'") }
        guard let reply else { return "" }
        defer { free(reply) }
        return String(cString: reply)
    }

    private func check(_ r: Int32, _ operation: @autoclosure () -> String) throws(LibvirtError) {
        if r != 0 { throw LibvirtError.last(operation()) }
    }
}
