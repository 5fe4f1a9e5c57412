// The fused local attention kernel, FlashAttention-style, on one rank's CPU cores.
//
// For a tile of queries of one head it walks key blocks: S = scale·Q·Kᵀ (cblas_sgemm, or oneDNN's
// bf16 matmul for bf16 products), clips rows the mask cuts, turns S into P = exp(S - m) in one fused
// pass that also sums P and finds the block's max, and adds P·V (beta 1; float32 whole or in pieces:
// `ValueProduct`) into the tile's running O, a contiguous copy of its accumulator rows written back
// once per tile. Blocks the mask hides are skipped before any arithmetic, and partial blocks are
// trimmed to the keys the tile sees.
//
// Where the time goes, and why the kernel is shaped this way (docs/PERFORMANCE.md has the figures):
// - The GEMMs run on contiguous operands. Q, K and V rows hold every head, so one head's rows sit
//   heads·headDim floats apart (4 KiB at 8 x 128), and OpenBLAS's packing of strided rows thrashes
//   L1 sets; the kernel copies each kv head's keys and values once per call, each query tile once,
//   and each tile's O rows once, so every GEMM sees leading dimension headDim. (The accumulator
//   itself is laid out as O, [rows, heads, headDim], so that it becomes O without a copy.)
// - S carries the shift (float32 products; bf16 ones subtract it in the softmax pass, where
//   oneDNN's accumulating form cost more). The scores' GEMM adds (beta 1) to an S whose rows hold -m, each row's
//   running max, so it leaves s - m: OpenBLAS does not clear C first (with beta 0 it does, 2% of
//   the time at head dim 64) and the softmax subtracts nothing (an eighth of its time). A tile fills
//   its rows' -m once; the softmax pass, which reads S anyway, writes P to a second tile and
//   stores -m back over S for the next block.
// - The shift m is lazy (FlashAttention-4's trick): a row keeps its running max until a block
//   raises it by more than `lazyRescaleThreshold` (then P and the running sums are rescaled), so
//   there is no separate max pass and the accumulator is almost never rescaled. Values of P stay
//   below e^threshold, far inside float's range; the result is the same softmax, exactly.
// - At small head dims P·V skips OpenBLAS's copy of P: on AVX-512 cores it runs in pieces that
//   OpenBLAS's small-matrix kernel reads in place (`ValueProduct`).
// - Scores are in base 2 (the first GEMM's alpha is scale·log2 e), so exp is `vectorExp2Scores`:
//   a rounding by two additions and a degree-6 polynomial, 7 multiplies per vector where Cephes'
//   expf needs 12; at head dim 64 the softmax was an eighth of the kernel's time, so this counts.
// What it does not do: normalise (the accumulator's `finish` does), or know about ranks (a
// strategy hands it the key blocks it holds, with their global positions).

import BlasRuntime
import Buffers
import CBLAS
import Dispatch
import FileFormats

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

    public init(queryTile: Int = 256, keyBlock: Int = 512) {
        precondition(queryTile > 0 && keyBlock > 0)
        self.queryTile = queryTile
        self.keyBlock = keyBlock
    }

    /// The kernel's tiles for `mask` when the caller names none. Every Q·Kᵀ call (and P·V call,
    /// when `ValueProduct` packs) has OpenBLAS pack the key or value block afresh, a cost per
    /// score that shrinks as the query tile grows, so without a mask the tile is 384 rows (2-3%
    /// faster than 256 at head dim 64, the same or better at 128). A mask's diagonal blocks are computed up to the last key any
    /// row of the tile sees, about queryTile²/2 scores thrown away per diagonal, and there 384
    /// rows ran 3% slower causal at head dim 64, so masks keep 256. Key blocks stay at 512 keys:
    /// the LSE's largest error against float64 grew by up to 12% with 384-key blocks.
    public static func defaults(for mask: AttentionMask) -> KernelTiling {
        mask == .none ? KernelTiling(queryTile: 384, keyBlock: 512) : KernelTiling()
    }
}

public final class LocalAttention {
    public let shape: AttentionShape
    public let mask: AttentionMask
    public let tiling: KernelTiling
    /// How P·V is multiplied (`ValueProduct.current(headDim:)` unless the caller names one).
    public let valueProduct: ValueProduct
    public let slice: HeadSlice
    /// Threads that run query tiles concurrently (each with one-thread BLAS calls of its own).
    public let threads: Int
    /// The products' element type: float32 (sgemm), or bf16 with float32 accumulation (oneDNN)
    /// in a bf16 job on a CPU with bf16 units.
    public let products: KernelProducts
    /// The scores' GEMM alpha and their unit.
    private let baseTwo: BaseTwoScores

