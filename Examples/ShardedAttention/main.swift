// An example of seqpar as a library: a program that holds its own rows of Q, K and V on each rank
// computes causal attention (and its gradients) across the ranks with DistributedAttention, then
// checks its rows against attention over the whole sequence computed on one rank. Run it with
//     SEQPAR_BIN=.build/release/sharded-attention-example Launch/local 3 ring
// or mpirun -np 3 .build/release/sharded-attention-example [strategy]; it exits 1 above 1e-5.

import AttentionCore
import Foundation
import SequenceParallel

let strategy = CommandLine.arguments.dropFirst().first.flatMap(StrategyName.init(rawValue:)) ?? .zigzag
let (tokens, seed) = (1001, UInt64(7))
let shape = try AttentionShape(heads: 4, kvHeads: 2, headDim: 64)

try MPIRuntime.start()
let world = try Communicator.world()
let attention: DistributedAttention
do {
    attention = try DistributedAttention(strategy: strategy, tokens: tokens, shape: shape, mask: .causal, communicator: world)
} catch {
    // Every rank refuses alike (the strategy cannot split this problem): say why once and stop.
    if world.rank == 0 { FileHandle.standardError.write(Data("sharded-attention-example: \(error)\n".utf8)) }
    MPIRuntime.finish()
    exit(2)
}

// This rank's rows, as its own program would have them (here: from a seed, by global position).
func rows(_ tensor: SyntheticInput.Tensor, heads: Int, _ ranges: [Range<Int>]) -> [Float] {
    SyntheticInput.tensor(tensor, seed: seed, heads: heads, headDim: shape.headDim, rows: ranges).values
}
let mine = attention.localRanges
let (q, k, v) = (rows(.query, heads: shape.heads, mine), rows(.key, heads: shape.kvHeads, mine), rows(.value, heads: shape.kvHeads, mine))
let dO = rows(.outputGrad, heads: shape.heads, mine)
let result = try attention.forward(q: q, k: k, v: v)
let gradients = try attention.backward(q: q, k: k, v: v, forward: result, outputGrad: dO)

// The check: the whole problem on this rank, its rows compared.
let whole = [0 ..< tokens]
let (wq, wk, wv) = (
    SyntheticInput.tensor(.query, seed: seed, heads: shape.heads, headDim: shape.headDim, rows: whole),
    SyntheticInput.tensor(.key, seed: seed, heads: shape.kvHeads, headDim: shape.headDim, rows: whole),
    SyntheticInput.tensor(.value, seed: seed, heads: shape.kvHeads, headDim: shape.headDim, rows: whole)
)
let single = LocalAttention(shape: shape, mask: .causal).attention(q: wq, k: wk, v: wv)
let singleGradients = LocalAttentionBackward(shape: shape, mask: .causal)
    .gradients(q: wq, k: wk, v: wv, forward: single, outputGrad: SyntheticInput.tensor(.outputGrad, seed: seed, heads: shape.heads, headDim: shape.headDim, rows: whole))
var error: Float = 0
var row = 0
for range in mine {
    for position in range {
        for e in 0 ..< shape.queryRowWidth {
            error = max(error, abs(result.output[row * shape.queryRowWidth + e] - single.output[position * shape.queryRowWidth + e]))
            error = max(error, abs(gradients.dq[row * shape.queryRowWidth + e] - singleGradients.dq.values[position * shape.queryRowWidth + e]))
        }
        for e in 0 ..< shape.kvRowWidth {
            error = max(error, abs(gradients.dk[row * shape.kvRowWidth + e] - singleGradients.dk.values[position * shape.kvRowWidth + e]))
            error = max(error, abs(gradients.dv[row * shape.kvRowWidth + e] - singleGradients.dv.values[position * shape.kvRowWidth + e]))
        }
        row += 1
    }
}
let worst = try world.allreduce(Double(error), .max)
if world.rank == 0 {
    print("sharded-attention-example: \(strategy) on \(world.size) rank(s), \(tokens) tokens: max abs error of O, dQ, dK, dV against one rank \(worst)")
}
MPIRuntime.finish()
exit(worst <= 1e-5 ? 0 : 1)
