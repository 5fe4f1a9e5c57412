// What a user sees when the input is wrong: every rank exits non-zero, quickly (no rank left
// waiting in a collective), and one message, not one per rank, names the file and the problem.
// Argument mistakes are caught before MPI starts and exit with 64 (EX_USAGE).

import Foundation
import Testing

/// One bad input: how to write the files and what the message must say.
struct BadInputCase: Sendable, CustomTestStringConvertible {
    let name: String
    /// The file the message must name: "q", "k", "v", "out", or "dir".
    let offender: String
    /// Words of the message (checked case-sensitively).
    let phrases: [String]
    let extraArguments: [String]
    /// Writes q.npy, k.npy and v.npy (and whatever else) into the directory.
    let write: @Sendable (ScratchDirectory) throws -> Void

    init(
        _ name: String, offender: String, phrases: [String], extraArguments: [String] = [],
        write: @escaping @Sendable (ScratchDirectory) throws -> Void
    ) {
        self.name = name
        self.offender = offender
        self.phrases = phrases
        self.extraArguments = extraArguments
        self.write = write
    }

    var testDescription: String { name }

    // A valid problem: 10 tokens, 4 query heads, 2 kv heads, head dim 16.
    static let (tokens, heads, kvHeads, headDim) = (10, 4, 2, 16)

    /// Valid Q, K and V, then `change` overwrites some of them.
    static func valid(then change: @escaping @Sendable (ScratchDirectory) throws -> Void) -> @Sendable (ScratchDirectory) throws -> Void {
        { dir in
            try writeRandomNpy(dir.path("q.npy"), shape: [tokens, heads, headDim], seed: 1)
            try writeRandomNpy(dir.path("k.npy"), shape: [tokens, kvHeads, headDim], seed: 2)
            try writeRandomNpy(dir.path("v.npy"), shape: [tokens, kvHeads, headDim], seed: 3)
            try change(dir)
        }
    }

