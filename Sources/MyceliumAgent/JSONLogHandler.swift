// myceliumd's JSON lines (`log_format = "json"` or `--log-format json`): one object per line on
// stderr, for Loki, Elasticsearch or `jq`. The field names are a contract (docs/OPERATIONS.md):
//   ts       RFC 3339 UTC time with milliseconds          level  trace … critical
//   msg      the message                                  logger the swift-log label ("myceliumd")
//   agent    the node ID of the agent writing the line
//   node     the member a line is about (admitted, failed, voted on)
//   peer     the other end of a channel, or the new leader
//   term     the Raft term                                vote   a vote round's sequence
//   vm, service, volume                                   the workload a line is about
// and every other metadata key of the line as it is (`error`, `reason`, …), all as strings.
// Keys that name secrets (token, secret, password, private key) are redacted, whatever logs them.
// The rendering is pure (`JSONLogLine.render`, tested); the handler only adds the clock and writes.

import Foundation
import Logging
import MyceliumCore

public enum JSONLogLine {
    /// Metadata keys renamed to the stable field names (the agent's code says `round` for a vote).
    static let renames = ["round": "vote", "leader": "peer"]
    /// The first fields of every line, in this order; the rest follow sorted by key.
    static let head = ["ts", "level", "msg"]

    /// Whether a metadata key names a secret (never written, only `"[redacted]"`).
    public static func isSecret(_ key: String) -> Bool {
        let k = key.lowercased()
        return ["token", "secret", "password", "passphrase", "private", "keyring_key", "psk"].contains { k.contains($0) }
    }

    /// One JSON line (without the newline).
    public static func render(timestamp: Double, level: Logger.Level, message: String, label: String, metadata: [String: String]) -> String {
        var fields: [String: String] = [:]
        for (k, v) in metadata {
            let key = renames[k] ?? k
            if head.contains(key) || key == "logger" { fields["meta_" + key] = v; continue }
            fields[key] = isSecret(key) ? "[redacted]" : v
        }
        var out = "{\"ts\":" + JSONString.quoted(rfc3339(timestamp)) + ",\"level\":" + JSONString.quoted(level.rawValue)
            + ",\"msg\":" + JSONString.quoted(message) + ",\"logger\":" + JSONString.quoted(label)
        for k in fields.keys.sorted() { out += "," + JSONString.quoted(k) + ":" + JSONString.quoted(fields[k]!) }
        return out + "}"
    }

    /// `2026-12-07T17:40:00.123Z`.
    public static func rfc3339(_ t: Double) -> String {
        var secs = time_t(t.rounded(.down))
        let ms = Int(((t - Double(secs)) * 1000).rounded(.down))
        var tm = tm()
        gmtime_r(&secs, &tm)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1, Int(tm.tm_mday),
                      Int(tm.tm_hour), Int(tm.tm_min), Int(tm.tm_sec), min(999, max(0, ms)))
    }

    /// The workloads and members an event text names ("VM vm1: …", "volume data: …", "service web …",
    /// "admitted node-…"): the structured fields of the agent's events when they are logged.
    public static func subjects(in text: String) -> [String: String] {
        var out: [String: String] = [:]
        let words = text.split(whereSeparator: { $0 == " " || $0 == "(" || $0 == ")" || $0 == "," }).map(String.init)
        func clean(_ w: String) -> String { String(w.drop(while: { $0 == "'" }).reversed().drop(while: { ":;'.".contains($0) }).reversed()) }
        for (i, w) in words.enumerated() where i + 1 < words.count {
            let next = clean(words[i + 1])
            guard !next.isEmpty else { continue }
            switch w {
            case "VM": out["vm"] = out["vm"] ?? next
            case "volume": out["volume"] = out["volume"] ?? next
            case "service": out["service"] = out["service"] ?? next
            default: break
            }
        }
        if let n = words.map(clean).first(where: { $0.hasPrefix("node-") && $0.count > 10 }) { out["node"] = n }
        return out
    }
}

/// A swift-log handler writing `JSONLogLine`s to stderr, one `write` per line (lines never interleave).
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    let label: String

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var explicit = event.metadata ?? [:]
        if let e = event.error, explicit["error"] == nil { explicit["error"] = .string("\(e)") }
        emit(level: event.level, message: event.message, metadata: explicit)
    }

    public func log(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?, source: String,
                    file: String, function: String, line: UInt) {
        emit(level: level, message: message, metadata: explicit)
    }

    func emit(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?) {
        var merged = metadata
        if let explicit { merged.merge(explicit) { $1 } }
        let text = JSONLogLine.render(timestamp: Date().timeIntervalSince1970, level: level, message: message.description,
                                      label: label, metadata: merged.mapValues { "\($0)" }) + "\n"
        let bytes = Array(text.utf8)
        bytes.withUnsafeBytes { p in
            var off = 0
            while off < p.count {
                let n = write(STDERR_FILENO, p.baseAddress! + off, p.count - off)
                if n <= 0 { if errno == EINTR { continue }; return }
                off += n
            }
        }
    }
}
