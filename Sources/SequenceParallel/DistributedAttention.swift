// The library's front door: exact attention for a Swift program that already runs under MPI and
// holds its own rows of Q, K and V. It says which rows each rank must hold (the strategy's
// layout), computes the forward (and, for training, the backward) with any registered strategy,
// and returns this rank's rows. What it does not do: read or write files, or start MPI.
//
//     try MPIRuntime.start()
//     let world = try Communicator.world()
//     let attention = try DistributedAttention(strategy: .zigzag, tokens: 100_000, shape: shape, mask: .causal, communicator: world)
//     // fill q, k, v with this rank's rows of attention.localRanges, back to back
//     let result = try attention.forward(q: q, k: k, v: v)      // O and LSE of the same rows
//     MPIRuntime.finish()

import AttentionCore

/// Distributed attention over a sequence sharded across the ranks of a communicator.
public struct DistributedAttention {
    public let strategy: SequenceParallelStrategy
    public let job: AttentionJob
    public let communicator: Communicator
    public let partition: TokenPartition

    /// Makes and checks the strategy (every rank must call it alike; a split the strategy cannot
    /// do throws on every rank before any data moves).
    /// - Parameters:
    ///   - tokens: the whole sequence's length.
    ///   - shape: heads, kv heads (GQA/MQA), head dim and softmax scale.
    ///   - mask: in global token positions.
    ///   - options: what some strategies read (mesh's shape).
    ///   - threads: compute threads per rank.
    public init(
        strategy name: StrategyName = .zigzag, tokens: Int, shape: AttentionShape, mask: AttentionMask = .none,
        options: StrategyOptions = StrategyOptions(), threads: Int = 1, communicator: Communicator
    ) throws {
        let strategy = name.make(options, mask: mask, ranks: communicator.size, heads: shape.heads)
        try communicator.together { try strategy.check(heads: shape.heads, ranks: communicator.size) }
        guard strategy.querySelection == .sameAsKeys else {
            throw StrategyRefusal(description: "\(name) answers a few queries against the sequence (star); DistributedAttention computes self-attention over every row")
        }
        self.strategy = strategy
        self.communicator = communicator
        job = AttentionJob(shape: shape, mask: mask, threads: threads)
        partition = TokenPartition(tokens: tokens, ranks: communicator.size, layout: strategy.inputLayout, groupSize: strategy.groupSize)
    }

    /// The global token ranges this rank holds, in the order its rows are stored: the rows of
    /// `forward`'s inputs and of its result.
    public var localRanges: [Range<Int>] { partition.segments(of: communicator.rank) }

    /// Rows this rank holds.
    public var localRows: Int { partition.rowCount(of: communicator.rank) }

    /// O and LSE of this rank's rows.
    /// - Parameters:
    ///   - q: `[localRows, heads, headDim]`.
    ///   - k, v: `[localRows, kvHeads, headDim]`.
    public func forward(q: [Float], k: [Float], v: [Float]) throws -> PartialResult {
        try strategy.attend(try shard(q: q, k: k, v: v), job: job, communicator: communicator)
    }

    /// dQ, dK and dV of this rank's rows, for the output gradient `outputGrad` (`[localRows,
    /// heads, headDim]`) of `forward`'s result for the same inputs.
    public func backward(q: [Float], k: [Float], v: [Float], forward: PartialResult, outputGrad: [Float]) throws -> ShardGradients {
        if let why = strategy.backwardRefusal { throw StrategyRefusal(description: why) }
        let shard = try shard(q: q, k: k, v: v)
        guard outputGrad.count == q.count else {
            throw StrategyRefusal(description: "dO holds \(outputGrad.count) floats; expected \(q.count), as Q")
        }
        return try outputGrad.withUnsafeBufferPointer {
            try strategy.backward(shard, forward: forward, outputGrad: $0.baseAddress!, job: job, communicator: communicator)
        }
    }

    /// The inputs as the strategies take them, checked against this rank's rows.
    private func shard(q: [Float], k: [Float], v: [Float]) throws -> LocalShard {
        let shape = job.shape, rows = localRows
        guard q.count == rows * shape.queryRowWidth, k.count == rows * shape.kvRowWidth, v.count == k.count else {
            throw StrategyRefusal(
                description: "rank \(communicator.rank) holds \(rows) rows (\(localRanges)); expected Q of \(rows * shape.queryRowWidth) floats "
                    + "and K, V of \(rows * shape.kvRowWidth) each, got \(q.count), \(k.count), \(v.count)")
        }
        let shard = LocalShard(shape: shape, partition: partition, rank: communicator.rank)
        shard.queries.baseAddress!.update(from: q, count: q.count)
        shard.keys.update(from: k, count: k.count)
        shard.values.update(from: v, count: v.count)
        return shard
    }
}
