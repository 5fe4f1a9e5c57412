// Comparing a distributed result with the single-rank result and the float64 reference, shard by
// shard. Each rank recomputes its own rows as one process would (the same kernel over the whole
// sequence, key blocks aligned at position 0 exactly as in a one-rank run) so the check is
// spread over the ranks, and each rank reports its largest errors with where they are.

import AttentionCore
import MPIBinding
import SequenceParallel

/// The largest error between two arrays and where it is.
public struct ErrorStats: Sendable, Equatable {
    public var maxAbs: Double = 0
    /// max |a - b| over max |b|: error relative to the reference's scale.
    public var maxRel: Double = 0
    /// Global token and head of the largest absolute error (-1 when none).
    public var token = -1
    public var head = -1

    public init() {}

    /// Folds another shard's stats in (keeping the location of the larger error).
    /// (NaN counts as an infinite error: `!(x <= y)` holds for it where `x > y` would not.)
    public mutating func absorb(_ other: ErrorStats) {
        if !(other.maxAbs <= maxAbs) || token < 0 { (maxAbs, token, head) = (other.maxAbs, other.token, other.head) }
        if !(other.maxRel <= maxRel) { maxRel = other.maxRel }
    }

    var packed: [Double] { [maxAbs, maxRel, Double(token), Double(head)] }
    init(packed p: ArraySlice<Double>) {
        let p = Array(p)
        (maxAbs, maxRel, token, head) = (p[0], p[1], Int(p[2]), Int(p[3]))
    }
}

/// Errors of O and LSE over some rows.
public struct ResultErrors: Sendable, Equatable {
    public var output = ErrorStats()
    public var lse = ErrorStats()
    public var rows = 0

    public init() {}

    /// Compares `actual` with `expected` on the rows `rows` (local row indices) whose global
    /// positions are `positions`. `expected` rows are indexed 0..<rows.count.
    public static func compare(
        actualOutput: [Float], actualLSE: [Float], actualRows: Int, rows: [Int], positions: [Int],
        expectedOutput: (Int) -> Double, expectedLSE: (Int) -> Double, heads: Int, headDim: Int
    ) -> ResultErrors {
        var errors = ResultErrors()
        errors.rows = rows.count
        var outputScale = 0.0, lseScale = 0.0
        for (i, row) in rows.enumerated() {
            for h in 0 ..< heads {
                for x in 0 ..< headDim {
                    let e = expectedOutput((i * heads + h) * headDim + x)
                    let diff = Self.difference(Double(actualOutput[(row * heads + h) * headDim + x]), e)
                    outputScale = max(outputScale, abs(e))
                    if diff > errors.output.maxAbs || errors.output.token < 0 { (errors.output.maxAbs, errors.output.token, errors.output.head) = (diff, positions[i], h) }
                }
                let e = expectedLSE(h * rows.count + i), a = Double(actualLSE[h * actualRows + row])
                let diff = Self.difference(a, e)
                if e.isFinite { lseScale = max(lseScale, abs(e)) }
                if diff > errors.lse.maxAbs || errors.lse.token < 0 { (errors.lse.maxAbs, errors.lse.token, errors.lse.head) = (diff, positions[i], h) }
            }
        }
        errors.output.maxRel = outputScale > 0 ? errors.output.maxAbs / outputScale : errors.output.maxAbs
        errors.lse.maxRel = lseScale > 0 ? errors.lse.maxAbs / lseScale : errors.lse.maxAbs
        return errors
    }

    /// |a - b|, with two equal infinities (-inf lse: no key seen) no error, and a NaN on either
    /// side an infinite one, so it can never pass a tolerance.
    static func difference(_ a: Double, _ b: Double) -> Double {
        if a.isNaN || b.isNaN { return .infinity }
        return a == b ? 0 : abs(a - b)
    }

    public var packed: [Double] { output.packed + lse.packed + [Double(rows)] }
    public init(packed p: [Double]) {
        output = ErrorStats(packed: p[0 ..< 4])
        lse = ErrorStats(packed: p[4 ..< 8])
        rows = Int(p[8])
    }
}

