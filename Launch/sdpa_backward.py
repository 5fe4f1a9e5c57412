#!/usr/bin/env python3
"""PyTorch's CPU attention forward + backward, the figure seqpar's backward is compared with.

Times torch.nn.functional.scaled_dot_product_attention forward, then backward through
torch.autograd (dQ, dK, dV for a random dO), fp32, on --threads threads; prints one JSON line
with the forward and the backward seconds (median of --repeats after one warm-up) and GFLOP/s,
counting FLOPs as seqpar does: forward 4 * visible pairs * headDim, backward 2.5 x that.
Run it with the peers' Python (../shared/peers/setup makes it):
  ~/.seqpar-peers/bin/python Launch/sdpa_backward.py --tokens 4096 --heads 8 --head-dim 128 --causal
"""
import argparse, json, os, statistics, time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(a.threads)
    kvh = a.kv_heads or a.heads
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, a.heads, a.tokens, a.head_dim, generator=g).requires_grad_()
    k = torch.randn(1, kvh, a.tokens, a.head_dim, generator=g).requires_grad_()
    v = torch.randn(1, kvh, a.tokens, a.head_dim, generator=g).requires_grad_()
    do = torch.randn(1, a.heads, a.tokens, a.head_dim, generator=g)
    forward_times, backward_times = [], []
    for r in range(a.repeats + 1):
        q.grad = k.grad = v.grad = None
        t0 = time.perf_counter()
        o = F.scaled_dot_product_attention(q, k, v, is_causal=a.causal, enable_gqa=kvh != a.heads)
        t1 = time.perf_counter()
        o.backward(do)
        t2 = time.perf_counter()
        if r:
            forward_times.append(t1 - t0)
            backward_times.append(t2 - t1)
    t = a.tokens
    pairs = t * (t + 1) / 2 if a.causal else t * t
    flops = 4 * pairs * a.heads * a.head_dim
    fs, bs = statistics.median(forward_times), statistics.median(backward_times)
    print(json.dumps({"impl": "torch.sdpa", "torch": torch.__version__, "tokens": t, "heads": a.heads, "kv_heads": kvh,
                      "head_dim": a.head_dim, "causal": a.causal, "threads": a.threads,
                      "forward_seconds": fs, "forward_gflops": flops / fs / 1e9,
                      "backward_seconds": bs, "backward_gflops": 2.5 * flops / bs / 1e9}))


if __name__ == "__main__":
    main()
