// What every distributed strategy shares: the problem it is handed and the shape of its answer.
// A strategy receives this rank's shard (inputs already sharded as `inputLayout` and
// `groupSize` say) and returns the attention output of the rows in `outputSegments`.

import AttentionCore
import FileFormats
@_exported import MPIBinding

/// One attention problem as a strategy sees it.
public struct AttentionJob {
    public let shape: AttentionShape
    public let mask: AttentionMask
    public let tiling: KernelTiling
    public let threads: Int
    /// The kernels' products: bf16 in a bf16 job on a CPU with bf16 units, else float32.
    public let products: KernelProducts
    /// The kernel over every head.
    public let kernel: LocalAttention

    /// `tiling`: nil for `KernelTiling.defaults(for: mask)`; `elementType`: the job's, which
    /// picks the products (`KernelProducts.for`).
    public init(shape: AttentionShape, mask: AttentionMask, tiling: KernelTiling? = nil, threads: Int = 1, elementType: ElementType = .f32) {
        let tiling = tiling ?? .defaults(for: mask)
        self.shape = shape
        self.mask = mask
        self.tiling = tiling
        self.threads = threads
        products = .for(elementType)
        kernel = LocalAttention(shape: shape, mask: mask, tiling: tiling, threads: threads, products: products)
    }

    /// Kernels made for head slices, so their work is counted with the main kernel's.
    private let sliceKernels = SliceKernels()
    private final class SliceKernels {
        var made: [LocalAttention] = []
        var backward: [LocalAttentionBackward] = []
    }

    /// A kernel over some heads only (made on first use, then kept: heads and mesh ask for the
    /// same slice in every timed run).
    public func kernel(for slice: HeadSlice) -> LocalAttention {
        if slice == kernel.slice { return kernel }
        if let made = sliceKernels.made.first(where: { $0.slice == slice }) { return made }
        let made = LocalAttention(shape: shape, mask: mask, tiling: tiling, threads: threads, slice: slice, products: products)
        sliceKernels.made.append(made)
        return made
    }

    /// FLOPs every kernel of this job has spent.
    public var allKernelFlops: Double { sliceKernels.made.reduce(kernel.computedFlops) { $0 + $1.computedFlops } }

    /// The backward kernel over some heads (made on first use: forward-only runs never allocate
    /// its scratch), kept so its work is counted.
    public func backwardKernel(for slice: HeadSlice? = nil) -> LocalAttentionBackward {
        let slice = slice ?? kernel.slice
        if let made = sliceKernels.backward.first(where: { $0.slice == slice }) { return made }
        let made = LocalAttentionBackward(shape: shape, mask: mask, tiling: tiling, threads: threads, slice: slice, products: products)
        sliceKernels.backward.append(made)
        return made
    }

    /// FLOPs every backward kernel of this job has spent.
    public var allBackwardFlops: Double { sliceKernels.backward.reduce(0) { $0 + $1.computedFlops } }

    /// The ring passes' exchange buffers, kept for this job's later passes.
    let exchangeBuffers = ExchangeBuffers()
}

/// A way of splitting attention over the ranks of a communicator: how the inputs are sharded
/// (`inputLayout`, `groupSize`, `querySelection`), which splits it refuses (`check`), the
/// forward (`attend`: this rank's shard in, the rows of `outputSegments` out) and, unless
/// `backwardRefusal` says why not, the backward. Every rank calls each requirement alike.
public protocol SequenceParallelStrategy {
    /// The strategy's name and, where it has a shape, that too ("mesh 2x2"): what reports and
    /// the cost model's predictions call it.
    var label: String { get }

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

    /// The global positions the output files cover: the whole sequence, unless the strategy
    /// answers only some queries (star).
    func outputExtent(_ shard: LocalShard) -> Range<Int>

    /// FLOPs of the problem this strategy solves (visible pairs only): what GFLOP/s figures credit.
    func problemFlops(_ shard: LocalShard, job: AttentionJob) -> Double

    /// Kernel FLOPs rank 0 will spend, for its progress line.
    func expectedKernelFlops(_ shard: LocalShard, job: AttentionJob, ranks: Int) -> Double

    /// Why this strategy computes no gradients, or nil when it does (`backward`).
    var backwardRefusal: String? { get }

    /// Floats a rank holds for this strategy beyond its own `rows` of Q, K, V, O and the
    /// softmax state (for the memory check before anything is allocated): exchange buffers,
    /// gathered slices. Default: the ring's two K/V receive buffers.
    func workingFloats(rows: Double, tokens: Double, shape: AttentionShape, ranks: Int) -> Double

