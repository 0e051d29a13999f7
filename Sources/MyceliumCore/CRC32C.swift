// CRC-32C (Castagnoli), the checksum on every WAL record, snapshot and checksummed file.
// Castagnoli rather than the zlib polynomial because it detects more error patterns in short
// records and is what etcd's WAL and ext4/btrfs metadata use.

public enum CRC32C {
    private static let table: [UInt32] = {
        var t = [UInt32](repeating: 0, count: 256 * 8)
        for i in 0..<256 {
            var c = UInt32(i)
            for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            t[i] = c
        }
        // Slicing-by-8 tables: t[k*256 + i] is the CRC of byte i followed by k zero bytes.
        for i in 0..<256 {
            var c = t[i]
            for k in 1..<8 {
                c = (c >> 8) ^ t[Int(c & 0xFF)]
                t[k * 256 + i] = c
            }
        }
        return t
    }()

    /// Continues a running checksum. Start with `crc = 0`.
    public static func update(_ crc: UInt32, _ buf: UnsafeRawBufferPointer) -> UInt32 {
        var c = ~crc
        var i = 0
        let n = buf.count
        table.withUnsafeBufferPointer { t in
            while n - i >= 8 {
                let lo = UInt32(buf[i]) | UInt32(buf[i + 1]) << 8 | UInt32(buf[i + 2]) << 16 | UInt32(buf[i + 3]) << 24
                let x = c ^ lo
                c = t[7 * 256 + Int(x & 0xFF)] ^ t[6 * 256 + Int((x >> 8) & 0xFF)]
                    ^ t[5 * 256 + Int((x >> 16) & 0xFF)] ^ t[4 * 256 + Int(x >> 24)]
                    ^ t[3 * 256 + Int(buf[i + 4])] ^ t[2 * 256 + Int(buf[i + 5])]
                    ^ t[1 * 256 + Int(buf[i + 6])] ^ t[Int(buf[i + 7])]
                i += 8
            }
            while i < n {
                c = (c >> 8) ^ t[Int((c ^ UInt32(buf[i])) & 0xFF)]
                i += 1
            }
        }
        return ~c
    }

    public static func checksum(_ data: [UInt8]) -> UInt32 {
        data.withUnsafeBytes { update(0, $0) }
    }

    public static func checksum(_ data: ArraySlice<UInt8>) -> UInt32 {
        data.withUnsafeBytes { update(0, $0) }
    }
}
