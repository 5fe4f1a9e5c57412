// The problems the in-process suite runs with every strategy, and one run of a problem on a
// communicator: the strategy made and checked as the tool makes it, this rank's shard from the
// seed, the forward (and the backward, where the strategy has one) against the single-rank
// kernel over the whole sequence and against the float64 reference, every row. The shapes are
// the awkward ones: token counts no world size divides, a rank with no tokens, head dims 32 to
// 128, GQA and MQA, every mask.

import AttentionCore
import AttentionJobs
import SequenceParallel

struct StrategyCase: CustomStringConvertible, Sendable {
    let strategy: StrategyName
    let tokens: Int
    let heads: Int
    let kvHeads: Int
    let headDim: Int
    let mask: AttentionMask
    /// The strategy's own options for a world size (the defaults unless a case says otherwise).
    var options: @Sendable (_ ranks: Int) -> StrategyOptions = { _ in StrategyOptions() }
    var optionsLabel = ""

    var description: String {
        "\(strategy)\(optionsLabel) \(tokens) tokens x \(heads) heads (kv \(kvHeads)) x \(headDim), mask \(mask)"
    }

    /// Every case, in one order on every rank (each is a collective).
    static let all: [StrategyCase] = {
        let s2 = try! S2Pattern(block: 16, local: 2, stride: 3)
        let documents = try! DocumentBoundaries(lengths: [50, 0, 37, 116], tokens: 203)
        let wholeDocuments = try! DocumentBoundaries(lengths: [1, 90, 100], tokens: 191)
        return [
            StrategyCase(strategy: .ring, tokens: 203, heads: 6, kvHeads: 2, headDim: 64, mask: .causal),
            StrategyCase(strategy: .ring, tokens: 157, heads: 6, kvHeads: 3, headDim: 80, mask: .window(37)),
            StrategyCase(strategy: .ring, tokens: 2, heads: 4, kvHeads: 2, headDim: 32, mask: .causal),
            StrategyCase(strategy: .zigzag, tokens: 203, heads: 6, kvHeads: 1, headDim: 32, mask: .causal),
            StrategyCase(strategy: .zigzag, tokens: 190, heads: 6, kvHeads: 6, headDim: 128, mask: .none),
            StrategyCase(strategy: .zigzag, tokens: 203, heads: 6, kvHeads: 2, headDim: 64, mask: .documents(documents, within: .causal)),
            StrategyCase(strategy: .heads, tokens: 203, heads: 6, kvHeads: 2, headDim: 64, mask: .causal),
            StrategyCase(strategy: .heads, tokens: 101, heads: 4, kvHeads: 1, headDim: 96, mask: .none),
            StrategyCase(strategy: .mesh, tokens: 203, heads: 6, kvHeads: 2, headDim: 64, mask: .none),
            StrategyCase(strategy: .mesh, tokens: 191, heads: 6, kvHeads: 3, headDim: 32, mask: .documents(wholeDocuments, within: .none)),
            StrategyCase(strategy: .s2, tokens: 203, heads: 6, kvHeads: 2, headDim: 64, mask: .s2(s2)),
            StrategyCase(strategy: .star, tokens: 203, heads: 6, kvHeads: 2, headDim: 64, mask: .none),
            StrategyCase(strategy: .star, tokens: 157, heads: 4, kvHeads: 4, headDim: 128, mask: .causal),
            StrategyCase(
                strategy: .star, tokens: 203, heads: 6, kvHeads: 2, headDim: 48, mask: .causal,
                options: { _ in StrategyOptions(StarOptions(queries: 5, position: 40, everyRank: true)) }, optionsLabel: " (5 queries at 40, every rank)"),
            StrategyCase(
                strategy: .mesh, tokens: 203, heads: 6, kvHeads: 2, headDim: 64, mask: .causal,
                options: { StrategyOptions(MeshOptions(shape: MeshShape(headGroup: $0, ring: 1))) }, optionsLabel: " Px1 (heads only, zigzag layout)"),
        ]
    }()

