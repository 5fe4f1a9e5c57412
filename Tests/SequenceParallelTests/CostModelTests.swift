// The cost model on made-up machines: predictions positive and finite for every strategy and
// mesh shape, zigzag never slower than ring under a causal mask at P > 1 with equal bandwidth,
// pair counts that match brute force, and probe figures that survive JSON.

import AttentionCore
import Foundation
import Planning
import Profiling
import SequenceParallel
import Testing

@Suite("cost model")
struct CostModelTests {
    static let figures = ProbeFigures(
        ranks: 4,
        pointToPoint: [.init(bytes: 8, latencyMicroseconds: 1, bandwidthMBps: 8), .init(bytes: 1 << 24, latencyMicroseconds: 8000, bandwidthMBps: 2097)],
        allToAll: [.init(bytesPerPeer: 8, microseconds: 3, bandwidthMBps: 8), .init(bytesPerPeer: 1 << 21, microseconds: 3000, bandwidthMBps: 2097)],
        sgemmGflops: [90, 95, 92, 94], bf16Gflops: [180, 190, 95, 188])

    @Test("every prediction is positive and finite; mesh shapes divide the ranks", arguments: [1, 2, 3, 4, 8], [false, true])
    func sane(ranks: Int, causal: Bool) {
        let problem = AttentionProblem(tokens: 16384, heads: 8, kvHeads: 2, headDim: 64, causal: causal, ranks: ranks)
        let predictions = StrategyRegistry.predictions(CostModel(figures: Self.figures), problem)
        #expect(predictions.count >= 2)
        #expect(predictions.allSatisfy { $0.seconds.isFinite && $0.seconds > 0 && $0.computeSeconds > 0 && $0.communicationSeconds >= -1e-12 })
        #expect(predictions.map(\.seconds) == predictions.map(\.seconds).sorted())
        for p in predictions { if let mesh = p.variant.flatMap(MeshShape.init(parsing:)) { #expect(mesh.headGroup * mesh.ring == ranks && mesh.headGroup <= 8) } }
        #expect(Set(predictions.map(\.strategy)).isSuperset(of: ranks <= 8 && ranks > 1 ? ["ring", "zigzag", "heads"] : ["ring", "zigzag"]))
    }

    @Test("zigzag is never slower than ring for causal attention at P > 1", arguments: [2, 3, 4, 8])
    func zigzagBeatsRing(ranks: Int) {
        for tokens in [1000, 4099, 16384, 65536] {
            let problem = AttentionProblem(tokens: tokens, heads: 8, kvHeads: 2, headDim: 64, causal: true, ranks: ranks)
            let predictions = StrategyRegistry.predictions(CostModel(figures: Self.figures), problem)
            let ring = predictions.first { $0.strategy == "ring" }!, zigzag = predictions.first { $0.strategy == "zigzag" }!
            #expect(zigzag.seconds <= ring.seconds, "\(tokens) tokens: zigzag \(zigzag.seconds), ring \(ring.seconds)")
        }
        // Dense attention is balanced either way: the same compute.
        let dense = StrategyRegistry.predictions(CostModel(figures: Self.figures), AttentionProblem(tokens: 8192, heads: 8, kvHeads: 2, headDim: 64, causal: false, ranks: ranks))
        let ring = dense.first { $0.strategy == "ring" }!, zigzag = dense.first { $0.strategy == "zigzag" }!
        #expect(abs(ring.computeSeconds - zigzag.computeSeconds) <= 1e-9 * ring.computeSeconds)
    }

    /// With free communication: one rank's time is FLOPs / rate; a contiguous causal ring at 4 ranks is
    /// paced by its last rank (a diagonal block, then 3 full ones), zigzag and heads by an even share.
    @Test("compute-bound figures: one rank's time is FLOPs / rate, and ring's busiest rank sets its pace")
    func computeBound() {
        let model = CostModel(computeRate: 1e10, latency: 0, bandwidth: .infinity, allToAllLatency: 0, allToAllBandwidth: .infinity)
        let one = StrategyRegistry.predictions(model, AttentionProblem(tokens: 4096, heads: 4, kvHeads: 4, headDim: 64, causal: false, ranks: 1))
        #expect(abs(one[0].seconds - 4.0 * 4096 * 4096 * 4 * 64 / 1e10) < 1e-12)
        let four = StrategyRegistry.predictions(model, AttentionProblem(tokens: 4096, heads: 4, kvHeads: 4, headDim: 64, causal: true, ranks: 4))
        let ring = four.first { $0.strategy == "ring" }!.seconds, zigzag = four.first { $0.strategy == "zigzag" }!.seconds
        let heads = four.first { $0.strategy == "heads" }!.seconds
        let chunk = 1024.0, perPair = 4.0 * 4 * 64 / 1e10
        #expect(abs(ring - perPair * (chunk * (chunk + 1) / 2 + 3 * chunk * chunk)) < 1e-9)
        #expect(abs(heads - perPair * 4096 * 4097 / 2 / 4) < 1e-9)
        #expect(zigzag < ring && abs(zigzag - heads) / heads < 0.01)
    }

    @Test("causal pair counts between ranges match brute force")
    func pairs() {
        for (q, k) in [(0 ..< 10, 0 ..< 10), (5 ..< 17, 0 ..< 8), (0 ..< 8, 5 ..< 17), (3 ..< 9, 20 ..< 30), (20 ..< 30, 3 ..< 9), (0 ..< 0, 0 ..< 5)] {
            let brute = q.reduce(0) { total, i in total + k.filter { $0 <= i }.count }
            #expect(visiblePairs(queries: q, keys: k, causal: true) == Double(brute), "\(q) x \(k)")
            #expect(visiblePairs(queries: q, keys: k, causal: false) == Double(q.count * k.count))
        }
    }

    @Test("every mask's pair counts between ranges match its definition, per head")
    func maskPairs() throws {
        let masks: [AttentionMask] = [.none, .causal, .window(7), .s2(try S2Pattern(block: 4, local: 2, stride: 3))]
        for mask in masks {
            for (q, k) in [(0 ..< 10, 0 ..< 10), (5 ..< 17, 0 ..< 8), (0 ..< 8, 5 ..< 17), (20 ..< 30, 3 ..< 9), (0 ..< 0, 0 ..< 5)] {
                let heads = 3
                let brute = (0 ..< heads).reduce(0) { total, h in
                    total + q.reduce(0) { sum, i in sum + k.filter { mask.allows(query: i, key: $0, head: h) }.count }
                }
                #expect(abs(visiblePairs(queries: q, keys: k, mask: mask, heads: heads) - Double(brute) / Double(heads)) < 1e-9, "\(mask) \(q) x \(k)")
            }
        }
    }

    /// The model sees windows and S2 as what they are, not as causal: fewer pairs, less time.
    @Test("a sliding window or an S2 pattern is predicted cheaper than the causal mask")
    func sparseMasks() throws {
        let model = CostModel(figures: Self.figures)
        func zigzag(_ mask: AttentionMask) -> Double {
            StrategyRegistry.predictions(model, AttentionProblem(tokens: 16384, heads: 8, kvHeads: 2, headDim: 64, mask: mask, ranks: 4))
                .first { $0.strategy == "zigzag" }!.computeSeconds
        }
        let causal = zigzag(.causal)
        #expect(zigzag(.window(1024)) < 0.25 * causal)
        #expect(zigzag(.s2(try S2Pattern(block: 128, local: 2, stride: 8))) < 0.5 * causal)
        #expect(abs(zigzag(.window(1 << 20)) - causal) / causal < 1e-9, "a window longer than the sequence is causal")
    }

    /// Packed documents are predicted on the layout the run uses: 8 documents of 512 tokens over 4
    /// ranks lie whole on their ranks, so the ring pass ends after the local block and moves
    /// nothing, and the compute is the documents' pairs, not the causal sequence's.
    @Test("packed documents: the balanced layout, a ring pass that moves nothing, the documents' work")
    func packedDocuments() throws {
        let documents = try DocumentBoundaries(lengths: Array(repeating: 512, count: 8), tokens: 4096)
        let model = CostModel(figures: Self.figures)
        let problem = AttentionProblem(tokens: 4096, heads: 8, kvHeads: 2, headDim: 64, mask: .documents(documents, within: .causal), ranks: 4)
        let predictions = StrategyRegistry.predictions(model, problem)
        let zigzag = try #require(predictions.first { $0.strategy == "zigzag" })
        #expect(zigzag.communicationSeconds == 0, "\(zigzag)")
        let causal = StrategyRegistry.predictions(model, AttentionProblem(tokens: 4096, heads: 8, kvHeads: 2, headDim: 64, causal: true, ranks: 4))
            .first { $0.strategy == "zigzag" }!
        // 8 causal documents of 512 hold about an eighth of the causal sequence's pairs.
        #expect(zigzag.computeSeconds < 0.2 * causal.computeSeconds, "\(zigzag.computeSeconds) against \(causal.computeSeconds)")
    }

    /// A bf16 job: the bf16 rate (the slowest rank's: one of them widens bf16), and Q/K/V bytes
    /// halved; heads' O and LSE stay float32.
    @Test("bf16 jobs: compute at the probe's bf16 rate, Q/K/V traffic at 2 bytes; a probe without bf16 figures keeps sgemm's")
    func bf16() {
        #expect(CostModel(figures: Self.figures).bf16ComputeRate == 95e9 * CostModel.defaultKernelEfficiency)
        var old = Self.figures
        old.bf16Gflops = nil
        #expect(CostModel(figures: old).bf16ComputeRate == nil)
        let compute = CostModel(computeRate: 1e10, bf16ComputeRate: 2e10, latency: 0, bandwidth: .infinity, allToAllLatency: 0, allToAllBandwidth: .infinity)
        var problem = AttentionProblem(tokens: 4096, heads: 4, kvHeads: 4, headDim: 64, causal: false, ranks: 1)
        let f32 = StrategyRegistry.predictions(compute, problem)[0].seconds
        (problem.bf16, problem.elementBytes) = (true, 2)
        #expect(abs(StrategyRegistry.predictions(compute, problem)[0].seconds - f32 / 2) < 1e-12)
        #expect(
            StrategyRegistry.predictions(CostModel(computeRate: 1e10, latency: 0, bandwidth: .infinity, allToAllLatency: 0, allToAllBandwidth: .infinity), problem)[0].seconds
                == f32)
        // Communication alone: compute free, 1 GB/s links.
        let wire = CostModel(computeRate: 1e30, bf16ComputeRate: 1e30, latency: 0, bandwidth: 1e9, allToAllLatency: 0, allToAllBandwidth: 1e9)
        let wide = AttentionProblem(tokens: 8192, heads: 8, kvHeads: 8, headDim: 128, causal: false, ranks: 4)
        var narrow = wide
        (narrow.bf16, narrow.elementBytes) = (true, 2)
        let time = { (p: AttentionProblem, name: String) in StrategyRegistry.predictions(wire, p).first { $0.strategy == name }!.communicationSeconds }
        #expect(abs(time(narrow, "ring") - time(wide, "ring") / 2) <= 1e-9 * time(wide, "ring"))
        #expect(time(narrow, "heads") > time(wide, "heads") / 2 && time(narrow, "heads") < time(wide, "heads"))
    }

    @Test("probe figures survive JSON")
    func json() throws {
        let data = try Self.figures.encoded()
        let text = String(decoding: data, as: UTF8.self)
        #expect(text.contains("\"latency_us\"") && text.contains("\"bytes_per_peer\"") && text.contains("\"sgemm_gflops\"") && text.contains("\"bf16_gflops\""))
        #expect(try JSONDecoder().decode(ProbeFigures.self, from: data) == Self.figures)
        #expect(Self.figures.table().contains("16777216"))
    }
}

extension AttentionProblem {
    /// A problem without packed documents: causal or not.
    init(tokens: Int, heads: Int, kvHeads: Int, headDim: Int, causal: Bool, ranks: Int) {
        self.init(tokens: tokens, heads: heads, kvHeads: kvHeads, headDim: headDim, mask: causal ? .causal : .none, ranks: ranks)
    }
}
