// The merge of partial results (docs/DESIGN.md): exact up to rounding, commutative, associative, with
// (O = 0, lse = -inf) as its identity, and never NaN — the properties that let ring steps, head
// shards and ranks be folded in any order and an MPI reduction apply it.

import AttentionCore
import Foundation
import Testing

@Suite("Merging partial results")
struct MergeTests {
    /// Queries 0..<120 over keys 0..<240 (causal: later key parts are hidden from early rows, so
    /// partials include rows with lse = -inf), and the kernel's partial over each key part.
    struct Split {
        let problem: Problem
        let parts: [PartialResult]

        init(mask: AttentionMask, cuts: [Range<Int>]) throws {
            problem = try Problem(heads: 4, kvHeads: 2, headDim: 32, mask: mask, queryRanges: [0 ..< 120], keyRanges: [0 ..< 240])
            let attention = LocalAttention(shape: problem.shape, mask: mask, tiling: KernelTiling(queryTile: 16, keyBlock: 32))
            let problem = problem
            parts = cuts.map { cut in
                let accumulator = AttentionAccumulator(rows: 120, heads: 4, headDim: 32)
                problem.q.values.withUnsafeBufferPointer { q in
                    problem.k.values.withUnsafeBufferPointer { k in
                        problem.v.values.withUnsafeBufferPointer { v in
                            attention.accumulate(
                                queries: q.baseAddress!, querySegment: ShardSegment(positions: 0 ..< 120, localRow: 0),
                                keys: k.baseAddress!, values: v.baseAddress!,
                                keySegment: ShardSegment(positions: cut, localRow: cut.lowerBound), into: accumulator)
                        }
                    }
                }
                return accumulator.result()
            }
        }
    }

    static func expectNoNaN(_ result: PartialResult, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(
            !result.output.contains { $0.isNaN } && !result.lse.contains { $0.isNaN }, "NaN in \(what)",
            sourceLocation: sourceLocation)
    }

    @Test("two halves merged equal the whole", arguments: [AttentionMask.none, .causal])
    func halves(_ mask: AttentionMask) throws {
        let split = try Split(mask: mask, cuts: [0 ..< 100, 100 ..< 240])
        if mask == .causal { #expect(split.parts[1].lse.contains(-.infinity), "the test should include empty rows") }
        let reference = split.problem.reference()
        let tolerance = Tolerance(naive: split.problem.naiveError(against: reference))
        let merged = split.parts[0].merged(with: split.parts[1])
        Self.expectNoNaN(merged, "merged halves")
        expectClose(merged, to: reference, within: tolerance, "halves merged, \(mask)")
    }

    @Test("merge is commutative and associative", arguments: [AttentionMask.none, .causal])
    func orderDoesNotMatter(_ mask: AttentionMask) throws {
        let split = try Split(mask: mask, cuts: [0 ..< 50, 50 ..< 130, 130 ..< 240])
        let (a, b, c) = (split.parts[0], split.parts[1], split.parts[2])
        // Reordering changes only rounding: a few float32 ulps of values of order 1 (lse up to ~6).
        let rounding = 4e-6

        let ab = a.merged(with: b), ba = b.merged(with: a)
        let commuted = ResultError(ab, ba)
        #expect(commuted.output <= rounding && commuted.lse <= rounding, "a⊕b vs b⊕a: \(commuted)")

        let left = ab.merged(with: c), right = a.merged(with: b.merged(with: c))
        let associated = ResultError(left, right)
        #expect(associated.output <= rounding && associated.lse <= rounding, "(a⊕b)⊕c vs a⊕(b⊕c): \(associated)")

        let reference = split.problem.reference()
        let tolerance = Tolerance(naive: split.problem.naiveError(against: reference))
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            var folded = PartialResult(emptyRows: 120, heads: 4, headDim: 32)
            for index in order { folded.merge(split.parts[index]) }
            Self.expectNoNaN(folded, "order \(order)")
            expectClose(folded, to: reference, within: tolerance, "three parts merged in order \(order), \(mask)")
            let difference = ResultError(folded, left)
            #expect(difference.output <= rounding && difference.lse <= rounding, "order \(order): \(difference)")
        }
    }

