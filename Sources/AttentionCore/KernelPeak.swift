// The GEMM rate at the kernel's own products: BlasPeak's measurement (BlasRuntime) of the two
// GEMMs a kernel tile makes, at its tiling and with its P·V product (sgemm, or oneDNN's bf16
// matmul for bf16 products), for bench's ceilings.

import BlasRuntime

extension BlasPeak {
    /// The sgemm rate at the kernel's own products for one head dim and tiling: Q·Kᵀ
    /// (queryTile × keyBlock × headDim) and P·V (queryTile × headDim × keyBlock, computed as
    /// `valueProduct` says, adding to its output as the kernel does), which do equal FLOPs, so
    /// their combined rate is the harmonic mean. The ceiling of a kernel made of these products
    /// and nothing else.
    /// With bf16 `products`, the bf16 rate (oneDNN) of the same two products, as the kernel makes them.
    public static func measureKernelShapes(
        headDim: Int, tiling: KernelTiling, valueProduct: ValueProduct, products: KernelProducts = .float32, threads: Int = 1, repeats: Int = 5
    )
        -> (scores: Double, values: Double, combined: Double)
    {
        let (rows, keys) = (tiling.queryTile, tiling.keyBlock)
        let scores: Double, values: Double
        if products == .bf16 {
            scores = measureBF16(m: rows, n: keys, k: headDim, transposedB: true, accumulate: true, repeats: repeats, threads: threads)
            values = measureBF16(m: rows, n: headDim, k: keys, accumulate: true, repeats: repeats, threads: threads)
        } else {
            scores = measure(m: rows, n: keys, k: headDim, transposedB: true, repeats: repeats, threads: threads)
            values = measure(m: rows, n: headDim, k: keys, repeats: repeats, threads: threads) { p, v, acc in
                valueProduct.multiplyAdd(rows: rows, keys: keys, headDim: headDim, p: p, ldp: keys, v: v, into: acc, ldc: headDim)
            }
        }
        return (scores, values, 2 / (1 / scores + 1 / values))
    }
}
