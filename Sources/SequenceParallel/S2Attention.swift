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

    /// Every step's pieces for one rank, derived before the loop: at step s it sends its keys'
    /// pieces that rank r+s reads (`sends[s]`) and receives those of rank r-s that it reads
    /// (`receives[s]`); the backward returns gradients for the same pieces the other way.
    struct Routes {
        let segments: [[ShardSegment]]
        let rows: [Int]
        let sends: [[Piece]]
        let receives: [[Piece]]
        let headDim: Int

        init(pattern: S2Pattern, shape: AttentionShape, shard: LocalShard, ranks: Int, me: Int) {
            segments = (0 ..< ranks).map(shard.partition.stackedSegments)
            rows = segments.map(LocalShard.rows)
            headDim = shape.headDim
            sends = (0 ..< ranks).map { [segments] s in
                s == 0 ? [] : S2Attention.pieces(pattern: pattern, shape: shape, ownerSegments: segments[me], receiverSegments: segments[(me + s) % ranks])
            }
            receives = (0 ..< ranks).map { [segments] s in
                s == 0
                    ? [] : S2Attention.pieces(pattern: pattern, shape: shape, ownerSegments: segments[(me - s + ranks) % ranks], receiverSegments: segments[me])
            }
        }

        /// Floats of `pieces` packed: each piece's K (or dK) rows, then its V (or dV) rows.
        func floats(_ pieces: [Piece]) -> Int { pieces.reduce(0) { $0 + 2 * $1.rows.count * headDim } }
    }

    enum PieceCopy { case pack, unpack, add }

    /// Moves `pieces` between a K/V (or dK/dV) pair of [rows, kvHeads, headDim] tensors, the V
    /// one `valuesOffset` floats after the K one, and the packed form that travels.
    static func copy(
        _ pieces: [Piece], _ direction: PieceCopy, tensor: UnsafeMutablePointer<Float>, valuesOffset: Int,
        packed: UnsafeMutablePointer<Float>, kvWidth: Int, headDim d: Int
    ) {
        var at = 0
        for piece in pieces {
            for half in 0 ..< 2 {
                let base = tensor + half * valuesOffset
                for (i, row) in piece.rows.enumerated() {
                    let (t, p) = (base + row * kvWidth + piece.kvHead * d, packed + at + i * d)
                    switch direction {
                    case .pack: p.update(from: t, count: d)
                    case .unpack: t.update(from: p, count: d)
                    case .add: for c in 0 ..< d { t[c] += p[c] }
                    }
                }
                at += piece.rows.count * d
            }
        }
    }

    public func attend(_ shard: LocalShard, job: AttentionJob, communicator: Communicator) throws -> PartialResult {
        guard case let .s2(pattern) = job.mask else { preconditionFailure("check() refuses s2 without its pattern") }
        let shape = job.shape, d = shape.headDim, kvWidth = shape.kvRowWidth
        let (ranks, me) = (communicator.size, communicator.rank)
        let routes = Routes(pattern: pattern, shape: shape, shard: shard, ranks: ranks, me: me)
        let (segments, rows, sends, receives) = (routes.segments, routes.rows, routes.sends, routes.receives)
        let floats = routes.floats
        // Requests point into these until their waits: the owners are kept alive to the end (below).
        let owners = (
            send: OwnedBuffer<Float>(uninitializedCount: max(1, sends.map(floats).max() ?? 0)),
            receive: OwnedBuffer<Float>(uninitializedCount: max(1, receives.map(floats).max() ?? 0)),
            // pieces not sent are never read: the mask hides them
            block: OwnedBuffer<Float>(repeating: 0, count: max(1, 2 * (rows.max() ?? 0) * kvWidth))
        )
        let (sendBuffer, receiveBuffer, block) = (owners.send.buffer, owners.receive.buffer, owners.block.buffer)

        var send = Request(), receive = Request()
        func post(_ step: Int) throws {
            Self.copy(
                sends[step], .pack, tensor: shard.keys, valuesOffset: shard.keyRows * kvWidth, packed: sendBuffer.baseAddress!,
                kvWidth: kvWidth, headDim: d)
            receive = try communicator.irecv(
                UnsafeMutableBufferPointer(rebasing: receiveBuffer[0 ..< floats(receives[step])]),
                from: (me - step + ranks) % ranks, tag: step)
            send = try communicator.isend(
                UnsafeBufferPointer(rebasing: sendBuffer[0 ..< floats(sends[step])]), to: (me + step) % ranks, tag: step)
        }
        func unpack(_ step: Int, ownerRows: Int) {
            Self.copy(
                receives[step], .unpack, tensor: block.baseAddress!, valuesOffset: ownerRows * kvWidth,
                packed: receiveBuffer.baseAddress!, kvWidth: kvWidth, headDim: d)
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

    /// The forward's routes, mirrored: at step s a rank receives from r-s the K/V pieces its
    /// queries read (as the forward does), computes dQ and that owner's dK/dV for those pieces
    /// only, and sends them back to r-s, while r+s returns the dK/dV of the pieces this rank sent
    /// it, which are added into this rank's own. So the backward, too, moves only what the
    /// pattern reads. The gradient exchange of one step overlaps the next step's compute.
    public func backward(
        _ shard: LocalShard, forward: PartialResult, outputGrad: UnsafePointer<Float>, job: AttentionJob,
        communicator: Communicator
    ) throws -> ShardGradients {
        guard case let .s2(pattern) = job.mask else { preconditionFailure("check() refuses s2 without its pattern") }
        let shape = job.shape, d = shape.headDim, kvWidth = shape.kvRowWidth
        let (ranks, me) = (communicator.size, communicator.rank)
        let routes = Routes(pattern: pattern, shape: shape, shard: shard, ranks: ranks, me: me)
        let (segments, rows, sends, receives) = (routes.segments, routes.rows, routes.sends, routes.receives)
        let most = { (lists: [[Piece]]) in max(1, lists.map(routes.floats).max() ?? 0) }
        let gradients = forward.output.withUnsafeBufferPointer { o in
            forward.lse.withUnsafeBufferPointer { l in
                GradientAccumulator(
                    rows: shard.queryRows, heads: shape.heads, headDim: d,
                    output: o.baseAddress!, outputGrad: outputGrad, lse: l.baseAddress!)
            }
        }
        let kernel = job.backwardKernel()
        // Requests point into these until their waits: the owners are kept alive to the end (below).
        let owners = (
            keyValueGrads: OwnedBuffer<Float>(repeating: 0, count: max(1, 2 * shard.keyRows * kvWidth)),
            send: OwnedBuffer<Float>(uninitializedCount: most(sends)),
            receive: OwnedBuffer<Float>(uninitializedCount: most(receives)),
            // pieces not received are never read: the mask hides them
            block: OwnedBuffer<Float>(repeating: 0, count: max(1, 2 * (rows.max() ?? 0) * kvWidth)),
            // an owner's dK/dV from this rank's queries, then packed to go back; what comes back
            partial: OwnedBuffer<Float>(uninitializedCount: max(1, 2 * (rows.max() ?? 0) * kvWidth)),
            gradientSend: OwnedBuffer<Float>(uninitializedCount: most(receives)),
            gradientReceive: OwnedBuffer<Float>(uninitializedCount: most(sends))
        )
        let keyValueGrads = owners.keyValueGrads.baseAddress, block = owners.block.baseAddress, partial = owners.partial.baseAddress
        var send = Request(), receive = Request(), gradientSend = Request(), gradientReceive = Request()
        // Gradient tags after the K/V exchange's (0 ..< ranks), so the two streams never match.
        let gradientTag = { (step: Int) in ranks + step }
        func testAll() {  // progress only: a failure resurfaces from the waits
            _ = try? communicator.test(&send)
            _ = try? communicator.test(&receive)
            _ = try? communicator.test(&gradientSend)
            _ = try? communicator.test(&gradientReceive)
        }
        func post(_ step: Int) throws {
            Self.copy(
                sends[step], .pack, tensor: shard.keys, valuesOffset: shard.keyRows * kvWidth, packed: owners.send.baseAddress,
                kvWidth: kvWidth, headDim: d)
            receive = try communicator.irecv(
                UnsafeMutableBufferPointer(rebasing: owners.receive.buffer[0 ..< routes.floats(receives[step])]),
                from: (me - step + ranks) % ranks, tag: step)
            send = try communicator.isend(
                UnsafeBufferPointer(rebasing: owners.send.buffer[0 ..< routes.floats(sends[step])]), to: (me + step) % ranks, tag: step)
        }
        /// Waits for step `step`'s gradient exchange and adds what came back into this rank's dK/dV.
        func finishGradients(_ step: Int) throws {
            try communicator.wait(&gradientSend)
            try communicator.wait(&gradientReceive)
            recording(.merge, on: communicator.recorder) {
                Self.copy(
                    sends[step], .add, tensor: keyValueGrads, valuesOffset: shard.keyRows * kvWidth,
                    packed: owners.gradientReceive.baseAddress, kvWidth: kvWidth, headDim: d)
            }
        }
        func fold(
            keys: UnsafePointer<Float>, values: UnsafePointer<Float>, keySegments: [ShardSegment], keyGrad: UnsafeMutablePointer<Float>, valueGrad: UnsafeMutablePointer<Float>
        ) {
            recording(.compute, on: communicator.recorder) {
                for querySegment in shard.querySegments {
                    for keySegment in keySegments {
                        kernel.accumulate(
                            queries: shard.queries.baseAddress!, outputGrad: outputGrad, querySegment: querySegment,
                            keys: keys, values: values, keySegment: keySegment, into: gradients,
                            keyGrad: keyGrad, valueGrad: valueGrad, progress: testAll)
                    }
                }
            }
        }

        if ranks > 1 { try post(1) }
        fold(
            keys: shard.keys, values: shard.values, keySegments: shard.keySegments,
            keyGrad: keyValueGrads, valueGrad: keyValueGrads + shard.keyRows * kvWidth)
        for step in 1 ..< max(1, ranks) {
            try communicator.wait(&send)
            try communicator.wait(&receive)
            let owner = (me - step + ranks) % ranks
            let ownerKeys = rows[owner] * kvWidth
            recording(.merge, on: communicator.recorder) {
                Self.copy(
                    receives[step], .unpack, tensor: block, valuesOffset: ownerKeys, packed: owners.receive.baseAddress,
                    kvWidth: kvWidth, headDim: d)
            }
            if step + 1 < ranks { try post(step + 1) }
            partial.update(repeating: 0, count: 2 * ownerKeys)
            fold(keys: block, values: block + ownerKeys, keySegments: segments[owner], keyGrad: partial, valueGrad: partial + ownerKeys)
            if step > 1 { try finishGradients(step - 1) }
            Self.copy(
                receives[step], .pack, tensor: partial, valuesOffset: ownerKeys, packed: owners.gradientSend.baseAddress,
                kvWidth: kvWidth, headDim: d)
            gradientReceive = try communicator.irecv(
                UnsafeMutableBufferPointer(rebasing: owners.gradientReceive.buffer[0 ..< routes.floats(sends[step])]),
                from: (me + step) % ranks, tag: gradientTag(step))
            gradientSend = try communicator.isend(
                UnsafeBufferPointer(rebasing: owners.gradientSend.buffer[0 ..< routes.floats(receives[step])]), to: owner,
                tag: gradientTag(step))
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
        name: "s2", summary: "S2 block-sparse pattern: only active blocks computed, only the K/V blocks each head reads are sent",
        options: ["--s2-block", "--s2-local", "--s2-stride"],
        sharding: "zigzag chunks; each rank receives point to point only the (key block, kv head) pieces its heads read",
        make: { request in
            if case let .s2(pattern) = request.mask { return S2Attention(pattern: pattern) }
            return S2Attention(pattern: nil)
        })
}