    /// A block may raise a row's max by this much (base 2, like the scores: e^8) before the row
    /// is rescaled.
    static let lazyRescaleThreshold: Float = 8 / log2e
    /// Beyond this (e^64), P against the old max could overflow its sums, so the row's scores are
    /// recomputed and done in two passes.
    static let recomputeThreshold: Float = 64 / log2e
    /// Scores are kept in base-2 units, scale·log2(e)·q·k, so the softmax's exp is an exp2 with
    /// no multiply in its range reduction. `AttentionAccumulator` stores its maxima in these units.
    static let log2e: Float = 1.442_695_04

    /// What a row of S holds before the scores' GEMM adds to it: -m for a finite running max m,
    /// so the GEMM leaves s - m; 0 otherwise (no key seen yet, or an overflowed max), when the
    /// softmax subtracts the max itself.
    static func shift(for max: Float) -> Float { max.isFinite ? -max : 0 }

    /// Whether S's rows carry their shift into the scores' product (float32 products); bf16
    /// products compute the scores alone and the softmax subtracts the shift, with P's bits
    /// written in the same pass.
    private var scoresCarryShift: Bool { products == .float32 }

    /// Per thread: scores [queryTile, keyBlock] (float32 products: each row holding its shift between blocks), probabilities
    /// [queryTile, keyBlock], the packed query tile [queryTile, headDim], row rescale factors
    /// [queryTile], and the tile's running O [queryTile, headDim], contiguous.
    private let scratch: [OwnedBuffer<Float>]
    /// K and V of the current call, packed per kv head.
    private let packed = PackedKeyValues()
    /// bf16 products only, per thread: the query tile's bits [queryTile, headDim], then P's
    /// [queryTile, keyBlock]; and the thread's oneDNN products.
    private let bitsScratch: [OwnedBuffer<UInt16>]
    private let gemms: [BF16Gemm]
    /// Per thread: FLOPs of the blocks computed (4·headDim per score, masked or not).
    private let flopCounts: OwnedBuffer<Double>
    /// Per thread: rows whose scores were NaN or +inf (overflowing inputs or scale).
    private let nonFiniteRows: OwnedBuffer<Int>

    /// FLOPs this kernel has spent so far: the work it did, which block skipping reduces.
    public var computedFlops: Double { flopCounts.buffer.reduce(0, +) }

    /// Query rows (counted per head and per call) whose scores were NaN or +inf, so their output
    /// is NaN: inputs or a scale that overflow float32. Zero in any sane run.
    public var nonFiniteScoreRows: Int { nonFiniteRows.buffer.reduce(0, +) }

    /// - Parameters:
    ///   - tiling: nil for `KernelTiling.defaults(for: mask)`.
    ///   - slice: the heads to compute; all of them by default.
    ///   - valueProduct: nil for `ValueProduct.current(headDim:)`.
    ///   - products: nil for float32; `KernelProducts.for(elementType)` picks bf16 for a bf16
    ///     job where the CPU multiplies bf16.
    public init(
        shape: AttentionShape, mask: AttentionMask, tiling: KernelTiling? = nil, threads: Int = 1,
        slice: HeadSlice? = nil, valueProduct: ValueProduct? = nil, products: KernelProducts? = nil
    ) {
        let tiling = tiling ?? .defaults(for: mask)
        self.valueProduct = valueProduct ?? .current(headDim: shape.headDim)
        self.shape = shape
        self.slice = slice ?? .all(shape)
        self.mask = mask
        self.tiling = tiling
        self.threads = max(1, threads)
        baseTwo = BaseTwoScores(scale: shape.scale)
        let perThread = 2 * tiling.queryTile * tiling.keyBlock + 2 * tiling.queryTile * shape.headDim + tiling.queryTile
        scratch = (0 ..< self.threads).map { _ in OwnedBuffer(repeating: 0, count: perThread) }
        let products = products ?? .float32
        self.products = products
        let bitsPerThread = products == .bf16 ? tiling.queryTile * (shape.headDim + tiling.keyBlock) : 0
        bitsScratch = (0 ..< self.threads).map { _ in OwnedBuffer(repeating: 0, count: bitsPerThread) }
        gemms = products == .bf16 ? (0 ..< self.threads).map { _ in BF16Gemm() } : []
        flopCounts = OwnedBuffer(repeating: 0, count: self.threads)
        nonFiniteRows = OwnedBuffer(repeating: 0, count: self.threads)
    }

