// Refusing a run that cannot fit, before anything is allocated. Linux overcommits: an allocation
// far beyond the machine "succeeds" and the rank is killed later, or Swift traps. So the bytes a
// rank needs (its rows of Q, K, V and O, what its strategy holds besides: the ring's receive
// buffers, the heads all-to-all's full-sequence slices, star's queries (`workingFloats`), the
// kernel's score and probability tiles, and for verify the whole K and V) are estimated in
// floating point (no overflow) and compared with what this host has available for the ranks it runs.

import AttentionCore
import Foundation
import MPIBinding
import SequenceParallel

/// A run that needs more memory per rank than this host has available for it: how much, and how many ranks would fit it.
public struct MemoryBudgetExceeded: Error, CustomStringConvertible {
    public let description: String
}

/// A rank's memory need, estimated before anything is allocated, and the check that refuses a run this host cannot hold.
public enum MemoryBudget {
    /// Bytes one rank needs at least, at `ranks` ranks.
    public static func perRank(
        tokens: Int, shape: AttentionShape, ranks: Int, threads: Int, tiling: KernelTiling,
        wholeKeyValues: Bool, strategy: SequenceParallelStrategy = RingAttention()
    ) -> Double {
        let rows = (Double(tokens) / Double(max(1, ranks))).rounded(.up)
        let (h, kv, d) = (Double(shape.heads), Double(shape.kvHeads), Double(shape.headDim))
        var floats = rows * h * d * 3  // Q rows, the accumulator, O
        floats += rows * kv * d * 2  // K and V rows
        floats += rows * h * 3  // running max, sum, LSE
        floats += strategy.workingFloats(rows: rows, tokens: Double(tokens), shape: shape, ranks: ranks)
        floats += Double(threads) * 2 * Double(min(tiling.queryTile, tokens)) * Double(min(tiling.keyBlock, tokens))  // S and P
        if wholeKeyValues { floats += Double(tokens) * kv * d * 2 + rows * h * d }
        return floats * 4
    }

    /// Bytes this host can still give: MemAvailable, or a smaller cgroup limit.
    public static func available() -> Double? {
        var best: Double?
        if let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
            let kib = Double(line.split(separator: " ").dropFirst().first ?? "")
        {
            best = kib * 1024
        }
        if let text = try? String(contentsOfFile: "/sys/fs/cgroup/memory.max", encoding: .utf8),
            let limit = Double(text.trimmingCharacters(in: .whitespacesAndNewlines))
        {
            let used =
                (try? String(contentsOfFile: "/sys/fs/cgroup/memory.current", encoding: .utf8))
                .flatMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
            best = min(best ?? .infinity, limit - used)
        }
        return best
    }

    /// Ranks of this job on this host, as the launcher says (1 when it does not).
    public static var localRanks: Int {
        let environment = ProcessInfo.processInfo.environment
        for name in ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"] {
            if let value = environment[name], let n = Int(value), n >= 1 { return n }
        }
        return 1
    }

    /// Throws when a rank needs more than its share of this host's available memory, saying how
    /// much it needs and how many ranks (each with that share) would make the run fit.
    public static func check(
        tokens: Int, shape: AttentionShape, ranks: Int, threads: Int, tiling: KernelTiling,
        wholeKeyValues: Bool, strategy: SequenceParallelStrategy = RingAttention(), available: Double? = MemoryBudget.available(),
        localRanks: Int = MemoryBudget.localRanks
    ) throws {
        guard let available else { return }
        let share = available / Double(max(1, localRanks))
        let need = perRank(tokens: tokens, shape: shape, ranks: ranks, threads: threads, tiling: tiling, wholeKeyValues: wholeKeyValues, strategy: strategy)
        guard need > share else { return }
        func fits(_ p: Int) -> Bool {
            perRank(tokens: tokens, shape: shape, ranks: p, threads: threads, tiling: tiling, wholeKeyValues: wholeKeyValues, strategy: strategy) <= share
        }
        var advice: String
        if fits(1 << 30) {
            var (lo, hi) = (ranks, 1 << 30)  // fits(hi), not fits(lo)
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2
                if fits(mid) { hi = mid } else { lo = mid }
            }
            advice = "about \(hi) ranks with \(gib(share)) each would fit it"
        } else {
            advice = "no rank count fits it with \(gib(share)) per rank" + (wholeKeyValues ? " (verify holds the whole K and V on every rank; try run)" : "")
        }
        throw MemoryBudgetExceeded(
            description: "this run needs about \(gib(need)) per rank at \(ranks) rank(s) "
                + "(its rows of Q, K, V and O, what \(strategy.label) holds besides, kernel tiles\(wholeKeyValues ? ", and the whole K and V for the comparison" : "")), "
                + "but this host has \(gib(available)) available for its \(localRanks) rank(s), \(gib(share)) each; \(advice)")
    }

    static func gib(_ bytes: Double) -> String { String(format: "%.1f GiB", bytes / 1_073_741_824) }
}
