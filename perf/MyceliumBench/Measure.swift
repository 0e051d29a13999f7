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

/// Runs a command and returns its standard output (nil if it could not start or failed).
func capture(_ argv: [String]) -> String? {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = argv
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = FileHandle.nullDevice
    do { try p.run() } catch { return nil }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return p.terminationStatus == 0 ? String(decoding: data, as: UTF8.self) : nil
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
