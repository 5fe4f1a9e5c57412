// `seqpar mask`: look at a mask before running it. Builds the mask the problem options give (any
// of them: causal, window, S2, documents, slice files and families), prints its density and
// slice count, draws its block map as SVG and writes it as a slice file (every mask but S2 can
// be written as slices), on one process, without MPI.

import ArgumentParser
import AttentionCore
import AttentionJobs
import Foundation

struct MaskCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mask",
        abstract: "Describe a mask, draw its block map (SVG) and write it as a slice file; computes no attention.",
        discussion: """
            Takes the problem options run does (the mask's and the sequence's: --tokens, --causal, --window,
            --documents, --mask-slices, --prefix-lm, --shared-question, --block-causal, --global-window, ...):
              seqpar mask --tokens 32768 --block-causal 4096 --svg block-causal.svg --out block-causal.npy
            The picture cuts the sequence into --cells cells a side and shades each by the fraction of its
            pairs the mask shows. --out writes the mask as an int64 [n, 5] slice file that --mask-slices reads.
            """
    )

    @OptionGroup var problem: ProblemOptions
    @Option(parsing: .unconditional, help: "Write the block map here, as SVG.")
    var svg: String?
    @Option(parsing: .unconditional, help: "Write the mask as a slice file here (int64 .npy, [n, 5]).")
    var out: String?
    @Option(help: "Cells a side in the block map (default 128; fewer when the sequence is shorter).")
    var cells: Int = 128
    @Flag(help: "Print a JSON object: mask, tokens, visible pairs, density, slices, files written.")
    var json = false

    func validate() throws {
        try OutputCheck.writable(svg, option: "--svg")
        try OutputCheck.writable(out, option: "--out")
        if cells < 1 { throw ValidationError("--cells must be at least 1 (got \(cells)).") }
    }

    func run() throws {
        do {
            let configuration = problem.configuration
            let mask = try configuration.mask()
            let tokens = try configuration.source.dimensions(selfAttention: true).tokens
            let pairs = mask.visiblePairs(tokens: tokens)
            let density = tokens > 0 ? pairs / (Double(tokens) * Double(tokens)) : 0
            var slices: MaskSlices?
            if case let .slices(given) = mask { slices = given } else { slices = MaskSlices.equivalent(to: mask, tokens: tokens) }
            var files: [(data: [UInt8], path: String, what: String)] = []
            if let svg {
                let title = "\(mask), \(tokens) tokens: density \(String(format: "%.4f", density))"
                files.append((Array(MaskPicture.svg(mask, tokens: tokens, title: title, cells: cells).utf8), svg, "the block map"))
            }
            if let out {
                guard let slices else { throw MaskSlices.Invalid(description: "--out: the S2 pattern differs by head and has no slice file; write another mask") }
                files.append((MaskPicture.sliceFile(slices), out, "the slice file"))
            }
            try WholeFiles.write(files)
            if json {
                var report = MaskJSON(mask: "\(mask)", tokens: tokens, visiblePairs: pairs, density: density, slices: slices?.slices.count)
                (report.svg, report.out) = (svg, out)
                print(JSONReport.text(report))
            } else {
                print("mask: \(mask), \(tokens) tokens: \(Int(pairs)) visible pairs per head, density \(String(format: "%.4f", density))")
                if let slices { print("as slices: \(slices.slices.count) slice\(slices.slices.count == 1 ? "" : "s")") }
                if let svg { print("wrote the block map to \(svg)") }
                if let out { print("wrote the slices to \(out)") }
            }
        } catch let error as ValidationError {
            throw error
        } catch {
            FileHandle.standardError.write(Data("seqpar mask: error: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }
}

/// `seqpar mask --json`.
struct MaskJSON: Codable {
    var command = "mask"
    let mask: String
    let tokens: Int
    let visiblePairs, density: Double
    let slices: Int?
    var svg, out: String?

    init(mask: String, tokens: Int, visiblePairs: Double, density: Double, slices: Int?) {
        (self.mask, self.tokens, self.visiblePairs, self.density, self.slices) = (mask, tokens, visiblePairs, density, slices)
    }
}
