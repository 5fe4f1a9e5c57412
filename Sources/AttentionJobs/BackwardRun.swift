// One timed backward after a forward run, as the commands run it: its own time, FLOPs (2.5 x the
// forward's, FlashAttention's convention), traffic and, when profiled, events.

import AttentionCore
import Foundation
import Profiling
import SequenceParallel

/// One timed backward pass on this rank: its gradients and what the pass cost.
public struct BackwardRun {
    /// dQ of the forward's output rows, dK and dV of the shard's key rows.
    public let gradients: ShardGradients
    /// Seconds from a common barrier to the last rank's finish (the same on every rank).
    public let seconds: Double
    /// FLOPs credited: 2.5 x the forward's.
    public let flops: Double
    /// This rank's backward kernel FLOPs and data movement during the pass.
    public let kernelFlops: Double
    public let bytesSent: Int
    public let bytesReceived: Int
    /// When profiled: this rank's events.
    public let events: [ProfileEvent]

    /// Refuses, on every rank and before any work, a strategy that computes no gradients.
    /// - Throws: `CollectiveFailure` (holding a `StrategyRefusal`) on every rank.
    public static func check(_ prepared: DistributedRun.Prepared, communicator: Communicator) throws {
        try communicator.together {
            if let why = prepared.strategy.backwardRefusal { throw StrategyRefusal(description: "--backward: \(why)") }
        }
    }

    /// The backward of `run` (a forward just computed), for dO from `source`, on every rank.
    /// - Throws: `CollectiveFailure` when dO cannot be loaded or a gradient holds NaN or
    ///   infinity; the strategy's errors.
    public static func execute(
        after run: DistributedRun, outputGrad source: OutputGradientSource, communicator: Communicator,
        profile: Bool = false
    ) throws -> BackwardRun {
        try execute(after: run, outputGrad: try loadOutputGrad(source, for: run, communicator: communicator), communicator: communicator, profile: profile)
    }

    /// dO of `run`'s output rows (read or generated once; bench's repetitions share it).
    /// - Throws: `CollectiveFailure` on every rank when any rank cannot load it.
    public static func loadOutputGrad(_ source: OutputGradientSource, for run: DistributedRun, communicator: Communicator) throws -> [Float] {
        try communicator.together { try source.load(segments: run.segments, tokens: run.shard.tokens, shape: run.job.shape, elementType: run.shard.elementType) }
    }

    /// The backward of `run` for dO already loaded (`loadOutputGrad`).
    /// - Throws: `CollectiveFailure` on every rank when a gradient holds NaN or infinity.
    public static func execute(after run: DistributedRun, outputGrad: [Float], communicator: Communicator, profile: Bool = false) throws -> BackwardRun {
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
