// What the forward and backward kernels share: contiguous copies of K and V per kv head, and the
// clipping of a partial block's scores to the keys each row sees, and running items on threads;
// and the forward's base-2 scale.

import BlasRuntime
import Buffers
import Dispatch
import FileFormats

/// Rows of K and V as a strategy holds or receives them (`[rows, kv heads, headDim]` each), in the
/// element type they are stored or travel in: float32, or the bits of bf16/f16. The kernel reads
/// them in place where they already are its products' operands (one kv head of the products'
/// type), else through the per-kv-head copy (`PackedKeyValues`): widened to float32 for float32
/// products, copied (bf16) or narrowed (float32 rows of bf16 values) for bf16 products.
public struct KeyValueRows {
    public let keys: UnsafeRawPointer
    public let values: UnsafeRawPointer
    public let elementType: ElementType

    /// float32 rows.
    public init(keys: UnsafePointer<Float>, values: UnsafePointer<Float>) {
        self.keys = UnsafeRawPointer(keys)
        self.values = UnsafeRawPointer(values)
        elementType = .f32
    }

    /// Rows of bf16 or f16 bits.
    public init(bits keys: UnsafePointer<UInt16>, values: UnsafePointer<UInt16>, elementType: ElementType) {
        precondition(elementType.byteSize == 2, "16-bit rows must be bf16 or f16")
        self.keys = UnsafeRawPointer(keys)
        self.values = UnsafeRawPointer(values)
        self.elementType = elementType
    }

    /// K rows at `rows`, V rows `valuesOffset` elements after them (one buffer, K then V).
    public init(_ rows: ElementRows, valuesOffset: Int) {
        keys = rows.base
        values = rows.advanced(by: valuesOffset).base
        elementType = rows.elementType
    }
}

/// The element type of a kernel's products: float32 through OpenBLAS, or bf16 operands with
/// float32 accumulation through oneDNN (`BF16Gemm`).
public enum KernelProducts: Equatable, Sendable, CustomStringConvertible {
    case float32, bf16

    /// bf16 for a bf16 job where this process multiplies bf16 on the CPU's units
    /// (`BF16Gemm.path`); float32 otherwise (f16 jobs too: widened as read).
    public static func `for`(_ elementType: ElementType) -> KernelProducts {
        elementType == .bf16 && BF16Gemm.path.usesBF16Units ? .bf16 : .float32
    }

    public var description: String { self == .bf16 ? "bf16 (oneDNN)" : "float32 (OpenBLAS)" }

    /// bf16 products run on key widths rounded up to this many keys where the block has them,
    /// so that oneDNN makes few product shapes.
    static let bf16KeyQuantum = 32

    /// The keys a partial block's products run on, for the keys some row of the tile sees
    /// (`span`, inside `block`): the span itself for float32; for bf16 widened inside the block to
    /// a multiple of `bf16KeyQuantum` where it has the keys. The extra keys are hidden from every
    /// row of the tile, so the mask's clipping zeroes them.
    func productKeys(_ span: Range<Int>, within block: Range<Int>) -> Range<Int> {
        guard self == .bf16 else { return span }
        let wanted = (span.count + Self.bf16KeyQuantum - 1) / Self.bf16KeyQuantum * Self.bf16KeyQuantum
        let upper = min(block.upperBound, span.lowerBound + wanted)
        return max(block.lowerBound, upper - wanted) ..< upper
    }
}

/// K and V of some kv heads as the kernels multiply them, in the products' type: kv head g's
/// row r at `offset(kvHead: g, row: r)`, rows `rowStride` elements apart (the products' leading
/// dimension), each kv head's rows one contiguous run.
struct PackedOperands {
    enum Storage {
        case float32(keys: UnsafePointer<Float>, values: UnsafePointer<Float>)
        case bf16(keys: UnsafePointer<UInt16>, values: UnsafePointer<UInt16>)
    }

    let storage: Storage
    /// The first kv head packed, and the elements from one kv head's run to the next.
    var firstKvHead = 0, headStride = 0
    let rowStride: Int

