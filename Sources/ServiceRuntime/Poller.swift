// One thread that watches every instance's log pipe and pidfd with poll(2): output is copied to the log
// as it comes, and an exit is seen the moment the kernel reports it (a pidfd turns readable), with no
// SIGCHLD handler to fight over with the rest of the agent.

import CSpawn
import Foundation

final class Poller: @unchecked Sendable {
    // SAFETY (Sendable): entries, nextToken and stopped are only touched under `lock`.
    enum Action {
        case keep
        /// Unwatch the fd, then run `then` on the poll thread (close the fd there: never before the poller
        /// has forgotten it, or a reused fd number would reach the wrong handler).
        case remove(then: () -> Void)
    }

    typealias Handler = (_ revents: Int16) -> Action

    private struct Entry {
        let fd: Int32
        let events: Int16
        let handler: Handler
    }

    private let lock = NSLock()
    private var entries: [UInt64: Entry] = [:]
    private var nextToken: UInt64 = 1
    private var stopped = false
    private let wakeFd: Int32

    init() throws(RuntimeError) {
        wakeFd = cspawn_eventfd()
        if wakeFd < 0 { throw RuntimeError(instance: nil, .spawn(stage: "eventfd for the poll thread", errno: -wakeFd)) }
        let t = Thread { [self] in loop() }
        t.name = "mycelium-service-poll"
        t.start()
    }

    func add(fd: Int32, events: Int16 = Int16(POLLIN), handler: @escaping Handler) {
        lock.lock()
        entries[nextToken] = Entry(fd: fd, events: events, handler: handler)
        nextToken += 1
        lock.unlock()
        wake()
    }

    /// Ends the thread; fds still watched are left to their owners.
    func shutdown() {
        lock.lock()
        stopped = true
        lock.unlock()
        wake()
    }

    private func wake() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { Glibc.write(wakeFd, $0.baseAddress, 8) }
    }

    private func loop() {
        while true {
            lock.lock()
            if stopped {
                lock.unlock()
                close(wakeFd)
                return
            }
            let tokens = Array(entries.keys)
            var fds = [pollfd(fd: wakeFd, events: Int16(POLLIN), revents: 0)]
            for t in tokens { fds.append(pollfd(fd: entries[t]!.fd, events: entries[t]!.events, revents: 0)) }
            lock.unlock()

            let n = poll(&fds, nfds_t(fds.count), -1)
            if n < 0 { continue }  // EINTR
            if fds[0].revents != 0 {
                var v: UInt64 = 0
                _ = withUnsafeMutableBytes(of: &v) { Glibc.read(wakeFd, $0.baseAddress, 8) }
            }
            for (i, t) in tokens.enumerated() where fds[i + 1].revents != 0 {
                lock.lock()
                let e = entries[t]
                lock.unlock()
                guard let e else { continue }
                if case let .remove(then) = e.handler(fds[i + 1].revents) {
                    lock.lock()
                    entries[t] = nil
                    lock.unlock()
                    then()
                }
            }
        }
    }
}

/// A one-shot event that async code can wait for, with a timeout.
final class Completion: @unchecked Sendable {
    // SAFETY (Sendable): all state under `lock`; each continuation is resumed exactly once (it is removed
    // from `waiters` under the lock by whoever resumes it).
    private let lock = NSLock()
    private var done = false
    private var waiters: [UInt64: CheckedContinuation<Bool, Never>] = [:]
    private var next: UInt64 = 0

    var isDone: Bool {
        lock.lock()
        defer { lock.unlock() }
        return done
    }

    func complete() {
        lock.lock()
        done = true
        let w = waiters
        waiters = [:]
        lock.unlock()
        for c in w.values { c.resume(returning: true) }
    }

    /// True when completed, false when `timeoutMillis` passed first (nil: no timeout).
    func wait(timeoutMillis: UInt64? = nil) async -> Bool {
        await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            lock.lock()
            if done {
                lock.unlock()
                c.resume(returning: true)
                return
            }
            let token = next
            next += 1
            waiters[token] = c
            lock.unlock()
            if let ms = timeoutMillis {
                DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Int(min(ms, UInt64(Int32.max))))) { [self] in
                    lock.lock()
                    let c = waiters.removeValue(forKey: token)
                    lock.unlock()
                    c?.resume(returning: false)
                }
            }
        }
    }
}
