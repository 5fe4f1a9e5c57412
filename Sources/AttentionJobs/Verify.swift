// verify's work: after a distributed run, each rank recomputes its own rows exactly as a one-rank
// run does (the same kernel over the whole sequence) and, in float64, the plain reference, and
// every rank's errors are gathered and judged against the tolerances. With a backward, the same
// for dQ, dK and dV against a one-rank backward and the float64 reference backward.

import AttentionCore
import Foundation
import SequenceParallel

/// verify as a library call: a run checked rank by rank against one rank and float64.
public enum VerifyJob {
    /// What verify judges against.
    public struct Tolerances: Sendable {
        /// On O's max abs and LSE's max rel error against the single-rank result (and on the
        /// gradients' max abs error against the single-rank backward).
        public var tolerance: Double
        /// The same against the float64 reference.
        public var referenceTolerance: Double
        /// Rows per rank checked against float64 when the problem is large
        /// (tokens² x heads x headDim > 2^31); every row when small; 0 turns the float64 check off.
        public var referenceRows: Int

        public init(tolerance: Double = 1e-5, referenceTolerance: Double = 1e-4, referenceRows: Int = 64) {
            self.tolerance = tolerance
            self.referenceTolerance = referenceTolerance
            self.referenceRows = referenceRows
        }

        /// The defaults for a kernel's products. float32: 1e-5 against one rank, 1e-4 against
        /// float64. bf16 (P rounded to bf16 for P·V, 2^-9 relative each, with float32 sums):
        /// 4e-3 and 1e-2, about 8 and 20 bf16 roundings of an O of magnitude 1; LSE (the log of
        /// the rounded P's float32 sum) meets them by far.
        public static func defaults(for products: KernelProducts) -> Tolerances {
            products == .bf16 ? Tolerances(tolerance: 4e-3, referenceTolerance: 1e-2) : Tolerances()
        }
    }

    /// A checked run: the run itself and every rank's errors (the same on every rank).
    public struct Outcome {
        public let run: DistributedRun
        public let forward: VerifyReport
        /// With a backward: its errors and its time.
        public let backward: GradientReport?
        public let backwardSeconds: Double

        /// The forward passed, and the backward too when it ran.
        public var passed: Bool { forward.passed && (backward?.passed ?? true) }

        /// `verify --json`'s object.
        public func json(ranks: Int) -> VerifyJSON {
            var object = forward.json(strategy: run.name, run: run, ranks: ranks, passed: passed)
            object.backward = backward?.json(seconds: backwardSeconds)
            return object
        }
    }

