import K3sController
import MyceliumControl
import MyceliumCore
import MyceliumIdentity
import MyceliumRaft
import MyceliumSpores
import XCTest

/// A control state with three members, a pod range and each member's pod CIDR, built by applying
/// entries as Raft would.
struct K3sWorld {
    let genesis = SigningKey(seed: Array(repeating: 7, count: 32))
    var network: NetworkIdentity { NetworkIdentity(genesisKey: genesis.publicKey) }
    var index: UInt64 = 0
    var time: Int64 = 1_800_000_010_000
    var state: ControlState

    static func key(_ i: UInt8) -> SigningKey { SigningKey(seed: Array(repeating: i, count: 32)) }
    static func id(_ i: UInt8) -> MyceliumIdentity.NodeID { MyceliumIdentity.NodeID(publicKey: key(i).publicKey) }
    static let token = K3sToken(secret: "myc-test-token-0123456789abcdef")

    init(members: UInt8 = 3) throws {
        state = ControlState(network: NetworkIdentity(genesisKey: SigningKey(seed: Array(repeating: 7, count: 32)).publicKey))
        for i in 1...members {
            let cert = MembershipCertificate.issue(by: genesis, nodeID: Self.id(i), nodeKey: Self.key(i).publicKey,
                                                   roles: [.member, .sclerotiumEligible, .inviter], serial: UInt64(i),
                                                   issuedAt: 1_800_000_000, validFor: 86_400)
            try spore(.admit(cert), by: i)
            try spore(.refresh(Capabilities(cpus: 2, memoryMiB: 2048)), by: i)
        }
        try apply(.network(.configure(pool: CIDR("10.244.0.0/16")!, nodePrefix: 24)))
        for i in 1...members { try apply(.network(.assign(node: Self.id(i), CIDR("10.244.\(i).0/24")!))) }
    }

    mutating func spore(_ c: SporeCommand, by i: UInt8) throws {
        time += 1000
        try apply(.spore(SignedCommand(c, author: Self.id(i), key: Self.key(i), network: network.id), millis: time))
    }

    /// Member `i` leaves, and an hour later the spore forgets it (another member's refresh applies then).
    mutating func leaveForGood(_ i: UInt8, then j: UInt8) throws {
        try spore(.setStatus(node: Self.id(i), .left), by: i)
        time += 3_601_000
        try spore(.refresh(Capabilities(cpus: 2, memoryMiB: 2048)), by: j)
        precondition(state.spore.members[Self.id(i)] == nil, "the spore still holds the member that left")
    }

    @discardableResult
    mutating func apply(_ e: ControlEntry) throws -> [ControlChange] {
        index += 1
        return try state.apply(Entry(term: 1, index: index, data: e.encoded()))
    }

    @discardableResult
    mutating func service(_ c: ServiceCommand) throws -> [ControlChange] { try apply(.service(c)) }

    mutating func refusal(_ c: ServiceCommand) -> String {
        do { try service(c); return "accepted" } catch { return "\(error)" }
    }

    /// Member `i` tells the table its placement facts (with or without the k3s driver).
    mutating func offer(_ i: UInt8, k3s: Bool) throws {
        try service(.nodeInfo(node: Self.id(i), ServiceNodeInfo(drivers: k3s ? [.process, .k3s] : [.process], address: "10.0.0.\(i)")))
    }

    static func settings(_ i: UInt8, binary: String? = "/usr/local/bin/k3s", role: K3sRolePreference = .auto) -> K3sSettings {
        K3sSettings(binary: binary, missing: binary == nil ? "no `k3s` binary on PATH (/usr/bin): K3s is not installed on this machine" : "",
                    role: role, directory: "/var/lib/mycelium/k3s", podCIDRFile: "/var/lib/mycelium/podcidr", nodeIP: "10.0.0.\(i)")
    }

    func context(_ i: UInt8, leader: Bool = false, millis: UInt64) -> ControllerContext {
        ControllerContext(node: Self.id(i), isLeader: leader, state: state, tick: millis / 100, ticksPerSecond: 10, millis: millis)
    }
}

func acts<A>(_ e: [ControllerEffect<A>]) -> [A] { e.compactMap { if case .act(let a) = $0 { return a }; return nil } }
func requests<A>(_ e: [ControllerEffect<A>]) -> [ServiceCommand] {
    e.compactMap { if case .request(.service(let c, _)) = $0 { return c }; return nil }
}
