// JSON string literals (RFC 8259 §7), for the few places that write JSON by hand (the CNI plugin's
// results, K3s's manifests, Ceph's monitor commands): quotes, backslashes and control characters
// escaped, everything else as is (UTF-8).

public enum JSONString {
    /// Appends `s` as a JSON string literal, quotes included.
    public static func quote(_ s: String, into out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20:
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default:
                out.unicodeScalars.append(u)
            }
        }
        out += "\""
    }

    /// `s` as a JSON string literal, quotes included.
    public static func quoted(_ s: String) -> String {
        var out = ""
        quote(s, into: &out)
        return out
    }
}
