// `seqpar run` on .npy inputs: the O and LSE files written by several ranks (each writing its own
// rows into shared files) equal those of one rank, and both agree with the float64 reference
// computed here, in this process, from the same files.

import AttentionCore
import FileFormats
import Foundation
import Testing

extension EndToEnd {
    @Suite("run with .npy files")
    struct OutputFiles {
        static let tokens = 301, heads = 4, kvHeads = 2, headDim = 48

        @Test("distributed O and LSE equal the single-rank files and float64", arguments: [false, true])
        func distributedEqualsSingleRank(causal: Bool) async throws {
            let (t, h, kvh, d) = (Self.tokens, Self.heads, Self.kvHeads, Self.headDim)
            let dir = try ScratchDirectory()
            // Q spread wider than K so that softmax is peaked, not nearly uniform.
            let q = try writeRandomNpy(dir.path("q.npy"), shape: [t, h, d], spread: 3, seed: 11)
            let k = try writeRandomNpy(dir.path("k.npy"), shape: [t, kvh, d], spread: 1, seed: 12)
            let v = try writeRandomNpy(dir.path("v.npy"), shape: [t, kvh, d], spread: 1, seed: 13)
            let inputs = ["--q", dir.path("q.npy"), "--k", dir.path("k.npy"), "--v", dir.path("v.npy")] + (causal ? ["--causal"] : [])

            func run(ranks: Int, strategy: String) async throws -> (o: [Float], lse: [Float]) {
                let (oPath, lsePath) = (dir.path("o-\(ranks)-\(strategy).npy"), dir.path("lse-\(ranks)-\(strategy).npy"))
                let result = try await launch(ranks: ranks, arguments: ["run", "--strategy", strategy, "--out", oPath, "--lse", lsePath] + inputs)
                try #require(result.status == 0, "run failed\n\(result)")
                #expect(occurrences(of: "wrote O to \(oPath)", in: result.stdout) == 1, "\(result)")
                let o = try NpyFile.load(oPath), lse = try NpyFile.load(lsePath)
                #expect(o.shape == [t, h, d], "O has shape \(o.shape) at \(ranks) ranks")
                #expect(lse.shape == [h, t], "LSE has shape \(lse.shape) at \(ranks) ranks")
                #expect(
                    !o.values.contains { !$0.isFinite } && !lse.values.contains { !$0.isFinite },
                    "non-finite values at \(ranks) ranks (every query sees at least one key)")
                return (o.values, lse.values)
            }

            let single = try await run(ranks: 1, strategy: "ring")
            for (ranks, strategy) in [(3, "zigzag"), (4, "ring")] {
                let distributed = try await run(ranks: ranks, strategy: strategy)
                let oError = maxAbsDifference(distributed.o, single.o)
                let lseError = maxRelDifference(distributed.lse, single.lse)
                #expect(oError <= 1e-5, "O at \(ranks) ranks (\(strategy)) differs from 1 rank by \(oError)")
                #expect(lseError <= 1e-5, "LSE at \(ranks) ranks (\(strategy)) differs from 1 rank by \(lseError) (rel)")
            }

            let shape = try AttentionShape(heads: h, kvHeads: kvh, headDim: d)
            let reference = ReferenceAttention.compute(
                q: TokenTensor(tokens: t, heads: h, headDim: d, values: q),
                k: TokenTensor(tokens: t, heads: kvh, headDim: d, values: k),
                v: TokenTensor(tokens: t, heads: kvh, headDim: d, values: v),
                shape: shape, mask: causal ? .causal : .none)
            let oError = maxAbsDifference(single.o, reference.output)
            let lseError = maxRelDifference(single.lse, reference.lse)
            #expect(oError <= 1e-4, "O differs from float64 by \(oError)")
            #expect(lseError <= 1e-4, "LSE differs from float64 by \(lseError) (rel)")
            // Not trivially passing: the outputs are not all zero and the heads differ.
            #expect(single.o.contains { abs($0) > 0.05 })
        }

        /// --scale reaches the kernel: a different scale gives a different, still correct, LSE.
        @Test("--scale is applied")
        func scaleIsApplied() async throws {
            let (t, h, kvh, d) = (37, 2, 1, 16)
            let dir = try ScratchDirectory()
            let q = try writeRandomNpy(dir.path("q.npy"), shape: [t, h, d], spread: 2, seed: 21)
            let k = try writeRandomNpy(dir.path("k.npy"), shape: [t, kvh, d], seed: 22)
            let v = try writeRandomNpy(dir.path("v.npy"), shape: [t, kvh, d], seed: 23)
            let result = try await launch(
                ranks: 2,
                arguments: [
                    "run", "--q", dir.path("q.npy"), "--k", dir.path("k.npy"), "--v", dir.path("v.npy"),
                    "--scale", "0.7", "--causal", "--out", dir.path("o.npy"), "--lse", dir.path("lse.npy"),
                ])
            try #require(result.status == 0, "\(result)")
            let shape = try AttentionShape(heads: h, kvHeads: kvh, headDim: d, scale: 0.7)
            let reference = ReferenceAttention.compute(
                q: TokenTensor(tokens: t, heads: h, headDim: d, values: q), k: TokenTensor(tokens: t, heads: kvh, headDim: d, values: k),
                v: TokenTensor(tokens: t, heads: kvh, headDim: d, values: v), shape: shape, mask: .causal)
            #expect(maxAbsDifference(try NpyFile.load(dir.path("o.npy")).values, reference.output) <= 1e-4)
            #expect(maxRelDifference(try NpyFile.load(dir.path("lse.npy")).values, reference.lse) <= 1e-4)
        }
    }
}
