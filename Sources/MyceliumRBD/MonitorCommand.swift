// Monitor commands for the storage driver: CRUSH buckets and rules, pools, and the cluster's own
// object-to-OSD mapping, through rados_mon_command (no `ceph` subprocess). The command is the JSON
// object the `ceph` CLI would send: a `prefix` and the arguments named as in Ceph's MonCommands.h.

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
