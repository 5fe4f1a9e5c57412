// 2D attention (USP-style): P = Ph x Pr ranks. Ranks in groups of Ph share one position of a
// ring of Pr (zigzag when causal); inside a group, the heads all-to-all gives each member every
// token of the group for its heads; across groups, members with the same heads exchange the K/V
// rows their queries read in ring order (RingPass); a final all-to-all returns rows to their owners. Ph = P is heads, Ph = 1 is ring.

import AttentionCore
import Buffers
import MPIBinding

/// 2D attention (USP-style) on `headGroup` x `ring` ranks: heads all-to-alls inside each head group, and a
/// ring (zigzag when causal) across the groups among members holding the same heads.
public struct MeshAttention: SequenceParallelStrategy {
    public let headGroup: Int
    public let ring: Int
    public let inputLayout: TokenLayout
    public var groupSize: Int { headGroup }
    public var balancesDocuments: Bool { true }
    /// The head group and ring communicators, split on first use and kept: a strategy made once
    /// per job splits once, however often it runs (bench's repeats, the backward).
    private let splits = Splits()

    private final class Splits {
        var parent: Communicator?
        var group: Communicator?
        var ring: Communicator?
    }

    /// This rank's head group (members in rank order) and its ring across the groups.
    func communicators(_ communicator: Communicator) throws -> (group: Communicator, ring: Communicator) {
        if splits.parent !== communicator || splits.group == nil {
            let position = communicator.rank / headGroup, member = communicator.rank % headGroup
            splits.group = try communicator.split(color: position, key: member)
            splits.ring = try communicator.split(color: member, key: position)
            splits.parent = communicator
        }
        return (splits.group!, splits.ring!)
    }

    public init(headGroup: Int, ring: Int, causal: Bool) {
        self.headGroup = headGroup
        self.ring = ring
        inputLayout = causal ? .zigzag : .contiguous
    }

    /// A shape when none is given: the largest head group that divides the ranks, is at most
    /// their square root and at most the heads.
    public static func defaultShape(ranks: Int, heads: Int) -> MeshShape {
        let group = (1 ... max(1, ranks)).last { ranks % $0 == 0 && $0 * $0 <= ranks && $0 <= heads } ?? 1
        return MeshShape(headGroup: group, ring: ranks / group)
    }

    public func check(heads: Int, ranks: Int) throws {
        let shapes = (1 ... ranks).filter { ranks % $0 == 0 && $0 <= heads }.map { "\($0)x\(ranks / $0)" }.joined(separator: ", ")
        guard headGroup * ring == ranks else {
            throw StrategyRefusal(description: "--mesh \(headGroup)x\(ring) needs \(headGroup * ring) ranks, not \(ranks); choose Ph x Pr = \(ranks), e.g. \(shapes)")
        }
        guard headGroup <= heads else {
            throw StrategyRefusal(description: "a head group of \(headGroup) ranks cannot split \(heads) heads; use Ph <= \(heads), e.g. \(shapes)")
        }
    }

    public func attend(_ shard: LocalShard, job: AttentionJob, communicator: Communicator) throws -> PartialResult {
        let position = communicator.rank / headGroup
        let (group, ringCommunicator) = try communicators(communicator)
        let partition = shard.partition
        func members(of position: Int) -> [[Range<Int>]] { (0 ..< headGroup).map { partition.segments(of: position * headGroup + $0) } }

        let exchange = HeadExchange(communicator: group, shape: job.shape, memberRanges: members(of: position))
        let heads = try exchange.scatter(shard)
        let accumulator = AttentionAccumulator(rows: exchange.groupRows, heads: heads.slice.heads.count, headDim: job.shape.headDim)
        let pass = RingPass(
            communicator: ringCommunicator,
            blockSegments: (0 ..< ring).map { ShardSegment.stacked(members(of: $0).flatMap { $0 }) },
            kvRowWidth: heads.slice.kvHeads.count * job.shape.headDim, buffers: job.exchangeBuffers)
        // The ring's first send points into the head shard's storage: it stays alive until the pass's waits.
        try withExtendedLifetime(heads) {
            try pass.run(
                queries: heads.queries, querySegments: exchange.groupSegments,
                keyValues: heads.keyValues, kernel: job.kernel(for: heads.slice), mask: job.mask, into: accumulator)
        }
        var result = PartialResult(emptyRows: shard.queryRows, heads: job.shape.heads, headDim: job.shape.headDim)
        try exchange.gather(accumulator.takeResult(), into: &result)
        return result
    }
}

