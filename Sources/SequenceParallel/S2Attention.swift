// S2-Attention across ranks, and point-to-point attention for any mask. Queries stay where they
// are (zigzag shards, since the pattern is causal); each rank receives, from every other rank, only
// the pieces (a key block's rows for one kv head) that its queries' heads read under the pattern —
// the local band's neighbours and the heads' vertical strides — point to point, rank r+s and r-s at
// step s, the next exchange posted before the current block is computed, and the backward returns
// their dK/dV the same way. The kernel computes only the active block pairs, so FLOPs and bytes
// both fall with the pattern's density. Any other mask is the same exchange with every kv head at
// once, which the ring pass does (RingPass: the rows each rank's queries read, straight from their
// owner, and their dK/dV straight back), over zigzag shards or the layout that balances the mask.

import AttentionCore
import Buffers
import FileFormats
import MPIBinding
import Profiling

/// S2-Attention across zigzag shards: each rank receives, point to point, only the K/V pieces its queries'
/// heads read under the S2 pattern, and the kernel computes only the active block pairs. Any other
/// mask: the zigzag ring's exchange, which is point to point too (only the rows each rank reads).
public struct S2Attention: SequenceParallelStrategy {
    public var inputLayout: TokenLayout { .zigzag }
    public var balancesDocuments: Bool { true }

    public init() {}

    /// A key block's rows (local to its owner's shard) for one kv head.
    struct Piece {
        let rows: Range<Int>
        let kvHead: Int
    }

    /// What `receiver` needs from `owner`'s keys, in an order both sides derive alike.
    static func pieces(pattern: S2Pattern, shape: AttentionShape, ownerSegments: [ShardSegment], receiverSegments: [ShardSegment]) -> [Piece] {
        let b = pattern.block
        let queryBlocks = receiverSegments.map { ($0.positions.lowerBound / b) ... (($0.positions.upperBound - 1) / b) }
        guard let lastQueryBlock = queryBlocks.map(\.upperBound).max() else { return [] }
        var pieces: [Piece] = []
        for segment in ownerSegments {
            var position = segment.positions.lowerBound
            while position < segment.positions.upperBound {
                let kb = position / b
                let end = min(segment.positions.upperBound, (kb + 1) * b)
                defer { position = end }
                guard kb <= lastQueryBlock else { continue }
                let band = queryBlocks.contains { $0.lowerBound <= kb + pattern.local - 1 && $0.upperBound >= kb }
                let rows = (segment.localRow + position - segment.positions.lowerBound) ..< (segment.localRow + end - segment.positions.lowerBound)
                for g in 0 ..< shape.kvHeads {
                    let strided = (g * shape.groupSize ..< (g + 1) * shape.groupSize).contains { (kb + $0) % pattern.stride == 0 }
                    if band || strided { pieces.append(Piece(rows: rows, kvHead: g)) }
                }
            }
        }
        return pieces
    }

    public func attend(_ shard: LocalShard, job: AttentionJob, communicator: Communicator) throws -> PartialResult {
        guard case let .s2(pattern) = job.mask else { return try RingAttention(layout: .zigzag).attend(shard, job: job, communicator: communicator) }
        let exchange = PieceExchange(pattern: pattern, shape: job.shape, shard: shard, communicator: communicator)
        let accumulator = AttentionAccumulator(rows: shard.queryRows, heads: job.shape.heads, headDim: job.shape.headDim)
        func fold(_ keys: KeyValues) {
            for querySegment in shard.querySegments {
                for keySegment in keys.segments {
                    job.kernel.accumulate(
                        queries: shard.queryElements, querySegments: CollectionOfOne(querySegment), keyValues: keys.keyValues,
                        keySegment: keySegment, into: accumulator, recorder: communicator.recorder, progress: exchange.progress)
                }
            }
        }
        if exchange.ranks > 1 { try exchange.post(1) }
        fold(exchange.own)
        for step in 1 ..< max(1, exchange.ranks) {
            let received = try exchange.receive(step)
            if step + 1 < exchange.ranks { try exchange.post(step + 1) }
            fold(received)
        }
        return accumulator.takeResult()
    }
}

