// The monitor command encoder (no cluster needed): arguments become one JSON object, strings escaped,
// so a name can never inject another argument.

import Foundation
@testable import MyceliumRBD
import XCTest

final class MonitorCommandTests: XCTestCase {
    func testCommandsAreJSONWithPrefixFirstAndArgumentsInKeyOrder() throws {
        let json = CephConnection.commandJSON("osd crush link", ["name": .string("node1"), "args": .strings(["root=gold"]),
                                                                 "format": .string("json"), "n": .int(-3), "yes": .bool(true)])
        XCTAssertEqual(json, #"{"prefix":"osd crush link","args":["root=gold"],"format":"json","n":-3,"name":"node1","yes":true}"#)
    }

    func testStringsAreEscaped() throws {
        let evil = "a\",\"prefix\":\"osd pool rm\\\n\t\u{01}é"
        let json = CephConnection.commandJSON("osd map", ["object": .string(evil)])
        let parsed = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: String])
        XCTAssertEqual(parsed, ["prefix": "osd map", "object": evil], json)
    }
}
