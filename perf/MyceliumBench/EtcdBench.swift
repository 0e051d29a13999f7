import Foundation
import MyceliumAgent

/// `mycelium-bench etcd [--seconds S] [--clients 1,16,64] [--failovers N] [--writes N]`
///
/// Our Raft group side by side with etcd 3.4 (Debian's etcd-server), on this machine, in one run:
/// - **writes:** 3 members on loopback each, fsync on, 256-byte values, the same load client (one
///   keep-alive HTTP/1.1 connection per client, POST /v3/kv/put to the leader, etcd's gateway form
///   that our agents serve too), 1/16/64 concurrent clients, runs interleaved and never overlapping;
/// - **failover:** SIGKILL the leader, N times each, with the same timeouts (heartbeat 100 ms,
///   election 1000 ms): time to the first successful write on a new leader (both), and for etcd also
///   its "became leader" log line;
/// - **memory:** resident memory of one member idle and after `--writes` writes (ours: a 10-node
///   network, as the issue asks; etcd: its 3-member cluster).
func runEtcdBench(_ args: [String]) async throws {
    func option(_ name: String) -> String? {
        guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
        return args[i + 1]
    }
    let seconds = option("--seconds").flatMap(Double.init) ?? 5
    let clientCounts = option("--clients").map { $0.split(separator: ",").compactMap { Int($0) } } ?? [1, 16, 64]
    let failovers = option("--failovers").flatMap(Int.init) ?? 10
    let writes = option("--writes").flatMap(Int.init) ?? 100_000
    let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
    guard FileManager.default.isExecutableFile(atPath: bin + "/myceliumd") else {
        print("etcd: \(bin)/myceliumd not found; run 'swift build -c release' first"); return
    }
    guard FileManager.default.isExecutableFile(atPath: "/usr/bin/etcd") else {
        print("etcd: /usr/bin/etcd not found; install Debian's etcd-server (scripts/setup does)"); return
    }
    print("etcd side by side on \(machineLine())")
    print("both: 3 members on loopback, fsync on, heartbeat 100 ms, election 1000 ms, 256-byte values, \(Int(seconds)) s per run")

    // Writes.
    let etcd = try EtcdCluster()
    defer { etcd.stop() }
    try await etcd.startAll()
    let clientBase = try BenchHygiene.ports(4)
    let ours = try LoopbackNetwork(n: 3, bin: bin, perNode: { i in "client_listen = \"127.0.0.1:\(clientBase + i)\"\n" })
    defer { ours.stop() }
    try ours.startAll()
    try await ours.waitFormed(timeout: 60)
    print(String(repeating: "-", count: 100))
    print("clients  system     writes/s   p50 ms   p99 ms   | ratio writes/s (ours/etcd)  p99 (ours/etcd)")
    for n in clientCounts {
        var results: [String: [LoadResult]] = ["etcd": [], "mycelium": []]
        for _ in 0..<2 {  // interleaved: etcd, ours, etcd, ours
            results["etcd"]!.append(try runLoad(url: try await etcd.leaderURL(), clients: n, seconds: seconds))
            results["mycelium"]!.append(try runLoad(url: try await ours.clientURLOfLeader(), clients: n, seconds: seconds))
        }
        let e = LoadResult.median(results["etcd"]!), m = LoadResult.median(results["mycelium"]!)
        for (name, r) in [("etcd", e), ("mycelium", m)] {
            print("\(String(n).leftPad(7))  \(name.padding(toLength: 9, withPad: " ", startingAt: 0)) \(fmt(r.rate).leftPad(9))  \(fmt(r.p50 * 1000, 2).leftPad(7))  \(fmt(r.p99 * 1000, 2).leftPad(7))"
                  + (name == "mycelium" ? "   | \(fmt(m.rate / e.rate, 2))×  (goal ≥ 1.5×)        \(fmt(m.p99 / e.p99, 2))×  (goal ≤ 1×)" : ""))
        }
        if e.errors + m.errors > 0 { print("         errors: etcd \(e.errors), mycelium \(m.errors)") }
    }

    // Failover.
    print(String(repeating: "-", count: 100))
    print("leader failover, SIGKILL of the leader, \(failovers) times each (interleaved)")
    var etcdWrite: [Double] = [], etcdLog: [Double] = [], oursWrite: [Double] = []
    for _ in 0..<failovers {
        let (w, l) = try await etcd.failover()
        etcdWrite.append(w); if let l { etcdLog.append(l) }
        oursWrite.append(try await ours.failover())
    }
    print("  etcd:     first write on a new leader median \(fmt(median(etcdWrite) * 1000, 0)) ms (max \(fmt(etcdWrite.max()! * 1000, 0)));"
          + " 'became leader' logged at median \(fmt(median(etcdLog) * 1000, 0)) ms")
    print("  mycelium: first write on a new leader median \(fmt(median(oursWrite) * 1000, 0)) ms (max \(fmt(oursWrite.max()! * 1000, 0)))")
    print("  ratio: \(fmt(median(oursWrite) / median(etcdWrite), 2))× etcd's; goal < 500 ms → \(fmt(median(oursWrite) / 0.5, 2))× the goal")
    ours.stop()

    // Memory.
    print(String(repeating: "-", count: 100))
    let ten = try LoopbackNetwork(n: 10, bin: bin, perNode: { i in "client_listen = \"127.0.0.1:\(30_600 + Int.random(in: 0..<50) * 10 + i)\"\nhandoff_members = 3\n" })
    defer { ten.stop() }
    try ten.startAll()
    try await ten.waitFormed(timeout: 120)
    try await Task.sleep(nanoseconds: 3_000_000_000)
    let idleOurs = ten.procs.map { rssMiB(pid: $0.processIdentifier) }
    let idleEtcd = etcd.rss()
    let url = try await ten.clientURLOfLeader()
    _ = try runLoad(url: url, clients: 64, seconds: 600, maxWrites: writes)
    _ = try runLoad(url: try await etcd.leaderURL(), clients: 64, seconds: 600, maxWrites: writes)
    let busyOurs = ten.procs.map { rssMiB(pid: $0.processIdentifier) }
    let busyEtcd = etcd.rss()
    print("resident memory (MiB): one myceliumd in a 10-node network, median [max] over the 10; etcd, median of its 3 members")
    print("  idle:               mycelium \(fmt(median(idleOurs), 1)) [\(fmt(idleOurs.max()!, 1))]   etcd \(fmt(median(idleEtcd), 1))   (goal < 50 MB idle; K3s agent ~275 MB)")
    print("  after \(writes) writes: mycelium \(fmt(median(busyOurs), 1)) [\(fmt(busyOurs.max()!, 1))]   etcd \(fmt(median(busyEtcd), 1))")
}