    /// Folds the keys of `keySegment` into the accumulator rows of `querySegment`.
    ///
    /// - Parameters:
    ///   - queries: row 0 of the query shard ([rows, slice heads, headDim]); the segment says which rows.
    ///   - keys, values: row 0 of a K/V shard ([rows, slice kv heads, headDim]).
    ///   - progress: called by the calling thread between its query tiles, so a strategy can let
    ///     MPI progress the transfers it posted before computing.
    public func accumulate(
        queries: UnsafePointer<Float>, querySegment: ShardSegment,
        keys: UnsafePointer<Float>, values: UnsafePointer<Float>, keySegment: ShardSegment,
        into accumulator: AttentionAccumulator, progress: () -> Void = {}
    ) {
        accumulate(
            queries: queries, querySegments: CollectionOfOne(querySegment), keys: keys, values: values,
            keySegment: keySegment, into: accumulator, progress: progress)
    }

    /// The same for several query segments of one shard (zigzag's two chunks), with K and V
    /// packed once for all of them.
    public func accumulate<Segments: Collection<ShardSegment>>(
        queries: UnsafePointer<Float>, querySegments: Segments,
        keys: UnsafePointer<Float>, values: UnsafePointer<Float>, keySegment: ShardSegment,
        into accumulator: AttentionAccumulator, progress: () -> Void = {}
    ) {
        accumulate(
            queries: ElementRows(queries), querySegments: querySegments, keyValues: KeyValueRows(keys: keys, values: values),
            keySegment: keySegment, into: accumulator, progress: progress)
    }

    /// The same with Q, K and V in the element type they are held or travel in (`ElementRows`,
    /// `KeyValueRows`).
    public func accumulate<Segments: Collection<ShardSegment>>(
        queries: ElementRows, querySegments: Segments, keyValues: KeyValueRows, keySegment: ShardSegment,
        into accumulator: AttentionAccumulator, progress: () -> Void = {}
    ) {
        precondition(accumulator.heads == slice.heads.count && accumulator.headDim == shape.headDim)
        for segment in querySegments { precondition(segment.localRow + segment.positions.count <= accumulator.rows) }
        guard !keySegment.positions.isEmpty else { return }
        // A query segment that sees no key of the segment (another document's, or all before the
        // keys under a causal mask) gets no items: with packed documents most pairs are such. Only
        // S2's relation depends on the head, and it needs aligned key blocks, so it is left to the tiles.
        let sees = { (segment: ShardSegment) in
            !segment.positions.isEmpty
                && (self.mask.keyBlockAlignment != nil
                    || self.mask.relation(queries: segment.positions, keys: keySegment.positions, head: self.slice.heads.lowerBound) != .hidden)
        }
        let tiles = { (segment: ShardSegment) in (segment.positions.count + self.tiling.queryTile - 1) / self.tiling.queryTile }
        let seen = querySegments.filter(sees)
        guard !seen.isEmpty else { return }
        accumulator.maxUnit = baseTwo.unit
        // Its K/V packed per kv-head group (`kvHeadGroups`), then every tile of every head that reads it.
        let kvHeads = slice.kvHeads.count
        accumulator.withSum { sum in
            for group in kvHeadGroups(kvHeads, threads: threads) {
                let heads = slice.heads(reading: group.lowerBound, of: shape).lowerBound ..< slice.heads(reading: group.upperBound - 1, of: shape).upperBound
                // The segments with work, each with its tile count and its first item (segments in
                // order, each heads x its tiles).
                var seeing: [(segment: ShardSegment, tiles: Int, firstItem: Int)] = []
                var items = 0
                for segment in seen {
                    seeing.append((segment, tiles(segment), items))
                    items += heads.count * tiles(segment)
                }
                let operands = packed.pack(
                    keyValues, segment: keySegment, kvHeads: group, of: kvHeads, headDim: shape.headDim, products: products)
                let work = { (thread: Int, item: Int) in
                    // Item -> (segment, head, tile): the last segment whose first item is at most `item`.
                    var (lo, hi) = (0, seeing.count - 1)
                    while lo < hi {
                        let mid = (lo + hi + 1) / 2
                        if seeing[mid].firstItem <= item { lo = mid } else { hi = mid - 1 }
                    }
                    let (segment, tiles, firstItem) = seeing[lo]
                    let rest = item - firstItem
                    let first = (rest % tiles) * self.tiling.queryTile
                    self.foldTile(
                        head: heads.lowerBound + rest / tiles, queries: queries, querySegment: segment,
                        tileRows: first ..< min(segment.positions.count, first + self.tiling.queryTile),
                        operands: operands, keySegment: keySegment,
                        accumulator: accumulator, sum: sum, scratch: self.scratch[thread].buffer, thread: thread)
                }
                // Items write disjoint (head, rows) parts of the accumulator and use their thread's scratch.
                runInterleaved(items: items, threads: threads, progress: progress, work)
            }
        }
    }

