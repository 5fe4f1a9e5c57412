// One rank's rows of Q, K, V: generated from a seed or read from .npy files, each rank touching
// only its own rows; and the writing of O and LSE, each rank writing its own rows at their
// offsets (rank 0 creates the files first), never gathering a whole tensor on one rank.

import AttentionCore

/// Where the inputs come from.
public enum InputSource: Sendable {
    /// Deterministic values from `seed` for a sequence of `tokens` tokens.
    case synthetic(seed: UInt64, tokens: Int, shape: AttentionShape)
    /// .npy files; `scale` nil means 1/sqrt(headDim).
    case files(q: String, k: String, v: String, scale: Float?)
}

/// A rank's shard: rows of Q (`[rows, heads, headDim]`) and of K and V stored back to back in one
/// buffer (`[rows, kvHeads, headDim]` each), the form in which K/V travel between ranks.
public final class LocalShard {
    public let shape: AttentionShape
    public let tokens: Int
    public let partition: TokenPartition
    public let rank: Int
    public let segments: [ShardSegment]
    public var rows: Int { segments.last.map { $0.localRow + $0.positions.count } ?? 0 }
    public let queries: UnsafeMutableBufferPointer<Float>
    /// K rows then V rows.
    public let keyValues: UnsafeMutableBufferPointer<Float>

    public init(shape: AttentionShape, partition: TokenPartition, rank: Int) {
        self.shape = shape
        self.tokens = partition.tokens
        self.partition = partition
        self.rank = rank
        self.segments = ShardSegment.stacked(partition.segments(of: rank))
        let rows = partition.rowCount(of: rank)
        queries = .allocate(capacity: max(1, rows * shape.queryRowWidth))
        keyValues = .allocate(capacity: max(1, 2 * rows * shape.kvRowWidth))
        queries.initialize(repeating: 0)
        keyValues.initialize(repeating: 0)
    }

    deinit {
        queries.deallocate()
        keyValues.deallocate()
    }

    public var keys: UnsafeMutablePointer<Float> { keyValues.baseAddress! }
    public var values: UnsafeMutablePointer<Float> { keyValues.baseAddress! + rows * shape.kvRowWidth }

    /// The global ranges this shard holds, in storage order.
    public var ranges: [Range<Int>] { segments.map(\.positions) }

    /// Loads this rank's rows. Throws (on this rank only) with a message naming the file.
    public static func load(_ source: InputSource, layout: TokenLayout, rank: Int, ranks: Int) throws -> LocalShard {
        switch source {
        case let .synthetic(seed, tokens, shape):
            let shard = LocalShard(shape: shape, partition: TokenPartition(tokens: tokens, ranks: ranks, layout: layout), rank: rank)
            shard.fillSynthetic(seed: seed)
            return shard
        case let .files(qPath, kPath, vPath, scale):
            let (q, k, v) = (try NpyFile.open(reading: qPath), try NpyFile.open(reading: kPath), try NpyFile.open(reading: vPath))
            let shape = try InputFiles.shape(q: q, k: k, v: v, scale: scale)
            let shard = LocalShard(shape: shape, partition: TokenPartition(tokens: q.header.shape[0], ranks: ranks, layout: layout), rank: rank)
            let kvRows = shard.rows * shape.kvRowWidth
            for segment in shard.segments {
                let n = segment.positions.count
                try q.read(into: shard.queries.baseAddress! + segment.localRow * shape.queryRowWidth,
                           elementOffset: segment.positions.lowerBound * shape.queryRowWidth, count: n * shape.queryRowWidth)
                try k.read(into: shard.keys + segment.localRow * shape.kvRowWidth,
                           elementOffset: segment.positions.lowerBound * shape.kvRowWidth, count: n * shape.kvRowWidth)
                try v.read(into: shard.keys + kvRows + segment.localRow * shape.kvRowWidth,
                           elementOffset: segment.positions.lowerBound * shape.kvRowWidth, count: n * shape.kvRowWidth)
            }
            return shard
        }
    }

    func fillSynthetic(seed: UInt64) {
        let kvCount = rows * shape.kvRowWidth
        SyntheticInput.fill(queries, seed: seed, tensor: .query, rowWidth: shape.queryRowWidth, rows: ranges)
        SyntheticInput.fill(UnsafeMutableBufferPointer(rebasing: keyValues[0 ..< kvCount]), seed: seed, tensor: .key,
                            rowWidth: shape.kvRowWidth, rows: ranges)
        SyntheticInput.fill(UnsafeMutableBufferPointer(rebasing: keyValues[kvCount ..< 2 * kvCount]), seed: seed, tensor: .value,
                            rowWidth: shape.kvRowWidth, rows: ranges)
    }
}

public enum InputFiles {
    public struct ShapeMismatch: Error, CustomStringConvertible {
        public let description: String
    }

