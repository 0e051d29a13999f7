// Naming the replica a connection is for. A node holds the replicas of several VMs behind one
// listener; the source says which one first (`attach`), then the usual exchange (`setup` ...) runs.

import MyceliumCore

public struct Attach: Sendable, Equatable {
    public static let maxName = 255
    /// The replicated thing's name (a VM's).
    public var name: String
    /// The ownership epoch the source holds it at (the fencing token): a replica refuses a source
    /// of an older one.
    public var ownershipEpoch: UInt64

    public init(name: String, ownershipEpoch: UInt64) {
        self.name = name
        self.ownershipEpoch = ownershipEpoch
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 16 + name.utf8.count)
        w.string(name); w.u64(ownershipEpoch)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws(EndophyteError) {
        do {
            var r = ByteReader(bytes)
            name = try r.string("name", limit: Self.maxName)
            ownershipEpoch = try r.u64()
            try r.finish()
        } catch {
            throw EndophyteError(.protocolViolation(reason: "attach: \(error)"))
        }
    }
}

extension ReplicationTransport {
    /// Source side: names the replica, before `ReplicationSource.connect`.
    public func sendAttach(_ a: Attach) throws(EndophyteError) { try send(.attach, a.encoded()) }

    /// Replica side: the first message of a connection.
    public func receiveAttach(timeout: Double) throws(EndophyteError) -> Attach {
        try Attach(decoding: try expect(.attach, timeout: timeout))
    }
}
