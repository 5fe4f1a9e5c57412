// The fused local attention kernel, FlashAttention-style, on one rank's CPU cores.
//
// For a tile of queries of one head it walks key blocks: S = scale·Q·Kᵀ (cblas_sgemm, reading
// Q and K in place through leading dimensions, so GQA/MQA never copy K/V per query head), clips
// rows the mask cuts, turns S into P = exp(S - running max) with a vectorised exp, rescales the
// running sum, and adds P·V (cblas_sgemm, beta 1) straight into the accumulator, whose layout is
// O's. Blocks the mask hides are skipped before any arithmetic. Scratch is allocated once per
// kernel, never per block. What it does not do: normalise (the accumulator's `finish` does), or
// know about ranks (a strategy hands it the key blocks it holds, with their global positions).

import CBLAS
import Dispatch

/// The query heads a kernel computes (global indices, for the mask and the GQA mapping) and the
/// kv heads they read. Q and O rows hold just these heads; K and V rows just these kv heads.
public struct HeadSlice: Equatable, Sendable {
    public let heads: Range<Int>
    public let kvHeads: Range<Int>

    /// Heads `heads` of `shape`, with the kv heads they read.
    public init(_ heads: Range<Int>, of shape: AttentionShape) {
        precondition(heads.lowerBound >= 0 && heads.upperBound <= shape.heads)
        self.heads = heads
        kvHeads = heads.isEmpty ? 0 ..< 0 : shape.kvHead(of: heads.lowerBound) ..< shape.kvHead(of: heads.upperBound - 1) + 1
    }

    public static func all(_ shape: AttentionShape) -> HeadSlice { HeadSlice(0 ..< shape.heads, of: shape) }
}

/// Tile sizes of the kernel. Query tiles are the unit of parallel work; key blocks bound scratch.
public struct KernelTiling: Equatable, Sendable {
    public var queryTile: Int
    public var keyBlock: Int

    public init(queryTile: Int = 384, keyBlock: Int = 512) {
        precondition(queryTile > 0 && keyBlock > 0)
        self.queryTile = queryTile
        self.keyBlock = keyBlock
    }
}

public final class LocalAttention {
    public let shape: AttentionShape
    public let mask: AttentionMask
    public let tiling: KernelTiling
    public let slice: HeadSlice
    /// Threads that run query tiles concurrently (each with one-thread BLAS calls of its own).
    public let threads: Int

    /// Per thread: scores [queryTile, keyBlock] and row rescale factors [queryTile].
    private let scratch: [UnsafeMutableBufferPointer<Float>]
    /// Per thread: FLOPs of the blocks computed (4·headDim per score, masked or not).
    private let flopCounts: UnsafeMutableBufferPointer<Double>

    /// FLOPs this kernel has spent so far: the work it did, which block skipping reduces.
    public var computedFlops: Double { flopCounts.reduce(0, +) }

