// Packed documents: the mask against its definition pair by pair (block relation, visible keys
// and span, visible pairs, by arithmetic), over boundaries with documents of 0, 1, 2, 3, odd and
// long lengths; the forward and backward kernels against the float64 references with such
// documents; cu_seqlens files and their refusals; and the layouts' work balance, computed from
// the layout alone.

import AttentionCore
import FileFormats
import Foundation
import Testing

/// Boundaries with every awkward length: empty documents (also first and last), 1, 2, 3, odd, long.
let awkwardLengths = [0, 1, 2, 3, 0, 17, 1, 64, 0, 0, 5, 129, 2, 33, 0]

func boundaries(_ lengths: [Int]) -> DocumentBoundaries {
    try! DocumentBoundaries(lengths: lengths, tokens: lengths.reduce(0, +))
}

/// Random lengths from `seed`, a third of them 0..3.
func randomLengths(count: Int, seed: UInt64) -> [Int] {
    var state = seed
    func next() -> Int {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return Int(state >> 33)
    }
    return (0 ..< count).map { _ in next() % 3 == 0 ? next() % 4 : next() % 90 }
}

@Suite("Packed documents")
struct DocumentMaskTests {
    static let inner: [AttentionMask] = [.none, .causal, .window(1), .window(7)]

    static var masks: [AttentionMask] {
        let sets = [awkwardLengths, randomLengths(count: 12, seed: 3), [1], [0, 40, 0], [250]]
        return sets.flatMap { lengths in inner.map { AttentionMask.documents(boundaries(lengths), within: $0) } }
    }

