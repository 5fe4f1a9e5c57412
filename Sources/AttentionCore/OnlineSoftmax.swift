// Partial attention results (O, lse) and their exact merge (docs/DESIGN.md):
//     M = max(l1, l2);  l = M + log1p(exp(min - M));  O = exp(l1 - l)·O1 + exp(l2 - l)·O2
// (O = 0, lse = -inf) is the identity, and no path computes -inf - -inf.
// Within a kernel the same algebra runs unnormalised (running max, running sum), which
// `AttentionAccumulator` holds; `PartialResult` is the normalised form that crosses ranks.

import Buffers
import Foundation

public enum OnlineSoftmax {
    /// The log-sum-exp of two log-sum-exps; -inf only when both are; NaN when either is (a
    /// row whose scores overflowed must stay marked, not be dropped by max()).
    @inlinable
    public static func combinedLSE(_ l1: Float, _ l2: Float) -> Float {
        if l1.isNaN || l2.isNaN { return .nan }
        let hi = max(l1, l2)
        if hi == -.infinity { return -.infinity }
        let lo = min(l1, l2)
        return hi + log1p(exp(lo - hi))
    }

    /// Merges the partial `(o2, l2)` into `(o1, l1)` for one row of `count` values.
    @inlinable
    public static func merge(
        into o1: UnsafeMutablePointer<Float>, lse l1: inout Float,
        from o2: UnsafePointer<Float>, lse l2: Float, count: Int
    ) {
        if l2 == -.infinity { return }  // the other saw no key: nothing to add
        if l1 == -.infinity {  // this one saw none: take the other as it is
            o1.update(from: o2, count: count)
            l1 = l2
            return
        }
        let l = combinedLSE(l1, l2)
        let w1 = exp(l1 - l), w2 = exp(l2 - l)
        for i in 0 ..< count { o1[i] = w1 * o1[i] + w2 * o2[i] }
        l1 = l
    }
}

/// Attention output for some query rows over some set of keys, normalised over those keys.
public struct PartialResult: Equatable, Sendable {
    public let rows: Int
    public let heads: Int
    public let headDim: Int
    /// [rows, heads, headDim]
    public var output: [Float]
    /// [heads, rows]
    public var lse: [Float]

    /// The merge identity: output 0, lse -inf (no keys seen).
    public init(emptyRows rows: Int, heads: Int, headDim: Int) {
        self.rows = rows
        self.heads = heads
        self.headDim = headDim
        output = [Float](repeating: 0, count: rows * heads * headDim)
        lse = [Float](repeating: -.infinity, count: heads * rows)
    }

    public init(rows: Int, heads: Int, headDim: Int, output: [Float], lse: [Float]) {
        precondition(output.count == rows * heads * headDim && lse.count == heads * rows)
        self.rows = rows
        self.heads = heads
        self.headDim = headDim
        self.output = output
        self.lse = lse
    }

    /// Folds `other` (the same rows, over a disjoint key set) into this result.
    public mutating func merge(_ other: PartialResult) {
        precondition(rows == other.rows && heads == other.heads && headDim == other.headDim)
        let (rows, heads, d) = (self.rows, self.heads, self.headDim)
        output.withUnsafeMutableBufferPointer { o1 in
            lse.withUnsafeMutableBufferPointer { l1 in
                other.output.withUnsafeBufferPointer { o2 in
                    other.lse.withUnsafeBufferPointer { l2 in
                        for r in 0 ..< rows {
                            for h in 0 ..< heads {
                                let at = (r * heads + h) * d
                                OnlineSoftmax.merge(
                                    into: o1.baseAddress! + at, lse: &l1[h * rows + r],
                                    from: o2.baseAddress! + at, lse: l2[h * rows + r], count: d)
                            }
                        }
                    }
                }
            }
        }
    }

    public func merged(with other: PartialResult) -> PartialResult {
        var result = self
        result.merge(other)
        return result
    }
}

