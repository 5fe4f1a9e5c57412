// The result is refused rather than reported when it is not a number. Inputs are finite (they are
// checked when loaded), so a NaN or infinity in O or LSE means float32 overflowed: scale * q.k
// beyond ±3.4e38 (a huge --scale or huge Q/K values), or a sum of huge V values. The kernel marks
// a row whose scores were not finite with lse = NaN (AttentionAccumulator.finish), and merges
// keep it. A row may say "sees no key" (O = 0, lse = -inf) only when the mask hides every key
// from it. One pass over this rank's rows, after the timed run.

import AttentionCore
import MPIBinding
import SequenceParallel

/// A result row holding NaN or infinity (float32 overflowed), or claiming no visible key while the mask shows it one.
public struct NonFiniteResult: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

extension PartialResult {
    /// Throws when a row of this rank's result is not finite, or claims no visible key while the
    /// mask shows it one. `segments` give the global positions of the rows.
    public func checkFinite(segments: [ShardSegment], mask: AttentionMask, tokens: Int) throws {
        guard rows > 0 else { return }
        let d = headDim
        for segment in segments where !segment.positions.isEmpty && segment.localRow + segment.positions.count <= rows {
            for h in 0 ..< heads {
                for (offset, position) in segment.positions.enumerated() {
                    let r = segment.localRow + offset
                    let l = lse[h * rows + r]
                    if l.isNaN || l == .infinity {
                        throw NonFiniteResult(
                            description: "the scores of query token \(position), head \(h) are not finite in float32 "
                                + "(scale * q.k overflows ±3.4e38, or inf - inf): its softmax cannot be computed. "
                                + "Expected smaller inputs or --scale; no output was written")
                    }
                    if l == -.infinity, !mask.visibleKeys(query: position, head: h, within: 0 ..< tokens).isEmpty {
                        throw NonFiniteResult(
                            description: "query token \(position), head \(h) sees keys under the mask but its scores "
                                + "gave no finite maximum (float32 overflow of scale * q.k). Expected smaller inputs or --scale; no output was written")
                    }
                }
            }
        }
        // O: finite where lse is (a sum of huge V values can still overflow).
        for (index, value) in output.enumerated() where !value.isFinite {
            let r = index / (heads * d), h = (index / d) % heads
            let position =
                segments.first { r >= $0.localRow && r < $0.localRow + $0.positions.count }
                .map { $0.positions.lowerBound + r - $0.localRow } ?? r
            throw NonFiniteResult(
                description: "O of query token \(position), head \(h) is not finite in float32 "
                    + "(the weighted sum of V overflows ±3.4e38). Expected smaller V values; no output was written")
        }
    }
}
