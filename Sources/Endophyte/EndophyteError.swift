import DirtyPages
import MyceliumCore
import MyceliumIdentity

#if canImport(Glibc)
import Glibc
#endif

/// Every failure of the replication engine, with the context needed to act on it.
public struct EndophyteError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: Equatable, Sendable {
        /// A socket call failed (`operation` names it).
        case socket(operation: String, errno: Int32)
        /// The peer closed the connection (or crashed) before the exchange finished.
        case peerClosed
        /// No answer within the configured timeout.
        case timeout(operation: String)
        /// The peer failed the Ed25519 challenge-response, or is not the node we expected.
        case authenticationFailed(reason: String)
        /// The peer sent something the protocol does not allow at this point.
        case protocolViolation(reason: String)
        case decode(DecodeError)
        case dirtyPages(DirtyPagesError)
        case region(operation: String, errno: Int32)
        /// Primary and replica disagree on the region's size or page size.
        case regionMismatch(local: Int, remote: Int)
        /// A caller hook (pause, resume, record owner, ...) threw.
        case hookFailed(hook: String, reason: String)
        /// The source is paused by the emergency policy; the reason says why.
        case emergencyPaused(reason: String)
        /// A planned migration was rolled back to the source before the switch.
        case migrationRolledBack(reason: String)
        case invalidState(String)
    }

    public let code: Code
    public init(_ code: Code) { self.code = code }

    public var description: String {
        switch code {
        case let .socket(op, e): return "\(op) failed: \(String(cString: strerror(e))) (errno \(e))"
        case .peerClosed: return "the peer closed the connection mid-exchange (crash or network loss)"
        case let .timeout(op): return "\(op) timed out; the peer is unreachable or overloaded"
        case let .authenticationFailed(r): return "peer authentication failed: \(r)"
        case let .protocolViolation(r): return "protocol violation: \(r)"
        case let .decode(e): return "malformed message: \(e)"
        case let .dirtyPages(e): return e.description
        case let .region(op, e): return "region \(op) failed: \(String(cString: strerror(e))) (errno \(e))"
        case let .regionMismatch(l, r): return "region size mismatch: local \(l) bytes, remote \(r) bytes"
        case let .hookFailed(h, r): return "the \(h) hook failed: \(r)"
        case let .emergencyPaused(r): return "source paused by the emergency policy: \(r)"
        case let .migrationRolledBack(r): return "migration rolled back to the source: \(r)"
        case let .invalidState(s): return "invalid state: \(s)"
        }
    }

    /// Failures that mean "the replica cannot be reached", which trigger the emergency policy.
    public var isUnreachable: Bool {
        switch code {
        case .peerClosed, .timeout, .socket: return true
        default: return false
        }
    }
}

typealias Lock = PthreadLock  // shared with the other C-backed modules, in MyceliumCore

/// Monotonic seconds (CLOCK_MONOTONIC). The engine is a shell: it owns sockets and real time.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
