// `seqpar probe`: the machine's figures the cost model needs (Probe in SequenceParallel measures).

import ArgumentParser
import AttentionJobs
import Foundation
import Profiling
import SequenceParallel

struct ProbeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Measure ping-pong latency and bandwidth to the ring neighbour, all-to-all bandwidth, and sgemm GFLOP/s per rank.",
        discussion: """
            OSU-style: warm-up rounds, then iterations scaled down as messages grow. Point to point is rank 0 with
            rank 1 (one-way time = half the round trip) from 8 B to 16 MiB; all-to-all is every rank, 8 B to 2 MiB per
            peer, the slowest rank's time. Save the figures with --out and feed them to bench --predict or
            --strategy auto with --probe, so the cost model need not probe again:
              Launch/local 4 probe --out probe.json
            """
    )

    @Option(parsing: .unconditional, help: "Write the figures here as JSON.")
    var out: String?
    @Option(help: "Threads per rank for the sgemm measurement (as run --threads).")
    var threads: Int = 1
    @OptionGroup var output: OutputOptions

    func validate() throws { try OutputCheck.writable(out, option: "--out") }

    func run() throws {
        try Session.run { world in
            // A device (/dev/full), FIFO or folder is refused before measuring, as every output is.
            if let out { try world.together { try OutputPaths.check(outputs: [(option: "--out", path: out)], inputs: []) } }
            let figures = try Probe.measure(world, threads: threads)
            if let out {
                let encoded = try figures.encoded()
                try world.together { if world.rank == 0 { try WholeFiles.write([(Array(encoded), out, "the probe's figures")]) } }
            }
            if output.json {
                Session.say(world, String(decoding: try figures.encoded(), as: UTF8.self).split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.joined())
            } else {
                Session.say(world, "seqpar probe: \(figures.note)\n" + figures.table() + (out.map { "\nwrote \($0)" } ?? ""))
            }
        }
    }
}
