// The exchange shared by the ring-shaped strategies (ring, zigzag, mesh across its groups):
// each rank's K/V rows go straight from their owner to each rank whose queries may read them,
// only those rows, in ring order (step s: to rank r + s, from rank r - s), so a rank receives
// what it reads rather than every block a ring would carry past it. At every step the next
// step's sends and receives are posted before the caller computes on the block in hand; the
// caller pokes `progress` while it computes, so MPI moves the data meanwhile. Two receive
// buffers alternate, kept by the job from pass to pass (ExchangeBuffers); the local block is
// sent from the shard's storage and never overwritten. The backward returns the dK/dV of the
// rows a rank received to their owner the same way, point to point. Requests point only into
// memory that outlives their waits: the caller's shard, the receive blocks and the backward's
// scratch (held by the job, and kept alive past the last wait; OwnedBuffer's "Lifetime").
// A pass may stop early (sliding window, packed documents): blocks no later step needs are never sent.

import AttentionCore
import Buffers
import FileFormats
import MPIBinding
import Profiling

/// Buffers a job's ring passes reuse from call to call (the two receive blocks; the backward's
/// dK/dV scratch and returns), so a repeated pass neither allocates them nor faults their
/// pages in again: at 2 ranks x 4096 tokens x 8 heads x 128, zeroing fresh receive blocks cost 5%
/// of a forward pass. A set is replaced only when a pass needs more or larger buffers. Never
/// zeroed here: every block and every return is written by its message before it is read, and the
/// backward zeroes its dK/dV scratch at each step. Held by the job, so they live as long as it does (memory: blocks of tokens / ranks).
final class ExchangeBuffers {
    enum Purpose: Hashable {
        /// The receive blocks.
        case blocks
        /// The backward's dK/dV: of arriving rows (two), and the returns that come in.
        case sums
        /// The forward's packed pieces of the local block, for the rank they go to.
        case pieces
    }
    private var held: [Purpose: [AnyObject]] = [:]

    /// `count` buffers of at least `capacity` elements each.
    func take<Element>(_ purpose: Purpose, count: Int, capacity: Int, of _: Element.Type = Float.self) -> [OwnedBuffer<Element>] {
        if let buffers = held[purpose] as? [OwnedBuffer<Element>], buffers.count == count, buffers.allSatisfy({ $0.count >= capacity }) {
            return buffers
        }
        held[purpose] = nil  // the old set goes before the new one is made
        let made = (0 ..< count).map { _ in OwnedBuffer<Element>(uninitializedCount: max(1, capacity)) }
        held[purpose] = made
        return made
    }
}

/// One pass over the K/V blocks of a ring of ranks, each block's rows that the caller's queries
/// read folded into them as they arrive.
struct RingPass {
    let communicator: Communicator
    /// For each ring rank, the segments of the block it starts with (queries and keys alike).
    let blockSegments: [[ShardSegment]]
    let kvRowWidth: Int
    /// Where its exchange buffers come from (the job's, so repeated passes reuse them).
    var buffers = ExchangeBuffers()

    private func rows(_ rank: Int) -> Int { LocalShard.rows(blockSegments[rank]) }

    /// Steps the pass needs: one more than the furthest ring distance at which some rank's
    /// queries see a key of the block arriving (everything, unless a window or documents cut it
    /// short: whole documents per rank need no block but the local one).
    func steps(mask: AttentionMask, heads: Range<Int>) -> Int {
        let ranks = communicator.size
        switch mask {
        case .window, .documents, .slices: break
        case .none, .causal, .s2: return ranks
        }
        var furthest = 0
        for receiver in 0 ..< ranks {
            let queries = SegmentIndex(blockSegments[receiver])
            for distance in stride(from: ranks - 1, to: furthest, by: -1) {
                let source = (receiver - distance + ranks) % ranks
                let sees = blockSegments[source].contains { k in
                    queries.seeing(k.positions, mask: mask).contains { q in
                        heads.contains { mask.relation(queries: q.positions, keys: k.positions, head: $0) != .hidden }
                    }
                }
                if sees { furthest = distance; break }
            }
        }
        return furthest + 1
    }