    @Test("relation, visible keys and span agree with the pair-by-pair definition", arguments: masks)
    func relationAgreesWithDefinition(_ mask: AttentionMask) {
        let tokens = mask.documents!.tokens
        var ranges: [Range<Int>] = []
        for start in stride(from: 0, to: tokens, by: 3) {
            for length in [1, 2, 5, 16, 70] where start + length <= tokens { ranges.append(start ..< start + length) }
        }
        ranges.append(0 ..< tokens)
        for q in ranges {
            for k in ranges {
                var any = false, all = true
                for i in q {
                    let visible = mask.visibleKeys(query: i, head: 0, within: k)
                    for j in k {
                        let allowed = mask.allows(query: i, key: j, head: 0)
                        any = any || allowed
                        all = all && allowed
                        if visible.contains(j) != allowed {
                            Issue.record("\(mask): query \(i) key \(j) in \(k): visibleKeys \(visible), allows \(allowed)")
                            return
                        }
                    }
                }
                let expected: AttentionMask.BlockRelation = all ? .full : any ? .partial : .hidden
                let relation = mask.relation(queries: q, keys: k, head: 0)
                #expect(relation == expected, "\(mask): queries \(q) keys \(k)")
                if relation == .partial {
                    // The span the kernel trims a partial block to keeps every visible key.
                    let span = mask.visibleSpan(queries: q, keys: k, head: 0)
                    #expect(
                        q.allSatisfy { i in k.allSatisfy { !mask.allows(query: i, key: $0, head: 0) || span.contains($0) } },
                        "\(mask): span \(span) of queries \(q) keys \(k) drops a visible key")
                }
            }
        }
    }

    @Test("visible pairs by arithmetic equal a count of the definition", arguments: masks)
    func visiblePairsCounted(_ mask: AttentionMask) throws {
        let tokens = mask.documents!.tokens
        let rows = (0 ..< tokens).map { i in (0 ..< tokens).filter { mask.allows(query: i, key: $0, head: 0) }.count }
        #expect(mask.visiblePairs(tokens: tokens, heads: 3) == Double(3 * rows.reduce(0, +)))
        let shape = try AttentionShape(heads: 2, kvHeads: 1, headDim: 8)
        #expect(mask.flops(tokens: tokens, shape: shape) == Double(4 * 8 * 2 * rows.reduce(0, +)))
        for start in stride(from: 0, to: tokens, by: 7) {
            for end in [start, start + 1, start + 13, tokens] where end <= tokens {
                let counted = rows[start ..< end].reduce(0, +)
                #expect(mask.visiblePairs(queries: start ..< end, tokens: tokens, heads: 2) == Double(2 * counted), "\(mask) queries \(start)..<\(end)")
            }
        }
    }

    @Test("the inner mask decides causality; documents find their positions")
    func basics() throws {
        let documents = boundaries([0, 3, 0, 2])
        #expect(AttentionMask.documents(documents, within: .causal).isCausal)
        #expect(!AttentionMask.documents(documents, within: .none).isCausal)
        #expect(AttentionMask.documents(documents, within: .none).documents == documents)
        #expect((0 ..< 5).map(documents.document(containing:)) == [1, 1, 1, 3, 3])
        #expect(documents.range(containing: 3) == 3 ..< 5)
        #expect(documents.count == 4 && documents.tokens == 5)
        #expect(throws: DocumentBoundaries.Invalid.self) { try DocumentBoundaries(lengths: [2, -1, 4], tokens: 5) }
        #expect(throws: DocumentBoundaries.Invalid.self) { try DocumentBoundaries(lengths: [2, 2], tokens: 5) }
    }

    @Test("the bucketed lookup finds every position's document as a scan of cu_seqlens does", arguments: [1, 7, 300, 5000])
    func lookupMatchesScan(documents count: Int) {
        // Lengths 0..3 and a few long ones, so buckets of 64 positions hold none, one or many boundaries.
        let lengths = randomLengths(count: count, seed: UInt64(count)).enumerated().map { $0.offset % 97 == 5 ? 700 : $0.element % 4 }
        let documents = boundaries(lengths)
        var expected = 0
        for position in -3 ..< documents.tokens + 70 {
            if position >= 0 && position < documents.tokens {
                while documents.offsets[expected + 1] <= position { expected += 1 }
                #expect(documents.document(containing: position) == expected, "position \(position)")
                #expect(documents.range(containing: position).contains(position))
            } else {
                #expect(documents.document(containing: position) == (position < 0 ? 0 : documents.count - 1))
            }
        }
    }

    @Test("a mask's query span holds every query that sees a key of the block", arguments: masks + [.none, .causal, .window(1), .window(9)])
    func querySpanHoldsTheViewers(mask: AttentionMask) {
        let tokens = mask.documents?.tokens ?? 120
        for first in stride(from: 0, to: tokens, by: 5) {
            for length in [1, 4, 33] where first + length <= tokens {
                let keys = first ..< first + length
                let span = mask.querySpan(seeing: keys)
                for query in 0 ..< tokens where keys.contains(where: { mask.allows(query: query, key: $0, head: 0) }) {
                    #expect(span.contains(query), "\(mask): query \(query) sees \(keys) outside \(span)")
                }
            }
        }
    }

    @Test("a segment index finds the overlapping segments in storage order")
    func segmentIndex() {
        let ranges = [40 ..< 50, 0 ..< 3, 7 ..< 7, 10 ..< 20, 3 ..< 5, 60 ..< 61]
        let index = SegmentIndex(ShardSegment.stacked(ranges))
        let found = { (span: Range<Int>) in index.overlapping(span).map(\.positions) }
        #expect(found(0 ..< 100) == [40 ..< 50, 0 ..< 3, 10 ..< 20, 3 ..< 5, 60 ..< 61])
        #expect(found(4 ..< 11) == [10 ..< 20, 3 ..< 5])
        #expect(found(20 ..< 40).isEmpty && found(61 ..< 1000).isEmpty && found(5 ..< 5).isEmpty)
        #expect(found(49 ..< 60) == [40 ..< 50])
        let mask = AttentionMask.documents(boundaries([5, 15, 30, 11]), within: .causal)
        #expect(index.seeing(12 ..< 14, mask: mask).map(\.positions) == [10 ..< 20])
        #expect(index.seeing(0 ..< 2, mask: mask).map(\.positions) == [0 ..< 3, 3 ..< 5])
    }

    @Test("random documents sum to the tokens, and some are tiny", arguments: [(1, 1), (37, 10007), (50, 32768), (9, 4)])
    func randomDocuments(count: Int, tokens: Int) {
        let documents = DocumentBoundaries.random(count: count, tokens: tokens, seed: 5)
        #expect(documents.count == count && documents.tokens == tokens)
        #expect(documents.lengths.allSatisfy { $0 >= 0 })
        if count >= 37 { #expect(documents.lengths.contains { $0 <= 3 }) }
        #expect(DocumentBoundaries.random(count: count, tokens: tokens, seed: 5) == documents)
    }
}