    static let all: [BadInputCase] = [
        BadInputCase(
            "not a .npy file", offender: "q", phrases: ["not a .npy"],
            write: valid { dir in
                var generator = SeededGenerator(state: 9)
                try writeBytes(dir.path("q.npy"), (0 ..< 700).map { _ in UInt8.random(in: 0 ... 255, using: &generator) & 0x7F })
            }),
        BadInputCase(
            "empty file", offender: "v", phrases: ["not a .npy"],
            write: valid { dir in
                try writeBytes(dir.path("v.npy"), [])
            }),
        BadInputCase(
            "float64 data", offender: "k", phrases: ["dtype", "<f8", "<f4"],
            write: valid { dir in
                let count = tokens * kvHeads * headDim
                try writeBytes(
                    dir.path("k.npy"),
                    handWrittenNpy(
                        descr: "<f8", shape: [tokens, kvHeads, headDim],
                        data: littleEndianBytes(floats: count, width: 8, seed: 4)))
            }),
        BadInputCase(
            "big-endian float32", offender: "q", phrases: ["dtype", ">f4"],
            write: valid { dir in
                let count = tokens * heads * headDim
                try writeBytes(
                    dir.path("q.npy"),
                    handWrittenNpy(
                        descr: ">f4", shape: [tokens, heads, headDim],
                        data: littleEndianBytes(floats: count, width: 4, seed: 4)))
            }),
        BadInputCase(
            "Fortran order", offender: "v", phrases: ["Fortran order"],
            write: valid { dir in
                let count = tokens * kvHeads * headDim
                try writeBytes(
                    dir.path("v.npy"),
                    handWrittenNpy(
                        fortranOrder: true, shape: [tokens, kvHeads, headDim],
                        data: littleEndianBytes(floats: count, width: 4, seed: 5)))
            }),
        BadInputCase(
            "2-D array", offender: "q", phrases: ["2 dimensions", "expected 3"],
            write: valid { dir in
                try writeRandomNpy(dir.path("q.npy"), shape: [tokens, heads * headDim], seed: 6)
            }),
        BadInputCase(
            "K has fewer tokens than Q", offender: "k", phrases: ["tokens", "same token count"],
            write: valid { dir in
                try writeRandomNpy(dir.path("k.npy"), shape: [tokens - 1, kvHeads, headDim], seed: 7)
                try writeRandomNpy(dir.path("v.npy"), shape: [tokens - 1, kvHeads, headDim], seed: 8)
            }),
        BadInputCase(
            "K and V shapes differ", offender: "v", phrases: ["must match"],
            write: valid { dir in
                try writeRandomNpy(dir.path("v.npy"), shape: [tokens, 1, headDim], seed: 8)
            }),
        BadInputCase(
            "head dims differ", offender: "k", phrases: ["head dim"],
            write: valid { dir in
                try writeRandomNpy(dir.path("k.npy"), shape: [tokens, kvHeads, headDim / 2], seed: 7)
                try writeRandomNpy(dir.path("v.npy"), shape: [tokens, kvHeads, headDim / 2], seed: 8)
            }),
        BadInputCase(
            "heads not a multiple of kv heads", offender: "q", phrases: ["multiple"],
            write: valid { dir in
                try writeRandomNpy(dir.path("q.npy"), shape: [tokens, 3, headDim], seed: 6)
            }),
        BadInputCase(
            "truncated data", offender: "k", phrases: ["truncated"],
            write: valid { dir in
                let count = tokens * kvHeads * headDim
                try writeBytes(
                    dir.path("k.npy"),
                    handWrittenNpy(
                        shape: [tokens, kvHeads, headDim],
                        data: littleEndianBytes(floats: count - 17, width: 4, seed: 5)))
            }),
        BadInputCase(
            "unsupported version", offender: "q", phrases: ["version 9.0"],
            write: valid { dir in
                try writeBytes(dir.path("q.npy"), handWrittenNpy(shape: [tokens, heads, headDim], data: [], version: (9, 0)))
            }),
        BadInputCase(
            "malformed header", offender: "v", phrases: ["malformed"],
            write: valid { dir in
                try writeBytes(dir.path("v.npy"), handWrittenNpy(shape: [], data: [], dict: "{'descr': '<f4', 'shape': (10, 2, 16), "))
            }),
        BadInputCase(
            "nonexistent path", offender: "k", phrases: ["cannot open", "No such file"],
            write: valid { dir in
                try FileManager.default.removeItem(atPath: dir.path("k.npy"))
            }),
    ]
}

/// One argument mistake and the sentence that must explain it.
struct ArgumentErrorCase: Sendable, CustomTestStringConvertible {
    let arguments: [String]
    let message: String
    var testDescription: String { arguments.joined(separator: " ") }

