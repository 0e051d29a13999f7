// Carrying out the governor's effects (MyceliumControl/Governor.swift decides; this file acts):
// proposals, messages, this node's own votes on disk, and what the operator sees (events, logs,
// metrics, per-round timings).

import Foundation
import Logging
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import MyceliumVote

/// How one round went on this node: from applying its opening entry to its own decision.
struct VoteTiming: Sendable {
    var opened: Double
    var decided: Double?
    var messagesSent = 0
    var latencyMilliseconds: Double { decided.map { ($0 - opened) * 1000 } ?? -1 }
}

extension Agent {
    /// Carries out the governor's effects in order. If this node's vote cannot be stored, the rest
    /// of the batch is dropped: sending a vote we could not store risks equivocating after a crash.
    func carry(_ effects: [GovernorEffect]) {
        for e in effects {
            switch e {
            case let .proposeConfChange(cc, reason):
                do {
                    let index = try raft.proposeConfChange(cc)
                    governor.confChangeProposed(at: index)
                    note(reason)
                    logger.info("configuration change", metadata: ["change": "\(reason)"])
                } catch {
                    logger.debug("configuration change refused", metadata: ["change": "\(reason)", "reason": "\(error)"])
                }
            case let .transferLeadership(to, reason):
                do {
                    try raft.transferLeadership(to: to)
                    note(reason)
                    logger.notice("leadership transfer", metadata: ["reason": "\(reason)"])
                } catch {
                    logger.debug("leadership transfer refused", metadata: ["reason": "\(error)"])
                }
            case .submit(let command):
                submit(command)
            case .propose(let signed):
                propose(signed)
            case .requestAdmission:
                requestAdmission()
            case let .send(to, message):
                sendPeer(to, message)
            case let .persistVote(own, sequence):
                do {
                    try AtomicFile.makeDirectory(paths.votesDir)
                    try ChecksummedFile.write(kind: FileKind.ownVote, payload: own.encoded(), to: paths.votesDir + "/\(sequence).vote")
                } catch {
                    logger.error("cannot store this node's vote; abstaining", metadata: ["round": "\(sequence)", "error": "\(error)"])
                    return
                }
            case .readSeedSpores(let reason):
                Task { await self.readSeedSpores(reason: reason) }
            case .note(let text):
                note(text)
            case let .log(level, message, metadata):
                logger.log(level: level.swiftLog, "\(message)", metadata: metadata.mapValues { .string($0) })
            case .count(let metric):
                instruments.count(metric)
            case .roundOpened(let sequence):
                voteTimings[sequence] = VoteTiming(opened: Date().timeIntervalSince1970)
                if voteTimings.count > 2 * spore.limits.maxRounds, let oldest = voteTimings.keys.min() { voteTimings[oldest] = nil }
            case .roundDecided(let sequence):
                if voteTimings[sequence]?.decided == nil { voteTimings[sequence]?.decided = Date().timeIntervalSince1970 }
            case let .roundMessages(sequence, count):
                voteTimings[sequence]?.messagesSent += count
            }
        }
    }

    /// This node's own votes on disk, by round sequence (read once at start).
    static func loadOwnVotes(_ dir: String, logger: Logger) -> [UInt64: OwnVote] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [:] }
        var votes: [UInt64: OwnVote] = [:]
        for name in names where name.hasSuffix(".vote") {
            guard let seq = UInt64(name.dropLast(5)) else { continue }
            do {
                votes[seq] = try OwnVote(decoding: ChecksummedFile.read(kind: FileKind.ownVote, from: dir + "/" + name))
            } catch {
                // Checksummed and fsynced before sending, so this takes a damaged disk.
                logger.error("unreadable own vote; if its round is replayed this node cannot restore it and votes afresh", metadata: ["file": "\(name)", "error": "\(error)"])
            }
        }
        return votes
    }

    /// An operator (or a benchmark) asks whether `peer` has failed: the leader puts it to a vote.
    func requestFailureVote(_ peer: UInt64) {
        carry(governor.requestFailureVote(peer, raft: raft, state: control))
    }
}

extension GovernorLogLevel {
    var swiftLog: Logger.Level {
        switch self {
        case .debug: return .debug
        case .info: return .info
        case .notice: return .notice
        case .warning: return .warning
        case .error: return .error
        }
    }
}