/// One rank's keys as the kernel reads them: K and V ([rows, kvHeads, headDim] each, in the job's
/// element type) and their segments.
struct KeyValues {
    let keyValues: KeyValueRows
    let rows: Int
    let segments: [ShardSegment]
}

/// S2's traffic, point to point, for the forward and the backward alike. At step s a rank sends
/// rank r+s the pieces of its keys that r+s reads (`sends[s]`) and receives from r-s the pieces
/// of r-s's keys that it reads (`receives[s]`), unpacked into one owner-sized block (pieces not
/// received are never read there: the mask hides them). The backward returns dK/dV for the same
/// pieces the other way.
final class PieceExchange {
    let communicator: Communicator
    let ranks: Int
    private let me: Int
    private let shard: LocalShard
    private let segments: [[ShardSegment]]
    private let rows: [Int]
    let sends: [[S2Attention.Piece]]
    let receives: [[S2Attention.Piece]]
    private let headDim: Int, kvWidth: Int
    // Requests point into these until their waits, and the exchange outlives them. K/V pieces
    // travel in the shard's element type (bf16/f16: half of float32's bytes).
    private let sendBuffer: ElementStorage, receiveBuffer: ElementStorage, block: ElementStorage
    private var send = Request(), receiving = Request()

    init(pattern: S2Pattern, shape: AttentionShape, shard: LocalShard, communicator: Communicator) {
        (self.communicator, self.shard) = (communicator, shard)
        (ranks, me) = (communicator.size, communicator.rank)
        (headDim, kvWidth) = (shape.headDim, shape.kvRowWidth)
        let segments = (0 ..< ranks).map(shard.partition.stackedSegments)
        let (ranks, me) = (ranks, me)
        sends = (0 ..< ranks).map { s in
            s == 0 ? [] : S2Attention.pieces(pattern: pattern, shape: shape, ownerSegments: segments[me], receiverSegments: segments[(me + s) % ranks])
        }
        receives = (0 ..< ranks).map { s in
            s == 0
                ? [] : S2Attention.pieces(pattern: pattern, shape: shape, ownerSegments: segments[(me - s + ranks) % ranks], receiverSegments: segments[me])
        }
        self.segments = segments
        rows = segments.map(LocalShard.rows)
        let (sendCount, receiveCount) = (
            sends.map { S2Attention.floats($0, headDim: shape.headDim) }.max() ?? 0,
            receives.map { S2Attention.floats($0, headDim: shape.headDim) }.max() ?? 0
        )
        let type = shard.elementType
        sendBuffer = ElementStorage(zeroed: sendCount, elementType: type)
        receiveBuffer = ElementStorage(zeroed: receiveCount, elementType: type)
        block = ElementStorage(zeroed: 2 * (rows.max() ?? 0) * kvWidth, elementType: type)
    }

    /// The rank that owns the keys received at `step`.
    func owner(_ step: Int) -> Int { (me - step + ranks) % ranks }

    /// This rank's own keys.
    var own: KeyValues { KeyValues(keyValues: shard.keyValueElements, rows: shard.keyRows, segments: shard.keySegments) }

    /// Elements of the largest K/V pair a step can receive.
    var blockCount: Int { block.count }

    func floats(_ pieces: [S2Attention.Piece]) -> Int { S2Attention.floats(pieces, headDim: headDim) }

    /// Packs and posts step `step`'s pieces: the send to r+s, the receive from r-s.
    func post(_ step: Int) throws {
        let (to, from) = ((me + step) % ranks, owner(step))
        let (sendCount, receiveCount) = (floats(sends[step]), floats(receives[step]))
        func post<Element: MPIScalar>(_: Element.Type) throws {
            let (sendBuffer, receiveBuffer) = (sendBuffer.raw.assumingMemoryBound(to: Element.self), receiveBuffer.raw.assumingMemoryBound(to: Element.self))
            copy(
                sends[step], .pack, tensor: shard.keyValueStorage.raw.assumingMemoryBound(to: Element.self), valuesOffset: shard.keyRows * kvWidth,
                packed: sendBuffer)
            receiving = try communicator.irecv(UnsafeMutableBufferPointer(start: receiveBuffer, count: receiveCount), from: from, tag: step)
            send = try communicator.isend(UnsafeBufferPointer(start: sendBuffer, count: sendCount), to: to, tag: step)
        }
        if shard.elementType == .f32 { try post(Float.self) } else { try post(UInt16.self) }
    }

