// The membership controller's driver: writes this node's certificate where the agent reads it at
// start (HOME/node.cert), atomically and checksummed. (The agent presents a renewed certificate
// as soon as the spore holds it; this file is what a restart starts from.)

import MyceliumControl
import MyceliumCore
import MyceliumIdentity

public struct CertificateFile: ControllerDriver {
    public let path: String

    public init(path: String) { self.path = path }

    public func perform(_ action: MembershipAction) async throws {
        switch action {
        case .store(let cert):
            try ChecksummedFile.write(kind: FileKind.membershipCertificate, payload: cert.encoded(), to: path, mode: 0o644)
        }
    }
}
