// The physical limit of a rank: its measured sgemm throughput. Measured, never assumed, on the
// same threads the kernel uses (each thread multiplies its own matrices with one-thread BLAS,
// as the kernel's threads do), so a kernel's GFLOP/s can be stated as a fraction of it.

import Buffers
import CBLAS
import Dispatch

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
        let threads = max(1, threads)
        let sizes = [m * k, k * n, m * n]
        let matrices = (0 ..< threads).map { t -> [OwnedBuffer<Float>] in
            sizes.enumerated().map { index, size in
                let matrix = OwnedBuffer<Float>(uninitializedCount: size)
                let buffer = matrix.buffer
                for i in 0 ..< size { buffer[i] = Float((i &* 31 &+ index &* 7 &+ t) % 17) / 17 - 0.5 }
                return matrix
            }
        }
        let calls = max(1, Int(1e9 / (2 * Double(m) * Double(n) * Double(k))))
        nonisolated(unsafe) let shared = matrices
        let multiply: @Sendable (Int) -> Void = { t in
            let (a, b, c) = (shared[t][0].baseAddress, shared[t][1].baseAddress, shared[t][2].baseAddress)
            for _ in 0 ..< calls { product(a, b, c) }
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
