// The backward pass's options: --backward and --do (the timed backward itself is AttentionJobs'
// BackwardRun).

import ArgumentParser
import SequenceParallel

struct BackwardOptions: ParsableArguments {
    @Flag(help: "After the forward, run the backward pass: dQ, dK and dV for the output gradient dO (\(StrategyRegistry.names(StrategyRegistry.withBackward))).")
    var backward = false
    @Option(
        name: .customLong("do"), parsing: .unconditional,
        help: ArgumentHelp(
            "dO as .npy, [tokens, heads, headDim], f32, f16 or (with --dtype bf16) bf16, rounded to the job's type "
                + "(with --backward; default: synthetic, from --seed)."))
    var outputGrad: String?

    func validate() throws {
        try OutputCheck.notAnOption(outputGrad, option: "--do")
        if outputGrad != nil, !backward { throw ValidationError("--do is the backward pass's input: give --backward with it.") }
    }

    /// Where dO comes from, for inputs from `problem`.
    func source(_ problem: ProblemOptions) -> OutputGradientSource {
        outputGrad.map(OutputGradientSource.file) ?? .synthetic(seed: problem.seed)
    }

    var inputFiles: [(option: String, path: String)] { outputGrad.map { [(option: "--do", path: $0)] } ?? [] }
}
