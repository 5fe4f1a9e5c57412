// Shared pieces of the AttentionCore tests: a naive float32 attention (the yardstick for
// tolerances, flash-attention style), error measures against the float64 reference, synthetic
// problems, and temporary files. Nothing here is fast; all of it is meant to be obviously right.

import AttentionCore
import Foundation
import Testing

/// One attention problem: inputs with their global positions.
struct Problem {
    let shape: AttentionShape
    let mask: AttentionMask
    var q: TokenTensor
    var k: TokenTensor
    var v: TokenTensor
    let queryPositions: [Int]
    let keyPositions: [Int]

    /// Synthetic rows `queryRanges` of Q and `keyRanges` of K/V (global positions, stacked in order).
    init(
        heads: Int, kvHeads: Int, headDim: Int, mask: AttentionMask, scale: Float? = nil, seed: UInt64 = 7,
        queryRanges: [Range<Int>], keyRanges: [Range<Int>]
    ) throws {
        shape = try AttentionShape(heads: heads, kvHeads: kvHeads, headDim: headDim, scale: scale)
        self.mask = mask
        q = SyntheticInput.tensor(.query, seed: seed, heads: heads, headDim: headDim, rows: queryRanges)
        k = SyntheticInput.tensor(.key, seed: seed, heads: kvHeads, headDim: headDim, rows: keyRanges)
        v = SyntheticInput.tensor(.value, seed: seed, heads: kvHeads, headDim: headDim, rows: keyRanges)
        queryPositions = queryRanges.flatMap { Array($0) }
        keyPositions = keyRanges.flatMap { Array($0) }
    }

    /// Self-attention over tokens 0..<tokens.
    init(tokens: Int, heads: Int, kvHeads: Int, headDim: Int, mask: AttentionMask, scale: Float? = nil, seed: UInt64 = 7) throws {
        try self.init(
            heads: heads, kvHeads: kvHeads, headDim: headDim, mask: mask, scale: scale, seed: seed,
            queryRanges: [0 ..< tokens], keyRanges: [0 ..< tokens])
    }

    func reference() -> ReferenceAttention.Result {
        ReferenceAttention.compute(
            q: q, queryPositions: queryPositions, k: k, v: v, keyPositions: keyPositions,
            shape: shape, mask: mask)
    }

    func naive() -> PartialResult {
        NaiveFloatAttention.compute(
            q: q, queryPositions: queryPositions, k: k, v: v, keyPositions: keyPositions,
            shape: shape, mask: mask)
    }

    /// The naive float32 error against `reference`: the yardstick tolerances are built from.
    /// It must itself be small, or a broken reference would widen every tolerance until any kernel
    /// passed: float32 can do far better than these bounds (measured: O about 1e-7, lse about 1e-6,
    /// and about 5e-5 / 2e-4 when scores run into the hundreds).
    func naiveError(
        against reference: ReferenceAttention.Result,
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> ResultError {
        let error = ResultError(naive(), reference)
        let lseScale = max(1, reference.lse.lazy.filter(\.isFinite).map(abs).max() ?? 1)
        #expect(
            error.output <= 2e-4 && error.lse <= 1e-5 * lseScale,
            "naive float32 attention disagrees with the float64 reference: \(error)", sourceLocation: sourceLocation)
        return error
    }

    /// The fused kernel over query segments and key segments (each stored back to back, as a shard
    /// holds them), folding the key segments in `keyOrder` (indices into the key segments).
    func kernel(
        tiling: KernelTiling = KernelTiling(), threads: Int = 1, valueProduct: ValueProduct? = nil, products: KernelProducts = .float32,
        querySegments: [ShardSegment]? = nil, keySegments: [ShardSegment]? = nil,
        keyOrder: [Int]? = nil
    ) -> PartialResult {
        let attention = LocalAttention(shape: shape, mask: mask, tiling: tiling, threads: threads, valueProduct: valueProduct, products: products)
        let accumulator = AttentionAccumulator(rows: q.tokens, heads: shape.heads, headDim: shape.headDim)
        let querySegments = querySegments ?? Self.segments(of: queryPositions)
        let keySegments = keySegments ?? Self.segments(of: keyPositions)
        q.values.withUnsafeBufferPointer { qb in
            k.values.withUnsafeBufferPointer { kb in
                v.values.withUnsafeBufferPointer { vb in
                    for index in keyOrder ?? Array(keySegments.indices) {
                        for querySegment in querySegments {
                            attention.accumulate(
                                queries: qb.baseAddress!, querySegment: querySegment,
                                keys: kb.baseAddress!, values: vb.baseAddress!,
                                keySegment: keySegments[index], into: accumulator)
                        }
                    }
                }
            }
        }
        return accumulator.result()
    }

    /// Maximal runs of consecutive positions, as shard segments.
    static func segments(of positions: [Int]) -> [ShardSegment] {
        var segments: [ShardSegment] = []
        var start = 0
        while start < positions.count {
            var end = start + 1
            while end < positions.count, positions[end] == positions[end - 1] + 1 { end += 1 }
            segments.append(ShardSegment(positions: positions[start] ..< positions[end - 1] + 1, localRow: start))
            start = end
        }
        return segments
    }
}