    static let all = [
        ArgumentErrorCase(arguments: ["run", "--q", "q.npy"], message: "--q, --k and --v go together"),
        ArgumentErrorCase(arguments: ["verify", "--q", "q.npy", "--v", "v.npy"], message: "--q, --k and --v go together"),
        ArgumentErrorCase(arguments: ["run", "--tokens", "0"], message: "--tokens must be at least 1 (got 0)"),
        ArgumentErrorCase(arguments: ["verify", "--heads", "6", "--kv-heads", "4"], message: "heads (6) must be a multiple of kv-heads (4)"),
        ArgumentErrorCase(arguments: ["run", "--strategy", "spiral"], message: "'spiral' is invalid for '--strategy"),
        ArgumentErrorCase(arguments: ["bench", "--strategies", "ring,spiral"], message: "unknown strategy 'spiral'"),
        ArgumentErrorCase(
            arguments: ["run", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "--tokens", "8"],
            message: "describe synthetic inputs"),
        ArgumentErrorCase(arguments: ["run", "--scale", "0"], message: "--scale must be a positive number"),
        ArgumentErrorCase(arguments: ["run", "--threads", "0"], message: "--threads must be between 1 and 4096"),
        ArgumentErrorCase(arguments: ["run", "--tokens", "-5"], message: "--tokens must be at least 1 (got -5)"),
        ArgumentErrorCase(arguments: ["run", "--tokens", "9223372036854775807"], message: "is more than any machine holds"),
        ArgumentErrorCase(arguments: ["verify", "--query-tile", "9223372036854775807"], message: "--query-tile must be between 1 and 65536 (got 9223372036854775807)"),
        ArgumentErrorCase(arguments: ["run", "--heads", "4611686018427387904"], message: "--heads must be at most 1048576"),
        ArgumentErrorCase(arguments: ["bench", "--timeout", "-1"], message: "--timeout takes seconds, 0 or more"),
        // Checked before any work (an output that cannot be written used to fail after the whole run).
        ArgumentErrorCase(arguments: ["run", "--out", "/nonexistent-seqpar/o.npy"], message: "--out /nonexistent-seqpar/o.npy: the folder /nonexistent-seqpar does not exist"),
        ArgumentErrorCase(arguments: ["run", "--lse", "/proc/seqpar-lse.npy"], message: "--lse /proc/seqpar-lse.npy cannot be written"),
        ArgumentErrorCase(arguments: ["run", "--out", "/tmp"], message: "--out /tmp is a folder"),
        ArgumentErrorCase(arguments: ["profile", "--trace", "/nonexistent-seqpar/t.json"], message: "--trace /nonexistent-seqpar/t.json: the folder"),
        ArgumentErrorCase(arguments: ["run", "--profile", "/proc/t.json"], message: "--profile /proc/t.json cannot be written"),
        ArgumentErrorCase(arguments: ["probe", "--out", "/nonexistent-seqpar/p.json"], message: "--out /nonexistent-seqpar/p.json: the folder"),
        ArgumentErrorCase(arguments: ["run", "--save-inputs", "/nonexistent-seqpar"], message: "--save-inputs /nonexistent-seqpar/Q.npy: the folder"),
        // Values whose arithmetic would overflow, and values that make no sense, before MPI starts.
        ArgumentErrorCase(
            arguments: ["run", "--strategy", "star", "--queries", "10", "--query-position", "9223372036854775800"],
            message: "--query-position must be from 0 to 2^40, a position in the sequence (got 9223372036854775800)"),
        ArgumentErrorCase(
            arguments: ["run", "--strategy", "mesh", "--mesh", "4294967296x4294967296"], message: "--mesh takes PhxPr, two numbers from 1 to 1048576"),
        ArgumentErrorCase(arguments: ["verify", "--tolerance", "-1"], message: "--tolerance is the largest error that passes, a finite number of 0 or more (got -1.0)"),
        ArgumentErrorCase(arguments: ["verify", "--tolerance", "nan"], message: "--tolerance is the largest error that passes, a finite number of 0 or more (got nan)"),
        ArgumentErrorCase(arguments: ["verify", "--tolerance", "inf"], message: "--tolerance is the largest error that passes, a finite number of 0 or more (got inf)"),
        ArgumentErrorCase(arguments: ["verify", "--reference-tolerance", "nan"], message: "--reference-tolerance is the largest error that passes"),
        ArgumentErrorCase(arguments: ["verify", "--reference-rows=-5"], message: "--reference-rows is a count of rows per rank, 0 or more (got -5)"),
        // A value that starts with a dash is the option's value, said to be wrong for what it is.
        ArgumentErrorCase(arguments: ["run", "--documents", "-1"], message: "--documents takes lengths separated by commas, such as 100,2000,37 (got '-1')"),
        ArgumentErrorCase(arguments: ["run", "--out", "--lse", "l.npy"], message: "--out needs a file name but got the option --lse"),
        // bench runs --strategies; a --strategy would be ignored.
        ArgumentErrorCase(arguments: ["bench", "--strategy", "ring"], message: "Give --strategies ring to bench ring alone"),
    ]
}

