// Pure parts: JSON, configuration parsing, version negotiation, error and result shapes.

import XCTest
@testable import MyceliumCNI

final class ConfigTests: XCTestCase {
    func testJSONRoundTripAndRejects() throws {
        let doc = try JSON.parse(#"{"a": [1, 2.5, -3e2, true, false, null], "s": "x\"\\\n\u00e9\ud83d\ude00", "o": {}}"#)
        XCTAssertEqual(doc["a"]?.arrayValue?.count, 6)
        XCTAssertEqual(doc["s"]?.stringValue, "x\"\\\né😀")
        XCTAssertEqual(try JSON.parse(doc.serialized), doc)
        XCTAssertEqual(try JSON.parse(doc.pretty), doc)
        for bad in ["", "{", "{\"a\":}", "[1,]", "{\"a\":1} x", "\"\\ud800\"", "tru", "{'a':1}", "01", "\"\u{01}\""] {
            XCTAssertThrowsError(try JSON.parse(bad), "accepted \(bad)")
        }
        // Hostile nesting fails cleanly instead of overflowing the stack.
        XCTAssertThrowsError(try JSON.parse(String(repeating: "[", count: 100_000)))
    }

    func testParsesFullConfig() throws {
        let text = """
        {"cniVersion":"1.1.0","name":"pods","type":"mycelium-cni","networkId":42,"mtu":1400,
         "bpfObject":"/x.o","pinDir":"/sys/fs/bpf/p",
         "ipam":{"subnet":"10.244.1.0/24","rangeStart":"10.244.1.10","rangeEnd":"10.244.1.20","dataDir":"/d"},
         "dns":{"nameservers":["10.0.0.10"]},"args":{"anything":true},"runtimeConfig":{}}
        """
        let c = try NetworkConfig.parse(Array(text.utf8))
        XCTAssertEqual(c.cniVersion, "1.1.0")
        XCTAssertEqual(c.name, "pods")
        XCTAssertEqual(c.networkId, 42)
        XCTAssertEqual(c.mtu, 1400)
        XCTAssertEqual(c.bpfObject, "/x.o")
        XCTAssertEqual(c.pinDir, "/sys/fs/bpf/p")
        XCTAssertEqual(c.ipam.subnet, IPv4CIDR("10.244.1.0/24"))
        XCTAssertEqual(c.ipam.rangeStart, IPv4Address("10.244.1.10"))
        XCTAssertEqual(c.ipam.dataDir, "/d")
        XCTAssertEqual(c.dns?["nameservers"]?.arrayValue?.count, 1)
        let r = try IPRange.resolve(c.ipam)
        XCTAssertEqual(r.count, 11)
    }

    func testDefaultsAndNetworkIdentity() throws {
        let c = try NetworkConfig.parse(Array(#"{"cniVersion":"1.0.0","name":"pods","type":"mycelium-cni"}"#.utf8))
        XCTAssertEqual(c.bpfObject, CNIDefaults.bpfObject)
        XCTAssertEqual(c.pinDir, CNIDefaults.pinDir)
        XCTAssertEqual(c.ipam.dataDir, CNIDefaults.dataDir)
        XCTAssertNil(c.ipam.subnet)
        // CRC-32C("pods"), stable across nodes and releases; a different name gives a different identity.
        XCTAssertEqual(c.networkId, NetworkConfig.networkIdentity(ofNetwork: "pods"))
        XCTAssertNotEqual(c.networkId, NetworkConfig.networkIdentity(ofNetwork: "pods2"))
        XCTAssertNotEqual(c.networkId, 0)
        // The environment overrides the default object path, but not an explicit one.
        let e = try NetworkConfig.parse(Array(#"{"cniVersion":"1.0.0","name":"pods"}"#.utf8), environment: ["MYCELIUM_BPF_OBJECT": "/env.o"])
        XCTAssertEqual(e.bpfObject, "/env.o")
        let x = try NetworkConfig.parse(Array(#"{"cniVersion":"1.0.0","name":"pods","bpfObject":"/cfg.o"}"#.utf8),
                                        environment: ["MYCELIUM_BPF_OBJECT": "/env.o"])
        XCTAssertEqual(x.bpfObject, "/cfg.o")
    }

    func testRejectsBadConfigsWithSpecCodes() {
        func code(_ text: String) -> Int? {
            do {
                _ = try NetworkConfig.parse(Array(text.utf8))
                return nil
            } catch { return error.code.rawValue }
        }
        XCTAssertEqual(code("{nope"), 6)
        XCTAssertEqual(code("[1]"), 6)
        XCTAssertEqual(code(#"{"cniVersion":"0.4.0","name":"a"}"#), 1)
        XCTAssertEqual(code(#"{"cniVersion":"9.9.9","name":"a"}"#), 1)
        XCTAssertEqual(code(#"{"cniVersion":"one","name":"a"}"#), 1)
        XCTAssertEqual(code(#"{"name":"a"}"#), 7)
        XCTAssertEqual(code(#"{"cniVersion":"1.0.0"}"#), 7)
        XCTAssertEqual(code(#"{"cniVersion":"1.0.0","name":"-bad"}"#), 7)
        XCTAssertEqual(code(#"{"cniVersion":"1.0.0","name":"a/b"}"#), 7)
        XCTAssertEqual(code(#"{"cniVersion":"1.0.0","name":"a","ipam":{"subnet":"10.0.0.1/24"}}"#), 7)
        XCTAssertEqual(code(#"{"cniVersion":"1.0.0","name":"a","ipam":{"subnet":"10.0.0.0/31"}}"#), 7)
        XCTAssertEqual(code(#"{"cniVersion":"1.0.0","name":"a","ipam":{"type":"host-local"}}"#), 2)
        XCTAssertEqual(code(#"{"cniVersion":"1.0.0","name":"a","networkId":0}"#), 7)
        XCTAssertEqual(code(#"{"cniVersion":"1.0.0","name":"a","networkId":4294967296}"#), 7)
        XCTAssertEqual(code(#"{"cniVersion":"1.0.0","name":"a","cni.dev/valid-attachments":[{"containerID":1}]}"#), 7)
    }

    func testVersionNegotiation() throws {
        XCTAssertEqual(try CNIVersion.negotiate(cniVersion: "1.0.0", cniVersions: ["1.1.0"]), "1.0.0",
                       "an explicit cniVersion wins: the runtime parses the result in it")
        XCTAssertEqual(try CNIVersion.negotiate(cniVersion: nil, cniVersions: ["0.4.0", "1.0.0", "1.1.0", "2.0.0"]), "1.1.0")
        XCTAssertEqual(try CNIVersion.negotiate(cniVersion: nil, cniVersions: ["1.0.0", "0.3.1"]), "1.0.0")
        XCTAssertThrowsError(try CNIVersion.negotiate(cniVersion: nil, cniVersions: ["0.3.1", "bogus"])) {
            XCTAssertEqual(($0 as? CNIError)?.code, .incompatibleVersion)
        }
        XCTAssertEqual(CNIVersion.highestCommon(["1.0.0", "1.1.0"], ["0.4.0", "1.0.0"]), "1.0.0")
        XCTAssertNil(CNIVersion.highestCommon(["1.1.0"], ["0.4.0"]))
        XCTAssertTrue(SemVer("1.10.0")! > SemVer("1.9.0")!)
        let c = try NetworkConfig.parse(Array(#"{"cniVersions":["1.0.0","1.1.0"],"name":"a"}"#.utf8))
        XCTAssertEqual(c.cniVersion, "1.1.0")
    }

    func testEnvironmentValidation() {
        func code(_ env: [String: String], _ check: (CNIEnvironment) throws(CNIError) -> Void = { _ in }) -> Int? {
            do {
                let e = try CNIEnvironment(env)
                try check(e)
                return nil
            } catch { return error.code.rawValue }
        }
        XCTAssertEqual(code([:]), 4)
        XCTAssertEqual(code(["CNI_COMMAND": "FROB"]), 4)
        XCTAssertEqual(code(["CNI_COMMAND": "ADD"]) { e throws(CNIError) in _ = try e.requireNetns() }, 4)
        XCTAssertEqual(code(["CNI_COMMAND": "ADD", "CNI_IFNAME": "this-name-is-too-long"]) { e throws(CNIError) in _ = try e.requireIfname() }, 4)
        XCTAssertEqual(code(["CNI_COMMAND": "ADD", "CNI_IFNAME": "a/b"]) { e throws(CNIError) in _ = try e.requireIfname() }, 4)
        XCTAssertEqual(code(["CNI_COMMAND": "ADD", "CNI_CONTAINERID": "x y"]) { e throws(CNIError) in _ = try e.requireContainerID() }, 4)
        XCTAssertNil(code(["CNI_COMMAND": "DEL", "CNI_CONTAINERID": "abc-1.2_3", "CNI_IFNAME": "eth0"]) { e throws(CNIError) in
            _ = try e.requireContainerID()
            _ = try e.requireIfname()
        })
    }

    func testErrorJSONShape() throws {
        let out = CNIPlugin.run(environment: ["CNI_COMMAND": "ADD"], stdin: Array(#"{"cniVersion":"1.0.0","name":"x"}"#.utf8))
        XCTAssertEqual(out.exitCode, 1)
        let j = try JSON.parse(out.stdout)
        guard case let .object(members) = j else { return XCTFail("not an object") }
        XCTAssertEqual(members.map(\.0), ["cniVersion", "code", "msg", "details"].filter { k in members.contains { $0.0 == k } })
        XCTAssertEqual(j["cniVersion"]?.stringValue, "1.0.0", "errors are written in the caller's version")
        XCTAssertEqual(j["code"]?.intValue, 4)
        // An unknown version still gets an answer in a version we speak.
        let bad = try JSON.parse(CNIPlugin.run(environment: ["CNI_COMMAND": "ADD"], stdin: Array(#"{"cniVersion":"7.0.0","name":"x"}"#.utf8)).stdout)
        XCTAssertEqual(bad["code"]?.intValue, 1)
        XCTAssertEqual(bad["cniVersion"]?.stringValue, CNIVersion.latest)
    }

    func testVersionCommand() throws {
        let out = CNIPlugin.run(environment: ["CNI_COMMAND": "VERSION"], stdin: Array(#"{"cniVersion":"1.0.0"}"#.utf8))
        XCTAssertEqual(out.exitCode, 0)
        let j = try JSON.parse(out.stdout)
        XCTAssertEqual(j["cniVersion"]?.stringValue, "1.0.0")
        XCTAssertEqual(j["supportedVersions"]?.arrayValue?.compactMap(\.stringValue), ["1.0.0", "1.1.0"])
        let empty = CNIPlugin.run(environment: ["CNI_COMMAND": "VERSION"], stdin: [])
        XCTAssertEqual(try JSON.parse(empty.stdout)["cniVersion"]?.stringValue, "1.1.0")
    }

    func testResultFollowsVersion() throws {
        var r = CNIResult(cniVersion: "1.0.0")
        r.interfaces = [CNIInterface(name: "mycabc", mac: "aa:bb:cc:dd:ee:ff", mtu: 1500),
                        CNIInterface(name: "eth0", mac: "11:22:33:44:55:66", sandbox: "/run/netns/x", mtu: 1500)]
        r.ips = [CNIIPConfig(address: IPv4CIDR("10.1.0.5/32")!, gateway: IPv4Address("169.254.1.1"), interface: 1)]
        r.routes = [CNIRoute(dst: IPv4CIDR("0.0.0.0/0")!, gw: IPv4Address("169.254.1.1")),
                    CNIRoute(dst: IPv4CIDR("169.254.1.1/32")!, scope: 253)]
        let v10 = r.json
        XCTAssertNil(v10["interfaces"]?.arrayValue?[0]["mtu"], "mtu is a 1.1.0 field")
        XCTAssertEqual(v10["routes"]?.arrayValue?.count, 1, "scope is a 1.1.0 field")
        XCTAssertNil(v10["ips"]?.arrayValue?[0]["version"], "1.0.0 dropped ips[].version")
        r.cniVersion = "1.1.0"
        let v11 = r.json
        XCTAssertEqual(v11["interfaces"]?.arrayValue?[1]["mtu"]?.intValue, 1500)
        XCTAssertEqual(v11["routes"]?.arrayValue?[1]["scope"]?.intValue, 253)
        XCTAssertEqual(try CNIResult.parse(v11, cniVersion: "1.1.0"), r)
    }

    func testHostVethNames() {
        let a = CNIPlugin.hostVethName(containerID: "abc", ifname: "eth0")
        XCTAssertEqual(a.count, 14)
        XCTAssertTrue(a.hasPrefix("myc"))
        XCTAssertEqual(a, CNIPlugin.hostVethName(containerID: "abc", ifname: "eth0"))
        XCTAssertNotEqual(a, CNIPlugin.hostVethName(containerID: "abc", ifname: "eth1"))
        XCTAssertNotEqual(a, CNIPlugin.hostVethName(containerID: "abd", ifname: "eth0"))
    }

    func testAddressParsing() {
        XCTAssertEqual(IPv4Address("10.244.1.7")?.value, 0x0AF4_0107)
        for bad in ["10.1.1", "10.1.1.256", "a.b.c.d", "01.1.1.1", "1.1.1.1.1", ""] { XCTAssertNil(IPv4Address(bad), bad) }
        let c = IPv4CIDR("10.244.1.0/24")!
        XCTAssertTrue(c.contains(IPv4Address("10.244.1.255")!))
        XCTAssertFalse(c.contains(IPv4Address("10.244.2.0")!))
        XCTAssertEqual(c.broadcast.description, "10.244.1.255")
        XCTAssertEqual(parseMAC(formatMAC([0xde, 0xad, 0, 1, 2, 0xff])), [0xde, 0xad, 0, 1, 2, 0xff])
    }
}