    /// One head (local to the slice), one query tile (rows relative to the segment), every key
    /// block of the segment.
    @inline(__always)
    private func foldTile(
        head: Int, queries: ElementRows, querySegment: ShardSegment, tileRows: Range<Int>,
        operands: PackedOperands, keySegment: ShardSegment,
        accumulator: AttentionAccumulator, sum: UnsafeMutablePointer<Float>, scratch: UnsafeMutableBufferPointer<Float>, thread: Int
    ) {
        let d = shape.headDim
        let qStride = slice.heads.count * d
        let globalHead = slice.heads.lowerBound + head
        let kvHead = shape.kvHead(of: globalHead) - slice.kvHeads.lowerBound
        let tq = tileRows.count
        let queryPositions = (querySegment.positions.lowerBound + tileRows.lowerBound) ..< (querySegment.positions.lowerBound + tileRows.upperBound)
        let accRow = querySegment.localRow + tileRows.lowerBound
        // The accumulator's rows of this head, ldo apart (O's layout); the tile works on a
        // contiguous copy (`acc`, rows d apart), so its products keep their leading dimension.
        let ldo = accumulator.rowStride
        let accumulated = sum + accRow * ldo + head * d
        let stateBase = head * accumulator.rows + accRow
        let rowMax = accumulator.rowMax.baseAddress! + stateBase
        let rowSum = accumulator.rowSum.baseAddress! + stateBase
        // S (rows keyBlock floats apart, whatever a block's width) and P ([tq, tk], contiguous).
        let scores = scratch.baseAddress!
        let ldS = tiling.keyBlock
        let probabilities = scores + tiling.queryTile * tiling.keyBlock
        let q = probabilities + tiling.queryTile * tiling.keyBlock
        let alphas = q + tiling.queryTile * d
        let acc = alphas + tiling.queryTile
        let keyCount = keySegment.positions.count
        let flopCounts = self.flopCounts.buffer, nonFiniteRows = self.nonFiniteRows.buffer

        // A tile that sees no key of the segment (another document's) costs nothing, not even its copy.
        if mask.keyBlockAlignment == nil, mask.relation(queries: queryPositions, keys: keySegment.positions, head: globalHead) == .hidden { return }

        // The tile's queries, contiguous: [tq, d] (bf16 bits for bf16 products).
        let firstQuery = accRow * qStride + head * d
        let bits = products == .bf16 ? bitsScratch[thread].baseAddress : nil
        let queryBits = bits.map { UnsafePointer($0) }, probabilityBits = bits.map { $0 + tiling.queryTile * d }
        if let bits {
            for r in 0 ..< tq { queries.loadBF16(firstQuery + r * qStride, count: d, into: bits + r * d) }
        } else {
            for r in 0 ..< tq { queries.load(firstQuery + r * qStride, count: d, into: q + r * d) }
        }
        let ldk = operands.rowStride

        // float32 products: S's rows carry their shift into the scores' GEMM (beta 1): row r holds
        // `shift(for: rowMax[r])` in every column a block may use. Filled once per tile, at its
        // first block; each block's softmax stores the row's shift back over the columns it reads.
        // (bf16 products subtract it in the softmax's pass instead.)
        let width = min(tiling.keyBlock, keyCount)
        for r in 0 ..< tq { (acc + r * d).update(from: accumulated + r * ldo, count: d) }
        var filled = false
        var blockStart = 0
        while blockStart < keyCount {
            let blockFirst = keySegment.positions.lowerBound + blockStart
            var blockLength = min(tiling.keyBlock, keyCount - blockStart)
            if let alignment = mask.keyBlockAlignment { blockLength = min(blockLength, (blockFirst / alignment + 1) * alignment - blockFirst) }
            defer { blockStart += blockLength }
            var keyPositions = blockFirst ..< blockFirst + blockLength
            let relation = mask.relation(queries: queryPositions, keys: keyPositions, head: globalHead)
            if relation == .hidden { continue }
            if relation == .partial {  // diagonal blocks: skip the keys no row of the tile sees
                keyPositions = products.productKeys(
                    mask.visibleSpan(queries: queryPositions, keys: keyPositions, head: globalHead), within: keyPositions)
            }
            let tk = keyPositions.count
            flopCounts[thread] += Double(4 * tq * tk * d)
            let keyOffset = operands.offset(kvHead: kvHead, row: keyPositions.lowerBound - keySegment.positions.lowerBound)
            if !filled && scoresCarryShift {
                for r in 0 ..< tq { (scores + r * ldS).update(repeating: Self.shift(for: rowMax[r]), count: width) }
                filled = true
            }

            // S = scale · Q_tile · K_blockᵀ - m, [tq, tk], rows ldS apart (bf16 products: S =
            // scale · Q_tile · K_blockᵀ, the shift left to the softmax: oneDNN's sum post-op,
            // which reads C back, cost more than the subtraction)
            switch operands.storage {
            case .float32(let keys, _):
                cblas_sgemm(
                    CblasRowMajor, CblasNoTrans, CblasTrans, Int32(tq), Int32(tk), Int32(d),
                    baseTwo.alpha, q, Int32(d), keys + keyOffset, Int32(d), 1, scores, Int32(ldS))
            case .bf16(let keys, _):
                gemms[thread].multiply(
                    m: tq, n: tk, k: d, alpha: baseTwo.alpha, a: queryBits!, lda: d, b: keys + keyOffset, ldb: ldk,
                    transposedB: true, accumulate: false, c: scores, ldc: ldS)
            }
            if relation == .partial {
                mask.clipRows(scores, rows: tq, rowStride: ldS, queryPositions: queryPositions, keyPositions: keyPositions, head: globalHead)
            }
            var rescaled = false
            for r in 0 ..< tq {
                // bf16 products: P's float32 row is one row reused, for the rare rescale only.
                let row = scores + r * ldS, p = probabilityBits == nil ? probabilities + r * tk : probabilities
                let before = Self.shift(for: rowMax[r])
                var alpha: Float
                // bf16 products: the softmax writes P's bits itself, in its exp pass.
                let bits = probabilityBits.map { $0 + r * tk }
                if rowMax[r].isFinite {
                    alpha = softmaxRow(row, into: p, bits: bits, count: tk, rowMax: &rowMax[r], rowSum: &rowSum[r])
                } else {  // no max yet (or an overflowed one): S holds the scores themselves
                    alpha = exactSoftmaxRow(row, into: p, bits: bits, count: tk, rowMax: &rowMax[r], rowSum: &rowSum[r])
                }
                if alpha.isNaN {  // the block's max overflowed the exp: redo the row from its scores
                    switch operands.storage {
                    case .float32(let keys, _):
                        cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(tk), Int32(d), baseTwo.alpha, keys + keyOffset, Int32(d), q + r * d, 1, 0, row, 1)
                    case .bf16(let keys, _):
                        gemms[thread].multiply(
                            m: 1, n: tk, k: d, alpha: baseTwo.alpha, a: queryBits! + r * d, lda: d, b: keys + keyOffset, ldb: ldk,
                            transposedB: true, accumulate: false, c: row, ldc: ldS)
                    }
                    if relation == .partial {
                        mask.clipRows(
                            row, rows: 1, queryPositions: queryPositions.lowerBound + r ..< queryPositions.lowerBound + r + 1,
                            keyPositions: keyPositions, head: globalHead)
                    }
                    alpha = exactSoftmaxRow(row, into: p, bits: bits, count: tk, rowMax: &rowMax[r], rowSum: &rowSum[r])
                }
                // The softmax left the row's shift over its first tk columns; if the max moved,
                // the columns a wider block would use follow.
                let after = Self.shift(for: rowMax[r])
                if after != before && width > tk && scoresCarryShift { (row + tk).update(repeating: after, count: width - tk) }
                if rowMax[r] == -.infinity && !rowSum[r].isNaN {
                    // Every score -inf: the mask hid this block's keys from the row, or the scores
                    // overflowed (huge inputs or scale). Only the mask may make a row see no key.
                    let query = queryPositions.lowerBound + r
                    if relation == .full || !mask.visibleKeys(query: query, head: globalHead, within: keyPositions).isEmpty {
                        rowSum[r] = .nan
                    }
                }
                if rowSum[r].isNaN || rowMax[r] == .infinity { nonFiniteRows[thread] += 1 }
                alphas[r] = alpha
                rescaled = rescaled || alpha != 1
            }
            if rescaled {  // rare: a block raised some row's max a lot
                for r in 0 ..< tq where alphas[r] != 1 { scaleRow(acc + r * d, count: d, by: alphas[r]) }
            }
            // acc += P · V_block (P rounded to bf16 for bf16 products, as FlashAttention does;
            // the row sums are of those rounded values)
            switch operands.storage {
            case .float32(_, let values):
                valueProduct.multiplyAdd(rows: tq, keys: tk, headDim: d, p: probabilities, ldp: tk, v: values + keyOffset, into: acc, ldc: d)
            case .bf16(_, let values):
                gemms[thread].multiply(
                    m: tq, n: d, k: tk, a: probabilityBits!, lda: tk, b: values + keyOffset, ldb: ldk,
                    transposedB: false, accumulate: true, c: acc, ldc: d)
            }
        }
        for r in 0 ..< tq { (accumulated + r * ldo).update(from: acc + r * d, count: d) }
    }

    /// Turns one row of shifted scores, x = s - m (m the row's running max, finite), into
    /// unnormalised probabilities P = 2^x, adds them to the running sum, stores the row's shift
    /// back over it, and returns the factor that rescales the row's accumulator (1: unchanged).
    /// m stays while the block does not raise it by more than the threshold (one fused pass);
    /// otherwise the row is rescaled to the new max and takes its shift. Returns NaN when the
    /// block's max lies beyond exp's range from m, so the caller must recompute the row's scores.
    @inline(__always)
    private func softmaxRow(
        _ row: UnsafeMutablePointer<Float>, into p: UnsafeMutablePointer<Float>, bits: UnsafeMutablePointer<UInt16>?, count: Int,
        rowMax: inout Float, rowSum: inout Float
    ) -> Float {
        let m = rowMax
        let (sum, rise) =
            scoresCarryShift
            ? exp2Pass(row, into: p, count: count, storing: -m) { $0 }  // S holds s - m already
            : bits.map { exp2PassBF16(row, bits: $0, count: count, minus: m) }
                ?? exp2Pass(row, into: p, count: count, storing: nil) { $0 - FloatVector(repeating: m) }
        if !(rise <= Self.lazyRescaleThreshold) {
            if rise > Self.recomputeThreshold { return .nan }  // P may overflow: recompute
            // Move the row to the new max: P and the running state shrink by 2^-rise.
            let alpha = vectorExp2Scores(FloatVector(repeating: -rise))[0]
            if let bits {  // rare: P's bits scaled through float32 and rounded again
                ElementType.bf16.widen(bits, into: p, count: count)
                scaleRow(p, count: count, by: alpha)
                narrowToBF16(p, into: bits, count: count)
            } else {
                scaleRow(p, count: count, by: alpha)
            }
            rowSum = (rowSum + sum) * alpha
            rowMax = m + rise
            if scoresCarryShift { row.update(repeating: Self.shift(for: rowMax), count: count) }
            return alpha
        }
        rowSum += sum
        return 1
    }

    /// One pass over a row: x = shift(loaded) (the -inf lanes that pad the tail give 0), P = 2^x,
    /// `storing` over the row (where given: the next block's shift); returns the sum of P and the largest x. With `bits` (bf16
    /// products) P is rounded to bf16 and its bits written there, in the same pass, and the
    /// rounded values are summed, so the row sum is the sum of the very weights P·V multiplies: O
    /// is then a weighted mean of V, where summing the unrounded P would scale it by their ratio
    /// (O's RMS error against float64 was 1.6% above PyTorch's bf16 SDPA that way).
    @inline(__always)
    private func exp2Pass(
        _ row: UnsafeMutablePointer<Float>, into p: UnsafeMutablePointer<Float>, bits: UnsafeMutablePointer<UInt16>? = nil, count: Int, storing: Float?,
        _ shift: (FloatVector) -> FloatVector
    ) -> (sum: Float, max: Float) {
        let width = FloatVector.scalarCount
        let store = FloatVector(repeating: storing ?? 0)
        var sums = FloatVector()
        var maxes = FloatVector(repeating: -.infinity)
        var c = 0
        while c + width <= count {
            let x = shift(loadVector(row + c))
            if storing != nil { storeVector(store, row + c) }
            maxes = vectorMax(maxes, x)
            if let bits {
                let e = roundedToBF16(vectorExp2ScoresForBF16(x))
                storeBF16(e, bits + c)
                sums += e
            } else {
                let e = vectorExp2Scores(x)
                storeVector(e, p + c)
                sums += e
            }
            c += width
        }
        if c < count {  // the tail, padded with -inf lanes that give 0
            var tail = FloatVector(repeating: -.infinity)
            for i in 0 ..< count - c { tail[i] = row[c + i] }
            if let storing { (row + c).update(repeating: storing, count: count - c) }
            let x = shift(tail)
            maxes = vectorMax(maxes, x)
            let e = bits == nil ? vectorExp2Scores(x) : roundedToBF16(vectorExp2ScoresForBF16(x))
            if let bits {
                for i in 0 ..< count - c { bits[c + i] = UInt16(truncatingIfNeeded: e[i].bitPattern >> 16) }
            } else {
                for i in 0 ..< count - c { p[c + i] = e[i] }
            }
            sums += e
        }
        return (horizontalSum(sums), horizontalMax(maxes))
    }

    /// `exp2Pass` for bf16 weights (no shift stored: bf16 products' scores never carry it): by the
    /// CPU's conversion instruction where it has one (`exp2RowToBF16`), else in Swift.
    @inline(__always)
    private func exp2PassBF16(_ row: UnsafeMutablePointer<Float>, bits: UnsafeMutablePointer<UInt16>, count: Int, minus m: Float) -> (sum: Float, max: Float) {
        if BF16Gemm.hasConversionInstruction { return exp2RowToBF16(row, minus: m, bits: bits, count: count) }
        return exp2Pass(row, into: row, bits: bits, count: count, storing: nil) { $0 - FloatVector(repeating: m) }
    }

    /// The two-pass form, on a row that holds the scores themselves: the block's max first, then
    /// P against max(running max, block max). Stores the new max's shift over the row.
    @inline(__always)
    private func exactSoftmaxRow(
        _ row: UnsafeMutablePointer<Float>, into p: UnsafeMutablePointer<Float>, bits: UnsafeMutablePointer<UInt16>?, count: Int,
        rowMax: inout Float, rowSum: inout Float
    ) -> Float {
        let width = FloatVector.scalarCount
        var maxes = FloatVector(repeating: -.infinity)
        var c = 0
        while c + width <= count {
            maxes = vectorMax(maxes, loadVector(row + c))
            c += width
        }
        var blockMax = horizontalMax(maxes)
        while c < count {
            blockMax = max(blockMax, row[c])
            c += 1
        }
        let newMax = max(rowMax, blockMax)
        let shift = Self.shift(for: newMax)
        if newMax == -.infinity {  // nothing visible to this row yet: P = 0, state unchanged
            if scoresCarryShift { row.update(repeating: shift, count: count) }
            if let bits { bits.update(repeating: 0, count: count) } else { p.update(repeating: 0, count: count) }
            return 1
        }
        let (sum, _) =
            bits.map { exp2PassBF16(row, bits: $0, count: count, minus: newMax) }
            ?? exp2Pass(row, into: p, count: count, storing: scoresCarryShift ? shift : nil) { $0 - FloatVector(repeating: newMax) }
        let alpha = rowMax == -.infinity ? 1 : vectorExp2Scores(FloatVector(repeating: rowMax - newMax))[0]
        rowSum = rowSum * alpha + sum
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
        guard q.tokens > 0, k.tokens > 0 else { return accumulator.takeResult() }
        q.values.withUnsafeBufferPointer { qb in
            k.values.withUnsafeBufferPointer { kb in
                v.values.withUnsafeBufferPointer { vb in
                    accumulate(
                        queries: qb.baseAddress!, querySegment: ShardSegment(positions: 0 ..< q.tokens, localRow: 0),
                        keys: kb.baseAddress!, values: vb.baseAddress!,
                        keySegment: ShardSegment(positions: 0 ..< k.tokens, localRow: 0),
                        into: accumulator)
                }
            }
        }
        return accumulator.takeResult()
    }
}
