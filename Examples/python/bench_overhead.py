"""What the Python layer adds to a forward: seqpar's Plan.forward on NumPy arrays, and
seqpar.attention on torch tensors, against the C entry point called directly with buffers made
once (the library's own cost: the copy into its shard, the strategy, the write of O and LSE).
Alternating, best of --rounds each, one rank:

    mpirun -np 1 .build-python/bin/python Examples/python/bench_overhead.py [--tokens 4096 --heads 8 --head-dim 128]
"""

import argparse
import ctypes
import time

import numpy as np
import torch
from mpi4py import MPI

import seqpar

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--tokens", type=int, default=4096)
parser.add_argument("--heads", type=int, default=8)
parser.add_argument("--kv-heads", type=int, default=8)
parser.add_argument("--head-dim", type=int, default=128)
parser.add_argument("--causal", action="store_true")
parser.add_argument("--rounds", type=int, default=5)
args = parser.parse_args()

comm = MPI.COMM_WORLD
plan = seqpar.Plan(comm, tokens=args.tokens, heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim, causal=args.causal)
g = np.random.default_rng(0)
rows, d = plan.rows, args.head_dim
q = g.standard_normal((rows, args.heads, d)).astype(np.float32)
k = g.standard_normal((rows, args.kv_heads, d)).astype(np.float32)
v = g.standard_normal((rows, args.kv_heads, d)).astype(np.float32)
o, lse = np.empty_like(q), np.empty((args.heads, rows), np.float32)
lib = seqpar._library()
pointer = lambda a: ctypes.c_void_p(a.ctypes.data)
lse_pointer = lse.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))


def direct():
    code = lib.seqpar_forward(plan._plan, rows, pointer(q), args.heads * d, pointer(k), args.kv_heads * d, pointer(v), args.kv_heads * d,
                              pointer(o), args.heads * d, lse_pointer)
    assert code == 0, lib.seqpar_plan_error(plan._plan)


ways = {"C entry point, buffers made once": direct,
        "Plan.forward (NumPy)": lambda: plan.forward(q, k, v),
        "seqpar.attention (torch, no grad)": lambda: seqpar.attention(tq, tk, tv, plan)}
best = {name: float("inf") for name in ways}
for _ in range(args.rounds):
    for name, way in ways.items():
        comm.Barrier()
        start = time.perf_counter()
        way()
        best[name] = min(best[name], time.perf_counter() - start)
base = best["C entry point, buffers made once"]
if comm.Get_rank() == 0:
    print("bench_overhead: %d ranks, %d tokens x %d heads (%d kv) x %d%s, best of %d, alternating" % (
        comm.Get_size(), args.tokens, args.heads, args.kv_heads, d, ", causal" if args.causal else "", args.rounds))
    for name, seconds in best.items():
        print("  %-36s %.4f s  %.4f of the C call (%+.2f%%)" % (name, seconds, seconds / base, 100 * (seconds / base - 1)))
plan.close()
