import ArgumentParser
import AttentionCore
import AttentionJobs
import Foundation
import SequenceParallel

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check the distributed result against the single-rank result (and float64), shard by shard.",
        discussion: """
            Runs the chosen strategy, then each rank recomputes its own rows exactly as a one-rank run does
            (the same kernel over the whole sequence) and, in float64, the plain reference. Prints the max
            abs and max rel error of O and LSE per rank (rel = max |error| / max |expected|) and exits
            non-zero when O's max abs error or LSE's max rel error exceeds the tolerance, naming the rank,
            token and head of the largest error.
            With --backward it then runs the distributed backward and checks, rank by rank, dQ of its query
            rows and dK, dV of its key rows against a one-rank backward of the whole problem (every rank
            recomputes it: memory and time grow with the whole sequence, as verify's do) and against the
            float64 reference backward on a sample of rows (--reference-rows), with the same tolerances
            on the max abs error.
            """
    )

    @OptionGroup var problem: ProblemOptions
    @OptionGroup var compute: ComputeOptions
    @Option(
        parsing: .unconditional,
        help: "Tolerance against the single-rank result (default 1e-5; 4e-3 with bf16 products: --dtype bf16 on a CPU with bf16 units).")
    var tolerance: Double?
    @Option(
        name: .customLong("reference-tolerance"), parsing: .unconditional,
        help: "Tolerance against the float64 reference on the inputs as rounded (default 1e-4; 1e-2 with bf16 products).")
    var referenceTolerance: Double?
    @Option(
        name: .customLong("reference-rows"), parsing: .unconditional,
        help: "Rows per rank checked against float64 when the problem is large (tokens^2*heads*headDim > 2^31); every row when small. 0 turns the float64 check off.")
    var referenceRows: Int = 64
    @OptionGroup var backward: BackwardOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        try compute.refuseForeignOptions(compute.strategy.named.map { [$0] })
        for case let (option, value?) in [("--tolerance", tolerance), ("--reference-tolerance", referenceTolerance)] {
            guard value.isFinite, value >= 0 else {
                throw ValidationError("\(option) is the largest error that passes, a finite number of 0 or more (got \(value)).")
            }
        }
        guard referenceRows >= 0 else { throw ValidationError("--reference-rows is a count of rows per rank, 0 or more (got \(referenceRows)).") }
    }

    /// The tolerances given, the defaults for the kernel's products where none is.
    func tolerances(for products: KernelProducts) -> VerifyJob.Tolerances {
        var chosen = VerifyJob.Tolerances.defaults(for: products)
        chosen.tolerance = tolerance ?? chosen.tolerance
        chosen.referenceTolerance = referenceTolerance ?? chosen.referenceTolerance
        chosen.referenceRows = referenceRows
        return chosen
    }

    func run() throws {
        output.setProgress()
        try Session.run(timeout: compute.timeout) { world in
            let chosen = try AutoStrategy.resolve(problem.configuration, compute.configuration, communicator: world)
            if let line = AutoStrategy.choiceLine(chosen), !output.json { Session.say(world, line) }
            let prepared = try DistributedRun.prepare(
                problem.source, strategy: chosen.name, mask: try problem.mask(world), compute: compute.configuration,
                communicator: world, variant: chosen.variant, wholeKeyValues: true)
            if backward.backward { try BackwardRun.check(prepared, communicator: world) }
            DistributedRun.announce(prepared, communicator: world)
            let outcome = try VerifyJob.check(
                prepared, source: problem.source, tolerances: tolerances(for: prepared.job.products), outputGrad: backward.backward ? backward.source(problem) : nil,
                communicator: world)
            let (run, report, gradientReport, backwardSeconds) = (outcome.run, outcome.forward, outcome.backward, outcome.backwardSeconds)
            let passed = outcome.passed
            if output.json {
                Session.say(world, JSONReport.text(outcome.json(ranks: world.size)))
            } else {
                Session.say(
                    world, "seqpar verify: \(chosen.name.rawValue), \(world.size) rank(s), \(Format.problem(run)); distributed run \(String(format: "%.4f", run.seconds)) s")
                Session.say(world, report.table())
                if let gradientReport {
                    Session.say(world, "backward: distributed run \(String(format: "%.4f", backwardSeconds)) s")
                    Session.say(world, gradientReport.table())
                    Session.say(world, passed ? "PASS (forward and backward)" : "FAIL")
                }
            }
            if !passed { throw ExitCode.failure }
        }
    }
}
