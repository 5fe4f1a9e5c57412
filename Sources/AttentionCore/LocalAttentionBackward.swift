// The backward kernel, FlashAttention-2 style, on one rank's CPU cores.
//
// For one kv head and one block of keys it walks the query heads that read the kv head and their
// query tiles, recomputes P = exp(scale·Q·Kᵀ − lse) (the forward's lse makes it exact in one pass:
// no max, no sum), and accumulates, with cblas_sgemm for every product:
//     dV_blk += Pᵀ·dO,   dP = dO·Vᵀ,   dS = P ∘ (dP − D),   dQ += scale·dS·K,   dK_blk += scale·dSᵀ·Q
// where D = rowsum(dO ∘ O) is computed once per row (`GradientAccumulator`). dK and dV of the block
// live in per-thread scratch until the block is done, then are added to the caller's rows; so a
// kv head's gradient sums over its query heads (GQA/MQA) without copying K or V per query head.
// Threads take (kv head, key block) items; dQ, which every key block adds to, goes to a buffer per
// thread, summed at the end. Operands are contiguous as in the forward kernel (K/V packed per kv
// head, Q and dO tiles packed, dQ head-major). Masks as in the forward: hidden blocks skipped,
// partial blocks trimmed and clipped; rows that see no key (lse = -inf) get no gradient.
// With bf16 products (a bf16 job on a CPU with bf16 units) the five products take bf16 operands
// (Q, K, V, dO as they are; P and dS rounded, as FlashAttention-2 does) through oneDNN and
// accumulate in float32; P, dP, dS and the gradients are float32 throughout. dQ = dS·K is the one
// product where dS's rounding shows: its terms have both signs and cancel (each row of dS sums to
// 0), and with dS rounded once dQ's RMS error against float64 was 1.035 of PyTorch's bf16 SDPA's.
// So dS goes in as two bf16 parts (high + the low remainder: 16 significant bits) and dQ takes one
// more product; dK and dV, whose errors were 0.6 of PyTorch's, take dS and P rounded once.
// What it does not do: the forward (LocalAttention), or know about ranks.

import BlasRuntime
import Buffers
import CBLAS
import Dispatch
import FileFormats

/// What the backward needs per query row, and where dQ accumulates, for `rows` query rows of
/// `heads` heads: lse and D = rowsum(dO ∘ O), both [heads, rows], and dQ head-major
/// [heads, rows, headDim] (`finish` writes it in Q's layout).
public final class GradientAccumulator {
    public let rows: Int
    public let heads: Int
    public let headDim: Int
    /// [heads, rows]
    public var lse: UnsafeMutableBufferPointer<Float> { lseStorage.buffer }
    /// [heads, rows]: rowsum(dO ∘ O)
    public var delta: UnsafeMutableBufferPointer<Float> { deltaStorage.buffer }
    /// [heads, rows, headDim]
    public var dq: UnsafeMutableBufferPointer<Float> { dqStorage.buffer }
    private let lseStorage: OwnedBuffer<Float>, deltaStorage: OwnedBuffer<Float>, dqStorage: OwnedBuffer<Float>

    /// - Parameters:
    ///   - output, outputGrad: O and dO, [rows, heads, headDim].
    ///   - lse: [heads, lseStride] (lseStride defaults to rows), the forward's.
    public convenience init(
        rows: Int, heads: Int, headDim: Int, output: UnsafePointer<Float>, outputGrad: UnsafePointer<Float>,
        lse: UnsafePointer<Float>, lseStride: Int? = nil
    ) {
        let statistics = Self.rowStatistics(
            rows: rows, heads: heads, headDim: headDim, output: output, outputGrad: outputGrad,
            lse: lse, lseStride: lseStride ?? rows)
        self.init(rows: rows, heads: heads, headDim: headDim, statistics: statistics)
    }

    /// For the rows of a forward result: its O and LSE, and dO ([rows, heads, headDim]).
    public convenience init(forward: PartialResult, outputGrad: UnsafePointer<Float>) {
        let statistics = forward.output.withUnsafeBufferPointer { o in
            forward.lse.withUnsafeBufferPointer { l in
                Self.rowStatistics(
                    rows: forward.rows, heads: forward.heads, headDim: forward.headDim, output: o.baseAddress!,
                    outputGrad: outputGrad, lse: l.baseAddress!, lseStride: forward.rows)
            }
        }
        self.init(rows: forward.rows, heads: forward.heads, headDim: forward.headDim, statistics: statistics)
    }

