// bf16 and f16 jobs under mpirun: every strategy, forward and backward, verified against the
// single-rank result and float64 computed from the same rounded inputs; bf16/f16 files in, O and
// gradients out in the input type (LSE float32), each the float32 result rounded to nearest even;
// synthetic inputs rounded as --save-inputs writes them; and the refusals.

import AttentionCore
import AttentionJobs
import FileFormats
import Foundation
import Testing

extension EndToEnd {
    @Suite("bf16 and f16")
    struct ElementTypes {
        struct Case: Sendable, CustomTestStringConvertible {
            let dtype: String
            let ranks: Int
            let strategy: String
            let arguments: [String]
            var backward: Bool { strategy != "star" }
            var testDescription: String { "\(dtype) \(strategy) at \(ranks) ranks \(arguments.joined(separator: " "))" }
        }

        /// Odd shapes: tokens no world size divides, head dims 32..128, MHA/GQA/MQA, every mask.
        static let cases: [Case] = ["bf16", "f16"].flatMap { dtype in
            [
                Case(dtype: dtype, ranks: 1, strategy: "ring", arguments: ["--tokens", "157", "--heads", "4", "--kv-heads", "4", "--head-dim", "128"]),
                Case(dtype: dtype, ranks: 2, strategy: "zigzag", arguments: ["--tokens", "203", "--heads", "6", "--kv-heads", "1", "--head-dim", "48", "--causal"]),
                Case(dtype: dtype, ranks: 3, strategy: "ring", arguments: ["--tokens", "211", "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--window", "23"]),
                Case(dtype: dtype, ranks: 4, strategy: "heads", arguments: ["--tokens", "131", "--heads", "8", "--kv-heads", "2", "--head-dim", "64", "--causal"]),
                Case(dtype: dtype, ranks: 4, strategy: "mesh", arguments: ["--tokens", "131", "--heads", "8", "--kv-heads", "2", "--head-dim", "80", "--mesh", "2x2"]),
                Case(
                    dtype: dtype, ranks: 4, strategy: "s2",
                    arguments: ["--tokens", "301", "--heads", "8", "--kv-heads", "2", "--head-dim", "32", "--s2-block", "16", "--s2-local", "2", "--s2-stride", "4"]),
                Case(
                    dtype: dtype, ranks: 3, strategy: "zigzag",
                    arguments: ["--tokens", "403", "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--causal", "--documents", "100,3,0,200,100"]),
                Case(dtype: dtype, ranks: 3, strategy: "star", arguments: ["--tokens", "157", "--heads", "4", "--kv-heads", "1", "--head-dim", "64", "--queries", "5"]),
            ]
        }

        @Test("verify --dtype: every strategy and mask, forward and backward, against single rank and float64 of the rounded inputs", arguments: cases)
        func verified(_ c: Case) async throws {
            let result = try await launch(
                ranks: c.ranks,
                arguments: ["verify", "--json", "--dtype", c.dtype, "--strategy", c.strategy] + c.arguments + (c.backward ? ["--backward"] : []))
            let tokens = Int(c.arguments[c.arguments.firstIndex(of: "--tokens")! + 1])!
            // bf16 products (a CPU with bf16 units) round P to bf16: verify's bf16 tolerances.
            let products = c.dtype == "bf16" ? KernelProducts.for(.bf16) : .float32
            let bounds = products == .bf16 ? (4e-3, 1e-2) : (1e-5, 1e-4)
            let json = try result.report(VerifyJSON.self)
            #expect(json.tolerance == bounds.0 && json.referenceTolerance == bounds.1, "verify's default tolerances for \(products) products")
            if c.strategy == "star" {
                try expectPassed(result, rows: 5, bounds: bounds)
            } else if c.backward {
                try expectGradientsVerified(result, ranks: c.ranks, tokens: tokens, bounds: bounds)
            } else {
                try expectVerified(result, ranks: c.ranks, tokens: tokens, bounds: bounds)
            }
        }

        /// The rounded inputs matter: had any rank (or the single-rank or float64 side) used the
        /// float32 values, its O would differ from the others' by about bf16's 2^-9, far past 1e-5.
        struct TrafficCase: Sendable, CustomTestStringConvertible {
            let ranks: Int
            let strategy: String
            let arguments: [String]
            /// Only K/V (and Q, dO) travel, so 16-bit bytes are exactly half; heads and mesh also
            /// send O and LSE back in float32 (and the backward's sums stay float32 everywhere).
            let halves: Bool
            var testDescription: String { "\(strategy) at \(ranks) ranks" }
        }

