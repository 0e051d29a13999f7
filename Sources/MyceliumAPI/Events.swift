// `GET /v1/events?after=SEQ`: the events the agent keeps (its latest 200), each with a sequence number,
// so a reader that polls with the last number it saw misses nothing between polls (the status answer
// carries only the latest 30). Pure: the agent passes its kept lines and its counter.

import Foundation

/// One event of the agent, numbered.
public struct AgentEvent: Codable, Sendable, Equatable {
    /// Its number: 1 for the agent's first event since it started, then +1 per event.
    public var seq: UInt64
    /// The line as the status shows it: `+SECONDSs text` (seconds since the agent started).
    public var line: String

    public init(seq: UInt64, line: String) { self.seq = seq; self.line = line }
}

/// `GET /v1/events?after=SEQ`: the kept events numbered above SEQ, oldest first.
public struct EventsResponse: Codable, Sendable, Equatable {
    /// When the agent started (Unix milliseconds). Numbers restart at 1 when it restarts: a reader
    /// that sees this change starts again from `after=0`.
    public var startedAtMillis: Int64
    /// The number of the agent's latest event (0: none yet).
    public var latestSeq: UInt64
    /// The number of the oldest event the agent still keeps (latestSeq + 1 when it keeps none).
    public var oldestSeq: UInt64
    /// The events with a number above `after`, oldest first.
    public var events: [AgentEvent]

    public init(startedAtMillis: Int64, latestSeq: UInt64, oldestSeq: UInt64, events: [AgentEvent]) {
        self.startedAtMillis = startedAtMillis; self.latestSeq = latestSeq; self.oldestSeq = oldestSeq; self.events = events
    }

    enum CodingKeys: String, CodingKey {
        case events
        case startedAtMillis = "started_at_ms"
        case latestSeq = "latest_seq"
        case oldestSeq = "oldest_seq"
    }

    /// How many events numbered above `after` the agent no longer keeps (more than it keeps happened
    /// since the reader's last poll). 0 for a first read (`after` 0 is "whatever you have").
    public func missed(after: UInt64) -> UInt64 {
        guard after > 0, oldestSeq > after + 1 else { return 0 }
        return oldestSeq - after - 1
    }

    /// The answer for an agent that keeps `kept` (oldest first) and whose latest event is number `latestSeq`.
    public static func window(kept: [String], latestSeq: UInt64, after: UInt64, startedAtMillis: Int64) -> EventsResponse {
        let count = UInt64(min(kept.count, Int(clamping: latestSeq)))
        let lines = kept.suffix(Int(count))
        let oldest = latestSeq - count + 1
        let events = lines.enumerated().compactMap { i, line -> AgentEvent? in
            let seq = oldest + UInt64(i)
            return seq > after ? AgentEvent(seq: seq, line: line) : nil
        }
        return EventsResponse(startedAtMillis: startedAtMillis, latestSeq: latestSeq, oldestSeq: oldest, events: events)
    }

    /// The `after` of a query (`after=SEQ`; empty: 0), or what is wrong with it.
    public static func after(query: String) -> Result<UInt64, APIErrorResponse> {
        var after: UInt64 = 0
        for part in query.split(separator: "&") where !part.isEmpty {
            let kv = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard kv.count == 2, kv[0] == "after" else {
                return .failure(APIErrorResponse(error: "unknown parameter '\(kv[0])' for /v1/events; use after=SEQ", code: .badRequest))
            }
            guard let v = UInt64(kv[1]) else {
                return .failure(APIErrorResponse(error: "after='\(kv[1])' is not an event number; use after=SEQ (0 or more, the latest_seq of the previous answer)",
                                                 code: .badRequest))
            }
            after = v
        }
        return .success(after)
    }
}