    /// The attention shape the three files describe, or an error saying which file disagrees.
    static func shape(q: NpyFile, k: NpyFile, v: NpyFile, scale: Float?) throws -> AttentionShape {
        for file in [q, k, v] where file.header.shape.count != 3 {
            throw NpyError.wrongRank(path: file.path, expected: 3, shape: file.header.shape)
        }
        let (qs, ks, vs) = (q.header.shape, k.header.shape, v.header.shape)
        guard ks == vs else {
            throw ShapeMismatch(description: "K \(k.path) has shape \(ks) but V \(v.path) has shape \(vs); they must match")
        }
        guard qs[0] == ks[0] else {
            throw ShapeMismatch(description: "Q \(q.path) has \(qs[0]) tokens but K \(k.path) has \(ks[0]); self-attention needs the same token count")
        }
        guard qs[2] == ks[2] else {
            throw ShapeMismatch(description: "Q \(q.path) has head dim \(qs[2]) but K \(k.path) has \(ks[2]); they must match")
        }
        guard qs[0] > 0 else { throw ShapeMismatch(description: "Q \(q.path) has no tokens") }
        do {
            return try AttentionShape(heads: qs[1], kvHeads: ks[1], headDim: qs[2], scale: scale)
        } catch {
            throw ShapeMismatch(description: "Q \(q.path) \(qs) and K \(k.path) \(ks): \(error)")
        }
    }

    /// Reads all rows of K and V (for the single-rank comparison of `verify`).
    public static func loadWhole(_ source: InputSource, shape: AttentionShape, tokens: Int) throws -> (k: TokenTensor, v: TokenTensor) {
        switch source {
        case let .synthetic(seed, tokens, shape):
            return (SyntheticInput.tensor(.key, seed: seed, heads: shape.kvHeads, headDim: shape.headDim, rows: [0 ..< tokens]),
                    SyntheticInput.tensor(.value, seed: seed, heads: shape.kvHeads, headDim: shape.headDim, rows: [0 ..< tokens]))
        case let .files(_, kPath, vPath, _):
            let k = try NpyFile.load(kPath), v = try NpyFile.load(vPath)
            return (TokenTensor(tokens: tokens, heads: shape.kvHeads, headDim: shape.headDim, values: k.values),
                    TokenTensor(tokens: tokens, heads: shape.kvHeads, headDim: shape.headDim, values: v.values))
        }
    }
}

/// A rank's rows of the result: O `[rows, heads, headDim]` and LSE `[heads, rows]`.
public final class LocalResult {
    public let rows: Int
    public let shape: AttentionShape
    public var output: [Float]
    public var lse: [Float]

    public init(accumulator: AttentionAccumulator, shape: AttentionShape) {
        rows = accumulator.rows
        self.shape = shape
        output = [Float](repeating: 0, count: rows * shape.queryRowWidth)
        lse = [Float](repeating: 0, count: rows * shape.heads)
        output.withUnsafeMutableBufferPointer { o in
            lse.withUnsafeMutableBufferPointer { l in
                if rows > 0 { accumulator.finish(output: o.baseAddress!, lse: l.baseAddress!) }
            }
        }
    }

    /// Writes this rank's rows of O (`[tokens, heads, headDim]`) and LSE (`[heads, tokens]`).
    /// Collective: rank 0 creates both files, then every rank writes its rows.
    public func write(output outputPath: String?, lse lsePath: String?, segments: [ShardSegment], tokens: Int,
                      communicator: Communicator) throws {
        let shape = self.shape
        try communicator.together {
            if communicator.rank == 0 {
                if let outputPath { try NpyFile.create(outputPath, shape: [tokens, shape.heads, shape.headDim]) }
                if let lsePath { try NpyFile.create(lsePath, shape: [shape.heads, tokens]) }
            }
        }
        try communicator.together {
            try output.withUnsafeBufferPointer { o in
                try lse.withUnsafeBufferPointer { l in
                    if let outputPath {
                        let file = try NpyFile.open(writing: outputPath)
                        for s in segments where !s.positions.isEmpty {
                            try file.write(from: o.baseAddress! + s.localRow * shape.queryRowWidth,
                                           elementOffset: s.positions.lowerBound * shape.queryRowWidth,
                                           count: s.positions.count * shape.queryRowWidth)
                        }
                    }
                    if let lsePath {
                        let file = try NpyFile.open(writing: lsePath)
                        for h in 0 ..< shape.heads {
                            for s in segments where !s.positions.isEmpty {
                                try file.write(from: l.baseAddress! + h * rows + s.localRow,
                                               elementOffset: h * tokens + s.positions.lowerBound, count: s.positions.count)
                            }
                        }
                    }
                }
            }
        }
    }
}
