// Mask slices end to end: `verify` at 1-4 ranks for ring, zigzag, heads, mesh and star with every
// family and a file of random overlapping slices, over uneven token counts, GQA and head dims
// 32-128; `verify --backward` for the strategies with gradients; causal and packed documents
// written as slices giving the same output files as the masks themselves; the balance `run`
// reports for every family at 4 ranks; bad slice files and options refused on every rank.

import AttentionCore
import AttentionJobs
import FileFormats
import Foundation
import Testing

/// A slice file of `rows` (five integers each) as int32 or int64.
func writeSlices(_ path: String, _ rows: [Int], dtype: String = "<i8", shape: [Int]? = nil) throws {
    try writeCuSeqlens(path, rows, dtype: dtype, shape: shape ?? [rows.count / 5, 5])
}

/// A mask as the command line gives it, with the token count it needs.
struct SliceVariant: Sendable, CustomTestStringConvertible {
    let name: String
    let options: [String]
    let tokens: Int
    /// Random slices (seeded) written to a file instead of options.
    var randomSlices: UInt64?

    static let all = [
        SliceVariant(name: "prefix-LM per document", options: ["--prefix-lm", "20", "--documents", "0,90,3,1,120"], tokens: 214),
        SliceVariant(name: "shared question", options: ["--shared-question", "61,40,1,0,57"], tokens: 159),
        SliceVariant(name: "block-causal", options: ["--block-causal", "37", "--tokens", "203"], tokens: 203),
        SliceVariant(name: "global + window", options: ["--global-window", "3,29", "--tokens", "181"], tokens: 181),
        SliceVariant(name: "random slices", options: ["--tokens", "197"], tokens: 197, randomSlices: 21),
    ]

    func arguments(in dir: ScratchDirectory) throws -> [String] {
        guard let seed = randomSlices else { return options }
        let path = dir.path("slices-\(seed).npy")
        try writeSlices(path, MaskSlices.random(count: 25, tokens: tokens, seed: seed).rows)
        return options + ["--mask-slices", path]
    }

    var testDescription: String { name }
}

extension EndToEnd {
    @Suite("mask slices")
    struct MaskSliceRuns {
        static let shapes = [["--heads", "4", "--kv-heads", "2", "--head-dim", "32"], ["--heads", "2", "--kv-heads", "1", "--head-dim", "128"]]

        @Test("verify at 1-4 ranks, every strategy", arguments: [1, 2, 3, 4], SliceVariant.all)
        func verify(ranks: Int, variant: SliceVariant) async throws {
            let dir = try ScratchDirectory()
            let strategies = ["ring", "zigzag", "heads", "mesh", "star", "s2"]
            // Each rank count takes the strategies in a different order, so every pair is run;
            // zigzag and s2 (each its own exchange) at every count.
            for (n, strategy) in strategies.enumerated() where (n + ranks) % 2 == 0 || strategy == "zigzag" || strategy == "s2" {
                let shape = Self.shapes[(n + ranks) % 2]
                if strategy == "heads" && ranks == 3 { continue }  // 4 heads over 3 ranks: heads refuses it
                let result = try await launch(
                    ranks: ranks,
                    arguments: ["verify", "--json", "--strategy", strategy] + shape + (try variant.arguments(in: dir))
                        + (strategy == "star" ? ["--queries", "7"] : []))
                if strategy == "star" {
                    #expect(result.status == 0, "\(strategy)\n\(result)")
                    #expect(try result.report(VerifyJSON.self).passed, "\(result)")
                } else {
                    try expectVerified(result, ranks: ranks, tokens: variant.tokens)
                }
                let mask = try result.report(VerifyJSON.self).mask
                #expect(variant.randomSlices == nil ? mask.hasSuffix(" mask slices)") : mask == "25 mask slices", "\(mask)\n\(result)")
            }
        }

        /// Contiguous ring: rank r's block goes to the 3 - r ranks after it (6 of 12 blocks); zigzag:
        /// a rank's early chunk to all 3 others, its late chunk to the r ranks whose late chunks follow it.
        @Test(
            "a causal forward sends 1/2 (ring) and 3/4 (zigzag, mesh, s2) of what passing every block on would, at 4 ranks",
            arguments: ["ring", "zigzag", "mesh", "s2"])
        func causalBytes(strategy: String) async throws {
            let result = try await launch(
                ranks: 4,
                arguments: ["run", "--json", "--strategy", strategy, "--causal", "--tokens", "4096", "--heads", "4", "--kv-heads", "4", "--head-dim", "16"]
                    + (strategy == "mesh" ? ["--mesh", "1x4"] : []))
            #expect(result.status == 0, "\(result)")
            let json = try result.report(RunReport.self)
            // Passing every block on: each rank sends 3 blocks of 1024 rows x 2 x 4 x 16 floats.
            let blockBytes = 1024 * 2 * 4 * 16 * 4
            let ring = Double(4 * 3 * blockBytes)
            #expect(Double(json.bytesSent.reduce(0, +)) == (strategy == "ring" ? 0.5 : 0.75) * ring, "\(json.bytesSent)")
            #expect(json.bytesNeeded == json.bytesReceived, "\(result)")
        }

