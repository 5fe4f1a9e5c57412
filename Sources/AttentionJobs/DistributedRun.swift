// One distributed attention run as the commands make it: the strategy made and checked, this
// rank's inputs loaded (refusing, before allocating, a problem this host cannot hold), then a run
// timed from a common barrier, with its traffic, kernel FLOPs and, when profiled, its events.
// Every function here is called by every rank alike; failures all ranks agree on throw
// `CollectiveFailure` on every rank. Nothing here prints to stdout; rank 0's progress goes to stderr
// when `showsProgress` is on.

import AttentionCore
import FileFormats
import Foundation
import Profiling
import SequenceParallel

/// One distributed attention run on this rank: its result rows and what the run cost.
public struct DistributedRun {
    /// The strategy's registered name.
    public let name: StrategyName
    /// This rank's inputs.
    public let shard: LocalShard
    public let strategy: SequenceParallelStrategy
    public let job: AttentionJob
    /// O and LSE of this rank's `segments`.
    public let result: PartialResult
    /// Global positions of `result`'s rows.
    public let segments: [ShardSegment]
    /// Seconds from a common barrier to the last rank's finish (the same on every rank).
    public let seconds: Double
    /// This rank's data movement and kernel work during the run.
    public let bytesSent: Int
    public let bytesReceived: Int
    public let kernelFlops: Double
    /// When profiled: this rank's events, the clock offsets to rank 0 (on rank 0), events dropped.
    public var profile: RecordedProfile?

    /// What a run needs before its clock starts: the strategy (checked), this rank's shard and the job.
    public struct Prepared {
        public let name: StrategyName
        public let strategy: SequenceParallelStrategy
        public let shard: LocalShard
        public let job: AttentionJob

        /// The global positions the output files cover.
        public var extent: Range<Int> { strategy.outputExtent(shard) }

        /// The shapes of the O and LSE files.
        public var outputShape: [Int] { [extent.count, shard.shape.heads, shard.shape.headDim] }
        public var lseShape: [Int] { [shard.shape.heads, extent.count] }
        /// The element type of the O, dQ, dK and dV files (LSE is always float32).
        public var elementType: ElementType { shard.elementType }
        /// The shape of the dK and dV files.
        public var keyGradientShape: [Int] { [shard.tokens, shard.shape.kvHeads, shard.shape.headDim] }
    }

    /// Makes and checks the strategy and loads this rank's inputs: once, however often it runs.
    /// Called by every rank alike.
    /// - Parameters:
    ///   - variant: the strategy's variant auto picked (mesh's "2x2"), overriding `compute`'s options.
    ///   - wholeKeyValues: every rank also holds the whole K and V (verify), counted in the memory check.
    /// - Throws: `CollectiveFailure` on every rank when the inputs cannot be read, the strategy
    ///   refuses the split (`StrategyRefusal`), or the problem does not fit this host's memory
    ///   (checked before anything is allocated).
    public static func prepare(
        _ source: InputSource, strategy name: StrategyName, mask: AttentionMask, compute: ComputeConfiguration,
        communicator: Communicator, variant: String? = nil, wholeKeyValues: Bool = false
    ) throws -> Prepared {
        let heads = try communicator.together { try source.heads() }
        var options = compute.strategyOptions
        if let variant { name.descriptor.applyVariant?(&options, variant) }
        let strategy = name.make(options, mask: mask, ranks: communicator.size, heads: heads)
        let tiling = compute.tiling(for: mask)
        try communicator.together { try strategy.check(heads: heads, ranks: communicator.size) }
        try communicator.together {
            let (tokens, shape) = try source.dimensions(selfAttention: strategy.querySelection == .sameAsKeys)
            try MemoryBudget.check(
                tokens: tokens, shape: shape, ranks: communicator.size, threads: compute.threads,
                tiling: tiling, wholeKeyValues: wholeKeyValues, strategy: strategy)
        }
        let shard = try communicator.together {
            try LocalShard.load(
                source, layout: strategy.inputLayout, rank: communicator.rank, ranks: communicator.size,
                groupSize: strategy.groupSize, queries: strategy.querySelection,
                balancing: strategy.balancesDocuments ? mask : .none, documentLayout: compute.documentLayout,
                tiling: tiling)
        }
        return Prepared(
            name: name, strategy: strategy, shard: shard,
            job: AttentionJob(shape: shard.shape, mask: mask, tiling: tiling, threads: compute.threads, elementType: shard.elementType))
    }

    /// Rank 0 says on stderr what is about to run, when it shows progress.
    public static func announce(_ prepared: Prepared, communicator: Communicator) {
        if showsProgress, communicator.rank == 0 {
            FileHandle.standardError.write(Data("seqpar: running \(announcement(prepared, ranks: communicator.size))\n".utf8))
        }
    }

    /// Whether rank 0 shows its progress on stderr (the commands set it: a terminal, no --quiet).
    nonisolated(unsafe) public static var showsProgress = false

    /// What rank 0 prints before a run starts: strategy, ranks, shape, mask.
    public static func announcement(_ prepared: Prepared, ranks: Int) -> String {
        let s = prepared.job.shape
        return "\(prepared.name.rawValue) on \(ranks) rank(s) x \(prepared.job.threads) thread(s): tokens \(prepared.shard.tokens), heads \(s.heads), "
            + "kv-heads \(s.kvHeads), head-dim \(s.headDim), mask \(prepared.job.mask)"
            + (prepared.elementType == .f32
                ? "" : ", dtype \(prepared.elementType) (\(prepared.job.products == .bf16 ? "bf16 products, float32 accumulation" : "computed in float32"))")
    }

