// The cost model under mpirun: --strategy auto picks a strategy the run can use (and verify
// passes with it), from a probe file or probing first; bench prints predicted against measured.

import AttentionJobs
import Foundation
import Planning
import Testing

extension EndToEnd {
    @Suite("cost model")
    struct CostModelRuns {
        @Test("--strategy auto picks a valid strategy, probing first or from --probe", arguments: [2, 4])
        func auto(ranks: Int) async throws {
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-probe-\(UUID().uuidString).json").path
            defer { try? FileManager.default.removeItem(atPath: file) }
            let probe = try await launch(ranks: ranks, arguments: ["probe", "--out", file])
            #expect(probe.status == 0, "\(probe)")
            let shape = ["--tokens", "2003", "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--causal", "--strategy", "auto"]
            let run = try await launch(ranks: ranks, arguments: ["run", "--json", "--probe", file] + shape)
            #expect(run.status == 0, "\(run)")
            #expect(["ring", "zigzag", "heads", "mesh"].contains(try run.report(RunReport.self).strategy), "\(run)")
            let verify = try await launch(ranks: ranks, arguments: ["verify"] + shape)
            #expect(verify.status == 0, "\(verify)")
            #expect(verify.stdout.contains("strategy auto: ") && verify.stdout.contains("PASS"), "\(verify)")
        }

        @Test("bench prints predicted and measured time with their ratio")
        func bench() async throws {
            let result = try await launch(
                ranks: 2,
                arguments: [
                    "bench", "--json", "--repeats", "1", "--strategies", "ring,zigzag,heads",
                    "--tokens", "2048", "--causal", "--heads", "4", "--kv-heads", "2", "--head-dim", "32",
                ])
            #expect(result.status == 0, "\(result)")
            let rows = try result.report(BenchJSON.self).results
            #expect(rows.count == 3)
            for row in rows {
                let predicted = try #require(row.predictedSeconds), ratio = try #require(row.measuredOverPredicted)
                #expect(predicted > 0 && predicted.isFinite && ratio > 0 && ratio.isFinite)
                #expect(abs(ratio - row.seconds / predicted) < 1e-9)
            }
        }
    }
}
