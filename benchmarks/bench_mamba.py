"""Mamba on CPU: our selective scan vs mambapy's parallel scan, and the cost of one ESC-50 epoch.

    .venv/bin/python benchmarks/bench_mamba.py            # 2 threads, the default config
    .venv/bin/python benchmarks/bench_mamba.py --configs '{"frame_stack": 1}' '{"bidirectional": false}'

1. Selective scan, forward + backward, at batch 32, L 155, d_inner 256, d_state 16:
   ``models.selective_scan.selective_scan`` against the same S6 maths built on
   ``mambapy.pscan.pscan`` (exp(delta*A), delta*B*u, pscan, C.h + D*u, as in mambapy's
   ``MambaBlock.selective_scan``), with the max abs difference of outputs and gradients, both
   also against a float64 sequential loop. ``--logspace T`` adds a chunked log-space scan
   (masked exp of cumulative-log-decay differences within chunks of T steps, plain autograd),
   the other design that was considered.
2. One ESC-50 training epoch (1200 clips = 38 steps of batch 32 on random [32, 155, 128]
   inputs, forward + backward + AdamW) for the registered default config (and any --configs).

Wall times are the minimum over repetitions; process CPU time is printed too, since other jobs
may share the cores (the load average is printed at the start and the end). OMP_WAIT_POLICY
defaults to PASSIVE here (see below).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# On a shared machine (more runnable processes than cores) OpenMP's default spin-waiting at every
# barrier dominated everything with 2 threads: one epoch took 364 s wall / 167 s CPU against 25 s /
# 12 s with passive waiting. Must be set before torch is imported; export OMP_WAIT_POLICY to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average n/a"


def timed(fn, reps):
    """min over reps of (wall, cpu) seconds for fn(); returns (wall, cpu, last result)."""
    best, out = None, None
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        t = (time.perf_counter() - w0, time.process_time() - c0)
        best = t if best is None or t[0] < best[0] else best
    return best[0], best[1], out


def mambapy_scan(u, delta, A, B, C, D):
    """mambapy's selective scan maths on (B, D, L) inputs, with its pscan."""
    from mambapy.pscan import pscan
    x, dl = u.transpose(1, 2), delta.transpose(1, 2)                      # (B, L, D)
    Bt, Ct = B.transpose(1, 2), C.transpose(1, 2)                         # (B, L, N)
    deltaA = torch.exp(dl.unsqueeze(-1) * A)                              # (B, L, D, N)
    BX = (dl * x).unsqueeze(-1) * Bt.unsqueeze(2)                         # (B, L, D, N)
    hs = pscan(deltaA, BX)
    y = (hs @ Ct.unsqueeze(-1)).squeeze(3) + D * x
    return y.transpose(1, 2)


def chunked_logspace_scan(u, delta, A, B, C, D, T=16):
    """Chunked log-space selective scan with plain autograd (for comparison only).
    Within a chunk: h_t = sum_{s<=t} exp(S_t - S_s) x_s + exp(S_t) h_0, S = cumsum of delta*A (<= 0),
    only differences with s <= t are exponentiated (masked), so nothing overflows."""
    b, d, L = u.shape
    n = A.shape[1]
    pad = (-L) % T
    x = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)          # (b, d, L, n)
    la = delta.unsqueeze(-1) * A[:, None, :]                                   # (b, d, L, n) <= 0
    if pad:
        x = F.pad(x, (0, 0, 0, pad)); la = F.pad(la, (0, 0, 0, pad))
    nc = (L + pad) // T
    x = x.view(b, d, nc, T, n); la = la.view(b, d, nc, T, n)
    S = la.cumsum(3)                                                            # (b, d, nc, T, n)
    mask = torch.ones(T, T, dtype=torch.bool, device=u.device).tril()           # s <= t
    diff = S.unsqueeze(4) - S.unsqueeze(3)                                      # (b,d,nc,T(t),T(s),n)
    decay = torch.exp(diff.masked_fill(~mask[:, :, None], float("-inf")))
    h_intra = torch.einsum("bdctsn,bdcsn->bdctn", decay, x)                     # zero initial state
    # carry the state across chunks
    hs, h = [], u.new_zeros(b, d, n)
    eS = torch.exp(S)                                                           # decay from chunk start
    for c in range(nc):
        hc = h_intra[:, :, c] + eS[:, :, c] * h.unsqueeze(2)
        hs.append(hc)
        h = hc[:, :, -1]
    hcat = torch.cat(hs, 2)[:, :, :L]                                           # (b, d, L, n)
    y = torch.einsum("bdln,bnl->bdl", hcat, C)
    return y + D[:, None] * u


