import Foundation
import MyceliumCore
import MyceliumIdentity
import XCTest
@testable import MyceliumSpores

/// Service spores (issue 17): one signed record per service beside the seed spore, verified offline
/// against a seed spore's sclerotia, and the authority rule a reader applies after a partition.
final class ServiceSporeTests: XCTestCase {
    func world() throws -> SporeWorld {
        var w = SporeWorld(members: 3)
        try w.handOff(to: [0, 1, 2])
        return w
    }

    func content(_ w: SporeWorld, owner: Int? = nil, name: String = "web") -> ServiceSpore.Content {
        ServiceSpore.Content(
            name: name, generation: 3, replicas: owner == nil ? 2 : 1, driver: "process",
            ports: [ServiceSpore.Port(name: "http", port: 18080)],
            instances: owner.map { [ServiceSpore.Instance(slot: 0, node: w.ids[$0], address: "10.0.0.\($0 + 1)", generation: 3, serving: true)] }
                ?? [ServiceSpore.Instance(slot: 1, node: w.ids[2], address: "", generation: 0, serving: false),
                    ServiceSpore.Instance(slot: 0, node: w.ids[1], address: "10.0.0.2", generation: 3, serving: true)],
            owner: owner.map { ServiceSpore.Owner(node: w.ids[$0], leaseUntilMillis: w.time * 1000 + 2000) })
    }

    func record(_ w: SporeWorld, _ c: ServiceSpore.Content, term: UInt64 = 2, index: UInt64 = 40, at: Int64? = nil, signer: Int = 0,
                key: SigningKey? = nil) -> ServiceSpore {
        ServiceSpore(network: w.net.id, content: c, epoch: SporeEpoch(term: term, index: index), issuedAtMillis: (at ?? w.time) * 1000,
                     signer: w.certs[signer], key: key ?? w.keys[signer])
    }

    func code(_ bytes: [UInt8], _ w: SporeWorld, network: NetworkID? = nil, authority: PrimarySpore? = nil, service: String? = nil,
              now: Int64? = nil) -> SporeError.Code? {
        do {
            _ = try ServiceSpore(verifying: bytes, network: network ?? w.net.id, authority: authority ?? w.spore, now: now ?? w.time, service: service)
            return nil
        } catch {
            _ = error.description  // every refusal can be described (what the CLI prints)
            return error.code
        }
    }

    func testRoundTripAndVerification() throws {
        let w = try world()
        let s = record(w, content(w))
        let bytes = s.encoded()
        XCTAssertEqual(s.content.instances.map(\.slot), [0, 1], "instances are kept in slot order")
        let decoded = try ServiceSpore(decoding: bytes)
        XCTAssertEqual(decoded, s)
        XCTAssertEqual(decoded.encoded(), bytes, "one spelling")
        let v = try ServiceSpore(verifying: bytes, network: w.net.id, authority: w.spore, now: w.time, service: "web")
        XCTAssertEqual(v.content.serving.map(\.address), ["10.0.0.2"])
        XCTAssertEqual(v.signer.nodeID, w.ids[0])
        // A singleton's owner and lease, and a tombstone, survive too.
        let single = record(w, content(w, owner: 1))
        XCTAssertEqual(try ServiceSpore(verifying: single.encoded(), network: w.net.id, authority: w.spore, now: w.time).content.owner?.node, w.ids[1])
        XCTAssertEqual(single.owner(atMillis: w.time * 1000)?.leaseValid, true)
        XCTAssertEqual(single.owner(atMillis: w.time * 1000 + 2000)?.leaseValid, false, "the lease it names has ended")
        let tomb = record(w, .tombstone("web", generation: 3))
        XCTAssertTrue(try ServiceSpore(verifying: tomb.encoded(), network: w.net.id, authority: w.spore, now: w.time).content.removed)
        // A record of another service under this name is refused.
        XCTAssertEqual(code(bytes, w, service: "db"), .invalid("the file holds the service spore of 'web', not of 'db'"))
    }

    func testEveryTruncationAndEverySignatureBitFlipIsRefused() throws {
        let w = try world()
        let bytes = record(w, content(w, owner: 2)).encoded()
        for n in 0..<bytes.count {
            guard case .malformed? = code(Array(bytes.prefix(n)), w) else { return XCTFail("a record truncated to \(n) of \(bytes.count) bytes was not refused as malformed") }
        }
        guard case .malformed? = code(bytes + [0], w) else { return XCTFail("a trailing byte was accepted") }
        for i in (bytes.count - 64)..<bytes.count {
            for bit in 0..<8 {
                var b = bytes; b[i] ^= UInt8(1 << bit)
                guard case .badSignature? = code(b, w) else { return XCTFail("signature byte \(i) bit \(bit) flipped was not refused as a bad signature") }
            }
        }
        // Any flipped byte of the body is refused too (malformed, another network, or a bad signature).
        for i in 0..<(bytes.count - 64) {
            var b = bytes; b[i] ^= 0x41
            XCTAssertNotNil(code(b, w), "body byte \(i) flipped was accepted")
        }
        XCTAssertEqual(code(Array(repeating: 0, count: ServiceSpore.maxSize + 1), w), .beyondLimits("service spore size: \(ServiceSpore.maxSize + 1) > \(ServiceSpore.maxSize) bytes"))
    }

