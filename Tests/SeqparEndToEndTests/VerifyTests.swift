// `seqpar verify` at several world sizes: the distributed result against the single-rank result
// and the float64 reference, for uneven token counts, fewer tokens than ranks, and a covering
// set of shapes (head dims 32..128, MHA/GQA/MQA, causal or not, odd tilings); and the exit
// status and text that follow the tolerance.

import AttentionJobs
import Foundation
import Testing

/// A strategy and a mask.
struct Variant: Sendable, CustomTestStringConvertible {
    let strategy: String
    let causal: Bool

    static let all = ["ring", "zigzag"].flatMap { s in [false, true].map { Variant(strategy: s, causal: $0) } }

    var arguments: [String] { ["--strategy", strategy] + (causal ? ["--causal"] : []) }
    var testDescription: String { "\(strategy)\(causal ? " causal" : "")" }
}

/// Asserts what a passing `verify --json` must say about a run of `tokens` tokens on `ranks` ranks.
/// `bounds`: the largest errors against one rank and float64 (float32's unless given).
func expectVerified(
    _ result: LaunchResult, ranks: Int, tokens: Int, bounds: (single: Double, reference: Double) = (1e-5, 1e-4),
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    #expect(result.status == 0, "verify failed\n\(result)", sourceLocation: sourceLocation)
    let json = try result.report(VerifyJSON.self, sourceLocation: sourceLocation)
    #expect(json.passed, "passed is not true\n\(result)", sourceLocation: sourceLocation)
    #expect(json.ranks == ranks, sourceLocation: sourceLocation)
    #expect(json.tokens == tokens, sourceLocation: sourceLocation)

    // Against the single-rank result of the same kernel: only the merge order differs.
    let single = json.singleRank.oMaxAbs, singleLSE = json.singleRank.lseMaxRel
    #expect(single <= bounds.single, "O differs from the single-rank result by \(single)", sourceLocation: sourceLocation)
    #expect(singleLSE <= bounds.single, "LSE differs from the single-rank result by \(singleLSE) (rel)", sourceLocation: sourceLocation)
    #expect(json.singleRank.rows == tokens, "not every row was compared", sourceLocation: sourceLocation)

    // Against float64: a small problem is checked on every row.
    #expect(json.reference.rows > 0, "no row was checked against float64", sourceLocation: sourceLocation)
    let reference = json.reference.oMaxAbs, referenceLSE = json.reference.lseMaxRel
    #expect(reference <= bounds.reference, "O differs from float64 by \(reference)", sourceLocation: sourceLocation)
    #expect(referenceLSE <= bounds.reference, "LSE differs from float64 by \(referenceLSE) (rel)", sourceLocation: sourceLocation)

    // One entry per rank, and together they hold every token once.
    #expect(json.perRank.count == ranks, sourceLocation: sourceLocation)
    let rows = json.perRank.map(\.singleRank.rows).reduce(0, +)
    #expect(rows == tokens, "per-rank rows add up to \(rows), not \(tokens)", sourceLocation: sourceLocation)
}

extension EndToEnd {
    @Suite("verify")
    struct Verify {
        /// 203 tokens divide by none of 2, 3, 4 (or 2P for zigzag): every shard is uneven.
        @Test("uneven tokens at 1-4 ranks", arguments: [1, 2, 3, 4], Variant.all)
        func unevenTokens(ranks: Int, variant: Variant) async throws {
            let result = try await launch(
                ranks: ranks,
                arguments: [
                    "verify", "--json", "--tokens", "203", "--heads", "4",
                    "--kv-heads", "2", "--head-dim", "32",
                ] + variant.arguments)
            try expectVerified(result, ranks: ranks, tokens: 203)
        }

        /// Ranks with no tokens at all (zigzag at 4 ranks cuts 3 tokens into 8 chunks) must still
        /// take part in every exchange and hold nothing.
        @Test(
            "fewer tokens than ranks",
            arguments: [
                (ranks: 4, tokens: 3, variant: Variant(strategy: "ring", causal: true)),
                (ranks: 4, tokens: 3, variant: Variant(strategy: "zigzag", causal: true)),
                (ranks: 4, tokens: 5, variant: Variant(strategy: "zigzag", causal: false)),
                (ranks: 3, tokens: 1, variant: Variant(strategy: "ring", causal: false)),
                (ranks: 4, tokens: 1, variant: Variant(strategy: "zigzag", causal: true)),
                (ranks: 1, tokens: 1, variant: Variant(strategy: "ring", causal: true)),
            ])
        func fewerTokensThanRanks(ranks: Int, tokens: Int, variant: Variant) async throws {
            let result = try await launch(
                ranks: ranks,
                arguments: [
                    "verify", "--json", "--tokens", String(tokens), "--heads", "4",
                    "--kv-heads", "2", "--head-dim", "32",
                ] + variant.arguments)
            try expectVerified(result, ranks: ranks, tokens: tokens)
        }

        struct ShapeCase: Sendable, CustomTestStringConvertible {
            let heads: Int, kvHeads: Int, headDim: Int
            let variant: Variant
            var extra: [String] = []
            var testDescription: String { "\(heads)/\(kvHeads) heads, dim \(headDim), \(variant.testDescription) \(extra.joined(separator: " "))" }
        }

