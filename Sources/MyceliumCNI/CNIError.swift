// The one error type of the plugin. Every failure leaves the process as the CNI spec's error object on stdout
// (`{"cniVersion", "code", "msg", "details"}`) and a non-zero exit status (CNI spec §Error).

/// A failure reported to the runtime, with a spec error code and text an operator can act on.
public struct CNIError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Error codes. 0-99 are the spec's well-known codes; 100+ are Mycelium's own.
    public enum Code: Int, Sendable {
        case incompatibleVersion = 1
        case unsupportedField = 2
        case unknownContainer = 3
        case invalidEnvironment = 4
        case ioFailure = 5
        case decodeFailure = 6
        case invalidConfig = 7
        case tryAgainLater = 11
        /// STATUS: the plugin cannot service ADD (spec 1.1).
        case pluginNotAvailable = 50
        /// STATUS: not available, and existing containers may have limited connectivity (spec 1.1).
        case pluginNotAvailableLimitedConnectivity = 51

        /// The pod address range has no free address.
        case addressRangeExhausted = 100
        /// A netlink operation (veth, address, route, neighbour) failed.
        case netlinkFailure = 101
        /// Loading the eBPF datapath or registering the endpoint failed.
        case datapathFailure = 102
        /// CHECK found the container's network differs from what ADD set up.
        case checkFailed = 104
        /// No pod CIDR is configured and the node has not been given one yet.
        case noPodCIDR = 105
    }

    public let code: Code
    public let msg: String
    public let details: String

    public init(_ code: Code, _ msg: String, details: String = "") {
        self.code = code
        self.msg = msg
        self.details = details
    }

    public var description: String { details.isEmpty ? "CNI error \(code.rawValue): \(msg)" : "CNI error \(code.rawValue): \(msg): \(details)" }

    /// The spec's error object. `cniVersion` is the version the output is written in.
    public func json(cniVersion: String) -> JSON {
        var members: [(String, JSON)] = [
            ("cniVersion", .string(cniVersion)),
            ("code", .number(Double(code.rawValue))),
            ("msg", .string(msg)),
        ]
        if !details.isEmpty { members.append(("details", .string(details))) }
        return .object(members)
    }
}
