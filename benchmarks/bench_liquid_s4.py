#!/usr/bin/env python
"""Benchmark: one ESC-50 training epoch of the Liquid-S4 classifier on CPU, and the liquid cost.

One epoch over folds 1-3 is 1200 clips = 38 steps of batch 32. Each step is forward + backward +
AdamW (the engine's parameter groups) on random ``[32, 155, 128]`` features. Variants of the same
size are timed in interleaved chunks (so a change in background load hits all of them alike):
plain S4 (``liquid_kernel=None``), PolyB and KB (exact), optionally the reference KB grid, all
with the default convolutional stem, and PolyB with the per-frame Linear encoder
(``polyb_linear``). The script prints absolute times and the ratio to plain S4 side by side.
Goal: default config (PolyB, conv stem) <= 20 s per epoch on 2 cores.

    .venv/bin/python benchmarks/bench_liquid_s4.py                # 2 threads, 38 steps
    .venv/bin/python benchmarks/bench_liquid_s4.py --variants plain,polyb,kb,kb_ref,polyb3
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models import build_model, count_parameters  # noqa: E402

VARIANTS = {
    "plain": {"liquid_kernel": None},
    "polyb": {"liquid_kernel": "polyb"},
    "kb": {"liquid_kernel": "kb"},
    "kb_ref": {"liquid_kernel": "kb", "kb_exact": False},
    "polyb3": {"liquid_kernel": "polyb", "liquid_degree": 3},
    "kb3": {"liquid_kernel": "kb", "liquid_degree": 3},
    "polyb_linear": {"liquid_kernel": "polyb", "stem": "linear"},   # per-frame Linear encoder, L=155
}


def _optimizer(model, lr=4e-3, wd=0.05):
    try:
        from training.engine import build_optimizer
        return build_optimizer(model, lr, wd)
    except ImportError:  # engine not available: plain AdamW
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=38, help="steps per epoch (38 = 1200 clips / 32)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=155)
    ap.add_argument("--mels", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    ap.add_argument("--chunks", type=int, default=2, help="interleaved chunks per variant")
    ap.add_argument("--variants", default="plain,polyb,kb,polyb_linear")
    ap.add_argument("--preset", default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"input [{args.batch},{args.frames},{args.mels}], {args.steps} steps/epoch, "
          f"preset {args.preset or 'default'}; load average at start: {_loadavg()}")

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.frames, args.mels, generator=g)
    y = torch.randint(0, 50, (args.batch,), generator=g)

    runs = {}
    for name in names:
        torch.manual_seed(0)
        model = build_model("liquid_s4", n_frames=args.frames, n_mels=args.mels,
                            preset=args.preset, **VARIANTS[name]).train()
        opt = _optimizer(model)
        runs[name] = {"model": model, "opt": opt, "time": 0.0, "cpu": 0.0, "steps": 0}

    def step(r):
        r["opt"].zero_grad(set_to_none=True)
        loss = F.cross_entropy(r["model"](x), y)
        loss.backward()
        r["opt"].step()

    for r in runs.values():
        for _ in range(args.warmup):
            step(r)

    per_chunk = [args.steps // args.chunks + (i < args.steps % args.chunks) for i in range(args.chunks)]
    for n_steps in per_chunk:
        for r in runs.values():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n_steps):
                step(r)
            r["time"] += time.perf_counter() - t0
            r["cpu"] += time.process_time() - c0
            r["steps"] += n_steps

    base = runs.get("plain", next(iter(runs.values())))
    print(f"\n{'variant':<12} {'config':<42} {'params':>8} {'epoch s':>8} {'s/step':>7} {'vs plain':>8}"
          f" {'CPU s':>7} {'CPU vs plain':>12}")
    for name, r in runs.items():
        cfg = ", ".join(f"{k}={v}" for k, v in VARIANTS[name].items())
        print(f"{name:<12} {cfg:<42} {count_parameters(r['model']):>8,} {r['time']:>8.2f} "
              f"{r['time'] / r['steps']:>7.3f} {r['time'] / base['time']:>7.2f}x {r['cpu']:>7.1f}"
              f" {r['cpu'] / base['cpu']:>11.2f}x")
    print("(epoch s: wall-clock for the epoch; CPU s: process CPU time over all threads, which is "
          "less sensitive to other processes on the machine)")
    if "polyb" in runs and args.preset is None:
        t = runs["polyb"]["time"] * 38 / runs["polyb"]["steps"]
        print(f"\ndefault config (PolyB) ESC-50 epoch (38 steps): {t:.2f} s wall -> goal <= 20 s: "
              f"{'met' if t <= 20 else 'NOT met'}")
    print(f"load average at end: {_loadavg()} (other processes may share the CPU)")


if __name__ == "__main__":
    main()
