// The ring exchange shared by the ring-shaped strategies: each rank's packed K/V block travels
// around the ring. At every step the send of the block in hand to rank r+1 and the receive of
// the next block from rank r-1 are posted before the caller computes on the block in hand; the
// caller pokes `progress` while it computes, so MPI moves the data meanwhile. Two receive
// buffers alternate, kept by the job from pass to pass (ExchangeBuffers); the local block itself
// is sent first and never overwritten. Requests point only into memory that outlives their waits:
// the caller's shard (the first send), the receive blocks (held by the exchange while `circulate`
// runs, and by the job) and the backward's sums (kept alive past the last wait; OwnedBuffer's
// "Lifetime").
// A pass may stop early (sliding window, packed documents): blocks no later step needs are never sent.

import AttentionCore
import Buffers
import FileFormats
import MPIBinding
import Profiling

/// Buffers a job's ring passes reuse from call to call (the two receive blocks; the backward's
/// partial and travelling dK/dV sums), so a repeated pass neither allocates them nor faults their
/// pages in again: at 2 ranks x 4096 tokens x 8 heads x 128, zeroing fresh receive blocks cost 5%
/// of a forward pass. A set is replaced only when a pass needs more or larger buffers. Never
/// zeroed: every block is written by its message, and every sum by its first step, before it is
/// read. Held by the job, so they live as long as it does (memory: blocks of tokens / ranks).
final class ExchangeBuffers {
    enum Purpose: Hashable {
        /// The receive blocks.
        case blocks
        /// The backward's dK/dV sums.
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

final class RingExchange<Element: MPIScalar> {
    let communicator: Communicator
    private let buffers: [OwnedBuffer<Element>]

    /// - Parameter capacity: elements in the largest block any rank sends.
    init(communicator: Communicator, capacity: Int, reusing cache: ExchangeBuffers) {
        self.communicator = communicator
        buffers = communicator.size > 1 ? cache.take(.blocks, count: 2, capacity: capacity, of: Element.self) : []
    }

