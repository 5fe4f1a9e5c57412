// The keys of every --json report, written out by hand. The end-to-end tests decode the reports
// with the same Codable types that encode them, so a renamed property would change the JSON that
// users' scripts read and still pass there. Here one value of each report type (every optional
// set, so every key is present) is encoded with `JSONReport.text`, parsed with JSONSerialization,
// and its keys, and those of its nested objects, must be exactly the lists below. In process: no
// mpirun, no binary.

import Foundation
import Profiling
import SequenceParallel
import Testing

@testable import AttentionJobs

@Suite("ReportKeys: the --json keys of every report")
struct ReportKeys {
    /// `value` as `--json` writes it, parsed back into an object.
    static func object(_ value: some Encodable) throws -> [String: Any] {
        let text = JSONReport.text(value)
        let parsed = try JSONSerialization.jsonObject(with: Data(text.utf8))
        return try #require(parsed as? [String: Any], "not a JSON object: \(text)")
    }

    /// The keys of `value` when it is an object, or of the first element when it is an array of them.
    static func keys(_ value: Any?) -> Set<String> {
        if let object = value as? [String: Any] { return Set(object.keys) }
        if let first = (value as? [Any])?.first as? [String: Any] { return Set(first.keys) }
        return []
    }

    static let resultErrorKeys: Set = ["rows", "o_max_abs", "o_max_rel", "o_worst_token", "o_worst_head", "lse_max_abs", "lse_max_rel"]
    static let gradientErrorKeys: Set = ["query_rows", "key_rows", "dq_max_abs", "dk_max_abs", "dv_max_abs", "dq_max_rel", "dk_max_rel", "dv_max_rel"]
    static let gradientKeys: Set = ["seconds", "passed", "single_rank", "worst_rank", "reference", "per_rank"]

    static func gradientReport() -> GradientJSON {
        let errors = GradientJSON.Errors(GradientErrors())
        return GradientJSON(
            seconds: 0.5, passed: true, singleRank: errors, worstRank: 1, reference: errors,
            perRank: [GradientJSON.PerRank(singleRank: errors, reference: errors)])
    }

    static func profileFigures() -> ProfileFigures {
        ProfileFigures(ProfileSummary(events: [[], []]), trace: "trace.json", svg: "trace.svg")
    }

