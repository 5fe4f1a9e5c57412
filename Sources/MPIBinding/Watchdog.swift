// The end of a job that can no longer end by itself. A rank that is stopped (SIGSTOP, a swapping
// or hung node, a stalled file system) never answers, and the others would wait for it in
// MPI_Wait or a collective forever. Every rank runs a watchdog thread: when the command's
// deadline (--timeout) passes, it prints what this rank is waiting for and on which rank, waits
// a moment so that every rank still able to act says the same, removes this job's unfinished
// output files, and ends the whole job with MPI_Abort (exit status 124, as timeout(1)).
// It also ends a rank whose launcher (mpirun, or Open MPI's daemon) has died: such a rank would
// otherwise be left running, holding its shared-memory segments.
//
// What a rank waits for is one atomic word that the communicator sets around every blocking
// call: cheap enough for the ring's inner loop, and readable from the watchdog's thread.

import CMPI
import Foundation
import Synchronization

/// What this rank is blocked in, if anything: set by `Communicator` around blocking MPI calls.
public enum WaitState {
    /// The blocking operations, by code.
    package enum Operation: Int {
        case none = 0, sendWait, receiveWait, barrier, allreduce, allgather, gather, alltoall, broadcast, reduce

        var text: String {
            switch self {
            case .none: "nothing"
            case .sendWait: "the completion of a send (MPI_Wait)"
            case .receiveWait: "a message (MPI_Wait on a receive)"
            case .barrier: "a barrier (MPI_Barrier)"
            case .allreduce: "a reduction (MPI_Allreduce)"
            case .allgather: "a gather (MPI_Allgather)"
            case .gather: "a gather (MPI_Gatherv)"
            case .alltoall: "an all-to-all exchange (MPI_Alltoall)"
            case .broadcast: "a broadcast (MPI_Bcast)"
            case .reduce: "a merge reduction (MPI_Reduce)"
            }
        }
    }

    /// operation | (peer world rank + 1) << 8 | (communicator size) << 32; 0: not waiting.
    static let word = Atomic<Int>(0)

    @inline(__always)
    package static func enter(_ operation: Operation, peer: Int = -1, ranks: Int = 0) {
        word.store(operation.rawValue | (peer + 1) << 8 | ranks << 32, ordering: .relaxed)
    }

    @inline(__always)
    package static func leave() { word.store(0, ordering: .relaxed) }

    /// A sentence: what this rank is blocked in and on whom.
    static func describe(worldSize: Int) -> String {
        let value = word.load(ordering: .relaxed)
        let operation = Operation(rawValue: value & 0xFF) ?? .none
        let peer = (value >> 8) & 0xFF_FFFF - 1
        let ranks = value >> 32
        switch operation {
        case .none: return "not blocked in MPI (computing, or reading or writing files)"
        case .sendWait, .receiveWait: return "waiting for rank \(peer): \(operation.text)"
        default:
            let who = ranks >= worldSize ? "all \(worldSize) ranks" : "a group of \(ranks) ranks"
            return "waiting in \(operation.text) among \(who): at least one of the others has not arrived"
        }
    }
}

public enum Watchdog {
    /// The exit status of a job ended by its deadline.
    public static let timeoutStatus: Int32 = 124

    nonisolated(unsafe) private static var started = false

    /// Starts the watchdog of this rank (after MPI has started). `seconds` 0: no deadline (the
    /// launcher check still runs).
    public static func start(seconds: Double, rank: Int, size: Int) {
        guard !started else { return }
        started = true
        let begin = Date()
        let parent = getppid()
        let thread = Thread {
            while true {
                Thread.sleep(forTimeInterval: 0.25)
                if getppid() != parent {
                    say("seqpar: rank \(rank): its launcher (mpirun or Open MPI's daemon, pid \(parent)) is gone; ending this rank\n")
                    OutputCleanup.removeAll()
                    _exit(1)
                }
                guard seconds > 0, Date().timeIntervalSince(begin) >= seconds else { continue }
                // A rank that was itself stopped wakes after its deadline: say so, not what it waited for.
                let late = Date().timeIntervalSince(begin) - seconds
                let what =
                    late > 1.5
                    ? String(format: "this rank was itself stopped or starved of CPU until %.1f s past the deadline", late)
                    : WaitState.describe(worldSize: size)
                say("seqpar: rank \(rank): no end after \(format(seconds)) s (--timeout \(format(seconds))): \(what); ending the job\n")
                // Let the other ranks, whose deadlines fall within moments, say what they wait for;
                // where the launcher gave a job folder, name the ranks that could not.
                let folder = ProcessInfo.processInfo.environment["SEQPAR_JOB_DIR"].flatMap { $0.isEmpty ? nil : $0 }
                // A rank that was itself stopped did not answer in time, even if it wakes (mpirun
                // continues stopped ranks to end them) before the others look.
                if let folder, late <= 1.5 { FileManager.default.createFile(atPath: "\(folder)/watchdog-\(rank)", contents: Data(what.utf8)) }
                Thread.sleep(forTimeInterval: 2)
                if let folder {
                    let answered = (0 ..< size).filter { FileManager.default.fileExists(atPath: "\(folder)/watchdog-\($0)") }
                    let silent = (0 ..< size).filter { !answered.contains($0) }
                    if answered.first == rank, !silent.isEmpty {
                        let who = silent.count == 1 ? "rank \(silent[0]) did" : "ranks \(silent.map(String.init).joined(separator: ", ")) did"
                        say("seqpar: \(who) not answer by the deadline (stopped, hung, or stuck in a system call)\n")
                    }
                }
                OutputCleanup.removeAll()
                // MPI_Abort from this thread ends the job through mpirun; should it not return
                // control to nobody within seconds (a wedged MPI library), leave anyway.
                Thread {
                    Thread.sleep(forTimeInterval: 10); _exit(timeoutStatus)
                }.start()
                MPI_Abort(seqpar_comm_world(), timeoutStatus)
                _exit(timeoutStatus)
            }
        }
        thread.name = "seqpar-watchdog"
        thread.start()
    }

    static func format(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
    }

    /// One write(2) of the whole line, so lines of several ranks do not interleave.
    static func say(_ text: String) {
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }
}
