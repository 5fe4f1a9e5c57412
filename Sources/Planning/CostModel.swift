// A cost model of the dense strategies, from probe figures: predicts the time of a ring of head
// groups (ring, zigzag, heads and every mesh shape are such rings; each strategy's descriptor
// says which) for one problem, so `--strategy auto` can pick and `bench` can check the model
// against measured times.
//
// Compute: a rank's FLOPs / (its sgemm rate x the kernel's efficiency), where the efficiency is
// the fused kernel's GFLOP/s over sgemm's on one rank (measured: 0.8, see `defaultKernelEfficiency`);
// a bf16 job's at the probe's bf16 rate instead (oneDNN's, sgemm's where a rank widens bf16), and its
// Q/K/V/dO bytes at 2 per element (O, LSE and the merged partials travel in float32).
// Ring-shaped passes run in lockstep: step s costs the slowest position's max(compute of the
// block in hand, latency + bytes of the next block's rows it reads / bandwidth), so a contiguous
// causal ring is paid at its busiest rank and zigzag's balanced work shows. Head all-to-alls are blocking: their time adds.
// Point to point: t(b) = latency + b / bandwidth, latency from the smallest probed message and
// bandwidth from the largest. All-to-all among m ranks: latency + (m-1) b / bandwidth, likewise.
// Every mask is modelled by its visible pairs (AttentionMask: none and causal in closed form,
// windows, S2 and the rest counted row by row). Not modelled: packing copies, and cores shared by more ranks than they can run at once beyond what the
// probe's all-at-once sgemm rate already shows.

import AttentionCore
import Foundation

public struct AttentionProblem: Equatable, Sendable {
    public var tokens: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var mask: AttentionMask
    public var ranks: Int
    /// Bytes per element of what travels in the job's type (Q, K, V, dO): 4, or 2 for bf16/f16.
    public var elementBytes = 4
    /// A bf16 job: its products run at the bf16 rate.
    public var bf16 = false

    /// Whether the mask hides later keys (so zigzag layouts balance it).
    public var causal: Bool { mask.isCausal }

    public init(tokens: Int, heads: Int, kvHeads: Int, headDim: Int, mask: AttentionMask, ranks: Int) {
        self.tokens = tokens
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.mask = mask
        self.ranks = ranks
    }
}

/// One strategy's predicted time.
public struct Prediction: Equatable, Sendable {
    /// The strategy's registered name.
    public var strategy: String
    /// Which of the strategy's variants, when it has several (mesh's "2x2"); the strategy's
    /// descriptor turns it back into options (`StrategyDescriptor.applyVariant`).
    public var variant: String?
    public var seconds: Double
    /// The parts: compute on the busiest path, and communication not hidden behind it.
    public var computeSeconds: Double
    public var communicationSeconds: Double

    public var label: String { variant.map { "\(strategy) \($0)" } ?? strategy }

    public static func == (a: Prediction, b: Prediction) -> Bool {
        a.label == b.label && a.seconds == b.seconds && a.computeSeconds == b.computeSeconds && a.communicationSeconds == b.communicationSeconds
    }
}

public struct CostModel: Sendable {
    /// Fused kernel GFLOP/s / sgemm GFLOP/s on one rank of the development machine (Zen 5, AVX-512
    /// sgemm at about 200 GFLOP/s; `bench`, best of 3): 0.83 at 4096 x 8 x 128, 0.78 at head dim 64
    /// with 2 kv heads, 0.82 causal, 0.80 at 8192 causal tokens (zigzag, 1 and 2 ranks).
    public static let defaultKernelEfficiency = 0.8

    /// FLOP/s of the slowest rank's kernel.
    public let computeRate: Double
    /// The same for bf16 jobs; nil when the figures have no bf16 rate (then `computeRate`).
    public let bf16ComputeRate: Double?
    public let latency: Double
    public let bandwidth: Double
    public let allToAllLatency: Double
    public let allToAllBandwidth: Double