    @inline(__always)
    func offset(kvHead: Int, row: Int) -> Int { (kvHead - firstKvHead) * headStride + row * rowStride }
}

/// K and V of some kv heads of one call in the products' type: one contiguous [keys, headDim] run
/// per kv head. Rows of a single kv head already in that type are read where they lie; the others
/// are copied (one kv head at a time on one thread, so the copy is 1/kvHeads of the block) into
/// buffers that grow as needed and are reused across calls: float32 rows widened from 16 bits,
/// bf16 bits narrowed from float32 (holding bf16 values, so exactly) or copied.
final class PackedKeyValues {
    private var keys = OwnedBuffer<Float>(uninitializedCount: 0)
    private var values = OwnedBuffer<Float>(uninitializedCount: 0)
    private var keyBits = OwnedBuffer<UInt16>(uninitializedCount: 0)
    private var valueBits = OwnedBuffer<UInt16>(uninitializedCount: 0)

    /// Kv heads `group` (of `kvHeads` in the rows) of the segment's rows.
    func pack(_ source: KeyValueRows, segment: ShardSegment, kvHeads group: Range<Int>, of kvHeads: Int, headDim d: Int, products: KernelProducts) -> PackedOperands {
        let headStride = segment.positions.count * d
        let type = source.elementType
        let first = segment.localRow * kvHeads * d
        switch products {
        case .float32:
            if type == .f32 && kvHeads == 1 {
                let (k, v) = (source.keys.assumingMemoryBound(to: Float.self), source.values.assumingMemoryBound(to: Float.self))
                return PackedOperands(storage: .float32(keys: k + first, values: v + first), rowStride: d)
            }
            let (k, v) = pack(source, segment: segment, kvHeads: group, of: kvHeads, headDim: d, into: &keys, &values) {
                type.widen($0, into: $1, count: $2)
            }
            return PackedOperands(storage: .float32(keys: k, values: v), firstKvHead: group.lowerBound, headStride: headStride, rowStride: d)
        case .bf16:
            precondition(type != .f16, "bf16 products take bf16 or float32 rows")
            if type == .bf16 && kvHeads == 1 {
                let (k, v) = (source.keys.assumingMemoryBound(to: UInt16.self), source.values.assumingMemoryBound(to: UInt16.self))
                return PackedOperands(storage: .bf16(keys: k + first, values: v + first), rowStride: d)
            }
            let (k, v) = pack(source, segment: segment, kvHeads: group, of: kvHeads, headDim: d, into: &keyBits, &valueBits) {
                if type == .bf16 {
                    $1.update(from: $0.assumingMemoryBound(to: UInt16.self), count: $2)
                } else {
                    narrowToBF16($0.assumingMemoryBound(to: Float.self), into: $1, count: $2)
                }
            }
            return PackedOperands(storage: .bf16(keys: k, values: v), firstKvHead: group.lowerBound, headStride: headStride, rowStride: d)
        }
    }

    /// The copy: kv heads `group`'s rows of the segment converted (one run for one kv head, row by
    /// row otherwise) into `keys`, `values`, one run per kv head.
    private func pack<Element>(
        _ source: KeyValueRows, segment: ShardSegment, kvHeads group: Range<Int>, of kvHeads: Int, headDim d: Int,
        into keys: inout OwnedBuffer<Element>, _ values: inout OwnedBuffer<Element>,
        convert: (_ from: UnsafeRawPointer, _ to: UnsafeMutablePointer<Element>, _ count: Int) -> Void
    ) -> (UnsafePointer<Element>, UnsafePointer<Element>) {
        let rows = segment.positions.count
        let first = segment.localRow * kvHeads * d
        let count = rows * group.count * d
        if keys.count < count {  // the old buffers go with the last reference to them
            keys = OwnedBuffer(uninitializedCount: count)
            values = OwnedBuffer(uninitializedCount: count)
        }
        let size = source.elementType.byteSize
        for (from, to) in [(source.keys + first * size, keys.baseAddress), (source.values + first * size, values.baseAddress)] {
            if kvHeads == 1 {
                convert(from, to, count)
                continue
            }
            for (i, g) in group.enumerated() {
                for row in 0 ..< rows { convert(from + ((row * kvHeads + g) * d) * size, to + (i * rows + row) * d, d) }
            }
        }
        return (UnsafePointer(keys.baseAddress), UnsafePointer(values.baseAddress))
    }
}