/// What verify compares a distributed result with: the same kernel on one rank over the whole sequence,
/// and a float64 reference on all or a sample of the rows; for gradients, the one-rank backward.
public enum Verification {
    /// The rows of `segments` (this rank's output, whose queries the shard holds) as a one-rank
    /// run computes them: the same kernel over keys 0..<tokens.
    public static func singleRank(_ shard: LocalShard, segments: [ShardSegment], k: TokenTensor, v: TokenTensor, job: AttentionJob) -> PartialResult {
        let accumulator = AttentionAccumulator(rows: LocalShard.rows(segments), heads: job.shape.heads, headDim: job.shape.headDim)
        let whole = ShardSegment(positions: 0 ..< shard.tokens, localRow: 0)
        k.values.withUnsafeBufferPointer { kb in
            v.values.withUnsafeBufferPointer { vb in
                for segment in segments {
                    job.kernel.accumulate(
                        queries: shard.queryElements, querySegments: CollectionOfOne(segment),
                        keyValues: KeyValueRows(keys: kb.baseAddress!, values: vb.baseAddress!), keySegment: whole, into: accumulator)
                }
            }
        }
        return accumulator.takeResult()
    }

    /// Local rows checked against float64: all of them, or an even sample of `sample` rows
    /// (always including each segment's first and last row).
    public static func referenceRows(_ segments: [ShardSegment], sample: Int?) -> [Int] {
        let count = LocalShard.rows(segments)
        guard let sample, sample < count else { return Array(0 ..< count) }
        var rows = Set<Int>()
        for s in segments { rows.formUnion([s.localRow, s.localRow + s.positions.count - 1]) }
        let step = max(1, count / max(1, sample))
        rows.formUnion(stride(from: 0, to: count, by: step))
        return rows.sorted()
    }

    /// Global position of each local row.
    public static func positions(_ segments: [ShardSegment]) -> [Int] {
        segments.flatMap { Array($0.positions) }
    }

    /// The float64 reference for the local rows `rows` of `segments`.
    public static func reference(_ shard: LocalShard, segments: [ShardSegment], rows: [Int], k: TokenTensor, v: TokenTensor, job: AttentionJob) -> ReferenceAttention.Result {
        let shape = job.shape
        let all = positions(segments)
        var q = [Float]()
        q.reserveCapacity(rows.count * shape.queryRowWidth)
        for row in rows { q += shard.queryStorage.widened(row * shape.queryRowWidth ..< (row + 1) * shape.queryRowWidth) }
        return ReferenceAttention.compute(
            q: TokenTensor(tokens: rows.count, heads: shape.heads, headDim: shape.headDim, values: q),
            queryPositions: rows.map { all[$0] }, k: k, v: v,
            keyPositions: Array(0 ..< shard.tokens), shape: shape, mask: job.mask)
    }
}

/// verify --backward on one rank: its rows of dQ (its output rows) and of dK and dV (its key
/// rows) against a one-rank backward of the whole problem, recomputed on this rank, and against
/// the float64 reference on a sample of those rows.
public struct GradientCheck {
    public let single: GradientErrors
    public let reference: GradientErrors

