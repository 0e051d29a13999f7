// `mycelium vm create --xml FILE`: a libvirt domain definition of the operator's own, adapted.
//
// Mycelium writes each endophyte's domain itself (shared memfd RAM, the dirty-page shim, the standby's
// `-incoming defer`, its NIC behind output commit), so from the operator's XML it takes what the
// network records of a VM — name, memory, vCPUs, kernel, initrd, command line — and refuses what it
// cannot carry yet (disks, passed-through devices, shared filesystems, interfaces of its own) with
// what to do instead. Everything else (graphics, consoles, CPU model, …) is listed as ignored.

import Foundation

public struct ImportedDomain: Equatable, Sendable {
    public var name: String
    public var memoryMiB: UInt32
    public var vcpus: Int
    public var kernel: String
    public var initrd: String
    public var cmdline: String
    /// Elements of the XML the adapted domain does without.
    public var ignored: [String]
}

public struct DomainImportError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ d: String) { description = d }
}

public enum DomainImport {
    /// A domain definition is a few KiB; anything near this is not one.
    public static let maxBytes = 1 << 20

    public static func read(path: String) throws -> ImportedDomain {
        guard let attrs = try? FileManager.default.attributesOfItem(atPath: path), let size = attrs[.size] as? Int else {
            throw DomainImportError("cannot read '\(path)': no such file, or not readable")
        }
        guard size <= maxBytes else { throw DomainImportError("'\(path)' is \(size) bytes; a domain definition is at most \(maxBytes)") }
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw DomainImportError("'\(path)' is not UTF-8 text")
        }
        return try parse(text)
    }

    public static func parse(_ xml: String) throws -> ImportedDomain {
        if xml.allSatisfy({ $0.isWhitespace }) { throw DomainImportError("the file is empty") }
        if xml.contains("<!ENTITY") || xml.contains("<!DOCTYPE") {
            throw DomainImportError("the file declares a DTD or XML entities (<!DOCTYPE …>, <!ENTITY …>); a domain definition needs none")
        }
        // Our own strict reader of the XML subset a domain definition uses (elements, attributes,
        // text, comments, CDATA, the five predefined entities and character references; no DTD):
        // swift-corelibs-foundation's XML parsers crash and leak on malformed input (found by the
        // fuzz target), and a truncated file must be an error, never half read.
        var reader = ElementReader()
        do { try reader.read(Array(xml.utf8)) } catch let e as DomainImportError { throw e }
        guard let rootName = reader.root else { throw DomainImportError("not well-formed XML: no element") }
        guard rootName == "domain" else {
            throw DomainImportError("not a libvirt domain definition (the root element is <\(rootName)>, not <domain>)")
        }
        func text(_ path: String) -> String? { reader.first[path]?.text.trimmingCharacters(in: .whitespacesAndNewlines) }
        func attribute(_ path: String, _ name: String) -> String? { reader.first[path]?.attributes[name] }
        func count(_ path: String) -> Int { reader.counts[path] ?? 0 }

        let name = text("domain/name") ?? ""
        guard let memText = text("domain/memory"), let amount = UInt64(memText) else {
            throw DomainImportError("<memory> is missing or not a whole number")
        }
        let unit = attribute("domain/memory", "unit") ?? "KiB"
        guard let bytesPerUnit = unitBytes[unit] else {
            throw DomainImportError("<memory unit='\(unit)'> is not a unit libvirt knows (b, KiB, MiB, GiB, KB, MB, GB, …)")
        }
        let (bytes, overflow) = amount.multipliedReportingOverflow(by: bytesPerUnit)
        guard !overflow, bytes > 0, bytes / (1 << 20) < UInt64(UInt32.max) else { throw DomainImportError("<memory> \(amount) \(unit) is out of range") }
        let mib = UInt32((bytes + (1 << 20) - 1) >> 20)
        if let current = text("domain/currentMemory"), let c = UInt64(current) {
            let cu = attribute("domain/currentMemory", "unit") ?? "KiB"
            if let b = unitBytes[cu], c.multipliedReportingOverflow(by: b) != (bytes, false) {
                throw DomainImportError("<currentMemory> differs from <memory>: ballooning is not carried; give both the same size")
            }
        }
        var vcpus = 1
        if let v = text("domain/vcpu") {
            guard let n = Int(v), n >= 1 else { throw DomainImportError("<vcpu> '\(v)' is not a positive whole number") }
            vcpus = n
            if let cur = attribute("domain/vcpu", "current"), Int(cur) != n {
                throw DomainImportError("<vcpu current='\(cur)'> differs from \(n): CPU hot-plug is not carried; give the number to run")
            }
        }
        guard let kernel = text("domain/os/kernel"), !kernel.isEmpty else {
            throw DomainImportError("no <os><kernel>: endophyte VMs boot a kernel and initrd for now (they carry no disks yet); add <kernel> and <initrd> under <os>")
        }
        let refused: [(String, String)] = [
            ("disk", "disks are not replicated yet (volumes are issue 18): remove the <disk> elements, or keep this VM out of Mycelium"),
            ("hostdev", "a passed-through host device cannot follow the VM to another host"),
            ("filesystem", "a shared host filesystem cannot follow the VM to another host"),
            ("interface", "Mycelium gives every endophyte its own NIC (behind output commit); remove the <interface> elements"),
        ]
        for (element, why) in refused where count("domain/devices/" + element) > 0 {
            throw DomainImportError("the domain has \(count("domain/devices/" + element)) <\(element)>: \(why)")
        }
        let handled: Set<String> = ["name", "memory", "currentMemory", "vcpu", "os", "devices", "uuid", "title", "description"]
        var ignored = Set<String>()
        for path in reader.counts.keys {
            let parts = path.split(separator: "/")
            if parts.count == 2, !handled.contains(String(parts[1])) { ignored.insert(String(parts[1])) }
            if parts.count == 3, parts[1] == "devices" { ignored.insert("devices/" + parts[2]) }
        }
        return ImportedDomain(name: name, memoryMiB: mib, vcpus: vcpus, kernel: kernel, initrd: text("domain/os/initrd") ?? "",
                              cmdline: text("domain/os/cmdline") ?? "", ignored: ignored.sorted())
    }

    /// libvirt's memory units (formatdomain.html "Memory Allocation").
    static let unitBytes: [String: UInt64] = [
        "b": 1, "bytes": 1,
        "KB": 1000, "k": 1024, "KiB": 1024,
        "MB": 1_000_000, "M": 1 << 20, "MiB": 1 << 20,
        "GB": 1_000_000_000, "G": 1 << 30, "GiB": 1 << 30,
        "TB": 1_000_000_000_000, "T": 1 << 40, "TiB": 1 << 40,
    ]
}

