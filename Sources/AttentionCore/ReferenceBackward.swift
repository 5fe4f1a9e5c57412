// The plain backward pass: loops and Double accumulators, the yardstick for the backward kernel.
// Given dO, with P recomputed exactly from Q, K and the float64 forward:
//     D = rowsum(dO ∘ O),  dV = Pᵀ·dO,  dP = dO·Vᵀ,  dS = P ∘ (dP − D),  dQ = scale·dS·K,  dK = scale·dSᵀ·Q
// A kv head's dK and dV sum over the query heads that read it; rows that see no key contribute
// nothing. Slow on purpose, O(queries·keys·heads·headDim), no blocking.

import Foundation

public enum ReferenceBackward {
    /// Gradients in float64: dQ [queries, heads, headDim], dK and dV [keys, kvHeads, headDim].
    public struct Result: Sendable {
        public var dq: [Double]
        public var dk: [Double]
        public var dv: [Double]
    }

    /// Gradients of attention of the query rows (global positions `queryPositions`) over the
    /// rows of `k`/`v` (global positions `keyPositions`), for the output gradient `dO`.
    public static func compute(
        q: TokenTensor, queryPositions: [Int], k: TokenTensor, v: TokenTensor, keyPositions: [Int],
        outputGrad dO: TokenTensor, shape: AttentionShape, mask: AttentionMask
    ) -> Result {
        let (lse, delta) = statistics(
            q: q, queryPositions: queryPositions, k: k, v: v, keyPositions: keyPositions,
            outputGrad: dO, shape: shape, mask: mask)
        return gradients(
            q: q, queryPositions: queryPositions, lse: lse, delta: delta, k: k, v: v, keyPositions: keyPositions,
            outputGrad: dO, shape: shape, mask: mask)
    }

    /// Each query row's lse and D = rowsum(dO ∘ O) in float64, [heads, queries] each, from the
    /// float64 forward over all of `k`/`v`.
    public static func statistics(
        q: TokenTensor, queryPositions: [Int], k: TokenTensor, v: TokenTensor, keyPositions: [Int],
        outputGrad dO: TokenTensor, shape: AttentionShape, mask: AttentionMask
    ) -> (lse: [Double], delta: [Double]) {
        precondition(dO.tokens == q.tokens && dO.heads == q.heads && dO.headDim == q.headDim)
        let forward = ReferenceAttention.compute(
            q: q, queryPositions: queryPositions, k: k, v: v, keyPositions: keyPositions,
            shape: shape, mask: mask)
        let (nq, heads, d) = (q.tokens, shape.heads, shape.headDim)
        var delta = [Double](repeating: 0, count: heads * nq)
        for h in 0 ..< heads {
            for i in 0 ..< nq {
                for x in 0 ..< d { delta[h * nq + i] += Double(dO[i, h, x]) * forward.output[(i * heads + h) * d + x] }
            }
        }
        return (forward.lse, delta)
    }

    /// The gradients given each query row's statistics (`lse`, `delta`: [heads, queries], over
    /// every key the row sees, as `statistics` makes them): dQ of the query rows from the keys
    /// given, dK and dV of the key rows from the queries given. So a subset of keys (or queries)
    /// yields exactly their rows of the whole problem's gradients.
    public static func gradients(
        q: TokenTensor, queryPositions: [Int], lse: [Double], delta: [Double], k: TokenTensor, v: TokenTensor,
        keyPositions: [Int], outputGrad dO: TokenTensor, shape: AttentionShape, mask: AttentionMask
    ) -> Result {
        let (nq, nk, heads, kvHeads, d) = (q.tokens, k.tokens, shape.heads, shape.kvHeads, shape.headDim)
        let scale = Double(shape.scale)
        var dq = [Double](repeating: 0, count: nq * heads * d)
        var dk = [Double](repeating: 0, count: nk * kvHeads * d)
        var dv = [Double](repeating: 0, count: nk * kvHeads * d)
        for h in 0 ..< heads {
            let g = shape.kvHead(of: h)
            for i in 0 ..< nq {
                let lse = lse[h * nq + i], delta = delta[h * nq + i]
                guard lse > -.infinity else { continue }  // sees no key: no gradient
                for j in 0 ..< nk where mask.allows(query: queryPositions[i], key: keyPositions[j], head: h) {
                    var dot = 0.0
                    for x in 0 ..< d { dot += Double(q[i, h, x]) * Double(k[j, g, x]) }
                    let p = exp(dot * scale - lse)
                    var dp = 0.0
                    for x in 0 ..< d { dp += Double(dO[i, h, x]) * Double(v[j, g, x]) }
                    let ds = p * (dp - delta)
                    for x in 0 ..< d {
                        dv[(j * kvHeads + g) * d + x] += p * Double(dO[i, h, x])
                        dq[(i * heads + h) * d + x] += scale * ds * Double(k[j, g, x])
                        dk[(j * kvHeads + g) * d + x] += scale * ds * Double(q[i, h, x])
                    }
                }
            }
        }
        return Result(dq: dq, dk: dk, dv: dv)
    }
}
