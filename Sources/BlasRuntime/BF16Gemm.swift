// bf16 products: the GEMMs of a bf16 job through oneDNN's matmul (bf16 operands, float32
// accumulation and result), where float32 jobs use OpenBLAS's sgemm.
//
// oneDNN makes a primitive per product shape (its JIT writes a kernel for the shape), so each
// thread keeps the products it has made (`BF16Gemm`), and oneDNN's own primitive cache makes a
// shape seen on another thread or by an earlier kernel cheap. Whether bf16 runs on oneDNN at all
// is decided once per process (`BF16Gemm.path`): only where the CPU has bf16 units (AVX512-BF16 or
// AMX) and oneDNN's kernel for them computes a test product exactly; elsewhere the kernel widens
// bf16 to float32 and runs sgemm, at float32 speed. SEQPAR_BF16_GEMM=off asks for that path on
// any CPU (the comparison bench and the tests make).

import COneDNN
import FileFormats

#if canImport(Glibc)
    import Glibc
#endif

/// How this process multiplies bf16 operands.
public enum BF16Path: Equatable, Sendable, CustomStringConvertible {
    /// oneDNN's matmul, with the implementation it runs (as DNNL_VERBOSE names it, e.g.
    /// "brg:avx512_core_bf16", "brg:avx512_core_amx").
    case onednn(implementation: String, version: String)
    /// Widened to float32 as the kernel copies its operands, and multiplied by sgemm.
    case widened(reason: String)

    public var usesBF16Units: Bool { if case .onednn = self { true } else { false } }

    public var description: String {
        switch self {
        case .onednn(let implementation, let version): "oneDNN \(version) matmul \(implementation), float32 accumulation"
        case .widened(let reason): "converted to float32 as read, float32 GEMM (sgemm), since \(reason)"
        }
    }
}

/// The bf16 products one thread runs: `c = alpha·a·op(b) (+ c)`, each shape made once and kept.
/// Not for concurrent use: one per thread.
public final class BF16Gemm {
    private struct Shape: Hashable {
        let m, n, k, lda, ldb, ldc: Int
        let transposedA, transposedB, accumulate: Bool
        let alphaBits: UInt32
    }
    private var made: [Shape: OpaquePointer] = [:]

    public init() {}

    deinit { for gemm in made.values { seqpar_bf16_gemm_destroy(gemm) } }

    /// c[m, n] (rows ldc apart) = alpha · A · B (+ c when `accumulate`): A is a's [m, k] rows
    /// (lda apart), or with `transposedA` the transpose of a's [k, m] rows; B is b's [k, n] rows
    /// (ldb apart), or with `transposedB` the transpose of b's [n, k] rows.
    @inline(__always)
    public func multiply(
        m: Int, n: Int, k: Int, alpha: Float = 1, a: UnsafePointer<UInt16>, lda: Int, transposedA: Bool = false,
        b: UnsafePointer<UInt16>, ldb: Int, transposedB: Bool, accumulate: Bool, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        let shape = Shape(
            m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc, transposedA: transposedA, transposedB: transposedB, accumulate: accumulate,
            alphaBits: alpha.bitPattern)
        let gemm: OpaquePointer
        if let known = made[shape] {
            gemm = known
        } else {
            gemm = Self.make(shape)
            made[shape] = gemm
        }
        let status = seqpar_bf16_gemm_run(gemm, a, b, c)
        precondition(status == 0, "oneDNN's bf16 matmul \(m)x\(n)x\(k) failed to run (status \(status))")
    }

    /// Shapes this thread has made.
    public var shapesMade: Int { made.count }