    /// Runs `prepared` once (prepared with `wholeKeyValues: true`), then checks every rank's rows;
    /// with `outputGrad`, also runs the backward for that dO and checks the gradients. Called by
    /// every rank alike; every rank gets the whole outcome.
    /// - Throws: what `DistributedRun.run` and `BackwardRun.execute` throw, and
    ///   `CollectiveFailure` on every rank, before any work, when `outputGrad` is given to a
    ///   strategy with no backward, or when the whole K and V cannot be loaded. A failed check
    ///   is no error: see `Outcome.passed`.
    public static func check(
        _ prepared: DistributedRun.Prepared, source: InputSource, tolerances: Tolerances, outputGrad: OutputGradientSource?,
        communicator world: Communicator
    ) throws -> Outcome {
        let (tolerance, referenceTolerance, referenceRows) = (tolerances.tolerance, tolerances.referenceTolerance, tolerances.referenceRows)
        if outputGrad != nil { try BackwardRun.check(prepared, communicator: world) }
        let run = try DistributedRun.run(prepared, communicator: world)
        let shard = run.shard, shape = run.job.shape, segments = run.segments
        let (k, v) = try world.together { try InputFiles.loadWhole(source, shape: shape, tokens: shard.tokens) }
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
        if let outputGrad {
            let backwardRun = try BackwardRun.execute(after: run, outputGrad: outputGrad, communicator: world)
            backwardSeconds = backwardRun.seconds
            let check = try GradientCheck(
                shard, queryRows: segments, gradients: backwardRun.gradients, source: source,
                outputGrad: outputGrad, job: run.job,
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
        return Outcome(run: run, forward: report, backward: gradientReport, backwardSeconds: backwardSeconds)
    }
}

/// Errors of every rank, judged against the tolerances.
public struct VerifyReport {
    /// Each rank's errors against the single-rank result and against the float64 reference.
    public let perRank: [(single: ResultErrors, reference: ResultErrors)]
    public let tolerance: Double
    public let referenceTolerance: Double

    /// The errors of all ranks together and the rank with the largest O error.
    public func total(_ pick: ((single: ResultErrors, reference: ResultErrors)) -> ResultErrors) -> (errors: ResultErrors, rank: Int) {
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

    public var single: (errors: ResultErrors, rank: Int) { total { $0.single } }
    public var reference: (errors: ResultErrors, rank: Int) { total { $0.reference } }

    /// O's max abs error and LSE's max rel error both within `tolerance`.
    public static func within(_ e: ResultErrors, _ tolerance: Double) -> Bool {
        e.output.maxAbs <= tolerance && e.lse.maxRel <= tolerance
    }

    /// Within the tolerance against the single-rank result, and against float64 when it was checked.
    public var passed: Bool { Self.within(single.errors, tolerance) && (reference.errors.rows == 0 || Self.within(reference.errors, referenceTolerance)) }

    /// The per-rank table, the two verdict sentences and PASS or FAIL, as verify prints them.
    public func table() -> String {
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
    public func json(strategy: StrategyName, run: DistributedRun, ranks: Int, passed: Bool) -> VerifyJSON {
        let shape = run.job.shape
        return VerifyJSON(
            strategy: strategy.rawValue, ranks: ranks, tokens: run.shard.tokens, heads: shape.heads, kvHeads: shape.kvHeads, headDim: shape.headDim,
            mask: run.job.mask.description, seconds: run.seconds, passed: passed, tolerance: tolerance, referenceTolerance: referenceTolerance,
            singleRank: .init(single.errors), worstRank: single.rank, reference: .init(reference.errors),
            perRank: perRank.map { .init(singleRank: .init($0.single), reference: .init($0.reference)) })
    }
}

/// verify --backward's errors of every rank, judged against the tolerances (max abs error).
public struct GradientReport {
    /// Each rank's gradient errors against the single-rank backward and the float64 reference.
    public let perRank: [(single: GradientErrors, reference: GradientErrors)]
    public let tolerance: Double
    public let referenceTolerance: Double

    /// The errors of all ranks together and the rank with the largest error.
    public func total(_ pick: ((single: GradientErrors, reference: GradientErrors)) -> GradientErrors) -> (errors: GradientErrors, rank: Int) {
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

    public var single: (errors: GradientErrors, rank: Int) { total { $0.single } }
    public var reference: (errors: GradientErrors, rank: Int) { total { $0.reference } }
    /// Whether any row was checked against the float64 reference backward.
    public var referenceChecked: Bool { reference.errors.queryRows + reference.errors.keyRows > 0 }

    /// The largest gradient error within `tolerance`, and within `referenceTolerance` against float64 when checked.
    public var passed: Bool {
        single.errors.maxAbs <= tolerance && (!referenceChecked || reference.errors.maxAbs <= referenceTolerance)
    }

    /// The per-rank table and the two verdict sentences, as verify --backward prints them.
    public func table() -> String {
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

    /// The backward section of `verify --backward --json`.
    public func json(seconds: Double) -> GradientJSON {
        GradientJSON(
            seconds: seconds, passed: passed, singleRank: .init(single.errors), worstRank: single.rank, reference: .init(reference.errors),
            perRank: perRank.map { .init(singleRank: .init($0.single), reference: .init($0.reference)) })
    }
}
