// The online-softmax merge as MPI applies it in star's reduction: records of (lse, O row) merged
// pairwise in whatever order MPI's reduction tree picks. Any order and any grouping must give the
// whole-key result within float32 rounding, and the empty record must be the identity.

import AttentionCore
import SequenceParallel
import Testing

@Suite struct MergeReductionTests {
    /// Partials of `parts` disjoint key pieces for the same queries, as star's records, plus the whole.
    static func partials(
        parts: Int, tokens: Int = 97, queries: Int = 5, heads: Int = 4, headDim: Int = 16
    )
        throws -> (records: [[Float]], whole: PartialResult, width: Int)
    {
        let shape = try AttentionShape(heads: heads, kvHeads: 2, headDim: headDim)
        let queryRange = tokens - queries ..< tokens
        let q = SyntheticInput.tensor(.query, seed: 3, heads: heads, headDim: headDim, rows: [queryRange])
        let k = SyntheticInput.tensor(.key, seed: 3, heads: 2, headDim: headDim, rows: [0 ..< tokens])
        let v = SyntheticInput.tensor(.value, seed: 3, heads: 2, headDim: headDim, rows: [0 ..< tokens])
        let kernel = LocalAttention(shape: shape, mask: .causal, tiling: KernelTiling(queryTile: 4, keyBlock: 8))
        func run(_ keys: Range<Int>) -> PartialResult {
            let accumulator = AttentionAccumulator(rows: queries, heads: heads, headDim: headDim)
            q.values.withUnsafeBufferPointer { qb in
                k.values.withUnsafeBufferPointer { kb in
                    v.values.withUnsafeBufferPointer { vb in
                        kernel.accumulate(
                            queries: qb.baseAddress!, querySegment: ShardSegment(positions: queryRange, localRow: 0),
                            keys: kb.baseAddress!, values: vb.baseAddress!,
                            keySegment: ShardSegment(positions: keys, localRow: keys.lowerBound), into: accumulator)
                    }
                }
            }
            return accumulator.result()
        }
        let width = 1 + headDim
        let records = (0 ..< parts).map { p -> [Float] in
            let partial = run(TokenPartition.chunk(p, of: parts, tokens: tokens))
            var out = [Float]()
            for row in 0 ..< queries {
                for h in 0 ..< heads {
                    out.append(partial.lse[h * queries + row])
                    out += partial.output[(row * heads + h) * headDim ..< (row * heads + h + 1) * headDim]
                }
            }
            return out
        }
        return (records, run(0 ..< tokens), width)
    }

    static func merged(_ records: [[Float]], order: [Int], width: Int) -> [Float] {
        var accumulated = records[order[0]]
        for index in order.dropFirst() {
            records[index].withUnsafeBufferPointer { incoming in
                accumulated.withUnsafeMutableBufferPointer { acc in
                    SoftmaxMergeReduction.merge(records: incoming.baseAddress!, into: acc.baseAddress!, count: acc.count / width, width: width)
                }
            }
        }
        return accumulated
    }

    static func maxDifference(_ records: [Float], _ whole: PartialResult, width: Int) -> Double {
        let (heads, d) = (whole.heads, whole.headDim)
        var worst = 0.0
        for row in 0 ..< whole.rows {
            for h in 0 ..< heads {
                let r = (row * heads + h) * width
                worst = max(worst, Double(abs(records[r] - whole.lse[h * whole.rows + row])))
                for x in 0 ..< d { worst = max(worst, Double(abs(records[r + 1 + x] - whole.output[(row * heads + h) * d + x]))) }
            }
        }
        return worst
    }

    @Test(arguments: [1, 2, 3, 4])
    func anyOrderGivesTheWholeResult(parts: Int) throws {
        let (records, whole, width) = try Self.partials(parts: parts)
        var orders = [Array(0 ..< parts), Array((0 ..< parts).reversed())]
        if parts >= 3 { orders.append([1, 0] + Array(2 ..< parts)); orders.append([parts - 1] + Array(0 ..< parts - 1)) }
        var results: [[Float]] = []
        for order in orders {
            let result = Self.merged(records, order: order, width: width)
            #expect(!result.contains { $0.isNaN })
            #expect(Self.maxDifference(result, whole, width: width) <= 2e-6, "order \(order)")
            results.append(result)
        }
        // Tree-shaped grouping, as MPI_Reduce may apply it: (a ⊕ b) ⊕ (c ⊕ d).
        if parts == 4 {
            let left = Self.merged(records, order: [0, 1], width: width), right = Self.merged(records, order: [2, 3], width: width)
            let tree = Self.merged([left, right], order: [1, 0], width: width)
            #expect(Self.maxDifference(tree, whole, width: width) <= 2e-6)
        }
    }

    @Test func emptyRecordIsTheIdentityAndNeverMakesNaN() throws {
        let (records, _, width) = try Self.partials(parts: 2)
        var empty = [Float](repeating: 0, count: records[0].count)
        for r in stride(from: 0, to: empty.count, by: width) { empty[r] = -.infinity }
        let leftIdentity = Self.merged([empty, records[0]], order: [0, 1], width: width)
        let rightIdentity = Self.merged([records[0], empty], order: [0, 1], width: width)
        #expect(leftIdentity.map(\.bitPattern) == records[0].map(\.bitPattern))
        #expect(rightIdentity.map(\.bitPattern) == records[0].map(\.bitPattern))
        let both = Self.merged([empty, empty], order: [0, 1], width: width)
        #expect(both.map(\.bitPattern) == empty.map(\.bitPattern))
    }
}