    /// - Parameter slice: the heads to compute; all of them by default.
    public init(shape: AttentionShape, mask: AttentionMask, tiling: KernelTiling = KernelTiling(), threads: Int = 1,
                slice: HeadSlice? = nil) {
        self.shape = shape
        self.slice = slice ?? .all(shape)
        self.mask = mask
        self.tiling = tiling
        self.threads = max(1, threads)
        let perThread = tiling.queryTile * tiling.keyBlock + tiling.queryTile
        scratch = (0 ..< self.threads).map { _ in
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: perThread)
            buffer.initialize(repeating: 0)
            return buffer
        }
        flopCounts = .allocate(capacity: self.threads)
        flopCounts.initialize(repeating: 0)
    }

    deinit {
        scratch.forEach { $0.deallocate() }
        flopCounts.deallocate()
    }

    /// Folds the keys of `keySegment` into the accumulator rows of `querySegment`.
    ///
    /// - Parameters:
    ///   - queries: row 0 of the query shard ([rows, slice heads, headDim]); the segment says which rows.
    ///   - keys, values: row 0 of a K/V shard ([rows, slice kv heads, headDim]).
    ///   - progress: called by the calling thread between its query tiles, so a strategy can let
    ///     MPI progress the transfers it posted before computing.
    public func accumulate(queries: UnsafePointer<Float>, querySegment: ShardSegment,
                           keys: UnsafePointer<Float>, values: UnsafePointer<Float>, keySegment: ShardSegment,
                           into accumulator: AttentionAccumulator, progress: () -> Void = {}) {
        precondition(accumulator.heads == slice.heads.count && accumulator.headDim == shape.headDim)
        precondition(querySegment.localRow + querySegment.positions.count <= accumulator.rows)
        let queryCount = querySegment.positions.count
        guard queryCount > 0, !keySegment.positions.isEmpty else { return }
        let tiles = (queryCount + tiling.queryTile - 1) / tiling.queryTile
        let items = slice.heads.count * tiles
        let work = { (thread: Int, item: Int) in
            let head = item / tiles          // local index within the slice
            let first = (item % tiles) * self.tiling.queryTile
            self.foldTile(head: head, queries: queries, querySegment: querySegment,
                          tileRows: first ..< min(queryCount, first + self.tiling.queryTile),
                          keys: keys, values: values, keySegment: keySegment,
                          accumulator: accumulator, scratch: self.scratch[thread], flops: self.flopCounts.baseAddress! + thread)
        }
        // Interleaved items even out causal tiles, whose cost grows along the sequence. Items write
        // disjoint (head, rows) parts of the accumulator and use their thread's scratch. The calling
        // thread takes every threads-th item itself and calls `progress` between them, so MPI is
        // driven from the thread that called it (MPI_THREAD_FUNNELED) however many threads compute.
        let threads = self.threads
        let others = DispatchGroup()
        if threads > 1 {
            nonisolated(unsafe) let body = work
            DispatchQueue.global().async(group: others) {
                DispatchQueue.concurrentPerform(iterations: threads - 1) { helper in
                    for item in stride(from: helper + 1, to: items, by: threads) { body(helper + 1, item) }
                }
            }
        }
        for item in stride(from: 0, to: items, by: threads) {
            work(0, item)
            progress()
        }
        others.wait()
    }

    /// One head (local to the slice), one query tile (rows relative to the segment), every key
    /// block of the segment.
    @inline(__always)
    private func foldTile(head: Int, queries: UnsafePointer<Float>, querySegment: ShardSegment, tileRows: Range<Int>,
                          keys: UnsafePointer<Float>, values: UnsafePointer<Float>, keySegment: ShardSegment,
                          accumulator: AttentionAccumulator, scratch: UnsafeMutableBufferPointer<Float>, flops: UnsafeMutablePointer<Double>) {
        let d = shape.headDim
        let qStride = slice.heads.count * d
        let kvStride = slice.kvHeads.count * d
        let globalHead = slice.heads.lowerBound + head
        let kvHead = shape.kvHead(of: globalHead) - slice.kvHeads.lowerBound
        let tq = tileRows.count
        let queryPositions = (querySegment.positions.lowerBound + tileRows.lowerBound) ..< (querySegment.positions.lowerBound + tileRows.upperBound)
        let accRow = querySegment.localRow + tileRows.lowerBound
        let q = queries + (accRow * qStride + head * d)
        let acc = accumulator.sum.baseAddress! + (accRow * qStride + head * d)
        let stateBase = head * accumulator.rows + accRow
        let rowMax = accumulator.rowMax.baseAddress! + stateBase
        let rowSum = accumulator.rowSum.baseAddress! + stateBase
        let scores = scratch.baseAddress!
        let alphas = scratch.baseAddress! + tiling.queryTile * tiling.keyBlock

        let keyCount = keySegment.positions.count
        var blockStart = 0
        while blockStart < keyCount {
            let blockFirst = keySegment.positions.lowerBound + blockStart
            var blockLength = min(tiling.keyBlock, keyCount - blockStart)
            if let alignment = mask.keyBlockAlignment { blockLength = min(blockLength, (blockFirst / alignment + 1) * alignment - blockFirst) }
            defer { blockStart += blockLength }
            var keyPositions = blockFirst ..< blockFirst + blockLength
            let relation = mask.relation(queries: queryPositions, keys: keyPositions, head: globalHead)
            if relation == .hidden { continue }
            if relation == .partial {     // diagonal blocks: skip the keys no row of the tile sees
                keyPositions = mask.visibleSpan(queries: queryPositions, keys: keyPositions, head: globalHead)
            }
            let tk = keyPositions.count
            flops.pointee += Double(4 * tq * tk * d)
            let kvRow = keySegment.localRow + keyPositions.lowerBound - keySegment.positions.lowerBound
            let k = keys + (kvRow * kvStride + kvHead * d)
            let v = values + (kvRow * kvStride + kvHead * d)

            // S = scale · Q_tile · K_blockᵀ, [tq, tk]
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(tq), Int32(tk), Int32(d),
                        shape.scale, q, Int32(qStride), k, Int32(kvStride), 0, scores, Int32(tk))
            if relation == .partial {
                clipRows(scores, rows: tq, columns: tk, queryPositions: queryPositions, keyPositions: keyPositions, head: globalHead)
            }
            for r in 0 ..< tq {
                alphas[r] = softmaxRow(scores + r * tk, count: tk, rowMax: &rowMax[r], rowSum: &rowSum[r])
            }
            // Rescale the running sums whose max moved, then acc += P · V_block.
            for r in 0 ..< tq where alphas[r] != 1 {
                scaleRow(acc + r * qStride, count: d, by: alphas[r])
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(tq), Int32(d), Int32(tk),
                        1, scores, Int32(tk), v, Int32(kvStride), 1, acc, Int32(qStride))
        }
    }

    /// Sets the scores the mask hides to -inf, row by row.
    private func clipRows(_ scores: UnsafeMutablePointer<Float>, rows: Int, columns: Int,
                          queryPositions: Range<Int>, keyPositions: Range<Int>, head: Int) {
        for r in 0 ..< rows {
            let visible = mask.visibleKeys(query: queryPositions.lowerBound + r, head: head, within: keyPositions)
            let row = scores + r * columns
            let lo = visible.isEmpty ? columns : visible.lowerBound - keyPositions.lowerBound
            let hi = visible.isEmpty ? columns : visible.upperBound - keyPositions.lowerBound
            if lo > 0 { row.update(repeating: -.infinity, count: lo) }
            if hi < columns { (row + hi).update(repeating: -.infinity, count: columns - hi) }
        }
    }

    /// Turns one row of scores into unnormalised probabilities against the updated running max,
    /// updates the running max and sum, and returns the factor that rescales the old running sum.
    @inline(__always)
    private func softmaxRow(_ row: UnsafeMutablePointer<Float>, count: Int,
                            rowMax: inout Float, rowSum: inout Float) -> Float {
        let width = FloatVector.scalarCount
        var maxes = FloatVector(repeating: -.infinity)
        var c = 0
        while c + width <= count {
            maxes = vectorMax(maxes, loadVector(row + c))
            c += width
        }
        var blockMax = maxes.max()
        while c < count {
            blockMax = max(blockMax, row[c])
            c += 1
        }
        let newMax = max(rowMax, blockMax)
        if newMax == -.infinity {            // nothing visible to this row yet: P = 0, state unchanged
            row.update(repeating: 0, count: count)
            return 1
        }
        let shift = FloatVector(repeating: newMax)
        var sums = FloatVector()
        c = 0
        while c + width <= count {
            let p = vectorExp(loadVector(row + c) - shift)
            storeVector(p, row + c)
            sums += p
            c += width
        }
        if c < count {                        // the tail, padded with -inf lanes that give 0
            var tail = FloatVector(repeating: -.infinity)
            for i in 0 ..< count - c { tail[i] = row[c + i] }
            let p = vectorExp(tail - shift)
            for i in 0 ..< count - c { row[c + i] = p[i] }
            sums += p
        }
        let alpha = rowMax == -.infinity ? 0 : vectorExp(FloatVector(repeating: rowMax - newMax))[0]
        rowSum = rowSum * alpha + sums.sum()
        rowMax = newMax
        return alpha
    }

    @inline(__always)
    private func scaleRow(_ row: UnsafeMutablePointer<Float>, count: Int, by factor: Float) {
        let width = FloatVector.scalarCount
        var c = 0
        while c + width <= count {
            storeVector(loadVector(row + c) * factor, row + c)
            c += width
        }
        while c < count {
            row[c] *= factor
            c += 1
        }
    }
}

extension LocalAttention {
    /// Whole-sequence attention on one rank (positions are row indices): the single-rank result.
    public func attention(q: TokenTensor, k: TokenTensor, v: TokenTensor) -> PartialResult {
        let accumulator = AttentionAccumulator(rows: q.tokens, heads: slice.heads.count, headDim: shape.headDim)
        guard q.tokens > 0, k.tokens > 0 else { return accumulator.result() }
        q.values.withUnsafeBufferPointer { qb in
            k.values.withUnsafeBufferPointer { kb in
                v.values.withUnsafeBufferPointer { vb in
                    accumulate(queries: qb.baseAddress!, querySegment: ShardSegment(positions: 0 ..< q.tokens, localRow: 0),
                               keys: kb.baseAddress!, values: vb.baseAddress!,
                               keySegment: ShardSegment(positions: 0 ..< k.tokens, localRow: 0),
                               into: accumulator)
                }
            }
        }
        return accumulator.result()
    }
}
