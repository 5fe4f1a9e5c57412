// The head-sharded strategies (heads, mesh), S2, star and the sliding window under real mpirun at
// 1 to 4 ranks: each verified against the single-rank result and float64, including uneven
// heads, kv heads below the rank count, and S2 strides above and below the head count; star's
// merge reduction giving the same result at every world size; byte counts equal to the analytic
// volumes; and refusals of impossible splits before any communication.

import AttentionCore
import AttentionJobs
import FileFormats
import Foundation
import Testing

/// Asserts a passing `verify --json` whose ranks together produced `rows` rows.
func expectPassed(
    _ result: LaunchResult, rows: Int, bounds: (single: Double, reference: Double) = (1e-5, 1e-4), sourceLocation: SourceLocation = #_sourceLocation
) throws {
    #expect(result.status == 0, "verify failed\n\(result)", sourceLocation: sourceLocation)
    let json = try result.report(VerifyJSON.self, sourceLocation: sourceLocation)
    #expect(json.passed, "passed is not true\n\(result)", sourceLocation: sourceLocation)
    let single = json.singleRank.oMaxAbs
    #expect(single <= bounds.single, "O differs from the single-rank result by \(single)", sourceLocation: sourceLocation)
    #expect(json.singleRank.lseMaxRel <= bounds.single, sourceLocation: sourceLocation)
    #expect(json.singleRank.rows == rows, "checked rows\n\(result)", sourceLocation: sourceLocation)
    let reference = json.reference.oMaxAbs
    #expect(json.reference.rows > 0 && reference <= bounds.reference, "float64: \(reference)", sourceLocation: sourceLocation)
}

extension EndToEnd {
    @Suite("strategies")
    struct Strategies {
        static let shape = ["--tokens", "203", "--heads", "4", "--kv-heads", "2", "--head-dim", "32"]

        @Test("heads and mesh at 1-4 ranks, uneven tokens", arguments: [1, 2, 3, 4], ["heads", "mesh"])
        func headSharded(ranks: Int, strategy: String) async throws {
            for causal in [false, true] {
                let result = try await launch(
                    ranks: ranks,
                    arguments: ["verify", "--json", "--strategy", strategy] + Self.shape
                        + (causal ? ["--causal"] : []))
                try expectPassed(result, rows: 203)
            }
        }

        /// Heads that do not divide by the ranks, kv heads fewer than the ranks (GQA, MQA), and
        /// every mesh shape of 4 ranks.
        @Test(
            "uneven heads and kv heads below the rank count",
            arguments: [
                (4, ["--strategy", "heads", "--heads", "6", "--kv-heads", "3", "--causal"]),
                (4, ["--strategy", "heads", "--heads", "5", "--kv-heads", "1", "--head-dim", "80"]),
                (3, ["--strategy", "heads", "--heads", "8", "--kv-heads", "2", "--head-dim", "64", "--causal"]),
                (4, ["--strategy", "mesh", "--mesh", "2x2", "--heads", "5", "--kv-heads", "1"]),
                (4, ["--strategy", "mesh", "--mesh", "4x1", "--heads", "4", "--kv-heads", "1", "--causal"]),
                (4, ["--strategy", "mesh", "--mesh", "1x4", "--heads", "4", "--kv-heads", "2", "--causal"]),
                (2, ["--strategy", "mesh", "--mesh", "2x1", "--heads", "3", "--kv-heads", "3", "--head-dim", "128"]),
            ])
        func unevenHeads(ranks: Int, arguments: [String]) async throws {
            let result = try await launch(ranks: ranks, arguments: ["verify", "--json", "--tokens", "151", "--head-dim", "48"] + arguments)
            try expectPassed(result, rows: 151)
        }

        @Test("sliding window for every self-attention strategy", arguments: [2, 3, 4], ["ring", "zigzag", "heads", "mesh"])
        func window(ranks: Int, strategy: String) async throws {
            for window in ["1", "37", "500"] {
                let result = try await launch(
                    ranks: ranks,
                    arguments: [
                        "verify", "--json", "--strategy", strategy, "--window", window,
                        "--tokens", "301", "--heads", "4", "--kv-heads", "2", "--head-dim", "32",
                    ])
                try expectPassed(result, rows: 301)
            }
        }