/// Collects, per element path ("domain/os/kernel"), how often it occurs and the text and
/// attributes of its first occurrence, reading a strict subset of XML 1.0: elements, attributes
/// (quoted either way), text, comments, processing instructions (skipped), CDATA, the five
/// predefined entities and character references. No DTD. Every index is checked; at most
/// `maxDepth` open elements.
struct ElementReader {
    struct Element { var text = ""; var attributes: [String: String] = [:] }
    var root: String?
    var first: [String: Element] = [:]
    var counts: [String: Int] = [:]
    static let maxDepth = 64

    private var b: [UInt8] = []
    private var i = 0
    private var line = 1

    private func fail(_ why: String) -> DomainImportError { DomainImportError("not well-formed XML (line \(line)): \(why)") }

    mutating func read(_ bytes: [UInt8]) throws {
        b = bytes; i = 0; line = 1
        var stack: [String] = [], open: [String?] = []
        var ended = false
        while i < b.count {
            if b[i] == UInt8(ascii: "<") {
                if starts("<!--") { try skip(past: "-->", what: "comment"); continue }
                if starts("<?") { try skip(past: "?>", what: "processing instruction"); continue }
                if starts("<![CDATA[") {
                    i += 9
                    let start = i
                    try skip(past: "]]>", what: "CDATA section")
                    guard !stack.isEmpty else { throw fail("text outside the root element") }
                    let t = String(decoding: b[start..<(i - 3)], as: UTF8.self)
                    if let p = open.last ?? nil { first[p]?.text += t }
                    continue
                }
                if starts("<!") { throw fail("declarations (<!…>) are not part of a domain definition") }
                if starts("</") {
                    i += 2
                    let name = try readName()
                    skipSpace()
                    try expect(">")
                    guard let top = stack.popLast(), top == name else { throw fail("</\(name)> does not close the open element") }
                    open.removeLast()
                    if stack.isEmpty { ended = true }
                    continue
                }
                i += 1
                if ended { throw fail("a second root element") }
                let name = try readName()
                var attributes: [String: String] = [:]
                while true {
                    let hadSpace = skipSpace()
                    guard i < b.count else { throw fail("the file ends inside <\(name)>") }
                    if b[i] == UInt8(ascii: ">") || starts("/>") { break }
                    guard hadSpace else { throw fail("attributes of <\(name)> need spaces between them") }
                    let key = try readName()
                    skipSpace(); try expect("="); skipSpace()
                    guard i < b.count, b[i] == UInt8(ascii: "'") || b[i] == UInt8(ascii: "\"") else { throw fail("attribute \(key) is not quoted") }
                    let quote = b[i]; i += 1
                    let start = i
                    while i < b.count && b[i] != quote {
                        if b[i] == UInt8(ascii: "<") { throw fail("'<' inside attribute \(key)") }
                        i += 1
                    }
                    guard i < b.count else { throw fail("the file ends inside attribute \(key)") }
                    if attributes[key] != nil { throw fail("attribute \(key) given twice") }
                    let value = try decodeText(b[start..<i])
                    attributes[key] = value
                    i += 1
                }
                if root == nil { root = name }
                stack.append(name)
                guard stack.count <= Self.maxDepth else { throw fail("elements nested deeper than \(Self.maxDepth)") }
                let path = stack.joined(separator: "/")
                counts[path, default: 0] += 1
                if first[path] == nil { first[path] = Element(attributes: attributes); open.append(path) } else { open.append(nil) }
                if starts("/>") {
                    i += 2
                    stack.removeLast(); open.removeLast()
                    if stack.isEmpty { ended = true }
                } else {
                    i += 1
                }
            } else {
                let start = i
                while i < b.count && b[i] != UInt8(ascii: "<") {
                    if b[i] == UInt8(ascii: "\n") { line += 1 }
                    i += 1
                }
                let chunk = b[start..<i]
                if stack.isEmpty {
                    guard chunk.allSatisfy({ [0x20, 0x09, 0x0a, 0x0d].contains($0) }) else { throw fail("text outside the root element") }
                } else if let p = open.last ?? nil {
                    let t = try decodeText(chunk)
                    first[p]?.text += t
                } else {
                    _ = try decodeText(chunk)
                }
            }
        }
        guard stack.isEmpty else { throw fail("the file ends inside <\(stack.last!)>") }
        guard root != nil else { throw fail("no element") }
    }