func rssMiB(pid: Int32) -> Double {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
          let kb = Double(line.split(separator: " ").dropFirst().first ?? "") else { return .nan }
    return kb / 1024
}

extension LoopbackNetwork {
    func clientPort(_ i: Int) -> Int? {
        guard let text = try? String(contentsOfFile: dir + "/n\(i).conf", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("client_listen") }),
              let port = line.split(separator: ":").last.flatMap({ Int($0.filter(\.isNumber)) }) else { return nil }
        return port
    }

    func leaderIndex() async -> Int? {
        for i in 1...n where procs[i - 1].isRunning {
            if let v = await status(i), v.role == "leader" { return i }
        }
        return nil
    }

    func clientURLOfLeader(timeout: Double = 30) async throws -> (host: String, port: Int) {
        let start = now()
        while now() - start < timeout {
            if let i = await leaderIndex(), let p = clientPort(i) { return ("127.0.0.1", p) }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        throw BenchError("no leader within \(Int(timeout)) s")
    }

    /// SIGKILLs the leader, measures the time until a write succeeds on a new leader, restarts the
    /// old one and waits until all are back.
    func failover() async throws -> Double {
        guard let old = await leaderIndex() else { throw BenchError("no leader") }
        let p = procs[old - 1]
        let t0 = now()
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        var elapsed: Double?
        while elapsed == nil && now() - t0 < 30 {
            for i in 1...n where i != old {
                if let port = clientPort(i), (try? putOnce(host: "127.0.0.1", port: port, key: "failover", timeout: 0.2)) == 200 {
                    elapsed = now() - t0
                    break
                }
            }
            if elapsed == nil { usleep(5_000) }
        }
        let q = Process()
        q.executableURL = URL(fileURLWithPath: bin + "/myceliumd")
        q.arguments = ["--config", dir + "/n\(old).conf"]
        q.environment = BenchHygiene.agentEnvironment
        q.standardOutput = FileHandle.nullDevice
        q.standardError = FileHandle.nullDevice
        BenchHygiene.forget(p)
        try BenchHygiene.run(q)
        procs[old - 1] = q
        try await waitFormed(timeout: 60)
        guard let e = elapsed else { throw BenchError("no write succeeded within 30 s of killing the leader") }
        return e
    }
}

