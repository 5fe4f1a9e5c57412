// The fused kernel (LocalAttention) against the float64 reference, over odd token counts, head
// dims 32..128, MHA/GQA/MQA and both masks. The tolerance is measured, not guessed: the kernel may
// be at most `Tolerance.factor` times as wrong as a naive float32 implementation of the same problem.
// Each case also runs with small tiles (many key blocks, partial blocks, ragged tails) and two threads.

import AttentionCore
import Testing

struct KernelCase: Sendable, CustomTestStringConvertible {
    let tokens: Int
    let heads: Int
    let kvHeads: Int
    let headDim: Int
    let mask: AttentionMask
    var scale: Float? = nil

    var testDescription: String {
        "T=\(tokens) h=\(heads)/\(kvHeads) d=\(headDim) \(mask)" + (scale.map { " scale=\($0)" } ?? "")
    }

    static let headConfigs = [(4, 4), (8, 2), (8, 1)]
    static let headDims = [32, 64, 80, 128]

    /// Every combination for small token counts (the reference is cheap there).
    static let crossProduct: [KernelCase] = [1, 7, 129].flatMap { tokens in
        headConfigs.flatMap { heads, kvHeads in
            headDims.flatMap { headDim in
                [AttentionMask.none, .causal].map {
                    KernelCase(tokens: tokens, heads: heads, kvHeads: kvHeads, headDim: headDim, mask: $0)
                }
            }
        }
    }

    /// 1000 tokens: the float64 reference is O(T²·H·d), so a covering subset — every head dim,
    /// every head configuration with both masks.
    static let long: [KernelCase] = [
        KernelCase(tokens: 1000, heads: 4, kvHeads: 4, headDim: 32, mask: .none),
        KernelCase(tokens: 1000, heads: 8, kvHeads: 2, headDim: 64, mask: .causal),
        KernelCase(tokens: 1000, heads: 8, kvHeads: 1, headDim: 80, mask: .causal),
        KernelCase(tokens: 1000, heads: 4, kvHeads: 4, headDim: 128, mask: .causal),
        KernelCase(tokens: 1000, heads: 8, kvHeads: 2, headDim: 32, mask: .none),
        KernelCase(tokens: 1000, heads: 8, kvHeads: 1, headDim: 128, mask: .none),
    ]

    /// Peaked softmax (the running max moves between blocks and rescales) and scores far beyond
    /// exp's float range (only the max subtraction keeps them finite).
    static let largeScores: [KernelCase] = [
        KernelCase(tokens: 300, heads: 4, kvHeads: 2, headDim: 64, mask: .causal, scale: 1),
        KernelCase(tokens: 300, heads: 4, kvHeads: 1, headDim: 32, mask: .none, scale: 2),
        KernelCase(tokens: 257, heads: 2, kvHeads: 2, headDim: 80, mask: .causal, scale: 60),
    ]
}

/// The kernel configurations every case runs under; a nil P·V product is the one the kernel
/// picks for the head dim and this OpenBLAS, and each of the two products also runs forced.
let kernelConfigurations: [(tiling: KernelTiling, threads: Int, valueProduct: ValueProduct?)] = [
    (KernelTiling(), 1, nil),
    (KernelTiling(), 1, .packed),
    (KernelTiling(), 1, .pieces(rows: 48, keys: 128)),
    (KernelTiling(queryTile: 16, keyBlock: 32), 1, nil),
    (KernelTiling(queryTile: 16, keyBlock: 32), 2, nil),
    (KernelTiling(queryTile: 5, keyBlock: 17), 2, nil),  // tails narrower than one SIMD vector
    (KernelTiling(queryTile: 16, keyBlock: 32), 1, .pieces(rows: 5, keys: 7)),  // ragged pieces
]

@Suite("Fused kernel against the float64 reference")
struct KernelAccuracyTests {
    func check(_ c: KernelCase) throws {
        let problem = try Problem(
            tokens: c.tokens, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim,
            mask: c.mask, scale: c.scale)
        let reference = problem.reference()
        let naiveError = problem.naiveError(against: reference)
        let tolerance = Tolerance(naive: naiveError)
        for (tiling, threads, valueProduct) in kernelConfigurations {
            let result = problem.kernel(tiling: tiling, threads: threads, valueProduct: valueProduct)
            expectClose(
                result, to: reference, within: tolerance,
                "\(c.testDescription), tiles \(tiling.queryTile)x\(tiling.keyBlock), \(threads) thread(s), "
                    + "P·V \(valueProduct.map { "\($0)" } ?? "default"), naive \(naiveError)")
        }
    }

