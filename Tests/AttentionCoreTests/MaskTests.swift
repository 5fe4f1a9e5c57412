// Masks live in global token positions: a query shard at one offset attending to a key shard at
// another must give what the reference gives for the same positions, and rows that see no key are
// exactly (O = 0, lse = -inf). Also: the block classification the kernel skips by agrees with the
// pair-by-pair definition, and a whole ring of shards folded in one process equals the reference.

import AttentionCore
import Testing

struct ShardPair: Sendable, CustomTestStringConvertible {
    let queries: Range<Int>
    let keys: Range<Int>
    let mask: AttentionMask
    var testDescription: String { "queries \(queries) keys \(keys) \(mask)" }

    static let all: [ShardPair] = [
        (300 ..< 340, 280 ..< 360),  // overlapping: the diagonal cuts through
        (500 ..< 530, 100 ..< 200),  // keys all before the queries
        (100 ..< 150, 120 ..< 400),  // the first 20 rows see nothing, inside a partially visible block
        (4096 ..< 4133, 4000 ..< 4300),
    ].flatMap { q, k in [AttentionMask.none, .causal].map { ShardPair(queries: q, keys: k, mask: $0) } }
}

@Suite("Masks in global positions")
struct MaskTests {
    @Test("a query shard against a key shard at other offsets equals the reference", arguments: ShardPair.all)
    func offsetShards(_ pair: ShardPair) throws {
        let problem = try Problem(
            heads: 4, kvHeads: 2, headDim: 64, mask: pair.mask,
            queryRanges: [pair.queries], keyRanges: [pair.keys])
        let reference = problem.reference()
        let tolerance = Tolerance(naive: problem.naiveError(against: reference))
        for (tiling, threads, valueProduct) in kernelConfigurations {
            let result = problem.kernel(tiling: tiling, threads: threads, valueProduct: valueProduct)
            expectClose(
                result, to: reference, within: tolerance,
                "\(pair.testDescription), tiles \(tiling.queryTile)x\(tiling.keyBlock), \(threads) thread(s), P·V \(valueProduct.map { "\($0)" } ?? "default")")
            // Rows that see no key are exact, not merely close.
            for (row, position) in problem.queryPositions.enumerated() where pair.mask == .causal && position < pair.keys.lowerBound {
                for h in 0 ..< 4 {
                    #expect(result.lse[h * problem.q.tokens + row] == -.infinity)
                    let at = (row * 4 + h) * 64
                    #expect(result.output[at ..< at + 64].allSatisfy { $0 == 0 && $0.sign == .plus })
                }
            }
        }
    }

    @Test("causal, every query before every key: O = 0 exactly and lse = -inf", arguments: [1, 2])
    func fullyMasked(threads: Int) throws {
        let problem = try Problem(
            heads: 8, kvHeads: 1, headDim: 80, mask: .causal,
            queryRanges: [0 ..< 10], keyRanges: [50 ..< 80])
        for tiling in [KernelTiling(), KernelTiling(queryTile: 4, keyBlock: 8)] {
            let result = problem.kernel(tiling: tiling, threads: threads)
            #expect(result.output.allSatisfy { $0 == 0 })
            #expect(result.lse.allSatisfy { $0 == -.infinity })
        }
        let reference = problem.reference()
        #expect(reference.output.allSatisfy { $0 == 0 } && reference.lse.allSatisfy { $0 == -.infinity })
        #expect(problem.naive().lse.allSatisfy { $0 == -.infinity })
    }

    @Test("a fully masked block folded after visible ones leaves the rows unchanged")
    func hiddenBlockAfterVisible() throws {
        // Keys 0..<40 are visible to queries 40..<60; keys 100..<140 are hidden. Folding the hidden
        // segment second must not touch the state (the kernel skips it before any arithmetic).
        let problem = try Problem(
            heads: 4, kvHeads: 4, headDim: 32, mask: .causal,
            queryRanges: [40 ..< 60], keyRanges: [0 ..< 40, 100 ..< 140])
        let segments = Problem.segments(of: problem.keyPositions)
        #expect(segments.count == 2)
        let visibleOnly = problem.kernel(keySegments: [segments[0]])
        let both = problem.kernel(keySegments: segments)
        #expect(bits(both) == bits(visibleOnly))
    }