    /// Waits for step `step`'s exchange and unpacks what arrived: the owner's keys, as far as
    /// this rank reads them.
    func receive(_ step: Int) throws -> KeyValues {
        try communicator.wait(&send)
        try communicator.wait(&receiving)
        let ownerRows = rows[owner(step)]
        func unpack<Element>(_: Element.Type) {
            copy(
                receives[step], .unpack, tensor: block.raw.assumingMemoryBound(to: Element.self), valuesOffset: ownerRows * kvWidth,
                packed: receiveBuffer.raw.assumingMemoryBound(to: Element.self))
        }
        recording(.merge, on: communicator.recorder) { if shard.elementType == .f32 { unpack(Float.self) } else { unpack(UInt16.self) } }
        return KeyValues(keyValues: KeyValueRows(block.rows, valuesOffset: ownerRows * kvWidth), rows: ownerRows, segments: segments[owner(step)])
    }

    /// Lets MPI progress the posted transfers between query tiles (a failure resurfaces from the waits).
    func progress() {
        _ = try? communicator.test(&send)
        _ = try? communicator.test(&receiving)
    }

    enum Direction { case pack, unpack, add }

    /// Moves `pieces` between a K/V (or dK/dV) pair of [rows, kvHeads, headDim] tensors, the V
    /// one `valuesOffset` elements after the K one, and the packed form that travels: each piece's
    /// K rows, then its V rows. (`.add` is for float32 gradients.)
    func copy<Element>(
        _ pieces: [S2Attention.Piece], _ direction: Direction, tensor: UnsafeMutablePointer<Element>, valuesOffset: Int,
        packed: UnsafeMutablePointer<Element>
    ) {
        let d = headDim
        var at = 0
        for piece in pieces {
            for half in 0 ..< 2 {
                let base = tensor + half * valuesOffset
                for (i, row) in piece.rows.enumerated() {
                    let (t, p) = (base + row * kvWidth + piece.kvHead * d, packed + at + i * d)
                    switch direction {
                    case .pack: p.update(from: t, count: d)
                    case .unpack: t.update(from: p, count: d)
                    case .add:
                        let (t, p) = (UnsafeMutableRawPointer(t).assumingMemoryBound(to: Float.self), UnsafeRawPointer(p).assumingMemoryBound(to: Float.self))
                        precondition(Element.self == Float.self, "only float32 gradients are added")
                        for c in 0 ..< d { t[c] += p[c] }
                    }
                }
                at += piece.rows.count * d
            }
        }
    }
}

extension S2Attention {
    /// Elements of `pieces` packed (K/V in the job's type, dK/dV float32): each piece's K (or dK)
    /// rows, then its V (or dV) rows.
    static func floats(_ pieces: [Piece], headDim: Int) -> Int { pieces.reduce(0) { $0 + 2 * $1.rows.count * headDim } }

    public var backwardRefusal: String? { nil }