        /// S2 with the stride at most the head count (the union covers every block pair) and above it;
        /// the ring strategies too, whose forward sends whole segments under S2.
        @Test("s2 at 1-4 ranks, stride below and above the head count", arguments: [1, 2, 3, 4])
        func s2(ranks: Int) async throws {
            for (heads, kvHeads, block, local, stride) in [(8, 2, 16, 2, 4), (4, 4, 8, 1, 8), (4, 1, 13, 3, 6)] {
                for strategy in ["s2", "zigzag", "ring", "mesh"] {
                    let result = try await launch(
                        ranks: ranks,
                        arguments: [
                            "verify", "--json", "--strategy", strategy, "--tokens", "411", "--heads", "\(heads)", "--kv-heads", "\(kvHeads)",
                            "--head-dim", "32", "--s2-block", "\(block)", "--s2-local", "\(local)", "--s2-stride", "\(stride)",
                        ])
                    try expectPassed(result, rows: 411)
                }
            }
        }

        @Test("star with one and with many queries", arguments: [1, 2, 3, 4])
        func star(ranks: Int) async throws {
            for extra in [
                ["--queries", "1"], ["--queries", "40", "--causal"], ["--queries", "3", "--query-position", "100"],
                ["--queries", "17", "--window", "64"],
            ] {
                let result = try await launch(ranks: ranks, arguments: ["verify", "--json", "--strategy", "star"] + Self.shape + extra)
                try expectPassed(result, rows: Int(extra[1])!)
            }
            let everyRank = try await launch(ranks: ranks, arguments: ["verify", "--json", "--strategy", "star", "--queries", "9", "--all"] + Self.shape)
            try expectPassed(everyRank, rows: 9 * ranks)
        }

        /// The merge as an MPI reduction operator: MPI combines the ranks' records in an order of
        /// its choosing, so 1, 2, 3 and 4 ranks give different operand orders and groupings.
        @Test("star's reduction gives the same result at 1-4 ranks")
        func reductionAcrossWorldSizes() async throws {
            let folder = try ScratchDirectory()
            var outputs: [[Float]] = [], lses: [[Float]] = []
            for ranks in 1 ... 4 {
                let (o, l) = (folder.path("o\(ranks).npy"), folder.path("l\(ranks).npy"))
                let result = try await launch(
                    ranks: ranks,
                    arguments: [
                        "run", "--strategy", "star", "--queries", "24", "--tokens", "997",
                        "--heads", "4", "--kv-heads", "2", "--head-dim", "48", "--out", o, "--lse", l,
                    ])
                #expect(result.status == 0, "\(result)")
                let output = try NpyFile.load(o), lse = try NpyFile.load(l)
                #expect(output.shape == [24, 4, 48] && lse.shape == [4, 24])
                outputs.append(output.values)
                lses.append(lse.values)
            }
            for ranks in 2 ... 4 {
                #expect(maxAbsDifference(outputs[ranks - 1], outputs[0]) <= 1e-6, "O at \(ranks) ranks")
                #expect(maxAbsDifference(lses[ranks - 1], lses[0]) <= 1e-5, "LSE at \(ranks) ranks")
            }
            // --all: every rank holds the merged rows, rank 0 alone writes them; the files are the same.
            let (o, l) = (folder.path("o-all.npy"), folder.path("l-all.npy"))
            let all = try await launch(
                ranks: 3,
                arguments: [
                    "run", "--strategy", "star", "--queries", "24", "--tokens", "997", "--all",
                    "--heads", "4", "--kv-heads", "2", "--head-dim", "48", "--out", o, "--lse", l,
                ])
            #expect(all.status == 0, "\(all)")
            #expect(maxAbsDifference(try NpyFile.load(o).values, outputs[0]) <= 1e-6)
            #expect(maxAbsDifference(try NpyFile.load(l).values, lses[0]) <= 1e-5)
        }

