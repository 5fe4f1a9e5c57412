// bench's measurement of one strategy: inputs loaded once, one warm-up run, then the best of the
// timed runs (and of their backward passes when asked), every rank alike.

import AttentionCore
import Foundation
import SequenceParallel

/// `seqpar bench`'s timing of one strategy as a library call.
public enum BenchJob {
    /// One strategy's best times.
    public struct Measurement {
        /// The last timed run (its strategy, shard and FLOPs).
        public let run: DistributedRun
        /// The best forward time over the timed runs.
        public let best: Double
        /// The best backward time, when the backward ran.
        public let bestBackward: Double?
    }

    /// Prepares `name` once, runs it once to warm up and `repeats` times timed; with `outputGrad`
    /// (loaded once), the backward after each run. Rank 0 says on stderr what starts when it
    /// shows progress (`DistributedRun.showsProgress`).
    /// - Throws: what `DistributedRun.prepare`, `run` and `BackwardRun.execute` throw (a strategy
    ///   that computes no gradients is refused before its first run).
    public static func measure(
        _ name: StrategyName, source: InputSource, mask: AttentionMask, compute: ComputeConfiguration, repeats: Int,
        outputGrad gradientSource: OutputGradientSource?, communicator world: Communicator
    ) throws -> Measurement {
        let prepared = try DistributedRun.prepare(source, strategy: name, mask: mask, compute: compute, communicator: world)
        if DistributedRun.showsProgress, world.rank == 0 {  // each strategy as it starts
            FileHandle.standardError.write(Data("seqpar bench: \(DistributedRun.announcement(prepared, ranks: world.size)); 1 warm-up + \(repeats) timed run(s)\n".utf8))
        }
        if gradientSource != nil { try BackwardRun.check(prepared, communicator: world) }
        var best = Double.infinity, bestBackward = Double.infinity
        var last: DistributedRun?
        var outputGrad: [Float]?  // dO, loaded once per strategy (its rows follow the strategy's layout)
        for repetition in 0 ..< repeats + 1 {
            let run = try DistributedRun.run(
                prepared, communicator: world,
                progressLabel: repetition == 0 ? "\(name.rawValue) warm-up" : "\(name.rawValue) run \(repetition)/\(repeats)")
            if let gradientSource {
                if outputGrad == nil { outputGrad = try BackwardRun.loadOutputGrad(gradientSource, for: run, communicator: world) }
                let backwardRun = try BackwardRun.execute(after: run, outputGrad: outputGrad!, communicator: world)
                if last != nil { bestBackward = min(bestBackward, backwardRun.seconds) }
            }
            if last != nil { best = min(best, run.seconds) }
            last = run
        }
        return Measurement(run: last!, best: best, bestBackward: gradientSource == nil ? nil : bestBackward)
    }
}
