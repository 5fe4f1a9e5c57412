// The backward pass as the commands run it: --backward and --do, and one timed backward after a
// forward run, with its own time, FLOPs (2.5 x the forward's, FlashAttention's convention),
// traffic and, when profiled, events.

import ArgumentParser
import AttentionCore
import Foundation
import Profiling
import SequenceParallel

struct BackwardOptions: ParsableArguments {
    @Flag(help: "After the forward, run the backward pass: dQ, dK and dV for the output gradient dO (ring, zigzag, heads, mesh, s2).")
    var backward = false
    @Option(name: .customLong("do"), help: "dO as .npy, [tokens, heads, headDim] float32 (with --backward; default: synthetic, from --seed).")
    var outputGrad: String?

    func validate() throws {
        if outputGrad != nil, !backward { throw ValidationError("--do is the backward pass's input: give --backward with it.") }
    }

    /// Where dO comes from, for inputs from `problem`.
    func source(_ problem: ProblemOptions) -> OutputGradientSource {
        outputGrad.map(OutputGradientSource.file) ?? .synthetic(seed: problem.seed)
    }

    var inputFiles: [(option: String, path: String)] { outputGrad.map { [(option: "--do", path: $0)] } ?? [] }
}

/// One timed backward pass on this rank.
struct BackwardRun {
    let gradients: ShardGradients
    /// Seconds from a common barrier to the last rank's finish.
    let seconds: Double
    /// FLOPs credited: 2.5 x the forward's.
    let flops: Double
    let kernelFlops: Double
    let bytesSent: Int
    let bytesReceived: Int
    /// When profiled: this rank's events.
    let events: [ProfileEvent]

    /// Refuses, on every rank and before any work, a strategy that computes no gradients.
    static func check(_ prepared: DistributedRun.Prepared, communicator: Communicator) throws {
        try communicator.together {
            if let why = prepared.strategy.backwardRefusal { throw StrategyRefusal(description: "--backward: \(why)") }
        }
    }

    /// The backward of `run` (a forward just computed), for dO from `source`.
    static func execute(
        after run: DistributedRun, outputGrad source: OutputGradientSource, communicator: Communicator,
        profile: Bool = false
    ) throws -> BackwardRun {
        try execute(after: run, outputGrad: try loadOutputGrad(source, for: run, communicator: communicator), communicator: communicator, profile: profile)
    }

    /// dO of `run`'s output rows (read or generated once; bench's repetitions share it).
    static func loadOutputGrad(_ source: OutputGradientSource, for run: DistributedRun, communicator: Communicator) throws -> [Float] {
        try communicator.together { try source.load(segments: run.segments, tokens: run.shard.tokens, shape: run.job.shape) }
    }

    /// The backward of `run` for dO already loaded (`loadOutputGrad`).
    static func execute(after run: DistributedRun, outputGrad: [Float], communicator: Communicator, profile: Bool = false) throws -> BackwardRun {
        let (shard, job, strategy) = (run.shard, run.job, run.strategy)
        let log = profile ? EventLog(capacity: 1 << 18) : nil
        let (sent, received, flops) = (communicator.traffic.bytesSent, communicator.traffic.bytesReceived, job.allBackwardFlops)
        communicator.recorder = log
        defer { communicator.recorder = nil }
        let (gradients, seconds) = try outputGrad.withUnsafeBufferPointer { dO in
            try DistributedRun.timed(communicator) {
                try strategy.backward(shard, forward: run.result, outputGrad: dO.baseAddress!, job: job, communicator: communicator)
            }
        }
        communicator.recorder = nil
        try communicator.together {
            for (name, values) in [("dQ", gradients.dq), ("dK", gradients.dk), ("dV", gradients.dv)] where values.contains(where: { !$0.isFinite }) {
                throw NonFiniteResult(
                    description: "the backward's \(name) holds NaN or infinity (float32 overflow in the gradients); "
                        + "scale the inputs down (--scale) or check dO")
            }
        }
        return BackwardRun(
            gradients: gradients, seconds: seconds, flops: 2.5 * run.flops, kernelFlops: job.allBackwardFlops - flops,
            bytesSent: communicator.traffic.bytesSent - sent, bytesReceived: communicator.traffic.bytesReceived - received,
            events: log?.events ?? [])
    }
}
