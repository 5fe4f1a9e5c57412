// The backward pass under mpirun: `verify --backward` for every strategy that computes gradients
// at 1 to 4 ranks (uneven tokens, head dims 32..128, MHA/GQA/MQA, every mask), errors that do
// not grow with the world size, `run --backward` writing dQ, dK and dV that match a float64
// backward computed here, and the refusals (star, a bad dO, gradients asked without --backward).

import AttentionCore
import AttentionJobs
import FileFormats
import Foundation
import Testing

/// Asserts what a passing `verify --backward --json` must say: gradients within 1e-5 of the
/// single-rank backward, and within 1e-4 of float64, on every row of both.
@discardableResult
func expectGradientsVerified(
    _ result: LaunchResult, ranks: Int, tokens: Int, bounds: (single: Double, reference: Double) = (1e-5, 1e-4),
    sourceLocation: SourceLocation = #_sourceLocation
) throws -> GradientJSON {
    try expectVerified(result, ranks: ranks, tokens: tokens, bounds: bounds, sourceLocation: sourceLocation)
    let json = try result.report(VerifyJSON.self, sourceLocation: sourceLocation)
    let backward = try #require(json.backward, "no backward section\n\(result)", sourceLocation: sourceLocation)
    #expect(backward.passed, "backward not passed\n\(result)", sourceLocation: sourceLocation)
    let maxAbs = { (e: GradientJSON.Errors) in [("dq", e.dqMaxAbs), ("dk", e.dkMaxAbs), ("dv", e.dvMaxAbs)] }
    for ((tensor, single), (_, reference)) in zip(maxAbs(backward.singleRank), maxAbs(backward.reference)) {
        #expect(single <= bounds.single, "\(tensor) differs from the single-rank backward by \(single)", sourceLocation: sourceLocation)
        #expect(reference <= bounds.reference, "\(tensor) differs from float64 by \(reference)", sourceLocation: sourceLocation)
    }
    // Every query row and every key row compared, once.
    #expect(backward.singleRank.queryRows == tokens, sourceLocation: sourceLocation)
    #expect(backward.singleRank.keyRows == tokens, sourceLocation: sourceLocation)
    #expect(backward.reference.keyRows == tokens, "small problems are checked on every row", sourceLocation: sourceLocation)
    return backward
}

extension EndToEnd {
    @Suite("backward")
    struct Backward {
        static let shape = ["--heads", "4", "--kv-heads", "2", "--head-dim", "32"]

        /// 203 tokens divide by none of 2, 3, 4 or 2P.
        @Test("verify --backward, uneven tokens, causal, at 1-4 ranks", arguments: [1, 2, 3, 4], ["ring", "zigzag", "heads", "mesh"])
        func causal(ranks: Int, strategy: String) async throws {
            let result = try await launch(
                ranks: ranks,
                arguments: [
                    "verify", "--backward", "--json", "--tokens", "203", "--causal",
                    "--strategy", strategy,
                ] + Self.shape)
            try expectGradientsVerified(result, ranks: ranks, tokens: 203)
        }

        struct MaskCase: Sendable, CustomTestStringConvertible {
            let ranks: Int
            let strategy: String
            let arguments: [String]
            var testDescription: String { "\(strategy) at \(ranks) ranks \(arguments.joined(separator: " "))" }
        }