        static let trafficCases: [TrafficCase] = [
            TrafficCase(ranks: 3, strategy: "ring", arguments: [], halves: true),
            TrafficCase(ranks: 2, strategy: "zigzag", arguments: ["--causal"], halves: true),
            TrafficCase(ranks: 3, strategy: "heads", arguments: [], halves: false),
            TrafficCase(ranks: 4, strategy: "mesh", arguments: ["--mesh", "2x2", "--causal"], halves: false),
            TrafficCase(ranks: 2, strategy: "s2", arguments: ["--s2-block", "32", "--s2-local", "2", "--s2-stride", "3"], halves: true),
            TrafficCase(ranks: 3, strategy: "star", arguments: ["--queries", "7"], halves: false),
        ]

        /// The same rounded values as bf16 files and as float32 files: the bf16 job's K/V (Q, dO)
        /// travel as 16-bit bits and are widened by the receiver, which must be exact, so its LSE
        /// equals the float32 job's bit for bit (float32 products: SEQPAR_BF16_GEMM=off); and its
        /// traffic is smaller by half the inputs'.
        @Test("16-bit traffic: bf16 jobs send half the K/V bytes of float32 and compute exactly the same LSE", arguments: trafficCases)
        func traffic(_ c: TrafficCase) async throws {
            let dir = try ScratchDirectory()
            for (name, heads) in [("q", 4), ("k", 2), ("v", 2)] {
                let values = try writeRandomNpy(dir.path("\(name)32.npy"), shape: [203, heads, 32], seed: UInt64(heads * 31 + name.count)).map(ElementType.bf16.rounded)
                try NpyFile.save(dir.path("\(name)32.npy"), shape: [203, heads, 32], values: values)
                try NpyFile.save(dir.path("\(name)16.npy"), shape: [203, heads, 32], values: values, elementType: .bf16)
            }
            var sent: [[Double]] = [], lse: [[Float]] = []
            for suffix in ["32", "16"] {
                let inputs = ["q", "k", "v"].flatMap { ["--\($0)", dir.path("\($0)\(suffix).npy")] }
                let result = try await launch(
                    ranks: c.ranks,
                    arguments: ["run", "--json", "--strategy", c.strategy, "--lse", dir.path("lse\(suffix).npy")] + inputs + c.arguments
                        + (suffix == "16" ? ["--dtype", "bf16"] : []), environment: ["SEQPAR_BF16_GEMM": "off"])
                try #require(result.status == 0, "\(result)")
                let bytes = try #require(try result.json()["bytes_sent"] as? [Any], "\(result)")
                sent.append(bytes.compactMap(number))
                lse.append(try NpyFile.load(dir.path("lse\(suffix).npy")).values)
            }
            #expect(lse[1] == lse[0], "the bf16 job's LSE differs from the float32 job's on the same values")
            #expect(sent[0].count == c.ranks && sent[1].count == c.ranks)
            #expect(sent[0].reduce(0, +) > 0)
            for (wide, narrow) in zip(sent[0], sent[1]) {
                if c.halves {
                    #expect(narrow * 2 == wide, "bf16 sent \(narrow) bytes, float32 \(wide)")
                } else {
                    #expect(narrow <= wide && narrow * 2 >= wide, "bf16 sent \(narrow) bytes, float32 \(wide)")
                }
            }
            if !c.halves { #expect(sent[1].reduce(0, +) < sent[0].reduce(0, +), "bf16 sent no fewer bytes than float32: \(sent)") }
        }

        @Test("the inputs really are rounded: bf16 and f32 jobs' O differ by bf16's rounding, not by float32's")
        func roundingIsVisible() async throws {
            let dir = try ScratchDirectory()
            var outputs: [[Float]] = []
            for dtype in ["f32", "bf16"] {
                let result = try await launch(ranks: 2, arguments: ["run", "--tokens", "203", "--dtype", dtype, "--out", dir.path("\(dtype).npy")])
                try #require(result.status == 0, "\(result)")
                outputs.append(try NpyFile.load(dir.path("\(dtype).npy"), readingBF16: true).values)
            }
            let gap = zip(outputs[0], outputs[1]).map { abs($0 - $1) }.max() ?? 0
            #expect(gap > 1e-4 && gap < 0.05, "bf16 and f32 O differ by \(gap)")
        }

        @Test("bf16 products where the CPU has bf16 units: info names the path; O and LSE differ from float32 products' by P's rounding")
        func bf16Products() async throws {
            let info = try await launch(ranks: 1, arguments: ["info"])
            try #require(info.status == 0, "\(info)")
            let onUnits = KernelProducts.for(.bf16) == .bf16
            #expect(info.stdout.contains(onUnits ? "bf16: oneDNN" : "bf16: converted to float32 as read"), "\(info)")
            let off = try await launch(ranks: 1, arguments: ["info"], environment: ["SEQPAR_BF16_GEMM": "off"])
            #expect(off.stdout.contains("bf16: converted to float32 as read, float32 GEMM (sgemm), since SEQPAR_BF16_GEMM=off"), "\(off)")
            guard onUnits else { return }  // the comparison needs bf16 units
            let dir = try ScratchDirectory()
            var outputs: [[Float]] = [], lses: [[Float]] = []
            for setting in [nil, "off"] as [String?] {
                let name = setting ?? "on"
                let result = try await launch(
                    ranks: 2,
                    arguments: [
                        "run", "--tokens", "301", "--heads", "4", "--kv-heads", "2", "--head-dim", "64", "--causal", "--dtype", "bf16",
                        "--out", dir.path("o-\(name).npy"), "--lse", dir.path("lse-\(name).npy"),
                    ],
                    environment: ["SEQPAR_BF16_GEMM": setting])
                try #require(result.status == 0, "\(result)")
                #expect(
                    result.stdout.contains(setting == nil ? "bf16 products with float32 accumulation" : "computed in float32"), "\(result)")
                outputs.append(try NpyFile.load(dir.path("o-\(name).npy"), readingBF16: true).values)
                lses.append(try NpyFile.load(dir.path("lse-\(name).npy")).values)
            }
            let gap = zip(outputs[0], outputs[1]).map { abs($0 - $1) }.max() ?? .infinity
            #expect(gap > 0 && gap < 2e-2, "O with bf16 products against float32 products: \(gap)")
            let lseGap = zip(lses[0], lses[1]).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? .infinity
            #expect(lseGap < 4e-3, "LSE with bf16 products (the log of the rounded P's sum) against float32 products: \(lseGap)")
        }