    /// One timed run of a prepared strategy, from a common barrier; rank 0 shows a progress line
    /// on stderr when `showsProgress` is on. With `profile`, clocks are aligned first and every
    /// rank records its events (`profile` of the result).
    /// - Throws: the strategy's errors, and `CollectiveFailure` on every rank when any rank's
    ///   result holds NaN or infinity (float32 overflow).
    public static func run(_ prepared: Prepared, communicator: Communicator, profile: Bool = false, progressLabel: String? = nil) throws -> DistributedRun {
        let (strategy, shard, job) = (prepared.strategy, prepared.shard, prepared.job)
        if showsProgress, communicator.rank == 0 {
            ProgressMeter.current = ProgressMeter(
                label: progressLabel ?? prepared.name.rawValue,
                expectedFlops: strategy.expectedKernelFlops(shard, job: job, ranks: communicator.size))
        }
        defer {
            ProgressMeter.current?.finish()
            ProgressMeter.current = nil
        }
        // Profiling: clocks aligned first (its pings are neither counted nor recorded), then a log
        // allocated before the clock starts, so recording never allocates.
        let offsets = profile ? try communicator.clockOffsets() : []
        let log = profile ? EventLog(capacity: 1 << 18) : nil
        let (sent, received, flops) = (communicator.traffic.bytesSent, communicator.traffic.bytesReceived, job.allKernelFlops)
        communicator.recorder = log
        defer { communicator.recorder = nil }
        let (result, seconds) = try timed(communicator) { try strategy.attend(shard, job: job, communicator: communicator) }
        communicator.recorder = nil
        // Not timed: NaN or infinity in the result (float32 overflow) fails the run on every rank.
        try communicator.together { try result.checkFinite(segments: strategy.outputSegments(shard), mask: job.mask, tokens: shard.tokens) }
        return DistributedRun(
            name: prepared.name, shard: shard, strategy: strategy, job: job, result: result, segments: strategy.outputSegments(shard),
            seconds: seconds, bytesSent: communicator.traffic.bytesSent - sent,
            bytesReceived: communicator.traffic.bytesReceived - received, kernelFlops: job.allKernelFlops - flops,
            profile: log.map { RecordedProfile(events: $0.events, dropped: $0.dropped, clockOffsets: offsets) })
    }

    /// The global positions the output files cover.
    public var extent: Range<Int> { strategy.outputExtent(shard) }

    /// Packed documents: how the rows are laid out, and the max/mean kernel work over ranks that gives.
    public var documentLayout: (name: String, imbalance: Double)? {
        var slices = false
        if case .slices = job.mask { slices = true }
        guard job.mask.documents != nil || slices, strategy.balancesDocuments else { return nil }
        let partition = shard.partition
        let name = partition.documentLayout.map { "\($0.rawValue) \(slices ? "pieces" : "documents")" } ?? partition.layout.rawValue
        return (name, partition.imbalance(mask: job.mask, tiling: job.tiling))
    }

    /// FLOPs of the problem (visible pairs only): what GFLOP/s figures credit.
    public var flops: Double { strategy.problemFlops(shard, job: job) }

    /// Runs `body` from a common start and returns the slowest rank's time (on every rank).
    public static func timed<R>(_ communicator: Communicator, _ body: () throws -> R) throws -> (R, Double) {
        try communicator.barrier()
        let start = MPIRuntime.now()
        let result = try body()
        let mine = MPIRuntime.now() - start
        return (result, try communicator.allreduce(mine, .max))
    }
}

/// How the reports write numbers and problems.
public enum Format {
    /// MiB with one decimal, or GiB with two from 1 GiB on.
    public static func bytes(_ n: Double) -> String {
        n >= 1_073_741_824 ? String(format: "%.2f GiB", n / 1_073_741_824) : String(format: "%.1f MiB", n / 1_048_576)
    }

    /// Two decimals in scientific notation; 0 as "0".
    public static func sci(_ x: Double) -> String { x == 0 ? "0" : String(format: "%.2e", x) }

    /// The problem a run solved, in one line: tokens, shape, mask, the queries (star) and the
    /// strategy's shape where its label says more than its name ("mesh 2x2").
    public static func problem(_ run: DistributedRun) -> String {
        let s = run.shard.shape
        var text = "tokens \(run.shard.tokens), heads \(s.heads), kv-heads \(s.kvHeads), head-dim \(s.headDim), mask \(run.job.mask)"
        if run.extent != 0 ..< run.shard.tokens { text += ", queries \(run.extent.lowerBound)..<\(run.extent.upperBound)" }
        if run.strategy.label != run.name.rawValue { text += ", \(run.strategy.label)" }  // its shape, as "mesh 2x2"
        if run.shard.elementType != .f32 {
            // Every result compared (distributed, single rank, float64) starts from the same rounded inputs.
            text +=
                ", dtype \(run.shard.elementType): inputs rounded to it, "
                + (run.job.products == .bf16 ? "bf16 products with float32 accumulation (oneDNN)" : "computed in float32")
        }
        return text
    }
}