        @Test(
            "verify --backward, other masks and shapes",
            arguments: [
                MaskCase(ranks: 3, strategy: "ring", arguments: ["--tokens", "157", "--heads", "4", "--kv-heads", "4", "--head-dim", "128"]),
                MaskCase(ranks: 3, strategy: "zigzag", arguments: ["--tokens", "157", "--heads", "6", "--kv-heads", "1", "--head-dim", "48"]),
                MaskCase(ranks: 2, strategy: "heads", arguments: ["--tokens", "131", "--heads", "4", "--kv-heads", "1", "--head-dim", "64"]),
                MaskCase(ranks: 4, strategy: "mesh", arguments: ["--tokens", "131", "--heads", "8", "--kv-heads", "2", "--head-dim", "80", "--mesh", "2x2"]),
                MaskCase(ranks: 4, strategy: "heads", arguments: ["--tokens", "99", "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--window", "9"]),
                MaskCase(ranks: 3, strategy: "ring", arguments: ["--tokens", "211", "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--window", "23"]),
                MaskCase(
                    ranks: 4, strategy: "s2",
                    arguments: [
                        "--tokens", "301", "--heads", "8", "--kv-heads", "2", "--head-dim", "32",
                        "--s2-block", "16", "--s2-local", "2", "--s2-stride", "4",
                    ]),
                MaskCase(ranks: 4, strategy: "zigzag", arguments: ["--tokens", "3", "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--causal"]),
                // Packed documents: the same mask in the gradients, on every layout (whole documents
                // end the pass after one step, so each dK/dV sum goes straight home).
                MaskCase(
                    ranks: 4, strategy: "ring",
                    arguments: [
                        "--tokens", "403", "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--causal",
                        "--random-documents", "7",
                    ]),
                MaskCase(
                    ranks: 3, strategy: "zigzag",
                    arguments: [
                        "--tokens", "331", "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--causal",
                        "--random-documents", "9", "--document-layout", "whole",
                    ]),
                MaskCase(
                    ranks: 3, strategy: "zigzag",
                    arguments: [
                        "--tokens", "331", "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--causal",
                        "--random-documents", "9", "--document-layout", "head-tail",
                    ]),
                MaskCase(
                    ranks: 4, strategy: "mesh",
                    arguments: [
                        "--tokens", "257", "--heads", "4", "--kv-heads", "1", "--head-dim", "64",
                        "--documents", "100,0,3,154", "--mesh", "2x2",
                    ]),
                MaskCase(
                    ranks: 2, strategy: "heads",
                    arguments: [
                        "--tokens", "257", "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--causal",
                        "--documents", "1,2,3,251", "--window", "40",
                    ]),
                // Many short documents: hundreds of segments per rank, each paired only with those it may see.
                MaskCase(
                    ranks: 3, strategy: "zigzag",
                    arguments: [
                        "--tokens", "1201", "--heads", "2", "--kv-heads", "1", "--head-dim", "32", "--causal",
                        "--random-documents", "700", "--document-layout", "head-tail",
                    ]),
            ])
        func masks(_ c: MaskCase) async throws {
            let result = try await launch(ranks: c.ranks, arguments: ["verify", "--backward", "--json", "--strategy", c.strategy] + c.arguments)
            let tokens = Int(c.arguments[c.arguments.firstIndex(of: "--tokens")! + 1])!
            try expectGradientsVerified(result, ranks: c.ranks, tokens: tokens)
        }

        /// The complaint about other ring backwards: errors that grow with the ring. The same
        /// inputs at 1, 2, 3 and 4 ranks; the largest float64 error at any size stays within
        /// twice the one-rank error (float32 rounding of a different summation order), far
        /// below what one stale or lost block would cause.
        @Test("gradient errors do not grow with the world size", arguments: ["zigzag", "ring"])
        func errorsDoNotGrow(strategy: String) async throws {
            var errors: [Double] = []
            for ranks in 1 ... 4 {
                let result = try await launch(
                    ranks: ranks,
                    arguments: [
                        "verify", "--backward", "--json", "--tokens", "509", "--causal",
                        "--heads", "4", "--kv-heads", "2", "--head-dim", "64", "--strategy", strategy,
                    ])
                let backward = try expectGradientsVerified(result, ranks: ranks, tokens: 509)
                errors.append([backward.reference.dqMaxAbs, backward.reference.dkMaxAbs, backward.reference.dvMaxAbs].max()!)
            }
            #expect(errors[0] > 0, "the one-rank error should be float32 rounding, not zero: \(errors)")
            #expect(errors.allSatisfy { $0 <= 2 * errors[0] }, "float64 errors at 1, 2, 3, 4 ranks: \(errors)")
        }

