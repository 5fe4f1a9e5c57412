// Ring self-attention (Sequence Parallelism, RSA). Rank r holds its query rows and its K/V block;
// the K/V blocks travel the ring, and at each step the rank folds the block in hand into its
// running online-softmax state while the next block is in flight. Key blocks the mask hides
// (causal: everything after the rank's last query) are skipped by the kernel before any work,
// and a sliding window ends the pass once no rank sees the blocks still to come.

import AttentionCore

public struct RingAttention: SequenceParallelStrategy {
    public let inputLayout: TokenLayout
    public var balancesDocuments: Bool { true }

    public init(layout: TokenLayout = .contiguous) { inputLayout = layout }

    public func attend(_ shard: LocalShard, job: AttentionJob, communicator: Communicator) throws -> PartialResult {
        let accumulator = AttentionAccumulator(rows: shard.queryRows, heads: job.shape.heads, headDim: job.shape.headDim)
        let pass = RingPass(communicator: communicator,
                            blockSegments: (0 ..< communicator.size).map(shard.partition.stackedSegments),
                            kvRowWidth: job.shape.kvRowWidth)
        try pass.run(queries: shard.queries.baseAddress!, querySegments: shard.querySegments,
                     keyValues: UnsafeBufferPointer(shard.keyValues), kernel: job.kernel, mask: job.mask, into: accumulator)
        return accumulator.result()
    }
}
