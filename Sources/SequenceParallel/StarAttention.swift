// Star Attention's global phase. K/V stay sharded by sequence; a few query tokens (held by rank 0)
// are broadcast; each rank attends over its local K/V (causal in global positions) and the
// partial (O, lse) records are merged onto rank 0 by MPI_Reduce with the online-softmax merge as
// a user-defined operator (or onto every rank with MPI_Allreduce).

import AttentionCore
import Buffers
import FileFormats
import MPIBinding
import Profiling

/// Star Attention's global phase (inference only): rank 0's few query tokens are broadcast, each rank
/// attends over its own K/V, and the partial results are merged onto rank 0 (or every rank) by an MPI reduction.
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

    /// With --all every rank holds the merged rows; rank 0 alone writes them.
    public func fileSegments(_ shard: LocalShard) -> [ShardSegment] {
        shard.rank == 0 ? shard.querySegments : []
    }

    public func attend(_ shard: LocalShard, job: AttentionJob, communicator: Communicator) throws -> PartialResult {
        let shape = job.shape, d = shape.headDim, m = shard.queryRows
        try broadcastQueries(shard, communicator: communicator)
        let accumulator = AttentionAccumulator(rows: m, heads: shape.heads, headDim: d)
        for keySegment in shard.keySegments {
            job.kernel.accumulate(
                queries: shard.queryElements, querySegments: CollectionOfOne(shard.querySegments[0]),
                keyValues: shard.keyValueElements, keySegment: keySegment, into: accumulator,
                recorder: communicator.recorder)
        }
        let merged = try SoftmaxMergeReduction(headDim: d).merge(accumulator.takeResult(), root: everyRank ? nil : 0, communicator: communicator)
        return merged ?? PartialResult(emptyRows: 0, heads: shape.heads, headDim: d)
    }
}

extension StarAttention {
    /// Rank 0's queries to every rank, in the element type the shard holds them in (16-bit
    /// queries send half the bytes).
    func broadcastQueries(_ shard: LocalShard, communicator: Communicator) throws {
        let storage = shard.queryStorage
        if storage.elementType == .f32 { try communicator.broadcast(storage.floats, root: 0) } else { try communicator.broadcast(storage.bits, root: 0) }
    }
}

extension StarAttention {
    /// The broadcast queries, their accumulator, and the merged result.
    public func workingFloats(rows: Double, tokens: Double, shape: AttentionShape, ranks: Int) -> Double {
        Double(queries) * Double(shape.heads) * (Double(shape.headDim) * 3 + 3)
    }

    public var backwardRefusal: String? {
        "star is inference-only (Star Attention's phase 2 answers a few queries against a fixed context) and computes no gradients; "
            + "use \(StrategyRegistry.names(StrategyRegistry.withBackward)) with --backward"
    }
}

extension StarAttention {
    public var label: String { "star" }

    /// The queries it answers: `--queries` tokens.
    public func outputExtent(_ shard: LocalShard) -> Range<Int> { shard.querySegments.first?.positions ?? 0 ..< 0 }

    public func problemFlops(_ shard: LocalShard, job: AttentionJob) -> Double {
        4 * Double(job.shape.headDim) * job.mask.visiblePairs(queries: outputExtent(shard), tokens: shard.tokens, heads: job.shape.heads)
    }

    /// Its queries against its K/V shard: an even share of the queries' work.
    public func expectedKernelFlops(_ shard: LocalShard, job: AttentionJob, ranks: Int) -> Double {
        problemFlops(shard, job: job) / Double(ranks)
    }

    public static let descriptor = StrategyDescriptor(
        name: "star", summary: "Star Attention phase 2: queries broadcast, local attention per K/V shard, merged by an MPI reduction",
        options: ["--queries", "--query-position", "--all"], optionsType: StarOptions.self, computesGradients: false,
        make: { request in
            let options = request.options[StarOptions.self]
            return StarAttention(queries: options.queries, position: options.position, everyRank: options.everyRank)
        })
}

/// star's options (--queries, --query-position, --all).
public struct StarOptions: StrategyOptionSet {
    /// How many query tokens.
    public var queries = 1
    /// Global position of the first query; nil: the last `queries` tokens.
    public var position: Int?
    /// Every rank gets the merged result (MPI_Allreduce) instead of rank 0 (MPI_Reduce).
    public var everyRank = false

    public init() {}

    public init(queries: Int, position: Int? = nil, everyRank: Bool = false) {
        self.queries = queries
        self.position = position
        self.everyRank = everyRank
    }
}
