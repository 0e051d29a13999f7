import Endophyte
import Libvirt

#if canImport(Glibc)
import Glibc
#endif

/// Every failure of the host-side VM driver, with the domain it concerns and what to do next.
public struct VMHostError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable {
        /// The spec cannot become a domain (checked before libvirt sees it).
        case invalidSpec(String)
        /// libvirt refused or failed; its code, domain and message are kept.
        case libvirt(LibvirtError)
        /// QEMU answered a QMP command with an error (class and description as QEMU wrote them).
        case qmp(command: String, errorClass: String, message: String)
        /// The direct QMP monitor (the domain's second monitor, on a Unix socket) cannot be used:
        /// not there, not answering, closed or misbehaving. Its callers fall back to libvirt's
        /// monitor passthrough where they can.
        case monitorChannel(path: String, problem: String)
        /// A QMP reply this driver cannot read.
        case qmpReply(command: String, reply: String)
        /// Saving or loading the device state failed inside QEMU (`query-migrate` status and error).
        case migration(operation: String, status: String, detail: String)
        case timeout(operation: String, seconds: Double)
        /// The domain's QEMU process cannot be found or is not this domain's.
        case noQEMUProcess(String)
        /// The guest-RAM memfd cannot be found or opened.
        case guestRAM(String)
        /// A RAM image and a device state from different checkpoints: resuming them would mix two
        /// states of the guest silently (MACHINE.md), so the pair is refused.
        case epochMismatch(ramEpoch: UInt64, deviceStateEpoch: UInt64)
        /// The bytes are not a QEMU migration stream.
        case invalidDeviceState(String)
        case sizeMismatch(imageBytes: Int, guestBytes: Int)
        /// The domain is not a standby waiting for its state (started paused with `-incoming defer`).
        case notStandby(String)
        /// A domain of this name is already defined on this host.
        case domainExists
        case system(operation: String, errno: Int32)
        case endophyte(EndophyteError)
    }

    public let code: Code
    /// The libvirt domain concerned ("" when none).
    public let domain: String

    public init(_ code: Code, domain: String) {
        self.code = code
        self.domain = domain
    }

    /// libvirt's own error, when libvirt is what failed.
    public var libvirtError: LibvirtError? {
        if case let .libvirt(e) = code { return e }
        return nil
    }

    public var description: String {
        let d = domain.isEmpty ? "" : "domain '\(domain)': "
        switch code {
        case let .invalidSpec(why): return "\(d)invalid VM spec: \(why); fix the spec"
        case let .libvirt(e): return "\(d)\(e)"
        case let .qmp(cmd, cls, msg): return "\(d)QEMU refused '\(cmd)': \(msg) (\(cls))"
        case let .monitorChannel(path, problem):
            return "\(d)direct QMP monitor \(path): \(problem); libvirt's monitor passthrough is used instead (slower pauses)"
        case let .qmpReply(cmd, reply): return "\(d)unreadable QEMU reply to '\(cmd)': \(reply.prefix(200))"
        case let .migration(op, status, detail):
            return "\(d)\(op) failed in QEMU (migration status '\(status)'\(detail.isEmpty ? "" : ": \(detail)")); see the domain's QEMU log"
        case let .timeout(op, s): return "\(d)\(op) did not finish within \(s) s; QEMU or libvirtd is stuck or overloaded"
        case let .noQEMUProcess(why): return "\(d)no QEMU process: \(why); is the domain running on this host?"
        case let .guestRAM(why): return "\(d)guest RAM: \(why); the domain needs <memoryBacking><source type='memfd'/><access mode='shared'/>"
        case let .epochMismatch(r, s):
            return "\(d)the RAM image is of epoch \(r) and the device state of epoch \(s): a pair from two checkpoints "
                + "would resume with mixed state; pass the RAM image and device state of one committed epoch"
        case let .invalidDeviceState(why): return "\(d)not a QEMU device state: \(why)"
        case let .sizeMismatch(i, g): return "\(d)the RAM image has \(i) bytes but the guest has \(g); the standby's memory must match the primary's"
        case let .notStandby(why): return "\(d)not a standby waiting for its state: \(why); start a new standby"
        case .domainExists: return "\(d)a domain of this name is already defined on this host; remove it first"
        case let .system(op, e): return "\(d)\(op) failed: \(String(cString: strerror(e))) (errno \(e))"
        case let .endophyte(e): return "\(d)\(e)"
        }
    }
}
