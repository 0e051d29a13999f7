// The network controller's driver: writes this node's pod CIDR where mycelium-cni's IPAM reads it
// (one line such as "10.244.3.0/24\n"), atomically, so the plugin never reads half a file.

import MyceliumControl
import MyceliumCore

public struct PodCIDRFile: ControllerDriver {
    public let path: String
    public init(path: String) { self.path = path }

    public func perform(_ action: PodCIDRAction) async throws {
        switch action {
        case .write(let cidr?):
            let dir = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
            if !dir.isEmpty { try AtomicFile.makeDirectory(dir, mode: 0o755) }
            try AtomicFile.write(Array("\(cidr)\n".utf8), to: path, mode: 0o644)
        case .write(nil):
            if AtomicFile.exists(path) { try AtomicFile.remove(path) }
        }
    }
}
