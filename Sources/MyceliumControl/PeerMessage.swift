// The messages agents exchange on their authenticated channels, as one typed enum with one codec.
// Each travels as one transport frame whose type byte is `frameType`; the payload layouts are those
// the agents have always used, so nodes of this and the previous build understand each other.

import MyceliumCore
import MyceliumIdentity
import MyceliumMembership
import MyceliumRaft
import MyceliumSpores
import MyceliumVote

public enum PeerMessage: Sendable, Equatable {
    /// A Raft message (the channel's peer must be its sender).
    case raft(Message)
    /// A node asks to be admitted: its signed admission and its advertised address.
    case join(SignedCommand, address: String)
    /// A member asks the leader to propose a signed command.
    case propose(SignedCommand)
    /// First message on a link: the sender's Raft id and advertised address.
    case hello(raftID: UInt64, address: String)
    /// Failure detection (SWIM-style ping, ping-request, ack).
    case probe(ProbeMessage<UInt64>)
    /// A member reports a failure candidate to the leader.
    case report(target: UInt64)
    /// A Byzantine-tolerant vote message (commit, reveal or summary).
    case vote(VoteMessage)
    /// A KV client's request that reached a follower, forwarded to the leader as it arrived
    /// (`path`: 1 put, 2 range, 3 deleterange; `body`: the gateway JSON).
    case clientRequest(id: UInt64, path: UInt8, body: [UInt8])
    /// The leader's answer to a forwarded request: HTTP status and gateway JSON.
    case clientAnswer(id: UInt64, status: UInt16, body: [UInt8])

    public enum FrameType: UInt8, Sendable {
        case raft = 16, join = 17, propose = 18, hello = 19, probe = 20, report = 21, vote = 22
        case clientRequest = 23, clientAnswer = 24
    }

    public var frameType: FrameType {
        switch self {
        case .raft: return .raft
        case .join: return .join
        case .propose: return .propose
        case .hello: return .hello
        case .probe: return .probe
        case .report: return .report
        case .vote: return .vote
        case .clientRequest: return .clientRequest
        case .clientAnswer: return .clientAnswer
        }
    }

    public static let maxAddress = 255
    public static let maxCommand = 128 * 1024
    /// A forwarded client body or answer (frames are bounded below this anyway).
    public static let maxClientBody = 16 << 20

    public func payload() -> [UInt8] {
        var w = ByteWriter(capacity: 64)
        switch self {
        case .raft(let m): return RaftCodec.encode(m)
        case let .join(c, address): w.blob(c.encoded()); w.string(address)
        case .propose(let c): return c.encoded()
        case let .hello(id, address): w.u64(id); w.string(address)
        case .probe(let p):
            switch p {
            case .ping(let s): w.u8(1); w.u64(s)
            case let .pingRequest(s, t): w.u8(2); w.u64(s); w.u64(t)
            case let .ack(s, about): w.u8(3); w.u64(s); w.u64(about)
            }
        case .report(let t): w.u64(t)
        case .vote(let m): return m.encoded()
        case let .clientRequest(id, path, body): w.u64(id); w.u8(path); w.blob(body)
        case let .clientAnswer(id, status, body): w.u64(id); w.u16(status); w.blob(body)
        }
        return w.bytes
    }

    /// Decodes a frame's payload. Unknown frame types are nil (a newer peer may send more kinds);
    /// a known type with a malformed payload throws.
    public init?(frameType: UInt8, payload: [UInt8]) throws(PeerMessageError) {
        guard let t = FrameType(rawValue: frameType) else { return nil }
        do {
            var r = ByteReader(payload)
            switch t {
            case .raft:
                self = .raft(try RaftCodec.decodeMessage(payload))
                return
            case .join:
                let blob = try r.blob("command", limit: Self.maxCommand)
                let address = try r.string("address", limit: Self.maxAddress)
                self = .join(try SignedCommand(decoding: blob), address: address)
            case .propose:
                self = .propose(try SignedCommand(decoding: payload))
                return
            case .hello:
                self = .hello(raftID: try r.u64(), address: try r.string("address", limit: Self.maxAddress))
            case .probe:
                let tag = try r.u8(), s = try r.u64()
                switch tag {
                case 1: self = .probe(.ping(seq: s))
                case 2: self = .probe(.pingRequest(seq: s, target: try r.u64()))
                case 3: self = .probe(.ack(seq: s, about: try r.u64()))
                default: throw PeerMessageError(type: t, reason: "unknown probe kind \(tag)")
                }
            case .report:
                self = .report(target: try r.u64())
            case .vote:
                self = .vote(try VoteMessage(decoding: payload))
                return
            case .clientRequest:
                self = .clientRequest(id: try r.u64(), path: try r.u8(), body: try r.blob("body", limit: Self.maxClientBody))
            case .clientAnswer:
                self = .clientAnswer(id: try r.u64(), status: try r.u16(), body: try r.blob("body", limit: Self.maxClientBody))
            }
            try r.finish()
        } catch let e as PeerMessageError {
            throw e
        } catch {
            throw PeerMessageError(type: t, reason: "\(error)")
        }
    }
}

public struct PeerMessageError: Error, Sendable, CustomStringConvertible {
    public let type: PeerMessage.FrameType
    public let reason: String
    public var description: String { "malformed \(type) message: \(reason)" }
}

/// Where a node that does not lead sends a signed command to be proposed (a `PeerMessage.propose`).
/// The leader it knows, while it hears from it. A node that has not heard from a leader for
/// `silentTicks` ≥ `patience` (a learner removed as failed while cut off and back now: nobody sends it
/// anything, and the leader it last knew may be dead) tries the sclerotia of its spore in turn
/// (`attempt` counts its submissions); whichever it reaches forwards the command to the leader it
/// knows. Without this a member whose last known leader died never gets its refresh to the network
/// and stays recorded failed.
///
/// "In turn" is a hash of the attempt and the silence, not `attempt mod n`: a node that makes the
/// same number of other submissions between two refreshes (21 every 10 s, found by the simulator)
/// would otherwise send every refresh to the same, dead, sclerotium.
public func proposalRoute(me: MyceliumRaft.NodeID, leader: MyceliumRaft.NodeID, silentTicks: Int, patience: Int,
                          sclerotia: [MyceliumIdentity.NodeID], attempt: Int) -> MyceliumRaft.NodeID? {
    if leader != .none && silentTicks < patience { return leader }
    let others = sclerotia.map(\.compact).filter { $0 != me }
    if others.isEmpty { return leader == .none ? nil : leader }
    // SplitMix64's finaliser: every input bit moves every output bit.
    var z = UInt64(truncatingIfNeeded: attempt) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(truncatingIfNeeded: silentTicks)
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    z ^= z >> 31
    return others[Int(z % UInt64(others.count))]
}
