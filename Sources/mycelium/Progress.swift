// The shell of MyceliumAPI's ProgressLine: reads the clock, asks whether stderr is a terminal, and
// writes there (stdout stays the command's answer, so `-o json` output is never mixed with progress).
// On a terminal: one line redrawn in place (bar, rate, ETA). Otherwise: a plain `progress: ...`
// line after 2 s, then every 10 s and on every phase change. JSON output on a pipe, or
// MYCELIUM_PROGRESS=off, prints no progress at all.

import Foundation
import MyceliumAPI

final class ProgressReporter {
    let label: String
    let start = DispatchTime.now().uptimeNanoseconds
    let terminal: Bool
    let enabled: Bool
    private var lastPlain: Double?
    private var lastPhase = ""
    private var drawn = false

    init(_ label: String, json: Bool) {
        self.label = label
        terminal = isatty(STDERR_FILENO) == 1
        let off = ProcessInfo.processInfo.environment["MYCELIUM_PROGRESS"] == "off"
        enabled = !off && (terminal || !json)
    }

    var elapsed: Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }

    /// Reports `done` of `total` (nil: unknown) units, and the phase the agent reports.
    func update(done: Double = 0, total: Double? = nil, unit: ProgressUnit = .bytes, phase: String = "") {
        guard enabled else { return }
        let s = ProgressState(label: label, done: done, total: total, elapsed: elapsed, unit: unit, phase: phase)
        if terminal {
            // Nothing for the first half second: quick operations stay quiet.
            guard s.elapsed >= 0.5 else { return }
            write("\r\u{1B}[K" + ProgressLine.terminal(s, width: Self.columns()))
            drawn = true
        } else {
            let changed = phase != lastPhase
            lastPhase = phase
            guard ProgressLine.shouldPrintPlain(elapsed: s.elapsed, lastPrinted: lastPlain, phaseChanged: changed) else { return }
            lastPlain = s.elapsed
            write(ProgressLine.plain(s) + "\n")
        }
    }

    /// Clears the bar (a terminal) before the command prints its result.
    func finish() {
        if terminal && drawn { write("\r\u{1B}[K") }
        drawn = false
    }

    private func write(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) }

    static func columns() -> Int {
        var w = winsize()
        if ioctl(STDERR_FILENO, UInt(TIOCGWINSZ), &w) == 0, w.ws_col > 10 { return Int(w.ws_col) }
        return Int(ProcessInfo.processInfo.environment["COLUMNS"] ?? "") ?? 80
    }
}
