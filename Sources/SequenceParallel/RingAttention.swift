// Ring self-attention (Sequence Parallelism, RSA). Rank r holds its query rows and its K/V block;
// the K/V blocks travel the ring, and at each step the rank folds the block in hand into its
// running online-softmax state while the next block is in flight. Key blocks the mask hides
// (causal: everything after the rank's last query) are skipped by the kernel before any work.

import AttentionCore

public struct RingAttention: SequenceParallelStrategy {
    public let inputLayout: TokenLayout

    public init(layout: TokenLayout = .contiguous) { inputLayout = layout }

    public func attend(_ shard: LocalShard, job: AttentionJob, communicator: Communicator) throws -> AttentionAccumulator {
        let shape = job.shape
        let partition = shard.partition
        let accumulator = AttentionAccumulator(rows: shard.rows, heads: shape.heads, headDim: shape.headDim)
        // Everything the loop needs about other ranks, worked out once before it.
        let keySegments = (0 ..< communicator.size).map { ShardSegment.stacked(partition.segments(of: $0)) }
        let rows = (0 ..< communicator.size).map { partition.rowCount(of: $0) }
        let exchange = RingExchange(communicator: communicator, capacity: 2 * partition.maxRowCount * shape.kvRowWidth)

        try exchange.circulate(UnsafeBufferPointer(shard.keyValues), blockSize: { 2 * rows[$0] * shape.kvRowWidth }) { source, block, progress in
            let values = block + rows[source] * shape.kvRowWidth
            for querySegment in shard.segments {
                for keySegment in keySegments[source] {
                    job.kernel.accumulate(queries: shard.queries.baseAddress!, querySegment: querySegment,
                                          keys: block, values: values, keySegment: keySegment,
                                          into: accumulator, progress: progress)
                }
            }
        }
        return accumulator
    }
}
