import ArgumentParser
import AttentionCore
import AttentionJobs
import BlasRuntime
import Foundation
import Profiling
import SequenceParallel

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Compute attention and write O and LSE; print time, GFLOP/s and peak memory per rank.",
        discussion: "Each rank reads only its own rows of --q/--k/--v and writes only its own rows of --out/--lse."
    )

    @OptionGroup var problem: ProblemOptions
    @OptionGroup var compute: ComputeOptions
    @Option(parsing: .unconditional, help: "Write O here as .npy, [tokens, heads, headDim].")
    var out: String?
    @Option(parsing: .unconditional, help: "Write LSE here as .npy, [heads, tokens] (natural log; -inf where a query sees no key).")
    var lse: String?
    @OptionGroup var backward: BackwardOptions
    @Option(parsing: .unconditional, help: "With --backward: write dQ here as .npy, [tokens, heads, headDim].")
    var dq: String?
    @Option(parsing: .unconditional, help: "With --backward: write dK here as .npy, [tokens, kvHeads, headDim].")
    var dk: String?
    @Option(parsing: .unconditional, help: "With --backward: write dV here as .npy, [tokens, kvHeads, headDim].")
    var dv: String?
    @Option(parsing: .unconditional, help: "Profile the run: write a Chrome trace here, an SVG timeline beside it (.svg), and print the per-rank profile table.")
    var profile: String?
    @Option(
        name: .customLong("save-inputs"), parsing: .unconditional,
        help: "Also write the synthetic Q, K and V to this folder as Q.npy, K.npy and V.npy (for verify --q --k --v, or NumPy).")
    var saveInputs: String?
    @OptionGroup var output: OutputOptions

    func validate() throws {
        try compute.refuseForeignOptions(compute.strategy.named.map { [$0] })
        if let saveInputs {
            guard problem.q == nil else { throw ValidationError("--save-inputs writes the synthetic inputs; with --q/--k/--v the inputs are already files.") }
            for path in SavedInputs.paths(saveInputs) { try OutputCheck.writable(path, option: "--save-inputs") }
        }
        if !backward.backward, let option = [("--dq", dq), ("--dk", dk), ("--dv", dv)].first(where: { $0.1 != nil })?.0 {
            throw ValidationError("\(option) is a gradient: give --backward to compute it.")
        }
        for (option, path) in [("--dq", dq), ("--dk", dk), ("--dv", dv)] { try OutputCheck.writable(path, option: option) }
        try OutputCheck.writable(out, option: "--out")
        try OutputCheck.writable(lse, option: "--lse")
        try OutputCheck.writable(profile, option: "--profile")
        try OutputCheck.writable(profile.map(ProfileReport.svgPath), option: "--profile (its SVG timeline)")
    }

    func run() throws {
        try Self.execute(
            problem: problem, compute: compute, out: out, lse: lse, profile: profile, output: output, saveInputs: saveInputs,
            backward: backward, gradientPaths: (dq, dk, dv))
    }

    /// run's work, shared with `seqpar profile`.
    static func execute(
        problem: ProblemOptions, compute: ComputeOptions, out: String?, lse: String?, profile: String?,
        output: OutputOptions, traceOption: String = "--profile", saveInputs: String? = nil,
        backward: BackwardOptions = BackwardOptions(), gradientPaths: (dq: String?, dk: String?, dv: String?) = (nil, nil, nil)
    ) throws {
        output.setProgress()
        try Session.run(timeout: compute.timeout) { world in
            // Before anything else: no output may overwrite an input or another output, or be a
            // FIFO or device, and each must be writable (OutputFiles.swift).
            let named = { (option: String, path: String?) in path.map { (option: option, path: $0) } }
            let files = RunJob.Files(
                output: named("--out", out), lse: named("--lse", lse), dq: named("--dq", gradientPaths.dq), dk: named("--dk", gradientPaths.dk),
                dv: named("--dv", gradientPaths.dv))
            let traces = profile.map { [(option: traceOption, path: $0), (option: "\(traceOption)'s timeline", path: ProfileReport.svgPath($0))] } ?? []
            let saved = saveInputs.map { SavedInputs.paths($0).map { (option: "--save-inputs", path: $0) } } ?? []
            try world.together { try OutputPaths.check(outputs: files.named + traces + saved, inputs: problem.inputFiles + backward.inputFiles) }
            if let saveInputs, case let .synthetic(seed, tokens, shape) = problem.source.origin {
                try SavedInputs.write(
                    saveInputs, seed: seed, tokens: tokens, shape: shape, elementType: try problem.source.elementType(), communicator: world)
                if !output.json { Session.say(world, "wrote the inputs to \(SavedInputs.paths(saveInputs).joined(separator: ", "))") }
            }
            let chosen = try AutoStrategy.resolve(problem.configuration, compute.configuration, communicator: world)
            if let line = AutoStrategy.choiceLine(chosen), !output.json { Session.say(world, line) }
            let prepared = try DistributedRun.prepare(
                problem.source, strategy: chosen.name, mask: try problem.mask(world), compute: compute.configuration,
                communicator: world, variant: chosen.variant)
            let outcome = try RunJob.execute(
                prepared, files: files, outputGrad: backward.backward ? backward.source(problem) : nil, trace: profile, communicator: world)
            let (run, summary, figures) = (outcome.run, outcome.profile, outcome.figures)
            if output.json {
                let profileFigures = summary.flatMap { summary in profile.map { ProfileFigures(summary, trace: $0, svg: ProfileReport.svgPath($0)) } }
                Session.say(world, JSONReport.text(figures.report(ranks: world.size, threads: compute.threads, profile: profileFigures)))
            } else {
                Session.say(world, figures.text(ranks: world.size, threads: compute.threads))
                if let layout = run.documentLayout {
                    Session.say(
                        world,
                        "\(run.job.mask.documents != nil ? "documents" : "rows") laid out as \(layout.name): predicted kernel work per rank max/mean \(String(format: "%.3f", layout.imbalance))"
                    )
                }
                if let out { Session.say(world, "wrote O to \(out)") }
                if let lse { Session.say(world, "wrote LSE to \(lse)") }
                for (what, path) in [("dQ", gradientPaths.dq), ("dK", gradientPaths.dk), ("dV", gradientPaths.dv)] {
                    if let path { Session.say(world, "wrote \(what) to \(path)") }
                }
                if let summary, let profile {
                    Session.say(world, summary.table())
                    Session.say(world, "wrote the trace to \(profile) (open in https://ui.perfetto.dev or chrome://tracing) and the timeline to \(ProfileReport.svgPath(profile))")
                }
            }
        }
    }
}

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract:
            "seqpar's version and build target, MPI library, world size, and per rank: host, CPU, OpenBLAS core and why, BLAS threads, measured sgemm GFLOP/s, bf16/f16 path.",
        discussion: """
            All ranks measure sgemm at the same time, as they would compute: ranks that share cores show it.
            The OpenBLAS core is the set of kernels OpenBLAS runs. When the library picked kernels below what
            the CPU offers (an OpenBLAS older than the CPU), seqpar sets OPENBLAS_CORETYPE and starts again;
            a user's own OPENBLAS_CORETYPE wins unless SEQPAR_BLAS_CORE=auto (SEQPAR_BLAS_CORE=keep: never switch).
            """
    )

    @Option(help: "Threads per rank for the sgemm measurement (as run --threads).")
    var threads: Int = 1
    @Option(name: .customLong("sgemm-size"), help: "Matrix size n of the n x n x n sgemm.")
    var sgemmSize: Int = 1024
    @OptionGroup var output: OutputOptions

    func run() throws {
        try Session.run { world in
            let hosts = try world.allgather(MPIRuntime.processorName())
            let blasThreads = try world.allgather(Int32(BlasPeak.blasThreads))
            let cpus = try world.allgather((BuildInfo.cpuName.map { "\($0), " } ?? "") + CPUFeatures.current.summary)
            let cores = try world.allgather(BlasCore.current)
            let reasons = try world.allgather(BlasCore.reason)
            let reducedPrecision = try world.allgather(CPUFeatures.reducedPrecisionPath)
            try world.barrier()
            let peaks = try world.allgather(BlasPeak.measure(n: sgemmSize, threads: threads))
            if output.json {
                let ranks = (0 ..< world.size).map {
                    InfoJSON.Rank(
                        rank: $0, host: hosts[$0], cpu: cpus[$0], openblasCore: cores[$0], openblasCoreReason: reasons[$0],
                        blasThreads: Int(blasThreads[$0]), sgemmGflops: peaks[$0], bf16Path: reducedPrecision[$0])
                }
                Session.say(
                    world,
                    JSONReport.text(
                        InfoJSON(
                            seqparVersion: BuildInfo.version, commit: BuildInfo.commit, builtFor: BuildInfo.builtFor, mpiLibrary: MPIRuntime.libraryVersion(),
                            worldSize: world.size, threads: threads, openblas: BlasCore.configuration, ranks: ranks)))
                return
            }
            var lines = [BuildInfo.line] + (BuildInfo.belowCPU.map { [$0] } ?? [])
            lines += [
                "MPI library: \(MPIRuntime.libraryVersion())", "OpenBLAS: \(BlasCore.configuration)", "world size: \(world.size)",
                "rank  host                  blas threads  sgemm GFLOP/s (n=\(sgemmSize), \(threads) thread(s))  OpenBLAS core",
            ]
            for r in 0 ..< world.size {
                lines.append(
                    String(
                        format: "%4d  %@  %12d  %8.1f                           %@", r, hosts[r].padding(toLength: 20, withPad: " ", startingAt: 0),
                        blasThreads[r], peaks[r], cores[r]))
            }
            for r in 0 ..< world.size {
                lines.append("rank \(r): CPU \(cpus[r]); OpenBLAS core \(reasons[r]); \(reducedPrecision[r])")
            }
            Session.say(world, lines.joined(separator: "\n"))
        }
    }
}
