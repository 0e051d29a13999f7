// Runs the transcripts in testdata/ (see TranscriptHarness.swift for the command language).
import XCTest

final class TranscriptTests: XCTestCase {
    /// Raft Figure 8 (§5.4.2): an entry of an earlier term replicated on a majority is not committed by counting.
    func testFigure8() throws { try runTranscript("figure8") }
    /// The same scenario with the deliberate bug: the leader commits the old entry, which is later overwritten.
    func testFigure8Mutation() throws { try runTranscript("figure8_mutation") }
    /// Thesis §9.6: a node cut off keeps campaigning in pre-vote without raising its term, and rejoins quietly.
    func testPreVoteWithPartitionedNode() throws { try runTranscript("prevote_partition") }
    /// Thesis §6.2: a leader that cannot hear a quorum steps down.
    func testCheckQuorumStepDown() throws { try runTranscript("checkquorum_stepdown") }
    /// Thesis §3.10: leader transfer with TimeoutNow.
    func testLeaderTransfer() throws { try runTranscript("leader_transfer") }
    /// Thesis §4.3 and §4.2.2: a joint configuration that removes the leader.
    func testJointConfigRemovingTheLeader() throws { try runTranscript("joint_remove_leader") }
    /// Raft §7: a follower that fell behind a compaction gets the snapshot in chunks.
    func testInstallSnapshot() throws { try runTranscript("install_snapshot") }
}
