// Packed documents end to end: `verify` at 1-4 ranks for ring, zigzag, heads and mesh with
// documents of awkward lengths (0 to 3 tokens, odd, long) and uneven token counts, causal and
// not; each document layout forced; documents from a cu_seqlens file; the balance `run` reports;
// and bad cu_seqlens refused on every rank with one message.

import AttentionCore
import AttentionJobs
import Foundation
import Testing

/// A strategy, and whether the documents are causal.
struct DocumentVariant: Sendable, CustomTestStringConvertible {
    let strategy: String
    let causal: Bool

    static let all = ["ring", "zigzag", "heads", "mesh"].flatMap { s in [false, true].map { DocumentVariant(strategy: s, causal: $0) } }

    /// Causal: 9 random documents over 263 tokens; not: lengths given inline, 251 tokens.
    var arguments: [String] {
        ["--strategy", strategy, "--heads", "4", "--kv-heads", "2", "--head-dim", "32"]
            + (causal ? ["--causal", "--random-documents", "9", "--tokens", "263"] : ["--documents", "0,1,2,3,40,0,77,1,5,122"])
    }
    var tokens: Int { causal ? 263 : 251 }
    var testDescription: String { "\(strategy)\(causal ? " causal" : "")" }
}

/// cu_seqlens as a 1-D .npy of `dtype` ('<i4' or '<i8').
func writeCuSeqlens(_ path: String, _ offsets: [Int], dtype: String = "<i4", shape: [Int]? = nil) throws {
    var data = [UInt8]()
    for offset in offsets {
        if dtype == "<i4" { withUnsafeBytes(of: Int32(offset).littleEndian) { data += $0 } } else { withUnsafeBytes(of: Int64(offset).littleEndian) { data += $0 } }
    }
    try writeBytes(path, handWrittenNpy(descr: dtype, shape: shape ?? [offsets.count], data: data))
}

extension EndToEnd {
    @Suite("packed documents")
    struct Documents {
        @Test("verify at 1-4 ranks", arguments: [1, 2, 3, 4], DocumentVariant.all)
        func verify(ranks: Int, variant: DocumentVariant) async throws {
            let result = try await launch(ranks: ranks, arguments: ["verify", "--json"] + variant.arguments)
            try expectVerified(result, ranks: ranks, tokens: variant.tokens)
            #expect(try result.report(VerifyJSON.self).mask == (variant.causal ? "causal within 9 documents" : "10 documents"), "\(result)")
        }

        @Test("each document layout, forced, is exact", arguments: ["head-tail", "whole", "mixed"], ["ring", "mesh"])
        func layouts(layout: String, strategy: String) async throws {
            let result = try await launch(
                ranks: 4,
                arguments: [
                    "verify", "--json", "--strategy", strategy, "--mesh", "2x2", "--document-layout", layout,
                    "--causal", "--documents", "60,3,0,1,60,2,70,60", "--heads", "4", "--head-dim", "32",
                ]
                .filter { strategy == "mesh" || !["--mesh", "2x2"].contains($0) })
            try expectVerified(result, ranks: 4, tokens: 256)
        }

        @Test("many documents: hundreds of segments per rank, every layout, exact", arguments: ["ring", "zigzag", "mesh"])
        func manyDocuments(strategy: String) async throws {
            for layout in ["whole", "head-tail", "mixed"] {
                let result = try await launch(
                    ranks: 3,
                    arguments: [
                        "verify", "--json", "--strategy", strategy, "--document-layout", layout, "--causal", "--tokens", "2003",
                        "--random-documents", "1500", "--heads", "3", "--kv-heads", "1", "--head-dim", "32",
                    ] + (strategy == "mesh" ? ["--mesh", "1x3"] : []))
                try expectVerified(result, ranks: 3, tokens: 2003)
            }
        }

        /// The issue-22 case: the layout, the ring's steps and the kernel paired every query
        /// segment with every key segment, so 60,000 one-token documents ran past a minute (and
        /// 16,000 took 10 s). Now each key segment meets only the query segments that may see it.
        @Test("60,000 one-token documents finish well inside the timeout", arguments: ["ring", "zigzag", "mesh", "zigzag --backward"])
        func oneTokenDocuments(_ variant: String) async throws {
            let words = variant.split(separator: " ").map(String.init)
            let result = try await launch(
                ranks: 2,
                arguments: [
                    "run", "--strategy", words[0], "--tokens", "60000", "--random-documents", "60000", "--causal",
                    "--heads", "2", "--kv-heads", "1", "--head-dim", "4",
                ] + words.dropFirst() + (words[0] == "mesh" ? ["--mesh", "1x2"] : []),
                timeout: 60)
            #expect(result.status == 0, "\(result)")
        }

