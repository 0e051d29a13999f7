// The health policy, kept pure so it can be tested without processes or clocks: `threshold` consecutive
// failures make an instance unhealthy, one success makes it healthy again.

public struct HealthCounter: Sendable, Equatable {
    /// Consecutive failures needed to become unhealthy (at least 1).
    public let threshold: UInt32
    public private(set) var health: Health = .unknown
    public private(set) var consecutiveFailures: UInt32 = 0

    public init(threshold: UInt32) {
        self.threshold = max(threshold, 1)
    }

    /// Records a passed check; returns the new health when it changed.
    public mutating func recordSuccess() -> Health? {
        consecutiveFailures = 0
        return set(.healthy)
    }

    /// Records a failed check; returns the new health when it changed. Below the threshold the health
    /// stays what it was (a single lost probe does not flap a healthy instance); once unhealthy, a new
    /// reason replaces the old one.
    public mutating func recordFailure(_ reason: String) -> Health? {
        if consecutiveFailures < UInt32.max { consecutiveFailures += 1 }
        guard consecutiveFailures >= threshold else { return nil }
        return set(.unhealthy(reason))
    }

    private mutating func set(_ h: Health) -> Health? {
        if h == health { return nil }
        health = h
        return h
    }
}

/// The status code of an HTTP/1.x response from the first bytes of its status line. Pure: the probe feeds
/// it what it has read so far.
public enum HTTPStatusLine {
    public enum Parse: Equatable, Sendable {
        case needMore
        case malformed
        case status(Int)
    }

    public static func parse(_ bytes: [UInt8]) -> Parse {
        let prefix = Array("HTTP/1.".utf8)
        let n = min(bytes.count, prefix.count)
        if Array(bytes[0..<n]) != Array(prefix[0..<n]) { return .malformed }
        // "HTTP/1.x SSS" and the space (or, from lax servers, the CR) after the code: 13 bytes decide,
        // and no more bytes change a verdict (the probe stops reading at the first one).
        guard bytes.count >= 13 else { return .needMore }
        let minor = bytes[7]
        guard (0x30...0x39).contains(minor), bytes[8] == UInt8(ascii: " ") else { return .malformed }
        var code = 0
        for b in bytes[9..<12] {
            guard (0x30...0x39).contains(b) else { return .malformed }
            code = code * 10 + Int(b - 0x30)
        }
        guard code >= 100 else { return .malformed }
        if bytes[12] != UInt8(ascii: " ") && bytes[12] != UInt8(ascii: "\r") { return .malformed }
        return .status(code)
    }
}
