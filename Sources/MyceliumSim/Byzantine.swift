// Byzantine behaviours for tests and simulations. They live here, in the simulation module, so
// that no product can be configured to lie (MyceliumControl knows only `HonestVoter`).

import MyceliumControl
import MyceliumSpores

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
