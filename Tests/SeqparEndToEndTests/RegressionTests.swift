// Failures found in review, kept from coming back: a NaN must never pass verify (a NaN compares
// false with every tolerance; NaN inputs are now refused before the computation); star's queries must lie inside the sequence; the cost
// model must never see a shape that loading would refuse.

import AttentionCore
import FileFormats
import Foundation
import Testing

extension EndToEnd {
    @Suite("regressions")
    struct Regressions {
        @Test("a NaN in the inputs makes verify fail, not pass")
        func nanFailsVerify() async throws {
            let folder = try ScratchDirectory()
            let x = folder.path("x.npy"), v = folder.path("v.npy")
            _ = try writeRandomNpy(x, shape: [100, 2, 32], seed: 1)
            var values = try NpyFile.load(x).values
            values[(50 * 2 + 0) * 32 + 3] = .nan
            try NpyFile.save(v, shape: [100, 2, 32], values: values)
            let result = try await launch(
                ranks: 2,
                arguments: [
                    "verify", "--json", "--strategy", "ring", "--causal",
                    "--q", x, "--k", x, "--v", v,
                ])
            #expect(result.status == 1, "\(result)")
            #expect(!result.stdout.contains("\"passed\":true"), "\(result)")
            #expect(occurrences(of: "V \(v) holds NaN at [token 50, head 0, dim 3]", in: result.seqparStderr) == 1, "\(result)")
        }

        @Test(
            "star refuses queries past the end of the sequence",
            arguments: [
                ["--tokens", "100", "--queries", "4", "--query-position", "98"],
                ["--tokens", "100", "--queries", "101"],
            ])
        func starPastTheEnd(arguments: [String]) async throws {
            let result = try await launch(ranks: 2, arguments: ["run", "--strategy", "star", "--causal"] + arguments)
            #expect(result.status == 1, "\(result)")
            #expect(occurrences(of: "seqpar: error:", in: result.seqparStderr) == 1, "\(result)")
        }

        @Test("a trace that cannot be written is refused before the run, once, naming the file")
        func unwritableTrace() async throws {
            let path = "/nonexistent-\(UUID().uuidString)/trace.json"
            // Big enough to take seconds if it ran: the refusal comes before any work.
            let result = try await launch(ranks: 3, arguments: ["profile", "--tokens", "30000", "--trace", path])
            #expect(result.status == 64, "\(result)")
            #expect(occurrences(of: "Error: --trace \(path): the folder", in: result.seqparStderr) == 1, "\(result)")
            #expect(!result.stdout.contains("compute"), "the run started\n\(result)")
            #expect(!result.stderr.contains("MPI_ABORT"), "the job was aborted instead of failing together\n\(result)")
        }

        @Test("auto refuses a malformed file as loading would, without crashing")
        func autoOnAMalformedFile() async throws {
            let folder = try ScratchDirectory()
            let q = folder.path("q.npy"), k = folder.path("k.npy")
            _ = try writeRandomNpy(q, shape: [100, 2, 64], seed: 2)
            try NpyFile.save(k, shape: [100, 0, 64], values: [])
            let result = try await launch(ranks: 2, arguments: ["run", "--strategy", "auto", "--q", q, "--k", k, "--v", k])
            #expect(result.status == 1, "\(result)")
            #expect(result.seqparStderr.contains("kv-heads must be at least 1"), "\(result)")
        }
    }
}
