// run's work after the strategy is prepared: the output files' temporaries made and sized first
// (a full disk fails before the compute), the timed forward, the backward when asked, every
// rank's rows written and the files committed together (or abandoned on any failure), the
// profile gathered and written, and every rank's figures gathered. Nothing is printed to stdout.

import AttentionCore
import FileFormats
import Foundation
import Profiling
import SequenceParallel

/// `seqpar run` as a library call.
public enum RunJob {
    /// The files a run writes: each with the name its messages use for it (the command line's
    /// option, as "--out"), and nil where it writes none.
    public struct Files {
        /// O `[extent, heads, headDim]` and LSE `[heads, extent]`.
        public var output, lse: (option: String, path: String)?
        /// dQ `[extent, heads, headDim]`, dK and dV `[tokens, kvHeads, headDim]` (with a backward).
        public var dq, dk, dv: (option: String, path: String)?

        public init(
            output: (option: String, path: String)? = nil, lse: (option: String, path: String)? = nil, dq: (option: String, path: String)? = nil,
            dk: (option: String, path: String)? = nil, dv: (option: String, path: String)? = nil
        ) {
            (self.output, self.lse, self.dq, self.dk, self.dv) = (output, lse, dq, dk, dv)
        }

        /// Every file named, in the order O, LSE, dQ, dK, dV.
        public var named: [(option: String, path: String)] { [output, lse, dq, dk, dv].compactMap { $0 } }
    }

    /// What a run computed and cost (the same on every rank, but for `run`'s own rows).
    public struct Outcome {
        public let run: DistributedRun
        public let backward: BackwardRun?
        /// With a trace: the profile's summary, whole on rank 0 (empty elsewhere).
        public let profile: ProfileSummary?
        public let figures: RunFigures
    }

    /// Runs `prepared` once on every rank; with `outputGrad`, the backward for that dO too; writes
    /// `files` (all or none) and, with `trace`, the Chrome trace there and the SVG timeline beside
    /// it (`ProfileReport.svgPath`).
    /// - Throws: `CollectiveFailure` on every rank when the strategy computes no gradients but
    ///   `outputGrad` asks for them, gradient files are named without `outputGrad`, a file cannot be made or written, or a collective step fails;
    ///   what `DistributedRun.run` and `BackwardRun.execute` throw. Files already begun are removed.
    public static func execute(
        _ prepared: DistributedRun.Prepared, files: Files, outputGrad: OutputGradientSource?, trace: String?, communicator world: Communicator
    ) throws -> Outcome {
        if outputGrad != nil {
            try BackwardRun.check(prepared, communicator: world)
        } else if let file = [files.dq, files.dk, files.dv].compactMap({ $0 }).first {
            // Without a backward nothing would fill the gradient files: refuse before making any.
            try world.together { throw StrategyRefusal(description: "\(file.option) \(file.path) asks for gradients, but no dO was given (outputGrad)") }
        }
        // Temporaries beside the targets, made and sized now: a full disk fails before the compute.
        let type = prepared.elementType
        let shaped = [
            (files.output, prepared.outputShape, type), (files.lse, prepared.lseShape, .f32), (files.dq, prepared.outputShape, type),
            (files.dk, prepared.keyGradientShape, type), (files.dv, prepared.keyGradientShape, type),
        ]
        .compactMap { file, shape, type in file.map { (option: $0.option, path: $0.path, shape: shape, elementType: type) } }
        let transaction = shaped.isEmpty ? nil : try OutputTransaction.begin(shaped, communicator: world)
        DistributedRun.announce(prepared, communicator: world)
        var run: DistributedRun
        var backwardRun: BackwardRun?
        do {
            run = try DistributedRun.run(prepared, communicator: world, profile: trace != nil)
            if let outputGrad {
                backwardRun = try BackwardRun.execute(after: run, outputGrad: outputGrad, communicator: world, profile: trace != nil)
                run.profile?.events += backwardRun!.events
            }
            if let transaction {
                let temporary = { (file: (option: String, path: String)?) in file.flatMap { transaction.temporary($0.option) } }
                try run.result.write(
                    output: temporary(files.output), lse: temporary(files.lse), segments: run.strategy.fileSegments(run.shard), extent: run.extent,
                    communicator: world)
                try backwardRun?.gradients.write(
                    dq: temporary(files.dq), dk: temporary(files.dk), dv: temporary(files.dv), querySegments: run.strategy.fileSegments(run.shard),
                    keySegments: run.shard.keySegments, shape: run.job.shape, communicator: world)
                try transaction.commit()
            }
        } catch {
            transaction?.abandon()
            throw error
        }
        let summary = try trace.map { try ProfileReport.write(run, strategy: prepared.name, to: $0, communicator: world) }
        return Outcome(run: run, backward: backwardRun, profile: summary, figures: try RunFigures(run, backward: backwardRun, communicator: world))
    }
}
