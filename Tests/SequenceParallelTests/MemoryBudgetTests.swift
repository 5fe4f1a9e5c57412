// The memory check's estimate: each strategy adds what it holds itself, and a rank's need grows
// with tokens / ranks, never with tokens squared.

import AttentionCore
import AttentionJobs
import SequenceParallel
import Testing

@Suite("memory budget")
struct MemoryBudgetTests {
    let shape = try! AttentionShape(heads: 8, kvHeads: 2, headDim: 64)

    func need(_ strategy: SequenceParallelStrategy, tokens: Int, ranks: Int) -> Double {
        MemoryBudget.perRank(tokens: tokens, shape: shape, ranks: ranks, threads: 1, tiling: KernelTiling(), wholeKeyValues: false, strategy: strategy)
    }

    @Test("each strategy's own buffers count: heads holds whole-sequence slices, star its queries, ring two receive buffers")
    func strategiesDiffer() {
        let (tokens, ranks) = (1 << 20, 4)
        let ring = need(RingAttention(), tokens: tokens, ranks: ranks)
        let heads = need(HeadsAttention(), tokens: tokens, ranks: ranks)
        let star = need(StarAttention(queries: 64, position: nil, everyRank: false), tokens: tokens, ranks: ranks)
        #expect(heads > ring, "heads gathers every token of its heads: \(heads) against ring's \(ring)")
        #expect(star < ring, "star receives no K/V blocks: \(star) against ring's \(ring)")
        let moreQueries = need(StarAttention(queries: 1 << 16, position: nil, everyRank: false), tokens: tokens, ranks: ranks)
        #expect(moreQueries > star)
    }

    @Test("a rank's need grows linearly with tokens and falls with ranks", arguments: ["ring", "heads", "mesh"])
    func linear(_ name: String) throws {
        let strategies: [String: any SequenceParallelStrategy] = [
            "ring": RingAttention(), "heads": HeadsAttention(), "mesh": MeshAttention(headGroup: 2, ring: 2, causal: false),
        ]
        let strategy = try #require(strategies[name])
        let small = need(strategy, tokens: 1 << 18, ranks: 4), large = need(strategy, tokens: 1 << 20, ranks: 4)
        #expect(large / small < 4.01 && large / small > 3.5, "\(name): 4x the tokens took \(large / small)x the memory")
        #expect(need(strategy, tokens: 1 << 20, ranks: 8) < large)
    }
}