struct DocumentKernelCase: Sendable, CustomTestStringConvertible {
    let lengths: [Int]
    let heads: Int
    let kvHeads: Int
    let headDim: Int
    let inner: AttentionMask
    var mask: AttentionMask { .documents(boundaries(lengths), within: inner) }
    var testDescription: String { "\(lengths.count) documents (\(lengths.reduce(0, +)) tokens) h=\(heads)/\(kvHeads) d=\(headDim) \(inner)" }

    static let all: [DocumentKernelCase] = [
        DocumentKernelCase(lengths: awkwardLengths, heads: 4, kvHeads: 4, headDim: 32, inner: .causal),
        DocumentKernelCase(lengths: awkwardLengths, heads: 8, kvHeads: 2, headDim: 64, inner: .none),
        DocumentKernelCase(lengths: awkwardLengths, heads: 4, kvHeads: 1, headDim: 80, inner: .window(9)),
        DocumentKernelCase(lengths: [1, 0, 600, 3], heads: 4, kvHeads: 2, headDim: 128, inner: .causal),
        DocumentKernelCase(lengths: randomLengths(count: 20, seed: 9), heads: 8, kvHeads: 1, headDim: 32, inner: .none),
        DocumentKernelCase(lengths: randomLengths(count: 20, seed: 11), heads: 4, kvHeads: 2, headDim: 128, inner: .causal),
    ]
}

@Suite("Kernels with packed documents against the float64 references")
struct DocumentKernelTests {
    @Test("forward", arguments: DocumentKernelCase.all)
    func forward(_ c: DocumentKernelCase) throws {
        try KernelAccuracyTests().check(KernelCase(tokens: c.lengths.reduce(0, +), heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, mask: c.mask))
    }

    @Test("the kernel skips blocks across documents: its FLOPs fall with the density")
    func skipsHiddenBlocks() throws {
        let lengths = [Int](repeating: 64, count: 16)
        let problem = try Problem(tokens: 1024, heads: 1, kvHeads: 1, headDim: 32, mask: .documents(boundaries(lengths), within: .none))
        let kernel = LocalAttention(shape: problem.shape, mask: problem.mask, tiling: KernelTiling(queryTile: 64, keyBlock: 64))
        _ = kernel.attention(q: problem.q, k: problem.k, v: problem.v)
        #expect(kernel.computedFlops == problem.mask.flops(tokens: 1024, shape: problem.shape))
        #expect(kernel.computedFlops == 4 * 32 * 1024 * 1024 / 16)
    }

    /// The backward kernel takes the mask through the same API: BackwardTests' measured tolerances.
    @Test("backward", arguments: DocumentKernelCase.all.prefix(4))
    func backward(_ c: DocumentKernelCase) throws {
        try BackwardTests().check(BackwardCase(tokens: c.lengths.reduce(0, +), heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, mask: c.mask))
    }
}