extension HeadSlice {
    /// The slice's heads (local indices) that read its local kv head `kvHead`: a contiguous run.
    func heads(reading kvHead: Int, of shape: AttentionShape) -> Range<Int> {
        let global = kvHeads.lowerBound + kvHead
        let first = max(heads.lowerBound, global * shape.groupSize), last = min(heads.upperBound, (global + 1) * shape.groupSize)
        return (first - heads.lowerBound) ..< (max(first, last) - heads.lowerBound)
    }
}

/// The forward kernel keeps scores in base-2 units, scale·log2(e)·q·k, so its exp is an exp2
/// whose range reduction needs no multiply (`vectorExp2Scores`). (The backward stays in natural
/// units: see VectorMath.swift.)
struct BaseTwoScores {
    /// The scores' GEMM alpha: scale·log2 e, rounded once to float.
    let alpha: Float
    /// What one unit of these scores is in natural log: exactly scale / alpha, so converting a
    /// max to an LSE and back carries no error from the rounding of alpha (ln 2 if that ratio
    /// is not a positive number: a zero or non-finite scale).
    let unit: Double

    init(scale: Float) {
        alpha = Float(Double(scale) * 1.442_695_040_888_963_4)
        let ratio = Double(scale) / Double(alpha)
        unit = ratio.isFinite && ratio > 0 ? ratio : 0.693_147_180_559_945_3
    }
}

extension AttentionMask {
    /// Sets the scores this mask hides to -inf, row by row: `scores` is [rows, keys] for the
    /// queries from `queryPositions.lowerBound` on and the keys `keyPositions`, rows `rowStride`
    /// floats apart (the number of keys by default).
    public func clipRows(
        _ scores: UnsafeMutablePointer<Float>, rows: Int, rowStride: Int? = nil, queryPositions: Range<Int>, keyPositions: Range<Int>, head: Int
    ) {
        let columns = keyPositions.count
        if case let .slices(slices) = self {
            return slices.clipRows(scores, rows: rows, rowStride: rowStride ?? columns, queryPositions: queryPositions, keyPositions: keyPositions)
        }
        for r in 0 ..< rows {
            let visible = visibleKeys(query: queryPositions.lowerBound + r, head: head, within: keyPositions)
            let row = scores + r * (rowStride ?? columns)
            let lo = visible.isEmpty ? columns : visible.lowerBound - keyPositions.lowerBound
            let hi = visible.isEmpty ? columns : visible.upperBound - keyPositions.lowerBound
            if lo > 0 { row.update(repeating: -.infinity, count: lo) }
            if hi < columns { (row + hi).update(repeating: -.infinity, count: columns - hi) }
        }
    }
}

/// The kv heads a kernel packs and works through together: one at a time on one thread (the
/// packed copy is then 1/kvHeads of the block), every one at once on several, so that the threads
/// share out all of the call's items.
func kvHeadGroups(_ kvHeads: Int, threads: Int) -> [Range<Int>] {
    threads == 1 ? (0 ..< kvHeads).map { $0 ..< $0 + 1 } : [0 ..< kvHeads]
}

/// Runs items 0..<items on `threads` threads, thread t taking items t, t + threads, ...: the
/// calling thread is thread 0 and calls `progress` after each of its items, so MPI is driven from
/// the thread that called the kernel (MPI_THREAD_FUNNELED) however many threads compute.
/// Interleaving evens out causal work, whose cost grows along the sequence.
func runInterleaved(items: Int, threads: Int, progress: () -> Void, _ work: @escaping (_ thread: Int, _ item: Int) -> Void) {
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