        @Test("bf16 and f16 files in: O, dQ, dK, dV in that type, each the float32 job's result rounded to nearest even; LSE float32 and equal", arguments: ["bf16", "f16"])
        func filesInAndOut(_ dtype: String) async throws {
            let type = ElementType(rawValue: dtype)!
            let dir = try ScratchDirectory()
            // The same values twice: as `type` and widened to float32.
            for (name, heads) in [("q", 4), ("k", 2), ("v", 2), ("do", 4)] {
                let values = try writeRandomNpy(dir.path("\(name)32.npy"), shape: [157, heads, 48], seed: UInt64(heads * 17 + name.count)).map(type.rounded)
                try NpyFile.save(dir.path("\(name)32.npy"), shape: [157, heads, 48], values: values)
                try NpyFile.save(dir.path("\(name)16.npy"), shape: [157, heads, 48], values: values, elementType: type)
            }
            func run(_ suffix: String, _ extra: [String]) async throws {
                let inputs = ["q", "k", "v"].flatMap { ["--\($0)", dir.path("\($0)\(suffix).npy")] }
                let outputs = ["out", "lse", "dq", "dk", "dv"].flatMap { ["--\($0)", dir.path("\($0)\(suffix)-out.npy")] }
                let result = try await launch(
                    ranks: 3,
                    arguments: ["run", "--strategy", "zigzag", "--causal", "--backward", "--do", dir.path("do\(suffix).npy")] + inputs + outputs + extra,
                    environment: ["SEQPAR_BF16_GEMM": "off"])
                try #require(result.status == 0, "\(result)")
            }
            try await run("32", [])
            try await run("16", type == .bf16 ? ["--dtype", "bf16"] : [])
            for name in ["out", "dq", "dk", "dv"] {
                let wide = try NpyFile.open(reading: dir.path("\(name)32-out.npy")), narrow = try NpyFile.open(reading: dir.path("\(name)16-out.npy"), readingBF16: true)
                #expect(wide.elementType == .f32 && narrow.elementType == type && narrow.header.dtype == type.descr, "\(name)")
                #expect(narrow.header.shape == wide.header.shape)
                let w = try NpyFile.load(dir.path("\(name)32-out.npy")).values, n = try NpyFile.load(dir.path("\(name)16-out.npy"), readingBF16: true).values
                #expect(n == w.map(type.rounded), "\(name): the \(dtype) file is not the float32 result rounded")
            }
            let lse32 = try NpyFile.open(reading: dir.path("lse32-out.npy")), lse16 = try NpyFile.open(reading: dir.path("lse16-out.npy"))
            #expect(lse16.elementType == .f32, "LSE is float32 in every job")
            #expect(try NpyFile.load(lse16.path).values == NpyFile.load(lse32.path).values)
        }

