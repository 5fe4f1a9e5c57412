import ArgumentParser
import AttentionCore
import Foundation
import SequenceParallel

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Strategies side by side: best time, GFLOP/s, and the fraction of the sgemm peak measured in the same run.",
        discussion: "The peak is the sum over ranks of each rank's sgemm GFLOP/s, measured with all ranks busy at once."
    )

    @OptionGroup var problem: ProblemOptions
    @OptionGroup var compute: ComputeOptions
    @Option(help: "Strategies to compare, comma-separated (s2 needs the --s2-* pattern, star computes only its queries).")
    var strategies: String = [StrategyName.ring, .zigzag, .heads, .mesh].map(\.rawValue).joined(separator: ",")
    @Option(help: "Timed repetitions per strategy (after one warm-up); the best is reported.")
    var repeats: Int = 3
    @OptionGroup var output: OutputOptions

    func validate() throws {
        for name in strategies.split(separator: ",") where StrategyName(rawValue: String(name)) == nil {
            throw ValidationError("unknown strategy '\(name)' in --strategies; choose from \(StrategyName.allCases.map(\.rawValue).joined(separator: ", ")).")
        }
        guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1.") }
    }

    func run() throws {
        try Session.run { world in
            try world.barrier()
            let peak = try world.allreduce(BlasPeak.measure(threads: compute.threads), .sum)
            var rows: [[String: Any]] = []
            var lines: [String] = []
            for name in strategies.split(separator: ",").compactMap({ StrategyName(rawValue: String($0)) }) {
                var best = Double.infinity
                var last: DistributedRun?
                for _ in 0 ..< repeats + 1 {
                    let run = try DistributedRun.execute(problem.source, strategy: name, mask: problem.mask, compute: compute, communicator: world)
                    if last != nil { best = min(best, run.seconds) }
                    last = run
                }
                let gflops = last!.flops / best / 1e9
                rows.append(["strategy": name.rawValue, "seconds": best, "gflops": gflops, "fraction_of_peak": gflops / peak])
                if lines.isEmpty {
                    lines.append("seqpar bench: \(world.size) rank(s) x \(compute.threads) thread(s), \(Format.problem(last!))")
                    lines.append(String(format: "sgemm peak, all ranks at once: %.1f GFLOP/s", peak))
                    lines.append("strategy    best s     GFLOP/s   fraction of peak")
                }
                lines.append(String(format: "%@  %9.4f  %9.1f   %.3f", name.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0), best, gflops, gflops / peak))
            }
            if output.json {
                Session.say(world, Format.json(["command": "bench", "ranks": world.size, "threads": compute.threads, "sgemm_peak_gflops": peak, "results": rows]))
            } else {
                Session.say(world, lines.joined(separator: "\n"))
            }
        }
    }
}
