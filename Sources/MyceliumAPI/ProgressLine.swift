// How the CLI shows a long operation: a redrawn bar with rate and ETA on a terminal, plain lines at
// intervals when not (logs, CI, pipes). Pure: the caller passes the elapsed time and the counts it
// measured; Sources/mycelium/Progress.swift is the shell that reads the clock and writes stderr.

import Foundation

/// What a long operation has done so far.
public struct ProgressState: Sendable, Equatable {
    /// What is happening ("migrating vm1", "deploying web").
    public var label: String
    /// Units done (bytes, replicas, ...).
    public var done: Double
    /// Units in all, when known; nil shows elapsed time and the phase only.
    public var total: Double?
    /// Seconds since the operation started.
    public var elapsed: Double
    /// The unit: bytes get KiB/MiB/GiB and a per-second rate; anything else its name ("replicas").
    public var unit: ProgressUnit
    /// The current phase, as the agent says it ("copying", "pending: waiting for a leader").
    public var phase: String

    public init(label: String, done: Double, total: Double?, elapsed: Double, unit: ProgressUnit = .bytes, phase: String = "") {
        self.label = label; self.done = done; self.total = total; self.elapsed = elapsed; self.unit = unit; self.phase = phase
    }
}

public enum ProgressUnit: Sendable, Equatable {
    case bytes
    case items(String)
}

public enum ProgressLine {
    /// Done / total in 0...1, nil without a total.
    public static func fraction(_ s: ProgressState) -> Double? {
        guard let t = s.total, t > 0 else { return nil }
        return min(1, max(0, s.done / t))
    }

    /// Units per second so far (nil before any time has passed or anything was done).
    public static func rate(_ s: ProgressState) -> Double? {
        guard s.elapsed > 0, s.done > 0 else { return nil }
        return s.done / s.elapsed
    }

    /// Seconds left at the average rate so far; nil without a total or a rate, 0 when done.
    public static func eta(_ s: ProgressState) -> Double? {
        guard let t = s.total else { return nil }
        if s.done >= t { return 0 }
        guard let r = rate(s), r > 0 else { return nil }
        return (t - s.done) / r
    }

    /// "1.5 GiB", "512 B", "3 replicas".
    public static func amount(_ v: Double, _ unit: ProgressUnit) -> String {
        switch unit {
        case .items(let name): return "\(Int(v.rounded())) \(name)"
        case .bytes:
            let units = ["B", "KiB", "MiB", "GiB", "TiB"]
            var x = v, i = 0
            while x >= 1024 && i < units.count - 1 { x /= 1024; i += 1 }
            return i == 0 ? "\(Int(x)) B" : String(format: "%.1f %@", x, units[i])
        }
    }

    /// "0:07", "12:03", "1:02:03"; "--:--" for unknown.
    public static func clock(_ seconds: Double?) -> String {
        guard let seconds, seconds.isFinite, seconds >= 0 else { return "--:--" }
        let t = Int(seconds.rounded())
        let h = t / 3600, m = (t % 3600) / 60, s = t % 60
        return h > 0 ? String(format: "%d:%02d:%02d", h, m, s) : String(format: "%d:%02d", m, s)
    }

    private static func rateText(_ s: ProgressState) -> String? {
        guard let r = rate(s) else { return nil }
        switch s.unit {
        case .bytes: return amount(r, .bytes) + "/s"
        case .items(let name): return String(format: "%.1f %@/s", r, name)
        }
    }

    /// The terminal line, `width` columns at most:
    /// `migrating vm1 [#########-----------]  45%  1.2 GiB/2.0 GiB  120.0 MiB/s  ETA 0:07  copying`.
    public static func terminal(_ s: ProgressState, width: Int = 80, barWidth: Int = 20) -> String {
        var parts = [s.label]
        if let f = fraction(s) {
            let filled = Int((f * Double(barWidth)).rounded(.down))
            parts.append("[" + String(repeating: "#", count: filled) + String(repeating: "-", count: barWidth - filled) + "]")
            parts.append(String(format: "%3d%%", Int((f * 100).rounded(.down))))
            switch s.unit {
            case .bytes: parts.append(amount(s.done, .bytes) + "/" + amount(s.total ?? 0, .bytes))
            case .items(let name): parts.append("\(Int(s.done.rounded()))/\(Int((s.total ?? 0).rounded())) \(name)")
            }
            if let r = rateText(s) { parts.append(r) }
            parts.append("ETA " + clock(eta(s)))
        } else {
            if s.done > 0 { parts.append(amount(s.done, s.unit)) }
            if let r = rateText(s), s.done > 0 { parts.append(r) }
            parts.append("elapsed " + clock(s.elapsed))
        }
        if !s.phase.isEmpty { parts.append(s.phase) }
        let line = parts.joined(separator: "  ")
        return line.count <= width ? line : String(line.prefix(max(1, width - 1))) + "…"
    }

    /// The line for logs and pipes (no bar, no carriage return), stable for grep:
    /// `progress: migrating vm1: 45% (1.2 GiB of 2.0 GiB), 120.0 MiB/s, ETA 0:07, elapsed 0:06, copying`.
    public static func plain(_ s: ProgressState) -> String {
        var parts: [String] = []
        if let f = fraction(s) {
            let counts: String
            switch s.unit {
            case .bytes: counts = amount(s.done, .bytes) + " of " + amount(s.total ?? 0, .bytes)
            case .items(let name): counts = "\(Int(s.done.rounded())) of \(Int((s.total ?? 0).rounded())) \(name)"
            }
            parts.append("\(Int((f * 100).rounded(.down)))% (\(counts))")
            if let r = rateText(s) { parts.append(r) }
            parts.append("ETA " + clock(eta(s)))
        } else if s.done > 0 {
            parts.append(amount(s.done, s.unit))
            if let r = rateText(s) { parts.append(r) }
        }
        parts.append("elapsed " + clock(s.elapsed))
        if !s.phase.isEmpty { parts.append(s.phase) }
        return "progress: \(s.label): " + parts.joined(separator: ", ")
    }

    /// When not on a terminal: whether to print a plain line now. The first after `firstAfter`
    /// seconds (short waits print nothing), then every `every` seconds, and whenever the phase
    /// changes after the first.
    public static func shouldPrintPlain(elapsed: Double, lastPrinted: Double?, phaseChanged: Bool,
                                        firstAfter: Double = 2, every: Double = 10) -> Bool {
        guard elapsed >= firstAfter else { return false }
        guard let last = lastPrinted else { return true }
        return phaseChanged || elapsed - last >= every
    }
}
