// How the kernel adds P·V to its accumulator: one cblas_sgemm per key block, or the same product
// in pieces small enough for OpenBLAS's small-matrix kernel, which reads P and V where they lie.
//
// OpenBLAS packs both operands of an sgemm into its own layout before multiplying. For P·V that
// is a copy of all of P (tq·tk floats) for tq·tk·d multiply-adds, one copy per d of them: at head
// dim 64 the packing of P took 5% of the kernel's time, V's another 2.7%. OpenBLAS 0.3.17 and
// later give their AVX-512 cores (SkylakeX, Cooperlake, SapphireRapids) a hand-written kernel
// for products of M·N·K ≤ 100³ that packs nothing, and `sgemm` takes it by itself for such
// products (unless both operands are transposed). Cut into pieces of that size, P·V ran 16%
// faster at head dim 64 and 25% at 32 (warm operands, 384 x 512 blocks), 5% at 48 and 80, and
// not faster from 96 up, where the packed kernel's register blocking pays for its copies. The
// other cores' small-matrix kernels are plain loops, slower than packing (by 15-45% on Haswell's).
//
// Each piece sums 128 keys from zero before adding them to the accumulator, as the packed
// kernel's blocks of the reduction do: one piece per block's 512 keys made the output's error
// against float64 27-43% larger (three runs), 128-key pieces made it smaller than packing's.

import BlasRuntime
import CBLAS

#if canImport(Glibc)
    import Glibc
#endif

/// How the kernel computes acc += P·V for a query tile and a key block.
public enum ValueProduct: Equatable, Sendable {
    /// One cblas_sgemm: OpenBLAS packs P and V.
    case packed
    /// cblas_sgemm on pieces of `rows` queries × `keys` keys, each small enough for OpenBLAS's
    /// unpacked small-matrix kernel.
    case pieces(rows: Int, keys: Int)

    /// OpenBLAS's bound on M·N·K for its small-matrix kernel.
    static let smallProductLimit = 1_000_000
    /// Keys per piece (the accuracy note above).
    static let pieceKeys = 128
    /// The largest head dim the pieces are used for.
    static let largestPieceHeadDim = 64

    /// The product for `headDim`, given whether OpenBLAS has an AVX-512 small-matrix kernel on
    /// the core it runs: pieces of 128 keys and as many rows (a multiple of 16) as the kernel's
    /// bound allows, at head dims up to 64; one packed product otherwise.
    public static func choice(headDim: Int, smallMatrixKernel: Bool) -> ValueProduct {
        guard smallMatrixKernel, headDim <= largestPieceHeadDim else { return .packed }
        return .pieces(rows: max(16, smallProductLimit / (headDim * pieceKeys) / 16 * 16), keys: pieceKeys)
    }

    /// The choice for `headDim` with the OpenBLAS in this process.
    public static func current(headDim: Int) -> ValueProduct {
        choice(headDim: headDim, smallMatrixKernel: BlasCore.hasSmallMatrixKernel)
    }

    /// acc[rows, d] += p[rows, keys] · v[keys, d]; rows of p lie `ldp` floats apart, of v and acc d.
    @inline(__always)
    func multiplyAdd(
        rows: Int, keys: Int, headDim d: Int, p: UnsafePointer<Float>, ldp: Int, v: UnsafePointer<Float>,
        into acc: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        switch self {
        case .packed:
            cblas_sgemm(
                CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(d), Int32(keys),
                1, p, Int32(ldp), v, Int32(d), 1, acc, Int32(ldc))
        case .pieces(let pieceRows, let pieceKeys):
            for row in stride(from: 0, to: rows, by: pieceRows) {
                let m = min(pieceRows, rows - row)
                for key in stride(from: 0, to: keys, by: pieceKeys) {
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(d), Int32(min(pieceKeys, keys - key)),
                        1, p + row * ldp + key, Int32(ldp), v + key * d, Int32(d), 1, acc + row * ldc, Int32(ldc))
                }
            }
        }
    }
}

extension ValueProduct: CustomStringConvertible {
    public var description: String {
        switch self {
        case .packed: "one packed sgemm"
        case .pieces(let rows, let keys): "\(rows)x\(keys) pieces for OpenBLAS's small-matrix kernel"
        }
    }
}

extension BlasCore {
    /// OpenBLAS's cores whose small-matrix sgemm kernels are hand-written AVX-512 code.
    static let smallMatrixCores: Set<String> = ["skylakex", "cooperlake", "sapphirerapids"]

    /// Whether an OpenBLAS running `core` computes small products (M·N·K ≤ 100³) with an
    /// AVX-512 kernel that packs nothing: the core is one of `smallMatrixCores` and the library
    /// exports that kernel (`exports` answers for a symbol name; built with SMALL_MATRIX_OPT,
    /// the default from 0.3.17 on). A DYNAMIC_ARCH library names it after the core.
    public static func smallMatrixKernel(core: String, exports: (String) -> Bool) -> Bool {
        smallMatrixCores.contains(core.lowercased())
            && (exports("sgemm_small_kernel_nn_\(core.uppercased())") || exports("sgemm_small_kernel_nn"))
    }

    /// `smallMatrixKernel` for the OpenBLAS in this process and the core it runs.
    public static let hasSmallMatrixKernel: Bool = smallMatrixKernel(core: current) { dlsym(nil, $0) != nil }
}
