// --strategy auto and bench's predictions: the cost model (Profiling) fed with probe figures,
// loaded from --probe or measured now on every rank (a few seconds: the probe's sizes up to
// 16 MiB and one sgemm measurement). Every rank computes the same predictions from the same
// figures (rank 0's, broadcast), so every rank picks the same strategy.

import AttentionCore
import Foundation
import Planning
import Profiling
import SequenceParallel

enum AutoStrategy {
    /// The probe's figures: from --probe (read by rank 0 and shared), else measured now.
    static func figures(_ compute: ComputeOptions, communicator: Communicator) throws -> ProbeFigures {
        guard let path = compute.probe else { return try Probe.measure(communicator, threads: compute.threads) }
        let text = try communicator.together { communicator.rank == 0 ? String(decoding: try Data(contentsOf: URL(fileURLWithPath: path)), as: UTF8.self) : "" }
        let shared = try communicator.allgather(text)[0]
        let figures = try communicator.together { try JSONDecoder().decode(ProbeFigures.self, from: Data(shared.utf8)) }
        // Ring, all-to-all and sgemm figures all change with the rank count: another count's would mislead.
        try communicator.together {
            guard figures.ranks == communicator.size else {
                throw AutoStrategyError(
                    description: "\(path) was recorded at \(figures.ranks) rank(s) and this run has \(communicator.size); "
                        + "its figures would not hold here. Probe at \(communicator.size) ranks (seqpar probe --out FILE), or leave out --probe to probe now")
            }
        }
        let hosts = try communicator.allgather(MPIRuntime.processorName())
        if let recorded = figures.hosts, Set(recorded) != Set(hosts), communicator.rank == 0 {
            FileHandle.standardError.write(
                Data(
                    "seqpar: warning: \(path) was recorded on \(Set(recorded).sorted().joined(separator: ", ")) and this run is on \(Set(hosts).sorted().joined(separator: ", ")); predictions assume the recorded machines\n"
                        .utf8))
        }
        return figures
    }

    static func problem(_ source: InputSource, mask: AttentionMask, ranks: Int) throws -> AttentionProblem {
        switch source {
        case let .synthetic(_, tokens, shape):
            return AttentionProblem(tokens: tokens, heads: shape.heads, kvHeads: shape.kvHeads, headDim: shape.headDim, mask: mask, ranks: ranks)
        case let .files(q, k, _, _):
            let qs = try NpyFile.open(reading: q).header.shape, ks = try NpyFile.open(reading: k).header.shape
            guard qs.count == 3, ks.count == 3 else { throw AutoStrategyError(description: "--strategy auto needs 3-dimensional Q and K files") }
            // The same checks as loading makes (positive, heads a multiple of kv heads), before the model divides by them.
            let shape = try AttentionShape(heads: qs[1], kvHeads: ks[1], headDim: qs[2])
            return AttentionProblem(tokens: ks[0], heads: shape.heads, kvHeads: shape.kvHeads, headDim: shape.headDim, mask: mask, ranks: ranks)
        }
    }

    static func predictions(_ problem: ProblemOptions, _ compute: ComputeOptions, communicator: Communicator) throws -> [Prediction] {
        let figures = try figures(compute, communicator: communicator)
        let attention = try communicator.together { try Self.problem(problem.source, mask: problem.mask(), ranks: communicator.size) }
        return StrategyRegistry.predictions(CostModel(figures: figures, kernelEfficiency: compute.kernelEfficiency), attention)
    }

    /// The strategy to run: the named one, or the fastest prediction (with its mesh shape).
    static func resolve(
        _ problem: ProblemOptions, _ compute: ComputeOptions, communicator: Communicator
    )
        throws -> (name: StrategyName, mesh: (headGroup: Int, ring: Int)?, predictions: [Prediction])
    {
        if let name = compute.strategy.named { return (name, nil, []) }
        let predictions = try predictions(problem, compute, communicator: communicator)
        guard let best = predictions.first, let name = StrategyName(rawValue: best.strategy) else {
            throw AutoStrategyError(description: "--strategy auto: the cost model has no prediction for this problem on \(communicator.size) rank(s); name a strategy")
        }
        return (name, best.mesh, predictions)
    }

    /// One line saying what auto picked and why.
    static func choiceLine(_ resolved: (name: StrategyName, mesh: (headGroup: Int, ring: Int)?, predictions: [Prediction])) -> String? {
        guard let best = resolved.predictions.first else { return nil }
        let rest = resolved.predictions.dropFirst().prefix(3).map { "\($0.label) \(String(format: "%.4f", $0.seconds)) s" }.joined(separator: ", ")
        return "strategy auto: \(best.label) (predicted \(String(format: "%.4f", best.seconds)) s; next: \(rest.isEmpty ? "none" : rest))"
    }
}

struct AutoStrategyError: Error, CustomStringConvertible {
    let description: String
}
