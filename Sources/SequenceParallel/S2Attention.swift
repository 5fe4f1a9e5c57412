// S2-Attention across ranks. Queries stay where they are (zigzag shards, since the pattern is
// causal); each rank receives, from every other rank, only the pieces (a key block's rows for one
// kv head) that its queries' heads read under the pattern — the local band's neighbours and the
// heads' vertical strides — point to point, rank r+s and r-s at step s, the next exchange posted
// before the current block is computed. The kernel computes only the active block pairs, so
// FLOPs and bytes both fall with the pattern's density.

import AttentionCore
import Buffers
import MPIBinding
import Profiling

/// S2-Attention across zigzag shards: each rank receives, point to point, only the K/V pieces its queries'
/// heads read under the S2 pattern, and the kernel computes only the active block pairs.
public struct S2Attention: SequenceParallelStrategy {
    public var inputLayout: TokenLayout { .zigzag }
    public let pattern: S2Pattern?

    /// - Parameter pattern: nil when the mask is not an S2 pattern, which `check` refuses.
    public init(pattern: S2Pattern?) { self.pattern = pattern }

    public func check(heads: Int, ranks: Int) throws {
        guard pattern != nil else {
            throw StrategyRefusal(description: "the s2 strategy computes the S2 pattern: give --s2-block, --s2-local and --s2-stride")
        }
    }

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
        guard case let .s2(pattern) = job.mask else { preconditionFailure("check() refuses s2 without its pattern") }
        let shape = job.shape, d = shape.headDim, kvWidth = shape.kvRowWidth
        let (ranks, me) = (communicator.size, communicator.rank)
        let segments = (0 ..< ranks).map(shard.partition.stackedSegments)
        let rows = segments.map(LocalShard.rows)
        // Everything the loop needs, derived before it: what goes to r+s and comes from r-s.
        let sends = (0 ..< ranks).map { s in
            s == 0 ? [] : Self.pieces(pattern: pattern, shape: shape, ownerSegments: segments[me], receiverSegments: segments[(me + s) % ranks])
        }
        let receives = (0 ..< ranks).map { s in
            s == 0 ? [] : Self.pieces(pattern: pattern, shape: shape, ownerSegments: segments[(me - s + ranks) % ranks], receiverSegments: segments[me])
        }
        func floats(_ pieces: [Piece]) -> Int { pieces.reduce(0) { $0 + 2 * $1.rows.count * d } }
        // Requests point into these until their waits: the owners are kept alive to the end (below).
        let owners = (
            send: OwnedBuffer<Float>(uninitializedCount: max(1, sends.map(floats).max() ?? 0)),
            receive: OwnedBuffer<Float>(uninitializedCount: max(1, receives.map(floats).max() ?? 0)),
            // pieces not sent are never read: the mask hides them
            block: OwnedBuffer<Float>(repeating: 0, count: max(1, 2 * (rows.max() ?? 0) * kvWidth))
        )
        let (sendBuffer, receiveBuffer, block) = (owners.send.buffer, owners.receive.buffer, owners.block.buffer)

        var send = Request(), receive = Request()
        /// Copies `piece`'s rows of one kv head between a [rows, kvHeads, d] tensor and packed rows.
        func copy(_ piece: Piece, tensor: UnsafeMutablePointer<Float>, packed: UnsafeMutablePointer<Float>, packing: Bool) {
            for (i, row) in piece.rows.enumerated() {
                let (t, p) = (tensor + row * kvWidth + piece.kvHead * d, packed + i * d)
                if packing { p.update(from: t, count: d) } else { t.update(from: p, count: d) }
            }
        }
        func post(_ step: Int) throws {
            var at = 0
            for piece in sends[step] {  // K rows, then V rows, of each piece
                copy(piece, tensor: shard.keys, packed: sendBuffer.baseAddress! + at, packing: true)
                copy(piece, tensor: shard.values, packed: sendBuffer.baseAddress! + at + piece.rows.count * d, packing: true)
                at += 2 * piece.rows.count * d
            }
            receive = try communicator.irecv(
                UnsafeMutableBufferPointer(rebasing: receiveBuffer[0 ..< floats(receives[step])]),
                from: (me - step + ranks) % ranks, tag: step)
            send = try communicator.isend(UnsafeBufferPointer(rebasing: sendBuffer[0 ..< at]), to: (me + step) % ranks, tag: step)
        }
        func unpack(_ step: Int, ownerRows: Int) {
            var at = 0
            for piece in receives[step] {
                copy(piece, tensor: block.baseAddress!, packed: receiveBuffer.baseAddress! + at, packing: false)
                copy(piece, tensor: block.baseAddress! + ownerRows * kvWidth, packed: receiveBuffer.baseAddress! + at + piece.rows.count * d, packing: false)
                at += 2 * piece.rows.count * d
            }
        }

        let accumulator = AttentionAccumulator(rows: shard.queryRows, heads: shape.heads, headDim: d)
        let progress = {
            _ = try? communicator.test(&send)
            _ = try? communicator.test(&receive)
        }
        func fold(keys: UnsafePointer<Float>, values: UnsafePointer<Float>, keySegments: [ShardSegment]) {
            for querySegment in shard.querySegments {
                for keySegment in keySegments {
                    job.kernel.accumulate(
                        queries: shard.queries.baseAddress!, querySegment: querySegment, keys: keys, values: values,
                        keySegment: keySegment, into: accumulator, recorder: communicator.recorder, progress: progress)
                }
            }
        }
        if ranks > 1 { try post(1) }
        fold(keys: shard.keys, values: shard.values, keySegments: shard.keySegments)
        for step in 1 ..< max(1, ranks) {
            try communicator.wait(&send)
            try communicator.wait(&receive)
            let owner = (me - step + ranks) % ranks
            recording(.merge, on: communicator.recorder) { unpack(step, ownerRows: rows[owner]) }
            if step + 1 < ranks { try post(step + 1) }
            fold(keys: block.baseAddress!, values: block.baseAddress! + rows[owner] * kvWidth, keySegments: segments[owner])
        }
        withExtendedLifetime(owners) {}
        return accumulator.result()
    }
}

extension S2Attention {
    public var backwardRefusal: String? { nil }

    /// The ring backward over the same zigzag shards, with the S2 mask: the kernel computes only
    /// the active block pairs, but every K/V block travels the whole ring (the forward's
    /// pattern-aware point-to-point routing is not mirrored for the gradients).
    public func backward(
        _ shard: LocalShard, forward: PartialResult, outputGrad: UnsafePointer<Float>, job: AttentionJob,
        communicator: Communicator
    ) throws -> ShardGradients {
        try RingAttention(layout: .zigzag).backward(shard, forward: forward, outputGrad: outputGrad, job: job, communicator: communicator)
    }
}

extension S2Attention {
    public var label: String { "s2" }

    public static let descriptor = StrategyDescriptor(
        name: "s2", summary: "S2 block-sparse pattern: only active blocks computed, only the K/V blocks each head reads are sent",
        options: ["--s2-block", "--s2-local", "--s2-stride"],
        sharding: "zigzag chunks; each rank receives point to point only the (key block, kv head) pieces its heads read",
        make: { request in
            if case let .s2(pattern) = request.mask { return S2Attention(pattern: pattern) }
            return S2Attention(pattern: nil)
        })
}
