// The backward kernel (LocalAttentionBackward) against the float64 reference backward, over the
// forward's grid: odd token counts, head dims 32..128, MHA/GQA/MQA, every mask, small tiles and
// two threads. Tolerances as the forward's: at most `Tolerance.factor` times the error of a naive
// float32 backward of the same problem. The reference itself is checked against central finite
// differences of the float64 forward on a tiny case.

import Foundation
import Testing

@testable import AttentionCore

/// The backward as a first course writes it: plain loops, Float accumulators, P from a two-pass softmax.
enum NaiveFloatBackward {
    static func compute(_ problem: Problem, outputGrad dO: TokenTensor) -> (dq: [Float], dk: [Float], dv: [Float]) {
        let forward = problem.naive()
        let (q, k, v, shape, mask) = (problem.q, problem.k, problem.v, problem.shape, problem.mask)
        let (nq, nk, heads, kvHeads, d) = (q.tokens, k.tokens, shape.heads, shape.kvHeads, shape.headDim)
        var dq = [Float](repeating: 0, count: nq * heads * d)
        var dk = [Float](repeating: 0, count: nk * kvHeads * d), dv = dk
        for h in 0 ..< heads {
            let g = shape.kvHead(of: h)
            for i in 0 ..< nq {
                let lse = forward.lse[h * nq + i]
                guard lse > -.infinity else { continue }
                var delta: Float = 0
                for x in 0 ..< d { delta += dO[i, h, x] * forward.output[(i * heads + h) * d + x] }
                for j in 0 ..< nk where mask.allows(query: problem.queryPositions[i], key: problem.keyPositions[j], head: h) {
                    var dot: Float = 0, dp: Float = 0
                    for x in 0 ..< d {
                        dot += q[i, h, x] * k[j, g, x]
                        dp += dO[i, h, x] * v[j, g, x]
                    }
                    let p = exp(dot * shape.scale - lse)
                    let ds = p * (dp - delta)
                    for x in 0 ..< d {
                        dv[(j * kvHeads + g) * d + x] += p * dO[i, h, x]
                        dq[(i * heads + h) * d + x] += shape.scale * ds * k[j, g, x]
                        dk[(j * kvHeads + g) * d + x] += shape.scale * ds * q[i, h, x]
                    }
                }
            }
        }
        return (dq, dk, dv)
    }
}

struct BackwardCase: Sendable, CustomTestStringConvertible {
    let tokens: Int
    let heads: Int
    let kvHeads: Int
    let headDim: Int
    let mask: AttentionMask
    var testDescription: String { "T=\(tokens) h=\(heads)/\(kvHeads) d=\(headDim) \(mask)" }

    static let grid: [BackwardCase] = [1, 7, 129].flatMap { tokens in
        KernelCase.headConfigs.flatMap { heads, kvHeads in
            KernelCase.headDims.flatMap { headDim in
                [AttentionMask.none, .causal].map { BackwardCase(tokens: tokens, heads: heads, kvHeads: kvHeads, headDim: headDim, mask: $0) }
            }
        }
    }

    static let masks: [BackwardCase] = [
        BackwardCase(tokens: 300, heads: 4, kvHeads: 2, headDim: 64, mask: .window(37)),
        BackwardCase(tokens: 300, heads: 8, kvHeads: 2, headDim: 32, mask: .s2(try! S2Pattern(block: 16, local: 2, stride: 4))),
        BackwardCase(tokens: 600, heads: 4, kvHeads: 1, headDim: 128, mask: .causal),
        BackwardCase(tokens: 555, heads: 8, kvHeads: 2, headDim: 80, mask: .none),
    ]
}

@Suite("Backward kernel against the float64 reference")
struct BackwardTests {
    static func outputGrad(_ problem: Problem, seed: UInt64 = 11) -> TokenTensor {
        SyntheticInput.tensor(.query, seed: seed, heads: problem.shape.heads, headDim: problem.shape.headDim, rows: [0 ..< problem.q.tokens])
    }