    @Test("block relation agrees with the pair-by-pair mask", arguments: [AttentionMask.none, .causal])
    func blockRelation(_ mask: AttentionMask) {
        let ranges = [0 ..< 1, 0 ..< 8, 3 ..< 4, 3 ..< 11, 7 ..< 8, 8 ..< 16, 10 ..< 13, 15 ..< 40]
        for q in ranges {
            for k in ranges {
                let pairs = q.flatMap { i in k.map { j in mask.allows(query: i, key: j, head: 0) } }
                let expected: AttentionMask.BlockRelation =
                    pairs.allSatisfy { $0 } ? .full : pairs.contains(true) ? .partial : .hidden
                #expect(mask.relation(queries: q, keys: k, head: 0) == expected, "queries \(q) keys \(k)")
                for i in q {
                    let visible = mask.visibleKeys(query: i, head: 0, within: k)
                    #expect(k.allSatisfy { visible.contains($0) == mask.allows(query: i, key: $0, head: 0) })
                }
            }
        }
    }

    @Test("visible pairs and FLOPs match a count", arguments: [AttentionMask.none, .causal])
    func visiblePairs(_ mask: AttentionMask) throws {
        let shape = try AttentionShape(heads: 3, kvHeads: 1, headDim: 16)
        for tokens in [0, 1, 2, 9, 64] {
            let counted = (0 ..< tokens).reduce(0) { total, i in
                total + (0 ..< tokens).filter { mask.allows(query: i, key: $0, head: 0) }.count
            }
            #expect(mask.visiblePairs(tokens: tokens) == Double(counted))
            #expect(mask.visiblePairs(tokens: tokens, heads: 3) == Double(3 * counted))
            #expect(mask.flops(tokens: tokens, shape: shape) == Double(4 * 16 * 3 * counted))
        }
    }
}

/// Every rank's shard folded against every rank's K/V shard (a ring in one process) gives the
/// reference rows of that rank, for both layouts, uneven token counts and shards with two segments.
struct ShardedFoldCase: Sendable, CustomTestStringConvertible {
    let layout: TokenLayout
    let ranks: Int
    let mask: AttentionMask
    var testDescription: String { "\(layout) P=\(ranks) \(mask)" }

    static let all: [ShardedFoldCase] = TokenLayout.allCases.flatMap { layout in
        [1, 2, 3, 4].flatMap { ranks in
            [AttentionMask.none, .causal].map { ShardedFoldCase(layout: layout, ranks: ranks, mask: $0) }
        }
    }
}

@Suite("Shards folded in ring order")
struct ShardedFoldTests {
    static let tokens = 103
    static let (heads, kvHeads, headDim) = (4, 2, 32)

    @Test("each rank's rows equal the reference rows", arguments: ShardedFoldCase.all)
    func ring(_ c: ShardedFoldCase) throws {
        let whole = try Problem(tokens: Self.tokens, heads: Self.heads, kvHeads: Self.kvHeads, headDim: Self.headDim, mask: c.mask)
        let reference = whole.reference()
        let tolerance = Tolerance(naive: whole.naiveError(against: reference))
        let partition = TokenPartition(tokens: Self.tokens, ranks: c.ranks, layout: c.layout)
        let attention = LocalAttention(shape: whole.shape, mask: c.mask, tiling: KernelTiling(queryTile: 8, keyBlock: 16))
        let shards = (0 ..< c.ranks).map { rank in
            let ranges = partition.segments(of: rank)
            return (
                segments: ShardSegment.stacked(ranges),
                q: whole.q.rows(ranges), k: whole.k.rows(ranges), v: whole.v.rows(ranges)
            )
        }
        for rank in 0 ..< c.ranks {
            let mine = shards[rank]
            let accumulator = AttentionAccumulator(rows: partition.rowCount(of: rank), heads: Self.heads, headDim: Self.headDim)
            for step in 0 ..< c.ranks {
                let other = shards[(rank - step + c.ranks) % c.ranks]  // the ring's order of arrival
                mine.q.values.withUnsafeBufferPointer { q in
                    other.k.values.withUnsafeBufferPointer { k in
                        other.v.values.withUnsafeBufferPointer { v in
                            for querySegment in mine.segments {
                                for keySegment in other.segments {
                                    attention.accumulate(
                                        queries: q.baseAddress!, querySegment: querySegment,
                                        keys: k.baseAddress!, values: v.baseAddress!,
                                        keySegment: keySegment, into: accumulator)
                                }
                            }
                        }
                    }
                }
            }
            let rows = partition.segments(of: rank).flatMap { Array($0) }
            let expected = referenceRows(reference, rows: rows, totalRows: Self.tokens, heads: Self.heads, headDim: Self.headDim)
            expectClose(accumulator.result(), to: expected, within: tolerance, "\(c.testDescription) rank \(rank)")
        }
    }

