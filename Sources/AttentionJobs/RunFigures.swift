// What `run` reports about a run, gathered from every rank: peak memory, traffic, kernel FLOPs and
// their imbalance, and the same for the backward pass when it ran.

import AttentionCore
import BlasRuntime
import Foundation
import Profiling
import SequenceParallel

/// Every rank's figures of one run (the same on every rank).
public struct RunFigures {
    public let run: DistributedRun
    /// Peak resident bytes per rank.
    public let memory: [Double]
    /// Bytes each rank sent and received during the run.
    public let sent, received: [Int64]
    /// Kernel FLOPs each rank spent.
    public let kernelFlops: [Double]
    /// GFLOP/s credited: the problem's FLOPs over the run's time.
    public let gflops: Double
    /// Work balance: the kernel FLOPs each rank spent, max over mean.
    public let imbalance: Double
    /// The backward pass's figures, when it ran.
    public let backward: RunReport.BackwardFigures?
    /// Ring strategies (those that lay tokens out by mask): the K/V bytes each rank's queries
    /// read that it does not hold, under the layout used (`TokenPartition.keysNeeded`).
    public let bytesNeeded: [Int64]?

    /// Gathers the figures from every rank; called by every rank alike after `run` (and `backward`).
    /// - Throws: `CollectiveFailure` when a collective fails.
    public init(_ run: DistributedRun, backward: BackwardRun?, communicator world: Communicator) throws {
        self.run = run
        memory = try world.allgather(Int64(peakResidentBytes())).map(Double.init)
        (sent, received) = (try world.allgather(Int64(run.bytesSent)), try world.allgather(Int64(run.bytesReceived)))
        kernelFlops = try world.allgather(run.kernelFlops)
        if run.strategy.balancesDocuments, run.strategy.querySelection == .sameAsKeys {
            let rowBytes = 2 * run.job.shape.kvRowWidth * run.shard.elementType.byteSize
            let keys = run.shard.partition.keysNeeded(by: world.rank, mask: run.job.mask, tiling: run.job.tiling)
            bytesNeeded = try world.allgather(Int64(keys * rowBytes))
        } else {
            bytesNeeded = nil
        }
        gflops = run.flops / run.seconds / 1e9
        let meanFlops = kernelFlops.reduce(0, +) / Double(kernelFlops.count)
        imbalance = meanFlops > 0 ? kernelFlops.max()! / meanFlops : 1
        self.backward = try backward.map { backwardRun in
            RunReport.BackwardFigures(
                seconds: backwardRun.seconds, flops: backwardRun.flops, gflops: backwardRun.flops / backwardRun.seconds / 1e9,
                kernelFlops: try world.allgather(backwardRun.kernelFlops), bytesSent: try world.allgather(Int64(backwardRun.bytesSent)),
                bytesReceived: try world.allgather(Int64(backwardRun.bytesReceived)))
        }
    }

    /// `run --json`'s object; `profile` when the run was profiled.
    public func report(ranks: Int, threads: Int, profile: ProfileFigures? = nil) -> RunReport {
        let shape = run.job.shape, tokens = run.shard.tokens
        var report = RunReport(
            strategy: run.name.rawValue, ranks: ranks, threads: threads, tokens: tokens, heads: shape.heads, kvHeads: shape.kvHeads,
            headDim: shape.headDim, mask: run.job.mask.description,
            density: run.job.mask.visiblePairs(tokens: tokens, heads: shape.heads) / (Double(tokens) * Double(tokens) * Double(shape.heads)),
            seconds: run.seconds, flops: run.flops, gflops: gflops, peakMemoryBytes: memory, bytesSent: sent, bytesReceived: received,
            kernelFlops: kernelFlops, imbalance: imbalance)
        report.layout = run.documentLayout?.name
        report.dtype = run.shard.elementType.rawValue
        report.predictedImbalance = run.documentLayout?.imbalance
        report.bytesNeeded = bytesNeeded
        report.profile = profile
        report.backward = backward
        return report
    }

    /// The lines `run` prints: time, GFLOP/s, memory, traffic, kernel work, and the backward's.
    public func text(ranks: Int, threads: Int) -> String {
        var text = """
            seqpar run: \(run.name.rawValue), \(ranks) rank(s) x \(threads) thread(s), \(Format.problem(run))
            time \(String(format: "%.4f", run.seconds)) s, \(String(format: "%.1f", gflops)) GFLOP/s
            peak memory per rank: \(memory.map(Format.bytes).joined(separator: ", "))
            sent per rank: \(sent.map { Format.bytes(Double($0)) }.joined(separator: ", "))\(bytesNeeded.map { needed in
                "\nK/V read but not held, per rank: \(needed.map { Format.bytes(Double($0)) }.joined(separator: ", ")) (received: \(received.map { Format.bytes(Double($0)) }.joined(separator: ", ")))"
            } ?? "")
            kernel GFLOP per rank: \(kernelFlops.map { String(format: "%.2f", $0 / 1e9) }.joined(separator: ", ")) (imbalance, max/mean: \(String(format: "%.3f", imbalance)))
            """
        if let backward {
            text += """

                backward: time \(String(format: "%.4f", backward.seconds)) s, \(String(format: "%.1f", backward.gflops)) GFLOP/s (FLOPs: 2.5 x the forward's)
                backward sent per rank: \(backward.bytesSent.map { Format.bytes(Double($0)) }.joined(separator: ", "))
                backward kernel GFLOP per rank: \(backward.kernelFlops.map { String(format: "%.2f", $0 / 1e9) }.joined(separator: ", "))
                """
        }
        return text
    }
}