    func testWrongNetworkAndForgedSignersAreRefused() throws {
        var w = try world()
        let good = record(w, content(w)).encoded()
        let other = try world()
        // Another network: asked for, or as the authority.
        guard case .wrongNetwork? = code(good, w, network: other.net.id, authority: other.spore) else { return XCTFail() }
        guard case .wrongNetwork? = code(good, w, authority: other.spore) else { return XCTFail() }
        // A sclerotium of another network signs a record that claims this network.
        let foreign = ServiceSpore(network: w.net.id, content: content(w), epoch: SporeEpoch(term: 9, index: 9), issuedAtMillis: w.time * 1000,
                                   signer: other.certs[0], key: other.keys[0])
        guard case .wrongNetwork? = code(foreign.encoded(), w) else { return XCTFail() }
        // A sclerotium's certificate with someone else's key: the signature does not match it.
        XCTAssertEqual(code(record(w, content(w), key: SigningKey()).encoded(), w), .badSignature("service spore 'web'"))
        // A member that is not a sclerotium signs (a real member, certified by the sclerotia).
        let joiner = try w.join()
        XCTAssertEqual(code(record(w, content(w), signer: joiner).encoded(), w), .notASclerotium(w.ids[joiner]))
        // Before the handoff the bootstrap agent (the inviter) writes, and no one else.
        var boot = SporeWorld(members: 3)
        try boot.apply(.tick, by: 0)
        XCTAssertNil(code(record(boot, content(boot), signer: 0).encoded(), boot))
        XCTAssertEqual(code(record(boot, content(boot), signer: 1).encoded(), boot), .notASclerotium(boot.ids[1]))
        // Signed after the signer's certificate ended, or "in the future".
        let short = SporeWorld(members: 1, validity: 100)
        guard case .refused? = code(record(short, content(short, owner: 0), at: short.time + 200).encoded(), short, now: short.time + 200) else {
            return XCTFail("a record signed under an expired certificate was accepted")
        }
        guard case .invalid? = code(record(w, content(w), at: w.time + 3600).encoded(), w) else { return XCTFail("a record from the future was accepted") }
        // Signed while valid, read later: still good (a stable service's record is not rewritten).
        XCTAssertNil(code(record(short, content(short, owner: 0), at: short.time).encoded(), short, now: short.time + 10_000))
    }

    func testContentIsBoundedAndNamesAreSafe() {
        for bad in ["", "../etc", "Web", "a/b", "-a", "a-", String(repeating: "a", count: 64)] {
            XCTAssertNotNil(ServiceSpore.nameProblem(bad), bad)
        }
        XCTAssertNil(ServiceSpore.nameProblem("web-2"))
        let n = NodeID(publicKey: SigningKey().publicKey)
        var c = ServiceSpore.Content(name: "web", generation: 1, replicas: 2, driver: "process")
        c.instances = [ServiceSpore.Instance(slot: 1, node: n, address: "", generation: 1, serving: true),
                       ServiceSpore.Instance(slot: 1, node: n, address: "", generation: 1, serving: true)]
        XCTAssertNotNil(c.problem, "a slot twice")
        XCTAssertNotNil(ServiceSpore.Content(name: "web", removed: true, generation: 1, replicas: 0, driver: "",
                                             instances: [ServiceSpore.Instance(slot: 0, node: n, address: "", generation: 1, serving: true)]).problem)
    }