    @Test("run --json")
    func run() throws {
        var report = RunReport(
            strategy: "zigzag", ranks: 2, threads: 1, tokens: 64, heads: 4, kvHeads: 2, headDim: 8, mask: "causal", density: 0.5,
            seconds: 0.25, flops: 1e6, gflops: 0.004, peakMemoryBytes: [1e6, 1e6], bytesSent: [10, 20], bytesReceived: [20, 10],
            kernelFlops: [5e5, 5e5], imbalance: 1)
        report.layout = "zigzag documents"
        report.predictedImbalance = 1.1
        report.profile = Self.profileFigures()
        report.backward = RunReport.BackwardFigures(
            seconds: 0.5, flops: 2.5e6, gflops: 0.005, kernelFlops: [1.25e6, 1.25e6], bytesSent: [30, 40], bytesReceived: [40, 30])
        let json = try Self.object(report)
        #expect(
            Self.keys(json) == [
                "command", "strategy", "ranks", "threads", "tokens", "heads", "kv_heads", "head_dim", "mask", "density", "seconds", "flops",
                "gflops", "peak_memory_bytes", "bytes_sent", "bytes_received", "kernel_flops", "imbalance", "layout", "dtype", "predicted_imbalance",
                "profile", "backward",
            ])
        #expect(json["command"] as? String == "run")
        #expect(Self.keys(json["backward"]) == ["seconds", "flops", "gflops", "kernel_flops", "bytes_sent", "bytes_received"])
        #expect(Self.keys(json["profile"]) == ["trace", "svg", "load_imbalance", "span_seconds", "ranks"])
    }

    @Test("profile figures (run --profile --json's profile)")
    func profile() throws {
        let json = try Self.object(Self.profileFigures())
        #expect(Self.keys(json) == ["trace", "svg", "load_imbalance", "span_seconds", "ranks"])
        #expect((json["ranks"] as? [Any])?.count == 2)
        #expect(
            Self.keys(json["ranks"]) == [
                "compute_seconds", "merge_seconds", "exposed_communication_seconds", "communication_seconds", "bytes_sent", "bytes_received",
                "bandwidth_bytes_per_second", "overlap", "events",
            ])
    }

    @Test("verify --json, with --backward's section")
    func verify() throws {
        let errors = VerifyJSON.Errors(ResultErrors())
        var report = VerifyJSON(
            strategy: "ring", ranks: 2, tokens: 64, heads: 4, kvHeads: 2, headDim: 8, mask: "none", seconds: 0.25, passed: true,
            tolerance: 1e-4, referenceTolerance: 1e-3, singleRank: errors, worstRank: 0, reference: errors,
            perRank: [VerifyJSON.PerRank(singleRank: errors, reference: errors)])
        report.backward = Self.gradientReport()
        let json = try Self.object(report)
        #expect(
            Self.keys(json) == [
                "command", "strategy", "ranks", "tokens", "heads", "kv_heads", "head_dim", "mask", "seconds", "passed", "tolerance",
                "reference_tolerance", "single_rank", "worst_rank", "reference", "per_rank", "backward",
            ])
        #expect(json["command"] as? String == "verify")
        #expect(Self.keys(json["single_rank"]) == Self.resultErrorKeys)
        #expect(Self.keys(json["reference"]) == Self.resultErrorKeys)
        #expect(Self.keys(json["per_rank"]) == ["single_rank", "reference"])
        let perRank = try #require((json["per_rank"] as? [[String: Any]])?.first)
        #expect(Self.keys(perRank["single_rank"]) == Self.resultErrorKeys)
        #expect(Self.keys(perRank["reference"]) == Self.resultErrorKeys)
        #expect(Self.keys(json["backward"]) == Self.gradientKeys)
    }

    @Test("verify --backward --json's backward section")
    func gradients() throws {
        let json = try Self.object(Self.gradientReport())
        #expect(Self.keys(json) == Self.gradientKeys)
        #expect(Self.keys(json["single_rank"]) == Self.gradientErrorKeys)
        #expect(Self.keys(json["reference"]) == Self.gradientErrorKeys)
        #expect(Self.keys(json["per_rank"]) == ["single_rank", "reference"])
        let perRank = try #require((json["per_rank"] as? [[String: Any]])?.first)
        #expect(Self.keys(perRank["single_rank"]) == Self.gradientErrorKeys)
        #expect(Self.keys(perRank["reference"]) == Self.gradientErrorKeys)
    }

    @Test("info --json")
    func info() throws {
        let rank = InfoJSON.Rank(
            rank: 0, host: "node0", cpu: "some CPU", openblasCore: "SkylakeX", openblasCoreReason: "matches the CPU", blasThreads: 1,
            sgemmGflops: 100, bf16Path: "converted to float32")
        let report = InfoJSON(
            seqparVersion: "1.0", commit: "abc", builtFor: "skylake-avx512", mpiLibrary: "Open MPI", worldSize: 1, threads: 1,
            openblas: "OpenBLAS", ranks: [rank])
        let json = try Self.object(report)
        #expect(Self.keys(json) == ["seqpar_version", "commit", "built_for", "mpi_library", "world_size", "threads", "openblas", "ranks"])
        #expect(Self.keys(json["ranks"]) == ["rank", "host", "cpu", "openblas_core", "openblas_core_reason", "blas_threads", "sgemm_gflops", "bf16_path"])
    }

    @Test("bench --json")
    func bench() throws {
        var result = BenchJSON.Result(strategy: "ring", seconds: 0.25, gflops: 10, fractionOfPeak: 0.5, fractionOfKernelShapePeak: 0.6)
        result.predictedSeconds = 0.2
        result.measuredOverPredicted = 1.25
        result.backwardSeconds = 0.6
        result.backwardGflops = 11
        result.backwardFractionOfPeak = 0.55
        let report = BenchJSON(
            ranks: 2, threads: 1, sgemmPeakGflops: 20, sgemmKernelShapesGflops: BenchJSON.KernelShapes(scores: 18, values: 16, combined: 17),
            openblasCores: ["SkylakeX", "SkylakeX"], openblasCoreReason: "matches the CPU", results: [result],
            predictions: [BenchJSON.Prediction(strategy: "ring", seconds: 0.2)])
        let json = try Self.object(report)
        #expect(
            Self.keys(json) == [
                "command", "ranks", "threads", "sgemm_peak_gflops", "sgemm_kernel_shapes_gflops", "openblas_cores", "openblas_core_reason", "results",
                "predictions",
            ])
        #expect(json["command"] as? String == "bench")
        #expect(Self.keys(json["sgemm_kernel_shapes_gflops"]) == ["scores", "values", "combined"])
        #expect(
            Self.keys(json["results"]) == [
                "strategy", "seconds", "gflops", "fraction_of_peak", "fraction_of_kernel_shape_peak", "predicted_seconds", "measured_over_predicted",
                "backward_seconds", "backward_gflops", "backward_fraction_of_peak",
            ])
        #expect(Self.keys(json["predictions"]) == ["strategy", "seconds"])
    }

    @Test("cluster-plan --json")
    func clusterPlan() throws {
        var report = ClusterPlanJSON(
            config: "cluster.toml", command: ["mpirun", "-np", "2"], shell: "mpirun -np 2", ranks: 2,
            hosts: [ClusterPlanJSON.Host(name: "node0", slots: 2, address: "10.0.0.1")])
        report.ranksPerNode = 2
        report.hostfile = "/tmp/hostfile"
        let json = try Self.object(report)
        #expect(Self.keys(json) == ["config", "command", "shell", "ranks", "hosts", "ranks_per_node", "hostfile"])
        #expect(Self.keys(json["hosts"]) == ["name", "slots", "address"])
    }
}