        @Test("more random documents than tokens are refused, synthetic or from files")
        func tooManyRandomDocuments() async throws {
            let refused = try await launch(ranks: 2, arguments: ["run", "--tokens", "200", "--random-documents", "100000000"], timeout: 60)
            #expect(refused.status == 64, "\(refused)")
            #expect(occurrences(of: "--random-documents 100000000 asks for more documents than the sequence's 200 tokens", in: refused.seqparStderr) == 1, "\(refused)")
            let dir = try ScratchDirectory()
            let saved = try await launch(
                ranks: 1, arguments: ["run", "--tokens", "50", "--heads", "2", "--kv-heads", "1", "--head-dim", "32", "--save-inputs", dir.url.path], timeout: 60)
            #expect(saved.status == 0, "\(saved)")
            let fromFiles = try await launch(
                ranks: 2,
                arguments: ["run", "--q", dir.path("Q.npy"), "--k", dir.path("K.npy"), "--v", dir.path("V.npy"), "--random-documents", "51"],
                timeout: 60)
            #expect(fromFiles.status != 0, "\(fromFiles)")
            #expect(occurrences(of: "--random-documents 51 asks for more documents than the sequence's 50 tokens", in: fromFiles.seqparStderr) == 1, "\(fromFiles)")
        }

        @Test("documents from a cu_seqlens file, with a window")
        func cuSeqlensFile() async throws {
            let dir = try ScratchDirectory()
            try writeCuSeqlens(dir.path("cu.npy"), [0, 0, 1, 3, 140, 140, 200, 301], dtype: "<i8")
            let result = try await launch(
                ranks: 3,
                arguments: [
                    "verify", "--json", "--strategy", "zigzag", "--tokens", "301", "--window", "40",
                    "--cu-seqlens", dir.path("cu.npy"), "--heads", "4", "--head-dim", "32",
                ])
            try expectVerified(result, ranks: 3, tokens: 301)
            #expect(try result.report(VerifyJSON.self).mask == "window 40 within 7 documents", "\(result)")
        }

        @Test("run reports the layout and the work balance it got")
        func balanceReported() async throws {
            let result = try await launch(
                ranks: 4,
                arguments: [
                    "run", "--json", "--strategy", "zigzag", "--causal", "--random-documents", "12",
                    "--tokens", "3000", "--heads", "2", "--kv-heads", "1", "--head-dim", "32",
                ])
            #expect(result.status == 0, "\(result)")
            let json = try result.report(RunReport.self)
            let predicted = try #require(json.predictedImbalance, "\(result)"), measured = json.imbalance
            #expect(predicted >= 1 && predicted <= 1.05, "\(result)")
            // The prediction walks the kernel's tiles and blocks as the ring pass meets them: it is the FLOPs spent.
            #expect(abs(measured - predicted) <= 1e-9, "predicted \(predicted), measured \(measured)\n\(result)")
            #expect(["head-tail documents", "whole documents", "mixed documents", "zigzag"].contains(json.layout ?? ""), "\(result)")
            let text = try await launch(ranks: 2, arguments: ["run", "--strategy", "ring", "--documents", "10,20,0,30", "--heads", "2", "--head-dim", "16"])
            #expect(text.status == 0 && text.stdout.contains("imbalance, max/mean"), "\(text)")
            #expect(text.stdout.contains("documents laid out as"), "\(text)")
        }

        @Test(
            "bad cu_seqlens is refused on every rank with one message",
            arguments: [
                ([1, 100, 200], "<i4", nil, "starts at 1; cu_seqlens must start at 0"),
                ([0, 150, 120, 200], "<i8", nil, "decreases at index 2 (120 after 150)"),
                ([0, 100, 199], "<i4", nil, "ends at 199 but the sequence has 200 tokens"),
                ([0, 100, 150, 200], "<f4", nil, "dtype is '<f4'; expected int32 or int64"),
                ([0, 100, 150, 200], "<i4", [2, 2], "has 2 dimensions; expected a 1-D array"),
            ] as [([Int], String, [Int]?, String)])
        func badCuSeqlens(_ offsets: [Int], dtype: String, shape: [Int]?, message: String) async throws {
            let dir = try ScratchDirectory()
            let path = dir.path("cu.npy")
            if dtype == "<f4" {
                try writeBytes(
                    path,
                    handWrittenNpy(
                        shape: [offsets.count],
                        data: offsets.flatMap { value in
                            withUnsafeBytes(of: Float(value).bitPattern.littleEndian, Array.init)
                        }))
            } else {
                try writeCuSeqlens(path, offsets, dtype: dtype, shape: shape)
            }
            let result = try await launch(ranks: 3, arguments: ["verify", "--causal", "--tokens", "200", "--cu-seqlens", path], timeout: 60)
            #expect(result.status != 0, "\(result)")
            #expect(occurrences(of: message, in: result.seqparStderr) == 1, "'\(message)' not printed exactly once\n\(result)")
            #expect(occurrences(of: "--cu-seqlens \(path)", in: result.seqparStderr) == 1, "\(result)")
        }

        @Test(
            "documents that cannot combine are refused before any work",
            arguments: [
                (["--documents", "5,5", "--random-documents", "2"], "--documents and --random-documents each give the documents"),
                (["--documents", "5,x"], "--documents takes lengths separated by commas"),
                (["--documents", "5,5", "--tokens", "11"], "--documents lengths sum to 10 but --tokens is 11"),
                (["--random-documents", "3", "--s2-block", "4", "--s2-local", "1", "--s2-stride", "2"], "do not combine: S2 is a mask of its own"),
            ])
        func refusedArguments(_ arguments: [String], message: String) async throws {
            let result = try await launch(ranks: 2, arguments: ["run"] + arguments, timeout: 60)
            #expect(result.status == 64, "\(result)")
            #expect(occurrences(of: message, in: result.seqparStderr) == 1, "\(result)")
        }
    }
}
