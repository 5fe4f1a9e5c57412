// seqpar as a library: the example program (Examples/ShardedAttention), which holds its own rows
// of Q, K and V on each rank and calls DistributedAttention, under mpirun at 1 to 4 ranks. It
// checks its rows of O, dQ, dK and dV against a one-rank computation and exits 1 above 1e-5.

import Foundation
import Testing

extension EndToEnd {
    @Suite("library")
    struct Library {
        /// The example is built beside the tests and beside seqpar.
        static func example() throws -> String {
            let path = URL(fileURLWithPath: try seqparBinary()).deletingLastPathComponent().appendingPathComponent("sharded-attention-example").path
            try #require(FileManager.default.isExecutableFile(atPath: path), "\(path) is not built")
            return path
        }

        @Test(
            "a program with its own shards computes attention and gradients through DistributedAttention",
            arguments: [(1, "zigzag"), (2, "ring"), (3, "zigzag"), (3, "heads"), (4, "mesh")])
        func example(ranks: Int, strategy: String) async throws {
            let result = try await launch(ranks: ranks, arguments: [strategy], timeout: 120, binary: try Self.example())
            #expect(result.status == 0, "\(result)")
            #expect(result.stdout.contains("\(strategy) on \(ranks) rank(s), 1001 tokens: max abs error"), "\(result)")
        }

        @Test("a strategy that cannot serve it is refused once, with the reason")
        func refused() async throws {
            let result = try await launch(ranks: 2, arguments: ["star"], timeout: 60, binary: try Self.example())
            #expect(result.status != 0)
            #expect(occurrences(of: "star answers a few queries", in: result.stderr) == 1, "\(result)")
        }
    }
}
