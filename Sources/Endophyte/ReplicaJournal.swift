// What a replica's image is, kept where the replica's process is not: an agent restarted while its
// image lived on (a waiting standby's guest RAM, or an image file) must know whether that image is a
// committed epoch it may resume, or only a base for a resync (it may have died mid-apply).

import MyceliumCore

/// Hears of every change to a replica's image (`ReplicaReceiver`).
public protocol ReplicaJournal: Sendable {
    /// The image is about to change: forget what was recorded (after a crash from here on, the image
    /// may be a mix of two epochs: a base for a resync, never something to resume).
    func invalidate()
    /// The image now is exactly epoch `epoch`, whose device state is `deviceState`.
    func record(epoch: UInt64, deviceState: [UInt8])
}

/// One journal record: the VM's ownership epoch the replica held its image for, the replication
/// epoch the image is, and that epoch's device state.
public struct ReplicaJournalRecord: Sendable, Equatable {
    public var ownershipEpoch: UInt64
    public var epoch: UInt64
    public var deviceState: [UInt8]
    /// Device states beyond this are refused (QEMU's, without RAM, are well under a MiB).
    public static let maxDeviceState = 64 << 20

    public init(ownershipEpoch: UInt64, epoch: UInt64, deviceState: [UInt8]) {
        self.ownershipEpoch = ownershipEpoch; self.epoch = epoch; self.deviceState = deviceState
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: deviceState.count + 24)
        w.u64(ownershipEpoch); w.u64(epoch); w.blob(deviceState)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws {
        var r = ByteReader(bytes)
        ownershipEpoch = try r.u64()
        epoch = try r.u64()
        deviceState = try r.blob("device state", limit: Self.maxDeviceState)
        try r.finish()
    }
}
