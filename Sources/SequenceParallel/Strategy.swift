// What every distributed strategy shares: the problem it is handed and the shape of its answer.
// A strategy receives this rank's shard (inputs already sharded in its `inputLayout`) and
// returns the online-softmax state of this rank's query rows over all keys.

import AttentionCore

/// One attention problem as a strategy sees it.
public struct AttentionJob {
    public let shape: AttentionShape
    public let mask: AttentionMask
    public let kernel: LocalAttention

    public init(shape: AttentionShape, mask: AttentionMask, tiling: KernelTiling = KernelTiling(), threads: Int = 1) {
        self.shape = shape
        self.mask = mask
        kernel = LocalAttention(shape: shape, mask: mask, tiling: tiling, threads: threads)
    }
}

public protocol SequenceParallelStrategy {
    /// How the inputs must be sharded over ranks before `attend` runs.
    var inputLayout: TokenLayout { get }

    /// Attention of this rank's query rows over every key of the sequence.
    func attend(_ shard: LocalShard, job: AttentionJob, communicator: Communicator) throws -> AttentionAccumulator
}

/// The strategies a user can name.
public enum StrategyName: String, CaseIterable, Sendable {
    case ring, zigzag

    /// One line for `--help`.
    public var summary: String {
        switch self {
        case .ring: return "contiguous chunk per rank; K/V blocks travel the ring, overlapped with compute"
        case .zigzag: return "ring over 2P chunks, rank r holding r and 2P-1-r, so causal work is even"
        }
    }

    public func make() -> SequenceParallelStrategy {
        switch self {
        case .ring: return RingAttention(layout: .contiguous)
        case .zigzag: return ZigzagAttention()
        }
    }
}
