// Monitor commands for the storage driver: CRUSH buckets and rules, pools, and the cluster's own
// object-to-OSD mapping, through rados_mon_command (no `ceph` subprocess). The command is the JSON
// object the `ceph` CLI would send: a `prefix` and the arguments named as in Ceph's MonCommands.h.

import CRados
import Glibc
import MyceliumCore

/// A monitor command's answer: its output (JSON when asked for `format: json`) and status line.
public struct MonitorReply: Sendable, Equatable {
    public let output: String
    /// The monitor's human-readable status, e.g. "pool 'x' already exists".
    public let status: String
}

/// One named argument of a monitor command.
public enum MonitorArgument: Sendable, Hashable {
    case string(String)
    case int(Int)
    case bool(Bool)
    /// Ceph's `n=N` arguments, e.g. `osd crush link`'s `args: ["root=NAME"]`.
    case strings([String])
}

extension CephConnection {
    /// Sends one monitor command and returns its reply, e.g.
    /// `monitorCommand("osd crush link", ["name": .string("node1"), "args": .strings(["root=gold"])])`.
    /// Arguments are JSON-encoded here (any string is safe to pass); the monitor validates them
    /// (a refusal is `.invalidArgument` with its reason). `operation` names the command in errors.
    public func monitorCommand(_ prefix: String, _ arguments: [String: MonitorArgument] = [:],
                               operation: String? = nil) async throws(RBDError) -> MonitorReply {
        let op = operation ?? "monitor command '\(prefix)'"
        guard !prefix.isEmpty, arguments["prefix"] == nil else {
            throw .invalidArgument(reason: "a monitor command needs a prefix, given once", operation: op, errno: EINVAL)
        }
        let json = Self.commandJSON(prefix, arguments)
        return try await CephQueue.run { [self] () throws(RBDError) in try monCommandReply(json, op) }
    }

    /// Sends one command to the primary OSD of placement group `pgid` (`POOL.hex`, e.g. `3.1f`), e.g.
    /// `placementGroupCommand("3.1f", "query")`: the PG's own view of its state and acting set, which
    /// (unlike the manager's `status` digest) never lags behind the OSD map.
    public func placementGroupCommand(_ pgid: String, _ prefix: String, _ arguments: [String: MonitorArgument] = [:]) async throws(RBDError) -> MonitorReply {
        let op = "placement group \(pgid) command '\(prefix)'"
        let parts = pgid.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, UInt32(parts[0]) != nil, UInt32(parts[1], radix: 16) != nil, !prefix.isEmpty, arguments["prefix"] == nil else {
            throw .invalidArgument(reason: "'\(pgid)' is not a placement group id (POOL.hex, e.g. 3.1f), or the command has no prefix", operation: op, errno: EINVAL)
        }
        var args = arguments
        args["pgid"] = .string(pgid)  // the OSD reads the PG from the command too, not only from the target
        let json = Self.commandJSON(prefix, args)
        return try await CephQueue.run { [self] () throws(RBDError) in
            var outbuf: UnsafeMutablePointer<CChar>?, outs: UnsafeMutablePointer<CChar>?
            var outbufLen = 0, outsLen = 0
            let rc: Int32 = json.withCString { cmd in
                var cmds: [UnsafePointer<CChar>?] = [cmd]
                return cmds.withUnsafeMutableBufferPointer { b in
                    rados_pg_command(cluster, pgid, b.baseAddress, 1, nil, 0, &outbuf, &outbufLen, &outs, &outsLen)
                }
            }
            defer { if let outbuf { rados_buffer_free(outbuf) }; if let outs { rados_buffer_free(outs) } }
            let status = outs.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: outsLen), as: UTF8.self) } ?? ""
            if rc < 0 { throw RBDError.from(rc, status.isEmpty ? op : "\(op) (OSD: \(status))", what: "placement group \(pgid)") }
            let output = outbuf.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: outbufLen), as: UTF8.self) } ?? ""
            return MonitorReply(output: output, status: status)
        }
    }

    /// `{"prefix":"...", then the arguments in key order}`.
    static func commandJSON(_ prefix: String, _ arguments: [String: MonitorArgument]) -> String {
        var out = "{\"prefix\":" + jsonString(prefix)
        for key in arguments.keys.sorted() {
            out += "," + jsonString(key) + ":"
            switch arguments[key]! {
            case .string(let s): out += jsonString(s)
            case .int(let i): out += String(i)
            case .bool(let b): out += b ? "true" : "false"
            case .strings(let xs): out += "[" + xs.map(jsonString).joined(separator: ",") + "]"
            }
        }
        return out + "}"
    }

    /// A JSON string literal (RFC 8259 §7): quotes, backslashes and control characters escaped.
    static func jsonString(_ s: String) -> String { JSONString.quoted(s) }
}