    private static func make(_ shape: Shape) -> OpaquePointer {
        var error = [CChar](repeating: 0, count: 256)
        guard
            let gemm = seqpar_bf16_gemm_create(
                Int64(shape.m), Int64(shape.n), Int64(shape.k), shape.transposedA ? 1 : 0, shape.transposedB ? 1 : 0, Int64(shape.lda), Int64(shape.ldb),
                Int64(shape.ldc),
                Float(bitPattern: shape.alphaBits), shape.accumulate ? 1 : 0, &error, error.count)
        else {
            // The path was chosen because oneDNN made and ran a product: a failure now is not
            // the caller's input but the machine (memory), so it stops here with the reason.
            fatalError("oneDNN could not make a bf16 matmul \(shape.m)x\(shape.n)x\(shape.k): \(message(error))")
        }
        return gemm
    }

    private static func message(_ text: [CChar]) -> String {
        String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The path of this process (decided on first use): oneDNN where the CPU has bf16 units and
    /// oneDNN multiplies a test product exactly on them, else widening, with the reason.
    public static let path: BF16Path = decidePath(cpu: .current, setting: getenv("SEQPAR_BF16_GEMM").map { String(cString: $0) })

    /// The decision for `cpu` and a SEQPAR_BF16_GEMM `setting` (oneDNN is asked only when the CPU has units).
    public static func decidePath(cpu: CPUFeatures, setting: String?) -> BF16Path {
        if setting == "off" { return .widened(reason: "SEQPAR_BF16_GEMM=off") }
        guard cpu.avx512bf16 || cpu.amxBF16 else {
            return .widened(reason: "this CPU (\(cpu.summary)) has no bf16 units (AVX512-BF16 or AMX)")
        }
        // A 48x40x32 product of small integers, exact in bf16 and float32: a · bᵀ + c.
        let (m, n, k) = (48, 40, 32)
        let a = (0 ..< m * k).map { ElementType.bf16(Float($0 % 7) - 3) }
        let b = (0 ..< n * k).map { ElementType.bf16(Float($0 % 5) - 2) }
        var c = [Float](repeating: 1, count: m * n)
        var error = [CChar](repeating: 0, count: 256)
        guard let gemm = seqpar_bf16_gemm_create(Int64(m), Int64(n), Int64(k), 0, 1, Int64(k), Int64(k), Int64(n), 1, 1, &error, error.count) else {
            return .widened(reason: "oneDNN could not make a bf16 matmul: \(message(error))")
        }
        defer { seqpar_bf16_gemm_destroy(gemm) }
        let implementation = String(cString: seqpar_bf16_gemm_implementation(gemm))
        let status = seqpar_bf16_gemm_run(gemm, a, b, &c)
        guard status == 0 else { return .widened(reason: "oneDNN's bf16 matmul failed to run (status \(status))") }
        for i in 0 ..< m {
            for j in 0 ..< n {
                var expected: Float = 1
                for l in 0 ..< k { expected += (Float((i * k + l) % 7) - 3) * (Float((j * k + l) % 5) - 2) }
                if c[i * n + j] != expected {
                    return .widened(reason: "oneDNN's bf16 matmul (\(implementation)) gave \(c[i * n + j]) where \(expected) is exact")
                }
            }
        }
        // oneDNN computes bf16 on any AVX-512 CPU, emulating the products where there are no
        // units ("avx512_core" without "bf16"), and by reference loops anywhere: both slower than sgemm.
        guard implementation.contains("bf16") || implementation.contains("amx") else {
            return .widened(reason: "oneDNN's bf16 matmul here is \(implementation), not a kernel for the CPU's bf16 units")
        }
        return .onednn(implementation: implementation, version: String(cString: seqpar_onednn_version()))
    }
}

/// The bf16 bits of `count` floats, rounded to nearest even, NaN staying a quiet NaN (the bits of
/// `ElementType.bf16`): by AVX512-BF16's conversion instruction where the CPU has it, else 16 at
/// a time in integer arithmetic (`instruction: false` takes it on any CPU). The instruction
/// flushes float32 subnormals (below 2^-126) to zero, as the bf16 dot products themselves treat
/// subnormal inputs (AVX512-BF16's and AMX's products take them as zero), so the kernels use it
/// for every operand.
@inline(__always)
public func narrowToBF16(
    _ source: UnsafePointer<Float>, into destination: UnsafeMutablePointer<UInt16>, count: Int, instruction: Bool = BF16Gemm.hasConversionInstruction
) {
    if instruction {
        seqpar_narrow_bf16(source, destination, count)
        return
    }
    typealias Bits = SIMD16<UInt32>
    var c = 0
    while c + 16 <= count {
        let x = UnsafeRawPointer(source + c).loadUnaligned(as: SIMD16<Float>.self)
        let bits = unsafeBitCast(x, to: Bits.self)
        var rounded = (bits &+ 0x7FFF &+ ((bits &>> 16) & 1)) &>> 16
        rounded.replace(with: (bits &>> 16) | 0x40, where: x .!= x)
        UnsafeMutableRawPointer(destination + c).storeBytes(of: SIMD16<UInt16>(truncatingIfNeeded: rounded), as: SIMD16<UInt16>.self)
        c += 16
    }
    while c < count {
        destination[c] = ElementType.bf16(source[c])
        c += 1
    }
}

/// One row of the bf16 forward's softmax by AVX512-BF16's conversion (only where
/// `BF16Gemm.hasConversionInstruction`): e = 2^(row - shift) for `count` scores in base-2 units,
/// its bf16 bits written to `bits`; returns the sum of the rounded weights and the largest
/// row - shift. The kernel's own exp2 pass computes the same in Swift on other CPUs.
@inline(__always)
public func exp2RowToBF16(_ row: UnsafePointer<Float>, minus shift: Float, bits: UnsafeMutablePointer<UInt16>, count: Int) -> (sum: Float, max: Float) {
    var (sum, max): (Float, Float) = (0, 0)
    seqpar_exp2_row_bf16(row, shift, bits, count, &sum, &max)
    return (sum, max)
}

extension BF16Gemm {
    /// Whether this CPU converts float32 to bf16 in one instruction (AVX512-BF16).
    public static let hasConversionInstruction = CPUFeatures.current.avx512bf16 && CPUFeatures.current.avx512vl
}

/// `source` as the sum of two bf16 values per element, high + low (each rounded to nearest even,
/// the low part from the high part's remainder): 16 bits of significand instead of 8. The bf16
/// backward multiplies dS·K in both parts, since dQ sums terms of both signs that cancel.
/// (By AVX512-BF16's conversion where the CPU has it, subnormals to zero as `narrowToBF16`.)
@inline(__always)
public func splitToBF16(_ source: UnsafePointer<Float>, high: UnsafeMutablePointer<UInt16>, low: UnsafeMutablePointer<UInt16>, count: Int) {
    if BF16Gemm.hasConversionInstruction {
        seqpar_split_bf16(source, high, low, count)
        return
    }
    typealias Bits = SIMD16<UInt32>
    @inline(__always) func round(_ bits: Bits) -> Bits { (bits &+ 0x7FFF &+ ((bits &>> 16) & 1)) & 0xFFFF_0000 }
    var c = 0
    while c + 16 <= count {
        let x = UnsafeRawPointer(source + c).loadUnaligned(as: SIMD16<Float>.self)
        let upper = round(unsafeBitCast(x, to: Bits.self))
        let rest = x - unsafeBitCast(upper, to: SIMD16<Float>.self)
        let lower = round(unsafeBitCast(rest, to: Bits.self))
        UnsafeMutableRawPointer(high + c).storeBytes(of: SIMD16<UInt16>(truncatingIfNeeded: upper &>> 16), as: SIMD16<UInt16>.self)
        UnsafeMutableRawPointer(low + c).storeBytes(of: SIMD16<UInt16>(truncatingIfNeeded: lower &>> 16), as: SIMD16<UInt16>.self)
        c += 16
    }
    while c < count {
        let upper = ElementType.bf16(source[c])
        high[c] = upper
        low[c] = ElementType.bf16(source[c] - ElementType.float(bf16: upper))
        c += 1
    }
}
