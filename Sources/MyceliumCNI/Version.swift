// CNI spec versions and their negotiation.
//
// The plugin speaks spec 1.0.0 and 1.1.0; the result format is the same in both for what we return (1.1 only
// adds optional fields that we do not emit). Negotiation (spec 1.1 "Version considerations"): a configuration
// list may carry `cniVersions`, the runtime picks the highest version it and the plugins support, and passes
// it as `cniVersion` to each plugin. The plugin must answer in exactly the `cniVersion` it was given.

/// A semantic version (major.minor.patch; no pre-release tags, which CNI does not use).
public struct SemVer: Comparable, Hashable, Sendable, CustomStringConvertible {
    public let major: Int, minor: Int, patch: Int

    public init(_ major: Int, _ minor: Int, _ patch: Int) {
        self.major = major
        self.minor = minor
        self.patch = patch
    }

    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts.allSatisfy({ !$0.isEmpty && $0.count <= 9 && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
              let a = Int(parts[0]), let b = Int(parts[1]), let c = Int(parts[2])
        else { return nil }
        self.init(a, b, c)
    }

    public var description: String { "\(major).\(minor).\(patch)" }

    public static func < (a: SemVer, b: SemVer) -> Bool { (a.major, a.minor, a.patch) < (b.major, b.minor, b.patch) }
}

public enum CNIVersion {
    /// The versions this plugin implements, oldest first (reported by VERSION).
    public static let supported: [String] = ["1.0.0", "1.1.0"]
    /// The version used for output when the input named none we can use (VERSION, errors before parsing).
    public static let latest = "1.1.0"

    public static func isSupported(_ v: String) -> Bool { supported.contains(v) }

    /// Picks the version for this invocation from a plugin configuration.
    /// - `cniVersion` present: it must be supported (the runtime parses our output in that version).
    /// - only `cniVersions` present (a list-level field passed through): the highest supported member.
    /// - neither: an invalid configuration.
    public static func negotiate(cniVersion: String?, cniVersions: [String]?) throws(CNIError) -> String {
        if let v = cniVersion {
            guard SemVer(v) != nil else {
                throw CNIError(.incompatibleVersion, "cniVersion \"\(v)\" is not a version",
                               details: "expected major.minor.patch; this plugin supports \(supported.joined(separator: ", "))")
            }
            guard isSupported(v) else {
                throw CNIError(.incompatibleVersion, "incompatible CNI version \(v)",
                               details: "this plugin supports \(supported.joined(separator: ", "))")
            }
            return v
        }
        if let list = cniVersions {
            if let best = highestCommon(list, supported) { return best }
            throw CNIError(.incompatibleVersion, "none of the configuration's cniVersions is supported",
                           details: "configuration offers \(list.joined(separator: ", ")); this plugin supports \(supported.joined(separator: ", "))")
        }
        throw CNIError(.invalidConfig, "the network configuration has no cniVersion")
    }

    /// The runtime's side of spec 1.1 negotiation: the highest version in `offered` that `pluginSupports`.
    /// Unparseable versions are ignored.
    public static func highestCommon(_ offered: [String], _ pluginSupports: [String]) -> String? {
        let theirs = Set(pluginSupports.compactMap(SemVer.init))
        return offered.compactMap(SemVer.init).filter(theirs.contains).max()?.description
    }
}