    /// Runs `body` for `steps` ring steps with the block that rank `source` started with.
    /// - Parameters:
    ///   - local: this rank's packed block.
    ///   - blockSize: elements in the block that `rank` starts with.
    func circulate(
        _ local: UnsafeBufferPointer<Element>, steps: Int, blockSize: (Int) -> Int,
        _ body: (_ source: Int, _ block: UnsafePointer<Element>, _ progress: () -> Void) throws -> Void
    ) throws {
        var current = UnsafeBufferPointer(rebasing: local[0 ..< blockSize(communicator.rank)])
        for step in 0 ..< steps {
            let source = communicator.neighbour(-step)
            var send = Request(), receive = Request()
            var incoming = current
            if step < steps - 1 {
                let buffer = buffers[step % 2].buffer
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

    /// For each source rank a pass of `steps` steps reaches, its key segments that some query
    /// segment may see, each with those query segments: worked out once, before the ring turns,
    /// so no step searches or allocates (empty for the sources the pass never reaches).
    private func pairs(_ querySegments: [ShardSegment], mask: AttentionMask, steps: Int) -> [[(keys: ShardSegment, queries: [ShardSegment])]] {
        let index = SegmentIndex(querySegments)
        let (ranks, me) = (communicator.size, communicator.rank)
        var pairs = [[(keys: ShardSegment, queries: [ShardSegment])]](repeating: [], count: ranks)
        for step in 0 ..< steps {
            let source = (me - step + ranks) % ranks
            pairs[source] = blockSegments[source].compactMap { keys in
                let queries = index.seeing(keys.positions, mask: mask)
                return queries.isEmpty ? nil : (keys, queries)
            }
        }
        return pairs
    }

    /// Turns the ring for `steps` steps, handing `body` the block that rank `source` started
    /// with as the kernel reads it. Blocks travel in the element type the shard holds them in
    /// (bf16/f16: half of float32's bytes); on one rank nothing travels.
    private func circulate(
        _ keyValues: ElementRows, steps: Int,
        _ body: (_ source: Int, _ block: KeyValueRows, _ progress: () -> Void) throws -> Void
    ) throws {
        let blockSize = { (rank: Int) in 2 * rows(rank) * kvRowWidth }
        let capacity = (0 ..< communicator.size).map(blockSize).max()!
        let own = blockSize(communicator.rank)
        func turn<Element: MPIScalar>(_: Element.Type) throws {
            let exchange = RingExchange<Element>(communicator: communicator, capacity: capacity, reusing: buffers)
            let local = UnsafeBufferPointer(start: keyValues.base.assumingMemoryBound(to: Element.self), count: own)
            try exchange.circulate(local, steps: steps, blockSize: blockSize) { source, block, progress in
                try withoutActuallyEscaping(progress) {
                    try body(source, KeyValueRows(ElementRows(raw: UnsafeRawPointer(block), elementType: keyValues.elementType), valuesOffset: rows(source) * kvRowWidth), $0)
                }
            }
        }
        if keyValues.elementType == .f32 { try turn(Float.self) } else { try turn(UInt16.self) }
    }

    /// Folds every block the queries see into `accumulator`. The forward sends each block
    /// straight from its owner (step d: to rank r + d, from rank r - d), and only the rows of it
    /// the receiver's queries may see (`neededRows`), so a rank receives what it reads rather
    /// than every block the ring carries past it; the schedule, the overlap (sends and receives
    /// posted a step ahead of the compute) and the two receive buffers are the ring's.
    func run(
        queries: ElementRows, querySegments: [ShardSegment], keyValues: ElementRows,
        kernel: LocalAttention, mask: AttentionMask, into accumulator: AttentionAccumulator
    ) throws {
        let steps = steps(mask: mask, heads: kernel.slice.heads)
        let (ranks, me) = (communicator.size, communicator.rank)
        let heads = kernel.slice.heads
        // What arrives at each step (step 0: the whole local block) and what leaves for the rank d ahead.
        let arriving = (0 ..< steps).map { step in
            step == 0 ? blockSegments[me] : ShardSegment.stacked(neededRows(of: (me - step + ranks) % ranks, by: me, mask: mask, heads: heads).map(\.positions))
        }
        let leaving = (0 ..< steps).map { step in step == 0 ? [] : neededRows(of: me, by: (me + step) % ranks, mask: mask, heads: heads) }
        // Each arriving key segment with the query segments that may see it: worked out before
        // the exchange starts, so no step searches or allocates for it.
        let index = SegmentIndex(querySegments)
        let pairs = arriving.map { segments in
            segments.compactMap { keys in
                let seeing = index.seeing(keys.positions, mask: mask)
                return seeing.isEmpty ? nil : (keys: keys, queries: seeing)
            }
        }
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
                let progress = {
                    // Progress only: a failure here resurfaces from the waits below.
                    for i in sent.indices { _ = try? communicator.test(&sent[i]) }
                    for i in received.indices { _ = try? communicator.test(&received[i]) }
                }
                for (keySegment, seeing) in pairs[step] {  // every query segment that may see it at once: K/V packed once
                    kernel.accumulate(
                        queries: queries, querySegments: seeing, keyValues: keyValueRows,
                        keySegment: keySegment, into: accumulator, recorder: communicator.recorder, progress: progress)
                }
                for i in sent.indices { try communicator.wait(&sent[i]) }
                for i in received.indices { try communicator.wait(&received[i]) }
                (sent, received) = ([], [])
            }
            withExtendedLifetime((receiveBlocks, pieces)) {}
        }
        if keyValues.elementType == .f32 { try turn(Float.self) } else { try turn(UInt16.self) }
    }

    /// Ranges of a block sent as they lie (two messages each) up to this many; more are packed.
    static let directRanges = 4

    /// The rows of `source`'s block that some query of `receiver`'s block may see: for each of
    /// its segments, the hull of the keys the receiver's segments that see it see (the mask's
    /// span of the segment pair; S2: the whole segment), in the block's order, each with the
    /// row it starts at in `source`'s block.
    func neededRows(of source: Int, by receiver: Int, mask: AttentionMask, heads: Range<Int>) -> [ShardSegment] {
        let queries = SegmentIndex(blockSegments[receiver])
        let perHead = heads.lowerBound ..< heads.lowerBound + 1  // only S2's relation differs by head
        var needed: [ShardSegment] = []
        for keys in blockSegments[source] {
            let seeing = queries.seeing(keys.positions, mask: mask)
            // S2 answers for keys within one of its blocks only: a segment that some query
            // segment may see goes whole (S2 runs on its own exchange; mesh and ring send this).
            if mask.keyBlockAlignment != nil {
                if !seeing.isEmpty { needed.append(keys) }
                continue
            }
            var (lo, hi) = (Int.max, Int.min)
            for q in seeing {
                for head in perHead where mask.relation(queries: q.positions, keys: keys.positions, head: head) != .hidden {
                    let span = mask.visibleSpan(queries: q.positions, keys: keys.positions, head: head)
                    (lo, hi) = (min(lo, span.lowerBound), max(hi, span.upperBound))
                }
            }
            if lo < hi { needed.append(ShardSegment(positions: lo ..< hi, localRow: keys.localRow + lo - keys.positions.lowerBound)) }
        }
        return needed
    }
}

extension RingPass {
    /// Where the dK/dV sums go in a backward pass of `steps` steps over `ranks` ranks: at `step`,
    /// `rank` holds the block that started at `source`, sends its sum `to` a rank, and receives
    /// `from` a rank the sum of the block `arriving` (the next step's block, or after the last
    /// step its own). On to the next rank, and after the last step home to the block's owner.
    static func gradientRoute(rank: Int, ranks: Int, steps: Int, step: Int) -> (source: Int, to: Int, from: Int, arriving: Int) {
        let around = { (offset: Int) in ((rank + offset) % ranks + ranks) % ranks }
        if step == steps - 1 { return (around(-step), around(-step), around(steps - 1), rank) }
        return (around(-step), around(1), around(-1), around(-step - 1))
    }