extension EndToEnd {
    @Suite("bad input")
    struct BadInput {
        @Test("bad .npy input fails on every rank with one message", arguments: BadInputCase.all)
        func badNpy(_ bad: BadInputCase) async throws {
            let dir = try ScratchDirectory()
            try bad.write(dir)
            let paths = [
                "q": dir.path("q.npy"), "k": dir.path("k.npy"), "v": dir.path("v.npy"),
                "out": dir.path("missing-dir/o.npy"),
            ]
            let extra = bad.extraArguments.map { $0 == "OUT" ? paths["out"]! : $0 }
            let result = try await launch(
                ranks: 2, arguments: ["run", "--q", paths["q"]!, "--k", paths["k"]!, "--v", paths["v"]!] + extra,
                timeout: 60)
            #expect(result.status == 1, "exit status \(result.status), expected 1\n\(result)")
            #expect(!result.timedOut)
            let offender = try #require(paths[bad.offender])
            #expect(result.seqparStderr.contains(offender), "stderr does not name \(offender)\n\(result)")
            for phrase in bad.phrases {
                #expect(result.seqparStderr.contains(phrase), "stderr does not say '\(phrase)'\n\(result)")
            }
            // One message from rank 0 for the whole job, however many ranks failed.
            #expect(occurrences(of: "seqpar: error:", in: result.seqparStderr) == 1, "the error is not printed exactly once\n\(result)")
            #expect(occurrences(of: bad.phrases[0], in: result.seqparStderr) == 1, "'\(bad.phrases[0])' printed more than once\n\(result)")
            #expect(!result.seqparStderr.contains("rank 1: error"), "rank 1 reported on its own instead of through rank 0\n\(result)")
            #expect(!result.stdout.contains("GFLOP/s"), "a failed run printed results\n\(result)")
        }

        /// The same for `verify`, which reads the files a second time (whole K and V).
        @Test("bad input to verify fails the same way")
        func badNpyVerify() async throws {
            let dir = try ScratchDirectory()
            try BadInputCase.valid { dir in
                try writeBytes(
                    dir.path("v.npy"),
                    handWrittenNpy(
                        fortranOrder: true, shape: [10, 2, 16],
                        data: littleEndianBytes(floats: 320, width: 4, seed: 5)))
            }(dir)
            let result = try await launch(
                ranks: 3, arguments: ["verify", "--q", dir.path("q.npy"), "--k", dir.path("k.npy"), "--v", dir.path("v.npy")],
                timeout: 60)
            #expect(result.status == 1, "\(result)")
            #expect(result.seqparStderr.contains(dir.path("v.npy")) && result.seqparStderr.contains("Fortran order"), "\(result)")
            #expect(occurrences(of: "seqpar: error:", in: result.seqparStderr) == 1, "\(result)")
        }

        /// seqpar's own text is checked with mpirun's framed notices taken out: mpirun prints
        /// "1 process returned a non-zero exit code" as soon as a quiet rank exits, and that may
        /// land in the middle of rank 0's message (see `seqparStderr`).
        @Test("argument errors exit 64 with one message", arguments: ArgumentErrorCase.all)
        func argumentError(_ bad: ArgumentErrorCase) async throws {
            let result = try await launch(ranks: 2, arguments: bad.arguments, timeout: 60)
            #expect(result.status == 64, "exit status \(result.status), expected 64 (EX_USAGE)\n\(result)")
            #expect(occurrences(of: bad.message, in: result.seqparStderr) == 1, "'\(bad.message)' not printed exactly once on stderr\n\(result)")
            #expect(occurrences(of: "Error:", in: result.seqparStderr) == 1, "\(result)")
            #expect(occurrences(of: "Usage:", in: result.seqparStderr) == 1, "usage hint missing or repeated\n\(result)")
        }

        @Test("--help prints once and succeeds")
        func help() async throws {
            let result = try await launch(ranks: 2, arguments: ["verify", "--help"], timeout: 60)
            #expect(result.status == 0, "\(result)")
            #expect(occurrences(of: "--reference-tolerance", in: result.stdout) == 1, "help not printed exactly once\n\(result)")
        }
    }
}