extension MeshAttention {
    public var backwardRefusal: String? { nil }

    /// A head group's tokens for this rank's heads (as heads does inside the group), and the
    /// ring's two receive buffers of their K/V.
    public func workingFloats(rows: Double, tokens: Double, shape: AttentionShape, ranks: Int) -> Double {
        let d = Double(shape.headDim), groupRows = rows * Double(headGroup)
        let heads = (Double(shape.heads) / Double(headGroup)).rounded(.up), kvHeads = min(Double(shape.kvHeads), heads)
        return groupRows * heads * d * 3 + groupRows * kvHeads * d * 2 * 3 + rows * Double(shape.heads + 2 * shape.kvHeads) * d
    }

    /// The forward's exchanges, transposed. Inside the group, Q, K, V, dO and the per-row (lse, D)
    /// go from sequence shards to head shards; across groups the ring backward runs over the
    /// members with the same heads; dQ, dK and dV come back to their rows' owners, dK and dV
    /// summed over the members whose heads read the same kv head (GQA with fewer kv heads than
    /// members).
    public func backward(
        _ shard: LocalShard, forward: PartialResult, outputGrad: UnsafePointer<Float>, job: AttentionJob,
        communicator: Communicator
    ) throws -> ShardGradients {
        let shape = job.shape, d = shape.headDim
        let position = communicator.rank / headGroup
        let (group, ringCommunicator) = try communicators(communicator)
        let partition = shard.partition
        func members(of position: Int) -> [[Range<Int>]] { (0 ..< headGroup).map { partition.segments(of: position * headGroup + $0) } }

        let exchange = HeadExchange(communicator: group, shape: shape, memberRanges: members(of: position))
        let heads = try exchange.scatter(shard)
        let slice = heads.slice, groupRows = exchange.groupRows, myRows = shard.queryRows
        let headsOf = { exchange.slice(of: $0).heads }, kvHeadsOf = { exchange.slice(of: $0).kvHeads }

        // dO and (lse, D) to head shards.
        let outputGradHeads = OwnedBuffer<Float>(uninitializedCount: max(1, groupRows * slice.heads.count * d))
        try exchange.scatterRows(
            outputGrad, rows: myRows, rowWidth: shape.queryRowWidth, width: d, headsOf: headsOf,
            into: outputGradHeads.baseAddress, elementType: shard.elementType)
        let statistics = forward.output.withUnsafeBufferPointer { o in
            forward.lse.withUnsafeBufferPointer { l in
                GradientAccumulator.rowStatistics(
                    rows: myRows, heads: shape.heads, headDim: d, output: o.baseAddress!,
                    outputGrad: outputGrad, lse: l.baseAddress!, lseStride: myRows)
            }
        }
        var headStatistics = [Float](repeating: 0, count: groupRows * slice.heads.count * 2)
        try statistics.withUnsafeBufferPointer { s in
            try headStatistics.withUnsafeMutableBufferPointer { h in
                try exchange.scatterRows(s.baseAddress!, rows: myRows, rowWidth: 2 * shape.heads, width: 2, headsOf: headsOf, into: h.baseAddress!)
            }
        }
        let gradients = GradientAccumulator(rows: groupRows, heads: slice.heads.count, headDim: d, statistics: headStatistics)

        // The ring backward across groups, over this member's heads.
        let kvWidth = slice.kvHeads.count * d
        let keyValueGrads = OwnedBuffer<Float>(repeating: 0, count: max(1, 2 * groupRows * kvWidth))
        let pass = RingPass(
            communicator: ringCommunicator,
            blockSegments: (0 ..< ring).map { ShardSegment.stacked(members(of: $0).flatMap { $0 }) },
            kvRowWidth: kvWidth, buffers: job.exchangeBuffers)
        try withExtendedLifetime(heads) {
            try pass.runBackward(
                queries: heads.queries, outputGrad: outputGradHeads.baseAddress,
                querySegments: exchange.groupSegments, keyValues: heads.keyValues,
                kernel: job.backwardKernel(for: slice), mask: job.mask, gradients: gradients, keyValueGrads: keyValueGrads.buffer)
        }

        // Back to sequence shards.
        var result = ShardGradients(
            dq: [Float](repeating: 0, count: myRows * shape.queryRowWidth),
            dk: [Float](repeating: 0, count: shard.keyRows * shape.kvRowWidth),
            dv: [Float](repeating: 0, count: shard.keyRows * shape.kvRowWidth))
        var headDQ = [Float](repeating: 0, count: groupRows * slice.heads.count * d)
        headDQ.withUnsafeMutableBufferPointer { gradients.finish(dq: $0.baseAddress!) }
        try headDQ.withUnsafeBufferPointer { local in
            try result.dq.withUnsafeMutableBufferPointer { out in
                try exchange.gatherRows(
                    local.baseAddress!, width: d, headsOf: headsOf, into: out.baseAddress!, rows: myRows,
                    rowWidth: shape.queryRowWidth)
            }
        }
        try result.dk.withUnsafeMutableBufferPointer { out in
            try exchange.gatherRows(
                keyValueGrads.baseAddress, width: d, headsOf: kvHeadsOf, into: out.baseAddress!,
                rows: shard.keyRows, rowWidth: shape.kvRowWidth, add: true)
        }
        try result.dv.withUnsafeMutableBufferPointer { out in
            try exchange.gatherRows(
                keyValueGrads.baseAddress + groupRows * kvWidth, width: d, headsOf: kvHeadsOf, into: out.baseAddress!,
                rows: shard.keyRows, rowWidth: shape.kvRowWidth, add: true)
        }
        return result
    }
}