/// The running, unnormalised online-softmax state of `rows` query rows for every head:
/// `sum` holds Σ 2^(s - m)·v, `rowMax` the shift m (the kernel's running max, which may lag the
/// true max by a bounded amount), `rowSum` Σ 2^(s - m); s and m are in base-2 units (the natural
/// scores times log2 e), as the kernel computes them.
/// A kernel folds key blocks in, `finish` or `result` normalises into new storage. `sum` is laid
/// out as O itself, so `takeResult` normalises it in place and hands it over: O is never held
/// twice; the accumulator is then spent until `reset` (which makes `sum` again).
public final class AttentionAccumulator {
    public let rows: Int
    public let heads: Int
    public let headDim: Int
    /// [rows, heads, headDim], O's layout: a head's row r at (r·heads + h)·headDim, rows
    /// heads·headDim apart (the kernel's GEMMs take that leading dimension).
    public var sum: [Float] { sumValues }
    /// [heads, rows]
    public var rowMax: UnsafeMutableBufferPointer<Float> { rowMaxStorage.buffer }
    /// [heads, rows]
    public var rowSum: UnsafeMutableBufferPointer<Float> { rowSumStorage.buffer }
    private var sumValues: [Float] = []
    /// `takeResult` handed `sum` over; nothing but `reset` may follow.
    private var spent = false
    private let rowMaxStorage: OwnedBuffer<Float>, rowSumStorage: OwnedBuffer<Float>
    /// One unit of `rowMax` in natural log: ln 2, or exactly scale / (the kernel's float scale·log2 e),
    /// which the kernel sets, so the LSE carries no error from rounding that product.
    public var maxUnit: Double = M_LN2

    public init(rows: Int, heads: Int, headDim: Int) {
        self.rows = rows
        self.heads = heads
        self.headDim = headDim
        rowMaxStorage = OwnedBuffer(uninitializedCount: max(1, heads * rows))
        rowSumStorage = OwnedBuffer(uninitializedCount: max(1, heads * rows))
        reset()
    }

    /// Elements from one row of `sum` to the next.
    public var rowStride: Int { heads * headDim }

    /// Runs `body` with `sum`'s storage (the kernel's folds write through it, on any thread,
    /// while `body` runs).
    public func withSum<Result>(_ body: (UnsafeMutablePointer<Float>) throws -> Result) rethrows -> Result {
        precondition(!spent, "AttentionAccumulator: its result was taken; reset() before folding or finishing again")
        return try sumValues.withUnsafeMutableBufferPointer { try body($0.baseAddress!) }
    }

    /// Back to "no keys seen".
    public func reset() {
        let count = max(1, rows * heads * headDim)
        if sumValues.count == count {
            sumValues.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        } else {
            sumValues = [Float](repeating: 0, count: count)
        }
        rowMax.update(repeating: -.infinity)
        rowSum.update(repeating: 0)
        spent = false
    }

    /// Writes the normalised output ([rows, heads, headDim]) and lse ([heads, rows] with row
    /// stride `lseStride`, so a shard can write into a whole-sequence LSE). Rows that saw no key
    /// get O = 0 and lse = -inf; rows whose scores were not finite get NaN, never "no key".
    public func finish(output: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>, lseStride: Int? = nil) {
        withSum { sum in normalise(sum, into: output, lse: lse, lseStride: lseStride ?? rows) }
    }

    private func normalise(_ sum: UnsafeMutablePointer<Float>, into output: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>, lseStride stride: Int) {
        let d = headDim
        let (rowMax, rowSum) = (self.rowMax, self.rowSum)
        for h in 0 ..< heads {
            for r in 0 ..< rows {
                let l = rowSum[h * rows + r]
                let o = output + (r * heads + h) * d
                if l > 0 {
                    let inv = 1 / l
                    let s = sum + (r * heads + h) * d
                    for i in 0 ..< d { o[i] = s[i] * inv }
                    lse[h * stride + r] = Float(Double(rowMax[h * rows + r]) * maxUnit + Foundation.log(Double(l)))
                } else if l == 0 {
                    o.update(repeating: 0, count: d)
                    lse[h * stride + r] = -.infinity
                } else {  // NaN: non-finite inputs reached this row; show it
                    o.update(repeating: .nan, count: d)
                    lse[h * stride + r] = .nan
                }
            }
        }
    }

    /// The normalised result, made in `sum`'s own storage, which it takes: no second copy of O.
    /// The accumulator is spent until `reset`.
    public func takeResult() -> PartialResult {
        var lse = [Float](repeating: 0, count: heads * rows)
        if rows > 0 && heads > 0 {
            lse.withUnsafeMutableBufferPointer { l in withSum { normalise($0, into: $0, lse: l.baseAddress!, lseStride: rows) } }
        }
        var output = sumValues
        sumValues = []
        spent = true
        if output.count != rows * heads * headDim { output = [] }  // the 1-element storage of an empty accumulator
        return PartialResult(rows: rows, heads: heads, headDim: headDim, output: output, lse: lse)
    }

    /// The normalised result as a value.
    public func result() -> PartialResult {
        var output = [Float](repeating: 0, count: rows * heads * headDim)
        var lse = [Float](repeating: 0, count: heads * rows)
        if rows > 0 && heads > 0 {
            output.withUnsafeMutableBufferPointer { o in
                lse.withUnsafeMutableBufferPointer { l in finish(output: o.baseAddress!, lse: l.baseAddress!) }
            }
        }
        return PartialResult(rows: rows, heads: heads, headDim: headDim, output: output, lse: lse)
    }
}
