"""One training step of a small transformer whose attention is seqpar's, over a long sequence
sharded across the ranks, checked against the same model run in one process with PyTorch's SDPA.

    mpirun -np 4 .build-python/bin/python Examples/python/train_transformer.py [--tokens 4099] [--strategy zigzag]

Each rank embeds only its own tokens (the plan's local_ranges), runs every layer on them
(projections, MLP and norms are per token; attention is seqpar's, across ranks), and computes its
share of the loss. The loss is summed over ranks, and so is every parameter's gradient (each rank's
gradient covers its own tokens). Rank 0 then runs the whole sequence through the same model with
torch's scaled_dot_product_attention and compares: the loss, and every parameter's gradient,
within float32 tolerance. Exits 1 when any differs by more than --tolerance (relative to the
largest value of that tensor), 0 otherwise; then takes one SGD step and prints the new loss.
"""

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F
from mpi4py import MPI

import seqpar


class Block(torch.nn.Module):
    def __init__(self, width, heads, kv_heads):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, width // heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, (heads + 2 * kv_heads) * self.head_dim)
        self.out = torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width))

    def forward(self, x, attend):
        rows, d = x.shape[0], self.head_dim
        q, k, v = self.qkv(self.norm1(x)).split([self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=1)
        a = attend(q.reshape(rows, self.heads, d), k.reshape(rows, self.kv_heads, d), v.reshape(rows, self.kv_heads, d))
        x = x + self.out(a.reshape(rows, -1))
        return x + self.mlp(self.norm2(x))


class Model(torch.nn.Module):
    def __init__(self, vocabulary, tokens, width, heads, kv_heads, layers):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocabulary, width)
        self.position = torch.nn.Embedding(tokens, width)
        self.blocks = torch.nn.ModuleList(Block(width, heads, kv_heads) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocabulary)

    def forward(self, ids, positions, attend):
        x = self.embedding(ids) + self.position(positions)
        for block in self.blocks:
            x = block(x, attend)
        return self.head(self.norm(x))


def sdpa(q, k, v):
    """Causal attention over the whole sequence in this process (GQA by repeating K/V heads)."""
    group = q.shape[1] // k.shape[1]
    q, k, v = q.transpose(0, 1), k.repeat_interleave(group, 1).transpose(0, 1), v.repeat_interleave(group, 1).transpose(0, 1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(0, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4099, help="sequence length (default 4099: not divisible by 2, 3 or 4 ranks)")
    parser.add_argument("--strategy", default="zigzag", help="seqpar strategy (ring, zigzag, heads, mesh)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=128, help="model width; heads of width/heads (32 by default)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest relative difference accepted (float32)")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    torch.manual_seed(0)
    vocabulary = 97
    model = Model(vocabulary, args.tokens, args.width, args.heads, args.kv_heads, args.layers)
    generator = torch.Generator().manual_seed(1)
    sequence = torch.randint(vocabulary, (args.tokens + 1,), generator=generator)
    ids, targets = sequence[:-1], sequence[1:]

    plan = seqpar.Plan(comm, tokens=args.tokens, heads=args.heads, kv_heads=args.kv_heads, head_dim=args.width // args.heads,
                       causal=True, strategy=args.strategy)
    mine = torch.from_numpy(plan.local_positions)
    # Mesh holds each row on several ranks: count each token's loss once.
    copies = torch.tensor(comm.allreduce(np.bincount(plan.local_positions, minlength=args.tokens)))[mine].float()
    logits = model(ids[mine], mine, lambda q, k, v: seqpar.attention(q, k, v, plan))
    loss = (F.cross_entropy(logits, targets[mine], reduction="none") / copies).sum() / args.tokens
    loss.backward()
    total = comm.allreduce(loss.item())
    gradients = {name: comm.allreduce(p.grad.numpy()) for name, p in model.named_parameters()}

    worst = 0.0
    if rank == 0:
        reference = Model(vocabulary, args.tokens, args.width, args.heads, args.kv_heads, args.layers)
        reference.load_state_dict(model.state_dict())
        everything = torch.arange(args.tokens)
        ref_loss = F.cross_entropy(reference(ids, everything, sdpa), targets)
        ref_loss.backward()
        loss_difference = abs(total - ref_loss.item()) / abs(ref_loss.item())
        worst_name, worst = "loss", loss_difference
        for name, p in reference.named_parameters():
            scale = max(float(p.grad.abs().max()), 1e-30)
            difference = float(np.abs(gradients[name] - p.grad.numpy()).max()) / scale
            if difference > worst:
                worst_name, worst = name, difference
        print("train_transformer: %d ranks, %s, %d tokens, %d layers: loss %.6f (one process with SDPA %.6f, relative difference %.2e); "
              "%d parameter gradients, largest relative difference %.2e (%s)" % (
                  comm.Get_size(), args.strategy, args.tokens, args.layers, total, ref_loss.item(), loss_difference,
                  len(gradients), worst, worst_name), flush=True)
    # One SGD step with the summed gradients, and the loss after it (every rank alike).
    with torch.no_grad():
        for name, p in model.named_parameters():
            p -= 0.1 * torch.from_numpy(gradients[name])
        logits = model(ids[mine], mine, lambda q, k, v: seqpar.attention(q, k, v, plan))
        after = comm.allreduce(float((F.cross_entropy(logits, targets[mine], reduction="none") / copies).sum()) / args.tokens)
    if rank == 0:
        print("train_transformer: loss after one SGD step %.6f" % after, flush=True)
    ok = comm.bcast(worst <= args.tolerance and after < total, root=0)
    plan.close()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
