// The ring exchange shared by the ring-shaped strategies: each rank's packed K/V block travels
// around the ring. At every step the send of the block in hand to rank r+1 and the receive of
// the next block from rank r-1 are posted before the caller computes on the block in hand; the
// caller pokes `progress` while it computes, so MPI moves the data meanwhile. Two receive
// buffers, allocated once, alternate; the local block itself is sent first and never overwritten.
// A pass may stop early (sliding window, packed documents): blocks no later step needs are never sent.

import AttentionCore

final class RingExchange {
    let communicator: Communicator
    private let buffers: [UnsafeMutableBufferPointer<Float>]

    /// - Parameter capacity: floats in the largest block any rank sends.
    init(communicator: Communicator, capacity: Int) {
        self.communicator = communicator
        buffers = communicator.size > 1 ? (0 ..< 2).map { _ in
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(1, capacity))
            buffer.initialize(repeating: 0)
            return buffer
        } : []
    }

    deinit { buffers.forEach { $0.deallocate() } }

    /// Runs `body` for `steps` ring steps with the block that rank `source` started with.
    /// - Parameters:
    ///   - local: this rank's packed block.
    ///   - blockSize: floats in the block that `rank` starts with.
    func circulate(_ local: UnsafeBufferPointer<Float>, steps: Int, blockSize: (Int) -> Int,
                   _ body: (_ source: Int, _ block: UnsafePointer<Float>, _ progress: () -> Void) throws -> Void) throws {
        var current = UnsafeBufferPointer(rebasing: local[0 ..< blockSize(communicator.rank)])
        for step in 0 ..< steps {
            let source = communicator.neighbour(-step)
            var send = Request(), receive = Request()
            var incoming = current
            if step < steps - 1 {
                let buffer = buffers[step % 2]
                let next = UnsafeMutableBufferPointer(rebasing: buffer[0 ..< blockSize(communicator.neighbour(-step - 1))])
                receive = try communicator.irecv(next, from: communicator.neighbour(-1), tag: step)
                send = try communicator.isend(current, to: communicator.neighbour(1), tag: step)
                incoming = UnsafeBufferPointer(next)
            }
            try body(source, current.baseAddress!) {
                // Progress only: a failure here resurfaces from the wait below.
                _ = try? communicator.test(&send)
                _ = try? communicator.test(&receive)
            }
            try communicator.wait(&send)
            try communicator.wait(&receive)
            current = incoming
        }
    }
}

/// One pass of K/V blocks around a ring, each folded into the caller's queries.
struct RingPass {
    let communicator: Communicator
    /// For each ring rank, the segments of the block it starts with (queries and keys alike).
    let blockSegments: [[ShardSegment]]
    let kvRowWidth: Int

    private func rows(_ rank: Int) -> Int { LocalShard.rows(blockSegments[rank]) }

    /// Steps the pass needs: one more than the furthest ring distance at which some rank's
    /// queries see a key of the block arriving (everything, unless a window or documents cut it
    /// short: whole documents per rank need no block but the local one).
    func steps(mask: AttentionMask, heads: Range<Int>) -> Int {
        let ranks = communicator.size
        switch mask {
        case .window, .documents: break
        case .none, .causal, .s2: return ranks
        }
        var furthest = 0
        for receiver in 0 ..< ranks {
            for distance in stride(from: ranks - 1, to: furthest, by: -1) {
                let source = (receiver - distance + ranks) % ranks
                let sees = blockSegments[receiver].contains { q in
                    blockSegments[source].contains { k in
                        heads.contains { mask.relation(queries: q.positions, keys: k.positions, head: $0) != .hidden }
                    }
                }
                if sees { furthest = distance; break }
            }
        }
        return furthest + 1
    }

    /// Folds every block the queries see into `accumulator`.
    func run(queries: UnsafePointer<Float>, querySegments: [ShardSegment], keyValues: UnsafeBufferPointer<Float>,
             kernel: LocalAttention, mask: AttentionMask, into accumulator: AttentionAccumulator) throws {
        let capacity = 2 * (0 ..< communicator.size).map(rows).max()! * kvRowWidth
        let exchange = RingExchange(communicator: communicator, capacity: capacity)
        let steps = steps(mask: mask, heads: kernel.slice.heads)
        try exchange.circulate(keyValues, steps: steps, blockSize: { 2 * rows($0) * kvRowWidth }) { source, block, progress in
            let values = block + rows(source) * kvRowWidth
            for keySegment in blockSegments[source] {     // every query segment at once: K/V packed once
                kernel.accumulate(queries: queries, querySegments: querySegments, keys: block, values: values,
                                  keySegment: keySegment, into: accumulator, recorder: communicator.recorder, progress: progress)
            }
        }
    }
}