    /// - Parameter statistics: (lse, D) per row and head, [rows, heads, 2], as `rowStatistics`
    ///   makes them (the form in which the head exchange carries them between ranks).
    public init(rows: Int, heads: Int, headDim: Int, statistics: [Float]) {
        precondition(statistics.count >= rows * heads * 2)
        self.rows = rows
        self.heads = heads
        self.headDim = headDim
        lseStorage = OwnedBuffer(uninitializedCount: max(1, heads * rows))
        deltaStorage = OwnedBuffer(uninitializedCount: max(1, heads * rows))
        dqStorage = OwnedBuffer(repeating: 0, count: max(1, rows * heads * headDim))
        let (lse, delta) = (lseStorage.buffer, deltaStorage.buffer)
        for h in 0 ..< heads {
            for r in 0 ..< rows {
                lse[h * rows + r] = statistics[(r * heads + h) * 2]
                delta[h * rows + r] = statistics[(r * heads + h) * 2 + 1]
            }
        }
    }

    /// (lse, D = rowsum(dO ∘ O)) per row and head, [rows, heads, 2].
    public static func rowStatistics(
        rows: Int, heads: Int, headDim: Int, output: UnsafePointer<Float>, outputGrad: UnsafePointer<Float>,
        lse: UnsafePointer<Float>, lseStride: Int
    ) -> [Float] {
        var statistics = [Float](repeating: 0, count: rows * heads * 2)
        for r in 0 ..< rows {
            for h in 0 ..< heads {
                let o = output + (r * heads + h) * headDim, g = outputGrad + (r * heads + h) * headDim
                var sum: Float = 0
                for x in 0 ..< headDim { sum += o[x] * g[x] }
                statistics[(r * heads + h) * 2] = lse[h * lseStride + r]
                statistics[(r * heads + h) * 2 + 1] = sum
            }
        }
        return statistics
    }

    /// Writes dQ in Q's layout, [rows, heads, headDim].
    public func finish(dq out: UnsafeMutablePointer<Float>) {
        let dq = dqStorage.buffer
        for h in 0 ..< heads {
            for r in 0 ..< rows {
                (out + (r * heads + h) * headDim).update(from: dq.baseAddress! + (h * rows + r) * headDim, count: headDim)
            }
        }
    }
}

public final class LocalAttentionBackward {
    public let shape: AttentionShape
    public let mask: AttentionMask
    public let tiling: KernelTiling
    public let slice: HeadSlice
    public let threads: Int
    /// float32 (sgemm) or bf16 operands with float32 accumulation (oneDNN).
    public let products: KernelProducts

    /// Per thread: P and dP/dS [queryTile, keyBlock], Q and dO tiles [queryTile, headDim],
    /// dK and dV of the block [keyBlock, headDim].
    private let scratch: [OwnedBuffer<Float>]
    /// bf16 products only, per thread: P's, dS's and dS's low part's bits [queryTile, keyBlock]
    /// each, Q's and dO's [queryTile, headDim] each; and the thread's oneDNN products.
    private let bitsScratch: [OwnedBuffer<UInt16>]
    private let gemms: [BF16Gemm]
    /// dQ of threads other than the calling one, each the size of the accumulator's; grows.
    private var threadDQ: [OwnedBuffer<Float>] = []
    /// K and V of the current call, packed per kv head.
    private let packed = PackedKeyValues()
    private let flopCounts: OwnedBuffer<Double>

    /// FLOPs spent so far: 10·headDim per visible-block score (five products), 2.5 x the forward's; 12·headDim with
    /// bf16 products (dS·K twice: dS's high and low parts).
    public var computedFlops: Double { flopCounts.buffer.reduce(0, +) }

