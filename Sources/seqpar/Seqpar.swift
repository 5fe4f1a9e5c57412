// The seqpar command: one executable that mpirun starts on every rank. Argument errors and help
// are printed by rank 0 only (the others exit with the same status quietly), so a 4-rank job
// shows one message, not four.

import ArgumentParser
import AttentionCore
import BlasRuntime
import Foundation

struct Seqpar: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "seqpar",
        abstract: "Exact softmax attention over sequences sharded across MPI ranks.",
        discussion: """
            Start it on every rank with mpirun (Launch/local N runs N ranks on this machine):
              Launch/local 4 verify --causal
              Launch/local 2 run --tokens 8192 --causal --strategy zigzag --out O.npy --lse LSE.npy
            Layout: Q and O are [tokens, heads, headDim], K and V [tokens, kvHeads, headDim],
            LSE [heads, tokens]; all float32 .npy in C order.
            """,
        version: BuildInfo.line,
        subcommands: [RunCommand.self, VerifyCommand.self, BenchCommand.self, ProfileCommand.self, ProbeCommand.self, InfoCommand.self, ClusterPlanCommand.self, MaskCommand.self]
    )
}

@main
enum Main {
    static func main() {
        checkBuildTarget()
        BlasCore.selectAtStartup()  // may execute this program again, with better BLAS kernels
        do {
            var command = try Seqpar.parseAsRoot()
            try command.run()
        } catch {
            // One write of the whole message: ArgumentParser's own printing goes out byte by byte,
            // and mpirun's notices about the exiting ranks would land in the middle of it.
            let code = Seqpar.exitCode(for: error)
            if launchRank == 0 {
                let message = Seqpar.fullMessage(for: error)
                if !message.isEmpty {
                    (code == .success ? FileHandle.standardOutput : FileHandle.standardError).write(Data((message + "\n").utf8))
                }
            } else if code != .success {
                // mpirun ends the job when the first rank exits non-zero; let rank 0, which says
                // why, get its message out first.
                usleep(500_000)
            }
            exit(code.rawValue)
        }
    }

    /// Launch/setup builds for the instruction set of the machine it runs on; a binary carried to a
    /// CPU without it would die of SIGILL somewhere inside the kernel. Say so instead.
    static func checkBuildTarget() {
        let builtFor = BuildInfo.builtLevel
        let cpu = CPUFeatures.current
        if cpu.level < builtFor {
            FileHandle.standardError.write(
                Data(
                    """
                    seqpar: rank \(launchRank) on \(ProcessInfo.processInfo.hostName): this binary was built for \(builtFor) and this CPU \
                    (\(cpu.summary)) lacks it; build one for every node with SEQPAR_TARGET_CPU=\(cpu.level >= .avx2 ? "haswell" : "generic") Launch/setup

                    """.utf8))
            exit(1)
        }
    }

    /// This process's rank as the launcher set it in the environment, before MPI starts.
    static var launchRank: Int {
        let environment = ProcessInfo.processInfo.environment
        for name in ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"] {
            if let value = environment[name], let rank = Int(value) { return rank }
        }
        return 0
    }
}
