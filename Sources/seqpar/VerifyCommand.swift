import ArgumentParser
import AttentionCore
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
    @Option(help: "Tolerance against the single-rank result.")
    var tolerance: Double = 1e-5
    @Option(name: .customLong("reference-tolerance"), help: "Tolerance against the float64 reference.")
    var referenceTolerance: Double = 1e-4
    @Option(
        name: .customLong("reference-rows"),
        help: "Rows per rank checked against float64 when the problem is large (tokens^2*heads*headDim > 2^31); every row when small. 0 turns the float64 check off.")
    var referenceRows: Int = 64
    @OptionGroup var backward: BackwardOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        output.setProgress()
        try Session.run(timeout: compute.timeout) { world in
            let chosen = try AutoStrategy.resolve(problem, compute, communicator: world)
            if let line = AutoStrategy.choiceLine(chosen), !output.json { Session.say(world, line) }
            let prepared = try DistributedRun.prepare(
                problem.source, strategy: chosen.name, mask: try problem.mask(world), compute: compute,
                communicator: world, mesh: chosen.mesh, wholeKeyValues: true)
            if backward.backward { try BackwardRun.check(prepared, communicator: world) }
            DistributedRun.announce(prepared, communicator: world)
            let run = try DistributedRun.run(prepared, communicator: world)
            let shard = run.shard, shape = run.job.shape, segments = run.segments
            let (k, v) = try world.together { try InputFiles.loadWhole(problem.source, shape: shape, tokens: shard.tokens) }
            let rows = Array(0 ..< run.result.rows), positions = Verification.positions(segments)

            let single = Verification.singleRank(shard, segments: segments, k: k, v: v, job: run.job)
            let singleErrors = ResultErrors.compare(
                actualOutput: run.result.output, actualLSE: run.result.lse, actualRows: run.result.rows, rows: rows, positions: positions,
                expectedOutput: { Double(single.output[$0]) }, expectedLSE: { Double(single.lse[$0]) }, heads: shape.heads, headDim: shape.headDim)

            let small = Double(run.extent.count) * Double(shard.tokens) * Double(shape.heads * shape.headDim) <= Double(1 << 31)
            var referenceErrors = ResultErrors()
            if referenceRows > 0 || small {
                let checked = Verification.referenceRows(segments, sample: small ? nil : referenceRows)
                let reference = Verification.reference(shard, segments: segments, rows: checked, k: k, v: v, job: run.job)
                referenceErrors = ResultErrors.compare(
                    actualOutput: run.result.output, actualLSE: run.result.lse, actualRows: run.result.rows, rows: checked,
                    positions: checked.map { positions[$0] }, expectedOutput: { reference.output[$0] }, expectedLSE: { reference.lse[$0] },
                    heads: shape.heads, headDim: shape.headDim)
            }

            let all = try world.allgatherv(singleErrors.packed + referenceErrors.packed)
            let perRank = all.map { (single: ResultErrors(packed: Array($0[0 ..< 9])), reference: ResultErrors(packed: Array($0[9 ..< 18]))) }
            let report = VerifyReport(perRank: perRank, tolerance: tolerance, referenceTolerance: referenceTolerance)

            var gradientReport: GradientReport?
            var backwardSeconds = 0.0
            if backward.backward {
                let backwardRun = try BackwardRun.execute(after: run, outputGrad: backward.source(problem), communicator: world)
                backwardSeconds = backwardRun.seconds
                let check = try GradientCheck(
                    shard, queryRows: segments, gradients: backwardRun.gradients, source: problem.source,
                    outputGrad: backward.source(problem), job: run.job,
                    sample: referenceRows == 0 ? 0 : (small ? nil : referenceRows), communicator: world)
                let all = try world.allgatherv(check.single.packed + check.reference.packed)
                let n = GradientErrors.packedCount
                gradientReport = GradientReport(
                    perRank: all.map {
                        (
                            single: GradientErrors(packed: Array($0[0 ..< n])),
                            reference: GradientErrors(packed: Array($0[n ..< 2 * n]))
                        )
                    },
                    tolerance: tolerance, referenceTolerance: referenceTolerance)
            }
            let passed = report.passed && (gradientReport?.passed ?? true)
            if output.json {
                var object = report.json(strategy: chosen.name, run: run, ranks: world.size, passed: passed)
                object.backward = gradientReport?.json(seconds: backwardSeconds)
                Session.say(world, JSONReport.text(object))
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

/// Errors of every rank, judged against the tolerances.
struct VerifyReport {
    let perRank: [(single: ResultErrors, reference: ResultErrors)]
    let tolerance: Double
    let referenceTolerance: Double

    func total(_ pick: ((single: ResultErrors, reference: ResultErrors)) -> ResultErrors) -> (errors: ResultErrors, rank: Int) {
        var total = ResultErrors(), worstRank = 0
        for (r, entry) in perRank.enumerated() {
            let e = pick(entry)
            if e.output.maxAbs > total.output.maxAbs || r == 0 { worstRank = r }
            total.output.absorb(e.output)
            total.lse.absorb(e.lse)
            total.rows += e.rows
        }
        return (total, worstRank)
    }

    var single: (errors: ResultErrors, rank: Int) { total { $0.single } }
    var reference: (errors: ResultErrors, rank: Int) { total { $0.reference } }

    static func within(_ e: ResultErrors, _ tolerance: Double) -> Bool {
        e.output.maxAbs <= tolerance && e.lse.maxRel <= tolerance
    }

    var passed: Bool { Self.within(single.errors, tolerance) && (reference.errors.rows == 0 || Self.within(reference.errors, referenceTolerance)) }

    func table() -> String {
        var lines = ["rank   rows | single-rank: O abs    O rel     lse abs   lse rel | float64: rows  O abs     O rel     lse abs   lse rel"]
        for (r, e) in perRank.enumerated() {
            let s = e.single, f = e.reference
            lines.append(
                String(
                    format: "%4d %6d |              %@  %@  %@  %@ |        %5d  %@  %@  %@  %@", r, s.rows,
                    cell(s.output.maxAbs), cell(s.output.maxRel), cell(s.lse.maxAbs), cell(s.lse.maxRel), f.rows,
                    cell(f.output.maxAbs), cell(f.output.maxRel), cell(f.lse.maxAbs), cell(f.lse.maxRel)))
        }
        lines.append(sentence("single-rank result", single, tolerance))
        if reference.errors.rows > 0 {
            lines.append(sentence("float64 reference (\(reference.errors.rows) rows)", reference, referenceTolerance))
        } else {
            lines.append("float64 reference: not checked (--reference-rows 0)")
        }
        lines.append(passed ? "PASS" : "FAIL")
        return lines.joined(separator: "\n")
    }

    private func cell(_ x: Double) -> String { Format.sci(x).padding(toLength: 8, withPad: " ", startingAt: 0) }

    private func sentence(_ what: String, _ t: (errors: ResultErrors, rank: Int), _ tolerance: Double) -> String {
        let o = t.errors.output, l = t.errors.lse
        let verdict = Self.within(t.errors, tolerance) ? "within" : "ABOVE"
        return "against the \(what): O max abs error \(Format.sci(o.maxAbs)) (rank \(t.rank), token \(o.token), head \(o.head)), "
            + "LSE max rel error \(Format.sci(l.maxRel)) (token \(l.token), head \(l.head)); \(verdict) tolerance \(Format.sci(tolerance))"
    }

    /// The report as `--json` prints it; `passed` covers the backward too when it ran.
    func json(strategy: StrategyName, run: DistributedRun, ranks: Int, passed: Bool) -> VerifyJSON {
        let shape = run.job.shape
        return VerifyJSON(
            strategy: strategy.rawValue, ranks: ranks, tokens: run.shard.tokens, heads: shape.heads, kvHeads: shape.kvHeads, headDim: shape.headDim,
            mask: run.job.mask.description, seconds: run.seconds, passed: passed, tolerance: tolerance, referenceTolerance: referenceTolerance,
            singleRank: .init(single.errors), worstRank: single.rank, reference: .init(reference.errors),
            perRank: perRank.map { .init(singleRank: .init($0.single), reference: .init($0.reference)) })
    }
}

/// verify --backward's errors of every rank, judged against the tolerances (max abs error).
struct GradientReport {
    let perRank: [(single: GradientErrors, reference: GradientErrors)]
    let tolerance: Double
    let referenceTolerance: Double

    func total(_ pick: ((single: GradientErrors, reference: GradientErrors)) -> GradientErrors) -> (errors: GradientErrors, rank: Int) {
        var total = GradientErrors(), worstRank = 0, worst = -1.0
        for (r, entry) in perRank.enumerated() {
            let e = pick(entry)
            if !(e.maxAbs <= worst) { (worst, worstRank) = (e.maxAbs, r) }
            total.dq.absorb(e.dq)
            total.dk.absorb(e.dk)
            total.dv.absorb(e.dv)
            total.queryRows += e.queryRows
            total.keyRows += e.keyRows
        }
        return (total, worstRank)
    }

    var single: (errors: GradientErrors, rank: Int) { total { $0.single } }
    var reference: (errors: GradientErrors, rank: Int) { total { $0.reference } }
    var referenceChecked: Bool { reference.errors.queryRows + reference.errors.keyRows > 0 }

    var passed: Bool {
        single.errors.maxAbs <= tolerance && (!referenceChecked || reference.errors.maxAbs <= referenceTolerance)
    }

    func table() -> String {
        func cell(_ x: Double) -> String { Format.sci(x).padding(toLength: 8, withPad: " ", startingAt: 0) }
        var lines = ["rank  q rows  k rows | single-rank: dQ abs   dK abs    dV abs   | float64: q rows  k rows  dQ abs    dK abs    dV abs"]
        for (r, e) in perRank.enumerated() {
            let s = e.single, f = e.reference
            lines.append(
                String(
                    format: "%4d  %6d  %6d |              %@  %@  %@ |          %6d  %6d  %@  %@  %@", r, s.queryRows, s.keyRows,
                    cell(s.dq.maxAbs), cell(s.dk.maxAbs), cell(s.dv.maxAbs), f.queryRows, f.keyRows,
                    cell(f.dq.maxAbs), cell(f.dk.maxAbs), cell(f.dv.maxAbs)))
        }
        func sentence(_ what: String, _ t: (errors: GradientErrors, rank: Int), _ tolerance: Double) -> String {
            let e = t.errors
            let worst = [("dQ", e.dq), ("dK", e.dk), ("dV", e.dv)].max { !($0.1.maxAbs >= $1.1.maxAbs) }!
            let verdict = e.maxAbs <= tolerance ? "within" : "ABOVE"
            return "gradients against the \(what): max abs error dQ \(Format.sci(e.dq.maxAbs)), dK \(Format.sci(e.dk.maxAbs)), dV \(Format.sci(e.dv.maxAbs)) "
                + "(largest: \(worst.0), rank \(t.rank), token \(worst.1.token), head \(worst.1.head)); \(verdict) tolerance \(Format.sci(tolerance))"
        }
        lines.append(sentence("single-rank backward", single, tolerance))
        lines.append(
            referenceChecked
                ? sentence("float64 reference backward", reference, referenceTolerance)
                : "float64 reference backward: not checked (--reference-rows 0)")
        return lines.joined(separator: "\n")
    }

    func json(seconds: Double) -> GradientJSON {
        GradientJSON(
            seconds: seconds, passed: passed, singleRank: .init(single.errors), worstRank: single.rank, reference: .init(reference.errors),
            perRank: perRank.map { .init(singleRank: .init($0.single), reference: .init($0.reference)) })
    }
}