    /// `tiling`: nil for `KernelTiling.defaults(for: mask)`, as the forward's; `products`: nil for float32.
    public init(
        shape: AttentionShape, mask: AttentionMask, tiling: KernelTiling? = nil, threads: Int = 1,
        slice: HeadSlice? = nil, products: KernelProducts? = nil
    ) {
        let tiling = tiling ?? .defaults(for: mask)
        self.shape = shape
        self.mask = mask
        self.tiling = tiling
        self.slice = slice ?? .all(shape)
        self.threads = max(1, threads)
        let (tq, tk, d) = (tiling.queryTile, tiling.keyBlock, shape.headDim)
        let perThread = 2 * tq * tk + 2 * tq * d + 2 * tk * d
        scratch = (0 ..< self.threads).map { _ in OwnedBuffer(repeating: 0, count: perThread) }
        let products = products ?? .float32
        self.products = products
        bitsScratch = (0 ..< self.threads).map { _ in OwnedBuffer(repeating: 0, count: products == .bf16 ? 3 * tq * tk + 2 * tq * d : 0) }
        gemms = products == .bf16 ? (0 ..< self.threads).map { _ in BF16Gemm() } : []
        flopCounts = OwnedBuffer(repeating: 0, count: self.threads)
    }

    /// Adds the gradients from the keys of `keySegment` and the query rows of `querySegment`:
    /// dQ of those rows into `gradients`, dK and dV of the segment's rows into `keyGrad` and
    /// `valueGrad`.
    ///
    /// - Parameters:
    ///   - queries, outputGrad: row 0 of the Q and dO shards ([rows, slice heads, headDim]).
    ///   - keys, values: row 0 of a K/V shard ([rows, slice kv heads, headDim]).
    ///   - keyGrad, valueGrad: row 0 of dK/dV shards laid out as K ([rows, slice kv heads, headDim]).
    ///   - progress: called by the calling thread between its items.
    public func accumulate(
        queries: UnsafePointer<Float>, outputGrad: UnsafePointer<Float>, querySegment: ShardSegment,
        keys: UnsafePointer<Float>, values: UnsafePointer<Float>, keySegment: ShardSegment,
        into gradients: GradientAccumulator,
        keyGrad: UnsafeMutablePointer<Float>, valueGrad: UnsafeMutablePointer<Float>, progress: () -> Void = {}
    ) {
        accumulate(
            queries: ElementRows(queries), outputGrad: outputGrad, querySegment: querySegment, keyValues: KeyValueRows(keys: keys, values: values),
            keySegment: keySegment, into: gradients, keyGrad: keyGrad, valueGrad: valueGrad, progress: progress)
    }

    /// The same with Q, K and V in the element type they are held or travel in (`ElementRows`,
    /// `KeyValueRows`; dO is float32).
    public func accumulate(
        queries: ElementRows, outputGrad: UnsafePointer<Float>, querySegment: ShardSegment,
        keyValues: KeyValueRows, keySegment: ShardSegment, into gradients: GradientAccumulator,
        keyGrad: UnsafeMutablePointer<Float>, valueGrad: UnsafeMutablePointer<Float>, progress: () -> Void = {}
    ) {
        precondition(gradients.heads == slice.heads.count && gradients.headDim == shape.headDim)
        precondition(querySegment.localRow + querySegment.positions.count <= gradients.rows)
        guard !querySegment.positions.isEmpty, !keySegment.positions.isEmpty else { return }
        // A pair the mask hides (another document's keys) costs nothing, not even the packing;
        // only S2's relation depends on the head, and its blocks decide it.
        if mask.keyBlockAlignment == nil,
            mask.relation(queries: querySegment.positions, keys: keySegment.positions, head: slice.heads.lowerBound) == .hidden
        {
            return
        }
        // Key blocks, cut at the mask's alignment as the forward cuts them.
        var blocks: [Range<Int>] = []
        var start = keySegment.positions.lowerBound
        while start < keySegment.positions.upperBound {
            var length = min(tiling.keyBlock, keySegment.positions.upperBound - start)
            if let alignment = mask.keyBlockAlignment { length = min(length, (start / alignment + 1) * alignment - start) }
            blocks.append(start ..< start + length)
            start += length
        }
        let dqCount = gradients.rows * gradients.heads * gradients.headDim
        if threads > 1 {
            if threadDQ.first.map({ $0.count < dqCount }) ?? true {
                threadDQ = (1 ..< threads).map { _ in OwnedBuffer(uninitializedCount: dqCount) }
            }
            threadDQ.forEach { $0.buffer.update(repeating: 0) }
        }
        // K/V packed per kv-head group (`kvHeadGroups`), then every block of the group.
        let kvHeads = slice.kvHeads.count
        for group in kvHeadGroups(kvHeads, threads: threads) {
            let operands = packed.pack(keyValues, segment: keySegment, kvHeads: group, of: kvHeads, headDim: shape.headDim, products: products)
            let work = { (thread: Int, item: Int) in
                let dq = thread == 0 ? gradients.dq.baseAddress! : self.threadDQ[thread - 1].baseAddress
                self.foldBlock(
                    kvHead: group.lowerBound + item / blocks.count, block: blocks[item % blocks.count], queries: queries, outputGrad: outputGrad,
                    querySegment: querySegment, operands: operands, keySegment: keySegment, gradients: gradients, dq: dq,
                    keyGrad: keyGrad, valueGrad: valueGrad, thread: thread)
            }
            runInterleaved(items: group.count * blocks.count, threads: threads, progress: progress, work)
        }
        for buffer in threadDQ where threads > 1 {
            let dq = gradients.dq.baseAddress!, partial = buffer.baseAddress
            for i in 0 ..< dqCount { dq[i] += partial[i] }
        }
    }