        /// Byte counters against the analytic volumes: the forward sends each rank only the rows
        /// of a block its queries read, straight from the owner, so under a causal mask rank r's
        /// block goes to the P-1-r ranks after it, and a window of 100 sends the next rank just the
        /// 99 rows its first queries reach back to (the last rank sends nothing).
        @Test("ring bytes equal the analytic volumes of what each rank reads, and a window cuts them short", arguments: [2, 3, 4])
        func ringBytes(ranks: Int) async throws {
            let (tokens, kvHeads, headDim) = (1001, 2, 32)
            let blocks = (0 ..< ranks).map { 2 * TokenPartition.chunk($0, of: ranks, tokens: tokens).count * kvHeads * headDim * 4 }
            for window in [nil, "100"] {
                let result = try await launch(
                    ranks: ranks,
                    arguments: [
                        "run", "--json", "--strategy", "ring", "--tokens", "\(tokens)",
                        "--heads", "4", "--kv-heads", "\(kvHeads)", "--head-dim", "\(headDim)",
                    ]
                        + (window.map { ["--window", $0] } ?? ["--causal"]))
                #expect(result.status == 0, "\(result)")
                let report = try result.report(RunReport.self)
                let sent = report.bytesSent.map(Double.init), received = report.bytesReceived.map(Double.init)
                let expected = (0 ..< ranks).map { r in window == nil ? (ranks - 1 - r) * blocks[r] : (r < ranks - 1 ? 2 * 99 * kvHeads * headDim * 4 : 0) }
                #expect(sent == expected.map(Double.init), "window \(window ?? "none"): sent \(sent), expected \(expected)")
                #expect(received.reduce(0, +) == sent.reduce(0, +))
            }
        }

        /// S2's point: compared with dense causal zigzag on the same problem, far fewer FLOPs in
        /// the kernel and far fewer bytes moved, forward and backward, as counted during the run.
        @Test("s2 moves fewer bytes and computes fewer FLOPs than zigzag, forward and backward")
        func s2Savings() async throws {
            let problem = ["--tokens", "4096", "--heads", "8", "--kv-heads", "8", "--head-dim", "32", "--backward"]
            let s2 = try await launch(ranks: 4, arguments: ["run", "--json", "--strategy", "s2", "--s2-block", "64", "--s2-local", "2", "--s2-stride", "8"] + problem)
            let zigzag = try await launch(ranks: 4, arguments: ["run", "--json", "--strategy", "zigzag", "--causal"] + problem)
            #expect(s2.status == 0 && zigzag.status == 0, "\(s2)\n\(zigzag)")
            let (a, b) = (try s2.report(RunReport.self), try zigzag.report(RunReport.self))
            #expect(a.density < 0.2, "density \(a.density)")
            #expect(Double(a.bytesSent.reduce(0, +)) < 0.4 * Double(b.bytesSent.reduce(0, +)))
            #expect(a.kernelFlops.reduce(0, +) < 0.4 * b.kernelFlops.reduce(0, +))
            #expect(a.kernelFlops.allSatisfy { $0 > 0 })
            // The backward sends the forward's K/V pieces again and returns dK/dV for the pieces it
            // received: per rank, what the forward sent plus what it received (zigzag's backward
            // moves every row its causal queries read, with their dK/dV).
            let (backward, dense) = (try #require(a.backward), try #require(b.backward))
            let expected = zip(a.bytesSent, a.bytesReceived).map { $0 + $1 }
            #expect(backward.bytesSent == expected, "backward \(backward.bytesSent), forward sent + received \(expected)")
            #expect(Double(backward.bytesSent.reduce(0, +)) < 0.4 * Double(dense.bytesSent.reduce(0, +)))
        }

        @Test(
            "impossible splits are refused before any communication, once, with counts that work",
            arguments: [
                (4, ["run", "--strategy", "heads", "--heads", "3", "--kv-heads", "1"], "at most 3 ranks"),
                (4, ["run", "--strategy", "mesh", "--mesh", "3x2"], "needs 6 ranks"),
                (4, ["run", "--strategy", "mesh", "--mesh", "4x1", "--heads", "2", "--kv-heads", "1"], "Ph <= 2"),
            ])
        func refusals(ranks: Int, arguments: [String], phrase: String) async throws {
            let result = try await launch(ranks: ranks, arguments: arguments + ["--tokens", "64"])
            #expect(result.status == 1, "\(result)")
            #expect(occurrences(of: phrase, in: result.seqparStderr) == 1, "\(result)")
            #expect(occurrences(of: "seqpar: error:", in: result.seqparStderr) == 1, "\(result)")
        }
    }
}
