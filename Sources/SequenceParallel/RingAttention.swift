// Ring self-attention (Sequence Parallelism, RSA). Rank r holds its query rows and its K/V block;
// at step d it receives from rank r - d the rows of that rank's block its queries read (RingPass:
// straight from the owner, not passed on), and folds the block in hand into its running
// online-softmax state while the next one is in flight. Key blocks the mask hides
// (causal: everything after the rank's last query) are skipped by the kernel before any work,
// and a sliding window ends the pass once no rank sees the blocks still to come.

import AttentionCore
import Buffers
import MPIBinding

/// Ring attention: each rank receives the K/V rows its queries read, rank r - d's at step d, while it
/// folds the block in hand into its queries' online-softmax state; key blocks the mask hides are skipped.
public struct RingAttention: SequenceParallelStrategy {
    public let inputLayout: TokenLayout
    public var balancesDocuments: Bool { true }

    public init(layout: TokenLayout = .contiguous) { inputLayout = layout }

    public func attend(_ shard: LocalShard, job: AttentionJob, communicator: Communicator) throws -> PartialResult {
        let accumulator = AttentionAccumulator(rows: shard.queryRows, heads: job.shape.heads, headDim: job.shape.headDim)
        let pass = RingPass(
            communicator: communicator,
            blockSegments: (0 ..< communicator.size).map(shard.partition.stackedSegments),
            kvRowWidth: job.shape.kvRowWidth, buffers: job.exchangeBuffers)
        try pass.run(
            queries: shard.queryElements, querySegments: shard.querySegments,
            keyValues: shard.keyValueStorage.rows, kernel: job.kernel, mask: job.mask, into: accumulator)
        return accumulator.takeResult()
    }
}

extension RingAttention {
    public var backwardRefusal: String? { nil }

    /// The ring backward (RingPass.runBackward): dQ stays with its queries, K/V rows arrive as in
    /// the forward, and their dK/dV go straight back to their owner.
    public func backward(
        _ shard: LocalShard, forward: PartialResult, outputGrad: UnsafePointer<Float>, job: AttentionJob,
        communicator: Communicator
    ) throws -> ShardGradients {
        let shape = job.shape
        let gradients = GradientAccumulator(forward: forward, outputGrad: outputGrad)
        let keyValueGrads = OwnedBuffer<Float>(repeating: 0, count: max(1, 2 * shard.keyRows * shape.kvRowWidth))
        let pass = RingPass(
            communicator: communicator,
            blockSegments: (0 ..< communicator.size).map(shard.partition.stackedSegments),
            kvRowWidth: shape.kvRowWidth, buffers: job.exchangeBuffers)
        try pass.runBackward(
            queries: shard.queryElements, outputGrad: outputGrad, querySegments: shard.querySegments,
            keyValues: shard.keyValueStorage.rows, kernel: job.backwardKernel(), mask: job.mask,
            gradients: gradients, keyValueGrads: keyValueGrads.buffer)
        return ShardGradients(
            gradients, keyValueGrads: UnsafeMutableBufferPointer(rebasing: keyValueGrads.buffer[0 ..< 2 * shard.keyRows * shape.kvRowWidth]))
    }
}

extension RingAttention {
    public var label: String { inputLayout == .zigzag ? "zigzag" : "ring" }

    public static let descriptor = StrategyDescriptor(
        name: "ring", summary: "contiguous chunk per rank; at step d a rank gets the K/V rows its queries read from rank r - d, overlapped with compute",
        make: { _ in RingAttention(layout: .contiguous) },
        predictions: { model, problem in [model.predict(problem, headGroup: 1, zigzag: false, name: "ring")] })
}
