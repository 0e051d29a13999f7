// Byzantine behaviours for tests and simulations. They live here, in the simulation module, so
// that no product can be configured to lie (MyceliumControl knows only `HonestVoter`).

import MyceliumControl
import MyceliumIdentity
import MyceliumSpores
import MyceliumVote

/// Lies in every vote (confirms live nodes dead, denies dead ones, refuses every admission) and
/// accuses a random live member every five seconds.
public struct LyingVoter: VoterBehaviour {
    public init() {}

    public func say(_ honest: Bool?, in round: SporeRound) -> Bool? { !(honest ?? false) }

    public func accusations(tick: UInt64, ticksPerSecond: UInt64, members: [UInt64],
                            using rng: inout some RandomNumberGenerator) -> [UInt64] {
        guard tick % (5 * ticksPerSecond) == 0, let victim = members.randomElement(using: &rng) else { return [] }
        return [victim]
    }
}

/// Votes honestly but signs two different commitments in each round: its real one to some voters, a
/// conflicting one to the others (which half depends on the round and the voter, so some round
/// splits them). Honest voters prove it (two commits, or a reveal that does not open the commit they
/// hold) and the network slashes it (and, for equivocation, revokes it). From `quietSeconds` after it
/// starts it accuses a random live member every five seconds, so rounds open without anyone failing;
/// until then it behaves, so a test can first see it trusted. Used by the agent test in which a
/// slashed member's data leaves the classes its trust no longer reaches.
public struct EquivocatingVoter: VoterBehaviour {
    public let quietSeconds: UInt64
    public init(quietSeconds: UInt64 = 0) { self.quietSeconds = quietSeconds }

    public func say(_ honest: Bool?, in round: SporeRound) -> Bool? { honest }

    public func accusations(tick: UInt64, ticksPerSecond: UInt64, members: [UInt64],
                            using rng: inout some RandomNumberGenerator) -> [UInt64] {
        guard tick >= quietSeconds * ticksPerSecond else { return [] }
        return LyingVoter().accusations(tick: tick, ticksPerSecond: ticksPerSecond, members: members, using: &rng)
    }

    public func equivocation(of commit: SignedCommit, to voter: NodeID, sign: (_ commitment: [UInt8]) -> SignedCommit) -> SignedCommit? {
        guard (commit.round.bytes[0] ^ voter.bytes[0]) & 1 == 1 else { return nil }
        var other = commit.commitment
        other[other.count - 1] ^= 0xFF
        return sign(other)
    }
}