    /// One kv head (local to the slice), one key block (global positions), every query head that
    /// reads the kv head and every query tile of the segment.
    private func foldBlock(
        kvHead: Int, block: Range<Int>, queries: ElementRows, outputGrad: UnsafePointer<Float>,
        querySegment: ShardSegment, operands: PackedOperands,
        keySegment: ShardSegment, gradients: GradientAccumulator, dq: UnsafeMutablePointer<Float>,
        keyGrad: UnsafeMutablePointer<Float>, valueGrad: UnsafeMutablePointer<Float>, thread: Int
    ) {
        let d = shape.headDim
        let (tqMax, tkMax) = (tiling.queryTile, tiling.keyBlock)
        let base = scratch[thread].baseAddress, flopCounts = self.flopCounts.buffer
        let p = base, ds = base + tqMax * tkMax
        let qTile = ds + tqMax * tkMax, doTile = qTile + tqMax * d
        let dkBlock = doTile + tqMax * d, dvBlock = dkBlock + tkMax * d
        let blockRow = block.lowerBound - keySegment.positions.lowerBound
        let ldk = operands.rowStride
        // bf16 products: P, dS, Q and dO as bits.
        let bits = products == .bf16 ? bitsScratch[thread].baseAddress : nil
        let pBits = bits, dsBits = bits.map { $0 + tqMax * tkMax }, dsLowBits = bits.map { $0 + 2 * tqMax * tkMax }
        let qBits = bits.map { $0 + 3 * tqMax * tkMax }, doBits = bits.map { $0 + 3 * tqMax * tkMax + tqMax * d }
        dkBlock.update(repeating: 0, count: block.count * d)
        dvBlock.update(repeating: 0, count: block.count * d)
        let qStride = slice.heads.count * d
        let globalKvHead = slice.kvHeads.lowerBound + kvHead
        let queryCount = querySegment.positions.count
        var touched = false

        for head in 0 ..< slice.heads.count where shape.kvHead(of: slice.heads.lowerBound + head) == globalKvHead {
            let globalHead = slice.heads.lowerBound + head
            var first = 0
            while first < queryCount {
                let tq = min(tqMax, queryCount - first)
                defer { first += tq }
                let queryPositions = querySegment.positions.lowerBound + first ..< querySegment.positions.lowerBound + first + tq
                let relation = mask.relation(queries: queryPositions, keys: block, head: globalHead)
                if relation == .hidden { continue }
                let keyPositions =
                    relation == .partial ? products.productKeys(mask.visibleSpan(queries: queryPositions, keys: block, head: globalHead), within: block) : block
                let tk = keyPositions.count
                let offset = keyPositions.lowerBound - block.lowerBound
                let kv = operands.offset(kvHead: kvHead, row: blockRow + offset)
                flopCounts[thread] += Double((products == .bf16 ? 12 : 10) * tq * tk * d)
                touched = true

                let row = querySegment.localRow + first
                if let qBits, let doBits {
                    for r in 0 ..< tq {
                        queries.loadBF16((row + r) * qStride + head * d, count: d, into: qBits + r * d)
                        narrowToBF16(outputGrad + (row + r) * qStride + head * d, into: doBits + r * d, count: d)
                    }
                } else {
                    for r in 0 ..< tq {
                        queries.load((row + r) * qStride + head * d, count: d, into: qTile + r * d)
                        (doTile + r * d).update(from: outputGrad + (row + r) * qStride + head * d, count: d)
                    }
                }
                let state = head * gradients.rows + row
                let lse = gradients.lse.baseAddress! + state, delta = gradients.delta.baseAddress! + state
                switch operands.storage {
                case .float32(let keys, let values):
                    let k = keys + kv, v = values + kv
                    // P = exp(scale·Q·Kᵀ − lse), exact: the forward's lse is the row's whole normaliser.
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasTrans, Int32(tq), Int32(tk), Int32(d),
                        shape.scale, qTile, Int32(d), k, Int32(d), 0, p, Int32(tk))
                    if relation == .partial { mask.clipRows(p, rows: tq, queryPositions: queryPositions, keyPositions: keyPositions, head: globalHead) }
                    for r in 0 ..< tq { probabilities(p + r * tk, count: tk, lse: lse[r]) }
                    // dV += Pᵀ·dO
                    cblas_sgemm(
                        CblasRowMajor, CblasTrans, CblasNoTrans, Int32(tk), Int32(d), Int32(tq),
                        1, p, Int32(tk), doTile, Int32(d), 1, dvBlock + offset * d, Int32(d))
                    // dP = dO·Vᵀ, then dS = P ∘ (dP − D) in place
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasTrans, Int32(tq), Int32(tk), Int32(d),
                        1, doTile, Int32(d), v, Int32(d), 0, ds, Int32(tk))
                    for r in 0 ..< tq { scoreGradient(ds + r * tk, probabilities: p + r * tk, count: tk, delta: delta[r]) }
                    // dQ += scale·dS·K, dK += scale·dSᵀ·Q
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(tq), Int32(d), Int32(tk),
                        shape.scale, ds, Int32(tk), k, Int32(d), 1, dq + state * d, Int32(d))
                    cblas_sgemm(
                        CblasRowMajor, CblasTrans, CblasNoTrans, Int32(tk), Int32(d), Int32(tq),
                        shape.scale, ds, Int32(tk), qTile, Int32(d), 1, dkBlock + offset * d, Int32(d))
                case .bf16(let keys, let values):
                    // The same five products in bf16, accumulating in float32 (dS·K twice).
                    let k = keys + kv, v = values + kv, gemm = gemms[thread]
                    let (pBits, dsBits, dsLowBits, qBits, doBits) = (pBits!, dsBits!, dsLowBits!, qBits!, doBits!)
                    gemm.multiply(m: tq, n: tk, k: d, alpha: shape.scale, a: qBits, lda: d, b: k, ldb: ldk, transposedB: true, accumulate: false, c: p, ldc: tk)
                    if relation == .partial { mask.clipRows(p, rows: tq, queryPositions: queryPositions, keyPositions: keyPositions, head: globalHead) }
                    for r in 0 ..< tq {
                        probabilities(p + r * tk, count: tk, lse: lse[r])
                        narrowToBF16(p + r * tk, into: pBits + r * tk, count: tk)
                    }
                    gemm.multiply(
                        m: tk, n: d, k: tq, a: pBits, lda: tk, transposedA: true, b: doBits, ldb: d, transposedB: false, accumulate: true,
                        c: dvBlock + offset * d, ldc: d)
                    gemm.multiply(m: tq, n: tk, k: d, a: doBits, lda: d, b: v, ldb: ldk, transposedB: true, accumulate: false, c: ds, ldc: tk)
                    for r in 0 ..< tq { scoreGradient(ds + r * tk, probabilities: p + r * tk, count: tk, delta: delta[r]) }
                    splitToBF16(ds, high: dsBits, low: dsLowBits, count: tq * tk)
                    for part in [dsBits, dsLowBits] {
                        gemm.multiply(
                            m: tq, n: d, k: tk, alpha: shape.scale, a: part, lda: tk, b: k, ldb: ldk, transposedB: false, accumulate: true,
                            c: dq + state * d, ldc: d)
                    }
                    gemm.multiply(
                        m: tk, n: d, k: tq, alpha: shape.scale, a: dsBits, lda: tk, transposedA: true, b: qBits, ldb: d, transposedB: false,
                        accumulate: true, c: dkBlock + offset * d, ldc: d)
                }
            }
        }
        guard touched else { return }
        let kvStride = slice.kvHeads.count * d
        let firstRow = keySegment.localRow + blockRow
        for j in 0 ..< block.count {
            let dk = keyGrad + (firstRow + j) * kvStride + kvHead * d, dv = valueGrad + (firstRow + j) * kvStride + kvHead * d
            for x in 0 ..< d {
                dk[x] += dkBlock[j * d + x]
                dv[x] += dvBlock[j * d + x]
            }
        }
    }

    /// Scores to probabilities against the row's lse; a row that sees no key (lse -inf) gets 0.
    @inline(__always)
    private func probabilities(_ row: UnsafeMutablePointer<Float>, count: Int, lse: Float) {
        if lse == -.infinity {
            row.update(repeating: 0, count: count)
            return
        }
        let width = FloatVector.scalarCount
        let shift = FloatVector(repeating: lse)
        var c = 0
        while c + width <= count {
            storeVector(vectorExpScores(loadVector(row + c) - shift), row + c)
            c += width
        }
        if c < count {
            var tail = FloatVector(repeating: -.infinity)
            for i in 0 ..< count - c { tail[i] = row[c + i] }
            let e = vectorExpScores(tail - shift)
            for i in 0 ..< count - c { row[c + i] = e[i] }
        }
    }

    /// dS = P ∘ (dP − D), in place over dP.
    @inline(__always)
    private func scoreGradient(_ row: UnsafeMutablePointer<Float>, probabilities p: UnsafePointer<Float>, count: Int, delta: Float) {
        let width = FloatVector.scalarCount
        let shift = FloatVector(repeating: delta)
        var c = 0
        while c + width <= count {
            storeVector(loadVector(p + c) * (loadVector(row + c) - shift), row + c)
            c += width
        }
        while c < count {
            row[c] = p[c] * (row[c] - delta)
            c += 1
        }
    }
}

