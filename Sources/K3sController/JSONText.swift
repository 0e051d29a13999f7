// A JSON value with a deterministic printer: object members in the order given, two-space indent.
// The K3s core renders the CNI conflist and Deployment manifests with it, so golden files compare
// byte for byte and a manifest's bytes depend only on the spec.

import MyceliumCore

public indirect enum JSONText: Sendable, Equatable {
    case string(String)
    case int(Int64)
    case bool(Bool)
    case array([JSONText])
    case object([(String, JSONText)])

    public static func == (a: JSONText, b: JSONText) -> Bool { a.rendered() == b.rendered() }

    /// Pretty-printed, ending in a newline.
    public func rendered() -> String {
        var out = ""
        write(into: &out, indent: 0)
        return out + "\n"
    }

    /// On one line (for small values inside text).
    public func compact() -> String {
        var out = ""
        write(into: &out, indent: nil)
        return out
    }

    func write(into out: inout String, indent: Int?) {
        let pad = { (n: Int) in String(repeating: "  ", count: n) }
        switch self {
        case .string(let s): out += Self.quoted(s)
        case .int(let i): out += String(i)
        case .bool(let b): out += b ? "true" : "false"
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                if let n = indent { out += "\n" + pad(n + 1) }
                item.write(into: &out, indent: indent.map { $0 + 1 })
            }
            if let n = indent { out += "\n" + pad(n) }
            out += "]"
        case .object(let members):
            if members.isEmpty { out += "{}"; return }
            out += "{"
            for (i, (k, v)) in members.enumerated() {
                if i > 0 { out += "," }
                if let n = indent { out += "\n" + pad(n + 1) }
                out += Self.quoted(k) + (indent == nil ? ":" : ": ")
                v.write(into: &out, indent: indent.map { $0 + 1 })
            }
            if let n = indent { out += "\n" + pad(n) }
            out += "}"
        }
    }

    /// A JSON string literal (RFC 8259 §7): quotes, backslashes and control characters escaped.
    public static func quoted(_ s: String) -> String { JSONString.quoted(s) }
}
