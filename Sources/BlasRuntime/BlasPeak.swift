// The physical limit of a rank: its measured sgemm throughput. Measured, never assumed, on the
// same threads the kernel uses (each thread multiplies its own matrices with one-thread BLAS,
// as the kernel's threads do), so a kernel's GFLOP/s can be stated as a fraction of it.

import Buffers
import CBLAS
import Dispatch
import FileFormats

#if canImport(Glibc)
    import Glibc
#endif

public enum BlasPeak {
    /// Best-of-`repeats` GFLOP/s of square n×n×n sgemms running on `threads` threads at once.
    public static func measure(n: Int = 1024, repeats: Int = 5, threads: Int = 1) -> Double {
        measure(m: n, n: n, k: n, repeats: repeats, threads: threads)
    }

    /// Best-of-`repeats` GFLOP/s of row-major m×n×k sgemms, C = A·B (or A·Bᵀ with `transposedB`,
    /// as the kernel's Q·Kᵀ), on `threads` threads at once. Small products are repeated so each
    /// timed round does at least about 1 GFLOP per thread.
    public static func measure(m: Int, n: Int, k: Int, transposedB: Bool = false, repeats: Int = 5, threads: Int = 1) -> Double {
        measure(m: m, n: n, k: k, repeats: repeats, threads: threads) { a, b, c in
            cblas_sgemm(
                CblasRowMajor, CblasNoTrans, transposedB ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), Int32(k),
                1, a, Int32(k), b, Int32(transposedB ? k : n), 0, c, Int32(n))
        }
    }

    /// The same for any m×n×k product of A [m, k], B [k, n] (or [n, k]) into C [m, n].
    public static func measure(
        m: Int, n: Int, k: Int, repeats: Int, threads: Int,
        product: @escaping @Sendable (UnsafePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Void
    ) -> Double {
        measure(m: m, n: n, k: k, repeats: repeats, threads: threads, operand: { $0 }) { _, a, b, c in product(a, b, c) }
    }

    /// Best-of-`repeats` GFLOP/s of square n×n×n bf16 products on `threads` threads at once (the
    /// bf16 counterpart of `measure(n:)`).
    public static func measureBF16(n: Int = 1024, repeats: Int = 5, threads: Int = 1) -> Double {
        measureBF16(m: n, n: n, k: n, repeats: repeats, threads: threads)
    }

    /// Best-of-`repeats` GFLOP/s of bf16 products (oneDNN, float32 accumulation), C = A·B (or
    /// A·Bᵀ with `transposedB`), adding to C when `accumulate`, on `threads` threads at once,
    /// each with its own `BF16Gemm`. Only where `BF16Gemm.path` uses oneDNN.
    public static func measureBF16(
        m: Int, n: Int, k: Int, transposedB: Bool = false, accumulate: Bool = false, repeats: Int = 5, threads: Int = 1
    ) -> Double {
        nonisolated(unsafe) let gemms = (0 ..< max(1, threads)).map { _ in BF16Gemm() }
        return measure(m: m, n: n, k: k, repeats: repeats, threads: threads, operand: { ElementType.bf16($0) }) { t, a, b, c in
            gemms[t].multiply(
                m: m, n: n, k: k, a: a, lda: k, b: b, ldb: transposedB ? k : n, transposedB: transposedB, accumulate: accumulate, c: c, ldc: n)
        }
    }

    /// The timing itself: operands of `Operand` made from small float values, C in float32, each
    /// thread multiplying its own matrices (`product` gets the thread's index).
    static func measure<Operand: BitwiseCopyable>(
        m: Int, n: Int, k: Int, repeats: Int, threads: Int, operand: (Float) -> Operand,
        product: @escaping @Sendable (Int, UnsafePointer<Operand>, UnsafePointer<Operand>, UnsafeMutablePointer<Float>) -> Void
    ) -> Double {
        let threads = max(1, threads)
        let value = { (i: Int, index: Int, t: Int) in Float((i &* 31 &+ index &* 7 &+ t) % 17) / 17 - 0.5 }
        let operands = (0 ..< threads).map { t -> [OwnedBuffer<Operand>] in
            [m * k, k * n].enumerated().map { index, size in
                let matrix = OwnedBuffer<Operand>(uninitializedCount: size)
                let buffer = matrix.buffer
                for i in 0 ..< size { buffer[i] = operand(value(i, index, t)) }
                return matrix
            }
        }
        let results = (0 ..< threads).map { t -> OwnedBuffer<Float> in
            let matrix = OwnedBuffer<Float>(uninitializedCount: m * n)
            let buffer = matrix.buffer
            for i in 0 ..< m * n { buffer[i] = value(i, 2, t) }
            return matrix
        }
        let calls = max(1, Int(1e9 / (2 * Double(m) * Double(n) * Double(k))))
        nonisolated(unsafe) let shared = (operands, results)
        let multiply: @Sendable (Int) -> Void = { t in
            let (a, b, c) = (UnsafePointer(shared.0[t][0].baseAddress), UnsafePointer(shared.0[t][1].baseAddress), shared.1[t].baseAddress)
            for _ in 0 ..< calls { product(t, a, b, c) }
        }
        var best = Double.infinity
        for _ in 0 ..< repeats + 1 {  // the first round warms caches and BLAS buffers
            let start = monotonicSeconds()
            if threads == 1 { multiply(0) } else { DispatchQueue.concurrentPerform(iterations: threads, execute: multiply) }
            best = min(best, monotonicSeconds() - start)
        }
        return 2 * Double(m) * Double(n) * Double(k) * Double(calls * threads) / best / 1e9
    }

    /// OpenBLAS's own thread count for one call.
    public static var blasThreads: Int { Int(openblas_get_num_threads()) }

    public static func setBlasThreads(_ count: Int) { openblas_set_num_threads(Int32(count)) }
}

/// Seconds on a monotonic clock.
public func monotonicSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}

/// This process's peak resident memory in bytes.
public func peakResidentBytes() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss * 1024  // Linux reports KiB
}
