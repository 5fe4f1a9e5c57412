// Running a command on every rank: start MPI, set BLAS to one thread unless the environment says
// otherwise, run, and end every rank with the same status. A failure all ranks agreed on
// (CollectiveFailure) is printed once by rank 0; anything else on a single rank aborts the job
// with the rank named, so no rank waits forever. With `timeout` a watchdog ends the job when
// the deadline passes, saying what each rank still able to act was waiting for (Watchdog.swift).

import ArgumentParser
import AttentionCore
import BlasRuntime
import Foundation
import SequenceParallel

enum Session {
    static func run(timeout: Double? = nil, _ body: (Communicator) throws -> Void) throws {
        do {
            try MPIRuntime.start()
        } catch {
            FileHandle.standardError.write(Data("seqpar: \(error)\n".utf8))
            throw ExitCode(2)
        }
        if ProcessInfo.processInfo.environment["OPENBLAS_NUM_THREADS"] == nil { BlasPeak.setBlasThreads(1) }
        var rank = 0
        do {
            let world = try Communicator.world()
            rank = world.rank
            OutputCleanup.installHandlers(rank: rank)
            Watchdog.start(seconds: timeout ?? 0, rank: world.rank, size: world.size)
            try body(world)
            if let sig = OutputCleanup.deferredSignal {
                FileHandle.standardError.write(Data("seqpar: rank \(rank): \(OutputCleanup.name(sig)) came after the outputs were written whole; the run finished\n".utf8))
            }
            try world.barrier()
            if rank == 0 { markFinished() }
            MPIRuntime.finish()
        } catch let failure as CollectiveFailure {
            if rank == 0 { FileHandle.standardError.write(Data("seqpar: error: \(failure)\n".utf8)) }
            MPIRuntime.finish()
            throw ExitCode.failure
        } catch let exit as ExitCode {
            MPIRuntime.finish()
            throw exit
        } catch {
            FileHandle.standardError.write(Data("seqpar: rank \(rank): error: \(error)\n".utf8))
            OutputCleanup.removeAll()
            MPIRuntime.abort(code: 1)
        }
    }

    /// Tells the launcher (Launch/local, Launch/cluster: $SEQPAR_JOB_DIR/finished) that the command
    /// ended well, its outputs committed whole: mpirun exits non-zero once signalled, even when
    /// the ranks finish.
    static func markFinished() {
        guard let folder = ProcessInfo.processInfo.environment["SEQPAR_JOB_DIR"], !folder.isEmpty else { return }
        FileManager.default.createFile(atPath: (folder as NSString).appendingPathComponent("finished"), contents: nil)
    }

    /// Prints on rank 0 only.
    static func say(_ communicator: Communicator, _ text: String) {
        if communicator.rank == 0 {
            FileHandle.standardOutput.write(Data((text + "\n").utf8))
        }
    }
}
