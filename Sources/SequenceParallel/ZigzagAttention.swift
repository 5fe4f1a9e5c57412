// Zigzag ring attention: the ring loop over a load-balanced layout. The sequence is cut into 2P
// chunks and rank r holds chunks r and 2P-1-r, an early one and a late one, so under a causal
// mask every rank has the same number of visible (query, key) pairs. The exchange and the loop
// are the ring's; only the layout differs, and the kernel skips the hidden chunk pairs.

import AttentionCore
import MPIBinding

/// Ring attention over a zigzag layout (rank r holds chunks r and 2P-1-r of 2P), so a causal mask gives
/// every rank the same work.
public struct ZigzagAttention: SequenceParallelStrategy {
    public var inputLayout: TokenLayout { .zigzag }
    public var balancesDocuments: Bool { true }

    public init() {}

    public func attend(_ shard: LocalShard, job: AttentionJob, communicator: Communicator) throws -> PartialResult {
        precondition(shard.partition.layout == .zigzag, "zigzag needs a zigzag-sharded input")
        return try RingAttention(layout: .zigzag).attend(shard, job: job, communicator: communicator)
    }
}

extension ZigzagAttention {
    public var backwardRefusal: String? { nil }

    public func backward(
        _ shard: LocalShard, forward: PartialResult, outputGrad: UnsafePointer<Float>, job: AttentionJob,
        communicator: Communicator
    ) throws -> ShardGradients {
        try RingAttention(layout: .zigzag).backward(shard, forward: forward, outputGrad: outputGrad, job: job, communicator: communicator)
    }
}

extension ZigzagAttention {
    public var label: String { "zigzag" }

    public static let descriptor = StrategyDescriptor(
        name: "zigzag", summary: "ring over 2P chunks, rank r holding r and 2P-1-r, so causal work is even",
        make: { _ in ZigzagAttention() },
        predictions: { model, problem in [model.predict(problem, headGroup: 1, zigzag: true, name: "zigzag")] })
}
