// Which global token positions each rank holds. Uneven splits are normal input: sizes differ by
// at most one token per chunk, and a rank may hold nothing when there are fewer tokens than chunks.

/// How a sequence of `tokens` tokens is cut over `ranks` ranks.
public enum TokenLayout: String, Sendable, CaseIterable {
    /// Rank r holds one contiguous chunk, r-th of P.
    case contiguous
    /// The sequence is cut into 2P chunks; rank r holds chunks r and 2P-1-r, which evens out causal work.
    case zigzag
}

public struct TokenPartition: Equatable, Sendable {
    public let tokens: Int
    public let ranks: Int
    public let layout: TokenLayout
    /// Ranks that share one position of the layout (mesh's head groups): the layout is laid over
    /// ranks / groupSize positions, and each piece of a position's tokens is split evenly over
    /// the group's ranks (rank r is member r % groupSize of position r / groupSize).
    public let groupSize: Int

    public init(tokens: Int, ranks: Int, layout: TokenLayout, groupSize: Int = 1) {
        precondition(tokens >= 0 && ranks >= 1 && groupSize >= 1 && ranks % groupSize == 0)
        self.tokens = tokens
        self.ranks = ranks
        self.layout = layout
        self.groupSize = groupSize
    }

    /// Layout positions (ring length): ranks / groupSize.
    public var positions: Int { ranks / groupSize }

    /// Chunk `c` of `count` equal-as-possible chunks of `tokens` (sizes differ by at most one).
    @inlinable public static func chunk(_ c: Int, of count: Int, tokens: Int) -> Range<Int> {
        (c * tokens / count) ..< ((c + 1) * tokens / count)
    }

    /// Global token ranges held by `rank`, in the order its rows are stored (never empty ranges).
    public func segments(of rank: Int) -> [Range<Int>] {
        positionSegments(rank / groupSize).map { part in
            let member = rank % groupSize
            return part.lowerBound + Self.chunk(member, of: groupSize, tokens: part.count).lowerBound
                ..< part.lowerBound + Self.chunk(member, of: groupSize, tokens: part.count).upperBound
        }.filter { !$0.isEmpty }
    }

    /// Global token ranges of one layout position (all of its group's rows), in storage order.
    public func positionSegments(_ position: Int) -> [Range<Int>] {
        let n = positions
        switch layout {
        case .contiguous:
            return [Self.chunk(position, of: n, tokens: tokens)]
        case .zigzag:
            return [Self.chunk(position, of: 2 * n, tokens: tokens), Self.chunk(2 * n - 1 - position, of: 2 * n, tokens: tokens)]
        }
    }

    /// The segments of `rank`, stored back to back as its shard holds them.
    public func stackedSegments(of rank: Int) -> [ShardSegment] { ShardSegment.stacked(segments(of: rank)) }

    /// Rows stored by `rank`.
    public func rowCount(of rank: Int) -> Int { segments(of: rank).reduce(0) { $0 + $1.count } }

    /// The largest shard: what a buffer that receives any rank's shard must hold.
    public var maxRowCount: Int { (0 ..< ranks).map(rowCount(of:)).max() ?? 0 }
}

/// A run of rows stored contiguously in a shard: global positions `positions`, first local row `localRow`.
public struct ShardSegment: Equatable, Sendable {
    public let positions: Range<Int>
    public let localRow: Int

    public init(positions: Range<Int>, localRow: Int) {
        self.positions = positions
        self.localRow = localRow
    }

    /// The segments of a shard whose rows are `ranges` stored back to back.
    public static func stacked(_ ranges: [Range<Int>]) -> [ShardSegment] {
        var row = 0
        return ranges.map { range in
            defer { row += range.count }
            return ShardSegment(positions: range, localRow: row)
        }
    }
}
