// Folding K/V into an accumulator in pieces (what a ring step does) gives the same result as one
// call over all keys, in any order of the pieces; pieces on block boundaries in order give the
// same bits; and `reset` really returns the accumulator to "no keys seen".

import AttentionCore
import Testing

struct PiecesCase: Sendable, CustomTestStringConvertible {
    let mask: AttentionMask
    let order: [Int]
    let threads: Int
    var testDescription: String { "\(mask) order \(order) \(threads) thread(s)" }

    static let all: [PiecesCase] = [AttentionMask.none, .causal].flatMap { mask in
        [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]].flatMap { order in
            [1, 2].map { PiecesCase(mask: mask, order: order, threads: $0) }
        }
    }
}

@Suite("Accumulating keys in pieces")
struct AccumulationTests {
    /// Queries 150..<300 against keys 0..<300, cut unevenly (pieces smaller and larger than a key block).
    static let pieces = [0 ..< 37, 37 ..< 64, 64 ..< 200, 200 ..< 300]
    static let tiling = KernelTiling(queryTile: 16, keyBlock: 32)

    func problem(_ mask: AttentionMask) throws -> Problem {
        try Problem(heads: 8, kvHeads: 2, headDim: 64, mask: mask, queryRanges: [150 ..< 300], keyRanges: [0 ..< 300])
    }

    @Test("disjoint key segments, any order, equal one call", arguments: PiecesCase.all)
    func piecesInAnyOrder(_ c: PiecesCase) throws {
        let problem = try problem(c.mask)
        let reference = problem.reference()
        let naiveError = problem.naiveError(against: reference)
        let segments = Self.pieces.map { ShardSegment(positions: $0, localRow: $0.lowerBound) }
        let whole = problem.kernel(tiling: Self.tiling, threads: c.threads)
        let folded = problem.kernel(tiling: Self.tiling, threads: c.threads, keySegments: segments, keyOrder: c.order)
        expectClose(whole, to: reference, within: Tolerance(naive: naiveError), "one call")
        expectClose(folded, to: reference, within: Tolerance(naive: naiveError), "pieces \(c.order)")
        // Both are within float32 rounding of the reference, hence of each other.
        let difference = ResultError(folded, whole)
        let bound = Tolerance(naive: naiveError, factor: 2 * Tolerance.factor)
        #expect(difference.output <= bound.output && difference.lse <= bound.lse, "pieces vs one call: \(difference)")
    }

    @Test("pieces held in separate buffers (as a ring receives them)", arguments: [AttentionMask.none, .causal])
    func separateBuffers(_ mask: AttentionMask) throws {
        let problem = try problem(mask)
        let reference = problem.reference()
        let tolerance = Tolerance(naive: problem.naiveError(against: reference))
        let attention = LocalAttention(shape: problem.shape, mask: mask, tiling: Self.tiling)
        let accumulator = AttentionAccumulator(rows: problem.q.tokens, heads: 8, headDim: 64)
        for range in Self.pieces.reversed() {
            let k = problem.k.rows([range]), v = problem.v.rows([range])
            problem.q.values.withUnsafeBufferPointer { q in
                k.values.withUnsafeBufferPointer { kb in
                    v.values.withUnsafeBufferPointer { vb in
                        attention.accumulate(
                            queries: q.baseAddress!, querySegment: ShardSegment(positions: 150 ..< 300, localRow: 0),
                            keys: kb.baseAddress!, values: vb.baseAddress!,
                            keySegment: ShardSegment(positions: range, localRow: 0), into: accumulator)
                    }
                }
            }
        }
        expectClose(accumulator.result(), to: reference, within: tolerance, "separate buffers, \(mask)")
    }

    @Test("pieces on key-block boundaries, in order, give the same bits as one call", arguments: [AttentionMask.none, .causal])
    func blockAlignedPiecesAreExact(_ mask: AttentionMask) throws {
        // The kernel walks key blocks from the segment's start, so these pieces replay exactly the
        // block sequence of one call over the same storage.
        let problem = try problem(mask)
        let aligned = [0 ..< 64, 64 ..< 96, 96 ..< 224, 224 ..< 300]
        let segments = aligned.map { ShardSegment(positions: $0, localRow: $0.lowerBound) }
        let whole = problem.kernel(tiling: Self.tiling)
        let folded = problem.kernel(tiling: Self.tiling, keySegments: segments)
        #expect(bits(folded) == bits(whole))
    }

    @Test("query segments folded separately equal one query segment")
    func querySegments() throws {
        // Query rows are independent: splitting them only changes which tile a row lands in.
        let problem = try problem(.causal)
        let querySegments = [
            ShardSegment(positions: 150 ..< 151, localRow: 0),
            ShardSegment(positions: 151 ..< 190, localRow: 1),
            ShardSegment(positions: 190 ..< 300, localRow: 40),
        ]
        let reference = problem.reference()
        let tolerance = Tolerance(naive: problem.naiveError(against: reference))
        expectClose(
            problem.kernel(tiling: Self.tiling, querySegments: querySegments), to: reference, within: tolerance,
            "three query segments")
    }

    @Test("reset returns the accumulator to no keys seen")
    func reset() throws {
        let problem = try problem(.causal)
        let attention = LocalAttention(shape: problem.shape, mask: .causal, tiling: Self.tiling)
        let accumulator = AttentionAccumulator(rows: problem.q.tokens, heads: 8, headDim: 64)
        let empty = accumulator.result()
        #expect(bits(empty) == bits(PartialResult(emptyRows: problem.q.tokens, heads: 8, headDim: 64)))
        func fold() {
            problem.q.values.withUnsafeBufferPointer { q in
                problem.k.values.withUnsafeBufferPointer { k in
                    problem.v.values.withUnsafeBufferPointer { v in
                        attention.accumulate(
                            queries: q.baseAddress!, querySegment: ShardSegment(positions: 150 ..< 300, localRow: 0),
                            keys: k.baseAddress!, values: v.baseAddress!,
                            keySegment: ShardSegment(positions: 0 ..< 300, localRow: 0), into: accumulator)
                    }
                }
            }
        }
        fold()
        let first = accumulator.result()
        #expect(bits(first) != bits(empty))
        accumulator.reset()
        #expect(bits(accumulator.result()) == bits(empty))
        #expect(accumulator.rowMax.allSatisfy { $0 == -.infinity } && accumulator.rowSum.allSatisfy { $0 == 0 })
        #expect(accumulator.sum.allSatisfy { $0 == 0 })
        fold()
        #expect(bits(accumulator.result()) == bits(first))
        // takeResult: the same result, normalised in the accumulator's own storage, which it hands
        // over (O is not held twice); reset makes the accumulator ready again.
        let taken = accumulator.takeResult()
        #expect(bits(taken) == bits(first))
        #expect(accumulator.sum.isEmpty)
        accumulator.reset()
        fold()
        #expect(bits(accumulator.takeResult()) == bits(first))
    }
}