    func check(_ c: BackwardCase) throws {
        let problem = try Problem(tokens: c.tokens, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, mask: c.mask)
        let dO = Self.outputGrad(problem)
        let reference = ReferenceBackward.compute(
            q: problem.q, queryPositions: problem.queryPositions, k: problem.k, v: problem.v,
            keyPositions: problem.keyPositions, outputGrad: dO, shape: problem.shape, mask: problem.mask)
        let naive = NaiveFloatBackward.compute(problem, outputGrad: dO)
        let naiveErrors = [maxAbsError(naive.dq, reference.dq), maxAbsError(naive.dk, reference.dk), maxAbsError(naive.dv, reference.dv)]
        // The yardstick must itself be sane, or a broken reference would widen every tolerance.
        #expect(naiveErrors.allSatisfy { $0 < 1e-4 }, "naive float32 backward against float64: \(naiveErrors)")
        let forwardKernel = LocalAttention(shape: problem.shape, mask: problem.mask)
        let forward = forwardKernel.attention(q: problem.q, k: problem.k, v: problem.v)
        for (tiling, threads, valueProduct) in kernelConfigurations where valueProduct == nil {  // the backward has no P·V choice
            let kernel = LocalAttentionBackward(shape: problem.shape, mask: problem.mask, tiling: tiling, threads: threads)
            let g = kernel.gradients(q: problem.q, k: problem.k, v: problem.v, forward: forward, outputGrad: dO)
            let errors = [maxAbsError(g.dq.values, reference.dq), maxAbsError(g.dk.values, reference.dk), maxAbsError(g.dv.values, reference.dv)]
            for (name, (error, naiveError)) in zip(["dQ", "dK", "dV"], zip(errors, naiveErrors)) {
                let tolerance = Tolerance.factor * naiveError + Tolerance.floor
                #expect(error <= tolerance, "\(c.testDescription), tiles \(tiling.queryTile)x\(tiling.keyBlock), \(threads) thread(s): \(name) error \(error) above \(tolerance)")
            }
        }
    }

    @Test("every shape up to 129 tokens", arguments: BackwardCase.grid)
    func grid(_ c: BackwardCase) throws { try check(c) }

    @Test("window, S2, longer sequences", arguments: BackwardCase.masks)
    func masks(_ c: BackwardCase) throws { try check(c) }

