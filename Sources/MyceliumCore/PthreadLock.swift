#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A pthread mutex, for modules that need neither Foundation nor the macOS-15-only Synchronization.
public final class PthreadLock: @unchecked Sendable {
    // SAFETY (Sendable): the mutex is only touched through pthread calls, which are thread-safe.
    private let m: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        // SAFETY: a heap cell that never moves (pthread mutexes must not be moved), freed in deinit.
        m = .allocate(capacity: 1)
        m.initialize(to: pthread_mutex_t())
        pthread_mutex_init(m, nil)
    }

    deinit {
        pthread_mutex_destroy(m)
        m.deallocate()
    }

    public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(m)
        defer { pthread_mutex_unlock(m) }
        return try body()
    }
}