/// Three etcd 3.4 members on loopback, fsync on, heartbeat 100 ms, election 1000 ms.
final class EtcdCluster {
    let dir = NSTemporaryDirectory() + "myc-etcd-\(UUID().uuidString.prefix(8))"
    /// Client ports base+1…3, peer ports base+11…13: free, below the ephemeral range (see BenchHygiene).
    let base: Int
    var procs: [Int: Process] = [:]

    init() throws {
        base = try BenchHygiene.ports(14)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        BenchHygiene.ownDirectory(dir)
    }

    func clientPort(_ i: Int) -> Int { base + i }
    func peerPort(_ i: Int) -> Int { base + 10 + i }

    func start(_ i: Int, state: String) throws {
        let cluster = (1...3).map { "e\($0)=http://127.0.0.1:\(peerPort($0))" }.joined(separator: ",")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/etcd")
        p.arguments = ["--name", "e\(i)", "--data-dir", dir + "/e\(i)",
                       "--listen-client-urls", "http://127.0.0.1:\(clientPort(i))", "--advertise-client-urls", "http://127.0.0.1:\(clientPort(i))",
                       "--listen-peer-urls", "http://127.0.0.1:\(peerPort(i))", "--initial-advertise-peer-urls", "http://127.0.0.1:\(peerPort(i))",
                       "--initial-cluster", cluster, "--initial-cluster-state", state, "--initial-cluster-token", "bench",
                       "--heartbeat-interval", "100", "--election-timeout", "1000",
                       "--logger", "zap", "--log-outputs", dir + "/e\(i).log"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        if let old = procs[i] { BenchHygiene.forget(old) }
        try BenchHygiene.run(p)
        procs[i] = p
    }

    func startAll() async throws {
        for i in 1...3 { try start(i, state: "new") }
        _ = try await leaderURL(timeout: 30)
    }

    /// The member that is leader now, found by asking each member's status through the gateway.
    func leaderIndex() -> Int? {
        var ids: [Int: String] = [:], leader: String?
        for i in 1...3 where procs[i]?.isRunning == true {
            guard let (code, body) = try? httpPost(host: "127.0.0.1", port: clientPort(i), path: "/v3/maintenance/status", body: "{}", timeout: 0.5),
                  code == 200, let o = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
                  let header = o["header"] as? [String: Any] else { continue }
            ids[i] = "\(header["member_id"] ?? "")"
            if let l = o["leader"] { leader = "\(l)" }
        }
        return ids.first(where: { $0.value == leader })?.key
    }

    func leaderURL(timeout: Double = 30) async throws -> (host: String, port: Int) {
        let start = now()
        while now() - start < timeout {
            if let i = leaderIndex() { return ("127.0.0.1", clientPort(i)) }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        throw BenchError("etcd has no leader within \(Int(timeout)) s (logs in \(dir))")
    }

    /// Kills the leader; returns (time to the first successful write on a survivor, time to the
    /// "became leader" log line), then restarts the member and waits for a leader again.
    func failover() async throws -> (Double, Double?) {
        guard let old = leaderIndex(), let p = procs[old] else { throw BenchError("etcd has no leader") }
        let killedAt = Date()
        let t0 = now()
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        var elapsed: Double?
        while elapsed == nil && now() - t0 < 30 {
            for i in 1...3 where i != old {
                if (try? putOnce(host: "127.0.0.1", port: clientPort(i), key: "failover", timeout: 0.2)) == 200 { elapsed = now() - t0; break }
            }
            if elapsed == nil { usleep(5_000) }
        }
        // The survivors' "became leader" line after the kill.
        var logged: Double?
        let iso = ISO8601DateFormatter()
        iso.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        for i in 1...3 where i != old {
            guard let text = try? String(contentsOfFile: dir + "/e\(i).log", encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") where line.contains("became leader") {
                guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                      let ts = o["ts"] as? String, let d = iso.date(from: ts), d > killedAt else { continue }
                let dt = d.timeIntervalSince(killedAt)
                logged = min(logged ?? dt, dt)
            }
        }
        try start(old, state: "existing")
        _ = try await leaderURL()
        try await Task.sleep(nanoseconds: 500_000_000)
        guard let e = elapsed else { throw BenchError("etcd: no write succeeded within 30 s of killing the leader") }
        return (e, logged)
    }

    func rss() -> [Double] { procs.values.map { rssMiB(pid: $0.processIdentifier) } }

    func stop() {
        for p in procs.values where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        for p in procs.values { p.waitUntilExit(); BenchHygiene.forget(p) }
        procs = [:]
        try? FileManager.default.removeItem(atPath: dir)
        BenchHygiene.disownDirectory(dir)
    }
}

// MARK: the load client (the same for both systems)

struct LoadResult {
    var rate: Double
    var p50: Double
    var p99: Double
    var errors: Int

    static func median(_ rs: [LoadResult]) -> LoadResult {
        let mid = rs.sorted { $0.rate < $1.rate }[rs.count / 2]
        return LoadResult(rate: MyceliumBench.median(rs.map(\.rate)), p50: MyceliumBench.median(rs.map(\.p50)),
                          p99: MyceliumBench.median(rs.map(\.p99)), errors: mid.errors)
    }
}

/// `clients` threads, each with one keep-alive connection, PUT 256-byte values as fast as answers
/// come back, for `seconds` or until `maxWrites` in total.
func runLoad(url: (host: String, port: Int), clients: Int, seconds: Double, maxWrites: Int = .max) throws -> LoadResult {
    let value = Data((0..<256).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }).base64EncodedString()
    final class Shared: @unchecked Sendable {
        let lock = NSLock()
        var latencies: [Double] = []
        var errors = 0
        var total = 0
    }
    let sh = Shared()
    let start = now()
    let deadline = start + seconds
    var threads: [Thread] = []
    let done = DispatchGroup()
    for c in 0..<clients {
        done.enter()
        let t = Thread {
            defer { done.leave() }
            var mine: [Double] = []
            var bad = 0
            guard let conn = try? HTTPConnection(host: url.host, port: url.port, timeout: 5) else {
                sh.lock.lock(); sh.errors += 1; sh.lock.unlock(); return
            }
            var k = 0
            while now() < deadline {
                sh.lock.lock(); let go = sh.total < maxWrites; sh.total += 1; sh.lock.unlock()
                if !go { break }
                let key = Data("bench/\(c)/\(k % 1000)".utf8).base64EncodedString()
                k += 1
                let t0 = now()
                guard let code = try? conn.post(path: "/v3/kv/put", body: "{\"key\":\"\(key)\",\"value\":\"\(value)\"}") else { bad += 1; break }
                if code == 200 { mine.append(now() - t0) } else { bad += 1 }
            }
            conn.close()
            sh.lock.lock(); sh.latencies += mine; sh.errors += bad; sh.lock.unlock()
        }
        t.stackSize = 1 << 20
        threads.append(t)
        t.start()
    }
    done.wait()
    let wall = now() - start
    let latencies = sh.latencies.sorted(), errors = sh.errors
    func pct(_ p: Double) -> Double { latencies.isEmpty ? .nan : latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }
    return LoadResult(rate: Double(latencies.count) / wall, p50: pct(0.5), p99: pct(0.99), errors: errors)
}

func putOnce(host: String, port: Int, key: String, timeout: Double) throws -> Int {
    let conn = try HTTPConnection(host: host, port: port, timeout: timeout)
    defer { conn.close() }
    let k = Data(key.utf8).base64EncodedString()
    return try conn.post(path: "/v3/kv/put", body: "{\"key\":\"\(k)\",\"value\":\"eA==\"}")
}

func httpPost(host: String, port: Int, path: String, body: String, timeout: Double) throws -> (Int, String) {
    let conn = try HTTPConnection(host: host, port: port, timeout: timeout)
    defer { conn.close() }
    let code = try conn.post(path: path, body: body)
    return (code, String(decoding: conn.lastBody, as: UTF8.self))
}

/// One blocking keep-alive HTTP/1.1 connection (Content-Length or chunked answers).
final class HTTPConnection {
    let fd: Int32
    let host: String
    var buffer: [UInt8] = []
    var lastBody: [UInt8] = []

