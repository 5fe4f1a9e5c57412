// The figures seqpar reports (info, run, bench as JSON) and what they say about memory: per-rank
// peak memory must grow with tokens / ranks, never with tokens^2 (docs/DESIGN.md, "Memory").

import AttentionJobs
import Foundation
import Testing

extension EndToEnd {
    @Suite("reports and memory")
    struct Reports {
        @Test("info --json describes every rank")
        func info() async throws {
            let result = try await launch(ranks: 2, arguments: ["info", "--json", "--sgemm-size", "256"])
            try #require(result.status == 0, "\(result)")
            let json = try result.report(InfoJSON.self)
            #expect(json.worldSize == 2)
            #expect(!json.mpiLibrary.isEmpty, "no MPI library version")
            #expect(json.ranks.count == 2)
            for (i, rank) in json.ranks.enumerated() {
                #expect(rank.rank == i)
                #expect(!rank.host.isEmpty, "rank \(i) has no host")
                // Launch/local exports OPENBLAS_NUM_THREADS=1: ranks must not oversubscribe cores.
                #expect(rank.blasThreads == 1, "rank \(i): blas_threads \(rank.blasThreads)")
                #expect(rank.sgemmGflops > 0, "rank \(i): sgemm_gflops \(rank.sgemmGflops)")
            }
        }