    private func starts(_ s: String) -> Bool {
        let u = Array(s.utf8)
        return i + u.count <= b.count && Array(b[i..<(i + u.count)]) == u
    }

    private mutating func skip(past end: String, what: String) throws {
        let u = Array(end.utf8)
        while i + u.count <= b.count {
            if Array(b[i..<(i + u.count)]) == u { i += u.count; return }
            if b[i] == UInt8(ascii: "\n") { line += 1 }
            i += 1
        }
        throw fail("the file ends inside a \(what)")
    }

    @discardableResult
    private mutating func skipSpace() -> Bool {
        let start = i
        while i < b.count, [0x20, 0x09, 0x0a, 0x0d].contains(b[i]) {
            if b[i] == 0x0a { line += 1 }
            i += 1
        }
        return i > start
    }

    private mutating func expect(_ c: Character) throws {
        guard i < b.count, b[i] == c.asciiValue! else { throw fail("expected '\(c)'") }
        i += 1
    }

    private mutating func readName() throws -> String {
        let start = i
        while i < b.count {
            let c = b[i]
            let ok = (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c == 0x2d || c == 0x5f || c == 0x2e || c == 0x3a
            if !ok { break }
            i += 1
        }
        guard i > start, i - start <= 128 else { throw fail("expected a name of 1 to 128 letters, digits, '-', '_', '.', ':'") }
        guard let name = String(bytes: b[start..<i], encoding: .utf8) else { throw fail("a name that is not UTF-8") }
        return name
    }

    /// Text or an attribute value with its references resolved.
    private func decodeText(_ raw: ArraySlice<UInt8>) throws -> String {
        guard raw.contains(UInt8(ascii: "&")) else {
            guard let s = String(bytes: raw, encoding: .utf8) else { throw fail("text that is not UTF-8") }
            return s
        }
        var out: [UInt8] = []
        var j = raw.startIndex
        while j < raw.endIndex {
            guard raw[j] == UInt8(ascii: "&") else { out.append(raw[j]); j += 1; continue }
            guard let semi = raw[j...].prefix(12).firstIndex(of: UInt8(ascii: ";")) else { throw fail("'&' without a reference") }
            let ref = String(decoding: raw[(j + 1)..<semi], as: UTF8.self)
            let named: [String: UInt8] = ["lt": 0x3c, "gt": 0x3e, "amp": 0x26, "quot": 0x22, "apos": 0x27]
            if let c = named[ref] {
                out.append(c)
            } else if ref.hasPrefix("#"), let v = ref.hasPrefix("#x") ? UInt32(ref.dropFirst(2), radix: 16) : UInt32(ref.dropFirst()),
                      v != 0, let scalar = Unicode.Scalar(v) {
                out += Array(String(Character(scalar)).utf8)
            } else {
                throw fail("unknown reference &\(ref);")
            }
            j = semi + 1
        }
        guard let s = String(bytes: out, encoding: .utf8) else { throw fail("text that is not UTF-8") }
        return s
    }
}