    init(host: String, port: Int, timeout: Double) throws {
        self.host = host
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw BenchError("socket: \(String(cString: strerror(errno)))") }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr(host)
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard r == 0 else { let e = errno; Glibc.close(fd); throw BenchError("connect \(host):\(port): \(String(cString: strerror(e)))") }
    }

    func close() { Glibc.close(fd) }

    func post(path: String, body: String) throws -> Int {
        let b = Array(body.utf8)
        let req = Array("POST \(path) HTTP/1.1\r\nHost: \(host)\r\nContent-Type: application/json\r\nContent-Length: \(b.count)\r\n\r\n".utf8) + b
        var sent = 0
        while sent < req.count {
            let n = req[sent...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { throw BenchError("write failed") }
            sent += n
        }
        // Headers.
        var headerEnd: Int?
        while headerEnd == nil {
            if let r = find([13, 10, 13, 10]) { headerEnd = r } else { try fill() }
        }
        let head = String(decoding: buffer[0..<headerEnd!], as: UTF8.self).lowercased()
        buffer.removeFirst(headerEnd! + 4)
        let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
        if let cl = head.split(separator: "\r\n").first(where: { $0.hasPrefix("content-length:") }),
           let len = Int(cl.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) {
            while buffer.count < len { try fill() }
            lastBody = Array(buffer[0..<len]); buffer.removeFirst(len)
        } else if head.contains("transfer-encoding: chunked") {
            lastBody = []
            while true {
                var lineEnd = find([13, 10])
                while lineEnd == nil { try fill(); lineEnd = find([13, 10]) }
                let size = Int(String(decoding: buffer[0..<lineEnd!], as: UTF8.self).split(separator: ";").first ?? "", radix: 16) ?? 0
                buffer.removeFirst(lineEnd! + 2)
                while buffer.count < size + 2 { try fill() }
                lastBody += buffer[0..<size]; buffer.removeFirst(size + 2)
                if size == 0 { break }
            }
        } else {
            throw BenchError("answer without a length")
        }
        return status
    }

    private func find(_ pattern: [UInt8]) -> Int? {
        guard buffer.count >= pattern.count else { return nil }
        for i in 0...(buffer.count - pattern.count) where buffer[i] == pattern[0] && Array(buffer[i..<i + pattern.count]) == pattern { return i }
        return nil
    }

    private func fill() throws {
        var chunk = [UInt8](repeating: 0, count: 16384)
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { throw BenchError("connection closed or timed out") }
        buffer += chunk[0..<n]
    }
}
