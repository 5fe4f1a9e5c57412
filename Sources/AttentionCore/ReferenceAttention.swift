// The plain, obviously correct attention: loops and Double accumulators, every mask tested pair
// by pair. It is slow on purpose (O(queries·keys·heads·headDim), no blocking) and is the yardstick
// for the fused kernel and every distributed strategy. It does not skip, tile or approximate.

import Foundation

public enum ReferenceAttention {
    /// Output and lse in float64.
    public struct Result: Sendable {
        /// [queries, heads, headDim]
        public var output: [Double]
        /// [heads, queries]
        public var lse: [Double]
    }

    /// Attention of the query rows (global positions `queryPositions`) over all rows of `k`/`v`
    /// (global positions `keyPositions`).
    public static func compute(
        q: TokenTensor, queryPositions: [Int],
        k: TokenTensor, v: TokenTensor, keyPositions: [Int],
        shape: AttentionShape, mask: AttentionMask
    ) -> Result {
        precondition(q.tokens == queryPositions.count && k.tokens == keyPositions.count && v.tokens == k.tokens)
        let (nq, nk, heads, d) = (q.tokens, k.tokens, shape.heads, shape.headDim)
        var output = [Double](repeating: 0, count: nq * heads * d)
        var lse = [Double](repeating: -.infinity, count: heads * nq)
        var scores = [Double](repeating: 0, count: nk)
        for h in 0 ..< heads {
            let g = shape.kvHead(of: h)
            for i in 0 ..< nq {
                var best = -Double.infinity
                for j in 0 ..< nk {
                    guard mask.allows(query: queryPositions[i], key: keyPositions[j], head: h) else {
                        scores[j] = -.infinity
                        continue
                    }
                    var dot = 0.0
                    for x in 0 ..< d { dot += Double(q[i, h, x]) * Double(k[j, g, x]) }
                    scores[j] = dot * Double(shape.scale)
                    best = max(best, scores[j])
                }
                guard best > -.infinity else { continue }  // sees no key: O = 0, lse = -inf
                var total = 0.0
                for j in 0 ..< nk where scores[j] > -.infinity {
                    let p = exp(scores[j] - best)
                    total += p
                    for x in 0 ..< d { output[(i * heads + h) * d + x] += p * Double(v[j, g, x]) }
                }
                for x in 0 ..< d { output[(i * heads + h) * d + x] /= total }
                lse[h * nq + i] = best + log(total)
            }
        }
        return Result(output: output, lse: lse)
    }

    /// Whole-sequence self-attention: positions are the row indices.
    public static func compute(
        q: TokenTensor, k: TokenTensor, v: TokenTensor,
        shape: AttentionShape, mask: AttentionMask
    ) -> Result {
        compute(
            q: q, queryPositions: Array(0 ..< q.tokens), k: k, v: v,
            keyPositions: Array(0 ..< k.tokens), shape: shape, mask: mask)
    }
}
