// The physical limit of a rank: its measured sgemm throughput. Measured, never assumed, on the
// same threads the kernel uses (each thread multiplies its own matrices with one-thread BLAS,
// as the kernel's threads do), so a kernel's GFLOP/s can be stated as a fraction of it.

import CBLAS
import Dispatch
#if canImport(Glibc)
import Glibc
#endif

public enum BlasPeak {
    /// Best-of-`repeats` GFLOP/s of square n×n×n sgemms running on `threads` threads at once.
    public static func measure(n: Int = 1024, repeats: Int = 5, threads: Int = 1) -> Double {
        let threads = max(1, threads)
        let matrices = (0 ..< threads).map { t -> [UnsafeMutableBufferPointer<Float>] in
            (0 ..< 3).map { m in
                let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: n * n)
                for i in 0 ..< n * n { buffer[i] = Float((i &* 31 &+ m &* 7 &+ t) % 17) / 17 - 0.5 }
                return buffer
            }
        }
        defer { matrices.joined().forEach { $0.deallocate() } }
        nonisolated(unsafe) let shared = matrices
        let multiply: @Sendable (Int) -> Void = { t in
            let (a, b, c) = (shared[t][0].baseAddress!, shared[t][1].baseAddress!, shared[t][2].baseAddress!)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(n), Int32(n), 1, a, Int32(n), b, Int32(n), 0, c, Int32(n))
        }
        var best = Double.infinity
        for _ in 0 ..< repeats + 1 {            // the first round warms caches and BLAS buffers
            let start = monotonicSeconds()
            if threads == 1 { multiply(0) } else { DispatchQueue.concurrentPerform(iterations: threads, execute: multiply) }
            best = min(best, monotonicSeconds() - start)
        }
        return 2 * Double(n * n * n) * Double(threads) / best / 1e9
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
    return usage.ru_maxrss * 1024        // Linux reports KiB
}
