// Sliding-window and S2 masks: the kernel's view of them (block relations, per-row intervals,
// block alignment) against the plain definition, their pair counts against brute force, and the
// fused kernel under them (and on head slices) against the float64 reference.

import AttentionCore
import Testing

let patternMasks: [AttentionMask] = [
    .none, .causal, .window(1), .window(5), .window(37),
    .s2(try! S2Pattern(block: 4, local: 1, stride: 3)),
    .s2(try! S2Pattern(block: 8, local: 2, stride: 8)),
    .s2(try! S2Pattern(block: 5, local: 3, stride: 2)),
]

@Suite struct PatternMaskTests {
    @Test(arguments: patternMasks)
    func blockRelationsAndIntervalsMatchTheDefinition(mask: AttentionMask) {
        let tokens = 61, heads = 4
        let cut = mask.keyBlockAlignment ?? 7
        for head in 0 ..< heads {
            for qStart in stride(from: 0, to: tokens, by: 5) {
                for qCount in [1, 4, 13] where qStart + qCount <= tokens {
                    let queries = qStart ..< qStart + qCount
                    // key blocks that respect the mask's alignment
                    var kStart = 0
                    while kStart < tokens {
                        let kEnd = min(tokens, (kStart / cut + 1) * cut)
                        let keys = kStart ..< kEnd
                        var seen = 0
                        let span = mask.visibleSpan(queries: queries, keys: keys, head: head)
                        for i in queries {
                            let interval = mask.visibleKeys(query: i, head: head, within: keys)
                            for j in keys {
                                let allowed = mask.allows(query: i, key: j, head: head)
                                #expect(interval.contains(j) == allowed, "\(mask) head \(head) query \(i) key \(j)")
                                #expect(!allowed || span.contains(j), "\(mask): the trimmed span \(span) drops key \(j) of query \(i)")
                                if allowed { seen += 1 }
                            }
                        }
                        let relation = mask.relation(queries: queries, keys: keys, head: head)
                        let expected: AttentionMask.BlockRelation = seen == 0 ? .hidden : (seen == queries.count * keys.count ? .full : .partial)
                        if relation == .hidden || relation == .full {
                            #expect(relation == expected, "\(mask) head \(head) queries \(queries) keys \(keys)")
                        } else {
                            #expect(expected != .hidden, "\(mask): a visible pair in a block called hidden, queries \(queries) keys \(keys)")
                        }
                        kStart = kEnd
                    }
                }
            }
        }
    }

    @Test(arguments: patternMasks)
    func visiblePairsEqualABruteForceCount(mask: AttentionMask) {
        for tokens in [1, 9, 64, 97] {
            for heads in [1, 3, 8] {
                var count = 0
                for h in 0 ..< heads { for i in 0 ..< tokens { for j in 0 ..< tokens where mask.allows(query: i, key: j, head: h) { count += 1 } } }
                #expect(mask.visiblePairs(tokens: tokens, heads: heads) == Double(count), "\(mask) tokens \(tokens) heads \(heads)")
                let queries = tokens / 2 ..< tokens
                var rowCount = 0
                for h in 0 ..< heads { for i in queries { for j in 0 ..< tokens where mask.allows(query: i, key: j, head: h) { rowCount += 1 } } }
                #expect(mask.visiblePairs(queries: queries, tokens: tokens, heads: heads) == Double(rowCount))
            }
        }
    }

    @Test func s2UnionOverAtLeastStrideHeadsCoversEveryCausalBlockPair() throws {
        let pattern = try S2Pattern(block: 4, local: 1, stride: 4)
        for qb in 0 ..< 20 {
            for kb in 0 ... qb {
                #expect((0 ..< 4).contains { pattern.isActive(queryBlock: qb, keyBlock: kb, head: $0) }, "block pair (\(qb), \(kb))")
            }
        }
    }

    @Test func s2PatternRefusesNonPositiveParameters() {
        #expect(throws: S2Pattern.Invalid.self) { try S2Pattern(block: 0, local: 1, stride: 1) }
        #expect(throws: S2Pattern.Invalid.self) { try S2Pattern(block: 4, local: 0, stride: 1) }
        #expect(throws: S2Pattern.Invalid.self) { try S2Pattern(block: 4, local: 1, stride: 0) }
    }

    /// The kernel under window and S2 masks, with tiles that straddle the S2 blocks and the
    /// window edge, against the float64 reference at the flash-attention tolerance.
    @Test(arguments: patternMasks, [(tokens: 130, heads: 8, kvHeads: 2, headDim: 32), (tokens: 77, heads: 4, kvHeads: 1, headDim: 64)])
    func kernelMatchesTheReference(mask: AttentionMask, size: (tokens: Int, heads: Int, kvHeads: Int, headDim: Int)) throws {
        let problem = try Problem(tokens: size.tokens, heads: size.heads, kvHeads: size.kvHeads, headDim: size.headDim, mask: mask)
        let reference = problem.reference()
        let tolerance = Tolerance(naive: problem.naiveError(against: reference))
        for tiling in [KernelTiling(), KernelTiling(queryTile: 16, keyBlock: 32), KernelTiling(queryTile: 7, keyBlock: 13)] {
            expectClose(problem.kernel(tiling: tiling), to: reference, within: tolerance, "\(mask) tiling \(tiling)")
        }
    }