    public init(figures: ProbeFigures, kernelEfficiency: Double = defaultKernelEfficiency) {
        computeRate = (figures.sgemmGflops.min() ?? 1) * 1e9 * kernelEfficiency
        bf16ComputeRate = figures.bf16Gflops.flatMap { $0.min() }.map { $0 * 1e9 * kernelEfficiency }
        let p2p = figures.pointToPoint.sorted { $0.bytes < $1.bytes }
        latency = (p2p.first?.latencyMicroseconds ?? 0) * 1e-6
        let pointToPointBandwidth = p2p.last.map { $0.bandwidthMBps * 1e6 } ?? .infinity
        bandwidth = pointToPointBandwidth
        let a2a = figures.allToAll.sorted { $0.bytesPerPeer < $1.bytesPerPeer }
        allToAllLatency = (a2a.first?.microseconds ?? 0) * 1e-6
        allToAllBandwidth = a2a.last.map { $0.bandwidthMBps > 0 ? $0.bandwidthMBps * 1e6 : pointToPointBandwidth } ?? pointToPointBandwidth
    }

    public init(
        computeRate: Double, bf16ComputeRate: Double? = nil, latency: Double, bandwidth: Double, allToAllLatency: Double, allToAllBandwidth: Double
    ) {
        self.computeRate = computeRate
        self.bf16ComputeRate = bf16ComputeRate
        self.latency = latency
        self.bandwidth = bandwidth
        self.allToAllLatency = allToAllLatency
        self.allToAllBandwidth = allToAllBandwidth
    }

    public func pointToPoint(bytes: Double) -> Double { bytes > 0 ? latency + bytes / bandwidth : 0 }

    public func allToAll(bytesPerPeer: Double, members: Int) -> Double {
        members > 1 ? allToAllLatency + Double(members - 1) * bytesPerPeer / allToAllBandwidth : 0
    }

    /// The time of a ring-and-head-group strategy: Ph ranks per head group, P / Ph positions on a
    /// ring, zigzag or contiguous (ring and zigzag: Ph = 1; heads: Ph = P; mesh: in between).
    /// Each strategy's descriptor calls it with its own shape (`StrategyRegistry.predictions`).
    public func predict(_ problem: AttentionProblem, headGroup: Int, zigzag: Bool, name: String) -> Prediction {
        let positions = problem.ranks / headGroup, d = Double(problem.headDim)
        let computeRate = problem.bf16 ? (bf16ComputeRate ?? computeRate) : computeRate, elementBytes = Double(problem.elementBytes)
        // The layout the run would use: zigzag or contiguous chunks, or for packed documents the
        // balanced layout the ring strategies pick (whole documents, head-tail or mixed).
        let partition = TokenPartition.balanced(
            tokens: problem.tokens, ranks: problem.ranks, layout: zigzag ? .zigzag : .contiguous, groupSize: headGroup, mask: problem.mask)
        let segments = (0 ..< positions).map(partition.positionSegments)
        let rows = segments.map { $0.reduce(0) { $0 + $1.count } }
        // The busiest member of a group: the most heads, and the most kv heads they read.
        let group = problem.heads / problem.kvHeads
        let memberHeads = (0 ..< headGroup).map { chunk($0, of: headGroup, problem.heads) }
        let heads = Double(memberHeads.map(\.count).max() ?? 0)
        let kvHeads = Double(memberHeads.map { ($0.upperBound - 1) / group - $0.lowerBound / group + 1 }.max() ?? 0)

        // Pairs each position sees at each step; the pass ends after the furthest step at which
        // some position still sees the block arriving (RingPass.steps), so later blocks never move.
        let pairs = (0 ..< positions).map { step in
            (0 ..< positions).map { position in
                let source = (position - step + positions) % positions
                return segments[position].reduce(0.0) { sum, q in
                    segments[source].reduce(sum) { $0 + visiblePairs(queries: q, keys: $1, mask: problem.mask, heads: problem.heads) }
                }
            }
        }
        let steps = 1 + ((1 ..< positions).last { step in pairs[step].contains { $0 > 0 } } ?? 0)
        // The forward sends each block's rows that a position's queries may read straight to it
        // (RingPass.run): during step s a position receives what it reads at step s + 1.
        let stacked = segments.map(ShardSegment.stacked)
        let indexes = stacked.map(SegmentIndex.init)
        func rowsRead(at step: Int, by position: Int) -> Int {
            let source = (position - step + positions) % positions
            return indexes[position].keysRead(from: stacked[source], mask: problem.mask).reduce(0) { $0 + $1.positions.count }
        }
        var compute = 0.0, total = 0.0
        for step in 0 ..< steps {
            var slowest = 0.0, slowestCompute = 0.0
            for position in 0 ..< positions {
                let seconds = 4 * d * heads * pairs[step][position] / computeRate
                let transfer = step < steps - 1 ? pointToPoint(bytes: 2 * Double(rowsRead(at: step + 1, by: position)) * kvHeads * d * elementBytes) : 0
                slowest = max(slowest, max(seconds, transfer))
                slowestCompute = max(slowestCompute, seconds)
            }
            total += slowest
            compute += slowestCompute
        }
        if headGroup > 1 {  // scatter Q, K, V; gather O, LSE: each member's rows of the others' heads
            let memberRows = Double(rows.max() ?? 0) / Double(headGroup)
            let exchanges = zip([heads * d, kvHeads * d, kvHeads * d, heads * d, heads], [elementBytes, elementBytes, elementBytes, 4, 4]).map {
                memberRows * $0 * $1
            }
            total += exchanges.reduce(0) { $0 + allToAll(bytesPerPeer: $1, members: headGroup) }
        }
        return Prediction(strategy: name, variant: nil, seconds: total, computeSeconds: compute, communicationSeconds: total - compute)
    }

