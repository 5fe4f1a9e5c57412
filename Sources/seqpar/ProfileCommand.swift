// `seqpar profile`: run's work with an event log on every rank (AttentionJobs' ProfileReport
// gathers the events and writes the Chrome trace and the SVG timeline), and the per-rank table.

import ArgumentParser
import AttentionJobs

struct ProfileCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "profile",
        abstract: "A run with profiling on: per-rank compute, communication, wait and bytes; a Chrome trace and an SVG timeline.",
        discussion: """
            Takes run's options. Writes the trace (open it in https://ui.perfetto.dev or chrome://tracing) to --trace
            and the timeline picture beside it with the extension .svg, and prints per rank: compute s, exposed
            communication (time blocked in waits and collectives) s, total communication (time with any transfer in
            flight, from post to completion) s, bytes sent and received, achieved bandwidth, overlap = 1 - exposed/total,
            and the load imbalance (max/mean compute). With --backward the backward pass follows the forward in the
            same trace and its events count in the table.
              Launch/local 4 profile --tokens 16384 --causal --strategy zigzag --trace zigzag.json
            """
    )

    @OptionGroup var problem: ProblemOptions
    @OptionGroup var compute: ComputeOptions
    @Option(parsing: .unconditional, help: "Chrome trace JSON to write; the SVG timeline goes beside it (same name, .svg).")
    var trace: String = "seqpar-profile.json"
    @OptionGroup var backward: BackwardOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        try compute.refuseForeignOptions(compute.strategy.named.map { [$0] })
        try OutputCheck.writable(trace, option: "--trace")
        try OutputCheck.writable(ProfileReport.svgPath(trace), option: "--trace (its SVG timeline)")
    }

    func run() throws {
        try RunCommand.execute(
            problem: problem, compute: compute, out: nil, lse: nil, profile: trace, output: output, traceOption: "--trace",
            backward: backward)
    }
}