        /// The CPU's instruction-set level as /proc/cpuinfo tells it (independently of seqpar's CPUID).
        static func cpuinfoLevel() throws -> Int {
            let cpuinfo = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
            let flags = Set(cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").map(String.init) ?? [])
            if ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"].allSatisfy(flags.contains) { return flags.contains("avx512_bf16") ? 4 : 3 }
            if flags.contains("avx2") && flags.contains("fma") { return 2 }
            return flags.contains("avx") ? 1 : 0
        }

        /// The level of an OpenBLAS core's kernels (0 SSE ... 4 AVX-512 with BF16).
        static let coreLevels = [
            "prescott": 0, "core2": 0, "nehalem": 0, "barcelona": 0, "sandybridge": 1, "bulldozer": 1, "piledriver": 1,
            "steamroller": 1, "excavator": 1, "haswell": 2, "zen": 2, "skylakex": 3, "cooperlake": 4, "sapphirerapids": 4,
        ]

        static func infoCores(environment: [String: String?]) async throws -> (cores: [String], reasons: [String], result: LaunchResult) {
            let result = try await launch(ranks: 2, arguments: ["info", "--json", "--sgemm-size", "128"], environment: environment)
            try #require(result.status == 0, "\(result)")
            let ranks = try result.report(InfoJSON.self).ranks
            return (ranks.map(\.openblasCore), ranks.map(\.openblasCoreReason), result)
        }

        @Test("with nothing set by hand, OpenBLAS runs kernels that match the CPU on every rank")
        func blasCoreMatchesCPU() async throws {
            guard (try? Self.cpuinfoLevel()) != nil else {
                Issue.record("no /proc/cpuinfo: cannot tell this CPU's level")
                return
            }
            let level = try Self.cpuinfoLevel()
            let (cores, reasons, result) = try await Self.infoCores(environment: ["OPENBLAS_CORETYPE": nil, "SEQPAR_BLAS_CORE": nil])
            for (core, reason) in zip(cores, reasons) {
                let coreLevel = try #require(Self.coreLevels[core.lowercased()], "unknown core '\(core)'\n\(result)")
                // Nothing seqpar could pick beats SSE kernels on an SSE-only CPU.
                #expect(coreLevel >= min(level, 4) || level == 0, "core \(core) (level \(coreLevel)) below this CPU's level \(level): \(reason)")
                #expect(!reason.isEmpty)
            }
        }

        @Test("seqpar replaces a core below the CPU when told it may; a user's own core wins otherwise")
        func blasCoreSwitch() async throws {
            let level = try Self.cpuinfoLevel()
            // SEQPAR_BLAS_CORE=auto: seqpar treats OPENBLAS_CORETYPE=Prescott as a fallback to fix,
            // sets a better core and executes itself again, on every rank, under mpirun.
            let switched = try await Self.infoCores(environment: ["OPENBLAS_CORETYPE": "Prescott", "SEQPAR_BLAS_CORE": "auto"])
            for (core, reason) in zip(switched.cores, switched.reasons) {
                if level >= 1 {
                    #expect(Self.coreLevels[core.lowercased()] ?? -1 >= min(level, 4), "\(core): \(reason)")
                    #expect(reason.contains("set by seqpar") && reason.contains("chose Prescott"), "\(reason)")
                } else {
                    #expect(core == "Prescott", "\(reason)")
                }
            }
            // The user's own setting wins, and info says what the CPU could run instead.
            let kept = try await Self.infoCores(environment: ["OPENBLAS_CORETYPE": "Prescott", "SEQPAR_BLAS_CORE": nil])
            for (core, reason) in zip(kept.cores, kept.reasons) {
                #expect(core == "Prescott", "\(reason)")
                #expect(reason.contains("OPENBLAS_CORETYPE=Prescott set by the user"), "\(reason)")
                if level >= 1 { #expect(reason.contains("could run"), "\(reason)") }
            }
        }

        @Test("run --json reports time, GFLOP/s and memory per rank")
        func runReport() async throws {
            let result = try await launch(
                ranks: 2,
                arguments: [
                    "run", "--json", "--tokens", "1000", "--heads", "4", "--kv-heads", "2",
                    "--head-dim", "64", "--causal", "--strategy", "zigzag",
                ])
            try #require(result.status == 0, "\(result)")
            let json = try result.report(RunReport.self)
            #expect(json.ranks == 2)
            #expect(json.tokens == 1000)
            #expect(json.mask == "causal")
            #expect(json.strategy == "zigzag")
            let (seconds, gflops, flops) = (json.seconds, json.gflops, json.flops)
            #expect(seconds > 0 && gflops > 0)
            // docs/DESIGN.md's count: 4 * tokens^2 * heads * headDim, the visible half (with the diagonal) for causal.
            let visiblePairs: Double = 1000.0 * 1001 / 2
            #expect(flops == 4 * 64 * 4 * visiblePairs)
            #expect(abs(gflops - flops / seconds / 1e9) <= 1e-6 * gflops, "gflops is not flops / seconds")
            let memory = json.peakMemoryBytes
            #expect(memory.count == 2)
            #expect(memory.allSatisfy { $0 > 0 }, "peak memory \(memory)")
        }

        @Test("bench --json compares the self-attention strategies against the sgemm peak")
        func bench() async throws {
            let result = try await launch(
                ranks: 2,
                arguments: [
                    "bench", "--json", "--repeats", "1", "--tokens", "512", "--heads", "4",
                    "--kv-heads", "2", "--head-dim", "64",
                ])
            try #require(result.status == 0, "\(result)")
            let json = try result.report(BenchJSON.self)
            let peak = json.sgemmPeakGflops
            #expect(peak > 0)
            #expect(Set(json.results.map(\.strategy)) == ["ring", "zigzag", "heads", "mesh"])
            for row in json.results {
                let gflops = row.gflops, fraction = row.fractionOfPeak
                #expect(gflops > 0, "\(row)")
                #expect(fraction > 0, "\(row)")
                #expect(abs(fraction - gflops / peak) <= 1e-9 * max(1, fraction), "fraction_of_peak is not gflops / peak: \(row)")
                #expect(row.fractionOfKernelShapePeak > 0, "\(row)")
            }
            // The sgemm rate at the kernel's own products: both measured, combined as their harmonic mean.
            let shapes = json.sgemmKernelShapesGflops
            let (scores, values, combined) = (shapes.scores, shapes.values, shapes.combined)
            #expect(scores > 0 && values > 0)
            #expect(abs(combined - 2 / (1 / scores + 1 / values)) <= 1e-6 * combined, "\(shapes)")
            #expect(json.openblasCores.count == 2)
        }

        /// Peak resident memory per rank (getrusage) at 2 ranks, one head of dim 64, causal:
        /// 4096 and 16384 tokens.
        ///
        /// Why these bounds: a rank's O(T/P) state is a few tensors of 8192 rows x 256 bytes
        /// (Q, K, V, O, the K/V blocks in flight, the accumulator), about 2 MiB each; MPI and the
        /// Swift runtime add a fixed ~35 MiB. A T^2 float score matrix would be
        /// 16384^2 x 4 B = 1 GiB (512 MiB even per rank's T/P rows), and a full-sequence buffer
        /// per query tile (256 x T floats) another 16 MiB. So: the 16384-token peak must stay under
        /// 200 MiB, and the growth from 4096 to 16384 tokens under 16 tensors' worth of the added
        /// local rows (16 x 6144 rows x 256 B = 24 MiB) plus 8 MiB of slack; tokens^2 growth would
        /// be ~480 MiB. (Measured: about 12 MiB.)
        @Test("memory per rank grows with tokens / ranks, not tokens^2")
        func memoryGrowsWithTokens() async throws {
            func peak(tokens: Int) async throws -> [Double] {
                let result = try await launch(
                    ranks: 2,
                    arguments: [
                        "run", "--json", "--tokens", String(tokens), "--heads", "1", "--kv-heads", "1",
                        "--head-dim", "64", "--causal", "--strategy", "ring",
                    ])
                try #require(result.status == 0, "\(result)")
                let memory = try result.report(RunReport.self).peakMemoryBytes
                try #require(memory.count == 2 && memory.allSatisfy { $0 > 0 }, "peak memory \(memory)")
                return memory
            }
            let small = try await peak(tokens: 4096), large = try await peak(tokens: 16384)
            let mib = 1_048_576.0
            for (rank, bytes) in large.enumerated() {
                #expect(bytes < 200 * mib, "rank \(rank) peaks at \(bytes / mib) MiB for 16384 tokens: a tokens^2 buffer?")
            }
            let addedRowBytes = Double((16384 - 4096) / 2 * 64 * 4)  // per rank, per tensor
            let allowed = 16 * addedRowBytes + 8 * mib
            for rank in 0 ..< 2 {
                let growth = large[rank] - small[rank]
                #expect(growth < allowed, "rank \(rank) grows by \(growth / mib) MiB from 4096 to 16384 tokens; linear allows \(allowed / mib) MiB")
            }
        }

        /// The same problem on more ranks needs less memory per rank: memory is O(tokens / P),
        /// not O(tokens). Wide rows (16 heads x 128 = 8 KiB per row per tensor, 16 MiB per
        /// 2048-token tensor) make the per-rank state dwarf the fixed runtime cost, which is
        /// measured at 16 tokens and subtracted. One rank holds about 5 whole tensors (Q, K, V, O
        /// and its copy: ~80 MiB); at 4 ranks a rank holds a quarter of those plus the K/V blocks
        /// in flight (~32 MiB, ratio ~0.4). A rank that also held all of K and V would add 32 MiB
        /// (ratio ~0.8). The bound, 0.6, leaves room for a few more O(tokens / P) buffers.
        @Test("memory per rank shrinks with ranks")
        func memoryShrinksWithRanks() async throws {
            func peak(ranks: Int, tokens: Int) async throws -> Double {
                let result = try await launch(
                    ranks: ranks,
                    arguments: [
                        "run", "--json", "--tokens", String(tokens), "--heads", "16", "--kv-heads", "16",
                        "--head-dim", "128", "--causal", "--strategy", "zigzag",
                    ])
                try #require(result.status == 0, "\(result)")
                let memory = try result.report(RunReport.self).peakMemoryBytes
                try #require(memory.count == ranks, "peak memory \(memory)")
                return memory.max()!
            }
            let one = try await peak(ranks: 1, tokens: 2048) - peak(ranks: 1, tokens: 16)
            let four = try await peak(ranks: 4, tokens: 2048) - peak(ranks: 4, tokens: 16)
            let mib = 1_048_576.0
            #expect(one > 32 * mib, "one rank's state is only \(one / mib) MiB: the measurement cannot tell anything")
            #expect(four < 0.6 * one, "per-rank state at 4 ranks is \(four / mib) MiB, at 1 rank \(one / mib) MiB: not O(tokens / P)")
        }
    }
}

/// The report types themselves, in process: what `--json` writes reads back as the same value.
@Suite("report types")
struct ReportTypes {
    @Test("a report reads back as written: snake_case keys, infinity and NaN as strings, absent optionals left out")
    func roundTrip() throws {
        var row = BenchJSON.Result(strategy: "ring", seconds: 1, gflops: .infinity, fractionOfPeak: .nan, fractionOfKernelShapePeak: 0.5)
        row.predictedSeconds = 2
        let report = BenchJSON(
            ranks: 2, threads: 1, sgemmPeakGflops: 10, sgemmKernelShapesGflops: .init(scores: 1, values: 2, combined: 4.0 / 3),
            openblasCores: ["Haswell", "Haswell"], openblasCoreReason: "chosen", results: [row], predictions: [.init(strategy: "mesh 2x2", seconds: 3)])
        let text = JSONReport.text(report)
        #expect(text.contains(#""sgemm_kernel_shapes_gflops":{"#) && text.contains(#""gflops":"inf""#) && text.contains(#""fraction_of_peak":"nan""#), "\(text)")
        #expect(!text.contains("backward_seconds"), "\(text)")
        let back = try JSONReport.decode(BenchJSON.self, from: text)
        #expect(back.command == "bench" && back.results.count == 1 && back.predictions[0].strategy == "mesh 2x2")
        #expect(back.results[0].gflops == .infinity && back.results[0].fractionOfPeak.isNaN && back.results[0].predictedSeconds == 2)
        #expect(back.results[0].backwardSeconds == nil)
        #expect(JSONReport.text(back) == text)
    }
}