def loop_scan(u, delta, A, B, C, D):
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t, None] * u[:, :, t, None]) * B[:, None, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    return torch.stack(ys, -1) + D[:, None] * u


def bench_scan(args):
    from models.selective_scan import selective_scan
    b, d, L, n = args.batch, args.d_inner, args.seq_len, args.d_state
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, d, L, generator=g)
    delta = F.softplus(torch.randn(b, d, L, generator=g) - 1.0)          # dt ~ 0.05..3
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5 + torch.log(torch.arange(1, n + 1.0)))
    B, C = torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g)
    D = torch.ones(d)
    gy = torch.randn(b, d, L, generator=g)
    impls = {"ours (models.selective_scan)": lambda *a: selective_scan(*a[:5], D=a[5]),
             "mambapy pscan": mambapy_scan}
    if args.logspace:
        impls[f"chunked log-space, T={args.logspace}"] = lambda *a: chunked_logspace_scan(*a, T=args.logspace)
    rows, outs = {}, {}
    for name, fn in impls.items():
        leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D)]

        def fwd_bwd():
            for t in leaves:
                t.grad = None
            w0, c0 = time.perf_counter(), time.process_time()
            y = fn(*leaves)
            tf = (time.perf_counter() - w0, time.process_time() - c0)
            y.backward(gy)
            return y.detach(), tf
        fwd_bwd()  # warm-up
        wall, cpu, (y, tf) = timed(fwd_bwd, args.reps)
        rows[name] = (wall, cpu, tf)
        outs[name] = (y, [t.grad.clone() for t in leaves])
    print(f"\n[1] selective scan fwd+bwd, batch {b}, L {L}, d_inner {d}, d_state {n}, "
          f"{torch.get_num_threads()} threads (min of {args.reps})")
    print(f"{'implementation':32s} {'wall s':>8s} {'(fwd)':>8s} {'cpu s':>8s}")
    for name, (wall, cpu, tf) in rows.items():
        print(f"{name:32s} {wall:8.3f} {tf[0]:8.3f} {cpu:8.3f}")
    ours, theirs = rows["ours (models.selective_scan)"], rows["mambapy pscan"]
    print(f"speed-up ours vs pscan: {theirs[0] / ours[0]:.1f}x wall, {theirs[1] / ours[1]:.1f}x cpu")
    (y1, g1), (y2, g2) = outs["ours (models.selective_scan)"], outs["mambapy pscan"]
    print(f"max |y_ours - y_pscan| = {(y1 - y2).abs().max().item():.2e}  (max |y| = {y2.abs().max().item():.1f})")
    names = ["u", "delta", "A", "B", "C", "D"]
    rel = {k: ((a - c).abs().max() / c.abs().max()).item() for k, a, c in zip(names, g1, g2)}
    print("max relative grad difference ours vs pscan: " + ", ".join(f"{k} {v:.1e}" for k, v in rel.items()))
    if not args.no_ref:
        with torch.no_grad():
            y_ref = loop_scan(*(t.double() for t in (u, delta, A, B, C, D)))
        print(f"vs float64 sequential loop: ours {(y1.double() - y_ref).abs().max().item():.2e}, "
              f"pscan {(y2.double() - y_ref).abs().max().item():.2e}")


def bench_epoch(args):
    import models
    cfgs = [json.loads(c) for c in args.configs] or [{}]
    steps = args.steps
    print(f"\n[2] one ESC-50 epoch = {steps} steps of batch 32 on [32, 155, 128] (fwd+bwd+AdamW), "
          f"{torch.get_num_threads()} threads")
    print(f"{'config':48s} {'params':>8s} {'epoch s':>8s} {'step s':>7s} {'cpu s':>8s}")
    for cfg in cfgs:
        torch.manual_seed(0)
        model = models.build_model("mamba", **cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1.5e-3, weight_decay=0.05)
        x = torch.randn(32, 155, 128)
        y = torch.randint(0, 50, (32,))

        def step():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for _ in range(2):
            step()
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        label = "default" + (" + " + json.dumps(cfg) if cfg else "")
        print(f"{label[:48]:48s} {models.count_parameters(model):8d} {wall:8.2f} {wall / steps:7.3f} {cpu:8.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=155)
    ap.add_argument("--d-inner", type=int, default=256)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--steps", type=int, default=38)
    ap.add_argument("--configs", nargs="*", default=[], help="JSON model configs for the epoch timing")
    ap.add_argument("--skip-scan", action="store_true")
    ap.add_argument("--skip-epoch", action="store_true")
    ap.add_argument("--no-ref", action="store_true", help="skip the float64 loop reference")
    ap.add_argument("--logspace", type=int, default=0, metavar="T",
                    help="also time a chunked log-space scan with chunks of T steps (memory ~ T x the state)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, {load()}")
    if not args.skip_scan:
        bench_scan(args)
    if not args.skip_epoch:
        bench_epoch(args)
    print(f"\n{load()}")


if __name__ == "__main__":
    main()