    @Test("the empty result is the identity, bit for bit, from either side")
    func identity() throws {
        let split = try Split(mask: .causal, cuts: [60 ..< 240])
        let x = split.parts[0]
        #expect(x.lse.contains(-.infinity) && x.lse.contains { $0.isFinite }, "the test should mix empty and full rows")
        let empty = PartialResult(emptyRows: 120, heads: 4, headDim: 32)
        #expect(bits(x.merged(with: empty)) == bits(x))
        #expect(bits(empty.merged(with: x)) == bits(x))
        #expect(empty.output.allSatisfy { $0 == 0 } && empty.lse.allSatisfy { $0 == -.infinity })
    }

    @Test("two empty results merge to an empty result, with no NaN")
    func emptyWithEmpty() {
        let empty = PartialResult(emptyRows: 5, heads: 3, headDim: 8)
        let merged = empty.merged(with: empty)
        #expect(merged.output.allSatisfy { $0 == 0 } && merged.lse.allSatisfy { $0 == -.infinity })
        #expect(bits(merged) == bits(empty))

        var o1 = [Float](repeating: 0, count: 8), o2 = [Float](repeating: 0, count: 8)
        var l1 = -Float.infinity
        o1.withUnsafeMutableBufferPointer { p1 in
            o2.withUnsafeMutableBufferPointer { p2 in
                OnlineSoftmax.merge(into: p1.baseAddress!, lse: &l1, from: p2.baseAddress!, lse: -.infinity, count: 8)
            }
        }
        #expect(l1 == -.infinity && o1.allSatisfy { $0 == 0 })
    }

    @Test("row merge matches the formula in float64, including far-apart lse values")
    func rowMerge() {
        let pairs: [(Float, Float)] = [(0, 0), (1.5, -2), (-3, 7), (80, -80), (-80, 80), (30, 30.000002), (-1e4, -1e4 + 5), (2, -.infinity), (-.infinity, 2)]
        for (l1, l2) in pairs {
            let o1: [Float] = (0 ..< 19).map { Float($0) / 7 - 1 }
            let o2: [Float] = (0 ..< 19).map { 1 - Float($0 * $0) / 300 }
            var merged = o1, lse = l1
            merged.withUnsafeMutableBufferPointer { m in
                o2.withUnsafeBufferPointer { p in OnlineSoftmax.merge(into: m.baseAddress!, lse: &lse, from: p.baseAddress!, lse: l2, count: 19) }
            }
            let (d1, d2) = (Double(l1), Double(l2))
            let hi = max(d1, d2)
            let l = hi + log(exp(d1 - hi) + exp(d2 - hi))
            let expected = zip(o1, o2).map { exp(d1 - l) * Double($0) + exp(d2 - l) * Double($1) }
            #expect(abs(Double(lse) - l) <= 4 * Double(Float(l).ulp), "lse for (\(l1), \(l2)): \(lse) vs \(l)")
            // The weights exp(l_i - l) inherit the float32 rounding of l itself: a few ulp of l.
            let bound = 1e-6 + 8 * Double(Float(l).ulp)
            #expect(maxAbsError(merged, expected) <= bound, "O for (\(l1), \(l2))")
            #expect(OnlineSoftmax.combinedLSE(l1, l2) == OnlineSoftmax.combinedLSE(l2, l1))
        }
    }

    @Test("combinedLSE with -inf", arguments: [Float(0), 1, -1, 3.25, -87.5, 1e6, -1e6, .leastNonzeroMagnitude])
    func combinedLSE(_ x: Float) {
        #expect(OnlineSoftmax.combinedLSE(-.infinity, x) == x)
        #expect(OnlineSoftmax.combinedLSE(x, -.infinity) == x)
        #expect(OnlineSoftmax.combinedLSE(-.infinity, -.infinity) == -.infinity)
        let doubled = OnlineSoftmax.combinedLSE(x, x)
        #expect(!doubled.isNaN && abs(Double(doubled) - (Double(x) + log(2.0))) <= 2 * Double(doubled.ulp))
    }
}
