// Vectorised exp for the softmax. Swift's exp on a SIMD vector is a libm call per lane; this is
// Cephes' expf (range reduction by ln 2, its degree-7 polynomial, 2^n built from the exponent bits),
// about 1 ulp, all lanes at once. Inputs below -87.3 (including -inf) give exactly 0.

public typealias FloatVector = SIMD16<Float>

@inlinable @inline(__always)
public func vectorExp(_ x: FloatVector) -> FloatVector {
    // Compare-and-select, not clamped()/pointwiseMin: those stay generic calls per vector.
    let underflow = x .< -87.33
    let clamped = x.replacing(with: -87.33, where: underflow).replacing(with: 88.37, where: x .> 88.37)
    // n = round(x / ln2) by the 1.5·2^23 trick: the integer lands in the low mantissa bits.
    let shifter = FloatVector(repeating: 12_582_912)
    let shifted = clamped * 1.442_695_04 + shifter
    let n = shifted - shifter
    var r = clamped - n * 0.693_359_375
    r = r - n * -2.121_944_4e-4
    // exp(r) = 1 + r + r²·(p5 + p4 r + p3 r² + p2 r³ + p1 r⁴ + p0 r⁵), evaluated by Estrin's
    // scheme: three independent pairs, then two levels, instead of a 12-deep Horner chain.
    let r2 = r * r
    let r4 = r2 * r2
    let a = r * 1.666_666_545_9e-1 + 5.000_000_120_1e-1
    let b = r * 8.333_451_907_3e-3 + 4.166_579_589_4e-2
    let c = r * 1.987_569_15e-4 + 1.398_199_950_7e-3
    let p = (a + b * r2 + c * r4) * r2 + r + 1
    let bits = unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- 0x4B40_0000  // n as an integer
    let twoToN = unsafeBitCast((bits &+ 127) &<< 23, to: FloatVector.self)
    return (p * twoToN).replacing(with: 0, where: underflow)
}

/// exp for the kernel's softmax, where inputs are scores minus a running max and so at most
/// 88: the same polynomial and accuracy as `vectorExp`, without its clamps (the
/// exponent trick needs none below the limit). Exactly 0 below -87.33 and for -inf; lanes above
/// the limit or NaN give unspecified values (the kernel checks its shifts keep inputs below it).
@inlinable @inline(__always)
public func vectorExpScores(_ x: FloatVector) -> FloatVector {
    // n + 127 lands in the low mantissa bits of `shifted`; shifting them into the exponent field
    // gives 2^n directly (valid for n + 127 in 1 ... 254, i.e. x in [-87.33, 88]).
    // Written with explicit fused multiply-adds: Swift does not contract a * b + c by itself.
    let shifter = FloatVector(repeating: 12_582_912 + 127)
    let shifted = shifter.addingProduct(x, 1.442_695_04)
    let n = shifted - shifter
    let r = x.addingProduct(n, -0.693_359_375).addingProduct(n, 2.121_944_4e-4)
    let r2 = r * r
    let r4 = r2 * r2
    let a = FloatVector(repeating: 5.000_000_120_1e-1).addingProduct(r, 1.666_666_545_9e-1)
    let b = FloatVector(repeating: 4.166_579_589_4e-2).addingProduct(r, 8.333_451_907_3e-3)
    let c = FloatVector(repeating: 1.398_199_950_7e-3).addingProduct(r, 1.987_569_15e-4)
    let p = (r + 1).addingProduct(a.addingProduct(b, r2).addingProduct(c, r4), r2)
    let twoToN = unsafeBitCast(unsafeBitCast(shifted, to: SIMD16<Int32>.self) &<< 23, to: FloatVector.self)
    return (p * twoToN).replacing(with: 0, where: x .< -87.33)
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