        /// The ring-shaped backward receives the K/V rows a rank reads (as the forward does) and
        /// returns their dK/dV (float32, as K/V are here) straight to their owner: a rank sends
        /// what its forward sent and what its forward received, twice the forward's bytes in all
        /// (passing blocks and their sums around the ring sent every block on, and every sum home).
        @Test(
            "the backward moves only what is read, at 4 ranks",
            arguments: ["ring", "zigzag", "mesh"], [["--causal"], ["--global-window", "16,256"], ["--shared-question", "1024,768,768,768,768"]])
        func backwardBytes(strategy: String, mask: [String]) async throws {
            let problem = ["run", "--json", "--backward", "--tokens", "4096", "--heads", "2", "--kv-heads", "2", "--head-dim", "16", "--strategy", strategy]
            let result = try await launch(ranks: 4, arguments: problem + mask + (strategy == "mesh" ? ["--mesh", "1x4"] : []))
            #expect(result.status == 0, "\(result)")
            let json = try result.report(RunReport.self)
            let backward = try #require(json.backward)
            // bytes_needed counts at the kernel's block granularity, the rows sent at the mask's spans.
            let needed = try #require(json.bytesNeeded)
            #expect(zip(json.bytesReceived, needed).allSatisfy { $0 <= $1 }, "\(json.bytesReceived) \(needed)")
            let expected = zip(json.bytesSent, json.bytesReceived).map { $0 + $1 }
            #expect(backward.bytesSent == expected, "backward \(backward.bytesSent), forward sent + received \(expected)")
            #expect(backward.bytesReceived == expected, "backward \(backward.bytesReceived), forward sent + received \(expected)")
            if mask == ["--causal"] {  // the forward's 1/2 or 3/4 of every block (causalBytes), twice
                let blockBytes: Int = 1024 * 2 * 2 * 16 * 4  // 1024 rows of K and V, 2 heads x 16, float32
                let share: Double = strategy == "ring" ? 0.5 : 0.75
                let total = Double(backward.bytesSent.reduce(0, +))
                #expect(total == 2 * share * Double(4 * 3 * blockBytes), "\(backward.bytesSent)")
            }
        }

        @Test("--strategy auto picks a strategy for slices, and it verifies")
        func auto() async throws {
            let result = try await launch(
                ranks: 3, arguments: ["verify", "--json", "--strategy", "auto", "--block-causal", "64", "--tokens", "500", "--heads", "3", "--kv-heads", "1", "--head-dim", "32"])
            try expectVerified(result, ranks: 3, tokens: 500)
            #expect(["ring", "zigzag", "heads", "mesh"].contains(try result.report(VerifyJSON.self).strategy), "\(result)")
        }

        @Test("verify --backward at 2 and 3 ranks", arguments: ["ring", "zigzag", "heads", "mesh", "s2"], [2, 3])
        func backward(strategy: String, ranks: Int) async throws {
            let dir = try ScratchDirectory()
            for variant in SliceVariant.all where variant.randomSlices != nil || variant.name == "prefix-LM per document" || variant.name == "global + window" {
                let heads = strategy == "heads" ? ["--heads", "\(ranks * 2)", "--kv-heads", "\(ranks)", "--head-dim", "64"] : Self.shapes[ranks % 2]
                let result = try await launch(
                    ranks: ranks, arguments: ["verify", "--json", "--backward", "--strategy", strategy] + heads + (try variant.arguments(in: dir)))
                try expectGradientsVerified(result, ranks: ranks, tokens: variant.tokens)
            }
        }