    /// - Parameters:
    ///   - queryRows: local rows of `gradients.dq` and their global positions (the strategy's output rows).
    ///   - sample: rows per rank checked against float64 (nil: all; 0: none).
    public init(
        _ shard: LocalShard, queryRows segments: [ShardSegment], gradients: ShardGradients, source: InputSource,
        outputGrad: OutputGradientSource, job: AttentionJob, sample: Int?, communicator: Communicator
    ) throws {
        let (shape, tokens) = (job.shape, shard.tokens)
        let (k, v) = try communicator.together { try InputFiles.loadWhole(source, shape: shape, tokens: tokens) }
        let q = try communicator.together { try InputFiles.loadWholeQueries(source, shape: shape, tokens: tokens) }
        let wholeRows = [ShardSegment(positions: 0 ..< tokens, localRow: 0)]
        let dO = TokenTensor(
            tokens: tokens, heads: shape.heads, headDim: shape.headDim,
            values: try communicator.together { try outputGrad.load(segments: wholeRows, tokens: tokens, shape: shape, elementType: shard.elementType) })
        let queryPositions = Verification.positions(segments), keyPositions = Verification.positions(shard.keySegments)
        let queryRows = Array(0 ..< queryPositions.count), keyRows = Array(0 ..< keyPositions.count)

        // The one-rank backward: the forward and backward kernels over the whole sequence.
        let whole = Verification.singleRankGradients(q: q, k: k, v: v, outputGrad: dO, job: job)
        var single = GradientErrors()
        (single.queryRows, single.keyRows) = (queryRows.count, keyRows.count)
        single.dq = ErrorStats.compare(gradients.dq, rows: queryRows, positions: queryPositions, heads: shape.heads, headDim: shape.headDim) {
            Double(whole.dq.values[queryPositions[$0 / shape.queryRowWidth] * shape.queryRowWidth + $0 % shape.queryRowWidth])
        }
        for (actual, expected, stats) in [(gradients.dk, whole.dk, \GradientErrors.dk), (gradients.dv, whole.dv, \GradientErrors.dv)] {
            single[keyPath: stats] = ErrorStats.compare(actual, rows: keyRows, positions: keyPositions, heads: shape.kvHeads, headDim: shape.headDim) {
                Double(expected.values[keyPositions[$0 / shape.kvRowWidth] * shape.kvRowWidth + $0 % shape.kvRowWidth])
            }
        }
        self.single = single

        // float64: each rank the statistics (lse, D) of its own query rows, shared with all, then
        // the gradients of a sample of its query rows (over every key) and key rows (over every query).
        var reference = GradientErrors()
        if sample != 0 {
            func rows(_ tensor: TokenTensor, _ positions: [Int]) -> TokenTensor {
                var values = [Float]()
                values.reserveCapacity(positions.count * tensor.rowWidth)
                for p in positions { values += tensor.values[p * tensor.rowWidth ..< (p + 1) * tensor.rowWidth] }
                return TokenTensor(tokens: positions.count, heads: tensor.heads, headDim: tensor.headDim, values: values)
            }
            let all = Array(0 ..< tokens)
            let mine = ReferenceBackward.statistics(
                q: rows(q, queryPositions), queryPositions: queryPositions, k: k, v: v, keyPositions: all,
                outputGrad: rows(dO, queryPositions), shape: shape, mask: job.mask)
            var lse = [Double](repeating: -.infinity, count: shape.heads * tokens), delta = lse
            for part in try communicator.allgatherv(queryPositions.map(Double.init) + mine.lse + mine.delta) {
                let n = part.count / (1 + 2 * shape.heads)
                for h in 0 ..< shape.heads {
                    for i in 0 ..< n {
                        let position = Int(part[i])
                        lse[h * tokens + position] = part[n + h * n + i]
                        delta[h * tokens + position] = part[n + shape.heads * n + h * n + i]
                    }
                }
            }
            let checkedQueries = Verification.referenceRows(segments, sample: sample).map { queryPositions[$0] }
            let checkedKeys = Verification.referenceRows(shard.keySegments, sample: sample).map { keyPositions[$0] }
            func statistics(_ values: [Double], _ positions: [Int]) -> [Double] {
                (0 ..< shape.heads).flatMap { h in positions.map { values[h * tokens + $0] } }
            }
            let forQueries = ReferenceBackward.gradients(
                q: rows(q, checkedQueries), queryPositions: checkedQueries, lse: statistics(lse, checkedQueries), delta: statistics(delta, checkedQueries),
                k: k, v: v, keyPositions: all, outputGrad: rows(dO, checkedQueries), shape: shape, mask: job.mask)
            let forKeys = ReferenceBackward.gradients(
                q: q, queryPositions: all, lse: lse, delta: delta, k: rows(k, checkedKeys), v: rows(v, checkedKeys), keyPositions: checkedKeys,
                outputGrad: dO, shape: shape, mask: job.mask)
            let queryIndex = Dictionary(uniqueKeysWithValues: queryPositions.enumerated().map { ($1, $0) })
            let keyIndex = Dictionary(uniqueKeysWithValues: keyPositions.enumerated().map { ($1, $0) })
            (reference.queryRows, reference.keyRows) = (checkedQueries.count, checkedKeys.count)
            reference.dq = ErrorStats.compare(
                gradients.dq, rows: checkedQueries.map { queryIndex[$0]! }, positions: checkedQueries,
                heads: shape.heads, headDim: shape.headDim
            ) { forQueries.dq[$0] }
            reference.dk = ErrorStats.compare(
                gradients.dk, rows: checkedKeys.map { keyIndex[$0]! }, positions: checkedKeys,
                heads: shape.kvHeads, headDim: shape.headDim
            ) { forKeys.dk[$0] }
            reference.dv = ErrorStats.compare(
                gradients.dv, rows: checkedKeys.map { keyIndex[$0]! }, positions: checkedKeys,
                heads: shape.kvHeads, headDim: shape.headDim
            ) { forKeys.dv[$0] }
        }
        self.reference = reference
    }
}