    @Test("the float64 reference agrees with central finite differences of the float64 forward")
    func finiteDifferences() throws {
        for mask in [AttentionMask.none, .causal] {
            let problem = try Problem(tokens: 5, heads: 2, kvHeads: 1, headDim: 4, mask: mask)
            let dO = Self.outputGrad(problem)
            let gradients = ReferenceBackward.compute(
                q: problem.q, queryPositions: problem.queryPositions, k: problem.k, v: problem.v,
                keyPositions: problem.keyPositions, outputGrad: dO, shape: problem.shape, mask: mask)
            // f = Σ dO ∘ O, whose gradient is what the backward computes.
            func f(_ p: Problem) -> Double {
                let o = p.reference().output
                return zip(o, dO.values).reduce(0) { $0 + $1.0 * Double($1.1) }
            }
            let epsilon: Float = 1.0 / 1024  // exact in float at these magnitudes
            let largest = (gradients.dq + gradients.dk + gradients.dv).map(abs).max() ?? 1
            for (tensor, analytic) in [(0, gradients.dq), (1, gradients.dk), (2, gradients.dv)] {
                for index in 0 ..< analytic.count {
                    var plus = problem, minus = problem
                    switch tensor {
                    case 0: plus.q.values[index] += epsilon; minus.q.values[index] -= epsilon
                    case 1: plus.k.values[index] += epsilon; minus.k.values[index] -= epsilon
                    default: plus.v.values[index] += epsilon; minus.v.values[index] -= epsilon
                    }
                    let numeric = (f(plus) - f(minus)) / (2 * Double(epsilon))
                    #expect(
                        abs(numeric - analytic[index]) <= 1e-5 * largest + 1e-7,
                        "\(mask) tensor \(tensor) index \(index): finite difference \(numeric), analytic \(analytic[index])")
                }
            }
        }
    }

    @Test("rows that see no key get no gradient, and the kernel matches its GQA sum over heads")
    func emptyRowsAndGQA() throws {
        // Window 1 over queries 3..<8 and keys 5..<10: rows 3 and 4 see nothing.
        let problem = try Problem(heads: 4, kvHeads: 1, headDim: 32, mask: .window(1), queryRanges: [3 ..< 8], keyRanges: [5 ..< 10])
        let dO = Self.outputGrad(problem)
        let forward = problem.kernel(tiling: KernelTiling(queryTile: 4, keyBlock: 8))
        let kernel = LocalAttentionBackward(shape: problem.shape, mask: problem.mask, tiling: KernelTiling(queryTile: 4, keyBlock: 8))
        let accumulator = forward.output.withUnsafeBufferPointer { o in
            dO.values.withUnsafeBufferPointer { g in
                forward.lse.withUnsafeBufferPointer { l in
                    GradientAccumulator(rows: 5, heads: 4, headDim: 32, output: o.baseAddress!, outputGrad: g.baseAddress!, lse: l.baseAddress!)
                }
            }
        }
        var dk = [Float](repeating: 0, count: 5 * 32), dv = dk, dq = [Float](repeating: 0, count: 5 * 4 * 32)
        problem.q.values.withUnsafeBufferPointer { qb in
            dO.values.withUnsafeBufferPointer { gb in
                problem.k.values.withUnsafeBufferPointer { kb in
                    problem.v.values.withUnsafeBufferPointer { vb in
                        kernel.accumulate(
                            queries: qb.baseAddress!, outputGrad: gb.baseAddress!, querySegment: ShardSegment(positions: 3 ..< 8, localRow: 0),
                            keys: kb.baseAddress!, values: vb.baseAddress!, keySegment: ShardSegment(positions: 5 ..< 10, localRow: 0),
                            into: accumulator, keyGrad: &dk, valueGrad: &dv)
                    }
                }
            }
        }
        accumulator.finish(dq: &dq)
        #expect(dq[0 ..< 2 * 4 * 32].allSatisfy { $0 == 0 }, "rows 3 and 4 see no key")
        let reference = ReferenceBackward.compute(
            q: problem.q, queryPositions: problem.queryPositions, k: problem.k, v: problem.v,
            keyPositions: problem.keyPositions, outputGrad: dO, shape: problem.shape, mask: problem.mask)
        #expect(maxAbsError(dq, reference.dq) < 1e-5 && maxAbsError(dk, reference.dk) < 1e-5 && maxAbsError(dv, reference.dv) < 1e-5)
        #expect(kernel.computedFlops > 0)
    }

    @Test("thread count does not change dK and dV bits")
    func threadsDeterministicForKeys() throws {
        let problem = try Problem(tokens: 203, heads: 8, kvHeads: 2, headDim: 64, mask: .causal)
        let dO = Self.outputGrad(problem)
        let forward = LocalAttention(shape: problem.shape, mask: .causal).attention(q: problem.q, k: problem.k, v: problem.v)
        let tiling = KernelTiling(queryTile: 16, keyBlock: 32)
        let one = LocalAttentionBackward(shape: problem.shape, mask: .causal, tiling: tiling)
            .gradients(q: problem.q, k: problem.k, v: problem.v, forward: forward, outputGrad: dO)
        for threads in [2, 3] {
            let many = LocalAttentionBackward(shape: problem.shape, mask: .causal, tiling: tiling, threads: threads)
                .gradients(q: problem.q, k: problem.k, v: problem.v, forward: forward, outputGrad: dO)
            // dK/dV of a block are summed by one thread in the same order; dQ sums per-thread parts.
            #expect(many.dk.values == one.dk.values && many.dv.values == one.dv.values, "\(threads) threads")
            #expect(maxAbsError(many.dq.values, one.dq.values) < 1e-5, "\(threads) threads")
        }
    }

    @Test("the reference's gradients over a subset of keys or queries are those rows of the whole problem's")
    func referenceSubsets() throws {
        let problem = try Problem(tokens: 23, heads: 4, kvHeads: 2, headDim: 8, mask: .causal)
        let dO = Self.outputGrad(problem)
        let (q, k, v, shape) = (problem.q, problem.k, problem.v, problem.shape)
        let whole = ReferenceBackward.compute(
            q: q, queryPositions: problem.queryPositions, k: k, v: v, keyPositions: problem.keyPositions,
            outputGrad: dO, shape: shape, mask: .causal)
        let all = Array(0 ..< 23)
        let (lse, delta) = ReferenceBackward.statistics(q: q, queryPositions: all, k: k, v: v, keyPositions: all, outputGrad: dO, shape: shape, mask: .causal)
        func rows(_ t: TokenTensor, _ positions: [Int]) -> TokenTensor {
            TokenTensor(
                tokens: positions.count, heads: t.heads, headDim: t.headDim,
                values: positions.flatMap { t.values[$0 * t.rowWidth ..< ($0 + 1) * t.rowWidth] })
        }
        let keys = [0, 5, 22], queries = [1, 17]
        let forKeys = ReferenceBackward.gradients(
            q: q, queryPositions: all, lse: lse, delta: delta, k: rows(k, keys), v: rows(v, keys),
            keyPositions: keys, outputGrad: dO, shape: shape, mask: .causal)
        let width = shape.kvRowWidth
        for (i, key) in keys.enumerated() {
            for e in 0 ..< width {
                #expect(abs(forKeys.dk[i * width + e] - whole.dk[key * width + e]) < 1e-12)
                #expect(abs(forKeys.dv[i * width + e] - whole.dv[key * width + e]) < 1e-12)
            }
        }
        let queryStatistics = { (values: [Double]) in (0 ..< 4).flatMap { h in queries.map { values[h * 23 + $0] } } }
        let forQueries = ReferenceBackward.gradients(
            q: rows(q, queries), queryPositions: queries, lse: queryStatistics(lse), delta: queryStatistics(delta),
            k: k, v: v, keyPositions: all, outputGrad: rows(dO, queries), shape: shape, mask: .causal)
        for (i, query) in queries.enumerated() {
            for e in 0 ..< shape.queryRowWidth {
                #expect(abs(forQueries.dq[i * shape.queryRowWidth + e] - whole.dq[query * shape.queryRowWidth + e]) < 1e-12)
            }
        }
    }

    @Test("an accumulator made from carried (lse, D) statistics equals one made from O and dO")
    func statisticsInitializer() throws {
        let problem = try Problem(tokens: 9, heads: 2, kvHeads: 1, headDim: 16, mask: .none)
        let dO = Self.outputGrad(problem)
        let forward = problem.kernel()
        let (direct, carried) = forward.output.withUnsafeBufferPointer { o in
            dO.values.withUnsafeBufferPointer { g in
                forward.lse.withUnsafeBufferPointer { l in
                    (
                        GradientAccumulator(rows: 9, heads: 2, headDim: 16, output: o.baseAddress!, outputGrad: g.baseAddress!, lse: l.baseAddress!),
                        GradientAccumulator(
                            rows: 9, heads: 2, headDim: 16,
                            statistics: GradientAccumulator.rowStatistics(
                                rows: 9, heads: 2, headDim: 16, output: o.baseAddress!, outputGrad: g.baseAddress!, lse: l.baseAddress!, lseStride: 9))
                    )
                }
            }
        }
        #expect(Array(direct.lse) == Array(carried.lse) && Array(direct.delta) == Array(carried.delta))
        #expect(Array(direct.lse) == forward.lse)
    }
}