        @Test("causal and packed documents as slices write the same O and LSE as the masks themselves", arguments: ["ring", "zigzag", "heads"])
        func sameAsTheMasks(strategy: String) async throws {
            let dir = try ScratchDirectory()
            let tokens = 301
            try writeSlices(dir.path("causal.npy"), [0, tokens, 0, tokens, 1], dtype: "<i4")
            let lengths = [0, 100, 1, 200]
            var rows: [Int] = [], start = 0
            for length in lengths where length > 0 {
                rows += [start, start + length, start, start + length, 1]
                start += length
            }
            try writeSlices(dir.path("documents.npy"), rows)
            for (name, mask, slices) in [
                ("causal", ["--causal"], ["--mask-slices", dir.path("causal.npy")]),
                ("documents", ["--causal", "--documents", "0,100,1,200"], ["--mask-slices", dir.path("documents.npy")]),
            ] {
                var outputs: [[Float]] = []
                for (n, options) in [mask, slices].enumerated() {
                    let (o, lse) = (dir.path("\(name)-\(n)-o.npy"), dir.path("\(name)-\(n)-lse.npy"))
                    let result = try await launch(
                        ranks: 3,
                        arguments: [
                            "run", "--strategy", strategy, "--tokens", "\(tokens)", "--heads", "3", "--kv-heads", "3", "--head-dim", "64",
                            "--out", o, "--lse", lse,
                        ] + options)
                    #expect(result.status == 0, "\(result)")
                    outputs.append(try NpyFile.load(o).values + NpyFile.load(lse).values)
                }
                #expect(outputs[0].count == outputs[1].count && !outputs[0].isEmpty)
                let largest = zip(outputs[0], outputs[1]).map { $0 == $1 ? 0 : abs($0 - $1) }.max() ?? .infinity
                #expect(largest <= 1e-6, "\(name) as slices differs by \(largest)")
            }
        }

        @Test(
            "run balances every family's kernel work at 4 ranks within 5%, as it predicts",
            arguments: [
                ["--prefix-lm", "256", "--random-documents", "6"], ["--shared-question", "2048,1536,1536,1536,1536"], ["--block-causal", "512"],
                ["--global-window", "64,1024"],
            ])
        func balance(_ family: [String]) async throws {
            let tokens = family[0] == "--shared-question" ? [] : ["--tokens", "8192"]
            let result = try await launch(
                ranks: 4, arguments: ["run", "--json", "--strategy", "zigzag", "--heads", "1", "--kv-heads", "1", "--head-dim", "16"] + tokens + family)
            #expect(result.status == 0, "\(result)")
            let json = try result.report(RunReport.self)
            let predicted = try #require(json.predictedImbalance, "\(result)")
            #expect(abs(json.imbalance - predicted) <= 1e-9, "predicted \(predicted), measured \(json.imbalance)\n\(result)")
            #expect(json.imbalance <= 1.05, "\(family): max/mean kernel work \(json.imbalance)\n\(result)")
            // What the queries read but their rank does not hold: never more than the ring brings.
            let needed = try #require(json.bytesNeeded, "\(result)")
            #expect(needed.count == 4 && needed.reduce(0, +) > 0, "\(result)")
            // The forward sends each rank only what its queries read: at most what is needed
            // (bytes_needed counts per kernel tile, the exchange per 256 keys of a segment).
            #expect(zip(json.bytesReceived, needed).allSatisfy { $0 <= $1 }, "needed \(needed), received \(json.bytesReceived)")
        }

        /// A contiguous block holds both the global prefix and, far from it, the window a later
        /// rank's queries see: the keys between stay home (a hull of the block would send them).
        @Test("global + window on contiguous blocks: a rank receives no more than its queries read", arguments: ["ring", "mesh"])
        func gapsStayHome(strategy: String) async throws {
            let result = try await launch(
                ranks: 4,
                arguments: ["run", "--json", "--strategy", strategy, "--tokens", "32768", "--heads", "1", "--kv-heads", "1", "--head-dim", "16", "--global-window", "64,4096"]
                    + (strategy == "mesh" ? ["--mesh", "1x4"] : []))
            #expect(result.status == 0, "\(result)")
            let json = try result.report(RunReport.self)
            let needed = try #require(json.bytesNeeded, "\(result)")
            #expect(zip(json.bytesReceived, needed).allSatisfy { $0 <= $1 }, "needed \(needed), received \(json.bytesReceived)")
            // Contiguous blocks of 8192 (the layout run picks here): rank 1 reads rank 0's first 64
            // keys and its last 4095, about half of its rows (K and V, 16 floats each).
            #expect(json.bytesReceived[1] < 4500 * 2 * 16 * 4, "\(json.bytesReceived)")
        }

        @Test(
            "bad slice files are refused on every rank with one message naming the row",
            arguments: [
                ([0, 10, 0, 10, 1, 5, 250, 0, 5, 0], "<i8", nil, "row 1 (5, 250, 0, 5, 0): q_start..q_end 5..<250 lies outside the sequence's 0..<200"),
                ([0, 10, 7, 3, 1], "<i4", nil, "row 0 (0, 10, 7, 3, 1): k_start 7 is after k_end 3"),
                ([0, 10, 0, 10, 9], "<i4", nil, "row 0 (0, 10, 0, 10, 9): kind 9 is unknown"),
                ([0, 10, 0, 10], "<i4", [2, 2], "shape (2, 2); expected [n, 5]"),
            ] as [([Int], String, [Int]?, String)])
        func badFiles(_ rows: [Int], dtype: String, shape: [Int]?, message: String) async throws {
            let dir = try ScratchDirectory()
            let path = dir.path("slices.npy")
            try writeSlices(path, rows, dtype: dtype, shape: shape)
            let result = try await launch(ranks: 3, arguments: ["verify", "--tokens", "200", "--mask-slices", path], timeout: 60)
            #expect(result.status != 0, "\(result)")
            #expect(occurrences(of: message, in: result.seqparStderr) == 1, "'\(message)' not printed exactly once\n\(result)")
            #expect(occurrences(of: "--mask-slices \(path)", in: result.seqparStderr) == 1, "\(result)")
        }

