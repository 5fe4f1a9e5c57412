// Vectorised exp and exp2 for the kernels; Swift's exp on a SIMD vector is a libm call per lane.
// The forward kernel uses `vectorExp2Scores` on scores it keeps in base 2. The backward kernel uses
// `vectorExpScores`, Cephes' expf: there exp2 raised dV's largest error against float64 by 10-40%
// over six seeds at head dim 128 (P is recomputed against the forward's float LSE, with nothing to
// cancel the extra rounding).

public typealias FloatVector = SIMD16<Float>

/// exp for the backward kernel's probabilities, whose inputs are scores minus the row's LSE and so
/// at most 88: Cephes' expf (range reduction by ln 2, its degree-7 polynomial, 2^n from the
/// exponent bits), about 1 ulp, without clamps (the exponent trick needs none below the limit). Exactly 0 below -87.33 and for -inf; lanes above
/// the limit or NaN give unspecified values (the kernel checks its shifts keep inputs below it).
@inlinable @inline(__always)
public func vectorExpScores(_ x: FloatVector) -> FloatVector {
    // n + 127 lands in the low mantissa bits of `shifted`; shifting them into the exponent field
    // gives 2^n directly (valid for n + 127 in 1 ... 254, i.e. x in [-87.33, 88]).
    // Written with explicit multiply-adds (`plusProduct`): Swift does not contract a * b + c by itself.
    let shifter = FloatVector(repeating: 12_582_912 + 127)
    let shifted = shifter.plusProduct(x, 1.442_695_04)
    let n = shifted - shifter
    let r = x.plusProduct(n, -0.693_359_375).plusProduct(n, 2.121_944_4e-4)
    let r2 = r * r
    let r4 = r2 * r2
    let a = FloatVector(repeating: 5.000_000_120_1e-1).plusProduct(r, 1.666_666_545_9e-1)
    let b = FloatVector(repeating: 4.166_579_589_4e-2).plusProduct(r, 8.333_451_907_3e-3)
    let c = FloatVector(repeating: 1.398_199_950_7e-3).plusProduct(r, 1.987_569_15e-4)
    let p = (r + 1).plusProduct(a.plusProduct(b, r2).plusProduct(c, r4), r2)
    let twoToN = unsafeBitCast(unsafeBitCast(shifted, to: SIMD16<Int32>.self) &<< 23, to: FloatVector.self)
    return (p * twoToN).replacing(with: 0, where: x .< -87.33)
}

extension SIMD16 where Scalar == Float {
    /// self + a·b: one fused multiply-add where the build targets hardware with it (Launch/setup's
    /// AVX2 and AVX-512 builds, arm64), a multiply and an add otherwise. A baseline x86-64 build
    /// (`swift build` without Launch/setup's flags) would turn `addingProduct` into a libm fmaf
    /// call per lane, and the kernel ran 7 times slower for it.
    @inlinable @inline(__always)
    public func plusProduct(_ a: Self, _ b: Self) -> Self {
        #if arch(arm64) || SEQPAR_BUILT_FOR_AVX2 || SEQPAR_BUILT_FOR_AVX512
            addingProduct(a, b)
        #else
            self + a * b
        #endif
    }

    @inlinable @inline(__always)
    public func plusProduct(_ a: Self, _ b: Float) -> Self { plusProduct(a, Self(repeating: b)) }
}

/// Lane-wise maximum, as one compare and one select.
@inlinable @inline(__always)
public func vectorMax(_ a: FloatVector, _ b: FloatVector) -> FloatVector {
    a.replacing(with: b, where: b .> a)
}

@inlinable @inline(__always)
func loadVector(_ p: UnsafePointer<Float>) -> FloatVector {
    UnsafeRawPointer(p).loadUnaligned(as: FloatVector.self)
}

@inlinable @inline(__always)
func storeVector(_ v: FloatVector, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: FloatVector.self)
}

/// 2^x for the kernel's softmax, whose scores arrive in base-2 units (the GEMM's alpha carries
/// log2 e), so the range reduction is two additions and no multiply: n = round(x), r = x - n
/// (exact), 2^r by a degree-6 minimax polynomial (0.93 ulp in float32 on [-1/2, 1/2]), and 2^n
/// from the exponent bits. 6 FMAs and 1 multiply per vector, against 12 in `vectorExpScores`.
/// Exactly 1 at 0; exactly 0 below -125 and for -inf; NaN stays NaN. Inputs must be at most
/// 127 (the kernel keeps them below its recompute threshold).
@inlinable @inline(__always)
public func vectorExp2Scores(_ x: FloatVector) -> FloatVector {
    exp2Scores(x) { r in
        // 2^r = 1 + r·(c1 + r·(c2 + ... + r·c6)), fitted (Lawson's minimax) with c0 fixed at 1.
        var q = FloatVector(repeating: 1.339_887_501_7e-3).plusProduct(r, 1.535_335_031_8e-4)
        q = FloatVector(repeating: 9.618_437_848_9e-3).plusProduct(q, r)
        q = FloatVector(repeating: 5.550_332_367_4e-2).plusProduct(q, r)
        q = FloatVector(repeating: 2.402_264_773_8e-1).plusProduct(q, r)
        return FloatVector(repeating: 6.931_471_824_6e-1).plusProduct(q, r)
    }
}

