// The strategies' plans, in process, at 1 to 5 ranks, without MPI: which rows the ring pass sends
// (and the backward returns dK/dV for), which (key block, kv head) pieces S2 sends, and how the head exchange splits heads
// and lays rows out. A mistake here would otherwise cost an mpirun launch to find, or pass at the
// rank counts the end-to-end tests happen to use.

import AttentionCore
import Testing

@testable import SequenceParallel

@Suite("plans of the strategies, in process")
struct PlanningTests {
    /// What a ring pass moves from one rank to another (both sides work it out alike:
    /// `SegmentIndex.keysRead` of the owner's segments by the receiver's): every key some query of
    /// the receiver may see is in it, each row once, in the owner's order; S2 segments go whole.
    /// The backward returns dK/dV for the same rows, so this is its route as well.
    @Test("ring: the rows a rank receives hold every key its queries read, under every kind of mask", arguments: 1 ... 4)
    func rowsRead(ranks: Int) throws {
        for tokens in [5, 61, 100] {
            let masks: [AttentionMask] = [
                .s2(try S2Pattern(block: 8, local: 2, stride: 3)), .none, .causal, .window(7),
                .documents(DocumentBoundaries.random(count: 4, tokens: tokens, seed: 3), within: .causal),
                .slices(MaskSlices.random(count: 9, tokens: tokens, seed: UInt64(tokens))),
            ]
            for mask in masks {
                let partition = TokenPartition.balanced(tokens: tokens, ranks: ranks, layout: .zigzag, groupSize: 1, mask: mask)
                for owner in 0 ..< ranks {
                    let ownerSegments = partition.stackedSegments(of: owner)
                    for receiver in 0 ..< ranks {
                        let queries = partition.stackedSegments(of: receiver)
                        let read = SegmentIndex(queries).keysRead(from: ownerSegments, mask: mask)
                        let context = "\(mask) T=\(tokens) P=\(ranks): rank \(receiver) from rank \(owner)"
                        var rows = Set<Int>()
                        for segment in read {
                            // At its owner's row, within one owner segment.
                            let home = ownerSegments.first { $0.positions.contains(segment.positions.lowerBound) }
                            #expect(
                                home.map {
                                    $0.positions.upperBound >= segment.positions.upperBound
                                        && $0.localRow + segment.positions.lowerBound - $0.positions.lowerBound == segment.localRow
                                } == true, "\(context): \(segment)")
                            for row in segment.localRow ..< segment.localRow + segment.positions.count { #expect(rows.insert(row).inserted, "\(context): row \(row) twice") }
                        }
                        #expect(zip(read, read.dropFirst()).allSatisfy { $0.localRow < $1.localRow }, "\(context): out of the owner's order")
                        let positions = queries.flatMap { Array($0.positions) }
                        for segment in ownerSegments {
                            for (i, key) in segment.positions.enumerated() {
                                let seen = positions.contains { q in (0 ..< 3).contains { mask.allows(query: q, key: key, head: $0) } }
                                if seen { #expect(rows.contains(segment.localRow + i), "\(context): key \(key) is read, never sent") }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every key row and kv head that some query of the receiver reads under the pattern is in
    /// a piece the owner sends it, and no piece is sent twice.
    @Test("s2: the pieces a rank receives hold every key its queries read", arguments: 1 ... 4)
    func s2Pieces(ranks: Int) throws {
        let pattern = try S2Pattern(block: 8, local: 2, stride: 3)
        let shape = try AttentionShape(heads: 6, kvHeads: 2, headDim: 8)
        let mask = AttentionMask.s2(pattern)
        for tokens in [5, 61, 100] {
            let partition = TokenPartition(tokens: tokens, ranks: ranks, layout: .zigzag)
            for owner in 0 ..< ranks {
                let ownerSegments = partition.stackedSegments(of: owner)
                let ownerPositions = ownerSegments.flatMap { Array($0.positions) }
                for receiver in 0 ..< ranks {
                    let receiverSegments = partition.stackedSegments(of: receiver)
                    let pieces = S2Attention.pieces(pattern: pattern, shape: shape, ownerSegments: ownerSegments, receiverSegments: receiverSegments)
                    var sent = Set<[Int]>()
                    for piece in pieces {
                        for row in piece.rows { #expect(sent.insert([row, piece.kvHead]).inserted, "row \(row) kv head \(piece.kvHead) sent twice") }
                    }
                    let queries = receiverSegments.flatMap { Array($0.positions) }
                    for (row, key) in ownerPositions.enumerated() {
                        for g in 0 ..< shape.kvHeads {
                            let read = queries.contains { i in
                                (0 ..< shape.heads).contains { h in shape.kvHead(of: h) == g && mask.allows(query: i, key: key, head: h) }
                            }
                            if read {
                                #expect(sent.contains([row, g]), "T=\(tokens) P=\(ranks): rank \(receiver) reads key \(key) (kv head \(g)) of rank \(owner), never sent")
                            }
                        }
                    }
                }
            }
        }
    }

    @Test("head exchange: heads split evenly, in order, covering every head once; rows laid out member after member")
    func headSplit() {
        for heads in 1 ... 9 {
            for members in 1 ... heads {
                let parts = (0 ..< members).map { HeadExchange.heads(of: $0, members: members, heads: heads) }
                #expect(parts.first?.lowerBound == 0 && parts.last?.upperBound == heads)
                #expect(zip(parts, parts.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound })
                #expect(parts.map(\.count).max()! - parts.map(\.count).min()! <= 1, "\(heads) heads over \(members): \(parts)")
            }
        }
        #expect(HeadExchange.offsets([3, 0, 5, 2]) == [0, 3, 3, 8])
        #expect(HeadExchange.offsets([]) == [])
    }
}