extension Verification {
    /// The one-rank backward of the whole problem: the forward kernel over the whole sequence,
    /// then the backward kernel with its O and lse.
    public static func singleRankGradients(
        q: TokenTensor, k: TokenTensor, v: TokenTensor, outputGrad: TokenTensor, job: AttentionJob
    )
        -> (dq: TokenTensor, dk: TokenTensor, dv: TokenTensor)
    {
        let accumulator = AttentionAccumulator(rows: q.tokens, heads: job.shape.heads, headDim: job.shape.headDim)
        let whole = ShardSegment(positions: 0 ..< q.tokens, localRow: 0)
        q.values.withUnsafeBufferPointer { qb in
            k.values.withUnsafeBufferPointer { kb in
                v.values.withUnsafeBufferPointer { vb in
                    job.kernel.accumulate(
                        queries: qb.baseAddress!, querySegment: whole, keys: kb.baseAddress!, values: vb.baseAddress!,
                        keySegment: whole, into: accumulator)
                }
            }
        }
        let backward = LocalAttentionBackward(shape: job.shape, mask: job.mask, tiling: job.tiling, threads: job.threads, products: job.products)
        return backward.gradients(q: q, k: k, v: v, forward: accumulator.takeResult(), outputGrad: outputGrad)
    }
}

/// Errors of dQ, dK and dV over some rows.
public struct GradientErrors: Sendable, Equatable {
    public var dq = ErrorStats()
    public var dk = ErrorStats()
    public var dv = ErrorStats()
    /// Query rows and key rows compared.
    public var queryRows = 0
    public var keyRows = 0

    public init() {}

    /// The largest absolute error of the three.
    public var maxAbs: Double { [dq.maxAbs, dk.maxAbs, dv.maxAbs].reduce(0) { !($1 <= $0) ? $1 : $0 } }

    public var packed: [Double] { dq.packed + dk.packed + dv.packed + [Double(queryRows), Double(keyRows)] }
    public init(packed p: [Double]) {
        dq = ErrorStats(packed: p[0 ..< 4])
        dk = ErrorStats(packed: p[4 ..< 8])
        dv = ErrorStats(packed: p[8 ..< 12])
        (queryRows, keyRows) = (Int(p[12]), Int(p[13]))
    }
    public static let packedCount = 14
}

extension ErrorStats {
    /// Compares rows `rows` (local indices) of `actual` ([rows, heads, headDim]) with `expected`,
    /// whose rows are indexed 0..<rows.count; `positions` are the rows' global positions.
    public static func compare(
        _ actual: [Float], rows: [Int], positions: [Int], heads: Int, headDim: Int,
        expected: (Int) -> Double
    ) -> ErrorStats {
        var stats = ErrorStats()
        var scale = 0.0
        let width = heads * headDim
        for (i, row) in rows.enumerated() {
            for e in 0 ..< width {
                let want = expected(i * width + e)
                let diff = ResultErrors.difference(Double(actual[row * width + e]), want)
                scale = max(scale, abs(want))
                if !(diff <= stats.maxAbs) || stats.token < 0 { (stats.maxAbs, stats.token, stats.head) = (diff, positions[i], e / headDim) }
            }
        }
        stats.maxRel = scale > 0 ? stats.maxAbs / scale : stats.maxAbs
        return stats
    }
}