@Suite("cu_seqlens files")
struct CuSeqlensTests {
    static func write(_ values: [Int], dtype: String = "<i8", shape: [Int]? = nil, to path: String) throws {
        var bytes = NpyHeader.encode(shape: shape ?? [values.count], dtype: dtype)
        for v in values {
            switch dtype {
            case "<i4": withUnsafeBytes(of: Int32(v).littleEndian) { bytes += $0 }
            case "<f4": withUnsafeBytes(of: Float(v).bitPattern.littleEndian) { bytes += $0 }
            default: withUnsafeBytes(of: Int64(v).littleEndian) { bytes += $0 }
            }
        }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    @Test("int32 and int64 files load", arguments: ["<i4", "<i8"])
    func loads(_ dtype: String) throws {
        try withTemporaryPath { path in
            try Self.write([0, 0, 3, 3, 10], dtype: dtype, to: path)
            let documents = try DocumentBoundaries.load(path, tokens: 10)
            #expect(documents.offsets == [0, 0, 3, 3, 10])
            #expect(documents.lengths == [0, 3, 0, 7])
        }
    }

    @Test(
        "bad files are refused with what is wrong",
        arguments: [
            ([1, 5, 10], "<i8", nil, "starts at 1"),
            ([0, 6, 5, 10], "<i8", nil, "decreases at index 2 (5 after 6)"),
            ([0, 5, 9], "<i4", nil, "ends at 9 but the sequence has 10 tokens"),
            ([0, 5, 10], "<f4", nil, "dtype is '<f4'; expected int32 or int64"),
            ([0, 5, 10, 10], "<i8", [2, 2], "has 2 dimensions; expected a 1-D array"),
            ([0], "<i8", nil, "holds 1 entry"),
        ] as [([Int], String, [Int]?, String)])
    func refused(_ values: [Int], dtype: String, shape: [Int]?, message: String) throws {
        try withTemporaryPath { path in
            try Self.write(values, dtype: dtype, shape: shape, to: path)
            let error = try #require(throws: DocumentBoundaries.Invalid.self) { try DocumentBoundaries.load(path, tokens: 10) }
            #expect(error.description.contains(message), "\(error)")
            #expect(error.description.contains("--cu-seqlens \(path)"), "\(error)")
        }
    }
}

@Suite("Layouts for packed documents")
struct DocumentLayoutTests {
    @Test("every layout covers each token once, shards stay near an even share", arguments: DocumentLayout.allCases, [1, 2, 3, 4, 8])
    func cover(_ layout: DocumentLayout, ranks: Int) throws {
        for lengths in [awkwardLengths, randomLengths(count: 40, seed: 2), [1000], [3, 0, 0]] {
            let documents = boundaries(lengths)
            let mask = AttentionMask.documents(documents, within: .causal)
            for groupSize in [1, 2] where ranks % groupSize == 0 {
                guard
                    let partition = TokenPartition(
                        documents: documents, ranks: ranks, layout: .zigzag, groupSize: groupSize,
                        documentLayout: layout, mask: mask)
                else {
                    #expect(layout != .headTail, "only layouts with whole documents may not fit")
                    continue
                }
                let all = (0 ..< ranks).flatMap { partition.segments(of: $0).flatMap { Array($0) } }
                #expect(all.sorted() == Array(0 ..< documents.tokens), "\(layout) \(lengths.count) documents at \(ranks) ranks")
                #expect(
                    partition.maxRowCount <= (documents.tokens * 5 + 4 * ranks - 1) / (4 * ranks) + 2 * lengths.count,
                    "memory per rank stays linear in tokens / ranks")
            }
        }
    }