        /// run --backward with every input from files: dQ, dK, dV against a float64 backward
        /// computed here, and the files' shapes.
        @Test("run --backward writes dQ, dK and dV from a dO file")
        func runWritesGradients() async throws {
            let scratch = try ScratchDirectory()
            let (tokens, heads, kvHeads, d) = (61, 4, 2, 32)
            let q = try writeRandomNpy(scratch.path("q.npy"), shape: [tokens, heads, d], seed: 1)
            let k = try writeRandomNpy(scratch.path("k.npy"), shape: [tokens, kvHeads, d], seed: 2)
            let v = try writeRandomNpy(scratch.path("v.npy"), shape: [tokens, kvHeads, d], seed: 3)
            let dO = try writeRandomNpy(scratch.path("do.npy"), shape: [tokens, heads, d], seed: 4)
            let result = try await launch(
                ranks: 3,
                arguments: [
                    "run", "--json", "--backward", "--strategy", "zigzag", "--causal", "--q", scratch.path("q.npy"), "--k", scratch.path("k.npy"),
                    "--v", scratch.path("v.npy"), "--do", scratch.path("do.npy"), "--dq", scratch.path("dq.npy"), "--dk", scratch.path("dk.npy"),
                    "--dv", scratch.path("dv.npy"),
                ])
            #expect(result.status == 0, "\(result)")
            let json = try result.report(RunReport.self)
            #expect(json.backward?.flops == 2.5 * json.flops)
            #expect((json.backward?.gflops ?? 0) > 0)

            let shape = try AttentionShape(heads: heads, kvHeads: kvHeads, headDim: d)
            let tensor = { (values: [Float], h: Int) in TokenTensor(tokens: tokens, heads: h, headDim: d, values: values) }
            let all = Array(0 ..< tokens)
            let reference = ReferenceBackward.compute(
                q: tensor(q, heads), queryPositions: all, k: tensor(k, kvHeads), v: tensor(v, kvHeads),
                keyPositions: all, outputGrad: tensor(dO, heads), shape: shape, mask: .causal)
            for (name, expected, rowShape) in [("dq", reference.dq, [heads, d]), ("dk", reference.dk, [kvHeads, d]), ("dv", reference.dv, [kvHeads, d])] {
                let file = try NpyFile.load(scratch.path("\(name).npy"))
                #expect(file.shape == [tokens] + rowShape, "\(name) shape")
                #expect(maxAbsDifference(file.values, expected) <= 1e-5, "\(name) against float64")
            }
        }

        @Test("star refuses --backward on every rank, before computing")
        func starRefuses() async throws {
            let result = try await launch(ranks: 2, arguments: ["run", "--backward", "--strategy", "star", "--tokens", "64"])
            #expect(result.status != 0)
            #expect(result.stderr.contains("inference-only"), "\(result)")
        }

        @Test("a dO of the wrong shape is refused, naming the file and the shape expected")
        func wrongShapeOutputGrad() async throws {
            let scratch = try ScratchDirectory()
            try writeRandomNpy(scratch.path("do.npy"), shape: [64, 4, 33], seed: 5)
            let result = try await launch(ranks: 2, arguments: ["run", "--backward", "--do", scratch.path("do.npy"), "--tokens", "64"] + Self.shape)
            #expect(result.status != 0)
            #expect(result.stderr.contains(scratch.path("do.npy")) && result.stderr.contains("expected [64, 4, 32]"), "\(result)")
        }

        @Test("a dO holding NaN is refused with its position")
        func nanOutputGrad() async throws {
            let scratch = try ScratchDirectory()
            var values = (0 ..< 64 * 4 * 32).map { Float($0 % 7) / 7 }
            values[(40 * 4 + 2) * 32 + 5] = .nan
            try NpyFile.save(scratch.path("do.npy"), shape: [64, 4, 32], values: values)
            let result = try await launch(ranks: 2, arguments: ["run", "--backward", "--do", scratch.path("do.npy"), "--tokens", "64"] + Self.shape)
            #expect(result.status != 0)
            #expect(result.stderr.contains("token 40, head 2, dim 5"), "\(result)")
        }

        @Test("gradients asked for without --backward are refused before launch")
        func gradientsNeedBackward() async throws {
            let scratch = try ScratchDirectory()
            let result = try await launch(ranks: 1, arguments: ["run", "--dq", scratch.path("dq.npy"), "--tokens", "64"])
            #expect(result.status == 64, "\(result)")
            #expect(result.stderr.contains("--dq is a gradient: give --backward"), "\(result)")
            #expect(!FileManager.default.fileExists(atPath: scratch.path("dq.npy")))
        }
    }
}