/// Attention as a first course writes it: plain loops, Float accumulators, a two-pass softmax.
/// Its error against the float64 reference is what a float32 implementation can be expected to achieve.
enum NaiveFloatAttention {
    static func compute(
        q: TokenTensor, queryPositions: [Int], k: TokenTensor, v: TokenTensor, keyPositions: [Int],
        shape: AttentionShape, mask: AttentionMask
    ) -> PartialResult {
        let (nq, nk, heads, d) = (q.tokens, k.tokens, shape.heads, shape.headDim)
        var output = [Float](repeating: 0, count: nq * heads * d)
        var lse = [Float](repeating: -.infinity, count: heads * nq)
        var scores = [Float](repeating: 0, count: nk)
        for h in 0 ..< heads {
            let g = shape.kvHead(of: h)
            for i in 0 ..< nq {
                var best = -Float.infinity
                for j in 0 ..< nk {
                    guard mask.allows(query: queryPositions[i], key: keyPositions[j], head: h) else {
                        scores[j] = -.infinity
                        continue
                    }
                    var dot: Float = 0
                    for x in 0 ..< d { dot += q[i, h, x] * k[j, g, x] }
                    scores[j] = dot * shape.scale
                    best = max(best, scores[j])
                }
                guard best > -.infinity else { continue }
                var total: Float = 0
                for j in 0 ..< nk where scores[j] > -.infinity {
                    let p = exp(scores[j] - best)
                    total += p
                    for x in 0 ..< d { output[(i * heads + h) * d + x] += p * v[j, g, x] }
                }
                for x in 0 ..< d { output[(i * heads + h) * d + x] /= total }
                lse[h * nq + i] = best + log(total)
            }
        }
        return PartialResult(rows: nq, heads: heads, headDim: d, output: output, lse: lse)
    }
}

/// Largest |a - b|; two equal infinities (a row that sees no key) count as 0, anything else
/// non-finite (NaN, one side infinite) as infinity.
func maxAbsError(_ a: [Float], _ b: [Double]) -> Double {
    precondition(a.count == b.count)
    var worst = 0.0
    for (x, y) in zip(a, b) {
        if Double(x) == y { continue }
        let difference = abs(Double(x) - y)
        guard difference.isFinite else { return .infinity }
        worst = max(worst, difference)
    }
    return worst
}

func maxAbsError(_ a: [Float], _ b: [Float]) -> Double { maxAbsError(a, b.map(Double.init)) }

/// Errors of a float32 result against the float64 reference.
struct ResultError: CustomStringConvertible {
    var output: Double
    var lse: Double

    init(_ result: PartialResult, _ reference: ReferenceAttention.Result) {
        output = maxAbsError(result.output, reference.output)
        lse = maxAbsError(result.lse, reference.lse)
    }

    init(_ result: PartialResult, _ other: PartialResult) {
        output = maxAbsError(result.output, other.output)
        lse = maxAbsError(result.lse, other.lse)
    }

    var description: String { "max |ΔO| \(output), max |Δlse| \(lse)" }
}

/// The flash-attention acceptance rule: at most `factor` times the naive float32 error, plus a floor
/// for cases where the naive result happens to be (nearly) exact.
struct Tolerance {
    static let factor = 4.0
    static let floor = 1e-6

    let output: Double
    let lse: Double

    init(naive: ResultError, factor: Double = Tolerance.factor) {
        output = factor * naive.output + Tolerance.floor
        lse = factor * naive.lse + Tolerance.floor
    }
}

/// Expects `result` to be within `tolerance` of the float64 reference, with no NaN anywhere.
func expectClose(
    _ result: PartialResult, to reference: ReferenceAttention.Result, within tolerance: Tolerance,
    _ what: @autoclosure () -> String, sourceLocation: SourceLocation = #_sourceLocation
) {
    let error = ResultError(result, reference)
    #expect(
        !result.output.contains { $0.isNaN } && !result.lse.contains { $0.isNaN },
        "\(what()): NaN in the result", sourceLocation: sourceLocation)
    #expect(
        error.output <= tolerance.output,
        "\(what()): O error \(error.output) above \(tolerance.output)", sourceLocation: sourceLocation)
    #expect(
        error.lse <= tolerance.lse,
        "\(what()): lse error \(error.lse) above \(tolerance.lse)", sourceLocation: sourceLocation)
}

/// The bits of a partial result: for checks that must be exact, -0.0 and NaN payloads included.
func bits(_ result: PartialResult) -> [UInt32] {
    result.output.map(\.bitPattern) + result.lse.map(\.bitPattern)
}

/// Reference rows `rows` (query indices) of a whole-sequence reference result.
func referenceRows(
    _ reference: ReferenceAttention.Result, rows: [Int], totalRows: Int, heads: Int, headDim: Int
)
    -> ReferenceAttention.Result
{
    var copy = reference
    copy.output = rows.flatMap { r in reference.output[r * heads * headDim ..< (r + 1) * heads * headDim] }
    copy.lse = (0 ..< heads).flatMap { h in rows.map { r in reference.lse[h * totalRows + r] } }
    return copy
}

/// A unique path in the temporary directory, removed when `body` returns.
func withTemporaryPath<T>(_ suffix: String = ".npy", _ body: (String) throws -> T) throws -> T {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("seqpar-test-\(UUID().uuidString)\(suffix)")
    defer { try? FileManager.default.removeItem(at: url) }
    return try body(url.path)
}
