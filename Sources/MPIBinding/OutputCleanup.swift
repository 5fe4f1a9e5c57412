// Files to remove when the job fails: the output files a command has begun and not yet renamed
// into place. Here, beside the runtime, because every way a rank ends badly must reach it: the
// code that fails, a signal (mpirun ends the ranks of a failed job with SIGTERM) and the watchdog.

#if canImport(Glibc)
    import Glibc
#endif

/// The unfinished output files of this process, removed on failure: by the code that fails,
/// by a signal handler (mpirun ends the ranks of a failed job with SIGTERM) or by the watchdog.
public enum OutputCleanup {
    /// C strings, so the signal handler touches no Swift runtime.
    nonisolated(unsafe) static var paths: [UnsafeMutablePointer<CChar>] = []
    nonisolated(unsafe) static var handlersInstalled = false

    package static func register(_ path: String) {
        paths.append(strdup(path))
        if !handlersInstalled {
            handlersInstalled = true
            for sig in [SIGTERM, SIGINT, SIGHUP] {
                signal(sig) { sig in
                    OutputCleanup.unlinkAll()
                    signal(sig, SIG_DFL)
                    raise(sig)
                }
            }
        }
    }

    package static func forget() {
        let old = paths
        paths = []
        old.forEach { free($0) }
    }

    private static func unlinkAll() { for p in paths { unlink(p) } }

    /// Removes every registered file (for the watchdog and aborts).
    public static func removeAll() { unlinkAll() }
}
