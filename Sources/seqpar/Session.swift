// Running a command on every rank: start MPI, set BLAS to one thread unless the environment says
// otherwise, run, and end every rank with the same status. A failure all ranks agreed on
// (CollectiveFailure) is printed once by rank 0; anything else on a single rank aborts the job
// with the rank named, so no rank waits forever. With `timeout` a watchdog ends the job when
// the deadline passes, saying what each rank still able to act was waiting for (Watchdog.swift).

import ArgumentParser
import AttentionCore
import Foundation
import Profiling
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

/// One distributed attention run on this rank.
struct DistributedRun {
    let name: StrategyName
    let shard: LocalShard
    let strategy: SequenceParallelStrategy
    let job: AttentionJob
    let result: PartialResult
    /// Global positions of `result`'s rows.
    let segments: [ShardSegment]
    /// Seconds from a common barrier to the last rank's finish.
    let seconds: Double
    /// This rank's data movement and kernel work during the run.
    let bytesSent: Int
    let bytesReceived: Int
    let kernelFlops: Double
    /// When profiled: this rank's events, the clock offsets to rank 0 (on rank 0), events dropped.
    var profile: RecordedProfile?

    /// What a run needs before its clock starts: the strategy (checked), this rank's shard and the job.
    struct Prepared {
        let name: StrategyName
        let strategy: SequenceParallelStrategy
        let shard: LocalShard
        let job: AttentionJob

        /// The global positions the output files cover.
        var extent: Range<Int> { strategy.outputExtent(shard) }

        /// The shapes of the O and LSE files.
        var outputShape: [Int] { [extent.count, shard.shape.heads, shard.shape.headDim] }
        var lseShape: [Int] { [shard.shape.heads, extent.count] }
        /// The shape of the dK and dV files.
        var keyGradientShape: [Int] { [shard.tokens, shard.shape.kvHeads, shard.shape.headDim] }
    }

    /// Makes and checks the strategy and loads this rank's inputs: once, however often it runs.
    /// Refuses, before allocating anything, a problem that does not fit this host's memory.
    /// `wholeKeyValues`: every rank also holds the whole K and V (verify).
    static func prepare(
        _ source: InputSource, strategy name: StrategyName, mask: AttentionMask, compute: ComputeOptions,
        communicator: Communicator, mesh: (headGroup: Int, ring: Int)? = nil, wholeKeyValues: Bool = false
    ) throws -> Prepared {
        let heads = try communicator.together { try source.heads() }
        var options = compute.strategyOptions
        if let mesh { options.mesh = mesh }
        let strategy = name.make(options, mask: mask, ranks: communicator.size, heads: heads)
        try communicator.together { try strategy.check(heads: heads, ranks: communicator.size) }
        try communicator.together {
            let (tokens, shape) = try source.dimensions(selfAttention: strategy.querySelection == .sameAsKeys)
            try MemoryBudget.check(
                tokens: tokens, shape: shape, ranks: communicator.size, threads: compute.threads,
                tiling: compute.tiling, wholeKeyValues: wholeKeyValues)
        }
        let shard = try communicator.together {
            try LocalShard.load(
                source, layout: strategy.inputLayout, rank: communicator.rank, ranks: communicator.size,
                groupSize: strategy.groupSize, queries: strategy.querySelection,
                balancing: strategy.balancesDocuments ? mask : .none, documentLayout: compute.documentLayout.layout,
                tiling: compute.tiling)
        }
        return Prepared(name: name, strategy: strategy, shard: shard, job: AttentionJob(shape: shard.shape, mask: mask, tiling: compute.tiling, threads: compute.threads))
    }

    static func execute(
        _ source: InputSource, strategy name: StrategyName, mask: AttentionMask, compute: ComputeOptions,
        communicator: Communicator, profile: Bool = false, mesh: (headGroup: Int, ring: Int)? = nil,
        wholeKeyValues: Bool = false
    ) throws -> DistributedRun {
        let prepared = try prepare(
            source, strategy: name, mask: mask, compute: compute, communicator: communicator, mesh: mesh,
            wholeKeyValues: wholeKeyValues)
        announce(prepared, communicator: communicator)
        return try run(prepared, communicator: communicator, profile: profile)
    }

    /// Rank 0 says what is about to run, when it shows progress.
    static func announce(_ prepared: Prepared, communicator: Communicator) {
        if showsProgress, communicator.rank == 0 {
            FileHandle.standardError.write(Data("seqpar: running \(announcement(prepared, ranks: communicator.size))\n".utf8))
        }
    }

    /// Whether rank 0 shows its progress on stderr (the commands set it: a terminal, no --quiet).
    nonisolated(unsafe) static var showsProgress = false

    /// What rank 0 prints before a run starts: strategy, ranks, shape, mask.
    static func announcement(_ prepared: Prepared, ranks: Int) -> String {
        let s = prepared.job.shape
        return "\(prepared.name.rawValue) on \(ranks) rank(s) x \(prepared.job.threads) thread(s): tokens \(prepared.shard.tokens), heads \(s.heads), "
            + "kv-heads \(s.kvHeads), head-dim \(s.headDim), mask \(prepared.job.mask)"
    }

    /// One timed run of a prepared strategy.
    static func run(_ prepared: Prepared, communicator: Communicator, profile: Bool = false, progressLabel: String? = nil) throws -> DistributedRun {
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
    var extent: Range<Int> { strategy.outputExtent(shard) }

    /// Packed documents: how the rows are laid out, and the max/mean kernel work over ranks that gives.
    var documentLayout: (name: String, imbalance: Double)? {
        guard job.mask.documents != nil, strategy.balancesDocuments else { return nil }
        let partition = shard.partition
        let name = partition.documentLayout.map { "\($0.rawValue) documents" } ?? partition.layout.rawValue
        return (name, partition.imbalance(mask: job.mask, tiling: job.tiling))
    }

    /// FLOPs of the problem (visible pairs only): what GFLOP/s figures credit.
    var flops: Double { strategy.problemFlops(shard, job: job) }

    /// Runs `body` from a common start and returns the slowest rank's time.
    static func timed<R>(_ communicator: Communicator, _ body: () throws -> R) throws -> (R, Double) {
        try communicator.barrier()
        let start = MPIRuntime.now()
        let result = try body()
        let mine = MPIRuntime.now() - start
        return (result, try communicator.allreduce(mine, .max))
    }
}

enum Format {
    static func bytes(_ n: Double) -> String {
        n >= 1_073_741_824 ? String(format: "%.2f GiB", n / 1_073_741_824) : String(format: "%.1f MiB", n / 1_048_576)
    }

    static func sci(_ x: Double) -> String { x == 0 ? "0" : String(format: "%.2e", x) }

    static func problem(_ run: DistributedRun) -> String {
        let s = run.shard.shape
        var text = "tokens \(run.shard.tokens), heads \(s.heads), kv-heads \(s.kvHeads), head-dim \(s.headDim), mask \(run.job.mask)"
        if run.extent != 0 ..< run.shard.tokens { text += ", queries \(run.extent.lowerBound)..<\(run.extent.upperBound)" }
        if run.strategy.label != run.name.rawValue { text += ", \(run.strategy.label)" }  // its shape, as "mesh 2x2"
        return text
    }
}
