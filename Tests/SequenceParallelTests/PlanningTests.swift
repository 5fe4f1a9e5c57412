// The strategies' plans, in process, at 1 to 5 ranks, without MPI: where the backward's dK/dV
// sums travel, which (key block, kv head) pieces S2 sends, and how the head exchange splits heads
// and lays rows out. A mistake here would otherwise cost an mpirun launch to find, or pass at the
// rank counts the end-to-end tests happen to use.

import AttentionCore
import Testing

@testable import SequenceParallel

@Suite("plans of the strategies, in process")
struct PlanningTests {
    /// Simulates every rank's sends and receives of the dK/dV sums, step by step, for every ring
    /// size and every pass length (a window ends passes early): each block's sum must gather
    /// exactly the ranks that computed on it, each once, what a rank receives must be the sum of
    /// the block it computes next, and every sum must end at its owner.
    @Test("ring backward: every dK/dV sum visits each rank that sees its block once, and ends at its owner", arguments: 1 ... 5)
    func gradientRoutes(ranks: Int) {
        for steps in 1 ... ranks {
            // sums[r]: the owner of the sum rank r holds and the ranks that added to it.
            var holding: [(owner: Int, contributors: [Int])?] = Array(repeating: nil, count: ranks)
            for step in 0 ..< steps {
                var arriving: [(owner: Int, contributors: [Int])?] = Array(repeating: nil, count: ranks)
                for rank in 0 ..< ranks {
                    let route = RingPass.gradientRoute(rank: rank, ranks: ranks, steps: steps, step: step)
                    #expect(route.source == ((rank - step) % ranks + ranks) % ranks)
                    var sum = step == 0 ? (owner: rank, contributors: []) : holding[rank]!
                    #expect(sum.owner == route.source, "P=\(ranks) steps=\(steps) step \(step): rank \(rank) holds block \(sum.owner)'s sum, computes on \(route.source)'s")
                    sum.contributors.append(rank)
                    #expect(arriving[route.to] == nil, "two sums sent to rank \(route.to) at step \(step)")
                    arriving[route.to] = sum
                    // The sender must be who the receiver expects, carrying the block it expects.
                    let receiver = RingPass.gradientRoute(rank: route.to, ranks: ranks, steps: steps, step: step)
                    #expect(
                        receiver.from == rank && receiver.arriving == sum.owner,
                        "P=\(ranks) steps=\(steps) step \(step): rank \(route.to) expects block \(receiver.arriving) from \(receiver.from), gets \(sum.owner) from \(rank)")
                }
                holding = arriving
            }
            for rank in 0 ..< ranks {
                let final = holding[rank]!
                #expect(final.owner == rank, "P=\(ranks) steps=\(steps): rank \(rank) ends with block \(final.owner)'s dK/dV")
                #expect(final.contributors == (0 ..< steps).map { (rank + $0) % ranks }, "P=\(ranks) steps=\(steps): contributors \(final.contributors)")
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