extension MeshAttention {
    public var label: String { "mesh \(headGroup)x\(ring)" }

    /// Its share of its group's heads over the group's tokens: an even share of the problem.
    public func expectedKernelFlops(_ shard: LocalShard, job: AttentionJob, ranks: Int) -> Double {
        job.mask.flops(tokens: shard.tokens, shape: job.shape) / Double(ranks)
    }

    public static let descriptor = StrategyDescriptor(
        name: "mesh", summary: "2D: heads all-to-all inside groups of Ph ranks, ring across the Pr groups (--mesh PhxPr)",
        options: ["--mesh"], optionsType: MeshOptions.self,
        applyVariant: { options, variant in options[MeshOptions.self].shape = MeshShape(parsing: variant) },
        make: { request in
            let shape = request.options[MeshOptions.self].shape ?? MeshAttention.defaultShape(ranks: request.ranks, heads: request.heads)
            return MeshAttention(headGroup: shape.headGroup, ring: shape.ring, causal: request.mask.isCausal)
        },
        predictions: { model, problem in
            let p = problem.ranks
            return (2 ..< max(2, p)).filter { p % $0 == 0 && $0 <= problem.heads }.map { group in
                var prediction = model.predict(problem, headGroup: group, zigzag: problem.causal, name: "mesh")
                prediction.variant = MeshShape(headGroup: group, ring: p / group).description
                return prediction
            }
        })
}

/// mesh's options (--mesh).
public struct MeshOptions: StrategyOptionSet {
    /// Heads split over `headGroup` ranks, ring over `ring` groups; nil picks `MeshAttention.defaultShape`.
    public var shape: MeshShape?

    public init() {}

    public init(shape: MeshShape?) { self.shape = shape }
}

/// mesh's shape: heads split over head groups of `headGroup` ranks, a ring of `ring` groups.
public struct MeshShape: Sendable, Equatable, CustomStringConvertible {
    public let headGroup: Int
    public let ring: Int

    /// The largest Ph or Pr --mesh takes (their product is at most the world size).
    public static let limit = 1 << 20

    public init(headGroup: Int, ring: Int) {
        self.headGroup = headGroup
        self.ring = ring
    }

    /// "PhxPr", two numbers from 1 to `limit`; nil for anything else.
    public init?(parsing text: String) {
        let parts = text.lowercased().split(separator: "x", omittingEmptySubsequences: false).map { Int($0) }
        guard parts.count == 2, let group = parts[0], let ring = parts[1], (1 ... Self.limit).contains(group), (1 ... Self.limit).contains(ring) else {
            return nil
        }
        self.init(headGroup: group, ring: ring)
    }

    /// As --mesh takes it: "2x2".
    public var description: String { "\(headGroup)x\(ring)" }
}