        @Test("synthetic inputs in bf16 and f16 are the float32 ones rounded: --save-inputs writes them, and the files give the same O", arguments: ["bf16", "f16"])
        func syntheticRounded(_ dtype: String) async throws {
            let type = ElementType(rawValue: dtype)!
            let dir = try ScratchDirectory()
            try FileManager.default.createDirectory(atPath: dir.path("in"), withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: dir.path("in32"), withIntermediateDirectories: true)
            let synthetic = try await launch(
                ranks: 2, arguments: ["run", "--tokens", "150", "--dtype", dtype, "--save-inputs", dir.path("in"), "--out", dir.path("o-synthetic.npy")])
            try #require(synthetic.status == 0, "\(synthetic)")
            let plain = try await launch(ranks: 2, arguments: ["run", "--tokens", "150", "--save-inputs", dir.path("in32")])
            try #require(plain.status == 0, "\(plain)")
            for name in ["Q.npy", "K.npy", "V.npy"] {
                let saved = try NpyFile.open(reading: dir.path("in/\(name)"), readingBF16: true)
                #expect(saved.elementType == type)
                #expect(try NpyFile.load(saved.path, readingBF16: true).values == NpyFile.load(dir.path("in32/\(name)")).values.map(type.rounded), "\(name)")
            }
            let files = try await launch(
                ranks: 3,
                arguments: ["run", "--q", dir.path("in/Q.npy"), "--k", dir.path("in/K.npy"), "--v", dir.path("in/V.npy"), "--out", dir.path("o-files.npy")]
                    + (type == .bf16 ? ["--dtype", "bf16"] : []))
            try #require(files.status == 0, "\(files)")
            let a = try NpyFile.load(dir.path("o-synthetic.npy"), readingBF16: true).values, b = try NpyFile.load(dir.path("o-files.npy"), readingBF16: true).values
            let gap = zip(a, b).map { abs($0 - $1) }.max() ?? .infinity
            // Different world sizes merge in another order: equal up to one rounding of the output type.
            #expect(a.count == b.count && gap <= 2 * type.rounded(1 + 1.0 / 64) - 2, "O from synthetic and from the saved files differ by \(gap)")
        }

        @Test("refused: '<V2' without --dtype bf16, Q/K/V of different types, a value f16 cannot hold; nothing written")
        func refusals() async throws {
            let dir = try ScratchDirectory()
            let values = try writeRandomNpy(dir.path("q.npy"), shape: [40, 2, 32], seed: 1)
            try NpyFile.save(dir.path("qb.npy"), shape: [40, 2, 32], values: values, elementType: .bf16)
            try NpyFile.save(dir.path("kh.npy"), shape: [40, 2, 32], values: values, elementType: .f16)
            try NpyFile.save(dir.path("huge.npy"), shape: [40, 2, 32], values: values.enumerated().map { $0.offset == 70 ? 1e5 : $0.element })
            let cases: [(files: [String], extra: [String], phrases: [String])] = [
                (["qb.npy", "q.npy", "q.npy"], [], ["qb.npy", "'<V2'", "--dtype bf16"]),
                (["q.npy", "kh.npy", "q.npy"], [], ["q.npy holds f32 (float32)", "kh.npy holds f16 (float16)", "--dtype"]),
                (["huge.npy", "q.npy", "q.npy"], ["--dtype", "f16"], ["huge.npy holds +inf at [token 1, head 0, dim 6]"]),
            ]
            for c in cases {
                let inputs = zip(["--q", "--k", "--v"], c.files).flatMap { [$0, dir.path($1)] }
                let result = try await launch(ranks: 2, arguments: ["run", "--out", dir.path("o.npy")] + inputs + c.extra)
                #expect(result.status == 1, "\(c.files)\n\(result)")
                for phrase in c.phrases { #expect(result.seqparStderr.contains(phrase), "no '\(phrase)'\n\(result)") }
                #expect(!FileManager.default.fileExists(atPath: dir.path("o.npy")), "\(c.files) wrote O")
            }
        }
    }
}
