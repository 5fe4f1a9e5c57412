// Head-sharded attention (Ulysses-style). Inputs arrive sequence-sharded as for ring; an
// all-to-all gives every rank the whole sequence for its heads (and the kv heads they read);
// each rank runs full-sequence attention for its heads; an all-to-all sends each rank its rows
// back for every head. Communication is two all-to-alls, independent of the mask. It is mesh
// with one head group of every rank (a ring of one), and runs as that; only its check differs.

import AttentionCore
import MPIBinding

/// Head-sharded attention (Ulysses-style): an all-to-all gives each rank the whole sequence for its
/// heads, and a second one returns each rank its rows; it runs as `MeshAttention` with one head group of every rank.
public struct HeadsAttention: SequenceParallelStrategy {
    public var inputLayout: TokenLayout { .contiguous }

    public init() {}

    public func check(heads: Int, ranks: Int) throws {
        guard heads >= ranks else {
            let mesh = MeshAttention.defaultShape(ranks: ranks, heads: heads)
            throw StrategyRefusal(
                description: "the heads strategy gives each rank at least one head, but there are \(heads) heads for \(ranks) ranks: "
                    + "run it on at most \(heads) ranks, or use --strategy mesh --mesh \(mesh.headGroup)x\(mesh.ring), or ring/zigzag")
        }
    }

    /// Mesh with one head group of every rank, a ring of one.
    public func attend(_ shard: LocalShard, job: AttentionJob, communicator: Communicator) throws -> PartialResult {
        try mesh(communicator).attend(shard, job: job, communicator: communicator)
    }

    /// The mesh this is, made once for the world size it runs on (so it splits once).
    private let meshes = Meshes()
    private final class Meshes { var made: MeshAttention? }

    func mesh(_ communicator: Communicator) -> MeshAttention {
        if meshes.made?.headGroup != communicator.size {
            meshes.made = MeshAttention(headGroup: communicator.size, ring: 1, causal: false)
        }
        return meshes.made!
    }
}

extension HeadsAttention {
    public var backwardRefusal: String? { nil }

    /// After the all-to-all a rank holds every token of its heads: Q, O and the accumulator
    /// for heads/P heads, K and V for the kv heads they read, and the send buffers of its rows.
    public func workingFloats(rows: Double, tokens: Double, shape: AttentionShape, ranks: Int) -> Double {
        let d = Double(shape.headDim), p = Double(max(1, ranks))
        let heads = (Double(shape.heads) / p).rounded(.up), kvHeads = min(Double(shape.kvHeads), heads)
        return tokens * heads * d * 3 + tokens * kvHeads * d * 2 + rows * Double(shape.heads + 2 * shape.kvHeads) * d
    }

    /// Mesh's backward with one head group of every rank (a ring of one): the all-to-alls of the
    /// forward and their transposes.
    public func backward(
        _ shard: LocalShard, forward: PartialResult, outputGrad: UnsafePointer<Float>, job: AttentionJob,
        communicator: Communicator
    ) throws -> ShardGradients {
        try mesh(communicator).backward(shard, forward: forward, outputGrad: outputGrad, job: job, communicator: communicator)
    }
}

extension HeadsAttention {
    public var label: String { "heads" }

    /// As mesh's: an even share of the problem.
    public func expectedKernelFlops(_ shard: LocalShard, job: AttentionJob, ranks: Int) -> Double {
        MeshAttention(headGroup: ranks, ring: 1, causal: false).expectedKernelFlops(shard, job: job, ranks: ranks)
    }

    public static let descriptor = StrategyDescriptor(
        name: "heads", summary: "Ulysses: all-to-all from sequence shards to head shards, full-sequence attention per head, all-to-all back",
        make: { _ in HeadsAttention() },
        predictions: { model, problem in
            problem.ranks >= 2 && problem.ranks <= problem.heads
                ? [model.predict(problem, headGroup: problem.ranks, zigzag: false, name: "heads")] : []
        })
}
