// Files to remove when the job fails, and what a signal does to a job's outputs. Here, beside the
// runtime, because every way a rank ends badly must reach it: the code that fails, a signal
// (mpirun ends the ranks of a failed or interrupted job with SIGTERM) and the watchdog.
//
// A job's outputs are all or nothing, also under SIGTERM, SIGINT and SIGHUP. Before the outputs'
// commit a signal removes the unfinished files, says on stderr that nothing was written, and ends
// the rank with that signal. From the commit on (`deferSignals`) a signal is only noted: the
// commit either puts back what it replaced and fails (a signal during its renames), or the job
// finishes and exits 0, saying that the signal came after its outputs were written.

#if canImport(Glibc)
    import Glibc
#endif

/// The unfinished output files of this process, removed on failure: by the code that fails,
/// by a signal handler (mpirun ends the ranks of a failed job with SIGTERM) or by the watchdog.
public enum OutputCleanup {
    /// C strings, so the signal handler touches no Swift runtime.
    nonisolated(unsafe) static var paths: [UnsafeMutablePointer<CChar>] = []
    nonisolated(unsafe) static var handlersInstalled = false
    /// What the handler prints before it ends the rank ("seqpar: rank R: ...").
    nonisolated(unsafe) static var rankPrefix: UnsafeMutablePointer<CChar> = strdup("seqpar: ")
    /// Set from the commit on: a signal is noted in `deferred`, not acted on.
    nonisolated(unsafe) static var deferring: sig_atomic_t = 0
    nonisolated(unsafe) static var deferred: sig_atomic_t = 0

    /// Installs the handlers of SIGTERM, SIGINT and SIGHUP (once; `rank` names this rank in what they print).
    public static func installHandlers(rank: Int) {
        free(rankPrefix)
        rankPrefix = strdup("seqpar: rank \(rank): ")
        guard !handlersInstalled else { return }
        handlersInstalled = true
        for sig in [SIGTERM, SIGINT, SIGHUP] {
            signal(sig) { sig in
                if OutputCleanup.deferring != 0 {
                    OutputCleanup.deferred = sig
                    return
                }
                OutputCleanup.unlinkAll()
                OutputCleanup.say(signal: sig)
                signal(sig, SIG_DFL)
                raise(sig)
            }
        }
    }

    package static func register(_ path: String) {
        paths.append(strdup(path))
        if !handlersInstalled { installHandlers(rank: 0) }
    }

    package static func forget() {
        let old = paths
        paths = []
        old.forEach { free($0) }
    }

    /// From now on a signal is noted, not acted on (the outputs' commit has begun).
    package static func deferSignals() { deferring = 1 }

    /// Signals act again; one noted meanwhile acts now (for a commit that is not the job's last,
    /// such as run --save-inputs' before the compute).
    package static func resumeSignals() {
        deferring = 0
        let noted = deferred
        deferred = 0
        if noted != 0 { raise(noted) }
    }

    /// The signal noted since `deferSignals`, if any.
    package static var deferredSignal: Int32? { deferred == 0 ? nil : Int32(deferred) }

    /// A signal's name, for messages.
    package static func name(_ sig: Int32) -> String {
        switch sig {
        case SIGTERM: "SIGTERM"
        case SIGINT: "SIGINT"
        case SIGHUP: "SIGHUP"
        default: "signal \(sig)"
        }
    }

    private static func unlinkAll() { for p in paths { unlink(p) } }

    /// Async-signal-safe: write(2) of static text only.
    private static func say(signal sig: Int32) {
        let what: StaticString =
            sig == SIGINT
            ? "stopped by SIGINT before its outputs were committed; none was written or changed\n"
            : sig == SIGHUP
                ? "stopped by SIGHUP before its outputs were committed; none was written or changed\n"
                : "stopped by SIGTERM before its outputs were committed; none was written or changed\n"
        _ = write(2, rankPrefix, strlen(rankPrefix))
        _ = what.withUTF8Buffer { write(2, $0.baseAddress, $0.count) }
    }

    /// Removes every registered file (for the watchdog and aborts).
    public static func removeAll() { unlinkAll() }
}
