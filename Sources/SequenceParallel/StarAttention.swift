// Star Attention's global phase. K/V stay sharded by sequence; a few query tokens (held by rank 0)
// are broadcast; each rank attends over its local K/V (causal in global positions) and the
// partial (O, lse) records are merged onto rank 0 by MPI_Reduce with the online-softmax merge as
// a user-defined operator (or onto every rank with MPI_Allreduce).

import AttentionCore
import Profiling

public struct StarAttention: SequenceParallelStrategy {
    public let queries: Int
    public let position: Int?
    public let everyRank: Bool

    public init(queries: Int, position: Int?, everyRank: Bool) {
        self.queries = queries
        self.position = position
        self.everyRank = everyRank
    }

    public var inputLayout: TokenLayout { .contiguous }
    public var querySelection: QuerySelection { .root(count: queries, position: position) }

    public func outputSegments(_ shard: LocalShard) -> [ShardSegment] {
        shard.rank == 0 || everyRank ? shard.querySegments : []
    }

    public func attend(_ shard: LocalShard, job: AttentionJob, communicator: Communicator) throws -> LocalResult {
        let shape = job.shape, d = shape.headDim, m = shard.queryRows
        try communicator.broadcast(shard.queries, root: 0)
        let accumulator = AttentionAccumulator(rows: m, heads: shape.heads, headDim: d)
        for keySegment in shard.keySegments {
            job.kernel.accumulate(queries: shard.queries.baseAddress!, querySegment: shard.querySegments[0],
                                  keys: shard.keys, values: shard.values, keySegment: keySegment, into: accumulator,
                                  recorder: communicator.recorder)
        }
        let partial = LocalResult(accumulator: accumulator)
        let reduction = try SoftmaxMergeReduction(headDim: d)
        let records = UnsafeMutableBufferPointer<Float>.allocate(capacity: m * shape.heads * reduction.recordWidth)
        defer { records.deallocate() }
        recording(.merge, on: communicator.recorder) {
            for row in 0 ..< m {
                for h in 0 ..< shape.heads {
                    let record = records.baseAddress! + (row * shape.heads + h) * reduction.recordWidth
                    record[0] = partial.lse[h * m + row]
                    for x in 0 ..< d { record[1 + x] = partial.output[(row * shape.heads + h) * d + x] }
                }
            }
        }
        try reduction.reduce(records, root: everyRank ? nil : 0, communicator: communicator)
        guard communicator.rank == 0 || everyRank else { return LocalResult(rows: 0, heads: shape.heads, headDim: d) }
        let result = LocalResult(rows: m, heads: shape.heads, headDim: d)
        recording(.merge, on: communicator.recorder) {
            for row in 0 ..< m {
                for h in 0 ..< shape.heads {
                    let record = records.baseAddress! + (row * shape.heads + h) * reduction.recordWidth
                    result.lse[h * m + row] = record[0]
                    for x in 0 ..< d { result.output[(row * shape.heads + h) * d + x] = record[1 + x] }
                }
            }
        }
        return result
    }
}
