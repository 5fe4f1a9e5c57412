import ArgumentParser
import AttentionCore
import AttentionJobs
import BlasRuntime
import Foundation
import Planning
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
    @OptionGroup var backward: BackwardOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        for name in strategies.split(separator: ",") where StrategyName(rawValue: String(name)) == nil {
            throw ValidationError("unknown strategy '\(name)' in --strategies; choose from \(StrategyName.allCases.map(\.rawValue).joined(separator: ", ")).")
        }
        guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1.") }
        try compute.refuseForeignOptions(strategies.split(separator: ",").compactMap { StrategyName(rawValue: String($0)) })
        // bench runs the --strategies list; a --strategy would be silently ignored.
        if let one = compute.strategyChoice {
            throw ValidationError(
                "bench compares the strategies of --strategies (default \(strategies)); --strategy is for run, verify and profile. "
                    + (one == .auto ? "Give --predict to see what auto would pick." : "Give --strategies \(one.rawValue) to bench \(one.rawValue) alone."))
        }
    }

    func run() throws {
        output.setProgress()
        try Session.run(timeout: compute.timeout) { world in
            let predictions = try AutoStrategy.predictions(problem.configuration, compute.configuration, communicator: world)
            try world.barrier()
            let ownPeak = BlasPeak.measure(threads: compute.threads)
            let peak = try world.allreduce(ownPeak, .sum)
            // The same at the kernel's own products, so a reader sees how much of the gap to the
            // square peak is BLAS's (smaller, thinner products) and how much is the kernel's.
            let headDim = try world.together { try AutoStrategy.problem(problem.source, mask: problem.positionMask, ranks: world.size).headDim }
            let mask = try problem.mask(world)
            let tile = compute.configuration.tiling(for: mask)
            let valueProduct = ValueProduct.current(headDim: headDim)
            let shapes = BlasPeak.measureKernelShapes(headDim: headDim, tiling: tile, valueProduct: valueProduct, threads: compute.threads)
            let sums = try world.allreduce([shapes.scores, shapes.values], .sum)
            let harmonic = { (a: Double, b: Double) in 2 / (1 / a + 1 / b) }  // the two products do equal FLOPs
            let sgemmShapePeaks = [sums[0], sums[1], harmonic(sums[0], sums[1])]
            // bf16 products: the same peaks for oneDNN's bf16 matmul, and the ratios are to them.
            let products = KernelProducts.for(try problem.source.elementType())
            let bf16Ranks = Int(try world.allreduce(products == .bf16 ? 1.0 : 0.0, .sum))
            var bf16Peaks: (square: Double, shapes: [Double])?
            if bf16Ranks > 0 {
                let square = products == .bf16 ? BlasPeak.measureBF16(threads: compute.threads) : ownPeak
                let bf16 =
                    products == .bf16
                    ? BlasPeak.measureKernelShapes(headDim: headDim, tiling: tile, valueProduct: valueProduct, products: .bf16, threads: compute.threads)
                    : shapes
                let sums = try world.allreduce([square, bf16.scores, bf16.values], .sum)
                bf16Peaks = (sums[0], [sums[1], sums[2], harmonic(sums[1], sums[2])])
            }
            let (peakOfRatios, shapePeaks) = bf16Peaks.map { ($0.square, $0.shapes) } ?? (peak, sgemmShapePeaks)
            let cores = try world.allgather(BlasCore.current)
            let header =
                [
                    "seqpar bench: \(world.size) rank(s) x \(compute.threads) thread(s)",
                    "OpenBLAS core: \(Set(cores).sorted().joined(separator: ", ")) (rank 0: \(BlasCore.reason))",
                    String(
                        format: "sgemm peak, all ranks at once: %.1f GFLOP/s square (n=1024); at the kernel's products %.1f: Q·Kᵀ %dx%dx%d %.1f, P·V %dx%dx%d %.1f (%@)",
                        peak, sgemmShapePeaks[2], tile.queryTile, tile.keyBlock, headDim, sgemmShapePeaks[0], tile.queryTile, headDim, tile.keyBlock,
                        sgemmShapePeaks[1], valueProduct.description),
                ]
                + (bf16Peaks.map { bf16 in
                    [
                        String(
                            format: "bf16 GEMM peak (%@), all ranks at once: %.1f GFLOP/s square (n=1024); at the kernel's products %.1f: Q·Kᵀ %.1f, P·V %.1f%@; "
                                + "'of peak' below is of these", BF16Gemm.path.description, bf16.square, bf16.shapes[2], bf16.shapes[0], bf16.shapes[1],
                            bf16Ranks < world.size ? " (\(world.size - bf16Ranks) rank(s) without bf16 units count their sgemm)" : "")
                    ]
                } ?? [])
            if !output.json { Session.say(world, (header + (BuildInfo.belowCPU.map { [$0] } ?? [])).joined(separator: "\n")) }
            var rows: [BenchJSON.Result] = []
            var lines: [String] = []
            for name in strategies.split(separator: ",").compactMap({ StrategyName(rawValue: String($0)) }) {
                // Inputs loaded once; one warm-up run, then the best of the timed ones.
                let measured = try BenchJob.measure(
                    name, source: problem.source, mask: mask, compute: compute.configuration, repeats: repeats,
                    outputGrad: backward.backward ? backward.source(problem) : nil, communicator: world)
                let (last, best, bestBackward) = (measured.run, measured.best, measured.bestBackward ?? .infinity)
                let gflops = last.flops / best / 1e9
                let label = last.strategy.label
                let predicted = predictions.first { $0.label == label }
                var row = BenchJSON.Result(
                    strategy: name.rawValue, seconds: best, gflops: gflops, fractionOfPeak: gflops / peakOfRatios, fractionOfKernelShapePeak: gflops / shapePeaks[2])
                if let predicted {
                    row.predictedSeconds = predicted.seconds
                    row.measuredOverPredicted = best / predicted.seconds
                }
                let backwardGflops = 2.5 * last.flops / bestBackward / 1e9
                if backward.backward {
                    row.backwardSeconds = bestBackward
                    row.backwardGflops = backwardGflops
                    row.backwardFractionOfPeak = backwardGflops / peakOfRatios
                }
                rows.append(row)
                if rows.count == 1 {
                    lines.append("problem: \(Format.problem(last))")
                    lines.append("strategy    best s     GFLOP/s   of peak   of kernel-shape peak   predicted s   measured/predicted")
                }
                lines.append(
                    String(
                        format: "%@  %9.4f  %9.1f   %.3f     %.3f", label.padding(toLength: 10, withPad: " ", startingAt: 0), best, gflops,
                        gflops / peakOfRatios, gflops / shapePeaks[2])
                        + (predicted.map { String(format: "                  %9.4f   %.2f", $0.seconds, best / $0.seconds) } ?? "                  (no prediction)"))
                if backward.backward {
                    lines.append(
                        String(format: "  backward  %9.4f  %9.1f   %.3f     (FLOPs: 2.5 x the forward's)", bestBackward, backwardGflops, backwardGflops / peakOfRatios))
                }
                if !output.json {  // each strategy as it finishes: a long bench shows progress
                    Session.say(world, lines.joined(separator: "\n"))
                    lines.removeAll()
                }
            }
            if predict {
                lines.append("cost model predictions (kernel efficiency \(compute.kernelEfficiency) x sgemm; fastest first):")
                lines.append(CostModel.table(predictions))
            }
            if output.json {
                Session.say(
                    world,
                    JSONReport.text(
                        BenchJSON(
                            ranks: world.size, threads: compute.threads, sgemmPeakGflops: peak,
                            sgemmKernelShapesGflops: .init(scores: sgemmShapePeaks[0], values: sgemmShapePeaks[1], combined: sgemmShapePeaks[2]),
                            bf16: bf16Peaks.map {
                                .init(
                                    path: BF16Gemm.path.description, peakGflops: $0.square,
                                    kernelShapesGflops: .init(scores: $0.shapes[0], values: $0.shapes[1], combined: $0.shapes[2]))
                            },
                            openblasCores: cores, openblasCoreReason: BlasCore.reason, results: rows,
                            predictions: predictions.map { .init(strategy: $0.label, seconds: $0.seconds) })))
            } else if !lines.isEmpty {
                Session.say(world, lines.joined(separator: "\n"))
            }
        }
    }
}