    /// The predictions side by side.
    public static func table(_ predictions: [Prediction]) -> String {
        var lines = ["strategy     predicted s   compute s   exposed comm s"]
        for p in predictions {
            lines.append(p.label.padding(12) + String(format: "%12.4f%12.4f%17.4f", p.seconds, p.computeSeconds, p.communicationSeconds))
        }
        return lines.joined(separator: "\n")
    }
}

/// Chunk `c` of `count` equal-as-possible chunks of `n` (TokenPartition's split).
func chunk(_ c: Int, of count: Int, _ n: Int) -> Range<Int> { (c * n / count) ..< ((c + 1) * n / count) }

/// (query, key) pairs a mask leaves between two ranges of global positions, per head (the mean
/// over `heads` heads for masks that differ by head).
public func visiblePairs(queries q: Range<Int>, keys k: Range<Int>, mask: AttentionMask, heads: Int) -> Double {
    switch mask {
    case .none: return visiblePairs(queries: q, keys: k, causal: false)
    case .causal: return visiblePairs(queries: q, keys: k, causal: true)
    case let .slices(slices): return slices.visiblePairs(queries: q, keys: k)
    default:
        guard !q.isEmpty, !k.isEmpty else { return 0 }
        // Keys 0..<k.upperBound minus keys 0..<k.lowerBound, counted row by row; over every head
        // only where the mask differs by head (S2).
        var perHead = heads
        if case .s2 = mask {} else { perHead = 1 }
        let upTo = { (tokens: Int) in mask.visiblePairs(queries: q, tokens: tokens, heads: perHead) }
        return (upTo(k.upperBound) - upTo(k.lowerBound)) / Double(max(1, perHead))
    }
}

/// (query, key) pairs between two ranges of global positions, dense or causal, in closed form.
public func visiblePairs(queries q: Range<Int>, keys k: Range<Int>, causal: Bool) -> Double {
    guard !q.isEmpty, !k.isEmpty else { return 0 }
    guard causal else { return Double(q.count) * Double(k.count) }
    // Query i sees min(max(i - k.lo + 1, 0), |k|) keys: zero below k, a ramp across k, all above.
    func ramp(_ a: Int, _ b: Int) -> Double {  // sum over i in a..<b of (i - k.lo + 1)
        guard b > a else { return 0 }
        let first = Double(a - k.lowerBound + 1), last = Double(b - 1 - k.lowerBound + 1)
        return (first + last) * Double(b - a) / 2
    }
    let rampPart = ramp(max(q.lowerBound, k.lowerBound), min(q.upperBound, k.upperBound))
    let full = Double(max(0, q.upperBound - max(q.lowerBound, k.upperBound))) * Double(k.count)
    return rampPart + full
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self + " " : self + String(repeating: " ", count: width - count) }
}
