// The help of every command against a snapshot kept in HelpSnapshots/, as swift-argument-parser
// tests its own: a change to an option, a default or a strategy's line shows up as a failing
// test with both texts, and becomes the new snapshot only on purpose:
//   SEQPAR_UPDATE_SNAPSHOTS=1 Launch/test --filter HelpSnapshots
// which rewrites the files (the test then fails once, saying so, so an update is never silent).

import Foundation
import SeqparTestSupport
import Testing

extension EndToEnd {
    @Suite("help snapshots")
    struct HelpSnapshots {
        static let folder = packageRoot.appendingPathComponent("Tests/SeqparEndToEndTests/HelpSnapshots")
        static let commands = ["", "run", "verify", "bench", "profile", "probe", "info", "cluster-plan", "mask"]

        @Test("each command's help is its snapshot", arguments: commands)
        func help(_ command: String) throws {
            var environment = ProcessInfo.processInfo.environment
            environment["COLUMNS"] = "100"
            let result = try runToEnd(
                URL(fileURLWithPath: try seqparBinary()), ["help"] + (command.isEmpty ? [] : [command]), environment: environment, timeout: 60)
            #expect(result.status == 0, "\(result.transcript)")
            let file = Self.folder.appendingPathComponent((command.isEmpty ? "seqpar" : command) + ".txt")
            if ProcessInfo.processInfo.environment["SEQPAR_UPDATE_SNAPSHOTS"] == "1" {
                try result.stdout.write(to: file, atomically: true, encoding: .utf8)
                Issue.record("wrote \(file.path); run again without SEQPAR_UPDATE_SNAPSHOTS to check it")
                return
            }
            let snapshot = try #require(try? String(contentsOf: file, encoding: .utf8), "no snapshot \(file.path); make it with SEQPAR_UPDATE_SNAPSHOTS=1")
            #expect(result.stdout == snapshot, "seqpar help \(command) differs from \(file.lastPathComponent):\n--- snapshot\n\(snapshot)\n--- now\n\(result.stdout)")
        }
    }
}
