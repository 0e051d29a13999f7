// Data classes: what a volume's data needs from the hosts that keep its replicas. Each class becomes
// one CRUSH root (the hosts trusted enough for it), one replicated CRUSH rule over that root with the
// host as failure domain, and one pool with that rule. Pure values: no Ceph, no I/O.

/// Trust in parts per million of full trust, as `MyceliumVote.TrustLedger` counts it (0...1_000_000).
public typealias TrustPPM = UInt64

/// A data class: a name, the minimum trust of a host that may hold its replicas, and how many
/// replicas it keeps.
///
/// The defaults (`DataClass.defaults`) reuse the trust levels the vote already gives meaning to
/// (Sources/MyceliumVote/Quorum.swift), so one number means one thing across the network:
///
/// | class | min trust | replicas | min replicas | why |
/// |---|---|---|---|---|
/// | `public` | 0.10 | 2 | 1 | any member in good standing (new members start at 0.10); a member slashed for a deliberate lie falls below. Two copies: public data can be fetched again, and a second copy still survives one host |
/// | `private` | 0.30 | 3 | 2 | the level at which a member's word on a failure is counted: trusted with the network's own decisions |
/// | `sensitive` | 0.50 | 3 | 2 | the level at which a member may vote on admissions: the network's most trusted tier |
///
/// `minReplicas` is Ceph's `min_size` (the copies a placement group needs to accept I/O); the
/// default is Ceph's own, `replicas - replicas / 2`: 1 of 2 (public keeps writing with one copy
/// while the other is rebuilt), 2 of 3.
public struct DataClass: Sendable, Hashable, CustomStringConvertible {
    /// Lowercase letters, digits and '-', 1-32 characters, starting with a letter or digit.
    public var name: String
    /// A host holds this class's replicas only at trust ≥ `minTrust`.
    public var minTrust: TrustPPM
    /// Copies of every object (Ceph's pool `size`), each on a different host.
    public var replicas: Int
    /// Copies a placement group needs to accept reads and writes (Ceph's pool `min_size`).
    public var minReplicas: Int

    public init(name: String, minTrust: TrustPPM, replicas: Int, minReplicas: Int? = nil) {
        self.name = name
        self.minTrust = minTrust
        self.replicas = replicas
        self.minReplicas = minReplicas ?? max(1, replicas - replicas / 2)
    }

    public static let publicData = DataClass(name: "public", minTrust: 100_000, replicas: 2)
    public static let privateData = DataClass(name: "private", minTrust: 300_000, replicas: 3)
    public static let sensitiveData = DataClass(name: "sensitive", minTrust: 500_000, replicas: 3)
    /// public, private and sensitive (see the table above).
    public static let defaults: [DataClass] = [publicData, privateData, sensitiveData]

    /// Most replicas a class may ask for (Ceph's replicated rules default to max 10).
    public static let maxReplicas = 10

    /// The CRUSH root holding the hosts that qualify for this class.
    public var rootName: String { "mycelium-\(name)" }
    /// The replicated CRUSH rule over `rootName`, one replica per host.
    public var ruleName: String { "mycelium-\(name)" }
    /// The pool that stores this class's volumes.
    public var poolName: String { "mycelium-\(name)" }

    public var description: String {
        "\(name) (trust ≥ \(formatTrust(minTrust)), \(replicas) replicas, writes need \(minReplicas))"
    }

    /// Why this class cannot be used, or nil.
    public var problem: String? {
        let chars = Array(name.utf8)
        if chars.isEmpty || chars.count > 32 { return "a class name has 1-32 characters (got \(chars.count))" }
        let ok = chars.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }
        if !ok || chars[0] == 0x2D { return "a class name is lowercase letters, digits and '-', not starting with '-'" }
        if replicas < 2 {
            return "replicas must be at least 2 (got \(replicas)): a Ceph class keeps copies on different hosts; a single copy is the local driver's job"
        }
        if replicas > DataClass.maxReplicas { return "replicas must be at most \(DataClass.maxReplicas) (got \(replicas))" }
        if minReplicas < 1 || minReplicas > replicas {
            return "min replicas must be between 1 and replicas (\(replicas)), got \(minReplicas)"
        }
        if minTrust > 1_000_000 { return "min trust is a fraction from 0 to 1 (got \(formatTrust(minTrust)))" }
        return nil
    }
}

/// 500_000 → "0.5", 123_400 → "0.1234", 1_000_000 → "1".
public func formatTrust(_ ppm: TrustPPM) -> String {
    let whole = ppm / 1_000_000, frac = ppm % 1_000_000
    if frac == 0 { return "\(whole)" }
    var digits = String(frac)
    digits = String(repeating: "0", count: 6 - digits.count) + digits
    while digits.hasSuffix("0") { digits.removeLast() }
    return "\(whole).\(digits)"
}