    @Test("the layout's kernel work is the FLOPs the kernel spends in a ring pass over it", arguments: DocumentLayout.allCases, [false, true])
    func kernelWorkModel(_ layout: DocumentLayout, causal: Bool) throws {
        let tiling = KernelTiling(queryTile: 16, keyBlock: 24)
        let documents = boundaries(awkwardLengths + randomLengths(count: 6, seed: 4))
        let mask = AttentionMask.documents(documents, within: causal ? .causal : .none)
        let tokens = documents.tokens
        for (ranks, groupSize) in [(3, 1), (4, 2)] {
            let partition = try #require(
                TokenPartition(
                    documents: documents, ranks: ranks, layout: .zigzag, groupSize: groupSize,
                    documentLayout: layout, mask: mask))
            let problem = try Problem(tokens: tokens, heads: 2, kvHeads: 1, headDim: 8, mask: mask)
            for rank in 0 ..< ranks {
                let group = rank / groupSize * groupSize
                let queries = (group ..< group + groupSize).flatMap(partition.segments(of:))
                    .map { ShardSegment(positions: $0, localRow: $0.lowerBound) }  // rows of the whole Q
                let kernel = LocalAttention(shape: problem.shape, mask: mask, tiling: tiling)
                let accumulator = AttentionAccumulator(rows: tokens, heads: 2, headDim: 8)
                problem.q.values.withUnsafeBufferPointer { q in
                    problem.k.values.withUnsafeBufferPointer { k in
                        problem.v.values.withUnsafeBufferPointer { v in
                            for source in 0 ..< ranks {
                                for keys in partition.segments(of: source) {
                                    kernel.accumulate(
                                        queries: q.baseAddress!, querySegments: queries, keys: k.baseAddress!, values: v.baseAddress!,
                                        keySegment: ShardSegment(positions: keys, localRow: keys.lowerBound), into: accumulator)
                                }
                            }
                        }
                    }
                }
                #expect(
                    kernel.computedFlops == 4 * 8 * 2 * partition.kernelWork(of: rank, mask: mask, tiling: tiling),
                    "\(layout) rank \(rank) of \(ranks) (groups of \(groupSize))")
            }
        }
    }

    @Test("50 random causal documents, 32768 tokens, 4 ranks: max/mean work at most 1.05 without padding")
    func balance() {
        let mask = AttentionMask.documents(.random(count: 50, tokens: 32768, seed: 1), within: .causal)
        for layout in DocumentLayout.allCases {
            let partition = TokenPartition.balanced(tokens: 32768, ranks: 4, layout: .zigzag, mask: mask, documentLayout: layout)
            #expect(partition.documentLayout == layout)
            #expect(partition.imbalance(mask: mask) <= 1.05, "\(layout): \(partition.imbalance(mask: mask))")
        }
        let chosen = TokenPartition.balanced(tokens: 32768, ranks: 4, layout: .zigzag, mask: mask)
        #expect(chosen.documentLayout != nil && chosen.imbalance(mask: mask) <= 1.05)
    }

    @Test("cutting documents head-tail balances what whole documents cannot: one long document and a few short ones")
    func headTailWhereWholeCannot() {
        let mask = AttentionMask.documents(boundaries([5000, 17, 300, 1]), within: .causal)
        let chosen = TokenPartition.balanced(tokens: 5318, ranks: 4, layout: .contiguous, mask: mask)
        #expect(chosen.documentLayout == .headTail || chosen.documentLayout == .mixed)
        #expect(chosen.imbalance(mask: mask) <= 1.02)
        let headTail = TokenPartition.balanced(tokens: 5318, ranks: 4, layout: .contiguous, mask: mask, documentLayout: .headTail)
        #expect(headTail.imbalance(mask: mask) <= 1.01)
        #expect(TokenPartition(tokens: 5318, ranks: 4, layout: .contiguous).imbalance(mask: mask) > 1.3, "contiguous chunks would not")
    }

    @Test("many equal documents: whole documents per rank, and no rank's queries see another's keys")
    func wholeWhereItBalances() {
        let documents = boundaries([Int](repeating: 256, count: 16))
        let mask = AttentionMask.documents(documents, within: .causal)
        let chosen = TokenPartition.balanced(tokens: 4096, ranks: 4, layout: .zigzag, mask: mask)
        #expect(chosen.documentLayout == .whole)
        #expect(chosen.imbalance(mask: mask) == 1)
        for r in 0 ..< 4 {
            for other in 0 ..< 4 where other != r {
                for q in chosen.segments(of: r) {
                    #expect(chosen.segments(of: other).allSatisfy { mask.relation(queries: q, keys: $0, head: 0) == .hidden })
                }
            }
        }
    }

    @Test("mixed: the long documents cut, the short ones whole; auto keeps the lowest kernel work")
    func mixedBalances() {
        // One long document and many shorter ones: head-tail cuts all 41 into 8 pieces (many small
        // segments), whole documents leave the long one on one rank.
        let lengths = [3000] + [Int](repeating: 300, count: 40)
        let tokens = lengths.reduce(0, +)
        let mask = AttentionMask.documents(boundaries(lengths), within: .causal)
        let layouts = DocumentLayout.allCases.map { TokenPartition.balanced(tokens: tokens, ranks: 4, layout: .zigzag, mask: mask, documentLayout: $0) }
        let (headTail, whole, mixed) = (layouts[0], layouts[1], layouts[2])
        #expect(mixed.documentLayout == .mixed && mixed.imbalance(mask: mask) <= 1.05, "\(mixed.imbalance(mask: mask))")
        #expect(whole.imbalance(mask: mask) > 1.3, "\(whole.imbalance(mask: mask))")
        let segments = { (p: TokenPartition) in (0 ..< 4).reduce(0) { $0 + p.segments(of: $1).count } }
        #expect(segments(mixed) < segments(headTail) / 4, "mixed: \(segments(mixed)) segments, head-tail \(segments(headTail))")
        let chosen = TokenPartition.balanced(tokens: tokens, ranks: 4, layout: .zigzag, mask: mask)
        let lowest = (layouts + [TokenPartition(tokens: tokens, ranks: 4, layout: .zigzag)]).map { $0.imbalance(mask: mask) }.min()!
        #expect(chosen.imbalance(mask: mask) <= lowest * 1.05, "whole documents may win within 5%")
    }

    @Test("without documents the strategy's own layout stays")
    func plainMask() {
        let partition = TokenPartition.balanced(tokens: 1000, ranks: 4, layout: .zigzag, mask: .causal)
        #expect(partition == TokenPartition(tokens: 1000, ranks: 4, layout: .zigzag))
    }
}
