// --strategy auto and bench's predictions: the cost model (Planning) fed with probe figures,
// loaded from a probe's JSON or measured now on every rank (a few seconds: the probe's sizes up to
// 16 MiB and one sgemm measurement). Every rank computes the same predictions from the same
// figures (rank 0's, broadcast), so every rank picks the same strategy.

import AttentionCore
import FileFormats
import Foundation
import Planning
import Profiling
import SequenceParallel

/// The strategy the cost model predicts fastest, and the predictions behind it.
public enum AutoStrategy {
    /// The probe's figures, on every rank: from `compute.probe` (read by rank 0 and shared), else
    /// measured now (a few seconds). Warns on stderr (rank 0) when the file was recorded on other hosts.
    /// - Throws: `CollectiveFailure` on every rank when the file cannot be read or decoded, or was
    ///   recorded at another rank count (`AutoStrategyError`).
    public static func figures(_ compute: ComputeConfiguration, communicator: Communicator) throws -> ProbeFigures {
        guard let path = compute.probe else { return try Probe.measure(communicator, threads: compute.threads) }
        let text = try communicator.together {
            guard communicator.rank == 0 else { return "" }
            guard let data = FileManager.default.contents(atPath: path) else {
                let reason = access(path, F_OK) == 0 ? "it cannot be read" : "there is no such file"
                throw AutoStrategyError(description: "--probe \(path): \(reason); expected the JSON that seqpar probe --out FILE writes")
            }
            return String(decoding: data, as: UTF8.self)
        }
        let shared = try communicator.allgather(text)[0]
        let figures = try communicator.together {
            do { return try JSONDecoder().decode(ProbeFigures.self, from: Data(shared.utf8)) } catch let error as DecodingError {
                throw AutoStrategyError(
                    description: "--probe \(path) is not a probe's figures (\(Self.describe(error))); expected the JSON that seqpar probe --out FILE writes")
            }
        }
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

    /// The problem as the cost model sees it: the shapes from the synthetic inputs or the files' headers.
    /// - Throws: `AutoStrategyError` for files that are not 3-dimensional; the shape's own checks.
    public static func problem(_ source: InputSource, mask: AttentionMask, ranks: Int) throws -> AttentionProblem {
        var problem = try shapes(source, mask: mask, ranks: ranks)
        let type = try source.elementType()
        problem.elementBytes = type.byteSize
        problem.bf16 = type == .bf16
        return problem
    }

    private static func shapes(_ source: InputSource, mask: AttentionMask, ranks: Int) throws -> AttentionProblem {
        switch source.origin {
        case let .synthetic(_, tokens, shape):
            return AttentionProblem(tokens: tokens, heads: shape.heads, kvHeads: shape.kvHeads, headDim: shape.headDim, mask: mask, ranks: ranks)
        case let .files(q, k, _, _):
            let qs = try source.open(q).header.shape, ks = try source.open(k).header.shape
            guard qs.count == 3, ks.count == 3 else { throw AutoStrategyError(description: "--strategy auto needs 3-dimensional Q and K files") }
            // The same checks as loading makes (positive, heads a multiple of kv heads), before the model divides by them.
            let shape = try AttentionShape(heads: qs[1], kvHeads: ks[1], headDim: qs[2])
            return AttentionProblem(tokens: ks[0], heads: shape.heads, kvHeads: shape.kvHeads, headDim: shape.headDim, mask: mask, ranks: ranks)
        }
    }

    /// Every modelled strategy's prediction for `problem` on this communicator, fastest first (the
    /// same on every rank).
    /// - Throws: what `figures` throws; `CollectiveFailure` when the mask or shapes cannot be read.
    public static func predictions(_ problem: ProblemConfiguration, _ compute: ComputeConfiguration, communicator: Communicator) throws -> [Prediction] {
        let figures = try figures(compute, communicator: communicator)
        let attention = try communicator.together { try Self.problem(problem.source, mask: problem.mask(), ranks: communicator.size) }
        return StrategyRegistry.predictions(CostModel(figures: figures, kernelEfficiency: compute.kernelEfficiency), attention)
    }

    /// The strategy to run: `compute.strategy`, or for auto (nil) the fastest prediction with its
    /// mesh shape; every rank picks the same.
    /// - Throws: what `predictions` throws; `AutoStrategyError` when no strategy is modelled for the problem.
    public static func resolve(_ problem: ProblemConfiguration, _ compute: ComputeConfiguration, communicator: Communicator) throws -> ResolvedStrategy {
        if let name = compute.strategy { return ResolvedStrategy(name: name, variant: nil, predictions: []) }
        let predictions = try predictions(problem, compute, communicator: communicator)
        guard let best = predictions.first, let name = StrategyName(rawValue: best.strategy) else {
            throw AutoStrategyError(description: "--strategy auto: the cost model has no prediction for this problem on \(communicator.size) rank(s); name a strategy")
        }
        return ResolvedStrategy(name: name, variant: best.variant, predictions: predictions)
    }

    /// One line saying what auto picked and why; nil for a named strategy.
    public static func choiceLine(_ resolved: ResolvedStrategy) -> String? {
        guard let best = resolved.predictions.first else { return nil }
        let rest = resolved.predictions.dropFirst().prefix(3).map { "\($0.label) \(String(format: "%.4f", $0.seconds)) s" }.joined(separator: ", ")
        return "strategy auto: \(best.label) (predicted \(String(format: "%.4f", best.seconds)) s; next: \(rest.isEmpty ? "none" : rest))"
    }
}

/// The strategy a job runs, as `AutoStrategy.resolve` settled it.
public struct ResolvedStrategy {
    public let name: StrategyName
    /// The variant auto picked (mesh's "2x2"); nil otherwise (the strategy's own choice).
    public let variant: String?
    /// The predictions auto chose from, fastest first; empty for a named strategy.
    public let predictions: [Prediction]
}

extension AutoStrategy {
    /// A decoding error in a sentence: where in the file, and what was wrong.
    static func describe(_ error: DecodingError) -> String {
        let place = { (context: DecodingError.Context) in
            context.codingPath.isEmpty ? "" : " at \(context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: "."))"
        }
        switch error {
        case .keyNotFound(let key, let context): return "no \"\(key.stringValue)\"\(place(context))"
        case .valueNotFound(_, let context): return "a value is missing\(place(context))"
        case .typeMismatch(let type, let context): return "expected \(type)\(place(context))"
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty ? "not valid JSON" : "\(context.debugDescription)\(place(context))"
        @unknown default: return "\(error)"
        }
    }
}

/// Why `--strategy auto` or a probe file cannot be used; the description says what to do instead.
public struct AutoStrategyError: Error, CustomStringConvertible {
    public let description: String
}
