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
import FileFormats

/// Distributed attention over a sequence sharded across the ranks of a communicator.
public struct DistributedAttention {
    public let strategy: SequenceParallelStrategy
    public let job: AttentionJob
    public let communicator: Communicator
    public let partition: TokenPartition
    /// The element type of the caller's buffers (`forward(q:k:v:output:lse:)` and its backward):
    /// K/V travel in it; the arithmetic, LSE and the backward's dK/dV sums stay float32.
    public let elementType: ElementType

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
        options: StrategyOptions = StrategyOptions(), threads: Int = 1, elementType: ElementType = .f32, communicator: Communicator
    ) throws {
        let strategy = name.make(options, mask: mask, ranks: communicator.size, heads: shape.heads)
        try communicator.together { try strategy.check(heads: shape.heads, ranks: communicator.size) }
        guard strategy.querySelection == .sameAsKeys else {
            throw StrategyRefusal(description: "\(name) answers a few queries against the sequence (star); DistributedAttention computes self-attention over every row")
        }
        self.strategy = strategy
        self.communicator = communicator
        self.elementType = elementType
        job = AttentionJob(shape: shape, mask: mask, threads: threads, elementType: elementType)
        partition = TokenPartition(tokens: tokens, ranks: communicator.size, layout: strategy.inputLayout, groupSize: strategy.groupSize)
    }

    /// The global token ranges this rank holds, in the order its rows are stored: the rows of
    /// `forward`'s inputs and of its result.
    public var localRanges: [Range<Int>] { partition.segments(of: communicator.rank) }

    /// Rows this rank holds.
    public var localRows: Int { partition.rowCount(of: communicator.rank) }

    /// O and LSE of this rank's rows. The inputs are rounded to `elementType` (to nearest even) as
    /// they are copied in, as the files of a job of that type are.
    /// - Parameters:
    ///   - q: `[localRows, heads, headDim]`.
    ///   - k, v: `[localRows, kvHeads, headDim]`.
    public func forward(q: [Float], k: [Float], v: [Float]) throws -> PartialResult {
        try strategy.attend(try communicator.together { try self.shard(q: q, k: k, v: v) }, job: job, communicator: communicator)
    }

    /// dQ, dK and dV of this rank's rows, for the output gradient `outputGrad` (`[localRows,
    /// heads, headDim]`) of `forward`'s result for the same inputs; dO is rounded to `elementType` too,
    /// so every strategy sees the same values (the head strategies move it in that type).
    public func backward(q: [Float], k: [Float], v: [Float], forward: PartialResult, outputGrad: [Float]) throws -> ShardGradients {
        if let why = strategy.backwardRefusal { throw StrategyRefusal(description: why) }
        let shard = try communicator.together {
            guard outputGrad.count == q.count else {
                throw StrategyRefusal(description: "dO holds \(outputGrad.count) floats; expected \(q.count), as Q")
            }
            return try self.shard(q: q, k: k, v: v)
        }
        var outputGrad = outputGrad
        outputGrad.withUnsafeMutableBufferPointer { elementType.round($0) }
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
        let shard = LocalShard(shape: shape, partition: partition, rank: communicator.rank, elementType: elementType)
        shard.queryStorage.store(q, at: 0, count: q.count)
        shard.keyValueStorage.store(k, at: 0, count: k.count)
        shard.keyValueStorage.store(v, at: k.count, count: v.count)
        return shard
    }
}

/// One tensor's rows in a caller's memory: `rows` rows, each `[heads, headDim]` elements of the
/// attention's element type stored contiguously, row `r` starting `r * rowStride` elements after
/// `base`. A stride larger than a row reads rows out of a wider buffer (a slice of fused QKV).
public struct CallerRows {
    public var base: UnsafeRawPointer?
    public var rows: Int
    public var rowStride: Int

    public init(_ base: UnsafeRawPointer?, rows: Int, rowStride: Int) {
        self.base = base
        self.rows = rows
        self.rowStride = rowStride
    }
}

/// Rows a caller's buffer receives, laid out as `CallerRows`.
public struct CallerMutableRows {
    public var base: UnsafeMutableRawPointer?
    public var rows: Int
    public var rowStride: Int

    public init(_ base: UnsafeMutableRawPointer?, rows: Int, rowStride: Int) {
        self.base = base
        self.rows = rows
        self.rowStride = rowStride
    }

    var readable: CallerRows { CallerRows(base, rows: rows, rowStride: rowStride) }
}

extension DistributedAttention {
    /// O (in `elementType`) and LSE (float32, `[heads, localRows]`) of this rank's rows, written
    /// into the caller's buffers. Every buffer is checked on every rank before any data moves: a
    /// bad one on any rank throws on every rank (a `CollectiveFailure` naming the rank).
    public func forward(q: CallerRows, k: CallerRows, v: CallerRows, output: CallerMutableRows, lse: UnsafeMutablePointer<Float>?) throws {
        let shard = try communicator.together {
            try check([("Q", output.readable, job.shape.queryRowWidth)], outputs: true)
            try checkLSE(lse)
            return try self.shard(q: q, k: k, v: v)
        }
        let result = try strategy.attend(shard, job: job, communicator: communicator)
        write(result.output, width: job.shape.queryRowWidth, into: output)
        lse?.update(from: result.lse, count: result.lse.count)
    }

