import MyceliumCore
import MyceliumIdentity

/// Fuzz entry point for every vote decoder (wired into `mycelium-fuzz` by its owner).
///
/// For any input it must hold that nothing crashes or allocates beyond the limits, and that
/// anything a decoder accepts re-encodes to exactly the accepted bytes (one spelling per value, which
/// evidence committed through Raft depends on). The first byte picks the decoder, so one corpus
/// reaches all of them; the rest is the input.
public func fuzzVoteDecoders(_ bytes: [UInt8]) {
    guard let selector = bytes.first else { return }
    let input = Array(bytes.dropFirst())
    switch selector % 5 {
    case 0:
        if let m = try? VoteMessage(decoding: input) {
            precondition(m.encoded() == input, "vote message re-encoding differs")
        }
    case 1:
        if let e = try? Evidence(decoding: input) {
            precondition(e.encoded() == input, "evidence re-encoding differs")
            precondition(e.key.accused == e.accused)
        }
    case 2:
        if let c = try? DecisionCertificate(decoding: input) {
            precondition(c.encoded() == input, "certificate re-encoding differs")
        }
    case 3:
        if let s = try? RoundSpec(decoding: input) {
            precondition(s.encoded() == input, "round spec re-encoding differs")
            precondition((try? RoundSpec(decoding: s.encoded()))?.id == s.id, "round ID is not a function of the bytes")
        }
    default:
        // All decoders on the same bytes: none may crash, whatever the first byte.
        _ = try? VoteMessage(decoding: bytes)
        _ = try? Evidence(decoding: bytes)
        _ = try? DecisionCertificate(decoding: bytes)
        _ = try? RoundSpec(decoding: bytes)
    }
}
