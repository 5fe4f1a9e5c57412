// Head-sharded attention (Ulysses-style). Inputs arrive sequence-sharded as for ring; an
// all-to-all gives every rank the whole sequence for its heads (and the kv heads they read);
// each rank runs full-sequence attention for its heads; an all-to-all sends each rank its rows
// back for every head. Communication is two all-to-alls, independent of the mask.

import AttentionCore

public struct HeadsAttention: SequenceParallelStrategy {
    public var inputLayout: TokenLayout { .contiguous }

    public init() {}

    public func check(heads: Int, ranks: Int) throws {
        guard heads >= ranks else {
            let mesh = MeshAttention.defaultShape(ranks: ranks, heads: heads)
            throw StrategyRefusal(description: "the heads strategy gives each rank at least one head, but there are \(heads) heads for \(ranks) ranks: "
                + "run it on at most \(heads) ranks, or use --strategy mesh --mesh \(mesh.headGroup)x\(mesh.ring), or ring/zigzag")
        }
    }

    public func attend(_ shard: LocalShard, job: AttentionJob, communicator: Communicator) throws -> PartialResult {
        let exchange = HeadExchange(communicator: communicator, shape: job.shape,
                                    memberRanges: (0 ..< communicator.size).map { shard.partition.segments(of: $0) })
        let heads = try exchange.scatter(shard)
        defer { heads.deallocate() }
        let accumulator = AttentionAccumulator(rows: exchange.groupRows, heads: heads.slice.heads.count, headDim: job.shape.headDim)
        let keys = heads.keyValues.baseAddress!
        let values = keys + exchange.groupRows * heads.slice.kvHeads.count * job.shape.headDim
        let kernel = job.kernel(for: heads.slice)
        let segments = exchange.groupSegments
        for keySegment in segments {       // every query segment at once: K/V packed once per key segment
            kernel.accumulate(queries: heads.queries.baseAddress!, querySegments: segments,
                              keys: keys, values: values, keySegment: keySegment, into: accumulator, recorder: communicator.recorder)
        }
        var result = PartialResult(emptyRows: shard.queryRows, heads: job.shape.heads, headDim: job.shape.headDim)
        try exchange.gather(accumulator.result(), into: &result)
        return result
    }
}

extension HeadsAttention {
    public var backwardRefusal: String? { nil }

    /// Mesh's backward with one head group of every rank (a ring of one): the all-to-alls of the
    /// forward and their transposes.
    public func backward(_ shard: LocalShard, forward: PartialResult, outputGrad: UnsafePointer<Float>, job: AttentionJob,
                         communicator: Communicator) throws -> ShardGradients {
        try MeshAttention(headGroup: communicator.size, ring: 1, causal: false)
            .backward(shard, forward: forward, outputGrad: outputGrad, job: job, communicator: communicator)
    }
}
