// The one error type of MyceliumRBD: what failed (the operation), Ceph's errno, and what the operator
// should do about it. librados/librbd return negative errnos; `RBDError.from` turns them into the
// cases the storage driver treats differently.

import Glibc

/// A Ceph failure. Every case carries the operation ("create image rbd/vol1") and Ceph's errno
/// (positive, e.g. `ENOENT`); `description` says what to do.
public enum RBDError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No monitor answered (connect or a monitor command timed out, or the connection was refused).
    case unreachable(monitors: String, operation: String, errno: Int32)
    /// The pool does not exist.
    case poolNotFound(pool: String, operation: String, errno: Int32)
    /// The image (`pool/name`) or snapshot does not exist.
    case notFound(what: String, operation: String, errno: Int32)
    /// An image or snapshot of that name already exists.
    case alreadyExists(what: String, operation: String, errno: Int32)
    /// Bad input, caught by us before calling Ceph (errno `EINVAL`) or refused by Ceph.
    case invalidArgument(reason: String, operation: String, errno: Int32)
    /// The image is open (watched) by a client: it cannot be deleted until every client closes it.
    case inUse(image: String, watchers: [String], operation: String, errno: Int32)
    /// Another client holds the image's exclusive lock (`EROFS`/`EBUSY`).
    case lockedElsewhere(image: String, operation: String, errno: Int32)
    /// This client has been blocklisted (fenced) by the cluster (`EBLOCKLISTED` = `ESHUTDOWN`):
    /// nothing it sends will be accepted again; a new connection is needed.
    case blocklisted(operation: String, errno: Int32)
    /// Ceph did not answer in time (`ETIMEDOUT`).
    case timedOut(operation: String, errno: Int32)
    /// This client's key may not do it (`EACCES`/`EPERM`).
    case permissionDenied(operation: String, errno: Int32)
    /// Anything else: Ceph's errno as is.
    case failed(operation: String, errno: Int32)
    /// The handle was closed before this call.
    case closed(operation: String)

    /// Ceph's errno (positive).
    public var errno: Int32 {
        switch self {
        case .unreachable(_, _, let e), .poolNotFound(_, _, let e), .notFound(_, _, let e), .alreadyExists(_, _, let e),
             .invalidArgument(_, _, let e), .inUse(_, _, _, let e), .lockedElsewhere(_, _, let e),
             .blocklisted(_, let e), .timedOut(_, let e), .permissionDenied(_, let e), .failed(_, let e):
            return e
        case .closed: return EBADF
        }
    }

    /// What this module was doing.
    public var operation: String {
        switch self {
        case .unreachable(_, let o, _), .poolNotFound(_, let o, _), .notFound(_, let o, _), .alreadyExists(_, let o, _),
             .invalidArgument(_, let o, _), .inUse(_, _, let o, _), .lockedElsewhere(_, let o, _),
             .blocklisted(let o, _), .timedOut(let o, _), .permissionDenied(let o, _), .failed(let o, _), .closed(let o):
            return o
        }
    }

    public var description: String {
        let code = "errno \(errno), \(RBDError.errnoName(errno))"
        switch self {
        case .unreachable(let mons, let op, _):
            return "ceph: \(op): cannot reach the Ceph monitors at \(mons): is the cluster up? (scripts/ceph status DIR) (\(code))"
        case .poolNotFound(let pool, let op, _):
            return "ceph: \(op): pool '\(pool)' does not exist: create it first, or check the pool name (\(code))"
        case .notFound(let what, let op, _):
            return "ceph: \(op): \(what) does not exist (\(code))"
        case .alreadyExists(let what, let op, _):
            return "ceph: \(op): \(what) already exists: pick another name, or delete it first (\(code))"
        case .invalidArgument(let reason, let op, _):
            return "ceph: \(op): \(reason) (\(code))"
        case .inUse(let image, let watchers, let op, _):
            let who = watchers.isEmpty ? "another client" : watchers.joined(separator: ", ")
            return "ceph: \(op): image \(image) is still open by \(who): close it there (detach the volume) before deleting it (\(code))"
        case .lockedElsewhere(let image, let op, _):
            return "ceph: \(op): another client holds the exclusive lock of \(image): detach it there, or fence that client (blocklist) and break its lock (\(code))"
        case .blocklisted(let op, _):
            return "ceph: \(op): this client has been blocklisted (fenced) by the cluster: it must not write again; reconnect with a new client if it is still the rightful owner (\(code))"
        case .timedOut(let op, _):
            return "ceph: \(op): Ceph did not answer in time: check 'scripts/ceph status DIR' for down OSDs or unhealthy placement groups (\(code))"
        case .permissionDenied(let op, _):
            return "ceph: \(op): permission denied: check the client name and keyring, and the key's caps (\(code))"
        case .failed(let op, _):
            return "ceph: \(op) failed (\(code))"
        case .closed(let op):
            return "ceph: \(op): the handle was already closed (a bug in the caller)"
        }
    }

    static func errnoName(_ e: Int32) -> String {
        guard let s = strerror(e) else { return "unknown" }
        return String(cString: s)
    }

    /// The error for a failed librados/librbd call returning `rc` (< 0).
    /// `what` names the object for not-found/exists ("image rbd/vol1"), `image` the image for lock and
    /// watcher errors.
    static func from(_ rc: Int32, _ operation: String, what: String? = nil, image: String? = nil, monitors: String? = nil) -> RBDError {
        let e = rc < 0 ? -rc : rc
        switch e {
        case ENOENT: return .notFound(what: what ?? "the object", operation: operation, errno: e)
        case EEXIST: return .alreadyExists(what: what ?? "the object", operation: operation, errno: e)
        case EINVAL, ERANGE, ENAMETOOLONG, EDOM: return .invalidArgument(reason: "Ceph refused the arguments", operation: operation, errno: e)
        case EBUSY where image != nil: return .inUse(image: image!, watchers: [], operation: operation, errno: e)
        case EROFS: return .lockedElsewhere(image: image ?? what ?? "the image", operation: operation, errno: e)
        case ESHUTDOWN: return .blocklisted(operation: operation, errno: e)
        case ETIMEDOUT:
            if let monitors { return .unreachable(monitors: monitors, operation: operation, errno: e) }
            return .timedOut(operation: operation, errno: e)
        case ECONNREFUSED, ENOTCONN, EHOSTUNREACH, ENETUNREACH:
            return .unreachable(monitors: monitors ?? "the configured monitors", operation: operation, errno: e)
        case EACCES, EPERM: return .permissionDenied(operation: operation, errno: e)
        default: return .failed(operation: operation, errno: e)
        }
    }
}