    /// The forward's routes, mirrored: at step s a rank receives from r-s the K/V pieces its
    /// queries read (as the forward does), computes dQ and that owner's dK/dV for those pieces
    /// only, and sends them back to r-s, while r+s returns the dK/dV of the pieces this rank sent
    /// it, which are added into this rank's own. So the backward, too, moves only what the
    /// pattern reads. The gradient exchange of one step overlaps the next step's compute.
    public func backward(
        _ shard: LocalShard, forward: PartialResult, outputGrad: UnsafePointer<Float>, job: AttentionJob,
        communicator: Communicator
    ) throws -> ShardGradients {
        guard case let .s2(pattern) = job.mask else {
            return try RingAttention(layout: .zigzag).backward(shard, forward: forward, outputGrad: outputGrad, job: job, communicator: communicator)
        }
        let exchange = PieceExchange(pattern: pattern, shape: job.shape, shard: shard, communicator: communicator)
        let (ranks, me, kvWidth) = (exchange.ranks, communicator.rank, job.shape.kvRowWidth)
        let gradients = GradientAccumulator(forward: forward, outputGrad: outputGrad)
        let kernel = job.backwardKernel()
        let most = { (lists: [[Piece]]) in max(1, lists.map(exchange.floats).max() ?? 0) }
        // Requests point into these until their waits: the owners are kept alive to the end (below).
        let owners = (
            keyValueGrads: OwnedBuffer<Float>(repeating: 0, count: max(1, 2 * shard.keyRows * kvWidth)),
            // an owner's dK/dV from this rank's queries, packed to go back; what comes back
            partial: OwnedBuffer<Float>(uninitializedCount: exchange.blockCount),
            gradientSend: OwnedBuffer<Float>(uninitializedCount: most(exchange.receives)),
            gradientReceive: OwnedBuffer<Float>(uninitializedCount: most(exchange.sends))
        )
        let (keyValueGrads, partial) = (owners.keyValueGrads.baseAddress, owners.partial.baseAddress)
        var gradientSend = Request(), gradientReceive = Request()
        // Gradient tags after the K/V exchange's (0 ..< ranks), so the two streams never match.
        let gradientTag = { (step: Int) in ranks + step }
        func progress() {
            exchange.progress()
            _ = try? communicator.test(&gradientSend)
            _ = try? communicator.test(&gradientReceive)
        }
        func fold(_ keys: KeyValues, keyGrad: UnsafeMutablePointer<Float>, valueGrad: UnsafeMutablePointer<Float>) {
            recording(.compute, on: communicator.recorder) {
                for querySegment in shard.querySegments {
                    for keySegment in keys.segments {
                        kernel.accumulate(
                            queries: shard.queryElements, outputGrad: outputGrad, querySegment: querySegment,
                            keyValues: keys.keyValues, keySegment: keySegment, into: gradients,
                            keyGrad: keyGrad, valueGrad: valueGrad, progress: progress)
                    }
                }
            }
        }
        /// Waits for step `step`'s gradient exchange and adds what came back into this rank's dK/dV.
        func finishGradients(_ step: Int) throws {
            try communicator.wait(&gradientSend)
            try communicator.wait(&gradientReceive)
            recording(.merge, on: communicator.recorder) {
                exchange.copy(
                    exchange.sends[step], .add, tensor: keyValueGrads, valuesOffset: shard.keyRows * kvWidth,
                    packed: owners.gradientReceive.baseAddress)
            }
        }

        if ranks > 1 { try exchange.post(1) }
        fold(exchange.own, keyGrad: keyValueGrads, valueGrad: keyValueGrads + shard.keyRows * kvWidth)
        for step in 1 ..< max(1, ranks) {
            let received = try exchange.receive(step)
            if step + 1 < ranks { try exchange.post(step + 1) }
            let ownerKeys = received.rows * kvWidth
            partial.update(repeating: 0, count: 2 * ownerKeys)
            fold(received, keyGrad: partial, valueGrad: partial + ownerKeys)
            if step > 1 { try finishGradients(step - 1) }
            exchange.copy(exchange.receives[step], .pack, tensor: partial, valuesOffset: ownerKeys, packed: owners.gradientSend.baseAddress)
            gradientReceive = try communicator.irecv(
                UnsafeMutableBufferPointer(rebasing: owners.gradientReceive.buffer[0 ..< exchange.floats(exchange.sends[step])]),
                from: (me + step) % ranks, tag: gradientTag(step))
            gradientSend = try communicator.isend(
                UnsafeBufferPointer(rebasing: owners.gradientSend.buffer[0 ..< exchange.floats(exchange.receives[step])]),
                to: exchange.owner(step), tag: gradientTag(step))
        }
        if ranks > 1 { try finishGradients(ranks - 1) }
        return withExtendedLifetime(owners) {
            ShardGradients(
                gradients,
                keyValueGrads: UnsafeMutableBufferPointer(rebasing: owners.keyValueGrads.buffer[0 ..< 2 * shard.keyRows * kvWidth]))
        }
    }
}

extension S2Attention {
    public var label: String { "s2" }

    public static let descriptor = StrategyDescriptor(
        name: "s2",
        summary: "point to point: each rank gets only the K/V each head reads under the S2 pattern (per kv head); any other mask as zigzag does",
        // Its --s2-* pattern is a mask, which every strategy takes: no options of its own.
        make: { _ in S2Attention() })
}