    /// The backward pass: K/V blocks travel as in the forward, and beside each one the dK/dV it
    /// has gathered so far. At each step a rank adds, from its queries, dQ into `gradients` and the
    /// block's dK/dV into a scratch buffer, then adds that to the dK/dV that arrived with the block
    /// and sends the sum on; after the last step each block's dK/dV goes to its owner, so
    /// `keyValueGrads` (this rank's dK rows then dV rows) ends up holding every rank's share.
    /// K/V sends are posted before the compute they overlap (RingExchange); a dK/dV send is
    /// posted after the compute that completes it and overlaps the next step's compute.
    func runBackward(
        queries: ElementRows, outputGrad: UnsafePointer<Float>, querySegments: [ShardSegment],
        keyValues: ElementRows, kernel: LocalAttentionBackward, mask: AttentionMask,
        gradients: GradientAccumulator, keyValueGrads: UnsafeMutableBufferPointer<Float>
    ) throws {
        let (ranks, me) = (communicator.size, communicator.rank)
        let blockSize = { (rank: Int) in 2 * rows(rank) * kvRowWidth }
        precondition(keyValueGrads.count >= blockSize(me))
        let capacity = (0 ..< ranks).map(blockSize).max()!
        let steps = steps(mask: mask, heads: kernel.slice.heads)
        let pairs = pairs(querySegments, mask: mask, steps: steps)
        // The block's dK/dV from this rank's queries (zeroed at every step), and two buffers for
        // the travelling sums (one being sent, one being received; each written before it is read).
        let buffers = buffers.take(.sums, count: 3, capacity: capacity)
        let partial = buffers[0].buffer, travelling = buffers[1...].map(\.buffer)
        var send = Request(), receive = Request()
        // Tags after the K/V exchange's (0 ..< steps), so the two streams never match each other.
        let tag = { (step: Int) in steps + step }

        try circulate(keyValues, steps: steps) { source, block, progress in
            let step = (me - source + ranks) % ranks
            let size = blockSize(source)
            partial.update(repeating: 0)
            let keyGrad = partial.baseAddress!, valueGrad = keyGrad + rows(source) * kvRowWidth
            recording(.compute, on: communicator.recorder) {
                for (keySegment, seeing) in pairs[source] {
                    for querySegment in seeing {
                        kernel.accumulate(
                            queries: queries, outputGrad: outputGrad, querySegment: querySegment, keyValues: block,
                            keySegment: keySegment, into: gradients, keyGrad: keyGrad, valueGrad: valueGrad
                        ) {
                            // Progress only: a failure resurfaces from the waits below.
                            progress()
                            _ = try? communicator.test(&send)
                            _ = try? communicator.test(&receive)
                        }
                    }
                }
            }
            // The sum so far: what arrived with this block (none at step 0) plus this rank's part.
            try communicator.wait(&send)
            let sum = travelling[step % 2]
            if step == 0 {
                sum.baseAddress!.update(from: partial.baseAddress!, count: size)
            } else {
                try communicator.wait(&receive)
                recording(.merge, on: communicator.recorder) {
                    for i in 0 ..< size { sum[i] += partial[i] }
                }
            }
            let route = Self.gradientRoute(rank: me, ranks: ranks, steps: steps, step: step)
            let incoming = blockSize(route.arriving)
            if ranks == 1 {
                keyValueGrads.baseAddress!.update(from: sum.baseAddress!, count: size)
                return
            }
            receive = try communicator.irecv(
                UnsafeMutableBufferPointer(rebasing: travelling[(step + 1) % 2][0 ..< incoming]),
                from: route.from, tag: tag(step))
            send = try communicator.isend(UnsafeBufferPointer(rebasing: sum[0 ..< size]), to: route.to, tag: tag(step))
        }
        // The owners stay alive until the requests into their memory are done.
        try withExtendedLifetime(buffers) {
            guard ranks > 1 else { return }
            try communicator.wait(&send)
            try communicator.wait(&receive)
            keyValueGrads.baseAddress!.update(from: travelling[steps % 2].baseAddress!, count: blockSize(me))
        }
    }
}
