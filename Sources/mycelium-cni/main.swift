// mycelium-cni: the CNI plugin binary. All logic is in MyceliumCNI.CNIPlugin; this reads the environment and
// stdin, prints the answer and exits with its status. No Foundation, so start-up stays a few milliseconds.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import MyceliumCNI

func readStdin(limit: Int = 4 << 20) -> [UInt8] {
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16384)
    while out.count <= limit {
        let n = chunk.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        out.append(contentsOf: chunk[0..<n])
    }
    return out
}

func environment() -> [String: String] {
    var env: [String: String] = [:]
    var p = environ
    while let entry = p.pointee {
        let s = String(cString: entry)
        if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
        p += 1
    }
    return env
}

let (text, status) = CNIPlugin.run(environment: environment(), stdin: readStdin())
if !text.isEmpty {
    let bytes = Array((text + "\n").utf8)
    var off = 0
    while off < bytes.count {
        let n = bytes[off...].withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        off += n
    }
}
exit(status)
