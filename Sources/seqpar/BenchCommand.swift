import ArgumentParser
import AttentionCore
import Foundation
import Profiling
import SequenceParallel

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Strategies side by side: best time, GFLOP/s, and the fraction of the sgemm peak measured in the same run.",
        discussion: """
        The peak is the sum over ranks of each rank's sgemm GFLOP/s, measured with all ranks busy at once.
        Each strategy's time is also predicted by the cost model (from --probe FILE, or a probe run first) and
        printed beside the measured time with their ratio; --predict adds the predictions of every strategy
        and mesh shape the model knows.
        """
    )

    @OptionGroup var problem: ProblemOptions
    @OptionGroup var compute: ComputeOptions
    @Option(help: "Strategies to compare, comma-separated (s2 needs the --s2-* pattern, star computes only its queries).")
    var strategies: String = [StrategyName.ring, .zigzag, .heads, .mesh].map(\.rawValue).joined(separator: ",")
    @Option(help: "Timed repetitions per strategy (after one warm-up); the best is reported.")
    var repeats: Int = 3
    @Flag(help: "Also print the cost model's prediction for every strategy and mesh shape.")
    var predict = false
    @OptionGroup var output: OutputOptions

    func validate() throws {
        for name in strategies.split(separator: ",") where StrategyName(rawValue: String(name)) == nil {
            throw ValidationError("unknown strategy '\(name)' in --strategies; choose from \(StrategyName.allCases.map(\.rawValue).joined(separator: ", ")).")
        }
        guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1.") }
    }

    func run() throws {
        try Session.run(timeout: compute.timeout) { world in
            let predictions = try AutoStrategy.predictions(problem, compute, communicator: world)
            try world.barrier()
            let peak = try world.allreduce(BlasPeak.measure(threads: compute.threads), .sum)
            var rows: [[String: Any]] = []
            var lines: [String] = []
            for name in strategies.split(separator: ",").compactMap({ StrategyName(rawValue: String($0)) }) {
                // Inputs loaded once; one warm-up run, then the best of the timed ones.
                let prepared = try DistributedRun.prepare(problem.source, strategy: name, mask: problem.mask, compute: compute, communicator: world)
                var best = Double.infinity
                var last: DistributedRun?
                for _ in 0 ..< repeats + 1 {
                    let run = try DistributedRun.run(prepared, communicator: world)
                    if last != nil { best = min(best, run.seconds) }
                    last = run
                }
                let gflops = last!.flops / best / 1e9
                let mesh = (last!.strategy as? MeshAttention).map { ($0.headGroup, $0.ring) }
                let predicted = predictions.first { $0.strategy == name.rawValue && ($0.mesh == nil || ($0.mesh!.headGroup, $0.mesh!.ring) == mesh!) }
                var row: [String: Any] = ["strategy": name.rawValue, "seconds": best, "gflops": gflops, "fraction_of_peak": gflops / peak]
                if let predicted {
                    row["predicted_seconds"] = predicted.seconds
                    row["measured_over_predicted"] = best / predicted.seconds
                }
                rows.append(row)
                if lines.isEmpty {
                    lines.append("seqpar bench: \(world.size) rank(s) x \(compute.threads) thread(s), \(Format.problem(last!))")
                    lines.append(String(format: "sgemm peak, all ranks at once: %.1f GFLOP/s", peak))
                    lines.append("strategy    best s     GFLOP/s   fraction of peak   predicted s   measured/predicted")
                }
                let label = mesh.map { "mesh \($0.0)x\($0.1)" } ?? name.rawValue
                lines.append(String(format: "%@  %9.4f  %9.1f   %.3f", label.padding(toLength: 10, withPad: " ", startingAt: 0), best, gflops, gflops / peak)
                    + (predicted.map { String(format: "              %9.4f   %.2f", $0.seconds, best / $0.seconds) } ?? "              (no prediction)"))
            }
            if predict {
                lines.append("cost model predictions (kernel efficiency \(compute.kernelEfficiency) x sgemm; fastest first):")
                lines.append(CostModel.table(predictions))
            }
            if output.json {
                Session.say(world, Format.json(["command": "bench", "ranks": world.size, "threads": compute.threads, "sgemm_peak_gflops": peak, "results": rows,
                                                "predictions": predictions.map { ["strategy": $0.label, "seconds": $0.seconds] }]))
            } else {
                Session.say(world, lines.joined(separator: "\n"))
            }
        }
    }
}