    @Test("every shape up to 129 tokens", arguments: KernelCase.crossProduct)
    func smallSequences(_ c: KernelCase) throws { try check(c) }

    @Test("1000 tokens, a covering subset", arguments: KernelCase.long)
    func longSequences(_ c: KernelCase) throws { try check(c) }

    @Test("large scores: peaked softmax and scores beyond exp's range", arguments: KernelCase.largeScores)
    func largeScores(_ c: KernelCase) throws { try check(c) }

    @Test("the whole-sequence entry point agrees with accumulate and finish")
    func attentionEntryPoint() throws {
        let problem = try Problem(tokens: 77, heads: 4, kvHeads: 2, headDim: 32, mask: .causal)
        let attention = LocalAttention(shape: problem.shape, mask: .causal, tiling: KernelTiling(queryTile: 16, keyBlock: 32))
        let whole = attention.attention(q: problem.q, k: problem.k, v: problem.v)
        let pieces = problem.kernel(tiling: KernelTiling(queryTile: 16, keyBlock: 32))
        #expect(bits(whole) == bits(pieces))
        #expect(whole.rows == 77 && whole.heads == 4 && whole.headDim == 32)
    }

    @Test("several query segments in one call (K/V packed once) give the bits of one call per segment")
    func severalQuerySegments() throws {
        // Zigzag's shape: a rank's two chunks as query segments, two key segments.
        let problem = try Problem(
            heads: 8, kvHeads: 2, headDim: 64, mask: .causal, queryRanges: [0 ..< 37, 90 ..< 130],
            keyRanges: [0 ..< 37, 90 ..< 130])
        let querySegments = Problem.segments(of: problem.queryPositions)
        let tiling = KernelTiling(queryTile: 16, keyBlock: 32)
        for threads in [1, 3] {
            let oneByOne = problem.kernel(tiling: tiling, threads: threads)
            let kernel = LocalAttention(shape: problem.shape, mask: .causal, tiling: tiling, threads: threads)
            let accumulator = AttentionAccumulator(rows: problem.q.tokens, heads: 8, headDim: 64)
            problem.q.values.withUnsafeBufferPointer { qb in
                problem.k.values.withUnsafeBufferPointer { kb in
                    problem.v.values.withUnsafeBufferPointer { vb in
                        for keySegment in querySegments {
                            kernel.accumulate(
                                queries: qb.baseAddress!, querySegments: querySegments, keys: kb.baseAddress!,
                                values: vb.baseAddress!, keySegment: keySegment, into: accumulator)
                        }
                    }
                }
            }
            #expect(bits(accumulator.result()) == bits(oneByOne), "\(threads) thread(s)")
        }
    }

    @Test("thread count does not change the result's bits")
    func threadsAreDeterministic() throws {
        // Each query tile is computed by one thread with the same operations, whatever the thread count.
        let problem = try Problem(tokens: 203, heads: 8, kvHeads: 2, headDim: 64, mask: .causal)
        let tiling = KernelTiling(queryTile: 16, keyBlock: 32)
        let one = problem.kernel(tiling: tiling, threads: 1)
        for threads in [2, 3, 8] {
            #expect(bits(problem.kernel(tiling: tiling, threads: threads)) == bits(one), "\(threads) threads")
        }
    }

    @Test("no keys or no queries: every row is empty, nothing is NaN")
    func emptyInputs() throws {
        let shape = try AttentionShape(heads: 4, kvHeads: 2, headDim: 32)
        let q = SyntheticInput.tensor(.query, seed: 1, heads: 4, headDim: 32, rows: [0 ..< 9])
        let noKeys = TokenTensor(zerosTokens: 0, heads: 2, headDim: 32)
        for mask in [AttentionMask.none, .causal] {
            let attention = LocalAttention(shape: shape, mask: mask)
            let result = attention.attention(q: q, k: noKeys, v: noKeys)
            #expect(result.output.allSatisfy { $0 == 0 })
            #expect(result.lse.count == 4 * 9 && result.lse.allSatisfy { $0 == -.infinity })

            let k = SyntheticInput.tensor(.key, seed: 1, heads: 2, headDim: 32, rows: [0 ..< 5])
            let noQueries = attention.attention(q: TokenTensor(zerosTokens: 0, heads: 4, headDim: 32), k: k, v: k)
            #expect(noQueries.rows == 0 && noQueries.output.isEmpty && noQueries.lse.isEmpty)
        }
    }
}
