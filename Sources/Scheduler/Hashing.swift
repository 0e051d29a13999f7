// Deterministic mixing for tie-breaks. Swift's Hasher is seeded per process, so it would make two
// runs of the same plan disagree; these functions give the same bits on every run and platform.

/// SplitMix64's finaliser (Steele, Lea, Flood 2014): a bijective mix with good avalanche.
@inline(__always)
func splitMix64(_ x: UInt64) -> UInt64 {
    var z = x &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

/// FNV-1a over bytes; only a seed for `splitMix64`, never compared across versions.
func fnv1a64<S: Sequence>(_ bytes: S) -> UInt64 where S.Element == UInt8 {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
    return h
}

/// The tie-break of one placement: depends on the seed, the service, the slot and the node only,
/// so the same question gets the same answer whatever else is in the cluster.
@inline(__always)
func tieBreak(seed: UInt64, service: UInt64, slot: Int, node: UInt64) -> UInt64 {
    splitMix64(seed ^ splitMix64(service ^ splitMix64(UInt64(truncatingIfNeeded: slot) ^ splitMix64(node))))
}

/// 10^x for x in [0, 1], as (e^(x·ln10/4))^4 with a degree-10 Taylor polynomial (relative error
/// below 1e-9), so scores are bit-identical on every platform, where libm's `exp` may differ in the
/// last bit. Plain multiplications: no division, no table.
@inline(__always)
func pow10Unit(_ x: Double) -> Double {
    let y = min(max(x, 0), 1) * (2.302585092994046 / 4)
    var r = 1 + y * (1.0 / 10)
    r = 1 + y * (1.0 / 9) * r
    r = 1 + y * (1.0 / 8) * r
    r = 1 + y * (1.0 / 7) * r
    r = 1 + y * (1.0 / 6) * r
    r = 1 + y * (1.0 / 5) * r
    r = 1 + y * (1.0 / 4) * r
    r = 1 + y * (1.0 / 3) * r
    r = 1 + y * (1.0 / 2) * r
    r = 1 + y * r
    r *= r
    return r * r
}