extension LocalAttentionBackward {
    /// Whole-sequence gradients on one rank (positions are row indices): the single-rank backward.
    /// `forward` is the forward's result for the same inputs (its O and lse).
    public func gradients(
        q: TokenTensor, k: TokenTensor, v: TokenTensor, forward: PartialResult, outputGrad: TokenTensor
    )
        -> (dq: TokenTensor, dk: TokenTensor, dv: TokenTensor)
    {
        var dq = TokenTensor(zerosTokens: q.tokens, heads: q.heads, headDim: q.headDim)
        var dk = TokenTensor(zerosTokens: k.tokens, heads: k.heads, headDim: k.headDim)
        var dv = TokenTensor(zerosTokens: k.tokens, heads: k.heads, headDim: k.headDim)
        guard q.tokens > 0, k.tokens > 0 else { return (dq, dk, dv) }
        let accumulator = outputGrad.values.withUnsafeBufferPointer { GradientAccumulator(forward: forward, outputGrad: $0.baseAddress!) }
        q.values.withUnsafeBufferPointer { qb in
            outputGrad.values.withUnsafeBufferPointer { gb in
                k.values.withUnsafeBufferPointer { kb in
                    v.values.withUnsafeBufferPointer { vb in
                        dk.values.withUnsafeMutableBufferPointer { dkb in
                            dv.values.withUnsafeMutableBufferPointer { dvb in
                                accumulate(
                                    queries: qb.baseAddress!, outputGrad: gb.baseAddress!,
                                    querySegment: ShardSegment(positions: 0 ..< q.tokens, localRow: 0),
                                    keys: kb.baseAddress!, values: vb.baseAddress!,
                                    keySegment: ShardSegment(positions: 0 ..< k.tokens, localRow: 0),
                                    into: accumulator, keyGrad: dkb.baseAddress!, valueGrad: dvb.baseAddress!)
                            }
                        }
                    }
                }
            }
        }
        dq.values.withUnsafeMutableBufferPointer { accumulator.finish(dq: $0.baseAddress!) }
        return (dq, dk, dv)
    }
}