    /// The partition rule, pure: a leader elected after a partition (higher term) outranks the cut-off
    /// one whatever either applied; within a term, the later index; the choice never depends on the
    /// order the records were read in.
    func testAuthorityAfterAPartitionPicksOneOwner() throws {
        let w = try world()
        // The old leader (term 2) kept writing what it had: the singleton on node 1.
        let stale = record(w, content(w, owner: 1), term: 2, index: 900, at: w.time + 5, signer: 0)
        // The majority elected a new leader (term 3), which moved the singleton to node 2.
        let moved = record(w, content(w, owner: 2), term: 3, index: 880, at: w.time + 1, signer: 1)
        XCTAssertEqual(ServiceSpore.authoritative(stale, moved).content.owner?.node, w.ids[2])
        XCTAssertEqual(ServiceSpore.authoritative(moved, stale).content.owner?.node, w.ids[2])
        // Within a term the higher index wins; at one position, the later written.
        let later = record(w, content(w, owner: 2), term: 3, index: 881, signer: 1)
        XCTAssertEqual(ServiceSpore.authoritative(moved, later), later)
        let rewritten = record(w, content(w, owner: 2), term: 3, index: 881, at: w.time + 9, signer: 1)
        XCTAssertEqual(ServiceSpore.authoritative(rewritten, later), rewritten)
        // A tombstone written later outranks the live record: a removed service stays removed.
        let tomb = record(w, .tombstone("web", generation: 3), term: 3, index: 950, signer: 1)
        XCTAssertTrue(ServiceSpore.authoritative(later, tomb).content.removed)
        // Any order of reading gives the same choice; an equivocation at one position is reported.
        let all = [stale, moved, later, rewritten]
        for perm in [all, all.reversed(), [later, stale, rewritten, moved], [moved, rewritten, stale, later]] {
            let choice = ServiceSporeChoice(perm)
            XCTAssertEqual(choice.chosen, rewritten)
            XCTAssertTrue(choice.conflicting.isEmpty)
        }
        let liar = record(w, content(w, owner: 0), term: 3, index: 881, at: w.time + 9, signer: 2)
        XCTAssertTrue(ServiceSpore.conflicts(liar, rewritten))
        let choice = ServiceSporeChoice([rewritten, liar, stale])
        XCTAssertEqual(choice.chosen, ServiceSporeChoice([liar, stale, rewritten]).chosen, "deterministic even then")
        XCTAssertEqual(choice.conflicting.count, 1)
        XCTAssertNil(ServiceSporeChoice([]).chosen)
    }

    /// The offline reader over seed directories: the seed spore and the records beside it.
    func testFindServiceReadsVerifiesAndPicksTheAuthoritativeRecord() async throws {
        let w = try world()
        let dirA = NSTemporaryDirectory() + "myc-svcspore-a-\(UUID().uuidString)", dirB = dirA + "-b"
        defer { try? FileManager.default.removeItem(atPath: dirA); try? FileManager.default.removeItem(atPath: dirB) }
        let a = DirectorySeedStore(directory: dirA, network: w.net.id), b = DirectorySeedStore(directory: dirB, network: w.net.id)
        // No seed spore yet: nothing can be verified, and the reader says so.
        var found = await findService("web", in: [a, b], network: w.net.id, now: w.time)
        XCTAssertNil(found.record)
        XCTAssertTrue(found.problems.contains { $0.problem.contains("no seed spore") }, "\(found.problems)")
        for s in [a, b] { try await s.write(SeedSpore(spore: w.spore, signer: w.certs[0], key: w.keys[0], writtenAt: w.time)) }
        // A (cut off with the old leader) holds the old owner, B the new one.
        try await a.writeService(record(w, content(w, owner: 1), term: 2, index: 900))
        try await b.writeService(record(w, content(w, owner: 2), term: 3, index: 880, signer: 1))
        XCTAssertTrue(b.servicePath("web").hasSuffix("/\(w.net.id).service-web.spore"))
        found = await findService("web", in: [a, b], network: w.net.id, now: w.time)
        XCTAssertEqual(found.record?.content.owner?.node, w.ids[2])
        XCTAssertEqual(found.endpoints, ["10.0.0.3:18080"])
        XCTAssertTrue(found.problems.isEmpty, "\(found.problems)")
        // B damaged on disk: A's record is used and B's problem said.
        var raw = try AtomicFile.read(b.servicePath("web")); raw[raw.count - 5] ^= 1
        try AtomicFile.write(raw, to: b.servicePath("web"))
        found = await findService("web", in: [a, b], network: w.net.id, now: w.time)
        XCTAssertEqual(found.record?.content.owner?.node, w.ids[1])
        XCTAssertEqual(found.problems.count, 1)
        XCTAssertTrue(found.problems[0].problem.contains("checksum"), found.problems[0].problem)
        // A record copied under another service's name is refused; an unknown service is not found.
        try AtomicFile.write(try AtomicFile.read(a.servicePath("web")), to: a.servicePath("db"))
        found = await findService("db", in: [a], network: w.net.id, now: w.time)
        XCTAssertNil(found.record)
        XCTAssertTrue(found.problems.contains { $0.problem.contains("not of 'db'") }, "\(found.problems)")
        found = await findService("nope", in: [a], network: w.net.id, now: w.time)
        XCTAssertNil(found.record)
        found = await findService("../x", in: [a], network: w.net.id, now: w.time)
        XCTAssertNil(found.record, "a name is never a path")
    }
}
