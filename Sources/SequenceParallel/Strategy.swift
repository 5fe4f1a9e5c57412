// What every distributed strategy shares: the problem it is handed and the shape of its answer.
// A strategy receives this rank's shard (inputs already sharded as `inputLayout` and
// `groupSize` say) and returns the attention output of the rows in `outputSegments`.

import AttentionCore

/// One attention problem as a strategy sees it.
public struct AttentionJob {
    public let shape: AttentionShape
    public let mask: AttentionMask
    public let tiling: KernelTiling
    public let threads: Int
    /// The kernel over every head.
    public let kernel: LocalAttention

    public init(shape: AttentionShape, mask: AttentionMask, tiling: KernelTiling = KernelTiling(), threads: Int = 1) {
        self.shape = shape
        self.mask = mask
        self.tiling = tiling
        self.threads = threads
        kernel = LocalAttention(shape: shape, mask: mask, tiling: tiling, threads: threads)
    }

    /// Kernels made for head slices, so their work is counted with the main kernel's.
    private let sliceKernels = SliceKernels()
    private final class SliceKernels { var made: [LocalAttention] = [] }

    /// A kernel over some heads only.
    public func kernel(for slice: HeadSlice) -> LocalAttention {
        if slice == kernel.slice { return kernel }
        let made = LocalAttention(shape: shape, mask: mask, tiling: tiling, threads: threads, slice: slice)
        sliceKernels.made.append(made)
        return made
    }

    /// FLOPs every kernel of this job has spent.
    public var allKernelFlops: Double { sliceKernels.made.reduce(kernel.computedFlops) { $0 + $1.computedFlops } }
}

public protocol SequenceParallelStrategy {
    /// How the keys (and, for self-attention, the queries) are sharded before `attend` runs.
    var inputLayout: TokenLayout { get }
    /// Ranks that share one position of the layout (mesh); 1 for the others.
    var groupSize: Int { get }
    /// Which queries a rank holds.
    var querySelection: QuerySelection { get }
    /// Whether a rank's work follows the rows it holds (the ring-shaped strategies), so packed
    /// documents are laid out to balance it (`TokenPartition.balanced`) instead of `inputLayout`.
    var balancesDocuments: Bool { get }

    /// Refuses, before any communication, a problem this strategy cannot split; the message
    /// names counts that would work. Every rank reaches the same verdict.
    func check(heads: Int, ranks: Int) throws

    /// The attention output of this rank's `outputSegments`.
    func attend(_ shard: LocalShard, job: AttentionJob, communicator: Communicator) throws -> PartialResult

    /// Global positions of the rows `attend` returns, in its row order.
    func outputSegments(_ shard: LocalShard) -> [ShardSegment]

    /// The rows this rank writes to the output files: its output rows, unless another rank
    /// holds the same ones (each row is written once).
    func fileSegments(_ shard: LocalShard) -> [ShardSegment]
}

extension SequenceParallelStrategy {
    public var groupSize: Int { 1 }
    public var querySelection: QuerySelection { .sameAsKeys }
    public var balancesDocuments: Bool { false }
    public func check(heads: Int, ranks: Int) throws {}
    public func outputSegments(_ shard: LocalShard) -> [ShardSegment] { shard.querySegments }
    public func fileSegments(_ shard: LocalShard) -> [ShardSegment] { outputSegments(shard) }
}

public struct StrategyRefusal: Error, CustomStringConvertible {
    public let description: String
}

/// The strategies a user can name.
public enum StrategyName: String, CaseIterable, Sendable {
    case ring, zigzag, heads, mesh, s2, star

    /// One line for `--help`.
    public var summary: String {
        switch self {
        case .ring: return "contiguous chunk per rank; K/V blocks travel the ring, overlapped with compute"
        case .zigzag: return "ring over 2P chunks, rank r holding r and 2P-1-r, so causal work is even"
        case .heads: return "Ulysses: all-to-all from sequence shards to head shards, full-sequence attention per head, all-to-all back"
        case .mesh: return "2D: heads all-to-all inside groups of Ph ranks, ring across the Pr groups (--mesh PhxPr)"
        case .s2: return "S2 block-sparse pattern: only active blocks computed, only the K/V blocks each head reads are sent"
        case .star: return "Star Attention phase 2: queries broadcast, local attention per K/V shard, merged by an MPI reduction"
        }
    }
}

/// Options some strategies take.
public struct StrategyOptions: Sendable {
    /// mesh: heads split over `headGroup` ranks, ring over `ring` groups; nil picks a shape.
    public var mesh: (headGroup: Int, ring: Int)?
    /// star: how many query tokens, at which position (nil: the last ones), and whether every rank gets the result.
    public var starQueries = 1
    public var starPosition: Int?
    public var starEveryRank = false

    public init() {}
}

extension StrategyName {
    public func make(_ options: StrategyOptions, mask: AttentionMask, ranks: Int, heads: Int) -> SequenceParallelStrategy {
        switch self {
        case .ring: return RingAttention(layout: .contiguous)
        case .zigzag: return ZigzagAttention()
        case .heads: return HeadsAttention()
        case .mesh:
            let shape = options.mesh ?? MeshAttention.defaultShape(ranks: ranks, heads: heads)
            return MeshAttention(headGroup: shape.headGroup, ring: shape.ring, causal: mask.isCausal)
        case .s2:
            if case let .s2(pattern) = mask { return S2Attention(pattern: pattern) }
            return S2Attention(pattern: nil)
        case .star: return StarAttention(queries: options.starQueries, position: options.starPosition, everyRank: options.starEveryRank)
        }
    }
}
