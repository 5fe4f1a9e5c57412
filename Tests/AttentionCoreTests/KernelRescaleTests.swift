// The kernel's lazy running max against the float64 reference: scores that rise from key block to
// key block by less than the rescale threshold (P is kept against a stale max), by more (the row
// is rescaled), and by more than the recompute threshold (the row's scores are computed again),
// and falling scores. Then non-finite scores: NaN inputs and a scale that overflows float32 make
// the row NaN, counted by the kernel; never "this query sees no key".

import Testing

@testable import AttentionCore

@Suite("Kernel: lazy max, rescaled and recomputed rows, non-finite scores")
struct KernelRescaleTests {
    /// Q rows near 1 and K rows set so that query·key·scale ≈ `score(key)` plus noise.
    static func problem(tokens: Int, headDim: Int, mask: AttentionMask, score: (Int) -> Float) throws -> Problem {
        var problem = try Problem(tokens: tokens, heads: 4, kvHeads: 2, headDim: headDim, mask: mask)
        let (q, k) = (problem.q, problem.k)
        for i in 0 ..< q.values.count { problem.q.values[i] = 1 + 0.1 * q.values[i] }
        let base = 1 / (Float(headDim) * problem.shape.scale)
        for j in 0 ..< tokens {
            for g in 0 ..< 2 {
                for c in 0 ..< headDim { problem.k[j, g, c] = score(j) * base + 0.1 * k[j, g, c] }
            }
        }
        return problem
    }

    struct Case: Sendable, CustomTestStringConvertible {
        let step: Float
        let mask: AttentionMask
        var testDescription: String { "scores change by \(step) per 32-key block, \(mask)" }
    }

    static let cases: [Case] = [4, 12, 40, 100, -30].flatMap { step in [AttentionMask.none, .causal].map { Case(step: step, mask: $0) } }

    @Test("rising and falling scores", arguments: cases)
    func steps(_ c: Case) throws {
        let problem = try Self.problem(tokens: 200, headDim: 32, mask: c.mask) { c.step * Float($0 / 32) }
        let reference = problem.reference()
        let tolerance = Tolerance(naive: problem.naiveError(against: reference))
        for (tiling, threads) in [
            (KernelTiling(queryTile: 16, keyBlock: 32), 1), (KernelTiling(queryTile: 7, keyBlock: 32), 2),
            (KernelTiling(), 1),
        ] {
            let result = problem.kernel(tiling: tiling, threads: threads)
            expectClose(result, to: reference, within: tolerance, "\(c.testDescription), tiles \(tiling.queryTile)x\(tiling.keyBlock)")
        }
    }

    @Test("one jump beyond exp's range mid-sequence, ragged blocks")
    func singleJump() throws {
        let problem = try Self.problem(tokens: 150, headDim: 64, mask: .causal) { $0 < 70 ? 0 : 90 }
        let reference = problem.reference()
        let tolerance = Tolerance(naive: problem.naiveError(against: reference))
        expectClose(problem.kernel(tiling: KernelTiling(queryTile: 9, keyBlock: 23)), to: reference, within: tolerance, "jump of 90 at key 70")
    }

    @Test("a kernel reused after recomputed, masked, NaN and ragged rows gives a fresh kernel's bits")
    func reuseCarriesNothingOver() throws {
        // The kernel's score tile carries each row's shift between blocks (its GEMM adds to it),
        // so whatever a call did, the next one must see exactly what a fresh kernel sees.
        let tiling = KernelTiling(queryTile: 9, keyBlock: 23)
        var first = try Self.problem(tokens: 150, headDim: 64, mask: .causal) { $0 < 70 ? 0 : 90 }
        first.q[41, 2, 7] = .nan
        let second = try Self.problem(tokens: 131, headDim: 64, mask: .causal) { Float($0 % 5) }
        let reused = LocalAttention(shape: first.shape, mask: .causal, tiling: tiling)
        let dirty = reused.attention(q: first.q, k: first.k, v: first.v)
        #expect(dirty.lse.contains { $0.isNaN } && reused.nonFiniteScoreRows >= 1)
        let fresh = LocalAttention(shape: second.shape, mask: .causal, tiling: tiling)
        let (again, once) = (reused.attention(q: second.q, k: second.k, v: second.v), fresh.attention(q: second.q, k: second.k, v: second.v))
        let differing = zip(bits(again), bits(once)).filter { $0 != $1 }.count
        #expect(differing == 0, "\(differing) output and LSE values differ from a fresh kernel's")
    }

