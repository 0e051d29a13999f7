import MyceliumCore
import MyceliumIdentity
import NIOConcurrencyHelpers

/// The genesis node's admission: it holds the genesis key and the invite ledger, consumes an
/// invite once and issues the joiner's membership certificate. With a persisted ledger, it reloads
/// the ledger before each admission, so invites created by the CLI while the node runs are seen. (The node agent later moves
/// admission decisions into the primary spore; this stays the bootstrap path.)
public final class GenesisJoinAuthority: JoinAuthority {
    private let genesis: SigningKey
    private let ledger: NIOLockedValueBox<InviteLedger>
    public let certificateLifetime: Int64

    public init(genesis: SigningKey, ledger: InviteLedger, certificateLifetime: Int64 = 30 * 86_400) {
        self.genesis = genesis
        self.ledger = NIOLockedValueBox(ledger)
        self.certificateLifetime = certificateLifetime
    }

    public func admit(invite: Invite, nodeKey: PublicKey, now: Int64) throws(IdentityError) -> MembershipCertificate {
        let network = NetworkID(genesisKey: genesis.publicKey)
        let result: Result<Void, IdentityError> = ledger.withLockedValue { l in
            do throws(IdentityError) {
                if let path = l.path { l = try InviteLedger(path: path) }
                try l.redeem(invite, network: network, now: now)
                return .success(())
            } catch { return .failure(error) }
        }
        try result.get()
        let serial = Sodium.randomBytes(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return MembershipCertificate.issue(by: genesis, nodeID: NodeID(publicKey: nodeKey), nodeKey: nodeKey,
                                           roles: invite.roles, serial: serial, issuedAt: now, validFor: certificateLifetime)
    }

    /// Records a newly created invite so it can be redeemed once.
    public func record(_ invite: Invite, now: Int64) throws(IdentityError) {
        let result: Result<Void, IdentityError> = ledger.withLockedValue { l in
            do throws(IdentityError) { try l.record(invite, now: now); return .success(()) } catch { return .failure(error) }
        }
        try result.get()
    }
}