    /// What moves in a pass of `steps` steps: at step s, the rows of rank r - s's block that this
    /// rank's queries may read arrive (`arriving[s]`, stacked as the received block holds them;
    /// step 0: the whole local block) and the rows of the local block that rank r + s reads leave
    /// (`leaving[s]`, at their local rows); each arriving key segment with the query segments
    /// that may see it. Worked out before the exchange starts, so no step searches or allocates.
    struct Route {
        let steps: Int
        let arriving: [[ShardSegment]]
        let leaving: [[ShardSegment]]
        let pairs: [[(keys: ShardSegment, queries: [ShardSegment])]]
    }

    func route(querySegments: [ShardSegment], mask: AttentionMask, heads: Range<Int>) -> Route {
        let steps = steps(mask: mask, heads: heads)
        let (ranks, me) = (communicator.size, communicator.rank)
        let arriving = (0 ..< steps).map { step in
            step == 0 ? blockSegments[me] : ShardSegment.stacked(neededRows(of: (me - step + ranks) % ranks, by: me, mask: mask).map(\.positions))
        }
        let leaving = (0 ..< steps).map { step in step == 0 ? [] : neededRows(of: me, by: (me + step) % ranks, mask: mask) }
        let index = SegmentIndex(querySegments)
        let pairs = arriving.map { segments in
            segments.compactMap { keys in
                let seeing = index.seeing(keys.positions, mask: mask)
                return seeing.isEmpty ? nil : (keys: keys, queries: seeing)
            }
        }
        return Route(steps: steps, arriving: arriving, leaving: leaving, pairs: pairs)
    }

    /// Hands `body` each step's keys as the kernel reads them: step 0 the local block, step s
    /// what arrived from rank r - s (`route.arriving[s]`). Each block's rows go straight from
    /// their owner to each rank whose queries may read them (step s: to rank r + s, from rank
    /// r - s), only those rows, so a rank receives what it reads rather than every block the
    /// ring carries past it. The next step's sends and receives are posted before `body` runs
    /// and waited for after it (the ring's overlap), into two receive buffers kept by the job.
    /// Blocks travel in the element type the shard holds them in (bf16/f16: half of float32's
    /// bytes); on one rank nothing travels.
    private func exchange(
        _ keyValues: ElementRows, route: Route,
        _ body: (_ step: Int, _ block: KeyValueRows, _ progress: () -> Void) throws -> Void
    ) throws {
        let (ranks, me, steps) = (communicator.size, communicator.rank, route.steps)
        let (arriving, leaving) = (route.arriving, route.leaving)
        let width = kvRowWidth
        func turn<Element: MPIScalar>(_: Element.Type) throws {
            let local = keyValues.base.assumingMemoryBound(to: Element.self)
            let ownRows = rows(me)
            let sizes = arriving.map { 2 * LocalShard.rows($0) * width }
            let receiveBlocks = buffers.take(.blocks, count: 2, capacity: sizes.dropFirst().max() ?? 0, of: Element.self)
            // A few ranges go as they lie in the local block (a K and a V message each), in the
            // order the receiver stacks them, so no copy is made; many (packed documents) are
            // packed into one message.
            let packs = leaving.map { $0.count > Self.directRanges }
            let packedRows = zip(leaving, packs).map { $1 ? LocalShard.rows(ShardSegment.stacked($0.map(\.positions))) : 0 }.max() ?? 0
            let pieces = packedRows > 0 ? buffers.take(.pieces, count: 1, capacity: 2 * packedRows * width, of: Element.self)[0] : nil
            /// The messages that carry `rows` of the local block (each at its local row).
            func sends(_ rows: [ShardSegment], packed: Bool) -> [UnsafeBufferPointer<Element>] {
                if packed, let pieces {
                    let count = rows.reduce(0) { $0 + $1.positions.count }
                    var row = 0
                    for piece in rows {
                        let (from, n) = (piece.localRow, piece.positions.count)
                        (pieces.baseAddress + row * width).update(from: local + from * width, count: n * width)
                        (pieces.baseAddress + (count + row) * width).update(from: local + (ownRows + from) * width, count: n * width)
                        row += n
                    }
                    return [UnsafeBufferPointer(start: pieces.baseAddress, count: 2 * count * width)]
                }
                let keys = rows.map { UnsafeBufferPointer(start: local + $0.localRow * width, count: $0.positions.count * width) }
                let values = rows.map { UnsafeBufferPointer(start: local + (ownRows + $0.localRow) * width, count: $0.positions.count * width) }
                return keys + values
            }
            /// The receive buffers for a block of `segments` (stacked) sent with `packed` as above.
            func receives(_ segments: [ShardSegment], into block: UnsafeMutablePointer<Element>, packed: Bool) -> [UnsafeMutableBufferPointer<Element>] {
                let count = LocalShard.rows(segments)
                if packed { return [UnsafeMutableBufferPointer(start: block, count: 2 * count * width)] }
                let keys = segments.map { UnsafeMutableBufferPointer(start: block + $0.localRow * width, count: $0.positions.count * width) }
                let values = segments.map { UnsafeMutableBufferPointer(start: block + (count + $0.localRow) * width, count: $0.positions.count * width) }
                return keys + values
            }
            var sent: [Request] = [], received: [Request] = []
            for step in 0 ..< steps {
                let block = step == 0 ? UnsafePointer(local) : UnsafePointer(receiveBlocks[step % 2].baseAddress)
                if step + 1 < steps {  // the next step's exchange, posted before this step's compute
                    let next = step + 1
                    let from = (me - next + ranks) % ranks, to = (me + next) % ranks
                    // The sender packs when it sends many ranges; the receiver knows it from their count.
                    let packedIn = arriving[next].count > Self.directRanges
                    if sizes[next] > 0 {
                        for buffer in receives(arriving[next], into: receiveBlocks[next % 2].baseAddress, packed: packedIn) {
                            received.append(try communicator.irecv(buffer, from: from, tag: next))
                        }
                    }
                    if !leaving[next].isEmpty {
                        for buffer in sends(leaving[next], packed: packs[next]) { sent.append(try communicator.isend(buffer, to: to, tag: next)) }
                    }
                }
                let rows = LocalShard.rows(arriving[step])
                let keyValueRows = KeyValueRows(ElementRows(raw: UnsafeRawPointer(block), elementType: keyValues.elementType), valuesOffset: rows * width)
                try body(step, keyValueRows) {
                    // Progress only: a failure here resurfaces from the waits below.
                    for i in sent.indices { _ = try? communicator.test(&sent[i]) }
                    for i in received.indices { _ = try? communicator.test(&received[i]) }
                }
                for i in sent.indices { try communicator.wait(&sent[i]) }
                for i in received.indices { try communicator.wait(&received[i]) }
                (sent, received) = ([], [])
            }
            withExtendedLifetime((receiveBlocks, pieces)) {}
        }
        if keyValues.elementType == .f32 { try turn(Float.self) } else { try turn(UInt16.self) }
    }

