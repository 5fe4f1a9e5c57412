// Mask slices: the mask's block questions against its plain definition pair by pair (relation,
// span, clipped rows, visible keys and pairs, causality, the queries that may see a key) over
// random overlapping slices of every kind, empty and one-token ones included; the families
// against definitions written here from their descriptions; the masks seqpar already had,
// rewritten as slices, pair for pair; slice files and their refusals; and the forward and
// backward kernels against the float64 references.

import AttentionCore
import FileFormats
import Foundation
import Testing

func randomSlices(count: Int, tokens: Int, seed: UInt64) -> MaskSlices { .random(count: count, tokens: tokens, seed: seed) }

@Suite("Mask slices")
struct MaskSliceTests {
    /// Checks every question the kernel asks of `mask` against `allows`, over tiles and blocks
    /// of several sizes and offsets.
    func checkAgainstDefinition(_ mask: AttentionMask, tokens: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        var visible = [[Bool]](repeating: [Bool](repeating: false, count: tokens), count: tokens)
        for q in 0 ..< tokens { for k in 0 ..< tokens { visible[q][k] = mask.allows(query: q, key: k, head: 0) } }
        let pairs = visible.reduce(0) { $0 + $1.filter { $0 }.count }
        #expect(mask.visiblePairs(tokens: tokens) == Double(pairs), sourceLocation: sourceLocation)
        #expect(mask.isCausal == !(0 ..< tokens).contains { q in (q + 1 ..< tokens).contains { visible[q][$0] } }, sourceLocation: sourceLocation)
        for q in 0 ..< tokens {
            let seen = mask.visibleKeys(query: q, head: 0, within: 0 ..< tokens)
            #expect(seen.isEmpty == !visible[q].contains(true), "query \(q)", sourceLocation: sourceLocation)
            for k in 0 ..< tokens where visible[q][k] { #expect(seen.contains(k), "query \(q) key \(k)", sourceLocation: sourceLocation) }
        }
        for (tile, block) in [(1, 1), (3, 5), (8, 8), (13, 7), (32, 29)] {
            for qStart in stride(from: 0, to: tokens, by: tile) {
                let q = qStart ..< min(tokens, qStart + tile)
                for kStart in stride(from: 0, to: tokens, by: block) {
                    let k = kStart ..< min(tokens, kStart + block)
                    let shown = q.map { i in k.map { visible[i][$0] } }
                    let any = shown.contains { $0.contains(true) }, all = shown.allSatisfy { $0.allSatisfy { $0 } }
                    let relation = mask.relation(queries: q, keys: k, head: 0)
                    #expect((relation == .hidden) == !any, "queries \(q) keys \(k): \(relation)", sourceLocation: sourceLocation)
                    if relation == .full { #expect(all, "queries \(q) keys \(k) called full", sourceLocation: sourceLocation) }
                    guard any else { continue }
                    let span = mask.visibleSpan(queries: q, keys: k, head: 0)
                    for (r, row) in shown.enumerated() {
                        for (c, seen) in row.enumerated() where seen {
                            #expect(span.contains(k.lowerBound + c), "span \(span) misses \(q.lowerBound + r), \(k.lowerBound + c)", sourceLocation: sourceLocation)
                        }
                    }
                    if !k.isEmpty {
                        let spanQueries = mask.querySpan(seeing: k)
                        for (r, row) in shown.enumerated() where row.contains(true) {
                            #expect(spanQueries.contains(q.lowerBound + r), "querySpan(\(k)) = \(spanQueries)", sourceLocation: sourceLocation)
                        }
                    }
                    // Clipping a block of zeros leaves exactly the visible scores finite.
                    var scores = [Float](repeating: 0, count: q.count * k.count)
                    scores.withUnsafeMutableBufferPointer {
                        mask.clipRows($0.baseAddress!, rows: q.count, queryPositions: q, keyPositions: k, head: 0)
                    }
                    #expect(scores.map(\.isFinite) == shown.flatMap { $0 }, "clipped queries \(q) keys \(k)", sourceLocation: sourceLocation)
                }
            }
        }
    }

    @Test("random overlapping slices of every kind against their definition", arguments: [(1, 40, 1), (3, 37, 2), (12, 61, 3), (40, 50, 4), (0, 9, 5)])
    func randomAgainstDefinition(count: Int, tokens: Int, seed: UInt64) {
        checkAgainstDefinition(.slices(randomSlices(count: count, tokens: tokens, seed: seed)), tokens: tokens)
    }

    @Test("each kind, on square, tall and wide slices, against the issue's formulas", arguments: MaskSlice.Kind.allCases)
    func kinds(_ kind: MaskSlice.Kind) throws {
        for (queries, keys) in [(5 ..< 15, 5 ..< 15), (2 ..< 20, 10 ..< 14), (10 ..< 13, 0 ..< 25), (0 ..< 1, 3 ..< 9)] {
            let slice = MaskSlice(queries: queries, keys: keys, kind: kind)
            let (lq, lk) = (queries.count, keys.count)
            for q in 0 ..< 25 {
                for k in 0 ..< 25 {
                    let (i, j) = (q - queries.lowerBound, k - keys.lowerBound)
                    let inside = queries.contains(q) && keys.contains(k)
                    let expected: Bool
                    switch kind {
                    case .full: expected = inside
                    case .causal: expected = inside && j <= i + (lk - lq)
                    case .inverseCausal: expected = inside && j >= i
                    case .biCausal: expected = inside && j <= i + (lk - lq) && j >= i
                    }
                    #expect(slice.allows(query: q, key: k) == expected, "\(slice) q \(q) k \(k)")
                }
            }
            checkAgainstDefinition(.slices(try MaskSlices([slice], tokens: 25)), tokens: 25)
        }
    }

    @Test(
        "none, causal, window and documents written as slices show the same pairs",
        arguments: [
            AttentionMask.none, .causal, .window(1), .window(7), .window(100),
            .documents(boundaries([0, 3, 1, 20, 0, 9, 17]), within: .causal), .documents(boundaries([5, 0, 40, 5]), within: .window(6)),
            .documents(boundaries([12, 1, 37]), within: .none),
        ])
    func equivalents(_ mask: AttentionMask) throws {
        let tokens = mask.documents?.tokens ?? 50
        let slices = try #require(MaskSlices.equivalent(to: mask, tokens: tokens))
        for q in 0 ..< tokens {
            for k in 0 ..< tokens {
                #expect(slices.allows(query: q, key: k) == mask.allows(query: q, key: k, head: 0), "\(mask): q \(q) k \(k)")
            }
        }
        #expect(AttentionMask.slices(slices).visiblePairs(tokens: tokens) == mask.visiblePairs(tokens: tokens))
        #expect(AttentionMask.slices(slices).isCausal == mask.isCausal)
    }

    @Test("the families against their definitions")
    func families() throws {
        let documents = boundaries([0, 30, 7, 1, 25])
        func document(_ p: Int) -> Range<Int> { documents.range(containing: p) }
        func expectMatches(_ slices: MaskSlices, _ name: String, _ definition: (Int, Int) -> Bool) {
            for q in 0 ..< slices.tokens {
                for k in 0 ..< slices.tokens { #expect(slices.allows(query: q, key: k) == definition(q, k), "\(name): q \(q) k \(k)") }
            }
            checkAgainstDefinition(.slices(slices), tokens: slices.tokens)
        }
        for prefix in [0, 5, 40] {
            expectMatches(.prefixLM(prefix: prefix, documents: documents), "prefix-LM \(prefix)") { q, k in
                let d = document(q), cut = min(d.upperBound, d.lowerBound + prefix)
                return d.contains(k) && (k <= q || (q < cut && k < cut))
            }
        }
        for block in [1, 4, 9] {
            expectMatches(.blockCausal(block: block, documents: documents), "block-causal \(block)") { q, k in
                let d = document(q)
                return d.contains(k) && (k - d.lowerBound) / block <= (q - d.lowerBound) / block
            }
        }
        for (global, window) in [(0, 5), (3, 1), (4, 10), (70, 2)] {
            expectMatches(.globalWindow(global: global, window: window, tokens: 63), "global \(global) window \(window)") { q, k in
                q < global || k < global || (k <= q && q - k < window)
            }
        }
        let lengths = [9, 12, 0, 1, 20]
        let starts = lengths.reduce(into: [0]) { $0.append($0.last! + $1) }
        expectMatches(.sharedQuestion(lengths: lengths), "shared question") { q, k in
            let part = starts.lastIndex { $0 <= q }!
            if part == 0 { return k <= q }
            return k < lengths[0] || (k >= starts[part] && k <= q)
        }
    }

    @Test("slice files load, int32 and int64", arguments: ["<i4", "<i8"])
    func loads(_ dtype: String) throws {
        try withTemporaryPath { path in
            let rows = [0, 10, 0, 10, 1, 3, 7, 2, 9, 3, 10, 10, 0, 0, 0]
            try CuSeqlensTests.write(rows, dtype: dtype, shape: [3, 5], to: path)
            let slices = try MaskSlices.load(path, tokens: 10)
            #expect(slices.rows == rows)
            #expect(slices.slices[1] == MaskSlice(queries: 3 ..< 7, keys: 2 ..< 9, kind: .biCausal))
        }
    }

    @Test(
        "bad slice files are refused, naming the row",
        arguments: [
            ([0, 10, 0, 10, 1], "<f4", [1, 5], "dtype is '<f4'; expected int32 or int64"),
            ([0, 10, 0, 10], "<i8", [1, 4], "shape (1, 4); expected [n, 5]"),
            ([0, 10, 0, 10, 1], "<i8", [5], "shape (5,); expected [n, 5]"),
            ([0, 10, 0, 10, 1, 0, 11, 0, 10, 0], "<i8", [2, 5], "row 1 (0, 11, 0, 10, 0): q_start..q_end 0..<11 lies outside the sequence's 0..<10"),
            ([-1, 10, 0, 10, 1], "<i4", [1, 5], "row 0 (-1, 10, 0, 10, 1): q_start..q_end -1..<10 lies outside"),
            ([0, 5, 7, 3, 0], "<i8", [1, 5], "row 0 (0, 5, 7, 3, 0): k_start 7 is after k_end 3"),
            ([0, 5, 0, 5, 4], "<i8", [1, 5], "row 0 (0, 5, 0, 5, 4): kind 4 is unknown; expected 0 (full), 1 (causal)"),
        ] as [([Int], String, [Int], String)])
    func refused(_ values: [Int], dtype: String, shape: [Int], message: String) throws {
        try withTemporaryPath { path in
            try CuSeqlensTests.write(values, dtype: dtype, shape: shape, to: path)
            let error = try #require(throws: MaskSlices.Invalid.self) { try MaskSlices.load(path, tokens: 10) }
            #expect(error.description.contains(message), "\(error)")
            #expect(error.description.contains("--mask-slices \(path)"), "\(error)")
        }
    }

    @Test("slices built in Swift are checked against the sequence too")
    func checkedInSwift() throws {
        let past = try #require(throws: MaskSlices.Invalid.self) {
            try MaskSlices([MaskSlice(queries: 0 ..< 4, keys: 0 ..< 4, kind: .full), MaskSlice(queries: 2 ..< 11, keys: 0 ..< 3, kind: .causal)], tokens: 10)
        }
        #expect(past.description.contains("row 1 (2, 11, 0, 3, 1): q range 2..<11 lies outside the sequence's 0..<10"), "\(past)")
        let before = try #require(throws: MaskSlices.Invalid.self) { try MaskSlices([MaskSlice(queries: 0 ..< 4, keys: -2 ..< 3, kind: .full)], tokens: 10) }
        #expect(before.description.contains("k range -2..<3 lies outside"), "\(before)")
    }

    @Test("the keys a rank needs: what its queries see that it does not hold")
    func keysNeeded() throws {
        let tiling = KernelTiling(queryTile: 16, keyBlock: 32)
        let causal = TokenPartition(tokens: 100, ranks: 2, layout: .contiguous)
        #expect(causal.keysNeeded(by: 0, mask: .causal, tiling: tiling) == 0)
        #expect(causal.keysNeeded(by: 1, mask: .causal, tiling: tiling) == 50)
        // Blocks of 25 as slices: rank 1 (tokens 50..<100) reads 0..<50 too; a window of 10
        // reads only the 9 keys before its first query.
        let blocks = MaskSlices.blockCausal(block: 25, documents: boundaries([100]))
        #expect(causal.keysNeeded(by: 1, mask: .slices(blocks), tiling: tiling) == 50)
        #expect(causal.keysNeeded(by: 1, mask: .window(10), tiling: tiling) == 9)
        let globalWindow = MaskSlices.globalWindow(global: 3, window: 10, tokens: 100)
        #expect(causal.keysNeeded(by: 1, mask: .slices(globalWindow), tiling: tiling) == 12)
        #expect(causal.keysNeeded(by: 0, mask: .slices(globalWindow), tiling: tiling) == 50)
    }

    @Test("the bucket index finds every slice near a block, once, on long sequences")
    func bucketIndex() throws {
        let tokens = 1 << 20
        let slices = randomSlices(count: 300, tokens: tokens, seed: 7)
        for (q, k) in [(0 ..< 64, 0 ..< tokens), (5000 ..< 90000, 300 ..< 301), (tokens - 1 ..< tokens, 0 ..< tokens)] {
            var found: [MaskSlice] = []
            slices.forEach(queries: q, keys: k) {
                found.append($0); return true
            }
            let expected = slices.slices.filter { $0.queries.overlaps(q) && $0.keys.overlaps(k) }
            #expect(found.count == expected.count)
            #expect(Set(found.map(\.description)) == Set(expected.map(\.description)))
        }
    }
}

struct SliceKernelCase: Sendable, CustomTestStringConvertible {
    let slices: MaskSlices
    let heads: Int
    let kvHeads: Int
    let headDim: Int
    let name: String
    var testDescription: String { "\(name) (\(slices.tokens) tokens) h=\(heads)/\(kvHeads) d=\(headDim)" }

    static let all: [SliceKernelCase] = [
        SliceKernelCase(slices: randomSlices(count: 30, tokens: 301, seed: 11), heads: 4, kvHeads: 2, headDim: 32, name: "30 random slices"),
        SliceKernelCase(slices: randomSlices(count: 4, tokens: 517, seed: 12), heads: 4, kvHeads: 1, headDim: 128, name: "4 random slices"),
        SliceKernelCase(slices: .globalWindow(global: 5, window: 70, tokens: 403), heads: 8, kvHeads: 2, headDim: 64, name: "global + window"),
        SliceKernelCase(slices: .blockCausal(block: 48, documents: boundaries([100, 0, 211, 3])), heads: 2, kvHeads: 2, headDim: 80, name: "block-causal"),
        SliceKernelCase(slices: .sharedQuestion(lengths: [130, 77, 0, 91, 1]), heads: 4, kvHeads: 4, headDim: 64, name: "shared question"),
        SliceKernelCase(slices: .prefixLM(prefix: 60, documents: boundaries([250, 9, 140])), heads: 4, kvHeads: 2, headDim: 96, name: "prefix-LM"),
    ]
}

@Suite("Kernels with mask slices against the float64 references")
struct SliceKernelTests {
    @Test("forward", arguments: SliceKernelCase.all)
    func forward(_ c: SliceKernelCase) throws {
        try KernelAccuracyTests().check(KernelCase(tokens: c.slices.tokens, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, mask: .slices(c.slices)))
    }

    @Test("backward", arguments: SliceKernelCase.all)
    func backward(_ c: SliceKernelCase) throws {
        try BackwardTests().check(BackwardCase(tokens: c.slices.tokens, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, mask: .slices(c.slices)))
    }

    @Test("the kernel skips the blocks no slice shows: its FLOPs are the visible blocks'")
    func skipsHiddenBlocks() throws {
        // Block-causal with blocks of the kernel's own size: every computed block is full.
        let slices = MaskSlices.blockCausal(block: 64, documents: boundaries([1024]))
        let problem = try Problem(tokens: 1024, heads: 1, kvHeads: 1, headDim: 32, mask: .slices(slices))
        let kernel = LocalAttention(shape: problem.shape, mask: problem.mask, tiling: KernelTiling(queryTile: 64, keyBlock: 64))
        _ = kernel.attention(q: problem.q, k: problem.k, v: problem.v)
        #expect(kernel.computedFlops == problem.mask.flops(tokens: 1024, shape: problem.shape))
        #expect(kernel.computedFlops == 4 * 32 * 64 * 64 * Double(16 * 17 / 2))
    }
}