/// `vectorExp2Scores` for weights rounded to bf16 next (bf16 products' P): 2^r by a degree-4
/// polynomial (c0 fixed at 1, fitted for the least maximum relative error on [-1/2, 1/2]:
/// 2.8e-6, where bf16's rounding is up to 2^-9 = 2.0e-3), two FMAs fewer. Rounding then differs
/// from rounding the float32 exponential in about one weight in a thousand, by one bf16 ulp.
/// Same range reduction, limits and special values as `vectorExp2Scores`.
@inlinable @inline(__always)
public func vectorExp2ScoresForBF16(_ x: FloatVector) -> FloatVector {
    exp2Scores(x) { r in
        var q = FloatVector(repeating: 5.590_637_028_8e-2).plusProduct(r, 9.582_818_421_6e-3)
        q = FloatVector(repeating: 2.402_409_886_6e-1).plusProduct(q, r)
        return FloatVector(repeating: 6.931_241_998_3e-1).plusProduct(q, r)
    }
}

/// The base-2 exponentials' shared frame: n = round(x), r = x - n (exact), 2^x = (1 + r·q(r))·2^n
/// with `q` the polynomial's part after its constant 1, 2^n from the exponent bits; 0 below -125.
@inlinable @inline(__always)
func exp2Scores(_ x: FloatVector, _ q: (FloatVector) -> FloatVector) -> FloatVector {
    // round(x) + 127 lands in the low mantissa bits of `shifted` (1.5·2^23 makes the sum's ulp 1).
    let shifter = FloatVector(repeating: 12_582_912 + 127)
    let shifted = x + shifter
    let r = x - (shifted - shifter)
    let p = FloatVector(repeating: 1).plusProduct(q(r), r)
    let twoToN = unsafeBitCast(unsafeBitCast(shifted, to: SIMD16<Int32>.self) &<< 23, to: FloatVector.self)
    return (p * twoToN).replacing(with: 0, where: x .< -125)
}

/// The largest lane, by halving (four compare-and-selects), not a scalar walk over 16 lanes.
/// Lanes must not be NaN.
@inlinable @inline(__always)
public func horizontalMax(_ v: FloatVector) -> Float {
    let (l8, h8) = (v.lowHalf, v.highHalf)
    let m8 = l8.replacing(with: h8, where: h8 .> l8)
    let m4 = m8.lowHalf.replacing(with: m8.highHalf, where: m8.highHalf .> m8.lowHalf)
    let m2 = m4.lowHalf.replacing(with: m4.highHalf, where: m4.highHalf .> m4.lowHalf)
    return Swift.max(m2[0], m2[1])
}

/// The sum of the lanes, by halving (the order differs from a left-to-right sum by rounding only).
@inlinable @inline(__always)
public func horizontalSum(_ v: FloatVector) -> Float {
    let s8 = v.lowHalf + v.highHalf
    let s4 = s8.lowHalf + s8.highHalf
    let s2 = s4.lowHalf + s4.highHalf
    return s2[0] + s2[1]
}

/// Each lane rounded to the nearest bf16 value (ties to even), as a float; NaN stays NaN.
@inlinable @inline(__always)
func roundedToBF16(_ x: FloatVector) -> FloatVector {
    let bits = unsafeBitCast(x, to: SIMD16<UInt32>.self)
    let rounded = (bits &+ 0x7FFF &+ ((bits &>> 16) & 1)) & 0xFFFF_0000
    return unsafeBitCast(rounded, to: FloatVector.self).replacing(with: x, where: x .!= x)
}

/// Stores lanes already rounded to bf16 values (`roundedToBF16`) as their bf16 bits: the upper
/// halves, exactly: the odd 16-bit lanes on a little-endian CPU, picked by one shuffle.
/// (`SIMD16<UInt16>(truncatingIfNeeded:)` stayed a generic call, 4% of a bf16 forward's time.)
@inlinable @inline(__always)
func storeBF16(_ x: FloatVector, _ p: UnsafeMutablePointer<UInt16>) {
    let v = unsafeBitCast(x, to: SIMD32<UInt16>.self)
    let halves = SIMD16<UInt16>(
        v[1], v[3], v[5], v[7], v[9], v[11], v[13], v[15], v[17], v[19], v[21], v[23], v[25], v[27], v[29], v[31])
    UnsafeMutableRawPointer(p).storeBytes(of: halves, as: SIMD16<UInt16>.self)
}