    /// Folds every block the queries see into `accumulator`, each step's as it arrives (`exchange`).
    func run(
        queries: ElementRows, querySegments: [ShardSegment], keyValues: ElementRows,
        kernel: LocalAttention, mask: AttentionMask, into accumulator: AttentionAccumulator
    ) throws {
        let route = route(querySegments: querySegments, mask: mask, heads: kernel.slice.heads)
        try exchange(keyValues, route: route) { step, block, progress in
            for (keySegment, seeing) in route.pairs[step] {  // every query segment that may see it at once: K/V packed once
                kernel.accumulate(
                    queries: queries, querySegments: seeing, keyValues: block,
                    keySegment: keySegment, into: accumulator, recorder: communicator.recorder, progress: progress)
            }
        }
    }

    /// Ranges of a block sent as they lie (two messages each) up to this many; more are packed.
    static let directRanges = 4

    /// The rows of `source`'s block that some query of `receiver`'s block may see
    /// (`SegmentIndex.keysRead`), each with the row it starts at in `source`'s block.
    func neededRows(of source: Int, by receiver: Int, mask: AttentionMask) -> [ShardSegment] {
        SegmentIndex(blockSegments[receiver]).keysRead(from: blockSegments[source], mask: mask)
    }
}

extension RingPass {
    /// The backward pass: K/V rows arrive as in the forward (`exchange`: each rank receives from
    /// rank r - s only the rows its queries read). At each step a rank adds, from its queries, dQ
    /// into `gradients` and the arriving rows' dK/dV into a scratch buffer (step 0: its own
    /// rows', straight into `keyValueGrads`, this rank's dK rows then dV rows), and returns that
    /// to the rows' owner, while rank r + s returns the dK/dV of the rows this rank sent it,
    /// which are added into `keyValueGrads`. So the backward, too, moves only what is read, and
    /// each dK/dV row is a sum in one fixed order (own part, then step 1, 2, ... returns). A
    /// step's returns are posted after the compute that completes them and overlap the next
    /// step's compute.
    func runBackward(
        queries: ElementRows, outputGrad: UnsafePointer<Float>, querySegments: [ShardSegment],
        keyValues: ElementRows, kernel: LocalAttentionBackward, mask: AttentionMask,
        gradients: GradientAccumulator, keyValueGrads: UnsafeMutableBufferPointer<Float>
    ) throws {
        let (ranks, me) = (communicator.size, communicator.rank)
        let width = kvRowWidth, ownRows = rows(me)
        precondition(keyValueGrads.count >= 2 * ownRows * width)
        let route = route(querySegments: querySegments, mask: mask, heads: kernel.slice.heads)
        let arrivingRows = route.arriving.map(LocalShard.rows), leavingRows = route.leaving.map { $0.reduce(0) { $0 + $1.positions.count } }
        // Two scratch buffers for arriving rows' dK/dV (one computed while the other goes back)
        // and one for the returns that come in: each written before it is read.
        let capacity = 2 * width * max(arrivingRows.dropFirst().max() ?? 0, leavingRows.max() ?? 0)
        let buffers = ranks > 1 ? buffers.take(.sums, count: 3, capacity: capacity) : []
        var send = Request(), receive = Request()
        // Tags after the K/V exchange's (0 ..< steps), so the two streams never match each other.
        let tag = { (step: Int) in route.steps + step }
        var returning: Int?  // the step whose returns are in flight

        /// Waits for step `step`'s returns and adds what came back into this rank's dK/dV.
        func finish(_ step: Int) throws {
            try communicator.wait(&send)
            try communicator.wait(&receive)
            recording(.merge, on: communicator.recorder) {
                let back = buffers[2].baseAddress, count = leavingRows[step]
                var row = 0
                for piece in route.leaving[step] {
                    let n = piece.positions.count * width
                    for half in 0 ..< 2 {
                        let (target, source) = (keyValueGrads.baseAddress! + (half * ownRows + piece.localRow) * width, back + (half * count + row) * width)
                        for i in 0 ..< n { target[i] += source[i] }
                    }
                    row += piece.positions.count
                }
            }
        }

        try exchange(keyValues, route: route) { step, block, progress in
            let rows = arrivingRows[step]
            let grads = step == 0 ? keyValueGrads.baseAddress! : buffers[step % 2].baseAddress
            if step > 0 { grads.update(repeating: 0, count: 2 * rows * width) }
            recording(.compute, on: communicator.recorder) {
                for (keySegment, seeing) in route.pairs[step] {
                    for querySegment in seeing {
                        kernel.accumulate(
                            queries: queries, outputGrad: outputGrad, querySegment: querySegment, keyValues: block,
                            keySegment: keySegment, into: gradients, keyGrad: grads, valueGrad: grads + rows * width
                        ) {
                            // Progress only: a failure resurfaces from the waits.
                            progress()
                            _ = try? communicator.test(&send)
                            _ = try? communicator.test(&receive)
                        }
                    }
                }
            }
            if let step = returning { try finish(step) }
            returning = nil
            guard step > 0, rows + leavingRows[step] > 0 else { return }
            if leavingRows[step] > 0 {
                receive = try communicator.irecv(
                    UnsafeMutableBufferPointer(start: buffers[2].baseAddress, count: 2 * leavingRows[step] * width),
                    from: (me + step) % ranks, tag: tag(step))
            }
            if rows > 0 {
                send = try communicator.isend(UnsafeBufferPointer(start: grads, count: 2 * rows * width), to: (me - step + ranks) % ranks, tag: tag(step))
            }
            returning = step
        }
        // The buffers stay alive until the requests into their memory are done.
        try withExtendedLifetime(buffers) {
            if let step = returning { try finish(step) }
        }
    }
}
