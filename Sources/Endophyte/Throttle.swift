// Adaptive throttling: when the source dirties memory faster than the link carries it, slow the
// source down, following a configured curve, instead of letting epochs grow without bound.
//
// The input is the *pressure*: how many epochs' worth of link time the last epoch's dirty set
// needs, i.e. (dirty bytes / link bandwidth) / epoch interval. At pressure 1 the link is busy for the
// whole epoch; above it the replica falls behind and the RPO grows. This is the quantity QEMU's
// auto-converge reacts to (dirty rate vs. transfer rate, migration/ram.c mig_throttle_guest_down),
// expressed per epoch so one curve works for checkpointing and for migration rounds.

/// One point of a step curve: at `pressure` and above, throttle by `level`.
public struct ThrottleStep: Sendable, Equatable {
    public var pressure: Double
    public var level: Double
    public init(pressure: Double, level: Double) {
        self.pressure = pressure
        self.level = level
    }
}

/// How strongly to throttle (0 = full speed, 1 = stopped) as a function of pressure.
public enum ThrottleCurve: Sendable, Equatable {
    /// Never throttle.
    case off
    /// 0 up to `start`, then rising by `slope` per unit of pressure, capped at `maximum`.
    case linear(start: Double, slope: Double, maximum: Double)
    /// 0 up to `start`, then `initial × growth^(pressure − start)`, capped at `maximum`.
    case exponential(start: Double, initial: Double, growth: Double, maximum: Double)
    /// The level of the highest step whose pressure is at or below the current pressure.
    case step([ThrottleStep])

    public static let standard = ThrottleCurve.linear(start: 0.5, slope: 0.6, maximum: 0.9)

    public func level(forPressure p: Double) -> Double {
        guard p.isFinite, p > 0 else { return 0 }
        let raw: Double
        switch self {
        case .off:
            raw = 0
        case let .linear(start, slope, maximum):
            raw = p <= start ? 0 : min(maximum, slope * (p - start))
        case let .exponential(start, initial, growth, maximum):
            raw = p <= start ? 0 : min(maximum, initial * pow(growth, p - start))
        case let .step(steps):
            raw = steps.filter { $0.pressure <= p }.max { $0.pressure < $1.pressure }?.level ?? 0
        }
        return max(0, min(1, raw))
    }
}

/// Pure: turns per-epoch observations into a pressure and a throttle level.
public struct ThrottleController: Sendable, Equatable {
    public var curve: ThrottleCurve
    /// Smoothed link bandwidth in bytes/s (EWMA), nil until the first observation.
    public private(set) var bandwidth: Double?
    public private(set) var pressure: Double = 0
    public private(set) var level: Double = 0
    /// Weight of the newest bandwidth sample.
    public var smoothing: Double = 0.3

    public init(curve: ThrottleCurve) { self.curve = curve }

    /// Updates only the link estimate (for transfers that say nothing about the dirty rate, such as
    /// the first full copy).
    public mutating func observeBandwidth(bytes: Int, sendSeconds: Double) {
        // Only batches big enough to measure the link update the estimate; tiny epochs are
        // latency-bound and would make the link look slow.
        guard bytes >= 1 << 20, sendSeconds > 0 else { return }
        let sample = Double(bytes) / sendSeconds
        bandwidth = bandwidth.map { $0 * (1 - smoothing) + sample * smoothing } ?? sample
    }

    /// Feeds one epoch: `bytes` of dirty pages took `sendSeconds` of link time, in an epoch of
    /// `interval` seconds. Returns the new level (the caller applies it through its hook).
    public mutating func observe(bytes: Int, sendSeconds: Double, interval: Double) -> Double {
        observeBandwidth(bytes: bytes, sendSeconds: sendSeconds)
        guard let bw = bandwidth, bw > 0, interval > 0 else {
            pressure = 0
            level = 0
            return 0
        }
        pressure = (Double(bytes) / bw) / interval
        level = curve.level(forPressure: pressure)
        return level
    }
}

#if canImport(Glibc)
import Glibc
#endif