        @Test(
            "slice options that cannot combine are refused before any work",
            arguments: [
                (["--block-causal", "8", "--causal"], "--block-causal is a mask of its own and does not combine with --causal"),
                (["--prefix-lm", "8", "--global-window", "1,4"], "--prefix-lm and --global-window each give the whole mask"),
                (["--global-window", "4", "--tokens", "50"], "--global-window takes G,W"),
                (["--shared-question", "10,10", "--tokens", "30"], "--shared-question lengths sum to 20 but --tokens is 30"),
                (["--shared-question", "10,10", "--documents", "10,10"], "--shared-question does not work within packed documents (--documents)"),
                (["--block-causal", "0"], "--block-causal must be at least 1"),
                (["--prefix-lm", "4", "--window", "3"], "--prefix-lm is a mask of its own and does not combine with --window"),
            ])
        func refusedArguments(_ arguments: [String], message: String) async throws {
            let result = try await launch(ranks: 2, arguments: ["run"] + arguments, timeout: 60)
            #expect(result.status == 64, "\(result)")
            #expect(occurrences(of: message, in: result.seqparStderr) == 1, "\(result)")
        }
    }
}

extension EndToEnd {
    @Suite("seqpar mask")
    struct MaskCommandRuns {
        @Test("describes a family, draws its block map and writes slices that run reads back as the same mask")
        func drawsAndWrites() async throws {
            let dir = try ScratchDirectory()
            let (svg, out) = (dir.path("map.svg"), dir.path("slices.npy"))
            let family = ["--tokens", "1000", "--block-causal", "250"]
            let described = try await runSeqpar(["mask", "--json", "--svg", svg, "--out", out, "--cells", "8"] + family)
            #expect(described.status == 0, "\(described)")
            let json = try JSONSerialization.jsonObject(with: Data(described.stdout.utf8)) as? [String: Any]
            // Blocks 0..3 of 250 tokens: 250² · (1 + 2 + 3 + 4) pairs of 1000².
            #expect(json?["density"] as? Double == 0.625, "\(described)")
            #expect(json?["slices"] as? Int == 4, "\(described)")
            let picture = try String(contentsOfFile: svg, encoding: .utf8)
            #expect(picture.hasPrefix("<svg") && picture.contains("density 0.6250"))
            // 8 x 8 cells of 125 tokens, two to a block: the 2 · (2 + 4 + 6 + 8) cells of the block
            // staircase are shaded, each fully, and no other.
            #expect(picture.components(separatedBy: "fill=\"rgb(0,0,0)\"").count - 1 == 40, "\(picture)")
            #expect(picture.components(separatedBy: "fill=\"rgb(").count - 1 == 40, "\(picture)")
            let slices = try MaskSlices.load(out, tokens: 1000)
            #expect(slices.slices == MaskSlices.blockCausal(block: 250, documents: try DocumentBoundaries(offsets: [0, 1000], tokens: 1000)).slices)
            let again = try await launch(
                ranks: 2, arguments: ["verify", "--json", "--tokens", "1000", "--heads", "2", "--kv-heads", "1", "--head-dim", "32", "--mask-slices", out])
            try expectVerified(again, ranks: 2, tokens: 1000)
        }

        @Test("S2 has no slice file: refused, naming the option")
        func s2Refused() async throws {
            let dir = try ScratchDirectory()
            let result = try await runSeqpar(["mask", "--tokens", "256", "--s2-block", "16", "--s2-local", "1", "--s2-stride", "2", "--out", dir.path("s.npy")])
            #expect(result.status == 1, "\(result)")
            #expect(result.stderr.contains("--out: the S2 pattern differs by head and has no slice file"), "\(result)")
            #expect(!FileManager.default.fileExists(atPath: dir.path("s.npy")))
        }
    }
}

/// The seqpar binary run once, as one process (no mpirun): commands that start no MPI.
func runSeqpar(_ arguments: [String]) async throws -> ProcessResult {
    try await runProcess(URL(fileURLWithPath: try seqparBinary()), arguments, timeout: 60)
}