        /// A covering set rather than the cross product: every head dim, every head grouping
        /// (MHA 4/4, GQA 8/2, MQA 8/1), both masks and both strategies appear; tilings smaller
        /// than a shard and an explicit scale are in the mix.
        @Test(
            "shapes at 3 ranks",
            arguments: [
                ShapeCase(heads: 4, kvHeads: 4, headDim: 32, variant: Variant(strategy: "ring", causal: true)),
                ShapeCase(heads: 8, kvHeads: 2, headDim: 64, variant: Variant(strategy: "zigzag", causal: false)),
                ShapeCase(heads: 8, kvHeads: 1, headDim: 80, variant: Variant(strategy: "zigzag", causal: true)),
                ShapeCase(heads: 4, kvHeads: 4, headDim: 128, variant: Variant(strategy: "ring", causal: false)),
                ShapeCase(heads: 8, kvHeads: 1, headDim: 128, variant: Variant(strategy: "ring", causal: true)),
                ShapeCase(heads: 8, kvHeads: 2, headDim: 80, variant: Variant(strategy: "ring", causal: false), extra: ["--scale", "0.3"]),
                ShapeCase(
                    heads: 8, kvHeads: 2, headDim: 32, variant: Variant(strategy: "zigzag", causal: true),
                    extra: ["--query-tile", "7", "--key-block", "13"]),
                ShapeCase(
                    heads: 4, kvHeads: 1, headDim: 64, variant: Variant(strategy: "ring", causal: false),
                    extra: ["--query-tile", "16", "--key-block", "5", "--threads", "2"]),
            ])
        func shapes(_ shape: ShapeCase) async throws {
            let result = try await launch(
                ranks: 3,
                arguments: [
                    "verify", "--json", "--tokens", "131", "--heads", String(shape.heads), "--kv-heads", String(shape.kvHeads),
                    "--head-dim", String(shape.headDim), "--seed", "5",
                ] + shape.variant.arguments + shape.extra)
            try expectVerified(result, ranks: 3, tokens: 131)
            let json = try result.report(VerifyJSON.self)
            #expect(json.heads == shape.heads)
            #expect(json.kvHeads == shape.kvHeads)
            #expect(json.headDim == shape.headDim)
        }

        /// The exit status is the verdict: 1 exactly when an error exceeds its tolerance. With a
        /// tolerance of 1e-15 (below float32's resolution) the verdict is read from the errors the
        /// run reports, and the status is checked against them.
        @Test(
            "exit status follows the tolerance",
            arguments: [
                ["--tolerance", "1e-15"],
                ["--reference-tolerance", "1e-15"],
                [],
            ])
        func exitStatusFollowsTolerance(tolerances: [String]) async throws {
            let problem = ["--tokens", "203", "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--causal", "--strategy", "zigzag"]
            let result = try await launch(ranks: 3, arguments: ["verify", "--json"] + problem + tolerances)
            let json = try result.report(VerifyJSON.self)
            let tolerance = json.tolerance, referenceTolerance = json.referenceTolerance
            #expect(tolerance == (tolerances.first == "--tolerance" ? 1e-15 : 1e-5))
            #expect(referenceTolerance == (tolerances.first == "--reference-tolerance" ? 1e-15 : 1e-4))
            let single = (json.singleRank.oMaxAbs, json.singleRank.lseMaxRel)
            let reference = (json.reference.oMaxAbs, json.reference.lseMaxRel)
            let above = single.0 > tolerance || single.1 > tolerance || reference.0 > referenceTolerance || reference.1 > referenceTolerance
            #expect(result.status == (above ? 1 : 0), "exit status \(result.status) with errors \(single), \(reference)\n\(result)")
            #expect(json.passed == !above)
            if tolerances.isEmpty {
                #expect(!above, "the default tolerances fail\n\(result)")
            } else if tolerances.first == "--reference-tolerance" {
                // float32 results cannot agree with float64 to 1e-15. (Against the single-rank
                // float32 result they could, in principle, agree exactly: no such claim there.)
                #expect(above, "errors \(reference) against float64 are below 1e-15: implausible for float32")
            }

            // The same run as text: the largest error is located, and the verdict printed.
            let text = try await launch(ranks: 3, arguments: ["verify"] + problem + tolerances)
            #expect(text.status == result.status, "text and JSON runs disagree\n\(text)")
            let lines = text.stdout.split(whereSeparator: \.isNewline).map(String.init)
            let sentence = try #require(lines.first { $0.hasPrefix("against the single-rank result") }, "no error sentence\n\(text)")
            for word in ["rank ", "token ", "head "] {
                #expect(sentence.contains(word), "the sentence about the largest error does not name the \(word)\n\(sentence)")
            }
            #expect(lines.contains { $0.hasPrefix("against the float64 reference") }, "no float64 sentence\n\(text)")
            #expect(lines.last == (above ? "FAIL" : "PASS"), "verdict line \(lines.last ?? "none")\n\(text)")
            #expect(occurrences(of: above ? "FAIL" : "PASS", in: text.stdout) == 1, "verdict printed more than once\n\(text)")
            #expect(text.stdout.contains("ABOVE") == above)
        }
    }
}