    @Test("a NaN in Q makes its rows NaN, not empty, and is counted")
    func nanQuery() throws {
        var problem = try Problem(tokens: 100, heads: 4, kvHeads: 2, headDim: 32, mask: .causal)
        problem.q[37, 1, 5] = .nan
        let kernel = LocalAttention(shape: problem.shape, mask: .causal, tiling: KernelTiling(queryTile: 16, keyBlock: 32))
        let result = kernel.attention(q: problem.q, k: problem.k, v: problem.v)
        for t in 0 ..< 100 {
            for h in 0 ..< 4 {
                let row = result.output[(t * 4 + h) * 32 ..< (t * 4 + h + 1) * 32]
                let bad = t == 37 && h == 1
                #expect(row.allSatisfy { $0.isNaN } == bad && row.contains { $0.isNaN } == bad, "token \(t) head \(h)")
                #expect(result.lse[h * 100 + t].isNaN == bad, "lse of token \(t) head \(h): \(result.lse[h * 100 + t])")
            }
        }
        #expect(kernel.nonFiniteScoreRows >= 1)
    }

    @Test("a scale that overflows float32 gives NaN rows, never 'no key'", arguments: [Float(1e38), 3e37])
    func overflowingScale(_ scale: Float) throws {
        let problem = try Problem(tokens: 40, heads: 2, kvHeads: 1, headDim: 32, mask: .causal, scale: scale)
        let kernel = LocalAttention(shape: problem.shape, mask: .causal, tiling: KernelTiling(queryTile: 8, keyBlock: 16))
        let result = kernel.attention(q: problem.q, k: problem.k, v: problem.v)
        // Row 0 sees one key: its softmax is exactly 1 whatever the score, unless the score is
        // infinite. No row may claim to see no key.
        #expect(!result.lse.contains(-.infinity), "a row reported no visible key: \(result.lse.prefix(8))")
        // 1e38 overflows some scores to ±inf; 3e37 keeps them finite, and the result is then exact.
        let overflowed = result.lse.contains { $0.isNaN }
        #expect(overflowed == (scale > 1e38 / 2), "NaN rows: \(overflowed)")
        #expect((kernel.nonFiniteScoreRows > 0) == overflowed)
        if !overflowed { #expect(result.output.allSatisfy { $0.isFinite } && result.lse.allSatisfy { $0.isFinite }) }
    }

    @Test("rows the mask hides in a partial block stay empty: O = 0, lse = -inf, not NaN")
    func maskedRowsStayEmpty() throws {
        // Window 1: only the diagonal. Queries 3..<8 against keys 5..<10: rows 3 and 4 see nothing,
        // rows 5..<8 one key each, in one partial block.
        let problem = try Problem(heads: 2, kvHeads: 1, headDim: 32, mask: .window(1), queryRanges: [3 ..< 8], keyRanges: [5 ..< 10])
        let kernel = LocalAttention(shape: problem.shape, mask: .window(1), tiling: KernelTiling(queryTile: 8, keyBlock: 8))
        let accumulator = AttentionAccumulator(rows: 5, heads: 2, headDim: 32)
        problem.q.values.withUnsafeBufferPointer { qb in
            problem.k.values.withUnsafeBufferPointer { kb in
                problem.v.values.withUnsafeBufferPointer { vb in
                    kernel.accumulate(
                        queries: qb.baseAddress!, querySegment: ShardSegment(positions: 3 ..< 8, localRow: 0),
                        keys: kb.baseAddress!, values: vb.baseAddress!, keySegment: ShardSegment(positions: 5 ..< 10, localRow: 0),
                        into: accumulator)
                }
            }
        }
        let result = accumulator.result()
        let reference = problem.reference()
        expectClose(result, to: reference, within: Tolerance(naive: problem.naiveError(against: reference)), "window 1, partial block")
        for h in 0 ..< 2 {
            #expect(result.lse[h * 5] == -.infinity && result.lse[h * 5 + 1] == -.infinity && result.lse[h * 5 + 2].isFinite)
        }
        #expect(result.output[0 ..< 2 * 2 * 32].allSatisfy { $0 == 0 })
        #expect(kernel.nonFiniteScoreRows == 0)
    }
}
