import Foundation

/// Monotonic seconds.
func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

/// Runs `body` repeatedly for about `seconds` and returns operations per second.
func rate(seconds: Double, batch: Int = 64, _ body: () throws -> Void) rethrows -> Double {
    let start = now()
    var n = 0
    while now() - start < seconds {
        for _ in 0..<batch { try body() }
        n += batch
    }
    return Double(n) / (now() - start)
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    guard !s.isEmpty else { return .nan }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

func fmt(_ x: Double, _ digits: Int = 0) -> String { String(format: "%.\(digits)f", x) }

/// Runs a command (each argument single-quoted for /bin/sh) and returns its
/// standard output, or nil if it failed. popen rather than Foundation's Process: the latter
/// deadlocked here waiting for EOF when called from an async context.
func capture(_ argv: [String]) -> String? {
    let quoted = argv.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
    guard let f = popen(quoted + " 2>/dev/null </dev/null", "r") else { return nil }
    var out = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return pclose(f) == 0 ? String(decoding: out, as: UTF8.self) : nil
}

func machineLine() -> String {
    let cpu = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
        .split(separator: "\n").first(where: { $0.hasPrefix("model name") })?
        .split(separator: ":").last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "?"
    return "\(ProcessInfo.processInfo.activeProcessorCount) vCPU, \(cpu)"
}

extension String {
    /// Right-aligns in a column of `n` characters (shared by every scenario's tables).
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
