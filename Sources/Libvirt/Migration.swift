// libvirt's own live migration (`virsh migrate --live --p2p` through the C API) and the statistics
// QEMU reports for a finished job: the peer `mycelium-bench vm --sections migration` compares
// Mycelium's planned migration with.

import CLibvirt
import Glibc

extension LibvirtDomain {
    /// `virDomainMigrateFlags` this module passes on.
    public struct MigrationOptions: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// The guest runs while its RAM is copied (pre-copy); paused only for the last round.
        public static let live = MigrationOptions(rawValue: UInt32(VIR_MIGRATE_LIVE.rawValue))
        /// The source's libvirtd connects to the destination's itself (the URI is the destination
        /// daemon's, reachable from the source host), rather than this client driving both.
        public static let peerToPeer = MigrationOptions(rawValue: UInt32(VIR_MIGRATE_PEER2PEER.rawValue))
        /// The destination keeps a persistent definition.
        public static let persistDestination = MigrationOptions(rawValue: UInt32(VIR_MIGRATE_PERSIST_DEST.rawValue))
        /// The source's definition is removed once the migration succeeds.
        public static let undefineSource = MigrationOptions(rawValue: UInt32(VIR_MIGRATE_UNDEFINE_SOURCE.rawValue))
    }

    /// Migrates this domain to the libvirt daemon at `destinationURI` (`virDomainMigrateToURI3`
    /// without parameters: libvirt's defaults for bandwidth, downtime limit and the migration URI).
    /// With `.peerToPeer` the URI must be reachable from the source host, e.g.
    /// `qemu+tcp://10.0.0.2/system`. Returns when the migration has finished or failed; on failure
    /// the guest keeps running on the source and libvirt's error is thrown.
    public func migrate(to destinationURI: String, options: MigrationOptions) throws(LibvirtError) {
        let domainName = name
        if virDomainMigrateToURI3(handle, destinationURI, nil, 0, options.rawValue) != 0 {
            throw LibvirtError.last("migrate '\(domainName)' to \(destinationURI)")
        }
    }

    /// What QEMU and libvirt report for a job (`virDomainGetJobStats`); times in milliseconds,
    /// sizes in bytes; nil where libvirt did not report the field.
    public struct JobStatistics: Sendable, Equatable {
        /// From the job's start to its end (`time_elapsed`).
        public var elapsedMs: UInt64?
        /// How long the guest was paused (`downtime`: QEMU's measured downtime for a migration).
        public var downtimeMs: UInt64?
        /// Spent setting up before the transfer began (`setup_time`).
        public var setupMs: UInt64?
        /// Bytes of guest state transferred (`data_processed`) and the whole (`data_total`).
        public var dataProcessed: UInt64?
        public var dataTotal: UInt64?
        /// Pre-copy iterations over RAM (`memory_iteration`).
        public var memoryIterations: UInt64?

        public init(elapsedMs: UInt64? = nil, downtimeMs: UInt64? = nil, setupMs: UInt64? = nil, dataProcessed: UInt64? = nil,
                    dataTotal: UInt64? = nil, memoryIterations: UInt64? = nil) {
            self.elapsedMs = elapsedMs; self.downtimeMs = downtimeMs; self.setupMs = setupMs
            self.dataProcessed = dataProcessed; self.dataTotal = dataTotal; self.memoryIterations = memoryIterations
        }
    }

    /// The statistics of this domain's most recently completed job
    /// (`VIR_DOMAIN_JOB_STATS_COMPLETED`), kept by libvirt for a later read too; nil if there is none.
    /// After a migration, ask the source's daemon (the source domain stays defined unless
    /// `.undefineSource`) or the destination's.
    public func completedJobStatistics() throws(LibvirtError) -> JobStatistics? {
        var type: Int32 = 0
        var params: virTypedParameterPtr?
        var count: Int32 = 0
        let flags = UInt32(VIR_DOMAIN_JOB_STATS_COMPLETED.rawValue) | UInt32(VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED.rawValue)
        if virDomainGetJobStats(handle, &type, &params, &count, flags) != 0 {
            throw LibvirtError.last("read the completed job's statistics of '\(name)'")
        }
        defer { virTypedParamsFree(params, count) }
        guard UInt32(bitPattern: type) != VIR_DOMAIN_JOB_NONE.rawValue, let params else { return nil }
        func field(_ name: String) -> UInt64? {
            var v: UInt64 = 0
            // 1: found; 0: absent; -1: present with another type (never for these fields).
            return virTypedParamsGetULLong(params, count, name, &v) == 1 ? v : nil
        }
        return JobStatistics(elapsedMs: field("time_elapsed"), downtimeMs: field("downtime"), setupMs: field("setup_time"),
                             dataProcessed: field("data_processed"), dataTotal: field("data_total"),
                             memoryIterations: field("memory_iteration"))
    }
}