    @Test("finish writes a shard's lse into a whole-sequence [heads, tokens] array")
    func finishWithStride() throws {
        let whole = try Problem(tokens: Self.tokens, heads: Self.heads, kvHeads: Self.kvHeads, headDim: Self.headDim, mask: .causal)
        let reference = whole.reference()
        let tolerance = Tolerance(naive: whole.naiveError(against: reference))
        let attention = LocalAttention(shape: whole.shape, mask: .causal, tiling: KernelTiling(queryTile: 16, keyBlock: 32))
        let partition = TokenPartition(tokens: Self.tokens, ranks: 3, layout: .contiguous)
        // NaN marks what no shard wrote.
        var output = [Float](repeating: .nan, count: Self.tokens * whole.shape.queryRowWidth)
        var lse = [Float](repeating: .nan, count: Self.heads * Self.tokens)
        for rank in 0 ..< 3 {
            let rows = partition.segments(of: rank)[0]
            let accumulator = AttentionAccumulator(rows: rows.count, heads: Self.heads, headDim: Self.headDim)
            let q = whole.q.rows([rows])
            q.values.withUnsafeBufferPointer { qb in
                whole.k.values.withUnsafeBufferPointer { kb in
                    whole.v.values.withUnsafeBufferPointer { vb in
                        attention.accumulate(
                            queries: qb.baseAddress!, querySegment: ShardSegment(positions: rows, localRow: 0),
                            keys: kb.baseAddress!, values: vb.baseAddress!,
                            keySegment: ShardSegment(positions: 0 ..< Self.tokens, localRow: 0), into: accumulator)
                    }
                }
            }
            output.withUnsafeMutableBufferPointer { o in
                lse.withUnsafeMutableBufferPointer { l in
                    accumulator.finish(
                        output: o.baseAddress! + rows.lowerBound * whole.shape.queryRowWidth,
                        lse: l.baseAddress! + rows.lowerBound, lseStride: Self.tokens)
                }
            }
        }
        let stitched = PartialResult(rows: Self.tokens, heads: Self.heads, headDim: Self.headDim, output: output, lse: lse)
        // expectClose also fails on NaN: every element must have been written by exactly the right shard.
        expectClose(stitched, to: reference, within: tolerance, "three shards finished into one array")
    }

    @Test("progress is called between query tiles on one thread")
    func progress() throws {
        let problem = try Problem(tokens: 50, heads: 3, kvHeads: 1, headDim: 32, mask: .none)
        let attention = LocalAttention(shape: problem.shape, mask: .none, tiling: KernelTiling(queryTile: 16, keyBlock: 32))
        let accumulator = AttentionAccumulator(rows: 50, heads: 3, headDim: 32)
        var calls = 0
        problem.q.values.withUnsafeBufferPointer { q in
            problem.k.values.withUnsafeBufferPointer { k in
                problem.v.values.withUnsafeBufferPointer { v in
                    attention.accumulate(
                        queries: q.baseAddress!, querySegment: ShardSegment(positions: 0 ..< 50, localRow: 0),
                        keys: k.baseAddress!, values: v.baseAddress!,
                        keySegment: ShardSegment(positions: 0 ..< 50, localRow: 0), into: accumulator,
                        progress: { calls += 1 })
                }
            }
        }
        let items = 3 * 4  // heads x ceil(50 / 16) tiles
        #expect(calls >= items - 1 && calls <= items, "\(calls) progress calls for \(items) tiles")
    }
}
