// 2D attention (USP-style): P = Ph x Pr ranks. Ranks in groups of Ph share one position of a
// ring of Pr (zigzag when causal); inside a group, the heads all-to-all gives each member every
// token of the group for its heads; across groups, members with the same heads pass their K/V
// around the ring; a final all-to-all returns rows to their owners. Ph = P is heads, Ph = 1 is ring.

import AttentionCore

public struct MeshAttention: SequenceParallelStrategy {
    public let headGroup: Int
    public let ring: Int
    public let inputLayout: TokenLayout
    public var groupSize: Int { headGroup }
    public var balancesDocuments: Bool { true }

    public init(headGroup: Int, ring: Int, causal: Bool) {
        self.headGroup = headGroup
        self.ring = ring
        inputLayout = causal ? .zigzag : .contiguous
    }

    /// A shape when none is given: the largest head group that divides the ranks, is at most
    /// their square root and at most the heads.
    public static func defaultShape(ranks: Int, heads: Int) -> (headGroup: Int, ring: Int) {
        let group = (1 ... max(1, ranks)).last { ranks % $0 == 0 && $0 * $0 <= ranks && $0 <= heads } ?? 1
        return (group, ranks / group)
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
        let position = communicator.rank / headGroup, member = communicator.rank % headGroup
        let group = try communicator.split(color: position, key: member)
        let ringCommunicator = try communicator.split(color: member, key: position)
        let partition = shard.partition
        func members(of position: Int) -> [[Range<Int>]] { (0 ..< headGroup).map { partition.segments(of: position * headGroup + $0) } }

        let exchange = HeadExchange(communicator: group, shape: job.shape, memberRanges: members(of: position))
        let heads = try exchange.scatter(shard)
        defer { heads.deallocate() }
        let accumulator = AttentionAccumulator(rows: exchange.groupRows, heads: heads.slice.heads.count, headDim: job.shape.headDim)
        let pass = RingPass(communicator: ringCommunicator,
                            blockSegments: (0 ..< ring).map { ShardSegment.stacked(members(of: $0).flatMap { $0 }) },
                            kvRowWidth: heads.slice.kvHeads.count * job.shape.headDim)
        try pass.run(queries: heads.queries.baseAddress!, querySegments: exchange.groupSegments,
                     keyValues: UnsafeBufferPointer(heads.keyValues), kernel: job.kernel(for: heads.slice), mask: job.mask, into: accumulator)
        var result = PartialResult(emptyRows: shard.queryRows, heads: job.shape.heads, headDim: job.shape.headDim)
        try exchange.gather(accumulator.result(), into: &result)
        return result
    }
}