    /// The largest errors of one case over every rank.
    struct Errors {
        /// O (max abs) and LSE (max rel) against the single-rank kernel, and against float64.
        var single = ResultErrors()
        var reference = ResultErrors()
        /// dQ, dK, dV (max abs); nil when the strategy has no backward.
        var gradients: (single: Double, reference: Double)?
        /// Output rows over every rank, and the rows the problem has.
        var outputRows = 0
        var expectedRows = 0
    }

    /// Runs this case on every rank of `communicator` (a collective).
    func run(on communicator: Communicator, seed: UInt64 = 23) throws -> Errors {
        let shape = try AttentionShape(heads: heads, kvHeads: kvHeads, headDim: headDim)
        let options = options(communicator.size)
        let strategy = strategy.descriptor.make(StrategyRequest(mask: mask, ranks: communicator.size, heads: heads, options: options))
        try communicator.together { try strategy.check(heads: heads, ranks: communicator.size) }
        let source = InputSource.synthetic(seed: seed, tokens: tokens, shape: shape)
        let shard = try communicator.together {
            try LocalShard.load(
                source, layout: strategy.inputLayout, rank: communicator.rank, ranks: communicator.size,
                groupSize: strategy.groupSize, queries: strategy.querySelection,
                balancing: strategy.balancesDocuments ? mask : .none)
        }
        let job = AttentionJob(shape: shape, mask: mask)
        let result = try strategy.attend(shard, job: job, communicator: communicator)
        let segments = strategy.outputSegments(shard)

        // The forward, every row, against one rank's kernel and against float64.
        let (k, v) = try InputFiles.loadWhole(source, shape: shape, tokens: tokens)
        let rows = Array(0 ..< result.rows), positions = Verification.positions(segments)
        let single = Verification.singleRank(shard, segments: segments, k: k, v: v, job: job)
        let reference = Verification.reference(shard, segments: segments, rows: rows, k: k, v: v, job: job)
        func compare(_ output: @escaping (Int) -> Double, _ lse: @escaping (Int) -> Double) -> ResultErrors {
            ResultErrors.compare(
                actualOutput: result.output, actualLSE: result.lse, actualRows: result.rows, rows: rows, positions: positions,
                expectedOutput: output, expectedLSE: lse, heads: heads, headDim: headDim)
        }
        var errors = Errors()
        errors.single = compare({ Double(single.output[$0]) }, { Double(single.lse[$0]) })
        errors.reference = compare({ reference.output[$0] }, { reference.lse[$0] })
        errors.single.output.maxAbs = try communicator.allreduce(errors.single.output.maxAbs, .max)
        errors.single.lse.maxRel = try communicator.allreduce(errors.single.lse.maxRel, .max)
        errors.reference.output.maxAbs = try communicator.allreduce(errors.reference.output.maxAbs, .max)
        errors.reference.lse.maxRel = try communicator.allreduce(errors.reference.lse.maxRel, .max)
        errors.outputRows = Int(try communicator.allreduce(Int32(result.rows), .sum))
        if case let .root(count, _) = strategy.querySelection {
            errors.expectedRows = options[StarOptions.self].everyRank ? count * communicator.size : count
        } else {
            errors.expectedRows = tokens
        }

        // The backward: dQ of the output rows, dK and dV of the key rows, every row.
        if strategy.backwardRefusal == nil {
            let outputGrad = OutputGradientSource.synthetic(seed: seed)
            let dO = try outputGrad.load(segments: segments, tokens: tokens, shape: shape)
            let gradients = try dO.withUnsafeBufferPointer {
                try strategy.backward(shard, forward: result, outputGrad: $0.baseAddress!, job: job, communicator: communicator)
            }
            let check = try GradientCheck(
                shard, queryRows: segments, gradients: gradients, source: source, outputGrad: outputGrad, job: job,
                sample: nil, communicator: communicator)
            errors.gradients = (
                single: try communicator.allreduce(check.single.maxAbs, .max),
                reference: try communicator.allreduce(check.reference.maxAbs, .max)
            )
        }
        return errors
    }
}