    /// dQ, dK and dV of this rank's rows, written into the caller's buffers (in `elementType`),
    /// for the output gradient `outputGrad` of the forward that gave `output` and `lse` for the
    /// same inputs. Checked as `forward`'s.
    public func backward(
        q: CallerRows, k: CallerRows, v: CallerRows, output: CallerRows, lse: UnsafePointer<Float>?, outputGrad: CallerRows,
        dq: CallerMutableRows, dk: CallerMutableRows, dv: CallerMutableRows
    ) throws {
        let shape = job.shape
        let (shard, forward, dO) = try communicator.together { () throws -> (LocalShard, PartialResult, [Float]) in
            if let why = strategy.backwardRefusal { throw StrategyRefusal(description: why) }
            try check([("O", output, shape.queryRowWidth), ("dO", outputGrad, shape.queryRowWidth)], outputs: false)
            try check(
                [("dQ", dq.readable, shape.queryRowWidth), ("dK", dk.readable, shape.kvRowWidth), ("dV", dv.readable, shape.kvRowWidth)],
                outputs: true)
            try checkLSE(lse)
            let shard = try self.shard(q: q, k: k, v: v)
            let rows = localRows
            var o = [Float](repeating: 0, count: rows * shape.queryRowWidth)
            var dO = o
            o.withUnsafeMutableBufferPointer { read(output, width: shape.queryRowWidth, into: $0.baseAddress!) }
            dO.withUnsafeMutableBufferPointer { read(outputGrad, width: shape.queryRowWidth, into: $0.baseAddress!) }
            let forward = PartialResult(
                rows: rows, heads: shape.heads, headDim: shape.headDim, output: o,
                lse: Array(UnsafeBufferPointer(start: lse, count: lse == nil ? 0 : shape.heads * rows)))
            return (shard, forward, dO)
        }
        let gradients = try dO.withUnsafeBufferPointer {
            try strategy.backward(shard, forward: forward, outputGrad: $0.baseAddress!, job: job, communicator: communicator)
        }
        write(gradients.dq, width: shape.queryRowWidth, into: dq)
        write(gradients.dk, width: shape.kvRowWidth, into: dk)
        write(gradients.dv, width: shape.kvRowWidth, into: dv)
    }

    /// The caller's inputs as the strategies take them: copied once, row by row, in `elementType`.
    private func shard(q: CallerRows, k: CallerRows, v: CallerRows) throws -> LocalShard {
        let shape = job.shape
        try check([("Q", q, shape.queryRowWidth), ("K", k, shape.kvRowWidth), ("V", v, shape.kvRowWidth)], outputs: false)
        let shard = LocalShard(shape: shape, partition: partition, rank: communicator.rank, elementType: elementType)
        let size = elementType.byteSize, kvCount = shard.keyRows * shape.kvRowWidth
        copy(q, width: shape.queryRowWidth, into: shard.queryStorage.raw)
        copy(k, width: shape.kvRowWidth, into: shard.keyValueStorage.raw)
        copy(v, width: shape.kvRowWidth, into: shard.keyValueStorage.raw + kvCount * size)
        return shard
    }

    /// The caller's rows, each copied as it is (`elementType`), packed `width` elements apart.
    private func copy(_ rows: CallerRows, width: Int, into destination: UnsafeMutableRawPointer) {
        guard let base = rows.base else { return }
        let size = elementType.byteSize
        for row in 0 ..< rows.rows {
            (destination + row * width * size).copyMemory(from: base + row * rows.rowStride * size, byteCount: width * size)
        }
    }

    /// Refuses a buffer that is missing, holds other than this rank's rows, or whose stride is
    /// shorter than a row; the message names the buffer and what was expected.
    private func check(_ buffers: [(name: String, rows: CallerRows, width: Int)], outputs: Bool) throws {
        let expected = localRows
        for (name, buffer, width) in buffers {
            guard buffer.base != nil || expected == 0 else {
                throw StrategyRefusal(description: "\(name) is a null pointer; expected \(expected) rows of \(width) \(elementType) elements")
            }
            guard buffer.rows == expected else {
                throw StrategyRefusal(
                    description: "\(name) holds \(buffer.rows) rows; this rank holds \(expected) (global positions "
                        + localRanges.map { "\($0.lowerBound)..<\($0.upperBound)" }.joined(separator: ", ") + ")")
            }
            guard buffer.rowStride >= width || expected <= 1 else {
                throw StrategyRefusal(
                    description: "\(name)'s row stride is \(buffer.rowStride) elements, shorter than a row of \(width) "
                        + "(\(name == "K" || name == "V" || name == "dK" || name == "dV" ? "kv heads" : "heads") x head dim); "
                        + (outputs ? "rows would overlap" : "rows must not overlap"))
            }
        }
    }

    private func checkLSE(_ lse: UnsafeRawPointer?) throws {
        guard lse != nil || localRows == 0 else {
            throw StrategyRefusal(description: "LSE is a null pointer; expected \(job.shape.heads) x \(localRows) float32 values")
        }
    }

    private func read(_ rows: CallerRows, width: Int, into destination: UnsafeMutablePointer<Float>) {
        guard let base = rows.base else { return }
        for row in 0 ..< rows.rows {
            elementType.widen(base + row * rows.rowStride * elementType.byteSize, into: destination + row * width, count: width)
        }
    }

    private func write(_ values: [Float], width: Int, into rows: CallerMutableRows) {
        guard let base = rows.base else { return }
        values.withUnsafeBufferPointer { values in
            for row in 0 ..< rows.rows {
                elementType.narrow(values.baseAddress! + row * width, into: base + row * rows.rowStride * elementType.byteSize, count: width)
            }
        }
    }
}