    /// The gradients of this rank's rows, after `attend` returned `forward` for the same shard:
    /// dQ of the `outputSegments` rows, dK and dV of the shard's key rows. `outputGrad` is dO of
    /// the `outputSegments` rows, [rows, heads, headDim].
    func backward(
        _ shard: LocalShard, forward: PartialResult, outputGrad: UnsafePointer<Float>, job: AttentionJob,
        communicator: Communicator
    ) throws -> ShardGradients
}

/// One rank's gradients: dQ `[rows of outputSegments, heads, headDim]`; dK and dV
/// `[shard.keyRows, kvHeads, headDim]`, in the shard's key row order.
public struct ShardGradients: Sendable {
    public var dq: [Float]
    public var dk: [Float]
    public var dv: [Float]

    public init(dq: [Float], dk: [Float], dv: [Float]) {
        self.dq = dq
        self.dk = dk
        self.dv = dv
    }

    /// dQ from an accumulator, dK and dV from one buffer holding dK's rows then dV's.
    init(_ gradients: GradientAccumulator, keyValueGrads: UnsafeMutableBufferPointer<Float>) {
        var dq = [Float](repeating: 0, count: gradients.rows * gradients.heads * gradients.headDim)
        dq.withUnsafeMutableBufferPointer { gradients.finish(dq: $0.baseAddress!) }
        let half = keyValueGrads.count / 2
        self.init(dq: dq, dk: Array(keyValueGrads[0 ..< half]), dv: Array(keyValueGrads[half ..< 2 * half]))
    }
}

extension SequenceParallelStrategy {
    public var groupSize: Int { 1 }
    public var querySelection: QuerySelection { .sameAsKeys }
    public var balancesDocuments: Bool { false }
    public func check(heads: Int, ranks: Int) throws {}
    public func outputSegments(_ shard: LocalShard) -> [ShardSegment] { shard.querySegments }
    public func fileSegments(_ shard: LocalShard) -> [ShardSegment] { outputSegments(shard) }
    public func outputExtent(_ shard: LocalShard) -> Range<Int> { 0 ..< shard.tokens }
    public func problemFlops(_ shard: LocalShard, job: AttentionJob) -> Double { job.mask.flops(tokens: shard.tokens, shape: job.shape) }
    /// Its own output rows against every key (exact for the strategies that keep whole heads per
    /// query row, however unbalanced the split).
    public func expectedKernelFlops(_ shard: LocalShard, job: AttentionJob, ranks: Int) -> Double {
        outputSegments(shard).reduce(0) {
            $0 + 4 * Double(job.shape.headDim) * job.mask.visiblePairs(queries: $1.positions, tokens: shard.tokens, heads: job.shape.heads)
        }
    }
    public var backwardRefusal: String? { "this strategy computes no gradients" }

    /// The ring's two receive buffers of K and V rows.
    public func workingFloats(rows: Double, tokens: Double, shape: AttentionShape, ranks: Int) -> Double {
        rows * Double(shape.kvHeads * shape.headDim) * 2 * 2
    }
    public func backward(
        _ shard: LocalShard, forward: PartialResult, outputGrad: UnsafePointer<Float>, job: AttentionJob,
        communicator: Communicator
    ) throws -> ShardGradients {
        throw StrategyRefusal(description: backwardRefusal ?? "this strategy computes no gradients")
    }
}

/// A request a strategy cannot serve (a split it cannot do, a backward it does not compute, inputs
/// of the wrong size), said in a sentence that names what to change.
public struct StrategyRefusal: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// Options one strategy reads beyond the common ones. Each strategy that takes some declares its own
/// type in its own file (`MeshOptions`, `StarOptions`), its defaults in `init()`, and its descriptor
/// names it (`StrategyDescriptor.optionsType`).
public protocol StrategyOptionSet: Sendable {
    /// The defaults: what the strategy reads when nobody set its options.
    init()
}

/// The options of every strategy that takes some, one value per option type:
/// `options[MeshOptions.self].shape = (2, 2)`. A strategy reads its own type's; a type never set
/// reads as its defaults.
public struct StrategyOptions: Sendable {
    private var sets: [ObjectIdentifier: any StrategyOptionSet] = [:]

    public init() {}

    /// Options holding `sets` (one value per type; a later one of the same type wins).
    public init(_ sets: any StrategyOptionSet...) {
        for set in sets { self.sets[ObjectIdentifier(type(of: set))] = set }
    }

    /// The options of one type: the value set, or its defaults.
    public subscript<Options: StrategyOptionSet>(_ type: Options.Type) -> Options {
        get { sets[ObjectIdentifier(type)] as? Options ?? Options() }
        set { sets[ObjectIdentifier(type)] = newValue }
    }
}