    /// Skipping must make the work fall with the pattern: the kernel's computed FLOPs stay within
    /// a block's worth of the visible pairs, far below causal.
    @Test func s2KernelWorkFallsWithDensity() throws {
        let pattern = try S2Pattern(block: 16, local: 1, stride: 8)
        let problem = try Problem(tokens: 512, heads: 8, kvHeads: 8, headDim: 32, mask: .s2(pattern))
        let shape = problem.shape
        let kernel = LocalAttention(shape: shape, mask: problem.mask, tiling: KernelTiling(queryTile: 16, keyBlock: 64))
        _ = kernel.attention(q: problem.q, k: problem.k, v: problem.v)
        let visible = problem.mask.flops(tokens: 512, shape: shape)
        let causal = AttentionMask.causal.flops(tokens: 512, shape: shape)
        #expect(kernel.computedFlops >= visible)
        #expect(kernel.computedFlops <= 2.2 * visible, "computed \(kernel.computedFlops) for \(visible) visible")
        #expect(kernel.computedFlops < 0.35 * causal)
    }

    /// A kernel over a slice of heads (head-sharded strategies) computes exactly those heads of
    /// the whole-problem result, reading only the kv heads they need.
    @Test(arguments: [(heads: 8, kvHeads: 2, slice: 3 ..< 7), (heads: 6, kvHeads: 3, slice: 0 ..< 1), (heads: 5, kvHeads: 1, slice: 2 ..< 5)])
    func headSliceMatchesTheWholeProblem(heads: Int, kvHeads: Int, slice range: Range<Int>) throws {
        let mask = AttentionMask.s2(try S2Pattern(block: 8, local: 2, stride: 3))
        let problem = try Problem(tokens: 90, heads: heads, kvHeads: kvHeads, headDim: 32, mask: mask)
        let whole = problem.kernel(tiling: KernelTiling(queryTile: 16, keyBlock: 32))
        let slice = HeadSlice(range, of: problem.shape)
        let d = problem.shape.headDim, tokens = problem.q.tokens
        func columns(_ t: TokenTensor, _ heads: Range<Int>) -> [Float] {
            (0 ..< t.tokens).flatMap { row in heads.flatMap { h in (0 ..< d).map { t[row, h, $0] } } }
        }
        let q = columns(problem.q, slice.heads), k = columns(problem.k, slice.kvHeads), v = columns(problem.v, slice.kvHeads)
        let kernel = LocalAttention(shape: problem.shape, mask: mask, tiling: KernelTiling(queryTile: 16, keyBlock: 32), slice: slice)
        let accumulator = AttentionAccumulator(rows: tokens, heads: range.count, headDim: d)
        q.withUnsafeBufferPointer { qb in
            k.withUnsafeBufferPointer { kb in
                v.withUnsafeBufferPointer { vb in
                    let all = ShardSegment(positions: 0 ..< tokens, localRow: 0)
                    kernel.accumulate(
                        queries: qb.baseAddress!, querySegment: all, keys: kb.baseAddress!, values: vb.baseAddress!,
                        keySegment: all, into: accumulator)
                }
            }
        }
        let part = accumulator.result()
        var mismatches = 0
        for row in 0 ..< tokens {
            for (j, h) in range.enumerated() {
                if part.lse[j * tokens + row].bitPattern != whole.lse[h * tokens + row].bitPattern { mismatches += 1 }
                for x in 0 ..< d where part.output[(row * range.count + j) * d + x] != whole.output[(row * heads + h) * d + x] {
                    mismatches += 1
                }
            }
        }
        #expect(mismatches == 0, "\(mismatches) values of heads \(range) differ from the whole problem's")
    }
}

/// With several threads the calling thread still computes a share of the tiles and calls
/// `progress` between them (that is how MPI transfers move during compute), and the result is
/// the single-threaded one.
@Test(arguments: [2, 3])
func progressIsCalledWhenSeveralThreadsCompute(threads: Int) throws {
    let problem = try Problem(tokens: 200, heads: 4, kvHeads: 2, headDim: 32, mask: .causal)
    let tiling = KernelTiling(queryTile: 16, keyBlock: 32)
    let kernel = LocalAttention(shape: problem.shape, mask: .causal, tiling: tiling, threads: threads)
    let accumulator = AttentionAccumulator(rows: 200, heads: 4, headDim: 32)
    var calls = 0
    problem.q.values.withUnsafeBufferPointer { q in
        problem.k.values.withUnsafeBufferPointer { k in
            problem.v.values.withUnsafeBufferPointer { v in
                let all = ShardSegment(positions: 0 ..< 200, localRow: 0)
                kernel.accumulate(
                    queries: q.baseAddress!, querySegment: all, keys: k.baseAddress!, values: v.baseAddress!,
                    keySegment: all, into: accumulator
                ) { calls += 1 }
            }
        }
    }
    let items = 4 * ((200 + 15) / 16)
    #expect(calls == (items + threads - 1) / threads)
    #expect(bits(accumulator.result()) == bits(problem.kernel(tiling: tiling)))
}
