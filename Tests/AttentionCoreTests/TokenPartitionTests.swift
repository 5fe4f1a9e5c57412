// Token partitions: every token on exactly one rank, chunks as even as integer division allows,
// zigzag rank r holding chunks r and 2P-1-r, and shard segments stacked in storage order.

import AttentionCore
import Testing

@Suite("Token partitions")
struct TokenPartitionTests {
    static let tokenCounts = [0, 1, 3, 5, 7, 100, 4099]

    /// The 2P (zigzag) or P (contiguous) chunks a partition is built from, recomputed independently.
    static func chunkCount(_ layout: TokenLayout, ranks: Int) -> Int { layout == .zigzag ? 2 * ranks : ranks }

    @Test("segments are disjoint and cover every token exactly once", arguments: TokenLayout.allCases, 1 ... 5)
    func cover(_ layout: TokenLayout, ranks: Int) {
        for tokens in Self.tokenCounts {
            let partition = TokenPartition(tokens: tokens, ranks: ranks, layout: layout)
            var owner = [Int](repeating: -1, count: tokens)
            for rank in 0 ..< ranks {
                for segment in partition.segments(of: rank) {
                    #expect(!segment.isEmpty, "empty segment on rank \(rank)")
                    #expect(segment.lowerBound >= 0 && segment.upperBound <= tokens)
                    for token in segment where token >= 0 && token < tokens {
                        #expect(owner[token] == -1, "token \(token) on ranks \(owner[token]) and \(rank)")
                        owner[token] = rank
                    }
                }
            }
            #expect(!owner.contains(-1), "\(layout) T=\(tokens) P=\(ranks): some token on no rank")
        }
    }

    @Test("chunk sizes differ by at most one", arguments: TokenLayout.allCases, 1 ... 5)
    func balance(_ layout: TokenLayout, ranks: Int) {
        for tokens in Self.tokenCounts {
            let partition = TokenPartition(tokens: tokens, ranks: ranks, layout: layout)
            let chunks = Self.chunkCount(layout, ranks: ranks)
            let sizes = (0 ..< ranks).flatMap { rank in partition.segments(of: rank).map(\.count) }
            // Empty chunks are dropped from segments; count them back in as size 0.
            let all = sizes + [Int](repeating: 0, count: max(0, chunks - sizes.count))
            #expect(all.count == chunks)
            #expect((all.max() ?? 0) - (all.min() ?? 0) <= 1, "\(layout) T=\(tokens) P=\(ranks): chunk sizes \(all)")
            #expect(all.reduce(0, +) == tokens)
            let rowCounts = (0 ..< ranks).map(partition.rowCount(of:))
            #expect(partition.maxRowCount == rowCounts.max())
            #expect(rowCounts.reduce(0, +) == tokens)
            for rank in 0 ..< ranks {
                #expect(rowCounts[rank] == partition.segments(of: rank).reduce(0) { $0 + $1.count })
            }
        }
    }

    @Test("contiguous rank r holds one run, in rank order", arguments: 1 ... 5)
    func contiguousOrder(ranks: Int) {
        for tokens in Self.tokenCounts {
            let partition = TokenPartition(tokens: tokens, ranks: ranks, layout: .contiguous)
            let runs = (0 ..< ranks).flatMap { partition.segments(of: $0) }
            #expect((0 ..< ranks).allSatisfy { partition.segments(of: $0).count <= 1 })
            #expect(runs.flatMap { Array($0) } == Array(0 ..< tokens), "T=\(tokens) P=\(ranks)")
        }
    }

    @Test("zigzag rank r holds chunks r and 2P-1-r", arguments: 1 ... 5)
    func zigzagChunks(ranks: Int) {
        for tokens in Self.tokenCounts {
            let partition = TokenPartition(tokens: tokens, ranks: ranks, layout: .zigzag)
            // The 2P chunks in sequence order: zigzag's storage order visits rank r's first chunk
            // at index r and its second at 2P-1-r.
            var chunks = [Range<Int>?](repeating: nil, count: 2 * ranks)
            for rank in 0 ..< ranks {
                let segments = partition.segments(of: rank)
                #expect(segments.count <= 2)
                if segments.count == 2 {
                    #expect(segments[0].upperBound <= segments[1].lowerBound, "rank \(rank) stores its early chunk first")
                    chunks[rank] = segments[0]
                    chunks[2 * ranks - 1 - rank] = segments[1]
                }
            }
            // Where every chunk is non-empty (tokens >= 2P), the chunks tile the sequence in order.
            if tokens >= 2 * ranks {
                let ordered = chunks.compactMap { $0 }
                #expect(ordered.count == 2 * ranks, "T=\(tokens) P=\(ranks): every rank holds two chunks")
                #expect(ordered.flatMap { Array($0) } == Array(0 ..< tokens), "T=\(tokens) P=\(ranks): chunks r and 2P-1-r")
            }
            // With fewer tokens than chunks some chunks are empty; what remains is still ordered.
            let ordered = chunks.compactMap { $0 }
            #expect(zip(ordered, ordered.dropFirst()).allSatisfy { $0.upperBound <= $1.lowerBound })
        }
    }

    @Test("maxRowCount for known splits")
    func maxRowCount() {
        // Derived from ceil/floor arithmetic rather than the implementation's formula.
        for (tokens, ranks) in [(0, 3), (1, 4), (7, 2), (100, 3), (4099, 5)] {
            #expect(TokenPartition(tokens: tokens, ranks: ranks, layout: .contiguous).maxRowCount == (tokens + ranks - 1) / ranks)
            // Zigzag: two chunks of ceil or floor of T/2P; the largest shard is at most two ceilings.
            let zigzag = TokenPartition(tokens: tokens, ranks: ranks, layout: .zigzag).maxRowCount
            #expect(zigzag <= 2 * ((tokens + 2 * ranks - 1) / (2 * ranks)))
            #expect(zigzag >= (tokens + ranks - 1) / ranks)
        }
    }

    @Test("stacked segments number rows back to back")
    func stacked() {
        let segments = ShardSegment.stacked([10 ..< 14, 30 ..< 31, 50 ..< 57])
        #expect(
            segments == [
                ShardSegment(positions: 10 ..< 14, localRow: 0),
                ShardSegment(positions: 30 ..< 31, localRow: 4),
                ShardSegment(positions: 50 ..< 57, localRow: 5),
            ])
        #expect(ShardSegment.stacked([]).isEmpty)
    }
}
