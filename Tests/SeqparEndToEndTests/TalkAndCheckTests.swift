// What seqpar says while and before it works: --version and info name the build; rank 0's
// progress goes to stderr (never into --json on stdout) and --quiet silences it; output paths and
// options bench would ignore are refused before any work; a probe file from another rank count is
// refused with both counts; run --save-inputs writes Q, K and V that verify reads back.

import Foundation
import Testing

extension EndToEnd {
    @Suite("talking and checking")
    struct TalkAndCheck {
        @Test("--version names the version, the commit and the CPU built for; info says the same")
        func version() async throws {
            let result = try await launch(ranks: 1, arguments: ["--version"], timeout: 60)
            #expect(result.status == 0, "\(result)")
            #expect(result.stdout.hasPrefix("seqpar ") && result.stdout.contains(", commit ") && result.stdout.contains("built for "), "\(result)")
            let line = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let info = try await launch(ranks: 2, arguments: ["info", "--sgemm-size", "128"], timeout: 60)
            #expect(info.status == 0, "\(info)")
            #expect(info.stdout.hasPrefix(line + "\n"), "info does not start with the --version line\n\(info)")
            #expect(occurrences(of: ": CPU ", in: info.stdout) == 2, "\(info)")
            let json = try await launch(ranks: 1, arguments: ["info", "--json", "--sgemm-size", "128"], timeout: 60)
            let object = try json.json()
            #expect(object["seqpar_version"] is String && object["commit"] is String && object["built_for"] is String, "\(json)")
        }

        @Test("progress on rank 0's stderr: what runs, then the share done; none in --json stdout, none with --quiet")
        func progress() async throws {
            let arguments = ["run", "--tokens", "3000", "--causal", "--strategy", "ring"]
            let shown = try await launch(ranks: 2, arguments: arguments + ["--json"], environment: ["SEQPAR_PROGRESS": "1"])
            #expect(shown.status == 0, "\(shown)")
            #expect(
                occurrences(
                    of: "seqpar: running ring on 2 rank(s) x 1 thread(s): tokens 3000, heads 8, kv-heads 2, head-dim 64, mask causal",
                    in: shown.stderr) == 1, "\(shown)")
            #expect(shown.stderr.contains("\rring: 0%"), "\(shown)")
            #expect(shown.stderr.contains("\u{1B}[K"), "the progress line is not cleared\n\(shown)")
            #expect(!shown.stdout.contains("%") && (try? shown.json()) != nil, "progress leaked into stdout\n\(shown)")
            let quiet = try await launch(ranks: 2, arguments: arguments + ["--quiet"], environment: ["SEQPAR_PROGRESS": "1"])
            #expect(quiet.status == 0 && quiet.stderr.isEmpty, "\(quiet)")
            let bench = try await launch(
                ranks: 2, arguments: ["bench", "--tokens", "1024", "--repeats", "1", "--strategies", "ring,zigzag"],
                environment: ["SEQPAR_PROGRESS": "1"])
            #expect(bench.status == 0, "\(bench)")
            for strategy in ["ring", "zigzag"] {
                #expect(occurrences(of: "seqpar bench: \(strategy) on 2 rank(s)", in: bench.stderr) == 1, "\(bench)")
            }
            // Not a terminal and not asked for: nothing.
            let plain = try await launch(ranks: 2, arguments: arguments)
            #expect(plain.status == 0 && plain.stderr.isEmpty, "\(plain)")
        }

        @Test(
            "under a pseudo-terminal the progress line moves: at least two values strictly between 0% and 100% at 1 and 2 ranks",
            arguments: [(ranks: 1, strategy: "zigzag"), (ranks: 2, strategy: "zigzag"), (ranks: 2, strategy: "heads")])
        func progressMoves(ranks: Int, strategy: String) async throws {
            // script(1) gives Launch/local a terminal for stderr, as a user's shell does.
            let command = [packageRoot.appendingPathComponent("Launch/local").path, String(ranks), "run", "--tokens", "16384", "--causal", "--strategy", strategy]
            var environment = ProcessInfo.processInfo.environment
            environment["SEQPAR_BIN"] = try seqparBinary()
            environment["SEQPAR_PROGRESS"] = nil
            let line = command.map { "'" + $0.replacingOccurrences(of: "'", with: #"'\''"#) + "'" }.joined(separator: " ")
            let result = try await runProcess(
                URL(fileURLWithPath: "/usr/bin/script"), ["-q", "-e", "-c", line, "/dev/null"], environment: environment, timeout: 180)
            #expect(result.status == 0 && !result.timedOut, "\(result)")
            let label = try Regex("\r\(strategy): ([0-9]+)%")
            let shares = Set(result.stdout.matches(of: label).compactMap { Int($0.output[1].substring ?? "") })
            #expect(shares.filter { $0 > 0 && $0 < 100 }.count >= 2, "the progress line showed only \(shares.sorted())\n\(result)")
        }

        @Test("a probe recorded at another rank count is refused with both counts")
        func probeAtOtherRankCount() async throws {
            let dir = try ScratchDirectory()
            let probe = try await launch(ranks: 2, arguments: ["probe", "--out", dir.path("probe.json")])
            try #require(probe.status == 0, "\(probe)")
            let run = try await launch(ranks: 3, arguments: ["run", "--tokens", "512", "--strategy", "auto", "--probe", dir.path("probe.json")], timeout: 60)
            #expect(run.status == 1, "\(run)")
            #expect(occurrences(of: "was recorded at 2 rank(s) and this run has 3", in: run.seqparStderr) == 1, "\(run)")
            #expect(!run.stdout.contains("GFLOP/s"), "\(run)")
        }

        @Test("run --save-inputs writes Q, K, V that verify reads back")
        func saveInputs() async throws {
            let dir = try ScratchDirectory()
            let run = try await launch(
                ranks: 2,
                arguments: [
                    "run", "--tokens", "777", "--heads", "4", "--kv-heads", "2", "--head-dim", "32",
                    "--save-inputs", dir.url.path, "--out", dir.path("o.npy"),
                ])
            try #require(run.status == 0, "\(run)")
            let files = ["Q", "K", "V"].map { dir.path("\($0).npy") }
            let verify = try await launch(ranks: 3, arguments: ["verify", "--q", files[0], "--k", files[1], "--v", files[2]])
            #expect(verify.status == 0 && verify.stdout.contains("tokens 777, heads 4, kv-heads 2, head-dim 32"), "\(verify)")
            // The same values: O from the files equals O from the seed.
            let again = try await launch(ranks: 2, arguments: ["run", "--q", files[0], "--k", files[1], "--v", files[2], "--out", dir.path("o2.npy")])
            try #require(again.status == 0, "\(again)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: dir.path("o.npy"))) == Data(contentsOf: URL(fileURLWithPath: dir.path("o2.npy"))))
        }
    }
}
