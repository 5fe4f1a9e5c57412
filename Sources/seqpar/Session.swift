// Running a command on every rank: start MPI, set BLAS to one thread unless the environment says
// otherwise, run, and end every rank with the same status. A failure all ranks agreed on
// (CollectiveFailure) is printed once by rank 0; anything else on a single rank aborts the job
// with the rank named, so no rank waits forever. With `timeout` a watchdog ends the job when
// the deadline passes, saying what each rank still able to act was waiting for (Watchdog.swift).

import ArgumentParser
import AttentionCore
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
            Watchdog.start(seconds: timeout ?? 0, rank: world.rank, size: world.size)
            try body(world)
            try world.barrier()
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

    /// Prints on rank 0 only.
    static func say(_ communicator: Communicator, _ text: String) {
        if communicator.rank == 0 {
            FileHandle.standardOutput.write(Data((text + "\n").utf8))
        }
    }
}
